//! The OAuth exchange with a discovered authorization server: core's
//! [`OAuthClient`] for one (authorization server, client, resource).

use std::sync::Arc;

use async_trait::async_trait;
use mcp_authkit_core::{
    AuthorizationRequest, Clock, OAuthClient, OAuthError, OAuthErrorKind, PendingFlow,
    SecretString, TokenResponse,
};
use url::Url;

use crate::client::discovery::AuthorizationServerMetadata;
use crate::client::fetch::Fetcher;
use crate::client::identity::{FLOW_CLIENT_ID, Identity};
pub(crate) use crate::token_request::ClientCredentials;
pub use crate::token_request::TokenEndpointAuthMethod;
use crate::token_request::{Grant, TokenRequest};

impl TokenEndpointAuthMethod {
    /// The method to use with a secret (or without one) at a server with
    /// `metadata`: `none` without a secret; with one, `client_secret_basic`
    /// unless only `client_secret_post` is advertised.
    pub(crate) fn choose(
        metadata: &AuthorizationServerMetadata,
        has_secret: bool,
    ) -> TokenEndpointAuthMethod {
        if !has_secret {
            TokenEndpointAuthMethod::None
        } else if !metadata.supports_auth_method("client_secret_basic")
            && metadata.supports_auth_method("client_secret_post")
        {
            TokenEndpointAuthMethod::ClientSecretPost
        } else {
            TokenEndpointAuthMethod::ClientSecretBasic
        }
    }
}

/// A token request to the authorization server of `metadata` as
/// `credentials`, through the shared token-request layer.
pub(crate) fn token_request<'a>(
    fetcher: &'a Fetcher,
    metadata: &'a AuthorizationServerMetadata,
    what: &'a str,
    credentials: &'a ClientCredentials,
    now: mcp_authkit_core::Timestamp,
) -> TokenRequest<'a> {
    TokenRequest {
        what,
        http: fetcher.http(),
        endpoint: &metadata.token_endpoint,
        issuer: &metadata.issuer,
        client: credentials,
        scopes: &[],
        extra: Vec::new(),
        now,
    }
}

/// The access token of an MCP server must be a bearer token: a DPoP or
/// MAC token sent as a bearer would not work.
pub(crate) fn require_bearer(
    what: &str,
    response: TokenResponse,
) -> Result<TokenResponse, OAuthError> {
    if response.token_type.eq_ignore_ascii_case("bearer") {
        Ok(response)
    } else {
        Err(OAuthError::new(
            OAuthErrorKind::Protocol,
            format!(
                "{what}: the token type is {:?}; only Bearer tokens are supported",
                crate::client::error::cap(&response.token_type)
            ),
        ))
    }
}

/// The OAuth client for one authorization server, client and resource.
pub(crate) struct ServerClient {
    pub(crate) fetcher: Fetcher,
    pub(crate) metadata: Arc<AuthorizationServerMetadata>,
    pub(crate) identity: Arc<Identity>,
    /// The RFC 8707 `resource` of every authorize, token and refresh request.
    pub(crate) resource: String,
    pub(crate) clock: Arc<dyn Clock>,
}

impl ServerClient {
    async fn token_request(
        &self,
        what: &'static str,
        credentials: &ClientCredentials,
        grant: Grant<'_>,
    ) -> Result<TokenResponse, OAuthError> {
        let mut request = token_request(
            &self.fetcher,
            &self.metadata,
            what,
            credentials,
            self.clock.now(),
        );
        request.extra.push(("resource", self.resource.clone()));
        require_bearer(what, request.send(grant).await?)
    }

    /// Revokes `token` (RFC 7009) at `endpoint` with the client's current
    /// credentials.
    pub(crate) async fn revoke(
        &self,
        endpoint: &str,
        token: &SecretString,
        hint: &'static str,
    ) -> Result<(), OAuthError> {
        let credentials = self.identity.for_refresh().await?;
        let mut request = token_request(
            &self.fetcher,
            &self.metadata,
            "revoking the token",
            &credentials,
            self.clock.now(),
        );
        request.endpoint = endpoint;
        request.revoke(token, hint).await
    }
}

