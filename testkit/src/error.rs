//! The testkit's one error type.

use std::io;
use std::net::SocketAddr;

/// What went wrong while starting the test server, driving it, or browsing.
///
/// Messages never carry an authorization code, token or secret: URLs in them
/// have such query values redacted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server could not listen on its address.
    #[error("test authorization server: could not listen on {addr}: {source}")]
    Bind {
        /// The address it tried.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A configuration value or argument is not usable.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was wrong (`"issuer path"`, `"redirect uri"`, ...).
        what: &'static str,
        /// Why, and how to fix it.
        reason: String,
    },

    /// A consent id that is not pending (already decided, or never shown).
    #[error(
        "no pending consent with id {id:?}: it was already approved or denied, or the \
         authorization request never reached the consent step; list them with pending_consents()"
    )]
    UnknownConsent {
        /// The id asked for.
        id: String,
    },

    /// A client id the server does not know.
    #[error("no registered client {client_id:?}: register it with register_client() first")]
    UnknownClient {
        /// The id asked for.
        client_id: String,
    },

    /// The browser's HTTP request failed (connection refused, timeout, ...).
    #[error("browser: {method} {url} failed: {source}")]
    Http {
        /// The request method.
        method: String,
        /// The URL, with secret query values redacted.
        url: String,
        /// reqwest's error (its own copy of the URL removed).
        #[source]
        source: reqwest::Error,
    },

    /// The browser followed more redirects than its limit.
    #[error(
        "browser: more than {limit} redirects, the last to {url}; is there a redirect loop? \
         raise the limit with Browser::max_hops if the chain is legitimate"
    )]
    TooManyRedirects {
        /// The limit.
        limit: usize,
        /// The last URL, with secret query values redacted.
        url: String,
    },

    /// A redirect's `Location` header could not be followed.
    #[error("browser: {url} answered {status} with a Location header that is not a URL: {reason}")]
    BadLocation {
        /// The URL that answered, with secret query values redacted.
        url: String,
        /// Its status code.
        status: u16,
        /// Why the header is unusable.
        reason: String,
    },
}

impl Error {
    /// Whether trying again may succeed: a timeout or refused connection, or
    /// an address that was in use.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Bind { source, .. } => source.kind() == io::ErrorKind::AddrInUse,
            Error::Http { source, .. } => source.is_timeout() || source.is_connect(),
            Error::InvalidInput { .. }
            | Error::UnknownConsent { .. }
            | Error::UnknownClient { .. }
            | Error::TooManyRedirects { .. }
            | Error::BadLocation { .. } => false,
        }
    }
}
