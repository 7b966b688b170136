//! The [`AuthProvider`] trait, the token it hands out, and the
//! [`StaticProvider`].

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use mcp_authkit_core::{ExposeSecret, Revision, SecretString, Timestamp};

use crate::client::challenge::AuthChallenge;
use crate::client::error::ClientAuthError;

/// An access token to send as `Authorization: Bearer ...`.
///
/// The token is a secret: `Debug` prints a redaction, and there is no
/// `Display`.
#[derive(Clone)]
pub struct BearerToken {
    secret: SecretString,
    scopes: Vec<String>,
    expires_at: Option<Timestamp>,
    revision: Option<Revision>,
}

impl BearerToken {
    /// A token with no known scopes or expiry.
    pub fn new(token: impl Into<String>) -> Self {
        BearerToken {
            secret: SecretString::from(token.into()),
            scopes: Vec::new(),
            expires_at: None,
            revision: None,
        }
    }

    pub(crate) fn from_access(token: &mcp_authkit_core::AccessToken) -> Self {
        BearerToken {
            secret: token.secret().clone(),
            scopes: token.scopes().to_vec(),
            expires_at: token.expires_at(),
            revision: Some(token.revision()),
        }
    }

    pub(crate) fn from_stored(stored: &mcp_authkit_core::StoredToken) -> Self {
        BearerToken {
            secret: stored.record.access_token.clone(),
            scopes: stored.record.scopes.clone(),
            expires_at: stored.record.expires_at,
            revision: Some(stored.revision),
        }
    }

    /// The secret token (send it, never log it).
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// The granted scopes, when known.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// When it expires, when known.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.expires_at
    }

    /// The stored revision it was read at, for providers that keep tokens
    /// in an mcp-authkit store.
    pub fn revision(&self) -> Option<Revision> {
        self.revision
    }

    /// Whether this is the same token as `other` (compares the secrets in
    /// constant time with respect to their content).
    pub fn same_token(&self, other: &BearerToken) -> bool {
        let (a, b) = (
            self.secret.expose_secret().as_bytes(),
            other.secret.expose_secret().as_bytes(),
        );
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerToken")
            .field("token", &"[redacted]")
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .field("revision", &self.revision)
            .finish()
    }
}

/// Authentication of an MCP client to one MCP server.
///
/// A transport asks for the current token before each request, and reports
/// the server's refusals:
///
/// - [`token`](Self::token): the token to send now, or `None` when there is
///   none yet (the request then goes out unauthenticated and the server's
///   `401` starts the authorization);
/// - [`handle_unauthorized`](Self::handle_unauthorized) on `401`: obtain a
///   new token (refresh, or a full authorization) or fail; the transport
///   retries the request once with it;
/// - [`handle_forbidden`](Self::handle_forbidden) on `403`: step up to the
///   scopes the challenge names, or fail; the transport retries a bounded
///   number of times.
///
/// Implementations are shared by every request of a connection (`&self`,
/// `Send + Sync`): concurrent refusals must not start concurrent
/// authorizations. Construction takes the place of an `init` callback.
///
/// ```
/// use mcp_authkit_providers::client::{AuthChallenge, AuthProvider, BearerToken, ClientAuthError};
///
/// /// A key from the environment; refusals are final.
/// struct ApiKey(String);
///
/// #[mcp_authkit_core::async_trait]
/// impl AuthProvider for ApiKey {
///     async fn token(&self) -> Result<Option<BearerToken>, ClientAuthError> {
///         Ok(Some(BearerToken::new(self.0.clone())))
///     }
///     async fn handle_unauthorized(&self, c: &AuthChallenge) -> Result<BearerToken, ClientAuthError> {
///         Err(ClientAuthError::Refused {
///             status: 401,
///             error: c.error().map(str::to_owned),
///             description: c.error_description().map(str::to_owned),
///         })
///     }
///     async fn handle_forbidden(&self, c: &AuthChallenge) -> Result<BearerToken, ClientAuthError> {
///         Err(ClientAuthError::Forbidden {
///             error: c.error().map(str::to_owned),
///             description: c.error_description().map(str::to_owned),
///         })
///     }
/// }
/// ```
#[async_trait]
pub trait AuthProvider: Send + Sync + 'static {
    /// The token to send with the next request, or `None` when there is
    /// none yet.
    async fn token(&self) -> Result<Option<BearerToken>, ClientAuthError>;

    /// The server answered `401 Unauthorized` with `challenge`: return a
    /// token to retry with, or an error.
    async fn handle_unauthorized(
        &self,
        challenge: &AuthChallenge,
    ) -> Result<BearerToken, ClientAuthError>;

    /// The server answered `403 Forbidden` with `challenge` (usually
    /// `insufficient_scope`, a scope step-up): return a token to retry
    /// with, or an error.
    async fn handle_forbidden(
        &self,
        challenge: &AuthChallenge,
    ) -> Result<BearerToken, ClientAuthError>;
}

