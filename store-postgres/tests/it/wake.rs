//! The shared completion listener: independent of the runtime that started
//! it, and logging in again with a pool's current connect options.

use std::time::Duration;

use mcp_authkit_core::{FlowOutcome, PendingStore, Revision, TokenKey};
use mcp_authkit_store_postgres::{PostgresStore, PostgresStoreOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::cluster::Cluster;
use crate::common::{AppRole, Schema, eventually, flow, listener_pids, url_as};

const MINUTE: Duration = Duration::from_secs(60);

fn authorized(n: u64) -> FlowOutcome {
    FlowOutcome::Authorized {
        revision: Revision::new(n),
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The first waiter of the process runs in runtime A, which then shuts
/// down (as a `#[tokio::test]` or a CLI command's runtime does). A waiter
/// of runtime B registered before that wakes (with no new waiter coming to
/// restart anything), and so does one registered after; the completions
/// come from another listener hub (another role), so only a NOTIFY can
/// wake them.
#[test]
fn waiters_wake_after_the_runtime_of_the_first_waiter_is_gone() {
    let a = current_thread();
    let b = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let schema = b.block_on(Schema::new("runtimes"));
    let (completer, role) = b.block_on(async {
        // The waiters' stores use the superuser; the completer another role.
        schema.open().await.close().await;
        let role = AppRole::new(&schema.name, true).await;
        let completer = PostgresStore::options(&url_as(&role.name).await)
            .schema(&schema.name)
            .open()
            .await
            .unwrap();
        (completer, role)
    });
    let flows: Vec<_> = (0..3)
        .map(|i| flow(&TokenKey::new("github", format!("user-{i}")), MINUTE))
        .collect();
    for f in &flows {
        b.block_on(completer.insert(f)).unwrap();
    }

    // Runtime A: the first waiter starts the listener.
    let store_a = a.block_on(schema.open());
    let wait_a = {
        let (store, state) = (store_a.clone(), flows[0].state.clone());
        a.spawn(async move { store.wait(&state, MINUTE).await })
    };
    assert!(
        a.block_on(eventually(Duration::from_secs(10), async || {
            store_a.listener_epoch().is_some()
        })),
        "listening"
    );

    // Runtime B: a waiter registered while A's waiter is there.
    let store_b = b.block_on(schema.open());
    let early = {
        let (store, state) = (store_b.clone(), flows[1].state.clone());
        b.spawn(async move { store.wait(&state, MINUTE).await })
    };
    assert!(b.block_on(eventually(Duration::from_secs(10), async || {
        store_b.waited_states() == 2
    })));

    drop(wait_a);
    drop(a);

    b.block_on(async {
        let complete = async |i: usize| {
            let f = &flows[i];
            completer.take(&f.state).await.unwrap().unwrap();
            completer
                .complete(&f.key, &f.state, &authorized(i as u64), MINUTE)
                .await
                .unwrap();
        };
        // Nothing else waits meanwhile: no later waiter starts a listener.
        complete(1).await;
        let woken = tokio::time::timeout(Duration::from_secs(10), early)
            .await
            .expect("the waiter of runtime B wakes after runtime A shut down");
        assert_eq!(woken.unwrap().unwrap(), Some(authorized(1)));

        let late = {
            let (store, state) = (store_b.clone(), flows[2].state.clone());
            tokio::spawn(async move { store.wait(&state, MINUTE).await })
        };
        assert!(
            eventually(Duration::from_secs(10), async || {
                store_b.waited_states() == 1
            })
            .await
        );
        complete(2).await;
        let woken = tokio::time::timeout(Duration::from_secs(10), late)
            .await
            .expect("a waiter registered after runtime A shut down wakes");
        assert_eq!(woken.unwrap().unwrap(), Some(authorized(2)));
        assert_eq!(listener_pids(store_b.channel()).await.len(), 1);
    });
    drop(store_a);
    drop((store_b, completer));
    b.block_on(async move { drop(role) });
    drop(schema);
}

/// The backend pid of the listening connection of `channel` logged in as
/// `user`, found by its `application_name`.
async fn listener_of(admin: &mut sqlx::PgConnection, user: &str, channel: &str) -> i32 {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE usename = $1 AND application_name = $2",
    )
    .bind(user)
    .bind(format!("mcp-authkit listener {channel}"))
    .fetch_one(admin)
    .await
    .unwrap()
}

/// Takes the listener of `channel`, logged in as `role`, down and keeps it
/// down: the role may open no more connections (a retryable refusal, so
/// the pools' sessions live on), then the listening connection is
/// terminated.
async fn keep_listener_down(role: &str, channel: &str) {
    crate::common::admin_exec(format!("ALTER ROLE {role} CONNECTION LIMIT 0")).await;
    let mut admin = crate::common::admin().await;
    let listener = listener_of(&mut admin, role, channel).await;
    let _ = sqlx::Connection::close(admin).await;
    crate::common::terminate(listener).await;
}

/// A password rotated on the server before the application's options
/// follow: the listener, terminated meanwhile, cannot log in again, yet no
/// wait fails (not one parked before, nor one started during the outage);
/// they read their outcome through the pool, whose sessions still work, and
/// see completions made meanwhile. Once the application gives the older of
/// two pools the new password, the listener logs in with it although the
/// newer pool's options are stale, and the last waiter wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_outlive_a_password_rotation_and_the_listener_logs_in_again() {
    let Some(cluster) = Cluster::start_new_or_explain() else {
        return;
    };
    let mut admin = cluster.admin().await;
    sqlx::raw_sql(
        "SET password_encryption = 'scram-sha-256'; \
         CREATE ROLE rotated LOGIN SUPERUSER PASSWORD 'first-pw'",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    // The role logs in with a password (SCRAM); the superuser keeps trust.
    cluster
        .set_hba(
            "local all all trust\n\
             host all rotated 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 trust\n",
            "rotated",
        )
        .await;
    let options: PgConnectOptions = cluster.url("rotated").parse().unwrap();
    let pool_with = async |password: &str| {
        // Sessions opened now outlive the rotation, as an application's do.
        PgPoolOptions::new()
            .max_connections(4)
            .min_connections(4)
            .connect_with(options.clone().password(password))
            .await
            .unwrap()
    };
    let pool = pool_with("first-pw").await;
    let store = PostgresStoreOptions::from_pool(pool.clone())
        .schema("rotation")
        .open()
        .await
        .unwrap();
    // Opened later on the same server, user and schema: the same listener,
    // and the newest pool, whose options are never updated.
    let stale = PostgresStoreOptions::from_pool(pool_with("first-pw").await)
        .schema("rotation")
        .open()
        .await
        .unwrap();
    // The completer: the superuser, so another listener hub.
    let completer = PostgresStore::options(&cluster.url("postgres"))
        .schema("rotation")
        .open()
        .await
        .unwrap();
    let flows: Vec<_> = (0..3)
        .map(|i| flow(&TokenKey::new("github", format!("user-{i}")), MINUTE))
        .collect();
    for f in &flows {
        completer.insert(f).await.unwrap();
    }
    let complete = async |i: usize| {
        let f = &flows[i];
        completer.take(&f.state).await.unwrap().unwrap();
        completer
            .complete(&f.key, &f.state, &authorized(i as u64), MINUTE)
            .await
            .unwrap();
    };
    let wait = |i: usize| {
        let (store, state) = (store.clone(), flows[i].state.clone());
        tokio::spawn(async move { store.wait(&state, MINUTE).await })
    };
    let (parked, last) = (wait(0), wait(1));
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_some()
            && store.waited_states() == 2)
        .await
    );
    let first_epoch = store.listener_epoch().unwrap();

    sqlx::raw_sql("ALTER ROLE rotated PASSWORD 'second-pw'")
        .execute(&mut admin)
        .await
        .unwrap();
    let listener = listener_of(&mut admin, "rotated", store.channel()).await;
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(listener)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(terminated);
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_failure()
            .is_some_and(|failure| !failure.is_retryable()))
        .await,
        "the listener cannot log in: {:?}",
        store.listener_failure()
    );
    // A wait that starts during the outage never saw the listener up.
    let during = wait(2);
    complete(0).await;
    complete(2).await;
    for (waiter, i) in [(parked, 0), (during, 2)] {
        let woken = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the pool's re-read finds the outcome");
        assert_eq!(woken.unwrap().unwrap(), Some(authorized(i)));
    }
    assert!(!last.is_finished(), "a listener that is down ended a wait");
    assert_eq!(store.listener_epoch(), None, "still refused");

    pool.set_connect_options(options.clone().password("second-pw"));
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_some_and(|epoch| epoch > first_epoch))
        .await,
        "the listener logged in again with the older pool's new password: {:?}",
        store.listener_failure()
    );
    complete(1).await;
    let woken = tokio::time::timeout(Duration::from_secs(10), last)
        .await
        .expect("the last waiter wakes");
    assert_eq!(woken.unwrap().unwrap(), Some(authorized(1)));
    drop(stale);
}

