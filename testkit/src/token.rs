//! `POST /token`: the authorization code and refresh token grants, and the
//! grants without a user (`grants`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::client::ClientAuthMethod;
use crate::failure::Endpoint;
use crate::http::{OAuthFailure, Params, json, split_scopes};
use crate::requests::RecordedRequest;
use crate::server::Shared;
use crate::settings::Settings;
use crate::state::{CodeExchange, Refresh};
use crate::tokens::IssuedTokens;
use crate::{JWT_BEARER_GRANT, TOKEN_EXCHANGE_GRANT, client_auth, grants};

pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = Params::parse(&body);
    let grant = match params.single("grant_type") {
        Ok(Some("authorization_code")) => Some(Endpoint::AuthorizationCodeGrant),
        Ok(Some("refresh_token")) => Some(Endpoint::RefreshTokenGrant),
        Ok(Some("client_credentials")) => Some(Endpoint::ClientCredentialsGrant),
        Ok(Some(JWT_BEARER_GRANT)) => Some(Endpoint::JwtBearerGrant),
        Ok(Some(TOKEN_EXCHANGE_GRANT)) => Some(Endpoint::TokenExchangeGrant),
        _ => None,
    };
    let failure = shared.begin(
        RecordedRequest::new(Endpoint::Token, &method, &uri, &headers)
            .grant(grant)
            .form(&params),
    );
    if let Some(answer) = shared.injected_json_failure(failure).await {
        return answer;
    }
    match grant_tokens(&shared, &headers, &params) {
        Ok(body) => json(StatusCode::OK, &body),
        Err(failure) => failure.into_response(),
    }
}

fn grant_tokens(
    shared: &Shared,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Value, OAuthFailure> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE)
        && !content_type
            .to_str()
            .unwrap_or("")
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    {
        return Err(OAuthFailure::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let single = |name| params.single(name).map_err(OAuthFailure::repeated);
    let grant_type = single("grant_type")?
        .ok_or_else(|| OAuthFailure::invalid_request("grant_type is missing"))?;
    let credentials = client_auth::parse(headers, params)?;
    let mut state = shared.lock();
    if !state
        .settings
        .grant_types_supported
        .iter()
        .any(|g| g == grant_type)
    {
        return Err(OAuthFailure::new(
            "unsupported_grant_type",
            format!(
                "grant_type {grant_type:?} is not supported; this server offers {}",
                state.settings.grant_types_supported.join(", ")
            ),
        ));
    }
    if state.settings.require_client_id_in_body && single("client_id")?.is_none() {
        // Word for word what the MCP Python SDK answers.
        return Err(OAuthFailure::invalid_client("Missing client_id"));
    }
    let endpoint = shared.endpoint("/token");
    let client = client_auth::authenticate(shared, &mut state, &credentials, endpoint.as_str())
        .map_err(|mut failure| {
            failure.basic_challenge = credentials.method == ClientAuthMethod::ClientSecretBasic;
            failure
        })?;
    let issued = match grant_type {
        "authorization_code" => state.exchange_code(CodeExchange {
            client_id: &credentials.client_id,
            code: single("code")?
                .ok_or_else(|| OAuthFailure::invalid_request("code is missing"))?,
            redirect_uri: single("redirect_uri")?,
            verifier: single("code_verifier")?,
            resources: params.all("resource"),
        })?,
        "refresh_token" => state.refresh(Refresh {
            client_id: &credentials.client_id,
            refresh_token: single("refresh_token")?
                .ok_or_else(|| OAuthFailure::invalid_request("refresh_token is missing"))?,
            scopes: single("scope")?.map(split_scopes),
            resources: params.all("resource"),
        })?,
        "client_credentials" => grants::client_credentials(&mut state, &client, params)?,
        JWT_BEARER_GRANT => grants::jwt_bearer(shared, &mut state, &client, params)?,
        TOKEN_EXCHANGE_GRANT => return grants::token_exchange(shared, &mut state, &client, params),
        other => {
            return Err(OAuthFailure::new(
                "unsupported_grant_type",
                format!("grant_type {other:?} is advertised but this server does not implement it"),
            ));
        }
    };
    Ok(token_response(&state.settings, issued))
}

/// RFC 6749 section 5.1.
fn token_response(settings: &Settings, issued: IssuedTokens) -> Value {
    let mut body = Map::new();
    body.insert("access_token".into(), issued.access_token.into());
    body.insert("token_type".into(), settings.token_type.clone().into());
    if settings.send_expires_in {
        body.insert("expires_in".into(), issued.expires_in.as_secs().into());
    }
    if let Some(refresh_token) = issued.refresh_token {
        body.insert("refresh_token".into(), refresh_token.into());
    }
    if !issued.info.scopes.is_empty() {
        body.insert("scope".into(), issued.info.scopes.join(" ").into());
    }
    for (name, value) in &settings.extra_token_fields {
        body.insert(name.clone(), value.clone());
    }
    Value::Object(body)
}
