//! The two processes of a cross-process wake benchmark. The bench binary
//! (process A) runs itself again as a completer (process B); A asks B on
//! B's stdin to complete a flow, or to send one of the backend's raw
//! notifications, and B answers on its stdout with when it started, on the
//! wall clock both processes share. A notes when its waiter woke on that
//! clock, so a latency spans the whole path from B's call to A's return.
//!
//! The protocol, the `complete` command and the interleaving are the same
//! for every backend, so they live here once; a backend's bench brings only
//! its store, its raw baseline commands and how A sees those arrive.

use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcp_authkit_core::{FlowOutcome, FlowState, PendingStore, Revision, TokenKey};

/// The environment variable that makes the bench binary a completer: the
/// child is the same executable, so it needs a sign to act otherwise.
const ROLE: &str = "MCP_AUTHKIT_BENCH_ROLE";

/// Rounds kept: each gives one latency of every kind.
const ROUNDS: usize = 300;

/// Rounds run first and not kept, while connections and listeners warm up.
const WARM_UP_ROUNDS: usize = 20;

/// Nanoseconds since the epoch on the wall clock: the one clock both
/// processes read, unlike each process's monotonic clock.
pub fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Whether this process is a completer that [`Completer::spawn`] started:
/// the bench's `main` asks first and, if so, serves instead of measuring.
pub fn is_completer() -> bool {
    std::env::var(ROLE).as_deref() == Ok("completer")
}

/// Process A's side: the running completer, killed when dropped.
pub struct Completer {
    child: Child,
    to_child: ChildStdin,
    /// B's answers: when it started each command, read on a thread of their
    /// own so that A's runtime never blocks on the pipe.
    started_at: tokio::sync::mpsc::UnboundedReceiver<u128>,
}

impl Completer {
    /// Starts this executable again as a completer, with `env` added to its
    /// environment (what it needs to open the same store), and waits until
    /// it is ready.
    pub async fn spawn(env: &[(&str, &str)]) -> Completer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE, "completer")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let to_child = child.stdin.take().unwrap();
        let (reports, started_at) = tokio::sync::mpsc::unbounded_channel::<u128>();
        let from_child = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(from_child).lines() {
                let started = line.unwrap().parse().expect("a timestamp");
                if reports.send(started).is_err() {
                    return;
                }
            }
        });
        let mut completer = Completer {
            child,
            to_child,
            started_at,
        };
        assert_eq!(completer.started().await, 0, "the child is ready");
        completer
    }

    /// Asks B to run `command` on `argument`; B answers once it is done.
    fn ask(&mut self, command: &str, argument: &str) {
        writeln!(self.to_child, "{command} {argument}").unwrap();
        self.to_child.flush().unwrap();
    }

    /// B's next answer: when it started the command asked.
    async fn started(&mut self) -> u128 {
        self.started_at.recv().await.expect("the child reports")
    }

    /// One wake through the store: a waiter in A, `complete` in B. The
    /// latency runs from B starting `complete` to A's `wait` returning.
    pub async fn wake<S: PendingStore + Clone>(&mut self, store: &S) -> Duration {
        let state = FlowState::generate();
        let waiter = {
            let store = store.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let outcome = store.wait(&state, Duration::from_secs(10)).await.unwrap();
                assert!(outcome.is_some(), "the wait saw the completion");
                now_nanos()
            })
        };
        // Let the waiter register and read the (empty) stored outcome.
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.ask("complete", state.as_str());
        let started = self.started().await;
        latency(waiter.await.unwrap(), started)
    }

    /// One wake through a raw baseline: B runs `command` on `argument`, and
    /// `arrived` returns when A has received what it sent. The same pause
    /// comes first as in [`wake`](Self::wake), so both meet the same state.
    pub async fn raw_wake(
        &mut self,
        command: &str,
        argument: &str,
        arrived: impl Future<Output = ()>,
    ) -> Duration {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.ask(command, argument);
        arrived.await;
        let woke = now_nanos();
        latency(woke, self.started().await)
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn latency(woke: u128, started: u128) -> Duration {
    Duration::from_nanos(woke.saturating_sub(started) as u64)
}

/// Runs `K` kinds of wake interleaved, one of each kind per round and 3 ms
/// apart, so load from elsewhere on this shared machine falls on every kind
/// alike; `wake(kind)` runs one of `kind` (0 to `K - 1`) and returns its
/// latency. Returns the kept latencies of each kind.
pub async fn interleaved_wakes<const K: usize>(
    mut wake: impl AsyncFnMut(usize) -> Duration,
) -> [Vec<Duration>; K] {
    let mut latencies = std::array::from_fn(|_| Vec::with_capacity(ROUNDS));
    for round in 0..WARM_UP_ROUNDS + ROUNDS {
        for (kind, kept) in latencies.iter_mut().enumerate() {
            tokio::time::sleep(Duration::from_millis(3)).await;
            let latency = wake(kind).await;
            if round >= WARM_UP_ROUNDS {
                kept.push(latency);
            }
        }
    }
    latencies
}

/// Process B: says it is ready, then runs each command A sends, in order,
/// and answers when it started each. `complete <state>` completes that flow
/// through `store`; any other command goes to `other(command, argument,
/// started)`, the backend's raw baselines.
pub async fn serve(store: &impl PendingStore, mut other: impl AsyncFnMut(&str, &str, u128)) {
    let outcome = FlowOutcome::Authorized {
        revision: Revision::new(1),
    };
    let key = TokenKey::new("github", "bench");
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    };
    say("0".into());
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let (command, argument) = line.split_once(' ').unwrap();
        let started = now_nanos();
        match command {
            "complete" => store
                .complete(
                    &key,
                    &FlowState::new(argument),
                    &outcome,
                    Duration::from_secs(60),
                )
                .await
                .unwrap(),
            _ => other(command, argument, started).await,
        }
        say(started.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind's row must hold only that kind's latencies, and none from
    /// the warm-up: a mix-up would print one baseline's figures as another's.
    /// Time is paused, so the pauses between wakes cost nothing.
    #[tokio::test(start_paused = true)]
    async fn interleaved_wakes_keeps_each_kind_apart_after_the_warm_up() {
        let mut calls = 0u64;
        let kept: [Vec<Duration>; 3] = interleaved_wakes(async |kind| {
            assert_eq!(kind as u64, calls % 3, "kinds take turns");
            calls += 1;
            // The latency says which call it was.
            Duration::from_nanos(calls - 1)
        })
        .await;
        assert_eq!(calls, 3 * (WARM_UP_ROUNDS + ROUNDS) as u64);
        for (kind, latencies) in kept.iter().enumerate() {
            let expected: Vec<Duration> = (WARM_UP_ROUNDS..WARM_UP_ROUNDS + ROUNDS)
                .map(|round| Duration::from_nanos((3 * round + kind) as u64))
                .collect();
            assert_eq!(latencies, &expected, "kind {kind}");
        }
    }
}
