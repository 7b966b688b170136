//! Shared by the test binaries: a second OS process that works on the same
//! database file (the test binary re-executed through its `child_entry`
//! test), and record helpers.
#![allow(dead_code)] // each binary uses part of it

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use mcp_authkit_core::{
    FlowOutcome, FlowState, PendingStore, Revision, Timestamp, TokenKey, TokenRecord, TokenStore,
};
use mcp_authkit_store_sqlite::SqliteStore;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const ROLE: &str = "MCP_AUTHKIT_SQLITE_TEST_ROLE";
const PATH: &str = "MCP_AUTHKIT_SQLITE_TEST_PATH";
const PREFIX: &str = "CHILD:";

/// Keys the writer cycles through.
pub const WRITER_KEYS: u64 = 16;

/// The key the writer writes at step `n`.
pub fn writer_key(n: u64) -> TokenKey {
    TokenKey::new("crash", format!("user-{}", n % WRITER_KEYS))
}

/// A payload that differs per step and spans several pages, so a torn
/// write could not pass for a whole one.
pub fn payload(n: u64) -> String {
    let unit = format!("{n:08}-");
    unit.repeat(600 + (n % 7) as usize * 100)
}

/// The record the writer writes at step `n`.
pub fn writer_record(n: u64) -> TokenRecord {
    TokenRecord::new(format!("token-{n}"), Timestamp::now())
        .with_refresh_token(format!("refresh-{n}"))
        .with_extra("payload", payload(n))
        .with_extra("step", n.to_string())
}

/// Checks that `record` is exactly what the writer wrote at some step, and
/// returns the step.
pub fn whole_step(record: &TokenRecord) -> u64 {
    use mcp_authkit_core::ExposeSecret;
    let step: u64 = record
        .extra
        .get("step")
        .expect("step field")
        .expose_secret()
        .parse()
        .expect("step number");
    assert_eq!(record.access_token.expose_secret(), format!("token-{step}"));
    assert_eq!(
        record.refresh_token.as_ref().unwrap().expose_secret(),
        format!("refresh-{step}")
    );
    assert_eq!(
        record.extra.get("payload").unwrap().expose_secret(),
        &payload(step),
        "payload of step {step}"
    );
    step
}

/// Runs the child role when this process is a child; returns otherwise.
pub fn run_child_if_requested() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let path = std::env::var(PATH).expect("the parent passes the path");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = SqliteStore::open(&path)
            .await
            .expect("child opens the store");
        match role.as_str() {
            "writer" => writer(store).await,
            "completer" => completer(store).await,
            other => panic!("unknown role {other}"),
        }
    });
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A leading newline: libtest may have printed "test ... " on this line.
    let _ = writeln!(out, "\n{PREFIX}{line}");
    let _ = out.flush();
}

/// Writes tokens and flows forever, reporting each acknowledged token write.
async fn writer(store: SqliteStore) {
    let mut n: u64 = std::env::var("MCP_AUTHKIT_SQLITE_TEST_START")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    loop {
        store.put(&writer_key(n), &writer_record(n)).await.unwrap();
        say(&format!("WROTE {n}"));
        if n.is_multiple_of(3) {
            let flow = mcp_authkit_core::PendingFlow::new(
                TokenKey::new("crash-flow", format!("user-{n}")),
                "http://127.0.0.1:9/cb",
                vec!["read".into()],
                Timestamp::now(),
                Duration::from_secs(600),
            )
            .with_attribute("payload", payload(n));
            store.insert(&flow).await.unwrap();
        }
        n += 1;
    }
}

/// Completes the flows named on stdin, one `state revision` per line, and
/// reports each.
async fn completer(store: SqliteStore) {
    say("READY");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        let Some((state, revision)) = line.split_once(' ') else {
            break;
        };
        let state = FlowState::new(state);
        let flow = store.take(&state).await.unwrap().expect("a pending flow");
        let outcome = FlowOutcome::Authorized {
            revision: Revision::new(revision.parse().unwrap()),
        };
        store
            .complete(&flow.key, &state, &outcome, Duration::from_secs(60))
            .await
            .unwrap();
        say(&format!("COMPLETED {}", state.as_str()));
    }
}

/// The other process.
pub struct ChildProcess {
    pub child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ChildProcess {
    /// Re-executes this test binary as `role` on the database at `path`;
    /// `entry` is the name of the binary's child entry test.
    pub fn spawn(entry: &str, role: &str, path: &Path, env: &[(&str, String)]) -> ChildProcess {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", entry, "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(PATH, path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("re-executing the test binary");
        let stdout = child.stdout.take().unwrap();
        ChildProcess {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next report, without its prefix; `None` once the child exited.
    pub async fn next_report(&mut self) -> Option<String> {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
                .await
                .expect("the child stopped reporting")
                .expect("reading the child's stdout")?;
            if let Some(report) = line.strip_prefix(PREFIX) {
                return Some(report.to_owned());
            }
        }
    }

    /// Sends one line to the child's stdin.
    pub async fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }
}

/// Counts reports by their first word.
pub fn tally(reports: &[String]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for report in reports {
        let word = report.split(' ').next().unwrap_or_default().to_owned();
        *counts.entry(word).or_default() += 1;
    }
    counts
}
