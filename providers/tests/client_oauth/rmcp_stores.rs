//! rmcp's own OAuth (`AuthorizationManager`) with its credentials and PKCE
//! state in mcp-authkit stores.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mcp_authkit_core::{FlowState, ManualClock, PendingStore, TokenKey, TokenStore};
use mcp_authkit_providers::client::rmcp_stores::{CredentialStoreAdapter, StateStoreAdapter};
use mcp_authkit_store_memory::MemoryStore;
use mcp_authkit_testkit::{Browser, Endpoint};
use oauth2::{AccessToken, RefreshToken, TokenResponse as _, basic::BasicTokenType};
use rmcp::transport::auth::{
    AuthorizationManager, AuthorizationRequest, AuthorizationSession, CredentialStore,
    OAuthTokenResponse, StateStore, StoredAuthorizationState, StoredCredentials,
    VendorExtraTokenFields,
};

use crate::support::World;

fn credentials(store: &MemoryStore, key: &TokenKey) -> CredentialStoreAdapter {
    CredentialStoreAdapter::new(Arc::new(store.clone()), key.clone())
}

async fn manager(world: &World, key: &TokenKey) -> AuthorizationManager {
    let mut manager = AuthorizationManager::new_allowing_private_addresses(world.mcp_url.as_str())
        .await
        .unwrap();
    manager.set_credential_store(credentials(&world.store, key));
    manager.set_state_store(StateStoreAdapter::new(
        Arc::new(world.store.clone()),
        "rmcp-flows",
    ));
    manager
}

#[tokio::test]
async fn rmcp_oauth_keeps_its_sign_in_in_an_mcp_authkit_store() {
    let world = World::start().await;
    let key = TokenKey::new("rmcp", world.mcp_url.as_str());
    let mut first = manager(&world, &key).await;
    let metadata = first.resolve_metadata().await.unwrap().metadata;
    first.set_metadata(metadata);
    let redirect = "http://127.0.0.1:1/callback";
    let session = AuthorizationSession::new(first, AuthorizationRequest::new(redirect))
        .await
        .map_err(|(_, e)| e)
        .unwrap();
    let url = session.get_authorization_url().to_owned();
    let state = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .find(|(n, _)| n == "state")
        .unwrap()
        .1
        .into_owned();
    // The PKCE verifier and expected issuer wait in the pending store.
    assert!(
        PendingStore::get_flow(&world.store, &FlowState::new(&state))
            .await
            .unwrap()
            .is_some()
    );

    let navigation = Browser::new()
        .stop_before(&url::Url::parse(redirect).unwrap())
        .get(&url)
        .await
        .unwrap();
    let token = session
        .handle_callback_url(navigation.final_url().as_str())
        .await
        .unwrap();
    assert!(
        PendingStore::get_flow(&world.store, &FlowState::new(&state))
            .await
            .unwrap()
            .is_none(),
        "the state is consumed"
    );

    // A restarted client finds its credentials in the store.
    let mut restarted = manager(&world, &key).await;
    assert!(restarted.initialize_from_store().await.unwrap());
    assert_eq!(
        restarted.get_access_token().await.unwrap(),
        token.access_token().secret().as_str()
    );
    assert_eq!(world.auth.hits(Endpoint::Authorize), 1);
}

fn token_response(access: &str, refresh: &str) -> OAuthTokenResponse {
    let mut extra = VendorExtraTokenFields::default();
    extra
        .0
        .insert("vendor_field".into(), serde_json::json!({"n": 1}));
    let mut response = OAuthTokenResponse::new(
        AccessToken::new(access.into()),
        BasicTokenType::Bearer,
        extra,
    );
    response.set_refresh_token(Some(RefreshToken::new(refresh.into())));
    response.set_expires_in(Some(&Duration::from_secs(600)));
    response
}

