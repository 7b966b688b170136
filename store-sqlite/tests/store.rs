//! Behaviour beyond the conformance suite: what is kept in columns, how bad
//! rows are reported, purge and its background task, and waking in-process
//! waiters with no polling at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_authkit_core::{
    Error, FlowOutcome, PendingFlow, PendingStore, Revision, Timestamp, TokenKey, TokenRecord,
    TokenStore,
};
use mcp_authkit_store_sqlite::SqliteStore;
use tokio::task::JoinSet;

fn flow(key: &TokenKey, ttl: Duration) -> PendingFlow {
    PendingFlow::new(
        key.clone(),
        "http://127.0.0.1:9/cb",
        vec!["read".into()],
        Timestamp::now(),
        ttl,
    )
}

async fn count(store: &SqliteStore, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(store.pool())
        .await
        .unwrap()
}

async fn temp_store(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(dir.path().join("store.db"))
        .await
        .unwrap()
}

#[tokio::test]
async fn revision_and_expiry_live_in_columns() {
    let dir = tempfile::tempdir().unwrap();
    let store = temp_store(&dir).await;
    let key = TokenKey::new("github", "alice");
    let expires = Timestamp::from_unix_millis(1_900_000_000_000);
    let record = TokenRecord::new("secret-access", Timestamp::now()).with_expires_at(expires);
    let revision = store.put(&key, &record).await.unwrap();
    let (stored_revision, stored_expiry): (i64, Option<i64>) = sqlx::query_as(
        "SELECT revision, expires_at FROM mcp_authkit_tokens WHERE provider = ?1 AND subject = ?2",
    )
    .bind("github")
    .bind("alice")
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(stored_revision as u64, revision.get());
    assert_eq!(stored_expiry, Some(expires.unix_millis()));

    let f = flow(&key, Duration::from_secs(60));
    store.insert(&f).await.unwrap();
    let flow_expiry: i64 =
        sqlx::query_scalar("SELECT expires_at FROM mcp_authkit_flows WHERE state = ?1")
            .bind(f.state.as_str())
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(flow_expiry, f.expires_at.unix_millis());
}

/// Keys with NUL characters and keys that differ only after one are kept
/// apart, and scans list them exactly.
#[tokio::test]
async fn keys_with_nul_characters_stay_apart() {
    let dir = tempfile::tempdir().unwrap();
    let store = temp_store(&dir).await;
    let keys = [
        TokenKey::new("p\0", "s"),
        TokenKey::new("p", "\0s"),
        TokenKey::new("p\0x", "s"),
        TokenKey::new("p\0y", "s"),
        TokenKey::new("p", "s"),
    ];
    for (i, key) in keys.iter().enumerate() {
        store
            .put(key, &TokenRecord::new(format!("t{i}"), Timestamp::now()))
            .await
            .unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        let stored = TokenStore::get(&store, key).await.unwrap().expect("stored");
        use mcp_authkit_core::ExposeSecret;
        assert_eq!(stored.record.access_token.expose_secret(), format!("t{i}"));
    }
    let page = store.scan(None, 100).await.unwrap();
    let mut listed = page.items;
    listed.sort();
    let mut expected = keys.to_vec();
    expected.sort();
    assert_eq!(listed, expected);
}

/// Revisions from one counter: instances on the same file never hand out
/// the same revision, also across deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revisions_are_unique_across_instances() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(Arc::new(SqliteStore::open(&path).await.unwrap()));
    }
    let mut tasks = JoinSet::new();
    for i in 0..60 {
        let store = Arc::clone(&stores[i % 3]);
        tasks.spawn(async move {
            let key = TokenKey::new("p", format!("s{}", i % 5));
            let revision = store
                .put(&key, &TokenRecord::new("t", Timestamp::now()))
                .await
                .unwrap();
            if i % 4 == 0 {
                store.delete(&key).await.unwrap();
            }
            revision
        });
    }
    let mut revisions = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        revisions.push(joined.unwrap());
    }
    revisions.sort();
    revisions.dedup();
    assert_eq!(revisions.len(), 60, "no revision handed out twice");
}

