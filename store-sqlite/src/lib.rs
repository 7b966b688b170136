//! # mcp-authkit-store-sqlite
//!
//! Tokens and pending authorization flows in one SQLite file, shared by every
//! process on the machine that opens it: the embedded default for a
//! single-server deployment. [`SqliteStore`] implements both
//! [`TokenStore`] and [`PendingStore`] with every guarantee of
//! `mcp-authkit-core`, across processes, and passes the whole
//! `mcp-authkit-conformance` suite including its cross-process scenario.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use mcp_authkit_core::{
//!     FlowOutcome, InsertOutcome, PendingFlow, PendingStore, Timestamp, TokenKey, TokenRecord,
//!     TokenStore,
//! };
//! use mcp_authkit_store_sqlite::SqliteStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("authkit.db");
//! // A path or a `sqlite:` URL; the file is created if needed.
//! let store = SqliteStore::open(&path).await?;
//! // One store serves both roles, as the lifecycle takes them.
//! let tokens: Arc<dyn TokenStore> = Arc::new(store.clone());
//! let pending: Arc<dyn PendingStore> = Arc::new(store);
//!
//! let key = TokenKey::new("github", "user-1");
//! let revision = tokens.put(&key, &TokenRecord::new("gho_x", Timestamp::now())).await?;
//! assert_eq!(tokens.get(&key).await?.unwrap().revision, revision);
//!
//! // A flow, completed through another instance (as another process would).
//! let flow = PendingFlow::new(
//!     key.clone(),
//!     "http://127.0.0.1:8005/callback",
//!     vec!["repo".into()],
//!     Timestamp::now(),
//!     Duration::from_secs(600),
//! );
//! assert_eq!(pending.insert(&flow).await?, InsertOutcome::Inserted);
//! let other = SqliteStore::open(&path).await?;
//! let taken = other.take(&flow.state).await?.expect("taken once");
//! other
//!     .complete(&key, &taken.state, &FlowOutcome::Authorized { revision }, Duration::from_secs(60))
//!     .await?;
//! let outcome = pending.wait(&flow.state, Duration::from_secs(5)).await?;
//! assert_eq!(outcome, Some(FlowOutcome::Authorized { revision }));
//! # Ok(())
//! # }
//! ```
//!
//! # Settings, and why
//!
//! - **WAL journal** (`journal_mode=WAL`): readers never block the writer and
//!   the writer never blocks readers, so a `get` stays fast while another
//!   process writes. WAL is a property of the file and stays on (also for
//!   an application's own database that the store shares). It needs the
//!   `-wal` and `-shm` files beside the database and a local file system:
//!   processes coordinate through shared memory mapped from `-shm`, which
//!   NFS and SMB do not provide.
//! - **`synchronous=FULL`**: every commit is fsynced before it returns. A
//!   refreshed token often comes with a rotated refresh token and the old one
//!   is dead at the provider; with `NORMAL` a power cut could roll the file
//!   back to the dead token and force the user to authorize again. One fsync
//!   per write is the price; token writes are rare next to reads, which never
//!   fsync. (A killed process loses nothing under either setting.)
//! - **Busy timeout** (10 s by default, [`SqliteStoreOptions::busy_timeout`]):
//!   how long a write waits for another process's write to finish before it
//!   fails with a retryable error. Writes from store instances of the same
//!   process queue on an in-process lock first, so they never spin on
//!   SQLite's busy handler against each other.
//!
//! # Durable or an error
//!
//! No write is reported done before its COMMIT succeeded: a full disk, a
//! read-only file or an I/O error makes the operation fail, with an error
//! naming the cause, and the transaction is rolled back, so after space is
//! freed the store works again with every earlier write intact and nothing
//! doubled. Writes of several statements run in an explicit
//! `BEGIN IMMEDIATE` transaction whose `COMMIT` is checked. Single-statement
//! writes with `RETURNING` (put, compare-and-swap, take, leases) read every
//! row the statement returns: sqlx stops stepping a statement after the row
//! `fetch_one`/`fetch_optional` asked for and resets it, and in autocommit
//! mode SQLite commits at that reset, whose error sqlx drops, so a commit
//! refused by a full disk would have been reported as done. Stepping the
//! statement to its end moves the commit into the last step, whose error is
//! returned; it costs nothing, unlike wrapping each statement in a
//! transaction. These errors are not retryable ([`Error::is_retryable`]):
//! someone has to free space or fix permissions first.
//!
//! # Files and permissions
//!
//! A new database is created readable and writable by its owner only (mode
//! 0600 on Unix), and SQLite gives its `-wal` and `-shm` files the same
//! mode: tokens and PKCE verifiers are secrets, and SQLite's own default,
//! 0644 under the usual umask, would let every local account read them. An
//! existing file keeps the mode it has (a warning is logged when other
//! accounts can read it). Keep the directory private too if file names
//! matter to you.
//!
//! # Schema and migrations
//!
//! Tables are named `mcp_authkit_*`, so the schema can share a file with an
//! application's own tables. It is created and upgraded by embedded sqlx
//! migrations recorded in their own table, [`MIGRATIONS_TABLE`], never in the
//! application's `_sqlx_migrations`, so neither migrator sees the other's
//! versions. A database whose schema is newer than this release
//! ([`SCHEMA_VERSION`]) is refused with
//! [`Error::UnsupportedFormat`]
//! before anything is written. Records are stored as the versioned JSON of
//! [`mcp_authkit_core::codec`]; revisions and expiry times live in columns
//! beside them so SQL can act on them.
//!
//! # How the guarantees hold across processes
//!
//! - Revisions come from one counter for the whole database, bumped by the
//!   same statement that writes the token, so they grow across deletes.
//! - [`PendingStore::take`] is a single `DELETE ... RETURNING`: of any number
//!   of racing callers in any process, one gets the row.
//! - One active flow per key is the primary key of `mcp_authkit_active_flows`:
//!   an insert for a busy key conflicts instead of racing a read.
//! - A refresh lease is a row with an expiry and a random token; release
//!   deletes it only if the token matches.
//!
//! # Reading a token
//!
//! [`TokenStore::get`] is on the path of every gated tool call, so it does
//! not go through sqlx: sqlx runs each connection on a worker thread of its
//! own, and handing a query to it and the rows back costs far more than
//! SQLite's own work: a primary-key read through sqlx took 32 µs p50 on a
//! busy 2-core machine, 3.7 µs read directly, most of the difference being
//! the two threads waking each other. `get` runs its prepared `SELECT` on a few
//! read-only connections (at most [`SqliteStoreOptions::max_connections`])
//! through SQLite's C API, on the calling thread: the library sqlx links,
//! so the same SQLite in the same process.
//!
//! - **No cache, no staleness.** Every read is its own read transaction and
//!   sees every commit made before it, by any process, as a read through
//!   sqlx does. Nothing is kept between reads but the prepared statement.
//! - **It never blocks the thread on a lock.** The connections' busy timeout
//!   is zero; if the file is busy (rare in WAL mode, where readers do not
//!   wait for writers), a connection cannot be opened, all are in use on
//!   other threads, or SQLite reports any error, the read goes through the
//!   pool instead, which waits and reports errors as every other operation
//!   does. A read of pages not in the OS page cache still reads the disk on
//!   the calling thread, as any synchronous file read would.
//! - After [`SqliteStore::close`] reads fail, as every other operation does.
//!
//! # Waiting, and its latency
//!
//! [`PendingStore::wait`] costs no connection per waiter. A completion by
//! any [`SqliteStore`] of the same process on the same file (found by its
//! canonical path) wakes waiters at once, with no polling. A completion
//! written by another process is found by one poller per file and process,
//! which reads new rows of the outcome table by sequence number: every
//! 5 ms at first, backing off to every 25 ms while nothing arrives
//! ([`SqliteStoreOptions::poll_interval`]), and only while someone waits.
//! The cross-process wake latency is therefore at most the current poll
//! interval plus one indexed read. `cargo bench -p mcp-authkit-bench --bench
//! sqlite` measures it; on a loaded 2-core machine, from `complete()`
//! returning in one process to `wait()` returning in another: p50 about
//! 12 ms, p99 about 26 ms. Counted from the call to `complete()`, its
//! commit (an fsync) adds to that, usually under a millisecond but tens of
//! milliseconds when the disk is busy. In the same process a waiter wakes
//! right after the commit (p50 under 1 ms from the call).
//!
//! # Expiry
//!
//! Expired flows, outcomes and leases are ignored by every operation at
//! once, and removed by [`PendingStore::purge_expired`] or by a background
//! task from [`SqliteStore::spawn_purge_task`]. A purge deletes in short
//! transactions of at most 256 rows per table, through the expiry indexes,
//! and pauses at least 10 ms between them, so writers in every process get
//! the lock within a few milliseconds however large the backlog: a purge of
//! 100k expired flows takes a few seconds and never stalls the writes of
//! the application.

