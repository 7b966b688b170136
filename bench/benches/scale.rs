//! Costs as the stores grow: memory, SQLite and Redis at 1k/10k/100k
//! tokens, 1k/10k/100k flows and 10/1k/10k waiters, and the longest stall
//! of a writer while 100k expired flows are purged. Each growing figure is
//! printed beside the same figure at the smallest size, measured in the same
//! run, so a cost that is not flat shows as a ratio well above 1.
//!
//! `cargo bench -p mcp-authkit-bench --bench scale` (or `bash
//! scripts/bench.sh --scale`). The Redis rows need a Redis at REDIS_URL
//! (default redis://127.0.0.1:6379); the run writes under a unique prefix
//! and removes it afterwards. The binary re-executes itself as the writer
//! process of the SQLite stall measurement.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use mcp_authkit_bench::{RedisCleanup, Stats, process_cpu, redis_url};
use mcp_authkit_core::{
    Clock, FlowState, ManualClock, PendingFlow, PendingStore, Timestamp, TokenKey, TokenRecord,
    TokenStore, codec,
};
use mcp_authkit_store_memory::MemoryStore;
use mcp_authkit_store_redis::RedisStore;
use mcp_authkit_store_sqlite::SqliteStore;
use mcp_authkit_store_sqlite::sqlx;

/// Counts the bytes this process has allocated and not yet freed, so the
/// memory of a store (or of its waiters) is the difference between two
/// readings.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

const ROLE: &str = "MCP_AUTHKIT_BENCH_SCALE_ROLE";
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const WAITERS: [usize; 3] = [10, 1_000, 10_000];
const PURGE_BACKLOG: usize = 100_000;

fn record() -> TokenRecord {
    mcp_authkit_bench::github_record()
}

fn token_key(i: usize) -> TokenKey {
    TokenKey::new("github", format!("user{i}"))
}

fn flow_at(label: &str, i: usize, now: Timestamp, ttl: Duration) -> PendingFlow {
    PendingFlow::new(
        TokenKey::new("github", format!("{label}{i}")),
        "http://127.0.0.1:8005/callback",
        vec!["repo".into()],
        now,
        ttl,
    )
}

fn flow(label: &str, i: usize) -> PendingFlow {
    flow_at(label, i, Timestamp::now(), Duration::from_secs(600))
}

/// Drives a future that never waits on I/O (the memory store's calls, which
/// at most yield) outside any runtime, so no sweeper task competes with it.
fn run_here<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            return output;
        }
    }
}

fn format_duration(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.1} µs")
    } else if micros < 1e6 {
        format!("{:.2} ms", micros / 1000.0)
    } else {
        format!("{:.2} s", micros / 1e6)
    }
}

/// A figure of a table cell.
#[derive(Clone, Copy)]
enum Figure {
    Time(Duration),
    Bytes(f64),
    Count(f64),
    Percent(f64),
}

impl Figure {
    fn value(self) -> f64 {
        match self {
            Figure::Time(d) => d.as_secs_f64(),
            Figure::Bytes(v) | Figure::Count(v) | Figure::Percent(v) => v,
        }
    }

    fn render(self) -> String {
        match self {
            Figure::Time(d) => format_duration(d),
            Figure::Bytes(v) => format!("{v:.0} B"),
            Figure::Count(v) => format!("{v:.0}"),
            Figure::Percent(v) => format!("{v:.2}%"),
        }
    }
}

/// Rows of one figure at each size, with the growth from the first size to
/// the last as a ratio.
struct GrowthTable {
    header: String,
    rows: Vec<String>,
}

