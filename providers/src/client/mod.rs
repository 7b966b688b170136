//! The client side: authenticating an MCP client to an OAuth-protected MCP
//! server.
//!
//! - [`AuthProvider`]: what a transport asks for a token and tells about
//!   `401`/`403` answers (the shape of ExMCP's `Authorization.Provider`).
//! - [`StaticProvider`]: a pre-existing bearer token, never retried.
//! - [`OAuthClientProvider`]: OAuth 2.1 as the MCP authorization
//!   specification (2025-11-25) describes it: discovery (RFC 9728, RFC 8414,
//!   OpenID Connect; the 2025-03-26 fallback for servers without resource
//!   metadata), client identity (pre-registered, Client ID Metadata
//!   Document, dynamic registration: a public client where the server
//!   offers it, registered again when the server forgets or expires it),
//!   PKCE S256, `state`, RFC 9207 `iss`, RFC 8707 `resource`, scope
//!   selection and step-up bounded whatever the scopes, refresh before
//!   expiry and on `401`, revocation at sign-out; tokens and registrations
//!   in any mcp-authkit store, so a client stays signed in across restarts.
//!   Its docs say how it authenticates at the token endpoint and what it
//!   does when a server forgets it.
//! - [`ClientCredentialsProvider`]: machine to machine, the
//!   `client_credentials` grant with a secret or a private key
//!   ([`AssertionKey`], `private_key_jwt`).
//! - [`CrossAppAccessProvider`]: enterprise-managed authorization: the
//!   user's ID token ([`IdTokenSource`]) exchanged at the identity provider
//!   for an ID-JAG, traded for an access token with `jwt-bearer`.
//! - [`UserInteraction`]: how the user signs in ([`OpenBrowser`], which
//!   starts the browser without a shell,
//!   [`PrintUrl`], [`HeadlessRedirect`], or your own), with a built-in
//!   loopback redirect listener ([`LoopbackRedirect`]).
//! - With the `rmcp` feature: `transport`, an rmcp streamable-HTTP client
//!   that uses any `AuthProvider`, and `rmcp_stores`, rmcp's own
//!   `CredentialStore`/`StateStore` on mcp-authkit stores.
//!
//! # Example: an rmcp client that signs in once and stays signed in
//!
//! ```no_run
//! # #[cfg(feature = "rmcp")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mcp_authkit_providers::client::transport::streamable_http_transport;
//! use mcp_authkit_providers::client::{ClientMetadata, OAuthClientProvider, OpenBrowser};
//! use mcp_authkit_store_memory::MemoryStore;
//! use rmcp::ServiceExt;
//!
//! let store = MemoryStore::new(); // use a persistent store in a real client
//! let provider = OAuthClientProvider::builder("https://mcp.example.com/mcp")
//!     .store(store)
//!     .client_metadata(ClientMetadata::new("Notes CLI"))
//!     .interaction(OpenBrowser)
//!     .build()?;
//! let transport = streamable_http_transport("https://mcp.example.com/mcp", provider);
//! let client = ().serve(transport).await?; // signs in on the server's first 401
//! let tools = client.list_all_tools().await?;
//! # let _ = tools;
//! # Ok(()) }
//! ```

mod assertion;
mod challenge;
mod client_credentials;
mod cross_app;
mod discovery;
mod error;
mod fetch;
mod identity;
mod interaction;
mod machine;
mod oauth;
mod oauth_provider;
mod provider;
mod records;
mod redirect;
mod registration;
#[cfg(feature = "rmcp")]
pub mod rmcp_stores;
#[cfg(feature = "rmcp")]
pub mod transport;

pub use assertion::AssertionKey;
pub use challenge::{AuthChallenge, Challenge, parse_www_authenticate};
pub use client_credentials::{
    CLIENT_CREDENTIALS_NAMESPACE, ClientCredentialsProvider, ClientCredentialsProviderBuilder,
};
pub use cross_app::{
    CROSS_APP_NAMESPACE, CrossAppAccessProvider, CrossAppAccessProviderBuilder, ID_JAG_TOKEN_TYPE,
    ID_TOKEN_TYPE, IdTokenSource, IdentityProvider, JWT_BEARER_GRANT, TOKEN_EXCHANGE_GRANT,
};
pub use discovery::{AuthorizationServerMetadata, ProtectedResourceMetadata};
pub use error::{ClientAuthError, MetadataDocument};
pub use interaction::{
    AuthorizationPrompt, HeadlessRedirect, OpenBrowser, PrintUrl, PromptOutcome, UserInteraction,
    prompt_fn,
};
pub use oauth::TokenEndpointAuthMethod;
pub use oauth_provider::{
    DEFAULT_NAMESPACE, OAuthClientProvider, OAuthClientProviderBuilder, Revocation, SignOut,
    SignedOut,
};
pub use provider::{AuthProvider, BearerToken, StaticProvider};
pub use redirect::{LoopbackRedirect, RedirectTarget};
pub use registration::{ClientMetadata, PreRegisteredClient};
