//! [`CrossAppAccessProvider`]: enterprise-managed authorization (the MCP
//! cross-app access extension): the user's enterprise identity provider
//! issues an Identity Assertion JWT Authorization Grant (ID-JAG) for the
//! MCP server's authorization server, which trades it for an access token.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use mcp_authkit_core::{ExposeSecret, OAuthErrorKind, SecretString, TokenResponse};
use url::Url;

use crate::client::discovery::AuthorizationServerMetadata;
use crate::client::error::ClientAuthError;
use crate::client::fetch::is_loopback;
use crate::client::machine::{Grant, GrantTarget, Machine, MachineBuilder};
use crate::client::oauth::token_request;
use crate::client::registration::PreRegisteredClient;
use crate::token_request::Grant as TokenGrant;

/// The default [`namespace`](CrossAppAccessProviderBuilder::namespace) of
/// its stored records.
pub const CROSS_APP_NAMESPACE: &str = "mcp-cross-app";

/// The RFC 7523 grant type that trades a JWT (here an ID-JAG) for a token.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The RFC 8693 token exchange grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of an Identity Assertion JWT Authorization Grant.
pub const ID_JAG_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id-jag";
/// The RFC 8693 token type of an OpenID Connect ID token.
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";

/// Where the user's OpenID Connect ID token comes from: the application
/// signed the user in at the enterprise identity provider (single sign-on)
/// and implements this to hand the ID token over, refreshed when needed.
///
/// ```
/// use mcp_authkit_core::SecretString;
/// use mcp_authkit_providers::client::{ClientAuthError, IdTokenSource};
///
/// /// The ID token the application's single sign-on keeps.
/// struct SingleSignOn(std::sync::Mutex<String>);
///
/// #[mcp_authkit_core::async_trait]
/// impl IdTokenSource for SingleSignOn {
///     async fn id_token(&self) -> Result<SecretString, ClientAuthError> {
///         Ok(SecretString::from(self.0.lock().unwrap().clone()))
///     }
/// }
/// ```
#[async_trait]
pub trait IdTokenSource: Send + Sync + 'static {
    /// The user's current ID token from the enterprise identity provider,
    /// issued to this application's client there (its `aud`). It is sent
    /// to that identity provider only.
    async fn id_token(&self) -> Result<SecretString, ClientAuthError>;
}

/// The enterprise identity provider: where ID tokens are exchanged for
/// ID-JAGs (RFC 8693), and this application's client there.
#[derive(Clone)]
pub struct IdentityProvider {
    issuer: String,
    token_endpoint: String,
    client: PreRegisteredClient,
}

impl IdentityProvider {
    /// The identity provider `issuer`, its token endpoint, and this
    /// application's client there (public, with a secret, or with a key;
    /// a key signs assertions addressed to `issuer`).
    pub fn new(
        issuer: impl Into<String>,
        token_endpoint: impl Into<String>,
        client: PreRegisteredClient,
    ) -> Self {
        IdentityProvider {
            issuer: issuer.into(),
            token_endpoint: token_endpoint.into(),
            client,
        }
    }
}

impl fmt::Debug for IdentityProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityProvider")
            .field("issuer", &self.issuer)
            .field("token_endpoint", &self.token_endpoint)
            .field("client", &self.client)
            .finish()
    }
}

