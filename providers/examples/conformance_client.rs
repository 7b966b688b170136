//! The MCP client the official conformance suite
//! (`@modelcontextprotocol/conformance`) launches for its client
//! authorization scenarios: `conformance_client <server-url>`.
//!
//! It connects with rmcp through mcp-authkit's authenticated transport and
//! `OAuthClientProvider`, lists the tools and calls `test-tool`. Sign-in is
//! headless (the suite's authorization server redirects at once). The
//! suite sets `MCP_CONFORMANCE_SCENARIO`, and `MCP_CONFORMANCE_CONTEXT`
//! (JSON) when a scenario brings credentials, such as a pre-registered
//! client.
//!
//! Run the whole suite with `scripts/mcp-conformance.sh`.

use std::process::ExitCode;

use mcp_authkit_providers::client::transport::AuthorizedHttpClient;
use mcp_authkit_providers::client::{
    ClientMetadata, HeadlessRedirect, OAuthClientProvider, PreRegisteredClient, RedirectTarget,
};
use mcp_authkit_providers::http::OAuthHttpClient;
use mcp_authkit_store_memory::MemoryStore;
use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, ProtocolVersion,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

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
    match run(&server_url).await {
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

async fn run(server_url: &str) -> Result<(), Error> {
    let http = OAuthHttpClient::new()?;
    let mut provider = OAuthClientProvider::builder(server_url)
        .store(MemoryStore::new())
        .http_client(http.clone())
        .client_metadata(ClientMetadata::new("mcp-authkit conformance client"))
        .client_metadata_document(CLIENT_METADATA_URL)
        .redirect(RedirectTarget::External(REDIRECT_URI.to_owned()))
        .interaction(HeadlessRedirect::new(http.reqwest().clone()));
    if let Some(client) = pre_registered_client()? {
        provider = provider.pre_registered(client);
    }
    let provider = provider.build()?;

    let transport = StreamableHttpClientTransport::with_client(
        AuthorizedHttpClient::new(reqwest::Client::new(), provider),
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

/// The client of `MCP_CONFORMANCE_CONTEXT`, when the scenario brings one.
fn pre_registered_client() -> Result<Option<PreRegisteredClient>, Error> {
    let Ok(context) = std::env::var("MCP_CONFORMANCE_CONTEXT") else {
        return Ok(None);
    };
    let context: serde_json::Value = serde_json::from_str(&context)?;
    let Some(client_id) = context.get("client_id").and_then(|v| v.as_str()) else {
        return Ok(None);
    };
    Ok(Some(
        match context.get("client_secret").and_then(|v| v.as_str()) {
            Some(secret) => PreRegisteredClient::confidential(client_id, secret),
            None => PreRegisteredClient::public(client_id),
        },
    ))
}
