//! The one token-request layer both sides share: the server side's
//! [`StandardOAuthClient`](crate::standard::StandardOAuthClient) and every
//! client-side provider send their token (and revocation) requests here.
//!
//! - **Built by the `oauth2` crate where it has the grant**:
//!   `authorization_code`, `refresh_token` and `client_credentials`. It has
//!   no RFC 7523 `jwt-bearer` grant, no RFC 8693 token exchange, no
//!   `private_key_jwt` client authentication, and refuses a revocation
//!   endpoint that is not https (loopback development servers are not);
//!   those requests are built here, with the same form encoding and client
//!   authentication rules (`client_assertion` goes through the `oauth2`
//!   requests as extra parameters).
//! - **One transport**: [`send_token_request`] for every request, whatever
//!   HTTP client the application configured: no redirect is followed or
//!   accepted, at most [`TOKEN_RESPONSE_LIMIT`](crate::http::TOKEN_RESPONSE_LIMIT)
//!   bytes are read.
//! - **One reading of the answer**: [`WireTokenResponse`] (lenient where
//!   servers differ: `expires_in` as a string, a missing `token_type`,
//!   GitHub's comma-separated scopes and its `200` with an `error`).
//! - **One classification**: [`classify`] turns every failure into an
//!   [`OAuthErrorKind`]: the error code when the server sent one (GitHub's
//!   names for a dead grant are `invalid_grant`), transient for network
//!   failures, timeouts, `5xx` and `429` without one, protocol errors for
//!   the rest. No message ever quotes a body or a secret.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mcp_authkit_core::{
    ExposeSecret, ExtraFields, OAuthError, OAuthErrorKind, SecretString, Timestamp, TokenResponse,
};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AccessToken, AuthType, AuthorizationCode, ClientId, ClientSecret, EndpointNotSet, EndpointSet,
    PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardRevocableToken,
    TokenUrl,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::client::AssertionKey;