/// A shared provider is a provider.
#[async_trait]
impl<P: AuthProvider + ?Sized> AuthProvider for Arc<P> {
    async fn token(&self) -> Result<Option<BearerToken>, ClientAuthError> {
        (**self).token().await
    }
    async fn handle_unauthorized(
        &self,
        challenge: &AuthChallenge,
    ) -> Result<BearerToken, ClientAuthError> {
        (**self).handle_unauthorized(challenge).await
    }
    async fn handle_forbidden(
        &self,
        challenge: &AuthChallenge,
    ) -> Result<BearerToken, ClientAuthError> {
        (**self).handle_forbidden(challenge).await
    }
}

/// A pre-existing bearer token (an API key, a token from elsewhere).
///
/// It is sent with every request; a `401` or `403` is an error, never
/// retried, because this provider has no way to get another token.
///
/// ```
/// use mcp_authkit_providers::client::{AuthChallenge, AuthProvider, StaticProvider};
/// use mcp_authkit_core::ExposeSecret;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let provider = StaticProvider::new("sk-live-123");
/// let token = provider.token().await.unwrap().unwrap();
/// assert_eq!(token.secret().expose_secret(), "sk-live-123");
/// assert!(!format!("{provider:?}").contains("sk-live-123"));
///
/// let refused = provider
///     .handle_unauthorized(&AuthChallenge::new(Some(r#"Bearer error="invalid_token""#)))
///     .await
///     .unwrap_err();
/// assert!(!refused.is_retryable());
/// # }
/// ```
#[derive(Clone)]
pub struct StaticProvider {
    token: BearerToken,
}

impl StaticProvider {
    /// A provider that always sends `token`.
    pub fn new(token: impl Into<String>) -> Self {
        StaticProvider {
            token: BearerToken::new(token),
        }
    }
}

impl fmt::Debug for StaticProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticProvider")
            .field("token", &"[redacted]")
            .finish()
    }
}

#[async_trait]
impl AuthProvider for StaticProvider {
    async fn token(&self) -> Result<Option<BearerToken>, ClientAuthError> {
        Ok(Some(self.token.clone()))
    }

    async fn handle_unauthorized(
        &self,
        challenge: &AuthChallenge,
    ) -> Result<BearerToken, ClientAuthError> {
        Err(ClientAuthError::Refused {
            status: 401,
            error: challenge.error().map(crate::client::error::cap),
            description: challenge.error_description().map(crate::client::error::cap),
        })
    }

    async fn handle_forbidden(
        &self,
        challenge: &AuthChallenge,
    ) -> Result<BearerToken, ClientAuthError> {
        Err(ClientAuthError::Refused {
            status: 403,
            error: challenge.error().map(crate::client::error::cap),
            description: challenge.error_description().map(crate::client::error::cap),
        })
    }
}
