//! How Redis failures become [`mcp_authkit_core::Error`]s.

#[cfg(feature = "tls")]
use mcp_authkit_core::is_certificate_refusal;
use mcp_authkit_core::{CodecError, Error, MalformedRecord};
use redis::{ErrorKind, RedisError, RetryMethod, ServerErrorKind};

use crate::BACKEND;

/// Whether trying the same operation again later may succeed: the
/// connection broke or timed out, or the server is loading, failing over or
/// read-only for a moment. Authentication, permission, configuration and
/// script errors stay until someone changes something.
pub(crate) fn is_retryable(error: &RedisError) -> bool {
    if is_certificate_refusal(error) {
        // redis-rs reports it as one more I/O error, but no retry can make
        // an untrusted certificate trusted.
        return false;
    }
    match error.kind() {
        // redis-rs marks permission and unsupported-operation I/O errors
        // (a unix socket we may not open) as not worth retrying.
        ErrorKind::Io => !matches!(error.retry_method(), RetryMethod::NoRetry),
        ErrorKind::Parse | ErrorKind::ClusterConnectionNotFound => true,
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        ),
        _ => false,
    }
}

fn is_cross_slot(error: &RedisError) -> bool {
    error.code() == Some("CROSSSLOT")
        || matches!(error.kind(), ErrorKind::Server(ServerErrorKind::CrossSlot))
}

/// Without TLS there is no certificate to refuse.
#[cfg(not(feature = "tls"))]
fn is_certificate_refusal(_: &RedisError) -> bool {
    false
}

/// Whether the command never reached the server (the connection could not
/// be opened), so running it again cannot apply it twice.
pub(crate) fn never_sent(error: &RedisError) -> bool {
    error.is_connection_refusal()
}

/// A failed Redis call of `operation`. CROSSSLOT cannot come from a sound
/// store (every command and script stays on one hash tag): it is reported
/// as a bug of this crate, never as a retryable backend hiccup.
pub(crate) fn backend(operation: &'static str, error: RedisError) -> Error {
    if is_cross_slot(&error) {
        return Error::Internal(format!(
            "redis {operation}: CROSSSLOT from the cluster ({error}); every operation of this \
             store should stay on one hash slot, so this is a bug in mcp-authkit-store-redis: \
             please report it"
        ));
    }
    let retryable = is_retryable(&error);
    Error::backend(BACKEND, operation, retryable, error)
}

/// A failed Redis call of `operation` on the key described by `location`:
/// a WRONGTYPE answer means something else stored a value under our name,
/// which is a decode error naming the key, not a connection problem.
pub(crate) fn on_key(operation: &'static str, location: &str, error: RedisError) -> Error {
    if error.code() == Some("WRONGTYPE") {
        return not_ours(
            location,
            "it holds a Redis type this library never writes there",
        );
    }
    backend(operation, error)
}

/// A value at `location` that this library did not write.
pub(crate) fn not_ours(location: &str, why: &str) -> Error {
    Error::decode(
        BACKEND,
        location.to_owned(),
        CodecError::Malformed(MalformedRecord::new(format!(
            "{why}; it was left as it is (use another key prefix, or remove the value)"
        ))),
    )
}

/// A value at `location` that the codec refused.
pub(crate) fn undecodable(location: &str, error: CodecError) -> Error {
    Error::decode(BACKEND, location.to_owned(), error)
}

/// Redis answered something our scripts never return.
pub(crate) fn unexpected(operation: &'static str, what: impl std::fmt::Display) -> Error {
    Error::Internal(format!("redis {operation}: unexpected reply {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossslot_is_reported_as_a_bug() {
        let error = RedisError::from((
            ErrorKind::Server(ServerErrorKind::CrossSlot),
            "Keys in request don't hash to the same slot",
        ));
        let reported = backend("complete flow", error);
        assert!(!reported.is_retryable());
        let text = reported.to_string();
        assert!(text.contains("CROSSSLOT") && text.contains("bug"), "{text}");
    }
}
