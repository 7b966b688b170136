//! # mcp-authkit-store-memory
//!
//! The in-process backend: tokens, leases and pending flows in a map behind
//! one mutex. Clones share the same data, so every clone acts as a replica
//! of one store inside the process. Nothing is shared with other processes
//! ([`Capabilities::PROCESS_LOCAL`]) and nothing survives a restart: use it
//! for tests, development and single-process servers that can afford to ask
//! users to authorize again after a restart.
//!
//! [`PendingStore::wait`] is push-based: [`PendingStore::complete`] wakes
//! waiters through a channel, with no polling.
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

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mcp_authkit_core::{
    Capabilities, CasOutcome, Clock, FlowOutcome, FlowState, InsertOutcome, LeaseToken,
    PendingFlow, PendingStore, PurgeReport, Result, Revision, ScanCursor, ScanPage, StoredToken,
    SystemClock, Timestamp, TokenKey, TokenRecord, TokenStore, async_trait,
};
use tokio::sync::watch;

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

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent before any call
        // that could panic, so a poisoned lock still guards sound data.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now(&self) -> Timestamp {
        self.shared.clock.now()
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities::PROCESS_LOCAL
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
        state
            .leases
            .insert(key.clone(), (lease.clone(), now.saturating_add(ttl)));
        Ok(Some(lease))
    }

    async fn release_lease(&self, key: &TokenKey, lease: &LeaseToken) -> Result<bool> {
        let now = self.now();
        let mut state = self.lock();
        match state.leases.get(key) {
            Some((held, until)) if held == lease => {
                let live = *until > now;
                state.leases.remove(key);
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

#[async_trait]
impl PendingStore for MemoryStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities::PROCESS_LOCAL
    }

    async fn insert(&self, flow: &PendingFlow) -> Result<InsertOutcome> {
        let now = self.now();
        let mut state = self.lock();
        if let Some((active, until)) = state.active.get(&flow.key)
            && *until > now
        {
            return Ok(InsertOutcome::Joined(active.clone()));
        }
        state
            .active
            .insert(flow.key.clone(), (flow.state.clone(), flow.expires_at));
        state.flows.insert(flow.state.clone(), flow.clone());
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
        let mut guard = self.lock();
        let flow = guard.flows.remove(state);
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
        guard.flows.remove(state);
        if guard
            .active
            .get(key)
            .is_some_and(|(active, _)| active == state)
        {
            guard.active.remove(key);
        }
        guard.outcomes.insert(
            state.clone(),
            (outcome.clone(), now.saturating_add(keep_for)),
        );
        if let Some(sender) = guard.waiters.remove(state) {
            // Receivers exist or the entry would have been cleaned up; a
            // send to none is harmless.
            let _ = sender.send(Some(outcome.clone()));
        }
        Ok(())
    }

    async fn outcome(&self, state: &FlowState) -> Result<Option<FlowOutcome>> {
        let now = self.now();
        Ok(self.lock().live_outcome(state, now).cloned())
    }

    async fn wait(&self, state: &FlowState, timeout: Duration) -> Result<Option<FlowOutcome>> {
        let mut receiver = {
            let now = self.now();
            let mut guard = self.lock();
            // Checked under the same lock `complete` takes: a completion is
            // either visible here or will be sent to the receiver below.
            if let Some(outcome) = guard.live_outcome(state, now) {
                return Ok(Some(outcome.clone()));
            }
            guard
                .waiters
                .entry(state.clone())
                .or_insert_with(|| watch::channel(None).0)
                .subscribe()
        };
        let outcome = match tokio::time::timeout(timeout, receiver.wait_for(Option::is_some)).await
        {
            Ok(Ok(outcome)) => outcome.clone(),
            // Timed out, or the sender was dropped without a value (never
            // happens: complete always sends before dropping it).
            Ok(Err(_)) | Err(_) => None,
        };
        drop(receiver);
        if outcome.is_none() {
            let mut guard = self.lock();
            if guard
                .waiters
                .get(state)
                .is_some_and(|sender| sender.receiver_count() == 0)
            {
                guard.waiters.remove(state);
            }
        }
        Ok(outcome)
    }

    async fn purge_expired(&self) -> Result<PurgeReport> {
        let now = self.now();
        let mut guard = self.lock();
        let mut report = PurgeReport::default();
        let before = guard.flows.len();
        guard.flows.retain(|_, flow| !flow.is_expired_at(now));
        report.flows = (before - guard.flows.len()) as u64;
        guard.active.retain(|_, (_, until)| *until > now);
        let before = guard.outcomes.len();
        guard.outcomes.retain(|_, (_, until)| *until > now);
        report.outcomes = (before - guard.outcomes.len()) as u64;
        let before = guard.leases.len();
        guard.leases.retain(|_, (_, until)| *until > now);
        report.leases = (before - guard.leases.len()) as u64;
        guard
            .waiters
            .retain(|_, sender| sender.receiver_count() > 0);
        Ok(report)
    }
}
