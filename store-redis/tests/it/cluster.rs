//! The store on a real six-node Redis Cluster (three masters, three
//! replicas): keys on every shard, listings over every master, sharded
//! wake-ups with one subscription connection per shard, clear errors for
//! the wrong kind of URL, and a master failing while flows wait.
//!
//! Most tests share the cluster of `testing::redis_cluster_url` (its own
//! prefix each); the failover tests start private clusters they may break,
//! on their own ports (7200, 7300, 7400, 7500, 7510; 7450 and 7460 for the
//! script's own tests; 7530 for the TLS cluster), never the shared
//! 7100-7105.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::{
    CasOutcome, FlowOutcome, InsertOutcome, PendingFlow, PendingStore, Timestamp, TokenKey,
    TokenRecord, TokenStore,
};
use mcp_authkit_store_redis::{RedisStore, testing};
use tokio::task::JoinSet;

use crate::common::{eventually, random, shared_url};

const MINUTE: Duration = Duration::from_secs(60);

fn record(access: &str) -> TokenRecord {
    TokenRecord::new(access, Timestamp::now())
}

fn flow(key: &TokenKey) -> PendingFlow {
    PendingFlow::new(
        key.clone(),
        "http://127.0.0.1:9/callback",
        vec!["repo".into()],
        Timestamp::now(),
        MINUTE * 5,
    )
}

/// `host:port` of every node in a `redis+cluster://` URL.
fn nodes(url: &str) -> Vec<String> {
    url.trim_start_matches("redis+cluster://")
        .split(',')
        .map(str::to_owned)
        .collect()
}

async fn raw_node(node: &str) -> redis::aio::MultiplexedConnection {
    crate::common::raw(&format!("redis://{node}")).await
}

/// Each node's role, `master` or `slave`, from the node itself.
async fn role(node: &str) -> String {
    let mut connection = raw_node(node).await;
    let role: Vec<redis::Value> = redis::cmd("ROLE")
        .query_async(&mut connection)
        .await
        .unwrap();
    match &role[0] {
        redis::Value::BulkString(role) => String::from_utf8_lossy(role).into_owned(),
        other => format!("{other:?}"),
    }
}

/// The masters among the nodes that answer (a killed one does not).
async fn masters(url: &str) -> Vec<String> {
    let mut masters = Vec::new();
    for node in nodes(url) {
        if std::net::TcpStream::connect(&node).is_ok() && role(&node).await == "master" {
            masters.push(node);
        }
    }
    masters
}

/// The connections named `name` on `node` that hold sharded subscriptions,
/// with how many channels each.
async fn sharded_subscribers(node: &str, name: &str) -> Vec<u64> {
    let mut connection = raw_node(node).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut connection)
        .await
        .unwrap();
    list.lines()
        .filter(|line| line.split(' ').any(|pair| pair == format!("name={name}")))
        .filter_map(|line| {
            line.split(' ')
                .find_map(|pair| pair.strip_prefix("ssub="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .filter(|channels| *channels > 0)
        .collect()
}

/// How many keys of `prefix` each master holds.
async fn keys_per_master(url: &str, prefix: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for node in masters(url).await {
        let mut connection = raw_node(&node).await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut connection)
            .await
            .unwrap();
        counts.insert(node, keys.len());
    }
    counts
}

async fn store(url: &str, prefix: &str, name: &str) -> RedisStore {
    RedisStore::builder(url)
        .prefix(prefix)
        .client_name(name)
        .connect()
        .await
        .expect("connect to the redis cluster")
}

#[tokio::test]
async fn the_wrong_kind_of_url_is_a_clear_error() {
    let cluster = testing::redis_cluster_url().await;
    let node = nodes(&cluster)[0].clone();
    let error = RedisStore::connect(&format!("redis://{node}"))
        .await
        .unwrap_err();
    assert!(!error.is_retryable(), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("Redis Cluster node") && text.contains(&format!("redis+cluster://{node}")),
        "{text}"
    );

    let single = shared_url().await;
    let single_node = single.trim_start_matches("redis://").trim_end_matches('/');
    let error = RedisStore::connect(&format!("redis+cluster://{single_node}"))
        .await
        .unwrap_err();
    assert!(!error.is_retryable(), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("single Redis server") && text.contains("redis://"),
        "{text}"
    );

    for bad in [
        "redis+cluster://",
        "redis+cluster://127.0.0.1:7100/3",
        "redis+cluster://127.0.0.1:7100?protocol=2",
    ] {
        let error = RedisStore::connect(bad).await.unwrap_err().to_string();
        assert!(error.contains("redis+cluster://"), "{bad}: {error}");
    }
}

#[tokio::test]
async fn keys_spread_over_every_master_and_listings_walk_them_all() {
    let url = testing::redis_cluster_url().await;
    let prefix = testing::unique_prefix("cluster-spread");
    let store = store(&url, &prefix, "mcp-authkit-test-spread").await;
    let keys: Vec<TokenKey> = (0..60)
        .map(|i| TokenKey::new("github", format!("user-{i}")))
        .collect();
    for key in &keys {
        let revision = store.put(key, &record("a")).await.unwrap();
        // Compare-and-swap, delete-if-revision and leases on every shard.
        let CasOutcome::Swapped(revision) = store
            .compare_and_swap(key, Some(revision), &record("b"))
            .await
            .unwrap()
        else {
            panic!("compare-and-swap lost on an idle key")
        };
        assert!(
            !store
                .delete_if_revision(key, mcp_authkit_core::Revision::new(revision.get() + 1))
                .await
                .unwrap()
        );
        let lease = store.try_acquire_lease(key, MINUTE).await.unwrap().unwrap();
        assert!(
            store
                .try_acquire_lease(key, MINUTE)
                .await
                .unwrap()
                .is_none()
        );
        assert!(store.release_lease(key, &lease).await.unwrap());
    }
    let spread = keys_per_master(&url, &prefix).await;
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert!(
        spread.values().all(|count| *count > 0),
        "every master holds some keys: {spread:?}"
    );

    // Small pages, so the cursor crosses from master to master.
    let mut listed = HashSet::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store.scan(cursor.as_ref(), 7).await.unwrap();
        listed.extend(page.items);
        pages += 1;
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages < 1000, "the listing ends");
    }
    assert_eq!(listed, keys.iter().cloned().collect::<HashSet<_>>());
    assert!(
        store
            .scan(Some(&mcp_authkit_core::ScanCursor::new("12")), 5)
            .await
            .is_err(),
        "a single server's cursor is refused on a cluster"
    );

    assert_eq!(store.delete_namespace().await.unwrap(), 60);
    assert!(
        keys_per_master(&url, &prefix)
            .await
            .values()
            .all(|count| *count == 0)
    );
}

