//! The client's identity at an authorization server: pre-registered, a
//! Client ID Metadata Document, or dynamic client registration (RFC 7591),
//! whose result is kept in the token store and reused.

use std::fmt;

use mcp_authkit_core::{ExposeSecret, SecretString, Timestamp, TokenRecord};
use reqwest::header::ACCEPT;
use serde_json::{Value, json};
use url::Url;

use crate::client::discovery::AuthorizationServerMetadata;
use crate::client::error::{ClientAuthError, cap};
use crate::client::fetch::{BodyError, Fetcher, read_limited};
use crate::client::oauth::{ClientCredentials, TokenEndpointAuthMethod};

/// What the client says about itself: sent in dynamic client registration
/// and published in a Client ID Metadata Document.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientMetadata {
    /// Shown to the user on the consent page. Default `"MCP client"`.
    pub client_name: String,
    /// The client's home page.
    pub client_uri: Option<String>,
    /// The client's logo.
    pub logo_uri: Option<String>,
    /// A stable identifier of the client software (RFC 7591).
    pub software_id: Option<String>,
    /// The client software's version (RFC 7591).
    pub software_version: Option<String>,
}

impl Default for ClientMetadata {
    fn default() -> Self {
        ClientMetadata::new("MCP client")
    }
}

impl ClientMetadata {
    /// Metadata with this display name.
    pub fn new(client_name: impl Into<String>) -> Self {
        ClientMetadata {
            client_name: client_name.into(),
            client_uri: None,
            logo_uri: None,
            software_id: None,
            software_version: None,
        }
    }

    /// Sets the home page.
    pub fn client_uri(mut self, uri: impl Into<String>) -> Self {
        self.client_uri = Some(uri.into());
        self
    }

    /// Sets the logo.
    pub fn logo_uri(mut self, uri: impl Into<String>) -> Self {
        self.logo_uri = Some(uri.into());
        self
    }

    /// Sets the software id and version.
    pub fn software(mut self, id: impl Into<String>, version: impl Into<String>) -> Self {
        self.software_id = Some(id.into());
        self.software_version = Some(version.into());
        self
    }

    /// The Client ID Metadata Document to publish at `client_id` (an https
    /// URL) for a public client with these redirect URIs: serve it as
    /// `application/json` at exactly that URL.
    ///
    /// ```
    /// use mcp_authkit_providers::client::ClientMetadata;
    ///
    /// let doc = ClientMetadata::new("Notes CLI").metadata_document(
    ///     "https://notes.example/oauth/client.json",
    ///     &["http://127.0.0.1:8765/callback"],
    /// );
    /// assert_eq!(doc["client_id"], "https://notes.example/oauth/client.json");
    /// assert_eq!(doc["token_endpoint_auth_method"], "none");
    /// ```
    pub fn metadata_document(&self, client_id: &str, redirect_uris: &[&str]) -> Value {
        let mut document = self.common_fields(redirect_uris, TokenEndpointAuthMethod::None);
        document["client_id"] = json!(client_id);
        document
    }

    fn common_fields(&self, redirect_uris: &[&str], method: TokenEndpointAuthMethod) -> Value {
        let mut document = json!({
            "client_name": self.client_name,
            "redirect_uris": redirect_uris,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": method.as_str(),
            "application_type": "native",
        });
        for (name, value) in [
            ("client_uri", &self.client_uri),
            ("logo_uri", &self.logo_uri),
            ("software_id", &self.software_id),
            ("software_version", &self.software_version),
        ] {
            if let Some(value) = value {
                document[name] = json!(value);
            }
        }
        document
    }
}

/// A client registered at an authorization server out of band.
#[derive(Clone)]
pub struct PreRegisteredClient {
    pub(crate) client_id: String,
    pub(crate) client_secret: Option<SecretString>,
    pub(crate) auth_method: Option<TokenEndpointAuthMethod>,
    pub(crate) issuer: Option<String>,
}

impl PreRegisteredClient {
    /// A public client (no secret).
    pub fn public(client_id: impl Into<String>) -> Self {
        PreRegisteredClient {
            client_id: client_id.into(),
            client_secret: None,
            auth_method: None,
            issuer: None,
        }
    }

    /// A confidential client; the token endpoint authentication method is
    /// the one the server advertises (`client_secret_basic` unless only
    /// `client_secret_post` is offered) unless set with
    /// [`auth_method`](Self::auth_method).
    pub fn confidential(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        PreRegisteredClient {
            client_secret: Some(SecretString::from(client_secret.into())),
            ..Self::public(client_id)
        }
    }

    /// Forces a token endpoint authentication method.
    pub fn auth_method(mut self, method: TokenEndpointAuthMethod) -> Self {
        self.auth_method = Some(method);
        self
    }