use crate::http::{HttpError, OAuthHttpClient, send_token_request};

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
    /// ([`AssertionKey`]).
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

    fn secret(&self) -> Result<&SecretString, OAuthError> {
        self.client_secret.as_ref().ok_or_else(|| {
            OAuthError::new(
                OAuthErrorKind::InvalidClient,
                format!(
                    "token endpoint authentication {} needs a client secret, and none is \
                     configured",
                    self.auth_method
                ),
            )
        })
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

/// What a token request asks for.
pub(crate) enum Grant<'a> {
    /// RFC 6749 section 4.1.3, with the PKCE verifier.
    AuthorizationCode {
        code: &'a SecretString,
        redirect_uri: &'a str,
        verifier: &'a SecretString,
    },
    /// RFC 6749 section 6 (no `scope`: the grant keeps what it had).
    RefreshToken(&'a SecretString),
    /// RFC 6749 section 4.4.
    ClientCredentials,
    /// RFC 7523 section 2.1: a JWT (an ID-JAG) for a token.
    JwtBearer(&'a SecretString),
    /// RFC 8693: a token of one type for a token of another.
    TokenExchange {
        subject_token: &'a SecretString,
        subject_token_type: &'a str,
        requested_token_type: &'a str,
        audience: &'a str,
    },
}

/// The RFC 7523 `jwt-bearer` grant type.
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The RFC 8693 token exchange grant type.
pub(crate) const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// One request to a token endpoint.
pub(crate) struct TokenRequest<'a> {
    /// What is being done, for errors (`"refreshing the token"`).
    pub(crate) what: &'a str,
    pub(crate) http: &'a OAuthHttpClient,
    pub(crate) endpoint: &'a str,
    /// The authorization server's issuer: the audience of client
    /// assertions (RFC 7523 section 3).
    pub(crate) issuer: &'a str,
    pub(crate) client: &'a ClientCredentials,
    /// `scope`, for the grants that take one (none: not sent).
    pub(crate) scopes: &'a [String],
    /// Other parameters (`resource` ...).
    pub(crate) extra: Vec<(&'static str, String)>,
    /// The time client assertions are issued at.
    pub(crate) now: Timestamp,
}

type Oauth2Client = oauth2::Client<
    BasicErrorResponse,
    WireTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

impl TokenRequest<'_> {
    /// Sends the request for `grant` and reads the token response.
    pub(crate) async fn send(self, grant: Grant<'_>) -> Result<TokenResponse, OAuthError> {
        let http = ObservedHttp::new(self.http);
        let params = self.params()?;
        let result = match grant {
            Grant::JwtBearer(assertion) => {
                let mut form = vec![
                    ("grant_type", JWT_BEARER.to_owned()),
                    ("assertion", assertion.expose_secret().to_owned()),
                ];
                form.extend(self.scope_param());
                self.send_form(&http, form, params).await
            }
            Grant::TokenExchange {
                subject_token,
                subject_token_type,
                requested_token_type,
                audience,
            } => {
                let mut form = vec![
                    ("grant_type", TOKEN_EXCHANGE.to_owned()),
                    ("requested_token_type", requested_token_type.to_owned()),
                    ("subject_token", subject_token.expose_secret().to_owned()),
                    ("subject_token_type", subject_token_type.to_owned()),
                    ("audience", audience.to_owned()),
                ];
                form.extend(self.scope_param());
                self.send_form(&http, form, params).await
            }
            covered => self.send_with_oauth2(&http, covered, params).await,
        };
        result
            .and_then(WireTokenResponse::into_core)
            .map_err(|failure| classify(self.what, http.status(), failure))
    }

    /// RFC 7009: revokes `token` at `endpoint`.
    pub(crate) async fn revoke(
        self,
        token: &SecretString,
        hint: &'static str,
    ) -> Result<(), OAuthError> {
        let http = ObservedHttp::new(self.http);
        let params = self.params()?;
        let form = vec![
            ("token", token.expose_secret().to_owned()),
            ("token_type_hint", hint.to_owned()),
        ];
        let request = self.form_request(form, params)?;
        let outcome = match oauth2::AsyncHttpClient::call(&http, request).await {
            Err(error) => Err(Failure::Http(error)),
            Ok(response) if response.status() == http::StatusCode::OK => Ok(()),
            Ok(response) => Err(error_answer(response.body())),
        };
        outcome.map_err(|failure| classify(self.what, http.status(), failure))
    }

    fn scope_param(&self) -> Option<(&'static str, String)> {
        (!self.scopes.is_empty()).then(|| ("scope", self.scopes.join(" ")))
    }

    /// The parameters every request carries besides the grant's: the
    /// extra ones, `client_id` in the body next to Basic (RFC 6749 section
    /// 2.3.1 allows it, and servers built on the MCP Python SDK, FastMCP
    /// too, refuse a token request without it), and a fresh client
    /// assertion for `private_key_jwt`.
    fn params(&self) -> Result<Vec<(&'static str, String)>, OAuthError> {
        let mut params = self.extra.clone();
        let client = self.client;
        match client.auth_method {
            TokenEndpointAuthMethod::ClientSecretBasic if client.client_secret.is_some() => {
                params.push(("client_id", client.client_id.clone()));
            }
            TokenEndpointAuthMethod::PrivateKeyJwt => {
                let key = client.key.as_ref().ok_or_else(|| {
                    OAuthError::new(
                        OAuthErrorKind::InvalidClient,
                        "private_key_jwt needs a key, and none is configured",
                    )
                })?;
                let assertion = key.sign(&client.client_id, self.issuer, self.now)?;
                params.push(("client_assertion_type", CLIENT_ASSERTION_TYPE.to_owned()));
                params.push(("client_assertion", assertion));
            }
            _ => {}
        }
        Ok(params)
    }

    /// The `oauth2` crate's client for this endpoint and client.
    fn oauth2_client(&self) -> Result<Oauth2Client, OAuthError> {
        let token_url = TokenUrl::new(self.endpoint.to_owned()).map_err(|e| {
            OAuthError::new(
                OAuthErrorKind::Protocol,
                format!("{}: the token endpoint is not a URL ({e})", self.what),
            )
        })?;
        let client = self.client;
        let mut oauth2 = oauth2::Client::new(ClientId::new(client.client_id.clone()))
            .set_token_uri(token_url)
            .set_auth_type(match client.auth_method {
                TokenEndpointAuthMethod::ClientSecretBasic => AuthType::BasicAuth,
                _ => AuthType::RequestBody,
            });
        if matches!(
            client.auth_method,
            TokenEndpointAuthMethod::ClientSecretBasic | TokenEndpointAuthMethod::ClientSecretPost
        ) {
            let secret = client.secret()?.expose_secret().to_owned();
            oauth2 = oauth2.set_client_secret(ClientSecret::new(secret));
        }
        Ok(oauth2)
    }

    async fn send_with_oauth2(
        &self,
        http: &ObservedHttp<'_>,
        grant: Grant<'_>,
        params: Vec<(&'static str, String)>,
    ) -> Result<WireTokenResponse, Failure> {
        let client = self.oauth2_client().map_err(Failure::Config)?;
        // The requests of the three grants are different types with the
        // same `add_extra_param`.
        macro_rules! with_params {
            ($request:expr) => {{
                let mut request = $request;
                for (name, value) in params {
                    request = request.add_extra_param(name, value);
                }
                request.request_async(http).await
            }};
        }
        let result = match grant {
            Grant::AuthorizationCode {
                code,
                redirect_uri,
                verifier,
            } => {
                let redirect = RedirectUrl::new(redirect_uri.to_owned()).map_err(|e| {
                    Failure::Unreadable(format!("the flow's redirect URI is not a URL ({e})"))
                })?;
                with_params!(
                    client
                        .exchange_code(AuthorizationCode::new(code.expose_secret().to_owned()))
                        .set_pkce_verifier(PkceCodeVerifier::new(
                            verifier.expose_secret().to_owned()
                        ))
                        .set_redirect_uri(Cow::Owned(redirect))
                )
            }
            Grant::RefreshToken(token) => {
                let token = RefreshToken::new(token.expose_secret().to_owned());
                with_params!(client.exchange_refresh_token(&token))
            }
            Grant::ClientCredentials => with_params!(
                client
                    .exchange_client_credentials()
                    .add_scopes(self.scopes.iter().cloned().map(Scope::new))
            ),
            Grant::JwtBearer(_) | Grant::TokenExchange { .. } => {
                unreachable!("built by send_form")
            }
        };
        result.map_err(Failure::from)
    }

    /// Sends a grant `oauth2` does not have, authenticated the way it
    /// authenticates the others.
    async fn send_form(
        &self,
        http: &ObservedHttp<'_>,
        form: Vec<(&'static str, String)>,
        params: Vec<(&'static str, String)>,
    ) -> Result<WireTokenResponse, Failure> {
        let request = self.form_request(form, params).map_err(Failure::Config)?;
        let response = oauth2::AsyncHttpClient::call(http, request)
            .await
            .map_err(Failure::Http)?;
        read_token_answer(&response)
    }

    /// A form POST with the client's authentication: Basic, or `client_id`
    /// (and `client_secret`) in the body, as `oauth2` sends them.
    fn form_request(
        &self,
        mut form: Vec<(&'static str, String)>,
        params: Vec<(&'static str, String)>,
    ) -> Result<oauth2::HttpRequest, OAuthError> {
        let client = self.client;
        let mut builder = http::Request::builder()
            .method(http::Method::POST)
            .uri(self.endpoint)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        match client.auth_method {
            TokenEndpointAuthMethod::ClientSecretBasic => {
                // Both parts form-urlencoded first (RFC 6749 section 2.3.1).
                let user = form_encode(&client.client_id);
                let password = form_encode(client.secret()?.expose_secret());
                let basic = STANDARD.encode(format!("{user}:{password}"));
                builder = builder.header(http::header::AUTHORIZATION, format!("Basic {basic}"));
            }
            TokenEndpointAuthMethod::ClientSecretPost => {
                form.push(("client_id", client.client_id.clone()));
                form.push(("client_secret", client.secret()?.expose_secret().to_owned()));
            }
            _ => form.push(("client_id", client.client_id.clone())),
        }
        form.extend(params);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        builder.body(body.into_bytes()).map_err(|e| {
            OAuthError::new(
                OAuthErrorKind::Protocol,
                format!("{}: the request could not be built ({e})", self.what),
            )
        })
    }
}

fn form_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Why a token request failed, before it is classified.
pub(crate) enum Failure {
    /// The server answered an OAuth error.
    Server {
        code: String,
        description: Option<String>,
    },
    /// Below OAuth: transport, redirect, size.
    Http(HttpError),
    /// The answer is not what OAuth says it should be (never quoted).
    Unreadable(String),
    /// The request could not be made as configured.
    Config(OAuthError),
}

impl From<RequestTokenError<HttpError, BasicErrorResponse>> for Failure {
    fn from(error: RequestTokenError<HttpError, BasicErrorResponse>) -> Self {
        match error {
            RequestTokenError::ServerResponse(response) => Failure::Server {
                code: response.error().as_ref().to_owned(),
                description: response.error_description().cloned(),
            },
            RequestTokenError::Request(error) => Failure::Http(error),
            // The body is never quoted back: it may hold a token.
            RequestTokenError::Parse(error, _body) => {
                not_a_token_response(&error.path().to_string())
            }
            RequestTokenError::Other(reason) => Failure::Unreadable(reason),
        }
    }
}

/// The one classification of token request failures.
pub(crate) fn classify(what: &str, status: Option<u16>, failure: Failure) -> OAuthError {
    let with_status = |error: OAuthError| match status {
        Some(status) => error.with_status(status),
        None => error,
    };
    match failure {
        Failure::Server { code, description } => match code.as_str() {
            // GitHub's names for a dead code or refresh token: the grant is
            // gone, which is what invalid_grant means.
            "bad_verification_code" | "bad_refresh_token" => OAuthError::from_response(
                status,
                "invalid_grant",
                Some(&format!(
                    "{code}: {}",
                    description.as_deref().unwrap_or("the grant is invalid")
                )),
            ),
            _ => OAuthError::from_response(status, &code, description.as_deref()),
        },
        Failure::Http(error @ HttpError::Redirected { .. }) => {
            with_status(error.into_oauth_error(what))
        }
        Failure::Http(error) => error.into_oauth_error(what),
        Failure::Unreadable(reason) => {
            let kind = if status.is_some_and(|s| s >= 500 || s == 429) {
                OAuthErrorKind::Transient
            } else {
                OAuthErrorKind::Protocol
            };
            let mut message = format!("{what}: {reason}");
            if let Some(status) = status {
                message.push_str(&format!(" (HTTP {status})"));
            }
            with_status(OAuthError::new(kind, message))
        }
        Failure::Config(error) => error,
    }
}

/// A token endpoint's answer to a request `oauth2` did not build, read the
/// way `oauth2` reads the others: `200` and JSON, else an OAuth error.
fn read_token_answer(response: &oauth2::HttpResponse) -> Result<WireTokenResponse, Failure> {
    if response.status() != http::StatusCode::OK {
        return Err(error_answer(response.body()));
    }
    if let Some(content_type) = response.headers().get(http::header::CONTENT_TYPE)
        && !content_type
            .to_str()
            .unwrap_or("")
            .to_ascii_lowercase()
            .starts_with("application/json")
    {
        return Err(Failure::Unreadable(
            "the answer is not JSON (Content-Type)".to_owned(),
        ));
    }
    let mut json = serde_json::Deserializer::from_slice(response.body());
    serde_path_to_error::deserialize(&mut json)
        .map_err(|error| not_a_token_response(&error.path().to_string()))
}

/// A token response that does not parse, saying where when that is one of
/// its standard members: any other path is the server's text (a member
/// name), which is never quoted.
fn not_a_token_response(path: &str) -> Failure {
    const MEMBERS: &[&str] = &[
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "scope",
    ];
    match MEMBERS.iter().find(|m| **m == path) {
        Some(member) => Failure::Unreadable(format!(
            "the answer is not a valid token response (at {member})"
        )),
        None => Failure::Unreadable("the answer is not a valid token response".to_owned()),
    }
}

/// An error answer (RFC 6749 section 5.2), or why it is not one.
fn error_answer(body: &[u8]) -> Failure {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
        #[serde(default)]
        error_description: Option<String>,
    }
    if body.is_empty() {
        return Failure::Unreadable("the server answered with an empty error".to_owned());
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(error) => Failure::Server {
            code: error.error,
            description: error.error_description,
        },
        Err(_) => Failure::Unreadable("the answer is not an OAuth error".to_owned()),
    }
}

/// The HTTP client of one token request: [`send_token_request`] through
/// the configured client, remembering the status (the `oauth2` crate drops
/// it, and classification needs it), and turning a `200` that carries an
/// OAuth `error` (GitHub's way) into a `400`.
struct ObservedHttp<'a> {
    http: &'a OAuthHttpClient,
    status: Mutex<Option<u16>>,
}

impl<'a> ObservedHttp<'a> {
    fn new(http: &'a OAuthHttpClient) -> Self {
        ObservedHttp {
            http,
            status: Mutex::new(None),
        }
    }

    fn status(&self) -> Option<u16> {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<'c> oauth2::AsyncHttpClient<'c> for ObservedHttp<'_> {
    type Error = HttpError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send + 'c>,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let mut response = match send_token_request(self.http.reqwest(), request).await {
                Ok(response) => response,
                Err(error) => {
                    if let HttpError::Redirected { status } = &error {
                        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(*status);
                    }
                    return Err(error);
                }
            };
            if response.status() == http::StatusCode::OK && is_error_body(response.body()) {
                *response.status_mut() = http::StatusCode::BAD_REQUEST;
            }
            *self.status.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(response.status().as_u16());
            Ok(response)
        })
    }
}

/// A JSON object with `error` and without `access_token`.
fn is_error_body(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        error: Option<Value>,
        access_token: Option<Value>,
    }
    serde_json::from_slice::<Probe>(body)
        .is_ok_and(|probe| probe.error.is_some() && probe.access_token.is_none())
}

