//! Metrics and store spans, for operators.
//!
//! # Metrics
//!
//! With the `metrics` feature, mcp-authkit reports through the
//! [`metrics`](https://docs.rs/metrics) facade: the application installs
//! whatever recorder it likes (Prometheus, OpenTelemetry, statsd...). Without
//! the feature every call here compiles to nothing.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `mcp_authkit_flows_started_total` | counter | `provider` | sign-ins started (a new flow) |
//! | `mcp_authkit_flows_joined_total` | counter | `provider` | requests that joined the sign-in in progress for the same user |
//! | `mcp_authkit_flows_completed_total` | counter | `provider`, `outcome` | flows ended, each once: `authorized`, `denied`, `failed` (also a flow taken whose outcome could not be stored), `abandoned` (ended without a readable authorization response: declined or cancelled in the MCP client, cancelled in the tool call that started it before its prompt was answered, dropped by the MCP client that showed it, or a callback too malformed to read, also counted in `callbacks_refused_total{reason=malformed}`) |
//! | `mcp_authkit_waits_given_up_total` | counter | `provider`, `reason` | calls that stopped waiting for a sign-in before it ended: `timed_out`, `cancelled` (the request was cancelled or dropped), `error` (the prompt's request to the MCP client failed). Not a flow's end: the flow goes on, its link working until it expires, unless the call that stopped ends it (the MCP client that showed it; on the server, a call cancelled before its prompt was answered): that end counts `abandoned` |
//! | `mcp_authkit_callbacks_refused_total` | counter | `provider`, `reason` | callbacks refused: `unknown_state` (unknown, expired or used), `binding_mismatch` (another browser), `user_mismatch`, `issuer_mismatch`, `malformed`, `provider_error` (the token endpoint failed) |
//! | `mcp_authkit_refreshes_total` | counter | `provider`, `result` | `refreshed`, `other_replica` (another replica or request refreshed first), `invalid_grant`, `transient` |
//! | `mcp_authkit_refresh_duration_seconds` | histogram | `provider` | time of the refresh request to the authorization server |
//! | `mcp_authkit_elicitations_total` | counter | `provider`, `path` | sign-in requests sent to a client: `wait`, `fail_fast`, `input_required` |
//! | `mcp_authkit_tool_calls_refused_total` | counter | `provider`, `reason` | tool calls refused because the client cannot take a URL elicitation: `no_url_elicitation`, `protocol_too_old` |
//! | `mcp_authkit_store_operation_duration_seconds` | histogram | `backend`, `operation` | time of the store operations of the lifecycle and the providers (through the lifecycle's stores): every one, but about one in 64 of an in-process store's (below) |
//! | `mcp_authkit_store_operations_total` | counter | `backend`, `operation` | every completed store operation of the lifecycle and the providers |
//! | `mcp_authkit_store_errors_total` | counter | `backend`, `operation` | store operations that returned an error |
//! | `mcp_authkit_flows_pending` | gauge | `provider` | flows this process started that have not ended, as this process sees it (per process: sum over replicas; below) |
//! | `mcp_authkit_wake_duration_seconds` | histogram | `backend` | from a flow's completion to a waiter resuming, for completions made in this process (below) |
//!
//! The README's "Operate it" section shows the same table (a test keeps
//! the two identical).
//!
//! `mcp_authkit_flows_completed_total` counts each flow once, when it
//! really ends: by the process that took it from the pending store (a
//! callback, or an abandonment). The take is exactly-once across
//! processes, so the count is too, summed over replicas; a flow taken
//! whose outcome could then not be stored (the store failed, or the
//! callback's future was dropped) still ended there, and counts as
//! `failed`. A call that stops waiting does not end the flow: the user may
//! still finish in the browser, and the callback then counts the flow's
//! one end. Such a call counts in `mcp_authkit_waits_given_up_total`
//! instead, once per call that stopped, whether it started the flow or
//! joined it, and whichever way it waited: a tool call in wait mode (for
//! the client's answer to the prompt or for the callback), a fail-fast or
//! `input_required` retry that waits for a callback in progress, or the
//! MCP client waiting for its browser redirect (in its interaction hook
//! or at its loopback listener) or for another request's sign-in. Its
//! `reason` says why: `timed_out` (its own timeout), `cancelled` (an MCP
//! `notifications/cancelled` for the tool call, as an
//! MCP client whose request timeout is shorter than the server's token
//! timeout sends; in the MCP client, the caller dropping the request) or
//! `error` (the server's prompt to the MCP client failed: its transport,
//! or an error answer). A store error while waiting counts in
//! `mcp_authkit_store_errors_total` only. A call that stops may also end
//! the flow, and then that end counts as `abandoned`: the MCP client ends
//! the flow it showed when it stops waiting for its redirect, so no later
//! request joins a sign-in nobody finishes (a request that joined another
//! one's sign-in ends nothing), and a tool call cancelled before its
//! prompt was answered ends the flow it started. Others may still want
//! that flow: calls of the same user may have joined it, and those of
//! other sessions may be showing their own prompt for it (prompts are
//! claimed per session and flow). They answer `cancelled` with it, and the
//! one end counts once, `abandoned`. A background watcher that waits out
//! a fail-fast flow's life to send the completion notice is no call, and
//! counts nothing when the flow expires. A flow that simply expires with
//! no callback has no
//! completion: over all replicas, started minus completed is the flows
//! still open plus those that expired unanswered.
//!
//! `mcp_authkit_flows_pending` is a per-process gauge: sum it over replicas.
//! A flow counts in the process that started it, from its start until that
//! process sees it end: a callback or an abandonment handled there, a wait
//! there that gets its outcome, or its TTL running out (noticed at that
//! lifecycle's next token read or flow event after the expiry: a process
//! that serves no request at all may show an expired flow until it does).
//! A flow whose callback lands on another replica while no one waits for
//! it here leaves at its expiry. A flow whose starting call stopped
//! waiting (`mcp_authkit_waits_given_up_total`) without ending it still
//! counts: its link works until it expires. A callback that took the flow
//! ends it here even when completing it fails or the callback's future is
//! dropped, and a dropped lifecycle (a config reload) takes its flows out
//! of the gauge.
//!
//! `mcp_authkit_wake_duration_seconds` has one sample per wait woken by a
//! completion, timed from just before the completing store call to the
//! waiter resuming, on the monotonic clock. Only completions made in the
//! same process are timed: a flow outcome does not carry when it was
//! written, and timing a wake across processes would mix two machines'
//! wall clocks (their skew could exceed the wake itself). A wait that
//! finds the outcome already there, or times out, is not a wake.
//!
//! `mcp_authkit_store_operation_duration_seconds` times every operation of
//! a store that waits for I/O, and about one in 64 of an in-process
//! store's: the first 64 runs of each operation of each store (a
//! lifecycle's, or an [`Observed`] you made) are all timed, and an operation
//! none of whose runs waited (its future was ready on its first poll: the
//! memory store, SQLite's token read on its fast path, the encrypted store
//! over either) is sampled from then on, at random gaps, until one run
//! waits (that run is timed only if its turn had come; every later one
//! is). Timing such an operation, a fraction of a microsecond, would cost
//! about as much as the operation itself (two clock reads and a histogram
//! record: a third of the valid-token path). Which operations are timed
//! never depends on how long they take, so the distribution is not skewed;
//! the histogram's `_count` is then about a sixty-fourth of the operations:
//! count them with `mcp_authkit_store_operations_total`, which counts each
//! completed one (an operation whose future is dropped, a wait cancelled
//! with its tool call, is counted nowhere).
//!
//! Every counter is exact: it counts each event once. That histogram is the
//! only sampled one.
//!
//! Label values are provider names (from the application's configuration),
//! backend names and the fixed words above: never a subject, a state, a
//! token, a code or a URL, so the number of series stays bounded. Every
//! label value but the provider is a `&'static str` by type. A lifecycle
//! whose provider name is not fit for a label (the MCP client's holds the
//! issuer URL) sets one with
//! [`metrics_label`](crate::TokenLifecycleBuilder::metrics_label); the
//! MCP client's lifecycles use their key namespace.
//!
//! The store metrics, the flow gauge and the wake histogram are registered
//! when a [`TokenLifecycle`](crate::TokenLifecycle) is built (their handles
//! are kept, so the hot path does no lookup): install the recorder before
//! building providers.
//!
//! # Spans
//!
//! Every store operation made through an [`Observed`] store (the lifecycle
//! wraps its stores in one) runs in a `debug` span named `store` with the
//! fields `backend`, `operation` and `outcome` (`ok` or `error`), for
//! `tracing` subscribers, including those that select it by name or field
//! (`[store]=debug`, `[{backend=redis}]=debug`, a per-layer filter). It is
//! not forwarded to the `log` crate: while no tracing subscriber was ever
//! set in the process, no span is built at all, which keeps the hot path
//! cheap. The
//! lifecycle's refresh runs in an `info` span `refresh` (`provider`), and a
//! callback in `callback` (`provider`). No field holds a subject, a state,
//! a token, a code or a URL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tracing::Instrument;

