//! `TokenStore` on the tokens and leases tables.

use std::time::Duration;

use mcp_authkit_core::{
    CasOutcome, LeaseToken, Result, Revision, ScanCursor, ScanPage, StoredToken, TokenKey,
    TokenRecord, TokenStore, async_trait, codec,
    rows::{self, Rows},
};
use sqlx::Row;

use crate::SqliteStore;
use crate::error::{BACKEND, db};

/// Writes the record at the next revision of the database-wide counter,
/// whatever the key holds; the counter follows by trigger, in the same
/// statement.
const PUT: &str = "
INSERT INTO mcp_authkit_tokens (provider, subject, revision, expires_at, record)
VALUES (?1, ?2,
        (SELECT last_revision + 1 FROM mcp_authkit_revision_counter WHERE id = 1), ?3, ?4)
ON CONFLICT (provider, subject) DO UPDATE SET
    revision = excluded.revision,
    expires_at = excluded.expires_at,
    record = excluded.record
RETURNING revision";

/// Writes only if the key holds no record.
const CREATE: &str = "
INSERT INTO mcp_authkit_tokens (provider, subject, revision, expires_at, record)
VALUES (?1, ?2,
        (SELECT last_revision + 1 FROM mcp_authkit_revision_counter WHERE id = 1), ?3, ?4)
ON CONFLICT (provider, subject) DO NOTHING
RETURNING revision";

/// Writes only if the key is at revision ?5.
const SWAP: &str = "
UPDATE mcp_authkit_tokens SET
    revision = (SELECT last_revision + 1 FROM mcp_authkit_revision_counter WHERE id = 1),
    expires_at = ?3,
    record = ?4
WHERE provider = ?1 AND subject = ?2 AND revision = ?5
RETURNING revision";

/// Decodes this store's rows (core's shared decoding for SQL backends).
pub(crate) const ROWS: Rows = Rows::new(BACKEND);

/// A scan position: the last key returned, length-prefixed so no character
/// in the provider can fake the split.
impl SqliteStore {
    /// The token's row read through sqlx's pool.
    async fn get_pooled(&self, key: &TokenKey) -> Result<Option<(i64, Vec<u8>)>> {
        let row = sqlx::query(
            "SELECT revision, record FROM mcp_authkit_tokens WHERE provider = ?1 AND subject = ?2",
        )
        .bind(key.provider())
        .bind(key.subject())
        .fetch_optional(self.pool())
        .await
        .map_err(|e| db("get token", e))?;
        let Some(row) = row else { return Ok(None) };
        let revision: i64 = row.try_get(0).map_err(|e| db("get token", e))?;
        let bytes: Vec<u8> = row.try_get(1).map_err(|e| db("get token", e))?;
        Ok(Some((revision, bytes)))
    }

    async fn current_revision(&self, key: &TokenKey) -> Result<Option<Revision>> {
        let revision: Option<i64> = sqlx::query_scalar(
            "SELECT revision FROM mcp_authkit_tokens WHERE provider = ?1 AND subject = ?2",
        )
        .bind(key.provider())
        .bind(key.subject())
        .fetch_optional(self.pool())
        .await
        .map_err(|e| db("read token revision", e))?;
        Ok(revision.map(rows::revision))
    }
}

