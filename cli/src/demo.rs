//! `mcp-authkit demo`: the whole server-side lifecycle, end to end, on
//! loopback, with no credentials and no external services.
//!
//! It starts the testkit's OAuth 2.1 authorization server (playing GitHub),
//! an rmcp server whose `github_whoami` tool is gated by an `OAuthProvider`,
//! and an rmcp client that declares URL elicitation and opens elicited URLs
//! in a headless browser. Then it walks the lifecycle and prints each step:
//! elicitation, browser, callback, token stored, tool result; expiry and
//! silent refresh; an API 401, invalidation and a new elicitation. Every step
//! is also checked, so the demo exits non-zero if the library misbehaves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use mcp_authkit::encrypted::{EncryptedStore, EncryptionKey, EnvelopeInfo, Keyring};
use mcp_authkit::providers::http::OAuthHttpClient;
use mcp_authkit::providers::server::{
    BrowserIdentity, OAuthProvider, TokenError, gate_tools, subject_from_extension,
};
use mcp_authkit::providers::standard::StandardOAuthClient;
use mcp_authkit::{ExposeSecret, PendingStore, TokenKey, TokenStore};
use mcp_authkit_testkit::{Browser, ClientRegistration, Endpoint, TestAuthServer};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock,
    CustomNotification, ElicitRequestParams, ElicitResult, ElicitationAction,
    ElicitationCapability, ErrorData, Implementation, ProtocolVersion, ServerCapabilities,
    ServerConfig, UrlElicitationCapability,
};
use rmcp::service::{NotificationContext, RequestContext, RoleClient, RoleServer};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ClientHandler, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use url::Url;

use crate::store_spec::{OpenStore, StoreSpec};

/// The MCP user (from the MCP server's own auth) and the user at "GitHub".
const MCP_USER: &str = "alice";
const GITHUB_USER: &str = "octocat";
/// Short lifetimes so the demo shows a refresh within seconds.
const TOKEN_LIFETIME: Duration = Duration::from_secs(6);
const REFRESH_SKEW: Duration = Duration::from_secs(4);

/// Which backend the demo runs on.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum DemoStore {
    /// In-process.
    Memory,
    /// A SQLite file (a temporary one unless --sqlite-path is given).
    Sqlite,
    /// Redis at --redis-url, under a fresh key prefix it removes afterwards.
    Redis,
    /// PostgreSQL at --database-url, in a fresh schema it drops afterwards.
    Postgres,
}

/// The demo's choices.
pub struct DemoOptions {
    pub store: DemoStore,
    pub sqlite_path: Option<std::path::PathBuf>,
    pub redis_url: String,
    pub database_url: String,
    pub encrypt: bool,
}

/// Prints one step of the lifecycle.
fn step(text: &str) {
    println!("\n== {text}");
}

fn say(text: &str) {
    println!("   {text}");
}

/// A URL without its query: queries carry `state`, PKCE challenges and
/// codes, which a log has no business showing.
fn without_query(url: &Url) -> String {
    let mut shown = url.clone();
    let had_query = shown.query().is_some();
    shown.set_query(None);
    if had_query {
        format!("{shown}?…")
    } else {
        shown.to_string()
    }
}

/// The MCP server's own authentication: a bearer `user-NAME` is user NAME.
#[derive(Clone)]
struct Claims {
    sub: String,
}

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

/// The MCP server: one tool that calls "GitHub's" user API.
#[derive(Clone)]
struct DemoServer {
    github: OAuthProvider,
    userinfo: Url,
    http: reqwest::Client,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl DemoServer {
    #[tool(description = "Who am I at GitHub (needs the user's GitHub token)")]
    async fn github_whoami(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let token = self.github.require_token(&ctx).await?;
        let mut response = self.call_api(token.secret().expose_secret()).await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            say(&format!(
                "[server] GitHub API answered 401 for token revision {}: invalidating that revision",
                token.revision()
            ));
            self.github
                .invalidate(&token)
                .await
                .map_err(TokenError::from)?;
            let token = self.github.require_token(&ctx).await?;
            response = self.call_api(token.secret().expose_secret()).await?;
        }
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "GitHub API answered {status}"
            ))]));
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "you are {} at GitHub",
            body["sub"].as_str().unwrap_or("?")
        ))]))
    }
}

