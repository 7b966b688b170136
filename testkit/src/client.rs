//! Clients: how they are registered and how they authenticate.

use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use serde_json::Value;
use url::{Host, Url};

use crate::error::Error;
use crate::http::absolute_uri;
use crate::keys::PublicKey;
use crate::secret::{REDACTED, random_string};

/// How a client authenticates at the token endpoint
/// (`token_endpoint_auth_method`, RFC 7591 section 2).
///
/// The server is strict: a client must use exactly the method it registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientAuthMethod {
    /// A public client: `client_id` in the body, no secret.
    None,
    /// HTTP Basic with the client id and secret.
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// An RFC 7523 client assertion: a JWT the client signs with its
    /// private key, checked against the public key it registered.
    PrivateKeyJwt,
}

impl ClientAuthMethod {
    /// The RFC 7591 name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::None => "none",
            ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
            ClientAuthMethod::ClientSecretPost => "client_secret_post",
            ClientAuthMethod::PrivateKeyJwt => "private_key_jwt",
        }
    }

    /// The method with this RFC 7591 name, if the server supports it.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "none" => Some(ClientAuthMethod::None),
            "client_secret_basic" => Some(ClientAuthMethod::ClientSecretBasic),
            "client_secret_post" => Some(ClientAuthMethod::ClientSecretPost),
            "private_key_jwt" => Some(ClientAuthMethod::PrivateKeyJwt),
            _ => None,
        }
    }

    /// Whether clients using it have a secret.
    pub fn has_secret(self) -> bool {
        matches!(
            self,
            ClientAuthMethod::ClientSecretBasic | ClientAuthMethod::ClientSecretPost
        )
    }

    /// Whether clients using it prove who they are (a secret or a key), as
    /// the grants without a user require.
    pub fn is_confidential(self) -> bool {
        self != ClientAuthMethod::None
    }
}

impl fmt::Display for ClientAuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a client came to be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientSource {
    /// Through [`register_client`](crate::AuthServerHandle::register_client)
    /// or the builder.
    Preregistered,
    /// Through dynamic client registration (RFC 7591).
    Dynamic,
    /// Its client id is a URL whose Client ID Metadata Document was fetched.
    MetadataDocument,
}

/// A client to register before a test runs; see
/// [`register_client`](crate::AuthServerHandle::register_client).
#[derive(Clone)]
pub struct ClientRegistration {
    pub(crate) client_id: Option<String>,
    pub(crate) client_secret: Option<String>,
    pub(crate) redirect_uris: Vec<String>,
    pub(crate) auth_method: ClientAuthMethod,
    pub(crate) name: Option<String>,
    pub(crate) jwk: Option<Value>,
    pub(crate) id_jag_client_id: Option<String>,
    pub(crate) service: bool,
}

impl ClientRegistration {
    /// A public client (auth method `none`) with one redirect URI.
    pub fn public(redirect_uri: impl Into<String>) -> Self {
        ClientRegistration {
            client_id: None,
            client_secret: None,
            redirect_uris: vec![redirect_uri.into()],
            auth_method: ClientAuthMethod::None,
            name: None,
            jwk: None,
            id_jag_client_id: None,
            service: false,
        }
    }

    /// A client without redirect URIs that uses only the grants without a
    /// user (`client_credentials`, `jwt-bearer`, token exchange),
    /// authenticating with `method` (for `private_key_jwt`, give its key
    /// with [`jwk`](Self::jwk)). It cannot use `/authorize`.
    pub fn service(method: ClientAuthMethod) -> Self {
        ClientRegistration {
            redirect_uris: Vec::new(),
            auth_method: method,
            service: true,
            ..Self::public("")
        }
    }

    /// A service client that authenticates with an RFC 7523 client
    /// assertion signed by the private half of `public_jwk`
    /// (`private_key_jwt`): see [`SigningKey`](crate::SigningKey).
    pub fn private_key_jwt(public_jwk: Value) -> Self {
        Self::service(ClientAuthMethod::PrivateKeyJwt).jwk(public_jwk)
    }

    /// The public key (a JWK with `alg`) its `private_key_jwt` assertions
    /// must verify with.
    pub fn jwk(mut self, public_jwk: Value) -> Self {
        self.jwk = Some(public_jwk);
        self
    }

    /// As an enterprise identity provider's client: the `client_id` the
    /// ID-JAGs issued to it name, its id at the resource's authorization
    /// server (default: its own id here).
    pub fn id_jag_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.id_jag_client_id = Some(client_id.into());
        self
    }

    /// A confidential client (`client_secret_basic`) with one redirect URI.
    pub fn confidential(redirect_uri: impl Into<String>) -> Self {
        ClientRegistration {
            auth_method: ClientAuthMethod::ClientSecretBasic,
            ..Self::public(redirect_uri)
        }
    }

    /// Another redirect URI.
    pub fn redirect_uri(mut self, redirect_uri: impl Into<String>) -> Self {
        self.redirect_uris.push(redirect_uri.into());
        self
    }

    /// How it authenticates at the token endpoint.
    pub fn auth_method(mut self, method: ClientAuthMethod) -> Self {
        self.auth_method = method;
        self
    }

    /// A fixed client id (default: a random one).
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// A fixed secret (default: a random one, for methods that use one).
    pub fn client_secret(mut self, client_secret: impl Into<String>) -> Self {
        self.client_secret = Some(client_secret.into());
        self
    }

    /// A display name, shown on the consent page.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub(crate) fn into_client(self, source: ClientSource) -> Result<RegisteredClient, Error> {
        if self.redirect_uris.is_empty() && !self.service {
            return Err(Error::InvalidInput {
                what: "client registration",
                reason: "a client needs at least one redirect URI".to_owned(),
            });
        }
        for uri in &self.redirect_uris {
            absolute_uri(uri).map_err(|reason| Error::InvalidInput {
                what: "redirect uri",
                reason,
            })?;
        }
        let client_secret = if self.auth_method.has_secret() {
            Some(self.client_secret.unwrap_or_else(|| random_string(32)))
        } else {
            None
        };
        let public_key = match (self.auth_method, &self.jwk) {
            (ClientAuthMethod::PrivateKeyJwt, Some(jwk)) => Some(PublicKey::from_jwk(jwk)?),
            (ClientAuthMethod::PrivateKeyJwt, None) => {
                return Err(Error::InvalidInput {
                    what: "client registration",
                    reason: "a private_key_jwt client needs its public key: call jwk(..)"
                        .to_owned(),
                });
            }
            _ => None,
        };
        Ok(RegisteredClient {
            client_id: self
                .client_id
                .unwrap_or_else(|| format!("client-{}", random_string(12))),
            client_secret,
            redirect_uris: self.redirect_uris,
            auth_method: self.auth_method,
            name: self.name,
            source,
            secret_expires_at: None,
            public_key,
            id_jag_client_id: self.id_jag_client_id,
        })
    }
}

