//! # mcp-authkit-store-memory
//!
//! The in-process backend: tokens, leases and pending flows in a map behind
//! one mutex. Clones share the same data, so every clone acts as a replica
//! of one store inside the process. Nothing is shared with other processes
//! (its conformance run says `process_local`) and nothing survives a restart: use it
//! for tests, development and single-process servers that can afford to ask
//! users to authorize again after a restart.
//!
//! [`PendingStore::wait`] is push-based: [`PendingStore::complete`] wakes
//! waiters through a channel, with no polling.
//!
//! # Expiry
//!
//! Expired flows, active marks, outcomes and leases are ignored by every
//! operation at once, and removed by the store itself, so a server that
//! never calls [`PendingStore::purge_expired`] stays bounded: every expiring
//! entry is also kept in order of expiry, and removal walks that order from
//! its front, costing O(expired) whatever the number of live entries.
//!
//! - While a Tokio runtime lives, one sweeper task per store (spawned by the
//!   first write that gives it something to expire, ended when the store is
//!   dropped or holds nothing that expires) removes entries within about
//!   [`SWEEP_INTERVAL`] of their expiry.
//! - Every insert also removes a few expired entries on its way, so a store
//!   that keeps inserting stays bounded on any executor.
//! - [`PendingStore::purge_expired`] removes everything expired now.
//!
//! Each of them holds the store's lock for at most a batch of a few hundred
//! removals at a time (tens of microseconds), so a large backlog never stalls
//! the calls of the rest of the process. [`MemoryStore::entry_counts`] tells
//! what the store holds.
//!
//! ```
//! use std::sync::Arc;
//! use mcp_authkit_core::{TokenKey, TokenRecord, TokenStore, Timestamp};
//! use mcp_authkit_store_memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> mcp_authkit_core::Result<()> {
//! let store = MemoryStore::new();
//! let tokens: Arc<dyn TokenStore> = Arc::new(store.clone());
//! let key = TokenKey::new("github", "user-1");
//! let revision = tokens.put(&key, &TokenRecord::new("gho_x", Timestamp::now())).await?;
//! assert_eq!(tokens.get(&key).await?.unwrap().revision, revision);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod expiry;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use mcp_authkit_core::{
    CasOutcome, Clock, FlowOutcome, FlowState, InsertOutcome, LeaseToken, PendingFlow,
    PendingStore, PurgeReport, Result, Revision, ScanCursor, ScanPage, StoredToken, SystemClock,
    Timestamp, TokenKey, TokenRecord, TokenStore, async_trait,
};
use tokio::sync::watch;

use expiry::{Expiring, ExpiryIndex, SWEEP_BATCH, SWEEP_ON_INSERT};

/// How often, at most, the sweeper task looks for expired entries: an
/// expired entry is removed within about this long after its expiry.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// An in-process token and pending-flow store; clones share the data.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Ordered, so scans can resume after the last key they returned.
    tokens: BTreeMap<TokenKey, StoredToken>,
    /// One counter for all keys: revisions grow across deletes.
    last_revision: u64,
    leases: HashMap<TokenKey, (LeaseToken, Timestamp)>,
    flows: HashMap<FlowState, PendingFlow>,
    /// The active flow of each key, and until when it counts as active.
    active: HashMap<TokenKey, (FlowState, Timestamp)>,
    outcomes: HashMap<FlowState, (FlowOutcome, Timestamp)>,
    /// Senders of flows someone waits on; `complete` sends the outcome.
    waiters: HashMap<FlowState, watch::Sender<Option<FlowOutcome>>>,
    /// Every flow, active mark, outcome and lease above, by expiry.
    expiry: ExpiryIndex,
    /// Whether a sweeper task is running for this store.
    sweeper: bool,
    /// Sizes of the sweeps so far (tests check the batch bound).
    #[cfg(test)]
    sweeps: tests::SweepLog,
}

/// How many entries of each kind a [`MemoryStore`] holds, expired or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryCounts {
    /// Stored tokens (they never expire by themselves).
    pub tokens: usize,
    /// Pending flows, from insert until take, completion or expiry.
    pub flows: usize,
    /// Active-flow marks, one per key with a flow in progress.
    pub active_marks: usize,
    /// Kept outcomes of completed flows.
    pub outcomes: usize,
    /// Refresh leases.
    pub leases: usize,
    /// Flows someone is waiting on.
    pub waited_flows: usize,
    /// Waits subscribed to a flow's outcome now, over all flows (a test
    /// can tell every waiter is parked before it ends the flows).
    pub waiters: usize,
}

