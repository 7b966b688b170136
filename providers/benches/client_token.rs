//! The cost of a client-side provider's `token()` when it holds a valid
//! token (what an MCP transport asks before every request), beside the raw
//! store read it is built on: `OAuthClientProvider` (refreshable user
//! token) and `ClientCredentialsProvider` (machine token, renewed by the
//! same grant).
//!
//! `cargo bench -p mcp-authkit-providers --bench client_token`

use mcp_authkit_bench::{Table, measure};
use mcp_authkit_core::TokenStore;
use mcp_authkit_providers::client::{
    AuthChallenge, AuthProvider, ClientCredentialsProvider, HeadlessRedirect, OAuthClientProvider,
    PreRegisteredClient,
};
use mcp_authkit_providers::http::OAuthHttpClient;
use mcp_authkit_store_memory::MemoryStore;
use mcp_authkit_testkit::{
    ClientAuthMethod, ClientRegistration, ProtectedResource, TestAuthServer,
};

#[tokio::main]
async fn main() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.register_client(
        ClientRegistration::service(ClientAuthMethod::ClientSecretBasic)
            .client_id("bench")
            .client_secret("bench-secret"),
    )
    .unwrap();
    // Only the resource metadata is fetched: no MCP server needs to run.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mcp_url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let resource = ProtectedResource::new(&auth, &mcp_url).unwrap();
    let app = resource.metadata_router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let challenge = AuthChallenge::new(Some(&format!(
        r#"Bearer resource_metadata="{}""#,
        resource.metadata_url()
    )));

    let store = MemoryStore::new();
    let http = OAuthHttpClient::new().unwrap();
    let machine = ClientCredentialsProvider::builder(
        &mcp_url,
        PreRegisteredClient::confidential("bench", "bench-secret"),
    )
    .store(store.clone())
    .http_client(http.clone())
    .build()
    .unwrap();
    machine.handle_unauthorized(&challenge).await.unwrap();
    let user = OAuthClientProvider::builder(&mcp_url)
        .store(store.clone())
        .http_client(http.clone())
        .interaction(HeadlessRedirect::new(http.reqwest().clone()))
        .build()
        .unwrap();
    user.handle_unauthorized(&challenge).await.unwrap();

    let n = 100_000;
    let mut table = Table::new();
    for (name, provider, key) in [
        (
            "OAuthClientProvider token (valid)",
            &user as &dyn AuthProvider,
            user.token_key().unwrap(),
        ),
        (
            "ClientCredentialsProvider token (valid)",
            &machine as &dyn AuthProvider,
            machine.token_key().unwrap(),
        ),
    ] {
        let raw = measure("store get (raw)", n, |_| {
            let store = &store;
            let key = &key;
            async move {
                std::hint::black_box(TokenStore::get(store, key).await.unwrap());
            }
        })
        .await;
        let token = measure(name, n, |_| async move {
            std::hint::black_box(provider.token().await.unwrap().unwrap());
        })
        .await;
        table.row("memory", token, Some(raw));
    }
    println!("{}", table.render());
}
