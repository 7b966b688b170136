//! Store scenarios: what [`TokenStore`] and
//! [`PendingStore`](mcp_authkit_core::PendingStore) promise.
//!
//! Each function is one scenario; [`conformance_tests!`](crate::conformance_tests)
//! turns each into a test. Expiry is tested with short real TTLs, since
//! backends expire entries on their own clock.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_authkit_core::{
    CasOutcome, ExposeSecret, FlowOutcome, FlowState, InsertOutcome, PendingFlow, Revision,
    Timestamp, TokenKey, TokenRecord, TokenStore,
};
use tokio::task::JoinSet;

use crate::Harness;

/// A record whose access token is `access`, expiring in an hour.
pub fn record(access: &str) -> TokenRecord {
    let now = Timestamp::now();
    TokenRecord::new(access, now)
        .with_refresh_token(format!("{access}-refresh"))
        .with_scopes(["read", "write"])
        .with_expires_at(now.saturating_add(Duration::from_secs(3600)))
        .with_extra("id_token", format!("{access}-id"))
}

/// A flow for `key` that expires after `ttl`.
pub fn flow(key: &TokenKey, ttl: Duration) -> PendingFlow {
    PendingFlow::new(
        key.clone(),
        "http://127.0.0.1:9/callback",
        vec!["read".into()],
        Timestamp::now(),
        ttl,
    )
    .with_started_by("session-1")
    .with_attribute("resource", "https://mcp.example/")
}

/// A key unique to this scenario run.
pub fn unique_key(label: &str) -> TokenKey {
    TokenKey::new(
        "conformance",
        format!("{label}-{}", mcp_authkit_core::random_urlsafe(6)),
    )
}

async fn access_token_of(store: &dyn TokenStore, key: &TokenKey) -> Option<String> {
    store
        .get(key)
        .await
        .expect("get")
        .map(|stored| stored.record.access_token.expose_secret().to_owned())
}

const MINUTE: Duration = Duration::from_secs(60);

/// Put, get and delete round-trip every field, and keys never see each
/// other's records: not across subjects, not across providers, and not when
/// provider and subject concatenate to the same text.
pub async fn token_crud_and_isolation(h: Harness) {
    let store = h.replica().await.tokens;
    let alice = TokenKey::new("github", "alice");
    let bob = TokenKey::new("github", "bob");
    let alice_elsewhere = TokenKey::new("google", "alice");
    let glued_a = TokenKey::new("ab", "c");
    let glued_b = TokenKey::new("a", "bc");

    assert!(
        store.get(&alice).await.unwrap().is_none(),
        "empty store has no token"
    );
    let original = record("alice-token");
    let revision = store.put(&alice, &original).await.unwrap();
    let stored = store.get(&alice).await.unwrap().expect("stored token");
    assert_eq!(stored.revision, revision);
    let read = &stored.record;
    assert_eq!(read.access_token.expose_secret(), "alice-token");
    assert_eq!(
        read.refresh_token
            .as_ref()
            .map(|t| t.expose_secret().to_owned()),
        Some("alice-token-refresh".to_owned())
    );
    assert_eq!(read.scopes, original.scopes);
    assert_eq!(read.expires_at, original.expires_at);
    assert_eq!(read.obtained_at, original.obtained_at);
    assert_eq!(read.token_type, original.token_type);
    assert_eq!(read.extra, original.extra);

    for other in [&bob, &alice_elsewhere] {
        assert!(
            store.get(other).await.unwrap().is_none(),
            "{other} must not see alice's token"
        );
    }
    store.put(&bob, &record("bob-token")).await.unwrap();
    store
        .put(&alice_elsewhere, &record("google-token"))
        .await
        .unwrap();
    store.put(&glued_a, &record("glued-a")).await.unwrap();
    store.put(&glued_b, &record("glued-b")).await.unwrap();
    assert_eq!(
        access_token_of(&*store, &alice).await.as_deref(),
        Some("alice-token")
    );
    assert_eq!(
        access_token_of(&*store, &bob).await.as_deref(),
        Some("bob-token")
    );
    assert_eq!(
        access_token_of(&*store, &alice_elsewhere).await.as_deref(),
        Some("google-token")
    );
    assert_eq!(
        access_token_of(&*store, &glued_a).await.as_deref(),
        Some("glued-a")
    );
    assert_eq!(
        access_token_of(&*store, &glued_b).await.as_deref(),
        Some("glued-b")
    );

    assert!(
        store.delete(&alice).await.unwrap(),
        "delete reports a removed token"
    );
    assert!(
        !store.delete(&alice).await.unwrap(),
        "a second delete finds nothing"
    );
    assert!(store.get(&alice).await.unwrap().is_none());
    assert_eq!(
        access_token_of(&*store, &bob).await.as_deref(),
        Some("bob-token"),
        "delete is per key"
    );

    // A record with no optional fields survives too.
    let bare = TokenRecord::new("bare", Timestamp::from_unix_millis(1));
    store.put(&alice, &bare).await.unwrap();
    let read = store.get(&alice).await.unwrap().unwrap().record;
    assert!(read.refresh_token.is_none() && read.expires_at.is_none() && read.extra.is_empty());
}

