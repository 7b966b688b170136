//! `POST /revoke`: RFC 7009 token revocation.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::client_auth;
use crate::failure::Endpoint;
use crate::http::{OAuthFailure, Params, json, plain_status};
use crate::requests::RecordedRequest;
use crate::server::Shared;

/// Revokes an access or refresh token of the authenticated client (a
/// refresh token takes the access tokens of its authorization with it).
/// An unknown token is `200`, as RFC 7009 section 2.2 says; another
/// client's token is refused.
pub(crate) async fn revoke(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = Params::parse(&body);
    let failure = shared
        .begin(RecordedRequest::new(Endpoint::Revocation, &method, &uri, &headers).form(&params));
    if !shared.lock().settings.revocation {
        return plain_status(
            StatusCode::NOT_FOUND,
            "revocation is disabled on this server",
        );
    }
    if let Some(answer) = shared.injected_json_failure(failure).await {
        return answer;
    }
    match revoke_token(&shared, &headers, &params) {
        Ok(()) => json(StatusCode::OK, &json!({})),
        Err(failure) => failure.into_response(),
    }
}

fn revoke_token(shared: &Shared, headers: &HeaderMap, params: &Params) -> Result<(), OAuthFailure> {
    let token = params
        .single("token")
        .map_err(OAuthFailure::repeated)?
        .ok_or_else(|| OAuthFailure::invalid_request("token is missing"))?;
    let credentials = client_auth::parse(headers, params)?;
    let endpoint = shared.endpoint("/revoke");
    let mut state = shared.lock();
    client_auth::authenticate(shared, &mut state, &credentials, endpoint.as_str())?;
    state.revoke_for_client(token, &credentials.client_id)?;
    Ok(())
}