/// Authenticates an MCP client through the user's enterprise identity
/// provider, without a browser: enterprise-managed authorization (the MCP
/// cross-app access extension, the IETF Identity Assertion Authorization
/// Grant).
///
/// On the MCP server's first `401` it discovers the authorization server
/// (as [`OAuthClientProvider`](crate::client::OAuthClientProvider) does)
/// and checks that it offers the `jwt-bearer` grant. Then, for each token:
///
/// 1. the user's ID token comes from the application's [`IdTokenSource`];
/// 2. RFC 8693 token exchange at the identity provider turns it into an
///    ID-JAG for that authorization server (`audience`: its issuer) and the
///    MCP server (`resource`);
/// 3. the RFC 7523 `jwt-bearer` grant at the authorization server trades
///    the ID-JAG for an access token, with `resource` and the scopes the
///    challenge names, the client authenticating as configured.
///
/// The token is kept in the store and renewed the same way before it
/// expires, one request at a time across replicas. Tokens belong to the
/// user whose ID token it is: give each user a provider with its own
/// [`namespace`](CrossAppAccessProviderBuilder::namespace).
///
/// ```no_run
/// use mcp_authkit_core::SecretString;
/// use mcp_authkit_providers::client::{
///     ClientAuthError, CrossAppAccessProvider, IdTokenSource, IdentityProvider,
///     PreRegisteredClient,
/// };
/// use mcp_authkit_store_memory::MemoryStore;
///
/// struct SingleSignOn;
///
/// #[mcp_authkit_core::async_trait]
/// impl IdTokenSource for SingleSignOn {
///     async fn id_token(&self) -> Result<SecretString, ClientAuthError> {
///         Ok(SecretString::from(std::env::var("ID_TOKEN").unwrap_or_default()))
///     }
/// }
///
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let provider = CrossAppAccessProvider::builder(
///     "https://mcp.example.com/mcp",
///     PreRegisteredClient::confidential("notes-agent", std::env::var("CLIENT_SECRET")?),
///     IdentityProvider::new(
///         "https://login.acme.example",
///         "https://login.acme.example/oauth2/token",
///         PreRegisteredClient::public("notes-agent-at-acme"),
///     ),
///     SingleSignOn,
/// )
/// .store(MemoryStore::new())
/// .namespace("mcp-cross-app/alice")
/// .build()?;
/// # let _ = provider;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CrossAppAccessProvider {
    machine: Arc<Machine>,
}

/// Configures a [`CrossAppAccessProvider`].
pub struct CrossAppAccessProviderBuilder {
    common: MachineBuilder,
    client: PreRegisteredClient,
    idp: IdentityProvider,
    id_tokens: Arc<dyn IdTokenSource>,
}

impl CrossAppAccessProvider {
    /// Configures a provider for the MCP server at `server_url`: `client`
    /// is this application at the MCP server's authorization server, `idp`
    /// the enterprise identity provider, `id_tokens` where the user's ID
    /// token comes from.
    pub fn builder(
        server_url: impl Into<String>,
        client: PreRegisteredClient,
        idp: IdentityProvider,
        id_tokens: impl IdTokenSource,
    ) -> CrossAppAccessProviderBuilder {
        CrossAppAccessProviderBuilder {
            common: MachineBuilder::new(server_url.into(), CROSS_APP_NAMESPACE),
            client,
            idp,
            id_tokens: Arc::new(id_tokens),
        }
    }
}

impl CrossAppAccessProviderBuilder {
    crate::client::machine::machine_builder_setters!();

    /// Checks the configuration and builds the provider. Nothing is
    /// fetched yet.
    pub fn build(self) -> Result<CrossAppAccessProvider, ClientAuthError> {
        for (what, url) in [
            ("identity provider issuer", &self.idp.issuer),
            ("identity provider token endpoint", &self.idp.token_endpoint),
        ] {
            let parsed = Url::parse(url).map_err(|e| ClientAuthError::Config {
                what,
                reason: format!("{url:?} is not a URL ({e})"),
            })?;
            let plain_http_ok = self.common.allow_insecure_http || is_loopback(&parsed);
            if parsed.scheme() != "https" && !(parsed.scheme() == "http" && plain_http_ok) {
                return Err(ClientAuthError::InsecureUrl {
                    what,
                    url: url.clone(),
                });
            }
        }
        let grant = CrossAppGrant {
            client: self.client,
            idp_metadata: AuthorizationServerMetadata::token_endpoint_only(
                &self.idp.issuer,
                &self.idp.token_endpoint,
            ),
            idp: self.idp,
            id_tokens: self.id_tokens,
        };
        let machine = self
            .common
            .build("CrossAppAccessProvider", Box::new(grant))?;
        Ok(CrossAppAccessProvider {
            machine: Arc::new(machine),
        })
    }
}

