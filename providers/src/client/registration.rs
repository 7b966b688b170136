//! The client's identity at an authorization server: pre-registered, a
//! Client ID Metadata Document, or dynamic client registration (RFC 7591),
//! whose result is kept in the token store and reused.

use std::fmt;
use std::time::Duration;

use mcp_authkit_core::{SecretString, Timestamp};
use reqwest::header::ACCEPT;
use serde_json::{Value, json};
use url::Url;

use crate::client::assertion::AssertionKey;
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
    pub(crate) key: Option<AssertionKey>,
    pub(crate) issuer: Option<String>,
}

impl PreRegisteredClient {
    /// A public client (no secret).
    pub fn public(client_id: impl Into<String>) -> Self {
        PreRegisteredClient {
            client_id: client_id.into(),
            client_secret: None,
            auth_method: None,
            key: None,
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

    /// A confidential client that authenticates with RFC 7523 client
    /// assertions signed by `key` (`private_key_jwt`).
    pub fn private_key_jwt(client_id: impl Into<String>, key: AssertionKey) -> Self {
        PreRegisteredClient {
            key: Some(key),
            auth_method: Some(TokenEndpointAuthMethod::PrivateKeyJwt),
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
        if let Some(key) = &self.key {
            return ClientCredentials::with_key(self.client_id.clone(), key.clone());
        }
        ClientCredentials::with_secret(
            self.client_id.clone(),
            self.client_secret.clone(),
            self.auth_method.unwrap_or_else(|| {
                TokenEndpointAuthMethod::choose(metadata, self.client_secret.is_some())
            }),
        )
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
            .field("key", &self.key)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// A dynamic client registration (RFC 7591), as this client keeps it (its
/// stored format is in `records`).
#[derive(Clone)]
pub(crate) struct Registration {
    pub(crate) credentials: ClientCredentials,
    pub(crate) redirect_uris: Vec<String>,
    /// When the registration was received, on the client's clock.
    pub(crate) registered_at: Timestamp,
    /// `client_id_issued_at` as the server sent it (its clock, seconds).
    pub(crate) issued_at: Option<u64>,
    /// When the secret stops working, on the client's clock; `None`: never.
    pub(crate) secret_expires_at: Option<Timestamp>,
    pub(crate) registration_access_token: Option<SecretString>,
    pub(crate) registration_client_uri: Option<String>,
}

impl Registration {
    pub(crate) fn client_id(&self) -> &str {
        &self.credentials.client_id
    }

    /// Whether the secret has expired at `now` (a token request would be
    /// refused).
    pub(crate) fn expired_at(&self, now: Timestamp) -> bool {
        self.secret_expires_at.is_some_and(|at| at <= now)
    }

    /// Whether a sign-in that may take up to `sign_in` can start with it at
    /// `now`, for `redirect_uri`: registered for that redirect URI, and its
    /// secret outlives the sign-in (by at most a quarter of the secret's
    /// lifetime, so a short-lived secret is still used).
    pub(crate) fn usable_for(&self, redirect_uri: &str, now: Timestamp, sign_in: Duration) -> bool {
        let margin = match self.secret_expires_at {
            Some(at) => sign_in.min(at.saturating_duration_since(self.registered_at) / 4),
            None => Duration::ZERO,
        };
        self.redirect_uris.iter().any(|u| u == redirect_uri)
            && !self.expired_at(now.saturating_add(margin))
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("credentials", &self.credentials)
            .field("redirect_uris", &self.redirect_uris)
            .field("registered_at", &self.registered_at)
            .field("secret_expires_at", &self.secret_expires_at)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl Registration {
    /// A confidential registration of `client-1` (secret `s3cret-value`)
    /// for `http://127.0.0.1:5/cb`, received at `at`, whose secret lives
    /// `expires_in`.
    pub(crate) fn example(at: Timestamp, expires_in: Option<Duration>) -> Registration {
        Registration {
            credentials: ClientCredentials::with_secret(
                "client-1".into(),
                Some(SecretString::from("s3cret-value".to_owned())),
                TokenEndpointAuthMethod::ClientSecretBasic,
            ),
            redirect_uris: vec!["http://127.0.0.1:5/cb".into()],
            registered_at: at,
            issued_at: None,
            secret_expires_at: expires_in.map(|ttl| at.saturating_add(ttl)),
            registration_access_token: None,
            registration_client_uri: None,
        }
    }
}

/// When a secret that the server says expires at `expires_at` (its clock,
/// seconds; 0 never) expires on the client's clock.
///
/// The lifetime is measured from `client_id_issued_at` when the server sends
/// it: both come from the server's clock, so their difference is right even
/// when the two clocks disagree, and the secret is given that long from the
/// moment the registration arrived.
fn local_expiry(
    expires_at: u64,
    issued_at: Option<u64>,
    received_at: Timestamp,
) -> Option<Timestamp> {
    if expires_at == 0 {
        return None;
    }
    let seconds = |s: u64| Duration::from_secs(s);
    Some(match issued_at {
        Some(issued) if issued <= expires_at => {
            received_at.saturating_add(seconds(expires_at - issued))
        }
        _ => Timestamp::from_unix_millis(
            i64::try_from(expires_at.saturating_mul(1000)).unwrap_or(i64::MAX),
        ),
    })
}

/// A time in seconds since the epoch, as a JSON number (an integer, or a
/// float some servers send).
fn seconds(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| s as u64)
    })
}

/// The token endpoint authentication a new dynamic registration asks for.
///
/// An MCP client on the user's machine has nothing it can keep secret
/// (RFC 8252 section 8.5: a secret in an installed app is no secret), and
/// PKCE protects its codes, so it registers as a public client (`none`)
/// whenever the server advertises `none` (the TypeScript SDK's servers do).
///
/// Otherwise it asks for a secret, the way the server advertises:
/// `client_secret_basic` (RFC 6749 section 2.3.1 makes Basic the method
/// every server supports, and RFC 8414 the default when nothing is
/// advertised) unless only `client_secret_post` is. It never asks for an
/// unadvertised `none`: a server that registers a public client may still
/// refuse it at the token endpoint, which would only show after the user
/// signed in. (The MCP Python SDK advertises `client_secret_post` and
/// `client_secret_basic` only, and wants `client_id` in the token request
/// body even with Basic, so that is where this client always puts it too.)
pub(crate) fn requested_auth_method(
    metadata: &AuthorizationServerMetadata,
) -> TokenEndpointAuthMethod {
    if metadata.supports_auth_method("none") {
        TokenEndpointAuthMethod::None
    } else {
        TokenEndpointAuthMethod::choose(metadata, true)
    }
}

/// Registers a client at `metadata`'s registration endpoint (RFC 7591) with
/// the redirect URI flows will really use.
pub(crate) async fn register(
    fetcher: &Fetcher,
    metadata: &AuthorizationServerMetadata,
    client: &ClientMetadata,
    redirect_uri: &str,
    now: Timestamp,
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
    let requested = requested_auth_method(metadata);
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
    if auth_method == TokenEndpointAuthMethod::PrivateKeyJwt {
        return Err(failed(
            "the server assigned private_key_jwt, which a registration without a key cannot use"
                .to_owned(),
            None,
        ));
    }
    if auth_method != TokenEndpointAuthMethod::None && client_secret.is_none() {
        return Err(failed(
            format!("the server assigned {auth_method} but sent no client_secret"),
            None,
        ));
    }
    let issued_at = answer.get("client_id_issued_at").and_then(seconds);
    // RFC 7591 section 3.2.1: 0 is never (some servers send null or nothing).
    let secret_expires_at = match answer.get("client_secret_expires_at") {
        None | Some(Value::Null) => None,
        Some(at) => match seconds(at) {
            Some(at) => local_expiry(at, issued_at, now),
            None => {
                return Err(failed(
                    "client_secret_expires_at is not a number of seconds".to_owned(),
                    None,
                ));
            }
        },
    };
    Ok(Registration {
        credentials: ClientCredentials::with_secret(client_id, client_secret, auth_method),
        redirect_uris: vec![redirect_uri.to_owned()],
        registered_at: now,
        issued_at,
        secret_expires_at,
        registration_access_token: text("registration_access_token").map(SecretString::from),
        registration_client_uri: text("registration_client_uri"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(expires_in: Option<u64>) -> Registration {
        Registration::example(
            Timestamp::from_unix_millis(1_000_000),
            expires_in.map(Duration::from_secs),
        )
    }

    #[test]
    fn a_registration_serves_its_redirect_uri_until_its_secret_expires() {
        let minute = Duration::from_secs(60);
        let never = registration(None);
        let start = never.registered_at;
        let later = start.saturating_add(Duration::from_secs(10 * 365 * 86_400));
        assert!(never.usable_for("http://127.0.0.1:5/cb", later, minute));
        assert!(!never.usable_for("http://127.0.0.1:6/cb", start, minute));

        // An hour's secret: not for a sign-in that could outlast it.
        let hour = registration(Some(3600));
        let at = |s: u64| start.saturating_add(Duration::from_secs(s));
        assert!(hour.usable_for("http://127.0.0.1:5/cb", at(3500), minute));
        assert!(!hour.usable_for("http://127.0.0.1:5/cb", at(3550), minute));
        assert!(!hour.expired_at(at(3599)));
        assert!(hour.expired_at(at(3600)));
        // A 40 s secret is still used for its first 30 s.
        let short = registration(Some(40));
        assert!(short.usable_for("http://127.0.0.1:5/cb", at(29), minute));
        assert!(!short.usable_for("http://127.0.0.1:5/cb", at(31), minute));
    }

    #[test]
    fn secret_expiry_counts_from_the_issue_time_on_the_servers_clock() {
        let received = Timestamp::from_unix_millis(50_000_000);
        // The server's clock is far behind ours: 3600 s from issue.
        assert_eq!(
            local_expiry(1_003_600, Some(1_000_000), received),
            Some(received.saturating_add(Duration::from_secs(3600)))
        );
        // Without client_id_issued_at: the absolute time.
        assert_eq!(
            local_expiry(1_003_600, None, received),
            Some(Timestamp::from_unix_millis(1_003_600_000))
        );
        // An issue time after the expiry is nonsense: the absolute time.
        assert_eq!(
            local_expiry(1_003_600, Some(2_000_000), received),
            Some(Timestamp::from_unix_millis(1_003_600_000))
        );
        assert_eq!(local_expiry(0, Some(1), received), None, "0: never");
    }
}
