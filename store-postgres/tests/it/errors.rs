//! Classified errors: what a failure says, and whether it is retryable.

use std::time::Duration;

use mcp_authkit_core::{Error, PendingStore, Timestamp, TokenKey, TokenRecord, TokenStore};
use mcp_authkit_store_postgres::{PostgresStore, testing};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor};

use crate::common::{Schema, url_as};

fn explained(error: &Error, words: &str, retryable: bool) {
    assert_eq!(error.is_retryable(), retryable, "{error}");
    assert!(error.to_string().contains(words), "{words:?} in: {error}");
}

#[tokio::test]
async fn an_unreachable_server_is_retryable() {
    // Port 1 on loopback: nothing listens, the connection is refused.
    let error = PostgresStore::options("postgres://someone:secret-pw@127.0.0.1:1/test")
        .connect_timeout(Duration::from_secs(5))
        .open()
        .await
        .expect_err("unreachable");
    explained(&error, "cannot be reached", true);
    assert!(!format!("{error:?}").contains("secret-pw"));
}

#[tokio::test]
async fn an_unknown_role_is_bad_credentials() {
    let url = url_as("mcp_authkit_no_such_role").await;
    let error = PostgresStore::connect(&url).await.expect_err("refused");
    explained(&error, "refused the login", false);
}

#[tokio::test]
async fn a_missing_database_says_so() {
    let url = testing::database_url().await;
    let options: PgConnectOptions = url.parse().unwrap();
    let url = format!(
        "postgres://{}@{}:{}/mcp_authkit_no_such_db",
        options.get_username(),
        options.get_host(),
        options.get_port()
    );
    let error = PostgresStore::connect(&url).await.expect_err("no database");
    explained(&error, "does not exist", false);
}

#[tokio::test]
async fn a_bad_url_never_echoes_it() {
    let error = PostgresStore::connect("mysql://root:hunter2@x/y")
        .await
        .expect_err("not postgres");
    assert!(!error.to_string().contains("hunter2"), "{error}");
    assert!(matches!(error, Error::InvalidInput { .. }));
}

/// A pool on the test server with session settings, for `from_pool`.
async fn pool_with(settings: &[(&str, &str)]) -> sqlx::PgPool {
    let url = testing::database_url().await;
    let options: PgConnectOptions = url.parse().unwrap();
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.options(settings.iter().copied()))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_statement_timeout_is_retryable_and_writes_nothing() {
    let schema = Schema::new("timeout").await;
    schema.open().await.close().await;
    let store = mcp_authkit_store_postgres::PostgresStoreOptions::from_pool(
        pool_with(&[("statement_timeout", "300")]).await,
    )
    .schema(&schema.name)
    .open()
    .await
    .unwrap();
    // Another session holds the table, so the write waits past the timeout.
    let mut blocker = crate::common::admin().await;
    let mut tx = blocker.begin().await.unwrap();
    tx.execute(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE \"{}\".mcp_authkit_tokens IN ACCESS EXCLUSIVE MODE",
        schema.name
    )))
    .await
    .unwrap();
    let key = TokenKey::new("github", "alice");
    let error = store
        .put(&key, &TokenRecord::new("t", Timestamp::now()))
        .await
        .expect_err("timed out");
    explained(&error, "statement_timeout", true);
    tx.rollback().await.unwrap();
    assert!(store.get(&key).await.unwrap().is_none(), "nothing written");
    store
        .put(&key, &TokenRecord::new("t", Timestamp::now()))
        .await
        .expect("works once the lock is gone");
}

#[tokio::test]
async fn a_read_only_database_is_not_retryable() {
    let schema = Schema::new("readonly").await;
    let writable = schema.open().await;
    let key = TokenKey::new("github", "alice");
    writable
        .put(&key, &TokenRecord::new("kept", Timestamp::now()))
        .await
        .unwrap();
    // As on a standby: reads work, writes are refused.
    let store = mcp_authkit_store_postgres::PostgresStoreOptions::from_pool(
        pool_with(&[("default_transaction_read_only", "on")]).await,
    )
    .schema(&schema.name)
    .open()
    .await
    .expect("a migrated schema opens read-only");
    assert!(store.get(&key).await.unwrap().is_some());
    let error = store
        .put(&key, &TokenRecord::new("lost", Timestamp::now()))
        .await
        .expect_err("read-only");
    explained(&error, "point the store at the primary", false);
    let kept = writable.get(&key).await.unwrap().unwrap();
    assert_eq!(
        mcp_authkit_core::ExposeSecret::expose_secret(&kept.record.access_token),
        "kept"
    );
}

