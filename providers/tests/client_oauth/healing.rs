//! Registrations that heal: a dynamically registered client the server
//! refuses (`invalid_client` or `unauthorized_client` at any endpoint), or
//! whose sign-in timed out, is dropped and registered again once; a
//! registration that failed is never kept; replicas share the healed one.

use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::{ManualClock, OAuthErrorKind, TokenKey, TokenStore};
use mcp_authkit_providers::client::{
    AuthProvider, ClientAuthError, PreRegisteredClient, PromptOutcome, RedirectTarget, SignOut,
    prompt_fn,
};
use mcp_authkit_testkit::{Endpoint, Failure};

use crate::support::World;

fn invalid_client() -> Failure {
    Failure::OAuthError("invalid_client".to_owned())
}

/// Where the provider keeps its registration at the world's server (the
/// layout `OAuthClientProvider` documents).
fn registration_key(world: &World) -> TokenKey {
    TokenKey::new("mcp-client/registration", world.auth.issuer())
}

async fn stored_registration(world: &World) -> bool {
    TokenStore::get(&world.store, &registration_key(world))
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn invalid_client_at_the_code_exchange_registers_again_once() {
    let world = World::start().await;
    world
        .auth
        .fail_next(Endpoint::AuthorizationCodeGrant, 1, invalid_client());
    let provider = world.provider().build().unwrap();
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::Registration), 2);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 2);
}

#[tokio::test]
async fn a_registration_the_server_keeps_refusing_is_not_kept() {
    let world = World::start().await;
    world
        .auth
        .fail_next(Endpoint::AuthorizationCodeGrant, 2, invalid_client());
    let provider = world.provider().build().unwrap();
    let error = world.whoami(&provider).await.unwrap_err().auth();
    assert_eq!(
        error.oauth_error().map(|e| e.kind()),
        Some(OAuthErrorKind::InvalidClient),
        "{error}"
    );
    // Registered again once, not in a loop; and neither is kept.
    assert_eq!(world.auth.hits(Endpoint::Registration), 2);
    assert!(!stored_registration(&world).await);

    // The next attempt starts clean.
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::Registration), 3);
    assert!(stored_registration(&world).await);
}

#[tokio::test]
async fn unauthorized_client_at_the_authorization_endpoint_registers_again() {
    let world = World::start().await;
    world.auth.fail_next(
        Endpoint::Authorize,
        1,
        Failure::OAuthError("unauthorized_client".to_owned()),
    );
    let provider = world.provider().build().unwrap();
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::Registration), 2);
    assert_eq!(world.auth.hits(Endpoint::Token), 1);
}

#[tokio::test]
async fn a_sign_in_that_times_out_drops_its_dynamic_registration() {
    let world = World::start().await;
    // The user never comes back from the browser.
    let walked_away = world
        .provider()
        .interaction(prompt_fn(|_| async { Ok(PromptOutcome::AwaitRedirect) }))
        .authorization_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let error = world.whoami(&walked_away).await.unwrap_err().auth();
    assert!(
        matches!(error, ClientAuthError::TimedOut { .. }),
        "{error:?}"
    );
    assert!(!stored_registration(&world).await);

    // The next attempt registers again and signs in.
    let provider = world.provider().build().unwrap();
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::Registration), 2);
}

#[tokio::test]
async fn a_failed_registration_is_never_stored() {
    let world = World::start().await;
    world
        .auth
        .fail_next(Endpoint::Registration, 1, Failure::Status(500));
    let provider = world.provider().build().unwrap();
    let error = world.whoami(&provider).await.unwrap_err().auth();
    assert!(
        matches!(error, ClientAuthError::Registration { .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert!(!stored_registration(&world).await);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 0);
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_healed_registration() {
    let world = Arc::new(World::start().await);
    // Two replicas over one store; each has run a sign-in or a request of
    // its own, so each holds what it knows of the registration in memory.
    let a = world.provider().build().unwrap();
    let b = world.provider().build().unwrap();
    world.whoami(&b).await.unwrap();
    world.whoami(&a).await.unwrap();

    // The server forgets the client; replica A heals first.
    world.auth.restart();
    world.whoami(&a).await.unwrap();
    assert_eq!(world.auth.hits(Endpoint::Registration), 2);

    // Replica B's refresh uses A's new registration (not the forgotten one
    // it knew), so A's new token is neither lost nor replaced.
    world.auth.expire_access_tokens();
    assert_eq!(world.whoami(&b).await.unwrap(), "test-user []");
    assert_eq!(world.whoami(&a).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::Registration), 2);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 2);
    assert_eq!(world.auth.hits(Endpoint::RefreshTokenGrant), 2);
}

#[tokio::test]
async fn sign_out_can_forget_the_registration() {
    let world = World::start().await;
    let provider = world.provider().build().unwrap();
    world.whoami(&provider).await.unwrap();

    // Signing out keeps the registration for the next sign-in...
    assert!(
        provider
            .sign_out(SignOut::KeepRegistration)
            .await
            .unwrap()
            .removed
    );
    assert!(stored_registration(&world).await);
    world.whoami(&provider).await.unwrap();
    assert_eq!(world.auth.hits(Endpoint::Registration), 1);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 2);

    // ...unless asked to forget it: then the next sign-in registers again.
    assert!(
        provider
            .sign_out(SignOut::ForgetRegistration)
            .await
            .unwrap()
            .removed
    );
    assert!(!stored_registration(&world).await);
    assert!(provider.token().await.unwrap().is_none());
    world.whoami(&provider).await.unwrap();
    assert_eq!(world.auth.hits(Endpoint::Registration), 2);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 3);
}

