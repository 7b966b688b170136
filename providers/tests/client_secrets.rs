//! Secrets (tokens, refresh tokens, PKCE verifiers, client secrets) never
//! appear in Debug output, errors or logs of the client side. Its own
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
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("registered a client") && logged.contains("registering again"),
        "the logs were captured"
    );
    let printed = [
        format!("{provider:?}"),
        format!("{token:?}"),
        format!("{stored:?}"),
        format!("{error:?}"),
        error.to_string(),
        logged,
    ];
    for text in &printed {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a secret leaked into {text}"
            );
        }
    }
}