impl GrowthTable {
    fn new(what: &str, sizes: &[usize]) -> Self {
        let sizes: Vec<String> = sizes.iter().map(|n| size_label(*n)).collect();
        let last = sizes.last().cloned().unwrap_or_default();
        let first = sizes.first().cloned().unwrap_or_default();
        GrowthTable {
            header: format!(
                "| backend | {what} | {} | ratio {last} vs {first} |\n|---|---|{}---:|",
                sizes.join(" | "),
                "---:|".repeat(sizes.len())
            ),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, backend: &str, measure: &str, figures: &[Figure]) {
        let cells: Vec<String> = figures.iter().map(|f| f.render()).collect();
        let ratio = match (figures.first(), figures.last()) {
            (Some(first), Some(last)) if first.value() > 0.0 => {
                format!("{:.2}", last.value() / first.value())
            }
            _ => "-".into(),
        };
        self.rows.push(format!(
            "| {backend} | {measure} | {} | {ratio} |",
            cells.join(" | ")
        ));
    }

    fn print(&self) {
        println!("{}", self.header);
        for row in &self.rows {
            println!("{row}");
        }
        println!();
    }
}

fn size_label(n: usize) -> String {
    if n >= 1000 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// p50 and p99 of `n` sequential runs of `op`.
async fn percentiles(n: usize, mut op: impl AsyncFnMut(usize)) -> Stats {
    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        op(i).await;
        latencies.push(t.elapsed());
    }
    Stats::from_latencies("", latencies, started.elapsed())
}

// ---------------------------------------------------------------- tokens

/// Fills a token store up to each size and reads and writes random keys.
async fn tokens(
    table: &mut GrowthTable,
    name: &str,
    store: &dyn TokenStore,
    fill: impl AsyncFn(std::ops::Range<usize>),
    mut bytes_per_token: impl AsyncFnMut(usize) -> f64,
    puts: usize,
) {
    let mut get_p50 = Vec::new();
    let mut get_p99 = Vec::new();
    let mut put_p50 = Vec::new();
    let mut put_p99 = Vec::new();
    let mut bytes = Vec::new();
    let mut filled = 0;
    let record = record();
    for n in SIZES {
        fill(filled..n).await;
        filled = n;
        // Spread over the whole key space, so no size is measured on a
        // warm corner of it.
        let pick = |i: usize| token_key((i * 7919) % n);
        let get = percentiles(2_000, async |i| {
            std::hint::black_box(store.get(&pick(i)).await.unwrap().unwrap());
        })
        .await;
        let put = percentiles(puts, async |i| {
            store.put(&pick(i + 1), &record).await.unwrap();
        })
        .await;
        get_p50.push(Figure::Time(get.p50));
        get_p99.push(Figure::Time(get.p99));
        put_p50.push(Figure::Time(put.p50));
        put_p99.push(Figure::Time(put.p99));
        bytes.push(Figure::Bytes(bytes_per_token(n).await));
    }
    table.row(name, "get p50", &get_p50);
    table.row(name, "get p99", &get_p99);
    table.row(name, "put p50", &put_p50);
    table.row(name, "put p99", &put_p99);
    table.row(name, "bytes per token", &bytes);
}

async fn memory_tokens(table: &mut GrowthTable) {
    let before = live_bytes();
    let store = MemoryStore::new();
    let record = record();
    tokens(
        table,
        "memory",
        &store,
        async |range| {
            for i in range {
                store.put(&token_key(i), &record).await.unwrap();
            }
        },
        async |n| (live_bytes() - before) as f64 / n as f64,
        2_000,
    )
    .await;
}

async fn sqlite_tokens(table: &mut GrowthTable, dir: &Path) {
    let path = dir.join("tokens.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let bytes = codec::encode_token(&record());
    let empty = sqlite_file_bytes(&store).await;
    tokens(
        table,
        "sqlite",
        &store,
        async |range| {
            // One transaction per fill, through the same statement put
            // uses, so revisions and the counter are as put leaves them.
            let mut tx = store.pool().begin().await.unwrap();
            for i in range {
                let key = token_key(i);
                sqlx::query(
                    "INSERT INTO mcp_authkit_tokens (provider, subject, revision, expires_at, \
                     record) VALUES (?1, ?2, (SELECT last_revision + 1 FROM \
                     mcp_authkit_revision_counter WHERE id = 1), NULL, ?3)",
                )
                .bind(key.provider())
                .bind(key.subject())
                .bind(&bytes)
                .execute(&mut *tx)
                .await
                .unwrap();
            }
            tx.commit().await.unwrap();
        },
        async |n| (sqlite_file_bytes(&store).await - empty) as f64 / n as f64,
        // Each put is an fsync; fewer keep the run short.
        300,
    )
    .await;
}

/// The database's size in pages, the WAL checkpointed into it.
async fn sqlite_file_bytes(store: &SqliteStore) -> i64 {
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(store.pool())
        .await
        .unwrap();
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(store.pool())
        .await
        .unwrap();
    pages * size
}

async fn redis_store(prefix: &str) -> Option<RedisStore> {
    match RedisStore::builder(redis_url())
        .prefix(prefix)
        .connect()
        .await
    {
        Ok(store) => Some(store),
        Err(error) => {
            eprintln!("no Redis at REDIS_URL ({error}); the Redis rows are left out");
            None
        }
    }
}

async fn redis_tokens(table: &mut GrowthTable, store: &RedisStore, prefix: &str) {
    let record = record();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    tokens(
        table,
        "redis",
        store,
        async |range| {
            let keys: Vec<usize> = range.collect();
            let store = Arc::new(store.clone());
            let record = Arc::new(record.clone());
            let mut tasks = tokio::task::JoinSet::new();
            for chunk in keys.chunks(keys.len().div_ceil(32).max(1)) {
                let chunk = chunk.to_vec();
                let store = Arc::clone(&store);
                let record = Arc::clone(&record);
                tasks.spawn(async move {
                    for i in chunk {
                        store.put(&token_key(i), &record).await.unwrap();
                    }
                });
            }
            tasks.join_all().await;
        },
        async |_| {
            // The server's own account of a sample of token keys.
            let mut keys: Vec<String> = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}:tok:*"))
                    .arg("COUNT")
                    .arg(5000)
                    .query_async(&mut raw)
                    .await
                    .unwrap();
                keys.extend(found);
                cursor = next;
                if cursor == 0 || keys.len() >= 200 {
                    break;
                }
            }
            let mut total = 0u64;
            let mut counted = 0u64;
            for key in keys.iter().take(200) {
                let used: Option<u64> = redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(key)
                    .query_async(&mut raw)
                    .await
                    .unwrap();
                if let Some(used) = used {
                    total += used;
                    counted += 1;
                }
            }
            total as f64 / counted.max(1) as f64
        },
        2_000,
    )
    .await;
}