fn odd_key_set() -> Vec<TokenKey> {
    let long = "x".repeat(1024);
    let odd = [
        ":",
        "a:b",
        "{",
        "}",
        "{tag}",
        "*",
        "a*b",
        "with space",
        " lead",
        "ümlaut",
        "日本語",
        "emoji🦀",
        "new\nline",
        "tab\t",
        "quote\"'",
        "back\\slash",
        "per%cent",
        "slash/",
        "",
        "?",
        "#",
        "[x]",
    ];
    let mut keys: Vec<TokenKey> = odd
        .iter()
        .map(|part| TokenKey::new(format!("p{part}"), format!("s{part}")))
        .collect();
    keys.push(TokenKey::new(long.clone(), "s"));
    keys.push(TokenKey::new("p", long));
    keys.push(TokenKey::new("", ""));
    keys.push(TokenKey::new("*", "*"));
    keys.push(TokenKey::new("p:", "s"));
    keys.push(TokenKey::new("p", ":s"));
    keys
}

/// Keys with `:`, `{`, `}`, `*`, spaces, unicode, control characters, empty
/// parts and 1 KiB parts each keep their own record.
pub async fn odd_keys(h: Harness) {
    let store = h.replica().await.tokens;
    let keys = odd_key_set();
    for (i, key) in keys.iter().enumerate() {
        store
            .put(key, &record(&format!("token-{i}")))
            .await
            .unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            access_token_of(&*store, key).await,
            Some(format!("token-{i}")),
            "key {key:?} must read back its own record"
        );
    }
    // Removing one never touches a look-alike.
    store.delete(&keys[0]).await.unwrap();
    for (i, key) in keys.iter().enumerate().skip(1) {
        assert_eq!(
            access_token_of(&*store, key).await,
            Some(format!("token-{i}"))
        );
    }
    // Odd keys work for leases and flows too.
    for key in &keys {
        let lease = store.try_acquire_lease(key, MINUTE).await.unwrap();
        assert!(lease.is_some(), "lease on {key:?}");
    }
    let pending = h.replica().await.pending;
    for key in keys.iter().take(6) {
        let f = flow(key, MINUTE);
        assert_eq!(
            pending.insert(&f).await.unwrap(),
            InsertOutcome::Inserted,
            "flow for {key:?}"
        );
        assert_eq!(
            pending.active_flow(key).await.unwrap(),
            Some(f.state.clone())
        );
        assert_eq!(
            pending.take(&f.state).await.unwrap().map(|t| t.key),
            Some(key.clone())
        );
    }
}