#[async_trait]
impl OAuthClient for ServerClient {
    fn authorization_url(&self, request: &AuthorizationRequest<'_>) -> Result<Url, OAuthError> {
        // The client the flow was started for (a public identifier).
        let client_id = request
            .attributes
            .get(FLOW_CLIENT_ID)
            .cloned()
            .or_else(|| self.identity.client_id())
            .ok_or_else(|| {
                OAuthError::new(
                    OAuthErrorKind::InvalidClient,
                    "no client identity is known for this authorization server; sign in again",
                )
            })?;
        let mut url = Url::parse(&self.metadata.authorization_endpoint).map_err(|e| {
            OAuthError::new(
                OAuthErrorKind::Protocol,
                format!("the authorization endpoint is not a URL ({e})"),
            )
        })?;
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &client_id)
                .append_pair("redirect_uri", request.redirect_uri)
                .append_pair("state", request.state.as_str())
                .append_pair("code_challenge", request.pkce_challenge)
                .append_pair("code_challenge_method", "S256")
                .append_pair("resource", &self.resource);
            if !request.scopes.is_empty() {
                query.append_pair("scope", &request.scopes.join(" "));
            }
        }
        Ok(url)
    }

    async fn exchange_code(
        &self,
        code: &SecretString,
        flow: &PendingFlow,
    ) -> Result<TokenResponse, OAuthError> {
        let client_id = flow.attributes.get(FLOW_CLIENT_ID).map(String::as_str);
        let credentials = self.identity.for_code_exchange(client_id).await?;
        self.token_request(
            "exchanging the authorization code",
            &credentials,
            Grant::AuthorizationCode {
                code,
                redirect_uri: &flow.redirect_uri,
                verifier: &flow.pkce_verifier,
            },
        )
        .await
    }

    async fn refresh(
        &self,
        refresh_token: &SecretString,
        _scopes: &[String],
    ) -> Result<TokenResponse, OAuthError> {
        // No `scope`: the refreshed grant keeps what was granted, and a
        // narrowed grant is not widened by asking (that needs the user).
        let credentials = self.identity.for_refresh().await?;
        self.token_request(
            "refreshing the token",
            &credentials,
            Grant::RefreshToken(refresh_token),
        )
        .await
    }

    fn supports_refresh(&self) -> bool {
        // A dynamic registration is looked up when the refresh happens.
        true
    }

    fn check_issuer(&self, iss: Option<&str>) -> Result<(), OAuthError> {
        match iss {
            Some(iss) if iss == self.metadata.issuer => Ok(()),
            Some(iss) => Err(OAuthError::new(
                OAuthErrorKind::IssuerMismatch,
                format!(
                    "the authorization response comes from issuer {:?}, not from {} (RFC 9207): \
                     a possible mix-up attack, the code was not used",
                    crate::client::error::cap(iss),
                    self.metadata.issuer
                ),
            )),
            None if self.metadata.requires_iss() => Err(OAuthError::new(
                OAuthErrorKind::IssuerMismatch,
                format!(
                    "the authorization response has no iss parameter, but {} promises one \
                     (RFC 9207): the code was not used",
                    self.metadata.issuer
                ),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn auth_method_choice() {
        let metadata = |methods: Option<Vec<&str>>| -> AuthorizationServerMetadata {
            serde_json::from_value(json!({
                "issuer": "https://as", "authorization_endpoint": "https://as/a",
                "token_endpoint": "https://as/t",
                "token_endpoint_auth_methods_supported": methods,
            }))
            .unwrap()
        };
        let choose = |methods: Option<Vec<&str>>, secret| {
            TokenEndpointAuthMethod::choose(&metadata(methods), secret).as_str()
        };
        assert_eq!(choose(None, true), "client_secret_basic");
        assert_eq!(
            choose(Some(vec!["client_secret_post"]), true),
            "client_secret_post"
        );
        assert_eq!(
            choose(
                Some(vec!["client_secret_post", "client_secret_basic"]),
                true
            ),
            "client_secret_basic"
        );
        assert_eq!(choose(None, false), "none");

        // What a dynamic registration asks for: public when advertised.
        let requested = |methods| {
            crate::client::registration::requested_auth_method(&metadata(methods)).as_str()
        };
        // The TypeScript SDK's servers.
        assert_eq!(requested(Some(vec!["client_secret_post", "none"])), "none");
        // The Python SDK's.
        assert_eq!(
            requested(Some(vec!["client_secret_post", "client_secret_basic"])),
            "client_secret_basic"
        );
        assert_eq!(
            requested(Some(vec!["client_secret_post"])),
            "client_secret_post"
        );
        // RFC 8414: nothing advertised means client_secret_basic.
        assert_eq!(requested(None), "client_secret_basic");
    }
}
