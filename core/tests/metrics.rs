//! The lifecycle's metrics and store spans, read back through the
//! per-thread debugging recorder and span log of
//! `mcp_authkit_core::testing::recording` (each test runs on a
//! current-thread runtime, so its spawned refresh tasks report to it too).

use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::observe::{GaveUp, Observed, names};
use mcp_authkit_core::testing::recording::{Metrics, Recording};
use mcp_authkit_core::testing::{FakeOAuthClient, RefreshBehavior};
use mcp_authkit_core::*;
use mcp_authkit_store_memory::MemoryStore;

const ALICE: &str = "alice@example.com";

fn config() -> LifecycleConfig {
    let mut config = LifecycleConfig::new("https://mcp.example/callback", vec!["repo".into()]);
    config.lease_ttl = Duration::from_secs(2);
    config.lease_wait = Duration::from_secs(3);
    config.refresh_timeout = Duration::from_secs(1);
    config
}

struct Fixture {
    clock: Arc<ManualClock>,
    oauth: Arc<FakeOAuthClient>,
    lifecycle: TokenLifecycle,
}

fn fixture(tokens: Arc<dyn TokenStore>, pending: Arc<dyn PendingStore>) -> Fixture {
    let clock = Arc::new(ManualClock::starting_now());
    let oauth = Arc::new(FakeOAuthClient::new());
    let lifecycle = TokenLifecycle::builder("github", oauth.clone(), tokens, pending)
        .clock(clock.clone())
        .config(config())
        .build()
        .unwrap();
    Fixture {
        clock,
        oauth,
        lifecycle,
    }
}

fn memory_fixture() -> Fixture {
    let store = Arc::new(MemoryStore::new());
    fixture(store.clone(), store)
}

impl Fixture {
    async fn seed(&self, lifetime: Duration) -> TokenRecord {
        let record = self
            .oauth
            .issue()
            .into_record(self.clock.now(), &["repo".to_owned()])
            .with_expires_at(self.clock.now().saturating_add(lifetime));
        self.lifecycle.store_token(ALICE, &record).await.unwrap();
        record
    }
}

#[tokio::test]
async fn an_invalid_grant_refresh_counts_once_and_its_store_calls() {
    let mut rec = Recording::start();
    let f = memory_fixture();
    f.seed(Duration::from_secs(10)).await;
    f.oauth.set_refresh_behavior(RefreshBehavior::InvalidGrant);
    assert!(matches!(
        f.lifecycle.access(ALICE).await.unwrap(),
        Access::NeedsAuthorization(AuthorizationReason::RefreshRejected)
    ));

    let m = rec.metrics();
    let github = |result| {
        m.counter(
            names::REFRESHES,
            &[("provider", "github"), ("result", result)],
        )
    };
    assert_eq!(github("invalid_grant"), 1, "{m:#?}");
    assert_eq!(m.total(names::REFRESHES), 1, "nothing else counted: {m:#?}");
    assert_eq!(
        m.samples(names::REFRESH_DURATION, &[("provider", "github")]),
        1
    );
    // seed: put; access: get, lease, get again under it, delete by
    // revision, release.
    assert_eq!(m.store_ops("memory", "put"), 1);
    assert_eq!(m.store_ops("memory", "get"), 2);
    assert_eq!(m.store_ops("memory", "try_acquire_lease"), 1);
    assert_eq!(m.store_ops("memory", "delete_if_revision"), 1);
    assert_eq!(m.store_ops("memory", "release_lease"), 1);
    assert_eq!(m.total(names::STORE_ERRORS), 0);
}