/// A scan in small pages lists every stored key exactly as stored.
pub async fn scan_lists_every_key(h: Harness) {
    let store = h.replica().await.tokens;
    let mut expected = BTreeSet::new();
    for key in odd_key_set() {
        store.put(&key, &record("t")).await.unwrap();
        expected.insert(key);
    }
    for i in 0..15 {
        let key = TokenKey::new("scan", format!("user-{i}"));
        store.put(&key, &record("t")).await.unwrap();
        expected.insert(key);
    }
    let mut seen = BTreeSet::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store.scan(cursor.as_ref(), 7).await.unwrap();
        seen.extend(page.items);
        pages += 1;
        assert!(pages < 1_000, "scan does not terminate");
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(
        seen, expected,
        "scan must list every key once stored, and only those"
    );
}

/// Every write bumps the revision, compare-and-swap checks it, and a key
/// that is deleted and written again never reuses an old revision.
pub async fn revisions_and_compare_and_swap(h: Harness) {
    let store = h.replica().await.tokens;
    let key = unique_key("cas");
    let r1 = store.put(&key, &record("one")).await.unwrap();
    let r2 = store.put(&key, &record("two")).await.unwrap();
    assert!(r2 > r1, "put bumps the revision ({r1} -> {r2})");

    assert_eq!(
        store
            .compare_and_swap(&key, Some(r1), &record("stale"))
            .await
            .unwrap(),
        CasOutcome::Conflict { current: Some(r2) },
        "a stale revision conflicts"
    );
    assert_eq!(
        access_token_of(&*store, &key).await.as_deref(),
        Some("two"),
        "a conflict writes nothing"
    );
    assert_eq!(
        store
            .compare_and_swap(&key, None, &record("create"))
            .await
            .unwrap(),
        CasOutcome::Conflict { current: Some(r2) },
        "create-only conflicts when a record exists"
    );
    let r3 = match store
        .compare_and_swap(&key, Some(r2), &record("three"))
        .await
        .unwrap()
    {
        CasOutcome::Swapped(r3) => r3,
        other => panic!("compare-and-swap on the current revision must succeed, got {other:?}"),
    };
    assert!(r3 > r2);
    assert_eq!(store.get(&key).await.unwrap().unwrap().revision, r3);

    let missing = unique_key("cas-missing");
    assert_eq!(
        store
            .compare_and_swap(&missing, Some(r3), &record("x"))
            .await
            .unwrap(),
        CasOutcome::Conflict { current: None },
        "expecting a revision of a missing key conflicts"
    );
    assert!(matches!(
        store
            .compare_and_swap(&missing, None, &record("created"))
            .await
            .unwrap(),
        CasOutcome::Swapped(_)
    ));

    assert!(store.delete(&key).await.unwrap());
    let r4 = store.put(&key, &record("again")).await.unwrap();
    assert!(
        r4 > r3,
        "revisions keep growing across a delete ({r3} then {r4})"
    );
    assert!(
        !store.delete_if_revision(&key, r3).await.unwrap(),
        "an old revision never matches a new record"
    );
    assert_eq!(
        access_token_of(&*store, &key).await.as_deref(),
        Some("again")
    );
}

