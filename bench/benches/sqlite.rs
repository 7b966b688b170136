//! The SQLite store against raw sqlx statements on the same pool and file,
//! and the wake latency of `wait` when another process completes the flow.
//!
//! `cargo bench -p mcp-authkit-bench --bench sqlite`. The binary re-executes
//! itself as the completing process.
//!
//! Where a read's time goes, in instructions: with `MCP_AUTHKIT_BENCH_PROFILE`
//! set to `get` or `sqlx` (and `MCP_AUTHKIT_BENCH_READS` to a count), the
//! binary only performs that many store gets or raw sqlx SELECTs and exits,
//! for `valgrind --tool=callgrind`; the difference between two counts over
//! the difference in reads is the cost of one read (scripts/bench.sh
//! `--callgrind` does it).

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mcp_authkit_bench::{Stats, Table, interleaved, measure_concurrent, process_cpu};
use mcp_authkit_core::{
    FlowOutcome, FlowState, PendingFlow, PendingStore, Revision, Timestamp, TokenKey, TokenRecord,
    TokenStore, codec,
};
use mcp_authkit_store_sqlite::SqliteStore;
use mcp_authkit_store_sqlite::sqlx;
use mcp_authkit_store_sqlite::sqlx::Row;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const CHILD_ROLE: &str = "MCP_AUTHKIT_BENCH_SQLITE_CHILD";
const PROFILE: &str = "MCP_AUTHKIT_BENCH_PROFILE";
/// The Python library's file store answers a valid-token read in this much
/// (p50) on the same machine: the target of the embedded default.
const PYTHON_FILE_STORE_P50_US: f64 = 25.0;

fn record() -> TokenRecord {
    let now = Timestamp::now();
    TokenRecord::new("gho_0123456789abcdef0123456789abcdef01234567", now)
        .with_refresh_token("ghr_0123456789abcdef")
        .with_scopes(["repo", "read:user"])
        .with_expires_at(now.saturating_add(Duration::from_secs(3600)))
}

fn flow(subject: String) -> PendingFlow {
    PendingFlow::new(
        TokenKey::new("github", subject),
        "http://127.0.0.1:8005/callback",
        vec!["repo".into()],
        Timestamp::now(),
        Duration::from_secs(600),
    )
}