#[tokio::test]
async fn a_transient_refresh_failure_counts_once_then_the_retry_counts_refreshed() {
    let mut rec = Recording::start();
    let f = memory_fixture();
    f.seed(Duration::from_secs(30)).await;
    f.oauth.set_refresh_behavior(RefreshBehavior::Transient);
    assert!(matches!(
        f.lifecycle.access(ALICE).await.unwrap(),
        Access::Ready(_)
    ));
    // Backing off: served without a refresh, so nothing more is counted.
    assert!(matches!(
        f.lifecycle.access(ALICE).await.unwrap(),
        Access::Ready(_)
    ));
    let m = rec.metrics();
    let result =
        |m: &Metrics, r| m.counter(names::REFRESHES, &[("provider", "github"), ("result", r)]);
    assert_eq!(result(&m, "transient"), 1, "{m:#?}");
    assert_eq!(m.total(names::REFRESHES), 1);

    f.clock.advance(Duration::from_secs(6));
    f.oauth.set_refresh_behavior(RefreshBehavior::Succeed);
    assert!(matches!(
        f.lifecycle.access(ALICE).await.unwrap(),
        Access::Ready(_)
    ));
    let m = rec.metrics();
    assert_eq!(result(&m, "transient"), 1);
    assert_eq!(result(&m, "refreshed"), 1, "{m:#?}");
    assert_eq!(m.total(names::REFRESHES), 2);
    assert_eq!(f.oauth.refresh_calls(), 2);
}

#[tokio::test]
async fn a_sign_in_counts_started_joined_and_completed_and_a_replay_changes_nothing() {
    let mut rec = Recording::start();
    let f = memory_fixture();
    let BeginOutcome::Started(flow) = f
        .lifecycle
        .begin_authorization(ALICE, FlowRequest::default())
        .await
        .unwrap()
    else {
        panic!("a new flow")
    };
    for _ in 0..2 {
        let joined = f
            .lifecycle
            .begin_authorization(ALICE, FlowRequest::default())
            .await
            .unwrap();
        assert!(matches!(joined, BeginOutcome::Joined(_)));
    }
    let code = f
        .oauth
        .approve(&f.lifecycle.authorization_url(&flow).unwrap());
    let params = CallbackParams::success(flow.state.clone(), code);
    f.lifecycle
        .complete_authorization(params.clone())
        .await
        .unwrap();
    assert!(matches!(
        f.lifecycle.complete_authorization(params).await,
        Err(Error::FlowNotFound)
    ));
    let m = rec.metrics();
    let github = [("provider", "github")];
    assert_eq!(m.counter(names::FLOWS_STARTED, &github), 1, "{m:#?}");
    assert_eq!(m.counter(names::FLOWS_JOINED, &github), 2);
    assert_eq!(
        m.counter(
            names::FLOWS_COMPLETED,
            &[("provider", "github"), ("outcome", "authorized")]
        ),
        1
    );
    assert_eq!(
        m.total(names::FLOWS_COMPLETED),
        1,
        "the replay ended nothing"
    );

    // A denied one and an abandoned one.
    for abandon in [false, true] {
        let begun = f
            .lifecycle
            .begin_authorization("bob", FlowRequest::default())
            .await
            .unwrap();
        if abandon {
            let outcome = FlowOutcome::Denied {
                error: "cancelled".into(),
                description: None,
            };
            assert!(
                f.lifecycle
                    .abandon_flow(begun.state(), outcome)
                    .await
                    .unwrap()
            );
        } else {
            let denied = CallbackParams::error(begun.state().clone(), "access_denied", None);
            f.lifecycle.complete_authorization(denied).await.unwrap();
        }
    }
    let m = rec.metrics();
    for (outcome, n) in [("authorized", 1), ("denied", 1), ("abandoned", 1)] {
        assert_eq!(
            m.counter(
                names::FLOWS_COMPLETED,
                &[("provider", "github"), ("outcome", outcome)]
            ),
            n,
            "{outcome}: {m:#?}"
        );
    }
    assert_eq!(m.counter(names::FLOWS_STARTED, &github), 3);
}

/// A store whose every operation fails, as an unreachable backend does.
struct Down;

fn down() -> Error {
    Error::backend(
        "down",
        "any",
        true,
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
    )
}

