//! Pending authorization flows and their outcomes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::record::{Revision, TokenKey};
use crate::time::Timestamp;

/// `n` bytes from the operating system's CSPRNG, base64url without padding.
///
/// # Panics
/// If the operating system has no randomness to give, which no supported
/// platform does at run time; continuing with predictable states would be
/// worse than stopping.
pub fn random_urlsafe(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The OAuth `state` of one authorization flow: 256 random bits, base64url.
///
/// It is the only handle a callback has on its flow, so whoever holds it can
/// finish the flow; `Debug` shows only its first characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowState(String);

impl FlowState {
    /// A fresh state with 256 bits from the OS CSPRNG.
    pub fn generate() -> Self {
        FlowState(random_urlsafe(32))
    }

    /// A state received from outside (a callback's query, a store row).
    pub fn new(state: impl Into<String>) -> Self {
        FlowState(state.into())
    }

    /// The state as sent in URLs.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for FlowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.0.chars().take(4).collect();
        write!(f, "FlowState({shown}…)")
    }
}

/// A PKCE code verifier (RFC 7636) and its S256 challenge.
#[derive(Clone)]
pub struct PkceVerifier(SecretString);

impl PkceVerifier {
    /// 256 random bits as 43 base64url characters, inside RFC 7636's
    /// 43..=128 character range.
    pub fn generate() -> Self {
        PkceVerifier(SecretString::from(random_urlsafe(32)))
    }

    /// A verifier read back from storage.
    pub fn new(verifier: SecretString) -> Self {
        PkceVerifier(verifier)
    }

    /// The S256 challenge: base64url(SHA-256(verifier)).
    pub fn challenge_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.0.expose_secret().as_bytes()))
    }

    /// The secret verifier.
    pub fn secret(&self) -> &SecretString {
        &self.0
    }
}

impl fmt::Debug for PkceVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PkceVerifier([redacted])")
    }
}

/// An authorization flow that was started and waits for its callback.
#[derive(Clone)]
#[non_exhaustive]
pub struct PendingFlow {
    /// The OAuth `state`, unique per flow.
    pub state: FlowState,
    /// Whose token the flow obtains.
    pub key: TokenKey,
    /// The PKCE verifier (secret).
    pub pkce_verifier: SecretString,
    /// The redirect URI sent on the authorize request; the code exchange must
    /// send the same one.
    pub redirect_uri: String,
    /// The scopes requested.
    pub scopes: Vec<String>,
    /// The MCP elicitation id that stands for this flow on the client side.
    pub elicitation_id: String,
    /// Who started it (for example the MCP session id), so the completion
    /// can be announced there; opaque to stores.
    pub started_by: Option<String>,
    /// Application data that travels with the flow (not secret).
    pub attributes: BTreeMap<String, String>,
    /// When it was started.
    pub created_at: Timestamp,
    /// When it stops being valid; stores forget it then.
    pub expires_at: Timestamp,
}

impl PendingFlow {
    /// A new flow for `key` with a fresh state, PKCE verifier and elicitation
    /// id, valid for `ttl` from `now`.
    pub fn new(
        key: TokenKey,
        redirect_uri: impl Into<String>,
        scopes: Vec<String>,
        now: Timestamp,
        ttl: Duration,
    ) -> Self {
        PendingFlow {
            state: FlowState::generate(),
            key,
            pkce_verifier: PkceVerifier::generate().0,
            redirect_uri: redirect_uri.into(),
            scopes,
            elicitation_id: random_urlsafe(16),
            started_by: None,
            attributes: BTreeMap::new(),
            created_at: now,
            expires_at: now.saturating_add(ttl),
        }
    }

    /// Records who started the flow.
    pub fn with_started_by(mut self, started_by: impl Into<String>) -> Self {
        self.started_by = Some(started_by.into());
        self
    }

    /// Adds an application attribute.
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// The PKCE verifier.
    pub fn pkce(&self) -> PkceVerifier {
        PkceVerifier(self.pkce_verifier.clone())
    }

    /// Whether the flow has expired at `now`.
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at <= now
    }
}

impl fmt::Debug for PendingFlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingFlow")
            .field("state", &self.state)
            .field("key", &self.key)
            .field("pkce_verifier", &"[redacted]")
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            // A server's connect link is built from it (mcp-authkit-providers):
            // a bearer value under trust-the-link-holder setups.
            .field("elicitation_id", &"[redacted]")
            .field("started_by", &self.started_by)
            .field("attributes", &self.attributes)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// How a flow ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FlowOutcome {
    /// A token was stored at this revision.
    Authorized {
        /// The stored token's revision.
        revision: Revision,
    },
    /// The user or the authorization server refused (`access_denied`, ...).
    Denied {
        /// The OAuth error code.
        error: String,
        /// The server's `error_description`, if any. Untrusted text: escape it
        /// before showing it in HTML.
        description: Option<String>,
    },
    /// The flow broke (code exchange failed, issuer mismatch, ...).
    Failed {
        /// What went wrong, for the user; never contains a secret.
        reason: String,
    },
}

impl FlowOutcome {
    /// Whether a token was obtained.
    pub fn is_authorized(&self) -> bool {
        matches!(self, FlowOutcome::Authorized { .. })
    }
}

impl serde::Serialize for Revision {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.get())
    }
}

impl<'de> serde::Deserialize<'de> for Revision {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <u64 as serde::Deserialize>::deserialize(deserializer).map(Revision::new)
    }
}

/// What [`PendingStore::insert`](crate::PendingStore::insert) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The flow was stored and is now the key's active flow.
    Inserted,
    /// Another unexpired flow is active for the same key; nothing was stored.
    /// Join it: wait on this state instead of opening a second browser tab.
    Joined(FlowState),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_matches_rfc7636_appendix_b() {
        let verifier = PkceVerifier::new(SecretString::from(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_owned(),
        ));
        assert_eq!(
            verifier.challenge_s256(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn generated_values_are_long_and_distinct() {
        let a = FlowState::generate();
        let b = FlowState::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 43, "256 bits in base64url");
        let verifier = PkceVerifier::generate();
        let len = verifier.secret().expose_secret().len();
        assert!((43..=128).contains(&len));
    }

    #[test]
    fn debug_hides_state_verifier_and_elicitation_id() {
        let flow = PendingFlow::new(
            TokenKey::new("github", "alice"),
            "http://127.0.0.1/cb",
            vec!["repo".into()],
            Timestamp::from_unix_millis(0),
            Duration::from_secs(60),
        );
        let printed = format!("{flow:?}");
        assert!(!printed.contains(flow.state.as_str()));
        assert!(!printed.contains(flow.pkce_verifier.expose_secret()));
        assert!(!printed.contains(&flow.elicitation_id));
        assert!(printed.contains("alice"));
    }
}
