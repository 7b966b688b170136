//! Removing expired flows, active marks, outcomes and leases.

use std::time::Duration;

use mcp_authkit_core::{PurgeReport, Result};
use tokio::task::JoinHandle;

use crate::SqliteStore;
use crate::error::db;

impl SqliteStore {
    /// Deletes every expired row in one transaction. Expired rows are
    /// already ignored by every operation; this only reclaims their space.
    pub(crate) async fn purge(&self) -> Result<PurgeReport> {
        const OP: &str = "purge expired entries";
        let now = self.now().unix_millis();
        let _writer = self.hub().writer().await;
        self.write_transaction(OP, async |tx| {
            let mut delete = async |sql: &'static str| -> Result<u64> {
                let done = sqlx::query(sql)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db(OP, e))?;
                Ok(done.rows_affected())
            };
            let flows = delete("DELETE FROM mcp_authkit_flows WHERE expires_at <= ?1").await?;
            delete("DELETE FROM mcp_authkit_active_flows WHERE expires_at <= ?1").await?;
            let outcomes =
                delete("DELETE FROM mcp_authkit_outcomes WHERE expires_at <= ?1").await?;
            let leases = delete("DELETE FROM mcp_authkit_leases WHERE expires_at <= ?1").await?;
            Ok(PurgeReport {
                flows,
                outcomes,
                leases,
            })
        })
        .await
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

/// The background purge of [`SqliteStore::spawn_purge_task`]; it stops when
/// this handle is dropped.
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