impl fmt::Debug for CrossAppAccessProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrossAppAccessProviderBuilder")
            .field("server", &self.common.server)
            .field("client", &self.client)
            .field("idp", &self.idp)
            .finish_non_exhaustive()
    }
}

/// Token exchange at the identity provider, then `jwt-bearer` at the MCP
/// server's authorization server.
struct CrossAppGrant {
    client: PreRegisteredClient,
    idp: IdentityProvider,
    /// What is known of the identity provider: its issuer and token
    /// endpoint (how its client authenticates).
    idp_metadata: AuthorizationServerMetadata,
    id_tokens: Arc<dyn IdTokenSource>,
}

impl CrossAppGrant {
    /// RFC 8693: the ID token for an ID-JAG addressed to `target`.
    async fn id_jag(
        &self,
        target: &GrantTarget<'_>,
        scopes: &[String],
    ) -> Result<SecretString, ClientAuthError> {
        const WHAT: &str = "exchanging the ID token for an ID-JAG at the identity provider";
        let id_token = self.id_tokens.id_token().await?;
        let credentials = self.idp.client.credentials(&self.idp_metadata);
        let mut request = token_request(
            target.fetcher,
            &self.idp_metadata,
            WHAT,
            &credentials,
            target.now,
        );
        request.scopes = scopes;
        request.extra.push(("resource", target.resource.to_owned()));
        let answer = request
            .send(TokenGrant::TokenExchange {
                subject_token: &id_token,
                subject_token_type: ID_TOKEN_TYPE,
                requested_token_type: ID_JAG_TOKEN_TYPE,
                audience: &target.metadata.issuer,
            })
            .await
            .map_err(ClientAuthError::IdentityProvider)?;
        issued_id_jag(answer).map_err(|reason| {
            ClientAuthError::IdentityProvider(mcp_authkit_core::OAuthError::new(
                OAuthErrorKind::Protocol,
                format!("{WHAT}: {reason}"),
            ))
        })
    }
}

/// The ID-JAG of a token exchange response (RFC 8693 section 2.2.1): its
/// `issued_token_type` must say so; `token_type` is `N_A`.
fn issued_id_jag(answer: TokenResponse) -> Result<SecretString, String> {
    let issued = answer
        .extra
        .get("issued_token_type")
        .map(|t| t.expose_secret().to_owned());
    if issued.as_deref() != Some(ID_JAG_TOKEN_TYPE) {
        return Err(format!(
            "the identity provider issued {}, not an ID-JAG",
            issued.map_or("no issued_token_type".to_owned(), |t| {
                crate::client::error::cap(&t)
            })
        ));
    }
    Ok(answer.access_token)
}

#[async_trait]
impl Grant for CrossAppGrant {
    fn grant_type(&self) -> &'static str {
        JWT_BEARER_GRANT
    }

    async fn request(
        &self,
        target: &GrantTarget<'_>,
        scopes: &[String],
    ) -> Result<TokenResponse, ClientAuthError> {
        let jag = self.id_jag(target, scopes).await?;
        let credentials = self.client.credentials(target.metadata);
        target
            .request_token(
                "trading the ID-JAG for a token (jwt-bearer)",
                &credentials,
                scopes,
                TokenGrant::JwtBearer(&jag),
            )
            .await
    }
}

crate::client::machine::machine_provider!(CrossAppAccessProvider);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_id_jag_is_accepted_from_the_exchange() {
        let answer = |issued: Option<&str>| {
            let mut response = TokenResponse::new("a.b.c");
            response.token_type = "N_A".to_owned();
            if let Some(issued) = issued {
                response.extra.insert("issued_token_type", issued);
            }
            response
        };
        let jag = issued_id_jag(answer(Some(ID_JAG_TOKEN_TYPE))).unwrap();
        assert_eq!(jag.expose_secret(), "a.b.c");
        let access = issued_id_jag(answer(Some(
            "urn:ietf:params:oauth:token-type:access_token",
        )))
        .unwrap_err();
        assert!(access.contains("not an ID-JAG"), "{access}");
        assert!(!access.contains("a.b.c"));
        assert!(issued_id_jag(answer(None)).is_err());
    }
}
