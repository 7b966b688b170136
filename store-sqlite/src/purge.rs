//! Removing expired flows, active marks, outcomes and leases.

use std::time::Duration;

pub use mcp_authkit_core::PurgeTask;
use mcp_authkit_core::{PurgeReport, Result};
use sqlx::{Connection, SqliteConnection};

use crate::SqliteStore;
use crate::error::db;

/// The shortest pause between two purge transactions. A writer of another
/// process that found the file locked sleeps in SQLite's busy handler, 1,
/// 2, then 5 ms (18 ms in all by its fourth try): a pause longer than that
/// schedule's early steps lets it in at its next try.
const PAUSE_MIN: Duration = Duration::from_millis(10);

/// Rows one purge transaction deletes at most, per table. Small enough that
/// a batch holds the write lock for a few milliseconds (its commit's fsync
/// included), so no writer waits long behind a purge whatever its backlog.
pub(crate) const PURGE_BATCH: i64 = 256;

/// Each table's batch delete: the `?2` oldest-expired rows at `?1`, found
/// through the table's expiry index.
const DELETE_FLOWS: &str = "DELETE FROM mcp_authkit_flows WHERE state IN
    (SELECT state FROM mcp_authkit_flows WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)";
const DELETE_ACTIVE: &str = "DELETE FROM mcp_authkit_active_flows WHERE (provider, subject) IN
    (SELECT provider, subject FROM mcp_authkit_active_flows
     WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)";
const DELETE_OUTCOMES: &str = "DELETE FROM mcp_authkit_outcomes WHERE seq IN
    (SELECT seq FROM mcp_authkit_outcomes WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)";
const DELETE_LEASES: &str = "DELETE FROM mcp_authkit_leases WHERE (provider, subject) IN
    (SELECT provider, subject FROM mcp_authkit_leases
     WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)";

impl SqliteStore {
    /// Deletes every row expired now, in transactions of at most
    /// [`PURGE_BATCH`] rows per table, pausing between them (at least
    /// [`PAUSE_MIN`]) so that writers of this process and of others get the
    /// lock. A backlog of 100k expired flows takes a few seconds this way,
    /// during which writes go on. Expired rows are already
    /// ignored by every operation; this only reclaims their space.
    pub(crate) async fn purge(&self) -> Result<PurgeReport> {
        const OP: &str = "purge expired entries";
        let now = self.now().unix_millis();
        // A connection of its own, out of the pool (so its setting never
        // reaches another operation), whose commits skip the fsync: a purge
        // that a power cut undoes only brings back expired rows, which every
        // operation ignores and the next purge deletes. That keeps each batch
        // to its CPU work, about a millisecond, instead of a disk flush.
        let mut conn = self.pool().acquire().await.map_err(|e| db(OP, e))?.detach();
        sqlx::query("PRAGMA synchronous = NORMAL")
            .execute(&mut conn)
            .await
            .map_err(|e| db(OP, e))?;
        let mut report = PurgeReport::default();
        loop {
            let started = tokio::time::Instant::now();
            let (batch, more) = self.purge_batch(&mut conn, now).await?;
            report.flows += batch.flows;
            report.outcomes += batch.outcomes;
            report.leases += batch.leases;
            if !more {
                let _ = conn.close().await;
                return Ok(report);
            }
            // At least as long as the batch held the lock: writers of this
            // process queue on the hub and go next, but a writer of another
            // process must find the file free when its busy handler wakes it.
            tokio::time::sleep(started.elapsed().max(PAUSE_MIN)).await;
        }
    }

    /// One short transaction of the purge; returns what it deleted and
    /// whether a table had more expired rows than one batch.
    async fn purge_batch(
        &self,
        conn: &mut SqliteConnection,
        now: i64,
    ) -> Result<(PurgeReport, bool)> {
        const OP: &str = "purge expired entries";
        let _writer = self.hub().writer().await;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| db(OP, e))?;
        let mut more = false;
        let mut delete = async |sql: &'static str| -> Result<u64> {
            let done = sqlx::query(sql)
                .bind(now)
                .bind(PURGE_BATCH)
                .execute(&mut *tx)
                .await
                .map_err(|e| db(OP, e))?;
            let deleted = done.rows_affected();
            more |= deleted >= PURGE_BATCH as u64;
            Ok(deleted)
        };
        let flows = delete(DELETE_FLOWS).await?;
        delete(DELETE_ACTIVE).await?;
        let outcomes = delete(DELETE_OUTCOMES).await?;
        let leases = delete(DELETE_LEASES).await?;
        tx.commit().await.map_err(|e| db(OP, e))?;
        let report = PurgeReport {
            flows,
            outcomes,
            leases,
        };
        Ok((report, more))
    }

    /// Purges expired entries now and then every `every`, on the current
    /// tokio runtime, until the returned handle is dropped (core's
    /// [`PurgeTask`], shared by every backend that needs one).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn_purge_task(&self, every: Duration) -> PurgeTask {
        PurgeTask::spawn(self.clone(), every)
    }
}
