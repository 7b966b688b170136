//! Token reads on the calling thread (the store's direct read path): always
//! as fresh as a read through sqlx, whatever another process or connection
//! wrote, and independent of the pool.

mod common;

use std::time::Duration;

use common::{ChildProcess, whole_step, writer_key};
use mcp_authkit_core::{Timestamp, TokenKey, TokenRecord, TokenStore};
use mcp_authkit_store_sqlite::SqliteStore;

/// Entry point of the child process; does nothing in a normal test run.
#[test]
fn child_entry() {
    common::run_child_if_requested();
}

/// Another process writes tokens as fast as it can; each time it reports a
/// write, this process reads the key at once and must get that write or a
/// later one: a read never serves a token older than the last commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_sees_the_last_write_of_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reads.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let mut child = ChildProcess::spawn("child_entry", "writer", &path, &[]);
    for _ in 0..300 {
        let report = child.next_report().await.expect("the writer runs");
        let step: u64 = report.strip_prefix("WROTE ").unwrap().parse().unwrap();
        let stored = store
            .get(&writer_key(step))
            .await
            .unwrap()
            .expect("the token the other process wrote");
        let seen = whole_step(&stored.record);
        assert!(
            seen >= step,
            "read step {seen} after step {step} was committed"
        );
    }
    child.child.start_kill().unwrap();
    let _ = child.child.wait().await;
}

/// A delete through another connection is seen by the next read.
#[tokio::test]
async fn a_deleted_token_is_gone_for_the_next_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reads.db");
    let reader = SqliteStore::open(&path).await.unwrap();
    let writer = SqliteStore::open(&path).await.unwrap();
    let key = TokenKey::new("github", "alice");
    for round in 0..50 {
        let revision = writer
            .put(
                &key,
                &TokenRecord::new(format!("t{round}"), Timestamp::now()),
            )
            .await
            .unwrap();
        assert_eq!(reader.get(&key).await.unwrap().unwrap().revision, revision);
        sqlx::query("DELETE FROM mcp_authkit_tokens WHERE provider = 'github'")
            .execute(writer.pool())
            .await
            .unwrap();
        assert!(reader.get(&key).await.unwrap().is_none(), "round {round}");
    }
}

/// A valid-token read does not queue for a pooled connection: it goes on
/// while every connection of the pool is taken.
#[tokio::test]
async fn reads_go_on_while_the_pool_is_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::options(dir.path().join("reads.db"))
        .max_connections(1)
        .open()
        .await
        .unwrap();
    let key = TokenKey::new("github", "alice");
    let revision = store
        .put(&key, &TokenRecord::new("t", Timestamp::now()))
        .await
        .unwrap();
    let held = store.pool().acquire().await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), store.get(&key))
        .await
        .expect("the read does not wait for the pool")
        .unwrap();
    assert_eq!(read.unwrap().revision, revision);
    drop(held);
}

/// After `close`, reads fail as every other operation does.
#[tokio::test]
async fn a_closed_store_refuses_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("reads.db"))
        .await
        .unwrap();
    let key = TokenKey::new("github", "alice");
    store
        .put(&key, &TokenRecord::new("t", Timestamp::now()))
        .await
        .unwrap();
    store.get(&key).await.unwrap().unwrap();
    store.close().await;
    assert!(store.get(&key).await.is_err());
}
