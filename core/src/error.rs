//! The one error type of mcp-authkit's store and lifecycle layer.

use std::sync::Arc;
use std::time::Duration;

/// A source error, shared so that an [`Error`] can be cloned and handed to
/// every task that waited on the same operation.
pub type BoxError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with the failing operation's source kept.
///
/// No variant ever carries a token, a refresh token, a PKCE verifier or an
/// authorization code; every message names what failed and what to do.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// A backend could not be reached or refused the operation.
    Backend {
        /// Which backend (`"sqlite"`, `"redis"`, ...).
        backend: &'static str,
        /// What it was doing (`"get token"`, ...).
        operation: &'static str,
        /// Whether trying again later may succeed (a dropped connection,
        /// a busy database), as opposed to a permanent refusal.
        retryable: bool,
        /// The backend's own error.
        source: BoxError,
    },

    /// A stored value is not in a format this library wrote.
    Decode {
        /// Which backend.
        backend: &'static str,
        /// Where the value is (a key name or row), never its content.
        location: String,
        /// The decoder's error.
        source: BoxError,
    },

    /// Stored data or a schema was written by a newer release.
    UnsupportedFormat {
        /// What carries the version (`"token record"`, `"sqlite schema"`, ...).
        what: &'static str,
        /// The version found.
        found: u64,
        /// The newest version this release understands.
        supported: u64,
    },

    /// A configuration value or argument is not usable.
    InvalidInput {
        /// What was wrong (`"redis url"`, `"flow ttl"`, ...).
        what: &'static str,
        /// Why, and how to fix it.
        reason: String,
    },

    /// An authorization server refused or failed a request.
    OAuth(OAuthError),

    /// A callback named a flow that is unknown, expired or already used.
    FlowNotFound,

    /// An operation did not finish in time.
    Timeout {
        /// What timed out.
        operation: &'static str,
        /// The limit.
        after: Duration,
    },

    /// A bug or a broken invariant inside mcp-authkit; please report it.
    Internal(String),
}

/// Hands out the inner error of a shared source, so `downcast_ref` along
/// `source()` finds the backend's own error type.
fn shared(source: &BoxError) -> &(dyn std::error::Error + 'static) {
    &**source
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Backend {
                backend,
                operation,
                source,
                ..
            } => write!(f, "{backend} store: {operation} failed: {source}"),
            Error::Decode {
                backend,
                location,
                source,
            } => write!(
                f,
                "{backend} store: the value at {location} is not a record this library can read \
                 (corrupt, or written by something else): {source}"
            ),
            Error::UnsupportedFormat {
                what,
                found,
                supported,
            } => write!(
                f,
                "{what} uses format version {found}, but this release of mcp-authkit reads \
                 versions up to {supported}: upgrade mcp-authkit, or point it at data this \
                 release wrote"
            ),
            Error::InvalidInput { what, reason } => write!(f, "invalid {what}: {reason}"),
            Error::OAuth(error) => std::fmt::Display::fmt(error, f),
            Error::FlowNotFound => f.write_str(
                "no pending authorization flow matches this state: it is unknown, expired, or \
                 was already completed; start the action again to get a new link",
            ),
            Error::Timeout { operation, after } => {
                write!(f, "{operation} did not finish within {after:?}")
            }
            Error::Internal(message) => write!(f, "internal error in mcp-authkit: {message}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Backend { source, .. } | Error::Decode { source, .. } => Some(shared(source)),
            // Transparent: the OAuth error's own cause comes next.
            Error::OAuth(error) => std::error::Error::source(error),
            _ => None,
        }
    }
}

impl From<OAuthError> for Error {
    fn from(error: OAuthError) -> Self {
        Error::OAuth(error)
    }
}

impl Error {
    /// Whether the same operation may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Backend { retryable, .. } => *retryable,
            Error::Timeout { .. } => true,
            Error::OAuth(error) => error.is_retryable(),
            _ => false,
        }
    }

    /// A backend error; `retryable` says whether trying again may help.
    pub fn backend(
        backend: &'static str,
        operation: &'static str,
        retryable: bool,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Backend {
            backend,
            operation,
            retryable,
            source: Arc::new(source),
        }
    }

    /// A value at `location` that a backend could not decode.
    pub fn decode(backend: &'static str, location: impl Into<String>, error: CodecError) -> Self {
        match error {
            CodecError::UnsupportedVersion {
                what,
                found,
                supported,
            } => Error::UnsupportedFormat {
                what,
                found,
                supported,
            },
            CodecError::Malformed(source) => Error::Decode {
                backend,
                location: location.into(),
                source: Arc::new(source),
            },
        }
    }

    /// An invalid configuration value or argument.
    pub fn invalid_input(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            what,
            reason: reason.into(),
        }
    }
}

