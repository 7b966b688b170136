//! The server provider's metrics over real HTTP (an rmcp client and server,
//! the testkit's authorization server, a headless browser), read back
//! through core's per-thread debugging recorder (`testing::recording`),
//! installed for the test's thread before the server is built; `#[tokio::test]` runs the
//! server, the client and the browser on that one thread.

#![cfg(all(feature = "rmcp", feature = "metrics"))]

mod server_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::observe::names;
use mcp_authkit_core::testing::recording::Recording;
use mcp_authkit_core::{
    CasOutcome, ExposeSecret, LeaseToken, Revision, ScanCursor, ScanPage, StoredToken, TokenKey,
    TokenRecord, TokenStore,
};
use mcp_authkit_providers::server::ElicitationStyle;
use server_support::*;

/// The counters of this provider's events (store counters aside).
fn events(rec: &mut Recording) -> BTreeMap<String, u64> {
    rec.metrics().events()
}

fn expect(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// A full sign-in in wait mode, then a call with the stored token: one
/// flow, one elicitation, one authorized completion, nothing refused. No
/// label and no span field of ours carries the subject, the link handle,
/// the state, a token, the code or a URL.
#[tokio::test]
async fn a_full_sign_in_counts_one_flow_one_elicitation_and_leaks_nothing_into_labels_or_spans() {
    let mut rec = Recording::start();
    let h = Harness::start(Options::default()).await;
    let mut spec = ClientSpec::legacy("alice");
    spec.behavior = Behavior::AcceptOnly;
    let client = TestClient::new(&spec);
    let session = Arc::new(connect(&h.server.mcp_url, Some("alice"), client.clone()).await);
    let pending = {
        let session = session.clone();
        tokio::spawn(async move { call(&session, "whoami").await })
    };
    client
        .wait_until("the elicitation", |c| c.elicitations().len() == 1)
        .await;
    let pending_flows = |rec: &mut Recording| {
        rec.metrics()
            .gauge(names::FLOWS_PENDING, &[("provider", "github")])
    };
    assert_eq!(pending_flows(&mut rec), 1.0, "the flow waits for the user");
    let (url, handle, _) = client.elicitations()[0].clone();
    let navigation = client.navigate(&url).await;
    assert_eq!(navigation.page().unwrap().status.as_u16(), 200);
    let callback = navigation
        .hops()
        .iter()
        .find(|hop| hop.url.path().ends_with("/callback"))
        .expect("the browser went through the callback")
        .url
        .clone();
    let result = pending.await.unwrap().unwrap();
    assert_eq!(text(&result), "github user: gh-alice");
    let sign_in = expect(&[
        ("flows_started_total{}", 1),
        ("elicitations_total{path=wait}", 1),
        ("flows_completed_total{outcome=authorized}", 1),
    ]);
    assert_eq!(events(&mut rec), sign_in);
    assert_eq!(pending_flows(&mut rec), 0.0, "the flow ended");
    // The stored token: nothing new is counted.
    call(&session, "whoami").await.unwrap();
    assert_eq!(events(&mut rec), sign_in);

    let query = query_of(callback.as_str());
    let stored = h
        .provider()
        .lifecycle()
        .stored_token("alice")
        .await
        .unwrap()
        .unwrap();
    let secrets = [
        "alice".to_owned(),
        handle,
        query["state"].clone(),
        query["code"].clone(),
        url,
        stored.record.access_token.expose_secret().to_owned(),
        "http://".to_owned(),
        "https://".to_owned(),
    ];
    let labels = rec.metrics().label_values();
    assert!(labels.iter().any(|v| v == "github"));
    let fields = rec.spans().fields();
    assert!(
        fields
            .iter()
            .any(|(span, field, _)| span == "store" && field == "outcome"),
        "store spans: {fields:?}"
    );
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

#[tokio::test]
async fn concurrent_calls_count_one_started_flow_and_the_rest_joined() {
    let mut rec = Recording::start();
    let h = Harness::start(Options::default()).await;
    let mut spec = ClientSpec::legacy("alice");
    spec.behavior = Behavior::AcceptOnly;
    let client = TestClient::new(&spec);
    let session = Arc::new(connect(&h.server.mcp_url, Some("alice"), client.clone()).await);
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let session = session.clone();
            tokio::spawn(async move { call(&session, "whoami").await })
        })
        .collect();
    client
        .wait_until("the elicitation", |c| c.elicitations().len() == 1)
        .await;
    // Give the other calls time to join before the user finishes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        events(&mut rec),
        expect(&[
            ("flows_started_total{}", 1),
            ("flows_joined_total{}", 2),
            ("elicitations_total{path=wait}", 1),
        ])
    );
    assert_eq!(client.open(&client.elicitations()[0].0).await.status, 200);
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(
        events(&mut rec),
        expect(&[
            ("flows_started_total{}", 1),
            ("flows_joined_total{}", 2),
            ("elicitations_total{path=wait}", 1),
            ("flows_completed_total{outcome=authorized}", 1),
        ])
    );
}

