//! A private PostgreSQL cluster for tests that must not touch the shared
//! server: a restart, another authentication method, a full disk. initdb +
//! pg_ctl on its own port and data directory; the server runs as user
//! `postgres` when the tests run as root (PostgreSQL refuses root).

use std::path::{Path, PathBuf};
use std::process::Command;

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

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A private cluster in a temp dir; stopped (immediately) when dropped.
pub struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    pub port: u16,
    /// Locked while the cluster may use `port`; released after it stopped.
    port_lock: Option<std::fs::File>,
    dir: Option<tempfile::TempDir>,
}

/// The private clusters' ports: a fixed range, so a leftover server is
/// easy to tell from anything else.
const PORTS: std::ops::RangeInclusive<u16> = 5450..=5459;

/// A port of [`PORTS`] that no other cluster of any test process holds (a
/// `flock`ed file per port) and that nothing else listens on, with its
/// lock. A port from `bind(:0)`, released before the server starts, could
/// be taken in between by a concurrent test's server.
fn claim_port() -> (u16, std::fs::File) {
    claim_port_in(PORTS)
}

/// [`claim_port`] among `ports`.
fn claim_port_in(ports: std::ops::RangeInclusive<u16>) -> (u16, std::fs::File) {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        for port in ports.clone() {
            let file = port_lock_file(port);
            // Held by a live cluster of some test process.
            if file.try_lock().is_err() {
                continue;
            }
            // Free, yet something listens: a server of a run killed before
            // its Drop ran; it would hold the port for good.
            let bindable = || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
            if bindable() || (stop_leftover(port) && bindable()) {
                return (port, file);
            }
        }
        assert!(
            std::time::Instant::now() < give_up,
            "every port of {ports:?} stayed taken for 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The file whose `flock` says a cluster of some test process uses `port`.
fn port_lock_file(port: u16) -> std::fs::File {
    let path = std::env::temp_dir().join(format!("mcp-authkit-test-pg-port-{port}.lock"));
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap()
}

/// Stops the server a killed test run left on `port` (whose lock the caller
/// holds) and removes what it left behind: its temp folder and the tmpfs
/// of a tablespace it used. Only a server this file started is touched: a
/// `postgres` process whose command line has `-p <port>` and its socket
/// folder (`-k`) the temp folder above its data directory. Returns whether
/// one was found.
pub fn stop_leftover(port: u16) -> bool {
    let Some(data) = leftover_data_dir(port) else {
        return false;
    };
    let tablespaces: Vec<PathBuf> = std::fs::read_dir(data.join("pg_tblspc"))
        .into_iter()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .collect();
    if let Some(bin) = bindir() {
        let _ = Cluster::run(
            &bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "stop",
                "-m",
                "immediate",
                "-w",
            ],
        );
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for location in tablespaces {
        // The tmpfs is the mount point the tablespace lives in, made by
        // `Tmpfs::mount` as `<temp folder>/disk`.
        let Some(disk) = location
            .ancestors()
            .find(|dir| mounts.lines().any(|m| m.split(' ').nth(1) == dir.to_str()))
        else {
            continue;
        };
        if disk.file_name() == Some("disk".as_ref())
            && disk.parent().and_then(Path::parent) == Some(std::env::temp_dir().as_path())
        {
            let _ = Command::new("umount").arg("-l").arg(disk).status();
            let _ = std::fs::remove_dir_all(disk.parent().unwrap());
        }
    }
    let _ = std::fs::remove_dir_all(data.parent().unwrap());
    eprintln!("stopped a PostgreSQL server a killed test run left on port {port}");
    true
}

/// The data directory of the leftover server of [`stop_leftover`].
fn leftover_data_dir(port: u16) -> Option<PathBuf> {
    let port = port.to_string();
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let cmdline = std::fs::read(entry.ok()?.path().join("cmdline")).ok()?;
        let args: Vec<&str> = cmdline
            .split(|b| *b == 0)
            .map(|arg| std::str::from_utf8(arg).unwrap_or(""))
            .collect();
        let after = |flag: &str| {
            let at = args.iter().position(|arg| *arg == flag)?;
            args.get(at + 1).copied()
        };
        if !args.first()?.ends_with("postgres") || after("-p")? != port {
            return None;
        }
        let data = PathBuf::from(after("-D")?);
        let folder = data.parent()?;
        (after("-k")? == folder.to_str()? && folder.parent()? == std::env::temp_dir())
            .then_some(data)
    })
}

