//! [`ClientCredentialsProvider`]: machine-to-machine authentication with
//! the OAuth `client_credentials` grant (the MCP client-credentials
//! extension).

use std::fmt;

use async_trait::async_trait;

use crate::client::error::ClientAuthError;
use crate::client::machine::{Grant, GrantTarget, Machine, MachineBuilder};
use crate::client::oauth::TokenEndpointAuthMethod;
use crate::client::registration::PreRegisteredClient;
use crate::token_request::Grant as TokenGrant;

/// The prefix of the default
/// [`namespace`](ClientCredentialsProviderBuilder::namespace) of its stored
/// records: `mcp-client-credentials/{client_id}`, so that two clients
/// sharing a store never share a token.
pub const CLIENT_CREDENTIALS_NAMESPACE: &str = "mcp-client-credentials";

/// Authenticates an MCP client that acts for itself, with no user at the
/// keyboard (agents, services, CI): the OAuth `client_credentials` grant,
/// as the MCP client-credentials extension describes it.
///
/// The client is registered at the MCP server's authorization server out
/// of band, and authenticates with a secret (`client_secret_basic`, or
/// `client_secret_post` when the server offers only that or it is set with
/// [`PreRegisteredClient::auth_method`]) or with a private key
/// ([`PreRegisteredClient::private_key_jwt`]: an RFC 7523 client assertion
/// addressed to the server's issuer, valid for a minute, never reused).
///
/// On the MCP server's first `401` it discovers the authorization server
/// (Protected Resource Metadata, then RFC 8414 / OpenID Connect metadata;
/// the 2025-03-26 fallback for servers without the former), checks that it
/// offers `client_credentials` (`grant_types_supported`), and asks for a
/// token with `resource` (RFC 8707) and the scopes the challenge names
/// (else the resource's `scopes_supported`, plus any configured with
/// [`scopes`](ClientCredentialsProviderBuilder::scopes)). The token is
/// kept in the store, served until shortly before it expires, then renewed
/// with the same grant: one request at a time in the process and, through
/// the store's lease, across every replica sharing the store. A `403
/// insufficient_scope` asks for a token with the added scopes (a bounded
/// number of times).
///
/// | record | provider | subject |
/// |---|---|---|
/// | the token | `{namespace}:{issuer}` | the resource |
/// | what discovery found | `{namespace}/discovery` | the MCP server URL |
///
/// The namespace is `mcp-client-credentials/{client_id}` unless set.
///
/// ```no_run
/// use mcp_authkit_providers::client::{
///     AssertionKey, ClientCredentialsProvider, PreRegisteredClient,
/// };
/// use mcp_authkit_store_memory::MemoryStore;
///
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// // A shared secret...
/// let with_secret = ClientCredentialsProvider::builder(
///     "https://mcp.example.com/mcp",
///     PreRegisteredClient::confidential("nightly-report", std::env::var("CLIENT_SECRET")?),
/// )
/// .store(MemoryStore::new())
/// .build()?;
///
/// // ...or a private key (private_key_jwt).
/// let pem = std::fs::read_to_string("/etc/agent/key.pem")?;
/// let with_key = ClientCredentialsProvider::builder(
///     "https://mcp.example.com/mcp",
///     PreRegisteredClient::private_key_jwt("nightly-report", AssertionKey::from_pem("ES256", &pem)?),
/// )
/// .store(MemoryStore::new())
/// .build()?;
/// # let _ = (with_secret, with_key);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientCredentialsProvider {
    machine: std::sync::Arc<Machine>,
}

/// Configures a [`ClientCredentialsProvider`].
pub struct ClientCredentialsProviderBuilder {
    common: MachineBuilder,
    client: PreRegisteredClient,
}

impl ClientCredentialsProvider {
    /// Configures a provider for the MCP server at `server_url`, as
    /// `client` (a confidential client: a secret or a key).
    pub fn builder(
        server_url: impl Into<String>,
        client: PreRegisteredClient,
    ) -> ClientCredentialsProviderBuilder {
        let namespace = format!("{CLIENT_CREDENTIALS_NAMESPACE}/{}", client.client_id);
        ClientCredentialsProviderBuilder {
            common: MachineBuilder::new(server_url.into(), &namespace),
            client,
        }
    }
}

impl ClientCredentialsProviderBuilder {
    crate::client::machine::machine_builder_setters!();

    /// Checks the configuration and builds the provider. Nothing is
    /// fetched yet.
    pub fn build(self) -> Result<ClientCredentialsProvider, ClientAuthError> {
        if self.client.client_secret.is_none() && self.client.key.is_none() {
            return Err(ClientAuthError::Config {
                what: "ClientCredentialsProvider",
                reason: "client_credentials needs a confidential client: give it a secret \
                         (PreRegisteredClient::confidential) or a key \
                         (PreRegisteredClient::private_key_jwt)"
                    .to_owned(),
            });
        }
        if self.client.auth_method == Some(TokenEndpointAuthMethod::None) {
            return Err(ClientAuthError::Config {
                what: "ClientCredentialsProvider",
                reason: "client_credentials needs client authentication, not `none`".to_owned(),
            });
        }
        let grant = ClientCredentialsGrant {
            client: self.client,
        };
        let machine = self
            .common
            .build("ClientCredentialsProvider", Box::new(grant))?;
        Ok(ClientCredentialsProvider {
            machine: std::sync::Arc::new(machine),
        })
    }
}

impl fmt::Debug for ClientCredentialsProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentialsProviderBuilder")
            .field("server", &self.common.server)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// `client_credentials` (RFC 6749 section 4.4).
struct ClientCredentialsGrant {
    client: PreRegisteredClient,
}

#[async_trait]
impl Grant for ClientCredentialsGrant {
    fn grant_type(&self) -> &'static str {
        "client_credentials"
    }

    async fn request(
        &self,
        target: &GrantTarget<'_>,
        scopes: &[String],
    ) -> Result<mcp_authkit_core::TokenResponse, ClientAuthError> {
        let credentials = self.client.credentials(target.metadata);
        target
            .request_token(
                "requesting a token (client_credentials)",
                &credentials,
                scopes,
                TokenGrant::ClientCredentials,
            )
            .await
    }
}

crate::client::machine::machine_provider!(ClientCredentialsProvider);
