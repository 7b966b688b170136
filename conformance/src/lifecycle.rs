//! Lifecycle scenarios: the token lifecycle of `mcp-authkit-core` running on
//! the backend, with several replicas and, where the backend is shared, a
//! second OS process.

use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::testing::{FakeOAuthClient, RefreshBehavior};
use mcp_authkit_core::{
    Access, AuthorizationReason, BeginOutcome, CallbackParams, CasOutcome, Error, ExposeSecret,
    FlowOutcome, FlowRequest, LifecycleConfig, Timestamp, TokenLifecycle, TokenRecord,
};
use tokio::task::JoinSet;

use crate::{Harness, Replica, child};

/// The provider name lifecycle scenarios use.
pub const PROVIDER: &str = "conformance-oauth";

/// A lifecycle over `replica`'s stores with `oauth`, tuned for tests:
/// 60 s refresh skew, 5 s leases.
pub fn lifecycle_on(replica: &Replica, oauth: Arc<FakeOAuthClient>) -> TokenLifecycle {
    let mut config = LifecycleConfig::new("http://127.0.0.1:9/callback", vec!["read".into()]);
    config.lease_ttl = Duration::from_secs(5);
    config.lease_wait = Duration::from_secs(8);
    config.refresh_timeout = Duration::from_secs(3);
    config.refresh_skew = Duration::from_secs(60);
    TokenLifecycle::builder(
        PROVIDER,
        oauth,
        Arc::clone(&replica.tokens),
        Arc::clone(&replica.pending),
    )
    .config(config)
    .build()
    .expect("valid lifecycle config")
}

/// A refreshable token that expires within the refresh skew.
pub fn expiring_record(access: &str, refresh: &str) -> TokenRecord {
    let now = Timestamp::now();
    TokenRecord::new(access, now)
        .with_refresh_token(refresh)
        .with_scopes(["read"])
        .with_expires_at(now.saturating_add(Duration::from_secs(10)))
}

fn unique_subject(label: &str) -> String {
    format!("{label}-{}", mcp_authkit_core::random_urlsafe(6))
}

/// 200 concurrent accesses to an expiring token, spread over 3 replicas
/// (each with its own lifecycle, as separate servers would have), cause
/// exactly one refresh call, and every caller gets the refreshed token.
pub async fn single_flight_refresh_across_replicas(h: Harness) {
    let replicas = h.replicas(3).await;
    let oauth = Arc::new(FakeOAuthClient::new());
    // A slow refresh keeps the race window open.
    oauth.set_refresh_delay(Duration::from_millis(200));
    let lifecycles: Vec<_> = replicas
        .iter()
        .map(|r| lifecycle_on(r, Arc::clone(&oauth)))
        .collect();
    let subject = unique_subject("single-flight");
    let issued = oauth.issue();
    let refresh = issued
        .refresh_token
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_owned();
    lifecycles[0]
        .store_token(&subject, &expiring_record("old-access", &refresh))
        .await
        .unwrap();

    let barrier = Arc::new(tokio::sync::Barrier::new(200));
    let mut tasks = JoinSet::new();
    for i in 0..200 {
        let lifecycle = lifecycles[i % 3].clone();
        let subject = subject.clone();
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            barrier.wait().await;
            lifecycle.access(&subject).await
        });
    }
    let mut tokens = std::collections::BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            Ok(Access::Ready(token)) => {
                tokens.insert(token.secret().expose_secret().to_owned());
            }
            other => panic!("every access must get a token, got {other:?}"),
        }
    }
    assert_eq!(
        oauth.refresh_calls(),
        1,
        "exactly one refresh for 200 concurrent accesses"
    );
    assert_eq!(
        tokens.len(),
        1,
        "everyone gets the same refreshed token: {tokens:?}"
    );
    assert!(
        !tokens.contains("old-access"),
        "the expiring token was replaced"
    );
    let stored = lifecycles[2].stored_token(&subject).await.unwrap().unwrap();
    assert!(tokens.contains(stored.record.access_token.expose_secret()));
    assert!(
        stored.record.expires_at.unwrap()
            > Timestamp::now().saturating_add(Duration::from_secs(600))
    );
}