use crate::error::Result;
use crate::flow::{FlowOutcome, FlowState, InsertOutcome, PendingFlow};
use crate::record::{Revision, StoredToken, TokenKey, TokenRecord};
use crate::store::{
    CasOutcome, LeaseToken, PendingStore, PurgeReport, ScanCursor, ScanPage, TokenStore,
};

/// The metric names of the table above.
pub mod names {
    /// Sign-ins started.
    pub const FLOWS_STARTED: &str = "mcp_authkit_flows_started_total";
    /// Requests that joined a sign-in in progress.
    pub const FLOWS_JOINED: &str = "mcp_authkit_flows_joined_total";
    /// Flows ended, by `outcome`: each flow once.
    pub const FLOWS_COMPLETED: &str = "mcp_authkit_flows_completed_total";
    /// Calls that stopped waiting for a sign-in, by `reason`
    /// ([`GaveUp`](super::GaveUp)); not a flow's end.
    pub const WAITS_GIVEN_UP: &str = "mcp_authkit_waits_given_up_total";
    /// Callbacks refused, by `reason`.
    pub const CALLBACKS_REFUSED: &str = "mcp_authkit_callbacks_refused_total";
    /// Refreshes, by `result`.
    pub const REFRESHES: &str = "mcp_authkit_refreshes_total";
    /// Refresh request latency.
    pub const REFRESH_DURATION: &str = "mcp_authkit_refresh_duration_seconds";
    /// Elicitations sent, by `path`.
    pub const ELICITATIONS: &str = "mcp_authkit_elicitations_total";
    /// Tool calls refused for lack of URL elicitation, by `reason`.
    pub const TOOL_CALLS_REFUSED: &str = "mcp_authkit_tool_calls_refused_total";
    /// Store operation latency, by `backend` and `operation`.
    pub const STORE_DURATION: &str = "mcp_authkit_store_operation_duration_seconds";
    /// Store operations, by `backend` and `operation`.
    pub const STORE_OPERATIONS: &str = "mcp_authkit_store_operations_total";
    /// Store operation errors, by `backend` and `operation`.
    pub const STORE_ERRORS: &str = "mcp_authkit_store_errors_total";
    /// Flows this process started that have not ended, by `provider`.
    pub const FLOWS_PENDING: &str = "mcp_authkit_flows_pending";
    /// From a flow's completion to a waiter in this process resuming, by
    /// `backend`.
    pub const WAKE_DURATION: &str = "mcp_authkit_wake_duration_seconds";
}

