//! # mcp-authkit-providers
//!
//! The OAuth lifecycles on top of mcp-authkit's stores, for both sides of MCP:
//!
//! - server side: tools gated behind a third party's OAuth through URL-mode
//!   elicitation, with connect and callback routes;
//! - client side: `AuthProvider`s that authenticate an MCP client to an
//!   OAuth-protected MCP server.
//!
//! [`http`] adapts a `reqwest` client to the `oauth2` crate, so every HTTP
//! request of this crate goes through one client the application can
//! configure (TLS roots, proxies, timeouts), with redirects disabled.

#![warn(missing_docs)]

pub mod client;
pub mod http;
pub mod server;
pub mod standard;