/// `invalid_grant` on refresh removes the token and asks for a new
/// authorization, which then works end to end.
pub async fn invalid_grant_leads_to_new_authorization(h: Harness) {
    let replicas = h.replicas(2).await;
    let oauth = Arc::new(FakeOAuthClient::new());
    let a = lifecycle_on(&replicas[0], Arc::clone(&oauth));
    let b = lifecycle_on(&replicas[1], Arc::clone(&oauth));
    let subject = unique_subject("invalid-grant");
    a.store_token(&subject, &expiring_record("doomed", "revoked-refresh"))
        .await
        .unwrap();
    oauth.set_refresh_behavior(RefreshBehavior::InvalidGrant);

    match a.access(&subject).await.unwrap() {
        Access::NeedsAuthorization(AuthorizationReason::RefreshRejected) => {}
        other => panic!("invalid_grant must ask for authorization, got {other:?}"),
    }
    assert!(
        b.stored_token(&subject).await.unwrap().is_none(),
        "the rejected token is removed"
    );
    assert_eq!(oauth.refresh_calls(), 1);

    oauth.set_refresh_behavior(RefreshBehavior::Succeed);
    let BeginOutcome::Started(flow) = a
        .begin_authorization(&subject, FlowRequest::default())
        .await
        .unwrap()
    else {
        panic!("a fresh flow starts");
    };
    let code = oauth.approve(&a.authorization_url(&flow).unwrap());
    let completed = b
        .complete_authorization(CallbackParams::success(flow.state.clone(), code))
        .await
        .unwrap();
    assert!(completed.outcome.is_authorized());
    match a.access(&subject).await.unwrap() {
        Access::Ready(token) => assert!(token.secret().expose_secret().starts_with("access-")),
        other => panic!("after authorization a token is ready, got {other:?}"),
    }
}

/// A refresh refused with `invalid_grant` removes only the token it tried
/// to refresh: a newer token that another replica wrote while the refused
/// request was in flight (its own refresh, or a new authorization) is kept
/// and served.
pub async fn invalid_grant_spares_a_token_written_meanwhile(h: Harness) {
    let replicas = h.replicas(2).await;
    let oauth = Arc::new(FakeOAuthClient::new());
    oauth.set_refresh_behavior(RefreshBehavior::InvalidGrant);
    // A slow refusal leaves time for the other replica's write.
    oauth.set_refresh_delay(Duration::from_millis(300));
    let a = lifecycle_on(&replicas[0], Arc::clone(&oauth));
    let b = lifecycle_on(&replicas[1], Arc::clone(&oauth));
    let subject = unique_subject("invalid-grant-race");
    a.store_token(&subject, &expiring_record("stale", "revoked-refresh"))
        .await
        .unwrap();

    let refreshing = {
        let (a, subject) = (a.clone(), subject.clone());
        tokio::spawn(async move { a.access(&subject).await })
    };
    oauth.refresh_calls_reach(1).await;
    let seen = b.stored_token(&subject).await.unwrap().expect("stored");
    let now = Timestamp::now();
    let newer = TokenRecord::new("written-meanwhile", now)
        .with_refresh_token("fresh-refresh")
        .with_scopes(["read"])
        .with_expires_at(now.saturating_add(Duration::from_secs(3600)));
    let newer_revision = match b
        .token_store()
        .compare_and_swap(&b.key(&subject), Some(seen.revision), &newer)
        .await
        .unwrap()
    {
        CasOutcome::Swapped(revision) => revision,
        other => panic!("the other replica's write must land, got {other:?}"),
    };

    match refreshing.await.unwrap().unwrap() {
        Access::Ready(token) => {
            assert_eq!(token.secret().expose_secret(), "written-meanwhile");
            assert_eq!(token.revision(), newer_revision);
        }
        other => panic!("the newer token is served after the refused refresh, got {other:?}"),
    }
    let stored = b
        .stored_token(&subject)
        .await
        .unwrap()
        .expect("the token written meanwhile survives the refused refresh");
    assert_eq!(stored.revision, newer_revision);
    assert_eq!(oauth.refresh_calls(), 1);
}

