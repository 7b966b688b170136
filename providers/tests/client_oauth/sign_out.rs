//! Signing out revokes the tokens at the authorization server (RFC 7009)
//! and forgets them here, even when revocation fails.

use mcp_authkit_core::TokenStore;
use mcp_authkit_providers::client::{AuthProvider, Revocation, SignOut};
use mcp_authkit_testkit::{Endpoint, Failure, TestAuthServer};

use crate::support::{World, secret};

#[tokio::test]
async fn sign_out_revokes_the_refresh_and_access_tokens_then_forgets_them() {
    let world = World::start().await;
    let provider = world.provider().build().unwrap();
    world.whoami(&provider).await.unwrap();
    let token = provider.token().await.unwrap().unwrap();
    assert!(world.auth.introspect(&secret(&token)).is_some());

    let signed_out = provider.sign_out(SignOut::KeepRegistration).await.unwrap();
    assert!(signed_out.removed);
    assert!(
        matches!(signed_out.revocation, Revocation::Revoked),
        "{signed_out:?}"
    );
    assert!(world.auth.introspect(&secret(&token)).is_none(), "revoked");
    let requests = world.auth.requests(Endpoint::Revocation);
    let hints: Vec<_> = requests
        .iter()
        .map(|r| r.param("token_type_hint").unwrap().to_owned())
        .collect();
    assert_eq!(hints, ["refresh_token", "access_token"]);
    assert!(
        requests.iter().all(|r| r.param("client_id").is_some()),
        "as the client"
    );
    let key = provider.token_key().unwrap();
    assert!(TokenStore::get(&world.store, &key).await.unwrap().is_none());
    // Nothing left to revoke.
    let again = provider.sign_out(SignOut::KeepRegistration).await.unwrap();
    assert!(!again.removed);
    assert!(matches!(again.revocation, Revocation::NothingToRevoke));
}

#[tokio::test]
async fn a_failed_revocation_still_signs_out_here_and_says_so() {
    let world = World::start().await;
    let provider = world.provider().build().unwrap();
    world.whoami(&provider).await.unwrap();
    let token = provider.token().await.unwrap().unwrap();
    world
        .auth
        .fail_next(Endpoint::Revocation, 1, Failure::Status(503));

    let signed_out = provider.sign_out(SignOut::KeepRegistration).await.unwrap();
    assert!(signed_out.removed);
    let Revocation::Failed(error) = &signed_out.revocation else {
        panic!("{signed_out:?}");
    };
    assert!(error.is_retryable(), "{error}");
    assert!(error.to_string().contains("503"), "{error}");
    assert!(!error.to_string().contains(&secret(&token)));
    assert!(provider.token().await.unwrap().is_none(), "gone here");
    // The next request signs in again.
    world.whoami(&provider).await.unwrap();
    assert_eq!(world.auth.hits(Endpoint::Authorize), 2);
}

#[tokio::test]
async fn a_server_without_revocation_only_loses_the_token_here() {
    let world = World::with(TestAuthServer::builder().settings(|s| s.revocation = false)).await;
    let provider = world.provider().build().unwrap();
    world.whoami(&provider).await.unwrap();
    let signed_out = provider.sign_out(SignOut::KeepRegistration).await.unwrap();
    assert!(signed_out.removed);
    assert!(matches!(signed_out.revocation, Revocation::NotOffered));
    assert_eq!(world.auth.hits(Endpoint::Revocation), 0);
}