/// Any role that can connect may NOTIFY any channel, so a notification is
/// only a hint to read the stored outcome (which GRANTs guard), never the
/// outcome itself: a forged one, naming a waiter's state or carrying junk,
/// makes no waiter return, and the real completion still wakes it.
#[tokio::test]
async fn a_forged_notification_wakes_nobody_with_an_outcome() {
    let schema = Schema::new("forged").await;
    let store = schema.open().await;
    let f = flow(&TokenKey::new("github", "alice"), MINUTE);
    store.insert(&f).await.unwrap();
    let waiter = {
        let (store, state) = (store.clone(), f.state.clone());
        tokio::spawn(async move { store.wait(&state, MINUTE).await })
    };
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_some()
            && store.waited_states() == 1)
        .await
    );
    let hex: String = f
        .state
        .as_str()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut forger = crate::common::admin().await;
    for payload in [hex.as_str(), "zz-not-hex", ""] {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(store.channel())
            .bind(payload)
            .execute(&mut forger)
            .await
            .unwrap();
    }
    // Notifications on a channel arrive in order: once a waiter woken only
    // by a later, real NOTIFY (from another hub) has its outcome, the
    // forged ones were handled; nothing is stored for the first waiter, so
    // it waits on.
    let other = flow(&TokenKey::new("github", "bob"), MINUTE);
    let role = AppRole::new(&schema.name, true).await;
    let completer = PostgresStore::options(&url_as(&role.name).await)
        .schema(&schema.name)
        .open()
        .await
        .unwrap();
    completer.insert(&other).await.unwrap();
    let barrier = {
        let (store, state) = (store.clone(), other.state.clone());
        tokio::spawn(async move { store.wait(&state, MINUTE).await })
    };
    assert!(eventually(Duration::from_secs(10), async || store.waited_states() == 2).await);
    completer.take(&other.state).await.unwrap().unwrap();
    completer
        .complete(&other.key, &other.state, &authorized(6), MINUTE)
        .await
        .unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(10), barrier)
        .await
        .expect("the real notification after the forged ones wakes its waiter");
    assert_eq!(woken.unwrap().unwrap(), Some(authorized(6)));
    assert!(
        !waiter.is_finished(),
        "a forged notification ended the wait"
    );
    assert_eq!(
        store.listener_epoch(),
        Some(1),
        "junk did not break the link"
    );
    store.take(&f.state).await.unwrap().unwrap();
    store
        .complete(&f.key, &f.state, &authorized(5), MINUTE)
        .await
        .unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the real completion wakes it");
    assert_eq!(woken.unwrap().unwrap(), Some(authorized(5)));
    drop((store, completer));
    drop(role);
}

/// The listener thread and its connection go with the last store instance
/// on their server and schema: dropping one of two keeps the listener (the
/// same connection, the same epoch), dropping the last leaks no connection.
#[tokio::test]
async fn the_listening_connection_goes_with_the_last_store() {
    let schema = Schema::new("stoplisten").await;
    let (first, second) = (schema.open().await, schema.open().await);
    let _ = first
        .wait(
            &mcp_authkit_core::FlowState::generate(),
            Duration::from_millis(1),
        )
        .await;
    let channel = first.channel().to_owned();
    assert!(
        eventually(Duration::from_secs(10), async || listener_pids(&channel)
            .await
            .len()
            == 1)
        .await,
        "listening"
    );
    let listening = listener_pids(&channel).await;
    let epoch = second.listener_epoch();
    assert!(epoch.is_some());
    drop(first);
    // A round trip through the listener: a completion from another hub
    // wakes a waiter of `second` only if the listener still listens.
    let role = AppRole::new(&schema.name, true).await;
    let completer = PostgresStore::options(&url_as(&role.name).await)
        .schema(&schema.name)
        .open()
        .await
        .unwrap();
    let f = flow(&TokenKey::new("github", "alice"), MINUTE);
    completer.insert(&f).await.unwrap();
    let waiter = {
        let (store, state) = (second.clone(), f.state.clone());
        tokio::spawn(async move { store.wait(&state, MINUTE).await })
    };
    assert!(
        eventually(Duration::from_secs(10), async || second.waited_states()
            == 1)
        .await
    );
    completer.take(&f.state).await.unwrap().unwrap();
    completer
        .complete(&f.key, &f.state, &authorized(7), MINUTE)
        .await
        .unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the listener still listens for the other instance");
    assert_eq!(woken.unwrap().unwrap(), Some(authorized(7)));
    assert_eq!(
        (listener_pids(&channel).await, second.listener_epoch()),
        (listening, epoch),
        "the same listening connection, never replaced"
    );
    drop(second);
    assert!(
        eventually(Duration::from_secs(10), async || listener_pids(&channel)
            .await
            .is_empty())
        .await,
        "the listening connection was closed with the last store"
    );
    drop(completer);
    drop(role);
}

