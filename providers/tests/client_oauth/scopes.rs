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

#[tokio::test]
async fn new_scopes_every_time_still_run_out_of_step_ups() {
    // A hostile server asks for another scope on every request: the
    // same-scopes counter starts over each time, the session's does not.
    let world = World::start().await;
    let provider = world
        .provider()
        .max_step_ups_per_session(3)
        .max_prompts(100, std::time::Duration::from_secs(600))
        .build()
        .unwrap();
    world.whoami(&provider).await.unwrap();
    let mut refused = None;
    for round in 0..10 {
        let scope = format!("scope-{round}");
        world
            .resource
            .update_settings(|s| s.required_scopes = vec![scope.clone()]);
        if let Err(failure) = world.whoami(&provider).await {
            refused = Some((round, failure.auth()));
            break;
        }
    }
    let (round, error) = refused.expect("the step-ups ran out");
    assert_eq!(round, 3, "three step-ups, then no more");
    assert!(
        matches!(
            error,
            ClientAuthError::TooManyPrompts {
                limit: 3,
                window: None
            }
        ),
        "{error:?}"
    );
    // The sign-in and three step-ups: nothing after the limit.
    assert_eq!(world.auth.hits(Endpoint::Authorize), 4);
}

#[tokio::test]
async fn a_server_that_refuses_every_token_runs_out_of_prompts() {
    // Every token is refused (revoked at once, refresh token included), so
    // each request needs a new sign-in: at most `max_prompts` per window.
    let world = World::start().await;
    let clock = std::sync::Arc::new(mcp_authkit_core::ManualClock::starting_now());
    let provider = world
        .provider()
        .clock(clock.clone())
        .max_prompts(3, std::time::Duration::from_secs(600))
        .build()
        .unwrap();
    let mut signed_in = 0;
    let error = loop {
        match world.whoami(&provider).await {
            Ok(_) => signed_in += 1,
            Err(failure) => break failure.auth(),
        }
        world.auth.revoke_subject("test-user");
        assert!(signed_in < 10, "never stopped");
    };
    assert_eq!(signed_in, 3);
    assert!(
        matches!(
            error,
            ClientAuthError::TooManyPrompts {
                limit: 3,
                window: Some(_)
            }
        ),
        "{error:?}"
    );
    assert_eq!(world.auth.hits(Endpoint::Authorize), 3);
    // The window moves on.
    clock.advance(std::time::Duration::from_secs(601));
    world.whoami(&provider).await.unwrap();
    assert_eq!(world.auth.hits(Endpoint::Authorize), 4);
}