/// A successful token response (RFC 6749 section 5.1), read leniently
/// where servers differ.
#[derive(Deserialize, Serialize)]
pub(crate) struct WireTokenResponse {
    access_token: AccessToken,
    #[serde(
        default = "bearer",
        deserialize_with = "token_type_from",
        serialize_with = "token_type_to"
    )]
    token_type: BasicTokenType,
    #[serde(
        default,
        deserialize_with = "seconds_from",
        skip_serializing_if = "Option::is_none"
    )]
    expires_in: Option<u64>,
    #[serde(
        default,
        deserialize_with = "refresh_token_from",
        skip_serializing_if = "Option::is_none"
    )]
    refresh_token: Option<RefreshToken>,
    #[serde(
        default,
        rename = "scope",
        deserialize_with = "scopes_from",
        skip_serializing_if = "Option::is_none"
    )]
    scopes: Option<Vec<Scope>>,
    #[serde(flatten)]
    extra: serde_json::Map<String, Value>,
}

impl fmt::Debug for WireTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values of extra fields may be credentials (an id_token): names only.
        f.debug_struct("WireTokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("extra", &self.extra.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl oauth2::TokenResponse for WireTokenResponse {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }

    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.map(Duration::from_secs)
    }

    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scopes.as_ref()
    }
}

