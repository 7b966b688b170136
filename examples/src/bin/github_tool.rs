//! An MCP server with GitHub-gated tools: the first call asks the user to
//! connect GitHub through URL-mode elicitation, later calls reuse (and
//! refresh) the token.
//!
//! # Try it with MCP Inspector
//!
//! 1. Create a GitHub OAuth App (GitHub > Settings > Developer settings >
//!    OAuth Apps > New OAuth App) with the authorization callback URL
//!    `http://127.0.0.1:8005/oauth/github/callback`, and generate a client
//!    secret.
//! 2. Start the server:
//!
//!    ```sh
//!    GITHUB_CLIENT_ID=... GITHUB_CLIENT_SECRET=... \
//!        cargo run -p mcp-authkit-examples --bin github_tool
//!    ```
//!
//! 3. Start the Inspector with `npx @modelcontextprotocol/inspector`, pick
//!    the "Streamable HTTP" transport, enter `http://127.0.0.1:8005/mcp`
//!    and connect.
//! 4. Call `github_whoami`. The Inspector shows the elicitation with a link
//!    to `http://127.0.0.1:8005/oauth/github/connect?flow=...`; open it, approve
//!    on GitHub, and the tool call finishes with your GitHub login. Call it
//!    again: no prompt this time.
//!
//! A client that cannot keep a tool call open can use fail-fast mode
//! (`ELICITATION=fail-fast`): the call answers `-32042` with the link, the
//! server sends `notifications/elicitation/complete` when you are done, and
//! the retried call works.
//!
//! # Operate it
//!
//! `curl http://127.0.0.1:8005/metrics` shows the counters in Prometheus
//! text (sign-ins, refreshes, refused callbacks, store latency; the table
//! is in the README's "Operate it"), and `curl -i http://127.0.0.1:8005/ready`
//! answers 200 while the stores answer.
//!
//! # Settings (environment)
//!
//! | variable | default |
//! |---|---|
//! | `GITHUB_CLIENT_ID`, `GITHUB_CLIENT_SECRET` | required at run time |
//! | `BIND` | `127.0.0.1:8005` |
//! | `PUBLIC_URL` | `http://{BIND}` (what the browser reaches) |
//! | `GITHUB_SCOPES` | `read:user` (space separated) |
//! | `ELICITATION` | `wait` (or `fail-fast`) |
//!
//! # One user, on purpose
//!
//! This demo serves one local user: every call is "local-user", and the
//! connect page trusts whoever holds the link (`trust_link_holder`). The
//! callback still accepts only the browser that opened the link (a
//! per-flow cookie), so open the link and approve on GitHub in the same
//! browser. A shared server instead identifies callers with its own
//! authorization (`subject_from_extension` over the claims its middleware
//! validated) and checks the browser user on the connect page
//! (`browser_user`), so a link sent to someone else cannot connect their
//! GitHub account to your calls.

use std::time::Duration;

use mcp_authkit::ExposeSecret;
use mcp_authkit::providers::server::{
    ElicitationStyle, OAuthProvider, TokenError, UserToken, gate_tools,
};
use mcp_authkit::providers::standard::StandardOAuthClient;
use metrics_exporter_prometheus::PrometheusBuilder;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{CallToolResult, ContentBlock, ErrorData, ServerCapabilities, ServerConfig};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};

const GITHUB_API: &str = "https://api.github.com";

#[derive(Clone)]
struct GithubTools {
    github: OAuthProvider,
    http: reqwest::Client,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl GithubTools {
    #[tool(description = "Your GitHub login and name")]
    async fn github_whoami(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let user = self.get_json(&ctx, "/user").await?;
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "{} ({})",
            user["login"].as_str().unwrap_or("?"),
            user["name"].as_str().unwrap_or("no name"),
        ))]))
    }

    #[tool(description = "Your five most recently updated GitHub repositories")]
    async fn github_recent_repos(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let repos = self
            .get_json(&ctx, "/user/repos?sort=updated&per_page=5")
            .await?;
        let names: Vec<&str> = repos
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|repo| repo["full_name"].as_str())
            .collect();
        Ok(CallToolResult::success(vec![ContentBlock::text(
            names.join("\n"),
        )]))
    }
}

