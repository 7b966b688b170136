//! The OAuth exchange with a discovered authorization server: core's
//! [`OAuthClient`] for one (authorization server, client, resource).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mcp_authkit_core::{
    AuthorizationRequest, Clock, ExposeSecret, ExtraFields, OAuthClient, OAuthError,
    OAuthErrorKind, PendingFlow, SecretString, TokenResponse,
};
use reqwest::header::{ACCEPT, AUTHORIZATION};
use serde_json::Value;
use url::Url;

use crate::client::assertion::AssertionKey;
use crate::client::discovery::AuthorizationServerMetadata;
use crate::client::fetch::{BodyError, Fetcher, read_limited};
use crate::client::identity::{FLOW_CLIENT_ID, Identity};

/// The RFC 7523 `client_assertion_type` of `private_key_jwt`.
pub(crate) const CLIENT_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How the client authenticates at the token endpoint
/// (`token_endpoint_auth_method`, RFC 7591 section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenEndpointAuthMethod {
    /// A public client: `client_id` in the form body, no secret.
    None,
    /// HTTP Basic with the client id and secret.
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// An RFC 7523 client assertion signed with the client's private key
    /// ([`AssertionKey`](crate::client::AssertionKey)).
    PrivateKeyJwt,
}

impl TokenEndpointAuthMethod {
    /// The RFC 7591 name.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenEndpointAuthMethod::None => "none",
            TokenEndpointAuthMethod::ClientSecretBasic => "client_secret_basic",
            TokenEndpointAuthMethod::ClientSecretPost => "client_secret_post",
            TokenEndpointAuthMethod::PrivateKeyJwt => "private_key_jwt",
        }
    }

    /// The method with this RFC 7591 name, if this client supports it.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "none" => Some(TokenEndpointAuthMethod::None),
            "client_secret_basic" => Some(TokenEndpointAuthMethod::ClientSecretBasic),
            "client_secret_post" => Some(TokenEndpointAuthMethod::ClientSecretPost),
            "private_key_jwt" => Some(TokenEndpointAuthMethod::PrivateKeyJwt),
            _ => None,
        }
    }

    /// The method to use with a secret (or without one) at a server with
    /// `metadata`: `none` without a secret; with one, `client_secret_basic`
    /// unless only `client_secret_post` is advertised.
    pub(crate) fn choose(
        metadata: &AuthorizationServerMetadata,
        has_secret: bool,
    ) -> TokenEndpointAuthMethod {
        if !has_secret {
            TokenEndpointAuthMethod::None
        } else if !metadata.supports_auth_method("client_secret_basic")
            && metadata.supports_auth_method("client_secret_post")
        {
            TokenEndpointAuthMethod::ClientSecretPost
        } else {
            TokenEndpointAuthMethod::ClientSecretBasic
        }
    }
}

impl fmt::Display for TokenEndpointAuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client's identity at one authorization server.
#[derive(Clone)]
pub(crate) struct ClientCredentials {
    pub(crate) client_id: String,
    pub(crate) client_secret: Option<SecretString>,
    pub(crate) auth_method: TokenEndpointAuthMethod,
    /// For `private_key_jwt`.
    pub(crate) key: Option<Arc<AssertionKey>>,
}

impl ClientCredentials {
    /// A client that authenticates with a secret (or none, when `secret`
    /// is `None` and `auth_method` is `none`).
    pub(crate) fn with_secret(
        client_id: String,
        client_secret: Option<SecretString>,
        auth_method: TokenEndpointAuthMethod,
    ) -> Self {
        ClientCredentials {
            client_id,
            client_secret,
            auth_method,
            key: None,
        }
    }

    /// A client that authenticates with `private_key_jwt`.
    pub(crate) fn with_key(client_id: String, key: AssertionKey) -> Self {
        ClientCredentials {
            client_id,
            client_secret: None,
            auth_method: TokenEndpointAuthMethod::PrivateKeyJwt,
            key: Some(Arc::new(key)),
        }
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("auth_method", &self.auth_method)
            .field("key", &self.key)
            .finish()
    }
}

/// The OAuth client for one authorization server, client and resource.
pub(crate) struct ServerClient {
    pub(crate) fetcher: Fetcher,
    pub(crate) metadata: Arc<AuthorizationServerMetadata>,
    pub(crate) identity: Arc<Identity>,
    /// The RFC 8707 `resource` of every authorize, token and refresh request.
    pub(crate) resource: String,
    pub(crate) clock: Arc<dyn Clock>,
}