/// Of 30 compare-and-swaps from the same revision over 3 replicas, exactly
/// one wins and the stored record is the winner's.
pub async fn concurrent_compare_and_swap_has_one_winner(h: Harness) {
    let replicas = h.replicas(3).await;
    let key = unique_key("cas-race");
    let base = replicas[0].tokens.put(&key, &record("base")).await.unwrap();
    let mut tasks = JoinSet::new();
    for i in 0..30 {
        let store = Arc::clone(&replicas[i % 3].tokens);
        let key = key.clone();
        tasks.spawn(async move {
            let outcome = store
                .compare_and_swap(&key, Some(base), &record(&format!("writer-{i}")))
                .await
                .unwrap();
            (i, outcome)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, outcome) = joined.unwrap();
        if let CasOutcome::Swapped(revision) = outcome {
            winners.push((i, revision));
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one compare-and-swap wins, got {winners:?}"
    );
    let (winner, revision) = winners[0];
    let stored = replicas[2].tokens.get(&key).await.unwrap().unwrap();
    assert_eq!(stored.revision, revision);
    assert_eq!(
        stored.record.access_token.expose_secret(),
        &format!("writer-{winner}")
    );
}

/// A reactive invalidation that saw revision r never removes the token that
/// another request already refreshed to a newer revision.
pub async fn stale_invalidation_keeps_newer_token(h: Harness) {
    let replicas = h.replicas(2).await;
    let key = unique_key("invalidate");
    let seen_by_tool = replicas[0].tokens.put(&key, &record("old")).await.unwrap();
    // Another replica refreshes meanwhile.
    let refreshed = match replicas[1]
        .tokens
        .compare_and_swap(&key, Some(seen_by_tool), &record("refreshed"))
        .await
        .unwrap()
    {
        CasOutcome::Swapped(revision) => revision,
        other => panic!("refresh write failed: {other:?}"),
    };
    // The tool that got a 401 with the old token invalidates what it saw.
    assert!(
        !replicas[0]
            .tokens
            .delete_if_revision(&key, seen_by_tool)
            .await
            .unwrap(),
        "a stale invalidation must not delete"
    );
    assert_eq!(
        access_token_of(&*replicas[0].tokens, &key).await.as_deref(),
        Some("refreshed")
    );
    assert!(
        replicas[0]
            .tokens
            .delete_if_revision(&key, refreshed)
            .await
            .unwrap()
    );
    assert!(replicas[1].tokens.get(&key).await.unwrap().is_none());
}

/// Of 30 callers over 3 replicas, exactly one gets a key's lease; other
/// keys' leases are independent.
pub async fn lease_is_exclusive_across_replicas(h: Harness) {
    let replicas = h.replicas(3).await;
    let key = unique_key("lease");
    let mut tasks = JoinSet::new();
    for i in 0..30 {
        let store = Arc::clone(&replicas[i % 3].tokens);
        let key = key.clone();
        tasks.spawn(async move { store.try_acquire_lease(&key, MINUTE).await.unwrap() });
    }
    let mut holders = 0;
    while let Some(joined) = tasks.join_next().await {
        holders += usize::from(joined.unwrap().is_some());
    }
    assert_eq!(holders, 1, "exactly one lease holder");
    let other = unique_key("lease-other");
    assert!(
        replicas[1]
            .tokens
            .try_acquire_lease(&other, MINUTE)
            .await
            .unwrap()
            .is_some()
    );
}

/// A released lease can be taken again; releasing with a token that does not
/// hold the lease changes nothing.
pub async fn lease_release(h: Harness) {
    let replicas = h.replicas(2).await;
    let key = unique_key("lease-release");
    let first = replicas[0]
        .tokens
        .try_acquire_lease(&key, MINUTE)
        .await
        .unwrap()
        .unwrap();
    assert!(
        replicas[1]
            .tokens
            .try_acquire_lease(&key, MINUTE)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        replicas[0]
            .tokens
            .release_lease(&key, &first)
            .await
            .unwrap()
    );
    let second = replicas[1]
        .tokens
        .try_acquire_lease(&key, MINUTE)
        .await
        .unwrap();
    let second = second.expect("a released lease is free again");
    assert!(
        !replicas[0]
            .tokens
            .release_lease(&key, &first)
            .await
            .unwrap(),
        "the old holder cannot release the new holder's lease"
    );
    assert!(
        replicas[0]
            .tokens
            .try_acquire_lease(&key, MINUTE)
            .await
            .unwrap()
            .is_none(),
        "the new holder still holds it"
    );
    assert!(
        replicas[1]
            .tokens
            .release_lease(&key, &second)
            .await
            .unwrap()
    );
}

/// A lease whose holder never releases it (it died) frees itself after its
/// TTL, and the dead holder's late release does not free the next holder's.
pub async fn lease_expires_when_holder_dies(h: Harness) {
    let replicas = h.replicas(2).await;
    let key = unique_key("lease-ttl");
    let ttl = Duration::from_millis(400);
    let dead = replicas[0]
        .tokens
        .try_acquire_lease(&key, ttl)
        .await
        .unwrap()
        .unwrap();
    assert!(
        replicas[1]
            .tokens
            .try_acquire_lease(&key, MINUTE)
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(ttl + Duration::from_millis(250)).await;
    let next = replicas[1]
        .tokens
        .try_acquire_lease(&key, MINUTE)
        .await
        .unwrap();
    assert!(next.is_some(), "an expired lease can be taken");
    assert!(!replicas[0].tokens.release_lease(&key, &dead).await.unwrap());
    assert!(
        replicas[0]
            .tokens
            .try_acquire_lease(&key, MINUTE)
            .await
            .unwrap()
            .is_none()
    );
}

/// Insert, get and take a flow; a taken flow is gone.
pub async fn pending_insert_get_take(h: Harness) {
    let store = h.replica().await.pending;
    let key = unique_key("flow");
    let f = flow(&key, MINUTE);
    assert_eq!(store.insert(&f).await.unwrap(), InsertOutcome::Inserted);
    let read = store
        .get_flow(&f.state)
        .await
        .unwrap()
        .expect("inserted flow");
    assert_eq!(read.state, f.state);
    assert_eq!(read.key, f.key);
    assert_eq!(
        read.pkce_verifier.expose_secret(),
        f.pkce_verifier.expose_secret()
    );
    assert_eq!(read.redirect_uri, f.redirect_uri);
    assert_eq!(read.scopes, f.scopes);
    assert_eq!(read.elicitation_id, f.elicitation_id);
    assert_eq!(read.started_by, f.started_by);
    assert_eq!(read.attributes, f.attributes);
    assert_eq!(read.created_at, f.created_at);
    assert_eq!(read.expires_at, f.expires_at);
    assert_eq!(
        store.active_flow(&key).await.unwrap(),
        Some(f.state.clone())
    );

    let taken = store
        .take(&f.state)
        .await
        .unwrap()
        .expect("take returns the flow");
    assert_eq!(taken.state, f.state);
    assert!(
        store.take(&f.state).await.unwrap().is_none(),
        "a flow is taken once"
    );
    assert!(
        store.get_flow(&f.state).await.unwrap().is_none(),
        "a taken flow is gone"
    );
    assert!(
        store
            .get_flow(&FlowState::generate())
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.take(&FlowState::generate()).await.unwrap().is_none());
}

/// 50 concurrent takers over 3 replicas: exactly one gets each flow.
pub async fn take_exactly_once(h: Harness) {
    let replicas = h.replicas(3).await;
    let mut states = Vec::new();
    for i in 0..5 {
        let f = flow(&unique_key(&format!("take-{i}")), MINUTE);
        replicas[0].pending.insert(&f).await.unwrap();
        states.push(f.state);
    }
    for state in states {
        let barrier = Arc::new(tokio::sync::Barrier::new(50));
        let mut tasks = JoinSet::new();
        for i in 0..50 {
            let store = Arc::clone(&replicas[i % 3].pending);
            let state = state.clone();
            let barrier = Arc::clone(&barrier);
            tasks.spawn(async move {
                barrier.wait().await;
                store.take(&state).await.unwrap().is_some()
            });
        }
        let mut winners = 0;
        while let Some(joined) = tasks.join_next().await {
            winners += usize::from(joined.unwrap());
        }
        assert_eq!(winners, 1, "exactly one of 50 takers gets the flow");
    }
}

/// An expired flow is gone for get, take and active_flow, and no longer
/// blocks a new flow for its key.
pub async fn pending_expiry(h: Harness) {
    let replicas = h.replicas(2).await;
    let key = unique_key("expiry");
    let short = flow(&key, Duration::from_millis(400));
    assert_eq!(
        replicas[0].pending.insert(&short).await.unwrap(),
        InsertOutcome::Inserted
    );
    assert!(
        replicas[1]
            .pending
            .get_flow(&short.state)
            .await
            .unwrap()
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        replicas[1]
            .pending
            .get_flow(&short.state)
            .await
            .unwrap()
            .is_none(),
        "expired: get"
    );
    assert!(
        replicas[1]
            .pending
            .active_flow(&key)
            .await
            .unwrap()
            .is_none(),
        "expired: active"
    );
    assert!(
        replicas[1]
            .pending
            .take(&short.state)
            .await
            .unwrap()
            .is_none(),
        "expired: take"
    );
    let next = flow(&key, MINUTE);
    assert_eq!(
        replicas[0].pending.insert(&next).await.unwrap(),
        InsertOutcome::Inserted,
        "an expired flow does not block a new one"
    );
}

/// Concurrent inserts of flows for one key over 3 replicas: one is inserted,
/// every other joins it. The key stays busy while the flow is being
/// completed, and is free after completion.
pub async fn one_active_flow_per_key(h: Harness) {
    let replicas = h.replicas(3).await;
    let key = unique_key("one-flow");
    let barrier = Arc::new(tokio::sync::Barrier::new(30));
    let mut tasks = JoinSet::new();
    for i in 0..30 {
        let store = Arc::clone(&replicas[i % 3].pending);
        let candidate = flow(&key, MINUTE);
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            barrier.wait().await;
            let outcome = store.insert(&candidate).await.unwrap();
            (candidate.state, outcome)
        });
    }
    let mut inserted = Vec::new();
    let mut joined = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            (state, InsertOutcome::Inserted) => inserted.push(state),
            (_, InsertOutcome::Joined(state)) => joined.push(state),
        }
    }
    assert_eq!(inserted.len(), 1, "exactly one flow is started");
    let active = inserted.pop().unwrap();
    assert!(
        joined.iter().all(|state| *state == active),
        "every other caller joins that flow"
    );
    assert_eq!(
        replicas[2].pending.active_flow(&key).await.unwrap(),
        Some(active.clone())
    );

    // Another key is unaffected.
    let other = flow(&unique_key("one-flow-other"), MINUTE);
    assert_eq!(
        replicas[1].pending.insert(&other).await.unwrap(),
        InsertOutcome::Inserted
    );

    // Taken but not yet completed: still busy, callers keep joining.
    let taken = replicas[1]
        .pending
        .take(&active)
        .await
        .unwrap()
        .expect("take");
    assert_eq!(
        replicas[0]
            .pending
            .insert(&flow(&key, MINUTE))
            .await
            .unwrap(),
        InsertOutcome::Joined(active.clone()),
        "a flow being completed still counts as active"
    );
    replicas[1]
        .pending
        .complete(
            &key,
            &taken.state,
            &FlowOutcome::Authorized {
                revision: Revision::new(1),
            },
            MINUTE,
        )
        .await
        .unwrap();
    assert!(
        replicas[0]
            .pending
            .active_flow(&key)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        replicas[2]
            .pending
            .insert(&flow(&key, MINUTE))
            .await
            .unwrap(),
        InsertOutcome::Inserted,
        "after completion a new flow can start"
    );
}

