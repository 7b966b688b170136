//! The cost of `require_token` when the user has a valid token (the hot
//! path of every gated tool call), beside the raw store read it is built on.
//!
//! `cargo bench -p mcp-authkit-providers --features rmcp,metrics --bench server_require_token`
//!
//! With the `metrics` feature it also prints `require_token` with metrics
//! compiled in but no recorder ("metrics off") and with a Prometheus
//! recorder installed ("metrics on"), each interleaved with the raw read in
//! the same run. `MCP_AUTHKIT_BENCH_N` sets the number of timed calls
//! (default 100 000).
//!
//! With `MCP_AUTHKIT_BENCH_CALLGRIND` set (to `only`: and nothing else) it
//! then runs itself under
//! `valgrind --tool=callgrind` and prints instructions per call of the raw
//! read, metrics off and metrics on: unlike times, these counts do not move
//! with the load of a shared machine. Each of those runs sets
//! `MCP_AUTHKIT_BENCH_PROFILE` to `raw`, `off` or `on` (and
//! `MCP_AUTHKIT_BENCH_READS` to a count), which only performs that many
//! calls inside `counted_loop`, the one function callgrind counts.

use std::sync::Arc;

#[cfg(feature = "metrics")]
use mcp_authkit_bench::interleaved;
use mcp_authkit_bench::{Table, measure};
use mcp_authkit_core::{Timestamp, TokenKey, TokenRecord, TokenStore};
use mcp_authkit_providers::server::{OAuthProvider, subject_from_extension};
use mcp_authkit_providers::standard::StandardOAuthClient;
use mcp_authkit_store_memory::MemoryStore;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientConfig, ErrorData, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use tokio::sync::mpsc;

#[derive(Clone)]
struct Claims {
    sub: String,
}