/// Why bytes did not decode into a record; see [`codec`](crate::codec).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Not the JSON this library writes.
    #[error("malformed record: {0}")]
    Malformed(#[source] MalformedRecord),
    /// Written by a newer release.
    #[error("{what} format version {found} is newer than the supported {supported}")]
    UnsupportedVersion {
        /// Which record kind.
        what: &'static str,
        /// Its version.
        found: u64,
        /// The newest this release reads.
        supported: u64,
    },
}

/// A record's bytes are not the JSON this library writes.
///
/// Built from the JSON parser's error with every quoted value cut out: a
/// parser quotes the string it did not expect, and that string may be a
/// token. Field names (which the parser puts in backticks) stay.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct MalformedRecord {
    message: String,
}

impl From<serde_json::Error> for MalformedRecord {
    fn from(error: serde_json::Error) -> Self {
        let raw = error.to_string();
        let mut message = String::with_capacity(raw.len());
        let mut in_quotes = false;
        for c in raw.chars() {
            match (c, in_quotes) {
                ('"', false) => {
                    in_quotes = true;
                    message.push_str("\"…");
                }
                ('"', true) => {
                    in_quotes = false;
                    message.push('"');
                }
                (_, true) => {}
                (c, false) => message.push(c),
            }
        }
        MalformedRecord { message }
    }
}

impl MalformedRecord {
    /// A description of what is wrong with a record, for data that is not JSON
    /// at all or fails a check after parsing.
    pub fn new(message: impl Into<String>) -> Self {
        MalformedRecord {
            message: message.into(),
        }
    }
}

/// How an OAuth failure should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OAuthErrorKind {
    /// The grant (refresh token or code) is invalid, expired or revoked: the
    /// stored token is dropped and the user authorizes again.
    InvalidGrant,
    /// The user or the server refused the authorization (`access_denied`).
    AccessDenied,
    /// Our client credentials or registration are wrong (`invalid_client`,
    /// `unauthorized_client`): fix the configuration.
    InvalidClient,
    /// The requested scope is invalid or exceeds what was granted.
    InvalidScope,
    /// Network failure, timeout, 5xx, 429 or `temporarily_unavailable`:
    /// try again later; a stored token is never deleted for this.
    Transient,
    /// The server answered something that is not valid OAuth.
    Protocol,
    /// The server's TLS certificate was refused (unknown issuer, expired,
    /// wrong name, revoked): trust its certificate authority or fix the URL.
    /// Trying again cannot help, so this is not [`Transient`](Self::Transient).
    CertificateRejected,
    /// The authorization response came from an unexpected issuer (RFC 9207),
    /// or an issuer was required and missing.
    IssuerMismatch,
    /// Anything else the server reported.
    Other,
}

/// A classified failure from an authorization server or the OAuth client.
#[derive(Debug, Clone)]
pub struct OAuthError {
    kind: OAuthErrorKind,
    message: String,
    code: Option<String>,
    status: Option<u16>,
    source: Option<BoxError>,
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for OAuthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(shared)
    }
}

impl OAuthError {
    /// An error of `kind` with a message for people (never a secret).
    pub fn new(kind: OAuthErrorKind, message: impl Into<String>) -> Self {
        OAuthError {
            kind,
            message: message.into(),
            code: None,
            status: None,
            source: None,
        }
    }

    /// Classifies an OAuth error response (RFC 6749 section 5.2) by its HTTP
    /// status and `error` code.
    pub fn from_response(status: Option<u16>, code: &str, description: Option<&str>) -> Self {
        let kind = match code {
            "invalid_grant" => OAuthErrorKind::InvalidGrant,
            "access_denied" => OAuthErrorKind::AccessDenied,
            "invalid_client" | "unauthorized_client" => OAuthErrorKind::InvalidClient,
            "invalid_scope" | "insufficient_scope" => OAuthErrorKind::InvalidScope,
            "temporarily_unavailable" | "server_error" | "slow_down" => OAuthErrorKind::Transient,
            _ if status.is_some_and(|s| s >= 500 || s == 429) => OAuthErrorKind::Transient,
            _ => OAuthErrorKind::Other,
        };
        let mut message = format!("the authorization server answered {code}");
        if let Some(status) = status {
            message.push_str(&format!(" (HTTP {status})"));
        }
        if let Some(description) = description {
            message.push_str(": ");
            // Descriptions are the server's text; cap them so a hostile or
            // broken server cannot flood logs through us.
            message.extend(description.chars().take(300));
        }
        OAuthError {
            kind,
            message,
            code: Some(code.to_owned()),
            status,
            source: None,
        }
    }