/// 1,000 waiters on flows spread over every slot hold at most one
/// subscription connection per shard, and every one of them wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_waiters_hold_one_subscription_connection_per_shard() {
    const WAITERS: usize = 1000;
    let url = testing::redis_cluster_url().await;
    let prefix = testing::unique_prefix("cluster-waiters");
    let name = format!("mcp-authkit-test-waiters-{}", random());
    let waiting = store(&url, &prefix, &name).await;
    let completing = store(&url, &prefix, "mcp-authkit-test-completer").await;

    let mut flows = Vec::new();
    for i in 0..WAITERS {
        let flow = flow(&TokenKey::new("github", format!("waiter-{i}")));
        assert_eq!(
            completing.insert(&flow).await.unwrap(),
            InsertOutcome::Inserted
        );
        flows.push(flow);
    }
    let mut waits = JoinSet::new();
    for flow in &flows {
        let store = waiting.clone();
        let state = flow.state.clone();
        waits.spawn(async move { (state.clone(), store.wait(&state, MINUTE).await) });
    }
    let masters = masters(&url).await;
    eventually(
        Duration::from_secs(30),
        "all waiters subscribed",
        || async {
            let mut channels = 0;
            for master in &masters {
                channels += sharded_subscribers(master, &name).await.iter().sum::<u64>();
            }
            channels == WAITERS as u64
        },
    )
    .await;
    for master in &masters {
        let subscribers = sharded_subscribers(master, &name).await;
        assert_eq!(
            subscribers.len(),
            1,
            "one subscription connection on {master}: {subscribers:?}"
        );
    }

    for flow in &flows {
        let outcome = FlowOutcome::Failed {
            reason: flow.state.as_str()[..8].to_owned(),
        };
        completing
            .complete(&flow.key, &flow.state, &outcome, MINUTE)
            .await
            .unwrap();
    }
    let mut woken = 0;
    while let Some(done) = waits.join_next().await {
        let (state, outcome) = done.unwrap();
        assert_eq!(
            outcome.unwrap(),
            Some(FlowOutcome::Failed {
                reason: state.as_str()[..8].to_owned()
            })
        );
        woken += 1;
    }
    assert_eq!(woken, WAITERS);
    // Channels nobody waits on are unsubscribed again.
    eventually(
        Duration::from_secs(10),
        "idle channels unsubscribed",
        || async {
            let mut channels = 0;
            for master in &masters {
                channels += sharded_subscribers(master, &name).await.iter().sum::<u64>();
            }
            channels == 0
        },
    )
    .await;
    completing.delete_namespace().await.unwrap();
}

/// A cluster of this test alone (it kills a master), on its own ports.
struct PrivateCluster {
    base_port: u16,
    url: String,
}

impl PrivateCluster {
    fn start(base_port: u16) -> PrivateCluster {
        let output = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../scripts/redis-cluster.sh"
            ))
            .arg("start")
            .env("REDIS_CLUSTER_BASE_PORT", base_port.to_string())
            // The default folder, where `pid` looks.
            .env_remove("REDIS_CLUSTER_DIR")
            .output()
            .expect("run scripts/redis-cluster.sh");
        // Built before anything is asserted: a start that fails half-way
        // still has its nodes stopped when the panic drops the guard.
        let mut cluster = PrivateCluster {
            base_port,
            url: String::new(),
        };
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        stdout
            .lines()
            .find_map(|line| line.strip_prefix("REDIS_CLUSTER_URL="))
            .expect("the script prints the URL")
            .clone_into(&mut cluster.url);
        cluster
    }

    fn pid(&self, node: &str) -> String {
        let port = node.rsplit(':').next().unwrap();
        let dir = std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into());
        std::fs::read_to_string(format!(
            "{dir}/mcp-authkit-redis-cluster-{}/{port}/redis.pid",
            self.base_port
        ))
        .unwrap()
        .trim()
        .to_owned()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../scripts/redis-cluster.sh"
            ))
            .arg("stop")
            .env("REDIS_CLUSTER_BASE_PORT", self.base_port.to_string())
            .env_remove("REDIS_CLUSTER_DIR")
            .output();
    }
}

