//! From a table row's column values to records, for backends that keep each
//! record in a row (SQLite, PostgreSQL, or a SQL backend of your own).
//!
//! It takes plain values (an `i64` revision, the record's bytes as
//! [`codec`] wrote them, the rows of a scan), so it needs no
//! SQL library: the backend reads the columns with its driver and hands
//! them here. What it settles once for every such backend:
//!
//! - revisions are stored as `i64` (SQL has no unsigned 64-bit integer): a
//!   revision above `i64::MAX` cannot have come from the store and is
//!   refused as input, never wrapped;
//! - a value that does not decode is an [`Error::Decode`] naming the
//!   backend and the row (the key or a shortened state), never its content;
//! - a scan reads one row more than its page, and that row only says that
//!   another page follows.
//!
//! ```
//! use mcp_authkit_core::{TokenKey, TokenRecord, codec, rows};
//!
//! const ROWS: rows::Rows = rows::Rows::new("mine");
//! let key = TokenKey::new("github", "user-1");
//! // The columns as a driver returned them: (revision, record).
//! let record = TokenRecord::new("secret", mcp_authkit_core::Timestamp::from_unix_millis(0));
//! let column = codec::encode_token(&record);
//! let stored = ROWS.token(&key, 7, &column).unwrap();
//! assert_eq!(stored.revision.get(), 7);
//! assert!(ROWS.token(&key, 8, b"not a record").is_err());
//! ```

use crate::store::ScanPage;
use crate::{
    Error, FlowOutcome, FlowState, PendingFlow, Result, Revision, ScanCursor, StoredToken,
    TokenKey, codec,
};

/// The most keys one scan page holds, whatever the caller asks.
pub const MAX_SCAN_PAGE: usize = 10_000;

/// The revision a stored `i64` column holds. A negative value reads as
/// revision 0 (`r0`), which no write returns, so a compare-and-swap against
/// it fails instead of matching a wrapped, huge revision.
pub fn revision(column: i64) -> Revision {
    // The stores write revisions from their own counter or sequence, which
    // starts at 1 and only grows: a negative column means a row written by
    // something else, not worth an error path in every caller.
    Revision::new(u64::try_from(column).unwrap_or(0))
}

/// The `i64` column value of `revision`, for a statement's parameter. A
/// revision above `i64::MAX` was not returned by the store: it is refused
/// with an [`Error::InvalidInput`].
pub fn revision_column(revision: Revision) -> Result<i64> {
    i64::try_from(revision.get()).map_err(|_| {
        Error::invalid_input(
            "token revision",
            format!(
                "{revision} is out of the range this store writes; pass back a value it returned"
            ),
        )
    })
}

/// How many rows a scan for a page of `limit` keys reads: the page size
/// (`limit` within `1..=`[`MAX_SCAN_PAGE`]) and, as a statement's `LIMIT`,
/// one row more, which tells whether another page follows.
pub fn scan_window(limit: usize) -> (usize, i64) {
    let limit = limit.clamp(1, MAX_SCAN_PAGE);
    (limit, i64::try_from(limit + 1).unwrap_or(i64::MAX))
}

/// The page of a scan from the rows read in key order (at most
/// [`scan_window`]'s row count): the keys of the first `limit` rows, and a
/// cursor after the last of them when there were more rows.
pub fn key_page<R>(
    rows: &[R],
    limit: usize,
    mut key: impl FnMut(&R) -> Result<TokenKey>,
) -> Result<ScanPage<TokenKey>> {
    let items = rows
        .iter()
        .take(limit)
        .map(&mut key)
        .collect::<Result<Vec<_>>>()?;
    let next = if rows.len() > limit {
        items.last().map(ScanCursor::after_key)
    } else {
        None
    };
    Ok(ScanPage { items, next })
}

/// Decodes one backend's rows into records; errors name the backend and the
/// table. Cheap to copy; make it a `const`.
#[derive(Clone, Copy, Debug)]
pub struct Rows {
    backend: &'static str,
    tokens: &'static str,
    flows: &'static str,
    outcomes: &'static str,
}

impl Rows {
    /// For `backend` (as in [`Error::Decode`]'s `backend`), with the table
    /// names of the in-tree SQL stores: `mcp_authkit_tokens`,
    /// `mcp_authkit_flows`, `mcp_authkit_outcomes`.
    pub const fn new(backend: &'static str) -> Rows {
        Rows {
            backend,
            tokens: "mcp_authkit_tokens",
            flows: "mcp_authkit_flows",
            outcomes: "mcp_authkit_outcomes",
        }
    }

    /// The same with your own table names, for error locations.
    pub const fn with_tables(
        self,
        tokens: &'static str,
        flows: &'static str,
        outcomes: &'static str,
    ) -> Rows {
        Rows {
            tokens,
            flows,
            outcomes,
            ..self
        }
    }

