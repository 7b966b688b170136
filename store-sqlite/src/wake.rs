//! What the store instances of one process share per database file: the
//! waiters of `wait`, the poller that finds other processes' completions,
//! and the lock that queues this process's writes.
//!
//! Every `SqliteStore` opened on the same file (by canonical path) in this
//! process gets the same [`Hub`]. `complete` hands the outcome to the hub
//! after its commit, which wakes local waiters at once. Completions by other
//! processes are found by one poller task per hub, which reads outcome rows
//! with a sequence number above the last one it saw; it runs only while
//! someone waits, on its own single connection.
//!
//! No completion is lost: a waiter registers first, then makes sure the
//! poller's cursor is set, then reads the stored outcome. A completion
//! committed before that read is found by the read; one committed after it
//! has a higher sequence number than the cursor (writes commit in sequence
//! order), so the poller finds it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use mcp_authkit_core::{Clock, FlowOutcome, FlowState, Result, codec};
use sqlx::Row;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

use crate::error::db;

type Waiters = HashMap<FlowState, watch::Sender<Option<FlowOutcome>>>;

/// Rows the poller reads per query.
const POLL_BATCH: i64 = 256;

/// The shared per-file state of this process.
pub(crate) struct Hub {
    path: PathBuf,
    /// The poller's own connection, opened when first needed.
    poll_pool: SqlitePool,
    poll_min: Duration,
    poll_max: Duration,
    clock: Arc<dyn Clock>,
    waiters: Mutex<Waiters>,
    /// Sequence number of the last completion the poller has handled; `None`
    /// until the first waiter sets it.
    cursor: tokio::sync::Mutex<Option<i64>>,
    /// Signalled when a waiter registers, so an idle poller starts.
    activity: Arc<Notify>,
    poller: Mutex<Option<AbortHandle>>,
    /// Writes of this process's instances take turns here instead of
    /// spinning on SQLite's busy handler against each other.
    writes: tokio::sync::Mutex<()>,
}

fn hubs() -> MutexGuard<'static, HashMap<PathBuf, Weak<Hub>>> {
    static HUBS: OnceLock<Mutex<HashMap<PathBuf, Weak<Hub>>>> = OnceLock::new();
    lock(HUBS.get_or_init(Default::default))
}