/// Adds one to the counter `name` of `provider`, with one more fixed label
/// (`("outcome", "authorized")`, ...). For the crates of mcp-authkit and
/// custom integrations that report the same events.
#[inline]
pub fn count(name: &'static str, provider: &str, label: Option<(&'static str, &'static str)>) {
    #[cfg(feature = "metrics")]
    {
        let provider = metrics::Label::new("provider", provider.to_owned());
        match label {
            Some((key, value)) => metrics::counter!(
                name,
                vec![provider, metrics::Label::from_static_parts(key, value)]
            )
            .increment(1),
            None => metrics::counter!(name, vec![provider]).increment(1),
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (name, provider, label);
}

/// Records `elapsed` (in seconds) in the histogram `name` of `provider`.
#[inline]
pub fn record_duration(name: &'static str, provider: &str, elapsed: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!(
        name,
        vec![metrics::Label::new("provider", provider.to_owned())]
    )
    .record(elapsed);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, provider, elapsed);
}

/// Why a call stopped waiting for a sign-in before the flow ended: the
/// `reason` label of `mcp_authkit_waits_given_up_total`.
///
/// The reasons are apart because they call for different fixes: a
/// `timed_out` wait asks for a longer timeout or a faster user, a
/// `cancelled` one usually for an MCP client request timeout at least as
/// long as the server's token timeout, an `error` for a look at the
/// client's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GaveUp {
    /// The wait ran out of its time (the token or authorization timeout).
    TimedOut,
    /// The request that waited was cancelled: an MCP
    /// `notifications/cancelled` for the tool call (an MCP client whose
    /// request timeout is shorter than the wait sends one), or the MCP
    /// client's caller dropping its request.
    Cancelled,
    /// The wait could not go on: the prompt's request to the MCP client
    /// failed (its transport closed, or it answered with an error). A
    /// store error while waiting is not counted here but in
    /// `mcp_authkit_store_errors_total`.
    Error,
}