/// Waiters on several replicas, started before the completion, all wake with
/// the outcome; a waiter started after it gets the outcome at once.
pub async fn complete_wakes_waiters_across_replicas(h: Harness) {
    let replicas = h.replicas(3).await;
    let key = unique_key("wake");
    let f = flow(&key, MINUTE);
    replicas[0].pending.insert(&f).await.unwrap();
    let mut waiters = JoinSet::new();
    for i in 0..9 {
        let store = Arc::clone(&replicas[i % 3].pending);
        let state = f.state.clone();
        waiters.spawn(async move { store.wait(&state, Duration::from_secs(20)).await.unwrap() });
    }
    // Let the waiters start waiting before the completion lands.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outcome = FlowOutcome::Denied {
        error: "access_denied".into(),
        description: Some("the user said no".into()),
    };
    let taken = replicas[1].pending.take(&f.state).await.unwrap().unwrap();
    let completed_at = Instant::now();
    replicas[1]
        .pending
        .complete(&key, &taken.state, &outcome, MINUTE)
        .await
        .unwrap();
    let mut woken = 0;
    while let Some(joined) = waiters.join_next().await {
        assert_eq!(
            joined.unwrap(),
            Some(outcome.clone()),
            "every waiter sees the outcome"
        );
        woken += 1;
    }
    assert_eq!(woken, 9);
    assert!(
        completed_at.elapsed() < Duration::from_secs(5),
        "waiters wake promptly, not at their timeout"
    );
    let late = replicas[2]
        .pending
        .wait(&f.state, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        late,
        Some(outcome.clone()),
        "a waiter after completion gets the outcome at once"
    );
    assert_eq!(
        replicas[0].pending.outcome(&f.state).await.unwrap(),
        Some(outcome)
    );
}

