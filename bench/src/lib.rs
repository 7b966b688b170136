//! Measurement helpers shared by the backend benchmarks: time an async
//! operation many times, report ops/s and latency percentiles, and print rows
//! beside their baseline as a ratio, so every figure is relative to a
//! baseline measured in the same run on the same machine.
//!
//! Run every benchmark with `cargo bench -p mcp-authkit-bench`.

use std::future::Future;
use std::time::{Duration, Instant};

pub mod completer;

/// Latency and throughput of one measured operation.
#[derive(Clone, Debug)]
pub struct Stats {
    /// What was measured.
    pub name: String,
    /// Operations per second over the whole run (all tasks together).
    pub ops_per_sec: f64,
    /// Median latency of one operation.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// How many operations were timed.
    pub samples: usize,
}

impl Stats {
    /// Statistics of per-operation `latencies` observed over `wall` time.
    pub fn from_latencies(
        name: impl Into<String>,
        mut latencies: Vec<Duration>,
        wall: Duration,
    ) -> Self {
        latencies.sort_unstable();
        let samples = latencies.len();
        let pick = |q: f64| {
            if samples == 0 {
                Duration::ZERO
            } else {
                latencies[((samples as f64 * q).ceil() as usize).clamp(1, samples) - 1]
            }
        };
        Stats {
            name: name.into(),
            ops_per_sec: samples as f64 / wall.as_secs_f64().max(f64::EPSILON),
            p50: pick(0.50),
            p99: pick(0.99),
            samples,
        }
    }

    /// Statistics of `latencies` of operations run back to back, one at a
    /// time: ops/s is one over the mean latency, so the table's ratio of two
    /// such rows compares their mean latencies.
    pub fn back_to_back(name: impl Into<String>, latencies: Vec<Duration>) -> Self {
        let busy = latencies.iter().sum();
        Stats::from_latencies(name, latencies, busy)
    }
}

/// Times `op` `iterations` times in sequence after `iterations / 10` warm-up
/// runs. `op` gets the iteration number.
pub async fn measure<F, Fut>(name: &str, iterations: usize, mut op: F) -> Stats
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    for i in 0..iterations / 10 {
        op(i).await;
    }
    let mut latencies = Vec::with_capacity(iterations);
    let started = Instant::now();
    for i in 0..iterations {
        let t = Instant::now();
        op(i).await;
        latencies.push(t.elapsed());
    }
    Stats::from_latencies(name, latencies, started.elapsed())
}

