//! The harness of the server-side tests: a real rmcp server over streamable
//! HTTP with a GitHub-like tool gated by an `OAuthProvider`, the testkit's
//! loopback authorization server as "GitHub", and a real rmcp client whose
//! elicitation handler follows URLs with the testkit's `Browser`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mcp_authkit_core::{
    ExposeSecret, ManualClock, OAuthClient, OAuthError, OAuthErrorKind, PendingFlow, PendingStore,
    SecretString, TokenResponse, TokenStore,
};
use mcp_authkit_providers::http::OAuthHttpClient;
use mcp_authkit_providers::server::{
    BrowserIdentity, ElicitationStyle, OAuthProvider, TokenError, gate_tools,
    subject_from_extension,
};
use mcp_authkit_providers::standard::StandardOAuthClient;
use mcp_authkit_store_memory::MemoryStore;
use mcp_authkit_testkit::{Browser, ClientRegistration, TestAuthServer};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock,
    CustomNotification, ElicitRequestParams, ElicitResult, ElicitationAction,
    ElicitationCapability, ErrorData, FormElicitationCapability, Implementation, ProtocolVersion,
    ServerCapabilities, ServerConfig, UrlElicitationCapability,
};
use rmcp::service::{
    NotificationContext, RequestContext, RoleClient, RoleServer, RunningService, ServiceError,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, ServerHandler, ServiceExt};
use rmcp::{tool, tool_handler, tool_router};
use tokio::sync::Notify;
use url::Url;

/// A plain-HTTP reqwest client without TLS roots, shared by every test of
/// the binary (building one with roots costs tens of milliseconds).
pub fn http() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .tls_certs_only(Vec::<reqwest::Certificate>::new())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("plain HTTP client")
        })
        .clone()
}

/// What the server's own auth middleware puts into request extensions.
#[derive(Clone, Debug)]
pub struct Claims {
    pub sub: String,
}

/// The MCP server's "auth middleware": `Authorization: Bearer user-NAME`
/// signs in as NAME; no header means no user.
async fn authenticate(mut request: Request, next: Next) -> Response {
    let user = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer user-"))
        .map(str::to_owned);
    if let Some(sub) = user {
        request.extensions_mut().insert(Claims { sub });
    }
    next.run(request).await
}

/// The application's browser session: cookie `app_user=NAME`.
fn browser_user(parts: &axum::http::request::Parts) -> BrowserIdentity {
    parts
        .headers
        .get(axum::http::header::COOKIE)
        .and_then(|value| value.to_str().ok())
        .and_then(|cookies| {
            cookies
                .split(';')
                .find_map(|cookie| cookie.trim().strip_prefix("app_user="))
        })
        .map(|user| BrowserIdentity::SignedIn(user.to_owned()))
        .unwrap_or(BrowserIdentity::SignedOut)
}

/// The MCP server under test: one tool that calls the third party's API.
#[derive(Clone)]
pub struct GatedServer {
    github: OAuthProvider,
    userinfo: Url,
    api_calls: Arc<AtomicUsize>,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl GatedServer {
    /// Calls the third-party API; on 401 it invalidates the token and asks
    /// again once.
    #[tool(description = "Who am I at GitHub")]
    async fn whoami(&self, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        let token = self.github.require_token(&ctx).await?;
        let mut response = self.call_api(token.secret().expose_secret()).await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            self.github
                .invalidate(&token)
                .await
                .map_err(TokenError::from)?;
            let token = self.github.require_token(&ctx).await?;
            response = self.call_api(token.secret().expose_secret()).await?;
        }
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "API answered {status}"
            ))]));
        }
        let sub = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["sub"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "github user: {sub}"
        ))]))
    }

    /// Needs no token: shows that ungated tools are untouched.
    #[tool(description = "Ping")]
    async fn ping(&self) -> Result<CallToolResult, ErrorData> {
        Ok(CallToolResult::success(vec![ContentBlock::text("pong")]))
    }
}

