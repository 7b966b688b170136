#![allow(dead_code)] // Shared by two test binaries; each uses part of it.

//! A third party's backend, as the author wrote one: a store on a
//! `Mutex<HashMap>`, written from the trait docs alone, with bugs that can
//! be switched on one at a time. The suite must pass it without bugs, and
//! go red on each bug.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use mcp_authkit_conformance::{Backend, Replica, SetupError, async_trait};
use mcp_authkit_core::{
    CasOutcome, FlowOutcome, FlowState, InsertOutcome, LeaseToken, PendingFlow, PendingStore,
    PurgeReport, Result, Revision, ScanCursor, ScanPage, StoredToken, Timestamp, TokenKey,
    TokenRecord, TokenStore, deadline_after,
};
use tokio::sync::oneshot;

/// The bug switched on, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// None: the store keeps every guarantee.
    None,
    /// `wait` reads the outcome, then (a round trip later) registers for
    /// the wake-up: a completion in between is missed until the timeout.
    LookThenSubscribe,
    /// The "one active flow per user" index is keyed by
    /// `provider + ":" + subject`.
    ColonJoinedActiveIndex,
    /// Every `wait` gets its own OS thread that polls.
    ThreadPerWaiter,
    /// Every `wait` holds a connection of its own (counted, as a backend
    /// would report them through `Backend::connections`).
    ConnectionPerWaiter,
}

#[derive(Default)]
struct State {
    tokens: BTreeMap<TokenKey, StoredToken>,
    last_revision: u64,
    leases: HashMap<TokenKey, (LeaseToken, Timestamp)>,
    flows: HashMap<FlowState, PendingFlow>,
    /// The active flow of a key (by [`Double::active_key`]), until its expiry.
    active: HashMap<String, (FlowState, Timestamp)>,
    outcomes: HashMap<FlowState, (FlowOutcome, Timestamp)>,
    waiters: HashMap<FlowState, Vec<oneshot::Sender<FlowOutcome>>>,
}

impl State {
    fn live_outcome(&self, state: &FlowState, now: Timestamp) -> Option<FlowOutcome> {
        self.outcomes
            .get(state)
            .filter(|(_, until)| *until > now)
            .map(|(outcome, _)| outcome.clone())
    }
}

/// The store: clones share one map, and play the replicas of a namespace.
#[derive(Clone)]
pub struct Double {
    bug: Bug,
    state: Arc<Mutex<State>>,
    /// The "connections" of the namespace: one, plus one per wait in
    /// progress with [`Bug::ConnectionPerWaiter`].
    connections: Arc<AtomicUsize>,
}

