//! Server shapes met in the wild: one that wants `client_id` in the body
//! even with HTTP Basic (the MCP Python SDK), one that forgets its clients
//! when it restarts (every in-memory example server), one whose client
//! secrets expire.

use std::time::{Duration, SystemTime};

use mcp_authkit_testkit::{AuthorizationRequest, ClientRegistration, Pkce, TestAuthServer};
use serde_json::{Value, json};

use crate::support::*;

async fn register(server: &TestAuthServer, method: &str) -> Value {
    let response = http()
        .post(server.registration_endpoint())
        .json(&json!({"redirect_uris": [REDIRECT_URI], "token_endpoint_auth_method": method}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

/// Exchanges a fresh code of the client `id` with HTTP Basic, with or
/// without `client_id` in the body too.
async fn basic_exchange(
    server: &TestAuthServer,
    id: &str,
    secret: &str,
    id_in_body: bool,
) -> (u16, Value) {
    let client = server.client(id).unwrap();
    let pkce = Pkce::new();
    let code = code_for(server, &client, &pkce).await;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("code_verifier", pkce.verifier()),
    ];
    if id_in_body {
        form.push(("client_id", id));
    }
    let response = http()
        .post(server.token_endpoint())
        .basic_auth(id, Some(secret))
        .form(&form)
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_server_can_require_client_id_in_the_body_even_with_basic() {
    let server = server().await;
    server.update_settings(|s| s.require_client_id_in_body = true);
    let body = register(&server, "client_secret_basic").await;
    let (id, secret) = (str_of(&body, "client_id"), str_of(&body, "client_secret"));

    let (status, answer) = basic_exchange(&server, id, secret, false).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert_eq!(answer["error_description"], "Missing client_id");

    let (status, answer) = basic_exchange(&server, id, secret, true).await;
    assert_eq!(status, 200, "{answer}");
    // Off by default: Basic alone is enough.
    server.update_settings(|s| s.require_client_id_in_body = false);
    let (status, _) = basic_exchange(&server, id, secret, false).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_restart_forgets_dynamic_clients_codes_and_tokens() {
    let server = TestAuthServer::builder()
        .client(ClientRegistration::public(REDIRECT_URI).client_id("configured"))
        .start()
        .await
        .unwrap();
    let body = register(&server, "none").await;
    let dynamic = server.client(str_of(&body, "client_id")).unwrap();
    let tokens = tokens_for(&server, &dynamic).await;
    let access = str_of(&tokens, "access_token").to_owned();
    let refresh_token = str_of(&tokens, "refresh_token").to_owned();
    let pkce = Pkce::new();
    let pending_code = code_for(&server, &dynamic, &pkce).await;

    assert_eq!(server.restart(), 1);
    assert!(server.client(&dynamic.client_id).is_none());
    assert!(server.client("configured").is_some(), "configuration stays");
    assert!(server.introspect(&access).is_none());
    let (status, answer) = refresh(&server, &dynamic, &refresh_token, &[]).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, answer) = exchange(&server, &dynamic, &pending_code, pkce.verifier()).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("invalid_client"))
    );

    // The forgotten client's sign-in stops at an error page: its redirect
    // URI can no longer be trusted, so nothing redirects back.
    let url = server.authorization_url(&AuthorizationRequest::new(&dynamic).pkce(&Pkce::new()));
    let navigation = browser("alice").get(url.as_str()).await.unwrap();
    assert!(navigation.stopped_at().is_none());
    let page = navigation.page().expect("an error page");
    assert_eq!(page.status, 400);
    assert!(page.body.contains("unknown client_id"), "{}", page.body);

    // A configured client signs in as before.
    let configured = server.client("configured").unwrap();
    tokens_for(&server, &configured).await;
}

#[tokio::test]
async fn client_secrets_can_expire() {
    let server = server().await;
    server.update_settings(|s| s.client_secret_lifetime = Some(Duration::from_secs(600)));
    let body = register(&server, "client_secret_basic").await;
    let issued = body["client_id_issued_at"].as_u64().unwrap();
    assert_eq!(
        body["client_secret_expires_at"].as_u64(),
        Some(issued + 600)
    );
    let (id, secret) = (str_of(&body, "client_id"), str_of(&body, "client_secret"));
    let client = server.client(id).unwrap();
    let now = SystemTime::now();
    assert!(!client.secret_expired_at(now));
    assert!(client.secret_expired_at(now + Duration::from_secs(601)));
    let (status, _) = basic_exchange(&server, id, secret, false).await;
    assert_eq!(status, 200);

    // Public clients have no secret to expire.
    let public = register(&server, "none").await;
    assert!(public.get("client_secret_expires_at").is_none());

    assert_eq!(server.expire_client_secrets(), 1);
    let (status, answer) = basic_exchange(&server, id, secret, false).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert!(
        answer["error_description"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{answer}"
    );
    let public = server.client(str_of(&public, "client_id")).unwrap();
    tokens_for(&server, &public).await;

    // Without a lifetime, secrets never expire (RFC 7591: 0).
    let never = register(
        &TestAuthServer::start().await.unwrap(),
        "client_secret_post",
    )
    .await;
    assert_eq!(never["client_secret_expires_at"], 0);
}
