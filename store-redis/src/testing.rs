//! Helpers for tests that need a Redis server (feature `testing`).
//!
//! [`redis_url`] finds one: `REDIS_URL` (default `redis://127.0.0.1:6379`)
//! if it answers; otherwise, with the `testcontainers` feature and outside
//! CI, a `redis:7` container started with the `docker` command line;
//! otherwise the test fails with a message that says how to provide one. A
//! test never skips silently for want of Redis.
//!
//! Give every test its own [`unique_prefix`] and remove its keys afterwards
//! with [`RedisStore::delete_namespace`](crate::RedisStore::delete_namespace),
//! so parallel runs on one server never collide.

use std::time::Duration;

use tokio::sync::OnceCell;

/// Where tests look for Redis when `REDIS_URL` is not set.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// How long a probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A key prefix no other test run uses: `mcp-authkit-test:{label}:{random}`.
pub fn unique_prefix(label: &str) -> String {
    format!(
        "mcp-authkit-test:{label}:{}",
        mcp_authkit_core::random_urlsafe(9)
    )
}

/// The URL of a Redis server for tests; panics, saying how to provide one,
/// when there is none. The answer is found once per process.
pub async fn redis_url() -> String {
    static URL: OnceCell<String> = OnceCell::const_new();
    URL.get_or_init(find_redis).await.clone()
}

async fn find_redis() -> String {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let error = match probe(&url).await {
        Ok(()) => return url,
        Err(error) => error,
    };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    #[cfg(feature = "testcontainers")]
    if !ci {
        match container::start().await {
            Ok(url) => return url,
            Err(container_error) => panic!(
                "{}\n(starting a Redis container failed too: {container_error})",
                missing_redis_message(&url, &error, ci)
            ),
        }
    }
    panic!("{}", missing_redis_message(&url, &error, ci));
}

/// Whether a Redis server answers PING at `url` within two seconds.
pub async fn probe(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(PROBE_TIMEOUT))
        .set_response_timeout(Some(PROBE_TIMEOUT));
    let attempt = async {
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("PING").exec_async(&mut connection).await
    };
    match tokio::time::timeout(PROBE_TIMEOUT * 2, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {:?}", PROBE_TIMEOUT * 2)),
    }
}

/// The URL of a Redis Cluster for tests (`redis+cluster://...`); panics,
/// saying how to provide one, when there is none. Found once per process:
/// `REDIS_CLUSTER_URL` if set (it must answer); otherwise the cluster of
/// `scripts/redis-cluster.sh` (in this repository), started by that script
/// when it is not running and `redis-server` is installed. The script's
/// cluster keeps running after the tests, for later runs and for the child
/// processes of the cross-process tests; `scripts/redis-cluster.sh stop`
/// stops it (`.ci/run` does).
pub async fn redis_cluster_url() -> String {
    static URL: OnceCell<String> = OnceCell::const_new();
    URL.get_or_init(find_cluster).await.clone()
}

/// Where the repository's cluster script is, when this crate is built from
/// the repository.
fn cluster_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-cluster.sh")
}

