//! Claims that need a second OS process on the same file: a writer killed
//! with SIGKILL leaves only whole records, and completions written by
//! another process wake this one's waiters, none lost.

mod common;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ChildProcess, WRITER_KEYS, whole_step, writer_key};
use mcp_authkit_core::{
    FlowOutcome, PendingFlow, PendingStore, Revision, Timestamp, TokenKey, TokenStore,
};
use mcp_authkit_store_sqlite::SqliteStore;
use tokio::task::JoinSet;

/// Entry point of the child process; does nothing in a normal test run.
#[test]
fn child_entry() {
    common::run_child_if_requested();
}

const ENTRY: &str = "child_entry";

/// Three times: a child writes tokens (several pages each) and flows as fast
/// as it can and is killed with SIGKILL mid-stream. The file then opens,
/// passes SQLite's integrity check, and every record in it is whole: each
/// token is exactly what one write wrote, never older than the last write
/// the child saw acknowledged, and every flow decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_write_leaves_only_whole_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let mut acknowledged: HashMap<TokenKey, u64> = HashMap::new();
    let mut next_step = 0u64;
    for round in 0..3 {
        let mut child = ChildProcess::spawn(
            ENTRY,
            "writer",
            &path,
            &[("MCP_AUTHKIT_SQLITE_TEST_START", next_step.to_string())],
        );
        // Kill at a different point each round.
        let kill_after = 60 + round * 37;
        let mut seen = 0;
        while seen < kill_after {
            let report = child.next_report().await.expect("the writer runs");
            let step: u64 = report.strip_prefix("WROTE ").unwrap().parse().unwrap();
            acknowledged.insert(writer_key(step), step);
            next_step = step + 1;
            seen += 1;
        }
        child.child.start_kill().unwrap();
        let status = child.child.wait().await.unwrap();
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
        // Writes acknowledged after the last report we read were not
        // counted; the next round starts above anything written.
        next_step += 10_000;

        let store = SqliteStore::open(&path)
            .await
            .expect("the file opens after a kill");
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(check, "ok", "round {round}");
        let mut tokens = 0;
        for i in 0..WRITER_KEYS {
            let key = writer_key(i);
            let Some(stored) = TokenStore::get(&store, &key).await.unwrap() else {
                assert!(!acknowledged.contains_key(&key), "{key} was written");
                continue;
            };
            let step = whole_step(&stored.record);
            assert_eq!(writer_key(step), key, "the record belongs to its key");
            if let Some(acked) = acknowledged.get(&key) {
                assert!(
                    step >= *acked,
                    "{key}: step {step} older than acknowledged {acked}"
                );
            }
            tokens += 1;
        }
        assert!(tokens > 0);
        let flows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT flow FROM mcp_authkit_flows")
            .fetch_all(store.pool())
            .await
            .unwrap();
        assert!(!flows.is_empty());
        for bytes in &flows {
            let flow = mcp_authkit_core::codec::decode_flow(bytes).expect("a whole flow");
            let step: u64 = flow
                .key
                .subject()
                .strip_prefix("user-")
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(flow.attributes["payload"], common::payload(step));
        }
        store.close().await;
    }
}

fn flow_for(subject: &str) -> PendingFlow {
    PendingFlow::new(
        TokenKey::new("cross", subject),
        "http://127.0.0.1:9/cb",
        vec!["read".into()],
        Timestamp::now(),
        Duration::from_secs(120),
    )
}

/// Another process completes 60 flows while this one starts waiting on
/// them at staggered times, some before and some after their completion:
/// every waiter gets its own outcome, none times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_by_another_process_wake_every_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cross.db");
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let flows: Vec<PendingFlow> = (0..60).map(|i| flow_for(&format!("user-{i}"))).collect();
    for flow in &flows {
        store.insert(flow).await.unwrap();
    }
    let mut child = ChildProcess::spawn(ENTRY, "completer", &path, &[]);
    assert_eq!(child.next_report().await.as_deref(), Some("READY"));

    let started = Instant::now();
    let mut waiters = JoinSet::new();
    for (i, flow) in flows.iter().enumerate() {
        let store = Arc::clone(&store);
        let state = flow.state.clone();
        waiters.spawn(async move {
            // Waits start from 0 to 120 ms in; completions land over the
            // same span, so some precede their waiter and some follow it.
            tokio::time::sleep(Duration::from_millis((i as u64 * 37) % 120)).await;
            let outcome = store.wait(&state, Duration::from_secs(15)).await.unwrap();
            (i, outcome)
        });
    }
    for (i, flow) in flows.iter().enumerate() {
        child.send(&format!("{} {i}", flow.state.as_str())).await;
        if i % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    while let Some(joined) = waiters.join_next().await {
        let (i, outcome) = joined.unwrap();
        assert_eq!(
            outcome,
            Some(FlowOutcome::Authorized {
                revision: Revision::new(i as u64)
            }),
            "waiter {i}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no waiter ran into its timeout: {:?}",
        started.elapsed()
    );
    drop(child);
}