/// A panic in the listener thread (a bug here or in a dependency) does not
/// leave the waiters deaf behind a link that still reads "up": the thread
/// says the link is down, listens again (a new epoch), and a waiter parked
/// before the panic wakes on a later completion, with no new waiter coming
/// to restart anything.
#[tokio::test]
async fn a_panicking_listener_is_restarted() {
    let schema = Schema::new("panicking").await;
    let store = schema.open().await;
    let role = AppRole::new(&schema.name, true).await;
    let completer = PostgresStore::options(&url_as(&role.name).await)
        .schema(&schema.name)
        .open()
        .await
        .unwrap();
    let f = flow(&TokenKey::new("github", "alice"), MINUTE);
    completer.insert(&f).await.unwrap();
    let waiter = {
        let (store, state) = (store.clone(), f.state.clone());
        tokio::spawn(async move { store.wait(&state, MINUTE).await })
    };
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_some()
            && store.waited_states() == 1)
        .await
    );
    let first_epoch = store.listener_epoch().unwrap();
    store.panic_listener_at_next_notification();
    let mut forger = crate::common::admin().await;
    sqlx::query("SELECT pg_notify($1, 'junk')")
        .bind(store.channel())
        .execute(&mut forger)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_some_and(|epoch| epoch > first_epoch))
        .await,
        "the listener listens again after its panic: {:?}",
        store.listener_failure()
    );
    completer.take(&f.state).await.unwrap().unwrap();
    completer
        .complete(&f.key, &f.state, &authorized(8), MINUTE)
        .await
        .unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter parked before the panic wakes");
    assert_eq!(woken.unwrap().unwrap(), Some(authorized(8)));
    drop((store, completer));
    drop(role);
}

/// The listening connection is found by its name after its probe replaced
/// the `LISTEN` in `pg_stat_activity.query`: counting listeners stays
/// right in tests and for operators however long the listener has run.
#[tokio::test]
async fn the_listener_is_found_by_name_after_its_probe() {
    let schema = Schema::new("probed").await;
    let store = schema.open().await;
    let _ = store
        .wait(
            &mcp_authkit_core::FlowState::generate(),
            Duration::from_millis(1),
        )
        .await;
    let channel = store.channel().to_owned();
    assert!(
        eventually(Duration::from_secs(10), async || listener_pids(&channel)
            .await
            .len()
            == 1)
        .await,
        "listening"
    );
    let pid = listener_pids(&channel).await[0];
    let mut admin = crate::common::admin().await;
    // The probe runs 15 s after listening starts.
    assert!(
        eventually(Duration::from_secs(40), async || {
            let query: Option<String> =
                sqlx::query_scalar("SELECT query FROM pg_stat_activity WHERE pid = $1")
                    .bind(pid)
                    .fetch_optional(&mut admin)
                    .await
                    .unwrap();
            query.as_deref() == Some("SELECT 1")
        })
        .await,
        "the probe ran on the listening connection"
    );
    assert_eq!(listener_pids(&channel).await, vec![pid]);
    assert_eq!(store.listener_epoch(), Some(1), "the probe broke nothing");
}

/// Statements the role `user` ran so far, by pg_stat_statements (counted
/// in shared memory when each statement ends, unlike the table statistics,
/// which a backend may send seconds later).
async fn statements_run_by(admin: &mut sqlx::PgConnection, user: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
         WHERE userid = (SELECT oid FROM pg_roles WHERE rolname = $1)",
    )
    .bind(user)
    .fetch_one(admin)
    .await
    .unwrap()
}

/// While the listener is down, the database must not pay for the number of
/// waiters exactly when it may be in trouble: the outcomes of all of them
/// are read in one statement a second for the store instance (one waiter
/// does it for the others), not one statement a second per waiter. Completions made
/// meanwhile still wake every waiter, with the listener still down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_listener_is_down_one_statement_a_second_polls_every_waiter() {
    const WAITERS: usize = 400;
    const WINDOW: Duration = Duration::from_secs(3);
    let Some(Counted {
        cluster: _cluster,
        mut admin,
        completer,
        store,
        flows,
    }) = counted_waiters("polled", WAITERS).await
    else {
        return;
    };
    let mut waits = tokio::task::JoinSet::new();
    for f in &flows {
        let (store, state) = (store.clone(), f.state.clone());
        waits.spawn(async move { store.wait(&state, MINUTE).await });
    }
    assert!(
        eventually(Duration::from_secs(20), async || store
            .listener_epoch()
            .is_some()
            && store.waited_states() == WAITERS)
        .await
    );

    // Keep the listener from coming back (a retryable refusal: too many
    // connections for the role), then kill it.
    sqlx::raw_sql("ALTER ROLE waiter CONNECTION LIMIT 0")
        .execute(&mut admin)
        .await
        .unwrap();
    let listener = listener_of(&mut admin, "waiter", store.channel()).await;
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(listener)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(terminated);
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_none())
        .await
    );
    // Past the first second of the outage, then a steady window.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = statements_run_by(&mut admin, "waiter").await;
    let started = tokio::time::Instant::now();
    tokio::time::sleep(WINDOW).await;
    let ran = statements_run_by(&mut admin, "waiter").await - before;
    let per_second = ran as f64 / started.elapsed().as_secs_f64();
    eprintln!("FIGURE: {WAITERS} waiters, listener down: {per_second:.1} statements/s");
    assert!(
        per_second <= 3.0,
        "{WAITERS} waiters with the listener down ran {ran} statements in {WINDOW:?}"
    );

    // Completed while nobody listens: found by the poll, every one of them.
    for (i, f) in flows.iter().enumerate() {
        completer.take(&f.state).await.unwrap().unwrap();
        completer
            .complete(&f.key, &f.state, &authorized(i as u64), MINUTE)
            .await
            .unwrap();
    }
    let mut woken = 0;
    while let Some(outcome) = tokio::time::timeout(Duration::from_secs(10), waits.join_next())
        .await
        .expect("every waiter wakes while the listener is down")
    {
        assert!(matches!(
            outcome.unwrap().unwrap(),
            Some(FlowOutcome::Authorized { .. })
        ));
        woken += 1;
    }
    assert_eq!(woken, WAITERS);
    assert_eq!(store.listener_epoch(), None, "woken with the listener down");
}

