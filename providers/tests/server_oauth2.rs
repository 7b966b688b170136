//! The standard OAuth 2.0 client over real HTTP: against the loopback
//! authorization server of `mcp-authkit-testkit`, and against a small
//! server that answers the way GitHub and broken servers do.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use mcp_authkit_core::{
    AuthorizationRequest as CoreAuthorizationRequest, ExposeSecret, OAuthClient, OAuthErrorKind,
    PendingFlow, SecretString, Timestamp, TokenKey,
};
use mcp_authkit_providers::http::OAuthHttpClient;
use mcp_authkit_providers::standard::{ClientAuthMethod, StandardOAuthClient};
use mcp_authkit_testkit::{
    Browser, ClientRegistration, Endpoint, Failure, RegisteredClient, TestAuthServer,
};
use url::Url;

const REDIRECT: &str = "http://127.0.0.1:9/callback";

fn flow() -> PendingFlow {
    PendingFlow::new(
        TokenKey::new("test", "alice"),
        REDIRECT,
        vec!["read".into(), "write".into()],
        Timestamp::now(),
        Duration::from_secs(600),
    )
}

fn client_for(server: &TestAuthServer, registered: &RegisteredClient) -> StandardOAuthClient {
    let mut builder = StandardOAuthClient::builder(
        registered.client_id.clone(),
        server.authorization_endpoint().as_str(),
        server.token_endpoint().as_str(),
    )
    .issuer(server.issuer())
    .resource("https://mcp.example/mcp")
    .authorize_param("prompt", "consent");
    if let Some(secret) = &registered.client_secret {
        builder = builder.client_secret(secret.clone());
    }
    builder.build().unwrap()
}

/// Runs the browser part: authorize as `user`, stop before the redirect URI,
/// return the code.
async fn authorize(client: &StandardOAuthClient, flow: &PendingFlow, user: &str) -> String {
    let challenge = flow.pkce().challenge_s256();
    let url = client
        .authorization_url(&CoreAuthorizationRequest::for_flow(flow, &challenge))
        .unwrap();
    let stop = Url::parse(REDIRECT).unwrap();
    let response = Browser::new()
        .with_user(user)
        .stop_before(&stop)
        .get(url.as_str())
        .await
        .unwrap()
        .authorization_response();
    assert_eq!(response.state.as_deref(), Some(flow.state.as_str()));
    response.code.expect("the test server issued a code")
}

#[tokio::test]
async fn code_flow_with_pkce_resource_and_refresh() {
    let server = TestAuthServer::start().await.unwrap();
    let registered = server
        .register_client(ClientRegistration::confidential(REDIRECT))
        .unwrap();
    let client = client_for(&server, &registered);
    let flow = flow();

    let challenge = flow.pkce().challenge_s256();
    let url = client
        .authorization_url(&CoreAuthorizationRequest::for_flow(&flow, &challenge))
        .unwrap();
    let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["state"], flow.state.as_str());
    assert_eq!(query["code_challenge"], challenge);
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["redirect_uri"], REDIRECT);
    assert_eq!(query["scope"], "read write");
    assert_eq!(query["resource"], "https://mcp.example/mcp");
    assert_eq!(query["prompt"], "consent");

    let code = authorize(&client, &flow, "alice").await;
    let tokens = client
        .exchange_code(&SecretString::from(code), &flow)
        .await
        .unwrap();
    let info = server
        .introspect(tokens.access_token.expose_secret())
        .unwrap();
    assert_eq!(info.subject, "alice");
    assert!(info.is_for("https://mcp.example/mcp"));
    assert_eq!(
        tokens.scopes.as_deref(),
        Some(&["read".to_owned(), "write".to_owned()][..])
    );
    assert_eq!(tokens.expires_in, Some(Duration::from_secs(3600)));
    assert_eq!(tokens.token_type, "Bearer");
    let exchange = server
        .last_request(Endpoint::AuthorizationCodeGrant)
        .unwrap();
    assert_eq!(
        exchange.param("code_verifier"),
        Some(flow.pkce_verifier.expose_secret()),
        "the PKCE verifier is sent"
    );
    assert!(
        exchange
            .header("authorization")
            .is_some_and(|h| h.starts_with("Basic ")),
        "client_secret_basic by default"
    );

    let refresh = tokens.refresh_token.clone().unwrap();
    let refreshed = client.refresh(&refresh, &[]).await.unwrap();
    assert_ne!(
        refreshed.access_token.expose_secret(),
        tokens.access_token.expose_secret()
    );
    assert!(refreshed.refresh_token.is_some(), "rotated");
    let request = server.last_request(Endpoint::RefreshTokenGrant).unwrap();
    assert_eq!(request.param("resource"), Some("https://mcp.example/mcp"));
}