impl GaveUp {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            GaveUp::TimedOut => "timed_out",
            GaveUp::Cancelled => "cancelled",
            GaveUp::Error => "error",
        }
    }
}

/// The `outcome` label of a flow's end.
pub fn outcome_label(outcome: &FlowOutcome) -> &'static str {
    match outcome {
        FlowOutcome::Authorized { .. } => "authorized",
        FlowOutcome::Denied { .. } => "denied",
        _ => "failed",
    }
}

/// A store operation, as named in spans and metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
enum Op {
    Get,
    Put,
    CompareAndSwap,
    Delete,
    DeleteIfRevision,
    TryAcquireLease,
    ReleaseLease,
    Scan,
    Ping,
    Insert,
    GetFlow,
    ActiveFlow,
    Take,
    Complete,
    Outcome,
    Wait,
    PurgeExpired,
    PingPending,
}

const OPS: [Op; 18] = [
    Op::Get,
    Op::Put,
    Op::CompareAndSwap,
    Op::Delete,
    Op::DeleteIfRevision,
    Op::TryAcquireLease,
    Op::ReleaseLease,
    Op::Scan,
    Op::Ping,
    Op::Insert,
    Op::GetFlow,
    Op::ActiveFlow,
    Op::Take,
    Op::Complete,
    Op::Outcome,
    Op::Wait,
    Op::PurgeExpired,
    Op::PingPending,
];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::CompareAndSwap => "compare_and_swap",
            Op::Delete => "delete",
            Op::DeleteIfRevision => "delete_if_revision",
            Op::TryAcquireLease => "try_acquire_lease",
            Op::ReleaseLease => "release_lease",
            Op::Scan => "scan",
            Op::Ping => "ping",
            Op::Insert => "insert",
            Op::GetFlow => "get_flow",
            Op::ActiveFlow => "active_flow",
            Op::Take => "take",
            Op::Complete => "complete",
            Op::Outcome => "outcome",
            Op::Wait => "wait",
            Op::PurgeExpired => "purge_expired",
            Op::PingPending => "ping_pending",
        }
    }
}

/// The metric handles of one store, registered once so an operation costs
/// no registry lookup.
struct StoreMetrics {
    #[cfg(feature = "metrics")]
    ops: Vec<OpMetrics>,
}

/// How many first operations of each kind are watched (and all timed) to
/// learn whether the store waits for I/O in it.
#[cfg(feature = "metrics")]
const LEARNING_OPS: u32 = 64;

/// An in-process operation is timed once in this many.
#[cfg(feature = "metrics")]
const SAMPLE_ONE_IN: u32 = 64;

/// What the operation of a store was learned to be, in [`OpMetrics::mode`].
#[cfg(feature = "metrics")]
mod mode {
    /// Not known yet: every operation is timed.
    pub const LEARNING: u8 = 0;
    /// Every one of the learning operations completed on its first poll,
    /// none has waited since: one in SAMPLE_ONE_IN is timed.
    pub const IN_PROCESS: u8 = 1;
    /// One waited for I/O: every operation is timed, for good.
    pub const WAITS: u8 = 2;
}

/// The handles and the timing state of one operation of one store.
///
/// An operation that never waits (its future is ready on its first poll:
/// the memory store) costs a fraction of a microsecond, and timing each one
/// (two clock reads and a histogram record) would cost about as much. It is
/// learned from what the store does, not from how long it takes, so
/// valgrind or a slow machine do not change it, and which operations are
/// timed never depends on their time: the sampled histogram is not skewed
/// toward slow spells. One wait ends the sampling for good (SQLite's token
/// read waits only when its file is busy).
#[cfg(feature = "metrics")]
struct OpMetrics {
    duration: metrics::Histogram,
    operations: metrics::Counter,
    errors: metrics::Counter,
    mode: std::sync::atomic::AtomicU8,
    /// Learning operations finished so far.
    learned: std::sync::atomic::AtomicU32,
    /// While in-process: operations still to leave untimed. Loaded and
    /// stored apart, not decremented atomically: concurrent operations may
    /// skip a few more or fewer, and the hot path pays no second locked
    /// instruction (the operations counter is the one).
    skip: std::sync::atomic::AtomicU32,
}