impl DemoServer {
    async fn call_api(&self, token: &str) -> Result<reqwest::Response, ErrorData> {
        self.http
            .get(self.userinfo.clone())
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| ErrorData::internal_error(format!("GitHub API call failed: {e}"), None))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for DemoServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// The MCP client: declares URL elicitation, and opens elicited URLs in a
/// browser signed in to the app (cookie) and to "GitHub".
#[derive(Clone)]
struct DemoClient {
    config: ClientConfig,
    browser: Browser,
    elicitations: Arc<AtomicUsize>,
    completions: Arc<tokio::sync::watch::Sender<usize>>,
    browsing: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl ClientHandler for DemoClient {
    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let ElicitRequestParams::UrlElicitationParams {
            url,
            message,
            elicitation_id,
            ..
        } = request
        else {
            say("[client] a form elicitation: declined (the demo expects URL mode)");
            return Ok(ElicitResult::new(ElicitationAction::Decline));
        };
        self.elicitations.fetch_add(1, Ordering::SeqCst);
        let shown = Url::parse(&url)
            .map(|u| without_query(&u))
            .unwrap_or_default();
        // The elicitation id is also the link's handle: show a prefix only,
        // as the link itself is shown without its query.
        let id: String = elicitation_id.chars().take(6).collect();
        say(&format!("[client] URL elicitation {id}…: {message}"));
        say(&format!(
            "[client] the user accepts and the browser opens {shown}"
        ));
        let browser = self.browser.clone();
        let task = tokio::spawn(async move {
            match browser.get(&url).await {
                Ok(navigation) => {
                    for hop in navigation.hops() {
                        say(&format!(
                            "[browser] {} {} -> {}",
                            hop.method,
                            without_query(&hop.url),
                            hop.status.as_u16()
                        ));
                    }
                    if let Some(page) = navigation.page() {
                        let title = page
                            .body
                            .split("<title>")
                            .nth(1)
                            .and_then(|rest| rest.split("</title>").next())
                            .unwrap_or("");
                        say(&format!(
                            "[browser] callback page: {} {title}",
                            page.status.as_u16()
                        ));
                    }
                }
                Err(error) => say(&format!("[browser] navigation failed: {error}")),
            }
        });
        self.browsing.lock().unwrap().push(task);
        Ok(ElicitResult::new(ElicitationAction::Accept))
    }

    async fn on_custom_notification(
        &self,
        notification: CustomNotification,
        _: NotificationContext<RoleClient>,
    ) {
        if notification.method == "notifications/elicitation/complete" {
            say("[client] notifications/elicitation/complete received");
            self.completions.send_modify(|n| *n += 1);
        }
    }

    fn get_info(&self) -> ClientConfig {
        self.config.clone()
    }
}

/// Prints what the store holds for the user, read under any encryption:
/// metadata, never the secret.
async fn show_stored(tokens: &dyn TokenStore) -> Result<u64, String> {
    let key = TokenKey::new("github", MCP_USER);
    let stored = tokens
        .get(&key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no token stored")?;
    let at_rest = match EnvelopeInfo::read(stored.record.access_token.expose_secret()) {
        Ok(info) => format!("encrypted with key {:?}", info.key_id),
        Err(_) => "in clear".to_owned(),
    };
    say(&format!(
        "[store] github/{MCP_USER}: revision {}, expires {}, scopes [{}], refresh token: {}, at rest {at_rest}",
        stored.revision.get(),
        stored
            .record
            .expires_at
            .map(|t| t.to_string())
            .unwrap_or_else(|| "unknown".into()),
        stored.record.scopes.join(" "),
        if stored.record.refresh_token.is_some() {
            "yes"
        } else {
            "no"
        },
    ));
    Ok(stored.revision.get())
}

fn check(condition: bool, what: &str) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(format!("demo check failed: {what}"))
    }
}

fn tool_text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The store the demo runs on, and what to clean up after it.
struct DemoBackend {
    store: OpenStore,
    /// The store under any encryption: what is really at rest.
    at_rest: Arc<dyn TokenStore>,
    description: String,
    _tempdir: Option<tempfile::TempDir>,
    redis_namespace: Option<(String, String)>,
    /// The demo's PostgreSQL store, whose schema is dropped afterwards.
    postgres: Option<mcp_authkit::postgres::PostgresStore>,
}