/// A wait that never saw the listener up, whose listener is refused for
/// good, lives on its pool: it waits while the pool answers, and reports
/// the listener's refusal once the pool stops answering too (its sessions
/// gone, new logins refused), found by its instance's failed poll, not at
/// the wait's deadline.
#[tokio::test]
async fn a_refused_wait_reports_the_refusal_once_its_pool_fails_too() {
    let schema = Schema::new("mustanswer").await;
    schema.open().await.close().await;
    let role = AppRole::new(&schema.name, true).await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .min_connections(2)
        .connect(&url_as(&role.name).await)
        .await
        .unwrap();
    let store = PostgresStoreOptions::from_pool(pool)
        .schema(&schema.name)
        .open()
        .await
        .unwrap();
    // Its sessions stay; new logins, the listener's first among them, fail.
    crate::common::admin_exec(format!("ALTER ROLE {} NOLOGIN", role.name)).await;
    let f = flow(&TokenKey::new("github", "alice"), MINUTE);
    store.insert(&f).await.unwrap();
    let waiter = {
        let (store, state) = (store.clone(), f.state.clone());
        tokio::spawn(async move { store.wait(&state, MINUTE).await })
    };
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_failure()
            .is_some_and(|failure| !failure.is_retryable()))
        .await,
        "the listener is refused: {:?}",
        store.listener_failure()
    );
    // Past the wait's first read and its first poll: the pool answers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiter.is_finished(), "a pool that answers keeps the wait");
    crate::common::admin_exec(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{}'",
        role.name
    ))
    .await;
    let answer = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the refusal is reported once the pool fails too")
        .unwrap();
    let error = answer.expect_err("nothing works: an error");
    assert!(!error.is_retryable(), "the listener's refusal: {error}");
    assert_eq!(store.listener_epoch(), None);
    drop(store);
    drop(role);
}

