//! # mcp-authkit-store-redis
//!
//! The Redis backend of mcp-authkit: tokens, refresh leases and pending
//! authorization flows shared by every replica of an application. Use it
//! when several server processes sit behind a load balancer: the tool call
//! waits on replica A while the OAuth callback lands on replica B, and A
//! wakes within milliseconds.
//!
//! [`RedisStore`] implements both [`TokenStore`] and [`PendingStore`] with
//! every guarantee those traits list (the `mcp-authkit-conformance` suite
//! checks them against a real server and a real cluster, with a second OS
//! process). It needs Redis 6.2 or newer (or a compatible server speaking
//! RESP3); on Redis Cluster, Redis 7.0 or newer (sharded pub/sub).
//!
//! ```
//! use mcp_authkit_core::{TokenKey, TokenRecord, TokenStore, Timestamp};
//! use mcp_authkit_store_redis::RedisStore;
//! # use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> mcp_authkit_core::Result<()> {
//! # let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
//! # let prefix = format!("doc-example:{}", mcp_authkit_core::random_urlsafe(8));
//! let store = RedisStore::builder(url) // redis://, rediss://, unix:///path or redis+cluster://
//!     .prefix(prefix)                   // every key of this store starts with it
//!     .connect_timeout(Duration::from_secs(2))
//!     .connect()
//!     .await?;
//! let key = TokenKey::new("github", "user-1");
//! let revision = store.put(&key, &TokenRecord::new("gho_x", Timestamp::now())).await?;
//! assert_eq!(store.get(&key).await?.unwrap().revision, revision);
//! # store.delete_namespace().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Connections
//!
//! A store holds one command connection (a redis-rs `ConnectionManager`,
//! which reconnects by itself after a drop) and, once something waits for a
//! flow, one subscription connection. Clones share both: however many flows
//! a process waits on, it uses two connections per store (on a cluster, two
//! per node: see [Redis Cluster](#redis-cluster)). Both carry the
//! `CLIENT SETNAME` given to [`RedisStoreBuilder::client_name`], so they are
//! easy to find in `CLIENT LIST`.
//!
//! When Redis goes away (a killed connection, a restart), operations in
//! flight fail with a retryable error ([`Error::is_retryable`]), later
//! operations reconnect by themselves, and waiters re-subscribe and read the
//! stored outcome again, so they still see every completion. Nothing ever
//! waits longer than the configured timeouts: an unreachable server is an
//! error after the connect timeout.
//!
//! With Redis ACLs, give the application's user the rules of [`acl_rules`]:
//! the prefix's keys, its completion channel, and the commands the store
//! uses, without `SCAN` (which would list every key of the database); give
//! operators (inspect, purge, rekey) the rules of [`acl_operator_rules`].
//! (Users created on Redis 7 have no pub/sub channels by default; without
//! the channel, `complete` and `wait` fail with a permission error.) The
//! rules cover a cluster too: its sharded channels and `CLUSTER SLOTS`,
//! which the cluster client reads to find the shards.
//!
//! # Key layout
//!
//! Every key starts with the prefix `P` (default `mcp-authkit`) and carries a
//! [hash tag](https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags)
//! in braces. `T` stands for a token key, written as
//! `escape(provider).escape(subject)`, and `S` for a flow state, written as
//! `escape(state)`, where `escape` percent-encodes every byte except ASCII
//! letters, digits and `-_~@+=!$&,;:/#'()` (so `{`, `}`, `.`, `%`, spaces and
//! non-ASCII are escaped, and names stay readable in `redis-cli`). The
//! prefix may not contain braces, so the tag is always ours.
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `P:tok:{T}` | hash | `rev` (revision), `rec` (the record, [`codec`] bytes) | never |
//! | `P:tomb:{T}` | string | the revision of a deleted token | after the tombstone TTL (24 h) |
//! | `P:lease:{T}` | string | the refresh lease holder's random token | after the lease TTL |
//! | `P:active:{T}` | string | the state of the key's active flow | with the flow |
//! | `P:flow:{S}` | string | a pending flow ([`codec`] bytes) | at the flow's `expires_at` |
//! | `P:out:{S}` | string | a completed flow's outcome ([`codec`] bytes) | after `keep_for` |
//! | `P:taken:{S}` | string | `<nonce> <flow bytes>`: the take that removed the flow | after 2 minutes, or when the flow completes |
//!
//! Completions are announced with the message `S <outcome>` on the pub/sub
//! channel `P:completions` (single server), or on the sharded channel
//! `P:done:{S}` (cluster).
//!
//! ## Why it works on Redis Cluster
//!
//! Every command and every script touches keys of one hash tag only, so each
//! runs on one shard (a test runs the whole store against a cluster-mode
//! server, which refuses cross-slot scripts):
//!
//! - token writes, compare-and-swap and deletes are one script over
//!   `P:tok:{T}` and `P:tomb:{T}`; leases are one `SET NX PX` (with a
//!   `PTTL` in the same round trip) or one compare-and-delete script on
//!   `P:lease:{T}`;
//! - `take(state)` knows only the state, so a flow lives under `{S}`, and
//!   taking it is one script on `P:flow:{S}` and `P:taken:{S}`;
//! - `complete` removes the flow (and its taken record) and stores the
//!   outcome in one script on `P:flow:{S}`, `P:out:{S}` and `P:taken:{S}`,
//!   which also publishes the completion.
//!
//! Two operations need keys of both kinds, and run as two single-tag steps
//! in an order that is safe whatever happens between them:
//!
//! - `insert(flow)` first stores the flow under `{S}`, then claims
//!   `P:active:{T}`. Until the claim lands nobody knows the new state, so
//!   the unclaimed flow is invisible; a caller that joins an active flow
//!   always finds it stored. If the claim loses (another flow is active),
//!   the flow is removed again; if the process dies in between, the flow
//!   expires by its TTL.
//! - `complete` first ends the active mark (only if it still names this
//!   state), then stores the outcome and publishes it, so a woken waiter
//!   that starts a new flow is not joined to the finished one.
//!
//! On a single server both steps go out as one pipeline, in that order, in
//! one round trip; on a cluster, as two commands one after the other.
//! Revisions come from the server clock (see below), never from a shared
//! counter key, which would need its own slot.
//!
//! # Redis Cluster
//!
//! Pick a cluster when one Redis server is not enough (memory, throughput,
//! or a managed offering that only comes in cluster mode). The store is the
//! same type with the same API and guarantees; only the URL differs:
//!
//! - `redis+cluster://[user:password@]host:port[,host:port...]`: seed nodes
//!   (one is enough; more let the first connect survive a node being
//!   down). redis-rs's cluster client learns the rest of the cluster from
//!   them and reaches every node with the same credentials.
//! - `rediss+cluster://...`: the same over TLS, with the same
//!   [`tls_root_certificates_pem`](RedisStoreBuilder::tls_root_certificates_pem)
//!   and [`tls_client_identity_pem`](RedisStoreBuilder::tls_client_identity_pem)
//!   as a single server, presented to every node (tested against a cluster
//!   that speaks TLS only, between its nodes too: `--tls-cluster yes`).
//!
//! A cluster has only database 0. A `redis://` URL that names a cluster
//! node, or a `redis+cluster://` URL that names a server without cluster
//! support, is a configuration error saying which URL to use: a single-server
//! connection to one node would fail with `MOVED` on most keys.
//!
//! It needs Redis 7.0 or newer. What changes underneath:
//!
//! - **Commands** go through redis-rs's cluster client, which holds one
//!   connection per node, sends each command to its slot's master and
//!   follows `MOVED`/`ASK` and failovers. Every command and script still
//!   touches one hash tag, so the refresh lease and every compare-and-swap
//!   stay one atomic step on one master. A `CROSSSLOT` error can only mean
//!   a bug in this crate: please report it.
//! - **Wake-ups** use sharded pub/sub: `complete` runs `SPUBLISH` on the
//!   channel `P:done:{S}`, which shares the flow's hash tag and so lives on
//!   the flow's slot, inside the finish script. A waiter `SSUBSCRIBE`s to its
//!   flow's channel through the store's one subscription client, which holds
//!   one connection per node, so a process waiting on any number of flows
//!   holds at most one subscribing connection per shard. Channels nobody
//!   waits on are unsubscribed again within about a second. After a
//!   disruption (a node connection dropped, or a node ended subscriptions
//!   with `SUNSUBSCRIBE` because a failover or resharding moved the slot),
//!   every waiter reads its channel's slot once (so a demoted master's
//!   `MOVED` refreshes the client's slot map), subscribes again and reads
//!   the stored outcome again. From the first disruption on, each new wait
//!   of that store pays that one extra round trip.
//! - **Listings** (`scan`, [`delete_namespace`](RedisStore::delete_namespace),
//!   and so the CLI's `inspect`, `purge` and `rekey`) walk every master in
//!   turn. A `scan` cursor names the master it is on by node id and lists
//!   the masters already walked: a SCAN position is only valid on the node
//!   that returned it, so when that node is no longer a master (a
//!   failover) the listing goes on with the masters not walked yet, among
//!   them the new one, from the start. Every key present throughout is
//!   listed, some twice; a resharding during a listing may miss keys moved
//!   to a master already walked. Each SCAN goes to its master by address,
//!   never elsewhere: redis-rs sends a command for a slot whose master it
//!   cannot reach to another node, where a keyless SCAN would list that
//!   node's keys instead (a `delete_namespace` during a failover once
//!   finished without touching the dead master's shard); an unreachable
//!   master is a retryable error.
//! - **Connection names**: the cluster client opens node connections by
//!   itself; they carry the [`client_name`](RedisStoreBuilder::client_name)
//!   when opened with the store, not after a reconnect.
//!
//! What a failover costs: when a master fails, Redis promotes its replica
//! after `cluster-node-timeout` (commonly 5-15 s) plus an election. In that
//! window, operations on that shard's keys fail with a retryable error
//! ([`Error::is_retryable`]) after the response timeout, and the other shards
//! carry on; `take` and `delete_namespace` send themselves again (see
//! below) and answer once the new master does. A waiting tool call does not
//! fail: retryable errors during a wait (its subscribe, its re-read) are
//! retried with a backoff until its deadline, and only an error no retry can
//! fix ends it early. Its waiter notices the dropped connection or the
//! ended subscription, subscribes again and reads the stored outcome, so a
//! completion stored before or during the failover still wakes it, late by
//! about the failover's length. For a minute after such a disruption, and
//! whenever its subscribe fails, a waiter also reads the store again after
//! a backoff (100 ms, doubling up to 2 s): measured on Redis 7.0, a
//! subscription that lands on a master in the middle of being demoted
//! misses every later `SPUBLISH`. That costs each waiter of the store one
//! subscribe and one `GET` about every 2 s for that minute (1000 waiters:
//! about 1000 commands a second), and any dropped node connection or
//! server-ended subscription starts it, also one that lost nothing (a
//! resharding, a connection the server closed). And measured with redis-rs 1.8, a
//! cluster connection now and then stops answering after a planned
//! failover (every command times out, for a minute and more, while a new
//! connection answers at once): the store replaces its command connection
//! after a timeout, and its subscription connection when a subscribe gets
//! no answer (each at most once per 2 s). Before these, one planned
//! failover in about three left every waiter of the store asleep until its
//! deadline. Measured on a loopback cluster (`cluster-node-timeout` 2 s;
//! tests `waiters_wake_*` in `tests/it/cluster.rs`), from the callback's
//! first try to complete to the waiter's wake:
//!
//! - planned failover (`CLUSTER FAILOVER`, 20 runs): in 12 runs 0.6-4 ms
//!   (p50), at most 125 ms; in 8 runs about 3 s (p50 and max), one
//!   response timeout before the connection that stopped answering was
//!   replaced;
//! - killed master (SIGKILL, 2 runs): 0.7-1.4 ms (p50), 3.0-3.6 s (max):
//!   that shard's completions wait for its replica to take over. With the default
//!   `cluster-node-timeout` of 15 s, count on 15-20 s for that shard.
//!
//! Redis replicates asynchronously: a write acknowledged by a master in the
//! instant before it died may be lost with it (a completed flow's outcome, a
//! refresh lease, a token, a take, whose flow is then back on the new
//! master). So every guarantee below holds as long as Redis loses no
//! acknowledged write; a master that is killed (not failed over by
//! `CLUSTER FAILOVER`, which waits for its replica) can break them: a flow
//! taken on it can be taken once more from its promoted replica, a lease
//! can have two holders, a compare-and-swap can win against a revision that
//! is gone. The store does not send `WAIT` after its writes (it would make
//! every write wait for a replica, and a `WAIT` that times out cannot undo
//! the write anyway); where a second take is not acceptable, run Redis with
//! `min-replicas-to-write` or accept that window.
//!
//! ## Re-sent commands
//!
//! redis-rs's cluster client (1.8) retries a request up to 4 times, and
//! besides `MOVED`/`ASK`/`TRYAGAIN`/`CLUSTERDOWN` (where the server ran
//! nothing) it re-sends one whose node connection dropped (reset, EOF,
//! broken pipe) or whose reply timed out *after it was sent*: the server may
//! have run it, and the re-send runs it again (on the new master after a
//! failover, which has the first run only if it was replicated). `take` and
//! `delete_namespace` (on a cluster) also send themselves again after a
//! retryable error, for up to 30 seconds, which rides out a failover with
//! the default `cluster-node-timeout` (15 s). What a second run does:
//!
//! | operation | a second run | answer |
//! |---|---|---|
//! | `take` | finds the taken record (`P:taken:{S}`) its first run left under its nonce (random, one per call) | the same flow: exactly one caller gets it (while no acknowledged write is lost) |
//! | `complete` | ends no mark (already ended), stores the same outcome again and announces it again | `Ok`; a waiter ignores a second announcement |
//! | `insert` | finds exactly its own flow bytes, and the mark naming its own state | `Inserted` |
//! | `try_acquire_lease` | finds the key holding its own random token | acquired (it is held by this call) |
//! | `release_lease` | finds the key gone | `false`, though this call released it |
//! | `put` | writes the record again, at a newer revision | the newer revision |
//! | `compare_and_swap` | finds its own revision, not the one expected | `Conflict` naming the revision this call wrote |
//! | `delete`, `delete_if_revision` | finds the token gone | `false`, though this call deleted it |
//! | `delete_namespace` | removes nothing more | a count without the keys the first run removed |
//!
//! The stored state is right in every case, and no flow is handed out
//! twice by a re-send; the last four answers may understate what the call
//! did. A take's re-sends stop after 30 s on a cluster and after 5 s (at
//! least two response timeouts) on a single server: a take that gets no
//! reply in that window ends with a retryable error, and its flow may have
//! been taken by a run whose reply was lost, so a new take answers `None`
//! (the flow is lost, never handed out twice). A single server's
//! connection re-sends only a command that never left, so there only
//! `take`'s own retry sends a script twice.
//!
//! # Guarantees and how they are kept
//!
//! - **Revisions** are `max(previous + 1, server time in µs)`, computed in
//!   the write script. A delete leaves the last revision in a tombstone for
//!   [`RedisStoreBuilder::tombstone_ttl`], so a token written again continues
//!   above it; after that the server clock alone keeps revisions growing.
//! - **Compare-and-swap** and **delete-if-revision** are scripts that compare
//!   the stored revision and write in one atomic step.
//! - **Leases**: `SET NX PX` with a random token (a key already holding
//!   that token means a re-sent acquisition: acquired); release deletes the
//!   key only if it still holds that token.
//! - **take** is a script that reads and deletes the flow, leaving a
//!   short-lived record of which take removed it (removed again once the
//!   take has its answer): exactly one caller gets it, even when the script
//!   runs twice (see [Re-sent commands](#re-sent-commands)), as long as
//!   Redis loses no write it acknowledged. A master killed before its
//!   replica received a take puts the flow back (the replica still has
//!   it), and a second caller can take it again; see below.
//! - **TTLs**: every pending flow, active mark, outcome, lease and tombstone
//!   expires by Redis itself, so nothing of a flow stays forever and
//!   [`PendingStore::purge_expired`] has nothing to do.
//! - **wait** subscribes (through the store's one subscription
//!   connection) before it reads the stored outcome, so a completion is
//!   either stored already or delivered. It reads the store again only when
//!   its subscription dropped or failed, and on a cluster for a minute after
//!   a disruption (see [Redis Cluster](#redis-cluster)); otherwise it never
//!   polls.
//! - **Foreign data**: a value under our prefix that this library did not
//!   write (another type, another shape) is a decode error naming the key,
//!   and no operation overwrites or deletes it. Flow and outcome keys are
//!   named with the state shortened, since a state is a credential.
//!
//! Values are the versioned bytes of [`codec`]; wrap the store in
//! `mcp-authkit-store-encrypted` to keep tokens encrypted at rest.
//!
//! # Features
//!
//! - `tls` (default): rediss:// URLs, through rustls on the aws-lc-rs
//!   provider. Without it, a rediss:// URL is a configuration error.
//! - `testing`: the `testing` module, helpers that find a Redis
//!   for tests (`REDIS_URL`) or fail saying how to provide one. Built with
//!   `RUSTFLAGS="--cfg mcp_authkit_containers"` (not a feature, so
//!   `--all-features` does not pay its build), it also starts a `redis:7`
//!   container (its port on 127.0.0.1 only) through testcontainers when
//!   no Redis answers, outside CI.
//! - `testcontainers`: kept for builds that name it; it only turns on
//!   `testing`. The container fallback is the cfg above.
//!
//! [`codec`]: mcp_authkit_core::codec
//! [`TokenStore`]: mcp_authkit_core::TokenStore
//! [`PendingStore`]: mcp_authkit_core::PendingStore
//! [`PendingStore::purge_expired`]: mcp_authkit_core::PendingStore::purge_expired
//! [`Error::is_retryable`]: mcp_authkit_core::Error::is_retryable

