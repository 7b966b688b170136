//! Removing expired flows, active marks, outcomes and leases.

use std::time::Duration;

use mcp_authkit_core::{PurgeReport, Result};
use tokio::task::JoinHandle;

use crate::PostgresStore;
use crate::error::db;
use crate::tokens::stmt;

/// Rows one purge statement deletes at most: each statement is its own
/// short transaction, so a large backlog never holds many row locks or one
/// long transaction (which would keep VACUUM from reclaiming anything).
pub(crate) const PURGE_BATCH: i64 = 256;

impl PostgresStore {
    /// Deletes every row expired now, [`PURGE_BATCH`] rows per statement.
    /// Expired rows are already ignored by every operation; this only
    /// reclaims their space.
    pub(crate) async fn purge(&self) -> Result<PurgeReport> {
        const OP: &str = "purge expired entries";
        let now = self.now().unix_millis();
        let mut report = PurgeReport::default();
        let sql = self.sql();
        let mut active_marks = 0;
        for (statement, deleted_total) in [
            (&sql.purge_flows, &mut report.flows),
            (&sql.purge_active, &mut active_marks),
            (&sql.purge_outcomes, &mut report.outcomes),
            (&sql.purge_leases, &mut report.leases),
        ] {
            loop {
                let deleted = sqlx::query(stmt(statement))
                    .bind(now)
                    .bind(PURGE_BATCH)
                    .execute(self.pool())
                    .await
                    .map_err(|e| db(OP, e))?
                    .rows_affected();
                *deleted_total += deleted;
                if deleted < PURGE_BATCH as u64 {
                    break;
                }
                // Lets other work of this runtime in between batches.
                tokio::task::yield_now().await;
            }
        }
        Ok(report)
    }

    /// Purges expired entries now and then every `every`, on the current
    /// tokio runtime, until the returned handle is dropped.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn_purge_task(&self, every: Duration) -> PurgeTask {
        let store = self.clone();
        let every = every.max(Duration::from_millis(1));
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match store.purge().await {
                    Ok(report) if report.total() > 0 => tracing::debug!(
                        flows = report.flows,
                        outcomes = report.outcomes,
                        leases = report.leases,
                        "purged expired entries"
                    ),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(
                        %error,
                        "purging expired entries failed; trying again at the next interval"
                    ),
                }
            }
        });
        PurgeTask { task }
    }
}

/// The background purge of [`PostgresStore::spawn_purge_task`]; it stops
/// when this handle is dropped.
#[must_use = "the purge task stops when this handle is dropped"]
#[derive(Debug)]
pub struct PurgeTask {
    task: JoinHandle<()>,
}

impl PurgeTask {
    /// Stops the task (as dropping the handle does).
    pub fn stop(self) {}

    /// Whether the task still runs (false after its runtime shut down).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for PurgeTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}
