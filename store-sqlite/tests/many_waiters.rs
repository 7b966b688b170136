//! Waiting costs no connection per waiter: 300 waiters on a store with a
//! single connection, woken by completions from another process. Its own
//! test binary, so the worker threads it counts are its own.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ChildProcess;
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

/// Threads of this process that hold a SQLite connection (sqlx runs each
/// connection on its own worker thread).
fn connection_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("sqlx-sqlite-wor"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiters_share_one_poller_and_no_connection_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("waiters.db");
    let store = Arc::new(
        SqliteStore::options(&path)
            .max_connections(1)
            .open()
            .await
            .unwrap(),
    );
    let flows: Vec<PendingFlow> = (0..300)
        .map(|i| {
            PendingFlow::new(
                TokenKey::new("many", format!("user-{i}")),
                "http://127.0.0.1:9/cb",
                vec![],
                Timestamp::now(),
                Duration::from_secs(120),
            )
        })
        .collect();
    for flow in &flows {
        store.insert(flow).await.unwrap();
    }
    let mut waiters = JoinSet::new();
    for (i, flow) in flows.iter().enumerate() {
        let store = Arc::clone(&store);
        let state = flow.state.clone();
        waiters.spawn(async move {
            (
                i,
                store.wait(&state, Duration::from_secs(30)).await.unwrap(),
            )
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiters.is_empty());
    assert_eq!(
        connection_threads(),
        2,
        "300 waiters hold the store's one connection and the poller's, nothing more"
    );
    // The store's only connection is free for other work meanwhile.
    let started = Instant::now();
    TokenStore::get(&*store, &TokenKey::new("many", "nobody"))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut child = ChildProcess::spawn("child_entry", "completer", &path, &[]);
    assert_eq!(child.next_report().await.as_deref(), Some("READY"));
    for (i, flow) in flows.iter().enumerate() {
        child.send(&format!("{} {i}", flow.state.as_str())).await;
    }
    let mut woken = 0;
    while let Some(joined) = waiters.join_next().await {
        let (i, outcome) = joined.unwrap();
        assert_eq!(
            outcome,
            Some(FlowOutcome::Authorized {
                revision: Revision::new(i as u64)
            })
        );
        woken += 1;
    }
    assert_eq!(woken, 300);
    assert_eq!(connection_threads(), 2);
}