/// A wait on a flow nobody completes returns `None` at its timeout.
pub async fn wait_times_out(h: Harness) {
    let store = h.replica().await.pending;
    let f = flow(&unique_key("timeout"), MINUTE);
    store.insert(&f).await.unwrap();
    let started = Instant::now();
    let waited = store
        .wait(&f.state, Duration::from_millis(300))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(waited, None);
    assert!(
        elapsed >= Duration::from_millis(290),
        "returned before its timeout: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "returned long after its timeout: {elapsed:?}"
    );
    assert!(
        store.get_flow(&f.state).await.unwrap().is_some(),
        "a timed-out wait leaves the flow alone"
    );
}

/// An outcome stays readable for its TTL and is gone after.
pub async fn outcome_ttl(h: Harness) {
    let replicas = h.replicas(2).await;
    let key = unique_key("outcome");
    let f = flow(&key, MINUTE);
    replicas[0].pending.insert(&f).await.unwrap();
    replicas[0].pending.take(&f.state).await.unwrap().unwrap();
    let outcome = FlowOutcome::Failed {
        reason: "exchange failed".into(),
    };
    replicas[0]
        .pending
        .complete(&key, &f.state, &outcome, Duration::from_millis(400))
        .await
        .unwrap();
    assert_eq!(
        replicas[1].pending.outcome(&f.state).await.unwrap(),
        Some(outcome)
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        replicas[1].pending.outcome(&f.state).await.unwrap(),
        None,
        "outcome past its TTL"
    );
    assert_eq!(
        replicas[1]
            .pending
            .wait(&f.state, Duration::from_millis(100))
            .await
            .unwrap(),
        None,
        "an expired outcome does not satisfy a wait"
    );
}

