//! [`CrossAppAccessProvider`]: enterprise-managed authorization (the MCP
//! cross-app access extension): the user's enterprise identity provider
//! issues an Identity Assertion JWT Authorization Grant (ID-JAG) for the
//! MCP server's authorization server, which trades it for an access token.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use mcp_authkit_core::{ExposeSecret, OAuthErrorKind, SecretString, TokenKey, TokenResponse};
use serde_json::Value;
use url::Url;

use crate::client::challenge::AuthChallenge;
use crate::client::discovery::AuthorizationServerMetadata;
use crate::client::error::ClientAuthError;
use crate::client::fetch::is_loopback;
use crate::client::machine::{Grant, GrantTarget, Machine, MachineBuilder};
use crate::client::oauth::{error_answer, post_form, token_answer};
use crate::client::provider::{AuthProvider, BearerToken};
use crate::client::registration::PreRegisteredClient;

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

    /// The MCP server's URL.
    pub fn server_url(&self) -> &str {
        self.machine.server_url()
    }

    /// The authorization server in use, once discovered (or read back).
    pub fn issuer(&self) -> Option<String> {
        self.machine.issuer()
    }

    /// The resource tokens are requested for, once discovered.
    pub fn resource(&self) -> Option<String> {
        self.machine.resource()
    }

    /// The key the token is stored under, once discovered.
    pub fn token_key(&self) -> Option<TokenKey> {
        self.machine.token_key()
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

impl fmt::Debug for CrossAppAccessProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CrossAppAccessProvider")
            .field(&self.machine)
            .finish()
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
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT.to_owned()),
            ("requested_token_type", ID_JAG_TOKEN_TYPE.to_owned()),
            ("subject_token", id_token.expose_secret().to_owned()),
            ("subject_token_type", ID_TOKEN_TYPE.to_owned()),
            ("audience", target.metadata.issuer.clone()),
            ("resource", target.resource.to_owned()),
        ];
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        let (status, body) = post_form(
            target.fetcher,
            &self.idp.issuer,
            WHAT,
            &self.idp.token_endpoint,
            &credentials,
            form,
            target.now,
        )
        .await
        .map_err(ClientAuthError::IdentityProvider)?;
        if !(200..300).contains(&status) {
            return Err(ClientAuthError::IdentityProvider(error_answer(
                WHAT, status, &body,
            )));
        }
        issued_id_jag(&body).map_err(|reason| {
            ClientAuthError::IdentityProvider(
                mcp_authkit_core::OAuthError::new(
                    OAuthErrorKind::Protocol,
                    format!("{WHAT}: {reason}"),
                )
                .with_status(status),
            )
        })
    }
}

/// The ID-JAG of a token exchange response (RFC 8693 section 2.2.1): its
/// `issued_token_type` must say so; `token_type` is `N_A`.
fn issued_id_jag(body: &[u8]) -> Result<SecretString, String> {
    let answer: Value =
        serde_json::from_slice(body).map_err(|_| "the answer is not JSON".to_owned())?;
    let issued = answer.get("issued_token_type").and_then(Value::as_str);
    if issued != Some(ID_JAG_TOKEN_TYPE) {
        return Err(format!(
            "the identity provider issued {}, not an ID-JAG",
            issued.map_or("no issued_token_type".to_owned(), crate::client::error::cap)
        ));
    }
    match answer.get("access_token").and_then(Value::as_str) {
        Some(jag) if !jag.is_empty() => Ok(SecretString::from(jag.to_owned())),
        _ => Err("the answer has no access_token (the ID-JAG)".to_owned()),
    }
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
        const WHAT: &str = "trading the ID-JAG for a token (jwt-bearer)";
        let jag = self.id_jag(target, scopes).await?;
        let credentials = self.client.credentials(target.metadata);
        let mut form = vec![
            ("grant_type", JWT_BEARER_GRANT.to_owned()),
            ("assertion", jag.expose_secret().to_owned()),
        ];
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        form.push(("resource", target.resource.to_owned()));
        let (status, body) = post_form(
            target.fetcher,
            &target.metadata.issuer,
            WHAT,
            &target.metadata.token_endpoint,
            &credentials,
            form,
            target.now,
        )
        .await?;
        Ok(token_answer(WHAT, status, &body)?)
    }
}

#[async_trait]
impl AuthProvider for CrossAppAccessProvider {
    async fn token(&self) -> Result<Option<BearerToken>, ClientAuthError> {
        self.machine.token().await
    }

    async fn handle_unauthorized(
        &self,
        challenge: &AuthChallenge,
    ) -> Result<BearerToken, ClientAuthError> {
        self.machine.handle_unauthorized(challenge).await
    }

    async fn handle_forbidden(
        &self,
        challenge: &AuthChallenge,
    ) -> Result<BearerToken, ClientAuthError> {
        self.machine.handle_forbidden(challenge).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_id_jag_is_accepted_from_the_exchange() {
        let jag = issued_id_jag(
            br#"{"access_token":"a.b.c","issued_token_type":"urn:ietf:params:oauth:token-type:id-jag","token_type":"N_A"}"#,
        )
        .unwrap();
        assert_eq!(jag.expose_secret(), "a.b.c");
        let access = issued_id_jag(
            br#"{"access_token":"x","issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#,
        )
        .unwrap_err();
        assert!(access.contains("not an ID-JAG"), "{access}");
        assert!(!access.contains("\"x\""));
        assert!(
            issued_id_jag(br#"{"issued_token_type":"urn:ietf:params:oauth:token-type:id-jag"}"#)
                .is_err()
        );
        assert!(issued_id_jag(b"<html>").is_err());
    }
}
