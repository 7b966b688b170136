//! PKCE (RFC 7636): a helper for tests that build authorization requests by
//! hand, and the server's checks.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::secret::{REDACTED, random_string};

/// A PKCE verifier and its S256 challenge.
///
/// ```
/// let pkce = mcp_authkit_testkit::Pkce::new();
/// assert_eq!(pkce.challenge().len(), 43);
/// assert_eq!(mcp_authkit_testkit::Pkce::s256(pkce.verifier()), pkce.challenge());
/// ```
#[derive(Clone)]
pub struct Pkce {
    verifier: String,
    challenge: String,
}

impl Pkce {
    /// A fresh random verifier (256 bits).
    pub fn new() -> Self {
        Self::from_verifier(random_string(32))
    }

    /// The pair for a given verifier.
    pub fn from_verifier(verifier: impl Into<String>) -> Self {
        let verifier = verifier.into();
        let challenge = Self::s256(&verifier);
        Pkce {
            verifier,
            challenge,
        }
    }

    /// The S256 challenge of `verifier`: base64url(SHA-256(verifier)).
    pub fn s256(verifier: &str) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
    }

    /// The verifier, sent to the token endpoint.
    pub fn verifier(&self) -> &str {
        &self.verifier
    }

    /// The challenge, sent to `/authorize` with `code_challenge_method=S256`.
    pub fn challenge(&self) -> &str {
        &self.challenge
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Pkce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkce")
            .field("verifier", &REDACTED)
            .field("challenge", &self.challenge)
            .finish()
    }
}

/// A code challenge method the server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChallengeMethod {
    S256,
    Plain,
}

/// RFC 7636 section 4.1: 43 to 128 unreserved characters. A challenge has
/// the same shape (S256 gives exactly 43).
pub(crate) fn is_well_formed(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

pub(crate) fn verify(challenge: &str, method: ChallengeMethod, verifier: &str) -> bool {
    if !is_well_formed(verifier) {
        return false;
    }
    match method {
        ChallengeMethod::S256 => Pkce::s256(verifier) == challenge,
        ChallengeMethod::Plain => verifier == challenge,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_example() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(
            Pkce::s256(verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(verify(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            ChallengeMethod::S256,
            verifier
        ));
        assert!(!verify(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            ChallengeMethod::S256,
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK"
        ));
    }

    #[test]
    fn short_verifiers_are_refused() {
        assert!(!is_well_formed("abc"));
        assert!(!verify("abc", ChallengeMethod::Plain, "abc"));
    }

    #[test]
    fn debug_hides_the_verifier() {
        let pkce = Pkce::new();
        assert!(!format!("{pkce:?}").contains(pkce.verifier()));
    }
}
