//! Purging a large backlog never stops the world: it deletes in short
//! transactions, and writers of the process get through in between.

use std::time::Instant;

use mcp_authkit_core::{PendingStore, Timestamp, TokenKey, TokenRecord, TokenStore};
use mcp_authkit_store_sqlite::SqliteStore;

async fn count(store: &SqliteStore, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// `n` flows, active marks and outcomes that expired long ago, written in
/// one statement each (the purge never decodes them).
async fn expired_backlog(store: &SqliteStore, n: i64) {
    for sql in [
        "INSERT INTO mcp_authkit_flows (state, provider, subject, expires_at, flow)
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM i WHERE x < ?1)
         SELECT 'state-' || x, 'backlog', 'user-' || x, 1000 + x, x'00' FROM i",
        "INSERT INTO mcp_authkit_active_flows (provider, subject, state, expires_at)
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM i WHERE x < ?1)
         SELECT 'backlog', 'user-' || x, 'state-' || x, 1000 + x FROM i",
        "INSERT INTO mcp_authkit_outcomes (state, expires_at, outcome)
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM i WHERE x < ?1)
         SELECT 'done-' || x, 1000 + x, x'00' FROM i",
    ] {
        sqlx::query(sql)
            .bind(n)
            .execute(store.pool())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_get_through_while_a_large_backlog_is_purged() {
    const BACKLOG: i64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let writer = SqliteStore::open(&path).await.unwrap();
    expired_backlog(&store, BACKLOG).await;
    let live = TokenKey::new("live", "user");
    let record = TokenRecord::new("token", Timestamp::now());

    let purge = tokio::spawn({
        let store = store.clone();
        async move {
            let report = store.purge_expired().await.unwrap();
            (report, Instant::now())
        }
    });
    // Writes from another instance while the purge runs: each finishes
    // before the purge does only if the purge lets go of the lock between
    // its batches. One transaction for the whole backlog lets at most the
    // write already in progress through.
    let mut finished = Vec::new();
    while !purge.is_finished() {
        writer.put(&live, &record).await.unwrap();
        finished.push(Instant::now());
    }
    let (report, purged_at) = purge.await.unwrap();
    let during = finished.iter().filter(|at| **at < purged_at).count();

    assert_eq!(
        (report.flows, report.outcomes),
        (BACKLOG as u64, BACKLOG as u64)
    );
    for table in [
        "mcp_authkit_flows",
        "mcp_authkit_active_flows",
        "mcp_authkit_outcomes",
    ] {
        assert_eq!(count(&store, table).await, 0, "{table} purged");
    }
    assert!(
        during >= 5,
        "only {during} writes finished while the purge ran: it held the lock throughout"
    );
    assert!(writer.get(&live).await.unwrap().is_some());
}

/// The purge commits without an fsync on a connection of its own; every
/// connection left in the pool still commits with `synchronous=FULL`.
#[tokio::test]
async fn the_purge_setting_never_reaches_pooled_connections() {
    const FULL: i64 = 2;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::options(dir.path().join("store.db"))
        .max_connections(2)
        .open()
        .await
        .unwrap();
    expired_backlog(&store, 1000).await;
    for _ in 0..3 {
        store.purge_expired().await.unwrap();
        expired_backlog_again(&store).await;
    }
    // Every connection the pool holds, taken at once.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(store.pool().acquire().await.unwrap());
    }
    for conn in &mut held {
        let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(level, FULL, "a pooled connection commits without fsync");
    }
}

/// Rows expired again after a purge (new states, same shape).
async fn expired_backlog_again(store: &SqliteStore) {
    sqlx::query(
        "INSERT INTO mcp_authkit_flows (state, provider, subject, expires_at, flow)
         WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM i WHERE x < 300)
         SELECT 'again-' || x || '-' || abs(random()), 'backlog', 'u' || x, 1000, x'00' FROM i",
    )
    .execute(store.pool())
    .await
    .unwrap();
}
