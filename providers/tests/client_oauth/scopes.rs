//! Scope selection (the challenge's, else `scopes_supported`, else none) and
//! bounded step-up on `403 insufficient_scope`.

use mcp_authkit_providers::client::{AuthChallenge, AuthProvider, ClientAuthError};
use mcp_authkit_testkit::{Endpoint, TestAuthServer};

use crate::support::{Failure, World};

fn scopes(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn the_challenge_scope_is_requested() {
    let world = World::start().await;
    world.resource.update_settings(|s| {
        s.required_scopes = scopes(&["notes:read"]);
        s.scopes_supported = Some(scopes(&["notes:read", "notes:write"]));
    });
    let provider = world.provider().build().unwrap();
    assert_eq!(
        world.whoami(&provider).await.unwrap(),
        "test-user [notes:read]"
    );
    let authorize = world.auth.last_request(Endpoint::Authorize).unwrap();
    assert_eq!(authorize.param("scope"), Some("notes:read"));
}

#[tokio::test]
async fn scopes_supported_is_requested_when_the_challenge_names_none() {
    let world = World::start().await;
    world.resource.update_settings(|s| {
        s.scope_in_challenge = false;
        s.scopes_supported = Some(scopes(&["notes:read", "notes:write"]));
    });
    let provider = world.provider().build().unwrap();
    world.whoami(&provider).await.unwrap();
    let authorize = world.auth.last_request(Endpoint::Authorize).unwrap();
    assert_eq!(authorize.param("scope"), Some("notes:read notes:write"));
}

#[tokio::test]
async fn step_up_asks_for_the_granted_and_the_challenged_scopes() {
    let world = World::start().await;
    world
        .resource
        .update_settings(|s| s.required_scopes = scopes(&["notes:read"]));
    let provider = world.provider().build().unwrap();
    assert_eq!(
        world.whoami(&provider).await.unwrap(),
        "test-user [notes:read]"
    );

    // Another operation needs another scope: 403 insufficient_scope naming
    // only that one.
    world
        .resource
        .update_settings(|s| s.required_scopes = scopes(&["notes:write"]));
    assert_eq!(
        world.whoami(&provider).await.unwrap(),
        "test-user [notes:read notes:write]"
    );
    let step_up = world.auth.last_request(Endpoint::Authorize).unwrap();
    assert_eq!(step_up.param("scope"), Some("notes:read notes:write"));
    assert_eq!(world.auth.hits(Endpoint::Authorize), 2);
    assert_eq!(
        world.auth.hits(Endpoint::RefreshTokenGrant),
        0,
        "never by refresh"
    );
}

#[tokio::test]
async fn step_up_is_bounded() {
    // The user keeps unticking the write scope: the server never gets it.
    let world = World::with(
        TestAuthServer::builder().settings(|s| s.grant_only = Some(scopes(&["notes:read"]))),
    )
    .await;
    world
        .resource
        .update_settings(|s| s.required_scopes = scopes(&["notes:read", "notes:write"]));
    let provider = world.provider().build().unwrap();

    // 401 -> sign in; 403 -> step up twice (the caller's bound); then the 403
    // comes back.
    assert!(matches!(
        world.whoami(&provider).await,
        Err(Failure::Status(403))
    ));
    assert_eq!(world.auth.hits(Endpoint::Authorize), 3);

    // The provider's own bound: no more step-ups for the same scopes.
    let error = world.whoami(&provider).await.unwrap_err().auth();
    let ClientAuthError::StepUpLimit { attempts, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(*attempts, 2);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 3);
}

#[tokio::test]
async fn a_403_that_is_not_about_scopes_is_final() {
    let world = World::start().await;
    let provider = world.provider().build().unwrap();
    let error = provider
        .handle_forbidden(&AuthChallenge::new(Some(
            r#"Bearer error="access_denied", error_description="account suspended""#,
        )))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ClientAuthError::Forbidden { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("account suspended"), "{error}");
    assert_eq!(world.auth.hits(Endpoint::Authorize), 0);
}