    /// Uses this client only at the authorization server `issuer` (by
    /// default it is used at whichever server the MCP server names).
    pub fn for_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    pub(crate) fn applies_to(&self, issuer: &str) -> bool {
        self.issuer.as_deref().is_none_or(|i| i == issuer)
    }

    pub(crate) fn credentials(&self, metadata: &AuthorizationServerMetadata) -> ClientCredentials {
        ClientCredentials {
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            auth_method: self.auth_method.unwrap_or_else(|| {
                TokenEndpointAuthMethod::choose(metadata, self.client_secret.is_some())
            }),
        }
    }
}

impl fmt::Debug for PreRegisteredClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreRegisteredClient")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("auth_method", &self.auth_method)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// The `token_type` that marks a stored registration record.
const REGISTRATION_RECORD: &str = "mcp-authkit/client-registration";

/// A dynamic client registration, as stored.
#[derive(Clone)]
pub(crate) struct Registration {
    pub(crate) credentials: ClientCredentials,
    pub(crate) redirect_uris: Vec<String>,
    pub(crate) secret_expires_at: Option<Timestamp>,
    pub(crate) registration_access_token: Option<SecretString>,
    pub(crate) registration_client_uri: Option<String>,
}

impl Registration {
    /// Whether it can serve a flow with `redirect_uri` at `now`.
    pub(crate) fn usable_for(&self, redirect_uri: &str, now: Timestamp) -> bool {
        self.redirect_uris.iter().any(|u| u == redirect_uri)
            && self.secret_expires_at.is_none_or(|at| at > now)
    }

    /// As a token record: the secret where secrets go (so an encrypting
    /// store encrypts it), the rest in extra fields.
    pub(crate) fn to_record(&self, now: Timestamp) -> TokenRecord {
        let secret = self
            .credentials
            .client_secret
            .as_ref()
            .map(|s| s.expose_secret().to_owned())
            .unwrap_or_default();
        let mut record = TokenRecord::new(secret, now)
            .with_token_type(REGISTRATION_RECORD)
            .with_extra("client_id", self.credentials.client_id.clone())
            .with_extra(
                "token_endpoint_auth_method",
                self.credentials.auth_method.as_str(),
            )
            .with_extra("redirect_uris", json!(self.redirect_uris).to_string());
        if let Some(at) = self.secret_expires_at {
            record = record.with_expires_at(at);
        }
        if let Some(token) = &self.registration_access_token {
            record = record.with_extra("registration_access_token", token.expose_secret());
        }
        if let Some(uri) = &self.registration_client_uri {
            record = record.with_extra("registration_client_uri", uri.clone());
        }
        record
    }

    /// Reads a stored registration back; `None` for anything else.
    pub(crate) fn from_record(record: &TokenRecord) -> Option<Registration> {
        if record.token_type != REGISTRATION_RECORD {
            return None;
        }
        let extra = |name: &str| record.extra.get(name).map(|v| v.expose_secret().to_owned());
        let client_id = extra("client_id")?;
        let auth_method =
            TokenEndpointAuthMethod::from_name(&extra("token_endpoint_auth_method")?)?;
        let redirect_uris: Vec<String> = serde_json::from_str(&extra("redirect_uris")?).ok()?;
        let secret = record.access_token.expose_secret();
        Some(Registration {
            credentials: ClientCredentials {
                client_id,
                client_secret: (!secret.is_empty()).then(|| SecretString::from(secret.to_owned())),
                auth_method,
            },
            redirect_uris,
            secret_expires_at: record.expires_at,
            registration_access_token: extra("registration_access_token").map(SecretString::from),
            registration_client_uri: extra("registration_client_uri"),
        })
    }
}