/// Operations to leave untimed before the next timed one: uniform in
/// `0..2 * SAMPLE_ONE_IN - 1` (one timed in SAMPLE_ONE_IN on average), so
/// a workload that repeats a pattern (two reads per request, the second
/// slower) is not always sampled at the same place in it. A xorshift per
/// thread: cheap, and no one can steer it from outside.
#[cfg(feature = "metrics")]
fn next_gap() -> u32 {
    thread_local! {
        static STATE: std::cell::Cell<u32> = const { std::cell::Cell::new(0x9E37_79B9) };
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        state.set(x);
        x % (2 * SAMPLE_ONE_IN - 1)
    })
}

#[cfg(feature = "metrics")]
impl OpMetrics {
    #[inline]
    fn start(&self) -> Option<Instant> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.mode.load(Relaxed) == mode::IN_PROCESS {
            let skip = self.skip.load(Relaxed);
            if skip > 0 {
                self.skip.store(skip - 1, Relaxed);
                return None;
            }
            self.skip.store(next_gap(), Relaxed);
        }
        Some(Instant::now())
    }

    #[inline]
    fn done(&self, started: Option<Instant>, ok: bool, waited: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.operations.increment(1);
        if let Some(started) = started {
            self.duration.record(started.elapsed());
        }
        if !ok {
            self.errors.increment(1);
        }
        if waited {
            if self.mode.load(Relaxed) != mode::WAITS {
                self.mode.store(mode::WAITS, Relaxed);
            }
        } else if self.mode.load(Relaxed) == mode::LEARNING
            && self.learned.fetch_add(1, Relaxed) + 1 == LEARNING_OPS
        {
            // Only from LEARNING: an operation that waited meanwhile wins.
            let _ = self
                .mode
                .compare_exchange(mode::LEARNING, mode::IN_PROCESS, Relaxed, Relaxed);
        }
    }
}

impl StoreMetrics {
    fn new(backend: &'static str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let ops = OPS
                .iter()
                .map(|op| {
                    let labels = [("backend", backend), ("operation", op.name())];
                    OpMetrics {
                        duration: metrics::histogram!(names::STORE_DURATION, &labels),
                        operations: metrics::counter!(names::STORE_OPERATIONS, &labels),
                        errors: metrics::counter!(names::STORE_ERRORS, &labels),
                        mode: std::sync::atomic::AtomicU8::new(mode::LEARNING),
                        learned: std::sync::atomic::AtomicU32::new(0),
                        skip: std::sync::atomic::AtomicU32::new(0),
                    }
                })
                .collect();
            StoreMetrics { ops }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (backend, OPS);
            StoreMetrics {}
        }
    }

    #[inline]
    fn start(&self, op: Op) -> Option<Instant> {
        #[cfg(feature = "metrics")]
        return self.ops[op as usize].start();
        #[cfg(not(feature = "metrics"))]
        {
            let _ = op;
            None
        }
    }

    /// Counts and records the operation `started` (if it was timed);
    /// `waited`: its future was not ready on its first poll.
    #[inline]
    fn done(&self, op: Op, started: Option<Instant>, ok: bool, waited: bool) {
        #[cfg(feature = "metrics")]
        self.ops[op as usize].done(started, ok, waited);
        #[cfg(not(feature = "metrics"))]
        let _ = (op, started, ok, waited);
    }
}

/// A store that runs every operation of the store it wraps in a `store`
/// span (backend, operation, outcome) and, with the `metrics` feature,
/// records its latency and errors. [`TokenLifecycle`](crate::TokenLifecycle)
/// wraps its stores in one; wrap a store yourself to observe the calls you
/// make to it directly.
pub struct Observed<S: ?Sized> {
    inner: Arc<S>,
    backend: &'static str,
    metrics: StoreMetrics,
}

impl<S: ?Sized> Observed<S> {
    /// Observes `inner`, labelled with `backend`.
    pub fn new(inner: Arc<S>, backend: &'static str) -> Self {
        Observed {
            inner,
            backend,
            metrics: StoreMetrics::new(backend),
        }
    }

