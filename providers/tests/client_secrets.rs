//! Secrets (tokens, refresh tokens, PKCE verifiers, client secrets, client
//! assertions and their keys, ID tokens, ID-JAGs) never appear in Debug
//! output, errors or logs of the client side. Its own
//! binary, so that a global trace-level subscriber sees every log line.
//!
//! Run: `cargo test -p mcp-authkit-providers --all-features --test client_secrets`

#[path = "client_oauth/support.rs"]
mod support;

use std::sync::Arc;

use mcp_authkit_core::{ExposeSecret, TokenStore};
use mcp_authkit_providers::client::AuthProvider;
use mcp_authkit_testkit::{ClientAuthMethod, ConsentMode, Endpoint, IssParameter, TestAuthServer};

use support::{World, secret};

/// Collects every log line, at every level.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_never_show_in_debug_output_errors_or_logs() {
    // The only test of this binary: its subscriber sees every log line of
    // every task and server.
    let logs = Logs::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();
    // No `none` advertised: the dynamic registration gets a client secret.
    let world = World::with(TestAuthServer::builder().settings(|s| {
        s.iss_parameter = IssParameter::Correct;
        s.token_endpoint_auth_methods = vec![
            ClientAuthMethod::ClientSecretBasic,
            ClientAuthMethod::ClientSecretPost,
        ];
    }))
    .await;
    let client_secret = |world: &World| {
        let authorize = world.auth.last_request(Endpoint::Authorize).unwrap();
        let client = world.auth.client(authorize.param("client_id").unwrap());
        client
            .unwrap()
            .client_secret
            .expect("a confidential client")
    };
    let provider = world.provider().build().unwrap();
    world.whoami(&provider).await.unwrap();
    let first_secret = client_secret(&world);
    // The server forgets the client: the registration heals, with logs.
    world.auth.restart();
    world.whoami(&provider).await.unwrap();
    let token = provider.token().await.unwrap().unwrap();
    let key = provider.token_key().unwrap();
    let stored = TokenStore::get(&world.store, &key).await.unwrap().unwrap();
    let refresh = stored.record.refresh_token.clone().unwrap();
    let secrets = [
        secret(&token),
        refresh.expose_secret().to_owned(),
        world
            .auth
            .last_request(Endpoint::AuthorizationCodeGrant)
            .unwrap()
            .param("code_verifier")
            .unwrap()
            .to_owned(),
        first_secret,
        client_secret(&world),
    ];
    // An error that passed through the token endpoint.
    world.auth.revoke_subject("test-user");
    world
        .auth
        .update_settings(|s| s.consent = ConsentMode::Deny);
    let error = world.whoami(&provider).await.unwrap_err().auth();
    let (machine_secrets, machine_printed) = machine_clients(&world).await;
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("registered a client") && logged.contains("registering again"),
        "the logs were captured"
    );
    assert!(logged.contains("obtained a token"), "the machine logs too");
    let mut printed = vec![
        format!("{provider:?}"),
        format!("{token:?}"),
        format!("{stored:?}"),
        format!("{error:?}"),
        error.to_string(),
        logged,
    ];
    printed.extend(machine_printed);
    for text in &printed {
        for secret in secrets.iter().chain(&machine_secrets) {
            assert!(
                !text.contains(secret.as_str()),
                "a secret leaked into {text}"
            );
        }
    }
}

/// The clients without a browser, with their errors: their secrets, and
/// what they printed.
async fn machine_clients(world: &World) -> (Vec<String>, Vec<String>) {
    use mcp_authkit_core::SecretString;
    use mcp_authkit_providers::client::{
        AssertionKey, ClientAuthError, ClientCredentialsProvider, CrossAppAccessProvider,
        IdTokenSource, IdentityProvider, PreRegisteredClient,
    };
    use mcp_authkit_testkit::{ClientRegistration, SigningKey};

    struct Fixed(String);
    #[mcp_authkit_core::async_trait]
    impl IdTokenSource for Fixed {
        async fn id_token(&self) -> Result<SecretString, ClientAuthError> {
            Ok(SecretString::from(self.0.clone()))
        }
    }

    world
        .auth
        .register_client(
            ClientRegistration::service(ClientAuthMethod::ClientSecretBasic)
                .client_id("bot")
                .client_secret("bot-client-s3cret"),
        )
        .unwrap();
    let with_secret = ClientCredentialsProvider::builder(
        &world.mcp_url,
        PreRegisteredClient::confidential("bot", "bot-client-s3cret"),
    )
    .store(world.store.clone())
    .build()
    .unwrap();
    world.whoami(&with_secret).await.unwrap();
    let secret_token = with_secret.token().await.unwrap().unwrap();

    let key = SigningKey::generate_es256();
    world
        .auth
        .register_client(ClientRegistration::private_key_jwt(key.public_jwk()).client_id("keyed"))
        .unwrap();
    let assertion_key = AssertionKey::from_pem("ES256", key.private_key_pem()).unwrap();
    let with_key = ClientCredentialsProvider::builder(
        &world.mcp_url,
        PreRegisteredClient::private_key_jwt("keyed", assertion_key.clone()),
    )
    .store(world.store.clone())
    .build()
    .unwrap();
    world.whoami(&with_key).await.unwrap();
    let assertion = world
        .auth
        .last_request(Endpoint::ClientCredentialsGrant)
        .unwrap()
        .param("client_assertion")
        .unwrap()
        .to_owned();

    let idp = TestAuthServer::start().await.unwrap();
    world.auth.trust_identity_provider(&idp);
    idp.register_client(
        ClientRegistration::service(ClientAuthMethod::None)
            .client_id("idp-client")
            .id_jag_client_id("bot"),
    )
    .unwrap();
    let id_token = idp.issue_id_token("alice", "idp-client");
    let cross_app = |id_token: String, user: &str| {
        CrossAppAccessProvider::builder(
            &world.mcp_url,
            PreRegisteredClient::confidential("bot", "bot-client-s3cret"),
            IdentityProvider::new(
                idp.issuer(),
                idp.token_endpoint().as_str(),
                PreRegisteredClient::public("idp-client"),
            ),
            Fixed(id_token),
        )
        .store(world.store.clone())
        .namespace(format!("secrets/{user}"))
        .build()
        .unwrap()
    };
    let as_alice = cross_app(id_token.clone(), "alice");
    world.whoami(&as_alice).await.unwrap();
    let jag = world
        .auth
        .last_request(Endpoint::JwtBearerGrant)
        .unwrap()
        .param("assertion")
        .unwrap()
        .to_owned();
    // Refused: an ID token for another client, at the identity provider.
    let refused = cross_app(idp.issue_id_token("carol", "someone-else"), "carol");
    let refused_error = world.whoami(&refused).await.unwrap_err().auth();
    // And an ID-JAG the authorization server refuses.
    idp.update_settings(|s| s.id_jag_lifetime = std::time::Duration::ZERO);
    let expired = cross_app(idp.issue_id_token("bob", "idp-client"), "bob");
    let expired_error = world.whoami(&expired).await.unwrap_err().auth();

    let secrets = vec![
        "bot-client-s3cret".to_owned(),
        secret(&secret_token),
        key.private_key_pem().lines().nth(1).unwrap().to_owned(),
        assertion,
        id_token,
        jag,
    ];
    let printed = vec![
        format!("{with_secret:?} {with_key:?} {as_alice:?} {assertion_key:?}"),
        format!("{secret_token:?}"),
        format!("{refused_error:?} {refused_error}"),
        format!("{expired_error:?} {expired_error}"),
    ];
    (secrets, printed)
}
