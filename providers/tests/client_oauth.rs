//! The client side over real HTTP on loopback: the test authorization
//! server, an rmcp MCP server behind a protected resource, and providers
//! whose tokens live in a store that outlives them.
//!
//! Run: `cargo test -p mcp-authkit-providers --all-features --test client_oauth`

#[path = "client_oauth/support.rs"]
mod support;

#[path = "client_oauth/client_credentials.rs"]
mod client_credentials;
#[path = "client_oauth/cross_app.rs"]
mod cross_app;
#[path = "client_oauth/discovery.rs"]
mod discovery;
#[path = "client_oauth/flow.rs"]
mod flow;
#[path = "client_oauth/healing.rs"]
mod healing;
#[path = "client_oauth/legacy.rs"]
mod legacy;
#[path = "client_oauth/refresh.rs"]
mod refresh;
#[path = "client_oauth/registration.rs"]
mod registration;
#[path = "client_oauth/replicas.rs"]
mod replicas;
#[cfg(feature = "rmcp")]
#[path = "client_oauth/rmcp_stores.rs"]
mod rmcp_stores;
#[cfg(feature = "rmcp")]
#[path = "client_oauth/rmcp_transport.rs"]
mod rmcp_transport;
#[path = "client_oauth/scopes.rs"]
mod scopes;
#[cfg(feature = "rmcp")]
#[path = "client_oauth/servers.rs"]
mod servers;
#[path = "client_oauth/sign_out.rs"]
mod sign_out;
#[path = "client_oauth/token_layer.rs"]
mod token_layer;
