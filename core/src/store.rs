//! The storage traits every backend implements, and what they promise.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::flow::{FlowOutcome, FlowState, InsertOutcome, PendingFlow, random_urlsafe};
use crate::record::{Revision, StoredToken, TokenKey, TokenRecord};

/// The provider name of the key the default [`TokenStore::ping`] reads
/// (and the state [`PendingStore::ping_pending`] asks about): no
/// integration is named so.
pub const PING_PROVIDER: &str = "mcp-authkit.health-check";

/// What a compare-and-swap did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The record was written at this new revision.
    Swapped(Revision),
    /// The stored revision was not the expected one (`None`: no record);
    /// nothing was written.
    Conflict {
        /// What is stored now.
        current: Option<Revision>,
    },
}

/// Proof of holding a refresh lease: a random value only the holder knows,
/// so a holder whose lease expired and was taken over cannot release the new
/// holder's lease.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// A fresh random lease token (128 bits).
    pub fn generate() -> Self {
        LeaseToken(random_urlsafe(16))
    }

    /// A lease token read back from a backend.
    pub fn new(token: impl Into<String>) -> Self {
        LeaseToken(token.into())
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeaseToken(..)")
    }
}

/// Where a [`TokenStore::scan`] continues; opaque to callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanCursor(String);

impl ScanCursor {
    /// A backend-specific position.
    pub fn new(position: impl Into<String>) -> Self {
        ScanCursor(position.into())
    }

    /// The backend-specific position.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A cursor that continues after `key`, for backends that list keys in
    /// (provider, subject) order. Length-prefixed, so no character in the
    /// provider can fake where it ends.
    pub fn after_key(key: &TokenKey) -> Self {
        ScanCursor(format!(
            "{}:{}{}",
            key.provider().len(),
            key.provider(),
            key.subject()
        ))
    }

    /// The key an [`after_key`](Self::after_key) cursor continues after; an
    /// error for a cursor this form never produces.
    pub fn last_key(&self) -> Result<TokenKey> {
        let bad =
            || crate::Error::invalid_input("scan cursor", "it was not returned by this store");
        let (len, rest) = self.0.split_once(':').ok_or_else(bad)?;
        let len: usize = len.parse().map_err(|_| bad())?;
        if len > rest.len() || !rest.is_char_boundary(len) {
            return Err(bad());
        }
        let (provider, subject) = rest.split_at(len);
        Ok(TokenKey::new(provider, subject))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_cursor_round_trips_keys_with_separators() {
        for key in [
            TokenKey::new("a:b", "c"),
            TokenKey::new("a", ":b:c"),
            TokenKey::new("", ""),
            TokenKey::new("ü", "1:2"),
        ] {
            assert_eq!(ScanCursor::after_key(&key).last_key().unwrap(), key);
        }
        for bad in ["nonsense", "99:short", "1:ü"] {
            assert!(ScanCursor::new(bad).last_key().is_err(), "{bad}");
        }
    }
}

/// One page of a scan.
#[derive(Clone, Debug)]
pub struct ScanPage<T> {
    /// The items of this page (possibly none, even when more follow).
    pub items: Vec<T>,
    /// Where to continue; `None` when the scan is complete.
    pub next: Option<ScanCursor>,
}

/// What a purge removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Expired pending flows.
    pub flows: u64,
    /// Expired flow outcomes.
    pub outcomes: u64,
    /// Expired refresh leases.
    pub leases: u64,
}

impl PurgeReport {
    /// Total entries removed.
    pub fn total(&self) -> u64 {
        self.flows + self.outcomes + self.leases
    }
}