#![warn(missing_docs)]

mod error;
mod location;
mod open;
mod pending;
mod purge;
mod reader;
mod tokens;
mod wake;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::{Clock, Result, SystemClock};
use sqlx::{Connection, SqlitePool};

pub use open::database_files;
pub use purge::PurgeTask;
/// The sqlx version this crate is built on, for [`SqliteStore::pool`].
pub use sqlx;

#[cfg(doc)]
use mcp_authkit_core::{Error, PendingStore, TokenStore};

/// The table that records which of this crate's migrations a database has.
pub const MIGRATIONS_TABLE: &str = "mcp_authkit_migrations";

/// The newest schema version this release creates and reads: the version of
/// its last migration.
pub const SCHEMA_VERSION: i64 = 1;

/// Token and pending-flow storage in a SQLite file; clones share one pool.
///
/// Every instance on the same file, in this process or another, sees the
/// same data. See the [crate docs](crate) for the settings it applies.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    path: PathBuf,
    clock: Arc<dyn Clock>,
    hub: Arc<wake::Hub>,
    /// Token reads on the calling thread; `None` reads through the pool.
    reader: Option<reader::Reader>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it if needed) the database at `location`, a file path
    /// or a `sqlite:` URL such as `sqlite:///var/lib/app/authkit.db`, with
    /// default options, and brings its schema up to date.
    ///
    /// Fails without changing anything when the file cannot be created, is
    /// not a SQLite database, or has a schema newer than this release.
    pub async fn open(location: impl AsRef<Path>) -> Result<SqliteStore> {
        SqliteStoreOptions::new(location).open().await
    }

    /// Options for opening the database at `location` (a path or a `sqlite:`
    /// URL).
    pub fn options(location: impl AsRef<Path>) -> SqliteStoreOptions {
        SqliteStoreOptions::new(location)
    }

    /// The database file, as a canonical path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The connection pool: for inspection, or to run an application's own
    /// queries on the same file. Tables named `mcp_authkit_*` belong to this
    /// crate; write to them only through the store.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// Closes this instance's connections and waits until they are closed.
    /// Operations afterwards fail. Other instances on the file are not
    /// affected.
    pub async fn close(&self) {
        if let Some(reader) = &self.inner.reader {
            reader.close();
        }
        self.inner.pool.close().await;
    }

    pub(crate) fn now(&self) -> mcp_authkit_core::Timestamp {
        self.inner.clock.now()
    }

    pub(crate) fn hub(&self) -> &Arc<wake::Hub> {
        &self.inner.hub
    }

    /// Runs `work` in a `BEGIN IMMEDIATE` transaction and commits it; the
    /// caller holds this process's write turn. Reports done only once the
    /// COMMIT succeeded.
    pub(crate) async fn write_transaction<T>(
        &self,
        operation: &'static str,
        work: impl AsyncFnOnce(&mut sqlx::SqliteConnection) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self
            .pool()
            .acquire()
            .await
            .map_err(|e| error::db(operation, e))?;
        let mut began = false;
        let result = async {
            let mut tx = conn
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(|e| error::db(operation, e))?;
            began = true;
            let value = work(&mut tx).await?;
            tx.commit().await.map_err(|e| error::db(operation, e))?;
            Ok(value)
        }
        .await;
        if result.is_err() && began {
            // SQLite rolls a transaction back by itself on some errors (a
            // full disk, an I/O error); sqlx's ROLLBACK then fails and sqlx
            // goes on counting the connection as inside a transaction,
            // refusing every later BEGIN on it. So the connection is closed
            // rather than returned to the pool: a new one is cheap, a
            // poisoned one would fail every write it is given. (A BEGIN
            // that failed, say on a busy database, leaves it sound.)
            conn.close_on_drop();
        }
        result
    }

    pub(crate) fn reader(&self) -> Option<&reader::Reader> {
        self.inner.reader.as_ref()
    }
}