/// A call that gives up waiting does not end the flow: the user finishes
/// later, and that callback is the flow's one completion. The give-up is
/// counted on its own, once per call that gave up: here the call that
/// started the flow and one that joined it.
#[tokio::test]
async fn a_timed_out_wait_is_no_flow_end_and_the_later_callback_counts_the_flow_once() {
    let mut rec = Recording::start();
    let h = Harness::start(Options {
        token_timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let mut spec = ClientSpec::legacy("alice");
    spec.behavior = Behavior::AcceptOnly;
    let client = TestClient::new(&spec);
    let session = Arc::new(connect(&h.server.mcp_url, Some("alice"), client.clone()).await);
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let session = session.clone();
            tokio::spawn(async move { call(&session, "whoami").await })
        })
        .collect();
    for call in calls {
        let result = call.await.unwrap().unwrap();
        assert!(
            text(&result).contains("not completed within 1 s"),
            "{}",
            text(&result)
        );
    }
    let pending_flows = |rec: &mut Recording| {
        rec.metrics()
            .gauge(names::FLOWS_PENDING, &[("provider", "github")])
    };
    let gave_up = expect(&[
        ("flows_started_total{}", 1),
        ("flows_joined_total{}", 1),
        ("elicitations_total{path=wait}", 1),
        ("waits_given_up_total{reason=timed_out}", 2),
    ]);
    assert_eq!(events(&mut rec), gave_up, "no flow ended yet");
    assert_eq!(pending_flows(&mut rec), 1.0, "the link still works");

    // The user finishes in the browser after all.
    assert_eq!(client.open(&client.elicitations()[0].0).await.status, 200);
    let finished = expect(&[
        ("flows_started_total{}", 1),
        ("flows_joined_total{}", 1),
        ("elicitations_total{path=wait}", 1),
        ("waits_given_up_total{reason=timed_out}", 2),
        ("flows_completed_total{outcome=authorized}", 1),
    ]);
    assert_eq!(events(&mut rec), finished);
    assert_eq!(pending_flows(&mut rec), 0.0, "the flow ended");
    // The next call finds the token: nothing more is counted.
    assert_eq!(
        text(&call(&session, "whoami").await.unwrap()),
        "github user: gh-alice"
    );
    assert_eq!(events(&mut rec), finished);
}