#[tokio::test]
async fn credentials_round_trip_and_are_removed_only_when_still_current() {
    let store = MemoryStore::new();
    let key = TokenKey::new("rmcp", "https://mcp.example/mcp");
    let adapter = credentials(&store, &key);
    assert!(adapter.load().await.unwrap().is_none());

    let saved = StoredCredentials::new(
        "client-1".into(),
        Some(token_response("at-1", "rt-1")),
        vec!["notes:read".into()],
        Some(1_700_000_000),
    )
    .with_issuer(Some("https://as.example".into()));
    adapter.save(saved.clone()).await.unwrap();

    // Another instance over the same data (a restart) reads it back whole.
    let loaded = credentials(&store, &key).load().await.unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(&loaded).unwrap(),
        serde_json::to_value(&saved).unwrap()
    );
    let record = TokenStore::get(&store, &key).await.unwrap().unwrap().record;
    assert_eq!(record.scopes, ["notes:read"]);
    assert_eq!(record.expires_at.unwrap().unix_millis(), 1_700_000_600_000);
    assert!(!format!("{record:?}").contains("at-1"));

    // A rejection of an older refresh token leaves newer credentials alone.
    let newer = StoredCredentials::new(
        "client-1".into(),
        Some(token_response("at-2", "rt-2")),
        vec![],
        Some(1_700_000_100),
    );
    adapter.save(newer).await.unwrap();
    adapter.on_refresh_token_rejected(&saved).await.unwrap();
    assert!(adapter.load().await.unwrap().is_some());
    let current = adapter.load().await.unwrap().unwrap();
    adapter.on_refresh_token_rejected(&current).await.unwrap();
    assert!(adapter.load().await.unwrap().is_none());

    adapter.save(saved).await.unwrap();
    adapter.clear().await.unwrap();
    assert!(adapter.load().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_guard_is_the_stores_lease() {
    let store = MemoryStore::new();
    let key = TokenKey::new("rmcp", "https://mcp.example/mcp");
    let held = credentials(&store, &key)
        .acquire_refresh_guard()
        .await
        .unwrap()
        .unwrap();

    // Another instance cannot take it while it is held...
    let impatient =
        credentials(&store, &key).lease(Duration::from_secs(30), Duration::from_millis(50));
    let error = impatient.acquire_refresh_guard().await.err().unwrap();
    assert!(error.to_string().contains("refresh lease"), "{error}");

    // ...and gets it once it is released.
    let released = Arc::new(AtomicBool::new(false));
    let waiter = {
        let adapter = credentials(&store, &key);
        let released = Arc::clone(&released);
        tokio::spawn(async move {
            let guard = adapter.acquire_refresh_guard().await.unwrap().unwrap();
            (released.load(Ordering::SeqCst), guard)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    released.store(true, Ordering::SeqCst);
    drop(held);
    let (after_release, _guard) = waiter.await.unwrap();
    assert!(
        after_release,
        "acquired only after the first holder released it"
    );
}

#[tokio::test]
async fn states_are_kept_for_their_ttl_and_taken_once() {
    let clock = Arc::new(ManualClock::starting_now());
    let store = MemoryStore::with_clock(clock.clone());
    let states = StateStoreAdapter::new(Arc::new(store.clone()), "rmcp-flows");
    let verifier = oauth2::PkceCodeVerifier::new("v".repeat(43));
    let csrf = oauth2::CsrfToken::new("state-1".into());
    let state = StoredAuthorizationState::new_with_expected_issuer(
        &verifier,
        &csrf,
        Some("https://as.example".into()),
        true,
    )
    .with_requested_scopes(vec!["notes:read".into()]);
    states.save("state-1", state).await.unwrap();

    let loaded = states.load("state-1").await.unwrap().unwrap();
    assert_eq!(loaded.pkce_verifier, "v".repeat(43));
    assert_eq!(
        loaded.expected_issuer.as_deref(),
        Some("https://as.example")
    );
    assert!(loaded.require_issuer);
    assert_eq!(loaded.requested_scopes, ["notes:read"]);
    assert!(!format!("{loaded:?}").contains(&"v".repeat(43)));
    // Another namespace does not see it.
    let other = StateStoreAdapter::new(Arc::new(store.clone()), "elsewhere");
    assert!(other.load("state-1").await.unwrap().is_none());

    states.delete("state-1").await.unwrap();
    assert!(states.load("state-1").await.unwrap().is_none());
    states.delete("state-1").await.unwrap();

    // An abandoned authorization is forgotten after the TTL.
    let abandoned =
        StoredAuthorizationState::new(&verifier, &oauth2::CsrfToken::new("state-2".into()));
    states.save("state-2", abandoned).await.unwrap();
    clock.advance(Duration::from_secs(601));
    assert!(states.load("state-2").await.unwrap().is_none());
    assert!(
        PendingStore::get_flow(&store, &FlowState::new("state-2"))
            .await
            .unwrap()
            .is_none()
    );
}