#[async_trait]
impl TokenStore for Down {
    fn backend_name(&self) -> &'static str {
        "down"
    }
    async fn get(&self, _: &TokenKey) -> Result<Option<StoredToken>> {
        Err(down())
    }
    async fn put(&self, _: &TokenKey, _: &TokenRecord) -> Result<Revision> {
        Err(down())
    }
    async fn compare_and_swap(
        &self,
        _: &TokenKey,
        _: Option<Revision>,
        _: &TokenRecord,
    ) -> Result<CasOutcome> {
        Err(down())
    }
    async fn delete(&self, _: &TokenKey) -> Result<bool> {
        Err(down())
    }
    async fn delete_if_revision(&self, _: &TokenKey, _: Revision) -> Result<bool> {
        Err(down())
    }
    async fn try_acquire_lease(&self, _: &TokenKey, _: Duration) -> Result<Option<LeaseToken>> {
        Err(down())
    }
    async fn release_lease(&self, _: &TokenKey, _: &LeaseToken) -> Result<bool> {
        Err(down())
    }
    async fn scan(&self, _: Option<&ScanCursor>, _: usize) -> Result<ScanPage<TokenKey>> {
        Err(down())
    }
}

#[tokio::test]
async fn store_errors_are_counted_by_backend_and_operation_and_ping_reports_them() {
    let mut rec = Recording::start();
    let f = fixture(Arc::new(Down), Arc::new(MemoryStore::new()));
    assert!(f.lifecycle.access(ALICE).await.unwrap_err().is_retryable());
    let ping = f.lifecycle.token_store().ping().await.unwrap_err();
    assert!(ping.to_string().contains("down"), "{ping}");
    assert!(f.lifecycle.pending_store().ping_pending().await.is_ok());
    let m = rec.metrics();
    let errors = |operation| {
        m.counter(
            names::STORE_ERRORS,
            &[("backend", "down"), ("operation", operation)],
        )
    };
    assert_eq!(errors("get"), 1, "{m:#?}");
    // The default ping is one read of a key no one uses.
    assert_eq!(errors("ping"), 1);
    assert_eq!(m.total(names::STORE_ERRORS), 2);
    assert_eq!(m.store_ops("memory", "ping_pending"), 1);
}

/// No metric label and no span field carries a subject, a state, a token,
/// a code or a URL, across a refresh, a transient failure, an
/// invalid_grant and a full sign-in, with everything at trace level.
#[tokio::test]
async fn no_label_or_span_field_holds_a_subject_state_token_code_or_url() {
    let mut rec = Recording::start();

    let f = memory_fixture();
    let mut secrets = vec![
        ALICE.to_owned(),
        "https://".to_owned(),
        "http://".to_owned(),
    ];
    let seeded = f.seed(Duration::from_secs(30)).await;
    secrets.push(seeded.access_token.expose_secret().to_owned());
    secrets.push(
        seeded
            .refresh_token
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_owned(),
    );
    let Access::Ready(refreshed) = f.lifecycle.access(ALICE).await.unwrap() else {
        panic!("refreshed")
    };
    secrets.push(refreshed.secret().expose_secret().to_owned());
    f.clock.advance(Duration::from_secs(3600));
    f.oauth.set_refresh_behavior(RefreshBehavior::Transient);
    let _ = f.lifecycle.access(ALICE).await;
    f.clock.advance(Duration::from_secs(10));
    f.oauth.set_refresh_behavior(RefreshBehavior::InvalidGrant);
    let _ = f.lifecycle.access(ALICE).await;
    let begun = f
        .lifecycle
        .begin_authorization(ALICE, FlowRequest::default())
        .await
        .unwrap();
    let flow = begun.flow().unwrap().clone();
    secrets.push(flow.state.as_str().to_owned());
    secrets.push(flow.pkce_verifier.expose_secret().to_owned());
    secrets.push(flow.elicitation_id.clone());
    let code = f
        .oauth
        .approve(&f.lifecycle.authorization_url(&flow).unwrap());
    secrets.push(code.clone());
    f.lifecycle
        .complete_authorization(CallbackParams::success(flow.state.clone(), code))
        .await
        .unwrap();
    let stored = f.lifecycle.stored_token(ALICE).await.unwrap().unwrap();
    secrets.push(stored.record.access_token.expose_secret().to_owned());

    let m = rec.metrics();
    let labels = m.label_values();
    let fields = rec.spans().fields();
    assert!(
        fields
            .iter()
            .any(|(span, field, value)| span == "store" && field == "outcome" && value == "\"ok\""),
        "store spans record their outcome: {fields:?}"
    );
    for operation in [
        "get",
        "put",
        "insert",
        "take",
        "complete",
        "compare_and_swap",
    ] {
        assert!(
            fields.iter().any(|(span, field, value)| span == "store"
                && field == "operation"
                && *value == format!("{operation:?}")),
            "a store span for {operation}"
        );
    }
    assert!(labels.iter().any(|v| v == "github") && labels.len() > 10);
    for secret in &secrets {
        for label in &labels {
            assert!(
                !label.contains(secret.as_str()),
                "{secret} in label {label}"
            );
        }
        for (span, field, value) in &fields {
            assert!(
                !value.contains(secret.as_str()),
                "{secret} in span {span} field {field}: {value}"
            );
        }
    }
}