/// A row that does not decode names its row and never quotes its content;
/// a record written by a newer release is refused as such.
#[tokio::test]
async fn bad_rows_are_reported_without_their_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let store = temp_store(&dir).await;
    let key = TokenKey::new("github", "mallory");
    store
        .put(&key, &TokenRecord::new("x", Timestamp::now()))
        .await
        .unwrap();
    let corrupt = br#"{"v":1,"access_token":"s3cr3t-token","token_type":7,"obtained_at":1}"#;
    sqlx::query("UPDATE mcp_authkit_tokens SET record = ?1")
        .bind(&corrupt[..])
        .execute(store.pool())
        .await
        .unwrap();
    let error = TokenStore::get(&store, &key).await.unwrap_err();
    assert!(matches!(error, Error::Decode { .. }), "{error:?}");
    let message = format!("{error} / {error:?}");
    assert!(!message.contains("s3cr3t-token"), "{message}");
    assert!(message.contains("mallory"), "names the row: {message}");

    sqlx::query("UPDATE mcp_authkit_tokens SET record = ?1")
        .bind(&br#"{"v":99,"access_token":"s3cr3t-token"}"#[..])
        .execute(store.pool())
        .await
        .unwrap();
    match TokenStore::get(&store, &key).await.unwrap_err() {
        Error::UnsupportedFormat { found: 99, .. } => {}
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
    assert!(!format!("{store:?}").contains("s3cr3t"));

    // Flows and outcomes: the error names the table and the state's first
    // characters only, since the state is a credential.
    let pending = flow(&key, Duration::from_secs(60));
    store.insert(&pending).await.unwrap();
    let done = flow(&TokenKey::new("github", "done"), Duration::from_secs(60));
    store.insert(&done).await.unwrap();
    store
        .complete(
            &done.key,
            &done.state,
            &FlowOutcome::Failed { reason: "x".into() },
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    for table in [
        "mcp_authkit_flows SET flow",
        "mcp_authkit_outcomes SET outcome",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE {table} = ?1")))
            .bind(&br#"{"v":1,"pkce_verifier":"s3cr3t-verifier"}"#[..])
            .execute(store.pool())
            .await
            .unwrap();
    }
    let shown = |error: Error| {
        assert!(matches!(error, Error::Decode { .. }), "{error:?}");
        format!("{error} / {error:?}")
    };
    for message in [
        shown(store.get_flow(&pending.state).await.unwrap_err()),
        shown(store.take(&pending.state).await.unwrap_err()),
    ] {
        assert!(message.contains("mcp_authkit_flows row"), "{message}");
        assert!(message.contains(&pending.state.as_str()[..4]), "{message}");
        assert!(!message.contains(pending.state.as_str()), "{message}");
        assert!(!message.contains("s3cr3t"), "{message}");
    }
    let message = shown(store.outcome(&done.state).await.unwrap_err());
    assert!(message.contains("mcp_authkit_outcomes row"), "{message}");
    assert!(message.contains(&done.state.as_str()[..4]), "{message}");
    assert!(!message.contains(done.state.as_str()), "{message}");
}

/// Purge counts exactly what expired (nothing expires by itself here) and
/// keeps the rest.
#[tokio::test]
async fn purge_removes_and_counts_expired_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = temp_store(&dir).await;
    let short = Duration::from_millis(100);
    for i in 0..3 {
        store
            .insert(&flow(&TokenKey::new("p", format!("expiring-{i}")), short))
            .await
            .unwrap();
    }
    let done = flow(&TokenKey::new("p", "done"), Duration::from_secs(60));
    store.insert(&done).await.unwrap();
    store.take(&done.state).await.unwrap().unwrap();
    let outcome = FlowOutcome::Failed { reason: "x".into() };
    store
        .complete(&done.key, &done.state, &outcome, short)
        .await
        .unwrap();
    for i in 0..2 {
        store
            .try_acquire_lease(&TokenKey::new("p", format!("lease-{i}")), short)
            .await
            .unwrap()
            .unwrap();
    }
    let live = flow(&TokenKey::new("p", "live"), Duration::from_secs(60));
    store.insert(&live).await.unwrap();
    let live_lease = TokenKey::new("p", "live-lease");
    store
        .try_acquire_lease(&live_lease, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();

    tokio::time::sleep(Duration::from_millis(250)).await;
    let report = store.purge_expired().await.unwrap();
    assert_eq!((report.flows, report.outcomes, report.leases), (3, 1, 2));
    assert_eq!(count(&store, "mcp_authkit_flows").await, 1);
    assert_eq!(count(&store, "mcp_authkit_active_flows").await, 1);
    assert_eq!(count(&store, "mcp_authkit_outcomes").await, 0);
    assert_eq!(count(&store, "mcp_authkit_leases").await, 1);
    assert!(
        PendingStore::get_flow(&store, &live.state)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.purge_expired().await.unwrap().total(), 0);
}

/// The background purge removes expired rows on its own, and stops when
/// its handle is dropped.
#[tokio::test]
async fn purge_task_runs_until_its_handle_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = temp_store(&dir).await;
    let task = store.spawn_purge_task(Duration::from_millis(50));
    assert!(task.is_running());
    let short = Duration::from_millis(50);
    for i in 0..3 {
        store
            .insert(&flow(&TokenKey::new("p", format!("a{i}")), short))
            .await
            .unwrap();
        store
            .try_acquire_lease(&TokenKey::new("p", format!("a{i}")), short)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&store, "mcp_authkit_flows").await + count(&store, "mcp_authkit_leases").await > 0 {
        assert!(
            Instant::now() < deadline,
            "the purge task removes expired rows"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&store, "mcp_authkit_active_flows").await, 0);

    drop(task);
    for i in 0..3 {
        store
            .insert(&flow(&TokenKey::new("p", format!("b{i}")), short))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        count(&store, "mcp_authkit_flows").await,
        3,
        "a dropped task purges nothing more"
    );
}

/// With polling set to once an hour, waiters on one instance still wake at
/// once when another instance in this process completes their flow: the
/// in-process wake needs no polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_completion_wakes_waiters_without_polling() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let hour = Duration::from_secs(3600);
    let waiting = Arc::new(
        SqliteStore::options(&path)
            .poll_interval(hour, hour)
            .open()
            .await
            .unwrap(),
    );
    let completing = SqliteStore::open(&path).await.unwrap();
    let key = TokenKey::new("p", "wake");
    let f = flow(&key, Duration::from_secs(60));
    waiting.insert(&f).await.unwrap();
    let mut waiters = JoinSet::new();
    for _ in 0..20 {
        let store = Arc::clone(&waiting);
        let state = f.state.clone();
        waiters.spawn(async move { store.wait(&state, Duration::from_secs(30)).await.unwrap() });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let outcome = FlowOutcome::Authorized {
        revision: Revision::new(7),
    };
    completing.take(&f.state).await.unwrap().unwrap();
    let completed_at = Instant::now();
    completing
        .complete(&key, &f.state, &outcome, Duration::from_secs(60))
        .await
        .unwrap();
    while let Some(joined) = waiters.join_next().await {
        assert_eq!(joined.unwrap(), Some(outcome.clone()));
    }
    assert!(
        completed_at.elapsed() < Duration::from_secs(5),
        "woken by the completion, not by a poll: {:?}",
        completed_at.elapsed()
    );
}

/// 200 waits racing 200 completions from another instance, with polling
/// off in effect: every wait returns its outcome, so none registers too late
/// to be woken and none misses a completion that landed just before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_waits_and_completions_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let hour = Duration::from_secs(3600);
    let waiting = Arc::new(
        SqliteStore::options(&path)
            .poll_interval(hour, hour)
            .open()
            .await
            .unwrap(),
    );
    let completing = Arc::new(SqliteStore::open(&path).await.unwrap());
    let mut flows = Vec::new();
    for i in 0..200 {
        let f = flow(
            &TokenKey::new("race", format!("u{i}")),
            Duration::from_secs(60),
        );
        waiting.insert(&f).await.unwrap();
        flows.push(f);
    }
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, f) in flows.into_iter().enumerate() {
        let outcome = FlowOutcome::Authorized {
            revision: Revision::new(i as u64),
        };
        let waiter = {
            let store = Arc::clone(&waiting);
            let state = f.state.clone();
            tokio::spawn(async move { store.wait(&state, Duration::from_secs(20)).await.unwrap() })
        };
        let store = Arc::clone(&completing);
        let expected = outcome.clone();
        tasks.spawn(async move {
            if i % 2 == 0 {
                tokio::task::yield_now().await;
            }
            store
                .complete(&f.key, &f.state, &outcome, Duration::from_secs(60))
                .await
                .unwrap();
            (waiter.await.unwrap(), expected)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (got, expected) = joined.unwrap();
        assert_eq!(got, Some(expected));
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "no wait ran into its timeout"
    );
}

/// A scan whose last page is exactly full says it is complete, rather than
/// sending the caller after an empty page.
#[tokio::test]
async fn a_full_last_page_ends_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = temp_store(&dir).await;
    for i in 0..6 {
        store
            .put(
                &TokenKey::new("scan", format!("user-{i}")),
                &TokenRecord::new("t", Timestamp::now()),
            )
            .await
            .unwrap();
    }
    let first = store.scan(None, 3).await.unwrap();
    assert_eq!(first.items.len(), 3);
    let next = first.next.expect("three more keys follow");
    let last = store.scan(Some(&next), 3).await.unwrap();
    assert_eq!(last.items.len(), 3);
    assert_eq!(last.next, None, "nothing follows the last key");
}

/// Health: the default ping (one read of a key no one uses) and its
/// latency, for tokens and flows.
#[tokio::test]
async fn ping_answers_with_its_latency() {
    let dir = tempfile::tempdir().unwrap();
    let store = temp_store(&dir).await;
    assert_eq!(TokenStore::backend_name(&store), "sqlite");
    assert_eq!(PendingStore::pending_backend_name(&store), "sqlite");
    let latency = store.ping().await.unwrap();
    assert!(latency < Duration::from_secs(5), "{latency:?}");
    store.ping_pending().await.unwrap();
}