/// Registers a client at `metadata`'s registration endpoint (RFC 7591) with
/// the redirect URI flows will really use.
pub(crate) async fn register(
    fetcher: &Fetcher,
    metadata: &AuthorizationServerMetadata,
    client: &ClientMetadata,
    redirect_uri: &str,
) -> Result<Registration, ClientAuthError> {
    let endpoint = metadata.registration_endpoint.as_deref().ok_or_else(|| {
        ClientAuthError::NoClientIdentity {
            issuer: metadata.issuer.clone(),
            cimd_supported: metadata.client_id_metadata_document_supported == Some(true),
        }
    })?;
    let url = Url::parse(endpoint).map_err(|e| ClientAuthError::Registration {
        url: endpoint.to_owned(),
        reason: format!("the registration endpoint is not a URL ({e})"),
        status: None,
    })?;
    // A public client when the server allows it; otherwise the secret-based
    // method it advertises.
    let requested = if metadata.supports_auth_method("none") {
        TokenEndpointAuthMethod::None
    } else {
        TokenEndpointAuthMethod::choose(metadata, true)
    };
    let body = client.common_fields(&[redirect_uri], requested);
    let failed = |reason: String, status: Option<u16>| ClientAuthError::Registration {
        url: endpoint.to_owned(),
        reason,
        status,
    };
    let response = fetcher
        .client()
        .post(url)
        .header(ACCEPT, "application/json")
        .json(&body)
        .send()
        .await
        .map_err(|e| ClientAuthError::http(endpoint, e))?;
    let status = response.status();
    if status.is_redirection() {
        return Err(failed(
            format!("it answered a redirect (HTTP {status}), which is never followed"),
            Some(status.as_u16()),
        ));
    }
    let bytes = read_limited(response).await.map_err(|e| match e {
        BodyError::Transport(e) => ClientAuthError::http(endpoint, e),
        BodyError::TooLarge => failed("the response is too large".to_owned(), None),
    })?;
    let answer: Option<Value> = serde_json::from_slice(&bytes).ok();
    if !status.is_success() {
        let field = |name: &str| {
            answer
                .as_ref()
                .and_then(|v| v.get(name))
                .and_then(Value::as_str)
                .map(cap)
        };
        let reason = match (field("error"), field("error_description")) {
            (Some(error), Some(description)) => format!("{error}: {description}"),
            (Some(error), None) => error,
            _ => format!("HTTP {status}"),
        };
        return Err(failed(reason, Some(status.as_u16())));
    }
    let Some(Value::Object(answer)) = answer else {
        return Err(failed("the response is not a JSON object".to_owned(), None));
    };
    let text = |name: &str| answer.get(name).and_then(Value::as_str).map(str::to_owned);
    let client_id = text("client_id")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| failed("the response has no client_id".to_owned(), None))?;
    let client_secret = text("client_secret")
        .filter(|s| !s.is_empty())
        .map(SecretString::from);
    // The server may assign another method than the one asked for.
    let auth_method = match text("token_endpoint_auth_method") {
        Some(name) => TokenEndpointAuthMethod::from_name(&name).ok_or_else(|| {
            failed(
                format!(
                    "the server assigned the unsupported token endpoint authentication {name:?}"
                ),
                None,
            )
        })?,
        // Not named: the requested one was registered (RFC 7591 3.2.1).
        None => requested,
    };
    if auth_method != TokenEndpointAuthMethod::None && client_secret.is_none() {
        return Err(failed(
            format!("the server assigned {auth_method} but sent no client_secret"),
            None,
        ));
    }
    let secret_expires_at = answer
        .get("client_secret_expires_at")
        .and_then(Value::as_u64)
        .filter(|at| *at > 0)
        .map(|at| {
            Timestamp::from_unix_millis(i64::try_from(at.saturating_mul(1000)).unwrap_or(i64::MAX))
        });
    Ok(Registration {
        credentials: ClientCredentials {
            client_id,
            client_secret,
            auth_method,
        },
        redirect_uris: vec![redirect_uri.to_owned()],
        secret_expires_at,
        registration_access_token: text("registration_access_token").map(SecretString::from),
        registration_client_uri: text("registration_client_uri"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_round_trip_through_a_token_record() {
        let registration = Registration {
            credentials: ClientCredentials {
                client_id: "client-1".into(),
                client_secret: Some(SecretString::from("s3cret".to_owned())),
                auth_method: TokenEndpointAuthMethod::ClientSecretPost,
            },
            redirect_uris: vec!["http://127.0.0.1:5/cb".into()],
            secret_expires_at: Some(Timestamp::from_unix_millis(5_000_000)),
            registration_access_token: Some(SecretString::from("rat".to_owned())),
            registration_client_uri: Some("https://as/register/client-1".into()),
        };
        let record = registration.to_record(Timestamp::from_unix_millis(1));
        assert!(!format!("{record:?}").contains("s3cret"));
        let back = Registration::from_record(&record).unwrap();
        assert_eq!(back.credentials.client_id, "client-1");
        assert_eq!(
            back.credentials
                .client_secret
                .as_ref()
                .unwrap()
                .expose_secret(),
            "s3cret"
        );
        assert_eq!(
            back.credentials.auth_method,
            TokenEndpointAuthMethod::ClientSecretPost
        );
        assert_eq!(back.redirect_uris, registration.redirect_uris);
        assert_eq!(back.secret_expires_at, registration.secret_expires_at);
        assert!(back.usable_for("http://127.0.0.1:5/cb", Timestamp::from_unix_millis(10)));
        assert!(!back.usable_for("http://127.0.0.1:6/cb", Timestamp::from_unix_millis(10)));
        assert!(!back.usable_for(
            "http://127.0.0.1:5/cb",
            Timestamp::from_unix_millis(6_000_000)
        ));
        // A token record of another kind is not a registration.
        assert!(Registration::from_record(&TokenRecord::new("x", Timestamp::now())).is_none());
    }
}