/// Purge removes what expired and keeps what is live.
pub async fn purge_removes_expired_only(h: Harness) {
    let store = h.replica().await.pending;
    let mut expiring = Vec::new();
    for i in 0..3 {
        let key = unique_key(&format!("purge-{i}"));
        let f = flow(&key, Duration::from_millis(300));
        store.insert(&f).await.unwrap();
        expiring.push(f);
    }
    let done = flow(&unique_key("purge-done"), MINUTE);
    store.insert(&done).await.unwrap();
    store.take(&done.state).await.unwrap();
    store
        .complete(
            &done.key,
            &done.state,
            &FlowOutcome::Failed { reason: "x".into() },
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    let live = flow(&unique_key("purge-live"), MINUTE);
    store.insert(&live).await.unwrap();
    let live_done = flow(&unique_key("purge-live-done"), MINUTE);
    store.insert(&live_done).await.unwrap();
    store.take(&live_done.state).await.unwrap();
    let kept = FlowOutcome::Authorized {
        revision: Revision::new(9),
    };
    store
        .complete(&live_done.key, &live_done.state, &kept, MINUTE)
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(600)).await;
    let report = store.purge_expired().await.unwrap();
    // Backends with native TTLs (Redis) may have dropped entries already, so
    // counts are bounded, not exact.
    assert!(
        report.flows <= 3 && report.outcomes <= 1,
        "purge counted live entries: {report:?}"
    );
    for f in &expiring {
        assert!(store.get_flow(&f.state).await.unwrap().is_none());
        assert!(store.active_flow(&f.key).await.unwrap().is_none());
    }
    assert!(store.outcome(&done.state).await.unwrap().is_none());
    assert!(
        store.get_flow(&live.state).await.unwrap().is_some(),
        "purge keeps live flows"
    );
    assert_eq!(
        store.active_flow(&live.key).await.unwrap(),
        Some(live.state.clone())
    );
    assert_eq!(
        store.outcome(&live_done.state).await.unwrap(),
        Some(kept),
        "purge keeps live outcomes"
    );
    let again = store.purge_expired().await.unwrap();
    assert_eq!(again.total(), 0, "a second purge finds nothing: {again:?}");
}