/// Retries `op` while it fails retryably (a shard failing over), for up to
/// 30 seconds; returns how many attempts failed.
async fn retrying<T, F, Fut>(what: &str, mut op: F) -> (T, usize)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = mcp_authkit_core::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut failures = 0;
    loop {
        match op().await {
            Ok(value) => return (value, failures),
            Err(error) if error.is_retryable() && tokio::time::Instant::now() < deadline => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("{what}: {error}"),
        }
    }
}

/// A master dies (SIGKILL) while flows on every shard are waited on:
/// operations in flight fail retryably or succeed, later ones succeed once
/// its replica took over, every waiter still wakes with its outcome, a
/// flow is still taken at most once, and leases stay exclusive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_wake_and_operations_recover_when_a_master_dies() {
    let cluster = PrivateCluster::start(7200);
    let url = cluster.url.clone();
    let prefix = testing::unique_prefix("cluster-failover");
    let a = store(&url, &prefix, "mcp-authkit-test-failover-a").await;
    let b = store(&url, &prefix, "mcp-authkit-test-failover-b").await;

    let flows: Vec<PendingFlow> = (0..60)
        .map(|i| flow(&TokenKey::new("github", format!("failover-{i}"))))
        .collect();
    for flow in &flows {
        b.insert(flow).await.unwrap();
    }
    let mut waits = JoinSet::new();
    for flow in &flows {
        let store = a.clone();
        let state = flow.state.clone();
        waits.spawn(async move {
            let outcome = store.wait(&state, MINUTE).await;
            (state, outcome, tokio::time::Instant::now())
        });
    }
    let masters = masters(&url).await;
    eventually(
        Duration::from_secs(20),
        "all waiters subscribed",
        || async {
            let mut channels = 0;
            for master in &masters {
                channels += sharded_subscribers(master, "mcp-authkit-test-failover-a")
                    .await
                    .iter()
                    .sum::<u64>();
            }
            channels == flows.len() as u64
        },
    )
    .await;

    // Refreshes keep going (from both stores) while the master dies.
    let refresh_key = TokenKey::new("github", "refreshing");
    a.put(&refresh_key, &record("r0")).await.unwrap();
    let victim = masters[0].clone();
    let pid = cluster.pid(&victim);
    let killed = Command::new("kill").arg("-9").arg(&pid).status().unwrap();
    assert!(killed.success());

    // Half the flows are taken by racing stores, the rest just completed.
    // Taken after the kill: no take is acknowledged by the dead master, so
    // exactly one of the two gets each flow (none would be a take whose
    // reply was lost and whose re-send found the flow gone).
    let mut not_exactly_once = 0;
    let mut completing = std::collections::HashMap::new();
    for (i, flow) in flows.iter().enumerate() {
        if i % 2 == 0 {
            let (from_a, _) = retrying("take in A", || a.take(&flow.state)).await;
            let (from_b, _) = retrying("take in B", || b.take(&flow.state)).await;
            if from_a.is_some() == from_b.is_some() {
                not_exactly_once += 1;
            }
        }
        let outcome = FlowOutcome::Failed {
            reason: flow.state.as_str()[..8].to_owned(),
        };
        completing.insert(flow.state.clone(), tokio::time::Instant::now());
        retrying("complete", || {
            b.complete(&flow.key, &flow.state, &outcome, MINUTE)
        })
        .await;
    }
    assert_eq!(
        not_exactly_once, 0,
        "a flow was taken by both stores or by neither"
    );

    let mut woken = 0;
    let mut delays = Vec::new();
    while let Some(done) = waits.join_next().await {
        let (state, outcome, at) = done.unwrap();
        delays.push(at.saturating_duration_since(completing[&state]));
        assert_eq!(
            outcome.unwrap(),
            Some(FlowOutcome::Failed {
                reason: state.as_str()[..8].to_owned()
            }),
            "every waiter wakes with its outcome"
        );
        woken += 1;
    }
    assert_eq!(woken, flows.len());
    let (p50, max) = p50_max(&mut delays);
    eprintln!(
        "killed master: waiters woke {p50:?} (p50) / {max:?} (max) after their completion was \
         first tried (a shard's completions wait for its failover)"
    );

    // Later operations succeed on every shard, and leases stay exclusive.
    for i in 0..30 {
        let key = TokenKey::new("github", format!("after-{i}"));
        a.put(&key, &record("after")).await.unwrap();
        assert!(b.get(&key).await.unwrap().is_some());
        let leases = Arc::new(tokio::sync::Mutex::new(0));
        let mut racers = JoinSet::new();
        for store in [a.clone(), b.clone(), a.clone(), b.clone()] {
            let key = key.clone();
            let leases = leases.clone();
            racers.spawn(async move {
                if store
                    .try_acquire_lease(&key, MINUTE)
                    .await
                    .unwrap()
                    .is_some()
                {
                    *leases.lock().await += 1;
                }
            });
        }
        racers.join_all().await;
        assert_eq!(*leases.lock().await, 1, "one lease holder for {key:?}");
    }
    let (current, _) = retrying("get", || a.get(&refresh_key)).await;
    assert!(current.is_some());
}