/// While the listener is down, a store instance whose pool cannot hand out
/// a session (exhausted: its poll waits for one until its claim lapses,
/// well within the pool's 30 s acquire timeout) delays no waiter of
/// another, healthy instance on the same hub: each instance polls through
/// its own pool, on its own claims. Found by its poll
/// within seconds, well before the stuck pool's acquire timeout and the
/// wait's deadline (one poll turn per hub kept it waiting ~19 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_pool_delays_no_waiter_of_another_store_instance() {
    let schema = Schema::new("stuckturn").await;
    schema.open().await.close().await;
    let role = AppRole::new(&schema.name, true).await;
    let completer = schema.open().await;
    let url = url_as(&role.name).await;
    let pool_a = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
        .unwrap();
    let pool_b = PgPoolOptions::new()
        .max_connections(2)
        .min_connections(2)
        .connect(&url)
        .await
        .unwrap();
    let store_a = PostgresStoreOptions::from_pool(pool_a.clone())
        .schema(&schema.name)
        .open()
        .await
        .unwrap();
    let store_b = PostgresStoreOptions::from_pool(pool_b)
        .schema(&schema.name)
        .open()
        .await
        .unwrap();
    let fa = flow(&TokenKey::new("github", "a"), MINUTE);
    let fb = flow(&TokenKey::new("github", "b"), MINUTE);
    completer.insert(&fa).await.unwrap();
    completer.insert(&fb).await.unwrap();
    let wait_a = {
        let (s, st) = (store_a.clone(), fa.state.clone());
        tokio::spawn(async move { s.wait(&st, MINUTE).await })
    };
    assert!(
        eventually(Duration::from_secs(10), async || store_a
            .listener_epoch()
            .is_some()
            && store_a.waited_states() == 1)
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = pool_a.acquire().await.unwrap();
    keep_listener_down(&role.name, store_a.channel()).await;
    assert!(
        eventually(Duration::from_secs(10), async || store_a
            .listener_epoch()
            .is_none())
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let wait_b = {
        let (s, st) = (store_b.clone(), fb.state.clone());
        tokio::spawn(async move { s.wait(&st, MINUTE).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    completer.take(&fb.state).await.unwrap().unwrap();
    completer
        .complete(&fb.key, &fb.state, &authorized(1), MINUTE)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // A third of the stuck pool's acquire timeout; the wait's own deadline
    // (a minute) is further still, so the outcome came from a poll.
    let got = tokio::time::timeout(Duration::from_secs(10), wait_b).await;
    eprintln!(
        "FIGURE: healthy store's waiter woke after {:?} (listener down, other store's pool stuck)",
        started.elapsed()
    );
    let got = got.expect("the healthy instance's waiter is woken by its own poll");
    assert!(matches!(
        got.unwrap().unwrap(),
        Some(FlowOutcome::Authorized { .. })
    ));
    drop(held);
    wait_a.abort();
    drop((store_a, store_b, completer));
    drop(role);
}

/// While the listener is down, the failing polls of a store instance whose
/// pool is closed (20 waiters) do not slow down the waiter of a healthy
/// instance on the same hub: with one poll turn per hub, each failing
/// waiter took a one-second slot in turn and the healthy waiter was found
/// once every 21 s; with a poll per instance it is found by its own
/// instance's next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_polls_of_one_store_instance_do_not_slow_another() {
    const K: usize = 20;
    let schema = Schema::new("failturn").await;
    schema.open().await.close().await;
    let role = AppRole::new(&schema.name, true).await;
    let completer = schema.open().await;
    let url = url_as(&role.name).await;
    let pool_a = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let pool_b = PgPoolOptions::new()
        .max_connections(2)
        .min_connections(2)
        .connect(&url)
        .await
        .unwrap();
    let store_a = PostgresStoreOptions::from_pool(pool_a.clone())
        .schema(&schema.name)
        .open()
        .await
        .unwrap();
    let store_b = PostgresStoreOptions::from_pool(pool_b)
        .schema(&schema.name)
        .open()
        .await
        .unwrap();
    let fb = flow(&TokenKey::new("github", "b"), MINUTE);
    completer.insert(&fb).await.unwrap();
    let mut waits_a = tokio::task::JoinSet::new();
    for i in 0..K {
        let f = flow(&TokenKey::new("github", format!("a{i}")), MINUTE);
        completer.insert(&f).await.unwrap();
        let s = store_a.clone();
        waits_a.spawn(async move { s.wait(&f.state, MINUTE).await });
    }
    assert!(
        eventually(Duration::from_secs(10), async || store_a
            .listener_epoch()
            .is_some()
            && store_a.waited_states() == K)
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    pool_a.close().await;
    keep_listener_down(&role.name, store_a.channel()).await;
    assert!(
        eventually(Duration::from_secs(10), async || store_a
            .listener_epoch()
            .is_none())
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let wait_b = {
        let (s, st) = (store_b.clone(), fb.state.clone());
        tokio::spawn(async move { s.wait(&st, MINUTE).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    completer.take(&fb.state).await.unwrap().unwrap();
    completer
        .complete(&fb.key, &fb.state, &authorized(1), MINUTE)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Half of the 21 s a shared turn took; the wait's own deadline (a
    // minute) is further still, so the outcome came from a poll.
    let got = tokio::time::timeout(Duration::from_secs(10), wait_b).await;
    eprintln!(
        "FIGURE: {K} failing waiters of another instance: healthy store's waiter woke after {:?}",
        started.elapsed()
    );
    let got = got.expect("the healthy instance's waiter is woken by its own poll");
    assert!(matches!(
        got.unwrap().unwrap(),
        Some(FlowOutcome::Authorized { .. })
    ));
    waits_a.abort_all();
    drop((store_a, store_b, completer));
    drop(role);
}

/// A waiter whose future stops being run (here: on a current_thread
/// runtime that is alive but idle) must not keep the other waiters of its
/// store instance from being polled: a waiter on another runtime still
/// wakes from the instance's poll, while the listener stays down, well
/// before its own deadline (20 s).
#[test]
fn a_waiter_no_longer_run_does_not_keep_its_instance_from_polling() {
    let a = current_thread();
    let b = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let schema = b.block_on(Schema::new("idlert"));
    let (completer, role, store) = b.block_on(async {
        schema.open().await.close().await;
        let role = AppRole::new(&schema.name, true).await;
        let completer = schema.open().await;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(2)
            .connect(&url_as(&role.name).await)
            .await
            .unwrap();
        let store = PostgresStoreOptions::from_pool(pool)
            .schema(&schema.name)
            .open()
            .await
            .unwrap();
        (completer, role, store)
    });
    let fa = flow(&TokenKey::new("github", "a"), MINUTE);
    let fb = flow(&TokenKey::new("github", "b"), MINUTE);
    b.block_on(completer.insert(&fa)).unwrap();
    b.block_on(completer.insert(&fb)).unwrap();
    let _wait_a = {
        let (s, st) = (store.clone(), fa.state.clone());
        a.spawn(async move { s.wait(&st, MINUTE).await })
    };
    assert!(a.block_on(eventually(Duration::from_secs(10), async || {
        store.listener_epoch().is_some() && store.waited_states() == 1
    })));
    b.block_on(keep_listener_down(&role.name, store.channel()));
    // Runtime a runs while the link goes down: its waiter takes the turn.
    assert!(a.block_on(eventually(Duration::from_secs(10), async || {
        store.listener_epoch().is_none()
    })));
    a.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
    // Runtime a is now idle (alive, not driven).
    b.block_on(async {
        let wait_b = {
            let (s, st) = (store.clone(), fb.state.clone());
            tokio::spawn(async move { s.wait(&st, Duration::from_secs(20)).await })
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        completer.take(&fb.state).await.unwrap().unwrap();
        completer
            .complete(&fb.key, &fb.state, &authorized(1), MINUTE)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(30), wait_b)
            .await
            .expect("the wait ends by its own deadline")
            .unwrap();
        let took = started.elapsed();
        eprintln!("FIGURE: waiter beside one no longer run woke after {took:?}");
        assert_eq!(got.unwrap(), Some(authorized(1)));
        assert!(took < Duration::from_secs(5), "starved for {took:?}");
        // Woken by the poll, not by a listener back up.
        assert!(store.listener_epoch().is_none());
    });
    drop(a);
    drop((store, completer));
    b.block_on(async move { drop(role) });
    drop(schema);
}

/// Two waits of one store instance on the same state (a joined flow): when
/// one of them ends while the listener is down, the state stays in the
/// instance's poll for the other, which wakes from the poll when the flow
/// completes, with the listener still down, long before its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_waits_state_stays_polled_when_the_other_wait_ends() {
    let schema = Schema::new("joinpoll").await;
    schema.open().await.close().await;
    let role = AppRole::new(&schema.name, true).await;
    let completer = schema.open().await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .min_connections(2)
        .connect(&url_as(&role.name).await)
        .await
        .unwrap();
    let store = PostgresStoreOptions::from_pool(pool)
        .schema(&schema.name)
        .open()
        .await
        .unwrap();
    let f = flow(&TokenKey::new("github", "joined"), MINUTE);
    completer.insert(&f).await.unwrap();
    let first = {
        let (s, st) = (store.clone(), f.state.clone());
        tokio::spawn(async move { s.wait(&st, MINUTE).await })
    };
    let second = {
        let (s, st) = (store.clone(), f.state.clone());
        tokio::spawn(async move { s.wait(&st, Duration::from_secs(30)).await })
    };
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_some()
            && store.waited_states() == 1)
        .await
    );
    keep_listener_down(&role.name, store.channel()).await;
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_none())
        .await
    );
    // One of the two waits ends (its caller gave up) during the outage.
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    assert_eq!(store.waited_states(), 1, "the other wait still waits");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    completer.take(&f.state).await.unwrap().unwrap();
    completer
        .complete(&f.key, &f.state, &authorized(7), MINUTE)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(40), second)
        .await
        .expect("the wait ends by its own deadline")
        .unwrap();
    let took = started.elapsed();
    eprintln!("FIGURE: joined wait after the other ended woke after {took:?}");
    assert_eq!(got.unwrap(), Some(authorized(7)));
    assert!(took < Duration::from_secs(5), "not polled: {took:?}");
    assert!(store.listener_epoch().is_none(), "woken by the poll");
    drop((store, completer));
    drop(role);
}

/// A refused wait counts only the instance's polls that fail after its
/// own first read answered: one that failed while that read queued for the
/// pool (here: behind a session the test holds) says nothing about a pool
/// that then answered. Another refused waiter of the instance, whose own
/// poll that was, reports the refusal; the later one keeps waiting on the
/// working pool and is answered by the next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_failing_before_a_refused_waits_own_read_answered_does_not_end_it() {
    let schema = Schema::new("failbefore").await;
    schema.open().await.close().await;
    let role = AppRole::new(&schema.name, true).await;
    let completer = schema.open().await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url_as(&role.name).await)
        .await
        .unwrap();
    let store = PostgresStoreOptions::from_pool(pool.clone())
        .schema(&schema.name)
        .open()
        .await
        .unwrap();
    crate::common::admin_exec(format!("ALTER ROLE {} NOLOGIN", role.name)).await;
    let f0 = flow(&TokenKey::new("github", "first"), MINUTE);
    let f = flow(&TokenKey::new("github", "later"), MINUTE);
    completer.insert(&f0).await.unwrap();
    completer.insert(&f).await.unwrap();
    let first = {
        let (s, st) = (store.clone(), f0.state.clone());
        tokio::spawn(async move { s.wait(&st, MINUTE).await })
    };
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_failure()
            .is_some_and(|failure| !failure.is_retryable()))
        .await
    );
    // The first wait's own read is done (one statement, idle pool).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = pool.acquire().await.unwrap();
    let later = {
        let (s, st) = (store.clone(), f.state.clone());
        tokio::spawn(async move { s.wait(&st, MINUTE).await })
    };
    // The instance's poll fails (it outlasts its claim): the first wait
    // reports the refusal, while the later one's read still queues.
    let answer = tokio::time::timeout(Duration::from_secs(20), first)
        .await
        .expect("the first wait sees its instance's poll fail")
        .unwrap();
    assert!(!answer.expect_err("refused").is_retryable());
    drop(held);
    // The later wait's read answers now; the failure before it is not
    // its answer.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!later.is_finished(), "{:?}", later.await);
    completer.take(&f.state).await.unwrap().unwrap();
    completer
        .complete(&f.key, &f.state, &authorized(3), MINUTE)
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), later)
        .await
        .expect("found by the instance's next poll")
        .unwrap();
    assert_eq!(got.unwrap(), Some(authorized(3)));
    assert_eq!(store.listener_epoch(), None);
    drop((store, completer, pool));
    drop(role);
}

