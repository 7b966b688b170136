//! OAuthProvider end to end over real HTTP: an rmcp client and server over
//! streamable HTTP, the testkit's authorization server as the third party,
//! and a headless browser following the elicited URLs.

#![cfg(feature = "rmcp")]

mod server_support;

use std::time::Duration;

use mcp_authkit_testkit::Endpoint;
use server_support::*;

#[tokio::test]
async fn first_call_elicits_then_the_tool_runs_and_a_valid_token_is_reused() {
    let h = Harness::start(Options::default()).await;
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;

    let result = call(&session, "whoami").await.unwrap();
    assert_eq!(text(&result), "github user: gh-alice");
    assert_ne!(result.is_error, Some(true));

    let elicitations = client.elicitations();
    assert_eq!(elicitations.len(), 1, "one URL elicitation");
    let (url, id, message) = &elicitations[0];
    assert!(
        url.starts_with(&format!("{}oauth/github/connect?", h.server.base)),
        "the elicited URL is this server's connect page: {url}"
    );
    let query = query_of(url);
    assert_eq!(
        query.keys().collect::<Vec<_>>(),
        ["flow"],
        "one opaque handle: {url}"
    );
    assert!(query["flow"].len() >= 22, "at least 128 bits");
    assert!(
        !url.contains("alice") && !url.contains("state=") && !url.contains("code"),
        "no subject and no OAuth state in the link"
    );
    assert!(!id.is_empty());
    assert!(message.contains("GitHub"));
    client
        .wait_until("the completion notification", |c| {
            c.completions() == vec![id.clone()]
        })
        .await;
    let visits = client.visits();
    assert_eq!(visits.len(), 1);
    assert_eq!(visits[0].status, 200);
    assert!(visits[0].body.contains("GitHub is connected"));
    assert_eq!(h.auth.hits(Endpoint::AuthorizationCodeGrant), 1);

    // Second call: the stored token, no elicitation, no token request.
    let result = call(&session, "whoami").await.unwrap();
    assert_eq!(text(&result), "github user: gh-alice");
    assert_eq!(client.elicitations().len(), 1);
    assert_eq!(h.auth.hits(Endpoint::Token), 1);
    session.cancel().await.unwrap();
}

#[tokio::test]
async fn ungated_tools_are_untouched() {
    let h = Harness::start(Options::default()).await;
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    let result = call(&session, "ping").await.unwrap();
    assert_eq!(text(&result), "pong");
    assert!(client.elicitations().is_empty());
}

async fn active_flow(h: &Harness, subject: &str) -> bool {
    let lifecycle = h.provider().lifecycle();
    lifecycle
        .pending_store()
        .active_flow(&lifecycle.key(subject))
        .await
        .unwrap()
        .is_some()
}

async fn stored(h: &Harness, subject: &str) -> bool {
    h.provider()
        .lifecycle()
        .stored_token(subject)
        .await
        .unwrap()
        .is_some()
}

/// Runs `whoami` in the background.
fn spawn_call(
    session: &std::sync::Arc<Session>,
) -> tokio::task::JoinHandle<Result<rmcp::model::CallToolResult, rmcp::service::ServiceError>> {
    let session = session.clone();
    tokio::spawn(async move { call(&session, "whoami").await })
}

fn assert_tool_error(result: &rmcp::model::CallToolResult, needle: &str) {
    assert_eq!(
        result.is_error,
        Some(true),
        "a tool error: {}",
        text(result)
    );
    assert!(
        text(result).contains(needle),
        "{needle:?} in the tool error: {}",
        text(result)
    );
}

#[tokio::test]
async fn an_expiring_token_is_refreshed_silently() {
    let h = Harness::start(Options::default()).await;
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    call(&session, "whoami").await.unwrap();
    let before = h
        .provider()
        .lifecycle()
        .stored_token("alice")
        .await
        .unwrap()
        .unwrap();

    // The test server's tokens live an hour; an hour later ours is expired.
    h.server.clock.advance(Duration::from_secs(3600));
    let result = call(&session, "whoami").await.unwrap();
    assert_eq!(text(&result), "github user: gh-alice");
    assert_eq!(client.elicitations().len(), 1, "no new elicitation");
    assert_eq!(h.auth.hits(Endpoint::RefreshTokenGrant), 1);
    let after = h
        .provider()
        .lifecycle()
        .stored_token("alice")
        .await
        .unwrap()
        .unwrap();
    assert!(after.revision > before.revision);
}

#[tokio::test]
async fn a_rejected_refresh_token_leads_to_a_new_elicitation() {
    let h = Harness::start(Options::default()).await;
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    call(&session, "whoami").await.unwrap();

    h.auth.fail_next(
        Endpoint::RefreshTokenGrant,
        1,
        mcp_authkit_testkit::Failure::invalid_grant(),
    );
    h.server.clock.advance(Duration::from_secs(3600));
    let result = call(&session, "whoami").await.unwrap();
    assert_eq!(text(&result), "github user: gh-alice");
    assert_eq!(h.auth.hits(Endpoint::RefreshTokenGrant), 1);
    assert_eq!(client.elicitations().len(), 2, "asked again");
    assert_eq!(h.auth.hits(Endpoint::AuthorizationCodeGrant), 2);
}

#[tokio::test]
async fn an_api_401_invalidates_the_token_and_asks_again() {
    let h = Harness::start(Options::default()).await;
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    call(&session, "whoami").await.unwrap();
    let first = h
        .provider()
        .lifecycle()
        .stored_token("alice")
        .await
        .unwrap()
        .unwrap();

    // The third party revokes the access token behind our back.
    assert_eq!(h.auth.expire_access_tokens(), 1);
    let result = call(&session, "whoami").await.unwrap();
    assert_eq!(text(&result), "github user: gh-alice");
    assert_eq!(client.elicitations().len(), 2);
    assert_eq!(
        h.server.api_calls.load(std::sync::atomic::Ordering::SeqCst),
        3
    );
    let second = h
        .provider()
        .lifecycle()
        .stored_token("alice")
        .await
        .unwrap()
        .unwrap();
    assert!(second.revision > first.revision);
}

