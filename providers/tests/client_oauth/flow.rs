//! The authorization code flow: PKCE S256, state, RFC 9207 iss, RFC 8707
//! resource, the loopback listener, the user's refusal, restarts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mcp_authkit_core::OAuthErrorKind;
use mcp_authkit_providers::client::{AuthProvider, ClientAuthError, PromptOutcome, prompt_fn};
use mcp_authkit_testkit::{Browser, ConsentMode, Endpoint, IssParameter, TestAuthServer};
use serde_json::json;

use crate::support::{World, secret};

#[tokio::test]
async fn signs_in_on_401_with_pkce_state_and_resource() {
    let world = World::start().await;
    let provider = world.provider().build().unwrap();
    assert!(provider.token().await.unwrap().is_none(), "nothing yet");

    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");

    let authorize = world.auth.last_request(Endpoint::Authorize).unwrap();
    assert_eq!(authorize.param("response_type"), Some("code"));
    assert_eq!(authorize.param("code_challenge_method"), Some("S256"));
    assert_eq!(authorize.param("code_challenge").map(str::len), Some(43));
    assert!(authorize.param("state").is_some_and(|s| s.len() >= 43));
    assert_eq!(authorize.param("resource"), Some(world.mcp_url.as_str()));
    assert_eq!(authorize.param("scope"), None, "no scope anywhere: omitted");
    let redirect_uri = authorize.param("redirect_uri").unwrap().to_owned();
    assert!(
        redirect_uri.starts_with("http://127.0.0.1:"),
        "{redirect_uri}"
    );

    let exchange = world
        .auth
        .last_request(Endpoint::AuthorizationCodeGrant)
        .unwrap();
    assert_eq!(exchange.param("resource"), Some(world.mcp_url.as_str()));
    assert_eq!(exchange.param("redirect_uri"), Some(redirect_uri.as_str()));
    assert_eq!(exchange.param("code_verifier").map(str::len), Some(43));

    // Dynamic registration with the redirect URI the flow really used.
    let registration = world.auth.last_request(Endpoint::Registration).unwrap();
    assert_eq!(
        registration.json.unwrap()["redirect_uris"],
        json!([redirect_uri])
    );

    // Signed in: the next calls need no flow.
    world.whoami(&provider).await.unwrap();
    assert!(provider.token().await.unwrap().is_some());
    assert_eq!(world.auth.hits(Endpoint::Authorize), 1);
    assert_eq!(world.auth.hits(Endpoint::Token), 1);
}

#[tokio::test]
async fn the_loopback_listener_receives_the_browser_redirect() {
    let world = World::start().await;
    let pages = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&pages);
    let provider = world
        .provider()
        .interaction(prompt_fn(move |prompt| {
            let seen = Arc::clone(&seen);
            async move {
                // The user's browser: follows the authorization server's
                // redirect to the client's loopback listener.
                let navigation = Browser::new()
                    .with_user("alice")
                    .get(prompt.url.as_str())
                    .await
                    .map_err(|e| ClientAuthError::Interaction(e.to_string()))?;
                let page = navigation.page().expect("a page").body.clone();
                seen.lock().unwrap().push(page);
                Ok(PromptOutcome::AwaitRedirect)
            }
        }))
        .build()
        .unwrap();
    assert_eq!(world.whoami(&provider).await.unwrap(), "alice []");
    let pages = pages.lock().unwrap();
    assert!(pages[0].contains("Authorization complete"), "{}", pages[0]);
}