/// Stores `outcome` for `state` as `complete` would, but sends no
/// notification: a completion whose NOTIFY was lost because nobody listened
/// when it was sent. Only a read of the table finds it.
async fn complete_silently(
    admin: &mut sqlx::PgConnection,
    schema: &str,
    state: &mcp_authkit_core::FlowState,
    outcome: &FlowOutcome,
) {
    let expires_at = mcp_authkit_core::Timestamp::now()
        .saturating_add(MINUTE)
        .unix_millis();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.mcp_authkit_outcomes (state, expires_at, outcome) VALUES ($1, $2, $3)"
    )))
    .bind(state.as_str().as_bytes())
    .bind(expires_at)
    .bind(mcp_authkit_core::codec::encode_outcome(outcome))
    .execute(admin)
    .await
    .unwrap();
}

/// What the tests that count the waiters' statements arrange.
struct Counted {
    /// Kept alive for the test: the private cluster stops when dropped.
    cluster: Cluster,
    /// A superuser connection, to count statements and kill the listener.
    admin: sqlx::PgConnection,
    /// A superuser store, so on a listener hub of its own.
    completer: PostgresStore,
    /// The store of role `waiter` (least privilege), whose statements are
    /// counted: a pool of 8 sessions, opened now so they outlive a
    /// connection limit a test may set later.
    store: PostgresStore,
    /// `n` flows in `schema`, not completed.
    flows: Vec<mcp_authkit_core::PendingFlow>,
}