/// A transient refresh failure never deletes the token: a still-valid token
/// keeps being served, an expired one gives a retryable error.
pub async fn transient_refresh_failure_keeps_token(h: Harness) {
    let replica = h.replica().await;
    let oauth = Arc::new(FakeOAuthClient::new());
    let lifecycle = lifecycle_on(&replica, Arc::clone(&oauth));
    oauth.set_refresh_behavior(RefreshBehavior::Transient);

    let valid = unique_subject("transient-valid");
    lifecycle
        .store_token(&valid, &expiring_record("still-good", "r1"))
        .await
        .unwrap();
    match lifecycle.access(&valid).await.unwrap() {
        Access::Ready(token) => assert_eq!(token.secret().expose_secret(), "still-good"),
        other => panic!("a still-valid token is served after a transient failure, got {other:?}"),
    }
    assert_eq!(oauth.refresh_calls(), 1);
    assert!(
        lifecycle.stored_token(&valid).await.unwrap().is_some(),
        "the token is kept"
    );

    let expired = unique_subject("transient-expired");
    let now = Timestamp::now();
    let record = TokenRecord::new("expired", now.saturating_sub(Duration::from_secs(3600)))
        .with_refresh_token("r2")
        .with_expires_at(now.saturating_sub(Duration::from_secs(1)));
    lifecycle.store_token(&expired, &record).await.unwrap();
    match lifecycle.access(&expired).await {
        Err(error @ Error::OAuth(_)) => assert!(error.is_retryable(), "{error}"),
        other => {
            panic!("an expired token with a failing refresh is a retryable error, got {other:?}")
        }
    }
    assert!(
        lifecycle.stored_token(&expired).await.unwrap().is_some(),
        "a transient failure never deletes"
    );
}

