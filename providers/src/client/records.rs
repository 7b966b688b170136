//! The stored format of what the client keeps besides its tokens: its
//! dynamic client registrations and what discovery found.
//!
//! Each is a typed record with its own versioned JSON (`{"v":1,...}`; a
//! release reads every version up to its own and refuses newer ones, as
//! core's `codec` does for tokens), kept in the token store inside a
//! [`TokenRecord`] envelope, so every backend and the encrypting wrapper
//! keep working unchanged:
//!
//! | envelope field | holds |
//! |---|---|
//! | `token_type` | the kind: `mcp-authkit/client-registration` or `mcp-authkit/discovery` |
//! | `access_token` | the record's JSON, secrets included: an encrypting store encrypts it whole |
//! | `expires_at` | when a registration's secret expires (what `mcp-authkit inspect` shows); none for discovery |
//! | `obtained_at` | when it was written |
//!
//! A record this release cannot read (another kind under the key, a newer
//! version, broken JSON) is a [`RecordError`]; the client then treats it as
//! absent, discovers or registers again, and writes its own.

use mcp_authkit_core::{
    CodecError, ExposeSecret, MalformedRecord, SecretString, Timestamp, TokenRecord,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::client::discovery::DiscoveryRecord;
use crate::client::oauth::{ClientCredentials, TokenEndpointAuthMethod};
use crate::client::registration::Registration;

/// The envelope `token_type` of a dynamic client registration.
pub(crate) const REGISTRATION_KIND: &str = "mcp-authkit/client-registration";
/// The envelope `token_type` of a discovery result.
pub(crate) const DISCOVERY_KIND: &str = "mcp-authkit/discovery";
/// The registration format this release writes.
pub(crate) const REGISTRATION_FORMAT_VERSION: u64 = 1;
/// The discovery format this release writes.
pub(crate) const DISCOVERY_FORMAT_VERSION: u64 = 1;

/// Why a stored record could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    /// Something else is stored under the key.
    #[error("the record under this key is of kind {found:?}, not {expected}")]
    OtherKind {
        expected: &'static str,
        found: String,
    },
    /// Not this format, or a newer version of it.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// A record with its own kind and versioned format.
pub(crate) trait StoredRecord: Sized {
    /// The envelope's `token_type`.
    const KIND: &'static str;
    /// What the format is called in errors.
    const WHAT: &'static str;
    /// The version this release writes (and the newest it reads).
    const VERSION: u64;
    /// The record in the current format, without `v`.
    fn to_json(&self) -> Value;
    /// A record from the format of `version` (at most [`Self::VERSION`]).
    fn from_json(version: u64, json: Value) -> Result<Self, CodecError>;
    /// The envelope's `expires_at`.
    fn expires_at(&self) -> Option<Timestamp> {
        None
    }
}

/// `record` in its envelope, written at `now`.
pub(crate) fn encode<R: StoredRecord>(record: &R, now: Timestamp) -> TokenRecord {
    let fields = record.to_json().to_string();
    // `v` first, as every stored format of the project starts.
    let document = match fields.strip_prefix('{') {
        Some("}") => format!("{{\"v\":{}}}", R::VERSION),
        Some(rest) => format!("{{\"v\":{},{rest}", R::VERSION),
        None => unreachable!("records encode as JSON objects"),
    };
    let mut envelope = TokenRecord::new(document, now).with_token_type(R::KIND);
    envelope.expires_at = record.expires_at();
    envelope
}

/// The record in `envelope`.
pub(crate) fn decode<R: StoredRecord>(envelope: &TokenRecord) -> Result<R, RecordError> {
    if envelope.token_type != R::KIND {
        return Err(RecordError::OtherKind {
            expected: R::KIND,
            found: crate::client::error::cap(&envelope.token_type),
        });
    }
    let json: Value = serde_json::from_str(envelope.access_token.expose_secret())
        .map_err(|e| CodecError::Malformed(e.into()))?;
    let version = json.get("v").and_then(Value::as_u64).ok_or_else(|| {
        CodecError::Malformed(MalformedRecord::new(format!(
            "a {} without a format version",
            R::WHAT
        )))
    })?;
    if version == 0 || version > R::VERSION {
        return Err(CodecError::UnsupportedVersion {
            what: R::WHAT,
            found: version,
            supported: R::VERSION,
        }
        .into());
    }
    Ok(R::from_json(version, json)?)
}

fn parse<T: DeserializeOwned>(json: Value) -> Result<T, CodecError> {
    // The parser's message has quoted values cut out: one may be a secret.
    serde_json::from_value(json).map_err(|e| CodecError::Malformed(e.into()))
}

#[derive(Serialize, Deserialize)]
struct RegistrationV1 {
    client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    token_endpoint_auth_method: String,
    redirect_uris: Vec<String>,
    registered_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id_issued_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret_expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registration_access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registration_client_uri: Option<String>,
}

impl StoredRecord for Registration {
    const KIND: &'static str = REGISTRATION_KIND;
    const WHAT: &'static str = "client registration";
    const VERSION: u64 = REGISTRATION_FORMAT_VERSION;

    fn to_json(&self) -> Value {
        let expose = |s: &SecretString| s.expose_secret().to_owned();
        serde_json::to_value(RegistrationV1 {
            client_id: self.credentials.client_id.clone(),
            client_secret: self.credentials.client_secret.as_ref().map(expose),
            token_endpoint_auth_method: self.credentials.auth_method.as_str().to_owned(),
            redirect_uris: self.redirect_uris.clone(),
            registered_at: self.registered_at,
            client_id_issued_at: self.issued_at,
            client_secret_expires_at: self.secret_expires_at,
            registration_access_token: self.registration_access_token.as_ref().map(expose),
            registration_client_uri: self.registration_client_uri.clone(),
        })
        .expect("a registration always serializes")
    }

    fn from_json(_version: u64, json: Value) -> Result<Self, CodecError> {
        let stored: RegistrationV1 = parse(json)?;
        let auth_method = TokenEndpointAuthMethod::from_name(&stored.token_endpoint_auth_method)
            .ok_or_else(|| {
                CodecError::Malformed(MalformedRecord::new(format!(
                    "unknown token_endpoint_auth_method {:?}",
                    crate::client::error::cap(&stored.token_endpoint_auth_method)
                )))
            })?;
        if stored.client_id.is_empty()
            || (auth_method != TokenEndpointAuthMethod::None && stored.client_secret.is_none())
        {
            return Err(CodecError::Malformed(MalformedRecord::new(
                "a client registration without its client_id or secret",
            )));
        }
        Ok(Registration {
            credentials: ClientCredentials::with_secret(
                stored.client_id,
                stored.client_secret.map(SecretString::from),
                auth_method,
            ),
            redirect_uris: stored.redirect_uris,
            registered_at: stored.registered_at,
            issued_at: stored.client_id_issued_at,
            secret_expires_at: stored.client_secret_expires_at,
            registration_access_token: stored.registration_access_token.map(SecretString::from),
            registration_client_uri: stored.registration_client_uri,
        })
    }

    fn expires_at(&self) -> Option<Timestamp> {
        self.secret_expires_at
    }
}

#[derive(Serialize, Deserialize)]
struct DiscoveryV1 {
    issuer: String,
    resource: String,
    /// Absent for a 2025-03-26 server (no protected resource metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resource_metadata_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scopes_supported: Option<Vec<String>>,
    authorization_server_metadata: Value,
    authorization_server_metadata_url: Url,
}

impl StoredRecord for DiscoveryRecord {
    const KIND: &'static str = DISCOVERY_KIND;
    const WHAT: &'static str = "discovery result";
    const VERSION: u64 = DISCOVERY_FORMAT_VERSION;

    fn to_json(&self) -> Value {
        serde_json::to_value(DiscoveryV1 {
            issuer: self.issuer.clone(),
            resource: self.resource.clone(),
            resource_metadata_url: self.resource_metadata_url.clone(),
            scopes_supported: self.scopes_supported.clone(),
            authorization_server_metadata: self.server_document.clone(),
            authorization_server_metadata_url: self.server_metadata_url.clone(),
        })
        .expect("a discovery result always serializes")
    }

    fn from_json(_version: u64, json: Value) -> Result<Self, CodecError> {
        let stored: DiscoveryV1 = parse(json)?;
        Ok(DiscoveryRecord {
            issuer: stored.issuer,
            resource: stored.resource,
            resource_metadata_url: stored.resource_metadata_url,
            scopes_supported: stored.scopes_supported,
            server_document: stored.authorization_server_metadata,
            server_metadata_url: stored.authorization_server_metadata_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mcp_authkit_core::{TokenKey, TokenStore};
    use serde_json::json;

    use super::*;

    fn registration() -> Registration {
        let at = Timestamp::from_unix_millis(1_700_000_000_000);
        Registration {
            issued_at: Some(1_699_999_000),
            registration_access_token: Some(SecretString::from("rat-value".to_owned())),
            registration_client_uri: Some("https://as/register/client-1".into()),
            ..Registration::example(at, Some(Duration::from_secs(3600)))
        }
    }

    #[test]
    fn a_registration_round_trips_in_its_envelope() {
        let original = registration();
        let envelope = encode(&original, Timestamp::from_unix_millis(5));
        assert_eq!(envelope.token_type, REGISTRATION_KIND);
        assert_eq!(envelope.expires_at, original.secret_expires_at);
        assert!(envelope.extra.is_empty() && envelope.refresh_token.is_none());
        assert!(
            envelope
                .access_token
                .expose_secret()
                .starts_with(r#"{"v":1,"#),
            "the version first"
        );
        let shown = format!("{envelope:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("rat-value"));

        let back: Registration = decode(&envelope).unwrap();
        assert_eq!(back.client_id(), "client-1");
        let secret = back.credentials.client_secret.as_ref().unwrap();
        assert_eq!(secret.expose_secret(), "s3cret-value");
        assert_eq!(
            back.credentials.auth_method,
            TokenEndpointAuthMethod::ClientSecretBasic
        );
        assert_eq!(back.redirect_uris, original.redirect_uris);
        assert_eq!(back.registered_at, original.registered_at);
        assert_eq!(back.issued_at, original.issued_at);
        assert_eq!(back.secret_expires_at, original.secret_expires_at);
        let token = back.registration_access_token.as_ref().unwrap();
        assert_eq!(token.expose_secret(), "rat-value");
        assert_eq!(
            back.registration_client_uri,
            original.registration_client_uri
        );
    }

    #[test]
    fn a_discovery_result_round_trips_in_its_envelope() {
        let original = DiscoveryRecord {
            issuer: "https://as.example".into(),
            resource: "https://mcp.example/mcp".into(),
            resource_metadata_url: Some(
                "https://mcp.example/.well-known/oauth-protected-resource".into(),
            ),
            scopes_supported: Some(vec!["notes:read".into()]),
            server_document: json!({"issuer": "https://as.example", "n": [1, 2]}),
            server_metadata_url: Url::parse(
                "https://as.example/.well-known/oauth-authorization-server",
            )
            .unwrap(),
        };
        let envelope = encode(&original, Timestamp::from_unix_millis(5));
        assert_eq!(envelope.token_type, DISCOVERY_KIND);
        assert_eq!(envelope.expires_at, None);
        let back: DiscoveryRecord = decode(&envelope).unwrap();
        assert_eq!(back.issuer, original.issuer);
        assert_eq!(back.resource, original.resource);
        assert_eq!(back.resource_metadata_url, original.resource_metadata_url);
        assert_eq!(back.scopes_supported, original.scopes_supported);
        assert_eq!(back.server_document, original.server_document);
        assert_eq!(back.server_metadata_url, original.server_metadata_url);
        // Each kind reads only its own records.
        assert!(matches!(
            decode::<Registration>(&envelope),
            Err(RecordError::OtherKind { .. })
        ));
    }

    #[test]
    fn other_records_newer_versions_and_broken_ones_are_refused_without_secrets() {
        let now = Timestamp::from_unix_millis(5);
        let token = TokenRecord::new("an-access-token", now);
        assert!(matches!(
            decode::<Registration>(&token),
            Err(RecordError::OtherKind { .. })
        ));
        let with = |json: &str| TokenRecord::new(json, now).with_token_type(REGISTRATION_KIND);
        let newer = with(r#"{"v":2,"client_id":"c"}"#);
        assert!(matches!(
            decode::<Registration>(&newer),
            Err(RecordError::Codec(CodecError::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }))
        ));
        // The layout of the first, unversioned releases: a secret as the
        // token and the rest in extra fields.
        let legacy = with("the-old-client-secret").with_extra("client_id", "c");
        let error = decode::<Registration>(&legacy).unwrap_err().to_string();
        assert!(!error.contains("the-old-client-secret"), "{error}");
        // A wrong type next to a secret: the parser's quote is cut out.
        let broken = with(
            r#"{"v":1,"client_id":"c","client_secret":"leaky-secret","token_endpoint_auth_method":"none","redirect_uris":"leaky-secret","registered_at":1}"#,
        );
        let error = decode::<Registration>(&broken).unwrap_err().to_string();
        assert!(!error.contains("leaky-secret"), "{error}");
        let secretless = with(
            r#"{"v":1,"client_id":"c","token_endpoint_auth_method":"client_secret_basic","redirect_uris":[],"registered_at":1}"#,
        );
        assert!(decode::<Registration>(&secretless).is_err());
    }

    #[tokio::test]
    async fn an_encrypting_store_keeps_every_registration_secret_sealed() {
        use mcp_authkit_store_encrypted::{EncryptedStore, EncryptionKey, Keyring};
        use mcp_authkit_store_memory::MemoryStore;

        let inner = MemoryStore::new();
        let store = EncryptedStore::new(inner.clone(), Keyring::new(EncryptionKey::generate("k")));
        let key = TokenKey::new("mcp-client/registration", "https://as.example");
        store
            .put(&key, &encode(&registration(), Timestamp::now()))
            .await
            .unwrap();
        let raw = TokenStore::get(&inner, &key).await.unwrap().unwrap().record;
        let sealed = raw.access_token.expose_secret();
        for secret in ["s3cret-value", "rat-value", "client-1"] {
            assert!(!sealed.contains(secret), "{secret} sealed at rest");
        }
        let read = TokenStore::get(&store, &key).await.unwrap().unwrap().record;
        let back: Registration = decode(&read).unwrap();
        let secret = back.credentials.client_secret.as_ref().unwrap();
        assert_eq!(secret.expose_secret(), "s3cret-value");
    }
}