/// Durations too large for the clock (`Duration::MAX`, `u64::MAX / 2`
/// seconds) mean "as long as possible" on every backend alike: a lease with
/// such a TTL is held until released, a flow with such a TTL stays pending,
/// an outcome kept that long stays readable, and a wait that long returns
/// when the flow completes. No panic, no error.
pub async fn huge_durations_mean_as_long_as_possible(h: Harness) {
    let replicas = h.replicas(2).await;
    for (i, huge) in [Duration::MAX, Duration::from_secs(u64::MAX / 2)]
        .into_iter()
        .enumerate()
    {
        let key = unique_key(&format!("huge-lease-{i}"));
        let lease = replicas[0]
            .tokens
            .try_acquire_lease(&key, huge)
            .await
            .unwrap()
            .expect("a free lease is taken whatever its TTL");
        assert!(
            replicas[1]
                .tokens
                .try_acquire_lease(&key, huge)
                .await
                .unwrap()
                .is_none(),
            "the lease is held"
        );
        assert!(
            replicas[1]
                .tokens
                .release_lease(&key, &lease)
                .await
                .unwrap(),
            "still held when released"
        );

        let key = unique_key(&format!("huge-flow-{i}"));
        let f = flow(&key, huge);
        assert_eq!(
            replicas[0].pending.insert(&f).await.unwrap(),
            InsertOutcome::Inserted
        );
        assert!(
            replicas[1]
                .pending
                .get_flow(&f.state)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            replicas[1].pending.active_flow(&key).await.unwrap(),
            Some(f.state.clone())
        );
        let waiter = {
            let (pending, state) = (Arc::clone(&replicas[0].pending), f.state.clone());
            tokio::spawn(async move { pending.wait(&state, huge).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let taken = replicas[1].pending.take(&f.state).await.unwrap();
        assert!(taken.is_some(), "a flow with a huge TTL is pending");
        let outcome = FlowOutcome::Authorized {
            revision: Revision::new(40 + i as u64),
        };
        replicas[1]
            .pending
            .complete(&key, &f.state, &outcome, huge)
            .await
            .unwrap();
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("a waiter with a huge timeout wakes on completion")
                .unwrap()
                .unwrap(),
            Some(outcome.clone())
        );
        assert_eq!(
            replicas[0].pending.outcome(&f.state).await.unwrap(),
            Some(outcome.clone()),
            "an outcome kept for a huge time is readable"
        );
        assert_eq!(
            replicas[1].pending.wait(&f.state, huge).await.unwrap(),
            Some(outcome),
            "a huge wait after completion returns at once"
        );
    }
}
