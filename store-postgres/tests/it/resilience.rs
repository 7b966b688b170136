//! Killed connections, a listener that goes away and comes back, and many
//! waiters on one listening connection.

use std::time::Duration;

use mcp_authkit_core::{
    FlowOutcome, PendingStore, Revision, Timestamp, TokenKey, TokenRecord, TokenStore,
};
use mcp_authkit_store_postgres::PostgresStore;
use sqlx::{Connection, Executor};

use crate::common::{
    AppRole, Schema, admin, admin_exec, eventually, flow, listener_pids, terminate, url_as,
};

const MINUTE: Duration = Duration::from_secs(60);

fn authorized(n: u64) -> FlowOutcome {
    FlowOutcome::Authorized {
        revision: Revision::new(n),
    }
}

#[tokio::test]
async fn a_killed_pool_connection_fails_retryably_and_the_store_goes_on() {
    let schema = Schema::new("killpool").await;
    let app_name = format!("mcp-authkit-test-{}", schema.name);
    let store = PostgresStore::options(&schema.url)
        .schema(&schema.name)
        .application_name(&app_name)
        .open()
        .await
        .unwrap();
    let key = TokenKey::new("github", "alice");
    let f = flow(&key, MINUTE);
    store.insert(&f).await.unwrap();
    let waiter = {
        let (store, state) = (store.clone(), f.state.clone());
        tokio::spawn(async move { store.wait(&state, MINUTE).await })
    };

    // A write blocked behind another session's lock, then killed.
    let mut blocker = admin().await;
    let mut tx = blocker.begin().await.unwrap();
    tx.execute(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE \"{}\".mcp_authkit_tokens IN ACCESS EXCLUSIVE MODE",
        schema.name
    )))
    .await
    .unwrap();
    let put = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move {
            store
                .put(&key, &TokenRecord::new("t1", Timestamp::now()))
                .await
        })
    };
    let mut pid = None;
    let found = eventually(Duration::from_secs(10), async || {
        let mut conn = admin().await;
        pid = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
             AND wait_event_type = 'Lock'",
        )
        .bind(&app_name)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        pid.is_some()
    })
    .await;
    assert!(found, "the put waits on the lock");
    terminate(pid.unwrap()).await;
    let error = put.await.unwrap().expect_err("the killed write fails");
    assert!(error.is_retryable(), "{error}");
    assert!(
        error.to_string().contains("closed the connection"),
        "{error}"
    );
    tx.rollback().await.unwrap();

    // Later operations succeed on fresh connections, and waiters still wake.
    let revision = store
        .put(&key, &TokenRecord::new("t2", Timestamp::now()))
        .await
        .expect("the next write works");
    assert_eq!(store.get(&key).await.unwrap().unwrap().revision, revision);
    store.take(&f.state).await.unwrap().unwrap();
    store
        .complete(&key, &f.state, &authorized(1), MINUTE)
        .await
        .unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter wakes");
    assert_eq!(woken.unwrap().unwrap(), Some(authorized(1)));
}