#![warn(missing_docs)]

mod config;
mod connection;
mod error;
mod keys;
mod pending;
mod scripts;
mod subscription;
#[cfg(feature = "testing")]
pub mod testing;
mod tokens;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_authkit_core::{Clock, Result};
use redis::{FromRedisValue, RedisResult, Value};

pub use config::{
    DEFAULT_CLIENT_NAME, DEFAULT_CONNECT_TIMEOUT, DEFAULT_PREFIX, DEFAULT_RESPONSE_TIMEOUT,
    DEFAULT_TOMBSTONE_TTL, RedisStoreBuilder,
};

use connection::{AbortOnDrop, Commands, Settings, Target};
use keys::Keys;
use scripts::Scripts;
use subscription::Completions;

/// The backend name in errors.
const BACKEND: &str = "redis";

/// How often at most a cluster command connection that timed out is
/// replaced by a new one.
const REPLACE_INTERVAL: Duration = Duration::from_secs(2);

/// A token and pending-flow store on Redis; clones share the connections.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

/// A master a cluster key listing walks (see `Inner::scan_masters`).
struct ScanMaster {
    /// Its node id: SCAN positions belong to it.
    id: String,
    /// A slot it serves, to sort the masters by.
    slot: u16,
    /// Its address, to send SCAN to it and nowhere else: redis-rs routes a
    /// command for a slot whose master it cannot reach to another node of
    /// that shard or, failing that, to any node, where a keyless SCAN would
    /// silently list that node's keys instead (measured: a delete_namespace
    /// during a failover "finished" without the dead master's shard).
    /// `None` when the node does not know its own address (an empty host
    /// in `CLUSTER SLOTS`, as in a one-node cluster): routed by slot then.
    host: Option<String>,
    port: u16,
}