#[tokio::test]
async fn invalidation_by_revision_keeps_a_newer_token() {
    let h = Harness::start(Options::default()).await;
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    call(&session, "whoami").await.unwrap();
    let provider = h.provider();
    let old = provider.token("alice").await.unwrap().unwrap();
    h.server.clock.advance(Duration::from_secs(3600));
    let new = provider.token("alice").await.unwrap().unwrap();
    assert!(new.revision() > old.revision(), "refreshed");
    assert!(
        !provider.invalidate(&old).await.unwrap(),
        "a stale revision removes nothing"
    );
    assert!(stored(&h, "alice").await);
    assert!(provider.invalidate(&new).await.unwrap());
    assert!(!stored(&h, "alice").await);
    assert!(!provider.invalidate_token("alice").await.unwrap());
}

#[tokio::test]
async fn fail_fast_answers_32042_notifies_completion_and_the_retry_succeeds() {
    let h = Harness::start(Options {
        style: mcp_authkit_providers::server::ElicitationStyle::FailFast,
        ..Options::default()
    })
    .await;
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;

    let first = |error: rmcp::service::ServiceError| match error {
        rmcp::service::ServiceError::McpError(error) => error,
        other => panic!("expected a JSON-RPC error, got {other}"),
    };
    let error = first(call(&session, "whoami").await.unwrap_err());
    assert_eq!(error.code.0, -32042);
    let data = error.data.expect("data");
    let elicitation = &data["elicitations"][0];
    assert_eq!(elicitation["mode"], "url");
    let url = elicitation["url"].as_str().unwrap().to_owned();
    let id = elicitation["elicitationId"].as_str().unwrap().to_owned();
    assert!(url.contains("/oauth/github/connect?"));
    assert!(elicitation["message"].as_str().unwrap().contains("GitHub"));
    assert!(
        client.elicitations().is_empty(),
        "no elicitation/create in fail-fast mode"
    );

    // A retry before the user is done joins the same flow.
    let again = first(call(&session, "whoami").await.unwrap_err());
    assert_eq!(again.data.unwrap()["elicitations"][0]["elicitationId"], id);

    let visit = client.open(&url).await;
    assert_eq!(visit.status, 200);
    client
        .wait_until("the completion notification", |c| {
            c.completions() == vec![id.clone()]
        })
        .await;
    let result = call(&session, "whoami").await.unwrap();
    assert_eq!(text(&result), "github user: gh-alice");
    assert_eq!(h.auth.hits(Endpoint::AuthorizationCodeGrant), 1);
}

#[tokio::test]
async fn declining_or_cancelling_ends_the_call_with_a_tool_error() {
    let h = Harness::start(Options::default()).await;
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;

    client.set_behavior(Behavior::Decline);
    let result = call(&session, "whoami").await.unwrap();
    assert_tool_error(&result, "declined to connect GitHub");
    assert!(!active_flow(&h, "alice").await, "the declined flow is gone");

    client.set_behavior(Behavior::Cancel);
    let result = call(&session, "whoami").await.unwrap();
    assert_tool_error(&result, "cancelled");
    assert!(!active_flow(&h, "alice").await);
    assert_eq!(client.elicitations().len(), 2);
    assert!(!stored(&h, "alice").await);
    assert_eq!(h.auth.hits(Endpoint::Authorize), 0);
}