/// A private cluster with `pg_stat_statements` loaded, the role `waiter`
/// with least privilege on `schema`, and [`Counted`]'s stores and flows;
/// `None` (explained) when no cluster can be started.
async fn counted_waiters(schema: &str, n: usize) -> Option<Counted> {
    let cluster = Cluster::start_new_with_or_explain(
        "shared_preload_libraries = 'pg_stat_statements'\nsynchronous_commit = off",
    )?;
    let mut admin = cluster.admin().await;
    let completer = PostgresStore::options(&cluster.url("postgres"))
        .schema(schema)
        .open()
        .await
        .unwrap();
    sqlx::raw_sql("CREATE EXTENSION pg_stat_statements; CREATE ROLE waiter LOGIN")
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(crate::common::least_privilege_grants(
        schema, "waiter",
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .min_connections(8)
        .connect(&cluster.url("waiter"))
        .await
        .unwrap();
    let store = PostgresStoreOptions::from_pool(pool)
        .schema(schema)
        .open()
        .await
        .unwrap();
    let flows: Vec<_> = (0..n)
        .map(|i| flow(&TokenKey::new("github", format!("user-{i}")), MINUTE))
        .collect();
    for f in &flows {
        completer.insert(f).await.unwrap();
    }
    Some(Counted {
        cluster,
        admin,
        completer,
        store,
        flows,
    })
}

/// A listener flap (its connection killed; it listens again at once) must
/// not cost the database one statement per waiter, exactly when it may be
/// in trouble: the re-read of every waiter of a store instance when the
/// listener is back is one statement, made by one of them. Completions
/// whose notification was lost (stored while nobody listened) are found by
/// it and wake their waiters; completions made after the flap wake the
/// others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_flap_rereads_every_waiter_of_an_instance_in_one_statement() {
    const WAITERS: usize = 400;
    const LOST: usize = WAITERS / 2;
    let Some(Counted {
        cluster: _cluster,
        mut admin,
        completer,
        store,
        flows,
    }) = counted_waiters("flapped", WAITERS).await
    else {
        return;
    };
    let mut waits = tokio::task::JoinSet::new();
    for (i, f) in flows.iter().enumerate() {
        let (store, state) = (store.clone(), f.state.clone());
        waits.spawn(async move { (i, store.wait(&state, MINUTE).await) });
    }
    assert!(
        eventually(Duration::from_secs(20), async || store
            .listener_epoch()
            .is_some()
            && store.waited_states() == WAITERS)
        .await
    );
    let epoch = store.listener_epoch().unwrap();
    // The waits' first reads are done.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Stored with no notification heard: as if sent while the listener
    // was down. Only a read after the flap finds them.
    for (i, f) in flows.iter().take(LOST).enumerate() {
        complete_silently(&mut admin, "flapped", &f.state, &authorized(i as u64)).await;
    }

    let before = statements_run_by(&mut admin, "waiter").await;
    let listener = listener_of(&mut admin, "waiter", store.channel()).await;
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(listener)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(terminated);
    for _ in 0..LOST {
        let (i, outcome) = tokio::time::timeout(Duration::from_secs(10), waits.join_next())
            .await
            .expect("a completion whose notification was lost is found after the flap")
            .unwrap()
            .unwrap();
        assert!(i < LOST, "waiter {i} woke with nothing completed");
        assert_eq!(outcome.unwrap(), Some(authorized(i as u64)));
    }
    assert!(store.listener_epoch().unwrap() > epoch, "listening again");
    // Stragglers of the flap, if any, would show here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ran = statements_run_by(&mut admin, "waiter").await - before;
    eprintln!(
        "FIGURE: {WAITERS} waiters, one listener flap: {ran} statements by the waiters' role"
    );
    // The batch, the listener's LISTEN; a little slack for a probe or a
    // second flap, none for one statement per waiter.
    assert!(
        ran <= 10,
        "{WAITERS} waiters ran {ran} statements for one listener flap"
    );

    // Completed after the flap: notified as ever.
    for (i, f) in flows.iter().enumerate().skip(LOST) {
        completer.take(&f.state).await.unwrap().unwrap();
        completer
            .complete(&f.key, &f.state, &authorized(i as u64), MINUTE)
            .await
            .unwrap();
    }
    let mut woken = LOST;
    while let Some(joined) = tokio::time::timeout(Duration::from_secs(10), waits.join_next())
        .await
        .expect("every waiter wakes after the flap")
    {
        let (i, outcome) = joined.unwrap();
        assert_eq!(outcome.unwrap(), Some(authorized(i as u64)));
        woken += 1;
    }
    assert_eq!(woken, WAITERS);
}

/// Several store instances on one listener: a flow completed while the
/// listener was down (its notification lost) wakes its waiter, whichever
/// instance waits on it, once the listener is back; each instance re-reads
/// its own waiters through its own pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_made_while_the_listener_was_down_wakes_waiters_of_every_instance() {
    const INSTANCES: usize = 3;
    const PER_INSTANCE: usize = 4;
    let schema = Schema::new("downlost").await;
    schema.open().await.close().await;
    let role = AppRole::new(&schema.name, true).await;
    let completer = schema.open().await;
    let mut stores = Vec::new();
    for _ in 0..INSTANCES {
        // Sessions opened now outlive the connection limit set below.
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(2)
            .connect(&url_as(&role.name).await)
            .await
            .unwrap();
        stores.push(
            PostgresStoreOptions::from_pool(pool)
                .schema(&schema.name)
                .open()
                .await
                .unwrap(),
        );
    }
    let mut waits = tokio::task::JoinSet::new();
    let mut flows = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for w in 0..PER_INSTANCE {
            let f = flow(&TokenKey::new("github", format!("s{s}-w{w}")), MINUTE);
            completer.insert(&f).await.unwrap();
            let (store, state, n) = (store.clone(), f.state.clone(), flows.len());
            waits.spawn(async move { (n, store.wait(&state, MINUTE).await) });
            flows.push(f);
        }
    }
    let store = &stores[0];
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_some()
            && store.waited_states() == flows.len())
        .await
    );
    let epoch = store.listener_epoch().unwrap();
    keep_listener_down(&role.name, store.channel()).await;
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_none())
        .await
    );
    // The first waiter of each instance: completed while nobody listens.
    let lost: Vec<usize> = (0..INSTANCES).map(|s| s * PER_INSTANCE).collect();
    for &n in &lost {
        let f = &flows[n];
        completer.take(&f.state).await.unwrap().unwrap();
        completer
            .complete(&f.key, &f.state, &authorized(n as u64), MINUTE)
            .await
            .unwrap();
    }
    crate::common::admin_exec(format!("ALTER ROLE {} CONNECTION LIMIT -1", role.name)).await;
    for _ in &lost {
        let (n, outcome) = tokio::time::timeout(Duration::from_secs(10), waits.join_next())
            .await
            .expect("a completion made while the listener was down is found")
            .unwrap()
            .unwrap();
        assert!(lost.contains(&n), "waiter {n} woke with nothing completed");
        assert_eq!(outcome.unwrap(), Some(authorized(n as u64)));
    }
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_some_and(|now| now > epoch))
        .await,
        "listening again"
    );
    for (n, f) in flows.iter().enumerate() {
        if lost.contains(&n) {
            continue;
        }
        completer.take(&f.state).await.unwrap().unwrap();
        completer
            .complete(&f.key, &f.state, &authorized(n as u64), MINUTE)
            .await
            .unwrap();
    }
    while let Some(joined) = tokio::time::timeout(Duration::from_secs(10), waits.join_next())
        .await
        .expect("every waiter wakes")
    {
        let (n, outcome) = joined.unwrap();
        assert_eq!(outcome.unwrap(), Some(authorized(n as u64)));
    }
    drop((stores, completer));
    drop(role);
}

/// A batched re-read that fails leaves no waiter it covered deaf: each
/// reads its own outcome, and one completed while nobody listened wakes
/// long before its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batched_reread_leaves_each_waiter_to_read_its_own() {
    const WAITERS: usize = 5;
    let schema = Schema::new("rereadfail").await;
    let store = schema.open().await;
    let flows: Vec<_> = (0..WAITERS)
        .map(|i| flow(&TokenKey::new("github", format!("user-{i}")), MINUTE))
        .collect();
    let mut waits = tokio::task::JoinSet::new();
    for (i, f) in flows.iter().enumerate() {
        store.insert(f).await.unwrap();
        let (store, state) = (store.clone(), f.state.clone());
        waits.spawn(async move { (i, store.wait(&state, MINUTE).await) });
    }
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_some()
            && store.waited_states() == WAITERS)
        .await
    );
    let epoch = store.listener_epoch().unwrap();
    // The waits' first reads are done.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut admin = crate::common::admin().await;
    for (i, f) in flows.iter().enumerate().take(2) {
        complete_silently(&mut admin, &schema.name, &f.state, &authorized(i as u64)).await;
    }
    store.fail_next_reread();
    let listener = listener_pids(store.channel()).await;
    assert_eq!(listener.len(), 1);
    crate::common::terminate(listener[0]).await;
    let started = std::time::Instant::now();
    for _ in 0..2 {
        let (i, outcome) = tokio::time::timeout(Duration::from_secs(10), waits.join_next())
            .await
            .expect("woken by its own read after the batch failed")
            .unwrap()
            .unwrap();
        assert!(i < 2, "waiter {i} woke with nothing completed");
        assert_eq!(outcome.unwrap(), Some(authorized(i as u64)));
    }
    eprintln!(
        "FIGURE: after a failed batched re-read, waiters found their outcomes in {:?}",
        started.elapsed()
    );
    assert!(store.listener_epoch().is_some_and(|now| now > epoch));
    waits.abort_all();
    let _ = sqlx::Connection::close(admin).await;
}

