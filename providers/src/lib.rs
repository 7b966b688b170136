//! # mcp-authkit-providers
//!
//! The OAuth lifecycles on top of mcp-authkit's stores, for both sides of MCP:
//!
//! - server side: tools gated behind a third party's OAuth through URL-mode
//!   elicitation, with connect and callback routes;
//! - client side: `AuthProvider`s that authenticate an MCP client to an
//!   OAuth-protected MCP server: a user in a browser (OAuth 2.1), an agent
//!   on its own (`client_credentials`), or a user through the company's
//!   identity provider (cross-app access).
//!
//! # Example
//!
//! Both sides over one SQLite-or-Redis-or-memory store (memory here):
//!
//! ```
//! use mcp_authkit_providers::client::OAuthClientProvider;
//! use mcp_authkit_providers::server::OAuthProvider;
//! use mcp_authkit_providers::standard::StandardOAuthClient;
//! use mcp_authkit_store_memory::MemoryStore;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Server side: an MCP server's GitHub integration. Tools then start with
//! // `let token = github.require_token(&ctx).await?;` (feature `rmcp`).
//! let github = OAuthProvider::builder("github", "https://mcp.example.com/oauth/github")
//!     .client(StandardOAuthClient::github("client-id", "client-secret").build()?)
//!     .scopes(["repo"])
//!     .store(std::sync::Arc::new(MemoryStore::new()))
//!     // Local single-user setups only: see `browser_user` for servers.
//!     .trust_link_holder()
//!     .build()?;
//! let routes: axum::Router = github.router(); // connect + callback
//! # let _ = routes;
//!
//! // Client side: an MCP client signing in to an OAuth-protected server on
//! // its first 401 (discovery, registration, PKCE, refresh, step-up).
//! let auth = OAuthClientProvider::builder("https://mcp.example.com/mcp")
//!     .store(MemoryStore::new())
//!     .build()?;
//! # let _ = auth;
//! # Ok(()) }
//! ```
//!
//! [`http`] adapts a `reqwest` client to the `oauth2` crate, so every HTTP
//! request of this crate goes through one client the application can
//! configure (TLS roots, proxies, timeouts), with redirects disabled. Token
//! requests of both sides share one layer on the `oauth2` crate: one
//! transport (no redirect, 1 MiB), one reading of the answer, one
//! classification of failures.

#![warn(missing_docs)]

pub mod client;
pub mod http;
pub mod server;
pub mod standard;
mod token_request;
#[cfg(feature = "fuzzing")]
pub use token_request::fuzzing as token_fuzzing;