/// A database made read-only for every session (`ALTER DATABASE ... SET
/// default_transaction_read_only`, as after a failover to a standby): every
/// kind of write of both traits (put, compare-and-swap, both deletes, a
/// lease, insert, take, complete, purge), the multi-statement ones
/// included, is refused clearly and changes nothing; reads and waits still
/// answer.
#[tokio::test]
async fn a_read_only_database_refuses_every_write() {
    let database = format!("mcp_authkit_ro_{}", crate::common::unique_tag());
    crate::common::admin_exec(format!("CREATE DATABASE {database}")).await;
    let _drop = DropDatabase(database.clone());
    let admin: PgConnectOptions = testing::database_url().await.parse().unwrap();
    let url = format!(
        "postgres://{}@{}:{}/{database}",
        admin.get_username(),
        admin.get_host(),
        admin.get_port()
    );
    let writable = PostgresStore::options(&url)
        .schema("ro")
        .open()
        .await
        .unwrap();
    let key = TokenKey::new("github", "alice");
    let kept = writable
        .put(&key, &TokenRecord::new("kept", Timestamp::now()))
        .await
        .unwrap();
    let f = crate::common::flow(&key, Duration::from_secs(600));
    writable.insert(&f).await.unwrap();
    writable.close().await;
    crate::common::admin_exec(format!(
        "ALTER DATABASE {database} SET default_transaction_read_only = on"
    ))
    .await;

    let store = PostgresStore::options(&url)
        .schema("ro")
        .open()
        .await
        .expect("a migrated schema opens read-only");
    let put = store
        .put(&key, &TokenRecord::new("lost", Timestamp::now()))
        .await
        .expect_err("read-only");
    explained(&put, "point the store at the primary", false);
    let other = crate::common::flow(&TokenKey::new("github", "bob"), Duration::from_secs(600));
    let insert = store.insert(&other).await.expect_err("read-only");
    explained(&insert, "point the store at the primary", false);
    let outcome = mcp_authkit_core::FlowOutcome::Authorized { revision: kept };
    let complete = store
        .complete(&key, &f.state, &outcome, Duration::from_secs(60))
        .await
        .expect_err("read-only");
    explained(&complete, "point the store at the primary", false);
    let take = store.take(&f.state).await.expect_err("read-only");
    explained(&take, "point the store at the primary", false);
    let refusals = [
        store
            .compare_and_swap(
                &key,
                Some(kept),
                &TokenRecord::new("lost", Timestamp::now()),
            )
            .await
            .map(drop),
        store.delete(&key).await.map(drop),
        store.delete_if_revision(&key, kept).await.map(drop),
        store
            .try_acquire_lease(&key, Duration::from_secs(60))
            .await
            .map(drop),
        store.purge_expired().await.map(drop),
    ];
    for (i, refused) in refusals.into_iter().enumerate() {
        explained(
            &refused.expect_err(&format!("write {i} is refused")),
            "point the store at the primary",
            false,
        );
    }

    // Nothing changed, and reads still answer.
    let got = store.get(&key).await.unwrap().unwrap();
    assert_eq!(got.revision, kept);
    assert!(store.get_flow(&f.state).await.unwrap().is_some());
    assert_eq!(
        store.active_flow(&key).await.unwrap(),
        Some(f.state.clone())
    );
    assert_eq!(store.active_flow(&other.key).await.unwrap(), None);
    assert_eq!(store.outcome(&f.state).await.unwrap(), None);
    // LISTEN is allowed in a read-only transaction: a wait listens, reads,
    // and ends at its deadline with nothing stored.
    assert_eq!(
        store
            .wait(&f.state, Duration::from_millis(300))
            .await
            .unwrap(),
        None
    );
    assert!(
        crate::common::eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_some())
        .await,
        "the wait listened: {:?}",
        store.listener_failure()
    );
    store.close().await;
}

struct DropDatabase(String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let database = self.0.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(crate::common::admin_exec(format!(
                    "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                )))
        })
        .join();
    }
}
