//! `TokenStore` on the tokens and leases tables.

use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::{
    CasOutcome, Error, LeaseToken, Result, Revision, ScanCursor, ScanPage, StoredToken, TokenKey,
    TokenRecord, TokenStore, async_trait, codec,
    rows::{self, Rows},
};
use sqlx::{AssertSqlSafe, Row};

use crate::PostgresStore;
use crate::error::{BACKEND, db};

/// Decodes this store's rows (core's shared decoding for SQL backends).
pub(crate) const ROWS: Rows = Rows::new(BACKEND);

/// A statement of the store (its text built at open, with the schema).
pub(crate) fn stmt(text: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(Arc::clone(text))
}

impl PostgresStore {
    async fn current_revision(&self, key: &TokenKey) -> Result<Option<Revision>> {
        let revision: Option<i64> = sqlx::query_scalar(stmt(&self.sql().revision))
            .bind(key.provider().as_bytes())
            .bind(key.subject().as_bytes())
            .fetch_optional(self.pool())
            .await
            .map_err(|e| db("read token revision", e))?;
        Ok(revision.map(rows::revision))
    }
}

#[async_trait]
impl TokenStore for PostgresStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    async fn get(&self, key: &TokenKey) -> Result<Option<StoredToken>> {
        let row = sqlx::query(stmt(&self.sql().get))
            .bind(key.provider().as_bytes())
            .bind(key.subject().as_bytes())
            .fetch_optional(self.pool())
            .await
            .map_err(|e| db("get token", e))?;
        let Some(row) = row else { return Ok(None) };
        let revision: i64 = row.try_get(0).map_err(|e| db("get token", e))?;
        let bytes: &[u8] = row.try_get(1).map_err(|e| db("get token", e))?;
        ROWS.token(key, revision, bytes).map(Some)
    }

    async fn put(&self, key: &TokenKey, record: &TokenRecord) -> Result<Revision> {
        let bytes = codec::encode_token(record);
        // Every row read (fetch_all), so an error at commit is seen.
        let rows: Vec<i64> = sqlx::query_scalar(stmt(&self.sql().put))
            .bind(key.provider().as_bytes())
            .bind(key.subject().as_bytes())
            .bind(record.expires_at.map(|at| at.unix_millis()))
            .bind(bytes)
            .bind(&*self.sql().sequence)
            .fetch_all(self.pool())
            .await
            .map_err(|e| db("put token", e))?;
        let revision = rows
            .first()
            .copied()
            .ok_or_else(|| Error::Internal("an upsert of a token returned no revision".into()))?;
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
            let query = match expected_param {
                Some(expected) => sqlx::query_scalar(stmt(&self.sql().swap))
                    .bind(key.provider().as_bytes())
                    .bind(key.subject().as_bytes())
                    .bind(expires_at)
                    .bind(&bytes)
                    .bind(expected)
                    .bind(&*self.sql().sequence),
                None => sqlx::query_scalar(stmt(&self.sql().create))
                    .bind(key.provider().as_bytes())
                    .bind(key.subject().as_bytes())
                    .bind(expires_at)
                    .bind(&bytes)
                    .bind(&*self.sql().sequence),
            };
            let written: Option<i64> = query
                .fetch_all(self.pool())
                .await
                .map_err(|e| db("compare and swap token", e))?
                .into_iter()
                .next();
            if let Some(revision) = written {
                return Ok(CasOutcome::Swapped(rows::revision(revision)));
            }
            // Revisions are never reused, so what is read now differs from
            // `expected`, except when a create-only write met a record that
            // was deleted since: the key is free again, try once more.
            let current = self.current_revision(key).await?;
            if current != expected {
                return Ok(CasOutcome::Conflict { current });
            }
        }
    }

    async fn delete(&self, key: &TokenKey) -> Result<bool> {
        let done = sqlx::query(stmt(&self.sql().delete))
            .bind(key.provider().as_bytes())
            .bind(key.subject().as_bytes())
            .execute(self.pool())
            .await
            .map_err(|e| db("delete token", e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_if_revision(&self, key: &TokenKey, revision: Revision) -> Result<bool> {
        let revision = rows::revision_column(revision)?;
        let done = sqlx::query(stmt(&self.sql().delete_if_revision))
            .bind(key.provider().as_bytes())
            .bind(key.subject().as_bytes())
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
        // Every row read: a lease reported taken but never committed would
        // let two holders refresh.
        let taken: Vec<String> = sqlx::query_scalar(stmt(&self.sql().acquire_lease))
            .bind(key.provider().as_bytes())
            .bind(key.subject().as_bytes())
            .bind(lease.as_str())
            .bind(until.unix_millis())
            .bind(now.unix_millis())
            .fetch_all(self.pool())
            .await
            .map_err(|e| db("acquire refresh lease", e))?;
        Ok((!taken.is_empty()).then_some(lease))
    }

    async fn release_lease(&self, key: &TokenKey, lease: &LeaseToken) -> Result<bool> {
        let now = self.now();
        let until: Vec<i64> = sqlx::query_scalar(stmt(&self.sql().release_lease))
            .bind(key.provider().as_bytes())
            .bind(key.subject().as_bytes())
            .bind(lease.as_str())
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
            Some(after) => sqlx::query(stmt(&self.sql().scan_after))
                .bind(after.provider().as_bytes())
                .bind(after.subject().as_bytes())
                .bind(fetch),
            None => sqlx::query(stmt(&self.sql().scan_first)).bind(fetch),
        };
        let rows = query
            .fetch_all(self.pool())
            .await
            .map_err(|e| db("scan tokens", e))?;
        let text = |row: &sqlx::postgres::PgRow, i: usize| -> Result<String> {
            let bytes: Vec<u8> = row.try_get(i).map_err(|e| db("scan tokens", e))?;
            ROWS.key_part(bytes)
        };
        rows::key_page(&rows, limit, |row| {
            Ok(TokenKey::new(text(row, 0)?, text(row, 1)?))
        })
    }
}
