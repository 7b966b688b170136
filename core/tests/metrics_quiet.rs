//! Metrics with no tracing subscriber at all, as in a service that only
//! exports metrics: the store wrapper takes its no-span path then. This
//! binary must never set a subscriber (its tests would all stop taking that
//! path), so the span tests live in `metrics.rs`.
//!
//! Also the flows-pending gauge's exits other than a completed flow: a
//! failed completion, a dropped lifecycle, an expiry seen on the token
//! path.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mcp_authkit_core::observe::{Observed, names};
use mcp_authkit_core::testing::FakeOAuthClient;
use mcp_authkit_core::testing::recording::{Metrics, Recording};
use mcp_authkit_core::*;
use mcp_authkit_store_memory::MemoryStore;

const ALICE: &str = "alice@example.com";

/// A memory pending store whose `complete` breaks: it fails, as a store
/// that went away between the take and the completion would, or it never
/// answers, so the callback future can be dropped after its take (a
/// cancelled callback handler).
struct BrokenComplete {
    store: MemoryStore,
    hangs: bool,
}

impl BrokenComplete {
    fn fails() -> Self {
        Self {
            store: MemoryStore::new(),
            hangs: false,
        }
    }

    fn hangs() -> Self {
        Self {
            store: MemoryStore::new(),
            hangs: true,
        }
    }
}

#[async_trait]
impl PendingStore for BrokenComplete {
    fn pending_backend_name(&self) -> &'static str {
        if self.hangs {
            self.store.pending_backend_name()
        } else {
            "complete_fails"
        }
    }
    async fn insert(&self, flow: &PendingFlow) -> Result<InsertOutcome> {
        self.store.insert(flow).await
    }
    async fn get_flow(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        self.store.get_flow(state).await
    }
    async fn active_flow(&self, key: &TokenKey) -> Result<Option<FlowState>> {
        self.store.active_flow(key).await
    }
    async fn take(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        self.store.take(state).await
    }
    async fn complete(
        &self,
        _: &TokenKey,
        _: &FlowState,
        _: &FlowOutcome,
        _: Duration,
    ) -> Result<()> {
        if self.hangs {
            return std::future::pending().await;
        }
        Err(Error::backend(
            "complete_fails",
            "complete",
            true,
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
        ))
    }
    async fn outcome(&self, state: &FlowState) -> Result<Option<FlowOutcome>> {
        self.store.outcome(state).await
    }
    async fn wait(&self, state: &FlowState, timeout: Duration) -> Result<Option<FlowOutcome>> {
        self.store.wait(state, timeout).await
    }
    async fn purge_expired(&self) -> Result<PurgeReport> {
        self.store.purge_expired().await
    }
}

struct Fixture {
    clock: Arc<ManualClock>,
    oauth: Arc<FakeOAuthClient>,
    lifecycle: TokenLifecycle,
}

fn fixture(pending: Arc<dyn PendingStore>) -> Fixture {
    let clock = Arc::new(ManualClock::starting_now());
    let oauth = Arc::new(FakeOAuthClient::new());
    let lifecycle = TokenLifecycle::builder(
        "github",
        oauth.clone(),
        Arc::new(MemoryStore::new()),
        pending,
    )
    .clock(clock.clone())
    .config(LifecycleConfig::new(
        "https://mcp.example/callback",
        vec!["repo".into()],
    ))
    .build()
    .unwrap();
    Fixture {
        clock,
        oauth,
        lifecycle,
    }
}

fn pending(m: &Metrics) -> f64 {
    m.gauge(names::FLOWS_PENDING, &[("provider", "github")])
}

/// The `failed` completions, after checking they are the only ones.
fn one_failure(m: &Metrics) -> u64 {
    let failed = m.counter(
        names::FLOWS_COMPLETED,
        &[("provider", "github"), ("outcome", "failed")],
    );
    assert_eq!(m.total(names::FLOWS_COMPLETED), failed, "{m:#?}");
    failed
}