#[tokio::test]
async fn a_refused_pre_registered_client_is_an_error_not_a_registration() {
    let world = World::with(
        mcp_authkit_testkit::TestAuthServer::builder()
            .settings(|s| s.loopback_redirect_any_port = true)
            .client(
                mcp_authkit_testkit::ClientRegistration::public("http://127.0.0.1:1/callback")
                    .client_id("configured"),
            ),
    )
    .await;
    let provider = world
        .provider()
        .pre_registered(PreRegisteredClient::public("configured"))
        .build()
        .unwrap();
    world.whoami(&provider).await.unwrap();

    // The server refuses it at refresh: a configuration problem to report,
    // with the token kept, not something a new registration would fix.
    world.auth.expire_access_tokens();
    world
        .auth
        .fail_next(Endpoint::RefreshTokenGrant, 1, invalid_client());
    let error = world.whoami(&provider).await.unwrap_err().auth();
    assert_eq!(
        error.oauth_error().map(|e| e.kind()),
        Some(OAuthErrorKind::InvalidClient),
        "{error}"
    );
    assert_eq!(world.auth.hits(Endpoint::Registration), 0);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 1);
    let key = provider.token_key().unwrap();
    assert!(TokenStore::get(&world.store, &key).await.unwrap().is_some());
    // And at the token endpoint of a sign-in: reported once, no loop.
    world
        .auth
        .fail_next(Endpoint::AuthorizationCodeGrant, 1, invalid_client());
    provider
        .sign_out(SignOut::ForgetRegistration)
        .await
        .unwrap();
    let error = world.whoami(&provider).await.unwrap_err().auth();
    assert!(error.to_string().contains("invalid_client"), "{error}");
    assert_eq!(world.auth.hits(Endpoint::Authorize), 2);
    assert_eq!(world.auth.hits(Endpoint::Registration), 0);
}

#[tokio::test]
async fn a_refresh_before_use_that_finds_the_client_forgotten_signs_in_again() {
    let world = World::start().await;
    let clock = Arc::new(ManualClock::starting_now());
    let provider = world.provider().clock(clock.clone()).build().unwrap();
    world.whoami(&provider).await.unwrap();

    // The server restarts; later the token is due for a refresh, which the
    // server refuses: no token to send, so the 401 starts a new sign-in.
    world.auth.restart();
    clock.advance(Duration::from_secs(3600));
    assert!(provider.token().await.unwrap().is_none());
    assert!(!stored_registration(&world).await);
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::Registration), 2);
    assert_eq!(world.auth.hits(Endpoint::RefreshTokenGrant), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_that_register_at_once_use_one_registration() {
    let world = Arc::new(World::start().await);
    // Slow registrations, so both replicas are registering at once; the one
    // that asked first gets its answer last.
    for delay in [400, 100] {
        world.auth.fail_next(
            Endpoint::Registration,
            1,
            Failure::Delay(Duration::from_millis(delay)),
        );
    }
    // One redirect URI for both (a fixed one: two loopback listeners would
    // each need a registration of their own).
    let replica = || {
        world
            .provider()
            .redirect(RedirectTarget::External(
                "http://127.0.0.1:1/callback".into(),
            ))
            .build()
            .unwrap()
    };
    let replicas = [replica(), replica()];
    let tasks: Vec<_> = replicas
        .iter()
        .map(|provider| {
            let (world, provider) = (Arc::clone(&world), provider.clone());
            tokio::spawn(async move { world.whoami(&provider).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "test-user []");
    }
    assert_eq!(world.auth.hits(Endpoint::Registration), 2);
    assert_eq!(
        world.auth.hits(Endpoint::Authorize),
        1,
        "one shared sign-in"
    );

    // The token came from the client both now use: it refreshes.
    world.auth.expire_access_tokens();
    for provider in &replicas {
        assert_eq!(world.whoami(provider).await.unwrap(), "test-user []");
    }
    assert_eq!(world.auth.hits(Endpoint::Authorize), 1);
    assert_eq!(world.auth.hits(Endpoint::RefreshTokenGrant), 1);
}
