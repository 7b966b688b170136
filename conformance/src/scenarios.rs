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
    // Pairs that join to the same text with ':' (or with nothing).
    keys.push(TokenKey::new("p:", "s"));
    keys.push(TokenKey::new("p", ":s"));
    keys.push(TokenKey::new("a:b", "c"));
    keys.push(TokenKey::new("a", "b:c"));
    keys.push(TokenKey::new(":", ""));
    keys.push(TokenKey::new("", ":"));
    keys.push(TokenKey::new("", "x"));
    keys.push(TokenKey::new("x", ""));
    // A NUL byte, where C strings end.
    keys.push(TokenKey::new("nul\0", "s"));
    keys.push(TokenKey::new("nul", "\0s"));
    keys.push(TokenKey::new("p", "nul\0byte"));
    // Very long parts, and one past what a short index would keep.
    keys.push(TokenKey::new("long", "y".repeat(16 * 1024)));
    keys.push(TokenKey::new("long", format!("{}z", "y".repeat(16 * 1024))));
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
            "{}",
            broke(
                guarantee::TOKEN_KEYS,
                format_args!("key {key:?} does not read back its own record")
            )
        );
    }
    // Removing one never touches a look-alike.
    store.delete(&keys[0]).await.unwrap();
    for (i, key) in keys.iter().enumerate().skip(1) {
        assert_eq!(
            access_token_of(&*store, key).await,
            Some(format!("token-{i}")),
            "{}",
            broke(
                guarantee::TOKEN_KEYS,
                format_args!("deleting {:?} changed the record of {key:?}", keys[0])
            )
        );
    }
    // Odd keys work for leases and flows too.
    for key in &keys {
        let lease = store.try_acquire_lease(key, MINUTE).await.unwrap();
        assert!(
            lease.is_some(),
            "{}",
            broke(
                guarantee::TOKEN_KEYS,
                format_args!("the lease of {key:?} was held by another key's lease")
            )
        );
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
    assert!(
        r2 > r1,
        "{}",
        broke(
            guarantee::REVISIONS,
            format_args!("put after {r1} returned {r2}")
        )
    );

    assert_eq!(
        store
            .compare_and_swap(&key, Some(r1), &record("stale"))
            .await
            .unwrap(),
        CasOutcome::Conflict { current: Some(r2) },
        "{}",
        broke(
            guarantee::CAS,
            "compare_and_swap with a stale revision did not conflict"
        )
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
        "{}",
        broke(
            guarantee::REVISIONS,
            format_args!("after {r3} and a delete, put returned {r4}")
        )
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
        "{}",
        broke(
            guarantee::CAS,
            format_args!(
                "of 30 compare-and-swaps from one revision on 3 replicas, these won: {winners:?}"
            )
        )
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
        "{}",
        broke(
            guarantee::CAS,
            "delete_if_revision with the revision before a refresh deleted the refreshed token"
        )
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
    assert_eq!(
        holders,
        1,
        "{}",
        broke(
            guarantee::LEASE,
            format_args!("{holders} of 30 callers on 3 replicas got the same key's lease")
        )
    );
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
    let Some(second) = second else {
        panic!(
            "{}",
            broke(
                guarantee::LEASE,
                "a lease released by its holder could not be taken again"
            )
        )
    };
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
    assert!(
        next.is_some(),
        "{}",
        broke(
            guarantee::LEASE,
            "a lease whose holder never released it was still held 250 ms past its TTL"
        )
    );
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
        assert_eq!(
            winners,
            1,
            "{}",
            broke(
                guarantee::TAKE,
                format_args!("{winners} of 50 takers on 3 replicas got the flow")
            )
        );
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
        "{}",
        broke(
            guarantee::EXPIRED,
            "get_flow returned a flow 300 ms past its expiry"
        )
    );
    assert!(
        replicas[1]
            .pending
            .active_flow(&key)
            .await
            .unwrap()
            .is_none(),
        "{}",
        broke(
            guarantee::EXPIRED,
            "active_flow returned a flow 300 ms past its expiry"
        )
    );
    assert!(
        replicas[1]
            .pending
            .take(&short.state)
            .await
            .unwrap()
            .is_none(),
        "{}",
        broke(
            guarantee::EXPIRED,
            "take returned a flow 300 ms past its expiry"
        )
    );
    let next = flow(&key, MINUTE);
    assert_eq!(
        replicas[0].pending.insert(&next).await.unwrap(),
        InsertOutcome::Inserted,
        "{}",
        broke(
            guarantee::EXPIRED,
            "a new flow for the key joined the expired one"
        )
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
    assert_eq!(
        inserted.len(),
        1,
        "{}",
        broke(
            guarantee::ONE_ACTIVE,
            format_args!(
                "{} of 30 concurrent inserts for one key on 3 replicas were Inserted",
                inserted.len()
            )
        )
    );
    let active = inserted.pop().unwrap();
    assert!(
        joined.iter().all(|state| *state == active),
        "{}",
        broke(
            guarantee::ONE_ACTIVE,
            format_args!("the others joined {joined:?}, not only the inserted {active:?}")
        )
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
        "{}",
        broke(
            guarantee::ONE_ACTIVE,
            "an insert for a key whose flow was taken (being completed) was not joined to it"
        )
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
        "{}",
        broke(
            guarantee::ONE_ACTIVE,
            "after complete, a new flow for the key was still joined to the completed one"
        )
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
        let got = joined.unwrap();
        assert_eq!(
            got,
            Some(outcome.clone()),
            "{}",
            broke(
                guarantee::WAKE,
                format_args!(
                    "a waiter started 300 ms before the completion on another replica got {got:?}"
                )
            )
        );
        woken += 1;
    }
    assert_eq!(woken, 9);
    let took = completed_at.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "{}",
        broke(
            guarantee::WAKE,
            format_args!("the 9 waiters took {took:?} after the completion to wake")
        )
    );
    let late = replicas[2]
        .pending
        .wait(&f.state, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        late,
        Some(outcome.clone()),
        "{}",
        broke(
            guarantee::WAKE,
            "a wait started after complete did not return the outcome"
        )
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

/// The guarantees of the trait docs, in their words, for failure messages.
pub(crate) mod guarantee {
    pub const TOKEN_KEYS: &str = "Keys are isolated: no operation on one key reads or changes \
         another, whatever characters the provider and subject contain. (TokenStore)";
    pub const PENDING_KEYS: &str = "Keys are isolated in every structure (flows, the active flow \
         of a key, outcomes), whatever characters the provider and subject contain. (PendingStore)";
    pub const REVISIONS: &str = "Every write stores the record at a new revision that is greater \
         than every revision the key had before, also after a delete. (TokenStore)";
    pub const CAS: &str = "compare_and_swap and delete_if_revision are atomic with respect to \
         every other operation in every process. (TokenStore)";
    pub const LEASE: &str = "A refresh lease has at most one holder across all processes sharing \
         the backend; it ends when released by its holder or when its TTL passes. (TokenStore)";
    pub const RELEASE_EXPIRED: &str = "release_lease: false whenever the lease was no longer \
         held: released already, taken over by another holder, or past its TTL, even if nobody \
         took it over since. (TokenStore)";
    pub const EXPIRED: &str =
        "An expired flow (past its expires_at) is gone for every operation. (PendingStore)";
    pub const TAKE: &str = "take returns a flow to exactly one caller, across all processes, \
         however many race for it. (PendingStore)";
    pub const ONE_ACTIVE: &str = "One active flow per TokenKey: while a flow for a key is \
         pending or being completed, insert of another flow for that key returns \
         InsertOutcome::Joined with the active flow's state, decided atomically. (PendingStore)";
    pub const WAKE: &str = "complete wakes every waiter in every process; a wait that starts \
         after complete returns the outcome at once (it is kept for keep_for); no completion is \
         ever missed. (PendingStore)";
    pub const MANY_WAITERS: &str = "Waiting on many flows does not cost a connection (or a \
         thread) per waiter. (PendingStore)";
    pub const HUGE_DURATIONS: &str = "Every backend takes any Duration (Duration::MAX \
         included) as \"as long as possible\" for TTLs, keep-times and waits, never a panic. \
         (DESIGN.md, store guarantees)";
    pub const SINGLE_FLIGHT: &str = "A token within refresh_skew of its expiry is refreshed \
         once, however many callers ask at the same time: inside a process, and across \
         processes through the store's refresh lease. (TokenLifecycle)";
    pub const REFRESH_FAILURES: &str = "Failures are classified: invalid_grant removes the token \
         (by revision, so a token another replica just refreshed survives) and asks for a new \
         authorization; anything else never deletes the token. (TokenLifecycle)";
    pub const CROSS_PROCESS: &str = "take returns a flow to exactly one caller, across all \
         processes; complete wakes every waiter in every process; a refresh lease has at most \
         one holder across all processes sharing the backend. (PendingStore, TokenStore)";
    pub const COMPLETE_UNTAKEN: &str = "A flow completed without being taken first ends all the \
         same: it is gone for get_flow and take, no longer its key's active flow, and its \
         outcome is what waiters get. (PendingStore::complete)";
}

/// The guarantee a scenario checks, in the docs' words: what a failure
/// whose check did not name one is reported under.
pub(crate) fn guarantee_of(scenario: &str) -> &'static str {
    use guarantee::*;
    match scenario {
        "token_crud_and_isolation" | "odd_keys" | "scan_lists_every_key" => TOKEN_KEYS,
        "keys_isolated_in_every_structure" => PENDING_KEYS,
        "revisions_and_compare_and_swap" => REVISIONS,
        "concurrent_compare_and_swap_has_one_winner" | "stale_invalidation_keeps_newer_token" => {
            CAS
        }
        "lease_is_exclusive_across_replicas"
        | "lease_release"
        | "lease_expires_when_holder_dies" => LEASE,
        "releasing_an_expired_lease_reports_false" => RELEASE_EXPIRED,
        "pending_insert_get_take" | "take_exactly_once" => TAKE,
        "pending_expiry" | "purge_removes_expired_only" => EXPIRED,
        "one_active_flow_per_key" => ONE_ACTIVE,
        "complete_wakes_waiters_across_replicas"
        | "complete_racing_the_start_of_wait"
        | "wait_times_out"
        | "outcome_ttl" => WAKE,
        "complete_of_a_never_taken_flow_ends_it" => COMPLETE_UNTAKEN,
        "many_waiters_cost_no_thread_or_connection_each" => MANY_WAITERS,
        "huge_durations_mean_as_long_as_possible" | "huge_durations_in_the_lifecycle" => {
            HUGE_DURATIONS
        }
        "single_flight_refresh_across_replicas" => SINGLE_FLIGHT,
        "invalid_grant_leads_to_new_authorization"
        | "invalid_grant_spares_a_token_written_meanwhile"
        | "transient_refresh_failure_keeps_token" => REFRESH_FAILURES,
        "flow_completes_across_replicas" => WAKE,
        "cross_process" => CROSS_PROCESS,
        _ => "the scenario's own docs say what it checks",
    }
}

/// A failure message: the guarantee in the trait docs' words, then what was
/// seen.
pub(crate) fn broke(guarantee: &str, seen: impl std::fmt::Display) -> String {
    format!("guarantee broken: \"{guarantee}\"\n  seen: {seen}")
}

/// A small random number generator for jitter: the suite needs no
/// cryptographic randomness, only rounds that differ.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        let seed = mcp_authkit_core::random_urlsafe(8)
            .bytes()
            .fold(0x9E37_79B9_7F4A_7C15_u64, |acc, b| {
                (acc ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
            });
        Jitter(seed | 1)
    }

    /// Uniform-ish in `0..=max`.
    fn up_to(&mut self, max: Duration) -> Duration {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.0 % nanos.saturating_add(1))
    }
}