impl WireTokenResponse {
    /// As core's token response: `expires_in` relative (made absolute when
    /// stored), extra fields as strings.
    fn into_core(self) -> Result<TokenResponse, Failure> {
        let access_token = self.access_token.into_secret();
        if access_token.is_empty() {
            return Err(Failure::Unreadable(
                "the token response has an empty access_token".to_owned(),
            ));
        }
        let mut core = TokenResponse::new(access_token);
        if let Some(refresh_token) = self.refresh_token {
            core = core.with_refresh_token(refresh_token.into_secret());
        }
        if let Some(seconds) = self.expires_in {
            core = core.with_expires_in(Duration::from_secs(seconds));
        }
        if let Some(scopes) = self.scopes {
            core = core.with_scopes(scopes.into_iter().map(|s| s.to_string()).collect());
        }
        core.token_type = match self.token_type {
            BasicTokenType::Bearer => "Bearer".to_owned(),
            BasicTokenType::Mac => "MAC".to_owned(),
            BasicTokenType::Extension(other) => other,
        };
        let mut extra = ExtraFields::default();
        for (name, value) in self.extra {
            match value {
                Value::String(text) => extra.insert(name, text),
                Value::Null => {}
                other => extra.insert(name, other.to_string()),
            }
        }
        core.extra = extra;
        Ok(core)
    }
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

fn token_type_from<'de, D: Deserializer<'de>>(d: D) -> Result<BasicTokenType, D::Error> {
    let name = String::deserialize(d)?;
    Ok(if name.eq_ignore_ascii_case("bearer") {
        BasicTokenType::Bearer
    } else if name.eq_ignore_ascii_case("mac") {
        BasicTokenType::Mac
    } else {
        BasicTokenType::Extension(name)
    })
}

fn token_type_to<S: Serializer>(token_type: &BasicTokenType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(token_type.as_ref())
}

/// Seconds as a number or a numeric string; anything else (negative, not
/// a number) is no expiry.
fn seconds_from<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let seconds = match Value::deserialize(d)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    Ok(seconds
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| s as u64))
}

