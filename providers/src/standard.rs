//! The standard OAuth 2.0 authorization code client (GitHub, Google, Jira,
//! Entra ...), built on the `oauth2` crate: core's [`OAuthClient`] for
//! every provider that follows RFC 6749 closely enough.
//!
//! - PKCE S256 on every authorization request, with the flow's `state`.
//! - RFC 9207: when the authorization response carries `iss`, it must equal
//!   the configured issuer; [`require_issuer`](StandardOAuthClientBuilder::require_issuer)
//!   also refuses responses without one.
//! - Extra authorize parameters (`prompt`, `access_type` ...) and an RFC 8707
//!   `resource`, sent on the authorize, code and refresh requests.
//! - Every request goes through one [`OAuthHttpClient`] (custom TLS roots,
//!   proxies, timeouts) by [`send_token_request`]: whatever client it
//!   wraps, no redirect carries the request on and no redirected answer is
//!   accepted, and an answer larger than 1 MiB is refused.
//! - Every failure is classified as an [`OAuthErrorKind`]: `invalid_grant`
//!   drops the token, network errors, timeouts, 5xx and 429 are transient
//!   and never do.
//! - Provider quirks handled: GitHub answers errors with HTTP 200 and a JSON
//!   `error`, and lists granted scopes comma-separated.

use std::borrow::Cow;
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use mcp_authkit_core::{
    AuthorizationRequest, ExposeSecret, ExtraFields, OAuthClient, OAuthError, OAuthErrorKind,
    PendingFlow, SecretString, TokenResponse,
};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    StandardRevocableToken, StandardTokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::http::{HttpError, OAuthHttpClient, send_token_request};

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClientAuthMethod {
    /// HTTP Basic with the client id and secret (`client_secret_basic`),
    /// the RFC 6749 default. Public clients (no secret) send `client_id` in
    /// the body instead.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`);
    /// GitHub and some others expect this.
    RequestBody,
}

/// Why a [`StandardOAuthClient`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A URL is not an absolute URL.
    #[error("the {what} {url:?} is not a valid absolute URL: {source}")]
    InvalidUrl {
        /// Which URL (`"authorization URL"`, ...).
        what: &'static str,
        /// The URL as given.
        url: String,
        /// The parser's error.
        #[source]
        source: url::ParseError,
    },
    /// A setting is not usable.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What is wrong.
        what: &'static str,
        /// Why, and how to fix it.
        reason: String,
    },
    /// The default HTTP client could not be built (TLS backend).
    #[error("the HTTP client for OAuth requests could not be built: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// Other token response members (`id_token`, GitHub's `refresh_token_expires_in` ...),
/// kept so they reach [`TokenRecord::extra`](mcp_authkit_core::TokenRecord).
#[derive(Clone, Default, Deserialize, Serialize)]
struct OtherFields {
    #[serde(flatten)]
    fields: serde_json::Map<String, serde_json::Value>,
}

impl fmt::Debug for OtherFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be credentials (an id_token): show the names only.
        f.debug_set().entries(self.fields.keys()).finish()
    }
}

impl oauth2::ExtraTokenFields for OtherFields {}

type WireTokenResponse = StandardTokenResponse<OtherFields, BasicTokenType>;

type Oauth2Client = oauth2::Client<
    BasicErrorResponse,
    WireTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The standard OAuth 2.0 authorization code client with PKCE.
///
/// ```
/// use mcp_authkit_providers::standard::StandardOAuthClient;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let google = StandardOAuthClient::builder(
///     "my-client-id",
///     "https://accounts.google.com/o/oauth2/v2/auth",
///     "https://oauth2.googleapis.com/token",
/// )
/// .client_secret("my-client-secret")
/// .issuer("https://accounts.google.com")
/// .authorize_param("access_type", "offline")
/// .authorize_param("prompt", "consent")
/// .build()?;
/// # let _ = google;
/// # Ok(()) }
/// ```
pub struct StandardOAuthClient {
    oauth2: Oauth2Client,
    has_secret: bool,
    issuer: Option<String>,
    require_issuer: bool,
    authorize_params: Vec<(String, String)>,
    resource: Option<String>,
    http: OAuthHttpClient,
    supports_refresh: bool,
}

