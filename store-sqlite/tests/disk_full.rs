//! A disk that fills up for real: every write either commits or fails with
//! an error that names the cause, exactly-once take and the single lease
//! holder hold across two store instances while it is full, and once space
//! is freed the data is whole and every operation works again.
//!
//! The test re-executes this binary as a child process in its own user and
//! mount namespace (`unshare --user --map-root-user --mount`, no root
//! needed) and mounts a 2 MiB tmpfs for the database there, so the disk
//! that fills is the child's alone. `PRAGMA max_page_count` would not do:
//! it is per connection and fails the statement, never the COMMIT. Where
//! user namespaces are refused, the child limits its own file size with
//! `RLIMIT_FSIZE` around the writes instead, which fails the same writes at
//! the same step with an I/O error.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::{
    Error, ExposeSecret, FlowOutcome, LeaseToken, PendingFlow, PendingStore, Revision, Timestamp,
    TokenKey, TokenRecord, TokenStore,
};
use mcp_authkit_store_sqlite::SqliteStore;
use tokio::task::JoinSet;

const MODE: &str = "MCP_AUTHKIT_DISK_FULL_MODE";
const DIR: &str = "MCP_AUTHKIT_DISK_FULL_DIR";
const ENTRY: &str = "child_entry";
const TMPFS_SIZE: &str = "2m";

/// Entry point of the child process; does nothing in a normal test run.
#[test]
fn child_entry() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR).expect("the parent passes the directory"));
    let disk = match mode.as_str() {
        "tmpfs" => Disk::Tmpfs {
            filler: dir.join("filler"),
        },
        "fsize" => Disk::FileSizeLimit,
        other => panic!("unknown mode {other}"),
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(full_disk_scenario(&dir, &disk));
    say("DONE");
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\nDISK-FULL:{line}");
    let _ = out.flush();
}

/// Whether this machine lets an unprivileged process mount a tmpfs in its
/// own user and mount namespace.
fn namespaces_work(probe: &Path) -> bool {
    Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=64k tmpfs "$1""#)
        .arg("sh")
        .arg(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[test]
fn a_full_disk_fails_writes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let test_args = ["--exact", ENTRY, "--nocapture", "--test-threads=1"];
    // MCP_AUTHKIT_DISK_FULL_FALLBACK=1 tries the fallback where namespaces work.
    let fallback = std::env::var_os("MCP_AUTHKIT_DISK_FULL_FALLBACK").is_some();
    let mut command = if !fallback && namespaces_work(dir.path()) {
        let mut command = Command::new("unshare");
        command
            .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
            .arg(format!(
                r#"mount -t tmpfs -o size={TMPFS_SIZE} tmpfs "${DIR}" && exec "$@""#
            ))
            .arg("sh")
            .arg(&exe)
            .args(test_args)
            .env(MODE, "tmpfs");
        command
    } else {
        eprintln!(
            "user namespaces are refused here: filling the disk with RLIMIT_FSIZE instead of a \
             tmpfs"
        );
        let mut command = Command::new(&exe);
        command.args(test_args).env(MODE, "fsize");
        command
    };
    let output = command
        .env(DIR, dir.path())
        .stderr(Stdio::inherit())
        .output()
        .expect("running the child process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("DISK-FULL:DONE"),
        "the full-disk scenario failed in the child ({}); its output:\n{stdout}",
        output.status
    );
    for line in stdout
        .lines()
        .filter_map(|line| line.strip_prefix("DISK-FULL:"))
    {
        eprintln!("child: {line}");
    }
}

/// How the child makes its disk full and frees it again.
enum Disk {
    /// A tmpfs of its own, filled by a file.
    Tmpfs { filler: PathBuf },
    /// A limit on the size of the files this process writes.
    FileSizeLimit,
}

impl Disk {
    fn fill(&self) {
        match self {
            Disk::Tmpfs { filler } => {
                let mut file = std::fs::File::create(filler).unwrap();
                // Big chunks, then pages, until not one more page fits.
                for chunk in [64 * 1024, 4096, 512] {
                    let bytes = vec![0u8; chunk];
                    while file.write_all(&bytes).is_ok() {}
                }
                let _ = file.sync_all();
            }
            Disk::FileSizeLimit => set_file_size_limit(Some(0)),
        }
    }

    fn free(&self) {
        match self {
            Disk::Tmpfs { filler } => std::fs::remove_file(filler).unwrap(),
            Disk::FileSizeLimit => set_file_size_limit(None),
        }
    }

    /// Room for about `bytes` more, for the phase that fills the disk with
    /// the store's own writes.
    fn leave_room(&self, bytes: u64, database: &Path) {
        match self {
            Disk::Tmpfs { filler } => {
                self.fill();
                let len = std::fs::metadata(filler).unwrap().len();
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(filler)
                    .unwrap();
                file.set_len(len.saturating_sub(bytes)).unwrap();
            }
            Disk::FileSizeLimit => {
                let wal = mcp_authkit_store_sqlite::database_files(database)[1].clone();
                let largest = std::fs::metadata(database)
                    .map(|m| m.len())
                    .unwrap_or(0)
                    .max(std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0));
                set_file_size_limit(Some(largest + bytes));
            }
        }
    }
}