    /// The store inside.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// [`TokenStore::get`] without the boxed future of the trait method:
    /// what the lifecycle's valid-token path calls. Not an async fn: the
    /// wrapper's own future is returned as is, one state machine less to
    /// copy the read through (28 instructions of the valid-token path).
    pub fn get_direct<'a>(
        &'a self,
        key: &'a TokenKey,
    ) -> impl Future<Output = Result<Option<StoredToken>>> + Send + 'a
    where
        S: TokenStore,
    {
        self.run(Op::Get, self.inner.as_ref().get(key))
    }

    /// Runs one operation of the store inside in its span, and records it.
    ///
    /// One async fn with no other one nested: each nested level costs the
    /// valid-token path a call and copies of its state and result (about a
    /// tenth of the raw read, measured with callgrind).
    async fn run<T>(&self, op: Op, operation: impl Future<Output = Result<T>>) -> Result<T> {
        let span = self.span(op);
        let started = self.metrics.start(op);
        let mut operation = std::pin::pin!(operation);
        let mut waited = false;
        let watched = std::future::poll_fn(|cx| {
            let poll = operation.as_mut().poll(cx);
            waited |= poll.is_pending();
            poll
        });
        let result = match &span {
            None => watched.await,
            Some(span) => {
                let result = watched.instrument(span.clone()).await;
                span.record("outcome", if result.is_ok() { "ok" } else { "error" });
                result
            }
        };
        self.metrics.done(op, started, result.is_ok(), waited);
        result
    }

    /// The span of one operation, if it is to be built at all.
    #[inline]
    fn span(&self, op: Op) -> Option<tracing::Span> {
        // No subscriber at all (the usual production case): no span. A
        // span built then still formats its fields for tracing's `log`
        // fallback (about a tenth of a valid-token read, measured with
        // callgrind), and that fallback runs only while no dispatcher was
        // ever set. A `tracing::enabled!` check is no substitute: it asks
        // about a callsite of its own, without this span's name and
        // fields, so filters such as `[store]=debug` would say no to it.
        if !tracing::dispatcher::has_been_set() {
            return None;
        }
        let span = tracing::debug_span!(
            "store",
            backend = self.backend,
            operation = op.name(),
            outcome = tracing::field::Empty
        );
        (!span.is_disabled()).then_some(span)
    }
}

impl<S: ?Sized> std::fmt::Debug for Observed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: TokenStore + ?Sized> TokenStore for Observed<S> {
    fn backend_name(&self) -> &'static str {
        self.backend
    }
    async fn get(&self, key: &TokenKey) -> Result<Option<StoredToken>> {
        self.run(Op::Get, self.inner.as_ref().get(key)).await
    }
    async fn put(&self, key: &TokenKey, record: &TokenRecord) -> Result<Revision> {
        self.run(Op::Put, self.inner.as_ref().put(key, record))
            .await
    }
    async fn compare_and_swap(
        &self,
        key: &TokenKey,
        expected: Option<Revision>,
        record: &TokenRecord,
    ) -> Result<CasOutcome> {
        self.run(
            Op::CompareAndSwap,
            self.inner.as_ref().compare_and_swap(key, expected, record),
        )
        .await
    }
    async fn delete(&self, key: &TokenKey) -> Result<bool> {
        self.run(Op::Delete, self.inner.as_ref().delete(key)).await
    }
    async fn delete_if_revision(&self, key: &TokenKey, revision: Revision) -> Result<bool> {
        self.run(
            Op::DeleteIfRevision,
            self.inner.as_ref().delete_if_revision(key, revision),
        )
        .await
    }
    async fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<LeaseToken>> {
        self.run(
            Op::TryAcquireLease,
            self.inner.as_ref().try_acquire_lease(key, ttl),
        )
        .await
    }
    async fn release_lease(&self, key: &TokenKey, lease: &LeaseToken) -> Result<bool> {
        self.run(
            Op::ReleaseLease,
            self.inner.as_ref().release_lease(key, lease),
        )
        .await
    }
    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage<TokenKey>> {
        self.run(Op::Scan, self.inner.as_ref().scan(cursor, limit))
            .await
    }
    async fn ping(&self) -> Result<Duration> {
        self.run(Op::Ping, self.inner.as_ref().ping()).await
    }
}