impl fmt::Debug for StandardOAuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandardOAuthClient")
            .field("client_id", &self.oauth2.client_id().as_str())
            .field("client_secret", &self.has_secret.then_some("[redacted]"))
            .field("authorization_url", &self.oauth2.auth_uri().as_str())
            .field("token_url", &self.oauth2.token_uri().as_str())
            .field("issuer", &self.issuer)
            .field("require_issuer", &self.require_issuer)
            .field("authorize_params", &self.authorize_params)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

/// Builds a [`StandardOAuthClient`].
pub struct StandardOAuthClientBuilder {
    client_id: String,
    client_secret: Option<SecretString>,
    authorization_url: String,
    token_url: String,
    auth_method: ClientAuthMethod,
    issuer: Option<String>,
    require_issuer: bool,
    authorize_params: Vec<(String, String)>,
    resource: Option<String>,
    http: Option<OAuthHttpClient>,
    supports_refresh: bool,
}

impl fmt::Debug for StandardOAuthClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandardOAuthClientBuilder")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("authorization_url", &self.authorization_url)
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

impl StandardOAuthClient {
    /// Starts building a client registered at an authorization server as
    /// `client_id`, with its authorization and token endpoints.
    pub fn builder(
        client_id: impl Into<String>,
        authorization_url: impl Into<String>,
        token_url: impl Into<String>,
    ) -> StandardOAuthClientBuilder {
        StandardOAuthClientBuilder {
            client_id: client_id.into(),
            client_secret: None,
            authorization_url: authorization_url.into(),
            token_url: token_url.into(),
            auth_method: ClientAuthMethod::Basic,
            issuer: None,
            require_issuer: false,
            authorize_params: Vec::new(),
            resource: None,
            http: None,
            supports_refresh: true,
        }
    }

    /// A GitHub OAuth App or GitHub App: its endpoints and
    /// `client_secret_post`.
    ///
    /// No issuer is configured, so `iss` is not checked: GitHub does not
    /// document an RFC 9207 `iss` in its authorization responses, and a
    /// guessed issuer would refuse every sign-in if GitHub sent another
    /// value. Mix-ups between providers are prevented by each provider's
    /// own redirect URI (one callback path per
    /// [`OAuthProvider`](crate::server::OAuthProvider)). Should GitHub
    /// start sending `iss`, call
    /// [`issuer`](StandardOAuthClientBuilder::issuer) with its value.
    pub fn github(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> StandardOAuthClientBuilder {
        Self::builder(
            client_id,
            "https://github.com/login/oauth/authorize",
            "https://github.com/login/oauth/access_token",
        )
        .client_secret(client_secret)
        .auth_method(ClientAuthMethod::RequestBody)
    }

    /// The issuer `iss` must equal, if configured.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    fn token_error(&self, what: &str, error: TokenRequestError, status: Option<u16>) -> OAuthError {
        let transient_status = status.is_some_and(|s| s >= 500 || s == 429);
        match error {
            // Classified by code, and by status for unknown codes (5xx, 429).
            RequestTokenError::ServerResponse(response) => {
                let code = response.error().as_ref();
                let description = response.error_description().map(String::as_str);
                match code {
                    // GitHub's names for a dead code or refresh token: the
                    // grant is gone, which is what invalid_grant means.
                    "bad_verification_code" | "bad_refresh_token" => OAuthError::from_response(
                        status,
                        "invalid_grant",
                        Some(&format!(
                            "{code}: {}",
                            description.unwrap_or("the grant is invalid")
                        )),
                    ),
                    _ => OAuthError::from_response(status, code, description),
                }
            }
            RequestTokenError::Request(error) => error.into_oauth_error(what),
            RequestTokenError::Parse(error, _body) => {
                // The body is never quoted back: it may hold a token.
                let kind = if transient_status {
                    OAuthErrorKind::Transient
                } else {
                    OAuthErrorKind::Protocol
                };
                let mut message = format!("{what}: the token endpoint's answer is not valid OAuth");
                if let Some(status) = status {
                    message.push_str(&format!(" (HTTP {status})"));
                }
                message.push_str(&format!(" at {}", error.path()));
                OAuthError::new(kind, message).with_status_opt(status)
            }
            RequestTokenError::Other(reason) => {
                let kind = if transient_status {
                    OAuthErrorKind::Transient
                } else {
                    OAuthErrorKind::Protocol
                };
                let mut message = format!("{what}: {reason}");
                if let Some(status) = status {
                    message.push_str(&format!(" (HTTP {status})"));
                }
                OAuthError::new(kind, message).with_status_opt(status)
            }
        }
    }