impl fmt::Debug for ClientRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRegistration")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| REDACTED),
            )
            .field("redirect_uris", &self.redirect_uris)
            .field("auth_method", &self.auth_method)
            .field("name", &self.name)
            .field("jwk", &self.jwk)
            .field("id_jag_client_id", &self.id_jag_client_id)
            .finish()
    }
}

/// A client the server knows.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegisteredClient {
    /// Its id.
    pub client_id: String,
    /// Its secret, for methods that use one. Redacted in Debug output.
    pub client_secret: Option<String>,
    /// Its redirect URIs; authorization requests must use one exactly.
    pub redirect_uris: Vec<String>,
    /// How it authenticates at the token endpoint.
    pub auth_method: ClientAuthMethod,
    /// Its display name.
    pub name: Option<String>,
    /// How it was registered.
    pub source: ClientSource,
    /// When its secret stops working (`client_secret_expires_at`); `None`
    /// never.
    pub secret_expires_at: Option<SystemTime>,
    /// The key its `private_key_jwt` assertions must verify with.
    pub public_key: Option<PublicKey>,
    /// As an identity provider's client: the `client_id` of the ID-JAGs it
    /// gets (`None`: its own).
    pub id_jag_client_id: Option<String>,
}

impl RegisteredClient {
    /// The first redirect URI.
    ///
    /// # Panics
    ///
    /// For a [service](ClientRegistration::service) client, which has none.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uris[0]
    }

    /// Whether its secret has expired at `now`.
    pub fn secret_expired_at(&self, now: SystemTime) -> bool {
        self.secret_expires_at.is_some_and(|at| at <= now)
    }

    /// The registered redirect URI `requested` matches, if any.
    pub(crate) fn matching_redirect(
        &self,
        requested: &str,
        loopback_any_port: bool,
    ) -> Option<&str> {
        self.redirect_uris
            .iter()
            .find(|registered| redirect_matches(registered, requested, loopback_any_port))
            .map(String::as_str)
    }
}

impl fmt::Debug for RegisteredClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisteredClient")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| REDACTED),
            )
            .field("redirect_uris", &self.redirect_uris)
            .field("auth_method", &self.auth_method)
            .field("name", &self.name)
            .field("source", &self.source)
            .field("secret_expires_at", &self.secret_expires_at)
            .field("public_key", &self.public_key)
            .field("id_jag_client_id", &self.id_jag_client_id)
            .finish()
    }
}

/// Exact string comparison (OAuth 2.1 section 2.3.1), or, when allowed, a
/// loopback IP literal redirect that differs only in its port (RFC 8252
/// section 7.3).
fn redirect_matches(registered: &str, requested: &str, loopback_any_port: bool) -> bool {
    if registered == requested {
        return true;
    }
    if !loopback_any_port {
        return false;
    }
    let (Ok(registered), Ok(requested)) = (Url::parse(registered), Url::parse(requested)) else {
        return false;
    };
    let is_loopback_ip = |url: &Url| match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        _ => false,
    };
    registered.scheme() == "http"
        && requested.scheme() == "http"
        && is_loopback_ip(&registered)
        && registered.host() == requested.host()
        && registered.path() == requested.path()
        && registered.query() == requested.query()
        && registered.fragment().is_none()
        && requested.fragment().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_match_is_exact_unless_loopback_ports_are_free() {
        let reg = "http://127.0.0.1:4000/cb";
        assert!(redirect_matches(reg, reg, false));
        assert!(!redirect_matches(reg, "http://127.0.0.1:4000/cb/", false));
        assert!(!redirect_matches(reg, "http://127.0.0.1:5000/cb", false));
        assert!(redirect_matches(reg, "http://127.0.0.1:5000/cb", true));
        assert!(!redirect_matches(reg, "http://127.0.0.1:5000/other", true));
        assert!(!redirect_matches(
            "http://localhost:4000/cb",
            "http://localhost:5000/cb",
            true
        ));
        assert!(!redirect_matches(
            "https://app.example/cb",
            "https://app.example:444/cb",
            true
        ));
    }

    #[test]
    fn debug_redacts_the_client_secret() {
        let client = ClientRegistration::confidential("http://127.0.0.1:1/cb")
            .client_secret("hunter2-secret")
            .into_client(ClientSource::Preregistered)
            .unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains(REDACTED), "{shown}");
    }
}