#[tokio::test]
async fn a_user_who_never_finishes_times_out() {
    let h = Harness::start(Options {
        token_timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let mut spec = ClientSpec::legacy("alice");
    spec.behavior = Behavior::AcceptOnly;
    let client = TestClient::new(&spec);
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    let result = call(&session, "whoami").await.unwrap();
    assert_tool_error(&result, "not completed within 1 s");
    assert!(client.completions().is_empty());
    // The flow stays open: finishing later makes the next call work.
    let url = client.elicitations()[0].0.clone();
    assert_eq!(client.open(&url).await.status, 200);
    let result = call(&session, "whoami").await.unwrap();
    assert_eq!(text(&result), "github user: gh-alice");
    assert_eq!(client.elicitations().len(), 1);
}

#[tokio::test]
async fn the_connect_page_refuses_another_browser_user() {
    let h = Harness::start(Options::default()).await;
    let mut spec = ClientSpec::legacy("alice");
    spec.behavior = Behavior::AcceptOnly;
    let alice = TestClient::new(&spec);
    let session =
        std::sync::Arc::new(connect(&h.server.mcp_url, Some("alice"), alice.clone()).await);
    let pending = spawn_call(&session);
    alice
        .wait_until("the elicitation", |c| c.elicitations().len() == 1)
        .await;
    let url = alice.elicitations()[0].0.clone();

    // Mallory got hold of the link: her browser session is hers.
    let mallory = TestClient::new(&ClientSpec::legacy("mallory"));
    let visit = mallory.open(&url).await;
    assert_eq!(visit.status, 403);
    assert!(visit.body.contains("another user"), "{}", visit.body);
    // Someone not signed in to the application.
    let anonymous = TestClient::new(&ClientSpec::legacy("nobody"))
        .with_browser(mcp_authkit_testkit::Browser::new());
    assert_eq!(anonymous.open(&url).await.status, 401);
    assert_eq!(
        h.auth.hits(Endpoint::Authorize),
        0,
        "never sent to the third party"
    );
    assert!(!stored(&h, "alice").await);
    // A link with a wrong flow id is unknown.
    let forged = url.replace("flow=", "flow=x");
    assert_eq!(alice.open(&forged).await.status, 404);

    // Alice herself finishes, and her call goes on.
    assert_eq!(alice.open(&url).await.status, 200);
    let result = pending.await.unwrap().unwrap();
    assert_eq!(text(&result), "github user: gh-alice");
}

#[tokio::test]
async fn trusting_the_link_holder_skips_the_browser_check() {
    let h = Harness::start(Options {
        trust_link_holder: true,
        ..Options::default()
    })
    .await;
    let client = TestClient::new(&ClientSpec::legacy("alice"))
        .with_browser(mcp_authkit_testkit::Browser::new().with_user("gh-alice"));
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    let result = call(&session, "whoami").await.unwrap();
    assert_eq!(text(&result), "github user: gh-alice");
}

#[tokio::test]
async fn a_replayed_callback_is_refused_and_changes_nothing() {
    let h = Harness::start(Options::default()).await;
    let mut spec = ClientSpec::legacy("alice");
    spec.behavior = Behavior::AcceptOnly;
    let client = TestClient::new(&spec);
    let session =
        std::sync::Arc::new(connect(&h.server.mcp_url, Some("alice"), client.clone()).await);
    let pending = spawn_call(&session);
    client
        .wait_until("the elicitation", |c| c.elicitations().len() == 1)
        .await;
    let navigation = client.navigate(&client.elicitations()[0].0).await;
    assert_eq!(navigation.page().unwrap().status.as_u16(), 200);
    let callback = navigation
        .hops()
        .iter()
        .find(|hop| hop.url.path().ends_with("/callback"))
        .expect("the browser went through the callback")
        .url
        .clone();
    pending.await.unwrap().unwrap();
    let before = h
        .provider()
        .lifecycle()
        .stored_token("alice")
        .await
        .unwrap()
        .unwrap();

    let replay = http().get(callback).send().await.unwrap();
    assert_eq!(replay.status(), 400);
    assert!(replay.text().await.unwrap().contains("already used"));
    assert_eq!(
        h.auth.hits(Endpoint::AuthorizationCodeGrant),
        1,
        "no second exchange"
    );
    let after = h
        .provider()
        .lifecycle()
        .stored_token("alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.revision, before.revision, "nothing stored");
}

#[tokio::test]
async fn concurrent_calls_share_one_flow() {
    let h = Harness::start(Options::default()).await;
    let mut spec = ClientSpec::legacy("alice");
    spec.behavior = Behavior::AcceptOnly;
    let first = TestClient::new(&spec);
    let second = TestClient::new(&spec);
    let one = std::sync::Arc::new(connect(&h.server.mcp_url, Some("alice"), first.clone()).await);
    let two = std::sync::Arc::new(connect(&h.server.mcp_url, Some("alice"), second.clone()).await);

    let mut calls: Vec<_> = (0..6).map(|_| spawn_call(&one)).collect();
    first
        .wait_until("the first session's elicitation", |c| {
            c.elicitations().len() == 1
        })
        .await;
    calls.extend((0..2).map(|_| spawn_call(&two)));
    second
        .wait_until("the second session's elicitation", |c| {
            c.elicitations().len() == 1
        })
        .await;
    // Give the other calls time to join before the user finishes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (url, id, _) = first.elicitations()[0].clone();
    assert_eq!(
        second.elicitations()[0].0,
        url,
        "both sessions show the same flow"
    );
    assert_eq!(second.elicitations()[0].1, id);

    assert_eq!(first.open(&url).await.status, 200);
    for call in calls {
        let result = call.await.unwrap().unwrap();
        assert_eq!(text(&result), "github user: gh-alice");
    }
    assert_eq!(first.elicitations().len(), 1, "one prompt per session");
    assert_eq!(second.elicitations().len(), 1);
    assert_eq!(h.auth.hits(Endpoint::AuthorizationCodeGrant), 1, "one flow");
}

#[tokio::test]
async fn a_client_without_url_elicitation_gets_a_clear_tool_error() {
    let h = Harness::start(Options::default()).await;
    for version in [
        rmcp::model::ProtocolVersion::V_2025_11_25,
        rmcp::model::ProtocolVersion::V_2026_07_28,
    ] {
        let mut spec = ClientSpec::new(version.clone(), "alice");
        spec.url_elicitation = false; // form mode only
        let client = TestClient::new(&spec);
        let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
        let result = call(&session, "whoami").await.unwrap();
        assert_tool_error(&result, "did not declare URL-mode elicitation");
        assert!(
            client.elicitations().is_empty(),
            "{version}: nothing sent, no form either"
        );
        assert!(
            !active_flow(&h, "alice").await,
            "{version}: no flow started"
        );
    }
}

/// Every log line, at trace level, of this test's thread.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Issue 12: the subject (often an e-mail address) never reaches an
/// elicited URL, whichever path elicits it; the handle and the browser
/// secret never reach a log line of this crate, even at trace level, and
/// the browser secret no log line at all. (rmcp itself traces the MCP
/// messages, so the elicited URL with its handle appears in rmcp's lines.)
#[tokio::test]
async fn elicited_urls_carry_no_subject_and_logs_no_link_secret() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let subject = "alice.liddell@example.com";
    let mut urls = Vec::new();
    let mut secrets = Vec::new();

    // Wait mode (2025-11-25): the user's browser passes the connect page,
    // holds the binding, then finishes.
    let h = Harness::start(Options::default()).await;
    let mut spec = ClientSpec::legacy(subject);
    spec.behavior = Behavior::AcceptOnly;
    let client = TestClient::new(&spec);
    let session =
        std::sync::Arc::new(connect(&h.server.mcp_url, Some(subject), client.clone()).await);
    let pending = spawn_call(&session);
    client
        .wait_until("the elicitation", |c| c.elicitations().len() == 1)
        .await;
    let url = client.elicitations()[0].0.clone();
    let authorize = client.connect_only(&url, h.auth.base_url()).await;
    let cookies = client.browser().stored_cookies(h.provider().redirect_uri());
    assert_eq!(cookies.len(), 1);
    secrets.push(cookies[0].1.clone());
    assert_eq!(client.open(authorize.as_str()).await.status, 200);
    assert_eq!(
        text(&pending.await.unwrap().unwrap()),
        format!("github user: gh-{subject}")
    );
    urls.push(url);

    // Fail-fast (-32042).
    let h = Harness::start(Options {
        style: mcp_authkit_providers::server::ElicitationStyle::FailFast,
        ..Options::default()
    })
    .await;
    let client = TestClient::new(&ClientSpec::legacy(subject));
    let session = connect(&h.server.mcp_url, Some(subject), client.clone()).await;
    let rmcp::service::ServiceError::McpError(error) = call(&session, "whoami").await.unwrap_err()
    else {
        panic!("expected -32042");
    };
    let url = error.data.unwrap()["elicitations"][0]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(client.open(&url).await.status, 200);
    urls.push(url);

    // 2026-07-28 (InputRequiredResult).
    let h = Harness::start(Options::default()).await;
    let client = TestClient::new(&ClientSpec::modern(subject));
    let session = connect(&h.server.mcp_url, Some(subject), client.clone()).await;
    let result = call(&session, "whoami").await.unwrap();
    assert_eq!(text(&result), format!("github user: gh-{subject}"));
    urls.push(client.elicitations()[0].0.clone());

    let encoded: String = url::form_urlencoded::byte_serialize(subject.as_bytes()).collect();
    for url in &urls {
        for shown in [subject, encoded.as_str(), "alice", "example.com"] {
            assert!(!url.contains(shown), "{shown:?} in {url}");
        }
        secrets.push(query_of(url)["flow"].clone());
    }
    let logs = logs.text();
    let ours: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains(" mcp_authkit"))
        .collect();
    assert!(
        ours.iter()
            .any(|line| line.contains("TRACE") || line.contains("DEBUG")),
        "the capture sees this crate's detailed logs"
    );
    for secret in &secrets {
        for line in &ours {
            assert!(
                !line.contains(secret.as_str()),
                "a link secret in a log line: {line}"
            );
        }
    }
    let elsewhere = logs
        .lines()
        .filter(|line| !line.contains(" mcp_authkit"))
        .filter(|line| secrets.iter().any(|secret| line.contains(secret.as_str())))
        .count();
    println!("{elsewhere} log lines of other crates (rmcp's message traces) carry a handle");
    // The browser secret never reaches any line, ours or another crate's.
    let browser_secret = &secrets[0];
    assert!(
        !logs.contains(browser_secret.as_str()),
        "the browser secret in the logs"
    );
}

/// A streamable-HTTP POST answered with an SSE stream, read message by
/// message.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    async fn next(&mut self) -> Option<serde_json::Value> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                let data: String = event
                    .lines()
                    .filter_map(|line| line.strip_prefix("data:"))
                    .map(str::trim)
                    .collect();
                if !data.is_empty() {
                    return Some(serde_json::from_str(&data).unwrap());
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("the stream stalled")
                .unwrap()?;
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
        }
    }
}

