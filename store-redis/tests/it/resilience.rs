//! Connections: how many, and what happens when they break.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mcp_authkit_core::{
    Error, FlowOutcome, FlowState, PendingFlow, PendingStore, Revision, Timestamp, TokenKey,
    TokenRecord, TokenStore,
};
use mcp_authkit_store_redis::RedisStore;
use tokio::task::JoinSet;

use crate::common::{
    Namespace, PrivateRedis, Proxy, clients_named, eventually, kill_clients_named, raw, shared_url,
    subscribed, unique_client_name,
};

const MINUTE: Duration = Duration::from_secs(60);

fn flow(key: &TokenKey) -> PendingFlow {
    PendingFlow::new(
        key.clone(),
        "http://127.0.0.1:9/callback",
        vec![],
        Timestamp::now(),
        MINUTE,
    )
}

fn outcome(n: u64) -> FlowOutcome {
    FlowOutcome::Authorized {
        revision: Revision::new(n),
    }
}

/// Spawns a waiter on `state` that reports what it saw and when.
fn spawn_waiter(
    waiters: &mut JoinSet<(FlowState, Option<FlowOutcome>, Instant)>,
    store: &RedisStore,
    state: &FlowState,
    timeout: Duration,
) {
    let store = store.clone();
    let state = state.clone();
    waiters.spawn(async move {
        let seen = store
            .wait(&state, timeout)
            .await
            .expect("wait never fails here");
        (state, seen, Instant::now())
    });
}

#[tokio::test]
async fn a_thousand_waiters_share_one_subscription_connection() {
    let url = shared_url().await;
    let ns = Namespace::new(&url, "thousand");
    let name = unique_client_name("thousand");
    let store = ns.builder().client_name(&name).connect().await.unwrap();
    assert_eq!(
        clients_named(&url, &name).await.len(),
        1,
        "before any wait: the command connection only"
    );
    let completer = ns.store().await;

    let flows: Vec<PendingFlow> = (0..1000)
        .map(|i| flow(&TokenKey::new("github", format!("user-{i}"))))
        .collect();
    let mut waiters = JoinSet::new();
    for f in &flows {
        // Each waiter holds its own clone of the store; clones share the
        // connections.
        spawn_waiter(
            &mut waiters,
            &store.clone(),
            &f.state,
            Duration::from_secs(30),
        );
    }
    // Several waiters on one flow as well.
    for _ in 0..20 {
        spawn_waiter(
            &mut waiters,
            &store,
            &flows[0].state,
            Duration::from_secs(30),
        );
    }
    subscribed(&url, &name).await;
    // Give every waiter time to register and check the store.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let clients = clients_named(&url, &name).await;
    assert_eq!(
        clients.len(),
        2,
        "1,020 waiters use one command and one subscription connection: {clients:?}"
    );
    assert_eq!(
        clients.iter().filter(|c| c.subscriptions == 1).count(),
        1,
        "one connection carries the one subscription"
    );

    for (i, f) in flows.iter().enumerate() {
        completer
            .complete(&f.key, &f.state, &outcome(i as u64), MINUTE)
            .await
            .unwrap();
    }
    let mut woken = 0;
    while let Some(joined) = waiters.join_next().await {
        let (state, seen, _) = joined.unwrap();
        let i = flows.iter().position(|f| f.state == state).unwrap();
        assert_eq!(seen, Some(outcome(i as u64)));
        woken += 1;
    }
    assert_eq!(woken, 1020);
    assert_eq!(clients_named(&url, &name).await.len(), 2);
}