impl GatedServer {
    async fn call_api(&self, token: &str) -> Result<reqwest::Response, ErrorData> {
        self.api_calls.fetch_add(1, Ordering::SeqCst);
        http()
            .get(self.userinfo.clone())
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| ErrorData::internal_error(format!("API call failed: {e}"), None))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for GatedServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// How to build the harness.
#[derive(Clone)]
pub struct Options {
    pub style: ElicitationStyle,
    pub token_timeout: Duration,
    pub trust_link_holder: bool,
    pub tokens: Option<Arc<dyn TokenStore>>,
    pub pending: Option<Arc<dyn PendingStore>>,
    /// The public base URL of the provider's routes, when they are served
    /// by another process (replicas); default: this server.
    pub public_base: Option<String>,
    /// Bind this address instead of a random port.
    pub bind: Option<std::net::SocketAddr>,
    /// Use the hand-written [`CustomFlow`] instead of the standard client.
    pub custom_flow: bool,
    /// The flows' time to live; default the provider's.
    pub flow_ttl: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            style: ElicitationStyle::Wait,
            token_timeout: Duration::from_secs(20),
            trust_link_holder: false,
            tokens: None,
            pending: None,
            public_base: None,
            bind: None,
            custom_flow: false,
            flow_ttl: None,
        }
    }
}

/// Where the OAuth client of the provider points.
#[derive(Clone, Debug)]
pub struct AuthServerInfo {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub userinfo_endpoint: String,
    pub client_id: String,
    pub client_secret: String,
}

impl AuthServerInfo {
    pub fn register(auth: &TestAuthServer, redirect_uri: &str) -> Self {
        let registered = auth
            .register_client(ClientRegistration::confidential(redirect_uri))
            .expect("register the provider at the test authorization server");
        AuthServerInfo {
            issuer: auth.issuer().to_owned(),
            authorization_endpoint: auth.authorization_endpoint().to_string(),
            token_endpoint: auth.token_endpoint().to_string(),
            userinfo_endpoint: auth.userinfo_endpoint().to_string(),
            client_id: registered.client_id,
            client_secret: registered.client_secret.expect("confidential client"),
        }
    }
}

/// A custom flow, as an application would write for a provider the
/// standard client does not fit: its own authorize URL and code exchange,
/// and no refresh.
pub struct CustomFlow {
    info: AuthServerInfo,
}

#[mcp_authkit_core::async_trait]
impl OAuthClient for CustomFlow {
    fn authorization_url(
        &self,
        request: &mcp_authkit_core::AuthorizationRequest<'_>,
    ) -> Result<Url, OAuthError> {
        let mut url = Url::parse(&self.info.authorization_endpoint).unwrap();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.info.client_id)
            .append_pair("redirect_uri", request.redirect_uri)
            .append_pair("state", request.state.as_str())
            .append_pair("code_challenge", request.pkce_challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("scope", &request.scopes.join(" "));
        Ok(url)
    }

    async fn exchange_code(
        &self,
        code: &SecretString,
        flow: &PendingFlow,
    ) -> Result<TokenResponse, OAuthError> {
        let response = http()
            .post(&self.info.token_endpoint)
            .basic_auth(&self.info.client_id, Some(&self.info.client_secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.expose_secret()),
                ("redirect_uri", flow.redirect_uri.as_str()),
                ("code_verifier", flow.pkce_verifier.expose_secret()),
            ])
            .send()
            .await
            .map_err(|e| OAuthError::transport("custom exchange", e))?;
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| OAuthError::transport("custom exchange", e))?;
        let token = body["access_token"]
            .as_str()
            .ok_or_else(|| OAuthError::new(OAuthErrorKind::Protocol, "no access_token"))?;
        let mut response = TokenResponse::new(token);
        if let Some(seconds) = body["expires_in"].as_u64() {
            response = response.with_expires_in(Duration::from_secs(seconds));
        }
        Ok(response)
    }

    async fn refresh(
        &self,
        _refresh_token: &SecretString,
        _scopes: &[String],
    ) -> Result<TokenResponse, OAuthError> {
        Err(OAuthError::new(
            OAuthErrorKind::Other,
            "this flow cannot refresh",
        ))
    }

    fn supports_refresh(&self) -> bool {
        false
    }
}

