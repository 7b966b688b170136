//! The one error type of the client side.

use std::time::Duration;

use mcp_authkit_core::OAuthError;

/// Which metadata document a discovery error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetadataDocument {
    /// Protected Resource Metadata (RFC 9728), published by the MCP server.
    ProtectedResource,
    /// Authorization server metadata (RFC 8414 or OpenID Connect discovery).
    AuthorizationServer,
    /// A dynamic client registration response (RFC 7591).
    ClientRegistration,
}

impl std::fmt::Display for MetadataDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MetadataDocument::ProtectedResource => "protected resource metadata",
            MetadataDocument::AuthorizationServer => "authorization server metadata",
            MetadataDocument::ClientRegistration => "client registration response",
        })
    }
}

/// Why an MCP client could not get (or keep) a usable token.
///
/// No variant carries an access token, a refresh token, a client secret, a
/// PKCE verifier or an authorization code. Texts that come from a server
/// (`error_description`) are capped in length.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientAuthError {
    /// The MCP server refused a token this provider has no way to replace
    /// (a [`StaticProvider`](crate::client::StaticProvider)'s token).
    #[error(
        "the MCP server refused the token with HTTP {status}{}: configure a valid token",
        describe_oauth_error(.error.as_deref(), .description.as_deref())
    )]
    Refused {
        /// 401 or 403.
        status: u16,
        /// The challenge's `error`, if any.
        error: Option<String>,
        /// The challenge's `error_description`, if any.
        description: Option<String>,
    },

    /// The server answered 403 for a reason other than missing scopes; a
    /// new authorization would not help.
    #[error(
        "the MCP server refused the request with HTTP 403{}: a new authorization would not change this",
        describe_oauth_error(.error.as_deref(), .description.as_deref())
    )]
    Forbidden {
        /// The challenge's `error`, if any.
        error: Option<String>,
        /// The challenge's `error_description`, if any.
        description: Option<String>,
    },

    /// A metadata document could not be fetched or is not usable.
    #[error("{document} at {url}: {reason}")]
    Metadata {
        /// Which document.
        document: MetadataDocument,
        /// Where it was (or was looked for).
        url: String,
        /// What is wrong with it, and what to do.
        reason: String,
        /// The HTTP status, when the server answered with an unexpected one.
        status: Option<u16>,
    },

    /// The Protected Resource Metadata describes another resource than the
    /// MCP server the client talks to (RFC 9728 section 3.3).
    #[error(
        "the protected resource metadata at {metadata_url} is for {advertised}, not for the MCP \
         server {server}: refusing it, since a token for it could be used elsewhere"
    )]
    ResourceMismatch {
        /// The MCP server's URL.
        server: String,
        /// The `resource` the metadata names.
        advertised: String,
        /// Where the metadata came from.
        metadata_url: String,
    },

    /// The authorization server metadata names another issuer than the one
    /// it was fetched for (RFC 8414 section 3.3).
    #[error(
        "the authorization server metadata at {url} names issuer {found}, but it was fetched for \
         issuer {expected}: refusing it (RFC 8414 section 3.3)"
    )]
    IssuerMismatch {
        /// The issuer the metadata was fetched for.
        expected: String,
        /// The issuer it names.
        found: String,
        /// Where it came from.
        url: String,
    },

    /// The authorization server does not advertise PKCE with S256, which
    /// the MCP authorization specification requires.
    #[error(
        "the authorization server {issuer} does not advertise PKCE with S256 \
         (code_challenge_methods_supported: {advertised:?}); the MCP authorization specification \
         forbids going on without it"
    )]
    PkceUnsupported {
        /// The authorization server.
        issuer: String,
        /// What it advertises.
        advertised: Vec<String>,
    },

    /// A request was redirected to another origin, which could carry it
    /// (and what it trusts) somewhere else.
    #[error(
        "{url} redirected to another origin ({location}); refusing to follow a cross-origin \
         redirect during authorization"
    )]
    CrossOriginRedirect {
        /// The requested URL.
        url: String,
        /// Where it redirected to.
        location: String,
    },

    /// An endpoint is not HTTPS (plain HTTP is accepted to loopback only,
    /// and only when the MCP server is on loopback too).
    #[error(
        "{what} {url} is not an https URL (plain http is only accepted to loopback addresses, \
         and only when the MCP server itself is on loopback)"
    )]
    InsecureUrl {
        /// Which endpoint.
        what: &'static str,
        /// Its URL.
        url: String,
    },

    /// The client has no identity at this authorization server: it is not
    /// pre-registered, and the server supports neither Client ID Metadata
    /// Documents (for this client) nor dynamic client registration.
    #[error(
        "no client identity for the authorization server {issuer}: it offers no dynamic client \
         registration{}, so register a client there and configure its client_id",
        if *.cimd_supported { "" } else { " and no Client ID Metadata Documents" }
    )]
    NoClientIdentity {
        /// The authorization server.
        issuer: String,
        /// Whether it supports Client ID Metadata Documents (the client has
        /// no document URL configured, then).
        cimd_supported: bool,
    },

    /// Dynamic client registration failed.
    #[error("dynamic client registration at {url} failed: {reason}")]
    Registration {
        /// The registration endpoint.
        url: String,
        /// Why.
        reason: String,
        /// The HTTP status, if the server answered.
        status: Option<u16>,
    },

    /// The authorization or a token request failed (refused by the user,
    /// an OAuth error, an issuer mismatch in the response, ...).
    #[error("authorization failed: {0}")]
    Authorization(#[source] OAuthError),

    /// The enterprise identity provider did not exchange the user's ID
    /// token for an ID-JAG (cross-app access): the ID token is expired or
    /// not for this client, the client is unknown there, or it is down.
    #[error("the identity provider did not issue an ID-JAG: {0}")]
    IdentityProvider(#[source] OAuthError),

    /// The authorization response does not belong to the flow that was
    /// started (wrong or missing `state`).
    #[error(
        "the authorization response does not match the authorization request (state {0}): it may \
         be forged or stale; start the authorization again"
    )]
    StateMismatch(&'static str),

    /// The server kept answering 403 `insufficient_scope` although the
    /// scopes it asked for were granted: stopped to avoid an endless loop.
    #[error(
        "the MCP server still refuses the scopes {scopes:?} after {attempts} authorizations that \
         granted them; giving up instead of asking the user again"
    )]
    StepUpLimit {
        /// The scopes asked for.
        scopes: Vec<String>,
        /// How many step-up authorizations were made for them.
        attempts: u32,
    },

    /// The authorization server granted fewer scopes than a step-up asked
    /// for (a grant without a user: no one can consent to more). Asking
    /// again would get the same, so the client does not.
    #[error(
        "the authorization server did not grant the scopes {missing:?} that the MCP server \
         requires (granted: {granted:?}); have the client allowed them there"
    )]
    ScopesNotGranted {
        /// What was asked for and not granted.
        missing: Vec<String>,
        /// What the token has.
        granted: Vec<String>,
    },

    /// The user was asked to sign in too often: a server that keeps
    /// refusing tokens or asking for more scopes would otherwise prompt
    /// forever. Not retryable at once; the window moves on.
    #[error(
        "stopped asking the user to sign in: {limit} sign-ins {} already; the MCP server keeps \
         asking (it may be misconfigured or hostile)",
        match .window { Some(window) => format!("within {window:?}"), None => "for step-ups in this session".to_owned() }
    )]
    TooManyPrompts {
        /// The limit reached.
        limit: u32,
        /// The window it applies to; `None`: the provider's lifetime
        /// (step-ups).
        window: Option<Duration>,
    },

    /// The authorization server does not offer the grant the client was
    /// about to use (its `grant_types_supported` lacks it): checked before
    /// any browser opens or any token request is sent.
    #[error(
        "the authorization server {issuer} does not offer the {grant_type} grant \
         (grant_types_supported: {advertised:?}); use a client for a grant it offers"
    )]
    GrantNotSupported {
        /// The authorization server.
        issuer: String,
        /// The grant the client needed.
        grant_type: String,
        /// What it advertises.
        advertised: Vec<String>,
    },

    /// The authorization server refused the authorization request itself:
    /// an error page instead of a redirect back to the client, which is how
    /// servers answer a client or redirect URI they do not know (after a
    /// restart that lost a dynamic registration, for one). A
    /// [`UserInteraction`](crate::client::UserInteraction) that sees such a
    /// page returns this, so a dynamically registered client registers
    /// again.
    #[error(
        "the authorization server refused the authorization request with HTTP {status} instead of \
         redirecting back: it does not know this client or its redirect URI"
    )]
    AuthorizationRequestRefused {
        /// The status of the error page.
        status: u16,
    },

    /// The user-interaction hook failed (no browser, the user closed it).
    #[error("user interaction failed: {0}")]
    Interaction(String),

    /// Something took too long (the user did not finish signing in).
    #[error("{what} did not finish within {after:?}")]
    TimedOut {
        /// What.
        what: &'static str,
        /// The limit.
        after: Duration,
    },

    /// An HTTP request failed in transit (connect, TLS, timeout).
    #[error("HTTP request to {url} failed: {source}")]
    Http {
        /// The URL requested.
        url: String,
        /// The client's error.
        #[source]
        source: std::sync::Arc<reqwest::Error>,
    },

    /// The server's TLS certificate was refused (unknown issuer, expired,
    /// wrong name). Not retryable: trust the server's certificate authority
    /// in the HTTP client the provider is built with, or fix the URL.
    #[error(
        "the TLS certificate of {url} was rejected: {source}; \
         trust its certificate authority in the HTTP client or fix the URL"
    )]
    CertificateRejected {
        /// The URL requested.
        url: String,
        /// The client's error.
        #[source]
        source: std::sync::Arc<reqwest::Error>,
    },

    /// The token store or the pending-flow store failed.
    #[error(transparent)]
    Store(mcp_authkit_core::Error),

    /// The provider is configured in a way that cannot work.
    #[error("invalid configuration of {what}: {reason}")]
    Config {
        /// What.
        what: &'static str,
        /// Why, and how to fix it.
        reason: String,
    },
}