/// Two waits of one store instance, `a` and `b`, polled once each while
/// the listener connects (both registered and watched before the epoch's
/// batch); `b`'s flow is completed before either wait started if
/// `complete_b`. Returns the boxed wait futures once the link is up and
/// `a` was polled again in the new epoch: `a` is now the epoch's batch
/// runner, its statement in flight, and is polled no more by the caller.
async fn a_runner_and_its_joiner<'s>(
    store: &'s PostgresStore,
    fb: &mcp_authkit_core::PendingFlow,
    b_timeout: Duration,
    complete_b: bool,
) -> (
    std::pin::Pin<Box<impl Future<Output = mcp_authkit_core::Result<Option<FlowOutcome>>> + 's>>,
    std::pin::Pin<Box<impl Future<Output = mcp_authkit_core::Result<Option<FlowOutcome>>> + 's>>,
) {
    let fa = flow(&TokenKey::new("github", "a"), MINUTE);
    store.insert(&fa).await.unwrap();
    store.insert(fb).await.unwrap();
    if complete_b {
        complete(store, fb).await;
    }
    assert!(store.listener_epoch().is_none(), "no wait started it yet");
    let (a, b) = (fa.state.clone(), fb.state.clone());
    let mut wait_a = Box::pin(async move { store.wait(&a, MINUTE).await });
    let mut wait_b = Box::pin(async move { store.wait(&b, b_timeout).await });
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(wait_a.as_mut().poll(&mut cx).is_pending());
    assert!(wait_b.as_mut().poll(&mut cx).is_pending());
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_some())
        .await
    );
    // `a` sees the epoch first: it runs the batch, which covers `b`.
    assert!(wait_a.as_mut().poll(&mut cx).is_pending());
    (wait_a, wait_b)
}

/// A wait that joined its epoch's batched re-read gets its outcome even
/// when the batch's runner is never run again (a future kept but not
/// polled, a blocked runtime): by its own deadline at the latest (2 s here,
/// before the lease of 5 s), it reads on its own instead of answering
/// `None` unread. No listener flap needed: the first connection is an
/// epoch too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_of_a_batch_never_run_reads_its_outcome_by_its_deadline() {
    let schema = Schema::new("joinidle").await;
    let store = schema.open().await;
    let fb = flow(&TokenKey::new("github", "b"), MINUTE);
    let (wait_a, wait_b) = a_runner_and_its_joiner(&store, &fb, Duration::from_secs(2), true).await;
    let started = std::time::Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(10), wait_b)
        .await
        .expect("the wait ends by its deadline");
    let took = started.elapsed();
    eprintln!("FIGURE: joiner of a batch never run answered after {took:?} (deadline 2 s)");
    assert_eq!(got.unwrap(), Some(authorized(1)));
    assert!(took < Duration::from_secs(4), "took {took:?}");
    drop(wait_a);
}

/// A batch runner whose wait is dropped mid-read (cancelled) gives the
/// batch up at once: its joiners read on their own well before the lease
/// (5 s) they would otherwise wait the batch out for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runner_dropped_mid_read_lets_its_joiners_read_at_once() {
    let schema = Schema::new("rundrop").await;
    let store = schema.open().await;
    let fb = flow(&TokenKey::new("github", "b"), MINUTE);
    let (wait_a, wait_b) = a_runner_and_its_joiner(&store, &fb, MINUTE, true).await;
    drop(wait_a);
    let started = std::time::Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(30), wait_b)
        .await
        .expect("the wait ends");
    let took = started.elapsed();
    eprintln!("FIGURE: joiner of a dropped batch runner answered after {took:?}");
    assert_eq!(got.unwrap(), Some(authorized(1)));
    assert!(
        took < Duration::from_secs(2),
        "waited {took:?} for a dropped batch"
    );
}

/// A wait that starts after its epoch's batched re-read ran (and finished)
/// is not covered by it and reads its own outcome at once: a flow completed
/// before the wait started (its notification sent before the wait
/// registered) answers in well under a second, not at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_started_after_its_epochs_batch_reads_its_own_outcome() {
    let schema = Schema::new("afterbatch").await;
    let store = schema.open().await;
    let fa = flow(&TokenKey::new("github", "a"), MINUTE);
    let fb = flow(&TokenKey::new("github", "b"), MINUTE);
    store.insert(&fa).await.unwrap();
    store.insert(&fb).await.unwrap();
    // Warm-up: a wait on `a` brings the link up and runs the epoch's batch.
    let warm = {
        let (store, state) = (store.clone(), fa.state.clone());
        tokio::spawn(async move { store.wait(&state, MINUTE).await })
    };
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_some())
        .await
    );
    let epoch = store.listener_epoch();
    // The batch (one statement on a idle pool) is long done.
    tokio::time::sleep(Duration::from_millis(500)).await;
    complete(&store, &fb).await;
    let started = std::time::Instant::now();
    let got = store.wait(&fb.state, Duration::from_secs(3)).await;
    let took = started.elapsed();
    eprintln!("FIGURE: wait started after its epoch's batch answered after {took:?}");
    assert_eq!(got.unwrap(), Some(authorized(1)));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(store.listener_epoch(), epoch, "no flap in between");
    warm.abort();
}

/// Takes and completes `f` (outcome `authorized(1)`), notifying its waiters.
async fn complete(store: &PostgresStore, f: &mcp_authkit_core::PendingFlow) {
    store.take(&f.state).await.unwrap().unwrap();
    store
        .complete(&f.key, &f.state, &authorized(1), MINUTE)
        .await
        .unwrap();
}

/// A wait that joined a batch whose runner is never run again still wakes
/// at once when its flow is completed (and notified) meanwhile: it does not
/// wait the batch out (up to the lease, 5 s) before hearing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_of_a_batch_never_run_wakes_at_once_when_notified() {
    let schema = Schema::new("joinnotify").await;
    let store = schema.open().await;
    let fb = flow(&TokenKey::new("github", "b"), MINUTE);
    let (wait_a, wait_b) = a_runner_and_its_joiner(&store, &fb, MINUTE, false).await;
    let ended = async {
        let got = tokio::time::timeout(Duration::from_secs(30), wait_b)
            .await
            .expect("the wait ends");
        (got, std::time::Instant::now())
    };
    let started = async {
        // `b` has joined the batch by then.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = std::time::Instant::now();
        complete(&store, &fb).await;
        started
    };
    let ((got, ended), started) = tokio::join!(ended, started);
    let took = ended.saturating_duration_since(started);
    eprintln!("FIGURE: joiner of a batch never run woke after {took:?} once notified");
    assert_eq!(got.unwrap(), Some(authorized(1)));
    assert!(
        took < Duration::from_secs(2),
        "waited {took:?} for a batch never run"
    );
    drop(wait_a);
}
