//! Servers of the 2025-03-26 specification: no Protected Resource Metadata;
//! authorization server metadata on the MCP server's origin, or its default
//! `/authorize`, `/token` and `/register`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::RawQuery;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use mcp_authkit_providers::client::{AuthChallenge, AuthProvider, ClientAuthError};
use mcp_authkit_testkit::{
    AuthServerHandle, Endpoint, IssParameter, ResourceMetadataFault, TestAuthServer,
};
use serde_json::json;

use crate::support::World;

/// How the 2025-03-26 server publishes its authorization server.
#[derive(Clone, Copy, PartialEq)]
enum Legacy {
    /// Metadata at its origin, naming the test server's endpoints.
    Metadata,
    /// Metadata at its origin naming an issuer on another origin.
    ForeignIssuer,
    /// No metadata: its own `/authorize`, `/token` and `/register`, relayed
    /// to the test server.
    DefaultEndpoints,
}

/// A world whose MCP server publishes no resource metadata, and how many
/// times its origin's authorization server metadata was asked for.
async fn legacy_world(legacy: Legacy) -> (World, Arc<AtomicUsize>) {
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    // The test server's `iss` would name its own origin, not the MCP
    // server's, which is the issuer here.
    let builder = TestAuthServer::builder().settings(|s| s.iss_parameter = IssParameter::Omitted);
    let world = World::with_routes(builder, move |base, auth| {
        legacy_routes(legacy, base, auth, counter)
    })
    .await;
    world.resource.update_settings(|s| {
        s.serve_path_metadata = false;
        s.serve_root_metadata = false;
        s.resource_metadata_in_challenge = false;
    });
    (world, asked)
}

fn legacy_routes(
    legacy: Legacy,
    base: &str,
    auth: &AuthServerHandle,
    asked: Arc<AtomicUsize>,
) -> Router {
    let issuer = match legacy {
        Legacy::ForeignIssuer => auth.issuer().to_owned(),
        _ => base.to_owned(),
    };
    let document = json!({
        "issuer": issuer,
        "authorization_endpoint": auth.authorization_endpoint().as_str(),
        "token_endpoint": auth.token_endpoint().as_str(),
        "registration_endpoint": auth.registration_endpoint().as_str(),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
    });
    let serve = legacy != Legacy::DefaultEndpoints;
    let router = Router::new().route(
        "/.well-known/oauth-authorization-server",
        get(move || async move {
            asked.fetch_add(1, Ordering::SeqCst);
            if serve {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    document.to_string(),
                )
                    .into_response()
            } else {
                StatusCode::NOT_FOUND.into_response()
            }
        }),
    );
    if legacy != Legacy::DefaultEndpoints {
        return router;
    }
    let authorize = auth.authorization_endpoint();
    let token = auth.token_endpoint();
    let register = auth.registration_endpoint();
    router
        .route(
            "/authorize",
            get(move |RawQuery(query): RawQuery| async move {
                let mut target = authorize.clone();
                target.set_query(query.as_deref());
                Redirect::to(target.as_str())
            }),
        )
        .route(
            "/token",
            post(move |headers: HeaderMap, body: Bytes| relay(token.clone(), headers, body)),
        )
        .route(
            "/register",
            post(move |headers: HeaderMap, body: Bytes| relay(register.clone(), headers, body)),
        )
}

/// Forwards a POST to the test server, as a server that is its own
/// authorization server would answer it.
async fn relay(url: url::Url, headers: HeaderMap, body: Bytes) -> Response {
    let mut request = reqwest::Client::new().post(url).body(body);
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION, header::ACCEPT] {
        if let Some(value) = headers.get(&name) {
            request = request.header(name, value);
        }
    }
    let answer = request.send().await.expect("the test server answers");
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    let content_type = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(header::HeaderValue::from_static("application/json"));
    let body = answer.bytes().await.unwrap();
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

#[tokio::test]
async fn a_server_without_resource_metadata_is_found_through_metadata_on_its_origin() {
    let (world, asked) = legacy_world(Legacy::Metadata).await;
    let provider = world.provider().build().unwrap();
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    // The token is for the MCP server, as RFC 8707 asks.
    assert_eq!(provider.resource().as_deref(), Some(world.mcp_url.as_str()));
    let authorize = world.auth.last_request(Endpoint::Authorize).unwrap();
    assert_eq!(authorize.param("resource"), Some(world.mcp_url.as_str()));
    // A restarted client reads what discovery found back.
    let restarted = world.provider().build().unwrap();
    assert_eq!(world.whoami(&restarted).await.unwrap(), "test-user []");
    assert_eq!(asked.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_server_without_any_metadata_is_reached_at_its_default_endpoints() {
    let (world, asked) = legacy_world(Legacy::DefaultEndpoints).await;
    let provider = world.provider().build().unwrap();
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
    assert_eq!(asked.load(Ordering::SeqCst), 1, "metadata was looked for");
    // Registration, authorization and the token through the MCP server's
    // own /register, /authorize and /token.
    for endpoint in [
        Endpoint::Registration,
        Endpoint::Authorize,
        Endpoint::AuthorizationCodeGrant,
    ] {
        assert_eq!(world.auth.hits(endpoint), 1, "{endpoint:?}");
    }
    let origin = world.mcp_url.trim_end_matches("/mcp");
    assert_eq!(provider.issuer().as_deref(), Some(origin));
}

#[tokio::test]
async fn the_fallback_can_be_refused() {
    let (world, asked) = legacy_world(Legacy::Metadata).await;
    let provider = world
        .provider()
        .allow_2025_03_26_fallback(false)
        .build()
        .unwrap();
    let error = world.whoami(&provider).await.unwrap_err().auth();
    assert!(
        error
            .to_string()
            .contains("publishes no Protected Resource Metadata")
            && error.to_string().contains("turned off"),
        "{error}"
    );
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 0);
}

#[tokio::test]
async fn the_fallback_never_applies_when_resource_metadata_exists() {
    // Published, but for another resource: an error, not a 2025-03-26
    // server.
    let (world, asked) = legacy_world(Legacy::Metadata).await;
    world.resource.update_settings(|s| {
        s.serve_path_metadata = true;
        s.metadata_fault = Some(ResourceMetadataFault::WrongResource);
    });
    let provider = world.provider().build().unwrap();
    let error = world.whoami(&provider).await.unwrap_err().auth();
    assert!(
        matches!(error, ClientAuthError::ResourceMismatch { .. }),
        "{error:?}"
    );
    assert_eq!(asked.load(Ordering::SeqCst), 0);

    // Named in the challenge, though absent there: the server is not a
    // 2025-03-26 one either.
    let (world, asked) = legacy_world(Legacy::Metadata).await;
    let provider = world.provider().build().unwrap();
    let challenge = AuthChallenge::new(Some(&format!(
        r#"Bearer resource_metadata="{}""#,
        world.resource.metadata_url()
    )));
    let error = provider.handle_unauthorized(&challenge).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("publishes no Protected Resource Metadata"),
        "{error}"
    );
    assert_eq!(asked.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn metadata_on_the_origin_must_name_an_issuer_there() {
    let (world, asked) = legacy_world(Legacy::ForeignIssuer).await;
    let provider = world.provider().build().unwrap();
    let error = world.whoami(&provider).await.unwrap_err().auth();
    assert!(
        error
            .to_string()
            .contains("is not on the MCP server's origin"),
        "{error}"
    );
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 0);
}
