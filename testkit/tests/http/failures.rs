//! Injected failures, one endpoint and grant at a time.

use std::time::{Duration, Instant};

use mcp_authkit_testkit::{AuthorizationRequest, Browser, Endpoint, Failure, Pkce};

use crate::support::*;

#[tokio::test]
async fn a_5xx_is_served_the_given_number_of_times_and_consumes_nothing() {
    let server = server().await;
    let client = public_client(&server);
    let pkce = Pkce::new();
    let code = code_for(&server, &client, &pkce).await;

    server.fail_next(Endpoint::Token, 2, Failure::Status(503));
    assert_eq!(server.pending_failures(Endpoint::Token), 2);
    for _ in 0..2 {
        let (status, body) = exchange(&server, &client, &code, pkce.verifier()).await;
        assert_eq!(status, 503);
        assert!(body.as_str().unwrap().contains("injected"), "{body}");
    }
    assert_eq!(server.pending_failures(Endpoint::Token), 0);
    let (status, _) = exchange(&server, &client, &code, pkce.verifier()).await;
    assert_eq!(status, 200, "the code survived the failed attempts");
    assert_eq!(server.hits(Endpoint::Token), 3);
}

#[tokio::test]
async fn a_hang_never_answers_until_shutdown() {
    let server = server().await;
    let client = public_client(&server);
    let tokens = tokens_for(&server, &client).await;
    server.fail_next(Endpoint::RefreshTokenGrant, 1, Failure::Hang);

    let started = Instant::now();
    let result = http()
        .post(server.token_endpoint())
        .timeout(Duration::from_millis(300))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", str_of(&tokens, "refresh_token")),
            ("client_id", &client.client_id),
        ])
        .send()
        .await;
    let error = result.expect_err("a hanging endpoint times the client out");
    assert!(error.is_timeout(), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A hanging request does not keep the server from stopping.
    let handle = server.handle();
    let stopped = tokio::time::timeout(Duration::from_secs(3), server.shutdown()).await;
    assert!(stopped.is_ok(), "shutdown ends hanging requests");
    assert!(http().get(handle.metadata_url()).send().await.is_err());
}

#[tokio::test]
async fn a_delay_answers_normally_after_the_delay() {
    let server = server().await;
    let client = public_client(&server);
    let pkce = Pkce::new();
    let code = code_for(&server, &client, &pkce).await;
    server.fail_next(
        Endpoint::AuthorizationCodeGrant,
        1,
        Failure::Delay(Duration::from_millis(250)),
    );
    let started = Instant::now();
    let (status, _) = exchange(&server, &client, &code, pkce.verifier()).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn invalid_grant_can_target_one_grant_type() {
    let server = server().await;
    let client = public_client(&server);
    server.fail_next(Endpoint::RefreshTokenGrant, 1, Failure::invalid_grant());

    // The code exchange is not a refresh: it is unaffected.
    let tokens = tokens_for(&server, &client).await;
    let refresh_token = str_of(&tokens, "refresh_token");
    let (status, body) = refresh(&server, &client, refresh_token, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(body["error_description"], "injected failure");
    let (status, _) = refresh(&server, &client, refresh_token, &[]).await;
    assert_eq!(
        status, 200,
        "the refresh token was not used up by the injected failure"
    );
}

#[tokio::test]
async fn malformed_json_and_oauth_errors_at_json_endpoints() {
    let server = server().await;
    let client = public_client(&server);
    let pkce = Pkce::new();
    let code = code_for(&server, &client, &pkce).await;

    server.fail_next(Endpoint::Token, 1, Failure::MalformedJson);
    let response = http()
        .post(server.token_endpoint())
        .form(&[("grant_type", "authorization_code"), ("code", &code)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(serde_json::from_str::<serde_json::Value>(&response.text().await.unwrap()).is_err());

    server.fail_next(
        Endpoint::Token,
        1,
        Failure::OAuthError("invalid_client".into()),
    );
    let (status, body) = exchange(&server, &client, &code, pkce.verifier()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );

    server.fail_next(Endpoint::Registration, 1, Failure::server_error());
    let response = http()
        .post(server.registration_endpoint())
        .json(&serde_json::json!({"redirect_uris": [REDIRECT_URI]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);

    server.fail_next(Endpoint::Userinfo, 1, Failure::Status(502));
    let (status, _) = get_json(&server.userinfo_endpoint()).await;
    assert_eq!(status, 502);
    server.fail_next(Endpoint::Jwks, 1, Failure::MalformedJson);
    let (status, body) = get_json(&server.jwks_uri()).await;
    assert_eq!(status, 200);
    assert!(body.is_string(), "not JSON: {body}");
    let (_, body) = get_json(&server.jwks_uri()).await;
    assert_eq!(body["keys"][0], server.signing_key().public_jwk());
}

#[tokio::test]
async fn access_denied_at_authorize_redirects_only_to_a_valid_redirect_uri() {
    let server = server().await;
    let client = public_client(&server);
    server.fail_next(Endpoint::Authorize, 2, Failure::access_denied());

    // A bad redirect URI still gets the error page, never a redirect.
    let bad = AuthorizationRequest::new(&client)
        .redirect_uri("http://127.0.0.1:9/not-registered")
        .pkce(&Pkce::new());
    let navigation = Browser::new()
        .get(server.authorization_url(&bad).as_str())
        .await
        .unwrap();
    assert_eq!(navigation.page().unwrap().status, 400);

    let good = AuthorizationRequest::new(&client)
        .pkce(&Pkce::new())
        .state("st");
    let response = authorize(&server, &good).await;
    assert_eq!(response.error.as_deref(), Some("access_denied"));
    assert_eq!(response.state.as_deref(), Some("st"));
    assert!(
        authorize(&server, &good).await.code.is_some(),
        "only two were queued"
    );
}

#[tokio::test]
async fn status_hang_and_clear_at_authorize() {
    let server = server().await;
    let client = public_client(&server);
    let request = AuthorizationRequest::new(&client).pkce(&Pkce::new());
    let url = server.authorization_url(&request);

    server.fail_next(Endpoint::Authorize, 1, Failure::Status(500));
    let navigation = Browser::new().get(url.as_str()).await.unwrap();
    assert_eq!(navigation.page().unwrap().status, 500);

    server.fail_next(Endpoint::Authorize, 1, Failure::Hang);
    let error = Browser::new()
        .timeout(Duration::from_millis(200))
        .get(url.as_str())
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "a timeout is retryable: {error}");

    server.fail_next(Endpoint::Authorize, 5, Failure::Status(500));
    server.clear_failures();
    assert!(authorize(&server, &request).await.code.is_some());
}