    /// A network-level failure (connect, TLS, timeout): transient.
    pub fn transport(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        OAuthError::new(OAuthErrorKind::Transient, message).with_source(source)
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Records the HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// How to handle it.
    pub fn kind(&self) -> OAuthErrorKind {
        self.kind
    }

    /// The OAuth `error` code, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The HTTP status, when there was a response.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == OAuthErrorKind::Transient
    }
}

/// The first error of type `E` in `error`'s cause chain (including `error`
/// itself), looking inside `std::io::Error`s and `Arc<dyn Error>`s too:
/// their `source()` skips the error they wrap, and transports (TLS, sockets)
/// hand their real cause over that way. Backends use it to classify a failure by its root cause, for
/// example a TLS certificate refusal that no retry can fix.
///
/// ```
/// use std::io;
/// use mcp_authkit_core::find_cause;
///
/// let inner = std::fmt::Error;
/// let io = io::Error::new(io::ErrorKind::InvalidData, inner);
/// assert!(find_cause::<std::fmt::Error>(&io).is_some());
/// assert!(find_cause::<std::str::Utf8Error>(&io).is_none());
/// ```
pub fn find_cause<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        if let Some(found) = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| find_cause::<E>(inner))
        {
            return Some(found);
        }
        // A shared `Arc<dyn Error>` (redis-rs keeps its causes so) is an
        // error of its own type whose source() is its content's source.
        if let Some(shared) = error.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
            let inner: &(dyn std::error::Error + 'static) = &**shared;
            if let Some(found) = find_cause::<E>(inner) {
                return Some(found);
            }
        }
        next = error.source();
    }
    None
}

/// Whether rustls refusing the server's certificate (unknown issuer,
/// expired, wrong name, revoked, none presented) is anywhere in `error`'s
/// cause chain. Transports report such a refusal as one more I/O error, but
/// no retry can make an untrusted certificate trusted, so backends use this
/// to keep it out of [`Error::is_retryable`]'s transient failures.
#[cfg(feature = "rustls")]
pub fn is_certificate_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        find_cause::<rustls::Error>(error),
        Some(
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::InvalidCertRevocationList(_)
                | rustls::Error::NoCertificatesPresented
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_cause_looks_through_sources_io_errors_and_shared_errors() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Arc<dyn std::error::Error + Send + Sync>);

        let root = std::io::Error::new(std::io::ErrorKind::InvalidData, std::fmt::Error);
        let shared: Arc<dyn std::error::Error + Send + Sync> = Arc::new(root);
        let error = Outer(shared);
        assert!(find_cause::<std::fmt::Error>(&error).is_some());
        assert!(find_cause::<std::io::Error>(&error).is_some());
        assert!(find_cause::<Outer>(&error).is_some());
        assert!(find_cause::<std::str::Utf8Error>(&error).is_none());
        // Without the wrappers' help, source() alone never reaches the root.
        let mut chain = std::error::Error::source(&error);
        while let Some(next) = chain {
            assert!(next.downcast_ref::<std::fmt::Error>().is_none());
            chain = next.source();
        }
    }

    #[test]
    fn classifies_token_endpoint_errors() {
        let cases = [
            (Some(400), "invalid_grant", OAuthErrorKind::InvalidGrant),
            (Some(401), "invalid_client", OAuthErrorKind::InvalidClient),
            (
                Some(400),
                "unauthorized_client",
                OAuthErrorKind::InvalidClient,
            ),
            (
                Some(503),
                "temporarily_unavailable",
                OAuthErrorKind::Transient,
            ),
            (Some(502), "bad_gateway", OAuthErrorKind::Transient),
            (Some(429), "rate_limited", OAuthErrorKind::Transient),
            (Some(400), "invalid_request", OAuthErrorKind::Other),
            (None, "access_denied", OAuthErrorKind::AccessDenied),
        ];
        for (status, code, kind) in cases {
            let error = OAuthError::from_response(status, code, None);
            assert_eq!(error.kind(), kind, "{code} with {status:?}");
            assert_eq!(error.is_retryable(), kind == OAuthErrorKind::Transient);
        }
    }

    #[test]
    fn retryability_follows_the_cause() {
        let transient = Error::from(OAuthError::transport(
            "connect failed",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ));
        assert!(transient.is_retryable());
        assert!(!Error::FlowNotFound.is_retryable());
        let backend = Error::backend(
            "test",
            "get token",
            true,
            std::io::Error::from(std::io::ErrorKind::BrokenPipe),
        );
        assert!(backend.is_retryable());
        let source = std::error::Error::source(&backend).expect("source kept");
        assert!(
            source.downcast_ref::<std::io::Error>().is_some(),
            "the chain hands out the backend's own error, not the Arc around it"
        );
    }

    #[test]
    fn long_descriptions_are_capped() {
        let error =
            OAuthError::from_response(Some(400), "invalid_request", Some(&"x".repeat(10_000)));
        assert!(error.to_string().len() < 400);
    }
}