/// The same on a 2026-07-28 session: the retry that answers `accept`
/// waits for the callback and gives up; the callback that lands later is
/// the flow's one completion.
#[tokio::test]
async fn an_input_required_retry_that_gives_up_counts_one_wait_and_the_callback_one_flow() {
    let mut rec = Recording::start();
    let h = Harness::start(Options {
        token_timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let mut spec = ClientSpec::modern("alice");
    spec.behavior = Behavior::AcceptOnly;
    let client = TestClient::new(&spec);
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    let result = call(&session, "whoami").await.unwrap();
    assert!(
        text(&result).contains("not completed within 1 s"),
        "{}",
        text(&result)
    );
    let gave_up = expect(&[
        ("flows_started_total{}", 1),
        ("elicitations_total{path=input_required}", 1),
        ("waits_given_up_total{reason=timed_out}", 1),
    ]);
    assert_eq!(events(&mut rec), gave_up, "no flow ended yet");

    assert_eq!(client.open(&client.elicitations()[0].0).await.status, 200);
    let finished = expect(&[
        ("flows_started_total{}", 1),
        ("elicitations_total{path=input_required}", 1),
        ("waits_given_up_total{reason=timed_out}", 1),
        ("flows_completed_total{outcome=authorized}", 1),
    ]);
    assert_eq!(events(&mut rec), finished);
    assert_eq!(
        text(&call(&session, "whoami").await.unwrap()),
        "github user: gh-alice"
    );
    assert_eq!(events(&mut rec), finished);
}

#[tokio::test]
async fn a_replayed_callback_counts_as_refused_for_an_unknown_state() {
    let mut rec = Recording::start();
    let h = Harness::start(Options::default()).await;
    let mut spec = ClientSpec::legacy("alice");
    spec.behavior = Behavior::AcceptOnly;
    let client = TestClient::new(&spec);
    let session = Arc::new(connect(&h.server.mcp_url, Some("alice"), client.clone()).await);
    let pending = {
        let session = session.clone();
        tokio::spawn(async move { call(&session, "whoami").await })
    };
    client
        .wait_until("the elicitation", |c| c.elicitations().len() == 1)
        .await;
    let navigation = client.navigate(&client.elicitations()[0].0).await;
    let callback = navigation
        .hops()
        .iter()
        .find(|hop| hop.url.path().ends_with("/callback"))
        .expect("the browser went through the callback")
        .url
        .clone();
    pending.await.unwrap().unwrap();
    // Replayed from another browser (no binding cookie): refused at the gate.
    assert_eq!(http().get(callback).send().await.unwrap().status(), 400);
    assert_eq!(
        events(&mut rec),
        expect(&[
            ("flows_started_total{}", 1),
            ("elicitations_total{path=wait}", 1),
            ("flows_completed_total{outcome=authorized}", 1),
            ("callbacks_refused_total{reason=unknown_state}", 1),
        ])
    );
}

#[tokio::test]
async fn a_fail_fast_round_counts_two_elicitations_one_flow_and_its_completion() {
    let mut rec = Recording::start();
    let h = Harness::start(Options {
        style: ElicitationStyle::FailFast,
        ..Options::default()
    })
    .await;
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    let url = match call(&session, "whoami").await.unwrap_err() {
        rmcp::service::ServiceError::McpError(error) => {
            assert_eq!(error.code.0, -32042);
            error.data.unwrap()["elicitations"][0]["url"]
                .as_str()
                .unwrap()
                .to_owned()
        }
        other => panic!("expected -32042, got {other}"),
    };
    // The retry before the user is done joins the same flow.
    call(&session, "whoami").await.unwrap_err();
    assert_eq!(
        events(&mut rec),
        expect(&[
            ("flows_started_total{}", 1),
            ("flows_joined_total{}", 1),
            ("elicitations_total{path=fail_fast}", 2),
        ])
    );
    assert_eq!(client.open(&url).await.status, 200);
    assert_eq!(
        text(&call(&session, "whoami").await.unwrap()),
        "github user: gh-alice"
    );
    assert_eq!(
        events(&mut rec),
        expect(&[
            ("flows_started_total{}", 1),
            ("flows_joined_total{}", 1),
            ("elicitations_total{path=fail_fast}", 2),
            ("flows_completed_total{outcome=authorized}", 1),
        ])
    );
}

#[tokio::test]
async fn a_client_without_url_elicitation_is_counted_as_refused() {
    let mut rec = Recording::start();
    let h = Harness::start(Options::default()).await;
    let mut spec = ClientSpec::legacy("alice");
    spec.url_elicitation = false;
    let client = TestClient::new(&spec);
    let session = connect(&h.server.mcp_url, Some("alice"), client).await;
    call(&session, "whoami").await.unwrap();
    assert_eq!(
        events(&mut rec),
        expect(&[("tool_calls_refused_total{reason=no_url_elicitation}", 1)])
    );
}

/// The readiness route: 200 with backends and latencies while the stores
/// answer.
#[tokio::test]
async fn the_readiness_route_reports_each_store() {
    let _rec = Recording::start();
    let h = Harness::start(Options::default()).await;
    let app = h.provider().readiness_router("/ready");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let response = http()
        .get(format!("http://{address}/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["token_store"]["backend"], "memory");
    assert_eq!(body["token_store"]["ok"], true);
    assert_eq!(body["pending_store"]["ok"], true);
    assert!(body["token_store"]["latency_ms"].as_f64().unwrap() >= 0.0);
}

/// A token store that cannot be reached.
struct Down;

fn down() -> mcp_authkit_core::Error {
    mcp_authkit_core::Error::backend(
        "down",
        "any",
        true,
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
    )
}

#[mcp_authkit_core::async_trait]
impl TokenStore for Down {
    fn backend_name(&self) -> &'static str {
        "down"
    }
    async fn get(&self, _: &TokenKey) -> mcp_authkit_core::Result<Option<StoredToken>> {
        Err(down())
    }
    async fn put(&self, _: &TokenKey, _: &TokenRecord) -> mcp_authkit_core::Result<Revision> {
        Err(down())
    }
    async fn compare_and_swap(
        &self,
        _: &TokenKey,
        _: Option<Revision>,
        _: &TokenRecord,
    ) -> mcp_authkit_core::Result<CasOutcome> {
        Err(down())
    }
    async fn delete(&self, _: &TokenKey) -> mcp_authkit_core::Result<bool> {
        Err(down())
    }
    async fn delete_if_revision(
        &self,
        _: &TokenKey,
        _: Revision,
    ) -> mcp_authkit_core::Result<bool> {
        Err(down())
    }
    async fn try_acquire_lease(
        &self,
        _: &TokenKey,
        _: Duration,
    ) -> mcp_authkit_core::Result<Option<LeaseToken>> {
        Err(down())
    }
    async fn release_lease(&self, _: &TokenKey, _: &LeaseToken) -> mcp_authkit_core::Result<bool> {
        Err(down())
    }
    async fn scan(
        &self,
        _: Option<&ScanCursor>,
        _: usize,
    ) -> mcp_authkit_core::Result<ScanPage<TokenKey>> {
        Err(down())
    }
}

/// The readiness route answers 503 naming the store that is down (and not
/// its error), and the store error is counted by backend and operation.
#[tokio::test]
async fn the_readiness_route_answers_503_when_a_store_is_down() {
    let mut rec = Recording::start();
    let h = Harness::start(Options {
        tokens: Some(Arc::new(Down)),
        ..Options::default()
    })
    .await;
    let app = h.provider().readiness_router("/ready");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let response = http()
        .get(format!("http://{address}/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["token_store"]["backend"], "down");
    assert_eq!(body["token_store"]["ok"], false);
    assert_eq!(body["token_store"]["retryable"], true);
    assert_eq!(body["pending_store"]["ok"], true);
    assert!(
        !body.to_string().contains("refused"),
        "no error text: {body}"
    );
    let errors = rec.metrics().counter(
        names::STORE_ERRORS,
        &[("backend", "down"), ("operation", "ping")],
    );
    assert_eq!(errors, 1);
}

/// A wait-mode call whose prompt the client never answers
/// gives up at the token timeout: one timed-out wait, no flow end; the
/// late callback is the flow's one completion.
#[tokio::test]
async fn an_unanswered_prompt_counts_one_timed_out_wait() {
    let mut rec = Recording::start();
    let h = Harness::start(Options {
        token_timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let mut spec = ClientSpec::legacy("alice");
    spec.behavior = Behavior::NeverAnswer;
    let client = TestClient::new(&spec);
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    let result = call(&session, "whoami").await.unwrap();
    assert!(
        text(&result).contains("not completed within 1 s"),
        "{}",
        text(&result)
    );
    assert_eq!(
        events(&mut rec),
        expect(&[
            ("flows_started_total{}", 1),
            ("elicitations_total{path=wait}", 1),
            ("waits_given_up_total{reason=timed_out}", 1),
        ])
    );
    assert_eq!(client.open(&client.elicitations()[0].0).await.status, 200);
    assert_eq!(
        events(&mut rec),
        expect(&[
            ("flows_started_total{}", 1),
            ("elicitations_total{path=wait}", 1),
            ("waits_given_up_total{reason=timed_out}", 1),
            ("flows_completed_total{outcome=authorized}", 1),
        ])
    );
}

/// Polls the event counters until they are `expected` (what the server
/// counts after the client already gave up); the deadline only keeps a
/// broken build from hanging.
async fn settles_to(rec: &mut Recording, expected: &BTreeMap<String, u64>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while events(rec) != *expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(events(rec), *expected);
}

/// The common give-up: an MCP client whose request timeout (500 ms) is
/// shorter than the server's token timeout (30 s) drops the call, which
/// sends `notifications/cancelled`, while the server waits for the
/// callback. One cancelled wait; the flow goes on, and the late callback
/// is its one completion (red when the cancelled arm counts nothing).
#[tokio::test]
async fn a_call_the_client_cancels_while_waiting_for_the_callback_counts_one_cancelled_wait() {
    let mut rec = Recording::start();
    let h = Harness::start(Options {
        token_timeout: Duration::from_secs(30),
        ..Options::default()
    })
    .await;
    let mut spec = ClientSpec::legacy("alice");
    spec.behavior = Behavior::AcceptOnly;
    let client = TestClient::new(&spec);
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    let gave_up = tokio::time::timeout(Duration::from_millis(500), call(&session, "whoami")).await;
    assert!(gave_up.is_err(), "the server was still waiting");
    let cancelled = expect(&[
        ("flows_started_total{}", 1),
        ("elicitations_total{path=wait}", 1),
        ("waits_given_up_total{reason=cancelled}", 1),
    ]);
    settles_to(&mut rec, &cancelled).await;
    assert_eq!(
        rec.metrics()
            .gauge(names::FLOWS_PENDING, &[("provider", "github")]),
        1.0,
        "the link still works"
    );
    assert_eq!(client.open(&client.elicitations()[0].0).await.status, 200);
    let mut finished = cancelled.clone();
    finished.insert("flows_completed_total{outcome=authorized}".into(), 1);
    assert_eq!(events(&mut rec), finished);
}

/// The same on a 2026-07-28 session: the retry that answers `accept`
/// waits for the callback of the flow in progress, and the client drops
/// it (its request timeout, 500 ms, is shorter than the server's token
/// timeout, 30 s). One cancelled wait, counted as soon as the request is
/// cancelled, not a timed-out one 30 s later (red when the retry's wait
/// ignores the request's cancellation); the flow goes on to its callback.
#[tokio::test]
async fn an_input_required_retry_the_client_cancels_counts_one_cancelled_wait() {
    let mut rec = Recording::start();
    let h = Harness::start(Options {
        token_timeout: Duration::from_secs(30),
        ..Options::default()
    })
    .await;
    let mut spec = ClientSpec::modern("alice");
    spec.behavior = Behavior::AcceptOnly;
    let client = TestClient::new(&spec);
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    let gave_up = tokio::time::timeout(Duration::from_millis(500), call(&session, "whoami")).await;
    assert!(gave_up.is_err(), "the server was still waiting");
    assert_eq!(client.elicitations().len(), 1, "the retry was sent");
    let cancelled = expect(&[
        ("flows_started_total{}", 1),
        ("elicitations_total{path=input_required}", 1),
        ("waits_given_up_total{reason=cancelled}", 1),
    ]);
    settles_to(&mut rec, &cancelled).await;
    assert_eq!(client.open(&client.elicitations()[0].0).await.status, 200);
    let mut finished = cancelled.clone();
    finished.insert("flows_completed_total{outcome=authorized}".into(), 1);
    assert_eq!(events(&mut rec), finished);
    assert_eq!(
        text(&call(&session, "whoami").await.unwrap()),
        "github user: gh-alice"
    );
}

/// A call cancelled while its prompt is still unanswered: the call that
/// started the flow ends it (here no other call joined it), so one
/// cancelled wait and one `abandoned` flow (red when the prompt's
/// cancelled arm counts nothing).
#[tokio::test]
async fn a_call_the_client_cancels_during_its_prompt_counts_one_cancelled_wait_and_abandons_the_flow()
 {
    let mut rec = Recording::start();
    let h = Harness::start(Options {
        token_timeout: Duration::from_secs(30),
        ..Options::default()
    })
    .await;
    let mut spec = ClientSpec::legacy("alice");
    spec.behavior = Behavior::NeverAnswer;
    let client = TestClient::new(&spec);
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    let gave_up = tokio::time::timeout(Duration::from_millis(500), call(&session, "whoami")).await;
    assert!(gave_up.is_err(), "the server was still waiting");
    settles_to(
        &mut rec,
        &expect(&[
            ("flows_started_total{}", 1),
            ("elicitations_total{path=wait}", 1),
            ("waits_given_up_total{reason=cancelled}", 1),
            ("flows_completed_total{outcome=abandoned}", 1),
        ]),
    )
    .await;
}

/// A client that answers the prompt with a JSON-RPC error: the call
/// cannot wait on, one `error` give-up (red when that arm counts
/// nothing). The flow is left to its callback or expiry, like any give-up.
#[tokio::test]
async fn a_prompt_the_client_answers_with_an_error_counts_one_error_give_up() {
    let mut rec = Recording::start();
    let h = Harness::start(Options::default()).await;
    let mut spec = ClientSpec::legacy("alice");
    spec.behavior = Behavior::Fail;
    let client = TestClient::new(&spec);
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    match call(&session, "whoami").await {
        Ok(result) => assert_eq!(result.is_error, Some(true), "{}", text(&result)),
        Err(error) => assert!(matches!(error, rmcp::ServiceError::McpError(_)), "{error}"),
    }
    assert_eq!(
        events(&mut rec),
        expect(&[
            ("flows_started_total{}", 1),
            ("elicitations_total{path=wait}", 1),
            ("waits_given_up_total{reason=error}", 1),
        ])
    );
}

/// A fail-fast round leaves a watcher that waits out the flow's life to
/// send the completion notice. A flow that expires unanswered is no call
/// giving up: nothing is counted (red when the watcher reports its
/// flow's expiry as a give-up). The watcher's wait is the flow's TTL
/// (200 ms); the test sleeps well past it.
#[tokio::test]
async fn the_fail_fast_watcher_counts_no_give_up_when_its_flow_expires() {
    let mut rec = Recording::start();
    let h = Harness::start(Options {
        style: ElicitationStyle::FailFast,
        flow_ttl: Some(Duration::from_millis(200)),
        ..Options::default()
    })
    .await;
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    call(&session, "whoami").await.unwrap_err();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        events(&mut rec),
        expect(&[
            ("flows_started_total{}", 1),
            ("elicitations_total{path=fail_fast}", 1),
        ])
    );
}