/// Waits `delay` precisely (timers have millisecond resolution): sleeps the
/// whole milliseconds, then yields until the instant.
async fn pause(delay: Duration) {
    let until = Instant::now() + delay;
    if delay > Duration::from_millis(2) {
        tokio::time::sleep(delay - Duration::from_millis(1)).await;
    }
    while Instant::now() < until {
        tokio::task::yield_now().await;
    }
}

/// Every keyed structure of both traits keeps odd keys apart: leases, flows,
/// the active flow of a key, and outcomes (tokens: [`odd_keys`]). Keys that
/// join to the same text with `':'`, empty parts, unicode, a NUL byte and
/// very long parts each have their own.
pub async fn keys_isolated_in_every_structure(h: Harness) {
    use guarantee::{PENDING_KEYS, TOKEN_KEYS};
    let replicas = h.replicas(2).await;
    let keys = odd_key_set();

    // Leases: each key has its own.
    let mut leases = Vec::new();
    for key in &keys {
        let lease = replicas[0]
            .tokens
            .try_acquire_lease(key, MINUTE)
            .await
            .unwrap();
        let Some(lease) = lease else {
            panic!(
                "{}",
                broke(
                    TOKEN_KEYS,
                    format_args!(
                        "the lease of {key:?} was not free: taking the leases of the other odd \
                         keys took it (is the lease keyed by provider and subject joined \
                         together?)"
                    )
                )
            )
        };
        leases.push(lease);
    }
    assert!(
        replicas[0]
            .tokens
            .release_lease(&keys[0], &leases[0])
            .await
            .unwrap(),
        "{}",
        broke(
            guarantee::LEASE,
            format_args!("releasing the held lease of {:?} said false", keys[0])
        )
    );
    for key in &keys[1..] {
        assert!(
            replicas[1]
                .tokens
                .try_acquire_lease(key, MINUTE)
                .await
                .unwrap()
                .is_none(),
            "{}",
            broke(
                TOKEN_KEYS,
                format_args!(
                    "releasing the lease of {:?} freed the lease of {key:?}",
                    keys[0]
                )
            )
        );
    }

    // Flows and the active flow of each key.
    let mut flows = Vec::new();
    for key in &keys {
        let f = flow(key, MINUTE);
        let inserted = replicas[0].pending.insert(&f).await.unwrap();
        assert_eq!(
            inserted,
            InsertOutcome::Inserted,
            "{}",
            broke(
                PENDING_KEYS,
                format_args!(
                    "the first flow of {key:?} was {inserted:?}: it joined the flow of another \
                     odd key (is the active-flow index keyed by provider and subject joined \
                     together?)"
                )
            )
        );
        flows.push(f);
    }
    for f in &flows {
        let active = replicas[1].pending.active_flow(&f.key).await.unwrap();
        assert_eq!(
            active.as_ref(),
            Some(&f.state),
            "{}",
            broke(
                PENDING_KEYS,
                format_args!("the active flow of {:?} is {active:?}", f.key)
            )
        );
        let read = replicas[1]
            .pending
            .get_flow(&f.state)
            .await
            .unwrap()
            .map(|r| r.key);
        assert_eq!(
            read.as_ref(),
            Some(&f.key),
            "{}",
            broke(
                PENDING_KEYS,
                format_args!("the flow of {:?} reads back as key {read:?}", f.key)
            )
        );
    }

    // Outcomes: complete every other key's flow; the rest stay untouched.
    let outcome_of = |i: usize| FlowOutcome::Failed {
        reason: format!("outcome-{i}"),
    };
    for (i, f) in flows.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let taken = replicas[0]
            .pending
            .take(&f.state)
            .await
            .unwrap()
            .map(|t| t.key);
        assert_eq!(
            taken.as_ref(),
            Some(&f.key),
            "{}",
            broke(
                PENDING_KEYS,
                format_args!("taking the flow of {:?} gave key {taken:?}", f.key)
            )
        );
        replicas[0]
            .pending
            .complete(&f.key, &f.state, &outcome_of(i), MINUTE)
            .await
            .unwrap();
    }
    for (i, f) in flows.iter().enumerate() {
        let active = replicas[1].pending.active_flow(&f.key).await.unwrap();
        let outcome = replicas[1].pending.outcome(&f.state).await.unwrap();
        if i % 2 == 0 {
            assert_eq!(
                (active.as_ref(), outcome.as_ref()),
                (None, Some(&outcome_of(i))),
                "{}",
                broke(
                    PENDING_KEYS,
                    format_args!(
                        "after completing the flow of {:?}: active flow {active:?}, outcome \
                         {outcome:?}",
                        f.key
                    )
                )
            );
        } else {
            assert_eq!(
                (active.as_ref(), outcome.as_ref()),
                (Some(&f.state), None),
                "{}",
                broke(
                    PENDING_KEYS,
                    format_args!(
                        "completing the flows of other odd keys changed {:?}: its active flow \
                         is {active:?} (expected its own, still pending), its outcome \
                         {outcome:?} (expected none)",
                        f.key
                    )
                )
            );
            assert!(
                replicas[1]
                    .pending
                    .get_flow(&f.state)
                    .await
                    .unwrap()
                    .is_some(),
                "{}",
                broke(
                    PENDING_KEYS,
                    format_args!(
                        "completing other keys' flows removed the flow of {:?}",
                        f.key
                    )
                )
            );
        }
    }
}

