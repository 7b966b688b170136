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
//!   proxies, timeouts) by [`send_token_request`](crate::http::send_token_request):
//!   whatever client it wraps, no redirect carries the request on and no
//!   redirected answer is accepted, and an answer larger than 1 MiB is
//!   refused.
//! - Token requests go through the token-request layer the client side
//!   shares (built by the `oauth2` crate, read and classified in one place):
//!   every failure is an [`OAuthErrorKind`]: `invalid_grant` drops the
//!   token, network errors, timeouts, 5xx and 429 are transient and never
//!   do.
//! - Provider quirks handled: GitHub answers errors with HTTP 200 and a JSON
//!   `error`, and lists granted scopes comma-separated.

use std::borrow::Cow;
use std::fmt;

use async_trait::async_trait;
use mcp_authkit_core::{
    AuthorizationRequest, OAuthClient, OAuthError, OAuthErrorKind, PendingFlow, SecretString,
    TokenResponse,
};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenResponse,
};
use oauth2::{
    AuthUrl, ClientId, CsrfToken, EndpointNotSet, EndpointSet, RedirectUrl, Scope,
    StandardRevocableToken, TokenUrl,
};
use url::Url;

use crate::http::OAuthHttpClient;
use crate::token_request::{ClientCredentials, Grant, TokenEndpointAuthMethod, TokenRequest};

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

/// Builds authorization URLs; token requests go through the shared
/// token-request layer.
type Oauth2Client = oauth2::Client<
    BasicErrorResponse,
    BasicTokenResponse,
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
    /// Who the client is at the token endpoint.
    credentials: ClientCredentials,
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

    /// A token request to the configured endpoint, through the shared
    /// token-request layer (the same transport, reading and classification
    /// as the client side).
    fn token_request<'a>(&'a self, what: &'a str) -> TokenRequest<'a> {
        let mut extra = Vec::new();
        if let Some(resource) = &self.resource {
            extra.push(("resource", resource.clone()));
        }
        TokenRequest {
            what,
            http: &self.http,
            endpoint: self.oauth2.token_uri().as_str(),
            issuer: self
                .issuer
                .as_deref()
                .unwrap_or(self.oauth2.token_uri().as_str()),
            client: &self.credentials,
            scopes: &[],
            extra,
            now: mcp_authkit_core::Timestamp::now(),
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
        let oauth2 = oauth2::Client::new(ClientId::new(self.client_id.clone()))
            .set_auth_uri(auth_url)
            .set_token_uri(token_url);
        let method = match (self.auth_method, self.client_secret.is_some()) {
            (_, false) => TokenEndpointAuthMethod::None,
            (ClientAuthMethod::Basic, true) => TokenEndpointAuthMethod::ClientSecretBasic,
            (ClientAuthMethod::RequestBody, true) => TokenEndpointAuthMethod::ClientSecretPost,
        };
        let has_secret = self.client_secret.is_some();
        let credentials =
            ClientCredentials::with_secret(self.client_id, self.client_secret, method);
        Ok(StandardOAuthClient {
            oauth2,
            credentials,
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
        self.token_request("exchanging the authorization code")
            .send(Grant::AuthorizationCode {
                code,
                redirect_uri: &flow.redirect_uri,
                verifier: &flow.pkce_verifier,
            })
            .await
    }

    async fn refresh(
        &self,
        refresh_token: &SecretString,
        scopes: &[String],
    ) -> Result<TokenResponse, OAuthError> {
        // Scopes are not sent: the refresh keeps the granted ones (RFC 6749
        // section 6), and some servers refuse a repeated scope list.
        let _ = scopes;
        self.token_request("refreshing the token")
            .send(Grant::RefreshToken(refresh_token))
            .await
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

#[cfg(test)]
mod tests {
    use super::*;

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
