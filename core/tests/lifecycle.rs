//! The token lifecycle on the memory store, with a manual clock and the
//! call-counting fake OAuth client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_authkit_core::testing::{FakeOAuthClient, RefreshBehavior};
use mcp_authkit_core::*;
use mcp_authkit_store_memory::MemoryStore;

/// A token store that counts reads, to show the hot path costs one.
struct CountingStore {
    inner: MemoryStore,
    gets: AtomicU64,
}

#[async_trait]
impl TokenStore for CountingStore {
    async fn get(&self, key: &TokenKey) -> Result<Option<StoredToken>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        TokenStore::get(&self.inner, key).await
    }
    async fn put(&self, key: &TokenKey, record: &TokenRecord) -> Result<Revision> {
        self.inner.put(key, record).await
    }
    async fn compare_and_swap(
        &self,
        key: &TokenKey,
        expected: Option<Revision>,
        record: &TokenRecord,
    ) -> Result<CasOutcome> {
        self.inner.compare_and_swap(key, expected, record).await
    }
    async fn delete(&self, key: &TokenKey) -> Result<bool> {
        self.inner.delete(key).await
    }
    async fn delete_if_revision(&self, key: &TokenKey, revision: Revision) -> Result<bool> {
        self.inner.delete_if_revision(key, revision).await
    }
    async fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<LeaseToken>> {
        self.inner.try_acquire_lease(key, ttl).await
    }
    async fn release_lease(&self, key: &TokenKey, lease: &LeaseToken) -> Result<bool> {
        self.inner.release_lease(key, lease).await
    }
    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage<TokenKey>> {
        self.inner.scan(cursor, limit).await
    }
}

struct Fixture {
    clock: Arc<ManualClock>,
    oauth: Arc<FakeOAuthClient>,
    store: MemoryStore,
    tokens: Arc<CountingStore>,
    lifecycle: TokenLifecycle,
}

fn config() -> LifecycleConfig {
    let mut config = LifecycleConfig::new("https://mcp.example/callback", vec!["repo".into()]);
    config.refresh_skew = Duration::from_secs(60);
    config.lease_ttl = Duration::from_secs(2);
    config.lease_wait = Duration::from_secs(3);
    config.refresh_timeout = Duration::from_secs(1);
    config.refresh_retry_after = Duration::from_secs(5);
    config
}

fn fixture() -> Fixture {
    fixture_with(FakeOAuthClient::new())
}

fn fixture_with(oauth: FakeOAuthClient) -> Fixture {
    let clock = Arc::new(ManualClock::starting_now());
    let oauth = Arc::new(oauth);
    // Store TTLs (leases, flows) run on real time; the lifecycle's expiry
    // decisions run on the manual clock.
    let store = MemoryStore::new();
    let tokens = Arc::new(CountingStore {
        inner: store.clone(),
        gets: AtomicU64::new(0),
    });
    let lifecycle = TokenLifecycle::builder(
        "github",
        oauth.clone(),
        tokens.clone(),
        Arc::new(store.clone()),
    )
    .clock(clock.clone())
    .config(config())
    .build()
    .unwrap();
    Fixture {
        clock,
        oauth,
        store,
        tokens,
        lifecycle,
    }
}

impl Fixture {
    /// Stores a token from the fake that expires in `lifetime`.
    async fn seed(&self, subject: &str, lifetime: Duration) -> Revision {
        let response = self.oauth.issue();
        let record = response.into_record(self.clock.now(), &["repo".to_owned()]);
        let record = record.with_expires_at(self.clock.now().saturating_add(lifetime));
        self.lifecycle.store_token(subject, &record).await.unwrap()
    }

