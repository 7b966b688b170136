//! The order in which flows, active marks, outcomes and leases expire, and
//! the removal that follows it.
//!
//! Every entry of the store that can expire is also in [`ExpiryIndex`], a
//! set ordered by expiry time, and leaves it when the entry leaves its map.
//! Removing what expired then starts at the front of the index and stops at
//! the first entry still live: it costs O(expired * log n), whatever the
//! number of live entries, and nothing expired costs one look at the front.
//!
//! Removal happens in batches of at most [`SWEEP_BATCH`] entries per hold of
//! the store's lock, so nothing else waits on the lock for more than one
//! batch: a few inserts' worth of work on each insert, a background sweeper
//! task while a Tokio runtime lives, and `purge_expired` on demand.

use std::collections::BTreeSet;

use mcp_authkit_core::{FlowState, PurgeReport, Timestamp, TokenKey};

/// Most entries removed under one hold of the store's lock.
pub(crate) const SWEEP_BATCH: usize = 256;

/// Expired entries an insert removes on its way, so a store that keeps
/// inserting stays bounded even where no sweeper task can run.
pub(crate) const SWEEP_ON_INSERT: usize = 8;

/// What an index entry points at, in the map of its kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Expiring {
    Flow(FlowState),
    Active(TokenKey),
    Outcome(FlowState),
    Lease(TokenKey),
}

/// Every expiring entry of the store by (expiry, entry).
#[derive(Default)]
pub(crate) struct ExpiryIndex {
    order: BTreeSet<(Timestamp, Expiring)>,
}

impl ExpiryIndex {
    pub(crate) fn add(&mut self, at: Timestamp, entry: Expiring) {
        self.order.insert((at, entry));
    }

    /// Forgets the entry that expires at `at`; its map entry was removed or
    /// replaced.
    pub(crate) fn remove(&mut self, at: Timestamp, entry: Expiring) {
        self.order.remove(&(at, entry));
    }

    /// The earliest entry if it expired at `now` (expired means `at <= now`,
    /// as everywhere in the store).
    pub(crate) fn pop_expired(&mut self, now: Timestamp) -> Option<(Timestamp, Expiring)> {
        match self.order.first() {
            Some((at, _)) if *at <= now => self.order.pop_first(),
            _ => None,
        }
    }

    /// Whether anything has expired at `now`.
    pub(crate) fn has_expired(&self, now: Timestamp) -> bool {
        self.order.first().is_some_and(|(at, _)| *at <= now)
    }

    /// When the next entry expires.
    pub(crate) fn next_expiry(&self) -> Option<Timestamp> {
        self.order.first().map(|(at, _)| *at)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

/// Adds one removed entry to a report.
pub(crate) fn count(report: &mut PurgeReport, entry: &Expiring) {
    match entry {
        Expiring::Flow(_) => report.flows += 1,
        Expiring::Outcome(_) => report.outcomes += 1,
        Expiring::Lease(_) => report.leases += 1,
        // Active marks end with their flow; they are not counted apart.
        Expiring::Active(_) => {}
    }
}

/// Adds `more` to `report`.
pub(crate) fn add(report: &mut PurgeReport, more: PurgeReport) {
    report.flows += more.flows;
    report.outcomes += more.outcomes;
    report.leases += more.leases;
}