/// With no subscriber, every store call is still timed and its errors
/// counted (red when the no-span path skips the recording).
#[tokio::test]
async fn without_a_subscriber_store_calls_and_errors_are_recorded() {
    assert!(
        !tracing::dispatcher::has_been_set(),
        "this binary must run without any tracing subscriber"
    );
    let mut rec = Recording::start_metrics_only();
    let f = fixture(Arc::new(BrokenComplete::fails()));
    let record = f
        .oauth
        .issue()
        .into_record(f.clock.now(), &["repo".to_owned()]);
    f.lifecycle.store_token(ALICE, &record).await.unwrap();
    for _ in 0..3 {
        assert!(matches!(
            f.lifecycle.access(ALICE).await.unwrap(),
            Access::Ready(_)
        ));
    }
    let begun = f
        .lifecycle
        .begin_authorization("bob", FlowRequest::default())
        .await
        .unwrap();
    let denied = CallbackParams::error(begun.state().clone(), "access_denied", None);
    assert!(f.lifecycle.complete_authorization(denied).await.is_err());

    let m = rec.metrics();
    assert_eq!(m.store_ops("memory", "get"), 3, "{m:#?}");
    assert_eq!(m.store_ops("memory", "put"), 1, "{m:#?}");
    assert_eq!(m.store_ops("complete_fails", "complete"), 1, "{m:#?}");
    assert_eq!(
        m.counter(
            names::STORE_ERRORS,
            &[("backend", "complete_fails"), ("operation", "complete")]
        ),
        1,
        "{m:#?}"
    );
    assert_eq!(m.total(names::STORE_ERRORS), 1, "{m:#?}");
}

/// A flow taken by a callback leaves the gauge even when completing it
/// fails (red when the gauge is stepped down only after a successful
/// completion), and it ended: one `failed` completion, nothing else (red
/// when only a stored outcome is counted).
#[tokio::test]
async fn a_flow_whose_completion_fails_leaves_the_pending_gauge_and_counts_one_failure() {
    let mut rec = Recording::start_metrics_only();
    let f = fixture(Arc::new(BrokenComplete::fails()));
    let begun = f
        .lifecycle
        .begin_authorization(ALICE, FlowRequest::default())
        .await
        .unwrap();
    assert_eq!(pending(&rec.metrics()), 1.0);
    let denied = CallbackParams::error(begun.state().clone(), "access_denied", None);
    let error = f
        .lifecycle
        .complete_authorization(denied)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Backend {
                operation: "complete",
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(pending(&rec.metrics()), 0.0);
    assert_eq!(one_failure(&rec.metrics()), 1);
}

/// A callback dropped after it took the flow (its handler cancelled while
/// completing) still ends the flow here (red when the gauge is stepped
/// down only after the completion returns), counted once as `failed`: no
/// one else can take it any more.
#[tokio::test]
async fn a_callback_dropped_after_its_take_leaves_the_pending_gauge_and_counts_one_failure() {
    let mut rec = Recording::start_metrics_only();
    let f = fixture(Arc::new(BrokenComplete::hangs()));
    let begun = f
        .lifecycle
        .begin_authorization(ALICE, FlowRequest::default())
        .await
        .unwrap();
    assert_eq!(pending(&rec.metrics()), 1.0);
    let denied = CallbackParams::error(begun.state().clone(), "access_denied", None);
    let callback = f.lifecycle.complete_authorization(denied);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), callback)
            .await
            .is_err(),
        "complete never answers"
    );
    // Taken: no other callback can have it any more.
    assert!(
        f.lifecycle
            .pending_flow(begun.state())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(pending(&rec.metrics()), 0.0);
    assert_eq!(one_failure(&rec.metrics()), 1);
}

/// An OAuth client whose code exchange never answers (an authorization
/// server that hangs), saying when the exchange has begun.
struct HangingExchange {
    fake: FakeOAuthClient,
    exchanging: tokio::sync::Notify,
}