#[tokio::test]
async fn a_completion_while_the_listener_is_down_is_not_lost() {
    let schema = Schema::new("listener").await;
    // The completing side: another user, so another listener hub than the
    // waiters' (what another process would be; the conformance suite's
    // cross_process scenario covers a real one).
    let owner = schema.open().await;
    let role = AppRole::new(&schema.name, true).await;
    let waiters_store = PostgresStore::options(&url_as(&role.name).await)
        .schema(&schema.name)
        .open()
        .await
        .unwrap();
    let keys: Vec<TokenKey> = (0..4)
        .map(|i| TokenKey::new("github", format!("user-{i}")))
        .collect();
    let mut flows = Vec::new();
    let mut waits = Vec::new();
    for key in &keys {
        let f = flow(key, MINUTE);
        owner.insert(&f).await.unwrap();
        let (store, state) = (waiters_store.clone(), f.state.clone());
        waits.push(tokio::spawn(
            async move { store.wait(&state, MINUTE).await },
        ));
        flows.push(f);
    }
    assert!(
        eventually(Duration::from_secs(10), async || {
            waiters_store.listener_epoch().is_some() && waiters_store.waited_states() == 4
        })
        .await
    );
    let first_epoch = waiters_store.listener_epoch().unwrap();
    let pids = listener_pids(waiters_store.channel()).await;
    assert_eq!(pids.len(), 1, "one listener for every waiter: {pids:?}");

    // Keep the listener from coming back (a retryable refusal: too many
    // connections for the role), then kill it.
    admin_exec(format!("ALTER ROLE {} CONNECTION LIMIT 0", role.name)).await;
    terminate(pids[0]).await;
    assert!(
        eventually(Duration::from_secs(10), async || waiters_store
            .listener_epoch()
            .is_none())
        .await,
        "the waiters' side sees its listener down"
    );
    // Completed while nobody listens: the notification is lost, but the
    // waiter reads through its pool (whose sessions outlive the limit)
    // while the listener stays down.
    owner.take(&flows[0].state).await.unwrap().unwrap();
    owner
        .complete(&keys[0], &flows[0].state, &authorized(1), MINUTE)
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), waits.remove(0))
        .await
        .expect("found by the pool's re-read while the listener is down")
        .unwrap()
        .unwrap();
    assert_eq!(first, Some(authorized(1)));
    assert_eq!(waiters_store.listener_epoch(), None, "still down");

    // The listener comes back; every waiter reads again.
    admin_exec(format!("ALTER ROLE {} CONNECTION LIMIT -1", role.name)).await;
    assert!(
        eventually(Duration::from_secs(10), async || waiters_store
            .listener_epoch()
            .is_some_and(|epoch| epoch > first_epoch))
        .await,
        "listening again"
    );
    assert_eq!(listener_pids(waiters_store.channel()).await.len(), 1);

    // Later completions are notified as before.
    for (i, (key, f)) in keys.iter().zip(&flows).enumerate().skip(1) {
        owner.take(&f.state).await.unwrap().unwrap();
        owner
            .complete(key, &f.state, &authorized(i as u64 + 1), MINUTE)
            .await
            .unwrap();
    }
    for (i, wait) in waits.into_iter().enumerate() {
        let outcome = tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("woken by the notification")
            .unwrap()
            .unwrap();
        assert_eq!(outcome, Some(authorized(i as u64 + 2)));
    }
}

const COMPLETER_SCHEMA: &str = "MCP_AUTHKIT_PG_COMPLETER_SCHEMA";

/// Helper, not a test: the second process of
/// `a_thousand_waiters_hold_one_listening_connection`. Reads flow states
/// on stdin, one a line, and takes and completes each; returns at once when
/// not started by that test.
#[test]
#[ignore = "helper: a_thousand_waiters_hold_one_listening_connection runs it as its child process"]
fn completer_child() {
    let Ok(schema) = std::env::var(COMPLETER_SCHEMA) else {
        return;
    };
    // All of them first: the parent writes them and closes stdin.
    let states: Vec<String> = std::io::stdin().lines().map(Result::unwrap).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Not a `Schema`: the parent drops it.
        let store =
            PostgresStore::options(&mcp_authkit_store_postgres::testing::database_url().await)
                .schema(&schema)
                .open()
                .await
                .unwrap();
        let mut completed = 0;
        for state in &states {
            let state = mcp_authkit_core::FlowState::new(state.as_str());
            let f = store
                .take(&state)
                .await
                .unwrap()
                .expect("the flow is there");
            store
                .complete(&f.key, &state, &authorized(1), MINUTE)
                .await
                .unwrap();
            completed += 1;
        }
        // Past libtest's capture, for the parent.
        println!("\nCOMPLETER:completed {completed}");
    });
}

