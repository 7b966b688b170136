//! Token validation over HTTP: RFC 7662 introspection, a bearer-protected
//! userinfo endpoint, and the (empty) key set.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::failure::Endpoint;
use crate::http::{OAuthFailure, Params, json, plain_status};
use crate::requests::RecordedRequest;
use crate::server::Shared;

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `POST /introspect`. Callers need no authentication: this is a test
/// server on loopback.
pub(crate) async fn introspect(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = Params::parse(&body);
    let failure = shared.begin(
        RecordedRequest::new(Endpoint::Introspection, &method, &uri, &headers).form(&params),
    );
    if !shared.lock().settings.introspection {
        return plain_status(
            StatusCode::NOT_FOUND,
            "introspection is disabled on this server",
        );
    }
    if let Some(answer) = shared.injected_json_failure(failure).await {
        return answer;
    }
    let token = match params.single("token") {
        Ok(Some(token)) => token,
        Ok(None) => return OAuthFailure::invalid_request("token is missing").into_response(),
        Err(repeated) => return OAuthFailure::repeated(repeated).into_response(),
    };
    let state = shared.lock();
    let body = if let Some(info) = state.introspect(token) {
        json!({
            "active": true,
            "token_type": "Bearer",
            "client_id": info.client_id,
            "sub": info.subject,
            "scope": info.scopes.join(" "),
            "aud": info.resources,
            "iat": unix(info.issued_at),
            "exp": unix(info.expires_at),
            "iss": shared.issuer,
        })
    } else if let Some((grant, expires_at)) = state.refresh_token_grant(token) {
        let mut body = json!({
            "active": true,
            "token_type": "refresh_token",
            "client_id": grant.client_id,
            "sub": grant.subject,
            "scope": grant.scopes.join(" "),
            "aud": grant.resources,
            "iss": shared.issuer,
        });
        if let Some(at) = expires_at {
            body["exp"] = unix(at).into();
        }
        body
    } else {
        json!({ "active": false })
    };
    json(StatusCode::OK, &body)
}

/// `GET /userinfo`: a stand-in for a third-party API that needs a valid
/// bearer token.
pub(crate) async fn userinfo(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let failure = shared.begin(RecordedRequest::new(
        Endpoint::Userinfo,
        &method,
        &uri,
        &headers,
    ));
    if let Some(answer) = shared.injected_json_failure(failure).await {
        return answer;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let challenge = match token {
        None => "Bearer realm=\"mcp-authkit-testkit\"",
        Some(token) => match shared.lock().introspect(token) {
            Some(info) => {
                return json(
                    StatusCode::OK,
                    &json!({
                        "sub": info.subject,
                        "client_id": info.client_id,
                        "scope": info.scopes.join(" "),
                    }),
                );
            }
            None => {
                "Bearer error=\"invalid_token\", error_description=\"unknown, expired or revoked\""
            }
        },
    };
    let mut response = plain_status(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// `GET /jwks`: the public key the server signs ID tokens and ID-JAGs with.
pub(crate) async fn jwks(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let failure = shared.begin(RecordedRequest::new(
        Endpoint::Jwks,
        &method,
        &uri,
        &headers,
    ));
    match shared.run_failure(failure).await {
        Ok(None) => json(
            StatusCode::OK,
            &json!({ "keys": [shared.signing_key.public_jwk()] }),
        ),
        Ok(Some(error)) => OAuthFailure::new(&error, "injected failure").into_response(),
        Err(response) => response,
    }
}
