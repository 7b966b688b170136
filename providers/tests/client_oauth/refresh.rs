//! Refresh before expiry and on 401, single-flight across tasks and
//! provider instances; invalid_grant leads to a new authorization; a
//! transient failure never loses the token.

use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::{ManualClock, TokenStore};
use mcp_authkit_providers::client::AuthProvider;
use mcp_authkit_testkit::{Endpoint, Failure, TestAuthServer};

use crate::support::{World, secret};

#[tokio::test]
async fn a_token_about_to_expire_is_refreshed_before_use() {
    let world = World::start().await;
    let clock = Arc::new(ManualClock::starting_now());
    let provider = world
        .provider()
        .clock(clock.clone())
        .refresh_skew(Duration::from_secs(60))
        .build()
        .unwrap();
    world.whoami(&provider).await.unwrap();
    let before = provider.token().await.unwrap().unwrap();
    assert_eq!(world.auth.hits(Endpoint::RefreshTokenGrant), 0);

    // 3550 s of a 3600 s token have passed: inside the 60 s skew.
    clock.advance(Duration::from_secs(3550));
    let after = provider.token().await.unwrap().unwrap();
    assert_ne!(secret(&after), secret(&before));
    assert_eq!(world.auth.hits(Endpoint::RefreshTokenGrant), 1);
    let refresh = world
        .auth
        .last_request(Endpoint::RefreshTokenGrant)
        .unwrap();
    assert_eq!(refresh.param("resource"), Some(world.mcp_url.as_str()));
    assert_eq!(refresh.param("scope"), None);

    // The new token is fresh: no second refresh, and the server takes it.
    provider.token().await.unwrap().unwrap();
    assert_eq!(world.auth.hits(Endpoint::RefreshTokenGrant), 1);
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::Authorize), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_token_is_refreshed_once_across_tasks_and_instances() {
    // Reusing a rotated refresh token revokes everything: a second refresh
    // would make every later call fail.
    let world = Arc::new(
        World::with(TestAuthServer::builder().settings(|s| s.revoke_on_refresh_token_reuse = true))
            .await,
    );
    let first = world.provider().build().unwrap();
    world.whoami(&first).await.unwrap();
    // Four instances over one store, as four replicas (or restarts) would be.
    let mut providers = vec![first];
    for _ in 0..3 {
        providers.push(world.provider().build().unwrap());
    }
    for provider in &providers {
        provider.token().await.unwrap().expect("signed in");
    }

    world.auth.expire_access_tokens();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (world, provider) = (Arc::clone(&world), providers[i % 4].clone());
            tokio::spawn(async move { world.whoami(&provider).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "test-user []");
    }
    assert_eq!(world.auth.hits(Endpoint::RefreshTokenGrant), 1);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 1);
}

#[tokio::test]
async fn a_rejected_refresh_token_leads_to_a_new_authorization() {
    let world = World::start().await;
    let provider = world.provider().build().unwrap();
    world.whoami(&provider).await.unwrap();
    let old = provider.token().await.unwrap().unwrap();

    // The user disconnected the app: the token and refresh token are dead.
    world.auth.revoke_subject("test-user");
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::RefreshTokenGrant), 1);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 2);
    assert_ne!(
        secret(&provider.token().await.unwrap().unwrap()),
        secret(&old)
    );
}

#[tokio::test]
async fn a_transient_refresh_failure_keeps_the_token() {
    let world = World::start().await;
    let provider = world.provider().build().unwrap();
    world.whoami(&provider).await.unwrap();
    let key = provider.token_key().unwrap();

    world.auth.expire_access_tokens();
    world
        .auth
        .fail_next(Endpoint::RefreshTokenGrant, 1, Failure::Status(503));
    let error = world.whoami(&provider).await.unwrap_err().auth();
    assert!(error.is_retryable(), "{error:?}");
    let kept = TokenStore::get(&world.store, &key)
        .await
        .unwrap()
        .expect("token kept");
    assert!(kept.record.refresh_token.is_some());
    assert_eq!(world.auth.hits(Endpoint::Authorize), 1, "no new sign-in");

    // Once the server is back, the same refresh token works.
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::RefreshTokenGrant), 2);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 1);
}
