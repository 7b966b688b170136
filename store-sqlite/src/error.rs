//! How sqlx errors become `mcp_authkit_core::Error`s.

use mcp_authkit_core::{CodecError, Error};

pub(crate) const BACKEND: &str = "sqlite";

// Primary SQLite result codes (the low byte of an extended code).
pub(crate) const SQLITE_BUSY: i64 = 5;
pub(crate) const SQLITE_LOCKED: i64 = 6;
pub(crate) const SQLITE_IOERR: i64 = 10;
pub(crate) const SQLITE_CORRUPT: i64 = 11;
pub(crate) const SQLITE_FULL: i64 = 13;
pub(crate) const SQLITE_CANTOPEN: i64 = 14;
pub(crate) const SQLITE_READONLY: i64 = 8;
pub(crate) const SQLITE_NOTADB: i64 = 26;

/// The primary SQLite result code of a database error.
pub(crate) fn primary_code(error: &sqlx::Error) -> Option<i64> {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i64>().ok())
            .map(|code| code & 0xff),
        _ => None,
    }
}

/// Whether the same operation may succeed later: a lock held by another
/// process, a full disk, an I/O hiccup, an exhausted pool.
pub(crate) fn is_retryable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(_) => matches!(
            primary_code(error),
            Some(SQLITE_BUSY | SQLITE_LOCKED | SQLITE_IOERR | SQLITE_FULL)
        ),
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// A failed store operation. sqlx errors never carry bound values, so no
/// secret reaches the message.
pub(crate) fn db(operation: &'static str, error: sqlx::Error) -> Error {
    let retryable = is_retryable(&error);
    Error::backend(BACKEND, operation, retryable, error)
}

/// A stored value that does not decode.
pub(crate) fn decode(location: impl Into<String>, error: CodecError) -> Error {
    Error::decode(BACKEND, location, error)
}

/// A value out of the range this crate writes (a revision above `i64::MAX`).
pub(crate) fn out_of_range(what: &'static str, value: impl std::fmt::Display) -> Error {
    Error::invalid_input(
        what,
        format!("{value} is out of the range this store writes; pass back a value it returned"),
    )
}
