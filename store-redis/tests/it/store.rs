//! The store against a real server: the documented key layout, TTLs,
//! revisions across deletes, foreign values, and Redis Cluster rules.

use std::time::Duration;

use mcp_authkit_core::{
    CasOutcome, Error, FlowOutcome, FlowState, InsertOutcome, PendingFlow, PendingStore, Revision,
    Timestamp, TokenKey, TokenRecord, TokenStore, codec,
};
use redis::AsyncCommands;

use crate::common::{Namespace, PrivateRedis, raw, shared_url};
use mcp_authkit_store_redis::RedisStore;

const MINUTE: Duration = Duration::from_secs(60);

fn flow(key: &TokenKey) -> PendingFlow {
    PendingFlow::new(
        key.clone(),
        "http://127.0.0.1:9/callback",
        vec!["repo".into()],
        Timestamp::now(),
        MINUTE,
    )
}

fn record(access: &str) -> TokenRecord {
    TokenRecord::new(access, Timestamp::now()).with_refresh_token(format!("{access}-refresh"))
}

/// Every key of a prefix and its remaining TTL in ms (-1: none).
async fn keys_with_ttl(url: &str, prefix: &str) -> Vec<(String, i64)> {
    let mut connection = raw(url).await;
    let mut names: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let ttl: i64 = connection.pttl(&name).await.unwrap();
        out.push((name, ttl));
    }
    out
}

#[tokio::test]
async fn keys_follow_the_documented_layout() {
    let url = shared_url().await;
    let ns = Namespace::new(&url, "layout");
    let store = ns.store().await;
    let p = ns.prefix();
    let key = TokenKey::new("git hub", "user{1}.x");
    let revision = store.put(&key, &record("at")).await.unwrap();
    let lease = store
        .try_acquire_lease(&key, MINUTE)
        .await
        .unwrap()
        .unwrap();
    let f = flow(&key);
    store.insert(&f).await.unwrap();
    let s = f.state.as_str();
    let tag = "git%20hub.user%7B1%7D%2Ex";

    let mut connection = raw(&url).await;
    let (rev, rec): (String, Vec<u8>) = redis::cmd("HMGET")
        .arg(format!("{p}:tok:{{{tag}}}"))
        .arg("rev")
        .arg("rec")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(rev, revision.get().to_string());
    assert!(
        codec::decode_token(&rec).unwrap().refresh_token.is_some(),
        "the record is codec bytes"
    );
    let held: String = connection
        .get(format!("{p}:lease:{{{tag}}}"))
        .await
        .unwrap();
    assert_eq!(held, lease.as_str());
    let active: String = connection
        .get(format!("{p}:active:{{{tag}}}"))
        .await
        .unwrap();
    assert_eq!(active, s);
    let stored: Vec<u8> = connection.get(format!("{p}:flow:{{{s}}}")).await.unwrap();
    assert_eq!(codec::decode_flow(&stored).unwrap().state, f.state);

    store.take(&f.state).await.unwrap().unwrap();
    let outcome = FlowOutcome::Authorized { revision };
    store
        .complete(&key, &f.state, &outcome, MINUTE)
        .await
        .unwrap();
    let kept: Vec<u8> = connection.get(format!("{p}:out:{{{s}}}")).await.unwrap();
    assert_eq!(codec::decode_outcome(&kept).unwrap(), outcome);
    store.delete(&key).await.unwrap();
    let tomb: String = connection.get(format!("{p}:tomb:{{{tag}}}")).await.unwrap();
    assert_eq!(tomb, revision.get().to_string());

    let names: Vec<String> = keys_with_ttl(&url, p)
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        names,
        vec![
            format!("{p}:lease:{{{tag}}}"),
            format!("{p}:out:{{{s}}}"),
            format!("{p}:tomb:{{{tag}}}"),
        ],
        "nothing else is stored"
    );
}