/// A planned failover (`CLUSTER FAILOVER` on a replica) while flows wait:
/// the old master ends their sharded subscriptions (`SUNSUBSCRIBE`), and
/// every waiter subscribes again, reads again and wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_wake_through_a_planned_failover() {
    let cluster = PrivateCluster::start(7300);
    let url = cluster.url.clone();
    let prefix = testing::unique_prefix("cluster-planned");
    let a = store(&url, &prefix, "mcp-authkit-test-planned-a").await;
    let b = store(&url, &prefix, "mcp-authkit-test-planned-b").await;
    let masters = masters(&url).await;
    let replica = replica_of(&url, &masters[1]).await;
    let flows: Vec<PendingFlow> = (0..60)
        .map(|i| flow(&TokenKey::new("github", format!("planned-{i}"))))
        .collect();
    for flow in &flows {
        b.insert(flow).await.unwrap();
    }
    let mut waits = JoinSet::new();
    for flow in &flows {
        let store = a.clone();
        let state = flow.state.clone();
        waits.spawn(async move {
            let outcome = store.wait(&state, MINUTE).await;
            (state, outcome, tokio::time::Instant::now())
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failover_started = tokio::time::Instant::now();
    let _: () = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query_async(&mut raw_node(&replica).await)
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the replica took over", || async {
        role(&replica).await == "master"
    })
    .await;
    let failover_took = failover_started.elapsed();
    let mut completing = std::collections::HashMap::new();
    for flow in &flows {
        let outcome = FlowOutcome::Failed {
            reason: flow.state.as_str()[..8].to_owned(),
        };
        completing.insert(flow.state.clone(), tokio::time::Instant::now());
        retrying("complete", || {
            b.complete(&flow.key, &flow.state, &outcome, MINUTE)
        })
        .await;
    }
    let mut delays = Vec::new();
    while let Some(done) = waits.join_next().await {
        let (state, outcome, woken) = done.unwrap();
        // From the callback's first try to complete to the waiter's wake.
        delays.push(woken.saturating_duration_since(completing[&state]));
        assert_eq!(
            outcome.unwrap(),
            Some(FlowOutcome::Failed {
                reason: state.as_str()[..8].to_owned()
            }),
            "every waiter wakes after a planned failover"
        );
    }
    let (p50, max) = p50_max(&mut delays);
    // Woken by the completion (or a re-read after the failover), not by the
    // last read at the wait's deadline, which would hide a lost wake-up.
    assert!(
        max < MINUTE / 2,
        "a waiter woke only {max:?} after its completion"
    );
    eprintln!(
        "planned failover: took {failover_took:?}; waiters woke {p50:?} (p50) / {max:?} (max) \
         after their completion was sent"
    );
}

/// The replica (`host:port`) of the master at `master`.
async fn replica_of(url: &str, master: &str) -> String {
    let port: i64 = master.rsplit(':').next().unwrap().parse().unwrap();
    for node in nodes(url) {
        let Ok(mut connection) = redis::Client::open(format!("redis://{node}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
        else {
            continue; // the killed master
        };
        let role: Vec<redis::Value> = redis::cmd("ROLE")
            .query_async(&mut connection)
            .await
            .unwrap();
        if matches!(&role[0], redis::Value::BulkString(r) if r == b"slave")
            && matches!(role.get(2), Some(redis::Value::Int(p)) if *p == port)
        {
            return node;
        }
    }
    panic!("no replica of {master}")
}

/// A listing paged across a failover of every shard (`CLUSTER FAILOVER` on
/// each replica after the first page): a SCAN position is only valid on
/// the node that returned it, so the walk restarts a shard whose master
/// changed. Every key present throughout is listed (some twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listing_paged_across_failovers_lists_every_key() {
    let cluster = PrivateCluster::start(7400);
    let url = cluster.url.clone();
    let prefix = testing::unique_prefix("cluster-scan-failover");
    let store = store(&url, &prefix, "mcp-authkit-test-scan-failover").await;
    const KEYS: usize = 2_000;
    let mut puts = JoinSet::new();
    for task in 0..8 {
        let store = store.clone();
        puts.spawn(async move {
            for i in (task..KEYS).step_by(8) {
                let key = TokenKey::new("github", format!("user-{i}"));
                store.put(&key, &record("a")).await.unwrap();
            }
        });
    }
    while let Some(put) = puts.join_next().await {
        put.unwrap();
    }
    let mut listed = HashSet::new();
    let first = store.scan(None, 50).await.unwrap();
    listed.extend(first.items);
    let mut cursor = first.next;
    assert!(cursor.is_some(), "the listing has more pages");

    for master in masters(&url).await {
        let replica = replica_of(&url, &master).await;
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query_async(&mut raw_node(&replica).await)
            .await
            .unwrap();
        eventually(Duration::from_secs(20), "the replica took over", || async {
            role(&replica).await == "master"
        })
        .await;
    }

    // Keyed reads on every shard: the MOVED answers make redis-rs learn the
    // new masters, so commands routed by slot now reach them (until then
    // they may still reach the demoted masters, whose positions are valid).
    for i in 0..100 {
        let key = TokenKey::new("github", format!("user-{i}"));
        retrying("get", || store.get(&key)).await;
    }

    while let Some(at) = cursor {
        let (page, _) = retrying("scan", || store.scan(Some(&at), 50)).await;
        listed.extend(page.items);
        cursor = page.next;
    }
    let missing: Vec<usize> = (0..KEYS)
        .filter(|i| !listed.contains(&TokenKey::new("github", format!("user-{i}"))))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {KEYS} keys were not listed after the failover",
        missing.len()
    );
    drop(cluster);
}