#[async_trait]
impl<S: PendingStore + ?Sized> PendingStore for Observed<S> {
    fn pending_backend_name(&self) -> &'static str {
        self.backend
    }
    async fn insert(&self, flow: &PendingFlow) -> Result<InsertOutcome> {
        self.run(Op::Insert, self.inner.as_ref().insert(flow)).await
    }
    async fn get_flow(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        self.run(Op::GetFlow, self.inner.as_ref().get_flow(state))
            .await
    }
    async fn active_flow(&self, key: &TokenKey) -> Result<Option<FlowState>> {
        self.run(Op::ActiveFlow, self.inner.as_ref().active_flow(key))
            .await
    }
    async fn take(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        self.run(Op::Take, self.inner.as_ref().take(state)).await
    }
    async fn complete(
        &self,
        key: &TokenKey,
        state: &FlowState,
        outcome: &FlowOutcome,
        keep_for: Duration,
    ) -> Result<()> {
        self.run(
            Op::Complete,
            self.inner.as_ref().complete(key, state, outcome, keep_for),
        )
        .await
    }
    async fn outcome(&self, state: &FlowState) -> Result<Option<FlowOutcome>> {
        self.run(Op::Outcome, self.inner.as_ref().outcome(state))
            .await
    }
    async fn wait(&self, state: &FlowState, timeout: Duration) -> Result<Option<FlowOutcome>> {
        self.run(Op::Wait, self.inner.as_ref().wait(state, timeout))
            .await
    }
    async fn purge_expired(&self) -> Result<PurgeReport> {
        self.run(Op::PurgeExpired, self.inner.as_ref().purge_expired())
            .await
    }
    async fn ping_pending(&self) -> Result<Duration> {
        self.run(Op::PingPending, self.inner.as_ref().ping_pending())
            .await
    }
}

/// The flows of one lifecycle as this process sees them, for the pending
/// gauge and the wake histogram. Flows are rare next to token reads, so one
/// lock is fine; without the `metrics` feature it holds nothing.
pub(crate) struct FlowBook {
    #[cfg(feature = "metrics")]
    state: std::sync::Mutex<FlowBookState>,
    #[cfg(feature = "metrics")]
    pending: metrics::Gauge,
    #[cfg(feature = "metrics")]
    wake: metrics::Histogram,
    /// The earliest expiry in `started_order` (unix ms of the lifecycle's
    /// clock), `i64::MAX` when none: the token path sweeps only once it is
    /// due, with one relaxed load and no lock otherwise.
    #[cfg(feature = "metrics")]
    next_expiry: std::sync::atomic::AtomicI64,
}

#[cfg(feature = "metrics")]
#[derive(Default)]
struct FlowBookState {
    /// Flows started here that this process has not seen end, with when
    /// they expire.
    started: std::collections::HashMap<FlowState, crate::time::Timestamp>,
    /// The same, by expiry, to drop expired flows without a scan. Ordered
    /// by expiry itself rather than by arrival: two starts racing can reach
    /// the book in the other order than their clock reads. Entries of flows
    /// already ended are skipped when they come up.
    started_order: std::collections::BTreeSet<(crate::time::Timestamp, FlowState)>,
    /// When flows were completed here, kept as long as their outcome is.
    completed: std::collections::HashMap<FlowState, Instant>,
    completed_order: std::collections::VecDeque<(Instant, FlowState)>,
}