/// One MCP server process's worth: provider, MCP endpoint, routes.
pub struct McpServer {
    pub base: Url,
    pub mcp_url: String,
    pub provider: OAuthProvider,
    pub clock: Arc<ManualClock>,
    pub api_calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    cancel: Box<dyn Fn() + Send + Sync>,
}

impl Drop for McpServer {
    fn drop(&mut self) {
        (self.cancel)();
        self.task.abort();
    }
}

impl McpServer {
    /// Binds first, so the redirect URI is known before `register` runs.
    pub async fn start(
        options: Options,
        register: impl FnOnce(&str) -> AuthServerInfo,
    ) -> McpServer {
        let listener = tokio::net::TcpListener::bind(
            options
                .bind
                .unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()),
        )
        .await
        .unwrap();
        let address = listener.local_addr().unwrap();
        let base = Url::parse(&format!("http://{address}/")).unwrap();
        let public_base = options
            .public_base
            .clone()
            .unwrap_or_else(|| format!("http://{address}"));
        let provider_base = format!("{public_base}/oauth/github");
        let info = register(&format!("{provider_base}/callback"));
        let clock = Arc::new(ManualClock::starting_now());
        let client: Arc<dyn OAuthClient> = if options.custom_flow {
            Arc::new(CustomFlow { info: info.clone() })
        } else {
            Arc::new(
                StandardOAuthClient::builder(
                    info.client_id.clone(),
                    info.authorization_endpoint.clone(),
                    info.token_endpoint.clone(),
                )
                .client_secret(info.client_secret.clone())
                .issuer(info.issuer.clone())
                .http_client(OAuthHttpClient::from_reqwest(http()))
                .build()
                .unwrap(),
            )
        };
        let mut builder = OAuthProvider::builder("github", provider_base)
            .display_name("GitHub")
            .shared_client(client)
            .scopes(["repo"])
            .clock(clock.clone())
            .token_timeout(options.token_timeout)
            .elicitation(options.style)
            .subject_resolver(subject_from_extension(|claims: &Claims| {
                Some(claims.sub.clone())
            }));
        if let Some(ttl) = options.flow_ttl {
            builder = builder.flow_ttl(ttl);
        }
        builder = if options.trust_link_holder {
            builder.trust_link_holder()
        } else {
            builder.browser_user(browser_user)
        };
        // The in-memory default reads the system clock; the tests move a
        // manual one, so flows and tokens must expire by that.
        let memory = Arc::new(MemoryStore::with_clock(clock.clone()));
        builder = builder
            .token_store(options.tokens.clone().unwrap_or_else(|| memory.clone()))
            .pending_store(options.pending.clone().unwrap_or(memory));
        let provider = builder.build().unwrap();
        let api_calls = Arc::new(AtomicUsize::new(0));
        let server = GatedServer {
            github: provider.clone(),
            userinfo: Url::parse(&info.userinfo_endpoint).unwrap(),
            api_calls: api_calls.clone(),
            tool_router: gate_tools(GatedServer::tool_router()),
        };
        let config = StreamableHttpServerConfig::default().with_sse_keep_alive(None);
        let cancellation = config.cancellation_token.clone();
        let service = StreamableHttpService::new(
            move || Ok(server.clone()),
            Arc::new(LocalSessionManager::default()),
            config,
        );
        let app = Router::new()
            .nest_service("/mcp", service)
            .layer(axum::middleware::from_fn(authenticate))
            .merge(provider.router());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        McpServer {
            mcp_url: format!("http://{address}/mcp"),
            base,
            provider,
            clock,
            api_calls,
            task,
            cancel: Box::new(move || cancellation.cancel()),
        }
    }
}