/// Ends a wait's own "connection" when the wait ends, however it ends.
struct Connection(Arc<AtomicUsize>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Double {
    fn new(bug: Bug) -> Self {
        Double {
            bug,
            state: Arc::default(),
            connections: Arc::new(AtomicUsize::new(1)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn active_key(&self, key: &TokenKey) -> String {
        if self.bug == Bug::ColonJoinedActiveIndex {
            format!("{}:{}", key.provider(), key.subject())
        } else {
            // Length-prefixed: no character of the provider can fake its end.
            format!(
                "{}:{}{}",
                key.provider().len(),
                key.provider(),
                key.subject()
            )
        }
    }

    fn write(state: &mut State, key: &TokenKey, record: &TokenRecord) -> Revision {
        state.last_revision += 1;
        let revision = Revision::new(state.last_revision);
        state.tokens.insert(
            key.clone(),
            StoredToken {
                record: record.clone(),
                revision,
            },
        );
        revision
    }
}

#[async_trait]
impl TokenStore for Double {
    async fn get(&self, key: &TokenKey) -> Result<Option<StoredToken>> {
        Ok(self.lock().tokens.get(key).cloned())
    }

    async fn put(&self, key: &TokenKey, record: &TokenRecord) -> Result<Revision> {
        Ok(Self::write(&mut self.lock(), key, record))
    }

    async fn compare_and_swap(
        &self,
        key: &TokenKey,
        expected: Option<Revision>,
        record: &TokenRecord,
    ) -> Result<CasOutcome> {
        let mut state = self.lock();
        let current = state.tokens.get(key).map(|t| t.revision);
        if current != expected {
            return Ok(CasOutcome::Conflict { current });
        }
        Ok(CasOutcome::Swapped(Self::write(&mut state, key, record)))
    }

    async fn delete(&self, key: &TokenKey) -> Result<bool> {
        Ok(self.lock().tokens.remove(key).is_some())
    }

    async fn delete_if_revision(&self, key: &TokenKey, revision: Revision) -> Result<bool> {
        let mut state = self.lock();
        if state.tokens.get(key).map(|t| t.revision) == Some(revision) {
            state.tokens.remove(key);
            return Ok(true);
        }
        Ok(false)
    }

    async fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<LeaseToken>> {
        let now = Timestamp::now();
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
        let now = Timestamp::now();
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
        let after = cursor.map(ScanCursor::last_key).transpose()?;
        let lower = after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        let state = self.lock();
        let mut keys = state
            .tokens
            .range((lower, Bound::Unbounded))
            .map(|(k, _)| k);
        let items: Vec<TokenKey> = keys.by_ref().take(limit.max(1)).cloned().collect();
        let next = match (keys.next(), items.last()) {
            (Some(_), Some(last)) => Some(ScanCursor::after_key(last)),
            _ => None,
        };
        Ok(ScanPage { items, next })
    }
}

#[async_trait]
impl PendingStore for Double {
    async fn insert(&self, flow: &PendingFlow) -> Result<InsertOutcome> {
        let now = Timestamp::now();
        let active = self.active_key(&flow.key);
        let mut state = self.lock();
        if let Some((current, until)) = state.active.get(&active)
            && *until > now
        {
            return Ok(InsertOutcome::Joined(current.clone()));
        }
        state
            .active
            .insert(active, (flow.state.clone(), flow.expires_at));
        state.flows.insert(flow.state.clone(), flow.clone());
        Ok(InsertOutcome::Inserted)
    }

    async fn get_flow(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        let now = Timestamp::now();
        Ok(self
            .lock()
            .flows
            .get(state)
            .filter(|f| !f.is_expired_at(now))
            .cloned())
    }

    async fn active_flow(&self, key: &TokenKey) -> Result<Option<FlowState>> {
        let now = Timestamp::now();
        Ok(self
            .lock()
            .active
            .get(&self.active_key(key))
            .filter(|(_, until)| *until > now)
            .map(|(state, _)| state.clone()))
    }

    async fn take(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        let now = Timestamp::now();
        let flow = self.lock().flows.remove(state);
        Ok(flow.filter(|f| !f.is_expired_at(now)))
    }

    async fn complete(
        &self,
        key: &TokenKey,
        state: &FlowState,
        outcome: &FlowOutcome,
        keep_for: Duration,
    ) -> Result<()> {
        let now = Timestamp::now();
        let active = self.active_key(key);
        let mut guard = self.lock();
        guard.flows.remove(state);
        if guard
            .active
            .get(&active)
            .is_some_and(|(current, _)| current == state)
        {
            guard.active.remove(&active);
        }
        guard.outcomes.insert(
            state.clone(),
            (outcome.clone(), now.saturating_add(keep_for)),
        );
        for waiter in guard.waiters.remove(state).unwrap_or_default() {
            let _ = waiter.send(outcome.clone());
        }
        Ok(())
    }

    async fn outcome(&self, state: &FlowState) -> Result<Option<FlowOutcome>> {
        Ok(self.lock().live_outcome(state, Timestamp::now()))
    }

    async fn wait(&self, state: &FlowState, timeout: Duration) -> Result<Option<FlowOutcome>> {
        let deadline = deadline_after(timeout);
        let _connection = (self.bug == Bug::ConnectionPerWaiter).then(|| {
            self.connections.fetch_add(1, Ordering::SeqCst);
            Connection(Arc::clone(&self.connections))
        });
        let receiver = match self.bug {
            Bug::ThreadPerWaiter => {
                if let Some(outcome) = self.lock().live_outcome(state, Timestamp::now()) {
                    return Ok(Some(outcome));
                }
                let (sender, receiver) = oneshot::channel();
                let (shared, state) = (Arc::clone(&self.state), state.clone());
                std::thread::spawn(move || {
                    loop {
                        let found = shared
                            .lock()
                            .unwrap()
                            .live_outcome(&state, Timestamp::now());
                        if let Some(outcome) = found {
                            let _ = sender.send(outcome);
                            return;
                        }
                        if tokio::time::Instant::now() >= deadline || sender.is_closed() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                });
                receiver
            }
            Bug::LookThenSubscribe => {
                if let Some(outcome) = self.lock().live_outcome(state, Timestamp::now()) {
                    return Ok(Some(outcome));
                }
                // The round trip between the look and the subscription.
                tokio::time::sleep(Duration::from_millis(2)).await;
                let (sender, receiver) = oneshot::channel();
                self.lock()
                    .waiters
                    .entry(state.clone())
                    .or_default()
                    .push(sender);
                receiver
            }
            Bug::None | Bug::ColonJoinedActiveIndex | Bug::ConnectionPerWaiter => {
                // Looked at and registered under one lock, the one
                // `complete` takes: nothing lands in between.
                let mut guard = self.lock();
                if let Some(outcome) = guard.live_outcome(state, Timestamp::now()) {
                    return Ok(Some(outcome));
                }
                let (sender, receiver) = oneshot::channel();
                guard.waiters.entry(state.clone()).or_default().push(sender);
                receiver
            }
        };
        Ok(tokio::time::timeout_at(deadline, receiver)
            .await
            .ok()
            .and_then(|received| received.ok()))
    }

    async fn purge_expired(&self) -> Result<PurgeReport> {
        let now = Timestamp::now();
        let mut state = self.lock();
        let mut report = PurgeReport::default();
        let flows = state.flows.len();
        state.flows.retain(|_, f| !f.is_expired_at(now));
        report.flows = (flows - state.flows.len()) as u64;
        state.active.retain(|_, (_, until)| *until > now);
        let outcomes = state.outcomes.len();
        state.outcomes.retain(|_, (_, until)| *until > now);
        report.outcomes = (outcomes - state.outcomes.len()) as u64;
        let leases = state.leases.len();
        state.leases.retain(|_, (_, until)| *until > now);
        report.leases = (leases - state.leases.len()) as u64;
        state.waiters.retain(|_, senders| {
            senders.retain(|s| !s.is_closed());
            !senders.is_empty()
        });
        Ok(report)
    }
}

/// Namespaces of this process, one double each.
fn registry() -> &'static Mutex<HashMap<String, Double>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Double>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The adapter: each namespace is one double; its clones are the replicas.
pub struct Doubles(pub Bug);

#[async_trait]
impl Backend for Doubles {
    fn name(&self) -> &str {
        "mutex-hashmap double"
    }

    async fn create_namespace(&self) -> Result<String, SetupError> {
        let name = mcp_authkit_core::random_urlsafe(8);
        registry()
            .lock()
            .unwrap()
            .insert(name.clone(), Double::new(self.0));
        Ok(name)
    }

    async fn open(&self, namespace: &str) -> Result<Replica, SetupError> {
        let store = registry()
            .lock()
            .unwrap()
            .get(namespace)
            .cloned()
            .ok_or("no such namespace in this process")?;
        let store = Arc::new(store);
        Ok(Replica::new(store.clone(), store))
    }

    async fn cleanup(&self, namespace: &str) {
        registry().lock().unwrap().remove(namespace);
    }

    async fn connections(&self, namespace: &str) -> Option<usize> {
        let registry = registry().lock().unwrap();
        Some(registry.get(namespace)?.connections.load(Ordering::SeqCst))
    }
}

/// Runs `scenario` on the double with `bug` and returns its failure
/// message; panics if the scenario passes.
pub fn failure_of(bug: Bug, scenario: &str) -> String {
    failure_with_child(bug, scenario, None)
}

/// [`failure_of`], with the child entry point of the cross-process
/// scenario.
pub fn failure_with_child(bug: Bug, scenario: &str, child_test: Option<&'static str>) -> String {
    let run = mcp_authkit_conformance::scenario_by_name(scenario).expect("a scenario of the suite");
    let outcome = std::panic::catch_unwind(|| {
        mcp_authkit_conformance::run_scenario(scenario, run, Doubles(bug), child_test)
    });
    match outcome {
        Ok(()) => panic!("the suite's {scenario} passed a store with the bug {bug:?}"),
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default(),
    }
}