impl Cluster {
    /// Runs a server binary, as `postgres` when this is root (initdb and
    /// the server refuse root).
    pub fn run(bin: &Path, program: &str, args: &[&str]) -> std::process::Output {
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

    /// A started cluster, or `None` with a note when initdb and pg_ctl are
    /// missing; with `CI=true` their absence fails the test instead.
    pub fn start_new_or_explain() -> Option<Cluster> {
        Self::start_new_with_or_explain("")
    }

    /// [`Cluster::start_new_or_explain`] with `settings` (postgresql.conf
    /// lines) added before the first start: settings such as
    /// `shared_preload_libraries` take effect only at server start.
    pub fn start_new_with_or_explain(settings: &str) -> Option<Cluster> {
        let cluster = Self::start_new_with(settings);
        if cluster.is_none() {
            assert!(
                !crate::common::ci(),
                "CI=true: this test starts a private PostgreSQL cluster and needs initdb and \
                 pg_ctl (apt-get install postgresql)"
            );
            eprintln!("NOT RUN: no initdb/pg_ctl here to start a private cluster");
        }
        cluster
    }

    fn start_new_with(settings: &str) -> Option<Cluster> {
        let bin = bindir()?;
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let data = dir.path().join("data");
        let (port, port_lock) = claim_port();
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
        if !settings.is_empty() {
            use std::io::Write;
            let mut conf = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .unwrap();
            writeln!(conf, "{settings}").unwrap();
        }
        let cluster = Cluster {
            bin,
            data,
            port,
            port_lock: Some(port_lock),
            dir: Some(dir),
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

    pub fn start(&self) {
        self.pg_ctl(&["start"]);
    }

    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast"]);
    }

    /// Replaces pg_hba.conf with `rules` and makes the server read it;
    /// returns once a login as `needs_password` with a wrong password is
    /// refused (the reload is a signal the server handles when it gets to
    /// it, not before `pg_ctl reload` returns).
    pub async fn set_hba(&self, rules: &str, needs_password: &str) {
        std::fs::write(self.data.join("pg_hba.conf"), rules).unwrap();
        self.pg_ctl(&["reload"]);
        let wrong: sqlx::postgres::PgConnectOptions = self.url(needs_password).parse().unwrap();
        let wrong = wrong.password("certainly-not-the-password");
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match <sqlx::PgConnection as sqlx::Connection>::connect_with(&wrong).await {
                Err(_) => return,
                Ok(conn) => {
                    let _ = sqlx::Connection::close(conn).await;
                    assert!(
                        std::time::Instant::now() < give_up,
                        "the server did not apply the new pg_hba.conf within 10 s"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// A connection as the cluster's superuser (trust on loopback).
    pub async fn admin(&self) -> sqlx::PgConnection {
        <sqlx::PgConnection as sqlx::Connection>::connect(&self.url("postgres"))
            .await
            .expect("a superuser connection to the private cluster")
    }

    pub fn url(&self, user: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/postgres", self.port)
    }
}

impl Cluster {
    /// What SIGKILL leaves of a test run's cluster: the server still
    /// running and its folder, the port's lock released.
    fn abandon(mut self) -> PathBuf {
        drop(self.port_lock.take());
        let folder = self.dir.take().unwrap().keep();
        std::mem::forget(self);
        folder
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

/// A tmpfs of a fixed size owned by the user the server runs as, for a
/// tablespace whose disk fills up; unmounted when dropped. Declare it
/// before the cluster that uses it, so the cluster stops first. Needs root.
pub struct Tmpfs {
    pub path: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`), or `None` when this
    /// process may not mount (not root).
    pub fn mount(size: &str) -> Option<Tmpfs> {
        if !is_root() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // The server's user must reach the mount point.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let owner = |flag: &str| {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!(
                "size={size},mode=0700,uid={},gid={}",
                owner("-u"),
                owner("-g")
            ))
            .arg("tmpfs")
            .arg(&path)
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!("mount -t tmpfs failed: {out:?}");
            return None;
        }
        Some(Tmpfs {
            path,
            dir: Some(dir),
        })
    }

    /// Fills every byte left with a file of its own; removing that file
    /// frees the space again.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        for chunk in [1 << 20, 64 * 1024, 4096, 512, 1] {
            let bytes = vec![0u8; chunk];
            while file.write_all(&bytes).is_ok() {}
        }
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A run killed before its clusters' Drop ran leaves their servers on
/// ports whose lock is free again (and, from the full-disk test, a tmpfs
/// mounted): without a sweep each such run costs a port of [`PORTS`] for
/// good, until claims wait two minutes and fail.
#[tokio::test]
async fn a_server_left_by_a_killed_run_is_stopped_when_its_port_is_claimed() {
    let disk = Tmpfs::mount("4m");
    let Some(cluster) = Cluster::start_new_or_explain() else {
        return;
    };
    if let Some(disk) = &disk {
        let mut admin = cluster.admin().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLESPACE leftover LOCATION '{}'",
            disk.path.display()
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }
    let port = cluster.port;
    let folder = cluster.abandon();
    let disk = disk.map(|mut disk| {
        let dir = disk.dir.take().unwrap().keep();
        let path = disk.path.clone();
        std::mem::forget(disk);
        (path, dir)
    });
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_err(),
        "the abandoned server still listens"
    );

    let (claimed, _lock) = claim_port_in(port..=port);
    assert_eq!(claimed, port, "the port is claimed again");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the port is free again"
    );
    assert!(!folder.exists(), "its folder is removed");
    if let Some((path, dir)) = disk {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        assert!(
            !mounts.lines().any(|m| m.split(' ').nth(1) == path.to_str()),
            "its tablespace's tmpfs is unmounted"
        );
        assert!(!dir.exists(), "the tmpfs's folder is removed");
    }
    assert!(!stop_leftover(port), "nothing is left on the port");
}