fn unix_nanos(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

#[tokio::main]
async fn main() {
    if let Ok(path) = std::env::var(CHILD_ROLE) {
        return completer(&path).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let keys: Vec<TokenKey> = (0..1000)
        .map(|i| TokenKey::new("github", format!("user-{i}")))
        .collect();
    let record = record();
    for key in &keys {
        store.put(key, &record).await.unwrap();
    }
    if let Ok(what) = std::env::var(PROFILE) {
        return profile(&store, &keys, &what).await;
    }
    let mut table = Table::new();

    // get beside the same SELECT on the same pool, reading the same columns
    // without decoding the record.
    let (get, raw_get) = interleaved(
        30_000,
        ("get", "raw SELECT of the row"),
        async |i| {
            let key = &keys[i % keys.len()];
            std::hint::black_box(TokenStore::get(&store, key).await.unwrap());
        },
        async |i| raw_select(&store, &keys[i % keys.len()]).await,
    )
    .await;
    let get_p50 = get.p50;
    let raw_p50 = raw_get.p50;
    table.row("sqlite", get, Some(raw_get));

    // What sqlx adds to every query: the request crosses to the
    // connection's worker thread and the answer crosses back. Here alone,
    // with no SQLite work, beside the same empty call on this thread.
    let (to_thread, tx) = handoff_thread();
    let (handoff, inline) = interleaved(
        30_000,
        (
            "hand-off alone: empty request to a worker thread and back",
            "the same empty request on this thread",
        ),
        async |i| {
            let (reply, answer) = tokio::sync::oneshot::channel();
            tx.send((i, reply)).unwrap();
            std::hint::black_box(answer.await.unwrap());
        },
        async |i| {
            std::hint::black_box(i);
        },
    )
    .await;
    let handoff_p50 = handoff.p50;
    // Wall time against CPU time (all threads) of back-to-back reads: what
    // the wall time has beyond the CPU is waiting for threads to wake.
    let (get_wall, get_cpu) = wall_and_cpu(20_000, async |i| {
        let key = &keys[i % keys.len()];
        std::hint::black_box(TokenStore::get(&store, key).await.unwrap());
    })
    .await;
    let (raw_wall, raw_cpu) = wall_and_cpu(20_000, async |i| {
        raw_select(&store, &keys[i % keys.len()]).await;
    })
    .await;
    table.row("thread", handoff, Some(inline));
    drop(tx);
    to_thread.join().unwrap();

    // Parallel reads: 8 tasks on the pool's 4 connections.
    let shared = Arc::new(store.clone());
    let keys_shared = Arc::new(keys.clone());
    let concurrent_get = measure_concurrent("get, 8 tasks", 8, 2_500, {
        let shared = Arc::clone(&shared);
        let keys = Arc::clone(&keys_shared);
        move |task, i| {
            let store = Arc::clone(&shared);
            let key = keys[(task * 131 + i) % keys.len()].clone();
            async move {
                std::hint::black_box(TokenStore::get(&*store, &key).await.unwrap());
            }
        }
    })
    .await;
    table.row("sqlite", concurrent_get, None);

    // put beside the same upsert without the revision counter; both commit
    // with synchronous=FULL.
    let bytes = codec::encode_token(&record);
    let (put, raw_put) = interleaved(
        2_000,
        ("put", "raw upsert of the row"),
        async |i| {
            store.put(&keys[i % keys.len()], &record).await.unwrap();
        },
        async |i| {
            let key = &keys[i % keys.len()];
            sqlx::query(
                "INSERT INTO mcp_authkit_tokens (provider, subject, revision, expires_at, record) \
                 VALUES (?1, ?2, ?3, NULL, ?4) ON CONFLICT (provider, subject) DO UPDATE SET \
                 revision = excluded.revision, record = excluded.record",
            )
            .bind(key.provider())
            .bind(key.subject())
            .bind(1_000_000_000 + i as i64)
            .bind(&bytes)
            .execute(store.pool())
            .await
            .unwrap();
        },
    )
    .await;
    table.row("sqlite", put, Some(raw_put));

    // insert + take of a new flow, beside a raw INSERT + DELETE ... RETURNING
    // of the same row (no active-flow bookkeeping).
    let n = 1_000;
    let ours: Vec<PendingFlow> = (0..n + n / 10)
        .map(|i| flow(format!("store-{i}")))
        .collect();
    let raw: Vec<PendingFlow> = (0..n + n / 10).map(|i| flow(format!("raw-{i}"))).collect();
    let (insert_take, raw_flow) = interleaved(
        n,
        ("insert + take", "raw INSERT + DELETE RETURNING"),
        async |i| {
            let f = &ours[i];
            PendingStore::insert(&store, f).await.unwrap();
            std::hint::black_box(store.take(&f.state).await.unwrap().unwrap());
        },
        async |i| {
            let f = &raw[i];
            sqlx::query(
                "INSERT INTO mcp_authkit_flows (state, provider, subject, expires_at, flow) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(f.state.as_str())
            .bind(f.key.provider())
            .bind(f.key.subject())
            .bind(f.expires_at.unix_millis())
            .bind(codec::encode_flow(f))
            .execute(store.pool())
            .await
            .unwrap();
            let taken: Option<Vec<u8>> = sqlx::query_scalar(
                "DELETE FROM mcp_authkit_flows WHERE state = ?1 AND expires_at > ?2 \
                 RETURNING flow",
            )
            .bind(f.state.as_str())
            .bind(Timestamp::now().unix_millis())
            .fetch_optional(store.pool())
            .await
            .unwrap();
            std::hint::black_box(codec::decode_flow(&taken.unwrap()).unwrap());
        },
    )
    .await;
    table.row("sqlite", insert_take, Some(raw_flow));

    // Wake latency: complete() by another instance of this process, then by
    // another process, to wait() returning here.
    let other = SqliteStore::open(&path).await.unwrap();
    let in_process = wake_latencies(&store, 200, |state| {
        let other = other.clone();
        async move {
            let flow = other.take(&state).await.unwrap().unwrap();
            let outcome = FlowOutcome::Authorized {
                revision: Revision::new(1),
            };
            let called = SystemTime::now();
            other
                .complete(&flow.key, &state, &outcome, Duration::from_secs(60))
                .await
                .unwrap();
            (called, SystemTime::now())
        }
    })
    .await;
    // In this process the waiter wakes inside complete(), right after its
    // commit: only the latency from the call is meaningful.
    table.row(
        "sqlite",
        Stats::from_latencies(
            "wake, same process: complete() called -> wait() returns",
            in_process.from_call,
            in_process.wall,
        ),
        None,
    );

    let cross = cross_process_wake(&store, &path, 200).await;
    table.row(
        "sqlite",
        Stats::from_latencies(
            "wake, other process: complete() called -> wait() returns",
            cross.from_call,
            cross.wall,
        ),
        None,
    );
    table.row(
        "sqlite",
        Stats::from_latencies(
            "wake, other process: complete() returned -> wait() returns",
            cross.from_return,
            cross.wall,
        ),
        None,
    );
    println!("{}", table.render());
    println!(
        "SQLite valid-token read: get p50 {:.1} µs, raw sqlx SELECT p50 {:.1} µs, target \
         {PYTHON_FILE_STORE_P50_US:.0} µs (the Python file store here): get at {:.2}x the \
         target, {:.2}x the raw SELECT; the hand-off alone is {:.1} µs p50.",
        micros(get_p50),
        micros(raw_p50),
        micros(get_p50) / PYTHON_FILE_STORE_P50_US,
        micros(get_p50) / micros(raw_p50),
        micros(handoff_p50),
    );
    println!(
        "Back to back, mean per read: get {:.1} µs wall / {:.1} µs CPU; raw sqlx SELECT \
         {:.1} µs wall / {:.1} µs CPU (CPU of all threads, kernel included: sqlx's worker \
         thread, the hand-offs' wake-ups and context switches).",
        micros(get_wall),
        micros(get_cpu),
        micros(raw_wall),
        micros(raw_cpu),
    );
    println!(
        "Wake rows: ops/s is not a throughput (each round waits 0-120 ms on purpose); \
         latencies are wall-clock times across processes. \"complete() called\" includes \
         its commit (an fsync); \"returned\" is the wake alone (poll interval 5-25 ms)."
    );
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A worker thread that answers each request at once, as sqlx's connection
/// worker would after running the query.
fn handoff_thread() -> (
    std::thread::JoinHandle<()>,
    std::sync::mpsc::Sender<(usize, tokio::sync::oneshot::Sender<usize>)>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<(usize, tokio::sync::oneshot::Sender<usize>)>();
    let thread = std::thread::spawn(move || {
        for (i, reply) in rx {
            let _ = reply.send(i);
        }
    });
    (thread, tx)
}

/// The baseline of a token read: the same SELECT as the store's, through
/// sqlx on the store's pool, reading the same columns without decoding.
async fn raw_select(store: &SqliteStore, key: &TokenKey) {
    let row = sqlx::query(
        "SELECT revision, record FROM mcp_authkit_tokens WHERE provider = ?1 AND subject = ?2",
    )
    .bind(key.provider())
    .bind(key.subject())
    .fetch_optional(store.pool())
    .await
    .unwrap()
    .unwrap();
    let revision: i64 = row.get(0);
    let record: &[u8] = row.get(1);
    std::hint::black_box((revision, record));
}

/// Mean wall time and mean CPU time of `n` calls of `op` back to back.
async fn wall_and_cpu(n: usize, mut op: impl AsyncFnMut(usize)) -> (Duration, Duration) {
    let cpu = process_cpu();
    let started = Instant::now();
    for i in 0..n {
        op(i).await;
    }
    let wall = started.elapsed() / n as u32;
    (wall, (process_cpu() - cpu) / n as u32)
}

/// Only `MCP_AUTHKIT_BENCH_READS` reads of one kind, for callgrind.
async fn profile(store: &SqliteStore, keys: &[TokenKey], what: &str) {
    let reads: usize = std::env::var("MCP_AUTHKIT_BENCH_READS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    for i in 0..reads {
        let key = &keys[i % keys.len()];
        match what {
            "get" => {
                std::hint::black_box(TokenStore::get(store, key).await.unwrap());
            }
            "sqlx" => raw_select(store, key).await,
            other => panic!("{PROFILE} is get or sqlx, not {other}"),
        }
    }
}

struct WakeLatencies {
    from_call: Vec<Duration>,
    from_return: Vec<Duration>,
    wall: Duration,
}

/// For `n` flows: a waiter starts, then after a varying delay (0-120 ms, so
/// the poller is caught at every point of its back-off) `complete` runs and
/// reports when it was called and when it returned; latencies run from
/// those to `wait` returning.
async fn wake_latencies<F, Fut>(store: &SqliteStore, n: usize, complete: F) -> WakeLatencies
where
    F: Fn(FlowState) -> Fut,
    Fut: std::future::Future<Output = (SystemTime, SystemTime)>,
{
    let mut latencies = WakeLatencies {
        from_call: Vec::with_capacity(n),
        from_return: Vec::with_capacity(n),
        wall: Duration::ZERO,
    };
    let started = Instant::now();
    for i in 0..n {
        let f = flow(format!("wake-{}", mcp_authkit_core::random_urlsafe(8)));
        PendingStore::insert(store, &f).await.unwrap();
        let waiter = {
            let store = store.clone();
            let state = f.state.clone();
            tokio::spawn(async move {
                let outcome = store.wait(&state, Duration::from_secs(10)).await.unwrap();
                assert!(outcome.is_some(), "woken before the timeout");
                SystemTime::now()
            })
        };
        tokio::time::sleep(Duration::from_millis((i as u64 * 37) % 121)).await;
        let (called, returned) = complete(f.state.clone()).await;
        let woken = waiter.await.unwrap();
        latencies
            .from_call
            .push(woken.duration_since(called).unwrap_or_default());
        latencies
            .from_return
            .push(woken.duration_since(returned).unwrap_or_default());
    }
    latencies.wall = started.elapsed();
    latencies
}

async fn cross_process_wake(
    store: &SqliteStore,
    path: &std::path::Path,
    n: usize,
) -> WakeLatencies {
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ROLE, path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("READY"));
    let channel = tokio::sync::Mutex::new((stdin, lines));
    let result = wake_latencies(store, n, |state| {
        let channel = &channel;
        async move {
            let (stdin, lines) = &mut *channel.lock().await;
            stdin
                .write_all(format!("{}\n", state.as_str()).as_bytes())
                .await
                .unwrap();
            stdin.flush().await.unwrap();
            let line = lines.next_line().await.unwrap().unwrap();
            let mut times = line
                .strip_prefix("COMPLETED ")
                .unwrap()
                .split(' ')
                .map(|nanos| UNIX_EPOCH + Duration::from_nanos(nanos.parse().unwrap()));
            (times.next().unwrap(), times.next().unwrap())
        }
    })
    .await;
    // Closing its stdin ends the child.
    drop(channel);
    let _ = child.wait().await;
    result
}

/// The other process: completes each flow named on stdin and reports when
/// its `complete` call started and returned (wall clock, which both
/// processes share).
async fn completer(path: &str) {
    let store = SqliteStore::open(path).await.unwrap();
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    };
    say("READY".into());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(state) = lines.next_line().await.unwrap() {
        let state = FlowState::new(state);
        let flow = store.take(&state).await.unwrap().unwrap();
        let outcome = FlowOutcome::Authorized {
            revision: Revision::new(1),
        };
        let called = SystemTime::now();
        store
            .complete(&flow.key, &state, &outcome, Duration::from_secs(60))
            .await
            .unwrap();
        let returned = SystemTime::now();
        say(format!(
            "COMPLETED {} {}",
            unix_nanos(called),
            unix_nanos(returned)
        ));
    }
}
