//! A metrics recorder and a span log for tests, installed for the calling
//! thread only: tests of the lifecycle and of the providers read back exact
//! counter, gauge and histogram values and every span field.
//!
//! Enabled by the `testing-metrics` feature. Run each test on a
//! current-thread runtime (`#[tokio::test]`), so tasks it spawns report to
//! the same recorder, and start the recording before building the
//! lifecycle or provider: store and flow metric handles are taken then.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tracing_subscriber::layer::{Context, SubscriberExt};

use crate::observe::names;

/// A metric's name and its labels, sorted.
pub type MetricId = (String, Vec<(String, String)>);

/// Every metric seen since the recording started.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Metrics {
    /// Counter totals.
    pub counters: BTreeMap<MetricId, u64>,
    /// Gauge values: the sum of their increments and decrements (the
    /// debugging recorder hands gauges out as changes since the last look).
    pub gauges: BTreeMap<MetricId, f64>,
    /// Histograms: how many values each recorded.
    pub samples: BTreeMap<MetricId, usize>,
}

/// The id of `name` with `labels`, in the order [`Metrics`] keeps them.
pub fn id(name: &str, labels: &[(&str, &str)]) -> MetricId {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

impl Metrics {
    /// A counter's total; 0 if it never moved.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters.get(&id(name, labels)).copied().unwrap_or(0)
    }

    /// The sum of every series of the counter `name`.
    pub fn total(&self, name: &str) -> u64 {
        self.counters
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }

    /// A gauge's value; 0 if it never moved.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.gauges.get(&id(name, labels)).copied().unwrap_or(0.0)
    }

    /// How many values a histogram recorded.
    pub fn samples(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.samples.get(&id(name, labels)).copied().unwrap_or(0)
    }

    /// How many operations `operation` of `backend` were made (counted in
    /// `mcp_authkit_store_operations_total`).
    pub fn store_ops(&self, backend: &str, operation: &str) -> u64 {
        self.counter(
            names::STORE_OPERATIONS,
            &[("backend", backend), ("operation", operation)],
        )
    }

    /// How many operations `operation` of `backend` were timed (samples of
    /// `mcp_authkit_store_operation_duration_seconds`).
    pub fn store_ops_timed(&self, backend: &str, operation: &str) -> usize {
        self.samples(
            names::STORE_DURATION,
            &[("backend", backend), ("operation", operation)],
        )
    }

    /// Every label value of every metric seen.
    pub fn label_values(&self) -> Vec<String> {
        self.counters
            .keys()
            .chain(self.gauges.keys())
            .chain(self.samples.keys())
            .flat_map(|(_, labels)| labels.iter().map(|(_, v)| v.clone()))
            .collect()
    }

    /// The counters of a provider's events (store counters aside) that
    /// moved, as `name{label=value}` (the `mcp_authkit_` prefix and the
    /// `provider` label left out) -> count, so a test can state the whole
    /// picture at once.
    pub fn events(&self) -> BTreeMap<String, u64> {
        self.counters
            .iter()
            .filter(|((name, _), n)| {
                **n > 0 && name != names::STORE_ERRORS && name != names::STORE_OPERATIONS
            })
            .map(|((name, labels), n)| {
                let labels: Vec<String> = labels
                    .iter()
                    .filter(|(k, _)| k != "provider")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let short = name.trim_start_matches("mcp_authkit_");
                (format!("{short}{{{}}}", labels.join(",")), *n)
            })
            .collect()
    }
}

/// The spans of this project (targets `mcp_authkit*`), as
/// (span name, field, value printed with `Debug`), also fields recorded
/// after the span was created.
#[derive(Clone, Default)]
pub struct Spans(Arc<Mutex<Vec<(String, String, String)>>>);

impl Spans {
    /// Every field seen so far.
    pub fn fields(&self) -> Vec<(String, String, String)> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

struct Fields<'a>(&'a Spans, &'static str);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((
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
        if attrs.metadata().target().starts_with("mcp_authkit") {
            attrs.record(&mut Fields(self, attrs.metadata().name()));
        }
    }
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id)
            && span.metadata().target().starts_with("mcp_authkit")
        {
            values.record(&mut Fields(self, span.name()));
        }
    }
}

/// The calling thread's recorder and span log, until dropped.
///
/// Both are installed together on purpose: a thread without a subscriber
/// that reaches a callsite first can leave tracing's interest cache saying
/// "never" for the threads of other tests.
pub struct Recording {
    snapshotter: Snapshotter,
    totals: Metrics,
    spans: Spans,
    _metrics: metrics::LocalRecorderGuard<'static>,
    _spans: Option<tracing::subscriber::DefaultGuard>,
}

impl Recording {
    /// Installs a debugging recorder and a trace-level span log for this
    /// thread.
    pub fn start() -> Recording {
        // Leaked: the local recorder guard borrows it for 'static. One small
        // recorder per test.
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
            _spans: Some(tracing::subscriber::set_default(subscriber)),
        }
    }

    /// Installs a debugging recorder for this thread and no tracing
    /// subscriber at all, as in a service that only exports metrics. A
    /// test of that case runs in a test binary that never sets one: the
    /// store wrapper's no-span path is taken only while no dispatcher was
    /// ever set in the process.
    pub fn start_metrics_only() -> Recording {
        let recorder: &'static DebuggingRecorder = Box::leak(Box::new(DebuggingRecorder::new()));
        Recording {
            snapshotter: recorder.snapshotter(),
            totals: Metrics::default(),
            spans: Spans::default(),
            _metrics: metrics::set_default_local_recorder(recorder),
            _spans: None,
        }
    }

    /// The totals so far.
    pub fn metrics(&mut self) -> Metrics {
        let totals = &mut self.totals;
        // A debugging snapshot drains what it reads: add it to the totals.
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let id = (key.name().to_owned(), labels);
            match value {
                DebugValue::Counter(n) => *totals.counters.entry(id).or_default() += n,
                DebugValue::Gauge(change) => {
                    *totals.gauges.entry(id).or_default() += change.into_inner();
                }
                DebugValue::Histogram(values) => {
                    *totals.samples.entry(id).or_default() += values.len();
                }
            }
        }
        totals.clone()
    }

    /// The span log.
    pub fn spans(&self) -> &Spans {
        &self.spans
    }
}
