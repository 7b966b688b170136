//! Random values, and keeping secrets out of Debug output and messages.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use url::Url;

/// Query and form parameters whose values are secrets.
pub(crate) const SECRET_PARAMS: &[&str] = &[
    "code",
    "code_verifier",
    "client_secret",
    "access_token",
    "refresh_token",
    "token",
    "id_token",
    "registration_access_token",
    "client_assertion",
    "assertion",
    "subject_token",
    "actor_token",
];

/// Headers whose values are secrets.
pub(crate) const SECRET_HEADERS: &[&str] = &["authorization", "cookie", "set-cookie"];

/// What a redacted value prints as.
pub(crate) const REDACTED: &str = "[redacted]";

/// `bytes` random bytes, base64url without padding.
pub(crate) fn random_string(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS random source does not fail on the platforms tokio supports;
    // a test server without randomness must not hand out guessable tokens.
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    URL_SAFE_NO_PAD.encode(buf)
}

/// An unguessable token (256 bits) with a readable prefix.
pub(crate) fn random_token(prefix: &str) -> String {
    format!("{prefix}{}", random_string(32))
}

pub(crate) fn is_secret_param(name: &str) -> bool {
    SECRET_PARAMS.contains(&name)
}

pub(crate) fn is_secret_header(name: &str) -> bool {
    SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str())
}

/// `url` with the values of secret query parameters replaced.
pub(crate) fn redact_url(url: &Url) -> String {
    if !url.query_pairs().any(|(name, _)| is_secret_param(&name)) {
        return url.to_string();
    }
    let mut redacted = url.clone();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(name, value)| {
            let value = if is_secret_param(&name) {
                REDACTED.to_owned()
            } else {
                value.into_owned()
            };
            (name.into_owned(), value)
        })
        .collect();
    redacted.query_pairs_mut().clear().extend_pairs(pairs);
    redacted.to_string()
}

/// `(name, value)` pairs for Debug output, secrets replaced.
pub(crate) fn redact_pairs(
    pairs: &[(String, String)],
    is_secret: fn(&str) -> bool,
) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(name, value)| {
            let shown = if is_secret(name) { REDACTED } else { value };
            (name.as_str(), shown)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_secret_values_only() {
        let url = Url::parse("http://x/cb?code=SECRET&state=visible&iss=http%3A%2F%2Fa").unwrap();
        let shown = redact_url(&url);
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("state=visible"), "{shown}");
        assert!(shown.contains("code=%5Bredacted%5D"), "{shown}");
    }

    #[test]
    fn random_tokens_differ_and_carry_256_bits() {
        let a = random_token("at_");
        let b = random_token("at_");
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 43);
    }
}
