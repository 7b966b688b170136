//! Prints the Prometheus text of one real sign-in, for the README's
//! "Scraping" sample (`scripts/metrics-sample.sh` keeps the
//! `mcp_authkit_` lines).
//!
//! It drives the same loopback setup as `tests/server_metrics.rs`: the
//! testkit's authorization server (consent given by its headless browser),
//! an rmcp server gated by an `OAuthProvider` in fail-fast mode with the
//! memory store, and an rmcp client. One call gets `-32042` with the
//! sign-in link, a retry before the user is done joins the same flow, the
//! browser follows the link, the next call succeeds, and one more call
//! uses the stored token. The recorder is `metrics-exporter-prometheus`,
//! installed before the provider is built, as `github_tool` does.

#[path = "../tests/server_support/mod.rs"]
mod server_support;

use mcp_authkit_providers::server::ElicitationStyle;
use metrics_exporter_prometheus::PrometheusBuilder;
use server_support::*;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .expect("no other recorder");
    let h = Harness::start(Options {
        style: ElicitationStyle::FailFast,
        ..Options::default()
    })
    .await;
    let client = TestClient::new(&ClientSpec::legacy("alice"));
    let session = connect(&h.server.mcp_url, Some("alice"), client.clone()).await;
    let link = match call(&session, "whoami").await {
        Err(rmcp::service::ServiceError::McpError(error)) if error.code.0 == -32042 => error
            .data
            .and_then(|data| data["elicitations"][0]["url"].as_str().map(str::to_owned))
            .expect("a sign-in link"),
        other => panic!("expected -32042 with a link, got {other:?}"),
    };
    call(&session, "whoami")
        .await
        .expect_err("still signing in");
    assert_eq!(client.open(&link).await.status, 200, "consent given");
    for _ in 0..2 {
        let result = call(&session, "whoami").await.expect("signed in");
        assert_eq!(text(&result), "github user: gh-alice");
    }
    prometheus.run_upkeep();
    print!("{}", prometheus.render());
}