/// What the provider docs say about rmcp 3.11: the completion notice goes
/// on the standalone GET stream, never on the tool call's own stream, so a
/// client that never opens the GET stream does not see it (and still gets
/// its result). If rmcp starts routing it to the call's stream, this test
/// fails and the docs must change.
#[tokio::test]
async fn without_the_get_stream_the_completion_notice_is_not_seen_but_the_result_is() {
    let h = Harness::start(Options::default()).await;
    let post = |session: Option<&str>, body: serde_json::Value| {
        let mut request = http()
            .post(&h.server.mcp_url)
            .header("accept", "application/json, text/event-stream")
            .header("authorization", "Bearer user-alice")
            .json(&body);
        if let Some(session) = session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25");
        }
        request.send()
    };
    let init = post(
        None,
        serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": { "elicitation": { "url": {} } },
                "clientInfo": { "name": "raw", "version": "1" },
            },
        }),
    )
    .await
    .unwrap();
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut init = SseReader {
        response: init,
        buffer: String::new(),
    };
    assert_eq!(init.next().await.unwrap()["id"], 1);
    let initialized = post(
        Some(&session),
        serde_json::json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
    )
    .await
    .unwrap();
    assert!(initialized.status().is_success());

    let call = post(
        Some(&session),
        serde_json::json!({
            "jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": { "name": "whoami", "arguments": {} },
        }),
    )
    .await
    .unwrap();
    let mut stream = SseReader {
        response: call,
        buffer: String::new(),
    };
    let elicitation = stream.next().await.unwrap();
    assert_eq!(elicitation["method"], "elicitation/create", "{elicitation}");
    let url = elicitation["params"]["url"].as_str().unwrap().to_owned();
    let elicitation_id = elicitation["params"]["elicitationId"].clone();
    let accepted = post(
        Some(&session),
        serde_json::json!({
            "jsonrpc": "2.0", "id": elicitation["id"], "result": { "action": "accept" },
        }),
    )
    .await
    .unwrap();
    assert!(accepted.status().is_success());
    let browser = TestClient::new(&ClientSpec::legacy("alice"));
    assert_eq!(browser.open(&url).await.status, 200);

    let mut seen = Vec::new();
    let result = loop {
        let message = stream
            .next()
            .await
            .expect("the call's stream ends with its result");
        if message["id"] == 2 {
            break message;
        }
        seen.push(message);
    };
    assert_eq!(
        result["result"]["content"][0]["text"], "github user: gh-alice",
        "{result}"
    );
    assert!(
        !seen
            .iter()
            .any(|m| m["method"] == "notifications/elicitation/complete"),
        "the notice now rides the call's stream ({elicitation_id}): update the provider docs: {seen:?}"
    );
    // It went to the standalone stream: opened now, it delivers the notice.
    let get = http()
        .get(&h.server.mcp_url)
        .header("accept", "text/event-stream")
        .header("authorization", "Bearer user-alice")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    let mut standalone = SseReader {
        response: get,
        buffer: String::new(),
    };
    let notice = standalone.next().await.unwrap();
    assert_eq!(
        notice["method"], "notifications/elicitation/complete",
        "{notice}"
    );
    assert_eq!(notice["params"]["elicitationId"], elicitation_id);
}

