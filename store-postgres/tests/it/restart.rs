//! A restart of the server: a private cluster (initdb + pg_ctl on its own
//! port and data directory, never the shared server), stopped and started
//! under a running store.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mcp_authkit_core::{
    FlowOutcome, PendingStore, Revision, Timestamp, TokenKey, TokenRecord, TokenStore,
};
use mcp_authkit_store_postgres::PostgresStore;

use crate::common::{eventually, flow};

const MINUTE: Duration = Duration::from_secs(60);

fn bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    if dir.join("initdb").exists() {
        return Some(dir);
    }
    // Debian keeps the server binaries out of PATH.
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .find(|bin| bin.join("initdb").exists())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A private cluster in a temp dir; stopped (immediately) when dropped.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Runs a server binary, as `postgres` when this is root (initdb and
    /// the server refuse root).
    fn run(bin: &Path, program: &str, args: &[&str]) -> std::process::Output {
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join(program));
            c
        } else {
            Command::new(bin.join(program))
        };
        command
            .args(args)
            .output()
            .expect("run a PostgreSQL program")
    }

    fn start_new() -> Option<Cluster> {
        let bin = bindir()?;
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let data = dir.path().join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let init = Self::run(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        assert!(init.status.success(), "initdb: {init:?}");
        let cluster = Cluster {
            bin,
            data,
            port,
            _dir: dir,
        };
        cluster.start();
        Some(cluster)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let log = self.data.parent().unwrap().join("server.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.data.parent().unwrap().display()
        );
        let mut all = vec!["-D", self.data.to_str().unwrap(), "-w", "-t", "30"];
        all.extend_from_slice(args);
        if args.contains(&"start") {
            all.extend_from_slice(&["-o", &options, "-l", log.to_str().unwrap()]);
        }
        let out = Self::run(&self.bin, "pg_ctl", &all);
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {out:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn start(&self) {
        self.pg_ctl(&["start"]);
    }

    fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast"]);
    }

    fn url(&self, user: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Self::run(
            &self.bin,
            "pg_ctl",
            &["-D", self.data.to_str().unwrap(), "stop", "-m", "immediate"],
        );
    }
}

#[tokio::test]
async fn the_store_survives_a_server_restart() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let Some(cluster) = Cluster::start_new() else {
        assert!(
            !ci,
            "CI=true: this test starts a private PostgreSQL cluster and needs initdb and pg_ctl \
             (apt-get install postgresql)"
        );
        eprintln!("NOT RUN: no initdb/pg_ctl here to start a private cluster");
        return;
    };
    let store = PostgresStore::options(&cluster.url("postgres"))
        .schema("restart")
        .connect_timeout(Duration::from_secs(3))
        .open()
        .await
        .unwrap();
    // Another role completes flows: another listener hub in this process,
    // so its completions reach the waiter only through NOTIFY.
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&cluster.url("postgres"))
        .await
        .unwrap();
    sqlx::raw_sql("CREATE ROLE other LOGIN SUPERUSER")
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);
    let key = TokenKey::new("github", "alice");
    let before = store
        .put(
            &key,
            &TokenRecord::new("kept", Timestamp::now()).with_refresh_token("rt"),
        )
        .await
        .unwrap();
    let f = flow(&key, MINUTE);
    store.insert(&f).await.unwrap();
    let waiter = {
        let (store, state) = (store.clone(), f.state.clone());
        tokio::spawn(async move { store.wait(&state, MINUTE).await })
    };
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_some())
        .await
    );
    let first_epoch = store.listener_epoch().unwrap();

    cluster.stop();
    let error = store.get(&key).await.expect_err("the server is down");
    assert!(error.is_retryable(), "{error}");
    assert!(
        eventually(Duration::from_secs(10), async || store
            .listener_epoch()
            .is_none())
        .await,
        "the listener sees the server go"
    );
    cluster.start();

    // Reads work again once the server is back, and nothing was lost.
    let read = eventually(Duration::from_secs(20), async || {
        store.get(&key).await.is_ok()
    })
    .await;
    assert!(read, "the store reconnects");
    assert_eq!(store.get(&key).await.unwrap().unwrap().revision, before);
    assert!(
        eventually(Duration::from_secs(20), async || store
            .listener_epoch()
            .is_some_and(|e| e > first_epoch))
        .await,
        "the listener is back"
    );
    let other = PostgresStore::options(&cluster.url("other"))
        .schema("restart")
        .open()
        .await
        .unwrap();
    other
        .take(&f.state)
        .await
        .unwrap()
        .expect("the flow survived");
    let outcome = FlowOutcome::Authorized {
        revision: Revision::new(9),
    };
    other
        .complete(&key, &f.state, &outcome, MINUTE)
        .await
        .unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter wakes after the restart");
    assert_eq!(woken.unwrap().unwrap(), Some(outcome));
    let after = store
        .put(&key, &TokenRecord::new("new", Timestamp::now()))
        .await
        .unwrap();
    assert!(after > before, "revisions still grow after the restart");
}
