//! Shared steps: a client, an authorization, token requests.

use mcp_authkit_testkit::{
    AuthorizationRequest, AuthorizationResponse, Browser, ClientRegistration, Pkce,
    RegisteredClient, TestAuthServer,
};
use serde_json::Value;
use url::Url;

/// Nothing listens here: the browser stops before it.
pub const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";
pub const RESOURCE: &str = "https://mcp.example/mcp";

pub async fn server() -> TestAuthServer {
    TestAuthServer::start().await.expect("test server starts")
}

pub fn public_client(server: &TestAuthServer) -> RegisteredClient {
    server
        .register_client(ClientRegistration::public(REDIRECT_URI))
        .unwrap()
}

/// A client with no redirects, as OAuth clients must use for token requests.
/// Everything here is plain HTTP on loopback: without TLS roots the client
/// builds in microseconds instead of tens of milliseconds.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_only(Vec::<reqwest::Certificate>::new())
        .build()
        .unwrap()
}

/// The browser of a user, stopping before the client's redirect URI.
pub fn browser(user: &str) -> Browser {
    Browser::new()
        .with_user(user)
        .stop_before(&Url::parse(REDIRECT_URI).unwrap())
}

/// Runs `/authorize` in the browser and reads the redirect.
pub async fn authorize(
    server: &TestAuthServer,
    request: &AuthorizationRequest,
) -> AuthorizationResponse {
    let url = server.authorization_url(request);
    let navigation = browser("alice").get(url.as_str()).await.unwrap();
    assert!(
        navigation.stopped_at().is_some(),
        "expected a redirect to the client, got {navigation:?}"
    );
    navigation.authorization_response()
}

/// A code for `client` with PKCE, scope `read write` and [`RESOURCE`].
pub async fn code_for(server: &TestAuthServer, client: &RegisteredClient, pkce: &Pkce) -> String {
    let response = authorize(
        server,
        &AuthorizationRequest::new(client)
            .pkce(pkce)
            .state("s1")
            .scope("read write")
            .resource(RESOURCE),
    )
    .await;
    response.code.expect("a code")
}

pub async fn post_token(server: &TestAuthServer, form: &[(&str, &str)]) -> (u16, Value) {
    let response = http()
        .post(server.token_endpoint())
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

pub async fn exchange(
    server: &TestAuthServer,
    client: &RegisteredClient,
    code: &str,
    verifier: &str,
) -> (u16, Value) {
    post_token(
        server,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", client.redirect_uri()),
            ("client_id", &client.client_id),
            ("code_verifier", verifier),
        ],
    )
    .await
}

pub async fn refresh(
    server: &TestAuthServer,
    client: &RegisteredClient,
    refresh_token: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", client.client_id.as_str()),
    ];
    form.extend_from_slice(extra);
    post_token(server, &form).await
}

/// A full flow: the token response.
pub async fn tokens_for(server: &TestAuthServer, client: &RegisteredClient) -> Value {
    let pkce = Pkce::new();
    let code = code_for(server, client, &pkce).await;
    let (status, body) = exchange(server, client, &code, pkce.verifier()).await;
    assert_eq!(status, 200, "{body}");
    body
}

pub fn str_of<'a>(body: &'a Value, field: &str) -> &'a str {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing in {body}"))
}

pub async fn get_json(url: &Url) -> (u16, Value) {
    let response = http().get(url.clone()).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}