/// A server whose only tool hands its request context out, so the
/// benchmark calls `require_token` with a context rmcp really built.
#[derive(Clone)]
struct Capture {
    contexts: mpsc::UnboundedSender<RequestContext<RoleServer>>,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Capture {
    #[tool(description = "capture")]
    async fn capture(&self, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        let _ = self.contexts.send(ctx);
        Ok(CallToolResult::success(Vec::new()))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Capture {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

async fn real_context() -> (RequestContext<RoleServer>, impl Drop) {
    let (contexts, mut received) = mpsc::unbounded_channel();
    let server = Capture {
        contexts,
        tool_router: Capture::tool_router(),
    };
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let running = server.serve(server_io).await.expect("server starts");
        let _ = running.waiting().await;
    });
    let client = ClientConfig::default()
        .serve(client_io)
        .await
        .expect("client starts");
    client
        .call_tool(CallToolRequestParams::new("capture"))
        .await
        .expect("tool call");
    let ctx = received.recv().await.expect("captured context");
    (ctx, client)
}

/// The context as the streamable HTTP server builds it: the request's
/// parts, with the claims the auth middleware put there.
fn with_user(mut ctx: RequestContext<RoleServer>, subject: &str) -> RequestContext<RoleServer> {
    let (parts, ()) = http::Request::builder()
        .uri("/mcp")
        .extension(Claims {
            sub: subject.to_owned(),
        })
        .body(())
        .unwrap()
        .into_parts();
    ctx.extensions.insert(parts);
    ctx
}

fn build_provider(store: &Arc<MemoryStore>) -> OAuthProvider {
    let client = StandardOAuthClient::builder(
        "bench",
        "https://as.invalid/authorize",
        "https://as.invalid/token",
    )
    .build()
    .unwrap();
    OAuthProvider::builder("github", "https://mcp.invalid/oauth/github")
        .client(client)
        .store(store.clone())
        .trust_link_holder()
        .subject_resolver(subject_from_extension(|claims: &Claims| {
            Some(claims.sub.clone())
        }))
        .build()
        .unwrap()
}

// One thread: the callgrind counts then hold no idle worker threads.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    // `only`: the instruction counts without the timed rows.
    if std::env::var("MCP_AUTHKIT_BENCH_CALLGRIND").as_deref() == Ok("only")
        && std::env::var_os(PROFILE).is_none()
    {
        println!("{}", instructions());
        return;
    }
    let store = Arc::new(MemoryStore::new());
    // Built before any recorder exists: its store metric handles do nothing
    // (metrics compiled in, off).
    let provider = build_provider(&store);
    #[cfg(feature = "metrics")]
    let metered = {
        // What an operator runs: the Prometheus recorder (no HTTP listener;
        // the application serves its render()). Its own store, holding the
        // keys its own lifecycle wrote, as in a server.
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("the recorder installs");
        let store = Arc::new(MemoryStore::new());
        (build_provider(&store), handle, store)
    };
    let record = TokenRecord::new(
        "gho_0123456789abcdef0123456789abcdef01234567",
        Timestamp::now(),
    )
    .with_refresh_token("ghr_0123456789abcdef")
    .with_scopes(["repo", "read:user"]);
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    // The raw reads use the keys the lifecycle builds (its provider name
    // shared, as in the keys it wrote), so both sides compare keys alike.
    let keys: Vec<TokenKey> = users
        .iter()
        .map(|user| provider.lifecycle().key(user))
        .collect();
    for user in &users {
        provider
            .lifecycle()
            .store_token(user, &record)
            .await
            .unwrap();
    }
    #[cfg(feature = "metrics")]
    let metered_keys: Vec<TokenKey> = {
        let lifecycle = metered.0.lifecycle();
        for user in &users {
            lifecycle.store_token(user, &record).await.unwrap();
        }
        users.iter().map(|user| lifecycle.key(user)).collect()
    };
    let (base, _session) = real_context().await;
    let contexts: Vec<_> = users
        .iter()
        .map(|user| with_user(base.clone(), user))
        .collect();

    if let Ok(profile) = std::env::var(PROFILE) {
        let reads: usize = std::env::var(READS)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1000);
        #[cfg(feature = "metrics")]
        let on = &metered.0;
        #[cfg(not(feature = "metrics"))]
        let on = &provider;
        // One warm-up pass outside the counted loop, so every call counted
        // finds its map slots, allocator bins and histogram blocks in place.
        for pass in [contexts.len(), reads] {
            match profile.as_str() {
                "raw" => counted_loop(pass, |i| {
                    let (store, key) = (&store, &keys[i % keys.len()]);
                    async move {
                        std::hint::black_box(TokenStore::get(store.as_ref(), key).await.unwrap());
                    }
                }),
                "off" => counted_loop(pass, |i| {
                    let (provider, ctx) = (&provider, &contexts[i % contexts.len()]);
                    async move {
                        std::hint::black_box(provider.require_token(ctx).await.unwrap());
                    }
                }),
                "on" => counted_loop(pass, |i| {
                    let ctx = &contexts[i % contexts.len()];
                    async move {
                        std::hint::black_box(on.require_token(ctx).await.unwrap());
                    }
                }),
                other => panic!("unknown profile {other}: raw, off or on"),
            }
        }
        return;
    }

