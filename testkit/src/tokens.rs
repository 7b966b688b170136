//! What the server knows about the tokens it issued.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::secret::REDACTED;

/// What an issued access token stands for: what a resource server learns
/// from [`introspect`](crate::AuthServerHandle::introspect).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenInfo {
    /// The client it was issued to.
    pub client_id: String,
    /// The user who authorized it.
    pub subject: String,
    /// The granted scopes.
    pub scopes: Vec<String>,
    /// Its audience: the `resource` indicators (RFC 8707) it was issued
    /// for; empty when the client named none.
    pub resources: Vec<String>,
    /// When it was issued.
    pub issued_at: SystemTime,
    /// When it stops being valid.
    pub expires_at: SystemTime,
}

impl TokenInfo {
    /// Whether `scope` was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Whether it was issued for `resource` (exact comparison).
    pub fn is_for(&self, resource: &str) -> bool {
        self.resources.iter().any(|r| r == resource)
    }
}

/// What to mint with [`mint_tokens`](crate::AuthServerHandle::mint_tokens):
/// tokens as if `subject` had authorized `client_id`, without a flow.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub(crate) client_id: String,
    pub(crate) subject: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) resources: Vec<String>,
}

impl TokenGrant {
    /// A grant with no scopes and no resource.
    pub fn new(client_id: impl Into<String>, subject: impl Into<String>) -> Self {
        TokenGrant {
            client_id: client_id.into(),
            subject: subject.into(),
            scopes: Vec::new(),
            resources: Vec::new(),
        }
    }

    /// The granted scopes.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// A resource (audience) the tokens are for.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }
}

/// Tokens the server issued, as a token response carries them.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IssuedTokens {
    /// The access token.
    pub access_token: String,
    /// The refresh token, when the server issues them.
    pub refresh_token: Option<String>,
    /// The access token's lifetime.
    pub expires_in: Duration,
    /// What the access token stands for.
    pub info: TokenInfo,
}

impl fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedTokens")
            .field("access_token", &REDACTED)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| REDACTED),
            )
            .field("expires_in", &self.expires_in)
            .field("info", &self.info)
            .finish()
    }
}

/// An authorization request waiting at the consent page
/// ([`ConsentMode::Page`](crate::ConsentMode::Page)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingConsent {
    /// Pass it to [`approve_consent`](crate::AuthServerHandle::approve_consent)
    /// or [`deny_consent`](crate::AuthServerHandle::deny_consent), or post it
    /// as `consent_id` to the consent endpoint.
    pub id: String,
    /// The requesting client.
    pub client_id: String,
    /// The signed-in user.
    pub subject: String,
    /// The scopes that would be granted.
    pub scopes: Vec<String>,
    /// The requested resources.
    pub resources: Vec<String>,
    /// Where the browser goes after the decision.
    pub redirect_uri: String,
    /// The client's `state`.
    pub state: Option<String>,
}
