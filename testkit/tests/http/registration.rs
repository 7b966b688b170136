//! Dynamic client registration (RFC 7591).

use mcp_authkit_testkit::{AuthorizationRequest, ClientAuthMethod, ClientSource, Endpoint, Pkce};
use serde_json::{Value, json};

use crate::support::*;

async fn register(server: &mcp_authkit_testkit::TestAuthServer, body: Value) -> (u16, Value) {
    let response = http()
        .post(server.registration_endpoint())
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_public_client_registers_and_runs_a_flow() {
    let server = server().await;
    let (status, body) = register(
        &server,
        json!({
            "redirect_uris": [REDIRECT_URI],
            "token_endpoint_auth_method": "none",
            "client_name": "My MCP client",
            "software_id": "kept-as-is",
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(body.get("client_secret").is_none());
    assert_eq!(body["token_endpoint_auth_method"], "none");
    assert_eq!(body["redirect_uris"], json!([REDIRECT_URI]));
    assert_eq!(body["client_name"], "My MCP client");
    assert_eq!(
        body["software_id"], "kept-as-is",
        "unknown metadata is echoed"
    );
    assert!(body["client_id_issued_at"].as_u64().unwrap() > 0);

    let client = server.client(str_of(&body, "client_id")).unwrap();
    assert_eq!(client.source, ClientSource::Dynamic);
    assert_eq!(client.auth_method, ClientAuthMethod::None);
    assert_eq!(client.name.as_deref(), Some("My MCP client"));
    let pkce = Pkce::new();
    let code = code_for(&server, &client, &pkce).await;
    let (status, _) = exchange(&server, &client, &code, pkce.verifier()).await;
    assert_eq!(status, 200);
    assert_eq!(
        server
            .last_request(Endpoint::Registration)
            .unwrap()
            .json
            .unwrap()["client_name"],
        "My MCP client"
    );
}

#[tokio::test]
async fn a_confidential_client_gets_a_secret_for_its_method() {
    let server = server().await;
    // RFC 7591: the default method is client_secret_basic.
    let (status, body) = register(&server, json!({"redirect_uris": [REDIRECT_URI]})).await;
    assert_eq!(status, 201);
    assert_eq!(body["token_endpoint_auth_method"], "client_secret_basic");
    assert_eq!(body["client_secret_expires_at"], 0);
    let id = str_of(&body, "client_id");
    let secret = str_of(&body, "client_secret");

    let client = server.client(id).unwrap();
    let pkce = Pkce::new();
    let code = code_for(&server, &client, &pkce).await;
    let response = http()
        .post(server.token_endpoint())
        .basic_auth(id, Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", pkce.verifier()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let (status, body) = register(
        &server,
        json!({"redirect_uris": [REDIRECT_URI, "http://127.0.0.1:9/second"], "token_endpoint_auth_method": "client_secret_post"}),
    )
    .await;
    assert_eq!(status, 201);
    assert!(body["client_secret"].is_string());
    let client = server.client(str_of(&body, "client_id")).unwrap();
    assert_eq!(client.auth_method, ClientAuthMethod::ClientSecretPost);
    assert_eq!(client.redirect_uris.len(), 2);
    // The second registered URI is honoured at /authorize.
    let response = authorize(
        &server,
        &AuthorizationRequest::new(&client)
            .redirect_uri("http://127.0.0.1:9/second")
            .pkce(&Pkce::new()),
    )
    .await;
    assert!(response.code.is_some());
}

#[tokio::test]
async fn bad_registrations_get_rfc7591_errors() {
    let server = server().await;
    let cases = [
        (json!({}), "invalid_redirect_uri"),
        (
            json!({"redirect_uris": ["not a uri"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": "http://x/cb"}),
            "invalid_client_metadata",
        ),
        (
            // private_key_jwt without its key.
            json!({"redirect_uris": [REDIRECT_URI], "token_endpoint_auth_method": "private_key_jwt"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": [REDIRECT_URI], "grant_types": ["password"]}),
            "invalid_client_metadata",
        ),
        (json!(["not", "an", "object"]), "invalid_client_metadata"),
    ];
    for (body, error) in cases {
        let (status, answer) = register(&server, body.clone()).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some(error)),
            "{body}"
        );
    }
    // Only advertised methods may be registered.
    server.update_settings(|s| s.token_endpoint_auth_methods = vec![ClientAuthMethod::None]);
    let (status, _) = register(&server, json!({"redirect_uris": [REDIRECT_URI]})).await;
    assert_eq!(status, 400);
    assert!(server.clients().is_empty());
}

#[tokio::test]
async fn registration_can_be_disabled() {
    let server = server().await;
    server.update_settings(|s| s.dynamic_registration = false);
    let response = http()
        .post(server.registration_endpoint())
        .json(&json!({"redirect_uris": [REDIRECT_URI]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(server.hits(Endpoint::Registration), 1);
}