/// A test authorization server, and an MCP server registered at it.
pub struct Harness {
    pub auth: TestAuthServer,
    pub server: McpServer,
}

impl Harness {
    pub async fn start(options: Options) -> Harness {
        let auth = TestAuthServer::start().await.unwrap();
        let server = McpServer::start(options, |redirect| {
            AuthServerInfo::register(&auth, redirect)
        })
        .await;
        Harness { auth, server }
    }

    pub fn provider(&self) -> &OAuthProvider {
        &self.server.provider
    }
}

/// What the test client's elicitation handler does with a URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Answer `accept`, then open the URL in the browser (the usual client).
    AcceptThenOpen,
    /// Open the URL first, answer `accept` once the browser is done.
    OpenThenAccept,
    /// Answer `accept` and never open it.
    AcceptOnly,
    /// Answer `decline`.
    Decline,
    /// Answer `cancel`.
    Cancel,
    /// Never answer (a client that shows the prompt and waits for the user).
    NeverAnswer,
    /// Answer the elicitation request with a JSON-RPC error.
    Fail,
}

/// A page the browser ended on.
#[derive(Clone, Debug)]
pub struct Visit {
    pub status: u16,
    pub body: String,
}

#[derive(Default)]
struct Recorded {
    elicitations: Vec<(String, String, String)>,
    completions: Vec<String>,
    visits: Vec<Visit>,
}

/// The MCP client's handler: declares URL elicitation (or not) and plays
/// the user with a browser signed in to the app as `app_user` and to the
/// third party as `third_party_user`.
#[derive(Clone)]
pub struct TestClient {
    config: ClientConfig,
    browser: Browser,
    behavior: Arc<Mutex<Behavior>>,
    recorded: Arc<Mutex<Recorded>>,
    changed: Arc<Notify>,
    rewrite: Arc<Mutex<Option<(String, String)>>>,
}

pub struct ClientSpec {
    pub version: ProtocolVersion,
    pub url_elicitation: bool,
    pub form_elicitation: bool,
    pub app_user: String,
    pub third_party_user: String,
    pub behavior: Behavior,
}

impl ClientSpec {
    pub fn new(version: ProtocolVersion, user: &str) -> Self {
        ClientSpec {
            version,
            url_elicitation: true,
            form_elicitation: true,
            app_user: user.to_owned(),
            third_party_user: format!("gh-{user}"),
            behavior: Behavior::AcceptThenOpen,
        }
    }

    pub fn legacy(user: &str) -> Self {
        Self::new(ProtocolVersion::V_2025_11_25, user)
    }

    pub fn modern(user: &str) -> Self {
        Self::new(ProtocolVersion::V_2026_07_28, user)
    }
}

impl TestClient {
    pub fn new(spec: &ClientSpec) -> Self {
        let mut elicitation = ElicitationCapability::new();
        if spec.form_elicitation {
            elicitation = elicitation.with_form(FormElicitationCapability::new());
        }
        if spec.url_elicitation {
            elicitation = elicitation.with_url(UrlElicitationCapability::new());
        }
        let mut capabilities = ClientCapabilities::default();
        if spec.form_elicitation || spec.url_elicitation {
            capabilities.elicitation = Some(elicitation);
        }
        let config = ClientConfig::new(capabilities, Implementation::new("test-client", "1.0"))
            .with_protocol_version(spec.version.clone());
        TestClient {
            config,
            // A browser profile of its own: the binding cookies of one
            // user's flows never reach another user's browser.
            browser: shared_browser()
                .clone()
                .with_new_cookie_jar()
                .with_user(&spec.third_party_user)
                .with_cookie("app_user", spec.app_user.clone()),
            behavior: Arc::new(Mutex::new(spec.behavior)),
            recorded: Arc::default(),
            changed: Arc::new(Notify::new()),
            rewrite: Arc::default(),
        }
    }

