//! The cost of starting a sign-in through `OAuthProvider::begin_authorization`
//! (link handle, derived state, sealed browser binding) beside the core
//! lifecycle's own `begin_authorization` it replaces, on the same kind of
//! store: the price of the binding and the opaque link.
//!
//! `cargo bench -p mcp-authkit-providers --bench server_sign_in`

use std::sync::Arc;

use mcp_authkit_bench::{Table, measure};
use mcp_authkit_core::FlowRequest;
use mcp_authkit_providers::server::OAuthProvider;
use mcp_authkit_providers::standard::StandardOAuthClient;
use mcp_authkit_store_memory::MemoryStore;

fn provider(store: Arc<MemoryStore>) -> OAuthProvider {
    let client = StandardOAuthClient::builder(
        "bench",
        "https://as.invalid/authorize",
        "https://as.invalid/token",
    )
    .build()
    .unwrap();
    OAuthProvider::builder("github", "https://mcp.invalid/oauth/github")
        .client(client)
        .store(store)
        .trust_link_holder()
        .build()
        .unwrap()
}

#[tokio::main]
async fn main() {
    let n = 50_000;
    // Each run its own store and its own users, so every call starts a
    // new flow (a joined flow is a read, not a start).
    let core = provider(Arc::new(MemoryStore::new()));
    let mut next = 0usize;
    let baseline = measure("lifecycle begin_authorization (core)", n, |_| {
        next += 1;
        let subject = format!("core-{next}");
        let lifecycle = core.lifecycle().clone();
        async move {
            std::hint::black_box(
                lifecycle
                    .begin_authorization(&subject, FlowRequest::default())
                    .await
                    .unwrap(),
            );
        }
    })
    .await;
    let ours = provider(Arc::new(MemoryStore::new()));
    let mut next = 0usize;
    let begin = measure("begin_authorization (handle + binding)", n, |_| {
        next += 1;
        let subject = format!("user-{next}");
        let provider = ours.clone();
        async move {
            std::hint::black_box(provider.begin_authorization(&subject, None).await.unwrap());
        }
    })
    .await;
    let mut table = Table::new();
    table.row("memory", begin, Some(baseline));
    println!("{}", table.render());
}