#[async_trait]
impl OAuthClient for HangingExchange {
    fn authorization_url(&self, request: &AuthorizationRequest<'_>) -> Result<Url, OAuthError> {
        self.fake.authorization_url(request)
    }
    async fn exchange_code(
        &self,
        _: &SecretString,
        _: &PendingFlow,
    ) -> Result<TokenResponse, OAuthError> {
        self.exchanging.notify_one();
        std::future::pending().await
    }
    async fn refresh(
        &self,
        refresh_token: &SecretString,
        scopes: &[String],
    ) -> Result<TokenResponse, OAuthError> {
        self.fake.refresh(refresh_token, scopes).await
    }
}

/// A callback dropped during its code exchange (its handler cancelled
/// while the authorization server is slow) took the flow already: it
/// leaves the gauge and counts once as `failed` (red when the flow's end
/// is only guarded from after the exchange).
#[tokio::test]
async fn a_callback_dropped_during_its_code_exchange_leaves_the_pending_gauge_and_counts_one_failure()
 {
    let mut rec = Recording::start_metrics_only();
    let oauth = Arc::new(HangingExchange {
        fake: FakeOAuthClient::new(),
        exchanging: tokio::sync::Notify::new(),
    });
    let lifecycle = TokenLifecycle::builder(
        "github",
        oauth.clone(),
        Arc::new(MemoryStore::new()),
        Arc::new(MemoryStore::new()),
    )
    .config(LifecycleConfig::new(
        "https://mcp.example/callback",
        vec!["repo".into()],
    ))
    .build()
    .unwrap();
    let begun = lifecycle
        .begin_authorization(ALICE, FlowRequest::default())
        .await
        .unwrap();
    assert_eq!(pending(&rec.metrics()), 1.0);
    let code = CallbackParams::success(begun.state().clone(), "code-1");
    let callback = lifecycle.complete_authorization(code);
    tokio::select! {
        biased;
        result = callback => panic!("the exchange never answers: {result:?}"),
        () = oauth.exchanging.notified() => {}
    }
    // The callback future is dropped in the middle of its exchange.
    assert!(
        lifecycle
            .pending_flow(begun.state())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(pending(&rec.metrics()), 0.0);
    assert_eq!(one_failure(&rec.metrics()), 1);
}

/// An abandonment (a declined prompt) whose completion fails took the
/// flow all the same: it ended with no outcome stored, so it counts once
/// as `failed`, not as `abandoned` (red when the abandonment counts only
/// after completing).
#[tokio::test]
async fn an_abandonment_whose_completion_fails_counts_one_failure() {
    let mut rec = Recording::start_metrics_only();
    let f = fixture(Arc::new(BrokenComplete::fails()));
    let begun = f
        .lifecycle
        .begin_authorization(ALICE, FlowRequest::default())
        .await
        .unwrap();
    let outcome = FlowOutcome::Denied {
        error: "declined".into(),
        description: None,
    };
    assert!(
        f.lifecycle
            .abandon_flow(begun.state(), outcome)
            .await
            .is_err()
    );
    assert_eq!(pending(&rec.metrics()), 0.0);
    assert_eq!(one_failure(&rec.metrics()), 1);
}

/// A dropped lifecycle (a config reload) takes its flows out of the gauge;
/// the flows of another lifecycle of the same provider stay (red without
/// `Drop for FlowBook`).
#[tokio::test]
async fn a_dropped_lifecycle_takes_its_flows_out_of_the_pending_gauge() {
    let mut rec = Recording::start_metrics_only();
    let kept = fixture(Arc::new(MemoryStore::new()));
    kept.lifecycle
        .begin_authorization(ALICE, FlowRequest::default())
        .await
        .unwrap();
    let dropped = fixture(Arc::new(MemoryStore::new()));
    for subject in ["bob", "carol"] {
        dropped
            .lifecycle
            .begin_authorization(subject, FlowRequest::default())
            .await
            .unwrap();
    }
    assert_eq!(pending(&rec.metrics()), 3.0);
    drop(dropped);
    assert_eq!(pending(&rec.metrics()), 1.0, "kept's flow only");
}

/// An expired flow leaves the gauge at the next token read, with no flow
/// event after it, also when the flows reached the book out of their
/// expiry order (red when only flow events sweep, and red with a sweep
/// that stops at the first unexpired flow in arrival order).
#[tokio::test]
async fn an_expired_flow_leaves_the_pending_gauge_at_the_next_token_read() {
    let mut rec = Recording::start_metrics_only();
    let f = fixture(Arc::new(MemoryStore::new()));
    let ttl = LifecycleConfig::new("https://mcp.example/callback", vec![]).flow_ttl;
    let start = f.clock.now();
    // Bob's flow is inserted first but expires a minute after Alice's.
    f.clock.set(start.saturating_add(Duration::from_secs(60)));
    f.lifecycle
        .begin_authorization("bob", FlowRequest::default())
        .await
        .unwrap();
    f.clock.set(start);
    f.lifecycle
        .begin_authorization(ALICE, FlowRequest::default())
        .await
        .unwrap();
    assert_eq!(pending(&rec.metrics()), 2.0);

    // Nothing is due yet: a token read changes nothing.
    assert!(f.lifecycle.access("dave").await.is_ok());
    assert_eq!(pending(&rec.metrics()), 2.0);

    f.clock.advance(ttl + Duration::from_secs(1));
    assert!(f.lifecycle.access("dave").await.is_ok());
    assert_eq!(pending(&rec.metrics()), 1.0, "bob's flow only");

    f.clock.advance(Duration::from_secs(60));
    let record = f
        .oauth
        .issue()
        .into_record(f.clock.now(), &["repo".to_owned()]);
    f.lifecycle.store_token("dave", &record).await.unwrap();
    assert!(matches!(
        f.lifecycle.access("dave").await.unwrap(),
        Access::Ready(_)
    ));
    assert_eq!(pending(&rec.metrics()), 0.0);

    // The read of a token that never expires reads no clock, but for a
    // flow due (red when that path skips the sweep).
    f.lifecycle
        .begin_authorization("carol", FlowRequest::default())
        .await
        .unwrap();
    let lasting = TokenRecord::new("gho_erin", f.clock.now());
    assert!(lasting.expires_at.is_none());
    f.lifecycle.store_token("erin", &lasting).await.unwrap();
    assert!(matches!(
        f.lifecycle.access("erin").await.unwrap(),
        Access::Ready(_)
    ));
    assert_eq!(pending(&rec.metrics()), 1.0, "carol's flow is not due");
    f.clock.advance(ttl + Duration::from_secs(1));
    assert!(matches!(
        f.lifecycle.access("erin").await.unwrap(),
        Access::Ready(_)
    ));
    assert_eq!(pending(&rec.metrics()), 0.0);
}

/// With no tracing subscriber in the process (the production path, no
/// span), the memory store's reads are sampled too after 64, and all
/// counted (red when the span-less path times every read).
#[tokio::test]
async fn without_a_subscriber_an_in_process_store_is_sampled_too() {
    let mut rec = Recording::start_metrics_only();
    let memory = Arc::new(MemoryStore::new());
    let key = TokenKey::new("github", ALICE);
    let record = TokenRecord::new("gho_x", Timestamp::now());
    memory.put(&key, &record).await.unwrap();
    let store: Observed<dyn TokenStore> = Observed::new(memory, "memory");
    for _ in 0..64 + 6400 {
        assert!(store.get(&key).await.unwrap().is_some());
    }
    let m = rec.metrics();
    assert_eq!(m.store_ops("memory", "get"), 6464);
    let timed = m.store_ops_timed("memory", "get");
    assert!((64 + 70..=64 + 130).contains(&timed), "{timed} timed");
}
