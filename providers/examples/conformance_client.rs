//! The MCP client the official conformance suite
//! (`@modelcontextprotocol/conformance`) launches for its client
//! authorization scenarios: `conformance_client <server-url>`.
//!
//! It connects with rmcp through mcp-authkit's authenticated transport, lists
//! the tools and calls `test-tool`. The suite sets `MCP_CONFORMANCE_SCENARIO`
//! and, when a scenario brings credentials, `MCP_CONFORMANCE_CONTEXT` (JSON);
//! they pick the provider:
//!
//! | context | provider |
//! |---|---|
//! | `idp_id_token`, `idp_issuer`, `idp_token_endpoint`, `idp_client_id` (cross-app access) | [`CrossAppAccessProvider`], the ID token from the context |
//! | `private_key_pem`, `signing_algorithm` | [`ClientCredentialsProvider`] with `private_key_jwt` |
//! | `client_id`, `client_secret` in an `auth/client-credentials-*` scenario | [`ClientCredentialsProvider`] with the secret |
//! | `client_id` (and `client_secret`) otherwise | [`OAuthClientProvider`] with a pre-registered client |
//! | none | [`OAuthClientProvider`]: metadata document, else dynamic registration |
//!
//! Sign-in is headless (the suite's authorization servers redirect at
//! once). Run every scenario with `scripts/mcp-conformance.sh`.

use std::process::ExitCode;
use std::sync::Arc;

use mcp_authkit_core::SecretString;
use mcp_authkit_providers::client::transport::AuthorizedHttpClient;
use mcp_authkit_providers::client::{
    AssertionKey, AuthProvider, ClientAuthError, ClientCredentialsProvider, ClientMetadata,
    CrossAppAccessProvider, HeadlessRedirect, IdTokenSource, IdentityProvider, OAuthClientProvider,
    PreRegisteredClient, RedirectTarget,
};
use mcp_authkit_providers::http::OAuthHttpClient;
use mcp_authkit_store_memory::MemoryStore;
use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, ProtocolVersion,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::Value;

/// The Client ID Metadata Document URL the suite expects at servers that
/// accept such documents.
const CLIENT_METADATA_URL: &str = "https://conformance-test.local/client-metadata.json";
/// Never reached: the headless sign-in reads the code from the redirect.
const REDIRECT_URI: &str = "http://localhost:3000/callback";

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    let Some(server_url) = std::env::args().nth(1) else {
        eprintln!("usage: conformance_client <server-url>");
        return ExitCode::from(2);
    };
    let scenario = std::env::var("MCP_CONFORMANCE_SCENARIO").unwrap_or_default();
    match run(&server_url, &scenario).await {
        Ok(()) => {
            eprintln!("{scenario}: done");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{scenario}: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(server_url: &str, scenario: &str) -> Result<(), Error> {
    let context = Context::from_env()?;
    let http = OAuthHttpClient::new()?;
    let provider = provider(server_url, scenario, &context, &http)?;
    let transport = StreamableHttpClientTransport::with_client(
        AuthorizedHttpClient::with_shared_provider(reqwest::Client::new(), provider),
        StreamableHttpClientTransportConfig::with_uri(server_url),
    );
    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("mcp-authkit-conformance-client", env!("CARGO_PKG_VERSION")),
    )
    .with_protocol_version(ProtocolVersion::V_2025_11_25);
    let client = info.serve(transport).await?;
    let tools = client.list_all_tools().await?;
    eprintln!(
        "tools: {:?}",
        tools.iter().map(|t| &t.name).collect::<Vec<_>>()
    );
    client
        .call_tool(CallToolRequestParams::new("test-tool"))
        .await?;
    client.cancel().await?;
    Ok(())
}

/// The provider the scenario's context calls for.
fn provider(
    server_url: &str,
    scenario: &str,
    context: &Context,
    http: &OAuthHttpClient,
) -> Result<Arc<dyn AuthProvider>, Error> {
    if let Some(id_token) = context.text("idp_id_token") {
        let idp = IdentityProvider::new(
            context.required("idp_issuer")?,
            context.required("idp_token_endpoint")?,
            PreRegisteredClient::public(context.required("idp_client_id")?),
        );
        let provider = CrossAppAccessProvider::builder(
            server_url,
            context.client()?,
            idp,
            ContextIdToken(id_token.to_owned()),
        )
        .store(MemoryStore::new())
        .http_client(http.clone())
        .build()?;
        return Ok(Arc::new(provider));
    }
    if let Some(pem) = context.text("private_key_pem") {
        let algorithm = context.text("signing_algorithm").unwrap_or("ES256");
        let client = PreRegisteredClient::private_key_jwt(
            context.required("client_id")?,
            AssertionKey::from_pem(algorithm, pem)?,
        );
        let provider = ClientCredentialsProvider::builder(server_url, client)
            .store(MemoryStore::new())
            .http_client(http.clone())
            .build()?;
        return Ok(Arc::new(provider));
    }
    if scenario.starts_with("auth/client-credentials") {
        let provider = ClientCredentialsProvider::builder(server_url, context.client()?)
            .store(MemoryStore::new())
            .http_client(http.clone())
            .build()?;
        return Ok(Arc::new(provider));
    }
    let mut builder = OAuthClientProvider::builder(server_url)
        .store(MemoryStore::new())
        .http_client(http.clone())
        .client_metadata(ClientMetadata::new("mcp-authkit conformance client"))
        .client_metadata_document(CLIENT_METADATA_URL)
        .redirect(RedirectTarget::External(REDIRECT_URI.to_owned()))
        .interaction(HeadlessRedirect::new(http.reqwest().clone()));
    if context.text("client_id").is_some() {
        builder = builder.pre_registered(context.client()?);
    }
    Ok(Arc::new(builder.build()?))
}

/// `MCP_CONFORMANCE_CONTEXT`, when the scenario sets it.
struct Context(Value);

impl Context {
    fn from_env() -> Result<Context, Error> {
        match std::env::var("MCP_CONFORMANCE_CONTEXT") {
            Ok(json) => Ok(Context(serde_json::from_str(&json)?)),
            Err(_) => Ok(Context(Value::Null)),
        }
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }

    fn required(&self, name: &str) -> Result<&str, Error> {
        self.text(name)
            .ok_or_else(|| format!("MCP_CONFORMANCE_CONTEXT has no {name}").into())
    }

    /// The client the context names: with its secret when it has one.
    fn client(&self) -> Result<PreRegisteredClient, Error> {
        let client_id = self.required("client_id")?;
        Ok(match self.text("client_secret") {
            Some(secret) => PreRegisteredClient::confidential(client_id, secret),
            None => PreRegisteredClient::public(client_id),
        })
    }
}

/// The user's ID token, as the scenario hands it over (an application
/// would take it from its single sign-on).
struct ContextIdToken(String);

#[mcp_authkit_core::async_trait]
impl IdTokenSource for ContextIdToken {
    async fn id_token(&self) -> Result<SecretString, ClientAuthError> {
        Ok(SecretString::from(self.0.clone()))
    }
}