    pub fn set_behavior(&self, behavior: Behavior) {
        *self.behavior.lock().unwrap() = behavior;
    }

    /// Opens URLs with `to` in place of `from` (a load balancer sending the
    /// browser to another replica).
    pub fn rewrite_urls(&self, from: &str, to: &str) {
        *self.rewrite.lock().unwrap() = Some((from.to_owned(), to.to_owned()));
    }

    /// (url, elicitation id, message) of every URL elicitation received.
    pub fn elicitations(&self) -> Vec<(String, String, String)> {
        self.recorded.lock().unwrap().elicitations.clone()
    }

    /// Elicitation ids of every `notifications/elicitation/complete`.
    pub fn completions(&self) -> Vec<String> {
        self.recorded.lock().unwrap().completions.clone()
    }

    /// Pages the browser ended on.
    pub fn visits(&self) -> Vec<Visit> {
        self.recorded.lock().unwrap().visits.clone()
    }

    /// Waits until `check` holds on what was recorded.
    pub async fn wait_until(&self, what: &str, check: impl Fn(&TestClient) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.changed.notified();
            if check(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {what}");
            }
        }
    }

    /// Follows `url` as the user's browser, recording the final page.
    pub async fn open(&self, url: &str) -> Visit {
        let url = match &*self.rewrite.lock().unwrap() {
            Some((from, to)) => url.replacen(from.as_str(), to, 1),
            None => url.to_owned(),
        };
        let navigation = self.browser.get(&url).await.expect("browser navigation");
        let page = navigation.page().expect("the navigation ends on a page");
        let visit = Visit {
            status: page.status.as_u16(),
            body: page.body.clone(),
        };
        self.recorded.lock().unwrap().visits.push(visit.clone());
        self.changed.notify_waiters();
        visit
    }

    /// Follows `url` and returns the whole navigation (hops included).
    pub async fn navigate(&self, url: &str) -> mcp_authkit_testkit::Navigation {
        self.browser.get(url).await.expect("browser navigation")
    }

    /// Opens the connect link but stops before the authorization server,
    /// and returns the authorize URL the connect page redirected to (the
    /// browser now holds the flow's binding cookie).
    pub async fn connect_only(&self, url: &str, auth_origin: &Url) -> Url {
        let navigation = self
            .browser
            .clone()
            .stop_before(auth_origin)
            .get(url)
            .await
            .expect("browser navigation");
        navigation
            .stopped_at()
            .expect("the connect page redirects to the authorization server")
            .clone()
    }

    /// Opens the connect link but stops before the authorization server,
    /// and returns the OAuth `state` the connect page put into the redirect.
    pub async fn state_behind(&self, url: &str, auth_origin: &Url) -> String {
        self.connect_only(url, auth_origin)
            .await
            .query_pairs()
            .find(|(name, _)| name == "state")
            .map(|(_, value)| value.into_owned())
            .expect("the authorize URL carries state")
    }

    pub fn browser(&self) -> &Browser {
        &self.browser
    }

    pub fn with_browser(mut self, browser: Browser) -> Self {
        self.browser = browser;
        self
    }
}

fn shared_browser() -> &'static Browser {
    static BROWSER: OnceLock<Browser> = OnceLock::new();
    BROWSER.get_or_init(Browser::new)
}

