//! # mcp-authkit-store-postgres
//!
//! Tokens and pending authorization flows in PostgreSQL, shared by every
//! replica that connects to the same database and schema, and durable
//! across restarts of the server (unlike a Redis without persistence, which
//! forgets every refresh token when it restarts). [`PostgresStore`]
//! implements both [`TokenStore`] and [`PendingStore`] with every guarantee
//! of `mcp-authkit-core`, across processes, and passes the whole
//! `mcp-authkit-conformance` suite including its cross-process scenario.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mcp_authkit_core::{PendingStore, Timestamp, TokenKey, TokenRecord, TokenStore};
//! use mcp_authkit_store_postgres::PostgresStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Tables go in the schema you choose (default `public`), created or
//! // upgraded on open.
//! let store = PostgresStore::options("postgres://app@db.internal/app?sslmode=verify-full")
//!     .schema("authkit")
//!     .open()
//!     .await?;
//! let tokens: Arc<dyn TokenStore> = Arc::new(store.clone());
//! let pending: Arc<dyn PendingStore> = Arc::new(store);
//! let key = TokenKey::new("github", "user-1");
//! tokens.put(&key, &TokenRecord::new("gho_x", Timestamp::now())).await?;
//! # let _ = pending;
//! # Ok(())
//! # }
//! ```
//!
//! # Connecting
//!
//! From a URL ([`PostgresStore::connect`], [`PostgresStore::options`]), with
//! every parameter sqlx's `PgConnectOptions` reads, `sslmode` and
//! `sslrootcert` included (TLS through rustls with the `tls` feature, on by
//! default), or from an application's existing [`PgPool`]
//! ([`PostgresStore::from_pool`]). URLs never appear in errors or logs: they
//! may hold a password.
//!
//! # Schema and migrations
//!
//! Tables are named `mcp_authkit_*` and live in the schema given to
//! [`PostgresStoreOptions::schema`] (default `public`), so the store can
//! share the application's own database. Every statement names the schema
//! (quoted), so it does not depend on `search_path`, also on a pool the
//! application configured. The schema is created and upgraded by this
//! crate's own migrations, recorded in their own table, [`MIGRATIONS_TABLE`]
//! in that schema (never in sqlx's `_sqlx_migrations`), in one transaction
//! under an advisory lock, so replicas starting together take turns. A
//! schema already at [`SCHEMA_VERSION`] is only read, so a least-privilege
//! role opens it. A schema newer than this release is refused with
//! [`Error::UnsupportedFormat`] before anything is changed.
//!
//! # Least-privilege role
//!
//! Let the schema's owner create it once (the first open as that role, or
//! `mcp-authkit purge --store postgres://owner@...`), then run the
//! application as a role with only these grants (schema `authkit`, role
//! `app`):
//!
//! ```sql
//! GRANT USAGE ON SCHEMA authkit TO app;
//! GRANT SELECT, INSERT, UPDATE, DELETE ON
//!     authkit.mcp_authkit_tokens, authkit.mcp_authkit_leases,
//!     authkit.mcp_authkit_flows, authkit.mcp_authkit_active_flows,
//!     authkit.mcp_authkit_outcomes TO app;
//! GRANT SELECT ON authkit.mcp_authkit_migrations TO app;
//! GRANT USAGE ON SEQUENCE authkit.mcp_authkit_revisions TO app;
//! ```
//!
//! (`LISTEN` and `NOTIFY` need no grant.) The test `least_privilege_role`
//! runs the store as such a role.
//!
//! # How the guarantees hold across processes
//!
//! - Revisions come from one sequence per schema; a sequence never hands a
//!   value out twice, so revisions grow across deletes. A `put` that met a
//!   concurrent write takes its revision after the row lock is held, so it
//!   is above the revision of the write it follows.
//! - Compare-and-swap is one `UPDATE ... WHERE revision = $expected` (or an
//!   `INSERT ... ON CONFLICT DO NOTHING` for "no record"); under READ
//!   COMMITTED a concurrent writer makes PostgreSQL re-check the condition
//!   on the row it committed, so exactly one racer wins.
//! - [`PendingStore::take`] is one `DELETE ... RETURNING`: one caller gets
//!   the row.
//! - One active flow per key is the primary key of
//!   `mcp_authkit_active_flows`; a refresh lease is a row with an expiry
//!   and a random token, replaced only once expired.
//! - Key parts and flow states are stored as `BYTEA`, so any UTF-8 key
//!   works, NUL included (which `TEXT` cannot hold).
//! - Times (expiry of flows, outcomes, leases) come from the store's
//!   clock, as in the other backends: replicas must agree on time.
//!
//! # Durable or an error
//!
//! No write is reported done before its commit succeeded: writes of one
//! statement run in autocommit and every row they return is read, so an
//! error the server sends at commit is seen; writes of several statements
//! run in a transaction whose `COMMIT` is checked. A disk that fills up, a
//! read-only database (a standby, `default_transaction_read_only`), a
//! missing privilege, bad credentials or a missing database are errors that
//! say so and are not retryable ([`Error::is_retryable`]); an unreachable
//! server, a connection killed in the middle of the work, a statement
//! timeout or a deadlock are retryable. A connection lost during a commit
//! leaves the outcome unknown (as in any client); the guarantees above hold
//! either way, and a retried `put` only writes a newer revision.
//!
//! # Waiting
//!
//! [`PendingStore::complete`] sends a `NOTIFY` in the transaction that
//! stores the outcome, so it goes out at commit. Each process holds one
//! listening connection per server and schema, shared by every store
//! instance and every waiter, opened by the first `wait`: a thousand
//! waiting flows cost one connection. Once that connection listens, and
//! again every time it drops and comes back, every waiter reads its flow's
//! outcome, so a completion made while nobody listened is not lost; that
//! read is one statement per store instance and connection
//! (`state = ANY(...)`, run by whichever of its waiters sees the listener
//! up first, its outcomes handed to their waiters), not one per waiter, so
//! a listener flap with a thousand waiters does not cost the database a
//! thousand statements at once. If that statement fails or times out, or
//! the wait running it is dropped, each of its waiters reads on its own
//! instead; if the wait running it stops being run (a blocked runtime), the
//! others read on their own after at most 5 s, or at their deadline if
//! sooner. Waiters in the completing process wake right after the commit,
//! without waiting for the notification.
//!
//! "Per server" means per host, port, unix socket, TLS mode (`sslmode`),
//! database and user: stores that differ in any of these, or in the schema,
//! get listeners of their own, so a store that asked for TLS never shares a
//! listener opened without it.
//!
//! The listening connection lives on a thread of its own (named
//! `authkit-pg-wake`, one per listener, stopped when the last store
//! instance on it is dropped, restarted if it ever panics), so it does not
//! depend on the tokio runtime of whoever waited first: waiters in any
//! runtime of the process keep waking after another runtime shuts down. In
//! `pg_stat_activity` it shows as `application_name` `mcp-authkit
//! listener <channel>` (whatever the pool's own `application_name`), with
//! [`PostgresStore::channel`] as the channel.
//!
//! Each reconnection uses the current connect options of the stores'
//! pools, so a password rotated with `PgPool::set_connect_options` on a
//! pool given to [`PostgresStore::from_pool`] is used from the next
//! reconnection on. When several store instances share a listener, the
//! options of every live one are tried, the most recently opened first,
//! before the listener backs off (20 ms doubling to 1 s): one instance with
//! a stale password neither decides for the others nor locks them out.
//!
//! A listener that is down never ends a wait by itself: meanwhile the
//! outcomes of the waiters are read through their store's pool, whose
//! sessions usually still work (a password changed on the server before
//! the application's options, a listener killed by an operator), until
//! the listener is back or the wait's deadline passes. That read is one
//! statement a second per store instance that has waiters
//! (`state = ANY(...)` on the outcomes table), whatever the number of
//! waiters: the database is not asked a thousand times a second for a
//! thousand waiters exactly when it may be in trouble. One waiter of the
//! instance at a time runs it, through the instance's pool and on its own
//! runtime, the next in line taking over when its wait ends; an outcome it
//! finds is handed to that flow's waiters, read from the table (never from
//! a notification), so they return without a statement or a pool session
//! of their own. Instances sharing a listener poll on their own: one whose
//! pool is exhausted or failing delays no other instance's waiters. Only a
//! wait that never saw the listener up and cannot read through the pool
//! either returns the listener's error, when that error is one retrying
//! cannot fix: it reads its outcome itself when it starts, then takes its
//! instance's next failed poll (through the same pool) as the pool failing
//! too, without a statement of its own.
//!
//! How soon a waiter in another process wakes is dominated by the
//! completing transaction's durable commit: in the benchmark, a wake took
//! p50 1.4 ms / p99 2.7 ms, a hand-made durable INSERT + NOTIFY p99 1.7 ms
//! and a bare NOTIFY (no WAL, no disk wait) p99 0.7 ms; with other builds
//! loading the machine the commit alone took 4.7-5.5 ms. `complete` keeps
//! `synchronous_commit` on by design: an outcome reported stored must
//! survive a crash of the server.
//!
//! # Expiry
//!
//! Expired flows, outcomes and leases are ignored by every operation at
//! once and removed by [`PendingStore::purge_expired`] or by the background
//! task of [`PostgresStore::spawn_purge_task`], in statements of at most
//! 256 rows per table, so a large backlog never holds many row locks at
//! once.