async fn find_cluster() -> String {
    if let Ok(url) = std::env::var("REDIS_CLUSTER_URL") {
        match probe_cluster(&url).await {
            Ok(()) => return url,
            Err(error) => panic!("{}", missing_cluster_message(Some(&url), &error)),
        }
    }
    let script = cluster_script();
    if !script.exists() {
        panic!(
            "{}",
            missing_cluster_message(None, "REDIS_CLUSTER_URL is not set")
        );
    }
    // The script takes a lock, so test processes starting at once share one
    // cluster; it returns at once when the cluster already runs.
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .arg("start")
        .output()
        .await;
    let output = match output {
        Ok(output) if output.status.success() => output,
        Ok(output) => panic!(
            "{}",
            missing_cluster_message(
                None,
                &format!(
                    "{} start failed: {}",
                    script.display(),
                    String::from_utf8_lossy(&output.stderr).trim()
                )
            )
        ),
        Err(error) => panic!(
            "{}",
            missing_cluster_message(None, &format!("running {}: {error}", script.display()))
        ),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(url) = stdout
        .lines()
        .find_map(|line| line.strip_prefix("REDIS_CLUSTER_URL="))
    else {
        panic!(
            "{} start printed no REDIS_CLUSTER_URL: {stdout}",
            script.display()
        );
    };
    if let Err(error) = probe_cluster(url).await {
        panic!("{}", missing_cluster_message(Some(url), &error));
    }
    // Child processes (the cross-process scenario) find it the same way.
    url.to_owned()
}

/// Whether a Redis Cluster answers at `url` (a `redis+cluster://` URL),
/// with every slot covered.
pub async fn probe_cluster(url: &str) -> Result<(), String> {
    let store = crate::RedisStore::builder(url)
        .connect_timeout(PROBE_TIMEOUT)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let info: String = store
        .inner
        .query(redis::cmd("CLUSTER").arg("INFO"))
        .await
        .map_err(|e| e.to_string())?;
    if info.lines().any(|line| line.trim() == "cluster_state:ok") {
        Ok(())
    } else {
        Err("the cluster's state is not ok (slots uncovered or nodes failing)".into())
    }
}

/// What a test says when it finds no Redis Cluster.
pub fn missing_cluster_message(url: Option<&str>, error: &str) -> String {
    let address = url.map(|url| url.rsplit('@').next().unwrap_or(url));
    let mut message = match address {
        Some(address) => format!("no Redis Cluster answers at {address} ({error})."),
        None => format!("no Redis Cluster for the tests ({error})."),
    };
    message.push_str(
        " These tests need a Redis 7 cluster:\n\
         - install redis-server (7.0 or newer) and let the tests start one with \
         scripts/redis-cluster.sh (six nodes on ports 7100-7105), or start it yourself: \
         `scripts/redis-cluster.sh start`, or\n\
         - point REDIS_CLUSTER_URL at one, e.g. \
         `REDIS_CLUSTER_URL=redis+cluster://127.0.0.1:7000,127.0.0.1:7001 cargo test`",
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        message.push_str("\nCI=true: tests never skip; the CI script must provide the cluster.");
    }
    message
}

/// What a test says when it finds no Redis.
pub fn missing_redis_message(url: &str, error: &str, ci: bool) -> String {
    let address = url.rsplit('@').next().unwrap_or(url);
    let mut message = format!(
        "no Redis server answers at {address} ({error}). These tests need Redis 6.2 or newer:\n\
         - start one: `redis-server --port 6379 --save '' --appendonly no` \
         (or `docker run --rm -p 6379:6379 redis:7`), or\n\
         - point REDIS_URL at one, e.g. `REDIS_URL=redis://127.0.0.1:6380 cargo test`"
    );
    if ci {
        message.push_str(
            "\nCI=true: tests never skip or start containers in CI; the CI script must start \
             Redis (.ci/run does).",
        );
    } else {
        message.push_str(
            ",\n- or, with a Docker engine, enable the `testcontainers` feature of \
             mcp-authkit-store-redis to start one in a container.",
        );
    }
    message
}

/// The Docker fallback: a throwaway `redis:7` container, started through
/// the `docker` command line (no Docker client library is compiled).
#[cfg(feature = "testcontainers")]
mod container {
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// The container's name. It is kept running after the tests, so later
    /// runs and the child processes of the cross-process tests (which find
    /// it by name) reuse it; `docker stop mcp-authkit-test-redis` removes it.
    const NAME: &str = "mcp-authkit-test-redis";

    fn docker(args: &[&str]) -> Result<String, String> {
        let output = Command::new("docker")
            .args(args)
            .output()
            .map_err(|e| format!("running `docker`: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(format!(
                "`docker {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// The URL of the running container, if there is one.
    fn running() -> Option<String> {
        // `docker port` prints e.g. "127.0.0.1:49153".
        let address = docker(&["port", NAME, "6379/tcp"]).ok()?;
        let address = address.lines().next()?.trim().to_owned();
        Some(format!("redis://{address}"))
    }

    pub(super) async fn start() -> Result<String, String> {
        let url = tokio::task::spawn_blocking(|| {
            if let Some(url) = running() {
                return Ok(url);
            }
            let started = docker(&[
                "run",
                "--detach",
                "--rm",
                "--name",
                NAME,
                "--publish",
                "127.0.0.1::6379",
                "redis:7",
            ]);
            // Another test process may have started it at the same moment.
            running().ok_or_else(|| started.err().unwrap_or_else(|| "no port published".into()))
        })
        .await
        .map_err(|e| e.to_string())??;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match super::probe(&url).await {
                Ok(()) => break,
                Err(error) if Instant::now() > deadline => {
                    return Err(format!("container {NAME} at {url} did not answer: {error}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        eprintln!(
            "[mcp-authkit-store-redis] using Redis in container {NAME} at {url}; it keeps \
             running for the next run (docker stop {NAME} removes it)"
        );
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_redis_message_says_how_to_provide_one() {
        let message = missing_redis_message("redis://:hunter2@10.0.0.1:6379", "refused", true);
        assert!(message.contains("REDIS_URL"), "{message}");
        assert!(message.contains("redis-server"), "{message}");
        assert!(message.contains("CI=true"), "{message}");
        assert!(!message.contains("hunter2"), "no password: {message}");
        let local = missing_redis_message(DEFAULT_URL, "refused", false);
        assert!(local.contains("testcontainers"), "{local}");
    }

    #[tokio::test]
    async fn a_probe_of_a_closed_port_fails_quickly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let started = std::time::Instant::now();
        assert!(probe(&format!("redis://127.0.0.1:{port}")).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