/// Sets (or, with `None`, lifts) this process's RLIMIT_FSIZE. SIGXFSZ is
/// ignored, so a write past the limit fails with EFBIG instead of killing
/// the process.
fn set_file_size_limit(limit: Option<u64>) {
    // SAFETY: plain system calls on this process's own signal disposition
    // and resource limits.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit {
            rlim_cur: limit.unwrap_or(libc::RLIM_INFINITY),
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

fn record(access: &str, payload_len: usize) -> TokenRecord {
    TokenRecord::new(access, Timestamp::now())
        .with_refresh_token(format!("{access}-refresh"))
        .with_extra("payload", "p".repeat(payload_len))
}

fn flow(key: &TokenKey, ttl: Duration) -> PendingFlow {
    PendingFlow::new(
        key.clone(),
        "http://127.0.0.1:9/cb",
        vec!["read".into()],
        Timestamp::now(),
        ttl,
    )
}

async fn access_token(store: &SqliteStore, key: &TokenKey) -> Option<(String, Revision)> {
    store.get(key).await.unwrap().map(|stored| {
        (
            stored.record.access_token.expose_secret().to_owned(),
            stored.revision,
        )
    })
}

/// A write refused by the full disk: an error that says why, and that
/// retrying alone will not help.
#[track_caller]
fn refused<T: std::fmt::Debug>(operation: &str, result: mcp_authkit_core::Result<T>) {
    let error: Error = match result {
        Ok(value) => panic!("{operation} on a full disk reported success: {value:?}"),
        Err(error) => error,
    };
    let message = error.to_string();
    assert!(
        message.contains("full") || message.contains("refused to read or write"),
        "{operation}: the error names the cause: {message}"
    );
    assert!(
        !error.is_retryable(),
        "{operation}: retrying cannot help until space is freed: {message}"
    );
}

/// Empties the WAL into the database file and truncates it, so that the
/// next commit has to allocate space for the WAL again.
async fn checkpoint(store: &SqliteStore) {
    let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(busy, 0, "the checkpoint ran to the end");
}

/// What the child checks, in order.
async fn full_disk_scenario(dir: &Path, disk: &Disk) {
    let path = dir.join("store.db");
    let a = SqliteStore::open(&path).await.unwrap();
    let b = SqliteStore::open(&path).await.unwrap();

    // Before the disk fills: what each operation will act on.
    let kept = TokenKey::new("github", "kept");
    let to_delete = TokenKey::new("github", "to-delete");
    let to_swap = TokenKey::new("github", "to-swap");
    let leased = TokenKey::new("github", "leased");
    let held = TokenKey::new("github", "held");
    let kept_revision = a.put(&kept, &record("kept-1", 200)).await.unwrap();
    let delete_revision = a.put(&to_delete, &record("delete-me", 200)).await.unwrap();
    let swap_revision = a.put(&to_swap, &record("swap-1", 200)).await.unwrap();
    let held_lease: LeaseToken = a
        .try_acquire_lease(&held, Duration::from_secs(600))
        .await
        .unwrap()
        .expect("a free lease");
    let contested = flow(
        &TokenKey::new("github", "contested"),
        Duration::from_secs(600),
    );
    a.insert(&contested).await.unwrap();
    let to_complete = flow(
        &TokenKey::new("github", "completing"),
        Duration::from_secs(600),
    );
    a.insert(&to_complete).await.unwrap();
    a.take(&to_complete.state).await.unwrap().expect("taken");
    let done = flow(&TokenKey::new("github", "done"), Duration::from_secs(600));
    a.insert(&done).await.unwrap();
    a.take(&done.state).await.unwrap().expect("taken");
    let done_outcome = FlowOutcome::Authorized {
        revision: Revision::new(7),
    };
    a.complete(
        &done.key,
        &done.state,
        &done_outcome,
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    let expiring = flow(
        &TokenKey::new("github", "expiring"),
        Duration::from_millis(1),
    );
    a.insert(&expiring).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    checkpoint(&a).await;
    disk.fill();
    say("FULL");

    // Reads still work.
    assert_eq!(
        access_token(&b, &kept).await,
        Some(("kept-1".into(), kept_revision))
    );
    assert_eq!(b.scan(None, 100).await.unwrap().items.len(), 3);
    assert!(b.get_flow(&contested.state).await.unwrap().is_some());
    assert_eq!(
        b.active_flow(&contested.key).await.unwrap(),
        Some(contested.state.clone())
    );
    assert_eq!(
        b.outcome(&done.state).await.unwrap(),
        Some(done_outcome.clone())
    );
    assert_eq!(
        b.wait(&done.state, Duration::from_secs(5)).await.unwrap(),
        Some(done_outcome.clone())
    );

    // Every write fails, and changes nothing.
    refused("put", a.put(&kept, &record("kept-2", 200)).await);
    refused(
        "compare_and_swap",
        a.compare_and_swap(&to_swap, Some(swap_revision), &record("swap-2", 200))
            .await,
    );
    refused(
        "compare_and_swap (create)",
        a.compare_and_swap(&TokenKey::new("github", "new"), None, &record("new", 200))
            .await,
    );
    refused("delete", a.delete(&to_delete).await);
    refused(
        "delete_if_revision",
        a.delete_if_revision(&to_delete, delete_revision).await,
    );
    refused("release_lease", a.release_lease(&held, &held_lease).await);
    let fresh = flow(&TokenKey::new("github", "fresh"), Duration::from_secs(600));
    refused("insert", a.insert(&fresh).await);
    refused(
        "complete",
        a.complete(
            &to_complete.key,
            &to_complete.state,
            &FlowOutcome::Authorized {
                revision: Revision::new(9),
            },
            Duration::from_secs(600),
        )
        .await,
    );
    refused("purge_expired", a.purge_expired().await);

    // Exactly-once and single holder, across two instances, while full:
    // nobody gets the flow or the lease, since none of them committed.
    let mut races = JoinSet::new();
    for i in 0..8 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (state, key) = (contested.state.clone(), leased.clone());
        races.spawn(async move {
            let taken = store.take(&state).await;
            let lease = store
                .try_acquire_lease(&key, Duration::from_secs(600))
                .await;
            (taken.map(|f| f.is_some()), lease.map(|l| l.is_some()))
        });
    }
    while let Some(joined) = races.join_next().await {
        let (taken, lease) = joined.unwrap();
        refused("take", taken);
        refused("try_acquire_lease", lease);
    }

    // Nothing changed.
    assert_eq!(
        access_token(&b, &kept).await,
        Some(("kept-1".into(), kept_revision))
    );
    assert_eq!(
        access_token(&b, &to_swap).await,
        Some(("swap-1".into(), swap_revision))
    );
    assert!(b.get(&to_delete).await.unwrap().is_some());
    assert!(
        b.get(&TokenKey::new("github", "new"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(b.active_flow(&fresh.key).await.unwrap(), None);
    assert!(b.get_flow(&contested.state).await.unwrap().is_some());
    assert_eq!(b.outcome(&to_complete.state).await.unwrap(), None);
    assert_eq!(
        b.wait(&to_complete.state, Duration::from_millis(100))
            .await
            .unwrap(),
        None
    );

    disk.free();
    say("FREED");

    // Everything works again, and the guarantees held through it.
    let mut races = JoinSet::new();
    for i in 0..8 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (state, key) = (contested.state.clone(), leased.clone());
        races.spawn(async move {
            let taken = store.take(&state).await.unwrap().is_some();
            let lease = store
                .try_acquire_lease(&key, Duration::from_secs(600))
                .await
                .unwrap()
                .is_some();
            (taken, lease)
        });
    }
    let (mut takers, mut holders) = (0, 0);
    while let Some(joined) = races.join_next().await {
        let (taken, lease) = joined.unwrap();
        takers += usize::from(taken);
        holders += usize::from(lease);
    }
    assert_eq!(takers, 1, "exactly one take of the contested flow");
    assert_eq!(holders, 1, "exactly one lease holder");
    assert!(
        b.try_acquire_lease(&held, Duration::from_secs(1))
            .await
            .unwrap()
            .is_none(),
        "the lease taken before the disk filled is still held"
    );
    assert!(a.release_lease(&held, &held_lease).await.unwrap());
    let kept_2 = a.put(&kept, &record("kept-2", 200)).await.unwrap();
    assert!(kept_2 > kept_revision);
    assert!(matches!(
        a.compare_and_swap(&to_swap, Some(swap_revision), &record("swap-2", 200))
            .await
            .unwrap(),
        mcp_authkit_core::CasOutcome::Swapped(_)
    ));
    assert!(
        a.delete_if_revision(&to_delete, delete_revision)
            .await
            .unwrap()
    );
    assert_eq!(
        a.insert(&fresh).await.unwrap(),
        mcp_authkit_core::InsertOutcome::Inserted
    );
    let completed = FlowOutcome::Authorized {
        revision: Revision::new(9),
    };
    a.complete(
        &to_complete.key,
        &to_complete.state,
        &completed,
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    assert_eq!(
        b.wait(&to_complete.state, Duration::from_secs(5))
            .await
            .unwrap(),
        Some(completed)
    );
    assert_eq!(a.purge_expired().await.unwrap().flows, 1);
    a.close().await;
    b.close().await;

    // Reopened: whole, consistent, and what was acknowledged.
    let c = SqliteStore::open(&path).await.unwrap();
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(c.pool())
        .await
        .unwrap();
    assert_eq!(integrity, "ok");
    assert_eq!(
        access_token(&c, &kept).await,
        Some(("kept-2".into(), kept_2))
    );
    assert_eq!(
        access_token(&c, &to_swap).await.map(|(token, _)| token),
        Some("swap-2".into())
    );
    assert!(c.get(&to_delete).await.unwrap().is_none());
    assert!(c.get_flow(&contested.state).await.unwrap().is_none());
    assert!(c.get_flow(&fresh.state).await.unwrap().is_some());

    // The disk fills under the store's own writes: every put it
    // acknowledged is there after a reopen, and no refused one is.
    checkpoint(&c).await;
    disk.leave_room(256 * 1024, &path);
    say("FILLING");
    let mut acknowledged = BTreeMap::new();
    let mut refusals = 0;
    for i in 0..60 {
        let key = TokenKey::new("bulk", format!("user-{i}"));
        match c.put(&key, &record(&format!("bulk-{i}"), 60 * 1024)).await {
            Ok(revision) => {
                acknowledged.insert(key, revision);
            }
            Err(error) => {
                refused("put (filling)", Err::<(), _>(error));
                refusals += 1;
            }
        }
    }
    assert!(
        refusals > 0,
        "the disk filled up ({} puts acknowledged)",
        acknowledged.len()
    );
    c.close().await;
    disk.free();
    let d = Arc::new(SqliteStore::open(&path).await.unwrap());
    for i in 0..60 {
        let key = TokenKey::new("bulk", format!("user-{i}"));
        let stored = access_token(&d, &key).await;
        match acknowledged.get(&key) {
            Some(revision) => assert_eq!(
                stored,
                Some((format!("bulk-{i}"), *revision)),
                "an acknowledged put is on disk"
            ),
            None => assert_eq!(stored, None, "a refused put left nothing"),
        }
    }
    say(&format!(
        "BULK acknowledged={} refused={refusals}",
        acknowledged.len()
    ));
}