    /// A token row: its revision column and its record column.
    pub fn token(&self, key: &TokenKey, revision: i64, record: &[u8]) -> Result<StoredToken> {
        let record = codec::decode_token(record)
            .map_err(|e| Error::decode(self.backend, format!("{} row {key}", self.tokens), e))?;
        Ok(StoredToken {
            record,
            revision: self::revision(revision),
        })
    }

    /// A flow row's flow column.
    pub fn flow(&self, state: &FlowState, flow: &[u8]) -> Result<PendingFlow> {
        codec::decode_flow(flow)
            .map_err(|e| Error::decode(self.backend, format!("{} row {state:?}", self.flows), e))
    }

    /// An outcome row's outcome column.
    pub fn outcome(&self, state: &FlowState, outcome: &[u8]) -> Result<FlowOutcome> {
        codec::decode_outcome(outcome)
            .map_err(|e| Error::decode(self.backend, format!("{} row {state:?}", self.outcomes), e))
    }

    /// A key column stored as bytes (e.g. PostgreSQL `BYTEA`, which keeps
    /// NUL characters that `TEXT` refuses), which must be UTF-8. The
    /// error's location names the tokens table (`"{tokens} key"`): token
    /// keys are the only keys the stores scan back.
    pub fn key_part(&self, column: Vec<u8>) -> Result<String> {
        String::from_utf8(column).map_err(|e| Error::Decode {
            backend: self.backend,
            location: format!("{} key", self.tokens),
            source: std::sync::Arc::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SecretString, TokenRecord};

    const ROWS: Rows = Rows::new("test");

    #[test]
    fn revisions_round_trip_and_out_of_range_ones_are_refused() {
        for value in [1_u64, 42, i64::MAX as u64] {
            let column = revision_column(Revision::new(value)).unwrap();
            assert_eq!(revision(column).get(), value);
        }
        let error = revision_column(Revision::new(i64::MAX as u64 + 1)).unwrap_err();
        assert!(matches!(error, Error::InvalidInput { .. }), "{error}");
        assert_eq!(revision(-5).get(), 0, "never wraps to a huge revision");
    }

    #[test]
    fn undecodable_columns_name_backend_and_table_but_not_the_content() {
        let key = TokenKey::new("p", "s");
        let state = FlowState::new("abcdefgh-secret-part");
        let custom = ROWS.with_tables("t_tok", "t_flow", "t_out");
        for (error, table) in [
            (
                ROWS.token(&key, 1, b"hunter2").unwrap_err(),
                "mcp_authkit_tokens row",
            ),
            (
                ROWS.flow(&state, b"hunter2").unwrap_err(),
                "mcp_authkit_flows row",
            ),
            (
                ROWS.outcome(&state, b"hunter2").unwrap_err(),
                "mcp_authkit_outcomes row",
            ),
            (custom.flow(&state, b"hunter2").unwrap_err(), "t_flow row"),
            (
                ROWS.key_part(vec![0xff, 0xfe]).unwrap_err(),
                "mcp_authkit_tokens key",
            ),
        ] {
            let message = error.to_string();
            assert!(
                matches!(
                    error,
                    Error::Decode {
                        backend: "test",
                        ..
                    }
                ),
                "{message}"
            );
            assert!(message.contains(table), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
            assert!(!message.contains("secret-part"), "{message}");
        }
    }

    #[test]
    fn columns_decode_into_the_records_they_were_encoded_from() {
        let key = TokenKey::new("p", "s");
        let mut record = TokenRecord::new("at", crate::Timestamp::from_unix_millis(1_000));
        record.refresh_token = Some(SecretString::from("rt"));
        let stored = ROWS.token(&key, 9, &codec::encode_token(&record)).unwrap();
        assert_eq!(stored.revision.get(), 9);
        assert_eq!(
            codec::encode_token(&stored.record),
            codec::encode_token(&record)
        );
        let outcome = FlowOutcome::Failed {
            reason: "boom".into(),
        };
        let state = FlowState::new("s");
        let decoded = ROWS
            .outcome(&state, &codec::encode_outcome(&outcome))
            .unwrap();
        assert_eq!(decoded, outcome);
        assert_eq!(ROWS.key_part("ü\0x".as_bytes().to_vec()).unwrap(), "ü\0x");
    }

    #[test]
    fn a_page_has_a_cursor_only_when_a_row_beyond_it_was_read() {
        let (limit, fetch) = scan_window(2);
        assert_eq!((limit, fetch), (2, 3));
        assert_eq!(scan_window(0).0, 1);
        assert_eq!(scan_window(usize::MAX).0, MAX_SCAN_PAGE);
        let rows = ["a", "b", "c"];
        let to_key = |s: &&str| Ok(TokenKey::new("p", *s));
        let full = key_page(&rows, limit, to_key).unwrap();
        assert_eq!(full.items.len(), 2);
        let cursor = full.next.expect("a third row was read");
        assert_eq!(cursor.last_key().unwrap(), TokenKey::new("p", "b"));
        let last = key_page(&rows[..2], limit, to_key).unwrap();
        assert_eq!(last.items.len(), 2);
        assert!(last.next.is_none(), "no row beyond the page");
    }
}