impl ClientHandler for TestClient {
    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let ElicitRequestParams::UrlElicitationParams {
            url,
            elicitation_id,
            message,
            ..
        } = request
        else {
            return Ok(ElicitResult::new(ElicitationAction::Decline));
        };
        self.recorded
            .lock()
            .unwrap()
            .elicitations
            .push((url.clone(), elicitation_id, message));
        self.changed.notify_waiters();
        let behavior = *self.behavior.lock().unwrap();
        let action = match behavior {
            Behavior::AcceptThenOpen => {
                let this = self.clone();
                tokio::spawn(async move {
                    this.open(&url).await;
                });
                ElicitationAction::Accept
            }
            Behavior::OpenThenAccept => {
                self.open(&url).await;
                ElicitationAction::Accept
            }
            Behavior::AcceptOnly => ElicitationAction::Accept,
            Behavior::Decline => ElicitationAction::Decline,
            Behavior::Cancel => ElicitationAction::Cancel,
            Behavior::NeverAnswer => std::future::pending().await,
            Behavior::Fail => {
                return Err(ErrorData::internal_error(
                    "the prompt could not be shown",
                    None,
                ));
            }
        };
        Ok(ElicitResult::new(action))
    }

    async fn on_custom_notification(
        &self,
        notification: CustomNotification,
        _context: NotificationContext<RoleClient>,
    ) {
        if notification.method == "notifications/elicitation/complete" {
            let id = notification
                .params
                .as_ref()
                .and_then(|p| p["elicitationId"].as_str())
                .unwrap_or_default()
                .to_owned();
            self.recorded.lock().unwrap().completions.push(id);
            self.changed.notify_waiters();
        }
    }

    fn get_info(&self) -> ClientConfig {
        self.config.clone()
    }
}

pub type Session = RunningService<RoleClient, TestClient>;

/// Connects `client` to the MCP endpoint as MCP user `user` (`None`: no
/// authorization header), with the client's protocol version.
pub async fn connect(mcp_url: &str, user: Option<&str>, client: TestClient) -> Session {
    let mut config = StreamableHttpClientTransportConfig::with_uri(mcp_url.to_owned());
    if let Some(user) = user {
        config = config.auth_header(format!("user-{user}"));
    }
    let transport = StreamableHttpClientTransport::with_client(http(), config);
    let version = client.config.protocol_version.clone();
    if version.has_initialize() {
        client.serve(transport).await.expect("MCP session starts")
    } else {
        client
            .serve_with_lifecycle(
                transport,
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![version],
                },
            )
            .await
            .expect("MCP client discovers the server")
    }
}

/// Calls a tool by name without arguments.
pub async fn call(session: &Session, tool: &str) -> Result<CallToolResult, ServiceError> {
    session
        .call_tool(CallToolRequestParams::new(tool.to_owned()))
        .await
}

/// The text of a tool result.
pub fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn query_of(url: &str) -> HashMap<String, String> {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// A token store that counts its calls, over the memory store.
pub struct CountingStore {
    inner: Arc<dyn TokenStore>,
    pub gets: AtomicUsize,
    pub others: AtomicUsize,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn TokenStore>) -> Self {
        CountingStore {
            inner,
            gets: AtomicUsize::new(0),
            others: AtomicUsize::new(0),
        }
    }

    pub fn reset(&self) {
        self.gets.store(0, Ordering::SeqCst);
        self.others.store(0, Ordering::SeqCst);
    }

    fn other(&self) {
        self.others.fetch_add(1, Ordering::SeqCst);
    }
}

