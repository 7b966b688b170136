//! The client side's token requests go through the layer the server side
//! uses: whatever HTTP client the application passes, no redirect carries
//! a request (and its credentials) on, no answer over 1 MiB is read, and
//! failures are classified the same way (GitHub's 200 with an error too).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use mcp_authkit_core::OAuthErrorKind;
use mcp_authkit_providers::client::{
    ClientAuthError, ClientCredentialsProvider, PreRegisteredClient,
};
use mcp_authkit_providers::http::OAuthHttpClient;
use mcp_authkit_testkit::{ClientAuthMethod, Endpoint, TestAuthServer};

use crate::client_credentials::{SECRET, register_secret_client};
use crate::support::World;

/// A token endpoint that misbehaves, and how often it was asked.
async fn odd_token_endpoint(answer: Odd, real: url::Url) -> (String, Arc<AtomicUsize>) {
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let app = Router::new().route(
        "/token",
        post(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let real = real.to_string();
            async move {
                match answer {
                    // Where a client that follows redirects would re-send
                    // the form, secret included.
                    Odd::Redirect => {
                        (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, real)]).into_response()
                    }
                    Odd::Huge => (
                        [(header::CONTENT_TYPE, "application/json")],
                        format!(
                            r#"{{"access_token":"{}","token_type":"Bearer"}}"#,
                            "x".repeat(2 * 1024 * 1024)
                        ),
                    )
                        .into_response(),
                    Odd::ErrorWith200 => (
                        [(header::CONTENT_TYPE, "application/json")],
                        r#"{"error":"invalid_client","error_description":"suspended"}"#,
                    )
                        .into_response(),
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, asked)
}

#[derive(Clone, Copy)]
enum Odd {
    Redirect,
    Huge,
    ErrorWith200,
}

/// A machine client of a world whose authorization server's metadata names
/// the odd token endpoint, over an HTTP client that follows redirects.
async fn refused_by(answer: Odd) -> (ClientAuthError, World, Arc<AtomicUsize>) {
    let world = World::with(TestAuthServer::builder()).await;
    register_secret_client(&world, ClientAuthMethod::ClientSecretBasic);
    let (odd, asked) = odd_token_endpoint(answer, world.auth.token_endpoint()).await;
    world
        .auth
        .set_metadata_patch(move |doc| doc["token_endpoint"] = odd.clone().into());
    let careless = OAuthHttpClient::from_reqwest(reqwest::Client::new());
    let provider = ClientCredentialsProvider::builder(
        &world.mcp_url,
        PreRegisteredClient::confidential("bot", SECRET),
    )
    .store(world.store.clone())
    .http_client(careless)
    .build()
    .unwrap();
    let error = world.whoami(&provider).await.unwrap_err().auth();
    (error, world, asked)
}

#[tokio::test]
async fn a_redirecting_token_endpoint_never_gets_the_credentials_forwarded() {
    let (error, world, asked) = refused_by(Odd::Redirect).await;
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!(
        world.auth.hits(Endpoint::Token),
        0,
        "the secret never reached the redirect target"
    );
    let oauth = error.oauth_error().expect("an OAuth error");
    assert_eq!(oauth.kind(), OAuthErrorKind::Protocol, "{error}");
    assert!(error.to_string().contains("redirect"), "{error}");
}

#[tokio::test]
async fn a_token_answer_over_one_mebibyte_is_refused() {
    let (error, _world, _) = refused_by(Odd::Huge).await;
    let oauth = error.oauth_error().expect("an OAuth error");
    assert_eq!(oauth.kind(), OAuthErrorKind::Protocol, "{error}");
    assert!(
        error.to_string().contains("larger than 1048576 bytes"),
        "{error}"
    );
}

#[tokio::test]
async fn an_error_sent_with_200_is_classified_as_the_error_it_is() {
    let (error, _world, _) = refused_by(Odd::ErrorWith200).await;
    let oauth = error.oauth_error().expect("an OAuth error");
    assert_eq!(oauth.kind(), OAuthErrorKind::InvalidClient, "{error}");
    assert!(error.to_string().contains("suspended"), "{error}");
}