fn cluster_script(
    command: &str,
    base_port: u16,
    dir: Option<&std::path::Path>,
) -> std::process::Output {
    let mut script = Command::new("bash");
    script
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/redis-cluster.sh"
        ))
        .arg(command)
        .env("REDIS_CLUSTER_BASE_PORT", base_port.to_string())
        .env_remove("REDIS_CLUSTER_DIR");
    if let Some(dir) = dir {
        script.env("REDIS_CLUSTER_DIR", dir);
    }
    script.output().expect("run scripts/redis-cluster.sh")
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// `REDIS_CLUSTER_DIR` names a folder of the user's: the script works in a
/// subfolder of it and `stop` leaves everything else there alone (it once
/// ran `rm -rf` on the folder itself).
#[test]
fn the_cluster_script_leaves_a_user_folder_alone() {
    let user = tempfile::tempdir().unwrap();
    std::fs::write(user.path().join("precious"), "keep").unwrap();
    let started = cluster_script("start", 7450, Some(user.path()));
    let stopped = cluster_script("stop", 7450, Some(user.path()));
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    assert!(stopped.status.success());
    assert!(!answers(7450), "the nodes are stopped");
    assert_eq!(
        std::fs::read_to_string(user.path().join("precious")).unwrap(),
        "keep"
    );
    let left: Vec<_> = std::fs::read_dir(user.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("precious")]);
}

/// A start that fails half-way (the last port is taken) stops the nodes
/// it launched before it.
#[test]
fn a_failed_cluster_start_stops_the_nodes_it_launched() {
    let mut taken = Command::new("redis-server")
        .args(["--port", "7465", "--bind", "127.0.0.1", "--save", ""])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !answers(7465) {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server on 7465 did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = cluster_script("start", 7460, None);
    let _ = taken.kill();
    let _ = taken.wait();
    assert!(!started.status.success());
    assert!(String::from_utf8_lossy(&started.stderr).contains("port 7465 is taken"));
    for port in 7460..7465 {
        assert!(!answers(port), "node {port} was left running");
    }
}

/// The `host:port` of the master that holds the key `name`.
async fn slot_master(url: &str, name: &str) -> String {
    let mut connection = raw_node(&nodes(url)[0]).await;
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(name)
        .query_async(&mut connection)
        .await
        .unwrap();
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut connection)
        .await
        .unwrap();
    for range in ranges {
        let redis::Value::Array(items) = range else {
            continue;
        };
        let (Some(redis::Value::Int(start)), Some(redis::Value::Int(end))) =
            (items.first(), items.get(1))
        else {
            continue;
        };
        if (*start..=*end).contains(&slot) {
            let Some(redis::Value::Array(master)) = items.get(2) else {
                continue;
            };
            if let (Some(redis::Value::BulkString(host)), Some(redis::Value::Int(port))) =
                (master.first(), master.get(1))
            {
                return format!("{}:{port}", String::from_utf8_lossy(host));
            }
        }
    }
    panic!("no master serves slot {slot}")
}

/// The median and the largest of `delays`, sorted in place.
fn p50_max(delays: &mut [Duration]) -> (Duration, Duration) {
    delays.sort();
    (delays[delays.len() / 2], *delays.last().unwrap())
}