    // MCP_AUTHKIT_BENCH_N: fewer calls for a quick look.
    let n = std::env::var("MCP_AUTHKIT_BENCH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let raw = measure("store get (raw)", n, |i| {
        let store = &store;
        let key = &keys[i % keys.len()];
        async move {
            std::hint::black_box(TokenStore::get(store.as_ref(), key).await.unwrap());
        }
    })
    .await;
    let access = measure("lifecycle access", n, |i| {
        let lifecycle = provider.lifecycle();
        let user = &users[i % users.len()];
        async move {
            std::hint::black_box(lifecycle.access(user).await.unwrap());
        }
    })
    .await;
    let token = measure("provider token", n, |i| {
        let provider = &provider;
        let user = &users[i % users.len()];
        async move {
            std::hint::black_box(provider.token(user).await.unwrap());
        }
    })
    .await;
    let require = measure("require_token (valid token)", n, |i| {
        let provider = &provider;
        let ctx = &contexts[i % contexts.len()];
        async move {
            std::hint::black_box(provider.require_token(ctx).await.unwrap());
        }
    })
    .await;
    let mut table = Table::new();
    table.row("memory", access, Some(raw.clone()));
    table.row("memory", token, Some(raw.clone()));
    table.row("memory", require, Some(raw));
    // The metrics rows: each interleaved with its own raw read, so load from
    // elsewhere on the machine falls on both alike.
    #[cfg(feature = "metrics")]
    {
        let (on, _prometheus, on_store) = &metered;
        for (name, provider, store, keys) in [
            (
                "require_token (metrics compiled in, off)",
                &provider,
                &store,
                &keys,
            ),
            (
                "require_token (metrics on, Prometheus)",
                on,
                on_store,
                &metered_keys,
            ),
        ] {
            let (ours, baseline) = interleaved(
                n,
                (name, "store get (raw)"),
                async |i| {
                    let ctx = &contexts[i % contexts.len()];
                    std::hint::black_box(provider.require_token(ctx).await.unwrap());
                },
                async |i| {
                    let key = &keys[i % keys.len()];
                    std::hint::black_box(TokenStore::get(store.as_ref(), key).await.unwrap());
                },
            )
            .await;
            table.row("memory", ours, Some(baseline));
        }
    }
    println!("{}", table.render());
    if std::env::var_os("MCP_AUTHKIT_BENCH_CALLGRIND").is_some() {
        println!("{}", instructions());
    }
}

const PROFILE: &str = "MCP_AUTHKIT_BENCH_PROFILE";
const READS: &str = "MCP_AUTHKIT_BENCH_READS";

/// Runs `reads` calls of `op`, polled in place: the memory store never
/// makes a call wait, so each future is ready on its first poll. Callgrind
/// counts only inside this function (`--toggle-collect`), so the setup
/// (the rmcp session, the 1000 tokens) and the runtime stay out of the
/// count.
#[inline(never)]
fn counted_loop<F: Future<Output = ()>>(reads: usize, mut op: impl FnMut(usize) -> F) {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for i in 0..reads {
        let mut call = std::pin::pin!(op(i));
        assert!(
            call.as_mut().poll(&mut cx).is_ready(),
            "a memory-store call waited"
        );
    }
}

/// Instructions per call of each profile, counted by callgrind on this
/// binary: the difference between 3000 and 1000 calls over 2000, so what
/// runs once (the warm-up pass, the first touch of a cache) cancels out.
fn instructions() -> String {
    let exe = std::env::current_exe().expect("the benchmark knows its path");
    let count = |profile: &str, reads: usize| -> u64 {
        let output = std::process::Command::new("valgrind")
            .args([
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                "--toggle-collect=*counted_loop*",
            ])
            .arg(&exe)
            .env(PROFILE, profile)
            .env(READS, reads.to_string())
            .output()
            .expect("valgrind runs (is it installed?)");
        let log = String::from_utf8_lossy(&output.stderr);
        log.lines()
            .find_map(|line| line.split("Collected : ").nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no instruction count from callgrind:\n{log}"))
    };
    let per_call = |profile: &str| (count(profile, 3000) - count(profile, 1000)) / 2000;
    let raw = per_call("raw");
    let mut out =
        String::from("| callgrind | instructions per call | ratio vs raw get |\n|---|---:|---:|\n");
    out.push_str(&format!("| memory store get (raw) | {raw} | 1.00 |\n"));
    for (profile, name) in [
        ("off", "require_token (metrics compiled in, off)"),
        ("on", "require_token (metrics on, Prometheus)"),
    ] {
        let n = per_call(profile);
        out.push_str(&format!(
            "| {name} | {n} | {:.2} |\n",
            n as f64 / raw as f64
        ));
    }
    out
}