struct Inner {
    target: Target,
    settings: Settings,
    /// Single server: a `ConnectionManager`; cluster: redis-rs's cluster
    /// connection (one connection per node), replaced when it stops
    /// answering (see [`Inner::replace_if_stuck`]).
    manager: std::sync::RwLock<Commands>,
    /// Cluster: when the command connection was last replaced.
    replaced_at: Mutex<Option<tokio::time::Instant>>,
    keys: Keys,
    scripts: Scripts,
    tombstone_ttl_ms: u64,
    clock: Arc<dyn Clock>,
    /// Started by the first wait; started again if the runtime it ran on
    /// has shut down (a store shared by several test runtimes).
    completions: Mutex<Option<Arc<Completions>>>,
    address: String,
    /// Single server only: renames the command connection after a reconnect.
    _renamer: Option<AbortOnDrop>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.inner.address)
            .field("prefix", &self.inner.keys.prefix())
            .field("client_name", &self.inner.settings.client_name)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` with the default prefix and timeouts; see
    /// [`builder`](Self::builder) for the options.
    pub async fn connect(url: &str) -> Result<RedisStore> {
        Self::builder(url).connect().await
    }

    /// A builder for a store on `url`: `redis://[user:password@]host:port/db`,
    /// `rediss://...` for TLS, or `unix:///path/to/redis.sock`; for Redis
    /// Cluster `redis+cluster://[user:password@]host:port[,host:port...]`
    /// or `rediss+cluster://...` (see [Redis Cluster](crate#redis-cluster)).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(url)
    }

    async fn open(
        target: Target,
        settings: Settings,
        prefix: &str,
        tombstone_ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<RedisStore> {
        let (manager, renamer) = match &target {
            Target::Single(client) => {
                let (manager, renamer) = connection::command_connection(client, &settings).await?;
                (Commands::Single(manager), Some(renamer))
            }
            Target::Cluster(cluster) => (
                Commands::Cluster(connection::cluster_connection(cluster, &settings).await?),
                None,
            ),
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                address: target.describe(),
                target,
                settings,
                manager: std::sync::RwLock::new(manager),
                replaced_at: Mutex::new(None),
                keys: Keys::new(prefix),
                scripts: Scripts::new(),
                tombstone_ttl_ms: millis(tombstone_ttl),
                clock,
                completions: Mutex::new(None),
                _renamer: renamer,
            }),
        })
    }

    /// The key prefix of this store.
    pub fn prefix(&self) -> &str {
        self.inner.keys.prefix()
    }

    /// The `CLIENT SETNAME` of this store's connections.
    pub fn client_name(&self) -> &str {
        &self.inner.settings.client_name
    }

    /// Deletes every key of this store's prefix (and no other prefix's, even
    /// one that starts with this one); returns how many. For tests and for
    /// removing a tenant: it is not atomic, so stop using the prefix first.
    ///
    /// On a cluster it walks every master, and walks again until a walk
    /// finds nothing: a failover during a walk moves a SCAN position to a
    /// node it means nothing on, so that walk may miss keys. A retryable
    /// error (a shard failing over) starts a new walk, for up to 30 seconds;
    /// after that it ends with the first walk that succeeds, or the error
    /// (so a writer that keeps writing under the prefix cannot keep it
    /// walking: the keys it wrote meanwhile may remain).
    pub async fn delete_namespace(&self) -> Result<u64> {
        let mut deleted = 0;
        if !self.inner.is_cluster() {
            self.delete_walk(&mut deleted).await?;
            return Ok(deleted);
        }
        let give_up = tokio::time::Instant::now() + pending::RESEND_WINDOW;
        let mut delay = pending::RESEND_FIRST_DELAY;
        loop {
            let before = deleted;
            match self.delete_walk(&mut deleted).await {
                Ok(()) if deleted == before => return Ok(deleted),
                // A writer still using the prefix gives every walk something
                // to delete: past the window the call ends as on a single
                // server, after one walk that succeeded.
                Ok(()) if tokio::time::Instant::now() >= give_up => return Ok(deleted),
                Ok(()) => {}
                Err(error)
                    if error.is_retryable() && tokio::time::Instant::now() + delay < give_up =>
                {
                    tracing::debug!(%error, "delete namespace: a walk failed; walking again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(pending::RESEND_MAX_DELAY);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One walk of [`delete_namespace`](Self::delete_namespace) over every
    /// master (or the one server), adding the keys it removes to `deleted`.
    async fn delete_walk(&self, deleted: &mut u64) -> Result<()> {
        let pattern = format!("{}:*", keys::escape_glob(self.prefix()));
        // On a cluster, SCAN lists one master's keys: walk every master.
        let masters = if self.inner.is_cluster() {
            self.inner.scan_masters().await?
        } else {
            Vec::new()
        };
        let nodes: Vec<Option<&ScanMaster>> = if self.inner.is_cluster() {
            masters.iter().map(Some).collect()
        } else {
            vec![None]
        };
        for node in nodes {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500);
                let (next, names): (u64, Vec<String>) = self
                    .inner
                    .query_on(node, scan)
                    .await
                    .map_err(|e| error::backend("delete namespace", e))?;
                let ours = names.iter().filter(|name| self.inner.keys.is_ours(name));
                if self.inner.is_cluster() {
                    // Keys of different hash tags live on different slots,
                    // which one pipeline may not mix.
                    for name in ours {
                        let removed: u64 = self
                            .inner
                            .query(redis::cmd("UNLINK").arg(name))
                            .await
                            .map_err(|e| error::backend("delete namespace", e))?;
                        *deleted += removed;
                    }
                } else {
                    let mut pipeline = redis::pipe();
                    for name in ours {
                        pipeline.cmd("UNLINK").arg(name);
                    }
                    if !pipeline.is_empty() {
                        let removed: Vec<u64> = self
                            .inner
                            .query_pipeline(&pipeline)
                            .await
                            .map_err(|e| error::backend("delete namespace", e))?;
                        *deleted += removed.iter().sum::<u64>();
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }
}

impl Inner {
    /// The masters a cluster key listing must walk, in slot order: each by
    /// its node id (`CLUSTER SLOTS` item `[2][2]`) and its first slot, which
    /// commands are routed by. A SCAN position is only valid on the node
    /// that returned it, so a listing checks by id that the node is still a
    /// master before it continues there. An empty answer (a cluster being
    /// set up) is a retryable error.
    async fn scan_masters(&self) -> Result<Vec<ScanMaster>> {
        let ranges: Vec<Value> = self
            .query(&redis::cmd("CLUSTER").arg("SLOTS").to_owned())
            .await
            .map_err(|e| error::backend("list the cluster's masters", e))?;
        // Each range: [start, end, [host, port, id, ...], replicas...].
        let mut first_slots: std::collections::HashMap<String, (u16, Option<String>, u16)> =
            Default::default();
        for range in ranges {
            let Value::Array(items) = range else { continue };
            let (Some(Value::Int(start)), Some(Value::Array(master))) =
                (items.first(), items.get(2))
            else {
                continue;
            };
            let id = match master.get(2) {
                Some(Value::BulkString(id)) => String::from_utf8_lossy(id).into_owned(),
                Some(Value::SimpleString(id)) => id.clone(),
                // Redis 4+ always sends the id; without it a position cannot
                // be tied to its node.
                _ => continue,
            };
            let host = match master.first() {
                Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
                Some(Value::SimpleString(host)) => host.clone(),
                _ => continue,
            };
            let host = (!host.is_empty() && host != "?").then_some(host);
            let Some(Value::Int(port)) = master.get(1) else {
                continue;
            };
            let start = *start as u16;
            first_slots
                .entry(id)
                .and_modify(|(slot, _, _)| *slot = (*slot).min(start))
                .or_insert((start, host, *port as u16));
        }
        if first_slots.is_empty() {
            return Err(mcp_authkit_core::Error::backend(
                BACKEND,
                "list the cluster's masters",
                true,
                std::io::Error::other("CLUSTER SLOTS named no master with its node id"),
            ));
        }
        let mut masters: Vec<ScanMaster> = first_slots
            .into_iter()
            .map(|(id, (slot, host, port))| ScanMaster {
                id,
                slot,
                host,
                port,
            })
            .collect();
        masters.sort_by_key(|master| master.slot);
        Ok(masters)
    }

    /// Runs `cmd` on `master` and no other node (`None`: as any command);
    /// a master that cannot be reached is a retryable error.
    async fn query_on<T: FromRedisValue>(
        &self,
        master: Option<&ScanMaster>,
        cmd: redis::Cmd,
    ) -> RedisResult<T> {
        match (master, &self.commands()) {
            (Some(master), Commands::Cluster(connection)) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = RoutingInfo::SingleNode(match &master.host {
                    Some(host) => SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: master.port,
                    },
                    None => SingleNodeRoutingInfo::SpecificNode(Route::new(
                        master.slot,
                        SlotAddr::Master,
                    )),
                });
                let value = connection.clone().route_command(cmd, route).await?;
                T::from_redis_value(value).map_err(Into::into)
            }
            _ => self.query(&cmd).await,
        }
    }

    /// One `PING` round trip and its latency.
    async fn ping(&self) -> Result<std::time::Duration> {
        let started = std::time::Instant::now();
        let _: String = self
            .query(&redis::cmd("PING"))
            .await
            .map_err(|e| error::backend("ping", e))?;
        Ok(started.elapsed())
    }

    /// The command connection (a cheap clone).
    fn commands(&self) -> Commands {
        self.manager
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Cluster only: after a command timed out, opens a new cluster
    /// connection and puts it in place of the old one, at most once per
    /// [`REPLACE_INTERVAL`]. Measured with redis-rs 1.8 through a planned
    /// failover (`CLUSTER FAILOVER`): now and then a cluster connection
    /// stops answering the failed-over shard's keys for good (every
    /// command times out, for a minute and more), while a new connection
    /// to the same cluster answers at once. Requests in flight on the old
    /// connection finish or time out there.
    async fn replace_if_stuck<T>(&self, result: &RedisResult<T>) {
        let (Err(error), Target::Cluster(cluster)) = (result, &self.target) else {
            return;
        };
        if !error.is_timeout() {
            return;
        }
        {
            let mut replaced_at = self
                .replaced_at
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if replaced_at.is_some_and(|at| at.elapsed() < REPLACE_INTERVAL) {
                return;
            }
            *replaced_at = Some(tokio::time::Instant::now());
        }
        match connection::cluster_connection(cluster, &self.settings).await {
            Ok(fresh) => {
                tracing::debug!(%error, "replaced the cluster command connection after a timeout");
                *self
                    .manager
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Commands::Cluster(fresh);
            }
            Err(error) => tracing::debug!(%error, "could not open a new cluster connection"),
        }
    }

    /// Runs `cmd`; once more if the connection could not be opened (the
    /// command never left, and the manager has started a new connection).
    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> RedisResult<T> {
        let mut connection = self.commands();
        let result = match cmd.query_async(&mut connection).await {
            Err(error) if error::never_sent(&error) => cmd.query_async(&mut connection).await,
            result => result,
        };
        self.replace_if_stuck(&result).await;
        result
    }

    /// [`query`](Self::query) for a pipeline.
    async fn query_pipeline<T: FromRedisValue>(
        &self,
        pipeline: &redis::Pipeline,
    ) -> RedisResult<T> {
        let mut connection = self.commands();
        let result = match pipeline.query_async(&mut connection).await {
            Err(error) if error::never_sent(&error) => pipeline.query_async(&mut connection).await,
            result => result,
        };
        self.replace_if_stuck(&result).await;
        result
    }

    /// [`query`](Self::query) for a script (EVALSHA, loading it if the
    /// server lost it).
    async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        let mut connection = self.commands();
        let result = match invocation.invoke_async(&mut connection).await {
            Err(error) if error::never_sent(&error) => {
                invocation.invoke_async(&mut connection).await
            }
            result => result,
        };
        self.replace_if_stuck(&result).await;
        result
    }

    fn completions(&self) -> Result<Arc<Completions>> {
        let mut current = self
            .completions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*current {
            Some(completions) if completions.is_running() => Ok(Arc::clone(completions)),
            _ => {
                let started = Arc::new(match &self.target {
                    Target::Single(client) => Completions::start(
                        client.clone(),
                        self.settings.clone(),
                        self.keys.channel().to_owned(),
                    ),
                    Target::Cluster(cluster) => Completions::start_sharded(
                        cluster,
                        self.settings.clone(),
                        self.keys.clone(),
                    )?,
                });
                *current = Some(Arc::clone(&started));
                Ok(started)
            }
        }
    }

    /// Whether the store runs on a cluster.
    fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }
}

impl RedisStore {
    /// The backend's name in spans and metric labels.
    fn backend_label(&self) -> &'static str {
        if self.inner.is_cluster() {
            "redis-cluster"
        } else {
            "redis"
        }
    }
}

/// The Redis ACL rules a user needs to run a store on `prefix` in an
/// application, and nothing more: its keys, its completion channel, and the
/// commands the store and its scripts send. For example, in `redis-cli`:
///
/// ```text
/// ACL SETUSER mcp-auth on >password <the rules>
/// ```
///
/// ```
/// let rules = mcp_authkit_store_redis::acl_rules("myapp:auth");
/// assert!(rules.contains("~myapp:auth:*"));
/// assert!(!rules.contains("+scan"), "SCAN would list every key of the database");
/// ```
///
/// Left out on purpose:
/// - `SCAN`, which ignores key patterns: a user allowed it can list the
///   name of every key in the database, other applications' included. Only
///   [`TokenStore::scan`](mcp_authkit_core::TokenStore::scan) and
///   [`RedisStore::delete_namespace`] need it; they are operator work, see
///   [`acl_operator_rules`].
/// - `SELECT`: give the store a URL on database 0. A URL that names another
///   database (`redis://host/2`) needs `+select` added, which also lets the
///   user reach the prefix's keys in every database.
pub fn acl_rules(prefix: &str) -> String {
    let prefix = keys::escape_glob(prefix);
    format!(
        "resetkeys ~{prefix}:* resetchannels &{prefix}:completions &{prefix}:done:* -@all \
         +hello +auth +ping +client|setname +cluster|slots +cluster|shards \
         +get +set +del +pttl +type +time \
         +hmget +hget +hexists +hset +exists \
         +eval +evalsha +script|load +subscribe +publish \
         +ssubscribe +sunsubscribe +spublish"
    )
}

/// The ACL rules for the operator commands on `prefix` (`mcp-authkit
/// inspect`, `purge`, `rekey`, [`RedisStore::delete_namespace`]): those of
/// [`acl_rules`] plus `SCAN`, which lists keys, and `UNLINK`. `SCAN` lets
/// the user list the names (not the values) of every key in the database,
/// so keep this user for operators and out of the application.
///
/// ```
/// let rules = mcp_authkit_store_redis::acl_operator_rules("myapp:auth");
/// assert!(rules.contains("+scan") && rules.contains("~myapp:auth:*"));
/// ```
pub fn acl_operator_rules(prefix: &str) -> String {
    format!("{} +scan +unlink", acl_rules(prefix))
}

/// The longest TTL this store sets: 1,000 years. Redis refuses an expiry
/// that overflows its clock (`PX` of `Duration::MAX` is "invalid expire
/// time"), where the other backends take a huge duration as "as long as
/// possible"; this keeps Redis in line with them.
const MAX_TTL_MS: u64 = 1000 * 365 * 24 * 3600 * 1000;

/// Whole milliseconds for a Redis TTL: at least one (Redis refuses a zero
/// TTL), at most [`MAX_TTL_MS`].
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_TTL_MS)
}
