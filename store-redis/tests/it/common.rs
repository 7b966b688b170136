//! What the integration tests share: stores on unique prefixes that clean up
//! after themselves, a raw connection to inspect Redis, `CLIENT LIST`
//! parsing, and private `redis-server` processes a test may stop, kill and
//! restart without touching the shared server other tests use.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mcp_authkit_store_redis::{RedisStore, RedisStoreBuilder, testing};

/// A random suffix for names.
pub fn random() -> String {
    mcp_authkit_core::random_urlsafe(9).replace(['-', '_'], "x")
}

/// A client name no other test uses, so `CLIENT LIST` and `CLIENT KILL`
/// can single out this test's connections.
pub fn unique_client_name(label: &str) -> String {
    format!("mcp-authkit-test-{label}-{}", random())
}

/// Removes every key of a prefix when dropped, also when the test fails.
pub struct Namespace {
    url: String,
    prefix: String,
}

impl Namespace {
    /// A fresh prefix on `url`.
    pub fn new(url: &str, label: &str) -> Self {
        Namespace {
            url: url.to_owned(),
            prefix: testing::unique_prefix(label),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A builder for a store on this namespace.
    pub fn builder(&self) -> RedisStoreBuilder {
        RedisStore::builder(&self.url).prefix(&self.prefix)
    }

    /// A store on this namespace with default settings.
    pub async fn store(&self) -> RedisStore {
        self.builder().connect().await.expect("connect to redis")
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Synchronous, so it also runs while a failing test unwinds. The
        // random part of the prefix keeps the pattern from matching any
        // other run's keys.
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            return;
        };
        let pattern = format!("{}:*", self.prefix);
        let mut cursor = 0u64;
        loop {
            let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query(&mut connection)
            else {
                return;
            };
            if !keys.is_empty() {
                let _: redis::RedisResult<i64> =
                    redis::cmd("DEL").arg(&keys).query(&mut connection);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

/// The shared test server's URL.
pub async fn shared_url() -> String {
    testing::redis_url().await
}

/// A plain connection for inspecting and arranging data.
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection to redis")
}

/// One line of `CLIENT LIST`.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub id: u64,
    pub name: String,
    pub subscriptions: u64,
}

/// The connections named `name`.
pub async fn clients_named(url: &str, name: &str) -> Vec<ClientInfo> {
    let mut connection = raw(url).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut connection)
        .await
        .unwrap();
    list.lines()
        .filter_map(|line| {
            let field = |key: &str| {
                line.split(' ')
                    .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            let info = ClientInfo {
                id: field("id")?.parse().ok()?,
                name: field("name")?,
                subscriptions: field("sub")?.parse().ok()?,
            };
            (info.name == name).then_some(info)
        })
        .collect()
}

/// Kills the connections named `name` (only those); returns how many.
pub async fn kill_clients_named(url: &str, name: &str) -> usize {
    let mut connection = raw(url).await;
    let clients = clients_named(url, name).await;
    for client in &clients {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(client.id)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    clients.len()
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the subscription connection of the store named `name` is up.
pub async fn subscribed(url: &str, name: &str) {
    eventually(Duration::from_secs(10), "the subscription", || async {
        clients_named(url, name)
            .await
            .iter()
            .any(|client| client.subscriptions > 0)
    })
    .await;
}

/// A free TCP port on the loopback interface (free when this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of this test alone, in its own temporary directory.
pub struct PrivateRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts a server on a free port with `extra` arguments; `{dir}` in an
    /// argument stands for the server's directory.
    pub fn start(extra: &[&str]) -> PrivateRedis {
        let dir = tempfile::tempdir().unwrap();
        let extra = extra
            .iter()
            .map(|arg| arg.replace("{dir}", dir.path().to_str().unwrap()))
            .collect();
        let mut server = PrivateRedis {
            port: free_port(),
            dir,
            extra,
            child: None,
        };
        server.launch();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        let socket = format!("127.0.0.1:{}", self.port);
        loop {
            if let Ok(mut stream) = std::net::TcpStream::connect(&socket) {
                use std::io::{Read, Write};
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                let mut answer = [0u8; 5];
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read_exact(&mut answer).is_ok()
                    && &answer == b"+PONG"
                {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the private redis-server on {socket} did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> String {
        self.child.as_ref().expect("running").id().to_string()
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        signal(&self.pid(), "-STOP");
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// A path in the server's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: &str, which: &str) {
    let status = Command::new("kill").args([which, pid]).status().unwrap();
    assert!(status.success(), "kill {which} {pid}");
}

/// A TCP proxy in front of a Redis server that can cut every connection
/// through it and refuse new ones for a while: a network partition between
/// one replica and Redis, while other replicas still reach it. It listens
/// on a port the OS picks.
pub struct Proxy {
    pub port: u16,
    refusing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Bumped to cut every open connection.
    cuts: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// How many more script calls (`EVALSHA`) have their reply lost.
    losing: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// How many replies were lost so far.
    lost: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to the server on `127.0.0.1:upstream_port`.
    pub async fn start(upstream_port: u16) -> Proxy {
        use std::sync::atomic::Ordering;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let refusing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cuts = std::sync::Arc::new(tokio::sync::watch::Sender::new(0u64));
        let losing = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepting = {
            let (refusing, cuts) = (refusing.clone(), cuts.clone());
            let (losing, lost) = (losing.clone(), lost.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        return;
                    };
                    if refusing.load(Ordering::SeqCst) {
                        // Closed at once: the connection attempt fails.
                        drop(client);
                        continue;
                    }
                    let mut cut = cuts.subscribe();
                    let (losing, lost) = (losing.clone(), lost.clone());
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let Ok(server) =
                            tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                        else {
                            return;
                        };
                        let (mut from_client, mut to_client) = client.split();
                        let (mut from_server, mut to_server) = server.into_split();
                        // Set when a script call went up whose reply is lost.
                        let lose_reply = std::sync::atomic::AtomicBool::new(false);
                        let up = async {
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                let n = match from_client.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                let script = buf[..n].windows(7).any(|w| w == b"EVALSHA");
                                if script
                                    && losing
                                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                                            left.checked_sub(1)
                                        })
                                        .is_ok()
                                {
                                    // Before it goes up: its reply comes after.
                                    lose_reply.store(true, Ordering::SeqCst);
                                }
                                if to_server.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        };
                        let down = async {
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                let n = match from_server.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                if lose_reply.load(Ordering::SeqCst) {
                                    // The server ran it; the client never
                                    // hears: the connection drops instead.
                                    lost.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                                if to_client.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        };
                        tokio::select! {
                            _ = up => {}
                            _ = down => {}
                            _ = cut.changed() => {}
                        }
                        // Both sockets close here.
                    });
                }
            })
        };
        Proxy {
            port,
            refusing,
            cuts,
            losing,
            lost,
            accepting,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Refuses (closes at once) every new connection while `on`.
    pub fn refuse(&self, on: bool) {
        self.refusing.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Loses the replies of the next `count` script calls (`EVALSHA`): each
    /// goes to the server, which runs it, and its connection drops before
    /// the reply reaches the client.
    pub fn lose_replies_to_scripts(&self, count: usize) {
        self.losing
            .store(count, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many replies were lost so far.
    pub fn lost_replies(&self) -> usize {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes every connection open through the proxy.
    pub fn cut_all(&self) {
        self.cuts.send_modify(|generation| *generation += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut_all();
    }
}