#[mcp_authkit_core::async_trait]
impl TokenStore for CountingStore {
    async fn get(
        &self,
        key: &mcp_authkit_core::TokenKey,
    ) -> mcp_authkit_core::Result<Option<mcp_authkit_core::StoredToken>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn put(
        &self,
        key: &mcp_authkit_core::TokenKey,
        record: &mcp_authkit_core::TokenRecord,
    ) -> mcp_authkit_core::Result<mcp_authkit_core::Revision> {
        self.other();
        self.inner.put(key, record).await
    }
    async fn compare_and_swap(
        &self,
        key: &mcp_authkit_core::TokenKey,
        expected: Option<mcp_authkit_core::Revision>,
        record: &mcp_authkit_core::TokenRecord,
    ) -> mcp_authkit_core::Result<mcp_authkit_core::CasOutcome> {
        self.other();
        self.inner.compare_and_swap(key, expected, record).await
    }
    async fn delete(&self, key: &mcp_authkit_core::TokenKey) -> mcp_authkit_core::Result<bool> {
        self.other();
        self.inner.delete(key).await
    }
    async fn delete_if_revision(
        &self,
        key: &mcp_authkit_core::TokenKey,
        revision: mcp_authkit_core::Revision,
    ) -> mcp_authkit_core::Result<bool> {
        self.other();
        self.inner.delete_if_revision(key, revision).await
    }
    async fn try_acquire_lease(
        &self,
        key: &mcp_authkit_core::TokenKey,
        ttl: Duration,
    ) -> mcp_authkit_core::Result<Option<mcp_authkit_core::LeaseToken>> {
        self.other();
        self.inner.try_acquire_lease(key, ttl).await
    }
    async fn release_lease(
        &self,
        key: &mcp_authkit_core::TokenKey,
        lease: &mcp_authkit_core::LeaseToken,
    ) -> mcp_authkit_core::Result<bool> {
        self.other();
        self.inner.release_lease(key, lease).await
    }
    async fn scan(
        &self,
        cursor: Option<&mcp_authkit_core::ScanCursor>,
        limit: usize,
    ) -> mcp_authkit_core::Result<mcp_authkit_core::ScanPage<mcp_authkit_core::TokenKey>> {
        self.other();
        self.inner.scan(cursor, limit).await
    }
}

/// The public origin of replicas behind a load balancer that sends each
/// request to the replica its path picks (connect pages to one, callbacks
/// to another), as a real one may; it records who served what. It forwards
/// what browsers send to these routes: `GET`s, headers included.
pub struct LoadBalancer {
    pub base: String,
    routes: Arc<Mutex<Vec<(String, String)>>>,
    served: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LoadBalancer {
    pub async fn start() -> LoadBalancer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let served: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let app = Router::new().fallback({
            let (routes, served) = (routes.clone(), served.clone());
            move |request: Request| forward(routes.clone(), served.clone(), request)
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        LoadBalancer {
            base,
            routes,
            served,
            task,
        }
    }

    /// Sends requests whose path ends with `suffix` to `replica` (a base
    /// URL); the first matching route wins.
    pub fn route(&self, suffix: &str, replica: &str) {
        self.routes
            .lock()
            .unwrap()
            .push((suffix.to_owned(), replica.to_owned()));
    }

    /// (path, replica) of every request forwarded.
    pub fn served(&self) -> Vec<(String, String)> {
        self.served.lock().unwrap().clone()
    }
}

async fn forward(
    routes: Arc<Mutex<Vec<(String, String)>>>,
    served: Arc<Mutex<Vec<(String, String)>>>,
    request: Request,
) -> Response {
    let path = request.uri().path().to_owned();
    let replica = routes
        .lock()
        .unwrap()
        .iter()
        .find(|(suffix, _)| path.ends_with(suffix.as_str()))
        .map(|(_, replica)| replica.clone());
    let Some(replica) = replica else {
        return (axum::http::StatusCode::BAD_GATEWAY, "no route").into_response();
    };
    served.lock().unwrap().push((path, replica.clone()));
    let target = format!(
        "{replica}{}",
        request.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let mut outgoing = http().request(request.method().clone(), target);
    for (name, value) in request.headers() {
        if name != axum::http::header::HOST {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = match outgoing.send().await {
        Ok(answer) => answer,
        Err(error) => {
            return (axum::http::StatusCode::BAD_GATEWAY, error.to_string()).into_response();
        }
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        // Framing is this hop's own.
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            response = response.header(name, value);
        }
    }
    let body = answer.bytes().await.unwrap_or_default();
    response.body(axum::body::Body::from(body)).unwrap()
}