#[tokio::test]
async fn client_secret_post_and_public_clients() {
    let server = TestAuthServer::start().await.unwrap();
    let registered = server
        .register_client(
            ClientRegistration::confidential(REDIRECT)
                .auth_method(mcp_authkit_testkit::ClientAuthMethod::ClientSecretPost),
        )
        .unwrap();
    let client = StandardOAuthClient::builder(
        registered.client_id.clone(),
        server.authorization_endpoint().as_str(),
        server.token_endpoint().as_str(),
    )
    .client_secret(registered.client_secret.clone().unwrap())
    .auth_method(ClientAuthMethod::RequestBody)
    .build()
    .unwrap();
    let flow = flow();
    let code = authorize(&client, &flow, "bob").await;
    client
        .exchange_code(&SecretString::from(code), &flow)
        .await
        .unwrap();
    let request = server.last_request(Endpoint::Token).unwrap();
    assert!(request.param("client_secret").is_some());
    assert!(request.header("authorization").is_none());

    let public = server
        .register_client(ClientRegistration::public(REDIRECT))
        .unwrap();
    let client = client_for(&server, &public);
    let flow = self::flow();
    let code = authorize(&client, &flow, "bob").await;
    client
        .exchange_code(&SecretString::from(code), &flow)
        .await
        .unwrap();
    let request = server.last_request(Endpoint::Token).unwrap();
    assert_eq!(request.param("client_id"), Some(public.client_id.as_str()));
}

#[tokio::test]
async fn failures_are_classified() {
    let server = TestAuthServer::start().await.unwrap();
    let registered = server
        .register_client(ClientRegistration::confidential(REDIRECT))
        .unwrap();
    let client = client_for(&server, &registered);
    let flow = flow();
    let code = authorize(&client, &flow, "alice").await;
    let tokens = client
        .exchange_code(&SecretString::from(code.clone()), &flow)
        .await
        .unwrap();
    let refresh = tokens.refresh_token.unwrap();

    let cases = [
        (Failure::invalid_grant(), OAuthErrorKind::InvalidGrant),
        (
            Failure::OAuthError("invalid_client".into()),
            OAuthErrorKind::InvalidClient,
        ),
        (
            Failure::OAuthError("temporarily_unavailable".into()),
            OAuthErrorKind::Transient,
        ),
        (Failure::Status(500), OAuthErrorKind::Transient),
        (Failure::Status(503), OAuthErrorKind::Transient),
        (Failure::Status(429), OAuthErrorKind::Transient),
        (Failure::Status(404), OAuthErrorKind::Protocol),
        (Failure::MalformedJson, OAuthErrorKind::Protocol),
    ];
    for (failure, kind) in cases {
        server.fail_next(Endpoint::RefreshTokenGrant, 1, failure.clone());
        let error = client.refresh(&refresh, &[]).await.unwrap_err();
        assert_eq!(error.kind(), kind, "{failure:?} -> {error}");
        let printed = format!("{error} {error:?}");
        assert!(
            !printed.contains(refresh.expose_secret()),
            "no refresh token in errors: {printed}"
        );
    }
    // The code was used once: a second exchange is invalid_grant.
    let error = client
        .exchange_code(&SecretString::from(code), &flow)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), OAuthErrorKind::InvalidGrant);
}

#[tokio::test]
async fn timeouts_and_unreachable_servers_are_transient() {
    let server = TestAuthServer::start().await.unwrap();
    let registered = server
        .register_client(ClientRegistration::confidential(REDIRECT))
        .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let client = StandardOAuthClient::builder(
        registered.client_id.clone(),
        server.authorization_endpoint().as_str(),
        server.token_endpoint().as_str(),
    )
    .client_secret(registered.client_secret.clone().unwrap())
    .http_client(OAuthHttpClient::from_reqwest(http.clone()))
    .build()
    .unwrap();
    server.fail_next(Endpoint::RefreshTokenGrant, 1, Failure::Hang);
    let error = client
        .refresh(&SecretString::from("r".to_owned()), &[])
        .await
        .unwrap_err();
    assert_eq!(error.kind(), OAuthErrorKind::Transient, "{error}");

    // Nothing listens on port 9 of loopback.
    let unreachable = StandardOAuthClient::builder(
        "id",
        "http://127.0.0.1:9/authorize",
        "http://127.0.0.1:9/token",
    )
    .http_client(OAuthHttpClient::from_reqwest(http))
    .build()
    .unwrap();
    let error = unreachable
        .refresh(&SecretString::from("r".to_owned()), &[])
        .await
        .unwrap_err();
    assert_eq!(error.kind(), OAuthErrorKind::Transient, "{error}");
}

