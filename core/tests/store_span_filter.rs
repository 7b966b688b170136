//! Store spans reach subscribers that select them by their name or fields,
//! not only by level: a filter such as `[store]=debug` enables the `store`
//! span and nothing else of this crate.

use std::sync::Arc;

use mcp_authkit_core::testing::FakeOAuthClient;
use mcp_authkit_core::testing::recording::Spans;
use mcp_authkit_core::*;
use mcp_authkit_store_memory::MemoryStore;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

/// A valid-token read under `subscriber`: the store spans it saw, as
/// (operation, outcome).
async fn store_spans_of_a_read(spans: &Spans) -> Vec<(String, String)> {
    let clock = Arc::new(ManualClock::starting_now());
    let oauth = Arc::new(FakeOAuthClient::new());
    let store = Arc::new(MemoryStore::new());
    let lifecycle = TokenLifecycle::builder("github", oauth.clone(), store.clone(), store)
        .clock(clock.clone())
        .config(LifecycleConfig::new(
            "https://mcp.example/callback",
            vec!["repo".into()],
        ))
        .build()
        .unwrap();
    let record = oauth.issue().into_record(clock.now(), &["repo".to_owned()]);
    lifecycle.store_token("alice", &record).await.unwrap();
    assert!(matches!(
        lifecycle.access("alice").await.unwrap(),
        Access::Ready(_)
    ));
    let fields = spans.fields();
    let of = |field: &str| -> Vec<String> {
        fields
            .iter()
            .filter(|(span, name, _)| span == "store" && name == field)
            .map(|(_, _, value)| value.clone())
            .collect()
    };
    of("operation").into_iter().zip(of("outcome")).collect()
}

fn expected() -> Vec<(String, String)> {
    [("put", "ok"), ("get", "ok")]
        .into_iter()
        .map(|(op, outcome)| (format!("{op:?}"), format!("{outcome:?}")))
        .collect()
}

/// Red when the no-span check asks `tracing::enabled!`, whose own callsite
/// has neither the span's name nor its fields.
#[tokio::test]
async fn an_env_filter_on_the_span_name_gets_the_store_spans() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("[store]=debug"))
        .with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    assert_eq!(store_spans_of_a_read(&spans).await, expected());
}

#[tokio::test]
async fn an_env_filter_on_a_span_field_gets_the_store_spans() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(
            "[{backend=memory}]=debug",
        ))
        .with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    assert_eq!(store_spans_of_a_read(&spans).await, expected());
}

#[tokio::test]
async fn a_per_layer_filter_on_the_span_name_gets_the_store_spans() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone().with_filter(
        tracing_subscriber::filter::filter_fn(|metadata| {
            metadata.is_span() && metadata.name() == "store"
        }),
    ));
    let _guard = tracing::subscriber::set_default(subscriber);
    assert_eq!(store_spans_of_a_read(&spans).await, expected());
}