/// How to open a [`SqliteStore`]; from [`SqliteStore::options`].
#[derive(Clone)]
pub struct SqliteStoreOptions {
    location: PathBuf,
    max_connections: u32,
    busy_timeout: Duration,
    poll_min: Duration,
    poll_max: Duration,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for SqliteStoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStoreOptions")
            .field("location", &self.location)
            .field("max_connections", &self.max_connections)
            .field("busy_timeout", &self.busy_timeout)
            .field("poll_interval", &(self.poll_min, self.poll_max))
            .field("clock", &self.clock)
            .finish()
    }
}

impl SqliteStoreOptions {
    /// Default options for `location` (a path or a `sqlite:` URL).
    pub fn new(location: impl AsRef<Path>) -> Self {
        SqliteStoreOptions {
            location: location.as_ref().to_owned(),
            max_connections: 4,
            busy_timeout: Duration::from_secs(10),
            poll_min: Duration::from_millis(5),
            poll_max: Duration::from_millis(25),
            clock: Arc::new(SystemClock),
        }
    }

    /// Most connections this instance opens (default 4, at least 1). Reads
    /// run in parallel on them; writes take turns, as SQLite has one writer
    /// at a time.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long a write waits for another process's write lock before it
    /// fails with a retryable error (default 10 s; at most `i32::MAX`
    /// milliseconds, about 24 days, which SQLite takes as its limit).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout.min(Duration::from_millis(i32::MAX as u64));
        self
    }

    /// How often waiters poll for completions written by other processes:
    /// from `min` after waiting starts, doubling while nothing arrives, up to
    /// `max` (defaults 5 ms and 25 ms). `max` bounds the cross-process wake
    /// latency. Completions in this process wake waiters at once whatever
    /// these are. The first store opened on a file in a process sets them
    /// for that file.
    pub fn poll_interval(mut self, min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        self.poll_min = min;
        self.poll_max = max.max(min);
        self
    }

    /// The clock that decides expiry of flows, outcomes and leases (default:
    /// the system clock). Every process sharing the file must agree on time,
    /// so replace it only in tests.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Opens the store: creates the file if needed, applies the settings and
    /// brings the schema up to date.
    pub async fn open(self) -> Result<SqliteStore> {
        open::open(self).await
    }
}
