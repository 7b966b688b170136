//! The authorization servers MCP clients meet in the wild, each over real
//! HTTP and each ending in a working tool call with nobody stepping in:
//! one that wants `client_id` in the token request body even with HTTP
//! Basic (the MCP Python SDK, FastMCP), one that forgets its clients when it
//! restarts (in-memory servers), one whose client secrets expire; and an MCP
//! server that answers an unknown token with `500` (the TypeScript SDK's
//! example), which must end in a clear error, never a hang.

use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::{ManualClock, Timestamp};
use mcp_authkit_testkit::{ClientAuthMethod, Endpoint, InvalidTokenAnswer, TestAuthServer};

use crate::support::{World, call_whoami};

/// What the MCP Python SDK's authorization server advertises: no `none`.
fn python_sdk_methods() -> Vec<ClientAuthMethod> {
    vec![
        ClientAuthMethod::ClientSecretPost,
        ClientAuthMethod::ClientSecretBasic,
    ]
}

fn registered_client_id(world: &World) -> String {
    let authorize = world.auth.last_request(Endpoint::Authorize).unwrap();
    authorize.param("client_id").unwrap().to_owned()
}

#[tokio::test]
async fn a_server_that_wants_client_id_in_the_body_with_basic() {
    let world = World::with(TestAuthServer::builder().settings(|s| {
        s.token_endpoint_auth_methods = python_sdk_methods();
        s.require_client_id_in_body = true;
    }))
    .await;
    let client = world
        .connect(world.provider().build().unwrap())
        .await
        .expect("signed in and connected");
    assert_eq!(call_whoami(&client).await.unwrap(), "test-user []");

    // No `none` advertised: a confidential registration, used with Basic
    // and the client_id in the body as well (RFC 6749 section 2.3.1).
    let registration = world.auth.last_request(Endpoint::Registration).unwrap();
    assert_eq!(
        registration.json.unwrap()["token_endpoint_auth_method"],
        "client_secret_basic"
    );
    let client_id = registered_client_id(&world);
    let exchange = world
        .auth
        .last_request(Endpoint::AuthorizationCodeGrant)
        .unwrap();
    assert!(
        exchange
            .header("authorization")
            .unwrap()
            .starts_with("Basic ")
    );
    assert_eq!(exchange.param("client_id"), Some(client_id.as_str()));
    assert_eq!(exchange.param("client_secret"), None, "one method only");

    // Refreshes authenticate the same way.
    world.auth.expire_access_tokens();
    assert_eq!(call_whoami(&client).await.unwrap(), "test-user []");
    let refresh = world
        .auth
        .last_request(Endpoint::RefreshTokenGrant)
        .unwrap();
    assert_eq!(refresh.param("client_id"), Some(client_id.as_str()));
    assert_eq!(world.auth.hits(Endpoint::Registration), 1);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 1);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_server_that_forgets_its_clients_on_restart_while_tokens_refresh() {
    let world = World::start().await;
    let client = world
        .connect(world.provider().build().unwrap())
        .await
        .unwrap();
    assert_eq!(call_whoami(&client).await.unwrap(), "test-user []");
    let forgotten = registered_client_id(&world);

    // Its token is refused, and so is the refresh: invalid_client.
    assert_eq!(world.auth.restart(), 1);
    assert_eq!(call_whoami(&client).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::Registration), 2);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 2);
    assert_ne!(registered_client_id(&world), forgotten);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_server_that_forgets_its_clients_on_restart_without_refresh_tokens() {
    // Without a refresh token the only way back is a new sign-in, with a
    // client the server no longer knows: it shows an error page instead of
    // redirecting.
    let world =
        World::with(TestAuthServer::builder().settings(|s| s.issue_refresh_tokens = false)).await;
    let client = world
        .connect(world.provider().build().unwrap())
        .await
        .unwrap();
    assert_eq!(call_whoami(&client).await.unwrap(), "test-user []");

    world.auth.restart();
    assert_eq!(call_whoami(&client).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::Registration), 2);
    // The refused sign-in with the forgotten client, then the new one.
    assert_eq!(world.auth.hits(Endpoint::Authorize), 3);
    client.cancel().await.unwrap();

    // A new process over the same store starts from the new registration.
    world.auth.restart();
    let restarted = world
        .connect(world.provider().build().unwrap())
        .await
        .expect("a restarted client heals too");
    assert_eq!(call_whoami(&restarted).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::Registration), 3);
    restarted.cancel().await.unwrap();
}

#[tokio::test]
async fn a_server_whose_client_secrets_expire() {
    let world = World::with(TestAuthServer::builder().settings(|s| {
        s.token_endpoint_auth_methods = python_sdk_methods();
        s.client_secret_lifetime = Some(Duration::from_secs(3600));
    }))
    .await;
    // The client's clock is two hours ahead of the server's: the secret's
    // hour counts from client_id_issued_at, not from the server's absolute
    // client_secret_expires_at read on the client's clock.
    let ahead = Timestamp::now().unix_millis() + 2 * 3600 * 1000;
    let clock = Arc::new(ManualClock::new(Timestamp::from_unix_millis(ahead)));
    let provider = world.provider().clock(clock.clone()).build().unwrap();
    let client = world.connect(provider).await.unwrap();
    assert_eq!(call_whoami(&client).await.unwrap(), "test-user []");
    let first = registered_client_id(&world);

    // Half an hour later the user has to sign in again (the server dropped
    // the grant): the registration is still good, so it is reused.
    clock.advance(Duration::from_secs(1800));
    world.auth.revoke_subject("test-user");
    assert_eq!(call_whoami(&client).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::Authorize), 2);
    assert_eq!(world.auth.hits(Endpoint::Registration), 1);
    assert_eq!(registered_client_id(&world), first);

    // Past the hour the secret has expired: a refresh would send it, so the
    // client registers again instead.
    clock.advance(Duration::from_secs(1801));
    world.auth.expire_access_tokens();
    let refreshes = world.auth.hits(Endpoint::RefreshTokenGrant);
    assert_eq!(call_whoami(&client).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::Registration), 2);
    assert_eq!(
        world.auth.hits(Endpoint::RefreshTokenGrant),
        refreshes,
        "no token request with the expired secret"
    );
    let second = registered_client_id(&world);
    assert_ne!(second, first);

    // The server expires it early: the refresh gets invalid_client, and the
    // client registers again.
    world.auth.expire_client_secrets();
    world.auth.expire_access_tokens();
    assert_eq!(call_whoami(&client).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::Registration), 3);
    assert_ne!(registered_client_id(&world), second);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_server_error_for_a_refused_token_is_a_clear_error_not_a_hang() {
    let world = World::start().await;
    world
        .resource
        .update_settings(|s| s.invalid_token_answer = InvalidTokenAnswer::InternalError);
    let client = world
        .connect(world.provider().build().unwrap())
        .await
        .unwrap();
    assert_eq!(call_whoami(&client).await.unwrap(), "test-user []");

    // The server drops the token but answers it with 500, not 401.
    world.auth.expire_access_tokens();
    let error = tokio::time::timeout(Duration::from_secs(30), call_whoami(&client))
        .await
        .expect("an answer, not a hang")
        .expect_err("the server refuses the token");
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(&format!(" / {cause}"));
        source = cause.source();
    }
    assert!(text.contains("HTTP 500"), "{text}");
    assert!(text.contains("not an authorization challenge"), "{text}");
    assert!(text.contains("sign_out"), "says what to do: {text}");
    // It did not sign in again on its own: nothing said it should.
    assert_eq!(world.auth.hits(Endpoint::Authorize), 1);
    client.cancel().await.unwrap();
}