/// Every critical section here leaves its map consistent before anything
/// that could panic, so a poisoned lock still guards sound data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hub {
    /// The hub of the file at `canonical`, created on first use.
    pub(crate) fn for_file(
        canonical: &Path,
        connect: SqliteConnectOptions,
        poll_min: Duration,
        poll_max: Duration,
        clock: Arc<dyn Clock>,
    ) -> Arc<Hub> {
        let mut hubs = hubs();
        if let Some(hub) = hubs.get(canonical).and_then(Weak::upgrade) {
            return hub;
        }
        hubs.retain(|_, hub| hub.strong_count() > 0);
        let poll_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .test_before_acquire(false)
            .connect_lazy_with(connect);
        let hub = Arc::new(Hub {
            path: canonical.to_owned(),
            poll_pool,
            poll_min,
            poll_max,
            clock,
            waiters: Mutex::new(HashMap::new()),
            cursor: tokio::sync::Mutex::new(None),
            activity: Arc::new(Notify::new()),
            poller: Mutex::new(None),
            writes: tokio::sync::Mutex::new(()),
        });
        hubs.insert(canonical.to_owned(), Arc::downgrade(&hub));
        hub
    }

    /// Waits for this process's turn to write.
    pub(crate) async fn writer(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writes.lock().await
    }

    /// Starts listening for the completion of `state`. Must be called on a
    /// tokio runtime (the poller is spawned on it).
    pub(crate) fn register(self: &Arc<Self>, state: &FlowState) -> Registration<'_> {
        let receiver = lock(&self.waiters)
            .entry(state.clone())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        self.ensure_poller();
        self.activity.notify_one();
        Registration {
            hub: self,
            state: state.clone(),
            receiver: Some(receiver),
        }
    }

    /// Sets the poller's cursor if no waiter has yet. After this returns,
    /// every completion not visible to a read that starts now will be found
    /// by the poller.
    pub(crate) async fn ensure_cursor(&self) -> Result<()> {
        let mut cursor = self.cursor.lock().await;
        if cursor.is_none() {
            *cursor = Some(self.read_last_seq().await?);
        }
        Ok(())
    }

    async fn read_last_seq(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM mcp_authkit_outcomes")
            .fetch_one(&self.poll_pool)
            .await
            .map_err(|e| db("read completion sequence", e))
    }

    /// Wakes this process's waiters on `state`.
    pub(crate) fn deliver(&self, state: &FlowState, outcome: &FlowOutcome) {
        if let Some(sender) = lock(&self.waiters).get(state) {
            sender.send_replace(Some(outcome.clone()));
        }
    }

    fn has_waiters(&self) -> bool {
        !lock(&self.waiters).is_empty()
    }

    fn is_waited_on(&self, state: &FlowState) -> bool {
        lock(&self.waiters).contains_key(state)
    }

    fn ensure_poller(self: &Arc<Self>) {
        let mut poller = lock(&self.poller);
        // A poller dies with the runtime it was spawned on; start another on
        // the caller's runtime then.
        if poller.as_ref().is_some_and(|handle| !handle.is_finished()) {
            return;
        }
        let task = tokio::spawn(poll_loop(
            Arc::downgrade(self),
            Arc::clone(&self.activity),
            self.poll_min,
            self.poll_max,
        ));
        *poller = Some(task.abort_handle());
    }

    /// Reads completions after the cursor and delivers those someone waits
    /// on; returns how many it delivered.
    async fn poll_once(&self) -> Result<usize> {
        let mut cursor = self.cursor.lock().await;
        let mut after = match *cursor {
            Some(after) => after,
            None => self.read_last_seq().await?,
        };
        let mut delivered = 0;
        loop {
            let rows = sqlx::query(
                "SELECT seq, state, expires_at, outcome FROM mcp_authkit_outcomes
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .bind(after)
            .bind(POLL_BATCH)
            .fetch_all(&self.poll_pool)
            .await
            .map_err(|e| db("poll for completions", e))?;
            let now = self.clock.now().unix_millis();
            for row in &rows {
                after = row.try_get(0).map_err(|e| db("poll for completions", e))?;
                let state = FlowState::new(
                    row.try_get::<&str, _>(1)
                        .map_err(|e| db("poll for completions", e))?,
                );
                let expires_at: i64 = row.try_get(2).map_err(|e| db("poll for completions", e))?;
                if expires_at <= now || !self.is_waited_on(&state) {
                    continue;
                }
                let bytes: &[u8] = row.try_get(3).map_err(|e| db("poll for completions", e))?;
                match codec::decode_outcome(bytes) {
                    Ok(outcome) => {
                        self.deliver(&state, &outcome);
                        delivered += 1;
                    }
                    // The waiter's own read reports it; one bad row must not
                    // stop the poller for everyone else.
                    Err(error) => tracing::warn!(
                        path = %self.path.display(),
                        %error,
                        "an outcome row does not decode; its waiters will time out"
                    ),
                }
            }
            *cursor = Some(after);
            if (rows.len() as i64) < POLL_BATCH {
                return Ok(delivered);
            }
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(poller) = lock(&self.poller).take() {
            poller.abort();
        }
    }
}

/// The poller of one hub: sleeps while nobody waits, otherwise polls with an
/// interval that starts at `min` and doubles while nothing arrives, up to
/// `max`.
async fn poll_loop(hub: Weak<Hub>, activity: Arc<Notify>, min: Duration, max: Duration) {
    let mut interval = min;
    loop {
        let idle = match hub.upgrade() {
            Some(hub) => !hub.has_waiters(),
            None => return,
        };
        if idle {
            // A registration after the check above left a permit, so this
            // returns at once then.
            activity.notified().await;
            interval = min;
            continue;
        }
        tokio::time::sleep(interval).await;
        let Some(strong) = hub.upgrade() else { return };
        match strong.poll_once().await {
            Ok(0) => interval = (interval * 2).min(max),
            Ok(_) => interval = min,
            Err(error) => {
                tracing::warn!(
                    path = %strong.path.display(),
                    %error,
                    "polling for completions by other processes failed; retrying"
                );
                interval = max;
            }
        }
    }
}

/// A waiter's interest in one flow; ends when dropped.
pub(crate) struct Registration<'a> {
    hub: &'a Hub,
    state: FlowState,
    receiver: Option<watch::Receiver<Option<FlowOutcome>>>,
}

impl Registration<'_> {
    /// The outcome once delivered, or `None` at `deadline`.
    pub(crate) async fn wait_until(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Option<FlowOutcome> {
        let receiver = self.receiver.as_mut()?;
        match tokio::time::timeout_at(deadline, receiver.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone(),
            // Timed out; the sender cannot close while we are registered.
            Ok(Err(_)) | Err(_) => None,
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut waiters = lock(&self.hub.waiters);
        if waiters
            .get(&self.state)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            waiters.remove(&self.state);
        }
    }
}