/// Releasing a lease whose TTL passed, and that nobody took over, reports
/// `false`; the lease is free.
pub async fn releasing_an_expired_lease_reports_false(h: Harness) {
    let replicas = h.replicas(2).await;
    let key = unique_key("lease-ran-out");
    let ttl = Duration::from_millis(300);
    let lease = replicas[0]
        .tokens
        .try_acquire_lease(&key, ttl)
        .await
        .unwrap()
        .expect("a free lease is taken");
    tokio::time::sleep(ttl + Duration::from_millis(250)).await;
    let released = replicas[0]
        .tokens
        .release_lease(&key, &lease)
        .await
        .unwrap();
    assert!(
        !released,
        "{}",
        broke(
            guarantee::RELEASE_EXPIRED,
            "release_lease returned true for a lease 250 ms past its TTL that nobody took over"
        )
    );
    assert!(
        replicas[1]
            .tokens
            .try_acquire_lease(&key, MINUTE)
            .await
            .unwrap()
            .is_some(),
        "{}",
        broke(
            guarantee::LEASE,
            "the lease was not free after its TTL passed and it was released"
        )
    );
}

/// `complete` of a flow nobody took ends it: gone for get and take, no
/// longer active, and waiters get its outcome; a new flow for the key starts.
pub async fn complete_of_a_never_taken_flow_ends_it(h: Harness) {
    use guarantee::COMPLETE_UNTAKEN;
    let replicas = h.replicas(2).await;
    let key = unique_key("complete-untaken");
    let f = flow(&key, MINUTE);
    replicas[0].pending.insert(&f).await.unwrap();
    let waiter = {
        let (pending, state) = (Arc::clone(&replicas[1].pending), f.state.clone());
        tokio::spawn(async move { pending.wait(&state, Duration::from_secs(10)).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let outcome = FlowOutcome::Failed {
        reason: "timed out".into(),
    };
    replicas[0]
        .pending
        .complete(&key, &f.state, &outcome, MINUTE)
        .await
        .unwrap();
    let seen = (
        replicas[1]
            .pending
            .get_flow(&f.state)
            .await
            .unwrap()
            .is_some(),
        replicas[1].pending.active_flow(&key).await.unwrap(),
        replicas[1].pending.take(&f.state).await.unwrap().is_some(),
    );
    assert_eq!(
        seen,
        (false, None, false),
        "{}",
        broke(
            COMPLETE_UNTAKEN,
            format_args!(
                "after complete without take: get_flow found it {}, active flow {:?}, take \
                 got it {}",
                seen.0, seen.1, seen.2
            )
        )
    );
    let woken = waiter.await.unwrap();
    assert_eq!(
        woken.as_ref(),
        Some(&outcome),
        "{}",
        broke(COMPLETE_UNTAKEN, format_args!("the waiter got {woken:?}"))
    );
    let next = replicas[1]
        .pending
        .insert(&flow(&key, MINUTE))
        .await
        .unwrap();
    assert_eq!(
        next,
        InsertOutcome::Inserted,
        "{}",
        broke(
            COMPLETE_UNTAKEN,
            format_args!("a new flow for the key was {next:?}")
        )
    );
}

/// Rounds of the race between `complete` and the start of `wait`.
const RACE_ROUNDS: usize = 240;
/// Rounds run at once (each its own flow).
const RACE_BATCH: usize = 24;
/// How long a racing wait may take; a woken one returns in milliseconds.
const RACE_WAIT: Duration = Duration::from_secs(2);

/// `complete` on one replica races the *start* of `wait` on others: 240
/// rounds, the completion landing at a random moment within a few round
/// trips of the wait's start (where a store that looks, then subscribes,
/// loses it). Every wait returns the outcome, long before its timeout.
pub async fn complete_racing_the_start_of_wait(h: Harness) {
    let replicas = h.replicas(3).await;
    // One round trip of this backend: the median of a few cheap reads.
    let mut samples = Vec::new();
    for _ in 0..15 {
        let started = Instant::now();
        replicas[1]
            .pending
            .outcome(&FlowState::generate())
            .await
            .unwrap();
        samples.push(started.elapsed());
    }
    samples.sort();
    let round_trip = samples[samples.len() / 2];
    // Around a round trip on each side, and at least a few milliseconds, so
    // a gap the size of a network round trip is hit on any backend.
    let window = (round_trip * 4).max(Duration::from_millis(4));
    let mut jitter = Jitter::new();
    let mut missed = Vec::new();
    let mut rounds_run = 0;
    for batch in 0..RACE_ROUNDS / RACE_BATCH {
        rounds_run += RACE_BATCH;
        let mut flows = Vec::new();
        for i in 0..RACE_BATCH {
            let round = batch * RACE_BATCH + i;
            let f = flow(&unique_key(&format!("race-{round}")), MINUTE);
            replicas[0].pending.insert(&f).await.unwrap();
            flows.push((round, f));
        }
        let mut rounds = JoinSet::new();
        for (round, f) in flows {
            let completer = replicas[0].clone();
            let waiter = Arc::clone(&replicas[1 + round % 2].pending);
            // Either side may go first.
            let (wait_delay, complete_delay) = if round % 3 == 0 {
                (jitter.up_to(window / 4), Duration::ZERO)
            } else {
                (Duration::ZERO, jitter.up_to(window))
            };
            rounds.spawn(async move {
                let outcome = FlowOutcome::Authorized {
                    revision: Revision::new(round as u64 + 1),
                };
                let wait = {
                    let state = f.state.clone();
                    tokio::spawn(async move {
                        pause(wait_delay).await;
                        let began = Instant::now();
                        let got = waiter.wait(&state, RACE_WAIT).await.unwrap();
                        (got, began)
                    })
                };
                pause(complete_delay).await;
                let completed_at = Instant::now();
                completer
                    .pending
                    .complete(&f.key, &f.state, &outcome, MINUTE)
                    .await
                    .unwrap();
                let (got, began) = wait.await.unwrap();
                let lead = if completed_at >= began {
                    format!("{:.2?} after the wait began", completed_at - began)
                } else {
                    format!("{:.2?} before the wait began", began - completed_at)
                };
                (round, got == Some(outcome), got, lead, began.elapsed())
            });
        }
        while let Some(joined) = rounds.join_next().await {
            let (round, ok, got, lead, took) = joined.unwrap();
            if !ok {
                missed.push(format!(
                    "round {round}: wait returned {got:?} after {took:.2?}, complete \
                     started {lead}"
                ));
            }
        }
        if !missed.is_empty() {
            // Red already; no need to wait out more timeouts.
            break;
        }
    }
    assert!(
        missed.is_empty(),
        "{}",
        broke(
            guarantee::WAKE,
            format_args!(
                "{} waits (of the first {} rounds of {RACE_ROUNDS}) that started about when another replica completed \
                 the flow missed the completion (round trip {round_trip:.2?}, completions spread \
                 over {window:.2?}; a store that reads the outcome, then subscribes, loses a \
                 completion landing in between):\n    {}",
                missed.len(),
                rounds_run,
                missed
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n    ")
            )
        )
    );
}

/// Waiters in the many-waiters scenario.
const MANY_WAITERS: usize = 1_000;

/// The threads of this process (Linux: `/proc/self/status`).
fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Samples the thread count a few times; other tests of the binary start
/// and stop threads meanwhile, so the caller takes the max before and the
/// min during.
async fn thread_samples() -> Vec<usize> {
    let mut samples = Vec::new();
    for _ in 0..3 {
        samples.extend(thread_count());
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    samples
}

/// 1,000 waiters on two replicas cost neither a thread nor a connection
/// each: while they wait, the process has fewer than 250 more threads than
/// before (a thread per waiter would add 1,000), and, when the backend
/// reports its connections, fewer than 100 more connections. The waiters
/// still wake: ten completions wake their ten.
pub async fn many_waiters_cost_no_thread_or_connection_each(h: Harness) {
    use guarantee::MANY_WAITERS as GUARANTEE;
    let replicas = h.replicas(2).await;
    // Warm up what a backend opens lazily on the first wait.
    for replica in &replicas {
        replica
            .pending
            .wait(&FlowState::generate(), Duration::from_millis(20))
            .await
            .unwrap();
    }
    let threads_before = thread_samples().await.into_iter().max();
    let connections_before = h.connections().await;

    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut states = Vec::new();
    let mut waiters = JoinSet::new();
    for i in 0..MANY_WAITERS {
        let state = FlowState::generate();
        states.push(state.clone());
        let pending = Arc::clone(&replicas[i % 2].pending);
        let finished = Arc::clone(&finished);
        waiters.spawn(async move {
            let got = pending.wait(&state, Duration::from_secs(4)).await.unwrap();
            finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (i, got)
        });
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let threads_during = thread_samples().await.into_iter().min();
    let connections_during = h.connections().await;
    let early = finished.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        early,
        0,
        "{}",
        broke(
            guarantee::WAKE,
            format_args!("{early} waits returned before any completion")
        )
    );
    if let (Some(before), Some(during)) = (threads_before, threads_during) {
        let extra = during.saturating_sub(before);
        assert!(
            extra < MANY_WAITERS / 4,
            "{}",
            broke(
                GUARANTEE,
                format_args!(
                    "{MANY_WAITERS} waiters added {extra} threads to the process ({before} \
                     before, {during} while they waited)"
                )
            )
        );
    }
    if let (Some(before), Some(during)) = (connections_before, connections_during) {
        let extra = during.saturating_sub(before);
        assert!(
            extra < MANY_WAITERS / 10,
            "{}",
            broke(
                GUARANTEE,
                format_args!(
                    "{MANY_WAITERS} waiters added {extra} connections ({before} before, \
                     {during} while they waited, as Backend::connections reports them)"
                )
            )
        );
    }

    // They are really waiting: completions wake theirs.
    let woken: Vec<usize> = (0..10).map(|i| i * (MANY_WAITERS / 10)).collect();
    for &i in &woken {
        replicas[(i + 1) % 2]
            .pending
            .complete(
                &unique_key("many-waiters"),
                &states[i],
                &FlowOutcome::Authorized {
                    revision: Revision::new(i as u64 + 1),
                },
                MINUTE,
            )
            .await
            .unwrap();
    }
    while let Some(joined) = waiters.join_next().await {
        let (i, got) = joined.unwrap();
        let expected = woken.contains(&i).then(|| FlowOutcome::Authorized {
            revision: Revision::new(i as u64 + 1),
        });
        assert_eq!(
            got,
            expected,
            "{}",
            broke(
                guarantee::WAKE,
                format_args!("waiter {i} of {MANY_WAITERS} returned {got:?}")
            )
        );
    }
}
