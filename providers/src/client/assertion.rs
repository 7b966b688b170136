//! `private_key_jwt`: the client proves who it is with a JWT it signs
//! (RFC 7523 section 2.2), not with a shared secret.

use std::fmt;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mcp_authkit_core::{OAuthError, OAuthErrorKind, Timestamp, random_urlsafe};
use serde::Serialize;

use crate::client::error::ClientAuthError;

/// How long an assertion is valid: long enough for one request, short
/// enough that a copy is soon useless.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// The private key a client signs its RFC 7523 client assertions with
/// (`private_key_jwt`), from a PEM file.
///
/// Accepted: PKCS#8 (`-----BEGIN PRIVATE KEY-----`) for every algorithm,
/// and PKCS#1 (`-----BEGIN RSA PRIVATE KEY-----`) for RSA. A SEC1 EC key
/// (`-----BEGIN EC PRIVATE KEY-----`) converts with `openssl pkcs8 -topk8
/// -nocrypt`. `Debug` never shows the key.
///
/// ```
/// use mcp_authkit_providers::client::AssertionKey;
///
/// let error = AssertionKey::from_pem("ES256", "not a key").unwrap_err();
/// assert!(error.to_string().contains("ES256"));
/// assert!(AssertionKey::from_pem("HS256", "").is_err(), "no shared secrets");
/// ```
#[derive(Clone)]
pub struct AssertionKey {
    algorithm: Algorithm,
    key: EncodingKey,
    key_id: Option<String>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
    jti: String,
}

impl AssertionKey {
    /// The key in `pem`, to sign with the JWS algorithm `algorithm`:
    /// `ES256`, `ES384`, `RS256`, `RS384`, `RS512`, `PS256`, `PS384`,
    /// `PS512` or `EdDSA` (what the authorization server lists in
    /// `token_endpoint_auth_signing_alg_values_supported`).
    pub fn from_pem(algorithm: &str, pem: &str) -> Result<Self, ClientAuthError> {
        let invalid = |reason: String| ClientAuthError::Config {
            what: "client assertion key",
            reason,
        };
        let parsed: Algorithm = algorithm
            .parse()
            .map_err(|_| invalid(format!("{algorithm:?} is not a JWS algorithm")))?;
        let key = match parsed {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => EncodingKey::from_rsa_pem(pem.as_bytes()),
            _ => {
                return Err(invalid(format!(
                    "{algorithm} needs a shared secret; private_key_jwt signs with a private key \
                     (ES256, RS256, ...)"
                )));
            }
        }
        // The parser's message never quotes the key.
        .map_err(|e| {
            invalid(format!(
                "the PEM is not a private key for {algorithm} ({e})"
            ))
        })?;
        let key = AssertionKey {
            algorithm: parsed,
            key,
            key_id: None,
        };
        // A key that parses but cannot sign (the wrong curve for ES384 ...)
        // fails here, at configuration, not at the first token request.
        key.sign("check", "check", Timestamp::from_unix_millis(0))
            .map_err(|e| invalid(e.to_string()))?;
        Ok(key)
    }

    /// Names the key in the assertion's header (`kid`), for servers that
    /// hold several keys of the client.
    pub fn key_id(mut self, kid: impl Into<String>) -> Self {
        self.key_id = Some(kid.into());
        self
    }

    /// The JWS algorithm.
    pub fn algorithm(&self) -> String {
        format!("{:?}", self.algorithm)
    }

    /// A client assertion for `client_id` (its `iss` and `sub`) addressed to
    /// the authorization server `audience` (its issuer identifier), valid
    /// for a minute from `now`, with a fresh `jti`.
    pub(crate) fn sign(
        &self,
        client_id: &str,
        audience: &str,
        now: Timestamp,
    ) -> Result<String, OAuthError> {
        let iat = now.unix_millis() / 1000;
        let claims = Claims {
            iss: client_id,
            sub: client_id,
            aud: audience,
            iat,
            exp: iat + ASSERTION_LIFETIME.as_secs() as i64,
            jti: random_urlsafe(16),
        };
        let mut header = Header::new(self.algorithm);
        header.kid = self.key_id.clone();
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            OAuthError::new(
                OAuthErrorKind::InvalidClient,
                format!(
                    "the client assertion could not be signed with the {:?} key ({e})",
                    self.algorithm
                ),
            )
        })
    }
}

impl fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionKey")
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .field("key", &"[redacted]")
            .finish()
    }
}