/// Times `op` on `tasks` concurrent tasks, `iterations_per_task` each.
/// `op` gets (task, iteration).
pub async fn measure_concurrent<F, Fut>(
    name: &str,
    tasks: usize,
    iterations_per_task: usize,
    op: F,
) -> Stats
where
    F: Fn(usize, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let op = op.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(iterations_per_task);
            for i in 0..iterations_per_task {
                let t = Instant::now();
                op(task, i).await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(tasks * iterations_per_task);
    for handle in handles {
        latencies.extend(handle.await.expect("benchmark task panicked"));
    }
    Stats::from_latencies(name, latencies, started.elapsed())
}

/// Times `ours` and `baseline` alternately, operation by operation and
/// switching which goes first, so load from elsewhere on this shared machine
/// falls on both alike. Each closure gets the call number (0 to
/// `n + n / 10`); the first tenth warms caches and is not kept. Returns the
/// `n` kept latencies of ours and of the baseline.
pub async fn interleaved_latencies(
    n: usize,
    mut ours: impl AsyncFnMut(usize),
    mut baseline: impl AsyncFnMut(usize),
) -> (Vec<Duration>, Vec<Duration>) {
    let warm_up = n / 10;
    let mut our_latencies = Vec::with_capacity(n);
    let mut baseline_latencies = Vec::with_capacity(n);
    for i in 0..warm_up + n {
        let (our_time, baseline_time) = if i % 2 == 0 {
            let started = Instant::now();
            ours(i).await;
            let our_time = started.elapsed();
            let started = Instant::now();
            baseline(i).await;
            (our_time, started.elapsed())
        } else {
            let started = Instant::now();
            baseline(i).await;
            let baseline_time = started.elapsed();
            let started = Instant::now();
            ours(i).await;
            (started.elapsed(), baseline_time)
        };
        if i >= warm_up {
            our_latencies.push(our_time);
            baseline_latencies.push(baseline_time);
        }
    }
    (our_latencies, baseline_latencies)
}

/// [`interleaved_latencies`] on one task, as two rows whose throughput is
/// that of back-to-back operations (one over the mean latency), so the ratio
/// compares mean latencies measured under the same conditions.
pub async fn interleaved(
    n: usize,
    (our_name, baseline_name): (&str, &str),
    ours: impl AsyncFnMut(usize),
    baseline: impl AsyncFnMut(usize),
) -> (Stats, Stats) {
    let (ours, baseline) = interleaved_latencies(n, ours, baseline).await;
    (
        Stats::back_to_back(our_name, ours),
        Stats::back_to_back(baseline_name, baseline),
    )
}

/// A number no other call in this process got: unique flows for the
/// benchmarks that insert and take them.
pub fn next_number() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Ours and the baseline interleaved op by op on each of `tasks` tasks, in
/// alternating order: `run(raw, n)` runs the baseline when `raw`, ours
/// otherwise, with a number unique in the process. Returns the baseline's
/// row and ours, named after `names` (ours, baseline) with the task count;
/// their ops/s is tasks over the mean latency, so the ratio compares mean
/// latencies under the same conditions.
pub async fn interleaved_tasks<R, Fut>(
    (name, base_name): (&str, &str),
    tasks: usize,
    iterations: usize,
    run: R,
) -> (Stats, Stats)
where
    R: Fn(bool, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut handles = Vec::new();
    for _ in 0..tasks {
        // Plain closures returning futures, not async closures: the spawned
        // task must be Send, which rustc cannot yet prove through an async
        // closure's borrowing future.
        let call = |raw: bool| {
            let run = run.clone();
            move |_| run(raw, next_number())
        };
        handles.push(tokio::spawn(interleaved_latencies(
            iterations,
            call(false),
            call(true),
        )));
    }
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for handle in handles {
        let (o, b) = handle.await.expect("benchmark task panicked");
        ours.extend(o);
        base.extend(b);
    }
    let wall = |latencies: &[Duration]| latencies.iter().sum::<Duration>() / tasks as u32;
    let (base_wall, ours_wall) = (wall(&base), wall(&ours));
    (
        Stats::from_latencies(
            format!("{base_name}, {tasks} task(s), interleaved"),
            base,
            base_wall,
        ),
        Stats::from_latencies(
            format!("{name}, {tasks} task(s), interleaved"),
            ours,
            ours_wall,
        ),
    )
}

/// A GitHub-like token record, valid for an hour: what the benchmarks store.
pub fn github_record() -> mcp_authkit_core::TokenRecord {
    let now = mcp_authkit_core::Timestamp::now();
    mcp_authkit_core::TokenRecord::new("gho_0123456789abcdef0123456789abcdef01234567", now)
        .with_refresh_token("ghr_0123456789abcdef0123456789abcdef")
        .with_scopes(["repo", "read:user"])
        .with_expires_at(now.saturating_add(Duration::from_secs(3600)))
}

/// A ten-minute flow of a user of its own for each `n`: an inserted flow
/// stays its key's active flow until it completes or expires (a second
/// insert joins it), so a benchmark that inserts many gives each a number of
/// its own ([`next_number`]).
pub fn flow(n: usize) -> mcp_authkit_core::PendingFlow {
    mcp_authkit_core::PendingFlow::new(
        mcp_authkit_core::TokenKey::new("github", format!("flow-user-{n}")),
        "https://mcp.example/oauth/callback",
        vec!["repo".into()],
        mcp_authkit_core::Timestamp::now(),
        Duration::from_secs(600),
    )
}

/// The Redis the benchmarks use: REDIS_URL, or the local default.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Removes every key under a run's Redis prefix when dropped, also when the
/// run panics.
pub struct RedisCleanup(pub String);

impl Drop for RedisCleanup {
    fn drop(&mut self) {
        let Ok(mut connection) = redis::Client::open(redis_url()).and_then(|c| c.get_connection())
        else {
            return;
        };
        let mut cursor = 0u64;
        loop {
            let Ok((next, keys)) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.0))
                .arg("COUNT")
                .arg(1000)
                .query::<(u64, Vec<String>)>(&mut connection)
            else {
                return;
            };
            if !keys.is_empty() {
                let _: redis::RedisResult<i64> =
                    redis::cmd("UNLINK").arg(&keys).query(&mut connection);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

/// CPU time of this process so far, all threads (from /proc; zero where
/// there is none).
pub fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th, in clock ticks (100 per second).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |t| t.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10)
}

fn format_duration(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.1} µs")
    } else {
        format!("{:.2} ms", micros / 1000.0)
    }
}

/// A table of measurements, each optionally beside its baseline.
#[derive(Default)]
pub struct Table {
    rows: Vec<(String, Stats, Option<Stats>)>,
}

impl Table {
    /// An empty table.
    pub fn new() -> Self {
        Table::default()
    }

    /// Adds a row for `backend`; `baseline` is the raw operation the ratio is
    /// computed against (mean latency ratio = baseline ops/s over ours).
    pub fn row(&mut self, backend: &str, stats: Stats, baseline: Option<Stats>) {
        self.rows.push((backend.to_owned(), stats, baseline));
    }

    /// The table as Markdown.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "| backend | operation | ops/s | p50 | p99 | baseline | baseline ops/s | ratio (time vs baseline) |\n\
             |---|---|---:|---:|---:|---|---:|---:|\n",
        );
        for (backend, stats, baseline) in &self.rows {
            let (base_name, base_ops, ratio) = match baseline {
                Some(base) => (
                    base.name.clone(),
                    format!("{:.0}", base.ops_per_sec),
                    format!("{:.2}", base.ops_per_sec / stats.ops_per_sec),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            out.push_str(&format!(
                "| {backend} | {} | {:.0} | {} | {} | {base_name} | {base_ops} | {ratio} |\n",
                stats.name,
                stats.ops_per_sec,
                format_duration(stats.p50),
                format_duration(stats.p99),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_samples() {
        let latencies = (1..=100).map(Duration::from_millis).collect();
        let stats = Stats::from_latencies("x", latencies, Duration::from_secs(1));
        assert_eq!(stats.p50, Duration::from_millis(50));
        assert_eq!(stats.p99, Duration::from_millis(99));
        assert_eq!(stats.samples, 100);
        assert!((stats.ops_per_sec - 100.0).abs() < 1e-9);
    }

    #[test]
    fn ratio_compares_time_per_operation() {
        let mut table = Table::new();
        let ours = Stats::from_latencies(
            "get",
            vec![Duration::from_micros(2); 10],
            Duration::from_micros(20),
        );
        let base = Stats::from_latencies(
            "raw",
            vec![Duration::from_micros(1); 10],
            Duration::from_micros(10),
        );
        table.row("memory", ours, Some(base));
        assert!(table.render().contains("| 2.00 |"), "{}", table.render());
    }
}