/// A point in time taken only when metrics are compiled in.
#[derive(Clone, Copy)]
pub(crate) struct Mark(#[cfg(feature = "metrics")] Instant);

impl FlowBook {
    pub(crate) fn new(provider: &str, pending_backend: &'static str) -> Self {
        #[cfg(feature = "metrics")]
        {
            FlowBook {
                state: std::sync::Mutex::default(),
                pending: metrics::gauge!(names::FLOWS_PENDING, "provider" => provider.to_owned()),
                wake: metrics::histogram!(names::WAKE_DURATION, "backend" => pending_backend),
                next_expiry: std::sync::atomic::AtomicI64::new(i64::MAX),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (provider, pending_backend);
            FlowBook {}
        }
    }

    #[cfg(feature = "metrics")]
    fn lock(&self) -> std::sync::MutexGuard<'_, FlowBookState> {
        // Plain bookkeeping: a panicking holder leaves nothing half done
        // that matters more than one gauge step.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This process inserted `flow`.
    pub(crate) fn started(&self, flow: &PendingFlow, now: crate::time::Timestamp) {
        #[cfg(feature = "metrics")]
        {
            let mut book = self.lock();
            self.sweep_started(&mut book, now);
            if book
                .started
                .insert(flow.state.clone(), flow.expires_at)
                .is_none()
            {
                self.pending.increment(1.0);
            }
            book.started_order
                .insert((flow.expires_at, flow.state.clone()));
            self.note_next_expiry(&book);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (flow, now);
    }

    /// `state` is about to be completed here: its waiters' wake time counts
    /// from now. Taken before the store call, so a waiter woken by it always
    /// finds the mark.
    pub(crate) fn completing(&self, state: &FlowState, outcome_ttl: Duration) {
        #[cfg(feature = "metrics")]
        {
            let now = Instant::now();
            let mut book = self.lock();
            while let Some((at, _)) = book.completed_order.front() {
                if now.saturating_duration_since(*at) < outcome_ttl {
                    break;
                }
                let (at, old) = book.completed_order.pop_front().expect("front exists");
                if book.completed.get(&old) == Some(&at) {
                    book.completed.remove(&old);
                }
            }
            book.completed.insert(state.clone(), now);
            book.completed_order.push_back((now, state.clone()));
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (state, outcome_ttl);
    }

    /// This process saw `state` end (completed or abandoned here, or an
    /// outcome read by a waiter here).
    pub(crate) fn ended(&self, state: &FlowState, now: crate::time::Timestamp) {
        #[cfg(feature = "metrics")]
        {
            let mut book = self.lock();
            if book.started.remove(state).is_some() {
                self.pending.decrement(1.0);
            }
            self.sweep_started(&mut book, now);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (state, now);
    }

    /// Before a wait: when it began.
    pub(crate) fn mark(&self) -> Mark {
        #[cfg(feature = "metrics")]
        return Mark(Instant::now());
        #[cfg(not(feature = "metrics"))]
        Mark()
    }

    /// A wait that began at `since` got `state`'s outcome: one wake sample
    /// when the flow was completed in this process while it waited.
    pub(crate) fn woke(&self, state: &FlowState, since: Mark, now: crate::time::Timestamp) {
        #[cfg(feature = "metrics")]
        {
            let completed = self.lock().completed.get(state).copied();
            if let Some(completed) = completed
                && completed >= since.0
            {
                self.wake.record(completed.elapsed());
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = since;
        self.ended(state, now);
    }

    /// On the token path: drops expired flows from the gauge once the
    /// earliest of them is due, so an expired flow leaves it at the first
    /// token read or flow event after its expiry.
    #[inline]
    pub(crate) fn tick(&self, now: crate::time::Timestamp) {
        self.tick_with(|| now);
    }

    /// [`tick`](Self::tick) that reads the clock only when a flow of this
    /// book may be due: the valid-token path of a token without an expiry
    /// then reads no clock at all.
    #[inline]
    pub(crate) fn tick_with(&self, now: impl FnOnce() -> crate::time::Timestamp) {
        #[cfg(feature = "metrics")]
        {
            let next = self.next_expiry.load(std::sync::atomic::Ordering::Relaxed);
            if next == i64::MAX {
                return;
            }
            let now = now();
            if now.unix_millis() >= next {
                let mut book = self.lock();
                self.sweep_started(&mut book, now);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = now;
    }

    /// Drops flows whose TTL ran out: they will not end any other way.
    #[cfg(feature = "metrics")]
    fn sweep_started(&self, book: &mut FlowBookState, now: crate::time::Timestamp) {
        while let Some((expires_at, _)) = book.started_order.first() {
            if *expires_at > now {
                break;
            }
            let (expires_at, state) = book.started_order.pop_first().expect("first exists");
            if book.started.get(&state) == Some(&expires_at) {
                book.started.remove(&state);
                self.pending.decrement(1.0);
            }
        }
        self.note_next_expiry(book);
    }

    /// Publishes the earliest expiry for [`FlowBook::tick`]; called with
    /// the lock held, so it never overwrites a newer value.
    #[cfg(feature = "metrics")]
    fn note_next_expiry(&self, book: &FlowBookState) {
        let next = book
            .started_order
            .first()
            .map_or(i64::MAX, |(expires_at, _)| expires_at.unix_millis());
        self.next_expiry
            .store(next, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A lifecycle dropped (a config reload, a client rediscovered) takes its
/// flows out of the gauge: nobody here will see them end any more.
#[cfg(feature = "metrics")]
impl Drop for FlowBook {
    fn drop(&mut self) {
        let book = self.lock();
        self.pending.decrement(book.started.len() as f64);
    }
}
