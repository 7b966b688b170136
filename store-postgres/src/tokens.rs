//! `TokenStore` on the tokens and leases tables.

use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::{
    CasOutcome, Error, LeaseToken, Result, Revision, ScanCursor, ScanPage, StoredToken, TokenKey,
    TokenRecord, TokenStore, async_trait, codec,
};
use sqlx::{AssertSqlSafe, Row};

use crate::PostgresStore;
use crate::error::{BACKEND, db, decode, out_of_range};

fn revision_of(value: i64) -> Revision {
    // Sequence values start at 1; a negative value is never written.
    Revision::new(u64::try_from(value).unwrap_or(0))
}

fn revision_param(revision: Revision) -> Result<i64> {
    i64::try_from(revision.get()).map_err(|_| out_of_range("token revision", revision))
}

fn location(key: &TokenKey) -> String {
    format!("mcp_authkit_tokens row {key}")
}

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
        Ok(revision.map(revision_of))
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
        let record = codec::decode_token(bytes).map_err(|e| decode(location(key), e))?;
        Ok(Some(StoredToken {
            record,
            revision: revision_of(revision),
        }))
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
        Ok(revision_of(revision))
    }

    async fn compare_and_swap(
        &self,
        key: &TokenKey,
        expected: Option<Revision>,
        record: &TokenRecord,
    ) -> Result<CasOutcome> {
        let bytes = codec::encode_token(record);
        let expires_at = record.expires_at.map(|at| at.unix_millis());
        let expected_param = expected.map(revision_param).transpose()?;
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
                return Ok(CasOutcome::Swapped(revision_of(revision)));
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
        let revision = revision_param(revision)?;
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
        let limit = limit.clamp(1, 10_000);
        let after = cursor.map(ScanCursor::last_key).transpose()?;
        // One row more than the page tells whether another page follows.
        let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
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
            String::from_utf8(bytes).map_err(|e| Error::Decode {
                backend: BACKEND,
                location: "mcp_authkit_tokens key".into(),
                source: Arc::new(e),
            })
        };
        let mut items = Vec::with_capacity(rows.len().min(limit));
        for row in rows.iter().take(limit) {
            items.push(TokenKey::new(text(row, 0)?, text(row, 1)?));
        }
        let next = if rows.len() > limit {
            items.last().map(ScanCursor::after_key)
        } else {
            None
        };
        Ok(ScanPage { items, next })
    }
}