impl ClientAuthError {
    /// Whether the same operation may succeed if tried again later
    /// (network trouble, a 5xx, a busy store), as opposed to a problem that
    /// needs the user or a configuration change.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientAuthError::Http { .. } | ClientAuthError::TimedOut { .. } => true,
            ClientAuthError::Metadata { status, .. }
            | ClientAuthError::Registration { status, .. } => {
                status.is_some_and(|s| s >= 500 || s == 429)
            }
            ClientAuthError::Authorization(error) | ClientAuthError::IdentityProvider(error) => {
                error.is_retryable()
            }
            ClientAuthError::Store(error) => error.is_retryable(),
            _ => false,
        }
    }

    /// The classified OAuth error, for [`Authorization`](Self::Authorization)
    /// errors.
    pub fn oauth_error(&self) -> Option<&OAuthError> {
        match self {
            ClientAuthError::Authorization(error) | ClientAuthError::IdentityProvider(error) => {
                Some(error)
            }
            ClientAuthError::Store(mcp_authkit_core::Error::OAuth(error)) => Some(error),
            _ => None,
        }
    }

    pub(crate) fn http(url: &str, source: reqwest::Error) -> Self {
        // The URL is ours (a metadata or token endpoint); reqwest's own copy
        // is dropped so that no query string ever reaches a log.
        let url = url.to_owned();
        let source = std::sync::Arc::new(source.without_url());
        if mcp_authkit_core::is_certificate_refusal(&*source) {
            ClientAuthError::CertificateRejected { url, source }
        } else {
            ClientAuthError::Http { url, source }
        }
    }

    pub(crate) fn metadata(
        document: MetadataDocument,
        url: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        ClientAuthError::Metadata {
            document,
            url: url.into(),
            reason: reason.into(),
            status: None,
        }
    }
}

impl From<mcp_authkit_core::Error> for ClientAuthError {
    fn from(error: mcp_authkit_core::Error) -> Self {
        match error {
            mcp_authkit_core::Error::OAuth(error) => ClientAuthError::Authorization(error),
            other => ClientAuthError::Store(other),
        }
    }
}

impl From<OAuthError> for ClientAuthError {
    fn from(error: OAuthError) -> Self {
        ClientAuthError::Authorization(error)
    }
}

/// Caps text that comes from a server before it goes into an error.
pub(crate) fn cap(text: &str) -> String {
    const LIMIT: usize = 300;
    let mut capped: String = text.chars().take(LIMIT).collect();
    if text.chars().count() > LIMIT {
        capped.push('…');
    }
    capped
}

fn describe_oauth_error(error: Option<&str>, description: Option<&str>) -> String {
    match (error, description) {
        (Some(error), Some(description)) => format!(" ({error}: {description})"),
        (Some(error), None) => format!(" ({error})"),
        (None, Some(description)) => format!(" ({description})"),
        (None, None) => String::new(),
    }
}