/// Sends a form to an endpoint of the authorization server `issuer`,
/// authenticated as `credentials`: the token and revocation endpoints.
pub(crate) async fn post_form(
    fetcher: &Fetcher,
    issuer: &str,
    what: &'static str,
    url: &str,
    credentials: &ClientCredentials,
    mut form: Vec<(&'static str, String)>,
    now: mcp_authkit_core::Timestamp,
) -> Result<(u16, Vec<u8>), OAuthError> {
    let mut request = fetcher
        .client()
        .post(url)
        .header(ACCEPT, "application/json");
    match credentials.auth_method {
        TokenEndpointAuthMethod::None => {
            form.push(("client_id", credentials.client_id.clone()));
        }
        TokenEndpointAuthMethod::ClientSecretPost => {
            form.push(("client_id", credentials.client_id.clone()));
            form.push(("client_secret", secret_of(credentials)?));
        }
        TokenEndpointAuthMethod::ClientSecretBasic => {
            // RFC 6749 section 2.3.1 lets client_id go in the body next
            // to Basic, and servers built on the MCP Python SDK (FastMCP
            // too) refuse a token request without it there.
            form.push(("client_id", credentials.client_id.clone()));
            // Both parts form-urlencoded first (section 2.3.1 again).
            let user = form_encode(&credentials.client_id);
            let password = form_encode(&secret_of(credentials)?);
            let basic = STANDARD.encode(format!("{user}:{password}"));
            request = request.header(AUTHORIZATION, format!("Basic {basic}"));
        }
        TokenEndpointAuthMethod::PrivateKeyJwt => {
            let key = credentials.key.as_ref().ok_or_else(|| {
                OAuthError::new(
                    OAuthErrorKind::InvalidClient,
                    "private_key_jwt needs a key, and none is configured",
                )
            })?;
            // RFC 7523 section 3: the audience is the authorization
            // server, named by its issuer identifier.
            let assertion = key.sign(&credentials.client_id, issuer, now)?;
            form.push(("client_id", credentials.client_id.clone()));
            form.push(("client_assertion_type", CLIENT_ASSERTION_TYPE.to_owned()));
            form.push(("client_assertion", assertion));
        }
    }
    let response = request.form(&form).send().await.map_err(|e| {
        OAuthError::transport(
            format!("{what}: the authorization server could not be reached"),
            e.without_url(),
        )
    })?;
    let status = response.status().as_u16();
    if response.status().is_redirection() {
        return Err(OAuthError::new(
                OAuthErrorKind::Protocol,
                format!("{what}: the authorization server answered a redirect (HTTP {status}), which is never followed"),
            )
            .with_status(status));
    }
    let body = read_limited(response).await.map_err(|e| match e {
        BodyError::Transport(e) => OAuthError::transport(
            format!("{what}: reading the answer failed"),
            e.without_url(),
        ),
        BodyError::TooLarge => OAuthError::new(
            OAuthErrorKind::Protocol,
            format!("{what}: the answer is too large"),
        )
        .with_status(status),
    })?;
    Ok((status, body))
}

/// The OAuth error of a failed answer (RFC 6749 section 5.2), classified.
pub(crate) fn error_answer(what: &str, status: u16, body: &[u8]) -> OAuthError {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let code = json
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_str);
    let description = json
        .as_ref()
        .and_then(|v| v.get("error_description"))
        .and_then(Value::as_str);
    match code {
        Some(code) => OAuthError::from_response(Some(status), code, description),
        None if status >= 500 || status == 429 => OAuthError::new(
            OAuthErrorKind::Transient,
            format!("{what}: the authorization server answered HTTP {status}"),
        )
        .with_status(status),
        None => OAuthError::new(
            OAuthErrorKind::Protocol,
            format!(
                "{what}: the authorization server answered HTTP {status} without an OAuth error"
            ),
        )
        .with_status(status),
    }
}

/// A token endpoint answer: the token response, or its error.
pub(crate) fn token_answer(
    what: &str,
    status: u16,
    body: &[u8],
) -> Result<TokenResponse, OAuthError> {
    if !(200..300).contains(&status) {
        return Err(error_answer(what, status, body));
    }
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let Some(Value::Object(fields)) = json else {
        return Err(OAuthError::new(
            OAuthErrorKind::Protocol,
            format!("{what}: the token response is not a JSON object"),
        )
        .with_status(status));
    };
    parse_token_response(fields).map_err(|reason| {
        OAuthError::new(OAuthErrorKind::Protocol, format!("{what}: {reason}")).with_status(status)
    })
}

