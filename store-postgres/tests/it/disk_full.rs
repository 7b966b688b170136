//! A disk that fills up for real: the store's tables live in a tablespace
//! on a small tmpfs of a private cluster (the WAL stays on the ordinary
//! disk: a full WAL disk makes PostgreSQL stop, not fail one statement).
//! A write that needs space fails with a clear, non-retryable error and
//! leaves nothing half-written; once space is freed, everything works and
//! every earlier write is intact.

use std::time::Duration;

use mcp_authkit_core::{
    Error, ExposeSecret, FlowOutcome, PendingStore, Timestamp, TokenKey, TokenRecord, TokenStore,
};
use mcp_authkit_store_postgres::PostgresStore;

use crate::cluster::{Cluster, Tmpfs};
use crate::common::{ci, flow};

const MINUTE: Duration = Duration::from_secs(60);

/// Incompressible text (TOAST compresses repetitive values to nothing).
fn noise(bytes: usize) -> String {
    let mut text = String::new();
    while text.len() < bytes {
        text.push_str(&mcp_authkit_core::random_urlsafe(64));
    }
    text
}

fn disk_full(error: &Error) {
    assert!(!error.is_retryable(), "{error}");
    assert!(error.to_string().contains("disk is full"), "{error}");
    // The server's own words stay in the chain (SQLSTATE 53100).
    assert!(
        error.to_string().contains("No space left on device"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_clearly_and_writes_nothing() {
    // Declared before the cluster: the cluster stops before it is unmounted.
    let Some(disk) = Tmpfs::mount("4m") else {
        assert!(
            !ci(),
            "CI=true: this test mounts a tmpfs for a tablespace and needs root (mount -t tmpfs)"
        );
        eprintln!("NOT RUN: mounting a tmpfs needs root");
        return;
    };
    let Some(cluster) = Cluster::start_new_or_explain() else {
        return;
    };
    let mut admin = cluster.admin().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLESPACE small LOCATION '{}'",
        disk.path.display()
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    // Every table, index and sequence the store creates goes there.
    sqlx::raw_sql("ALTER DATABASE postgres SET default_tablespace = small")
        .execute(&mut admin)
        .await
        .unwrap();
    let store = PostgresStore::options(&cluster.url("postgres"))
        .schema("full")
        .open()
        .await
        .unwrap();
    let in_small: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_tablespace t ON t.oid = c.reltablespace \
         WHERE n.nspname = 'full' AND t.spcname = 'small' AND c.relname = 'mcp_authkit_tokens'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(in_small, 1, "the store's tables are on the small disk");

    let kept_key = TokenKey::new("github", "kept");
    let kept = store
        .put(&kept_key, &TokenRecord::new("kept", Timestamp::now()))
        .await
        .unwrap();
    let f = flow(&TokenKey::new("github", "flow"), MINUTE * 10);
    store.insert(&f).await.unwrap();

    let filler = disk.fill();

    // Writes that need a new page fail; ones that fit in a page may pass.
    let mut written = Vec::new();
    let mut refused = None;
    for i in 0..500 {
        let key = TokenKey::new("github", format!("user-{i}"));
        let record =
            TokenRecord::new(format!("t{i}"), Timestamp::now()).with_extra("payload", noise(6000));
        match store.put(&key, &record).await {
            Ok(revision) => written.push((key, revision)),
            Err(error) => {
                refused = Some((key, error));
                break;
            }
        }
    }
    let (refused_key, error) = refused.expect("a write on the full disk fails");
    disk_full(&error);
    assert!(
        store.get(&refused_key).await.unwrap().is_none(),
        "nothing written"
    );

    // A completion (several statements in one transaction) rolls back
    // whole: the flow and its active mark, deleted by its first statements,
    // are still there, and no outcome was stored.
    let outcome = FlowOutcome::Failed {
        reason: noise(20_000),
    };
    let error = store
        .complete(&f.key, &f.state, &outcome, MINUTE)
        .await
        .expect_err("the outcome does not fit");
    disk_full(&error);
    assert_eq!(store.outcome(&f.state).await.unwrap(), None);
    assert!(store.get_flow(&f.state).await.unwrap().is_some());
    assert_eq!(
        store.active_flow(&f.key).await.unwrap(),
        Some(f.state.clone())
    );

    // Reads go on while the disk is full.
    assert_eq!(store.get(&kept_key).await.unwrap().unwrap().revision, kept);

    std::fs::remove_file(filler).unwrap();
    let again = store
        .put(&refused_key, &TokenRecord::new("again", Timestamp::now()))
        .await
        .expect("space freed: writes work");
    assert!(again > kept);
    store
        .complete(&f.key, &f.state, &outcome, MINUTE)
        .await
        .expect("space freed: completions work");
    assert_eq!(store.wait(&f.state, MINUTE).await.unwrap(), Some(outcome));
    let got = store.get(&kept_key).await.unwrap().unwrap();
    assert_eq!(got.revision, kept);
    assert_eq!(got.record.access_token.expose_secret(), "kept");
    for (key, revision) in &written {
        assert_eq!(store.get(key).await.unwrap().unwrap().revision, *revision);
    }
    store.close().await;
    drop(cluster);
    drop(disk);
}
