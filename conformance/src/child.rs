//! Both sides of the cross-process scenario: the parent (the scenario) and
//! the child (this test binary re-executed through `conformance_child_entry`).
//!
//! The parent passes the role, namespace and arguments in environment
//! variables; the child reports on stdout in lines starting with
//! `CONFORMANCE:` (libtest's own lines are ignored), and waits for `go` on
//! stdin so both processes start racing at the same moment.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_authkit_core::testing::FakeOAuthClient;
use mcp_authkit_core::{
    Access, ExposeSecret, FlowOutcome, FlowState, Revision, Timestamp, TokenKey, TokenRecord,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinSet;

use crate::lifecycle::{expiring_record, lifecycle_on};
use crate::scenarios::broke;
use crate::scenarios::flow;
use crate::{Backend, Harness, Replica};

const ROLE: &str = "MCP_AUTHKIT_CONFORMANCE_ROLE";
const NAMESPACE: &str = "MCP_AUTHKIT_CONFORMANCE_NAMESPACE";
const ARGS: &str = "MCP_AUTHKIT_CONFORMANCE_ARGS";
const PREFIX: &str = "CONFORMANCE:";
/// Provider of the keys the two processes share.
const CROSS_PROVIDER: &str = "conformance-cross";
const LEASE_TTL: Duration = Duration::from_secs(3);
fn say(line: &str) {
    // Written to the stdout handle directly, past libtest's capture.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{PREFIX}{line}");
    let _ = out.flush();
}

fn encode_args(args: &BTreeMap<&str, String>) -> String {
    args.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn decode_args(text: &str) -> HashMap<String, String> {
    text.split(' ')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

struct ChildProcess {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ChildProcess {
    fn spawn(h: &Harness, role: &str, args: &BTreeMap<&str, String>) -> ChildProcess {
        let test = h
            .child_test()
            .expect("the cross-process scenario needs the macro's child entry point");
        // module_path! starts with the crate name; libtest names tests without it.
        let test = test.split_once("::").map_or(test, |(_, rest)| rest);
        let exe = std::env::current_exe().expect("path of the running test binary");
        let mut child = Command::new(exe)
            // The entry point is an ignored helper, so it never counts as
            // a passing test; `--ignored --exact` runs it alone.
            .args([
                "--ignored",
                "--exact",
                test,
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, role)
            .env(NAMESPACE, h.namespace())
            .env(ARGS, encode_args(args))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("re-executing the test binary as the child process");
        let stdout = child.stdout.take().expect("piped stdout");
        ChildProcess {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The child's next report line, without the prefix; `None` at its exit.
    async fn next_report(&mut self) -> Option<String> {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(40), self.lines.next_line())
                .await
                .expect("the child process stopped reporting")
                .expect("reading the child's stdout")?;
            // Not only at the start: with one test thread, libtest prints
            // "test <name> ... " before the test runs, on the same line as
            // the child's first report.
            if let Some((_, report)) = line.split_once(PREFIX) {
                return Some(report.to_owned());
            }
        }
    }

    async fn expect_report(&mut self, expected: &str) {
        match self.next_report().await {
            Some(got) => assert_eq!(got, expected, "the child process reports {expected}"),
            None => {
                let status = self
                    .child
                    .wait()
                    .await
                    .expect("waiting for the child process");
                panic!(
                    "the child process exited ({status}) before reporting {expected}; \
                     its stderr is above"
                );
            }
        }
    }

    async fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    async fn finish(mut self) -> Vec<String> {
        let mut reports = Vec::new();
        while let Some(report) = self.next_report().await {
            reports.push(report);
        }
        let status = self
            .child
            .wait()
            .await
            .expect("waiting for the child process");
        assert!(
            status.success(),
            "the child process failed ({status}); its stderr is above"
        );
        reports
    }
}

/// Parent side of the race (see [`crate::lifecycle::cross_process`]).
pub(crate) async fn race_with_child(h: &Harness) {
    let replicas = h.replicas(2).await;
    let mut contested = Vec::new();
    for i in 0..8 {
        let f = flow(
            &TokenKey::new(CROSS_PROVIDER, format!("contested-{i}")),
            Duration::from_secs(60),
        );
        replicas[0].pending.insert(&f).await.unwrap();
        contested.push(f.state);
    }
    let completion = flow(
        &TokenKey::new(CROSS_PROVIDER, "completed-by-child"),
        Duration::from_secs(60),
    );
    replicas[0].pending.insert(&completion).await.unwrap();

    let refresh_subject = "shared-refresh".to_owned();
    let oauth = Arc::new(FakeOAuthClient::new());
    oauth.accept_any_refresh_token(true);
    oauth.set_refresh_delay(Duration::from_millis(300));
    let lifecycles: Vec<_> = replicas
        .iter()
        .map(|r| lifecycle_on(r, Arc::clone(&oauth)))
        .collect();
    lifecycles[0]
        .store_token(
            &refresh_subject,
            &expiring_record("expiring", "shared-refresh-token"),
        )
        .await
        .unwrap();

    let args = BTreeMap::from([
        (
            "contested",
            contested
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("complete", completion.state.as_str().to_owned()),
        ("subject", refresh_subject.clone()),
    ]);
    let mut child = ChildProcess::spawn(h, "race", &args);
    match child.next_report().await.as_deref() {
        Some("SEES flow token") => {}
        Some(seen) => panic!(
            "{}",
            broke(
                crate::scenarios::guarantee::CROSS_PROCESS,
                format!(
                    "a second process sees none of the first's data: the child process looked in \
                     namespace {:?} of backend {:?} and found {}. The backend is not shared \
                     across processes: Backend::open must reach the same data from the \
                     namespace's name alone, or the configuration must say process_local",
                    h.namespace(),
                    h.backend_name(),
                    match seen.strip_prefix("SEES ").unwrap_or(seen) {
                        nothing if nothing.starts_with("nothing") => nothing.to_owned(),
                        found => found.replace(' ', ", "),
                    }
                )
            )
        ),
        None => {
            panic!("the child process exited before reporting what it sees; its stderr is above")
        }
    }
    child.expect_report("READY").await;

    // This process waits on the flow the child will complete.
    let waiter = {
        let pending = Arc::clone(&replicas[1].pending);
        let state = completion.state.clone();
        tokio::spawn(async move { pending.wait(&state, Duration::from_secs(30)).await.unwrap() })
    };
    child.send("go").await;

    let mut takes = JoinSet::new();
    for state in &contested {
        for i in 0..10 {
            let pending = Arc::clone(&replicas[i % 2].pending);
            let state = state.clone();
            takes.spawn(async move { pending.take(&state).await.unwrap().map(|f| f.state) });
        }
    }
    let mut accesses = JoinSet::new();
    for i in 0..30 {
        let lifecycle = lifecycles[i % 2].clone();
        let subject = refresh_subject.clone();
        accesses.spawn(async move { lifecycle.access(&subject).await });
    }
    let mut won: HashMap<FlowState, usize> = HashMap::new();
    while let Some(joined) = takes.join_next().await {
        if let Some(state) = joined.unwrap() {
            *won.entry(state).or_default() += 1;
        }
    }
    while let Some(joined) = accesses.join_next().await {
        match joined.unwrap() {
            Ok(Access::Ready(_)) => {}
            other => panic!("access in the parent process failed: {other:?}"),
        }
    }

    let reports = child.finish().await;
    let mut child_revision = None;
    let mut child_refreshes = None;
    for report in &reports {
        let (what, value) = report.split_once(' ').unwrap_or((report.as_str(), ""));
        match what {
            "WON" => *won.entry(FlowState::new(value)).or_default() += 1,
            "COMPLETED" => child_revision = Some(Revision::new(value.parse().unwrap())),
            "REFRESHES" => child_refreshes = Some(value.parse::<u64>().unwrap()),
            _ => {}
        }
    }
    for state in &contested {
        assert_eq!(
            won.get(state).copied().unwrap_or(0),
            1,
            "each contested flow is taken exactly once across both processes"
        );
    }
    let revision = child_revision.expect("the child reports its completion");
    let outcome = waiter.await.unwrap();
    assert_eq!(
        outcome,
        Some(FlowOutcome::Authorized { revision }),
        "the completion in the child wakes the waiter in this process"
    );
    let stored = replicas[0]
        .tokens
        .get(&completion.key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.revision, revision);
    assert_eq!(
        stored.record.access_token.expose_secret(),
        "from-child-process"
    );
    let total = oauth.refresh_calls() + child_refreshes.expect("the child reports its refreshes");
    assert_eq!(
        total,
        1,
        "one refresh across both processes (parent {}, child {:?})",
        oauth.refresh_calls(),
        child_refreshes
    );
}

/// A lease taken by a child that exits without releasing it holds until its
/// TTL passes, then is free.
pub(crate) async fn lease_outlives_dead_child(h: &Harness) {
    let replica = h.replica().await;
    let subject = format!("lease-{}", mcp_authkit_core::random_urlsafe(6));
    let key = TokenKey::new(CROSS_PROVIDER, subject.as_str());
    let mut child = ChildProcess::spawn(h, "lease", &BTreeMap::from([("subject", subject)]));
    child.expect_report("LEASED").await;
    let leased_at = Instant::now();
    child.finish().await;
    assert!(
        replica
            .tokens
            .try_acquire_lease(&key, Duration::from_secs(60))
            .await
            .unwrap()
            .is_none(),
        "the dead child's lease still holds"
    );
    let free_at = leased_at + LEASE_TTL + Duration::from_millis(500);
    tokio::time::sleep_until(free_at.into()).await;
    assert!(
        replica
            .tokens
            .try_acquire_lease(&key, Duration::from_secs(60))
            .await
            .unwrap()
            .is_some(),
        "the dead child's lease ran out"
    );
}

/// The child's entry point: runs the requested role when this process was
/// started by the cross-process scenario, and returns at once otherwise.
pub fn run_child_if_requested(backend: impl Backend) {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let namespace = std::env::var(NAMESPACE).expect("the parent passes the namespace");
    let args = decode_args(&std::env::var(ARGS).unwrap_or_default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime for the child");
    runtime.block_on(async move {
        let mut replicas = Vec::new();
        for _ in 0..2 {
            match backend.open(&namespace).await {
                Ok(replica) => replicas.push(replica),
                Err(error) => {
                    // Told to the parent, which says what it means.
                    say(&format!(
                        "SEES nothing (opening the namespace failed: {error})"
                    ));
                    return;
                }
            }
        }
        match role.as_str() {
            "race" => child_race(replicas, args).await,
            "lease" => child_lease(&replicas[0], args).await,
            other => panic!("unknown child role {other:?}"),
        }
    });
}

async fn child_race(replicas: Vec<Replica>, args: HashMap<String, String>) {
    let oauth = Arc::new(FakeOAuthClient::new());
    oauth.accept_any_refresh_token(true);
    oauth.set_refresh_delay(Duration::from_millis(300));
    let lifecycles: Vec<_> = replicas
        .iter()
        .map(|r| lifecycle_on(r, Arc::clone(&oauth)))
        .collect();
    // What the parent wrote must be visible here before anything races.
    let flow_seen = replicas[0]
        .pending
        .get_flow(&FlowState::new(args["complete"].as_str()))
        .await
        .unwrap()
        .is_some();
    let token_seen = replicas[0]
        .tokens
        .get(&TokenKey::new(
            crate::lifecycle::PROVIDER,
            args["subject"].as_str(),
        ))
        .await
        .unwrap()
        .is_some();
    say(&format!(
        "SEES {} {}",
        if flow_seen {
            "flow"
        } else {
            "no-flow-the-parent-inserted"
        },
        if token_seen {
            "token"
        } else {
            "no-token-the-parent-stored"
        },
    ));
    if !(flow_seen && token_seen) {
        return;
    }
    say("READY");
    let mut go = String::new();
    tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut go)
        .await
        .expect("reading go from the parent");
    assert_eq!(go.trim(), "go");

    let mut takes = JoinSet::new();
    for state in args["contested"].split(',') {
        for i in 0..10 {
            let pending = Arc::clone(&replicas[i % 2].pending);
            let state = FlowState::new(state);
            takes.spawn(async move { pending.take(&state).await.unwrap().map(|f| f.state) });
        }
    }
    let mut accesses = JoinSet::new();
    for i in 0..30 {
        let lifecycle = lifecycles[i % 2].clone();
        let subject = args["subject"].clone();
        accesses.spawn(async move { lifecycle.access(&subject).await });
    }
    let completion = {
        let replica = replicas[1].clone();
        let state = FlowState::new(args["complete"].as_str());
        tokio::spawn(async move {
            let flow = replica
                .pending
                .take(&state)
                .await
                .unwrap()
                .expect("the flow to complete");
            let record = TokenRecord::new("from-child-process", Timestamp::now());
            let revision = replica.tokens.put(&flow.key, &record).await.unwrap();
            let outcome = FlowOutcome::Authorized { revision };
            replica
                .pending
                .complete(&flow.key, &flow.state, &outcome, Duration::from_secs(60))
                .await
                .unwrap();
            revision
        })
    };
    while let Some(joined) = takes.join_next().await {
        if let Some(state) = joined.unwrap() {
            say(&format!("WON {}", state.as_str()));
        }
    }
    while let Some(joined) = accesses.join_next().await {
        match joined.unwrap() {
            Ok(Access::Ready(_)) => {}
            other => panic!("access in the child process failed: {other:?}"),
        }
    }
    let revision = completion.await.unwrap();
    say(&format!("COMPLETED {}", revision.get()));
    say(&format!("REFRESHES {}", oauth.refresh_calls()));
}

async fn child_lease(replica: &Replica, args: HashMap<String, String>) {
    let key = TokenKey::new(CROSS_PROVIDER, args["subject"].as_str());
    let lease = replica
        .tokens
        .try_acquire_lease(&key, LEASE_TTL)
        .await
        .unwrap();
    assert!(lease.is_some(), "the child gets the free lease");
    say("LEASED");
    // Exit without releasing, as a crashed holder would.
}