/// Token storage, shared by every replica of an application.
///
/// # Guarantees an implementation gives
///
/// - Keys are isolated: no operation on one key reads or changes another,
///   whatever characters the provider and subject contain.
/// - Every write ([`put`](Self::put), a successful
///   [`compare_and_swap`](Self::compare_and_swap)) stores the record at a new
///   revision that is greater than every revision the key had before, also
///   after a delete, so a stale revision never matches a newer record.
/// - [`compare_and_swap`](Self::compare_and_swap) and
///   [`delete_if_revision`](Self::delete_if_revision) are atomic with respect
///   to every other operation in every process.
/// - A refresh lease has at most one holder across all processes sharing the
///   backend; it ends when released by its holder or when its TTL passes.
///   Releasing a lease that ran out reports `false`
///   ([`release_lease`](Self::release_lease)).
///
/// The conformance suite (`mcp-authkit-conformance`) checks each of these.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// The backend's name in spans and metric labels (`"sqlite"`, ...): a
    /// fixed word, never a URL or a path.
    fn backend_name(&self) -> &'static str {
        "custom"
    }

    /// Checks that the backend answers, with one cheap round trip, and
    /// returns how long it took; the error says what failed. The default
    /// reads a key no application uses; backends with a cheaper probe
    /// (Redis `PING`) override it.
    async fn ping(&self) -> Result<Duration> {
        let started = std::time::Instant::now();
        self.get(&TokenKey::new(PING_PROVIDER, "ping")).await?;
        Ok(started.elapsed())
    }

    /// The token stored under `key`, with its revision.
    async fn get(&self, key: &TokenKey) -> Result<Option<StoredToken>>;

    /// Stores `record` under `key` whatever is there; returns the new revision.
    async fn put(&self, key: &TokenKey, record: &TokenRecord) -> Result<Revision>;

    /// Stores `record` only if the key's revision is `expected` (`None`: only
    /// if the key holds no record).
    async fn compare_and_swap(
        &self,
        key: &TokenKey,
        expected: Option<Revision>,
        record: &TokenRecord,
    ) -> Result<CasOutcome>;

    /// Removes the key's record; returns whether there was one.
    async fn delete(&self, key: &TokenKey) -> Result<bool>;

    /// Removes the key's record only if it is at `revision`; returns whether
    /// it removed it. A token that was refreshed since is left alone.
    async fn delete_if_revision(&self, key: &TokenKey, revision: Revision) -> Result<bool>;

    /// Takes the key's refresh lease for `ttl` if nobody holds it. `None`
    /// when someone does.
    async fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<LeaseToken>>;

    /// Ends the lease if `lease` still holds it; returns whether it did.
    ///
    /// `false` whenever the lease was no longer held: released already,
    /// taken over by another holder, or past its TTL, even if nobody took
    /// it over since (an expired lease protected nothing, and the holder
    /// must learn that its refresh ran unprotected). Releasing never ends
    /// another holder's lease.
    async fn release_lease(&self, key: &TokenKey, lease: &LeaseToken) -> Result<bool>;

    /// Lists stored keys, a page at a time: what rekeying and inspection walk.
    /// Keys written during a scan may or may not be listed; keys present for
    /// the whole scan are listed at least once.
    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage<TokenKey>>;
}

/// Storage of authorization flows between their start and their callback.
///
/// # Guarantees an implementation gives
///
/// - An expired flow (past its `expires_at`) is gone for every operation.
/// - [`take`](Self::take) returns a flow to exactly one caller, across all
///   processes, however many race for it.
/// - One active flow per [`TokenKey`]: while a flow for a key is pending or
///   being completed, [`insert`](Self::insert) of another flow for that key
///   returns [`InsertOutcome::Joined`] with the active flow's state, decided
///   atomically (concurrent inserts never both succeed).
/// - [`complete`](Self::complete) wakes every [`wait`](Self::wait)er in every
///   process; a `wait` that starts after `complete` returns the outcome at
///   once (it is kept for `keep_for`); no completion is ever missed.
/// - Waiting on many flows does not cost a connection (or a thread) per
///   waiter.
/// - Keys are isolated in every structure (flows, the active flow of a key,
///   outcomes), whatever characters the provider and subject contain.
///
/// Whether a store is shared across processes is not declared here: the
/// conformance suite's configuration of the backend says so
/// (`process_local`), and that is the declaration its checks rely on.
#[async_trait]
pub trait PendingStore: Send + Sync + 'static {
    /// The backend's name in spans and metric labels (named apart from
    /// [`TokenStore::backend_name`] so a store of both kinds has no
    /// ambiguous method).
    fn pending_backend_name(&self) -> &'static str {
        "custom"
    }

    /// [`TokenStore::ping`] for flow storage: one cheap round trip and its
    /// latency. The default reads the outcome of a state no flow has.
    async fn ping_pending(&self) -> Result<Duration> {
        let started = std::time::Instant::now();
        self.outcome(&FlowState::new(PING_PROVIDER)).await?;
        Ok(started.elapsed())
    }

    /// Stores a new flow, valid until its `expires_at`, and makes it its key's
    /// active flow, unless another unexpired flow is active for that key.
    async fn insert(&self, flow: &PendingFlow) -> Result<InsertOutcome>;

    /// The pending flow with this state, without taking it.
    async fn get_flow(&self, state: &FlowState) -> Result<Option<PendingFlow>>;

    /// The state of the key's active flow, pending or being completed.
    async fn active_flow(&self, key: &TokenKey) -> Result<Option<FlowState>>;

    /// Removes and returns the flow; exactly one caller ever gets it. The key
    /// stays marked active until [`complete`](Self::complete) or expiry, so
    /// concurrent callers join instead of starting a second flow.
    async fn take(&self, state: &FlowState) -> Result<Option<PendingFlow>>;

    /// Records how the flow of `key` with `state` ended, keeps the outcome
    /// readable for `keep_for`, ends the key's active mark if it is this flow,
    /// and wakes every waiter.
    ///
    /// A flow completed without being [`take`](Self::take)n first (a
    /// timeout, a cancellation) ends all the same: it is gone for
    /// [`get_flow`](Self::get_flow) and `take`, no longer its key's active
    /// flow, and its outcome is what waiters get.
    async fn complete(
        &self,
        key: &TokenKey,
        state: &FlowState,
        outcome: &FlowOutcome,
        keep_for: Duration,
    ) -> Result<()>;

    /// The outcome of a completed flow, while it is kept.
    async fn outcome(&self, state: &FlowState) -> Result<Option<FlowOutcome>>;

    /// Waits until the flow completes and returns its outcome, or `None`
    /// after `timeout`. Returns at once if it completed already.
    async fn wait(&self, state: &FlowState, timeout: Duration) -> Result<Option<FlowOutcome>>;

    /// Removes expired flows, outcomes and active marks that the backend does
    /// not expire by itself.
    async fn purge_expired(&self) -> Result<PurgeReport>;
}

