//! `ClientCredentialsProvider` against the test authorization server:
//! every client authentication, `resource` and scopes, the token cached and
//! renewed, one token request across replicas, and the refusals.

use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::ManualClock;
use mcp_authkit_providers::client::{
    AssertionKey, AuthChallenge, AuthProvider, ClientAuthError, ClientCredentialsProvider,
    ClientCredentialsProviderBuilder, PreRegisteredClient, TokenEndpointAuthMethod,
};
use mcp_authkit_testkit::{
    ClientAuthMethod, ClientRegistration, Endpoint, Failure, RecordedRequest, SigningKey,
    TestAuthServer,
};
use serde_json::Value;

use crate::support::{World, secret};

pub const SECRET: &str = "bot-s3cret";

pub fn register_secret_client(world: &World, method: ClientAuthMethod) {
    world
        .auth
        .register_client(
            ClientRegistration::service(method)
                .client_id("bot")
                .client_secret(SECRET),
        )
        .unwrap();
}

pub fn provider(world: &World, client: PreRegisteredClient) -> ClientCredentialsProviderBuilder {
    ClientCredentialsProvider::builder(&world.mcp_url, client)
        .store(world.store.clone())
        .http_client(world.http.clone())
}

fn token_requests(world: &World) -> Vec<RecordedRequest> {
    world.auth.requests(Endpoint::ClientCredentialsGrant)
}

/// The claims of a JWT, unverified.
pub fn claims(jwt: &str) -> Value {
    use base64::Engine as _;
    let part = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_secret_in_basic_gets_a_token_for_the_resource_once() {
    let world = World::start().await;
    register_secret_client(&world, ClientAuthMethod::ClientSecretBasic);
    let provider = provider(&world, PreRegisteredClient::confidential("bot", SECRET))
        .build()
        .unwrap();
    assert!(
        provider.token().await.unwrap().is_none(),
        "nothing before the 401"
    );
    assert_eq!(world.whoami(&provider).await.unwrap(), "bot []");
    let requests = token_requests(&world);
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.param("grant_type"), Some("client_credentials"));
    assert_eq!(request.param("resource"), Some(world.mcp_url.as_str()));
    assert!(
        request
            .header("authorization")
            .unwrap()
            .starts_with("Basic ")
    );
    assert_eq!(request.param("client_secret"), None);

    // Cached: the next requests, and a restarted provider, use it.
    world.whoami(&provider).await.unwrap();
    let restarted = self::provider(&world, PreRegisteredClient::confidential("bot", SECRET))
        .build()
        .unwrap();
    world.whoami(&restarted).await.unwrap();
    assert_eq!(token_requests(&world).len(), 1);
    assert!(!format!("{provider:?}").contains(SECRET));
}

#[tokio::test]
async fn a_secret_in_the_body_where_the_server_wants_it() {
    let world = World::with(TestAuthServer::builder().settings(|s| {
        s.token_endpoint_auth_methods = vec![ClientAuthMethod::ClientSecretPost];
    }))
    .await;
    register_secret_client(&world, ClientAuthMethod::ClientSecretPost);
    let provider = provider(&world, PreRegisteredClient::confidential("bot", SECRET))
        .build()
        .unwrap();
    assert_eq!(world.whoami(&provider).await.unwrap(), "bot []");
    let request = token_requests(&world).pop().unwrap();
    assert_eq!(request.param("client_secret"), Some(SECRET));
    assert_eq!(request.header("authorization"), None);
}

#[tokio::test]
async fn a_private_key_signs_a_fresh_assertion_for_the_issuer_each_time() {
    for key in [SigningKey::generate_es256(), SigningKey::generate_rs256()] {
        let world = World::start().await;
        world
            .auth
            .register_client(ClientRegistration::private_key_jwt(key.public_jwk()).client_id("bot"))
            .unwrap();
        let assertion_key = AssertionKey::from_pem(&key.algorithm(), key.private_key_pem())
            .unwrap()
            .key_id(key.kid());
        let provider = provider(
            &world,
            PreRegisteredClient::private_key_jwt("bot", assertion_key),
        )
        .build()
        .unwrap();
        assert_eq!(world.whoami(&provider).await.unwrap(), "bot []");
        // Refused: the next token comes from a new assertion.
        world.auth.revoke_subject("bot");
        assert_eq!(world.whoami(&provider).await.unwrap(), "bot []");

        let requests = token_requests(&world);
        assert_eq!(requests.len(), 2);
        let mut jtis = Vec::new();
        for request in &requests {
            assert_eq!(
                request.param("client_assertion_type"),
                Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            );
            assert_eq!(request.param("client_secret"), None);
            let claims = claims(request.param("client_assertion").unwrap());
            assert_eq!(claims["iss"], "bot");
            assert_eq!(claims["sub"], "bot");
            assert_eq!(claims["aud"], world.auth.issuer());
            let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
            assert_eq!(lifetime, 60);
            jtis.push(claims["jti"].as_str().unwrap().to_owned());
        }
        assert_ne!(jtis[0], jtis[1], "never reused");
    }
}