impl EntryCounts {
    /// Everything but tokens: what expiry removes.
    pub fn expiring(&self) -> usize {
        self.flows + self.active_marks + self.outcomes + self.leases
    }
}

impl State {
    fn next_revision(&mut self) -> Revision {
        self.last_revision += 1;
        Revision::new(self.last_revision)
    }

    fn write(&mut self, key: &TokenKey, record: &TokenRecord) -> Revision {
        let revision = self.next_revision();
        self.tokens.insert(
            key.clone(),
            StoredToken {
                record: record.clone(),
                revision,
            },
        );
        revision
    }

    fn live_flow(&self, state: &FlowState, now: Timestamp) -> Option<&PendingFlow> {
        self.flows
            .get(state)
            .filter(|flow| !flow.is_expired_at(now))
    }

    fn live_outcome(&self, state: &FlowState, now: Timestamp) -> Option<&FlowOutcome> {
        self.outcomes
            .get(state)
            .filter(|(_, until)| *until > now)
            .map(|(outcome, _)| outcome)
    }

    // Every change to an expiring map goes through one of these, so the
    // expiry index always lists exactly the entries the maps hold.

    fn put_flow(&mut self, flow: &PendingFlow) {
        if let Some(old) = self.flows.insert(flow.state.clone(), flow.clone()) {
            self.expiry
                .remove(old.expires_at, Expiring::Flow(old.state));
        }
        self.expiry
            .add(flow.expires_at, Expiring::Flow(flow.state.clone()));
    }

    fn remove_flow(&mut self, state: &FlowState) -> Option<PendingFlow> {
        let flow = self.flows.remove(state)?;
        self.expiry
            .remove(flow.expires_at, Expiring::Flow(state.clone()));
        Some(flow)
    }

    fn put_active(&mut self, key: &TokenKey, state: &FlowState, until: Timestamp) {
        if let Some((_, old)) = self.active.insert(key.clone(), (state.clone(), until)) {
            self.expiry.remove(old, Expiring::Active(key.clone()));
        }
        self.expiry.add(until, Expiring::Active(key.clone()));
    }

    fn remove_active(&mut self, key: &TokenKey) {
        if let Some((_, until)) = self.active.remove(key) {
            self.expiry.remove(until, Expiring::Active(key.clone()));
        }
    }

    fn put_outcome(&mut self, state: &FlowState, outcome: &FlowOutcome, until: Timestamp) {
        if let Some((_, old)) = self
            .outcomes
            .insert(state.clone(), (outcome.clone(), until))
        {
            self.expiry.remove(old, Expiring::Outcome(state.clone()));
        }
        self.expiry.add(until, Expiring::Outcome(state.clone()));
    }

    fn put_lease(&mut self, key: &TokenKey, lease: LeaseToken, until: Timestamp) {
        if let Some((_, old)) = self.leases.insert(key.clone(), (lease, until)) {
            self.expiry.remove(old, Expiring::Lease(key.clone()));
        }
        self.expiry.add(until, Expiring::Lease(key.clone()));
    }

    fn remove_lease(&mut self, key: &TokenKey) {
        if let Some((_, until)) = self.leases.remove(key) {
            self.expiry.remove(until, Expiring::Lease(key.clone()));
        }
    }

    /// Removes up to `limit` entries expired at `now`, earliest first;
    /// returns what it removed and whether more expired entries remain.
    fn sweep(&mut self, now: Timestamp, limit: usize) -> (PurgeReport, bool) {
        #[cfg(test)]
        self.sweeps.start();
        let mut report = PurgeReport::default();
        let mut removed = 0;
        while removed < limit {
            let Some((_, entry)) = self.expiry.pop_expired(now) else {
                break;
            };
            match &entry {
                Expiring::Flow(state) => {
                    self.flows.remove(state);
                }
                Expiring::Active(key) => {
                    self.active.remove(key);
                }
                Expiring::Outcome(state) => {
                    self.outcomes.remove(state);
                }
                Expiring::Lease(key) => {
                    self.leases.remove(key);
                }
            }
            expiry::count(&mut report, &entry);
            removed += 1;
        }
        #[cfg(test)]
        self.sweeps.record(removed);
        (report, self.expiry.has_expired(now))
    }