#[tokio::test]
async fn an_old_protocol_version_is_told_it_is_too_old() {
    let h = Harness::start(Options::default()).await;
    for version in [
        rmcp::model::ProtocolVersion::V_2025_06_18,
        rmcp::model::ProtocolVersion::V_2025_03_26,
    ] {
        // It declares URL elicitation, which its version does not have.
        let client = TestClient::new(&ClientSpec::new(version.clone(), "alice"));
        let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
        let result = call(&session, "whoami").await.unwrap();
        assert_tool_error(
            &result,
            &format!("protocol version {version}, which is too old"),
        );
        assert!(
            !text(&result).contains("did not declare"),
            "{version}: {}",
            text(&result)
        );
        assert!(client.elicitations().is_empty(), "{version}: nothing sent");
        assert!(
            !active_flow(&h, "alice").await,
            "{version}: no flow started"
        );
    }
}

#[tokio::test]
async fn a_call_without_a_user_is_refused() {
    let h = Harness::start(Options::default()).await;
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session = connect(&h.server.mcp_url, None, client.clone()).await;
    let result = call(&session, "whoami").await.unwrap();
    assert_tool_error(&result, "no authenticated user");
    assert!(client.elicitations().is_empty());
}

#[tokio::test]
async fn a_2026_session_gets_input_required_and_the_retry_finds_the_token() {
    let h = Harness::start(Options::default()).await;
    for (user, behavior) in [
        ("alice", Behavior::AcceptThenOpen),
        ("bob", Behavior::OpenThenAccept),
    ] {
        let mut spec = ClientSpec::modern(user);
        spec.behavior = behavior;
        let client = TestClient::new(&spec);
        let session = connect(&h.server.mcp_url, Some(user), client.clone()).await;
        let result = call(&session, "whoami").await.unwrap();
        assert_eq!(
            text(&result),
            format!("github user: gh-{user}"),
            "{behavior:?}"
        );
        let elicitations = client.elicitations();
        assert_eq!(elicitations.len(), 1);
        assert!(elicitations[0].0.contains("/oauth/github/connect?"));
        assert!(
            elicitations[0].1.is_empty(),
            "2026-07-28 has no elicitationId"
        );

        let result = call(&session, "whoami").await.unwrap();
        assert_eq!(text(&result), format!("github user: gh-{user}"));
        assert_eq!(client.elicitations().len(), 1, "the token is reused");
    }

    let mut spec = ClientSpec::modern("carol");
    spec.behavior = Behavior::Decline;
    let client = TestClient::new(&spec);
    let session = connect(&h.server.mcp_url, Some("carol"), client.clone()).await;
    let result = call(&session, "whoami").await.unwrap();
    assert_tool_error(&result, "declined");
    assert!(!active_flow(&h, "carol").await);
    assert_eq!(h.auth.hits(Endpoint::AuthorizationCodeGrant), 2);
}

#[tokio::test]
async fn provider_refusals_end_the_call_with_a_matching_error() {
    let h = Harness::start(Options::default()).await;
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;

    h.auth.fail_next(
        Endpoint::Authorize,
        1,
        mcp_authkit_testkit::Failure::access_denied(),
    );
    let result = call(&session, "whoami").await.unwrap();
    assert_tool_error(&result, "did not grant access (access_denied");
    let visit = client.visits().pop().unwrap();
    assert_eq!(visit.status, 403);
    assert!(visit.body.contains("not granted"), "{}", visit.body);
    assert!(!stored(&h, "alice").await);

    // A mix-up: the response claims another issuer.
    h.auth
        .update_settings(|s| s.iss_parameter = mcp_authkit_testkit::IssParameter::Wrong);
    let result = call(&session, "whoami").await.unwrap();
    assert_tool_error(&result, "unexpected issuer");
    let visit = client.visits().pop().unwrap();
    assert_eq!(visit.status, 400);
    assert!(!stored(&h, "alice").await);
    assert_eq!(h.auth.hits(Endpoint::Token), 0, "no code was exchanged");
}