/// Opens the chosen store (encrypted if asked) as the provider will use it.
async fn open_store(options: &DemoOptions) -> Result<DemoBackend, String> {
    let mut tempdir = None;
    let mut redis_namespace = None;
    let mut postgres = None;
    let prefix = format!("mcp-authkit-demo-{}", mcp_authkit::random_urlsafe(6));
    let spec = match options.store {
        DemoStore::Memory => StoreSpec::Memory,
        DemoStore::Sqlite => match &options.sqlite_path {
            Some(path) => StoreSpec::Sqlite(path.clone()),
            None => {
                let dir =
                    tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
                let path = dir.path().join("mcp-authkit-demo.db");
                tempdir = Some(dir);
                StoreSpec::Sqlite(path)
            }
        },
        DemoStore::Redis => {
            redis_namespace = Some((options.redis_url.clone(), prefix.clone()));
            StoreSpec::Redis(options.redis_url.clone())
        }
        DemoStore::Postgres => StoreSpec::Postgres(options.database_url.clone()),
    };
    // A schema name needs no quoting in psql: lower case, no dashes.
    let namespace = match spec {
        StoreSpec::Postgres(_) => prefix.to_ascii_lowercase().replace('-', "_"),
        _ => prefix.clone(),
    };
    let opened = match &spec {
        StoreSpec::Postgres(url) => {
            let store = mcp_authkit::postgres::PostgresStore::options(url)
                .schema(&namespace)
                .connect_timeout(Duration::from_secs(3))
                .open()
                .await
                .map_err(|e| format!("cannot open the store: {e}"))?;
            postgres = Some(store.clone());
            let store = Arc::new(store);
            OpenStore {
                tokens: store.clone(),
                pending: store,
            }
        }
        _ => spec
            .open(Some(&prefix), true)
            .await
            .map_err(|e| format!("cannot open the store: {e}"))?,
    };
    let mut description = match &spec {
        StoreSpec::Memory => "memory (in-process)".to_owned(),
        StoreSpec::Sqlite(path) => format!("SQLite file {}", path.display()),
        StoreSpec::Redis(url) => format!("Redis {url} under key prefix {prefix}"),
        StoreSpec::Postgres(_) => format!("PostgreSQL schema {namespace}"),
    };
    let at_rest = Arc::clone(&opened.tokens);
    let store = if options.encrypt {
        let keyring = Keyring::new(EncryptionKey::generate("demo-key"));
        description.push_str(", AES-256-GCM encrypted");
        let tokens: Arc<dyn TokenStore> =
            Arc::new(EncryptedStore::new(opened.tokens, keyring.clone()));
        let pending: Arc<dyn PendingStore> = Arc::new(EncryptedStore::new(opened.pending, keyring));
        OpenStore { tokens, pending }
    } else {
        opened
    };
    Ok(DemoBackend {
        store,
        at_rest,
        description,
        _tempdir: tempdir,
        redis_namespace,
        postgres,
    })
}