/// 1,000 waiting flows over three store instances in this process hold one
/// listening connection, and all wake on completions made by a second OS
/// process (so only NOTIFY can wake them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiters_hold_one_listening_connection() {
    const WAITERS: usize = 1000;
    let schema = Schema::new("many").await;
    let stores = [
        schema.open().await,
        schema.open().await,
        schema.open().await,
    ];
    let mut flows = Vec::new();
    for i in 0..WAITERS {
        let f = flow(&TokenKey::new("github", format!("user-{i}")), MINUTE);
        stores[0].insert(&f).await.unwrap();
        flows.push(f);
    }
    let mut waits = tokio::task::JoinSet::new();
    for (i, f) in flows.iter().enumerate() {
        let (store, state) = (stores[i % 3].clone(), f.state.clone());
        waits.spawn(async move { store.wait(&state, MINUTE).await });
    }
    assert!(
        eventually(Duration::from_secs(30), async || {
            stores[0].waited_states() == WAITERS && stores[0].listener_epoch().is_some()
        })
        .await,
        "every waiter registered"
    );
    let listeners = listener_pids(stores[0].channel()).await;
    assert_eq!(listeners.len(), 1, "one LISTEN connection: {listeners:?}");

    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "resilience::completer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(COMPLETER_SCHEMA, &schema.name)
        .env("DATABASE_URL", &schema.url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting this test binary again as the completing process");
    let mut states = String::new();
    for f in &flows {
        states.push_str(f.state.as_str());
        states.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, states.as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the completing process ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(&format!("COMPLETER:completed {WAITERS}")),
        "the completing process failed ({}): {stdout}",
        output.status
    );

    let mut woken = 0;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Some(waited) = tokio::time::timeout_at(give_up, waits.join_next())
        .await
        .expect("every waiter wakes")
    {
        assert_eq!(waited.unwrap().unwrap(), Some(authorized(1)));
        woken += 1;
    }
    assert_eq!(woken, WAITERS);
    assert_eq!(stores[0].waited_states(), 0, "nothing stays registered");
    assert_eq!(
        listener_pids(stores[0].channel()).await,
        listeners,
        "still the one listening connection"
    );
}

/// A loopback TCP proxy to the test server whose connections can be frozen:
/// they stay open but carry no more bytes, as over a dead network path
/// that sends neither FIN nor RST.
struct FreezingProxy {
    port: u16,
    connections:
        std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::atomic::AtomicBool>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    async fn start(upstream: String) -> FreezingProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let registry = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let frozen = std::sync::Arc::new(AtomicBool::new(false));
                registry.lock().unwrap().push(frozen.clone());
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(client_read) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(server_write) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(server_read), Box::new(client_write)),
                ] {
                    let frozen = frozen.clone();
                    tokio::spawn(async move {
                        let mut buffer = vec![0u8; 16 * 1024];
                        loop {
                            let Ok(n) = from.read(&mut buffer).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            while frozen.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            if to.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        FreezingProxy {
            port,
            connections,
            task,
        }
    }

    /// Freezes every connection open now; later ones pass.
    fn freeze_existing(&self) {
        for frozen in self.connections.lock().unwrap().iter() {
            frozen.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listening connection that silently stops answering is found out by
/// the listener's probe and replaced (a new epoch, so waiters read again),
/// instead of leaving every waiter of the process deaf.
#[tokio::test]
async fn a_silently_dead_listener_is_probed_and_replaced() {
    let schema = Schema::new("deadlistener").await;
    let direct = schema.open().await;
    let options: sqlx::postgres::PgConnectOptions = schema.url.parse().unwrap();
    let proxy =
        FreezingProxy::start(format!("{}:{}", options.get_host(), options.get_port())).await;
    let through_proxy = format!(
        "postgres://{}@127.0.0.1:{}/{}",
        options.get_username(),
        proxy.port,
        options.get_database().unwrap_or("postgres")
    );
    let store = PostgresStore::options(&through_proxy)
        .schema(&schema.name)
        .open()
        .await
        .unwrap();
    let f = flow(&TokenKey::new("github", "frozen"), MINUTE * 5);
    direct.insert(&f).await.unwrap();
    let wait = {
        let (store, state) = (store.clone(), f.state.clone());
        tokio::spawn(async move { store.wait(&state, MINUTE * 5).await })
    };
    assert!(
        eventually(Duration::from_secs(10), async || store.listener_epoch()
            == Some(1))
        .await,
        "listening through the proxy"
    );
    proxy.freeze_existing();
    // The probe runs every 15 s and gives a connection 5 s to answer.
    assert!(
        eventually(Duration::from_secs(45), async || store
            .listener_epoch()
            .is_some_and(|epoch| epoch > 1))
        .await,
        "the frozen listening connection was noticed and replaced: {:?}",
        store.listener_epoch()
    );
    wait.abort();
}