    fn into_core_response(response: WireTokenResponse) -> TokenResponse {
        use oauth2::TokenResponse as _;
        let mut core = TokenResponse::new(response.access_token().secret().clone());
        if let Some(refresh) = response.refresh_token() {
            core = core.with_refresh_token(refresh.secret().clone());
        }
        if let Some(expires_in) = response.expires_in() {
            core = core.with_expires_in(expires_in);
        }
        if let Some(scopes) = response.scopes() {
            core = core.with_scopes(split_scopes(scopes));
        }
        core.token_type = token_type_name(response.token_type());
        let mut extra = ExtraFields::default();
        for (name, value) in &response.extra_fields().fields {
            match value {
                serde_json::Value::String(text) => extra.insert(name.clone(), text.clone()),
                other => extra.insert(name.clone(), other.to_string()),
            }
        }
        core.extra = extra;
        core
    }

    fn finish(
        &self,
        what: &str,
        result: Result<WireTokenResponse, TokenRequestError>,
        status: Option<u16>,
    ) -> Result<TokenResponse, OAuthError> {
        result
            .map(Self::into_core_response)
            .map_err(|error| self.token_error(what, error, status))
    }
}

type TokenRequestError = RequestTokenError<HttpError, BasicErrorResponse>;

/// Space-delimited per RFC 6749; GitHub separates with commas.
fn split_scopes(scopes: &[Scope]) -> Vec<String> {
    scopes
        .iter()
        .flat_map(|scope| scope.as_str().split(','))
        .map(str::trim)
        .filter(|scope| !scope.is_empty())
        .map(str::to_owned)
        .collect()
}

fn token_type_name(token_type: &BasicTokenType) -> String {
    match token_type {
        BasicTokenType::Bearer => "Bearer".to_owned(),
        BasicTokenType::Mac => "MAC".to_owned(),
        BasicTokenType::Extension(other) => other.clone(),
    }
}

trait WithStatusOpt {
    fn with_status_opt(self, status: Option<u16>) -> Self;
}

impl WithStatusOpt for OAuthError {
    fn with_status_opt(self, status: Option<u16>) -> Self {
        match status {
            Some(status) => self.with_status(status),
            None => self,
        }
    }
}