#[tokio::test]
async fn restart_with_a_persisted_token_needs_no_new_sign_in() {
    let world = World::start().await;
    let first = world.provider().build().unwrap();
    world.whoami(&first).await.unwrap();
    let token = first.token().await.unwrap().unwrap();
    drop(first);
    world.auth.reset_counters();
    let metadata_before = world
        .resource
        .hits(mcp_authkit_testkit::ResourceEvent::Metadata);

    // A new process: a new provider over the same (persistent) store, whose
    // user interaction must not be needed.
    let prompts = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&prompts);
    let restarted = world
        .provider()
        .interaction(prompt_fn(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Err(ClientAuthError::Interaction("no user here".into())) }
        }))
        .build()
        .unwrap();
    let again = restarted.token().await.unwrap().expect("the stored token");
    assert_eq!(secret(&again), secret(&token));
    assert_eq!(world.whoami(&restarted).await.unwrap(), "test-user []");
    assert!(
        world.auth.all_requests().is_empty(),
        "no discovery, registration or sign-in: {:?}",
        world.auth.all_requests()
    );
    assert_eq!(
        world
            .resource
            .hits(mcp_authkit_testkit::ResourceEvent::Metadata),
        metadata_before
    );

    // Its token expires: the restarted client refreshes with the stored
    // registration and discovery results, still without the user.
    world.auth.expire_access_tokens();
    assert_eq!(world.whoami(&restarted).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::RefreshTokenGrant), 1);
    assert_eq!(world.auth.hits(Endpoint::Registration), 0);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 0);
    assert_eq!(prompts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_wrong_iss_is_refused_and_the_code_never_used() {
    let world =
        World::with(TestAuthServer::builder().settings(|s| s.iss_parameter = IssParameter::Wrong))
            .await;
    let provider = world.provider().build().unwrap();
    let error = world.whoami(&provider).await.unwrap_err().auth();
    let oauth = error.oauth_error().expect("an OAuth error");
    assert_eq!(oauth.kind(), OAuthErrorKind::IssuerMismatch, "{error}");
    assert!(error.to_string().contains("RFC 9207"), "{error}");
    assert_eq!(world.auth.hits(Endpoint::AuthorizationCodeGrant), 0);
    assert!(provider.token().await.unwrap().is_none());
}

#[tokio::test]
async fn a_server_that_omits_iss_and_says_so_is_accepted() {
    let world = World::with(
        TestAuthServer::builder().settings(|s| s.iss_parameter = IssParameter::Omitted),
    )
    .await;
    let provider = world.provider().build().unwrap();
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
}

#[tokio::test]
async fn the_users_refusal_is_an_access_denied_error() {
    let world = World::with(TestAuthServer::builder().consent(ConsentMode::Deny)).await;
    let provider = world.provider().build().unwrap();
    let error = world.whoami(&provider).await.unwrap_err().auth();
    assert_eq!(
        error.oauth_error().map(|e| e.kind()),
        Some(OAuthErrorKind::AccessDenied),
        "{error}"
    );
    assert_eq!(world.auth.hits(Endpoint::Token), 0);
}

#[tokio::test]
async fn a_response_with_another_state_is_refused() {
    let world = World::start().await;
    let http = world.http.reqwest().clone();
    let provider = world
        .provider()
        .interaction(prompt_fn(move |prompt| {
            let http = http.clone();
            async move {
                let response = http.get(prompt.url.as_str()).send().await.unwrap();
                let location = response.headers()["location"].to_str().unwrap().to_owned();
                let mut forged = url::Url::parse(&location).unwrap();
                let pairs: Vec<(String, String)> = forged
                    .query_pairs()
                    .map(|(n, v)| {
                        let v = if n == "state" {
                            "forged".into()
                        } else {
                            v.into_owned()
                        };
                        (n.into_owned(), v)
                    })
                    .collect();
                forged.query_pairs_mut().clear().extend_pairs(pairs);
                Ok(PromptOutcome::Redirected(forged))
            }
        }))
        .build()
        .unwrap();
    let error = world.whoami(&provider).await.unwrap_err().auth();
    assert!(
        matches!(error, ClientAuthError::StateMismatch(_)),
        "{error:?}"
    );
    assert_eq!(world.auth.hits(Endpoint::Token), 0);

    // The abandoned flow does not block the next sign-in.
    let honest = world.provider().build().unwrap();
    assert_eq!(world.whoami(&honest).await.unwrap(), "test-user []");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_401s_share_one_sign_in() {
    let world = Arc::new(World::start().await);
    let provider = world.provider().build().unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (world, provider) = (Arc::clone(&world), provider.clone());
            tokio::spawn(async move { world.whoami(&provider).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "test-user []");
    }
    assert_eq!(world.auth.hits(Endpoint::Authorize), 1);
    assert_eq!(world.auth.hits(Endpoint::Registration), 1);
    assert_eq!(world.auth.hits(Endpoint::AuthorizationCodeGrant), 1);
}

/// A pending store that, once armed by a joining `insert`, reads the next
/// flow and then stalls: the joining request has seen the flow pending,
/// and the sign-in that owns it ends before the request goes on.
struct StallAfterJoin {
    inner: mcp_authkit_store_memory::MemoryStore,
    armed: std::sync::atomic::AtomicBool,
    stalled: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl mcp_authkit_core::PendingStore for StallAfterJoin {
    async fn insert(
        &self,
        flow: &mcp_authkit_core::PendingFlow,
    ) -> mcp_authkit_core::Result<mcp_authkit_core::InsertOutcome> {
        let outcome = self.inner.insert(flow).await?;
        if matches!(outcome, mcp_authkit_core::InsertOutcome::Joined(_)) {
            self.armed.store(true, Ordering::SeqCst);
        }
        Ok(outcome)
    }
    async fn get_flow(
        &self,
        state: &mcp_authkit_core::FlowState,
    ) -> mcp_authkit_core::Result<Option<mcp_authkit_core::PendingFlow>> {
        let flow = self.inner.get_flow(state).await?;
        if self.armed.swap(false, Ordering::SeqCst) {
            self.stalled.notify_one();
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        Ok(flow)
    }
    async fn active_flow(
        &self,
        key: &mcp_authkit_core::TokenKey,
    ) -> mcp_authkit_core::Result<Option<mcp_authkit_core::FlowState>> {
        self.inner.active_flow(key).await
    }
    async fn take(
        &self,
        state: &mcp_authkit_core::FlowState,
    ) -> mcp_authkit_core::Result<Option<mcp_authkit_core::PendingFlow>> {
        self.inner.take(state).await
    }
    async fn complete(
        &self,
        key: &mcp_authkit_core::TokenKey,
        state: &mcp_authkit_core::FlowState,
        outcome: &mcp_authkit_core::FlowOutcome,
        keep_for: std::time::Duration,
    ) -> mcp_authkit_core::Result<()> {
        self.inner.complete(key, state, outcome, keep_for).await
    }
    async fn outcome(
        &self,
        state: &mcp_authkit_core::FlowState,
    ) -> mcp_authkit_core::Result<Option<mcp_authkit_core::FlowOutcome>> {
        self.inner.outcome(state).await
    }
    async fn wait(
        &self,
        state: &mcp_authkit_core::FlowState,
        timeout: std::time::Duration,
    ) -> mcp_authkit_core::Result<Option<mcp_authkit_core::FlowOutcome>> {
        self.inner.wait(state, timeout).await
    }
    async fn purge_expired(&self) -> mcp_authkit_core::Result<mcp_authkit_core::PurgeReport> {
        self.inner.purge_expired().await
    }
}

/// A request that joins this provider's flow just before the flow ends
/// waits for its outcome; it must not take the flow for one a dead run
/// left behind and show it a second time (whose callback would then find
/// no flow). The store stalls the joining request right after it read the
/// flow pending, and the sign-in completes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_that_ends_while_another_request_joins_it_is_not_shown_again() {
    use mcp_authkit_providers::client::{HeadlessRedirect, UserInteraction};

    let world = Arc::new(World::start().await);
    let pending = Arc::new(StallAfterJoin {
        inner: world.store.clone(),
        armed: Default::default(),
        stalled: tokio::sync::Notify::new(),
    });
    let shown = Arc::new(tokio::sync::Notify::new());
    let headless = Arc::new(HeadlessRedirect::new(world.http.reqwest().clone()));
    let prompts = Arc::new(AtomicUsize::new(0));
    let provider = world
        .provider()
        .pending_store(pending.clone())
        .interaction(prompt_fn({
            let (pending, shown, prompts) = (pending.clone(), shown.clone(), prompts.clone());
            move |prompt| {
                let (pending, shown, headless) = (pending.clone(), shown.clone(), headless.clone());
                let first = prompts.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    // Let the second request join, and go on only once it
                    // has read the flow pending and stalls.
                    if first {
                        shown.notify_one();
                        pending.stalled.notified().await;
                    }
                    headless.authorize(&prompt).await
                }
            }
        }))
        .build()
        .unwrap();

    let first = tokio::spawn({
        let (world, provider) = (world.clone(), provider.clone());
        async move { world.whoami(&provider).await }
    });
    shown.notified().await;
    let second = tokio::spawn({
        let (world, provider) = (world.clone(), provider.clone());
        async move { world.whoami(&provider).await }
    });
    assert_eq!(first.await.unwrap().unwrap(), "test-user []");
    assert_eq!(second.await.unwrap().unwrap(), "test-user []");
    assert_eq!(prompts.load(Ordering::SeqCst), 1, "the flow was shown once");
    assert_eq!(world.auth.hits(Endpoint::AuthorizationCodeGrant), 1);
}

/// The same restart on the production stack: an encrypted SQLite file that
/// a new process opens again.
#[tokio::test]
async fn restart_on_an_encrypted_sqlite_file_needs_no_new_sign_in() {
    use mcp_authkit_core::ExposeSecret;
    use mcp_authkit_store_encrypted::{EncryptedStore, EncryptionKey, Keyring};
    use mcp_authkit_store_sqlite::SqliteStore;

    let world = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.db");
    let key = EncryptionKey::generate("k1").to_base64();
    let open = || async {
        let sqlite = SqliteStore::open(&path).await.unwrap();
        let keyring = Keyring::new(EncryptionKey::from_base64("k1", key.expose_secret()).unwrap());
        (sqlite.clone(), EncryptedStore::new(sqlite, keyring))
    };

    let (sqlite, store) = open().await;
    let first = world.provider().store(store).build().unwrap();
    assert_eq!(world.whoami(&first).await.unwrap(), "test-user []");
    let token = first.token().await.unwrap().unwrap();
    drop(first);
    sqlite.close().await;
    world.auth.reset_counters();

    let (_sqlite, store) = open().await;
    let restarted = world
        .provider()
        .store(store)
        .interaction(prompt_fn(|_| async {
            Err(ClientAuthError::Interaction("no user here".into()))
        }))
        .build()
        .unwrap();
    let again = restarted
        .token()
        .await
        .unwrap()
        .expect("the token from the file");
    assert_eq!(secret(&again), secret(&token));
    assert_eq!(world.whoami(&restarted).await.unwrap(), "test-user []");
    assert!(
        world.auth.all_requests().is_empty(),
        "no discovery, registration or sign-in after the restart"
    );
    let bytes: Vec<u8> = mcp_authkit_store_sqlite::database_files(&path)
        .iter()
        .filter_map(|file| std::fs::read(file).ok())
        .flatten()
        .collect();
    let needle = secret(&token);
    assert!(
        !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
        "the token is not in the file in clear"
    );
}

#[tokio::test]
async fn a_server_without_the_authorization_code_grant_is_refused_before_any_browser() {
    let world = World::with(
        mcp_authkit_testkit::TestAuthServer::builder()
            .settings(|s| s.grant_types_supported = vec!["client_credentials".into()]),
    )
    .await;
    let shown = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = shown.clone();
    let provider = world
        .provider()
        .interaction(prompt_fn(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok(PromptOutcome::AwaitRedirect) }
        }))
        .build()
        .unwrap();
    let error = world.whoami(&provider).await.unwrap_err().auth();
    let ClientAuthError::GrantNotSupported {
        grant_type,
        advertised,
        ..
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(grant_type, "authorization_code");
    assert_eq!(advertised, &["client_credentials"]);
    assert_eq!(shown.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 0);
    assert_eq!(world.auth.hits(Endpoint::Registration), 0);
}
