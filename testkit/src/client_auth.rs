//! Client authentication at the token and revocation endpoints: none,
//! `client_secret_basic`, `client_secret_post`, and RFC 7523
//! `private_key_jwt` assertions.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::CLIENT_ASSERTION_TYPE;
use crate::client::{ClientAuthMethod, RegisteredClient};
use crate::http::{OAuthFailure, Params};
use crate::keys::peek;
use crate::server::Shared;
use crate::state::State;

/// Who a request says it is, and how it proves it (RFC 6749 section
/// 2.3.1: one method per request).
pub(crate) struct Credentials {
    pub(crate) client_id: String,
    pub(crate) method: ClientAuthMethod,
    secret: Option<String>,
    assertion: Option<String>,
}

/// Reads the client's authentication from the request.
pub(crate) fn parse(headers: &HeaderMap, params: &Params) -> Result<Credentials, OAuthFailure> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => Some(parse_basic(value.to_str().unwrap_or(""))?),
    };
    let single = |name| params.single(name).map_err(OAuthFailure::repeated);
    let body_id = single("client_id")?;
    let body_secret = single("client_secret")?;
    let assertion_type = single("client_assertion_type")?;
    let assertion = single("client_assertion")?;
    if assertion_type.is_some() || assertion.is_some() {
        if basic.is_some() || body_secret.is_some() {
            return Err(OAuthFailure::invalid_request(
                "the client authenticated twice: a client assertion and a secret",
            ));
        }
        if assertion_type != Some(CLIENT_ASSERTION_TYPE) {
            return Err(OAuthFailure::invalid_client(format!(
                "client_assertion_type must be {CLIENT_ASSERTION_TYPE}"
            )));
        }
        let assertion = assertion.ok_or_else(|| {
            OAuthFailure::invalid_request("client_assertion_type sent without client_assertion")
        })?;
        // RFC 7523 section 3: the client is the assertion's subject.
        let subject = peek(assertion)
            .and_then(|(_, claims)| claims.get("sub").and_then(Value::as_str).map(str::to_owned))
            .ok_or_else(|| {
                OAuthFailure::invalid_client("the client assertion is not a JWT with a sub")
            })?;
        if body_id.is_some_and(|id| id != subject) {
            return Err(OAuthFailure::invalid_client(
                "client_id differs from the client assertion's sub",
            ));
        }
        return Ok(Credentials {
            client_id: subject,
            method: ClientAuthMethod::PrivateKeyJwt,
            secret: None,
            assertion: Some(assertion.to_owned()),
        });
    }
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
                assertion: None,
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
            assertion: None,
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
            assertion: None,
        }),
    }
}

/// Checks `credentials` against the registered client: its method, its
/// secret, or its assertion (signed by its key, `iss` and `sub` its id,
/// `aud` this server's issuer or the endpoint, unexpired, never replayed).
pub(crate) fn authenticate(
    shared: &Shared,
    state: &mut State,
    credentials: &Credentials,
    endpoint: &str,
) -> Result<RegisteredClient, OAuthFailure> {
    state.authenticate(
        &credentials.client_id,
        credentials.method,
        credentials.secret.as_deref(),
    )?;
    let client = state
        .clients
        .get(&credentials.client_id)
        .cloned()
        .expect("an authenticated client is registered");
    if let Some(assertion) = &credentials.assertion {
        let key = client.public_key.as_ref().ok_or_else(|| {
            OAuthFailure::invalid_client("the client registered no key to check assertions with")
        })?;
        let claims = key.verify(assertion).map_err(|reason| {
            OAuthFailure::invalid_client(format!("bad client assertion: {reason}"))
        })?;
        let id = credentials.client_id.as_str();
        if claims.get("iss").and_then(Value::as_str) != Some(id) {
            return Err(OAuthFailure::invalid_client(
                "bad client assertion: iss is not the client_id",
            ));
        }
        let audiences = [shared.issuer.as_str(), endpoint];
        if !audience_includes(&claims, &audiences) {
            return Err(OAuthFailure::invalid_client(format!(
                "bad client assertion: aud must name this server ({})",
                shared.issuer
            )));
        }
        check_expiry(&claims).map_err(|reason| {
            OAuthFailure::invalid_client(format!("bad client assertion: {reason}"))
        })?;
        if let Some(jti) = claims.get("jti").and_then(Value::as_str)
            && !state.first_use_of_jti(&format!("{id} {jti}"))
        {
            return Err(OAuthFailure::invalid_client(
                "bad client assertion: its jti was already used (a replay)",
            ));
        }
    }
    Ok(client)
}

/// Whether the JWT claims' `aud` (a string or an array) names one of
/// `accepted`, with or without a trailing `/`.
pub(crate) fn audience_includes(claims: &Value, accepted: &[&str]) -> bool {
    let matches = |aud: &str| {
        accepted
            .iter()
            .any(|a| a.trim_end_matches('/') == aud.trim_end_matches('/'))
    };
    match claims.get("aud") {
        Some(Value::String(aud)) => matches(aud),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(matches),
        _ => false,
    }
}

/// `exp` must be present and in the future (no leeway: a test server).
pub(crate) fn check_expiry(claims: &Value) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match claims.get("exp").and_then(Value::as_u64) {
        None => Err("it has no exp".to_owned()),
        Some(exp) if exp <= now => Err(format!("it expired {} s ago", now - exp)),
        Some(_) => Ok(()),
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
    use serde_json::json;

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

    #[test]
    fn audiences_match_as_a_string_or_in_a_list() {
        let accepted = ["http://127.0.0.1:5", "http://127.0.0.1:5/token"];
        assert!(audience_includes(
            &json!({"aud": "http://127.0.0.1:5/"}),
            &accepted
        ));
        assert!(audience_includes(
            &json!({"aud": ["x", "http://127.0.0.1:5/token"]}),
            &accepted
        ));
        assert!(!audience_includes(
            &json!({"aud": "http://127.0.0.1:6"}),
            &accepted
        ));
        assert!(!audience_includes(&json!({}), &accepted));
    }

    #[test]
    fn expiry_is_required_and_checked() {
        assert!(check_expiry(&json!({})).is_err());
        assert!(check_expiry(&json!({"exp": 1})).is_err());
        assert!(check_expiry(&json!({"exp": u64::MAX / 2})).is_ok());
    }
}