impl ServerClient {
    async fn token_request(
        &self,
        what: &'static str,
        credentials: &ClientCredentials,
        mut form: Vec<(&'static str, String)>,
    ) -> Result<TokenResponse, OAuthError> {
        form.push(("resource", self.resource.clone()));
        let (status, body) = post_form(
            &self.fetcher,
            &self.metadata.issuer,
            what,
            &self.metadata.token_endpoint,
            credentials,
            form,
            self.clock.now(),
        )
        .await?;
        token_answer(what, status, &body)
    }

    /// Revokes `token` (RFC 7009) with the client's current credentials.
    pub(crate) async fn revoke(
        &self,
        endpoint: &str,
        token: &SecretString,
        hint: &'static str,
    ) -> Result<(), OAuthError> {
        let credentials = self.identity.for_refresh().await?;
        let (status, body) = post_form(
            &self.fetcher,
            &self.metadata.issuer,
            "revoking the token",
            endpoint,
            &credentials,
            vec![
                ("token", token.expose_secret().to_owned()),
                ("token_type_hint", hint.to_owned()),
            ],
            self.clock.now(),
        )
        .await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(error_answer("revoking the token", status, &body))
        }
    }
}
fn secret_of(credentials: &ClientCredentials) -> Result<String, OAuthError> {
    credentials
        .client_secret
        .as_ref()
        .map(|s| s.expose_secret().to_owned())
        .ok_or_else(|| {
            OAuthError::new(
                OAuthErrorKind::InvalidClient,
                format!(
                    "token endpoint authentication {} needs a client secret, and none is configured",
                    credentials.auth_method
                ),
            )
        })
}

fn form_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A successful token response (RFC 6749 section 5.1). Only bearer tokens
/// are accepted: a DPoP or MAC token sent as a bearer would not work.
fn parse_token_response(
    mut fields: serde_json::Map<String, Value>,
) -> Result<TokenResponse, String> {
    let access_token = match fields.remove("access_token") {
        Some(Value::String(token)) if !token.is_empty() => token,
        _ => return Err("the token response has no access_token".to_owned()),
    };
    let token_type = match fields.remove("token_type") {
        Some(Value::String(kind)) => kind,
        None => "Bearer".to_owned(),
        Some(_) => return Err("the token response's token_type is not a string".to_owned()),
    };
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(format!(
            "the token type is {token_type:?}; only Bearer tokens are supported"
        ));
    }
    let mut response = TokenResponse::new(access_token);
    match fields.remove("refresh_token") {
        Some(Value::String(token)) if !token.is_empty() => {
            response = response.with_refresh_token(token);
        }
        Some(Value::Null) | None => {}
        Some(_) => return Err("the token response's refresh_token is not a string".to_owned()),
    }
    let expires_in = match fields.remove("expires_in") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    if let Some(seconds) = expires_in.filter(|s| s.is_finite() && *s >= 0.0) {
        response = response.with_expires_in(Duration::from_secs(seconds as u64));
    }
    if let Some(Value::String(scope)) = fields.remove("scope") {
        response = response.with_scopes(scope.split_whitespace().map(str::to_owned).collect());
    }
    let mut extra = ExtraFields::default();
    for (name, value) in fields {
        match value {
            Value::String(text) => extra.insert(name, text),
            Value::Null => {}
            other => extra.insert(name, other.to_string()),
        }
    }
    response.extra = extra;
    Ok(response)
}