/// Takes whose replies come too late (a store with a 1 ms response timeout:
/// the script runs, the caller has stopped listening, and the cluster
/// client or `take` sends it again) race with a patient store for every
/// flow: no flow is taken by both, and a flow taken by neither is one whose
/// hasty take ended in a retryable error (its re-sends all timed out: the
/// documented case where the flow may be consumed). Without the take's
/// nonce, a re-sent take finds the flow gone and nobody gets it. How many
/// replies were late is up to the machine's load, so this is not asserted
/// here: `resilience::a_take_whose_reply_is_lost_still_gets_its_flow` loses
/// replies on purpose and asserts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takes_whose_replies_come_late_take_each_flow_exactly_once() {
    const FLOWS: usize = 300;
    let url = testing::redis_cluster_url().await;
    let prefix = testing::unique_prefix("cluster-late-take");
    let patient = store(&url, &prefix, "mcp-authkit-test-late-patient").await;
    let mut hasty = None;
    let connecting = tokio::time::Instant::now() + Duration::from_secs(30);
    while hasty.is_none() && tokio::time::Instant::now() < connecting {
        // Connecting may itself run out of its 1 ms.
        if let Ok(store) = RedisStore::builder(&url)
            .prefix(&prefix)
            .response_timeout(Duration::from_millis(1))
            .connect()
            .await
        {
            hasty = Some(store);
        }
    }
    let hasty = hasty.expect("a store with a 1 ms response timeout connects");
    let flows: Vec<PendingFlow> = (0..FLOWS)
        .map(|i| flow(&TokenKey::new("github", format!("late-{i}"))))
        .collect();
    for flow in &flows {
        patient.insert(flow).await.unwrap();
    }
    let mut races = JoinSet::new();
    for (i, flow) in flows.iter().enumerate() {
        for (who, store) in [(0, hasty.clone()), (1, patient.clone())] {
            let state = flow.state.clone();
            races.spawn(async move {
                if who == 1 {
                    let (taken, failed) = retrying("take", || store.take(&state)).await;
                    return (i, who, taken.is_some(), failed > 0);
                }
                // The hasty store's take re-sends itself for its whole
                // window; on a loaded machine every try can run out of its
                // 1 ms, and retrying after that window would only panic.
                match store.take(&state).await {
                    Ok(taken) => (i, who, taken.is_some(), false),
                    Err(error) if error.is_retryable() => (i, who, false, true),
                    Err(error) => panic!("hasty take: {error}"),
                }
            });
        }
    }
    let mut takers: Vec<Vec<usize>> = vec![Vec::new(); FLOWS];
    let mut hasty_failed = vec![false; FLOWS];
    while let Some(done) = races.join_next().await {
        let (i, who, got, failed) = done.unwrap();
        if got {
            takers[i].push(who);
        }
        if who == 0 {
            hasty_failed[i] = failed;
        }
    }
    let nobody: Vec<usize> = (0..FLOWS).filter(|i| takers[*i].is_empty()).collect();
    let unexplained = nobody.iter().filter(|i| !hasty_failed[**i]).count();
    let several = takers.iter().filter(|by| by.len() > 1).count();
    let by_hasty = takers.iter().filter(|by| by == &&vec![0]).count();
    assert!(
        unexplained == 0 && several == 0,
        "{} flows taken by nobody ({unexplained} without a failed take), {several} by both \
         ({by_hasty} by the hasty store)",
        nobody.len()
    );
    eprintln!(
        "late replies: {by_hasty} of {FLOWS} flows taken by the hasty store, {} by nobody after \
         a take that failed retryably",
        nobody.len()
    );
    patient.delete_namespace().await.unwrap();
}

