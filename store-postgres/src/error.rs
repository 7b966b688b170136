//! How sqlx errors become `mcp_authkit_core::Error`s: classified by
//! SQLSTATE and transport failure, with what it means and what to do.

use mcp_authkit_core::Error;

pub(crate) const BACKEND: &str = "postgres";

/// What kind of failure an error is; decides the explanation and whether a
/// retry may help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The TLS handshake refused the server's certificate (unknown issuer,
    /// expired, wrong name): no retry makes it trusted.
    CertificateRefused,
    /// No answer: refused, reset, unreachable host, pool timeout.
    Unreachable,
    /// The server ended the connection (pg_terminate_backend, a restart, a
    /// crash of another backend) in the middle of the work.
    ConnectionLost,
    /// The server refused the login (password, unknown role, pg_hba).
    BadCredentials,
    /// The database named in the URL does not exist.
    MissingDatabase,
    /// `statement_timeout` or a cancel ended the statement.
    StatementTimeout,
    /// Concurrency trouble the server resolves on a retry (deadlock,
    /// serialization failure, too many connections, lock not available).
    Busy,
    /// The disk is full; nothing was written.
    DiskFull,
    /// The database or the session is read-only (a standby, or
    /// `default_transaction_read_only`); nothing was written.
    ReadOnly,
    /// The role lacks a privilege the store needs.
    PermissionDenied,
    /// Anything else.
    Other,
}

/// The SQLSTATE of a database error.
pub(crate) fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

pub(crate) fn kind(error: &sqlx::Error) -> Kind {
    // First: sqlx reports a refused certificate as an I/O error of the
    // handshake, which would otherwise read as a transient "unreachable".
    if is_certificate_refusal(error) {
        return Kind::CertificateRefused;
    }
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => Kind::Unreachable,
        sqlx::Error::Database(_) => {
            let code = sqlstate(error).unwrap_or_default();
            match code.as_str() {
                "28P01" | "28000" => Kind::BadCredentials,
                "3D000" => Kind::MissingDatabase,
                "57014" => Kind::StatementTimeout,
                // admin_shutdown (pg_terminate_backend, a fast shutdown),
                // crash_shutdown, and connection exceptions.
                "57P01" | "57P02" => Kind::ConnectionLost,
                // cannot_connect_now: starting up or shutting down.
                "57P03" => Kind::Unreachable,
                c if c.starts_with("08") => Kind::ConnectionLost,
                "40001" | "40P01" | "55P03" | "53300" | "53200" => Kind::Busy,
                "53100" => Kind::DiskFull,
                "25006" => Kind::ReadOnly,
                "42501" => Kind::PermissionDenied,
                _ => Kind::Other,
            }
        }
        _ => Kind::Other,
    }
}

#[cfg(feature = "tls")]
fn is_certificate_refusal(error: &sqlx::Error) -> bool {
    mcp_authkit_core::is_certificate_refusal(error)
}

/// Without TLS there is no certificate to refuse.
#[cfg(not(feature = "tls"))]
fn is_certificate_refusal(_: &sqlx::Error) -> bool {
    false
}

/// Whether trying the same operation again later may succeed by itself. A
/// full disk, a read-only database, bad credentials, a missing database or a
/// missing privilege need someone to act first.
pub(crate) fn is_retryable(error: &sqlx::Error) -> bool {
    matches!(
        kind(error),
        Kind::Unreachable | Kind::ConnectionLost | Kind::StatementTimeout | Kind::Busy
    )
}

fn explanation(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::CertificateRefused => {
            "the PostgreSQL server's TLS certificate was refused (unknown issuer, expired, or \
             not valid for the host in the URL); a retry cannot help: fix the certificate, the \
             host name, or the trusted roots (sslrootcert)"
        }
        Kind::Unreachable => {
            "the PostgreSQL server cannot be reached (refused, unreachable, or every pooled \
             connection busy); check the host, port and that the server runs, then try again"
        }
        Kind::ConnectionLost => {
            "the server closed the connection during the operation (terminated, restarting, \
             or a network failure); the operation may or may not have been committed, try \
             again"
        }
        Kind::BadCredentials => {
            "the server refused the login: check the user name and password in the URL and \
             the server's pg_hba.conf"
        }
        Kind::MissingDatabase => {
            "the database named in the URL does not exist; create it (CREATE DATABASE) or fix \
             the URL"
        }
        Kind::StatementTimeout => {
            "the statement was cancelled (statement_timeout or a cancel request), so nothing \
             was written; try again, or raise statement_timeout"
        }
        Kind::Busy => "the server is busy (a deadlock, a lock or too many connections); try again",
        Kind::DiskFull => {
            "the database server's disk is full, so nothing was written (the transaction was \
             rolled back); free space and the store works again with every earlier write intact"
        }
        Kind::ReadOnly => {
            "the database is read-only for this session (a standby, or \
             default_transaction_read_only), so nothing was written; point the store at the \
             primary"
        }
        Kind::PermissionDenied => {
            "the database role lacks a privilege the store needs; grant what the \
             mcp-authkit-store-postgres docs list (\"Least-privilege role\")"
        }
        Kind::Other => return None,
    })
}

/// A PostgreSQL error with what it means for the store in front of it; the
/// sqlx error stays its source.
#[derive(Debug, thiserror::Error)]
#[error("{explanation} ({source})")]
pub(crate) struct Explained {
    explanation: &'static str,
    #[source]
    source: sqlx::Error,
}

/// A failed store operation. sqlx errors never carry bound values, so no
/// secret reaches the message; URLs are not part of them either.
pub(crate) fn db(operation: &'static str, error: sqlx::Error) -> Error {
    let kind = kind(&error);
    let retryable = is_retryable(&error);
    match explanation(kind) {
        Some(explanation) => Error::backend(
            BACKEND,
            operation,
            retryable,
            Explained {
                explanation,
                source: error,
            },
        ),
        None => Error::backend(BACKEND, operation, retryable, error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_retryable_and_explained() {
        let error = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(kind(&error), Kind::Unreachable);
        let error = db("get token", error);
        assert!(error.is_retryable());
        assert!(error.to_string().contains("cannot be reached"), "{error}");
    }

    /// The chain sqlx gives for a refused certificate: the handshake's I/O
    /// error (InvalidData) around the rustls error.
    #[cfg(feature = "tls")]
    #[test]
    fn refused_certificates_are_not_retryable() {
        for refusal in [
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
            rustls::Error::NoCertificatesPresented,
        ] {
            let error = sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                refusal,
            ));
            assert_eq!(kind(&error), Kind::CertificateRefused);
            let error = db("get token", error);
            assert!(!error.is_retryable(), "{error}");
            assert!(
                error.to_string().contains("certificate was refused"),
                "{error}"
            );
        }
        // Other TLS trouble on the wire stays a transient I/O failure.
        let error = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::DecryptError,
        ));
        assert_eq!(kind(&error), Kind::Unreachable);
    }

    #[test]
    fn closed_pools_are_not_retryable() {
        assert!(!is_retryable(&sqlx::Error::PoolClosed));
    }
}