impl GithubTools {
    /// GETs a GitHub API path with the caller's token. A `401` means GitHub
    /// no longer accepts the token (revoked, app uninstalled): drop it and
    /// ask the user again, once.
    async fn get_json(
        &self,
        ctx: &RequestContext<RoleServer>,
        path: &str,
    ) -> Result<serde_json::Value, ErrorData> {
        let token = self.github.require_token(ctx).await?;
        let mut response = self.send(&token, path).await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            self.github
                .invalidate(&token)
                .await
                .map_err(TokenError::from)?;
            let token = self.github.require_token(ctx).await?;
            response = self.send(&token, path).await?;
        }
        if !response.status().is_success() {
            return Err(ErrorData::internal_error(
                format!("GitHub answered {}", response.status()),
                None,
            ));
        }
        response
            .json()
            .await
            .map_err(|e| ErrorData::internal_error(format!("GitHub's answer: {e}"), None))
    }

    async fn send(&self, token: &UserToken, path: &str) -> Result<reqwest::Response, ErrorData> {
        self.http
            .get(format!("{GITHUB_API}{path}"))
            .bearer_auth(token.secret().expose_secret())
            .header("accept", "application/vnd.github+json")
            .header("user-agent", "mcp-authkit-example")
            .send()
            .await
            .map_err(|e| ErrorData::internal_error(format!("GitHub is unreachable: {e}"), None))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for GithubTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (Some(client_id), Some(client_secret)) =
        (env("GITHUB_CLIENT_ID"), env("GITHUB_CLIENT_SECRET"))
    else {
        eprintln!(
            "Set GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET to a GitHub OAuth App's credentials \
             (callback URL: http://127.0.0.1:8005/oauth/github/callback). See the top of \
             examples/src/bin/github_tool.rs."
        );
        std::process::exit(2);
    };
    let bind = env("BIND").unwrap_or_else(|| "127.0.0.1:8005".to_owned());
    let public_url = env("PUBLIC_URL").unwrap_or_else(|| format!("http://{bind}"));
    let scopes = env("GITHUB_SCOPES").unwrap_or_else(|| "read:user".to_owned());
    let style = match env("ELICITATION").as_deref() {
        Some("fail-fast") => ElicitationStyle::FailFast,
        _ => ElicitationStyle::Wait,
    };

    // Metrics: install the recorder before building the provider (its store
    // metric handles are taken at build time). The exporter only renders;
    // this server serves the text at /metrics, and histograms need a
    // periodic upkeep without the exporter's own listener.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });

    let github = OAuthProvider::builder("github", format!("{public_url}/oauth/github"))
        .display_name("GitHub")
        .client(StandardOAuthClient::github(client_id, client_secret).build()?)
        .scopes(scopes.split_whitespace())
        .elicitation(style)
        .token_timeout(Duration::from_secs(180))
        // One local user (see the module docs for a shared server).
        .subject_resolver(|_: &RequestContext<RoleServer>| Some("local-user".to_owned()))
        .trust_link_holder()
        .build()?;

    let tools = GithubTools {
        github: github.clone(),
        http: reqwest::Client::new(),
        tool_router: gate_tools(GithubTools::tool_router()),
    };
    let mcp = StreamableHttpService::new(
        move || Ok(tools.clone()),
        LocalSessionManager::default().into(),
        StreamableHttpServerConfig::default(),
    );
    let app = axum::Router::new()
        .nest_service("/mcp", mcp)
        .merge(github.router())
        // 200 while the stores answer, 503 otherwise.
        .merge(github.readiness_router("/ready"))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let prometheus = prometheus.clone();
                async move { prometheus.render() }
            }),
        );

    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!("MCP endpoint:      {public_url}/mcp");
    println!("GitHub callback:   {}", github.redirect_uri());
    println!("Elicitation style: {style:?}");
    println!("Metrics:           {public_url}/metrics (readiness: {public_url}/ready)");
    axum::serve(listener, app).await?;
    Ok(())
}