/// Many takers (two stores, several tasks each) race for every flow while a
/// master dies (SIGKILL): every flow is taken, by one taker. A take whose
/// reply is lost (its connection dropped after the script ran) is sent
/// again with its nonce and gets the flow, so no flow is lost to everyone.
///
/// What a killed master can break is allowed, and no more: replication is
/// asynchronous, so a take the master acknowledged in the instant before
/// the kill may never reach its replica, and the promoted replica hands
/// that flow out again (the crate docs say so). Only takes in flight at the
/// kill can be such, at most one per taker; a flow handed out twice for
/// any other reason (a take that removes nothing, say) shows as many more.
///
/// Meanwhile refresh leases on every shard are contended: each holder
/// checks that nobody else holds its key's lease while it does. The holds
/// are short (3 ms) against a failover of seconds, so this checks leases
/// before and after the kill, not across it (a lease acquired on the
/// killed master may be lost with it, like a take), and that leases are
/// acquired again once the replica took over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_take_and_one_lease_holder_across_a_master_failover() {
    const FLOWS: usize = 240;
    const TAKERS_PER_STORE: usize = 6;
    const LEASE_KEYS: usize = 6;
    let cluster = PrivateCluster::start(7500);
    let url = cluster.url.clone();
    let prefix = testing::unique_prefix("cluster-take-failover");
    let a = store(&url, &prefix, "mcp-authkit-test-take-a").await;
    let b = store(&url, &prefix, "mcp-authkit-test-take-b").await;
    let flows: Arc<Vec<PendingFlow>> = Arc::new(
        (0..FLOWS)
            .map(|i| flow(&TokenKey::new("github", format!("take-{i}"))))
            .collect(),
    );
    for flow in flows.iter() {
        assert_eq!(b.insert(flow).await.unwrap(), InsertOutcome::Inserted);
    }
    let victim = masters(&url).await[0].clone();
    let on_victim = {
        let keys = flows
            .iter()
            .map(|flow| format!("{prefix}:flow:{{{}}}", flow.state.as_str()));
        let mut count = 0;
        for key in keys {
            if slot_master(&url, &key).await == victim {
                count += 1;
            }
        }
        count
    };
    assert!(on_victim > 20, "the failing shard holds flows: {on_victim}");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let overlaps = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acquired = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut work = JoinSet::new();
    // Takers: every one tries every flow, paced so the race spans the kill.
    let mut takers = JoinSet::new();
    for (s, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        for t in 0..TAKERS_PER_STORE {
            let (store, flows) = (store.clone(), flows.clone());
            let taker = s * TAKERS_PER_STORE + t;
            takers.spawn(async move {
                let mut got = Vec::new();
                for (i, flow) in flows.iter().enumerate() {
                    let (taken, _) = retrying("take", || store.take(&flow.state)).await;
                    if taken.is_some() {
                        got.push(i);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (taker, got)
            });
        }
    }
    // Lease contenders: per key, two per store; each holder checks that
    // nobody else holds that key's lease while it does.
    for k in 0..LEASE_KEYS {
        let key = TokenKey::new("github", format!("lease-{k}"));
        let holders = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for store in [a.clone(), b.clone(), a.clone(), b.clone()] {
            let (key, holders, stop) = (key.clone(), holders.clone(), stop.clone());
            let (overlaps, acquired) = (overlaps.clone(), acquired.clone());
            work.spawn(async move {
                use std::sync::atomic::Ordering::SeqCst;
                while !stop.load(SeqCst) {
                    let (lease, _) = retrying("acquire lease", || {
                        store.try_acquire_lease(&key, Duration::from_secs(10))
                    })
                    .await;
                    if let Some(lease) = lease {
                        acquired.fetch_add(1, SeqCst);
                        if holders.fetch_add(1, SeqCst) != 0 {
                            overlaps.fetch_add(1, SeqCst);
                        }
                        tokio::time::sleep(Duration::from_millis(3)).await;
                        // Given up before the release is sent: from then on
                        // another holder is legitimate.
                        holders.fetch_sub(1, SeqCst);
                        retrying("release lease", || store.release_lease(&key, &lease)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        }
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let killed = Command::new("kill")
        .arg("-9")
        .arg(cluster.pid(&victim))
        .status()
        .unwrap();
    assert!(killed.success());

    let mut takers_of: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    while let Some(done) = takers.join_next().await {
        let (taker, got) = done.unwrap();
        for i in got {
            takers_of.entry(i).or_default().push(taker);
        }
    }
    let acquired_by_then = acquired.load(std::sync::atomic::Ordering::SeqCst);
    // Leases keep being contended a moment after the takes, on the new master.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    while let Some(done) = work.join_next().await {
        done.unwrap();
    }
    let lost: Vec<usize> = (0..FLOWS).filter(|i| !takers_of.contains_key(i)).collect();
    let twice: Vec<(&usize, &Vec<usize>)> =
        takers_of.iter().filter(|(_, by)| by.len() > 1).collect();
    assert!(
        lost.is_empty() && twice.len() <= TAKERS_PER_STORE * 2,
        "every flow is taken, and only a take in flight at the kill may be lost with the \
         master: {} taken by nobody {lost:?}, {} by several {twice:?}",
        lost.len(),
        twice.len()
    );
    assert_eq!(
        overlaps.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a refresh lease had two holders at once"
    );
    assert!(
        acquired.load(std::sync::atomic::Ordering::SeqCst) > acquired_by_then,
        "leases are acquired again after the failover"
    );
    eprintln!(
        "take failover: {FLOWS} flows ({on_victim} on the killed master), {} takers, \
         {} lease acquisitions, {} flows taken twice (a take lost with the killed master)",
        TAKERS_PER_STORE * 2,
        acquired.load(std::sync::atomic::Ordering::SeqCst),
        twice.len()
    );
}

/// `delete_namespace` while a master dies: one call rides out the failover
/// (it walks again after a retryable error, and until a walk finds
/// nothing) and leaves no key of the prefix on any master.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_namespace_during_a_failover_deletes_everything() {
    const KEYS: usize = 1500;
    let cluster = PrivateCluster::start(7510);
    let url = cluster.url.clone();
    let prefix = testing::unique_prefix("cluster-delete-failover");
    let store = store(&url, &prefix, "mcp-authkit-test-delete-failover").await;
    let mut puts = JoinSet::new();
    for task in 0..8 {
        let store = store.clone();
        puts.spawn(async move {
            for i in (task..KEYS).step_by(8) {
                let key = TokenKey::new("github", format!("user-{i}"));
                store.put(&key, &record("a")).await.unwrap();
                if i % 3 == 0 {
                    store.insert(&flow(&key)).await.unwrap();
                }
            }
        });
    }
    puts.join_all().await;
    let before: usize = keys_per_master(&url, &prefix).await.values().sum();
    assert!(before > KEYS, "{before}");
    let victim = masters(&url).await[1].clone();
    let successor = replica_of(&url, &victim).await;
    let deleting = {
        let store = store.clone();
        tokio::spawn(async move { store.delete_namespace().await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let killed = Command::new("kill")
        .arg("-9")
        .arg(cluster.pid(&victim))
        .status()
        .unwrap();
    assert!(killed.success());
    let deleted = deleting
        .await
        .unwrap()
        .expect("delete_namespace rides out the failover");
    // Counted on three masters: the victim's replica too, once it took over
    // (a check of the two live masters alone passed while the dead shard's
    // keys were all still there).
    eventually(Duration::from_secs(20), "the replica took over", || async {
        masters(&url).await.len() == 3
    })
    .await;
    let left = keys_per_master(&url, &prefix).await;
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(
        left.values().all(|count| *count == 0),
        "keys left after delete_namespace: {left:?}"
    );
    // The count is not asserted: under a failover it is approximate (a
    // re-sent UNLINK counts 0, an unreplicated one is done again).
    eprintln!("delete_namespace during a failover: {deleted} counted of {before} keys");
    assert!(
        left.contains_key(&successor),
        "the killed master's shard is counted, on its promoted replica: {left:?}"
    );
}

/// `delete_namespace` on a cluster while a writer keeps writing under the
/// prefix: every walk finds something new to delete, and the call still
/// ends (after its 30 s window, with the walk that follows) instead of
/// walking for as long as the writer writes. The limit below is not a
/// speed target: it only turns a call that never ends into a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_namespace_ends_while_a_writer_keeps_writing() {
    let url = testing::redis_cluster_url().await;
    let prefix = testing::unique_prefix("cluster-delete-busy");
    let store = store(&url, &prefix, "mcp-authkit-test-delete-busy").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut written = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let key = TokenKey::new("github", format!("busy-{written}"));
                store.put(&key, &record("a")).await.unwrap();
                written += 1;
            }
            written
        })
    };
    // Some keys before the first walk.
    eventually(Duration::from_secs(10), "the writer wrote", || async {
        keys_per_master(&url, &prefix).await.values().sum::<usize>() > 50
    })
    .await;
    let deleted = tokio::time::timeout(Duration::from_secs(180), store.delete_namespace())
        .await
        .expect("delete_namespace ends while a writer keeps writing")
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.await.unwrap();
    assert!(
        deleted > 0,
        "{deleted} deleted while {written} were written"
    );
    store.delete_namespace().await.unwrap();
}

/// A private cluster that speaks TLS only (`--port 0`), between nodes too
/// (`--tls-cluster`, `--tls-replication`), and wants client certificates.
/// Its nodes are children of the test, killed by their handles on drop.
struct TlsCluster {
    nodes: Vec<std::process::Child>,
    certs: tempfile::TempDir,
    _data: tempfile::TempDir,
}

impl TlsCluster {
    fn cli(&self) -> Command {
        let file = |name: &str| self.certs.path().join(name).display().to_string();
        let mut cli = Command::new("redis-cli");
        cli.args(["--tls", "--cacert", &file("ca.crt")]).args([
            "--cert",
            &file("client.crt"),
            "--key",
            &file("client.key"),
        ]);
        cli
    }

    fn start(base_port: u16) -> TlsCluster {
        let certs = tempfile::tempdir().unwrap();
        crate::transports::make_certificates(certs.path());
        let data = tempfile::tempdir().unwrap();
        let mut cluster = TlsCluster {
            nodes: Vec::new(),
            certs,
            _data: data,
        };
        let file = |name: &str| cluster.certs.path().join(name).display().to_string();
        let ports: Vec<u16> = (base_port..base_port + 6).collect();
        for port in &ports {
            assert!(!answers(*port), "port {port} is taken");
            let dir = cluster._data.path().join(port.to_string());
            std::fs::create_dir(&dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--tls-cert-file", &file("server.crt")])
                .args(["--tls-key-file", &file("server.key")])
                .args(["--tls-ca-cert-file", &file("ca.crt")])
                .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--dir", dir.to_str().unwrap()])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            cluster.nodes.push(child);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for port in &ports {
            while !cluster
                .cli()
                .args(["-p", &port.to_string(), "ping"])
                .output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("PONG"))
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "node {port} did not start"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = cluster
            .cli()
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            created.status.success(),
            "{}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for port in &ports {
            while !cluster
                .cli()
                .args(["-p", &port.to_string(), "cluster", "info"])
                .output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok"))
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the TLS cluster did not settle"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

/// `rediss+cluster://` against a cluster that speaks only TLS: the server
/// certificates are checked against the given CA, the client presents its
/// certificate to every node, and the whole path works (put/get, a wait
/// woken by a sharded completion, take), on flows of every shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_works_through_rediss_cluster_urls() {
    let cluster = TlsCluster::start(7530);
    let read = |name: &str| std::fs::read(cluster.certs.path().join(name)).unwrap();
    let url = "rediss+cluster://127.0.0.1:7530,127.0.0.1:7531";
    let store = RedisStore::builder(url)
        .prefix(testing::unique_prefix("cluster-tls"))
        .tls_root_certificates_pem(read("ca.crt"))
        .tls_client_identity_pem(read("client.crt"), read("client.key"))
        .connect()
        .await
        .expect("a TLS cluster connection with the test CA and a client certificate");
    assert!(format!("{store:?}").contains("rediss+cluster://127.0.0.1:7530"));
    crate::transports::round_trip(&store).await;
    // Flows on every shard: inserted, taken once, completed, waited on.
    for i in 0..12 {
        let key = TokenKey::new("github", format!("tls-{i}"));
        let flow = flow(&key);
        assert_eq!(store.insert(&flow).await.unwrap(), InsertOutcome::Inserted);
        let waiter = {
            let (store, state) = (store.clone(), flow.state.clone());
            tokio::spawn(async move { store.wait(&state, Duration::from_secs(10)).await })
        };
        assert!(store.take(&flow.state).await.unwrap().is_some());
        assert!(store.take(&flow.state).await.unwrap().is_none());
        let outcome = FlowOutcome::Failed {
            reason: format!("tls-{i}"),
        };
        store
            .complete(&key, &flow.state, &outcome, MINUTE)
            .await
            .unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), Some(outcome));
    }
    // Without the CA the nodes' certificates are refused, and said so.
    let untrusted = RedisStore::builder(url)
        .tls_client_identity_pem(read("client.crt"), read("client.key"))
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect_err("an unknown CA is refused");
    assert!(!untrusted.is_retryable(), "{untrusted:?}");
    store.delete_namespace().await.unwrap();
}
