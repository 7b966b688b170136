//! `CrossAppAccessProvider` against two test servers, one the enterprise
//! identity provider and one the MCP server's authorization server: token
//! exchange for an ID-JAG, the jwt-bearer grant, and their refusals.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mcp_authkit_core::SecretString;
use mcp_authkit_providers::client::{
    ClientAuthError, CrossAppAccessProvider, ID_JAG_TOKEN_TYPE, ID_TOKEN_TYPE, IdTokenSource,
    IdentityProvider, JWT_BEARER_GRANT, PreRegisteredClient, TOKEN_EXCHANGE_GRANT,
};
use mcp_authkit_testkit::{ClientAuthMethod, ClientRegistration, Endpoint, TestAuthServer};

use crate::client_credentials::claims;
use crate::support::World;

/// The ID token the application's single sign-on holds, counting how
/// often it is asked for.
struct SingleSignOn {
    id_token: String,
    asked: Arc<AtomicUsize>,
}

#[mcp_authkit_core::async_trait]
impl IdTokenSource for SingleSignOn {
    async fn id_token(&self) -> Result<SecretString, ClientAuthError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(SecretString::from(self.id_token.clone()))
    }
}

struct Enterprise {
    world: World,
    idp: TestAuthServer,
    asked: Arc<AtomicUsize>,
}

/// The MCP world, an identity provider its authorization server trusts,
/// and this application registered at both.
async fn enterprise() -> Enterprise {
    let world = World::start().await;
    let idp = TestAuthServer::start().await.unwrap();
    world.auth.trust_identity_provider(&idp);
    world
        .auth
        .register_client(
            ClientRegistration::service(ClientAuthMethod::ClientSecretBasic)
                .client_id("notes-agent")
                .client_secret("agent-s3cret"),
        )
        .unwrap();
    idp.register_client(
        ClientRegistration::service(ClientAuthMethod::None)
            .client_id("notes-agent-at-acme")
            .id_jag_client_id("notes-agent"),
    )
    .unwrap();
    Enterprise {
        world,
        idp,
        asked: Arc::new(AtomicUsize::new(0)),
    }
}

impl Enterprise {
    fn provider(&self, id_token: String) -> CrossAppAccessProvider {
        CrossAppAccessProvider::builder(
            &self.world.mcp_url,
            PreRegisteredClient::confidential("notes-agent", "agent-s3cret"),
            IdentityProvider::new(
                self.idp.issuer(),
                self.idp.token_endpoint().as_str(),
                PreRegisteredClient::public("notes-agent-at-acme"),
            ),
            SingleSignOn {
                id_token,
                asked: Arc::clone(&self.asked),
            },
        )
        .store(self.world.store.clone())
        .http_client(self.world.http.clone())
        .build()
        .unwrap()
    }

    fn alices_id_token(&self) -> String {
        self.idp.issue_id_token("alice", "notes-agent-at-acme")
    }
}