// ----------------------------------------------------------------- flows

/// insert + take of new flows beside N live ones, and a purge with nothing
/// expired, at each size.
async fn flows(
    table: &mut GrowthTable,
    name: &str,
    store: &dyn PendingStore,
    fill: impl AsyncFn(std::ops::Range<usize>),
    rounds: usize,
) {
    let mut take_p50 = Vec::new();
    let mut take_p99 = Vec::new();
    let mut purge_p50 = Vec::new();
    let mut filled = 0;
    for n in SIZES {
        fill(filled..n).await;
        filled = n;
        let fresh: Vec<PendingFlow> = (0..rounds).map(|i| flow(&format!("new{n}-"), i)).collect();
        let stats = percentiles(rounds, async |i| {
            store.insert(&fresh[i]).await.unwrap();
            std::hint::black_box(store.take(&fresh[i].state).await.unwrap().unwrap());
        })
        .await;
        take_p50.push(Figure::Time(stats.p50));
        take_p99.push(Figure::Time(stats.p99));
        let purge = percentiles(20, async |_| {
            std::hint::black_box(store.purge_expired().await.unwrap());
        })
        .await;
        purge_p50.push(Figure::Time(purge.p50));
    }
    table.row(name, "insert + take p50", &take_p50);
    table.row(name, "insert + take p99", &take_p99);
    table.row(name, "purge_expired, nothing expired, p50", &purge_p50);
}

async fn memory_flows(table: &mut GrowthTable) {
    let store = MemoryStore::new();
    flows(
        table,
        "memory",
        &store,
        async |range| {
            for i in range {
                store.insert(&flow("live", i)).await.unwrap();
            }
        },
        2_000,
    )
    .await;
}