#![warn(missing_docs)]

mod error;
mod pending;
mod purge;
mod schema;
#[cfg(feature = "testing")]
pub mod testing;
mod tokens;
mod wake;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::{Clock, Error, Result, SystemClock};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

pub use purge::PurgeTask;
/// The sqlx version this crate is built on, for [`PostgresStore::pool`].
pub use sqlx;

#[cfg(doc)]
use mcp_authkit_core::{PendingStore, TokenStore};

/// The table (in the store's schema) that records which of this crate's
/// migrations the schema has.
pub const MIGRATIONS_TABLE: &str = "mcp_authkit_migrations";

/// The newest schema version this release creates and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// The schema used when none is chosen.
pub const DEFAULT_SCHEMA: &str = "public";

/// Token and pending-flow storage in PostgreSQL; clones share one pool.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    schema: String,
    sql: schema::Statements,
    clock: Arc<dyn Clock>,
    hub: Arc<wake::Hub>,
    /// Lets the hub's listener reconnect with this pool's current options.
    _attached: wake::AttachedPool,
    /// This instance's poll while the hub's listener is down: its own, so
    /// another instance's stuck pool on the same hub delays none of its
    /// waiters.
    poller: wake::Poller,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user@host/db?...`)
    /// with default options and brings the schema `public` up to date.
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        PostgresStoreOptions::new(url).open().await
    }

    /// Options for connecting to the database at `url`.
    pub fn options(url: &str) -> PostgresStoreOptions {
        PostgresStoreOptions::new(url)
    }

    /// A store on an application's existing pool, in the schema `public`;
    /// [`PostgresStoreOptions::from_pool`] chooses another.
    pub async fn from_pool(pool: PgPool) -> Result<PostgresStore> {
        PostgresStoreOptions::from_pool(pool).open().await
    }

    /// The connection pool: for inspection, or an application's own queries.
    /// Tables named `mcp_authkit_*` belong to this crate; write to them only
    /// through the store.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema the store's tables are in.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The `LISTEN`/`NOTIFY` channel of this store's schema.
    pub fn channel(&self) -> &str {
        self.inner.hub.channel()
    }

    /// Removes the store's tables, sequence and migrations table, with
    /// every token and flow in them, then the schema itself if nothing else
    /// is left in it and it is not `public`. For throwaway stores (the
    /// demo, tests); other instances on the schema fail afterwards.
    pub async fn drop_tables(&self) -> Result<()> {
        const OP: &str = "drop tables";
        let s = schema::quote_ident(&self.inner.schema);
        let mut tx = self.pool().begin().await.map_err(|e| error::db(OP, e))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {s}.mcp_authkit_tokens, {s}.mcp_authkit_leases, \
             {s}.mcp_authkit_flows, {s}.mcp_authkit_active_flows, {s}.mcp_authkit_outcomes, \
             {s}.{MIGRATIONS_TABLE}; DROP SEQUENCE IF EXISTS {s}.mcp_authkit_revisions"
        )))
        .execute(&mut *tx)
        .await
        .map_err(|e| error::db(OP, e))?;
        let left: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1)",
        )
        .bind(&self.inner.schema)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| error::db(OP, e))?;
        if !left && self.inner.schema != DEFAULT_SCHEMA {
            // RESTRICT: anything else in it (a function, a type) keeps it,
            // and the savepoint keeps the drops above.
            sqlx::query("SAVEPOINT keep_schema")
                .execute(&mut *tx)
                .await
                .map_err(|e| error::db(OP, e))?;
            let dropped = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {s} RESTRICT")))
                .execute(&mut *tx)
                .await;
            if dropped.is_err() {
                sqlx::query("ROLLBACK TO SAVEPOINT keep_schema")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| error::db(OP, e))?;
            }
        }
        tx.commit().await.map_err(|e| error::db(OP, e))
    }

    /// Closes this instance's pool (shared by its clones). Other instances
    /// are not affected.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    /// The completion listener of this process for this store's server and
    /// schema: `Some(n)` while it listens, `n` growing with every
    /// (re)connection; `None` while it is down or not started. For tests
    /// and health checks.
    #[doc(hidden)]
    pub fn listener_epoch(&self) -> Option<u64> {
        match &*self.inner.hub.link().borrow() {
            wake::Link::Up(epoch) => Some(*epoch),
            wake::Link::Down(_) => None,
        }
    }

    /// Why the completion listener is down, while it is down after a
    /// failure (`None` while it listens or has not failed). For tests and
    /// health checks.
    #[doc(hidden)]
    pub fn listener_failure(&self) -> Option<Error> {
        match &*self.inner.hub.link().borrow() {
            wake::Link::Down(failure) => failure.clone(),
            wake::Link::Up(_) => None,
        }
    }

    /// How many flow states this process's waiters wait on, for tests.
    #[doc(hidden)]
    pub fn waited_states(&self) -> usize {
        self.inner.hub.waited_states()
    }

    /// Makes this store's completion listener thread panic when it receives
    /// its next notification, to test that it is restarted.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn panic_listener_at_next_notification(&self) {
        self.inner.hub.panic_listener_at_next_notification();
    }

    /// Makes this store instance's next batched re-read of its waiters'
    /// outcomes (when the completion listener is back) fail, to test that
    /// its waiters then read on their own.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn fail_next_reread(&self) {
        self.inner.poller.fail_next_reread();
    }

    pub(crate) fn now(&self) -> mcp_authkit_core::Timestamp {
        self.inner.clock.now()
    }

    pub(crate) fn sql(&self) -> &schema::Statements {
        &self.inner.sql
    }

    pub(crate) fn hub(&self) -> &Arc<wake::Hub> {
        &self.inner.hub
    }

    pub(crate) fn poller(&self) -> &wake::Poller {
        &self.inner.poller
    }
}

enum Source {
    Url(String),
    Pool(PgPool),
}

/// How to open a [`PostgresStore`].
pub struct PostgresStoreOptions {
    source: Source,
    schema: String,
    max_connections: u32,
    connect_timeout: Duration,
    application_name: Option<String>,
    create: bool,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for PostgresStoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: never printed.
        f.debug_struct("PostgresStoreOptions")
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl PostgresStoreOptions {
    /// Default options for the database at `url`.
    pub fn new(url: &str) -> Self {
        Self::with_source(Source::Url(url.to_owned()))
    }

    /// Options for a store on an existing pool (its size and timeouts stay
    /// the application's).
    pub fn from_pool(pool: PgPool) -> Self {
        Self::with_source(Source::Pool(pool))
    }

    fn with_source(source: Source) -> Self {
        PostgresStoreOptions {
            source,
            schema: DEFAULT_SCHEMA.to_owned(),
            max_connections: 10,
            connect_timeout: Duration::from_secs(10),
            application_name: None,
            create: true,
            clock: Arc::new(SystemClock),
        }
    }

    /// The schema of the store's tables (default `public`); created if
    /// missing and the role may. Any name of 1 to 63 bytes without control
    /// characters (those are refused at open); it is always quoted, so
    /// quotes in it are part of the name.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Most connections of the pool (default 10, at least 1; URL only).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long opening, and getting a pooled connection, may take before
    /// failing with a retryable error (default 10 s; URL only).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The `application_name` the connections show in `pg_stat_activity`
    /// (URL only; default: sqlx's).
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// Whether opening creates the tables when the schema has none (default
    /// true). Tools that only look at an existing store (the CLI's
    /// `inspect`, `purge`, `rekey`) pass false, so a mistyped schema or
    /// database fails instead of getting empty tables. A schema of an older
    /// version is upgraded either way.
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// The clock that decides expiry of flows, outcomes and leases (default:
    /// the system clock); replace it only in tests.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Connects and brings the schema up to date.
    pub async fn open(self) -> Result<PostgresStore> {
        schema::check_schema_name(&self.schema)?;
        let pool = match self.source {
            Source::Url(url) => {
                let scheme_ok = ["postgres://", "postgresql://"]
                    .iter()
                    .any(|scheme| url.starts_with(scheme));
                let parsed = PgConnectOptions::from_str(&url).ok().filter(|_| scheme_ok);
                let mut connect = parsed.ok_or_else(|| {
                    // Not the parser's message: it may quote the URL.
                    Error::invalid_input(
                        "postgres url",
                        "it is not a PostgreSQL connection URL; expected \
                         postgres://user[:password]@host[:port]/database[?sslmode=...]",
                    )
                })?;
                if let Some(name) = &self.application_name {
                    connect = connect.application_name(name);
                }
                // One connection first: its error tells an unreachable
                // server from bad credentials or a missing database, where
                // a pool would only report a timeout.
                let first = tokio::time::timeout(self.connect_timeout, connect.connect())
                    .await
                    .map_err(|_| Error::Timeout {
                        operation: "connect to postgres",
                        after: self.connect_timeout,
                    })?
                    .map_err(|e| error::db("connect", e))?;
                let pool = PgPoolOptions::new()
                    .max_connections(self.max_connections)
                    .min_connections(0)
                    .acquire_timeout(self.connect_timeout)
                    .connect_lazy_with(connect);
                let _ = first.close().await;
                pool
            }
            Source::Pool(pool) => pool,
        };
        schema::migrate(&pool, &self.schema, self.create).await?;
        let channel = schema::channel_for(&self.schema);
        let hub = wake::Hub::shared_for(&pool.connect_options(), &self.schema, &channel);
        let attached = hub.attach(&pool);
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                sql: schema::Statements::new(&self.schema),
                schema: self.schema,
                pool,
                clock: self.clock,
                hub,
                _attached: attached,
                poller: wake::Poller::default(),
            }),
        })
    }
}
