//! Removing expired flows, active marks, outcomes and leases.

use std::time::Duration;

pub use mcp_authkit_core::PurgeTask;
use mcp_authkit_core::{PurgeReport, Result};

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
    /// tokio runtime, until the returned handle is dropped (core's
    /// [`PurgeTask`], shared by every backend that needs one).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn_purge_task(&self, every: Duration) -> PurgeTask {
        PurgeTask::spawn(self.clone(), every)
    }
}
