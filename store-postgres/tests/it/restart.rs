//! A restart of the server: a private cluster (initdb + pg_ctl on its own
//! port and data directory, never the shared server), stopped and started
//! under a running store.

use std::time::Duration;

use mcp_authkit_core::{
    FlowOutcome, PendingStore, Revision, Timestamp, TokenKey, TokenRecord, TokenStore,
};
use mcp_authkit_store_postgres::PostgresStore;

use crate::cluster::Cluster;
use crate::common::{eventually, flow};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_store_survives_a_server_restart() {
    let Some(cluster) = Cluster::start_new_or_explain() else {
        return;
    };
    let store = PostgresStore::options(&cluster.url("postgres"))
        .schema("restart")
        .connect_timeout(Duration::from_secs(3))
        .open()
        .await
        .unwrap();
    // Another role completes flows: another listener hub in this process,
    // so its completions reach the waiter only through NOTIFY.
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&cluster.url("postgres"))
        .await
        .unwrap();
    sqlx::raw_sql("CREATE ROLE other LOGIN SUPERUSER")
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);
    let key = TokenKey::new("github", "alice");
    let before = store
        .put(
            &key,
            &TokenRecord::new("kept", Timestamp::now()).with_refresh_token("rt"),
        )
        .await
        .unwrap();
    let f = flow(&key, MINUTE);
    store.insert(&f).await.unwrap();
    let waiter = {
        let (store, state) = (store.clone(), f.state.clone());
        tokio::spawn(async move { store.wait(&state, MINUTE).await })
    };
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_some())
        .await
    );
    let first_epoch = store.listener_epoch().unwrap();

    cluster.stop();
    let error = store.get(&key).await.expect_err("the server is down");
    assert!(error.is_retryable(), "{error}");
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_none())
        .await,
        "the listener sees the server go"
    );
    cluster.start();

    // Reads work again once the server is back, and nothing was lost.
    let read = eventually(Duration::from_secs(20), async || {
        store.get(&key).await.is_ok()
    })
    .await;
    assert!(read, "the store reconnects");
    assert_eq!(store.get(&key).await.unwrap().unwrap().revision, before);
    assert!(
        eventually(Duration::from_secs(20), async || store
            .listener_epoch()
            .is_some_and(|e| e > first_epoch))
        .await,
        "the listener is back"
    );
    let other = PostgresStore::options(&cluster.url("other"))
        .schema("restart")
        .open()
        .await
        .unwrap();
    other
        .take(&f.state)
        .await
        .unwrap()
        .expect("the flow survived");
    let outcome = FlowOutcome::Authorized {
        revision: Revision::new(9),
    };
    other
        .complete(&key, &f.state, &outcome, MINUTE)
        .await
        .unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter wakes after the restart");
    assert_eq!(woken.unwrap().unwrap(), Some(outcome));
    let after = store
        .put(&key, &TokenRecord::new("new", Timestamp::now()))
        .await
        .unwrap();
    assert!(after > before, "revisions still grow after the restart");
}
