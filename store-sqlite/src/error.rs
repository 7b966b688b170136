//! How sqlx errors become `mcp_authkit_core::Error`s.

use mcp_authkit_core::Error;

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

/// Whether the same operation may succeed later by itself: a lock held by
/// another process, an exhausted pool. A full disk, a read-only file, an I/O
/// error or a damaged file need someone to act first, so retrying them in a
/// loop only repeats the failure.
pub(crate) fn is_retryable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(_) => {
            matches!(primary_code(error), Some(SQLITE_BUSY | SQLITE_LOCKED))
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// What an operation's failure means for the store, when SQLite says more
/// than "error": the cause, that nothing was written, and what to do.
fn explanation(error: &sqlx::Error) -> Option<&'static str> {
    Some(match primary_code(error)? {
        SQLITE_FULL => {
            "the disk or the database is full, so nothing was written (the transaction was \
             rolled back); free space on the database's file system and the store works \
             again with every earlier write intact"
        }
        SQLITE_READONLY => {
            "the database is read-only to this process (the file, its -wal or -shm file, its \
             directory or the mount), so nothing was written"
        }
        SQLITE_IOERR => {
            "the operating system refused to read or write the database files (an I/O error, \
             or a file-size limit), so nothing was written; check the disk and the system log"
        }
        SQLITE_CORRUPT | SQLITE_NOTADB => {
            "the database file is damaged; restore it from a backup or point the store at a \
             new file"
        }
        SQLITE_CANTOPEN => {
            "a file of the database cannot be opened (removed, or its directory made \
             unwritable?)"
        }
        _ => return None,
    })
}

/// A SQLite error with what it means for the store in front of it; the
/// sqlx error stays its source.
#[derive(Debug, thiserror::Error)]
#[error("{explanation} ({source})")]
pub(crate) struct Explained {
    explanation: &'static str,
    #[source]
    source: sqlx::Error,
}

/// A failed store operation. sqlx errors never carry bound values, so no
/// secret reaches the message.
pub(crate) fn db(operation: &'static str, error: sqlx::Error) -> Error {
    let retryable = is_retryable(&error);
    match explanation(&error) {
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
