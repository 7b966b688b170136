//! A background purge for stores that keep expired entries until someone
//! removes them (SQL tables, files), as opposed to stores that expire them
//! on their own (Redis TTLs, the memory store's sweeper).
//!
//! A backend that has such entries implements
//! [`PendingStore::purge_expired`] and offers `spawn_purge_task` by
//! returning [`PurgeTask::spawn`] of a handle to itself: the loop, its
//! logging and the stop-on-drop handle are the same for every backend.
//!
//! ```
//! # use std::sync::Arc;
//! # use std::time::Duration;
//! # use mcp_authkit_core::{PendingStore, PurgeTask};
//! // In a backend crate, for a cheaply cloned store:
//! // pub fn spawn_purge_task(&self, every: Duration) -> PurgeTask {
//! //     PurgeTask::spawn(self.clone(), every)
//! // }
//! # fn use_it(store: Arc<dyn PendingStore>) {
//! let task = PurgeTask::spawn(store, Duration::from_secs(60));
//! // ... the application runs; dropping `task` stops it.
//! # drop(task);
//! # }
//! ```

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::PendingStore;

/// The purge loop of a backend's `spawn_purge_task`: calls
/// [`PendingStore::purge_expired`] at once and then every interval, on the
/// tokio runtime it was spawned on, until this handle is dropped.
#[must_use = "the purge task stops when this handle is dropped"]
#[derive(Debug)]
pub struct PurgeTask {
    task: JoinHandle<()>,
}

impl PurgeTask {
    /// Purges `store`'s expired entries now and then every `every` (at
    /// least 1 ms), on the current tokio runtime. A failed purge is logged
    /// (a warning, with the store's error, which names no secret) and tried
    /// again at the next interval; a purge that overruns the interval delays
    /// the next one instead of running back to back.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn<S>(store: S, every: Duration) -> PurgeTask
    where
        S: PendingStore + 'static,
    {
        let every = every.max(Duration::from_millis(1));
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match store.purge_expired().await {
                    Ok(report) if report.total() > 0 => tracing::debug!(
                        backend = store.pending_backend_name(),
                        flows = report.flows,
                        outcomes = report.outcomes,
                        leases = report.leases,
                        "purged expired entries"
                    ),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(
                        backend = store.pending_backend_name(),
                        %error,
                        "purging expired entries failed; trying again at the next interval"
                    ),
                }
            }
        });
        PurgeTask { task }
    }

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