/// Runs the demo; `Err` names the step that went wrong.
pub async fn run(options: DemoOptions) -> Result<(), String> {
    let started = Instant::now();
    // Installed before the provider is built (it takes its store metric
    // handles then); the summary at the end reads it back.
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    if recorder.install().is_err() {
        say("(another metrics recorder is installed: no metrics summary)");
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;

    step(
        "setting up: a loopback authorization server playing GitHub, an MCP server, an MCP client",
    );
    let github = TestAuthServer::builder()
        .access_token_lifetime(TOKEN_LIFETIME)
        .default_subject(GITHUB_USER)
        .start()
        .await
        .map_err(|e| format!("cannot start the test authorization server: {e}"))?;
    say(&format!(
        "authorization server (\"GitHub\"): {}",
        github.issuer()
    ));

    let backend = open_store(&options).await?;
    let store = backend.store.clone();
    say(&format!("token store: {}", backend.description));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let provider_base = format!("http://{address}/oauth/github");
    let registration = github
        .register_client(ClientRegistration::confidential(format!(
            "{provider_base}/callback"
        )))
        .map_err(|e| e.to_string())?;
    let oauth = StandardOAuthClient::builder(
        registration.client_id.clone(),
        github.authorization_endpoint().to_string(),
        github.token_endpoint().to_string(),
    )
    .client_secret(registration.client_secret.clone().unwrap_or_default())
    .issuer(github.issuer())
    .http_client(OAuthHttpClient::from_reqwest(http.clone()))
    .build()
    .map_err(|e| e.to_string())?;
    let provider = OAuthProvider::builder("github", provider_base)
        .display_name("GitHub")
        .client(oauth)
        .scopes(["repo", "read:user"])
        .refresh_skew(REFRESH_SKEW)
        .token_store(Arc::clone(&store.tokens))
        .pending_store(Arc::clone(&store.pending))
        .subject_resolver(subject_from_extension(|claims: &Claims| {
            Some(claims.sub.clone())
        }))
        // The connect page checks that the browser is the MCP user's own
        // (here: an app session cookie) and binds that browser to the flow;
        // the callback accepts only that browser. So neither a forwarded
        // connect link nor a forwarded authorize URL connects anyone else's
        // account (the headless browser keeps cookies, like a real one).
        .browser_user(|parts: &axum::http::request::Parts| {
            parts
                .headers
                .get(axum::http::header::COOKIE)
                .and_then(|v| v.to_str().ok())
                .and_then(|c| {
                    c.split(';')
                        .find_map(|c| c.trim().strip_prefix("app_user="))
                })
                .map(|user| BrowserIdentity::SignedIn(user.to_owned()))
                .unwrap_or(BrowserIdentity::SignedOut)
        })
        .build()
        .map_err(|e| format!("cannot build the OAuth provider: {e}"))?;
    let server = DemoServer {
        github: provider.clone(),
        userinfo: github.userinfo_endpoint(),
        http: http.clone(),
        tool_router: gate_tools(DemoServer::tool_router()),
    };
    let config = StreamableHttpServerConfig::default().with_sse_keep_alive(None);
    let cancel = config.cancellation_token.clone();
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let app = Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(authenticate))
        .merge(provider.router());
    let server_task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    say(&format!(
        "MCP server: http://{address}/mcp (tool github_whoami)"
    ));

    let elicitations = Arc::new(AtomicUsize::new(0));
    let completions = Arc::new(tokio::sync::watch::Sender::new(0usize));
    let completed = |n: usize| {
        let mut receiver = completions.subscribe();
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                receiver.wait_for(|done| *done >= n),
            )
            .await
            .map(|_| ())
            .map_err(|_| "the completion notification did not arrive".to_owned())
        }
    };
    let browsing = Arc::new(Mutex::new(Vec::new()));
    let mut elicitation = ElicitationCapability::new();
    elicitation = elicitation.with_url(UrlElicitationCapability::new());
    let mut capabilities = ClientCapabilities::default();
    capabilities.elicitation = Some(elicitation);
    let client = DemoClient {
        config: ClientConfig::new(capabilities, Implementation::new("mcp-authkit-demo", "1.0"))
            .with_protocol_version(ProtocolVersion::V_2025_11_25),
        browser: Browser::new()
            .with_user(GITHUB_USER)
            .with_cookie("app_user", MCP_USER),
        elicitations: Arc::clone(&elicitations),
        completions: Arc::clone(&completions),
        browsing: Arc::clone(&browsing),
    };
    let transport = StreamableHttpClientTransport::with_client(
        http.clone(),
        StreamableHttpClientTransportConfig::with_uri(format!("http://{address}/mcp"))
            .auth_header(format!("user-{MCP_USER}")),
    );
    let session = client
        .serve(transport)
        .await
        .map_err(|e| format!("the MCP client could not connect: {e}"))?;
    say(&format!(
        "MCP client connected as MCP user {MCP_USER:?}, declaring URL elicitation"
    ));

    let call = || async {
        let result = session
            .call_tool(CallToolRequestParams::new("github_whoami"))
            .await
            .map_err(|e| format!("the tool call failed: {e}"))?;
        let text = tool_text(&result);
        say(&format!("[client] tool result: {text}"));
        check(result.is_error != Some(true), "the tool call succeeds")?;
        Ok::<String, String>(text)
    };

    step("1. first call: no token, so the server elicits its connect page (wait mode)");
    let text = call().await?;
    check(text.contains(GITHUB_USER), "the tool sees the GitHub user")?;
    check(
        elicitations.load(Ordering::SeqCst) == 1,
        "exactly one elicitation",
    )?;
    check(
        github.hits(Endpoint::AuthorizationCodeGrant) == 1,
        "one code exchange",
    )?;
    completed(1).await?;
    let first_revision = show_stored(&*backend.at_rest).await?;

    step(
        "2. second call: the stored token is served, no elicitation, no request to GitHub's token endpoint",
    );
    let token_requests = github.hits(Endpoint::Token);
    call().await?;
    check(
        elicitations.load(Ordering::SeqCst) == 1,
        "no new elicitation",
    )?;
    check(
        github.hits(Endpoint::Token) == token_requests,
        "no token request",
    )?;

    step(&format!(
        "3. the token nears its expiry ({}s lifetime, refreshed {}s before): silent refresh",
        TOKEN_LIFETIME.as_secs(),
        REFRESH_SKEW.as_secs()
    ));
    let wait = TOKEN_LIFETIME - REFRESH_SKEW + Duration::from_millis(500);
    say(&format!("waiting {:.1}s ...", wait.as_secs_f32()));
    tokio::time::sleep(wait).await;
    call().await?;
    check(
        github.hits(Endpoint::RefreshTokenGrant) == 1,
        "exactly one refresh",
    )?;
    check(
        elicitations.load(Ordering::SeqCst) == 1,
        "no elicitation for a refresh",
    )?;
    let refreshed = show_stored(&*backend.at_rest).await?;
    check(
        refreshed > first_revision,
        "the refreshed token has a newer revision",
    )?;
    say(&format!(
        "refreshed silently: revision {first_revision} -> {refreshed}, 1 refresh request"
    ));

    step(
        "4. the user revokes the app at GitHub: the API answers 401, the server invalidates and elicits again",
    );
    github.revoke_subject(GITHUB_USER);
    let text = call().await?;
    check(
        text.contains(GITHUB_USER),
        "the tool succeeds after the new authorization",
    )?;
    check(
        elicitations.load(Ordering::SeqCst) == 2,
        "a second elicitation",
    )?;
    check(
        github.hits(Endpoint::AuthorizationCodeGrant) == 2,
        "a second code exchange",
    )?;
    completed(2).await?;
    let latest = show_stored(&*backend.at_rest).await?;
    check(
        latest > refreshed,
        "a new token replaced the invalidated one",
    )?;

    let tasks: Vec<_> = browsing.lock().unwrap().drain(..).collect();
    for task in tasks {
        let _ = task.await;
    }
    session.cancel().await.map_err(|e| e.to_string())?;
    cancel.cancel();
    server_task.abort();
    if let Some((url, prefix)) = &backend.redis_namespace {
        let redis = mcp_authkit::redis::RedisStore::builder(url.clone())
            .prefix(prefix.clone())
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let removed = redis.delete_namespace().await.map_err(|e| e.to_string())?;
        say(&format!("removed the demo's {removed} Redis keys"));
    }
    if let Some(store) = &backend.postgres {
        store.drop_tables().await.map_err(|e| e.to_string())?;
        say(&format!("dropped the demo's schema {}", store.schema()));
    }
    step("metrics, as the recorder counted them");
    print_metrics(&snapshotter);
    step(&format!(
        "done in {:.1}s: 2 elicitations, 2 code exchanges, 1 silent refresh, 1 invalidation",
        started.elapsed().as_secs_f32()
    ));
    Ok(())
}

/// The counters, and the values each histogram recorded (an in-process
/// store's operations are timed one in 64: their count is in
/// `store_operations_total`), straight from the recorder.
fn print_metrics(snapshotter: &metrics_util::debugging::Snapshotter) {
    use metrics_util::debugging::DebugValue;
    let mut lines = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|label| format!("{}={}", label.key(), label.value()))
            .collect();
        let name = key.name().trim_start_matches("mcp_authkit_");
        match value {
            DebugValue::Counter(n) if n > 0 => {
                lines.push(format!("{name}{{{}}} {n}", labels.join(",")));
            }
            DebugValue::Histogram(values) if !values.is_empty() => {
                let mut values: Vec<f64> = values.into_iter().map(|v| v.into_inner()).collect();
                values.sort_by(f64::total_cmp);
                let p50 = values[values.len() / 2] * 1e6;
                lines.push(format!(
                    "{name}{{{}}} {} timed, p50 {p50:.0} us",
                    labels.join(","),
                    values.len()
                ));
            }
            _ => {}
        }
    }
    lines.sort();
    for line in lines {
        say(&line);
    }
}