/// The server kills this test's connections (found by their name, so other
/// tests' connections are untouched) while operations run and flows are
/// waited on.
#[tokio::test]
async fn killed_connections_come_back_and_waiters_still_wake() {
    let url = shared_url().await;
    let ns = Namespace::new(&url, "kill");
    let name = unique_client_name("kill");
    let store = ns
        .builder()
        .client_name(&name)
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let completer = ns.store().await;
    let key = TokenKey::new("github", "kill");
    let f = flow(&key);
    store.insert(&f).await.unwrap();
    let mut waiters = JoinSet::new();
    for _ in 0..5 {
        spawn_waiter(&mut waiters, &store, &f.state, Duration::from_secs(30));
    }
    subscribed(&url, &name).await;

    // Operations keep running on the store while its connections die.
    let failures = Arc::new(std::sync::Mutex::new(Vec::<Error>::new()));
    let successes = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut workers = JoinSet::new();
    for w in 0..8 {
        let (store, failures, successes, stop) = (
            store.clone(),
            Arc::clone(&failures),
            Arc::clone(&successes),
            Arc::clone(&stop),
        );
        workers.spawn(async move {
            let key = TokenKey::new("github", format!("worker-{w}"));
            let record = TokenRecord::new("t", Timestamp::now());
            loop {
                let result = tokio::select! {
                    result = store.put(&key, &record) => result.map(|_| ()),
                    _ = stop.notified() => return,
                };
                match result {
                    Ok(()) => successes.fetch_add(1, Ordering::Relaxed),
                    Err(error) => {
                        failures.lock().unwrap().push(error);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        0
                    }
                };
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(kill_clients_named(&url, &name).await, 2);
    let killed_at = successes.load(Ordering::Relaxed);

    // Both connections come back, named again, the subscription included.
    eventually(Duration::from_secs(10), "reconnection", || async {
        let clients = clients_named(&url, &name).await;
        clients.len() == 2 && clients.iter().any(|c| c.subscriptions == 1)
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "operations after the kill",
        || async { successes.load(Ordering::Relaxed) > killed_at + 50 },
    )
    .await;
    stop.notify_waiters();
    workers.shutdown().await;
    for error in failures.lock().unwrap().iter() {
        assert!(
            error.is_retryable(),
            "an operation cut off by the kill fails retryably: {error}"
        );
    }
    // A completion published after the re-subscription wakes the waiters.
    let completed_at = Instant::now();
    completer
        .complete(&key, &f.state, &outcome(7), MINUTE)
        .await
        .unwrap();
    while let Some(joined) = waiters.join_next().await {
        let (_, seen, at) = joined.unwrap();
        assert_eq!(seen, Some(outcome(7)));
        assert!(at.duration_since(completed_at) < Duration::from_secs(2));
    }
}

/// A waiter loses its connections to Redis, and its reconnections are
/// refused for a while; the flow completes on another replica during that
/// outage, so the announcement never reaches the waiter. Once it is back,
/// it re-subscribes and reads the stored outcome again, and returns it.
#[tokio::test]
async fn a_completion_during_the_waiters_outage_is_not_missed() {
    let server = PrivateRedis::start(&[]);
    let proxy = Proxy::start(server.port).await;
    let prefix = format!("outage-{}", crate::common::random());
    let name = unique_client_name("outage");
    let waiting = RedisStore::builder(proxy.url())
        .prefix(&prefix)
        .client_name(&name)
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let completer = RedisStore::builder(server.url())
        .prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let key = TokenKey::new("github", "outage");
    let f = flow(&key);
    completer.insert(&f).await.unwrap();
    let mut waiters = JoinSet::new();
    spawn_waiter(&mut waiters, &waiting, &f.state, Duration::from_secs(30));
    subscribed(&server.url(), &name).await;

    proxy.refuse(true);
    proxy.cut_all();
    eventually(
        Duration::from_secs(10),
        "the waiter's connections dropping",
        || async { clients_named(&server.url(), &name).await.is_empty() },
    )
    .await;
    // Completed while the waiter cannot hear it.
    completer.take(&f.state).await.unwrap().expect("pending");
    completer
        .complete(&key, &f.state, &outcome(11), MINUTE)
        .await
        .unwrap();
    // Reconnections keep being refused for a moment.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        clients_named(&server.url(), &name).await.is_empty(),
        "the waiter is still cut off"
    );
    let back_at = Instant::now();
    proxy.refuse(false);

    let (_, seen, at) = tokio::time::timeout(Duration::from_secs(15), waiters.join_next())
        .await
        .expect("the waiter returns once it is back, not at its timeout")
        .unwrap()
        .unwrap();
    assert_eq!(seen, Some(outcome(11)), "the outcome stored meanwhile");
    assert!(
        at.duration_since(back_at) < Duration::from_secs(10),
        "woken by its reconnection"
    );
}

/// An operation the server has accepted but not answered when its
/// connection is killed fails with a retryable error; the next one works.
#[tokio::test]
async fn an_operation_in_flight_on_a_killed_connection_fails_retryably() {
    let server = PrivateRedis::start(&[]);
    let url = server.url();
    let ns = Namespace::new(&url, "in-flight");
    let name = unique_client_name("in-flight");
    let store = ns.builder().client_name(&name).connect().await.unwrap();
    let key = TokenKey::new("github", "in-flight");
    let mut admin = raw(&url).await;
    // Scripts wait while writes are paused; CLIENT commands still run.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10_000)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();
    let put = {
        let store = store.clone();
        let key = key.clone();
        tokio::spawn(async move {
            store
                .put(&key, &TokenRecord::new("t", Timestamp::now()))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!put.is_finished(), "the put waits on the paused server");
    assert_eq!(kill_clients_named(&url, &name).await, 1);
    let error = tokio::time::timeout(Duration::from_secs(5), put)
        .await
        .expect("the put returns once its connection is gone")
        .unwrap()
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut admin)
        .await
        .unwrap();
    let revision = store
        .put(&key, &TokenRecord::new("t", Timestamp::now()))
        .await
        .expect("the next operation reconnects");
    assert_eq!(
        TokenStore::get(&store, &key)
            .await
            .unwrap()
            .unwrap()
            .revision,
        revision
    );
}

/// A crashed and restarted server: operations fail retryably while it is
/// down or frozen, work again after it is back, and waiters that waited
/// through it all see a completion published after the restart.
#[tokio::test]
async fn a_redis_restart_is_survived() {
    let mut server = PrivateRedis::start(&[]);
    let url = server.url();
    let ns = Namespace::new(&url, "restart");
    let name = unique_client_name("restart");
    let timeouts = Duration::from_millis(700);
    let store = ns
        .builder()
        .client_name(&name)
        .connect_timeout(timeouts)
        .response_timeout(timeouts)
        .connect()
        .await
        .unwrap();
    let key = TokenKey::new("github", "restart");
    let f = flow(&key);
    store.insert(&f).await.unwrap();
    let mut waiters = JoinSet::new();
    for _ in 0..5 {
        spawn_waiter(&mut waiters, &store, &f.state, Duration::from_secs(30));
    }
    subscribed(&url, &name).await;

    // Frozen: the request is sent and never answered; the response timeout
    // ends it.
    server.freeze();
    let started = Instant::now();
    let error = TokenStore::get(&store, &key).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(started.elapsed() < timeouts * 3, "{:?}", started.elapsed());

    // Killed while a request is in flight.
    let in_flight = {
        let store = store.clone();
        let key = key.clone();
        tokio::spawn(async move { TokenStore::get(&store, &key).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.kill();
    let error = in_flight.await.unwrap().unwrap_err();
    assert!(error.is_retryable(), "{error}");

    // Down: calls fail fast and retryably, never hang.
    let started = Instant::now();
    let error = TokenStore::get(&store, &key).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(started.elapsed() < timeouts * 3, "{:?}", started.elapsed());

    server.restart();
    // Later operations succeed in this same process.
    eventually(
        Duration::from_secs(10),
        "an operation after the restart",
        || async { TokenStore::get(&store, &key).await.is_ok() },
    )
    .await;
    let revision = store
        .put(&key, &TokenRecord::new("after", Timestamp::now()))
        .await
        .unwrap();
    assert_eq!(
        TokenStore::get(&store, &key)
            .await
            .unwrap()
            .unwrap()
            .revision,
        revision
    );
    // The waiters re-subscribed on the new server ...
    subscribed(&url, &name).await;
    assert!(!waiters.is_empty());
    // ... and see a completion published after the restart.
    let completer = ns.store().await;
    let completed_at = Instant::now();
    completer
        .complete(&key, &f.state, &outcome(9), MINUTE)
        .await
        .unwrap();
    let mut woken = 0;
    while let Some(joined) = waiters.join_next().await {
        let (_, seen, at) = joined.unwrap();
        assert_eq!(seen, Some(outcome(9)));
        assert!(at.duration_since(completed_at) < Duration::from_secs(2));
        woken += 1;
    }
    assert_eq!(woken, 5);
}

/// Bad connection input: each a clear error, in time, without secrets.
#[tokio::test]
async fn bad_urls_and_unreachable_servers_are_clear_errors() {
    // Nothing listens: refused at once.
    let closed = crate::common::free_port();
    let started = Instant::now();
    let error = RedisStore::builder(format!("redis://:s3cret-pass@127.0.0.1:{closed}"))
        .connect()
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(error.is_retryable(), "{error}");
    let text = format!("{error} {error:?}");
    assert!(text.contains(&format!("127.0.0.1:{closed}")), "{text}");
    assert!(!text.contains("s3cret-pass"), "{text}");

    // Something accepts connections but never answers: the connect timeout
    // ends the attempt.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap().port();
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let limit = Duration::from_millis(500);
    let started = Instant::now();
    let error = RedisStore::builder(format!("redis://127.0.0.1:{silent}"))
        .connect_timeout(limit)
        .connect()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took >= limit && took < limit * 3, "{took:?}");
    assert!(error.is_retryable(), "{error}");
    accepting.abort();

    let url = shared_url().await;
    for (builder, what) in [
        (RedisStore::builder("http://127.0.0.1:6379"), "redis url"),
        (RedisStore::builder("not a url"), "redis url"),
        (RedisStore::builder(&url).prefix("a{b}"), "prefix"),
        (RedisStore::builder(&url).prefix(""), "prefix"),
        (
            RedisStore::builder(&url).client_name("has space"),
            "client name",
        ),
        (
            RedisStore::builder(&url).connect_timeout(Duration::ZERO),
            "connect timeout",
        ),
        (
            RedisStore::builder(&url).tls_root_certificates_pem("x"),
            "tls",
        ),
    ] {
        let error = builder.connect().await.unwrap_err();
        assert!(matches!(error, Error::InvalidInput { .. }), "{error:?}");
        assert!(!error.is_retryable());
        assert!(error.to_string().contains(what), "{error} names {what}");
    }

    // Secrets stay out of Debug output.
    let builder = RedisStore::builder("redis://user:s3cret-pass@127.0.0.1:1")
        .tls_client_identity_pem("CERT", "PRIVATE-KEY-s3cret");
    let printed = format!("{builder:?}");
    assert!(!printed.contains("s3cret"), "{printed}");
    let store = RedisStore::connect(&url).await.unwrap();
    assert!(format!("{store:?}").contains("prefix"));
}

/// A store kept across runtimes (a static store shared by several
/// `#[tokio::test]`s): its listener dies with the runtime of the first wait
/// and is started again on the next.
#[test]
fn waits_work_on_a_runtime_after_the_first_one_shut_down() {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime();
    let (url, ns, store) = first.block_on(async {
        let url = shared_url().await;
        let ns = Namespace::new(&url, "runtimes");
        let store = ns.store().await;
        let waited = store
            .wait(&FlowState::generate(), Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(waited, None);
        (url, ns, store)
    });
    drop(first);

    runtime().block_on(async {
        let key = TokenKey::new("github", "runtimes");
        let f = flow(&key);
        let waiter = {
            let store = store.clone();
            let state = f.state.clone();
            tokio::spawn(async move { store.wait(&state, Duration::from_secs(10)).await })
        };
        let completer = RedisStore::builder(&url)
            .prefix(ns.prefix())
            .connect()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        completer
            .complete(&key, &f.state, &outcome(3), MINUTE)
            .await
            .unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter wakes")
            .unwrap()
            .unwrap();
        assert_eq!(waited, Some(outcome(3)));
    });
}

/// A take whose reply is lost (a proxy lets the take script reach Redis,
/// which runs it, then drops the connection before the reply gets back)
/// is sent again by `take` with its nonce and still gets its flow: each
/// flow is taken exactly once, by the take whose reply was lost, never by
/// a later take. Once a take has its answer, its taken record (which holds
/// the whole flow) is gone.
#[tokio::test]
async fn a_take_whose_reply_is_lost_still_gets_its_flow() {
    const FLOWS: usize = 20;
    let server = PrivateRedis::start(&[]);
    let proxy = Proxy::start(server.port).await;
    let prefix = format!("lost-reply-{}", crate::common::random());
    let taker = RedisStore::builder(proxy.url())
        .prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let other = RedisStore::builder(server.url())
        .prefix(&prefix)
        .connect()
        .await
        .unwrap();
    // Loads the take script through the proxy first: a lost NOSCRIPT reply
    // would be a take that never ran.
    assert!(
        taker
            .take(&FlowState::new("nothing-here"))
            .await
            .unwrap()
            .is_none()
    );
    let mut raw_server = raw(&server.url()).await;
    for i in 0..FLOWS {
        let flow = flow(&TokenKey::new("github", format!("lost-{i}")));
        other.insert(&flow).await.unwrap();
        proxy.lose_replies_to_scripts(1);
        let taken = taker
            .take(&flow.state)
            .await
            .expect("the take is sent again after its connection dropped");
        assert_eq!(
            taken.map(|taken| taken.state),
            Some(flow.state.clone()),
            "flow {i}: the take whose reply was lost gets its flow"
        );
        assert_eq!(proxy.lost_replies(), i + 1, "the reply was lost");
        assert!(other.take(&flow.state).await.unwrap().is_none());
        let records: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:taken:*"))
            .query_async(&mut raw_server)
            .await
            .unwrap();
        assert!(records.is_empty(), "taken records left: {records:?}");
    }
}