    fn counts(&self) -> EntryCounts {
        EntryCounts {
            tokens: self.tokens.len(),
            flows: self.flows.len(),
            active_marks: self.active.len(),
            outcomes: self.outcomes.len(),
            leases: self.leases.len(),
            waited_flows: self.waiters.len(),
            waiters: self.waiters.values().map(|w| w.receiver_count()).sum(),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store that expires flows, outcomes and leases by `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        MemoryStore {
            shared: Arc::new(Shared {
                clock,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// How many entries the store holds now, expired ones included until
    /// they are removed.
    pub fn entry_counts(&self) -> EntryCounts {
        self.lock().counts()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    fn now(&self) -> Timestamp {
        self.shared.clock.now()
    }

    /// After a write that added an expiring entry: removes a few expired
    /// ones, and makes sure a sweeper runs if a Tokio runtime is there.
    fn after_expiring_write(&self, state: &mut State, now: Timestamp) {
        state.sweep(now, SWEEP_ON_INSERT);
        if !state.sweeper
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            state.sweeper = true;
            runtime.spawn(sweep_loop(Arc::downgrade(&self.shared)));
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent before any call
        // that could panic, so a poisoned lock still guards sound data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Clears the store's sweeper flag when the sweeper ends, also when its
/// runtime shuts down and drops it mid-sleep, so the next write starts one.
struct SweeperRunning(Weak<Shared>);

impl Drop for SweeperRunning {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.lock().sweeper = false;
        }
    }
}

/// The sweeper of one store: removes expired entries in batches, sleeping
/// until the next expiry (at most [`SWEEP_INTERVAL`]) in between. It holds
/// the store only while it sweeps, and ends when the store is dropped or
/// holds nothing that expires.
async fn sweep_loop(store: Weak<Shared>) {
    let mut running = SweeperRunning(store.clone());
    loop {
        let pause = {
            let Some(shared) = store.upgrade() else {
                return;
            };
            let now = shared.clock.now();
            let mut state = shared.lock();
            let (_, more) = state.sweep(now, SWEEP_BATCH);
            if more {
                Duration::ZERO
            } else {
                match state.expiry.next_expiry() {
                    Some(next) => {
                        let until_next =
                            u64::try_from(next.unix_millis() - now.unix_millis()).unwrap_or(0);
                        Duration::from_millis(until_next)
                            .clamp(Duration::from_millis(1), SWEEP_INTERVAL)
                    }
                    None => {
                        // Decided under the lock that writes check, so a
                        // write after this starts a new sweeper.
                        state.sweeper = false;
                        // Cleared already, under the lock this holds.
                        running.0 = Weak::new();
                        return;
                    }
                }
            }
        };
        if pause.is_zero() {
            // More expired entries wait: let the rest of the process take
            // the lock between batches.
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(pause).await;
        }
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &TokenKey) -> Result<Option<StoredToken>> {
        Ok(self.lock().tokens.get(key).cloned())
    }

    async fn put(&self, key: &TokenKey, record: &TokenRecord) -> Result<Revision> {
        Ok(self.lock().write(key, record))
    }

    async fn compare_and_swap(
        &self,
        key: &TokenKey,
        expected: Option<Revision>,
        record: &TokenRecord,
    ) -> Result<CasOutcome> {
        let mut state = self.lock();
        let current = state.tokens.get(key).map(|stored| stored.revision);
        if current != expected {
            return Ok(CasOutcome::Conflict { current });
        }
        Ok(CasOutcome::Swapped(state.write(key, record)))
    }

    async fn delete(&self, key: &TokenKey) -> Result<bool> {
        Ok(self.lock().tokens.remove(key).is_some())
    }

    async fn delete_if_revision(&self, key: &TokenKey, revision: Revision) -> Result<bool> {
        let mut state = self.lock();
        if state.tokens.get(key).map(|stored| stored.revision) != Some(revision) {
            return Ok(false);
        }
        state.tokens.remove(key);
        Ok(true)
    }

    async fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<LeaseToken>> {
        let now = self.now();
        let mut state = self.lock();
        if state.leases.get(key).is_some_and(|(_, until)| *until > now) {
            return Ok(None);
        }
        let lease = LeaseToken::generate();
        state.put_lease(key, lease.clone(), now.saturating_add(ttl));
        self.after_expiring_write(&mut state, now);
        Ok(Some(lease))
    }

    async fn release_lease(&self, key: &TokenKey, lease: &LeaseToken) -> Result<bool> {
        let now = self.now();
        let mut state = self.lock();
        match state.leases.get(key) {
            Some((held, until)) if held == lease => {
                let live = *until > now;
                state.remove_lease(key);
                Ok(live)
            }
            _ => Ok(false),
        }
    }

    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage<TokenKey>> {
        let state = self.lock();
        // The cursor names the last key returned (ScanCursor::after_key).
        let after = match cursor {
            Some(cursor) => Some(cursor.last_key()?),
            None => None,
        };
        let lower = match &after {
            Some(key) => Bound::Excluded(key),
            None => Bound::Unbounded,
        };
        let items: Vec<TokenKey> = state
            .tokens
            .range((lower, Bound::Unbounded))
            .take(limit.max(1))
            .map(|(key, _)| key.clone())
            .collect();
        let next = match items.last() {
            Some(last)
                if state
                    .tokens
                    .range((Bound::Excluded(last), Bound::Unbounded))
                    .next()
                    .is_some() =>
            {
                Some(ScanCursor::after_key(last))
            }
            _ => None,
        };
        Ok(ScanPage { items, next })
    }
}

/// A waiter's subscription; unregisters the flow when the last waiter on it
/// leaves, also when the waiting future is dropped before it finishes.
struct Waiting<'a> {
    store: &'a MemoryStore,
    state: &'a FlowState,
    receiver: Option<watch::Receiver<Option<FlowOutcome>>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut guard = self.store.lock();
        if guard
            .waiters
            .get(self.state)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            guard.waiters.remove(self.state);
        }
    }
}

#[async_trait]
impl PendingStore for MemoryStore {
    fn pending_backend_name(&self) -> &'static str {
        "memory"
    }

    async fn insert(&self, flow: &PendingFlow) -> Result<InsertOutcome> {
        let now = self.now();
        let mut state = self.lock();
        if let Some((active, until)) = state.active.get(&flow.key)
            && *until > now
        {
            return Ok(InsertOutcome::Joined(active.clone()));
        }
        state.put_active(&flow.key, &flow.state, flow.expires_at);
        state.put_flow(flow);
        self.after_expiring_write(&mut state, now);
        Ok(InsertOutcome::Inserted)
    }

    async fn get_flow(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        let now = self.now();
        Ok(self.lock().live_flow(state, now).cloned())
    }

    async fn active_flow(&self, key: &TokenKey) -> Result<Option<FlowState>> {
        let now = self.now();
        Ok(self
            .lock()
            .active
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(state, _)| state.clone()))
    }

    async fn take(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        let now = self.now();
        let flow = self.lock().remove_flow(state);
        Ok(flow.filter(|flow| !flow.is_expired_at(now)))
    }

    async fn complete(
        &self,
        key: &TokenKey,
        state: &FlowState,
        outcome: &FlowOutcome,
        keep_for: Duration,
    ) -> Result<()> {
        let now = self.now();
        let mut guard = self.lock();
        guard.remove_flow(state);
        if guard
            .active
            .get(key)
            .is_some_and(|(active, _)| active == state)
        {
            guard.remove_active(key);
        }
        guard.put_outcome(state, outcome, now.saturating_add(keep_for));
        if let Some(sender) = guard.waiters.remove(state) {
            // Receivers exist or the entry would have been cleaned up; a
            // send to none is harmless.
            let _ = sender.send(Some(outcome.clone()));
        }
        self.after_expiring_write(&mut guard, now);
        Ok(())
    }

    async fn outcome(&self, state: &FlowState) -> Result<Option<FlowOutcome>> {
        let now = self.now();
        Ok(self.lock().live_outcome(state, now).cloned())
    }

    async fn wait(&self, state: &FlowState, timeout: Duration) -> Result<Option<FlowOutcome>> {
        let mut waiting = {
            let now = self.now();
            let mut guard = self.lock();
            // Checked under the same lock `complete` takes: a completion is
            // either visible here or will be sent to the receiver below.
            if let Some(outcome) = guard.live_outcome(state, now) {
                return Ok(Some(outcome.clone()));
            }
            let receiver = guard
                .waiters
                .entry(state.clone())
                .or_insert_with(|| watch::channel(None).0)
                .subscribe();
            Waiting {
                store: self,
                state,
                receiver: Some(receiver),
            }
        };
        let Some(receiver) = waiting.receiver.as_mut() else {
            return Ok(None);
        };
        let outcome = match tokio::time::timeout(timeout, receiver.wait_for(Option::is_some)).await
        {
            Ok(Ok(outcome)) => outcome.clone(),
            // Timed out, or the sender was dropped without a value (never
            // happens: complete always sends before dropping it).
            Ok(Err(_)) | Err(_) => None,
        };
        drop(waiting);
        Ok(outcome)
    }

    async fn purge_expired(&self) -> Result<PurgeReport> {
        let mut report = PurgeReport::default();
        let now = self.now();
        loop {
            let (batch, more) = self.lock().sweep(now, SWEEP_BATCH);
            expiry::add(&mut report, batch);
            if !more {
                return Ok(report);
            }
            // Let the rest of the process take the lock between batches.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests;
