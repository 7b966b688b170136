//! The grants without a user at the token endpoint: `client_credentials`,
//! RFC 7523 `jwt-bearer` with an ID-JAG (the MCP server's authorization
//! server in enterprise-managed authorization), and RFC 8693 token exchange
//! of an ID token for an ID-JAG (the enterprise identity provider).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::client::RegisteredClient;
use crate::client_auth::{audience_includes, check_expiry};
use crate::http::{OAuthFailure, Params, absolute_uri, split_scopes};
use crate::keys::peek;
use crate::secret::random_string;
use crate::server::Shared;
use crate::settings::Settings;
use crate::state::{Grant, State};
use crate::tokens::IssuedTokens;
use crate::{ID_JAG_JWT_TYPE, ID_JAG_TOKEN_TYPE, ID_TOKEN_TYPE};

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The scopes a grant (or an authorization) gets: `requested` (checked
/// against `scopes_supported`; the error names the unknown one), else the
/// default ones, narrowed by `grant_only`.
pub(crate) fn scopes_to_grant(
    settings: &Settings,
    requested: Vec<String>,
) -> Result<Vec<String>, String> {
    if let Some(supported) = &settings.scopes_supported
        && let Some(unknown) = requested.iter().find(|s| !supported.contains(s))
    {
        return Err(format!("scope {unknown:?} is not supported"));
    }
    let mut scopes = if requested.is_empty() {
        settings.default_scopes.clone()
    } else {
        requested
    };
    if let Some(allowed) = &settings.grant_only {
        scopes.retain(|s| allowed.contains(s));
    }
    Ok(scopes)
}

fn granted_scopes(state: &State, requested: Vec<String>) -> Result<Vec<String>, OAuthFailure> {
    scopes_to_grant(&state.settings, requested)
        .map_err(|reason| OAuthFailure::new("invalid_scope", reason))
}

/// The `resource`s of a request, each an absolute URI, required when the
/// server says so.
fn resources(state: &State, params: &Params) -> Result<Vec<String>, OAuthFailure> {
    let resources = params.all("resource");
    for resource in &resources {
        absolute_uri(resource).map_err(|reason| OAuthFailure::new("invalid_target", reason))?;
    }
    if resources.is_empty() && state.settings.require_resource {
        return Err(OAuthFailure::new(
            "invalid_target",
            "resource is required (RFC 8707): name the protected resource",
        ));
    }
    Ok(resources)
}

fn scope_param(params: &Params) -> Result<Vec<String>, OAuthFailure> {
    Ok(params
        .single("scope")
        .map_err(OAuthFailure::repeated)?
        .map(split_scopes)
        .unwrap_or_default())
}

/// `client_credentials` (RFC 6749 section 4.4): a token for the client
/// itself, which must have authenticated with a secret or a key.
pub(crate) fn client_credentials(
    state: &mut State,
    client: &RegisteredClient,
    params: &Params,
) -> Result<IssuedTokens, OAuthFailure> {
    if !client.auth_method.is_confidential() {
        return Err(OAuthFailure::new(
            "unauthorized_client",
            "a public client cannot use client_credentials: it has no credentials",
        ));
    }
    let scopes = granted_scopes(state, scope_param(params)?)?;
    let resources = resources(state, params)?;
    Ok(state.issue_without_refresh(Grant {
        client_id: client.client_id.clone(),
        subject: client.client_id.clone(),
        scopes,
        resources,
    }))
}

/// The RFC 7523 `jwt-bearer` grant with an ID-JAG: signed by a trusted
/// identity provider, typed `oauth-id-jag+jwt`, for this server (`aud`),
/// unexpired, never replayed, issued to the authenticated client, and for
/// the requested resource.
pub(crate) fn jwt_bearer(
    shared: &Shared,
    state: &mut State,
    client: &RegisteredClient,
    params: &Params,
) -> Result<IssuedTokens, OAuthFailure> {
    let refused = |reason: String| OAuthFailure::invalid_grant(format!("bad ID-JAG: {reason}"));
    let assertion = params
        .single("assertion")
        .map_err(OAuthFailure::repeated)?
        .ok_or_else(|| OAuthFailure::invalid_request("assertion is missing"))?;
    let (header, unverified) =
        peek(assertion).ok_or_else(|| refused("it is not a JWT".to_owned()))?;
    if header.get("typ").and_then(Value::as_str) != Some(ID_JAG_JWT_TYPE) {
        return Err(refused(format!("its typ is not {ID_JAG_JWT_TYPE}")));
    }
    let issuer = unverified
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let key = state
        .trusted_issuers
        .get(issuer)
        .ok_or_else(|| refused(format!("its issuer {issuer:?} is not trusted")))?;
    let claims = key.verify(assertion).map_err(refused)?;
    if !audience_includes(&claims, &[&shared.issuer]) {
        return Err(refused(format!(
            "its audience is not this server ({})",
            shared.issuer
        )));
    }
    check_expiry(&claims).map_err(refused)?;
    if claims.get("client_id").and_then(Value::as_str) != Some(client.client_id.as_str()) {
        return Err(refused(
            "it was issued to another client than the one authenticating".to_owned(),
        ));
    }
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| refused("it has no sub".to_owned()))?
        .to_owned();
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .ok_or_else(|| refused("it has no jti".to_owned()))?;
    let mut resources = resources(state, params)?;
    if let Some(resource) = claims.get("resource").and_then(Value::as_str) {
        if resources.iter().any(|r| r != resource) {
            return Err(OAuthFailure::new(
                "invalid_target",
                "the requested resource is not the ID-JAG's",
            ));
        }
        resources = vec![resource.to_owned()];
    }
    let mut requested = scope_param(params)?;
    if let Some(allowed) = claims.get("scope").and_then(Value::as_str) {
        let allowed = split_scopes(allowed);
        if let Some(extra) = requested.iter().find(|s| !allowed.contains(s)) {
            return Err(OAuthFailure::new(
                "invalid_scope",
                format!("scope {extra:?} is not in the ID-JAG"),
            ));
        }
        if requested.is_empty() {
            requested = allowed;
        }
    }
    let scopes = granted_scopes(state, requested)?;
    if !state.first_use_of_jti(&format!("{issuer} {jti}")) {
        return Err(refused("its jti was already used (a replay)".to_owned()));
    }
    Ok(state.issue_without_refresh(Grant {
        client_id: client.client_id.clone(),
        subject,
        scopes,
        resources,
    }))
}

