//! `POST /token`: the authorization code and refresh token grants.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use crate::client::ClientAuthMethod;
use crate::failure::Endpoint;
use crate::http::{OAuthFailure, Params, json, split_scopes};
use crate::requests::RecordedRequest;
use crate::server::Shared;
use crate::settings::Settings;
use crate::state::{CodeExchange, Refresh};
use crate::tokens::IssuedTokens;

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
        _ => None,
    };
    let failure = shared.begin(
        RecordedRequest::new(Endpoint::Token, &method, &uri, &headers)
            .grant(grant)
            .form(&params),
    );
    match shared.run_failure(failure).await {
        Ok(None) => {}
        Ok(Some(error)) => return OAuthFailure::new(&error, "injected failure").into_response(),
        Err(response) => return response,
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
    let credentials = client_credentials(headers, params)?;
    let mut state = shared.lock();
    if state.settings.require_client_id_in_body && single("client_id")?.is_none() {
        // Word for word what the MCP Python SDK answers.
        return Err(OAuthFailure::invalid_client("Missing client_id"));
    }
    state
        .authenticate(
            &credentials.client_id,
            credentials.method,
            credentials.secret.as_deref(),
        )
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
        other => {
            return Err(OAuthFailure::new(
                "unsupported_grant_type",
                format!(
                    "grant_type {other:?} is not supported; use authorization_code or refresh_token"
                ),
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

struct Credentials {
    client_id: String,
    method: ClientAuthMethod,
    secret: Option<String>,
}

/// Which client this is and how it authenticated (RFC 6749 section 2.3.1:
/// one method per request).
fn client_credentials(headers: &HeaderMap, params: &Params) -> Result<Credentials, OAuthFailure> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => Some(parse_basic(value.to_str().unwrap_or(""))?),
    };
    let body_id = params.single("client_id").map_err(OAuthFailure::repeated)?;
    let body_secret = params
        .single("client_secret")
        .map_err(OAuthFailure::repeated)?;
    match (basic, body_secret) {
        (Some(_), Some(_)) => Err(OAuthFailure::invalid_request(
            "the client authenticated twice: HTTP Basic and client_secret in the body",
        )),
        (Some((client_id, secret)), None) => {
            if body_id.is_some_and(|id| id != client_id) {
                return Err(OAuthFailure::invalid_request(
                    "client_id in the body differs from the one in HTTP Basic",
                ));
            }
            Ok(Credentials {
                client_id,
                method: ClientAuthMethod::ClientSecretBasic,
                secret: Some(secret),
            })
        }
        (None, Some(secret)) => Ok(Credentials {
            client_id: body_id
                .ok_or_else(|| {
                    OAuthFailure::invalid_request("client_secret sent without client_id")
                })?
                .to_owned(),
            method: ClientAuthMethod::ClientSecretPost,
            secret: Some(secret.to_owned()),
        }),
        (None, None) => Ok(Credentials {
            client_id: body_id
                .ok_or_else(|| {
                    OAuthFailure::invalid_client(
                        "no client authentication: send client_id (public client) or credentials",
                    )
                })?
                .to_owned(),
            method: ClientAuthMethod::None,
            secret: None,
        }),
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`.
fn parse_basic(value: &str) -> Result<(String, String), OAuthFailure> {
    let invalid = |why: &str| {
        let mut failure =
            OAuthFailure::invalid_client(format!("bad HTTP Basic credentials: {why}"));
        failure.basic_challenge = true;
        failure
    };
    let (scheme, encoded) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(invalid("the Authorization scheme must be Basic"));
    }
    let decoded = STANDARD
        .decode(encoded.trim())
        .map_err(|_| invalid("not base64"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid("not UTF-8"))?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(|| invalid("no ':' between id and secret"))?;
    Ok((form_decode(id), form_decode(secret)))
}

/// `application/x-www-form-urlencoded` decoding of one value.
fn form_decode(value: &str) -> String {
    url::form_urlencoded::parse(
        format!("v={}", value.replace('&', "%26").replace('=', "%3D")).as_bytes(),
    )
    .next()
    .map(|(_, v)| v.into_owned())
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let header = format!("Basic {}", STANDARD.encode("my%20client:s%3Acret+x"));
        let (id, secret) = parse_basic(&header).unwrap();
        assert_eq!(id, "my client");
        assert_eq!(secret, "s:cret x");
    }

    #[test]
    fn bad_basic_credentials_are_invalid_client_with_a_challenge() {
        let failure = parse_basic("Basic !!!").unwrap_err();
        assert_eq!(failure.error, "invalid_client");
        assert!(failure.basic_challenge);
        assert!(parse_basic("Bearer abc").is_err());
    }
}