#[async_trait]
impl OAuthClient for ServerClient {
    fn authorization_url(&self, request: &AuthorizationRequest<'_>) -> Result<Url, OAuthError> {
        // The client the flow was started for (a public identifier).
        let client_id = request
            .attributes
            .get(FLOW_CLIENT_ID)
            .cloned()
            .or_else(|| self.identity.client_id())
            .ok_or_else(|| {
                OAuthError::new(
                    OAuthErrorKind::InvalidClient,
                    "no client identity is known for this authorization server; sign in again",
                )
            })?;
        let mut url = Url::parse(&self.metadata.authorization_endpoint).map_err(|e| {
            OAuthError::new(
                OAuthErrorKind::Protocol,
                format!("the authorization endpoint is not a URL ({e})"),
            )
        })?;
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &client_id)
                .append_pair("redirect_uri", request.redirect_uri)
                .append_pair("state", request.state.as_str())
                .append_pair("code_challenge", request.pkce_challenge)
                .append_pair("code_challenge_method", "S256")
                .append_pair("resource", &self.resource);
            if !request.scopes.is_empty() {
                query.append_pair("scope", &request.scopes.join(" "));
            }
        }
        Ok(url)
    }

    async fn exchange_code(
        &self,
        code: &SecretString,
        flow: &PendingFlow,
    ) -> Result<TokenResponse, OAuthError> {
        let client_id = flow.attributes.get(FLOW_CLIENT_ID).map(String::as_str);
        let credentials = self.identity.for_code_exchange(client_id).await?;
        self.token_request(
            "exchanging the authorization code",
            &credentials,
            vec![
                ("grant_type", "authorization_code".to_owned()),
                ("code", code.expose_secret().to_owned()),
                ("redirect_uri", flow.redirect_uri.clone()),
                (
                    "code_verifier",
                    flow.pkce_verifier.expose_secret().to_owned(),
                ),
            ],
        )
        .await
    }

    async fn refresh(
        &self,
        refresh_token: &SecretString,
        _scopes: &[String],
    ) -> Result<TokenResponse, OAuthError> {
        // No `scope`: the refreshed grant keeps what was granted, and a
        // narrowed grant is not widened by asking (that needs the user).
        let credentials = self.identity.for_refresh().await?;
        self.token_request(
            "refreshing the token",
            &credentials,
            vec![
                ("grant_type", "refresh_token".to_owned()),
                ("refresh_token", refresh_token.expose_secret().to_owned()),
            ],
        )
        .await
    }

    fn supports_refresh(&self) -> bool {
        // A dynamic registration is looked up when the refresh happens.
        true
    }

    fn check_issuer(&self, iss: Option<&str>) -> Result<(), OAuthError> {
        match iss {
            Some(iss) if iss == self.metadata.issuer => Ok(()),
            Some(iss) => Err(OAuthError::new(
                OAuthErrorKind::IssuerMismatch,
                format!(
                    "the authorization response comes from issuer {:?}, not from {} (RFC 9207): \
                     a possible mix-up attack, the code was not used",
                    crate::client::error::cap(iss),
                    self.metadata.issuer
                ),
            )),
            None if self.metadata.requires_iss() => Err(OAuthError::new(
                OAuthErrorKind::IssuerMismatch,
                format!(
                    "the authorization response has no iss parameter, but {} promises one \
                     (RFC 9207): the code was not used",
                    self.metadata.issuer
                ),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> serde_json::Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn token_responses() {
        let response = parse_token_response(fields(json!({
            "access_token": "at", "token_type": "bearer", "expires_in": "120",
            "refresh_token": "rt", "scope": "a  b", "id_token": "x.y.z", "n": 5
        })))
        .unwrap();
        assert_eq!(response.expires_in, Some(Duration::from_secs(120)));
        assert_eq!(response.scopes, Some(vec!["a".into(), "b".into()]));
        assert!(response.refresh_token.is_some());
        assert_eq!(response.extra.len(), 2);
        assert!(parse_token_response(fields(json!({"token_type": "Bearer"}))).is_err());
        let dpop =
            parse_token_response(fields(json!({"access_token": "at", "token_type": "DPoP"})));
        assert!(dpop.unwrap_err().contains("only Bearer"));
    }

    #[test]
    fn auth_method_choice() {
        let metadata = |methods: Option<Vec<&str>>| -> AuthorizationServerMetadata {
            serde_json::from_value(json!({
                "issuer": "https://as", "authorization_endpoint": "https://as/a",
                "token_endpoint": "https://as/t",
                "token_endpoint_auth_methods_supported": methods,
            }))
            .unwrap()
        };
        let choose = |methods: Option<Vec<&str>>, secret| {
            TokenEndpointAuthMethod::choose(&metadata(methods), secret).as_str()
        };
        assert_eq!(choose(None, true), "client_secret_basic");
        assert_eq!(
            choose(Some(vec!["client_secret_post"]), true),
            "client_secret_post"
        );
        assert_eq!(
            choose(
                Some(vec!["client_secret_post", "client_secret_basic"]),
                true
            ),
            "client_secret_basic"
        );
        assert_eq!(choose(None, false), "none");

        // What a dynamic registration asks for: public when advertised.
        let requested = |methods| {
            crate::client::registration::requested_auth_method(&metadata(methods)).as_str()
        };
        // The TypeScript SDK's servers.
        assert_eq!(requested(Some(vec!["client_secret_post", "none"])), "none");
        // The Python SDK's.
        assert_eq!(
            requested(Some(vec!["client_secret_post", "client_secret_basic"])),
            "client_secret_basic"
        );
        assert_eq!(
            requested(Some(vec!["client_secret_post"])),
            "client_secret_post"
        );
        // RFC 8414: nothing advertised means client_secret_basic.
        assert_eq!(requested(None), "client_secret_basic");
    }
}