fn refresh_token_from<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RefreshToken>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(token) if !token.is_empty() => Ok(Some(RefreshToken::new(token))),
        _ => Ok(None),
    }
}

/// Space-delimited (RFC 6749); GitHub separates with commas.
fn scopes_from<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Scope>>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(scope) => Some(
            scope
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|s| !s.is_empty())
                .map(|s| Scope::new(s.to_owned()))
                .collect(),
        ),
        _ => None,
    })
}

/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): how a
/// token endpoint's answer is read and classified, as plain functions. Not
/// a stable API.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use super::*;

    /// What the layer makes of an answer with `status`, `content_type` and
    /// `body`: the token response's type, refresh token, lifetime and
    /// scopes, or the classified error's message.
    #[allow(clippy::type_complexity)]
    pub fn read_answer(
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(String, bool, Option<Duration>, Option<Vec<String>>), String> {
        let mut response = http::Response::builder().status(status);
        if let Some(content_type) = content_type {
            response = response.header(http::header::CONTENT_TYPE, content_type);
        }
        let Ok(mut response) = response.body(body.to_vec()) else {
            return Err("not an HTTP response".to_owned());
        };
        // As the transport hands answers over.
        if response.status() == http::StatusCode::OK && is_error_body(response.body()) {
            *response.status_mut() = http::StatusCode::BAD_REQUEST;
        }
        let status = response.status().as_u16();
        read_token_answer(&response)
            .and_then(WireTokenResponse::into_core)
            .map(|token| {
                (
                    token.token_type,
                    token.refresh_token.is_some(),
                    token.expires_in,
                    token.scopes,
                )
            })
            .map_err(|failure| classify("fuzzing", Some(status), failure).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &str) -> Result<TokenResponse, Failure> {
        let response = http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec())
            .unwrap();
        read_token_answer(&response).and_then(WireTokenResponse::into_core)
    }

    #[test]
    fn token_responses_are_read_leniently_where_servers_differ() {
        let response = read(
            r#"{"access_token": "at", "token_type": "bearer", "expires_in": "120",
                "refresh_token": "rt", "scope": "a  b,c", "id_token": "x.y.z", "n": 5,
                "gone": null}"#,
        )
        .ok()
        .unwrap();
        assert_eq!(response.expires_in, Some(Duration::from_secs(120)));
        assert_eq!(
            response.scopes,
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
        assert!(response.refresh_token.is_some());
        assert_eq!(response.token_type, "Bearer");
        assert_eq!(response.extra.len(), 2);
        let bare = read(r#"{"access_token": "at", "refresh_token": "", "expires_in": -5}"#)
            .ok()
            .unwrap();
        assert_eq!(bare.token_type, "Bearer", "absent means Bearer");
        assert!(bare.refresh_token.is_none() && bare.expires_in.is_none());
        let dpop = read(r#"{"access_token": "at", "token_type": "DPoP"}"#)
            .ok()
            .unwrap();
        assert_eq!(dpop.token_type, "DPoP");
    }

    #[test]
    fn broken_token_responses_are_refused_without_quoting_them() {
        for body in [
            r#"{"token_type": "Bearer"}"#,
            r#"{"access_token": ""}"#,
            r#"{"access_token": "secret-at", "token_type": 5}"#,
            r#"{"access_token": "secret-at", "refresh_token": 5}"#,
            "not json",
        ] {
            let Err(Failure::Unreadable(reason)) = read(body) else {
                panic!("{body} accepted");
            };
            assert!(!reason.contains("secret-at"), "{reason}");
        }
    }

    #[test]
    fn member_names_of_a_broken_answer_are_never_quoted() {
        // Found by the token_answer fuzz target: the parser's path is a
        // member name, which is the server's text.
        let Err(Failure::Unreadable(reason)) = read(r#"{"a":"x","secret-in-a-name":"}"#) else {
            panic!("accepted");
        };
        assert!(!reason.contains("secret-in-a-name"), "{reason}");
        let Err(Failure::Unreadable(reason)) = read(r#"{"access_token": 5}"#) else {
            panic!("accepted");
        };
        assert!(reason.contains("at access_token"), "{reason}");
    }

    #[test]
    fn error_bodies_are_recognised() {
        assert!(is_error_body(br#"{"error":"bad_verification_code"}"#));
        assert!(!is_error_body(
            br#"{"access_token":"x","token_type":"bearer"}"#
        ));
        assert!(!is_error_body(b"not json"));
        assert!(matches!(
            error_answer(br#"{"error":"invalid_grant","error_description":"gone"}"#),
            Failure::Server { code, description: Some(_) } if code == "invalid_grant"
        ));
        assert!(matches!(error_answer(b""), Failure::Unreadable(_)));
        assert!(matches!(error_answer(b"<html>"), Failure::Unreadable(_)));
    }

    #[test]
    fn classification() {
        let kind = |status: Option<u16>, failure: Failure| classify("x", status, failure).kind();
        let server = |code: &str| Failure::Server {
            code: code.to_owned(),
            description: None,
        };
        assert_eq!(
            kind(Some(400), server("invalid_grant")),
            OAuthErrorKind::InvalidGrant
        );
        assert_eq!(
            kind(Some(400), server("bad_refresh_token")),
            OAuthErrorKind::InvalidGrant
        );
        assert_eq!(
            kind(Some(401), server("invalid_client")),
            OAuthErrorKind::InvalidClient
        );
        assert_eq!(
            kind(Some(503), Failure::Unreadable("x".into())),
            OAuthErrorKind::Transient
        );
        assert_eq!(
            kind(Some(429), Failure::Unreadable("x".into())),
            OAuthErrorKind::Transient
        );
        assert_eq!(
            kind(Some(404), Failure::Unreadable("x".into())),
            OAuthErrorKind::Protocol
        );
        assert_eq!(
            kind(
                Some(307),
                Failure::Http(HttpError::Redirected { status: 307 })
            ),
            OAuthErrorKind::Protocol
        );
        assert_eq!(
            kind(None, Failure::Http(HttpError::BodyTooLarge { limit: 1 })),
            OAuthErrorKind::Protocol
        );
    }
}
