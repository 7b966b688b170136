//! The lifecycle's metrics and store spans, read back through metrics-util's
//! debugging recorder (installed for the test's thread: each test runs on a
//! current-thread runtime, so its spawned refresh tasks report to it too)
//! and a tracing layer that keeps every span field.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_authkit_core::observe::names;
use mcp_authkit_core::testing::{FakeOAuthClient, RefreshBehavior};
use mcp_authkit_core::*;
use mcp_authkit_store_memory::MemoryStore;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Every metric seen so far: (name, sorted labels) -> value.
#[derive(Clone, Debug, Default)]
struct Metrics {
    counters: BTreeMap<(String, Vec<(String, String)>), u64>,
    /// Histograms: how many values each recorded.
    samples: BTreeMap<(String, Vec<(String, String)>), usize>,
}

/// The test thread's recorder and span log. Every test of this binary
/// installs both: a thread without a subscriber that hits a callsite first
/// can leave tracing's interest cache saying "never" for the others.
struct Recording {
    snapshotter: Snapshotter,
    totals: Metrics,
    spans: Spans,
    _metrics: metrics::LocalRecorderGuard<'static>,
    _spans: tracing::subscriber::DefaultGuard,
}

impl Recording {
    fn start() -> Recording {
        let recorder: &'static DebuggingRecorder = Box::leak(Box::new(DebuggingRecorder::new()));
        let spans = Spans::default();
        let subscriber = tracing_subscriber::registry()
            .with(spans.clone())
            .with(tracing_subscriber::filter::LevelFilter::TRACE);
        Recording {
            snapshotter: recorder.snapshotter(),
            totals: Metrics::default(),
            spans,
            _metrics: metrics::set_default_local_recorder(recorder),
            _spans: tracing::subscriber::set_default(subscriber),
        }
    }

    /// The totals so far (a debugging snapshot drains what it reads).
    fn metrics(&mut self) -> Metrics {
        let m = &mut self.totals;
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let id = (key.name().to_owned(), labels);
            match value {
                DebugValue::Counter(n) => *m.counters.entry(id).or_default() += n,
                DebugValue::Histogram(values) => *m.samples.entry(id).or_default() += values.len(),
                DebugValue::Gauge(_) => {}
            }
        }
        m.clone()
    }
}

impl Metrics {
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters.get(&id(name, labels)).copied().unwrap_or(0)
    }

    /// The sum of every series of `name`.
    fn total(&self, name: &str) -> u64 {
        self.counters
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }

    fn store_ops(&self, backend: &str, operation: &str) -> usize {
        self.samples
            .get(&id(
                names::STORE_DURATION,
                &[("backend", backend), ("operation", operation)],
            ))
            .copied()
            .unwrap_or(0)
    }

    fn label_values(&self) -> Vec<String> {
        self.counters
            .keys()
            .chain(self.samples.keys())
            .flat_map(|(_, labels)| labels.iter().map(|(_, v)| v.clone()))
            .collect()
    }
}

fn id(name: &str, labels: &[(&str, &str)]) -> (String, Vec<(String, String)>) {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

/// Keeps every span's name and fields (also those recorded later).
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<(String, String, String)>>>);

struct Fields<'a>(&'a Spans, &'static str);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.0.lock().unwrap().push((
            self.1.to_owned(),
            field.name().to_owned(),
            format!("{value:?}"),
        ));
    }
}

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>>
    tracing_subscriber::Layer<S> for Spans
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        attrs.record(&mut Fields(self, attrs.metadata().name()));
    }
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let name = ctx.span(id).map(|s| s.name()).unwrap_or("?");
        values.record(&mut Fields(self, name));
    }
}

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
        m.samples[&id(names::REFRESH_DURATION, &[("provider", "github")])],
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
    let fields = rec.spans.0.lock().unwrap().clone();
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