    async fn access_token(&self, subject: &str) -> AccessToken {
        match self.lifecycle.access(subject).await.unwrap() {
            Access::Ready(token) => token,
            other => panic!("expected a ready token, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn valid_token_costs_one_store_read_and_no_oauth_call() {
    let f = fixture();
    let revision = f.seed("alice", Duration::from_secs(3600)).await;
    let before = f.tokens.gets.load(Ordering::SeqCst);
    let token = f.access_token("alice").await;
    assert_eq!(
        f.tokens.gets.load(Ordering::SeqCst) - before,
        1,
        "one store read"
    );
    assert_eq!(f.oauth.refresh_calls(), 0, "no network I/O");
    assert_eq!(token.revision(), revision);
    assert!(token.secret().expose_secret().starts_with("access-"));
}

#[tokio::test]
async fn no_token_needs_authorization() {
    let f = fixture();
    assert!(matches!(
        f.lifecycle.access("nobody").await.unwrap(),
        Access::NeedsAuthorization(AuthorizationReason::NoToken)
    ));
}

#[tokio::test]
async fn token_within_skew_is_refreshed_once_for_many_concurrent_callers() {
    let f = fixture();
    f.oauth.set_refresh_delay(Duration::from_millis(100));
    let old = f.seed("alice", Duration::from_secs(3600)).await;
    // Move into the skew window: 30 s left, skew 60 s.
    f.clock.advance(Duration::from_secs(3570));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let lifecycle = f.lifecycle.clone();
        tasks.spawn(async move { lifecycle.access("alice").await });
    }
    let mut revisions = std::collections::BTreeSet::new();
    while let Some(result) = tasks.join_next().await {
        match result.unwrap().unwrap() {
            Access::Ready(token) => revisions.insert(token.revision()),
            other => panic!("{other:?}"),
        };
    }
    assert_eq!(
        f.oauth.refresh_calls(),
        1,
        "single-flight inside the process"
    );
    assert_eq!(revisions.len(), 1);
    assert!(revisions.first().unwrap() > &old);
    // The refreshed token is valid again: no further refresh.
    f.access_token("alice").await;
    assert_eq!(f.oauth.refresh_calls(), 1);
}

#[tokio::test]
async fn refresh_keeps_the_old_refresh_token_when_the_server_does_not_rotate() {
    let previous = TokenRecord::new("a1", Timestamp::from_unix_millis(0))
        .with_refresh_token("r1")
        .with_scopes(["repo"]);
    let kept =
        TokenResponse::new("a2").into_refreshed_record(Timestamp::from_unix_millis(10), &previous);
    assert_eq!(kept.refresh_token.unwrap().expose_secret(), "r1");
    assert_eq!(kept.scopes, vec!["repo"]);
    let rotated = TokenResponse::new("a3")
        .with_refresh_token("r2")
        .with_expires_in(Duration::from_secs(60))
        .into_refreshed_record(Timestamp::from_unix_millis(10), &previous);
    assert_eq!(rotated.refresh_token.unwrap().expose_secret(), "r2");
    assert_eq!(
        rotated.expires_at,
        Some(Timestamp::from_unix_millis(60_010)),
        "expires_in made absolute"
    );
}

#[tokio::test]
async fn expired_token_without_refresh_needs_authorization_but_expiring_one_is_served() {
    let f = fixture();
    let record = TokenRecord::new("plain", f.clock.now())
        .with_expires_at(f.clock.now().saturating_add(Duration::from_secs(30)));
    f.lifecycle.store_token("bob", &record).await.unwrap();
    // Inside the skew but not expired, and no refresh token: still usable.
    assert_eq!(
        f.access_token("bob").await.secret().expose_secret(),
        "plain"
    );
    f.clock.advance(Duration::from_secs(31));
    assert!(matches!(
        f.lifecycle.access("bob").await.unwrap(),
        Access::NeedsAuthorization(AuthorizationReason::Expired)
    ));
    assert_eq!(f.oauth.refresh_calls(), 0);
}

/// A client that cannot refresh is never asked to, even for a token that
/// carries a refresh token: an expiring token is served as it is, an
/// expired one leads to a new authorization.
#[tokio::test]
async fn a_client_without_refresh_is_never_asked_to_refresh() {
    let oauth = FakeOAuthClient::new();
    oauth.set_supports_refresh(false);
    let f = fixture_with(oauth);
    let revision = f.seed("carol", Duration::from_secs(30)).await;
    assert_eq!(f.access_token("carol").await.revision(), revision);
    f.clock.advance(Duration::from_secs(31));
    assert!(matches!(
        f.lifecycle.access("carol").await.unwrap(),
        Access::NeedsAuthorization(AuthorizationReason::Expired)
    ));
    assert_eq!(f.oauth.refresh_calls(), 0);
}

#[tokio::test]
async fn invalid_grant_removes_the_token() {
    let f = fixture();
    f.seed("alice", Duration::from_secs(10)).await;
    f.oauth.set_refresh_behavior(RefreshBehavior::InvalidGrant);
    assert!(matches!(
        f.lifecycle.access("alice").await.unwrap(),
        Access::NeedsAuthorization(AuthorizationReason::RefreshRejected)
    ));
    assert!(f.lifecycle.stored_token("alice").await.unwrap().is_none());
}

/// A refresh refused with `invalid_grant` while another writer stored an
/// already expired token meanwhile: nothing is deleted by key, and the
/// expired token is not served; the user authorizes again.
#[tokio::test]
async fn invalid_grant_never_serves_an_expired_token_written_meanwhile() {
    let f = fixture();
    f.seed("frank", Duration::from_secs(10)).await;
    f.oauth.set_refresh_behavior(RefreshBehavior::InvalidGrant);
    f.oauth.set_refresh_delay(Duration::from_millis(200));
    let access = {
        let lifecycle = f.lifecycle.clone();
        tokio::spawn(async move { lifecycle.access("frank").await })
    };
    f.oauth.refresh_calls_reach(1).await;
    let stale = TokenRecord::new("stale", f.clock.now())
        .with_expires_at(f.clock.now().saturating_sub(Duration::from_secs(1)));
    let revision = f.lifecycle.store_token("frank", &stale).await.unwrap();
    assert!(matches!(
        access.await.unwrap().unwrap(),
        Access::NeedsAuthorization(AuthorizationReason::RefreshRejected)
    ));
    assert_eq!(
        f.lifecycle
            .stored_token("frank")
            .await
            .unwrap()
            .unwrap()
            .revision,
        revision,
        "the token written meanwhile is not deleted by the refused refresh"
    );
}

/// A token store whose first lease request is preceded by another
/// replica's refresh landing (and its lease being released): the race the
/// re-read under the lease exists for.
struct RefreshedBeforeLease {
    inner: MemoryStore,
    landing: Mutex<Option<(TokenKey, Revision, TokenRecord)>>,
}

#[async_trait]
impl TokenStore for RefreshedBeforeLease {
    async fn get(&self, key: &TokenKey) -> Result<Option<StoredToken>> {
        TokenStore::get(&self.inner, key).await
    }
    async fn put(&self, key: &TokenKey, record: &TokenRecord) -> Result<Revision> {
        self.inner.put(key, record).await
    }
    async fn compare_and_swap(
        &self,
        key: &TokenKey,
        expected: Option<Revision>,
        record: &TokenRecord,
    ) -> Result<CasOutcome> {
        self.inner.compare_and_swap(key, expected, record).await
    }
    async fn delete(&self, key: &TokenKey) -> Result<bool> {
        self.inner.delete(key).await
    }
    async fn delete_if_revision(&self, key: &TokenKey, revision: Revision) -> Result<bool> {
        self.inner.delete_if_revision(key, revision).await
    }
    async fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<LeaseToken>> {
        let landing = self.landing.lock().unwrap().take();
        if let Some((key, expected, record)) = landing {
            let outcome = self
                .inner
                .compare_and_swap(&key, Some(expected), &record)
                .await?;
            assert!(matches!(outcome, CasOutcome::Swapped(_)));
        }
        self.inner.try_acquire_lease(key, ttl).await
    }
    async fn release_lease(&self, key: &TokenKey, lease: &LeaseToken) -> Result<bool> {
        self.inner.release_lease(key, lease).await
    }
    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage<TokenKey>> {
        self.inner.scan(cursor, limit).await
    }
}

/// Under the lease the token is read again: a refresh another replica
/// finished just before is used, even when its token is itself within the
/// refresh skew, and no second refresh is sent.
#[tokio::test]
async fn a_refresh_that_landed_just_before_the_lease_is_used() {
    let clock = Arc::new(ManualClock::starting_now());
    let oauth = Arc::new(FakeOAuthClient::new());
    let store = MemoryStore::new();
    let tokens = Arc::new(RefreshedBeforeLease {
        inner: store.clone(),
        landing: Mutex::new(None),
    });
    let lifecycle =
        TokenLifecycle::builder("github", oauth.clone(), tokens.clone(), Arc::new(store))
            .clock(clock.clone())
            .config(config())
            .build()
            .unwrap();
    let expiring = TokenRecord::new("old", clock.now())
        .with_refresh_token("r-old")
        .with_expires_at(clock.now().saturating_add(Duration::from_secs(30)));
    let old = lifecycle.store_token("gina", &expiring).await.unwrap();
    let theirs = TokenRecord::new("from-other-replica", clock.now())
        .with_refresh_token("r-new")
        .with_expires_at(clock.now().saturating_add(Duration::from_secs(45)));
    *tokens.landing.lock().unwrap() = Some((lifecycle.key("gina"), old, theirs));
    match lifecycle.access("gina").await.unwrap() {
        Access::Ready(token) => {
            assert_eq!(token.secret().expose_secret(), "from-other-replica")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(oauth.refresh_calls(), 0, "no second refresh");
}

#[tokio::test]
async fn transient_failure_serves_the_valid_token_and_backs_off() {
    let f = fixture();
    let revision = f.seed("alice", Duration::from_secs(30)).await;
    f.oauth.set_refresh_behavior(RefreshBehavior::Transient);
    assert_eq!(f.access_token("alice").await.revision(), revision);
    assert_eq!(f.oauth.refresh_calls(), 1);
    // Within the retry delay: served without another attempt.
    assert_eq!(f.access_token("alice").await.revision(), revision);
    assert_eq!(
        f.oauth.refresh_calls(),
        1,
        "no retry storm while the server is down"
    );
    // After it, the next access tries again, and succeeds once the server is back.
    f.clock.advance(Duration::from_secs(6));
    f.oauth.set_refresh_behavior(RefreshBehavior::Succeed);
    let token = f.access_token("alice").await;
    assert_eq!(f.oauth.refresh_calls(), 2);
    assert!(token.revision() > revision);
}

#[tokio::test]
async fn transient_failure_on_an_expired_token_is_retryable_and_keeps_it() {
    let f = fixture();
    f.seed("alice", Duration::from_secs(30)).await;
    f.clock.advance(Duration::from_secs(31));
    f.oauth.set_refresh_behavior(RefreshBehavior::Transient);
    let error = f.lifecycle.access("alice").await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(matches!(&error, Error::OAuth(e) if e.kind() == OAuthErrorKind::Transient));
    assert!(f.lifecycle.stored_token("alice").await.unwrap().is_some());
}

#[tokio::test]
async fn a_hanging_refresh_times_out_as_transient() {
    let f = fixture();
    let revision = f.seed("alice", Duration::from_secs(30)).await;
    f.oauth.set_refresh_delay(Duration::from_secs(30));
    let started = std::time::Instant::now();
    assert_eq!(
        f.access_token("alice").await.revision(),
        revision,
        "old token served"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by refresh_timeout"
    );
    assert!(f.lifecycle.stored_token("alice").await.unwrap().is_some());
}

#[tokio::test]
async fn waits_for_another_process_lease_and_uses_its_token() {
    let f = fixture();
    let old = f.seed("alice", Duration::from_secs(30)).await;
    let key = f.lifecycle.key("alice");
    // Another process holds the lease and is refreshing.
    let other = MemoryStore::clone(&f.store);
    let lease = other
        .try_acquire_lease(&key, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let access = {
        let lifecycle = f.lifecycle.clone();
        tokio::spawn(async move { lifecycle.access("alice").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let newer = TokenRecord::new("from-other-process", f.clock.now())
        .with_refresh_token("r")
        .with_expires_at(f.clock.now().saturating_add(Duration::from_secs(3600)));
    let CasOutcome::Swapped(revision) = other
        .compare_and_swap(&key, Some(old), &newer)
        .await
        .unwrap()
    else {
        panic!("cas");
    };
    other.release_lease(&key, &lease).await.unwrap();
    match access.await.unwrap().unwrap() {
        Access::Ready(token) => {
            assert_eq!(token.revision(), revision);
            assert_eq!(token.secret().expose_secret(), "from-other-process");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.oauth.refresh_calls(), 0, "no second refresh");
}

/// While another process holds the lease, a caller reads the store with a
/// growing pause (no busy loop), and takes the other process's token as
/// soon as it is stored, without waiting for the lease to be released.
#[tokio::test]
async fn waiting_on_another_process_backs_off_and_takes_its_token_at_once() {
    let f = fixture();
    let old = f.seed("dave", Duration::from_secs(30)).await;
    let key = f.lifecycle.key("dave");
    let other = MemoryStore::clone(&f.store);
    let _held = other
        .try_acquire_lease(&key, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let before = f.tokens.gets.load(Ordering::SeqCst);
    let access = {
        let lifecycle = f.lifecycle.clone();
        tokio::spawn(async move { lifecycle.access("dave").await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reads = f.tokens.gets.load(Ordering::SeqCst) - before;
    assert!(reads < 40, "{reads} store reads in one second of waiting");
    let newer = TokenRecord::new("from-other-process", f.clock.now())
        .with_refresh_token("r")
        .with_expires_at(f.clock.now().saturating_add(Duration::from_secs(3600)));
    let CasOutcome::Swapped(revision) = other
        .compare_and_swap(&key, Some(old), &newer)
        .await
        .unwrap()
    else {
        panic!("cas");
    };
    // The lease stays held; lease_wait (3 s) has not run out.
    let access = tokio::time::timeout(Duration::from_millis(1500), access)
        .await
        .expect("the stored token is taken at once, not at the end of the wait")
        .unwrap()
        .unwrap();
    match access {
        Access::Ready(token) => assert_eq!(token.revision(), revision),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.oauth.refresh_calls(), 0, "no second refresh");
}

/// A caller waits for another process's refresh no longer than
/// `lease_wait` (3 s here), even while that process keeps its lease: an
/// expired token is then a timeout, a still-valid one is served.
#[tokio::test]
async fn waiting_on_another_process_gives_up_after_lease_wait() {
    let f = fixture();
    f.seed("erin", Duration::from_secs(30)).await;
    let key = f.lifecycle.key("erin");
    let _held = MemoryStore::clone(&f.store)
        .try_acquire_lease(&key, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    f.clock.advance(Duration::from_secs(31));
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), f.lifecycle.access("erin"))
        .await
        .expect("gives up at lease_wait, not when the other lease runs out");
    assert!(
        matches!(result, Err(Error::Timeout { .. })),
        "an expired token and no refresh in sight: {result:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(f.oauth.refresh_calls(), 0);
}

#[tokio::test]
async fn a_dead_holders_lease_runs_out_and_the_refresh_happens() {
    let f = fixture();
    f.seed("alice", Duration::from_secs(30)).await;
    let key = f.lifecycle.key("alice");
    // A holder that died: its lease is never released.
    f.store
        .try_acquire_lease(&key, Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    let token = f.access_token("alice").await;
    assert_eq!(f.oauth.refresh_calls(), 1);
    assert_eq!(
        token.revision(),
        f.lifecycle
            .stored_token("alice")
            .await
            .unwrap()
            .unwrap()
            .revision
    );
}

#[tokio::test]
async fn invalidate_by_revision_keeps_a_newer_token() {
    let f = fixture();
    let seen = f.seed("alice", Duration::from_secs(30)).await;
    f.clock.advance(Duration::from_secs(1));
    let refreshed = f.access_token("alice").await.revision();
    assert!(refreshed > seen);
    assert!(!f.lifecycle.invalidate("alice", Some(seen)).await.unwrap());
    assert_eq!(f.access_token("alice").await.revision(), refreshed);
    assert!(
        f.lifecycle
            .invalidate("alice", Some(refreshed))
            .await
            .unwrap()
    );
    assert!(f.lifecycle.stored_token("alice").await.unwrap().is_none());
    f.seed("alice", Duration::from_secs(300)).await;
    assert!(f.lifecycle.invalidate("alice", None).await.unwrap());
}

#[tokio::test]
async fn flow_starts_joins_completes_and_refuses_replays() {
    let f = fixture();
    let BeginOutcome::Started(flow) = f
        .lifecycle
        .begin_authorization("alice", FlowRequest::default().started_by("session-a"))
        .await
        .unwrap()
    else {
        panic!("first begin starts a flow");
    };
    assert_eq!(flow.scopes, vec!["repo"]);
    assert_eq!(flow.redirect_uri, "https://mcp.example/callback");
    let joined = f
        .lifecycle
        .begin_authorization("alice", FlowRequest::default())
        .await
        .unwrap();
    assert!(matches!(&joined, BeginOutcome::Joined(existing) if existing.state == flow.state));

    let url = f.lifecycle.authorization_url(&flow).unwrap();
    let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(query["state"], flow.state.as_str());
    assert_eq!(query["code_challenge"], flow.pkce().challenge_s256());
    assert!(
        !url.as_str().contains(flow.pkce_verifier.expose_secret()),
        "the verifier never leaves"
    );

    let waiter = {
        let lifecycle = f.lifecycle.clone();
        let state = flow.state.clone();
        tokio::spawn(async move { lifecycle.wait(&state, Duration::from_secs(10)).await })
    };
    let code = f.oauth.approve(&url);
    let params = CallbackParams::success(flow.state.clone(), code);
    let completed = f
        .lifecycle
        .complete_authorization(params.clone())
        .await
        .unwrap();
    assert_eq!(completed.started_by.as_deref(), Some("session-a"));
    assert_eq!(completed.elicitation_id, flow.elicitation_id);
    let FlowOutcome::Authorized { revision } = completed.outcome else {
        panic!()
    };
    assert_eq!(
        waiter.await.unwrap().unwrap(),
        Some(FlowOutcome::Authorized { revision })
    );
    assert_eq!(f.access_token("alice").await.revision(), revision);

    assert!(matches!(
        f.lifecycle.complete_authorization(params).await,
        Err(Error::FlowNotFound)
    ));
    assert_eq!(f.oauth.exchange_calls(), 1);
    // The key is free again for a later flow.
    assert!(matches!(
        f.lifecycle
            .begin_authorization("alice", FlowRequest::default())
            .await
            .unwrap(),
        BeginOutcome::Started(_)
    ));
}

#[tokio::test]
async fn denied_and_broken_callbacks_complete_the_flow_without_a_token() {
    let f = fixture_with(FakeOAuthClient::new().with_issuer("https://as.example"));

    // The user refuses.
    let flow = f
        .lifecycle
        .begin_authorization("u1", FlowRequest::default())
        .await
        .unwrap();
    let state = flow.state().clone();
    let completed = f
        .lifecycle
        .complete_authorization(CallbackParams::error(
            state.clone(),
            "access_denied",
            Some("no".into()),
        ))
        .await
        .unwrap();
    assert_eq!(
        completed.outcome,
        FlowOutcome::Denied {
            error: "access_denied".into(),
            description: Some("no".into())
        }
    );
    assert_eq!(
        f.lifecycle
            .wait(&state, Duration::from_millis(10))
            .await
            .unwrap(),
        Some(completed.outcome)
    );
    assert!(f.lifecycle.stored_token("u1").await.unwrap().is_none());

    // Neither code nor error.
    let flow = f
        .lifecycle
        .begin_authorization("u2", FlowRequest::default())
        .await
        .unwrap();
    let state = flow.state().clone();
    let mut params = CallbackParams::success(state.clone(), "x");
    params.code = None;
    let error = f
        .lifecycle
        .complete_authorization(params)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidInput { .. }), "{error}");
    assert!(matches!(
        f.lifecycle
            .wait(&state, Duration::from_millis(10))
            .await
            .unwrap(),
        Some(FlowOutcome::Failed { .. })
    ));

    // A response from another issuer (mix-up attack, RFC 9207).
    let BeginOutcome::Started(flow) = f
        .lifecycle
        .begin_authorization("u3", FlowRequest::default())
        .await
        .unwrap()
    else {
        panic!()
    };
    let code = f
        .oauth
        .approve(&f.lifecycle.authorization_url(&flow).unwrap());
    let params = CallbackParams::success(flow.state.clone(), code).with_iss("https://evil.example");
    let error = f
        .lifecycle
        .complete_authorization(params)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::OAuth(e) if e.kind() == OAuthErrorKind::IssuerMismatch),
        "{error}"
    );
    assert_eq!(
        f.oauth.exchange_calls(),
        0,
        "no exchange after an issuer mismatch"
    );
    assert!(f.lifecycle.stored_token("u3").await.unwrap().is_none());

    // A code for another flow's PKCE challenge is refused by the server.
    let BeginOutcome::Started(victim) = f
        .lifecycle
        .begin_authorization("u4", FlowRequest::default())
        .await
        .unwrap()
    else {
        panic!()
    };
    let BeginOutcome::Started(attacker) = f
        .lifecycle
        .begin_authorization("u5", FlowRequest::default())
        .await
        .unwrap()
    else {
        panic!()
    };
    let attacker_code = f
        .oauth
        .approve(&f.lifecycle.authorization_url(&attacker).unwrap());
    let error = f
        .lifecycle
        .complete_authorization(
            CallbackParams::success(victim.state.clone(), attacker_code)
                .with_iss("https://as.example"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::OAuth(e) if e.kind() == OAuthErrorKind::InvalidGrant),
        "{error}"
    );
    assert!(f.lifecycle.stored_token("u4").await.unwrap().is_none());
}

#[tokio::test]
async fn a_callback_never_consumes_another_providers_flow() {
    let f = fixture();
    let other = TokenLifecycle::builder(
        "google",
        f.oauth.clone(),
        f.tokens.clone(),
        Arc::new(f.store.clone()),
    )
    .config(config())
    .build()
    .unwrap();
    let begun = other
        .begin_authorization("alice", FlowRequest::default())
        .await
        .unwrap();
    let state = begun.state().clone();
    let result = f
        .lifecycle
        .complete_authorization(CallbackParams::success(state.clone(), "c"))
        .await;
    assert!(matches!(result, Err(Error::FlowNotFound)));
    assert!(
        other.pending_flow(&state).await.unwrap().is_some(),
        "google's flow is still pending"
    );
}

#[tokio::test]
async fn abandoning_a_flow_releases_its_waiters_and_the_key() {
    let f = fixture();
    let begun = f
        .lifecycle
        .begin_authorization("alice", FlowRequest::default())
        .await
        .unwrap();
    let state = begun.state().clone();
    let outcome = FlowOutcome::Denied {
        error: "declined".into(),
        description: None,
    };
    assert!(
        f.lifecycle
            .abandon_flow(&state, outcome.clone())
            .await
            .unwrap()
    );
    assert_eq!(
        f.lifecycle
            .wait(&state, Duration::from_secs(1))
            .await
            .unwrap(),
        Some(outcome)
    );
    assert!(
        !f.lifecycle
            .abandon_flow(&state, FlowOutcome::Failed { reason: "x".into() })
            .await
            .unwrap()
    );
    assert!(matches!(
        f.lifecycle
            .begin_authorization("alice", FlowRequest::default())
            .await
            .unwrap(),
        BeginOutcome::Started(_)
    ));
}

#[test]
fn config_refuses_a_refresh_timeout_that_outlives_the_lease() {
    let mut bad = config();
    bad.refresh_timeout = bad.lease_ttl;
    let store = MemoryStore::new();
    let error = TokenLifecycle::builder(
        "p",
        Arc::new(FakeOAuthClient::new()),
        Arc::new(store.clone()),
        Arc::new(store),
    )
    .config(bad)
    .build()
    .unwrap_err();
    assert!(matches!(error, Error::InvalidInput { .. }));
    assert!(error.to_string().contains("refresh_timeout"), "{error}");
}

/// Collects everything the lifecycle logs, at every level.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_reaches_logs_debug_output_or_errors() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let f = fixture();
    let mut secrets = Vec::new();
    let mut printed = String::new();
    // Refresh, transient failure, invalid_grant, and a full flow.
    f.seed("alice", Duration::from_secs(30)).await;
    let stored = f.lifecycle.stored_token("alice").await.unwrap().unwrap();
    secrets.push(stored.record.access_token.expose_secret().to_owned());
    secrets.push(
        stored
            .record
            .refresh_token
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_owned(),
    );
    printed += &format!("{stored:?}");
    let token = f.access_token("alice").await;
    secrets.push(token.secret().expose_secret().to_owned());
    printed += &format!("{token:?}");
    f.clock.advance(Duration::from_secs(3590));
    f.oauth.set_refresh_behavior(RefreshBehavior::Transient);
    printed += &format!("{:?}", f.lifecycle.access("alice").await);
    f.oauth.set_refresh_behavior(RefreshBehavior::InvalidGrant);
    f.clock.advance(Duration::from_secs(10));
    printed += &format!("{:?}", f.lifecycle.access("alice").await);
    let BeginOutcome::Started(flow) = f
        .lifecycle
        .begin_authorization("alice", FlowRequest::default())
        .await
        .unwrap()
    else {
        panic!()
    };
    secrets.push(flow.pkce_verifier.expose_secret().to_owned());
    secrets.push(flow.state.as_str().to_owned());
    printed += &format!("{flow:?}");
    let code = f
        .oauth
        .approve(&f.lifecycle.authorization_url(&flow).unwrap());
    secrets.push(code.clone());
    let params = CallbackParams::success(flow.state.clone(), code);
    printed += &format!("{params:?}");
    let completed = f
        .lifecycle
        .complete_authorization(params.clone())
        .await
        .unwrap();
    printed += &format!("{completed:?}");
    let replay = f
        .lifecycle
        .complete_authorization(params)
        .await
        .unwrap_err();
    printed += &format!("{replay:?} {replay}");

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("refresh"), "the lifecycle did log: {logs}");
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret reached the logs: {logs}"
        );
        assert!(
            !printed.contains(secret.as_str()),
            "a secret reached Debug/Display output: {printed}"
        );
    }
}
