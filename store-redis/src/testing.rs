//! Helpers for tests that need a Redis server (feature `testing`).
//!
//! [`redis_url`] finds one: `REDIS_URL` (default `redis://127.0.0.1:6379`)
//! if it answers; otherwise, outside CI, when the tests were built with
//! `--cfg mcp_authkit_containers` and a Docker engine runs, a `redis:7`
//! container started through testcontainers; otherwise the test fails with
//! a message that says how to provide one. A test never skips silently for
//! want of Redis.
//!
//! Give every test its own [`unique_prefix`] and remove its keys afterwards
//! with [`RedisStore::delete_namespace`](crate::RedisStore::delete_namespace),
//! so parallel runs on one server never collide.

use std::time::Duration;

use mcp_authkit_core::testing::container::{self, Unavailable};
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
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    locate_redis(&url, ci)
        .await
        .unwrap_or_else(|message| panic!("{message}"))
}

/// The Redis for tests: `url` if it answers; else, outside CI, a container
/// (core's [`container`]); else the message that says how to provide one.
async fn locate_redis(url: &str, ci: bool) -> Result<String, String> {
    let error = match probe(url).await {
        Ok(()) => return Ok(url.to_owned()),
        Err(error) => error,
    };
    if ci {
        return Err(missing_redis_message(url, &error, ci));
    }
    match container_url().await {
        Ok(container_url) => Ok(container_url),
        Err(Unavailable::Failed(why)) => Err(format!(
            "no Redis server answers at {} ({error}) and {why}: start Redis or set REDIS_URL. {}",
            address_of(url),
            how_to_provide_redis(ci)
        )),
        Err(_) => Err(missing_redis_message(url, &error, ci)),
    }
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
    format!(
        "no Redis server answers at {} ({error}). {}",
        address_of(url),
        how_to_provide_redis(ci)
    )
}

/// Where `url` points, without a password.
fn address_of(url: &str) -> &str {
    url.rsplit('@').next().unwrap_or(url)
}

fn how_to_provide_redis(ci: bool) -> String {
    let mut message = String::from(
        "These tests need Redis 6.2 or newer:\n\
         - start one: `redis-server --port 6379 --save '' --appendonly no` \
         (or `docker run --rm -p 6379:6379 redis:7`), or\n\
         - point REDIS_URL at one, e.g. `REDIS_URL=redis://127.0.0.1:6380 cargo test`",
    );
    if ci {
        message.push_str(
            "\nCI=true: tests never skip or start containers in CI; the CI script must start \
             Redis (.ci/run does).",
        );
    } else {
        message.push_str(&container::hint("redis:7"));
    }
    message
}

/// The URL of the test container, started (or found) once per process:
/// every caller in this process, tests of the fallback included, shares the
/// one attempt, so no two of them race to create the named container.
async fn container_url() -> Result<String, Unavailable> {
    static CONTAINER: OnceCell<Result<String, Unavailable>> = OnceCell::const_new();
    CONTAINER.get_or_init(start_container).await.clone()
}

/// How long a started or restarted container may take to answer.
#[cfg(mcp_authkit_containers)]
const CONTAINER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A `redis:7` container (core's `testing::container`), outside CI.
async fn start_container() -> Result<String, Unavailable> {
    #[cfg(mcp_authkit_containers)]
    {
        use testcontainers_modules::redis::{REDIS_PORT, Redis};
        use testcontainers_modules::testcontainers::ImageExt;
        let (host, port) = container::start(
            || Redis::default().with_tag("7"),
            "mcp-authkit-test-redis-loopback",
            REDIS_PORT,
        )
        .await?;
        let url = format!("redis://{host}:{port}");
        // A reused container that was stopped has just been restarted,
        // with no wait for its server: give it time to come up.
        let deadline = tokio::time::Instant::now() + CONTAINER_READY_TIMEOUT;
        loop {
            match probe(&url).await {
                Ok(()) => return Ok(url),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(Unavailable::Failed(format!(
                        "its Redis container at {url} did not answer within \
                         {CONTAINER_READY_TIMEOUT:?} ({e})"
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
    #[cfg(not(mcp_authkit_containers))]
    Err(Unavailable::NotBuilt)
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
        assert!(local.contains("Docker engine"), "{local}");
        if !container::BUILT {
            assert!(local.contains("--cfg mcp_authkit_containers"), "{local}");
        }
    }

    fn closed_port_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("redis://:hunter2@127.0.0.1:{port}")
    }

    #[tokio::test]
    async fn with_no_server_in_ci_the_failure_says_ci_must_start_one() {
        let url = closed_port_url();
        let message = locate_redis(&url, true).await.unwrap_err();
        assert!(message.contains("CI=true"), "{message}");
        assert!(message.contains("REDIS_URL"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        // No container is tried in CI (a failed try would show as "could
        // not use Docker" in the message).
        assert!(!message.contains("could not use Docker"), "{message}");
    }

    /// Outside CI the fallback is tried. The test does not predict whether
    /// a Docker engine is there (testcontainers decides that its own way):
    /// a container it got must answer; a failure must say what was lacking
    /// and how to provide Redis instead.
    #[tokio::test]
    async fn with_no_server_outside_ci_the_container_fallback_says_what_it_lacked() {
        let message = match locate_redis(&closed_port_url(), false).await {
            Ok(found) => {
                if !container::BUILT {
                    panic!("a container without the cfg: {found}");
                }
                probe(&found).await.unwrap();
                return;
            }
            Err(message) => message,
        };
        assert!(
            message.contains("no Redis server answers at 127.0.0.1:"),
            "{message}"
        );
        assert!(message.contains("REDIS_URL"), "{message}");
        assert!(message.contains("redis-server"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        if container::BUILT {
            assert!(message.contains("and could not use Docker"), "{message}");
            assert!(
                message.contains(": start Redis or set REDIS_URL."),
                "{message}"
            );
        } else {
            assert!(
                message.contains("--cfg mcp_authkit_containers"),
                "{message}"
            );
        }
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
