//! MCP clients that authenticate without a browser, end to end on
//! loopback, with no credentials and no services: a test authorization
//! server plays the MCP server's, a second one the company's identity
//! provider, and a protected route plays the MCP server.
//!
//! 1. `client_credentials` with a client secret;
//! 2. `client_credentials` with a private key (`private_key_jwt`);
//! 3. cross-app access: the user's ID token, exchanged for an ID-JAG at the
//!    identity provider, traded for an access token.
//!
//! Run it with `cargo run -p mcp-authkit-providers --example machine_clients`.

use axum::Router;
use axum::extract::Extension;
use axum::routing::post;
use mcp_authkit_core::{ExposeSecret, SecretString};
use mcp_authkit_providers::client::{
    AssertionKey, AuthChallenge, AuthProvider, ClientAuthError, ClientCredentialsProvider,
    CrossAppAccessProvider, IdTokenSource, IdentityProvider, PreRegisteredClient,
};
use mcp_authkit_store_memory::MemoryStore;
use mcp_authkit_testkit::{
    ClientAuthMethod, ClientRegistration, ProtectedResource, SigningKey, TestAuthServer, TokenInfo,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    // The MCP server's authorization server, and an MCP server that answers
    // "hello <subject> [scopes]" to a valid token.
    let auth = TestAuthServer::start().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mcp_url = format!("http://{}/mcp", listener.local_addr()?);
    let resource = ProtectedResource::new(&auth, &mcp_url)?;
    let app = Router::new().route(
        "/mcp",
        post(|Extension(token): Extension<TokenInfo>| async move {
            format!("hello {} [{}]", token.subject, token.scopes.join(" "))
        }),
    );
    let app = resource.protect(app);
    tokio::spawn(async move { axum::serve(listener, app).await });

    println!("1. client_credentials with a client secret");
    auth.register_client(
        ClientRegistration::service(ClientAuthMethod::ClientSecretBasic)
            .client_id("nightly-report")
            .client_secret("report-s3cret"),
    )?;
    let with_secret = ClientCredentialsProvider::builder(
        &mcp_url,
        PreRegisteredClient::confidential("nightly-report", "report-s3cret"),
    )
    .store(MemoryStore::new())
    .scopes(["notes:read"])
    .build()?;
    println!("   {}", call(&mcp_url, &with_secret).await?);

    println!("2. client_credentials with a private key (private_key_jwt)");
    // In production the key is a PEM file, and the authorization server
    // holds its public half.
    let key = SigningKey::generate_es256();
    auth.register_client(
        ClientRegistration::private_key_jwt(key.public_jwk()).client_id("deploy-bot"),
    )?;
    let with_key = ClientCredentialsProvider::builder(
        &mcp_url,
        PreRegisteredClient::private_key_jwt(
            "deploy-bot",
            AssertionKey::from_pem("ES256", key.private_key_pem())?,
        ),
    )
    .store(MemoryStore::new())
    .build()?;
    println!("   {}", call(&mcp_url, &with_key).await?);

    println!("3. cross-app access through the company's identity provider");
    let idp = TestAuthServer::start().await?;
    auth.trust_identity_provider(&idp);
    auth.register_client(
        ClientRegistration::service(ClientAuthMethod::ClientSecretBasic)
            .client_id("notes-agent")
            .client_secret("agent-s3cret"),
    )?;
    idp.register_client(
        ClientRegistration::service(ClientAuthMethod::None)
            .client_id("notes-agent-at-acme")
            .id_jag_client_id("notes-agent"),
    )?;
    // What the application's single sign-on would hold for Alice.
    let sign_on = SingleSignOn(idp.issue_id_token("alice", "notes-agent-at-acme"));
    let as_alice = CrossAppAccessProvider::builder(
        &mcp_url,
        PreRegisteredClient::confidential("notes-agent", "agent-s3cret"),
        IdentityProvider::new(
            idp.issuer(),
            idp.token_endpoint().as_str(),
            PreRegisteredClient::public("notes-agent-at-acme"),
        ),
        sign_on,
    )
    .store(MemoryStore::new())
    .namespace("mcp-cross-app/alice")
    .build()?;
    println!("   {}", call(&mcp_url, &as_alice).await?);
    Ok(())
}

/// The ID token of the user the application signed in.
struct SingleSignOn(String);

#[mcp_authkit_core::async_trait]
impl IdTokenSource for SingleSignOn {
    async fn id_token(&self) -> Result<SecretString, ClientAuthError> {
        Ok(SecretString::from(self.0.clone()))
    }
}

/// One request the way an MCP transport sends it: the provider's token,
/// and after a `401` the token the provider gets for the challenge.
async fn call(url: &str, provider: &impl AuthProvider) -> Result<String, Error> {
    let http = reqwest::Client::new();
    let mut token = provider.token().await?;
    for _ in 0..2 {
        let mut request = http.post(url);
        if let Some(token) = &token {
            request = request.bearer_auth(token.secret().expose_secret());
        }
        let response = request.send().await?;
        if response.status() != 401 {
            return Ok(response.text().await?);
        }
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let challenge = AuthChallenge::new(challenge.as_deref()).with_rejected_token(token.take());
        token = Some(provider.handle_unauthorized(&challenge).await?);
    }
    Err("the MCP server kept refusing the token".into())
}