#[tokio::test]
async fn everything_but_tokens_expires_by_itself() {
    let url = shared_url().await;
    let ns = Namespace::new(&url, "ttl");
    let store = ns
        .builder()
        .tombstone_ttl(Duration::from_secs(600))
        .connect()
        .await
        .unwrap();
    let key = TokenKey::new("github", "ttl");
    store.put(&key, &record("a")).await.unwrap();
    store
        .try_acquire_lease(&key, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let pending = flow(&TokenKey::new("github", "pending"));
    store.insert(&pending).await.unwrap();
    let taken = flow(&TokenKey::new("github", "taken"));
    store.insert(&taken).await.unwrap();
    store.take(&taken.state).await.unwrap().unwrap();
    let done = flow(&TokenKey::new("github", "done"));
    store.insert(&done).await.unwrap();
    store.take(&done.state).await.unwrap().unwrap();
    store
        .complete(
            &done.key,
            &done.state,
            &FlowOutcome::Failed { reason: "x".into() },
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    let deleted = TokenKey::new("github", "deleted");
    store.put(&deleted, &record("d")).await.unwrap();
    store.delete(&deleted).await.unwrap();

    let keys = keys_with_ttl(&url, ns.prefix()).await;
    // token, lease, pending flow + mark, taken flow's mark, outcome,
    // tombstone (a take removes its taken record once it has its answer)
    assert_eq!(keys.len(), 7, "{keys:?}");
    for (name, ttl) in &keys {
        let limit = match name.split(':').rev().nth(1).unwrap() {
            "tok" => {
                assert_eq!(*ttl, -1, "tokens live until deleted: {name}");
                continue;
            }
            "lease" => 30_000,
            "flow" | "active" => 60_000,
            "out" => 20_000,
            "tomb" => 600_000,
            other => panic!("unexpected key kind {other} in {name}"),
        };
        assert!(
            *ttl > 0 && *ttl <= limit,
            "{name} expires in {ttl} ms, limit {limit}"
        );
    }
}

#[tokio::test]
async fn revisions_keep_growing_after_a_delete_even_without_the_tombstone() {
    let url = shared_url().await;
    let ns = Namespace::new(&url, "revisions");
    let store = ns.store().await;
    let key = TokenKey::new("github", "rev");
    let first = store.put(&key, &record("1")).await.unwrap();
    let second = store.put(&key, &record("2")).await.unwrap();
    assert!(second > first);
    // Revisions are server time in µs or above, not a per-key counter.
    let mut connection = raw(&url).await;
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut connection)
        .await
        .unwrap();
    let now = secs * 1_000_000 + micros;
    assert!(
        second.get() <= now && second.get() > now - 60_000_000,
        "{second} vs {now}"
    );

    assert!(store.delete(&key).await.unwrap());
    let third = store.put(&key, &record("3")).await.unwrap();
    assert!(third > second, "{second} then {third}");

    // Once the tombstone has expired, server time still keeps them growing.
    store.delete(&key).await.unwrap();
    let tomb = format!("{}:tomb:{{github.rev}}", ns.prefix());
    let removed: i64 = connection.del(&tomb).await.unwrap();
    assert_eq!(removed, 1, "the delete left a tombstone");
    let fourth = store.put(&key, &record("4")).await.unwrap();
    assert!(fourth > third, "{third} then {fourth}");
    assert!(
        !store.delete_if_revision(&key, third).await.unwrap(),
        "an old revision never matches"
    );
    let exists: bool = connection.exists(&tomb).await.unwrap();
    assert!(!exists, "a write removes the tombstone it continued from");
}

#[tokio::test]
async fn values_that_are_not_ours_are_decode_errors_and_stay_untouched() {
    let url = shared_url().await;
    let ns = Namespace::new(&url, "foreign");
    let store = ns.store().await;
    let p = ns.prefix();
    let mut connection = raw(&url).await;

    fn assert_names(error: &Error, location: &str) {
        assert!(
            matches!(error, Error::Decode { .. }),
            "a decode error, got {error:?}"
        );
        assert!(!error.is_retryable());
        let text = error.to_string();
        assert!(text.contains(location), "{text:?} names {location}");
    }

    // A string where a token hash belongs.
    let key = TokenKey::new("github", "string");
    let name = format!("{p}:tok:{{github.string}}");
    let _: () = connection.set(&name, "not a token").await.unwrap();
    assert_names(&TokenStore::get(&store, &key).await.unwrap_err(), &name);
    assert_names(&store.put(&key, &record("x")).await.unwrap_err(), &name);
    assert_names(
        &store
            .compare_and_swap(&key, None, &record("x"))
            .await
            .unwrap_err(),
        &name,
    );
    assert_names(&store.delete(&key).await.unwrap_err(), &name);
    assert_names(
        &store
            .delete_if_revision(&key, Revision::new(1))
            .await
            .unwrap_err(),
        &name,
    );
    let still: String = connection.get(&name).await.unwrap();
    assert_eq!(still, "not a token");

    // A hash of someone else's, and a hash whose record is not ours.
    let key = TokenKey::new("github", "hash");
    let name = format!("{p}:tok:{{github.hash}}");
    let _: () = connection.hset(&name, "rev", "abc").await.unwrap();
    assert_names(&TokenStore::get(&store, &key).await.unwrap_err(), &name);
    assert_names(&store.put(&key, &record("x")).await.unwrap_err(), &name);
    let _: () = connection
        .hset_multiple(&name, &[("rev", "5"), ("rec", "{\"not\": \"ours\"}")])
        .await
        .unwrap();
    assert_names(&TokenStore::get(&store, &key).await.unwrap_err(), &name);
    let rev: String = connection.hget(&name, "rev").await.unwrap();
    assert_eq!(rev, "5");

    // A tombstone that is not a revision.
    let key = TokenKey::new("github", "tomb");
    let tomb = format!("{p}:tomb:{{github.tomb}}");
    let _: () = connection.rpush(&tomb, "x").await.unwrap();
    assert_names(&store.put(&key, &record("x")).await.unwrap_err(), &tomb);
    assert!(
        TokenStore::get(&store, &key).await.unwrap().is_none(),
        "nothing was written"
    );

    // A lease without expiry, and one of another type.
    let key = TokenKey::new("github", "lease");
    let lease = format!("{p}:lease:{{github.lease}}");
    let _: () = connection.set(&lease, "forever").await.unwrap();
    assert_names(
        &store.try_acquire_lease(&key, MINUTE).await.unwrap_err(),
        &lease,
    );
    let _: () = connection.del(&lease).await.unwrap();
    let _: () = connection.sadd(&lease, "x").await.unwrap();
    let held = mcp_authkit_core::LeaseToken::generate();
    assert_names(&store.release_lease(&key, &held).await.unwrap_err(), &lease);

    // An active mark of another type: the insert fails and leaves no flow.
    let key = TokenKey::new("github", "mark");
    let mark = format!("{p}:active:{{github.mark}}");
    let _: () = connection.hset(&mark, "x", "y").await.unwrap();
    let f = flow(&key);
    assert_names(&store.insert(&f).await.unwrap_err(), &mark);
    assert!(
        PendingStore::get_flow(&store, &f.state)
            .await
            .unwrap()
            .is_none(),
        "the flow was removed"
    );
    assert_names(&store.active_flow(&key).await.unwrap_err(), &mark);

    // A foreign value under a new flow's state: the insert fails, leaves the
    // value alone, and does not leave the key marked active (which would
    // make every later caller join a flow that does not exist).
    let key = TokenKey::new("github", "taken-state");
    let mut f = flow(&key);
    f.state = FlowState::generate();
    let flow_key = format!("{p}:flow:{{{}}}", f.state.as_str());
    let _: () = connection.set(&flow_key, "someone else's").await.unwrap();
    let shown = format!("{p}:flow:{{{}…}}", &f.state.as_str()[..4]);
    assert_names(&store.insert(&f).await.unwrap_err(), &shown);
    assert_eq!(store.active_flow(&key).await.unwrap(), None);
    let still: String = connection.get(&flow_key).await.unwrap();
    assert_eq!(still, "someone else's");
    assert_eq!(
        store.insert(&flow(&key)).await.unwrap(),
        mcp_authkit_core::InsertOutcome::Inserted
    );

    // Flow and outcome keys: named with the state shortened, since the
    // state is a credential.
    let state = FlowState::generate();
    let s = state.as_str();
    let shown = format!("{p}:flow:{{{}…}}", &s[..4]);
    let flow_key = format!("{p}:flow:{{{s}}}");
    let _: () = connection.set(&flow_key, "garbage").await.unwrap();
    for error in [
        PendingStore::get_flow(&store, &state).await.unwrap_err(),
        store.take(&state).await.unwrap_err(),
    ] {
        assert_names(&error, &shown);
        assert!(
            !error.to_string().contains(s),
            "the state stays secret: {error}"
        );
    }
    let still: String = connection.get(&flow_key).await.unwrap();
    assert_eq!(still, "garbage", "take left it alone");
    // A flow written by a newer release is refused as such, and kept.
    let newer = r#"{"v":99,"state":"x"}"#;
    let _: () = connection.set(&flow_key, newer).await.unwrap();
    assert!(matches!(
        store.take(&state).await.unwrap_err(),
        Error::UnsupportedFormat { found: 99, .. }
    ));
    let still: String = connection.get(&flow_key).await.unwrap();
    assert_eq!(still, newer);
    let outcome_key = format!("{p}:out:{{{s}}}");
    let _: () = connection.sadd(&outcome_key, "x").await.unwrap();
    let shown = format!("{p}:out:{{{}…}}", &s[..4]);
    assert_names(&store.outcome(&state).await.unwrap_err(), &shown);
    // A waiter reports it at once too, rather than re-reading until its
    // timeout and answering "not completed".
    let started = std::time::Instant::now();
    assert_names(
        &store
            .wait(&state, Duration::from_secs(10))
            .await
            .unwrap_err(),
        &shown,
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let _: () = connection.del(&flow_key).await.unwrap();
    let error = store
        .complete(
            &TokenKey::new("github", "x"),
            &state,
            &FlowOutcome::Failed { reason: "x".into() },
            MINUTE,
        )
        .await
        .unwrap_err();
    assert_names(&error, &shown);
    let kind: String = redis::cmd("TYPE")
        .arg(&outcome_key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(kind, "set", "complete wrote nothing over it");

    // A key under the token pattern that this layout never produces.
    let _: () = connection
        .hset(format!("{p}:tok:{{no-separator}}"), "rev", "1")
        .await
        .unwrap();
    assert_names(
        &store.scan(None, 100).await.unwrap_err(),
        &format!("{p}:tok:{{no-separator}}"),
    );
}

#[tokio::test]
async fn inserting_the_same_flow_again_is_idempotent() {
    let url = shared_url().await;
    let ns = Namespace::new(&url, "idempotent");
    let store = ns.store().await;
    let key = TokenKey::new("github", "retry");
    let f = flow(&key);
    assert_eq!(store.insert(&f).await.unwrap(), InsertOutcome::Inserted);
    // A retry after a lost reply: the same flow, not a second one.
    assert_eq!(store.insert(&f).await.unwrap(), InsertOutcome::Inserted);
    let other = flow(&key);
    assert_eq!(
        store.insert(&other).await.unwrap(),
        InsertOutcome::Joined(f.state.clone())
    );
    assert!(
        PendingStore::get_flow(&store, &other.state)
            .await
            .unwrap()
            .is_none(),
        "the joining flow is not left behind"
    );
    // A flow that expired before it was stored is gone at once.
    let mut expired = flow(&TokenKey::new("github", "expired"));
    expired.expires_at = Timestamp::now().saturating_sub(MINUTE);
    assert_eq!(
        store.insert(&expired).await.unwrap(),
        InsertOutcome::Inserted
    );
    assert!(
        PendingStore::get_flow(&store, &expired.state)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.active_flow(&expired.key).await.unwrap().is_none());
}

#[tokio::test]
async fn scan_and_delete_namespace_stay_inside_their_prefix() {
    let url = shared_url().await;
    let ns = Namespace::new(&url, "scope");
    // A prefix that starts with ours must stay invisible to us.
    let longer = format!("{}:tok", ns.prefix());
    let store = ns.store().await;
    let neighbour = ns.builder().prefix(&longer).connect().await.unwrap();
    for i in 0..30 {
        store
            .put(&TokenKey::new("p", format!("mine-{i}")), &record("x"))
            .await
            .unwrap();
    }
    neighbour
        .put(&TokenKey::new("p", "theirs"), &record("y"))
        .await
        .unwrap();
    neighbour
        .insert(&flow(&TokenKey::new("p", "theirs")))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.scan(cursor.as_ref(), 5).await.unwrap();
        seen.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 30, "{seen:?}");
    assert!(seen.iter().all(|key| key.subject().starts_with("mine-")));

    assert_eq!(store.delete_namespace().await.unwrap(), 30);
    assert!(
        TokenStore::get(&neighbour, &TokenKey::new("p", "theirs"))
            .await
            .unwrap()
            .is_some(),
        "the neighbour's keys survive"
    );
    assert_eq!(neighbour.delete_namespace().await.unwrap(), 3);
    assert!(
        store
            .scan(Some(&mcp_authkit_core::ScanCursor::new("not a cursor")), 5)
            .await
            .is_err()
    );
}

/// A single-node Redis Cluster refuses any script whose keys hash to
/// different slots (CROSSSLOT), so running every operation on one proves
/// the layout is cluster safe. (The six-node cluster of `cluster.rs` runs
/// the whole store, and the conformance suite, across shards.)
#[tokio::test]
async fn every_operation_runs_on_a_cluster_node() {
    let server = PrivateRedis::start(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "{dir}/nodes.conf",
    ]);
    let url = server.url();
    let mut admin = raw(&url).await;
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async(&mut admin)
        .await
        .unwrap();
    crate::common::eventually(Duration::from_secs(10), "the cluster state ok", || {
        let mut admin = admin.clone();
        async move {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut admin)
                .await
                .unwrap();
            info.contains("cluster_state:ok")
        }
    })
    .await;
    // The check is real: a script over two slots fails here.
    let cross: redis::RedisResult<()> = redis::cmd("EVAL")
        .arg("redis.call('SET', KEYS[1], 1); redis.call('SET', KEYS[2], 1)")
        .arg(2)
        .arg("a")
        .arg("b")
        .query_async(&mut admin)
        .await;
    assert_eq!(cross.unwrap_err().code(), Some("CROSSSLOT"));

    // A single-server URL naming a cluster node is refused, saying what to
    // use instead.
    let refused = RedisStore::connect(&url).await.unwrap_err().to_string();
    assert!(
        refused.contains(&format!("redis+cluster://127.0.0.1:{}", server.port)),
        "{refused}"
    );
    let url = format!("redis+cluster://127.0.0.1:{}", server.port);
    let ns = Namespace::new(&url, "cluster");
    let store = ns.store().await;
    let key = TokenKey::new("github", "cluster");
    let r1 = store.put(&key, &record("a")).await.unwrap();
    let CasOutcome::Swapped(r2) = store
        .compare_and_swap(&key, Some(r1), &record("b"))
        .await
        .unwrap()
    else {
        panic!("compare-and-swap failed")
    };
    assert!(TokenStore::get(&store, &key).await.unwrap().is_some());
    assert!(!store.delete_if_revision(&key, r1).await.unwrap());
    assert!(store.delete_if_revision(&key, r2).await.unwrap());
    store.put(&key, &record("c")).await.unwrap();
    assert!(store.delete(&key).await.unwrap());
    let lease = store
        .try_acquire_lease(&key, MINUTE)
        .await
        .unwrap()
        .unwrap();
    assert!(store.release_lease(&key, &lease).await.unwrap());
    store.put(&key, &record("d")).await.unwrap();
    assert_eq!(store.scan(None, 10).await.unwrap().items, vec![key.clone()]);

    let f = flow(&key);
    assert_eq!(store.insert(&f).await.unwrap(), InsertOutcome::Inserted);
    assert!(matches!(
        store.insert(&flow(&key)).await.unwrap(),
        InsertOutcome::Joined(_)
    ));
    assert!(
        PendingStore::get_flow(&store, &f.state)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store.active_flow(&key).await.unwrap(),
        Some(f.state.clone())
    );
    let waiter = {
        let store = store.clone();
        let state = f.state.clone();
        tokio::spawn(async move { store.wait(&state, Duration::from_secs(10)).await })
    };
    store.take(&f.state).await.unwrap().unwrap();
    let outcome = FlowOutcome::Denied {
        error: "access_denied".into(),
        description: None,
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    store
        .complete(&key, &f.state, &outcome, MINUTE)
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), Some(outcome.clone()));
    assert_eq!(store.outcome(&f.state).await.unwrap(), Some(outcome));
    assert!(store.delete_namespace().await.unwrap() > 0);
}

/// Health: one PING and its latency; a dead server is a retryable error,
/// and the store answers again once the server is back.
#[tokio::test]
async fn ping_answers_with_its_latency_and_reports_a_dead_server() {
    let mut server = PrivateRedis::start(&[]);
    let ns = Namespace::new(&server.url(), "ping");
    let store = ns.store().await;
    assert_eq!(TokenStore::backend_name(&store), "redis");
    assert_eq!(PendingStore::pending_backend_name(&store), "redis");
    let latency = store.ping().await.unwrap();
    assert!(latency < Duration::from_secs(5), "{latency:?}");
    store.ping_pending().await.unwrap();
    server.kill();
    let error = store.ping().await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(error.to_string().contains("redis"), "{error}");
    server.restart();
    crate::common::eventually(Duration::from_secs(10), "ping after restart", || async {
        store.ping().await.is_ok()
    })
    .await;
}