impl StandardOAuthClientBuilder {
    /// The client secret (confidential clients).
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(SecretString::from(secret.into()));
        self
    }

    /// How to authenticate at the token endpoint. Default
    /// [`ClientAuthMethod::Basic`].
    pub fn auth_method(mut self, method: ClientAuthMethod) -> Self {
        self.auth_method = method;
        self
    }

    /// The authorization server's issuer identifier: an `iss` parameter in
    /// an authorization response must equal it (RFC 9207). Without an issuer
    /// configured, `iss` is not checked.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Also refuse authorization responses without `iss`, for servers that
    /// always send it (their metadata says
    /// `authorization_response_iss_parameter_supported: true`). Needs an
    /// [`issuer`](Self::issuer).
    pub fn require_issuer(mut self, required: bool) -> Self {
        self.require_issuer = required;
        self
    }

    /// Adds a parameter to every authorization URL (`prompt=consent`,
    /// `access_type=offline`, `audience=...`). The parameters the flow owns
    /// (`state`, `code_challenge`, `redirect_uri` ...) cannot be overridden.
    pub fn authorize_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.authorize_params.push((name.into(), value.into()));
        self
    }

    /// The RFC 8707 `resource` to request tokens for; sent on the
    /// authorization, code exchange and refresh requests.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Sends requests through this client (custom TLS roots, proxy,
    /// timeouts). Default: [`OAuthHttpClient::new`].
    pub fn http_client(mut self, http: OAuthHttpClient) -> Self {
        self.http = Some(http);
        self
    }

    /// Declares that the server issues no refresh tokens, or that they must
    /// not be used: an expired token then leads to a new authorization.
    pub fn without_refresh(mut self) -> Self {
        self.supports_refresh = false;
        self
    }

    /// Checks the settings and builds the client.
    pub fn build(self) -> Result<StandardOAuthClient, ConfigError> {
        let auth_url = AuthUrl::new(self.authorization_url.clone()).map_err(|source| {
            ConfigError::InvalidUrl {
                what: "authorization URL",
                url: self.authorization_url.clone(),
                source,
            }
        })?;
        let token_url =
            TokenUrl::new(self.token_url.clone()).map_err(|source| ConfigError::InvalidUrl {
                what: "token URL",
                url: self.token_url.clone(),
                source,
            })?;
        if self.client_id.is_empty() {
            return Err(ConfigError::Invalid {
                what: "client id",
                reason: "it is empty; use the id the provider issued to this application".into(),
            });
        }
        if self.require_issuer && self.issuer.is_none() {
            return Err(ConfigError::Invalid {
                what: "issuer check",
                reason: "require_issuer(true) needs the expected issuer: call issuer(..)".into(),
            });
        }
        for (name, _) in &self.authorize_params {
            if RESERVED_AUTHORIZE_PARAMS.contains(&name.as_str()) {
                return Err(ConfigError::Invalid {
                    what: "authorize parameter",
                    reason: format!(
                        "{name:?} is set by the flow itself and cannot be configured \
                         (use resource(..) for RFC 8707 resources)"
                    ),
                });
            }
        }
        let http = match self.http {
            Some(http) => http,
            None => OAuthHttpClient::new().map_err(ConfigError::HttpClient)?,
        };
        let mut oauth2 = oauth2::Client::new(ClientId::new(self.client_id))
            .set_auth_uri(auth_url)
            .set_token_uri(token_url)
            .set_auth_type(match self.auth_method {
                ClientAuthMethod::Basic => AuthType::BasicAuth,
                ClientAuthMethod::RequestBody => AuthType::RequestBody,
            });
        let has_secret = self.client_secret.is_some();
        if let Some(secret) = self.client_secret {
            oauth2 = oauth2.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
        }
        Ok(StandardOAuthClient {
            oauth2,
            has_secret,
            issuer: self.issuer,
            require_issuer: self.require_issuer,
            authorize_params: self.authorize_params,
            resource: self.resource,
            http,
            supports_refresh: self.supports_refresh,
        })
    }
}

const RESERVED_AUTHORIZE_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "state",
    "code_challenge",
    "code_challenge_method",
    "redirect_uri",
    "scope",
    "resource",
];

#[async_trait]
impl OAuthClient for StandardOAuthClient {
    fn authorization_url(&self, request: &AuthorizationRequest<'_>) -> Result<Url, OAuthError> {
        let redirect = RedirectUrl::new(request.redirect_uri.to_owned()).map_err(|error| {
            OAuthError::new(
                OAuthErrorKind::Protocol,
                format!("the flow's redirect URI is not a valid URL: {error}"),
            )
        })?;
        let state = request.state.as_str().to_owned();
        let mut authorize = self
            .oauth2
            .authorize_url(move || CsrfToken::new(state))
            .set_redirect_uri(Cow::Owned(redirect))
            .add_scopes(request.scopes.iter().cloned().map(Scope::new))
            .add_extra_param("code_challenge", request.pkce_challenge)
            .add_extra_param("code_challenge_method", "S256");
        if let Some(resource) = &self.resource {
            authorize = authorize.add_extra_param("resource", resource);
        }
        for (name, value) in &self.authorize_params {
            authorize = authorize.add_extra_param(name, value);
        }
        let (url, _state) = authorize.url();
        Ok(url)
    }