#[tokio::test]
async fn the_users_id_token_becomes_an_access_token_through_an_id_jag() {
    let enterprise = enterprise().await;
    let world = &enterprise.world;
    world
        .resource
        .update_settings(|s| s.required_scopes = vec!["notes:read".into()]);
    let id_token = enterprise.alices_id_token();
    let provider = enterprise.provider(id_token.clone());
    assert_eq!(world.whoami(&provider).await.unwrap(), "alice [notes:read]");

    let exchange = enterprise
        .idp
        .last_request(Endpoint::TokenExchangeGrant)
        .unwrap();
    assert_eq!(exchange.param("grant_type"), Some(TOKEN_EXCHANGE_GRANT));
    assert_eq!(
        exchange.param("requested_token_type"),
        Some(ID_JAG_TOKEN_TYPE)
    );
    assert_eq!(exchange.param("subject_token_type"), Some(ID_TOKEN_TYPE));
    assert_eq!(exchange.param("subject_token"), Some(id_token.as_str()));
    assert_eq!(exchange.param("audience"), Some(world.auth.issuer()));
    assert_eq!(exchange.param("resource"), Some(world.mcp_url.as_str()));
    assert_eq!(exchange.param("scope"), Some("notes:read"));

    let bearer = world.auth.last_request(Endpoint::JwtBearerGrant).unwrap();
    assert_eq!(bearer.param("grant_type"), Some(JWT_BEARER_GRANT));
    let jag = claims(bearer.param("assertion").unwrap());
    assert_eq!(jag["sub"], "alice");
    assert_eq!(jag["client_id"], "notes-agent");
    assert_eq!(bearer.param("resource"), Some(world.mcp_url.as_str()));
    assert!(
        bearer
            .header("authorization")
            .unwrap()
            .starts_with("Basic ")
    );
    // The ID token goes to the identity provider only.
    assert!(
        world
            .auth
            .all_requests()
            .iter()
            .all(|r| r.param("subject_token").is_none())
    );
    // Cached: no second exchange.
    world.whoami(&provider).await.unwrap();
    assert_eq!(enterprise.idp.hits(Endpoint::TokenExchangeGrant), 1);
    assert_eq!(enterprise.asked.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_expired_id_jag_is_an_error_not_a_loop() {
    let enterprise = enterprise().await;
    enterprise
        .idp
        .update_settings(|s| s.id_jag_lifetime = Duration::ZERO);
    let provider = enterprise.provider(enterprise.alices_id_token());
    let error = enterprise.world.whoami(&provider).await.unwrap_err().auth();
    let oauth = error.oauth_error().expect("an OAuth error");
    assert_eq!(oauth.code(), Some("invalid_grant"));
    assert!(error.to_string().contains("expired"), "{error}");
    assert!(!error.is_retryable());
    assert_eq!(enterprise.world.auth.hits(Endpoint::JwtBearerGrant), 1);
}

#[tokio::test]
async fn an_id_token_the_identity_provider_refuses_is_reported_from_there() {
    let enterprise = enterprise().await;
    // Issued to another client at the identity provider.
    let theirs = enterprise.idp.issue_id_token("alice", "someone-else");
    let provider = enterprise.provider(theirs.clone());
    let error = enterprise.world.whoami(&provider).await.unwrap_err().auth();
    assert!(
        matches!(&error, ClientAuthError::IdentityProvider(e) if e.code() == Some("invalid_grant")),
        "{error:?}"
    );
    assert!(error.to_string().contains("identity provider"), "{error}");
    assert!(!error.to_string().contains(&theirs), "no token in errors");
    assert_eq!(enterprise.world.auth.hits(Endpoint::JwtBearerGrant), 0);
}

#[tokio::test]
async fn an_authorization_server_that_does_not_trust_the_identity_provider_refuses() {
    let enterprise = enterprise().await;
    // ID-JAGs from an identity provider the server does not know.
    let stranger = TestAuthServer::start().await.unwrap();
    stranger
        .register_client(
            ClientRegistration::service(ClientAuthMethod::None)
                .client_id("notes-agent-at-acme")
                .id_jag_client_id("notes-agent"),
        )
        .unwrap();
    let provider = CrossAppAccessProvider::builder(
        &enterprise.world.mcp_url,
        PreRegisteredClient::confidential("notes-agent", "agent-s3cret"),
        IdentityProvider::new(
            stranger.issuer(),
            stranger.token_endpoint().as_str(),
            PreRegisteredClient::public("notes-agent-at-acme"),
        ),
        SingleSignOn {
            id_token: stranger.issue_id_token("alice", "notes-agent-at-acme"),
            asked: Arc::new(AtomicUsize::new(0)),
        },
    )
    .store(enterprise.world.store.clone())
    .build()
    .unwrap();
    let error = enterprise.world.whoami(&provider).await.unwrap_err().auth();
    assert!(error.to_string().contains("not trusted"), "{error}");
}

#[tokio::test]
async fn a_server_without_the_jwt_bearer_grant_is_refused_before_the_id_token_leaves() {
    let enterprise = enterprise().await;
    enterprise
        .world
        .auth
        .update_settings(|s| s.grant_types_supported.retain(|g| g != JWT_BEARER_GRANT));
    let provider = enterprise.provider(enterprise.alices_id_token());
    let error = enterprise.world.whoami(&provider).await.unwrap_err().auth();
    assert!(
        matches!(&error, ClientAuthError::GrantNotSupported { grant_type, .. } if grant_type == JWT_BEARER_GRANT),
        "{error:?}"
    );
    assert_eq!(enterprise.asked.load(Ordering::SeqCst), 0);
    assert_eq!(enterprise.idp.hits(Endpoint::Token), 0);
}

#[tokio::test]
async fn a_plain_http_identity_provider_elsewhere_is_refused_at_build() {
    let enterprise = enterprise().await;
    let error = CrossAppAccessProvider::builder(
        &enterprise.world.mcp_url,
        PreRegisteredClient::confidential("notes-agent", "agent-s3cret"),
        IdentityProvider::new(
            "http://login.acme.example",
            "http://login.acme.example/token",
            PreRegisteredClient::public("x"),
        ),
        SingleSignOn {
            id_token: String::new(),
            asked: Arc::new(AtomicUsize::new(0)),
        },
    )
    .store(enterprise.world.store.clone())
    .build()
    .unwrap_err();
    assert!(
        matches!(error, ClientAuthError::InsecureUrl { .. }),
        "{error:?}"
    );
}