#[tokio::test]
async fn a_key_the_server_does_not_know_is_refused_clearly() {
    let world = World::start().await;
    let registered = SigningKey::generate_es256();
    world
        .auth
        .register_client(
            ClientRegistration::private_key_jwt(registered.public_jwk()).client_id("bot"),
        )
        .unwrap();
    let other = SigningKey::generate_es256();
    let provider = provider(
        &world,
        PreRegisteredClient::private_key_jwt(
            "bot",
            AssertionKey::from_pem("ES256", other.private_key_pem()).unwrap(),
        ),
    )
    .build()
    .unwrap();
    let error = world.whoami(&provider).await.unwrap_err().auth();
    let oauth = error.oauth_error().expect("an OAuth error");
    assert_eq!(oauth.code(), Some("invalid_client"));
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("signature"), "{error}");
    assert_eq!(token_requests(&world).len(), 1, "no retry loop");
}

#[tokio::test]
async fn scopes_come_from_the_challenge_and_grow_on_a_403() {
    let world = World::start().await;
    register_secret_client(&world, ClientAuthMethod::ClientSecretBasic);
    world.resource.update_settings(|s| {
        s.required_scopes = vec!["notes:read".into()];
        s.scopes_supported = Some(vec!["notes:read".into(), "notes:write".into()]);
    });
    let provider = provider(&world, PreRegisteredClient::confidential("bot", SECRET))
        .scopes(["audit"])
        .build()
        .unwrap();
    assert_eq!(
        world.whoami(&provider).await.unwrap(),
        "bot [audit notes:read]"
    );
    assert_eq!(
        token_requests(&world)[0].param("scope"),
        Some("audit notes:read")
    );
    world
        .resource
        .update_settings(|s| s.required_scopes = vec!["notes:write".into()]);
    assert_eq!(
        world.whoami(&provider).await.unwrap(),
        "bot [audit notes:read notes:write]"
    );
    assert_eq!(token_requests(&world).len(), 2);

    // A server that refuses scopes the token has: no loop.
    world
        .auth
        .update_settings(|s| s.grant_only = Some(vec!["audit".into()]));
    world
        .resource
        .update_settings(|s| s.required_scopes = vec!["notes:admin".into()]);
    let error = world.whoami(&provider).await.unwrap_err().auth();
    let ClientAuthError::ScopesNotGranted { missing, granted } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(missing, &["notes:read", "notes:write", "notes:admin"]);
    assert_eq!(granted, &["audit"]);
    assert_eq!(token_requests(&world).len(), 3);
    // Asking again would get the same: it does not ask.
    let error = world.whoami(&provider).await.unwrap_err().auth();
    assert!(
        matches!(error, ClientAuthError::ScopesNotGranted { .. }),
        "{error:?}"
    );
    assert_eq!(token_requests(&world).len(), 3);
}

#[tokio::test]
async fn the_token_is_renewed_before_it_expires_without_a_401() {
    let world =
        World::with(TestAuthServer::builder().access_token_lifetime(Duration::from_secs(600)))
            .await;
    register_secret_client(&world, ClientAuthMethod::ClientSecretBasic);
    let clock = Arc::new(ManualClock::starting_now());
    let provider = provider(&world, PreRegisteredClient::confidential("bot", SECRET))
        .clock(clock.clone())
        .build()
        .unwrap();
    world.whoami(&provider).await.unwrap();
    let first = provider.token().await.unwrap().unwrap();
    clock.advance(Duration::from_secs(500));
    assert!(provider.token().await.unwrap().unwrap().same_token(&first));
    clock.advance(Duration::from_secs(45)); // within 60 s of expiry
    let renewed = provider.token().await.unwrap().unwrap();
    assert!(!renewed.same_token(&first));
    assert_eq!(token_requests(&world).len(), 2);
    let unauthorized = world
        .resource
        .hits(mcp_authkit_testkit::ResourceEvent::Unauthorized);
    world.whoami(&provider).await.unwrap();
    assert_eq!(
        world
            .resource
            .hits(mcp_authkit_testkit::ResourceEvent::Unauthorized),
        unauthorized,
        "no 401 needed"
    );

    // A failed renewal keeps serving the token while it is valid.
    clock.advance(Duration::from_secs(560));
    world
        .auth
        .fail_next(Endpoint::ClientCredentialsGrant, 1, Failure::Status(503));
    assert!(
        provider
            .token()
            .await
            .unwrap()
            .unwrap()
            .same_token(&renewed)
    );
}