    async fn exchange_code(
        &self,
        code: &SecretString,
        flow: &PendingFlow,
    ) -> Result<TokenResponse, OAuthError> {
        let redirect = RedirectUrl::new(flow.redirect_uri.clone()).map_err(|error| {
            OAuthError::new(
                OAuthErrorKind::Protocol,
                format!("the flow's redirect URI is not a valid URL: {error}"),
            )
        })?;
        let code = AuthorizationCode::new(code.expose_secret().to_owned());
        let verifier = PkceCodeVerifier::new(flow.pkce_verifier.expose_secret().to_owned());
        let http = ObservedHttp::new(&self.http);
        let mut request = self
            .oauth2
            .exchange_code(code)
            .set_pkce_verifier(verifier)
            .set_redirect_uri(Cow::Owned(redirect));
        if let Some(resource) = &self.resource {
            request = request.add_extra_param("resource", resource.as_str());
        }
        let result = request.request_async(&http).await;
        self.finish("exchanging the authorization code", result, http.status())
    }

    async fn refresh(
        &self,
        refresh_token: &SecretString,
        scopes: &[String],
    ) -> Result<TokenResponse, OAuthError> {
        // Scopes are not sent: the refresh keeps the granted ones (RFC 6749
        // section 6), and some servers refuse a repeated scope list.
        let _ = scopes;
        let token = RefreshToken::new(refresh_token.expose_secret().to_owned());
        let http = ObservedHttp::new(&self.http);
        let mut request = self.oauth2.exchange_refresh_token(&token);
        if let Some(resource) = &self.resource {
            request = request.add_extra_param("resource", resource.as_str());
        }
        let result = request.request_async(&http).await;
        self.finish("refreshing the token", result, http.status())
    }

    fn supports_refresh(&self) -> bool {
        self.supports_refresh
    }

    fn check_issuer(&self, iss: Option<&str>) -> Result<(), OAuthError> {
        match (&self.issuer, iss) {
            (Some(expected), Some(iss)) if expected == iss => Ok(()),
            (Some(_), Some(_)) => Err(OAuthError::new(
                OAuthErrorKind::IssuerMismatch,
                "the authorization response came from an unexpected issuer (RFC 9207 iss \
                 mismatch); it was refused to prevent a mix-up attack",
            )),
            (Some(_), None) if self.require_issuer => Err(OAuthError::new(
                OAuthErrorKind::IssuerMismatch,
                "the authorization response carries no iss parameter, but this provider is \
                 configured to require one (RFC 9207)",
            )),
            _ => Ok(()),
        }
    }
}

/// The client's HTTP client for one token request: remembers the response
/// status (the `oauth2` crate drops it, and classification needs it), and
/// turns a `200` carrying an OAuth `error` (GitHub's way) into a `400`.
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
            let mut response = send_token_request(self.http.reqwest(), request).await?;
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
        error: Option<serde_json::Value>,
        access_token: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Probe>(body)
        .is_ok_and(|probe| probe.error.is_some() && probe.access_token.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_scopes_are_split_on_commas() {
        let scopes = vec![
            Scope::new("repo,gist".into()),
            Scope::new("read:org".into()),
        ];
        assert_eq!(split_scopes(&scopes), ["repo", "gist", "read:org"]);
    }

    #[test]
    fn error_bodies_are_recognised() {
        assert!(is_error_body(br#"{"error":"bad_verification_code"}"#));
        assert!(!is_error_body(
            br#"{"access_token":"x","token_type":"bearer"}"#
        ));
        assert!(!is_error_body(b"not json"));
    }

    #[test]
    fn reserved_parameters_cannot_be_configured() {
        let error =
            StandardOAuthClient::builder("id", "https://a.example/auth", "https://a.example/token")
                .authorize_param("state", "fixed")
                .build()
                .unwrap_err();
        assert!(error.to_string().contains("state"), "{error}");
    }

    #[test]
    fn github_checks_no_issuer_as_documented() {
        let client = StandardOAuthClient::github("id", "secret").build().unwrap();
        assert_eq!(client.issuer(), None);
        assert!(!client.require_issuer);
        assert!(client.check_issuer(None).is_ok());
        assert!(client.check_issuer(Some("https://github.com")).is_ok());
    }

    #[test]
    fn debug_hides_the_secret() {
        let client = StandardOAuthClient::github("id", "very-secret-value")
            .build()
            .unwrap();
        let printed = format!("{client:?}");
        assert!(!printed.contains("very-secret-value"), "{printed}");
        assert!(printed.contains("[redacted]"));
    }
}
