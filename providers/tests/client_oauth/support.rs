//! A world for client-side tests, all on loopback: the test authorization
//! server, an rmcp streamable-HTTP MCP server behind a `ProtectedResource`
//! (plus a plain `/whoami` route behind the same protection), and a memory
//! store that outlives provider instances, as a persistent store would
//! outlive a process.

// Shared by several test binaries, each using part of it.
#![allow(dead_code)]

use std::sync::Arc;

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use mcp_authkit_core::ExposeSecret;
use mcp_authkit_providers::client::{
    AuthChallenge, AuthProvider, BearerToken, ClientAuthError, HeadlessRedirect,
    OAuthClientProvider, OAuthClientProviderBuilder,
};
use mcp_authkit_providers::http::OAuthHttpClient;
use mcp_authkit_store_memory::MemoryStore;
use mcp_authkit_testkit::{
    AuthServerHandle, ProtectedResource, TestAuthServer, TestAuthServerBuilder, TokenInfo,
};
use rmcp::handler::server::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData, JsonObject,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};

/// The MCP server under test: one tool, `whoami`, that answers with the
/// subject and scopes of the token the request carried.
#[derive(Clone)]
pub struct Notes;

impl ServerHandler for Notes {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut schema = JsonObject::new();
        schema.insert("type".into(), "object".into());
        Ok(ListToolsResult::with_all_items(vec![Tool::new(
            "whoami",
            "Who the token belongs to",
            Arc::new(schema),
        )]))
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let info = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<TokenInfo>())
            .map(describe)
            .unwrap_or_else(|| "anonymous".to_owned());
        Ok(CallToolResult::success(vec![ContentBlock::text(info)]).into())
    }
}

fn describe(info: &TokenInfo) -> String {
    format!("{} [{}]", info.subject, info.scopes.join(" "))
}

/// Everything a client test talks to.
pub struct World {
    pub auth: TestAuthServer,
    pub resource: ProtectedResource,
    /// The MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub mcp_url: String,
    /// A plain protected route answering `subject [scopes]`.
    pub whoami_url: String,
    /// Survives provider instances, like a database survives a restart.
    pub store: MemoryStore,
    pub http: OAuthHttpClient,
}

impl World {
    pub async fn start() -> World {
        World::with(TestAuthServer::builder()).await
    }

    pub async fn with(builder: TestAuthServerBuilder) -> World {
        World::with_routes(builder, |_, _| Router::new()).await
    }

    /// A world whose MCP server also serves `routes(base URL, authorization
    /// server)` on its origin, unprotected (a 2025-03-26 server's own
    /// authorization endpoints, ...).
    pub async fn with_routes(
        builder: TestAuthServerBuilder,
        routes: impl FnOnce(&str, &AuthServerHandle) -> Router,
    ) -> World {
        let auth = builder.start().await.expect("test authorization server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mcp_url = format!("{base}/mcp");
        let resource = ProtectedResource::new(&auth, &mcp_url).unwrap();
        let mcp = StreamableHttpService::new(
            || Ok(Notes),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default(),
        );
        let app = Router::new().nest_service("/mcp", mcp).route(
            "/whoami",
            get(|Extension(info): Extension<TokenInfo>| async move { describe(&info) }),
        );
        let app = resource.protect(app).merge(routes(&base, &auth.handle()));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        World {
            auth,
            resource,
            mcp_url,
            whoami_url: format!("{base}/whoami"),
            store: MemoryStore::new(),
            http: OAuthHttpClient::new().unwrap(),
        }
    }

    /// A provider for the MCP server over the world's store, signing in
    /// headlessly (the test server consents automatically).
    pub fn provider(&self) -> OAuthClientProviderBuilder {
        OAuthClientProvider::builder(&self.mcp_url)
            .store(self.store.clone())
            .http_client(self.http.clone())
            .interaction(HeadlessRedirect::new(self.http.reqwest().clone()))
    }

    /// Calls the protected `/whoami` route the way a transport would: the
    /// current token, then one retry after a 401 and up to two after 403s.
    pub async fn whoami(&self, provider: &impl AuthProvider) -> Result<String, Failure> {
        let mut token = provider.token().await?;
        let mut retried = false;
        let mut step_ups = 0;
        loop {
            let mut request = self.http.reqwest().get(&self.whoami_url);
            if let Some(token) = &token {
                request = request.bearer_auth(token.secret().expose_secret());
            }
            let response = request.send().await.expect("the MCP server answers");
            let status = response.status().as_u16();
            let challenge = response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            let challenge = AuthChallenge::new(challenge.as_deref());
            match status {
                200 => return Ok(response.text().await.unwrap()),
                401 if !retried => {
                    retried = true;
                    let challenge = challenge.with_rejected_token(token.take());
                    token = Some(provider.handle_unauthorized(&challenge).await?);
                }
                403 if step_ups < 2 => {
                    step_ups += 1;
                    let challenge = challenge.with_rejected_token(token.take());
                    token = Some(provider.handle_forbidden(&challenge).await?);
                }
                status => return Err(Failure::Status(status)),
            }
        }
    }
}

/// Why a `whoami` call failed.
#[derive(Debug)]
pub enum Failure {
    Auth(ClientAuthError),
    Status(u16),
}

impl Failure {
    pub fn auth(self) -> ClientAuthError {
        match self {
            Failure::Auth(error) => error,
            Failure::Status(status) => panic!("expected an auth error, got HTTP {status}"),
        }
    }
}

impl From<ClientAuthError> for Failure {
    fn from(error: ClientAuthError) -> Self {
        Failure::Auth(error)
    }
}

/// An rmcp client connected to the world's MCP server through
/// mcp-authkit's authenticated transport.
#[cfg(feature = "rmcp")]
pub type McpClient = rmcp::service::RunningService<rmcp::service::RoleClient, ()>;

#[cfg(feature = "rmcp")]
impl World {
    /// Connects an rmcp client authenticated by `provider` (signing in on
    /// the server's first 401).
    pub async fn connect(
        &self,
        provider: impl AuthProvider,
    ) -> Result<McpClient, rmcp::service::ClientInitializeError> {
        use rmcp::ServiceExt;
        let transport = mcp_authkit_providers::client::transport::streamable_http_transport(
            self.mcp_url.as_str(),
            provider,
        );
        ().serve(transport).await
    }
}

/// Calls the MCP server's `whoami` tool: `subject [scopes]`.
#[cfg(feature = "rmcp")]
pub async fn call_whoami(client: &McpClient) -> Result<String, rmcp::ServiceError> {
    let result = client
        .call_tool(CallToolRequestParams::new("whoami"))
        .await?;
    Ok(result.content[0].as_text().expect("text").text.clone())
}

/// The secret of a bearer token, for assertions.
pub fn secret(token: &BearerToken) -> String {
    token.secret().expose_secret().to_owned()
}