/// A flow begun on one replica is joined by concurrent callers on others,
/// completed by a callback on another, and wakes the waiters everywhere; a
/// replayed callback is refused and changes nothing.
pub async fn flow_completes_across_replicas(h: Harness) {
    let replicas = h.replicas(3).await;
    let oauth = Arc::new(FakeOAuthClient::new());
    let lifecycles: Vec<_> = replicas
        .iter()
        .map(|r| lifecycle_on(r, Arc::clone(&oauth)))
        .collect();
    let subject = unique_subject("flow");

    let mut begins = JoinSet::new();
    for i in 0..12 {
        let lifecycle = lifecycles[i % 3].clone();
        let subject = subject.clone();
        begins.spawn(async move {
            lifecycle
                .begin_authorization(
                    &subject,
                    FlowRequest::default().started_by(format!("session-{i}")),
                )
                .await
                .unwrap()
        });
    }
    let mut started = Vec::new();
    let mut states = std::collections::BTreeSet::new();
    while let Some(joined) = begins.join_next().await {
        let begun = joined.unwrap();
        states.insert(begun.state().clone());
        if let BeginOutcome::Started(flow) = begun {
            started.push(flow);
        }
    }
    assert_eq!(started.len(), 1, "one flow for concurrent callers");
    assert_eq!(states.len(), 1, "everyone shares its state");
    let flow = started.pop().unwrap();

    let mut waiters = JoinSet::new();
    for lifecycle in &lifecycles {
        let lifecycle = lifecycle.clone();
        let state = flow.state.clone();
        waiters.spawn(async move {
            lifecycle
                .wait(&state, Duration::from_secs(20))
                .await
                .unwrap()
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let code = oauth.approve(&lifecycles[0].authorization_url(&flow).unwrap());
    let params = CallbackParams::success(flow.state.clone(), code);
    let completed = lifecycles[2]
        .complete_authorization(params.clone())
        .await
        .unwrap();
    let FlowOutcome::Authorized { revision } = completed.outcome else {
        panic!("authorized, got {:?}", completed.outcome);
    };
    while let Some(joined) = waiters.join_next().await {
        assert_eq!(joined.unwrap(), Some(FlowOutcome::Authorized { revision }));
    }
    match lifecycles[1].complete_authorization(params).await {
        Err(Error::FlowNotFound) => {}
        other => panic!("a replayed callback is refused, got {other:?}"),
    }
    assert_eq!(
        oauth.exchange_calls(),
        1,
        "a replay never reaches the token endpoint"
    );
    let stored = lifecycles[1].stored_token(&subject).await.unwrap().unwrap();
    assert_eq!(stored.revision, revision, "the replay stored nothing");
}

/// A lifecycle configured with durations too large for the clock
/// (`Duration::MAX` lease TTL, lease wait, flow TTL and outcome TTL) works
/// like any other: it refreshes, runs a flow and wakes its waiter.
pub async fn huge_durations_in_the_lifecycle(h: Harness) {
    let replicas = h.replicas(2).await;
    let oauth = Arc::new(FakeOAuthClient::new());
    let lifecycles: Vec<_> = replicas
        .iter()
        .map(|replica| {
            let mut config =
                LifecycleConfig::new("http://127.0.0.1:9/callback", vec!["read".into()]);
            config.lease_ttl = Duration::MAX;
            config.lease_wait = Duration::MAX;
            config.flow_ttl = Duration::MAX;
            config.outcome_ttl = Duration::MAX;
            config.refresh_timeout = Duration::from_secs(u64::MAX / 2);
            config.refresh_retry_after = Duration::MAX;
            TokenLifecycle::builder(
                PROVIDER,
                Arc::clone(&oauth) as Arc<dyn mcp_authkit_core::OAuthClient>,
                Arc::clone(&replica.tokens),
                Arc::clone(&replica.pending),
            )
            .config(config)
            .build()
            .expect("huge durations are a valid configuration")
        })
        .collect();

    let subject = unique_subject("huge-lifecycle");
    let refresh = oauth.issue().refresh_token.unwrap();
    lifecycles[0]
        .store_token(&subject, &expiring_record("old", refresh.expose_secret()))
        .await
        .unwrap();
    match lifecycles[1].access(&subject).await.unwrap() {
        Access::Ready(token) => assert_ne!(token.secret().expose_secret(), "old"),
        other => panic!("the expiring token is refreshed, got {other:?}"),
    }
    assert_eq!(oauth.refresh_calls(), 1);

    let other = unique_subject("huge-lifecycle-flow");
    let BeginOutcome::Started(flow) = lifecycles[0]
        .begin_authorization(&other, FlowRequest::default())
        .await
        .unwrap()
    else {
        panic!("a new flow starts");
    };
    let waiter = {
        let (lifecycle, state) = (lifecycles[0].clone(), flow.state.clone());
        tokio::spawn(async move { lifecycle.wait(&state, Duration::MAX).await })
    };
    let code = oauth.approve(&lifecycles[0].authorization_url(&flow).unwrap());
    let completed = lifecycles[1]
        .complete_authorization(CallbackParams::success(flow.state.clone(), code))
        .await
        .unwrap();
    assert_eq!(
        waiter.await.unwrap().unwrap(),
        Some(completed.outcome.clone())
    );
    assert_eq!(
        lifecycles[1]
            .wait(&flow.state, Duration::MAX)
            .await
            .unwrap(),
        Some(completed.outcome),
        "the outcome is kept"
    );
}

/// A second OS process (this test binary, re-executed) races this one:
/// both take contested flows (each is taken exactly once overall), the child
/// completes a flow this process waits on, both refresh the same expiring
/// token (one refresh in total), and a lease the child takes and never
/// releases blocks this process until its TTL passes.
pub async fn cross_process(h: Harness) {
    child::race_with_child(&h).await;
    child::lease_outlives_dead_child(&h).await;
}