#[tokio::test]
async fn concurrent_requests_on_two_replicas_share_one_token_request() {
    let world = World::start().await;
    register_secret_client(&world, ClientAuthMethod::ClientSecretBasic);
    // Slow, so every task arrives while the first request is in flight.
    world.auth.fail_next(
        Endpoint::ClientCredentialsGrant,
        1,
        Failure::Delay(Duration::from_millis(300)),
    );
    let replicas: Vec<_> = (0..2)
        .map(|_| {
            provider(&world, PreRegisteredClient::confidential("bot", SECRET))
                .build()
                .unwrap()
        })
        .collect();
    let challenge = AuthChallenge::new(Some(&format!(
        r#"Bearer resource_metadata="{}""#,
        world.resource.metadata_url()
    )));
    let mut tasks = Vec::new();
    for replica in &replicas {
        for _ in 0..8 {
            let replica = replica.clone();
            let challenge = challenge.clone();
            tasks.push(tokio::spawn(async move {
                replica.handle_unauthorized(&challenge).await.unwrap()
            }));
        }
    }
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(secret(&task.await.unwrap()));
    }
    assert!(tokens.iter().all(|t| t == &tokens[0]), "one token for all");
    assert_eq!(token_requests(&world).len(), 1);
}

#[tokio::test]
async fn a_server_without_client_credentials_is_refused_before_any_request() {
    let world = World::with(TestAuthServer::builder().settings(|s| {
        s.grant_types_supported = vec!["authorization_code".into()];
    }))
    .await;
    register_secret_client(&world, ClientAuthMethod::ClientSecretBasic);
    let provider = provider(&world, PreRegisteredClient::confidential("bot", SECRET))
        .build()
        .unwrap();
    let error = world.whoami(&provider).await.unwrap_err().auth();
    assert!(
        matches!(&error, ClientAuthError::GrantNotSupported { grant_type, .. } if grant_type == "client_credentials"),
        "{error:?}"
    );
    assert_eq!(world.auth.hits(Endpoint::Token), 0);
}

#[tokio::test]
async fn configuration_mistakes_are_refused_at_build() {
    let world = World::start().await;
    let public = provider(&world, PreRegisteredClient::public("bot")).build();
    assert!(matches!(public, Err(ClientAuthError::Config { .. })));
    let none = provider(
        &world,
        PreRegisteredClient::confidential("bot", SECRET).auth_method(TokenEndpointAuthMethod::None),
    )
    .build();
    assert!(matches!(none, Err(ClientAuthError::Config { .. })));
    let pem = SigningKey::generate_es256().private_key_pem().to_owned();
    // The right key for the wrong algorithm, and a broken key: neither
    // error quotes the key.
    for (algorithm, pem) in [("RS256", pem.as_str()), ("ES256", &pem[..pem.len() / 2])] {
        let error = AssertionKey::from_pem(algorithm, pem).unwrap_err();
        assert!(matches!(error, ClientAuthError::Config { .. }), "{error:?}");
        let body = pem.lines().nth(1).unwrap();
        assert!(!error.to_string().contains(body), "{error}");
    }
    assert!(
        !format!("{:?}", AssertionKey::from_pem("ES256", &pem).unwrap())
            .contains(pem.lines().nth(1).unwrap())
    );
}

#[tokio::test]
async fn two_clients_sharing_a_store_never_share_a_token() {
    let world = World::start().await;
    for id in ["alpha", "beta"] {
        world
            .auth
            .register_client(
                ClientRegistration::service(ClientAuthMethod::ClientSecretBasic)
                    .client_id(id)
                    .client_secret(SECRET),
            )
            .unwrap();
    }
    let alpha = provider(&world, PreRegisteredClient::confidential("alpha", SECRET))
        .build()
        .unwrap();
    let beta = provider(&world, PreRegisteredClient::confidential("beta", SECRET))
        .build()
        .unwrap();
    assert_eq!(world.whoami(&alpha).await.unwrap(), "alpha []");
    assert_eq!(world.whoami(&beta).await.unwrap(), "beta []");
    assert_ne!(alpha.token_key(), beta.token_key());
}
