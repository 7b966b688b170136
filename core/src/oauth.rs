//! The OAuth exchange as the lifecycle needs it: a trait, so the standard
//! `oauth2`-based client (in `mcp-authkit-providers`) and custom flows plug
//! in the same way, and tests count calls with a fake.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;
use url::Url;

use crate::error::OAuthError;
use crate::flow::{FlowState, PendingFlow};
use crate::record::{ExtraFields, TokenRecord};
use crate::time::Timestamp;

/// What an authorization URL is built from.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AuthorizationRequest<'a> {
    /// The flow's `state`.
    pub state: &'a FlowState,
    /// The PKCE S256 challenge of the flow's verifier.
    pub pkce_challenge: &'a str,
    /// The scopes to request.
    pub scopes: &'a [String],
    /// The redirect URI.
    pub redirect_uri: &'a str,
    /// The flow's application attributes.
    pub attributes: &'a BTreeMap<String, String>,
}

impl<'a> AuthorizationRequest<'a> {
    /// The request for `flow`, whose challenge the caller computed.
    pub fn for_flow(flow: &'a PendingFlow, pkce_challenge: &'a str) -> Self {
        AuthorizationRequest {
            state: &flow.state,
            pkce_challenge,
            scopes: &flow.scopes,
            redirect_uri: &flow.redirect_uri,
            attributes: &flow.attributes,
        }
    }
}

/// A successful token endpoint response.
#[derive(Clone)]
#[non_exhaustive]
pub struct TokenResponse {
    /// The access token.
    pub access_token: SecretString,
    /// A (possibly rotated) refresh token.
    pub refresh_token: Option<SecretString>,
    /// Usually `"Bearer"`.
    pub token_type: String,
    /// Lifetime from the moment of the response (`expires_in`).
    pub expires_in: Option<Duration>,
    /// The granted scopes, when the server said; `None` means "as requested"
    /// (RFC 6749 section 5.1).
    pub scopes: Option<Vec<String>>,
    /// Other response fields (`id_token`, ...).
    pub extra: ExtraFields,
}

impl TokenResponse {
    /// A bearer response with only an access token.
    pub fn new(access_token: impl Into<String>) -> Self {
        TokenResponse {
            access_token: SecretString::from(access_token.into()),
            refresh_token: None,
            token_type: "Bearer".to_owned(),
            expires_in: None,
            scopes: None,
            extra: ExtraFields::default(),
        }
    }

    /// Sets the refresh token.
    pub fn with_refresh_token(mut self, refresh_token: impl Into<String>) -> Self {
        self.refresh_token = Some(SecretString::from(refresh_token.into()));
        self
    }

    /// Sets `expires_in`.
    pub fn with_expires_in(mut self, expires_in: Duration) -> Self {
        self.expires_in = Some(expires_in);
        self
    }

    /// Sets the granted scopes.
    pub fn with_scopes(mut self, scopes: Vec<String>) -> Self {
        self.scopes = Some(scopes);
        self
    }

    /// The record to store for a response received at `received_at`.
    ///
    /// `expires_in` is relative, so it becomes an absolute time here, on
    /// arrival. Scopes the server did not state are the `requested` ones.
    pub fn into_record(self, received_at: Timestamp, requested: &[String]) -> TokenRecord {
        let mut record = TokenRecord::new(String::new(), received_at);
        record.access_token = self.access_token;
        record.refresh_token = self.refresh_token;
        record.token_type = self.token_type;
        record.scopes = self.scopes.unwrap_or_else(|| requested.to_vec());
        record.expires_at = self.expires_in.map(|ttl| received_at.saturating_add(ttl));
        record.extra = self.extra;
        record
    }

    /// The record that replaces `previous` after a refresh: a server that
    /// does not rotate refresh tokens omits it, and then the old one stays
    /// valid (RFC 6749 section 6); omitted scopes mean "unchanged".
    pub fn into_refreshed_record(
        self,
        received_at: Timestamp,
        previous: &TokenRecord,
    ) -> TokenRecord {
        let keep_refresh = self.refresh_token.is_none();
        let mut record = self.into_record(received_at, &previous.scopes);
        if keep_refresh {
            record.refresh_token = previous.refresh_token.clone();
        }
        record
    }
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"[redacted]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scopes", &self.scopes)
            .field("extra", &self.extra)
            .finish()
    }
}

/// One OAuth integration's client side of the authorization code flow.
///
/// Implementations classify every failure with
/// [`OAuthErrorKind`](crate::OAuthErrorKind): the lifecycle deletes a token
/// only on [`InvalidGrant`](crate::OAuthErrorKind::InvalidGrant) and retries
/// later on [`Transient`](crate::OAuthErrorKind::Transient).
#[async_trait]
pub trait OAuthClient: Send + Sync + 'static {
    /// The URL the user's browser is sent to, with `state`, the PKCE S256
    /// challenge, the scopes and the redirect URI.
    fn authorization_url(&self, request: &AuthorizationRequest<'_>) -> Result<Url, OAuthError>;

    /// Exchanges an authorization code, sending the flow's PKCE verifier and
    /// redirect URI.
    async fn exchange_code(
        &self,
        code: &SecretString,
        flow: &PendingFlow,
    ) -> Result<TokenResponse, OAuthError>;

    /// Uses a refresh token. `scopes` are the currently granted ones.
    async fn refresh(
        &self,
        refresh_token: &SecretString,
        scopes: &[String],
    ) -> Result<TokenResponse, OAuthError>;

    /// Whether [`refresh`](Self::refresh) is available; when it is not, an
    /// expired token leads to a new authorization.
    fn supports_refresh(&self) -> bool {
        true
    }

    /// Checks the `iss` parameter of an authorization response (RFC 9207).
    /// The default accepts anything; the standard client compares it with
    /// the configured issuer.
    fn check_issuer(&self, iss: Option<&str>) -> Result<(), OAuthError> {
        let _ = iss;
        Ok(())
    }
}