/// A token endpoint that answers like GitHub (HTTP 200 for errors, scopes
/// separated by commas, lowercase `bearer`) or redirects elsewhere.
async fn quirky_server(redirect_to: Url) -> Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    let json = |body: &'static str| {
        move || async move { ([(header::CONTENT_TYPE, "application/json")], body) }
    };
    let app = Router::new()
        .route(
            "/github/expired-refresh",
            post(json(
                r#"{"error":"bad_refresh_token","error_description":"The refresh token passed is incorrect or expired."}"#,
            )),
        )
        .route(
            "/github/bad-code",
            post(json(r#"{"error":"bad_verification_code"}"#)),
        )
        .route(
            "/github/ok",
            post(json(
                r#"{"access_token":"gho_x","token_type":"bearer","scope":"repo,gist","refresh_token_expires_in":15897600}"#,
            )),
        )
        .route(
            "/redirect",
            post(move || {
                let to = redirect_to.to_string();
                async move {
                    (
                        StatusCode::TEMPORARY_REDIRECT,
                        [(header::LOCATION, to)],
                    )
                        .into_response()
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn client_at(base: &Url, path: &str) -> StandardOAuthClient {
    StandardOAuthClient::builder(
        "id",
        base.join("/authorize").unwrap().as_str(),
        base.join(path).unwrap().as_str(),
    )
    .client_secret("secret")
    .auth_method(ClientAuthMethod::RequestBody)
    .build()
    .unwrap()
}

#[tokio::test]
async fn github_style_answers_are_understood() {
    let server = TestAuthServer::start().await.unwrap();
    let base = quirky_server(server.token_endpoint()).await;

    let error = client_at(&base, "/github/expired-refresh")
        .refresh(&SecretString::from("r".to_owned()), &[])
        .await
        .unwrap_err();
    assert_eq!(error.kind(), OAuthErrorKind::InvalidGrant, "{error}");
    assert!(error.to_string().contains("bad_refresh_token"), "{error}");

    let error = client_at(&base, "/github/bad-code")
        .exchange_code(&SecretString::from("c".to_owned()), &flow())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), OAuthErrorKind::InvalidGrant, "{error}");

    let tokens = client_at(&base, "/github/ok")
        .exchange_code(&SecretString::from("c".to_owned()), &flow())
        .await
        .unwrap();
    assert_eq!(
        tokens.scopes.as_deref(),
        Some(&["repo".to_owned(), "gist".to_owned()][..])
    );
    assert_eq!(tokens.token_type, "Bearer");
    assert!(tokens.extra.get("refresh_token_expires_in").is_some());
    assert_eq!(tokens.expires_in, None);
}

#[tokio::test]
async fn token_requests_never_follow_redirects() {
    let server = TestAuthServer::start().await.unwrap();
    let base = quirky_server(server.token_endpoint()).await;
    let error = client_at(&base, "/redirect")
        .refresh(&SecretString::from("r".to_owned()), &[])
        .await
        .unwrap_err();
    assert_eq!(error.kind(), OAuthErrorKind::Protocol, "{error}");
    assert_eq!(
        server.hits(Endpoint::Token),
        0,
        "the redirect target was never called"
    );
}

/// What a server that a token endpoint redirects to received.
#[derive(Clone, Debug)]
struct Received {
    method: String,
    authorization: Option<String>,
    body: String,
}

/// A server that answers every request with a valid token response (so a
/// client that followed a redirect to it would get a token), recording
/// what it received.
async fn sink() -> (Url, Arc<Mutex<Vec<Received>>>) {
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let record = received.clone();
    let app = Router::new().fallback(move |request: axum::extract::Request| {
        let record = record.clone();
        async move {
            let method = request.method().to_string();
            let authorization = request
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned());
            let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                .await
                .unwrap();
            record.lock().unwrap().push(Received {
                method,
                authorization,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            (
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"access_token":"from-the-redirect-target","token_type":"bearer"}"#,
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = Url::parse(&format!("http://{}/token", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, received)
}

/// A token endpoint that redirects with `status` to `to`.
async fn redirecting(to: Url) -> Url {
    let app = Router::new().route(
        "/{status}",
        post(
            move |axum::extract::Path(status): axum::extract::Path<u16>| {
                let to = to.to_string();
                async move {
                    (
                        StatusCode::from_u16(status).unwrap(),
                        [(header::LOCATION, to)],
                    )
                        .into_response()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn no_client_makes_a_token_request_follow_a_redirect() {
    let (target, received) = sink().await;
    let endpoint = redirecting(target).await;
    let following = OAuthHttpClient::from_reqwest(
        // An application's client that follows redirects (reqwest's default).
        reqwest::Client::builder()
            .tls_certs_only(Vec::<reqwest::Certificate>::new())
            .build()
            .unwrap(),
    );
    let secrets = ["the-client-secret", "the-code", "the-refresh-token"];
    for (name, http) in [
        ("default client", OAuthHttpClient::new().unwrap()),
        ("redirect-following client", following),
    ] {
        for method in [ClientAuthMethod::Basic, ClientAuthMethod::RequestBody] {
            for status in [301, 302, 303, 307, 308] {
                let client = StandardOAuthClient::builder(
                    "id",
                    endpoint.join("/authorize").unwrap().as_str(),
                    endpoint.join(&status.to_string()).unwrap().as_str(),
                )
                .client_secret(secrets[0])
                .auth_method(method)
                .http_client(http.clone())
                .build()
                .unwrap();
                let exchanged = client
                    .exchange_code(&SecretString::from(secrets[1].to_owned()), &flow())
                    .await;
                let refreshed = client
                    .refresh(&SecretString::from(secrets[2].to_owned()), &[])
                    .await;
                for result in [exchanged, refreshed] {
                    let error = result.expect_err("a redirected token request fails");
                    assert_eq!(
                        error.kind(),
                        OAuthErrorKind::Protocol,
                        "{name} {status}: {error}"
                    );
                    assert!(error.to_string().contains("redirect"), "{error}");
                }
            }
        }
    }
    // The default client never reaches the target; a following client may
    // send it a bodyless GET (301/302/303), never the form or credentials.
    for request in received.lock().unwrap().iter() {
        assert_eq!(request.method, "GET", "{request:?}");
        assert!(request.body.is_empty(), "{request:?}");
        assert_eq!(request.authorization, None, "{request:?}");
        for secret in secrets {
            assert!(!request.body.contains(secret), "{request:?}");
        }
    }
}

/// A token endpoint whose answer has `size` bytes (a valid token response
/// padded with an extra member), with or without a `Content-Length`.
async fn large_answers() -> Url {
    fn token_of_size(size: usize) -> String {
        let head = r#"{"access_token":"big","token_type":"bearer","pad":""#;
        let tail = r#""}"#;
        format!("{head}{}{tail}", "x".repeat(size - head.len() - tail.len()))
    }
    let app = Router::new()
        .route(
            "/sized/{size}",
            post(
                |axum::extract::Path(size): axum::extract::Path<usize>| async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        token_of_size(size),
                    )
                },
            ),
        )
        .route(
            "/streamed/{size}",
            post(
                |axum::extract::Path(size): axum::extract::Path<usize>| async move {
                    let body = token_of_size(size).into_bytes();
                    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                        body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        axum::body::Body::from_stream(futures_util::stream::iter(chunks)),
                    )
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn token_responses_are_capped_at_one_mebibyte() {
    let base = large_answers().await;
    let limit = mcp_authkit_providers::http::TOKEN_RESPONSE_LIMIT;
    assert_eq!(limit, 1024 * 1024);
    for kind in ["sized", "streamed"] {
        let fits = client_at(&base, &format!("/{kind}/{limit}"))
            .exchange_code(&SecretString::from("c".to_owned()), &flow())
            .await
            .unwrap();
        assert_eq!(fits.access_token.expose_secret(), "big", "{kind}");
        let error = client_at(&base, &format!("/{kind}/{}", limit + 1))
            .exchange_code(&SecretString::from("c".to_owned()), &flow())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), OAuthErrorKind::Protocol, "{kind}: {error}");
        assert!(
            error.to_string().contains("larger than 1048576 bytes"),
            "{error}"
        );
    }
}

#[test]
fn issuer_check_follows_rfc9207() {
    let client = StandardOAuthClient::builder(
        "id",
        "https://as.example/authorize",
        "https://as.example/token",
    )
    .issuer("https://as.example")
    .build()
    .unwrap();
    assert!(client.check_issuer(Some("https://as.example")).is_ok());
    assert!(
        client.check_issuer(None).is_ok(),
        "absent iss is accepted unless required"
    );
    let error = client
        .check_issuer(Some("https://evil.example"))
        .unwrap_err();
    assert_eq!(error.kind(), OAuthErrorKind::IssuerMismatch);

    let strict = StandardOAuthClient::builder(
        "id",
        "https://as.example/authorize",
        "https://as.example/token",
    )
    .issuer("https://as.example")
    .require_issuer(true)
    .build()
    .unwrap();
    assert_eq!(
        strict.check_issuer(None).unwrap_err().kind(),
        OAuthErrorKind::IssuerMismatch
    );
    let unchecked = StandardOAuthClient::builder(
        "id",
        "https://as.example/authorize",
        "https://as.example/token",
    )
    .build()
    .unwrap();
    assert!(
        unchecked
            .check_issuer(Some("https://anything.example"))
            .is_ok()
    );

    assert!(
        StandardOAuthClient::builder(
            "id",
            "https://as.example/authorize",
            "https://as.example/token"
        )
        .require_issuer(true)
        .build()
        .is_err(),
        "require_issuer needs an issuer"
    );
}