/// RFC 8693 token exchange as the enterprise identity provider: an ID
/// token this server issued to the client, for an ID-JAG addressed to the
/// `audience` authorization server. The answer is the token exchange
/// response, not an access token response.
pub(crate) fn token_exchange(
    shared: &Shared,
    state: &mut State,
    client: &RegisteredClient,
    params: &Params,
) -> Result<Value, OAuthFailure> {
    let single = |name| params.single(name).map_err(OAuthFailure::repeated);
    let requested_type = single("requested_token_type")?;
    if requested_type != Some(ID_JAG_TOKEN_TYPE) {
        return Err(OAuthFailure::invalid_request(format!(
            "requested_token_type must be {ID_JAG_TOKEN_TYPE}"
        )));
    }
    if single("subject_token_type")? != Some(ID_TOKEN_TYPE) {
        return Err(OAuthFailure::invalid_request(format!(
            "subject_token_type must be {ID_TOKEN_TYPE}"
        )));
    }
    let subject_token = single("subject_token")?
        .ok_or_else(|| OAuthFailure::invalid_request("subject_token is missing"))?;
    let audience = single("audience")?.ok_or_else(|| {
        OAuthFailure::invalid_request("audience is missing: name the authorization server")
    })?;
    let refused = |reason: String| OAuthFailure::invalid_grant(format!("bad ID token: {reason}"));
    let claims = shared
        .signing_key
        .public_key()
        .verify(subject_token)
        .map_err(refused)?;
    if claims.get("iss").and_then(Value::as_str) != Some(shared.issuer.as_str()) {
        return Err(refused("this server did not issue it".to_owned()));
    }
    check_expiry(&claims).map_err(refused)?;
    if !audience_includes(&claims, &[&client.client_id]) {
        return Err(refused("it was issued to another client".to_owned()));
    }
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| refused("it has no sub".to_owned()))?;
    let resources = resources(state, params)?;
    let scope = single("scope")?;
    let now = SystemTime::now();
    let lifetime = state.settings.id_jag_lifetime;
    let mut jag = Map::new();
    jag.insert("iss".into(), shared.issuer.clone().into());
    jag.insert("sub".into(), subject.into());
    jag.insert("aud".into(), audience.into());
    jag.insert(
        "client_id".into(),
        client
            .id_jag_client_id
            .clone()
            .unwrap_or_else(|| client.client_id.clone())
            .into(),
    );
    jag.insert("jti".into(), random_string(16).into());
    jag.insert("iat".into(), unix(now).into());
    jag.insert("exp".into(), unix(now + lifetime).into());
    if let Some(resource) = resources.first() {
        jag.insert("resource".into(), resource.clone().into());
    }
    if let Some(scope) = scope {
        jag.insert("scope".into(), scope.into());
    }
    let token = shared
        .signing_key
        .sign(Some(ID_JAG_JWT_TYPE), &Value::Object(jag));
    let mut body = json!({
        "access_token": token,
        "issued_token_type": ID_JAG_TOKEN_TYPE,
        "token_type": "N_A",
        "expires_in": lifetime.as_secs(),
    });
    if let Some(scope) = scope {
        body["scope"] = scope.into();
    }
    Ok(body)
}

/// An OpenID Connect ID token for `subject`, issued to `audience` (a client
/// id), valid for `lifetime`.
pub(crate) fn id_token(
    shared: &Shared,
    subject: &str,
    audience: &str,
    lifetime: Duration,
) -> String {
    let now = SystemTime::now();
    shared.signing_key.sign(
        None,
        &json!({
            "iss": shared.issuer,
            "sub": subject,
            "aud": audience,
            "iat": unix(now),
            "exp": unix(now + lifetime),
            "email": format!("{subject}@example.com"),
        }),
    )
}