#[async_trait]
impl TokenStore for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    async fn get(&self, key: &TokenKey) -> Result<Option<StoredToken>> {
        // On this thread when it can (see the reader module), through the
        // pool otherwise; both read the same row in a fresh transaction.
        let direct = self
            .reader()
            .and_then(|reader| reader.token(key.provider(), key.subject()));
        let row = match direct {
            Some(row) => row,
            None => self.get_pooled(key).await?,
        };
        let Some((revision, bytes)) = row else {
            return Ok(None);
        };
        ROWS.token(key, revision, &bytes).map(Some)
    }

    async fn put(&self, key: &TokenKey, record: &TokenRecord) -> Result<Revision> {
        let bytes = codec::encode_token(record);
        let _writer = self.hub().writer().await;
        // Every row read, so the commit's error is seen: see `durable` in
        // the crate docs.
        let rows: Vec<i64> = sqlx::query_scalar(PUT)
            .bind(key.provider())
            .bind(key.subject())
            .bind(record.expires_at.map(|at| at.unix_millis()))
            .bind(bytes)
            .fetch_all(self.pool())
            .await
            .map_err(|e| db("put token", e))?;
        let revision = rows.first().copied().ok_or_else(|| {
            mcp_authkit_core::Error::Internal("an upsert of a token returned no revision".into())
        })?;
        Ok(rows::revision(revision))
    }

    async fn compare_and_swap(
        &self,
        key: &TokenKey,
        expected: Option<Revision>,
        record: &TokenRecord,
    ) -> Result<CasOutcome> {
        let bytes = codec::encode_token(record);
        let expires_at = record.expires_at.map(|at| at.unix_millis());
        let expected_param = expected.map(rows::revision_column).transpose()?;
        loop {
            let written: Option<i64> = {
                let _writer = self.hub().writer().await;
                let query = match expected_param {
                    Some(expected) => sqlx::query_scalar(SWAP)
                        .bind(key.provider())
                        .bind(key.subject())
                        .bind(expires_at)
                        .bind(&bytes)
                        .bind(expected),
                    None => sqlx::query_scalar(CREATE)
                        .bind(key.provider())
                        .bind(key.subject())
                        .bind(expires_at)
                        .bind(&bytes),
                };
                // Every row read, so the commit's error is seen.
                query
                    .fetch_all(self.pool())
                    .await
                    .map_err(|e| db("compare and swap token", e))?
                    .into_iter()
                    .next()
            };
            if let Some(revision) = written {
                return Ok(CasOutcome::Swapped(rows::revision(revision)));
            }
            // The write found another revision. Revisions are never reused,
            // so what is read now differs from `expected`, except when a
            // create-only write met a record that was deleted since: then
            // the key is free again and the write is tried once more.
            let current = self.current_revision(key).await?;
            if current != expected {
                return Ok(CasOutcome::Conflict { current });
            }
        }
    }

    async fn delete(&self, key: &TokenKey) -> Result<bool> {
        let _writer = self.hub().writer().await;
        let done =
            sqlx::query("DELETE FROM mcp_authkit_tokens WHERE provider = ?1 AND subject = ?2")
                .bind(key.provider())
                .bind(key.subject())
                .execute(self.pool())
                .await
                .map_err(|e| db("delete token", e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_if_revision(&self, key: &TokenKey, revision: Revision) -> Result<bool> {
        let revision = rows::revision_column(revision)?;
        let _writer = self.hub().writer().await;
        let done = sqlx::query(
            "DELETE FROM mcp_authkit_tokens WHERE provider = ?1 AND subject = ?2 AND revision = ?3",
        )
        .bind(key.provider())
        .bind(key.subject())
        .bind(revision)
        .execute(self.pool())
        .await
        .map_err(|e| db("delete token by revision", e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<LeaseToken>> {
        let lease = LeaseToken::generate();
        let now = self.now();
        let until = now.saturating_add(ttl);
        let _writer = self.hub().writer().await;
        // Takes a free key, or replaces a lease whose TTL has passed; a live
        // lease makes the statement change nothing and return no row.
        let taken: Vec<String> = sqlx::query_scalar(
            "INSERT INTO mcp_authkit_leases (provider, subject, lease_token, expires_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (provider, subject) DO UPDATE SET
                 lease_token = excluded.lease_token,
                 expires_at = excluded.expires_at
             WHERE mcp_authkit_leases.expires_at <= ?5
             RETURNING lease_token",
        )
        .bind(key.provider())
        .bind(key.subject())
        .bind(lease.as_str())
        .bind(until.unix_millis())
        .bind(now.unix_millis())
        // Every row read, so the commit's error is seen: a lease reported
        // taken but never committed would let two holders refresh.
        .fetch_all(self.pool())
        .await
        .map_err(|e| db("acquire refresh lease", e))?;
        Ok((!taken.is_empty()).then_some(lease))
    }

    async fn release_lease(&self, key: &TokenKey, lease: &LeaseToken) -> Result<bool> {
        let now = self.now();
        let _writer = self.hub().writer().await;
        let until: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM mcp_authkit_leases
             WHERE provider = ?1 AND subject = ?2 AND lease_token = ?3
             RETURNING expires_at",
        )
        .bind(key.provider())
        .bind(key.subject())
        .bind(lease.as_str())
        // Every row read, so the commit's error is seen.
        .fetch_all(self.pool())
        .await
        .map_err(|e| db("release refresh lease", e))?;
        // A lease that ran out was no longer held, even if nobody took it.
        Ok(until
            .first()
            .is_some_and(|until| *until > now.unix_millis()))
    }

    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage<TokenKey>> {
        let (limit, fetch) = rows::scan_window(limit);
        let after = cursor.map(ScanCursor::last_key).transpose()?;
        let query = match &after {
            Some(after) => sqlx::query(
                "SELECT provider, subject FROM mcp_authkit_tokens
                 WHERE (provider, subject) > (?1, ?2)
                 ORDER BY provider, subject LIMIT ?3",
            )
            .bind(after.provider())
            .bind(after.subject())
            .bind(fetch),
            None => sqlx::query(
                "SELECT provider, subject FROM mcp_authkit_tokens
                 ORDER BY provider, subject LIMIT ?1",
            )
            .bind(fetch),
        };
        let rows = query
            .fetch_all(self.pool())
            .await
            .map_err(|e| db("scan tokens", e))?;
        rows::key_page(&rows, limit, |row| {
            let provider: &str = row.try_get(0).map_err(|e| db("scan tokens", e))?;
            let subject: &str = row.try_get(1).map_err(|e| db("scan tokens", e))?;
            Ok(TokenKey::new(provider, subject))
        })
    }
}