#[tokio::test]
async fn malformed_callbacks_are_refused_and_end_the_waiting_call() {
    let h = Harness::start(Options::default()).await;
    let mut spec = ClientSpec::legacy("alice");
    spec.behavior = Behavior::AcceptOnly;
    let client = TestClient::new(&spec);
    let session =
        std::sync::Arc::new(connect(&h.server.mcp_url, Some("alice"), client.clone()).await);
    let callback = h.provider().redirect_uri().to_owned();
    let auth_origin = h.auth.base_url().clone();

    // Nothing to do with any flow.
    for query in ["", "?state=unknown", "?code=abc", "?state=a&state=b"] {
        let response = http()
            .get(format!("{callback}{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let headers = response.headers().clone();
        assert_eq!(headers["cache-control"], "no-store");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
    }

    let long_code = "x".repeat(9000);
    let cases: Vec<(String, u16, &str, &str)> = vec![
        (
            String::new(),
            400,
            "incomplete",
            "neither a code nor an error",
        ),
        (
            format!("&code={long_code}"),
            400,
            "malformed",
            "longer than",
        ),
        ("&code=%ZZ".into(), 400, "malformed", "malformed"),
        ("&error=bad%22code".into(), 400, "malformed", "malformed"),
        (
            "&error=access_denied&error_description=%3Cscript%3Ealert(1)%3C%2Fscript%3E".into(),
            403,
            "not granted",
            "<script>alert(1)</script>",
        ),
    ];
    for (n, (extra, status, page_text, call_text)) in cases.into_iter().enumerate() {
        let pending = spawn_call(&session);
        client
            .wait_until("the elicitation", |c| c.elicitations().len() == n + 1)
            .await;
        let url = client.elicitations()[n].0.clone();
        // The user's own browser passes the connect page (and gets the
        // flow's binding), then the malformed response arrives in it.
        let state = client.state_behind(&url, &auth_origin).await;
        let navigation = client
            .navigate(&format!("{callback}?state={state}{extra}"))
            .await;
        let page = navigation.page().unwrap();
        assert_eq!(page.status.as_u16(), status, "{extra}");
        let body = page.body.clone();
        assert!(body.contains(page_text), "{extra}: {body}");
        assert!(!body.contains("<script>"), "escaped: {body}");
        let result = pending.await.unwrap().unwrap();
        assert_tool_error(&result, call_text);
        assert!(!stored(&h, "alice").await);
        assert!(!active_flow(&h, "alice").await);
    }
    assert_eq!(h.auth.hits(Endpoint::Token), 0);
}

#[tokio::test]
async fn an_expired_link_is_refused() {
    let h = Harness::start(Options::default()).await;
    let mut spec = ClientSpec::legacy("alice");
    spec.behavior = Behavior::AcceptOnly;
    let client = TestClient::new(&spec);
    let session =
        std::sync::Arc::new(connect(&h.server.mcp_url, Some("alice"), client.clone()).await);
    let pending = spawn_call(&session);
    client
        .wait_until("the elicitation", |c| c.elicitations().len() == 1)
        .await;
    let url = client.elicitations()[0].0.clone();
    let state = client.state_behind(&url, h.auth.base_url()).await;
    h.server.clock.advance(Duration::from_secs(11 * 60));
    let visit = client.open(&url).await;
    assert_eq!(visit.status, 404);
    assert!(visit.body.contains("expired"));
    let response = http()
        .get(format!(
            "{}?state={state}&code=abc",
            h.provider().redirect_uri()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(h.auth.hits(Endpoint::Token), 0);
    pending.abort();
}

#[tokio::test]
async fn a_valid_token_costs_one_store_read_and_no_network() {
    let counting = std::sync::Arc::new(CountingStore::new(std::sync::Arc::new(
        mcp_authkit_store_memory::MemoryStore::new(),
    )));
    let h = Harness::start(Options {
        tokens: Some(counting.clone()),
        ..Options::default()
    })
    .await;
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    call(&session, "whoami").await.unwrap();

    counting.reset();
    h.auth.reset_counters();
    for _ in 0..3 {
        let result = call(&session, "whoami").await.unwrap();
        assert_eq!(text(&result), "github user: gh-alice");
    }
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(counting.gets.load(SeqCst), 3, "one read per call");
    assert_eq!(
        counting.others.load(SeqCst),
        0,
        "no writes, leases or scans"
    );
    assert_eq!(h.auth.hits(Endpoint::Token), 0, "no OAuth request");
    assert_eq!(client.elicitations().len(), 1);
}

#[tokio::test]
async fn concurrent_calls_with_an_expiring_token_refresh_once() {
    let h = Harness::start(Options::default()).await;
    // Refreshing twice with one refresh token would revoke everything.
    h.auth
        .update_settings(|s| s.revoke_on_refresh_token_reuse = true);
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session =
        std::sync::Arc::new(connect(&h.server.mcp_url, Some("alice"), client.clone()).await);
    call(&session, "whoami").await.unwrap();
    h.server.clock.advance(Duration::from_secs(3600));
    let calls: Vec<_> = (0..8).map(|_| spawn_call(&session)).collect();
    for call in calls {
        let result = call.await.unwrap().unwrap();
        assert_eq!(text(&result), "github user: gh-alice");
    }
    assert_eq!(h.auth.hits(Endpoint::RefreshTokenGrant), 1, "single-flight");
    assert_eq!(client.elicitations().len(), 1);
}

#[tokio::test]
async fn a_custom_flow_gates_tools_the_same_way() {
    let h = Harness::start(Options {
        custom_flow: true,
        ..Options::default()
    })
    .await;
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    let result = call(&session, "whoami").await.unwrap();
    assert_eq!(text(&result), "github user: gh-alice");
    let exchange = h
        .auth
        .last_request(Endpoint::AuthorizationCodeGrant)
        .unwrap();
    assert!(
        exchange.param("code_verifier").is_some(),
        "PKCE through the custom flow"
    );

    // It cannot refresh: an expired token means asking the user again.
    h.server.clock.advance(Duration::from_secs(3600));
    let result = call(&session, "whoami").await.unwrap();
    assert_eq!(text(&result), "github user: gh-alice");
    assert_eq!(client.elicitations().len(), 2);
    assert_eq!(h.auth.hits(Endpoint::RefreshTokenGrant), 0);
}

#[tokio::test]
async fn secrets_stay_out_of_debug_output_errors_and_pages() {
    let h = Harness::start(Options::default()).await;
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    call(&session, "whoami").await.unwrap();
    let token = h.provider().token("alice").await.unwrap().unwrap();
    let secret = {
        use mcp_authkit_core::ExposeSecret;
        token.secret().expose_secret().to_owned()
    };
    let stored = h
        .provider()
        .lifecycle()
        .stored_token("alice")
        .await
        .unwrap()
        .unwrap();
    let refresh = {
        use mcp_authkit_core::ExposeSecret;
        stored
            .record
            .refresh_token
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_owned()
    };
    let pending = h
        .provider()
        .begin_authorization("bob", Some("s"))
        .await
        .unwrap();
    let printed = format!("{token:?} {:?} {pending:?} {stored:?}", h.provider());
    assert!(!printed.contains(&secret), "{printed}");
    assert!(!printed.contains(&refresh), "{printed}");
    for page in client.visits() {
        assert!(!page.body.contains(&secret) && !page.body.contains(&refresh));
    }

    // A client without URL elicitation is told what to do, without a link.
    let mut spec = ClientSpec::legacy("carol");
    spec.url_elicitation = false;
    let carol = TestClient::new(&spec);
    let session = connect(&h.server.mcp_url, Some("carol"), carol).await;
    let result = call(&session, "whoami").await.unwrap();
    assert!(
        !text(&result).contains("http"),
        "no URL in the tool error: {}",
        text(&result)
    );
}

// --- replicas ---------------------------------------------------------------
//
// Two (three) server processes share Redis. The test binary re-executes
// itself as each replica (`replica_process`); the test itself is the MCP
// client and the user's browser, and runs the authorization server.

mod replicas {
    use std::process::Stdio;
    use std::sync::Arc;
    use std::time::Instant;

    use mcp_authkit_core::{PendingStore, TokenStore};
    use mcp_authkit_providers::server::ElicitationStyle;
    use mcp_authkit_store_redis::RedisStore;
    use mcp_authkit_store_redis::testing::{redis_url, unique_prefix};
    use mcp_authkit_testkit::{Endpoint, TestAuthServer};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    use tokio::process::{Child, Command};

    use super::server_support::*;

    const ROLE: &str = "MCP_AUTHKIT_REPLICA";
    const READY: &str = "REPLICA-READY ";

    fn var(name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the parent test"))
    }

    /// A replica: serves until the parent closes its stdin.
    #[test]
    fn replica_process() {
        if std::env::var(ROLE).is_err() {
            return; // an ordinary test run: nothing to do
        }
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let store = Arc::new(
                RedisStore::builder(var("REPLICA_REDIS_URL"))
                    .prefix(var("REPLICA_PREFIX"))
                    .connect()
                    .await
                    .expect("the replica connects to Redis"),
            );
            let info = AuthServerInfo {
                issuer: var("REPLICA_ISSUER"),
                authorization_endpoint: var("REPLICA_AUTHORIZE"),
                token_endpoint: var("REPLICA_TOKEN"),
                userinfo_endpoint: var("REPLICA_USERINFO"),
                client_id: var("REPLICA_CLIENT_ID"),
                client_secret: var("REPLICA_CLIENT_SECRET"),
            };
            let options = Options {
                style: match var("REPLICA_STYLE").as_str() {
                    "fail-fast" => ElicitationStyle::FailFast,
                    _ => ElicitationStyle::Wait,
                },
                tokens: Some(store.clone() as Arc<dyn TokenStore>),
                pending: Some(store as Arc<dyn PendingStore>),
                public_base: std::env::var("REPLICA_PUBLIC_BASE").ok(),
                ..Options::default()
            };
            let server = McpServer::start(options, |_| info).await;
            println!("{READY}{}", server.base);
            // Until the parent goes away.
            let mut rest = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut rest).await;
            drop(server);
        });
    }

    struct Replica {
        base: String,
        _child: Child,
    }

    async fn spawn_replica(
        auth: &AuthServerInfo,
        redis: &str,
        prefix: &str,
        style: &str,
        public_base: Option<&str>,
    ) -> Replica {
        let exe = std::env::current_exe().unwrap();
        let mut command = Command::new(exe);
        command
            .args([
                "--exact",
                "replicas::replica_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, "1")
            .env("REPLICA_REDIS_URL", redis)
            .env("REPLICA_PREFIX", prefix)
            .env("REPLICA_STYLE", style)
            .env("REPLICA_ISSUER", &auth.issuer)
            .env("REPLICA_AUTHORIZE", &auth.authorization_endpoint)
            .env("REPLICA_TOKEN", &auth.token_endpoint)
            .env("REPLICA_USERINFO", &auth.userinfo_endpoint)
            .env("REPLICA_CLIENT_ID", &auth.client_id)
            .env("REPLICA_CLIENT_SECRET", &auth.client_secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(base) = public_base {
            command.env("REPLICA_PUBLIC_BASE", base);
        }
        let mut child = command
            .spawn()
            .expect("re-executing the test binary as a replica");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                // libtest may have printed "test ... " on the same line.
                if let Some((_, base)) = line.split_once(READY) {
                    return base.trim().trim_end_matches('/').to_owned();
                }
            }
            panic!("the replica exited before it was ready");
        })
        .await
        .expect("the replica starts within 30 s");
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Replica {
            base,
            _child: child,
        }
    }

    #[tokio::test]
    async fn the_call_waits_on_one_replica_while_the_callback_lands_on_another() {
        let redis = redis_url().await;
        let prefix = unique_prefix("providers-replicas");
        // Replica B's port is only known once it runs: let the third party
        // accept the loopback redirect URI on any port (RFC 8252 7.3).
        let auth = TestAuthServer::builder()
            .settings(|s| s.loopback_redirect_any_port = true)
            .start()
            .await
            .unwrap();
        let info = AuthServerInfo::register(&auth, "http://127.0.0.1:1/oauth/github/callback");

        let b = spawn_replica(&info, &redis, &prefix, "wait", None).await;
        let (a, a_fail_fast) = tokio::join!(
            spawn_replica(&info, &redis, &prefix, "wait", Some(&b.base)),
            spawn_replica(&info, &redis, &prefix, "fail-fast", Some(&b.base)),
        );

        // Wait mode: the call stays open on A; the browser lands on B.
        let mut spec = ClientSpec::legacy("alice");
        spec.behavior = Behavior::AcceptOnly;
        let alice = TestClient::new(&spec);
        let session =
            Arc::new(connect(&format!("{}/mcp", a.base), Some("alice"), alice.clone()).await);
        let pending = {
            let session = session.clone();
            tokio::spawn(async move { call(&session, "whoami").await })
        };
        alice
            .wait_until("the elicitation", |c| c.elicitations().len() == 1)
            .await;
        let (url, id, _) = alice.elicitations()[0].clone();
        assert!(
            url.starts_with(&format!("{}/oauth/github/connect", b.base)),
            "{url}"
        );
        let visit = alice.open(&url).await;
        let landed = Instant::now();
        assert_eq!(visit.status, 200, "B handled the callback: {}", visit.body);
        let result = pending.await.unwrap().unwrap();
        let resumed = landed.elapsed();
        assert_eq!(text(&result), "github user: gh-alice");
        alice
            .wait_until("A's completion notice", |c| {
                c.completions() == vec![id.clone()]
            })
            .await;
        println!("replica A resumed {resumed:?} after replica B's callback page");
        // The token B stored serves A's next call.
        let result = call(&session, "whoami").await.unwrap();
        assert_eq!(text(&result), "github user: gh-alice");
        assert_eq!(alice.elicitations().len(), 1);

        // Fail-fast: A' answers -32042, the callback lands on B, and A'
        // tells the originating session.
        let bob = TestClient::new(&ClientSpec::legacy("bob"));
        let session = connect(
            &format!("{}/mcp", a_fail_fast.base),
            Some("bob"),
            bob.clone(),
        )
        .await;
        let error = match call(&session, "whoami").await.unwrap_err() {
            rmcp::service::ServiceError::McpError(error) => error,
            other => panic!("expected -32042, got {other}"),
        };
        assert_eq!(error.code.0, -32042);
        let data = error.data.unwrap();
        let url = data["elicitations"][0]["url"].as_str().unwrap().to_owned();
        let id = data["elicitations"][0]["elicitationId"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(url.starts_with(&b.base));
        assert_eq!(bob.open(&url).await.status, 200);
        bob.wait_until("the completion notice from A'", |c| {
            c.completions() == vec![id.clone()]
        })
        .await;
        let result = call(&session, "whoami").await.unwrap();
        assert_eq!(text(&result), "github user: gh-bob");
        assert_eq!(auth.hits(Endpoint::AuthorizationCodeGrant), 2);

        drop((a, a_fail_fast, b));
        RedisStore::builder(redis)
            .prefix(prefix)
            .connect()
            .await
            .unwrap()
            .delete_namespace()
            .await
            .unwrap();
    }

    /// The attack of issue 12: Mallory passes her own connect page, copies
    /// the redirect to the third party (with her `state`) and sends it to
    /// Alice. Three replicas share Redis behind a load balancer that sends
    /// connect pages to C and callbacks to B; Mallory's tool call waits on A.
    #[tokio::test]
    async fn a_forwarded_authorize_url_is_refused_across_replicas() {
        let redis = redis_url().await;
        let prefix = unique_prefix("providers-forwarded-link");
        let lb = LoadBalancer::start().await;
        let auth = TestAuthServer::start().await.unwrap();
        let info = AuthServerInfo::register(&auth, &format!("{}/oauth/github/callback", lb.base));
        let (a, b, c) = tokio::join!(
            spawn_replica(&info, &redis, &prefix, "wait", Some(&lb.base)),
            spawn_replica(&info, &redis, &prefix, "wait", Some(&lb.base)),
            spawn_replica(&info, &redis, &prefix, "wait", Some(&lb.base)),
        );
        lb.route("/oauth/github/connect", &c.base);
        lb.route("/oauth/github/callback", &b.base);
        let store = RedisStore::builder(redis.clone())
            .prefix(prefix.clone())
            .connect()
            .await
            .unwrap();

        // Mallory's tool call waits on A; she opens her own link (her
        // browser user is Mallory, so the connect page lets her through)
        // and stops before the third party.
        let mut spec = ClientSpec::legacy("mallory");
        spec.behavior = Behavior::AcceptOnly;
        let mallory = TestClient::new(&spec);
        let session =
            Arc::new(connect(&format!("{}/mcp", a.base), Some("mallory"), mallory.clone()).await);
        let pending = {
            let session = session.clone();
            tokio::spawn(async move { call(&session, "whoami").await })
        };
        mallory
            .wait_until("the elicitation", |c| c.elicitations().len() == 1)
            .await;
        let link = mallory.elicitations()[0].0.clone();
        assert!(link.starts_with(&lb.base), "{link}");
        let authorize = mallory.connect_only(&link, auth.base_url()).await;
        let callback = format!("{}/oauth/github/callback", lb.base);
        assert_eq!(mallory.browser().stored_cookies(&callback).len(), 1);

        // Alice, in her own browser, signed in at the third party, opens
        // what Mallory sent her.
        let alice = TestClient::new(&ClientSpec::legacy("alice"));
        let visit = alice.open(authorize.as_str()).await;
        assert_eq!(visit.status, 403, "{}", visit.body);
        assert!(
            visit
                .body
                .contains("Open the link from your MCP client in this browser"),
            "{}",
            visit.body
        );
        let served = lb.served();
        assert!(
            served
                .iter()
                .any(|(path, to)| path.ends_with("/connect") && *to == c.base)
                && served
                    .iter()
                    .any(|(path, to)| path.ends_with("/callback") && *to == b.base),
            "connect on C, callback on B: {served:?}"
        );
        assert_eq!(
            auth.hits(Endpoint::AuthorizationCodeGrant),
            0,
            "no code exchanged"
        );
        let tokens = TokenStore::scan(&store, None, 100).await.unwrap();
        assert!(
            tokens.items.is_empty(),
            "no token for Mallory, Alice's account bound to nobody: {:?}",
            tokens.items
        );
        let state = mcp_authkit_core::FlowState::new(
            authorize
                .query_pairs()
                .find(|(name, _)| name == "state")
                .unwrap()
                .1
                .into_owned(),
        );
        assert!(
            store.get_flow(&state).await.unwrap().is_some(),
            "Mallory's flow is intact"
        );
        assert!(!pending.is_finished(), "her tool call still waits");

        // Mallory's own, legitimate flow still completes: her browser, her
        // third-party account.
        let visit = mallory.open(authorize.as_str()).await;
        assert_eq!(visit.status, 200, "{}", visit.body);
        let result = pending.await.unwrap().unwrap();
        assert_eq!(text(&result), "github user: gh-mallory");
        assert_eq!(auth.hits(Endpoint::AuthorizationCodeGrant), 1);

        drop((a, b, c));
        store.delete_namespace().await.unwrap();
    }
}