/// A held refresh lease that is released when dropped.
///
/// Release is a store round trip, so dropping the guard spawns it on the
/// current tokio runtime; outside a runtime the lease simply runs out its
/// TTL. Call [`release`](Self::release) to release it and see the result.
pub struct LeaseGuard {
    store: Arc<dyn TokenStore>,
    key: TokenKey,
    lease: Option<LeaseToken>,
}

impl LeaseGuard {
    /// Takes the key's lease for `ttl` if it is free.
    pub async fn try_acquire(
        store: Arc<dyn TokenStore>,
        key: TokenKey,
        ttl: Duration,
    ) -> Result<Option<LeaseGuard>> {
        let lease = store.try_acquire_lease(&key, ttl).await?;
        Ok(lease.map(|lease| LeaseGuard {
            store,
            key,
            lease: Some(lease),
        }))
    }

    /// The key the lease is on.
    pub fn key(&self) -> &TokenKey {
        &self.key
    }

    /// Releases the lease now; `false` if it had already expired and been
    /// taken over or removed.
    pub async fn release(mut self) -> Result<bool> {
        match self.lease.take() {
            Some(lease) => self.store.release_lease(&self.key, &lease).await,
            None => Ok(false),
        }
    }
}

impl fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("key", &self.key)
            .field("held", &self.lease.is_some())
            .finish()
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = Arc::clone(&self.store);
            let key = self.key.clone();
            runtime.spawn(async move {
                if let Err(error) = store.release_lease(&key, &lease).await {
                    tracing::warn!(%error, "could not release a refresh lease; it expires by its TTL");
                }
            });
        }
    }
}

/// A shared store is a store: wrappers generic over `S: TokenStore` (such as
/// the encrypting one) also take an `Arc<dyn TokenStore>`.
#[async_trait]
impl<T: TokenStore + ?Sized> TokenStore for Arc<T> {
    fn backend_name(&self) -> &'static str {
        (**self).backend_name()
    }
    async fn ping(&self) -> Result<Duration> {
        (**self).ping().await
    }
    async fn get(&self, key: &TokenKey) -> Result<Option<StoredToken>> {
        (**self).get(key).await
    }
    async fn put(&self, key: &TokenKey, record: &TokenRecord) -> Result<Revision> {
        (**self).put(key, record).await
    }
    async fn compare_and_swap(
        &self,
        key: &TokenKey,
        expected: Option<Revision>,
        record: &TokenRecord,
    ) -> Result<CasOutcome> {
        (**self).compare_and_swap(key, expected, record).await
    }
    async fn delete(&self, key: &TokenKey) -> Result<bool> {
        (**self).delete(key).await
    }
    async fn delete_if_revision(&self, key: &TokenKey, revision: Revision) -> Result<bool> {
        (**self).delete_if_revision(key, revision).await
    }
    async fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<LeaseToken>> {
        (**self).try_acquire_lease(key, ttl).await
    }
    async fn release_lease(&self, key: &TokenKey, lease: &LeaseToken) -> Result<bool> {
        (**self).release_lease(key, lease).await
    }
    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage<TokenKey>> {
        (**self).scan(cursor, limit).await
    }
}

/// A shared pending store is a pending store.
#[async_trait]
impl<T: PendingStore + ?Sized> PendingStore for Arc<T> {
    fn pending_backend_name(&self) -> &'static str {
        (**self).pending_backend_name()
    }
    async fn ping_pending(&self) -> Result<Duration> {
        (**self).ping_pending().await
    }
    async fn insert(&self, flow: &PendingFlow) -> Result<InsertOutcome> {
        (**self).insert(flow).await
    }
    async fn get_flow(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        (**self).get_flow(state).await
    }
    async fn active_flow(&self, key: &TokenKey) -> Result<Option<FlowState>> {
        (**self).active_flow(key).await
    }
    async fn take(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        (**self).take(state).await
    }
    async fn complete(
        &self,
        key: &TokenKey,
        state: &FlowState,
        outcome: &FlowOutcome,
        keep_for: Duration,
    ) -> Result<()> {
        (**self).complete(key, state, outcome, keep_for).await
    }
    async fn outcome(&self, state: &FlowState) -> Result<Option<FlowOutcome>> {
        (**self).outcome(state).await
    }
    async fn wait(&self, state: &FlowState, timeout: Duration) -> Result<Option<FlowOutcome>> {
        (**self).wait(state, timeout).await
    }
    async fn purge_expired(&self) -> Result<PurgeReport> {
        (**self).purge_expired().await
    }
}