/// `range` flows written in one transaction, expiring at `now + ttl`
/// (`ttl` zero: expired already), with their active marks.
async fn sqlite_bulk_flows(
    store: &SqliteStore,
    label: &str,
    range: std::ops::Range<usize>,
    ttl: Duration,
) {
    let now = Timestamp::now();
    let mut tx = store.pool().begin().await.unwrap();
    for i in range {
        let flow = flow_at(label, i, now, ttl);
        sqlx::query(
            "INSERT INTO mcp_authkit_flows (state, provider, subject, expires_at, flow)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(flow.state.as_str())
        .bind(flow.key.provider())
        .bind(flow.key.subject())
        .bind(flow.expires_at.unix_millis())
        .bind(codec::encode_flow(&flow))
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO mcp_authkit_active_flows (provider, subject, state, expires_at)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(flow.key.provider())
        .bind(flow.key.subject())
        .bind(flow.state.as_str())
        .bind(flow.expires_at.unix_millis())
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn sqlite_flows(table: &mut GrowthTable, dir: &Path) {
    let store = SqliteStore::open(dir.join("flows.db")).await.unwrap();
    flows(
        table,
        "sqlite",
        &store,
        async |range| sqlite_bulk_flows(&store, "live", range, Duration::from_secs(600)).await,
        300,
    )
    .await;
}

async fn redis_flows(table: &mut GrowthTable, store: &RedisStore) {
    flows(
        table,
        "redis",
        store,
        async |range| {
            let keys: Vec<usize> = range.collect();
            let mut tasks = tokio::task::JoinSet::new();
            for chunk in keys.chunks(keys.len().div_ceil(32).max(1)) {
                let chunk = chunk.to_vec();
                let store = store.clone();
                tasks.spawn(async move {
                    for i in chunk {
                        store.insert(&flow("live", i)).await.unwrap();
                    }
                });
            }
            tasks.join_all().await;
        },
        2_000,
    )
    .await;
}

/// purge_expired of N expired flows (the memory store beside the walk over
/// every entry its purge used to do), at each size.
async fn purges(table: &mut GrowthTable, dir: &Path) {
    let mut memory = Vec::new();
    let mut walk = Vec::new();
    let mut sqlite = Vec::new();
    let mut one_tx = Vec::new();
    for n in SIZES {
        // On a thread of its own, outside the runtime: no sweeper task.
        let (took, baseline) = std::thread::spawn(move || memory_purge_of_expired(n))
            .join()
            .unwrap();
        memory.push(Figure::Time(took));
        walk.push(Figure::Time(baseline));
        let path = dir.join(format!("purge-{n}.db"));
        let store = SqliteStore::open(&path).await.unwrap();
        sqlite_bulk_flows(&store, "gone", 0..n, Duration::ZERO).await;
        let started = Instant::now();
        let report = store.purge_expired().await.unwrap();
        sqlite.push(Figure::Time(started.elapsed()));
        assert_eq!(report.flows, n as u64);
        sqlite_bulk_flows(&store, "gone-again", 0..n, Duration::ZERO).await;
        let started = Instant::now();
        purge_in_one_transaction(&store).await;
        one_tx.push(Figure::Time(started.elapsed()));
        store.close().await;
    }
    table.row("memory", "purge_expired of N expired flows", &memory);
    table.row(
        "raw map",
        "baseline: retain over every entry (the old purge)",
        &walk,
    );
    table.row(
        "sqlite",
        "purge_expired of N expired flows (batches of 256, paced)",
        &sqlite,
    );
    table.row(
        "sqlite",
        "baseline: the same deletes in one transaction (the old purge)",
        &one_tx,
    );
}

/// The memory store's purge of `n` expired flows, and the old purge's walk
/// over a map of `n` flows, outside any runtime (no sweeper).
fn memory_purge_of_expired(n: usize) -> (Duration, Duration) {
    let clock = Arc::new(ManualClock::starting_now());
    let store = MemoryStore::with_clock(clock.clone());
    let ttl = Duration::from_secs(60);
    let mut raw = std::collections::HashMap::new();
    for i in 0..n {
        let flow = flow_at("gone", i, clock.now(), ttl);
        raw.insert(flow.state.clone(), flow.clone());
        run_here(store.insert(&flow)).unwrap();
    }
    clock.advance(ttl);
    let now = clock.now();
    let started = Instant::now();
    let report = run_here(store.purge_expired()).unwrap();
    let took = started.elapsed();
    assert_eq!(report.flows, n as u64);
    let raw = Mutex::new(raw);
    let started = Instant::now();
    raw.lock()
        .unwrap()
        .retain(|_, flow| !flow.is_expired_at(now));
    (took, started.elapsed())
}

/// What the SQLite store's purge did before: every delete in one
/// `BEGIN IMMEDIATE` transaction.
async fn purge_in_one_transaction(store: &SqliteStore) {
    let now = Timestamp::now().unix_millis();
    let mut conn = store.pool().acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .unwrap();
    for sql in [
        "DELETE FROM mcp_authkit_flows WHERE expires_at <= ?1",
        "DELETE FROM mcp_authkit_active_flows WHERE expires_at <= ?1",
        "DELETE FROM mcp_authkit_outcomes WHERE expires_at <= ?1",
        "DELETE FROM mcp_authkit_leases WHERE expires_at <= ?1",
    ] {
        sqlx::query(sql)
            .bind(now)
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
}

// --------------------------------------------------------------- waiters

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Open file descriptors of this process: sockets (connections) and files.
fn descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

struct WaiterCosts {
    bytes: Vec<Figure>,
    threads: Vec<Figure>,
    descriptors: Vec<Figure>,
    idle_cpu: Vec<Figure>,
}

/// W waiters on W pending flows of `store`: memory, threads, descriptors and
/// CPU while they all wait and nothing completes.
async fn waiters(
    store: Arc<dyn PendingStore>,
    insert: impl AsyncFn(&[PendingFlow]),
    costs: &mut WaiterCosts,
) {
    const IDLE: Duration = Duration::from_secs(2);
    for w in WAITERS {
        let pending: Vec<PendingFlow> = (0..w).map(|i| flow(&format!("wait{w}-"), i)).collect();
        insert(&pending).await;
        // Settle: concurrent reads fill the store's connection pool, and
        // one waiter starts what a store starts for its first waiter, so
        // neither is counted per waiter.
        let reads: Vec<_> = pending
            .iter()
            .take(16)
            .map(|flow| {
                let store = Arc::clone(&store);
                let state = flow.state.clone();
                tokio::spawn(async move { store.outcome(&state).await.unwrap() })
            })
            .collect();
        for read in reads {
            read.await.unwrap();
        }
        let first = {
            let store = Arc::clone(&store);
            let state = pending[0].state.clone();
            tokio::spawn(async move { store.wait(&state, Duration::from_secs(600)).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (bytes, threads_before, fds_before) = (live_bytes(), threads(), descriptors());
        let mut tasks = Vec::with_capacity(w);
        for flow in &pending[1..] {
            let store = Arc::clone(&store);
            let state = flow.state.clone();
            tasks.push(tokio::spawn(async move {
                store.wait(&state, Duration::from_secs(600)).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let counted = (w - 1).max(1) as f64;
        let bytes = live_bytes().saturating_sub(bytes) as f64 / counted;
        let threads = threads() as f64 - threads_before as f64;
        let fds = descriptors() as f64 - fds_before as f64;
        let cpu = process_cpu();
        tokio::time::sleep(IDLE).await;
        let idle = (process_cpu() - cpu).as_secs_f64() / IDLE.as_secs_f64() * 100.0;
        for task in tasks.iter().chain([&first]) {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        let _ = first.await;
        costs.bytes.push(Figure::Bytes(bytes));
        costs.threads.push(Figure::Count(threads));
        costs.descriptors.push(Figure::Count(fds));
        costs.idle_cpu.push(Figure::Percent(idle));
    }
}

async fn waiter_rows(table: &mut GrowthTable, name: &str, store: Arc<dyn PendingStore>) {
    let mut costs = WaiterCosts {
        bytes: Vec::new(),
        threads: Vec::new(),
        descriptors: Vec::new(),
        idle_cpu: Vec::new(),
    };
    let inserter = Arc::clone(&store);
    waiters(
        store,
        async |flows| {
            let mut tasks = tokio::task::JoinSet::new();
            for chunk in flows.chunks(flows.len().div_ceil(16).max(1)) {
                let chunk = chunk.to_vec();
                let store = Arc::clone(&inserter);
                tasks.spawn(async move {
                    for flow in chunk {
                        store.insert(&flow).await.unwrap();
                    }
                });
            }
            tasks.join_all().await;
        },
        &mut costs,
    )
    .await;
    table.row(name, "memory per waiter", &costs.bytes);
    table.row(name, "threads added by the waiters", &costs.threads);
    table.row(
        name,
        "descriptors (connections, files) added",
        &costs.descriptors,
    );
    table.row(name, "CPU while all wait (of one core)", &costs.idle_cpu);
}

// ----------------------------------------------------------------- stall

/// Trials of each stall measurement; the table shows their median, so one
/// preemption of a thread by a busy machine does not make the figure.
const STALL_TRIALS: usize = 3;

/// The calls of a prober (in this process) or writer (in another process)
/// while 100k expired flows are purged, beside the same during the old
/// purge, trial after trial.
async fn stalls(dir: &Path) -> Vec<String> {
    let mut rows = Vec::new();
    let mut memory: [Vec<Calls>; 2] = Default::default();
    let mut holds: [Vec<Calls>; 2] = Default::default();
    let mut same_process: [Vec<Calls>; 2] = Default::default();
    let mut other_process: [Vec<Calls>; 2] = Default::default();
    let mut floor: Vec<Calls> = Vec::new();
    let path = dir.join("stall.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let writer = SqliteStore::open(&path).await.unwrap();
    for _ in 0..STALL_TRIALS {
        // The noise floor: the same puts with no purge running.
        floor.push(
            calls_during(
                &async || tokio::time::sleep(Duration::from_secs(2)).await,
                put_prober(&writer),
            )
            .await,
        );
        for (which, old) in [(0, false), (1, true)] {
            memory[which].push(memory_stall(old).await);
            let hold = std::thread::spawn(move || memory_longest_hold(old))
                .join()
                .unwrap();
            holds[which].push(hold);
            // One writer at a time: two would mostly wait for each other.
            sqlite_bulk_flows(&store, "stall", 0..PURGE_BACKLOG, Duration::ZERO).await;
            same_process[which].push(sqlite_stall_in_process(&store, &writer, old).await);
            sqlite_bulk_flows(&store, "stall", 0..PURGE_BACKLOG, Duration::ZERO).await;
            other_process[which].push(sqlite_stall_other_process(&path, &store, old).await);
        }
    }
    let old = "the same during the old one-transaction purge";
    rows.extend(stall_rows(
        "sqlite",
        "put by another instance of this process with no purge running (noise floor)",
        &[floor.clone(), floor],
        "itself",
    ));
    rows.extend(stall_rows(
        "memory",
        "one hold of the lock by purge_expired",
        &holds,
        "one retain over a raw map (the old purge)",
    ));
    rows.extend(stall_rows(
        "memory",
        "get_flow during purge_expired",
        &memory,
        "lock of a raw map during one retain over it (the old purge)",
    ));
    rows.extend(stall_rows(
        "sqlite",
        "put by another instance of this process during purge_expired (its fsync included)",
        &same_process,
        old,
    ));
    rows.extend(stall_rows(
        "sqlite",
        "another process's wait for the write lock during purge_expired",
        &other_process,
        old,
    ));
    rows
}

/// How long purge_expired of 100k expired flows holds the memory store's
/// lock at a time: it yields between batches, so outside a runtime each poll
/// of it is one hold. With `old`, the one hold of a retain over a raw map.
fn memory_longest_hold(old: bool) -> Calls {
    let clock = Arc::new(ManualClock::starting_now());
    let ttl = Duration::from_secs(60);
    let flows = (0..PURGE_BACKLOG).map(|i| flow_at("gone", i, clock.now(), ttl));
    if old {
        let mut raw: std::collections::HashMap<FlowState, PendingFlow> =
            flows.map(|flow| (flow.state.clone(), flow)).collect();
        clock.advance(ttl);
        let now = clock.now();
        let started = Instant::now();
        raw.retain(|_, flow| !flow.is_expired_at(now));
        return Calls::of(vec![started.elapsed()]);
    }
    let store = MemoryStore::with_clock(clock.clone());
    for flow in flows {
        run_here(store.insert(&flow)).unwrap();
    }
    clock.advance(ttl);
    let mut purge = std::pin::pin!(store.purge_expired());
    let mut holds = Vec::new();
    loop {
        let started = Instant::now();
        let poll = purge.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        holds.push(started.elapsed());
        if poll.is_ready() {
            return Calls::of(holds);
        }
    }
}

/// A prober's get_flow on a memory store while 100k expired flows are
/// purged; with `old`, a prober's lock of a raw map while one retain walks
/// it, as the old purge did.
async fn memory_stall(old: bool) -> Calls {
    let clock = Arc::new(ManualClock::starting_now());
    let ttl = Duration::from_secs(60);
    let flows: Vec<PendingFlow> = (0..PURGE_BACKLOG)
        .map(|i| flow_at("gone", i, clock.now(), ttl))
        .collect();
    let probe = flow("probe", 0);
    if old {
        let raw: std::collections::HashMap<FlowState, PendingFlow> = flows
            .into_iter()
            .chain([probe.clone()])
            .map(|flow| (flow.state.clone(), flow))
            .collect();
        let raw = Arc::new(Mutex::new(raw));
        clock.advance(ttl);
        let now = clock.now();
        return calls_during(
            &async || {
                let raw = Arc::clone(&raw);
                tokio::task::spawn_blocking(move || {
                    raw.lock()
                        .unwrap()
                        .retain(|_, flow| !flow.is_expired_at(now));
                })
                .await
                .unwrap();
            },
            {
                let raw = Arc::clone(&raw);
                let state = probe.state.clone();
                move || {
                    let found = raw.lock().unwrap().get(&state).is_some();
                    async move {
                        std::hint::black_box(found);
                    }
                }
            },
        )
        .await;
    }
    let store = MemoryStore::with_clock(clock.clone());
    for flow in flows.iter().chain([&probe]) {
        store.insert(flow).await.unwrap();
    }
    clock.advance(ttl);
    calls_during(
        &async || {
            store.purge_expired().await.unwrap();
        },
        {
            let store = store.clone();
            let state = probe.state.clone();
            move || {
                let store = store.clone();
                let state = state.clone();
                async move {
                    std::hint::black_box(store.get_flow(&state).await.unwrap());
                }
            }
        },
    )
    .await
}

/// A prober that puts one token through `writer`.
fn put_prober(
    writer: &SqliteStore,
) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static {
    let writer = writer.clone();
    move || {
        let writer = writer.clone();
        Box::pin(async move {
            let key = TokenKey::new("github", "stall");
            writer.put(&key, &record()).await.unwrap();
        })
    }
}

/// Purges the backlog in `store`: with `old`, as the old purge did.
async fn sqlite_purge(store: &SqliteStore, old: bool) {
    if old {
        purge_in_one_transaction(store).await;
    } else {
        store.purge_expired().await.unwrap();
    }
}

/// The puts of another instance of this process during one purge.
async fn sqlite_stall_in_process(store: &SqliteStore, writer: &SqliteStore, old: bool) -> Calls {
    calls_during(&async || sqlite_purge(store, old).await, put_prober(writer)).await
}

/// Another process's waits for the write lock during one purge.
async fn sqlite_stall_other_process(path: &Path, store: &SqliteStore, old: bool) -> Calls {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "WRITING");
    tokio::time::sleep(Duration::from_millis(20)).await;
    sqlite_purge(store, old).await;
    drop(child.stdin.take());
    let line = lines.next().unwrap().unwrap();
    let _ = child.wait();
    Calls::decode(line.strip_prefix("LOCK ").unwrap())
}

/// Two rows (longest, p99) of `trials` (ours, then the baseline's), each
/// figure the median over the trials.
fn stall_rows(
    backend: &str,
    what: &str,
    trials: &[Vec<Calls>; 2],
    baseline_name: &str,
) -> [String; 2] {
    let median = |calls: &Vec<Calls>, pick: fn(&Calls) -> Duration| {
        let mut values: Vec<Duration> = calls.iter().map(pick).collect();
        values.sort_unstable();
        values.get(values.len() / 2).copied().unwrap_or_default()
    };
    let row = |which: &str, pick: fn(&Calls) -> Duration| {
        let ours = median(&trials[0], pick);
        let baseline = median(&trials[1], pick);
        format!(
            "| {backend} | {what}, {which} | {} | {baseline_name} | {} | {:.3} |",
            format_duration(ours),
            format_duration(baseline),
            ours.as_secs_f64() / baseline.as_secs_f64().max(f64::EPSILON)
        )
    };
    [
        row("longest (median of trials)", |c| c.longest),
        row("p99 (median of trials)", |c| c.p99),
    ]
}

/// The p99 and longest of the calls of `probe`, made back to back on a task
/// of their own while `work` runs.
#[derive(Clone, Copy)]
struct Calls {
    p99: Duration,
    longest: Duration,
}

impl Calls {
    fn of(mut latencies: Vec<Duration>) -> Calls {
        latencies.sort_unstable();
        let n = latencies.len().max(1);
        Calls {
            p99: latencies
                .get((n * 99).div_ceil(100).saturating_sub(1))
                .copied()
                .unwrap_or_default(),
            longest: latencies.last().copied().unwrap_or_default(),
        }
    }

    fn encode(self) -> String {
        format!("{} {}", self.p99.as_nanos(), self.longest.as_nanos())
    }

    fn decode(text: &str) -> Calls {
        let mut parts = text
            .split(' ')
            .map(|n| Duration::from_nanos(n.parse().unwrap()));
        Calls {
            p99: parts.next().unwrap(),
            longest: parts.next().unwrap(),
        }
    }
}

async fn calls_during<P, F>(work: &impl AsyncFn(), probe: P) -> Calls
where
    P: Fn() -> F + Send + 'static,
    F: Future<Output = ()> + Send,
{
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = tokio::spawn({
        let done = Arc::clone(&done);
        async move {
            let mut latencies = Vec::new();
            while !done.load(Ordering::Acquire) {
                let t = Instant::now();
                probe().await;
                latencies.push(t.elapsed());
                tokio::task::yield_now().await;
            }
            latencies
        }
    });
    // Let the prober start first.
    tokio::time::sleep(Duration::from_millis(20)).await;
    work().await;
    done.store(true, Ordering::Release);
    Calls::of(prober.await.unwrap())
}

/// The other process of the stall measurement: until its stdin closes,
/// takes the write lock (BEGIN IMMEDIATE, then ROLLBACK: nothing written, no
/// fsync) every millisecond, then reports how long it waited for it.
fn stall_writer(path: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(path).await.unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let mut sink = String::new();
                let _ = std::io::stdin().read_line(&mut sink);
                stop.store(true, Ordering::Release);
            }
        });
        let mut conn = store.pool().acquire().await.unwrap();
        println!("WRITING");
        std::io::stdout().flush().unwrap();
        let mut waits = Vec::new();
        while !stop.load(Ordering::Acquire) {
            let t = Instant::now();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut *conn)
                .await
                .unwrap();
            waits.push(t.elapsed());
            sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        println!("LOCK {}", Calls::of(waits).encode());
    });
}

// ------------------------------------------------------------------ main

fn main() {
    if let Ok(path) = std::env::var(ROLE) {
        return stall_writer(&path);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(benchmark());
}

/// Whether to run `section`: all of them, or those named in
/// `MCP_AUTHKIT_BENCH_SCALE` (comma-separated: tokens, flows, purge,
/// waiters, stalls).
fn wanted(section: &str) -> bool {
    std::env::var("MCP_AUTHKIT_BENCH_SCALE")
        .map_or(true, |list| list.split(',').any(|s| s.trim() == section))
}

async fn benchmark() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!(
        "mcp-authkit-bench-scale:{}",
        mcp_authkit_core::random_urlsafe(8)
    );
    let _cleanup = RedisCleanup(prefix.clone());
    let redis = redis_store(&prefix).await;

    if wanted("tokens") {
        println!("Scale: tokens (keys read and written spread over all N).");
        println!();
        let mut table = GrowthTable::new("tokens", &SIZES);
        memory_tokens(&mut table).await;
        sqlite_tokens(&mut table, dir.path()).await;
        if let Some(redis) = &redis {
            redis_tokens(&mut table, redis, &prefix).await;
        }
        table.print();
    }
    if wanted("flows") {
        println!("Scale: pending flows (N live flows beside the measured ones).");
        println!();
        let mut table = GrowthTable::new("live flows", &SIZES);
        memory_flows(&mut table).await;
        sqlite_flows(&mut table, dir.path()).await;
        if let Some(redis) = &redis {
            redis_flows(&mut table, redis).await;
        }
        table.print();
    }
    if wanted("purge") {
        println!(
            "Scale: purge of N expired flows (Redis expires keys itself: its purge_expired \
         does nothing)."
        );
        println!();
        let mut table = GrowthTable::new("expired flows", &SIZES);
        purges(&mut table, dir.path()).await;
        table.print();
    }
    if wanted("waiters") {
        println!("Scale: waiters (W flows waited on, none completing).");
        println!();
        let mut table = GrowthTable::new("waiters", &WAITERS);
        waiter_rows(&mut table, "memory", Arc::new(MemoryStore::new())).await;
        let sqlite = SqliteStore::open(dir.path().join("waiters.db"))
            .await
            .unwrap();
        waiter_rows(&mut table, "sqlite", Arc::new(sqlite)).await;
        if let Some(redis) = &redis {
            waiter_rows(&mut table, "redis", Arc::new(redis.clone())).await;
        }
        table.print();
    }
    if wanted("stalls") {
        println!(
            "Scale: calls of another writer while {} expired flows are purged.",
            size_label(PURGE_BACKLOG)
        );
        println!();
        println!("| backend | call | ours | baseline | baseline's | ratio (ours vs baseline) |");
        println!("|---|---|---:|---|---:|---:|");
        for row in stalls(dir.path()).await {
            println!("{row}");
        }
        println!();
        memory_purge_summary().await;
    }
}

/// The memory store's purge_expired with nothing expired at 100k live
/// flows, beside one get_flow of the same store.
async fn memory_purge_summary() {
    let store = MemoryStore::new();
    for i in 0..PURGE_BACKLOG {
        store.insert(&flow("live", i)).await.unwrap();
    }
    let state: FlowState = flow("live", 0).state;
    let (purge, get) = mcp_authkit_bench::interleaved(
        2_000,
        ("purge", "get"),
        async |_| {
            std::hint::black_box(store.purge_expired().await.unwrap());
        },
        async |_| {
            std::hint::black_box(store.get_flow(&state).await.unwrap());
        },
    )
    .await;
    println!(
        "Memory purge_expired with nothing expired at {} live flows: p50 {}, p99 {} \
         (target under 50 µs); one get_flow in the same run: p50 {}.",
        size_label(PURGE_BACKLOG),
        format_duration(purge.p50),
        format_duration(purge.p99),
        format_duration(get.p50),
    );
}