/// Runs `test` on a runtime with several worker threads: the flow gauge and
/// the wake histogram report through handles taken when the lifecycle was
/// built (on the test's thread, under its recorder), so they reach the
/// recorder from every worker.
fn on_many_threads<F: std::future::Future>(test: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test)
}

/// Many users start flows at once on several threads and wait on them:
/// while N wait the gauge is N (joins add nothing), and once every flow
/// ended, by callback, denial or abandonment, concurrently, it is 0 again,
/// and replays of those ends do not push it below 0. Each waiter woken by a
/// completion records one wake sample.
#[test]
fn the_pending_gauge_is_exact_under_concurrency_and_each_wake_is_one_sample() {
    const USERS: usize = 48;
    const WAITERS_PER_FLOW: usize = 2;
    let mut rec = Recording::start();
    let store = Arc::new(MemoryStore::new());
    let f = fixture(store.clone(), store.clone());
    let lifecycle = f.lifecycle.clone();
    let oauth = f.oauth.clone();
    let pending = |m: &Metrics| m.gauge(names::FLOWS_PENDING, &[("provider", "github")]);
    let wakes = |m: &Metrics| m.samples(names::WAKE_DURATION, &[("backend", "memory")]);

    let flows: Vec<PendingFlow> = on_many_threads(async {
        let begins: Vec<_> = (0..USERS)
            .map(|i| {
                let lifecycle = lifecycle.clone();
                tokio::spawn(async move {
                    let begun = lifecycle
                        .begin_authorization(&format!("user-{i}"), FlowRequest::default())
                        .await
                        .unwrap();
                    // A second request of the same user joins.
                    let joined = lifecycle
                        .begin_authorization(&format!("user-{i}"), FlowRequest::default())
                        .await
                        .unwrap();
                    assert!(matches!(joined, BeginOutcome::Joined(_)));
                    begun.flow().cloned().expect("a new flow")
                })
            })
            .collect();
        let mut flows = Vec::new();
        for begin in begins {
            flows.push(begin.await.unwrap());
        }
        flows
    });
    assert_eq!(pending(&rec.metrics()), USERS as f64);

    let m = on_many_threads(async {
        let mut waiters = Vec::new();
        for flow in &flows {
            for _ in 0..WAITERS_PER_FLOW {
                let (lifecycle, state) = (lifecycle.clone(), flow.state.clone());
                waiters.push(tokio::spawn(async move {
                    lifecycle.wait(&state, Duration::from_secs(30)).await
                }));
            }
        }
        // Every waiter is parked on its flow before any flow ends (a wait
        // that starts after the end is not a wake). The store counts the
        // subscriptions, so this holds however late a loaded runner starts
        // a waiter; the bound only turns a hang into a failure.
        let parked = USERS * WAITERS_PER_FLOW;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while store.entry_counts().waiters < parked {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {parked} waiters parked",
                store.entry_counts().waiters
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let m = rec.metrics();
        assert_eq!(pending(&m), USERS as f64, "waiting adds nothing");
        assert_eq!(wakes(&m), 0);

        let ends: Vec<_> = flows
            .iter()
            .enumerate()
            .map(|(i, flow)| {
                let (lifecycle, oauth, flow) = (lifecycle.clone(), oauth.clone(), flow.clone());
                tokio::spawn(async move {
                    match i % 3 {
                        0 => {
                            let code = oauth.approve(&lifecycle.authorization_url(&flow).unwrap());
                            let params = CallbackParams::success(flow.state.clone(), code);
                            lifecycle.complete_authorization(params).await.unwrap();
                        }
                        1 => {
                            let params =
                                CallbackParams::error(flow.state.clone(), "access_denied", None);
                            lifecycle.complete_authorization(params).await.unwrap();
                        }
                        _ => {
                            let outcome = FlowOutcome::Denied {
                                error: "cancelled".into(),
                                description: None,
                            };
                            assert!(lifecycle.abandon_flow(&flow.state, outcome).await.unwrap());
                        }
                    }
                    // A replayed end finds nothing to end.
                    let outcome = FlowOutcome::Denied {
                        error: "cancelled".into(),
                        description: None,
                    };
                    assert!(!lifecycle.abandon_flow(&flow.state, outcome).await.unwrap());
                })
            })
            .collect();
        for end in ends {
            end.await.unwrap();
        }
        for waiter in waiters {
            assert!(
                waiter.await.unwrap().unwrap().is_some(),
                "woken with an outcome"
            );
        }
        // A late wait reads the kept outcome at once: no wake.
        let late = lifecycle
            .wait(&flows[0].state, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(late.is_some());
        rec.metrics()
    });
    assert_eq!(pending(&m), 0.0, "{m:#?}");
    assert_eq!(wakes(&m), USERS * WAITERS_PER_FLOW, "one sample per wake");
}

/// A flow nobody ends leaves the gauge once it expires (seen at the next
/// flow event), and a wait that times out records no wake.
#[tokio::test]
async fn an_expired_flow_leaves_the_pending_gauge_and_a_timed_out_wait_is_no_wake() {
    let mut rec = Recording::start();
    let f = memory_fixture();
    let begun = f
        .lifecycle
        .begin_authorization(ALICE, FlowRequest::default())
        .await
        .unwrap();
    assert!(
        f.lifecycle
            .wait(begun.state(), Duration::from_millis(20))
            .await
            .unwrap()
            .is_none()
    );
    let m = rec.metrics();
    assert_eq!(
        m.gauge(names::FLOWS_PENDING, &[("provider", "github")]),
        1.0
    );
    assert_eq!(m.samples(names::WAKE_DURATION, &[("backend", "memory")]), 0);

    f.clock.advance(config().flow_ttl + Duration::from_secs(1));
    // Bob's start is the next flow event: Alice's flow is gone by then.
    f.lifecycle
        .begin_authorization("bob", FlowRequest::default())
        .await
        .unwrap();
    let m = rec.metrics();
    assert_eq!(
        m.gauge(names::FLOWS_PENDING, &[("provider", "github")]),
        1.0,
        "bob's only"
    );
}

#[tokio::test]
async fn a_provider_name_holding_a_url_reaches_no_label_or_span_through_its_metrics_label() {
    let mut rec = Recording::start();

    // The MCP client's lifecycles are named `{namespace}:{issuer}`.
    let provider = "mcp-client:https://issuer.example/tenant";
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::starting_now());
    let oauth = Arc::new(FakeOAuthClient::new());
    let lifecycle = TokenLifecycle::builder(provider, oauth.clone(), store.clone(), store)
        .clock(clock.clone())
        .config(config())
        .metrics_label("mcp-client")
        .build()
        .unwrap();
    assert_eq!(lifecycle.provider(), provider, "keys keep the full name");

    let record = oauth
        .issue()
        .into_record(clock.now(), &["repo".to_owned()])
        .with_expires_at(clock.now().saturating_add(Duration::from_secs(30)));
    lifecycle.store_token(ALICE, &record).await.unwrap();
    let Access::Ready(_) = lifecycle.access(ALICE).await.unwrap() else {
        panic!("refreshed")
    };
    assert!(lifecycle.stored_token(ALICE).await.unwrap().is_some());
    let begun = lifecycle
        .begin_authorization("bob@example.com", FlowRequest::default())
        .await
        .unwrap();
    let flow = begun.flow().unwrap().clone();
    let code = oauth.approve(&lifecycle.authorization_url(&flow).unwrap());
    lifecycle
        .complete_authorization(CallbackParams::success(flow.state.clone(), code))
        .await
        .unwrap();

    let m = rec.metrics();
    assert_eq!(
        m.counter(
            names::REFRESHES,
            &[("provider", "mcp-client"), ("result", "refreshed")]
        ),
        1
    );
    assert_eq!(
        m.counter(names::FLOWS_STARTED, &[("provider", "mcp-client")]),
        1
    );
    let labels = m.label_values();
    assert!(labels.iter().any(|v| v == "mcp-client"));
    for label in &labels {
        assert!(!label.contains("https://"), "a URL in label {label}");
    }
    let fields = rec.spans().fields();
    assert!(
        fields.iter().any(|(span, field, value)| span == "refresh"
            && field == "provider"
            && value.contains("mcp-client")),
        "the refresh span names the label: {fields:?}"
    );
    for (span, field, value) in &fields {
        assert!(
            !value.contains("https://"),
            "a URL in span {span} field {field}: {value}"
        );
    }
}

/// A wait that gives up ends nothing: the lifecycle's `wait` counts no
/// completion, the caller reports its give-up once (under the metrics
/// label), and the flow's later callback is its one completion.
#[tokio::test]
async fn a_wait_that_gives_up_is_no_completion_and_the_later_callback_is_the_only_one() {
    let mut rec = Recording::start();
    let f = memory_fixture();
    let BeginOutcome::Started(flow) = f
        .lifecycle
        .begin_authorization(ALICE, FlowRequest::default())
        .await
        .unwrap()
    else {
        panic!("a new flow")
    };
    let waited = f
        .lifecycle
        .wait(&flow.state, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(waited.is_none());
    let m = rec.metrics();
    assert_eq!(m.total(names::FLOWS_COMPLETED), 0, "{m:#?}");
    assert_eq!(m.total(names::WAITS_GIVEN_UP), 0, "the caller reports it");
    f.lifecycle.record_wait_given_up(GaveUp::TimedOut);

    let code = f
        .oauth
        .approve(&f.lifecycle.authorization_url(&flow).unwrap());
    f.lifecycle
        .complete_authorization(CallbackParams::success(flow.state.clone(), code))
        .await
        .unwrap();
    let m = rec.metrics();
    assert_eq!(
        m.events(),
        [
            ("flows_started_total{}", 1),
            ("waits_given_up_total{reason=timed_out}", 1),
            ("flows_completed_total{outcome=authorized}", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect::<std::collections::BTreeMap<_, _>>(),
        "{m:#?}"
    );
    assert_eq!(
        m.counter(
            names::WAITS_GIVEN_UP,
            &[("provider", "github"), ("reason", "timed_out")]
        ),
        1
    );
    assert_eq!(
        m.gauge(names::FLOWS_PENDING, &[("provider", "github")]),
        0.0
    );
}

/// The metrics table of the `observe` docs and the README's "Operate it"
/// table are one table: an operator reads the README, a developer the
/// docs, and a row changed in one place only misleads one of them. Every
/// metric name of `names` has exactly one row, so a renamed or added
/// constant fails here until the table says it.
#[test]
fn the_readme_shows_the_observe_docs_metrics_table_unchanged() {
    let observe = include_str!("../src/observe.rs").replace("\r\n", "\n");
    let docs = first_table(
        observe
            .lines()
            .filter_map(|line| line.strip_prefix("//!"))
            .map(|line| line.strip_prefix(' ').unwrap_or(line)),
    );
    let readme = include_str!("../../README.md").replace("\r\n", "\n");
    let section = readme
        .split("\n## Operate it\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README has an \"Operate it\" section");
    let shown = first_table(section.lines());
    assert!(docs.len() > 2, "the docs table was found");
    for (shown, doc) in shown.iter().zip(&docs) {
        assert_eq!(shown, doc, "a README row differs from the observe docs");
    }
    assert_eq!(shown.len(), docs.len(), "as many rows in both tables");

    let constants: Vec<&str> = observe
        .split("pub mod names {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("the names module")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub const "))
        .filter_map(|line| line.split('"').nth(1))
        .collect();
    assert!(
        constants.contains(&names::FLOWS_COMPLETED),
        "the constants were read: {constants:?}"
    );
    let named: Vec<&str> = docs
        .iter()
        .skip(2)
        .filter_map(|row| row.split('`').nth(1))
        .collect();
    for constant in &constants {
        let rows = named.iter().filter(|name| *name == constant).count();
        assert_eq!(rows, 1, "{constant} has {rows} rows in the metrics table");
    }
    assert_eq!(
        named.len(),
        constants.len(),
        "every row names a metric of `names`: {named:?}"
    );
}

/// The rows of the first Markdown table in `lines`, from its header to
/// the first line that is not a row (a later table is no part of it).
fn first_table<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    lines
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .collect()
}

/// Reads alice's token `n` times through `store`, and returns how many
/// reads were counted and how many timed.
async fn read_n(rec: &mut Recording, store: &Observed<MemoryStore>, n: u64) -> (u64, usize) {
    let key = TokenKey::new("github", ALICE);
    for _ in 0..n {
        assert!(store.get(&key).await.unwrap().is_some());
    }
    let m = rec.metrics();
    let backend = store.backend_name();
    (
        m.store_ops(backend, "get"),
        m.store_ops_timed(backend, "get"),
    )
}

/// The memory store's reads never wait: after 64 timed ones, about one in
/// 64 is timed (at random gaps of 1 to 127), and every one is counted (red
/// when every read is timed, or sampling starts before the 64 learning
/// reads, or the gaps are far from 64 on average).
#[tokio::test]
async fn an_in_process_store_is_timed_about_one_read_in_64_after_64() {
    let mut rec = Recording::start();
    let memory = Arc::new(MemoryStore::new());
    let record = TokenRecord::new("gho_x", Timestamp::now());
    memory
        .put(&TokenKey::new("github", ALICE), &record)
        .await
        .unwrap();
    let store = Observed::new(memory, "memory");
    assert_eq!(read_n(&mut rec, &store, 64).await, (64, 64));
    let (reads, timed) = read_n(&mut rec, &store, 6400).await;
    assert_eq!(reads, 6464);
    assert!((64 + 70..=64 + 130).contains(&timed), "{timed} timed");
}

/// Waits `n` times through `store` on `state` (for 1 ms at most), and
/// returns how many waits were counted and how many timed.
async fn wait_n(
    rec: &mut Recording,
    store: &Observed<MemoryStore>,
    state: &FlowState,
    n: u64,
) -> (u64, usize) {
    for _ in 0..n {
        store.wait(state, Duration::from_millis(1)).await.unwrap();
    }
    let m = rec.metrics();
    (
        m.store_ops("memory", "wait"),
        m.store_ops_timed("memory", "wait"),
    )
}

/// An operation that waits (the memory store's `wait` on a flow with no
/// outcome yet) is timed every time, also after the 64 learning ones; and
/// one learned in-process (`wait` on a flow already completed answers on
/// its first poll) is timed in full from the first run that waits (red
/// when sampling ignores waits, or a wait does not end it).
#[tokio::test]
async fn an_operation_that_waits_is_timed_every_time() {
    let memory = Arc::new(MemoryStore::new());
    let (pending, done) = (FlowState::generate(), FlowState::generate());
    let outcome = FlowOutcome::Denied {
        error: "declined".into(),
        description: None,
    };
    let key = TokenKey::new("github", ALICE);
    memory
        .complete(&key, &done, &outcome, Duration::from_secs(600))
        .await
        .unwrap();
    {
        let mut rec = Recording::start();
        let store = Observed::new(memory.clone(), "memory");
        assert_eq!(wait_n(&mut rec, &store, &pending, 200).await, (200, 200));
    }

    let mut rec = Recording::start();
    let store = Observed::new(memory, "memory");
    let (waits, sampled) = wait_n(&mut rec, &store, &done, 64 + 640).await;
    assert_eq!(waits, 704);
    assert!(sampled < 64 + 64, "{sampled} timed: learned in-process");
    // One wait waits (timed only if its turn had come)...
    let (waits, timed) = wait_n(&mut rec, &store, &pending, 1).await;
    assert_eq!(waits, 705);
    assert!(timed == sampled || timed == sampled + 1);
    // ...and every wait is timed from then on, answered at once or not.
    assert_eq!(
        wait_n(&mut rec, &store, &done, 100).await,
        (805, timed + 100)
    );
}
