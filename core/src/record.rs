//! The token records every backend stores.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use crate::time::Timestamp;

/// Which token: the integration (`provider`, e.g. `"github"`) and the MCP
/// user it belongs to (`subject`, a stable id from the server's own
/// authorization, e.g. `iss` + `sub`).
///
/// Any UTF-8 is allowed in either part, including `:`, `{`, `}`, `*`, spaces
/// and the empty string; backends must keep keys that differ in any byte
/// apart.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    // Shared: a lifecycle builds a key per token read, and cloning its one
    // provider name costs no allocation (it hashes and compares as a str).
    provider: Arc<str>,
    subject: String,
}

// By provider, then subject, as the derive would; keys of one lifecycle
// share their provider name, and an ordered store (the memory store's map)
// then compares no provider bytes at all.
impl Ord for TokenKey {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let provider = if Arc::ptr_eq(&self.provider, &other.provider) {
            std::cmp::Ordering::Equal
        } else {
            self.provider.cmp(&other.provider)
        };
        provider.then_with(|| self.subject.cmp(&other.subject))
    }
}

impl PartialOrd for TokenKey {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl TokenKey {
    /// A key for `subject`'s token at `provider`.
    pub fn new(provider: impl Into<String>, subject: impl Into<String>) -> Self {
        TokenKey {
            provider: Arc::from(provider.into()),
            subject: subject.into(),
        }
    }

    /// A key on a provider name the caller shares, holding `subject` as is:
    /// the valid-token path builds one without copying either.
    pub(crate) fn shared(provider: &Arc<str>, subject: String) -> Self {
        TokenKey {
            provider: Arc::clone(provider),
            subject,
        }
    }

    /// The subject, given back.
    pub(crate) fn into_subject(self) -> String {
        self.subject
    }

    /// The integration's name.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The MCP user's stable id.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("provider", &self.provider)
            .field("subject", &self.subject)
            .finish()
    }
}

impl fmt::Display for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} for subject {:?}", self.provider, self.subject)
    }
}

/// A stored token's version. Every write of a key gives it a revision greater
/// than any revision that key had before, also across a delete and re-create,
/// so a compare-and-swap on an old revision can never hit a newer record.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Revision(u64);

impl Revision {
    /// A revision from its number. Backends create these; applications only
    /// pass back what they were given.
    pub const fn new(number: u64) -> Self {
        Revision(number)
    }

    /// The revision's number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// An OAuth token as obtained from an authorization server.
///
/// The access token, the refresh token and every extra field are secrets:
/// `Debug` prints a redaction, there is no `Serialize` (a record cannot end up
/// in a log line by accident), and backends write it only through
/// [`codec`](crate::codec).
///
/// ```
/// use std::time::Duration;
/// use mcp_authkit_core::{TokenRecord, Timestamp};
///
/// let now = Timestamp::now();
/// let record = TokenRecord::new("gho_secret", now)
///     .with_refresh_token("ghr_secret")
///     .with_scopes(["repo", "read:user"])
///     .with_expires_at(now.saturating_add(Duration::from_secs(3600)));
/// let printed = format!("{record:?}");
/// assert!(!printed.contains("gho_secret") && !printed.contains("ghr_secret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct TokenRecord {
    /// The bearer credential.
    pub access_token: SecretString,
    /// The refresh token, when the server issued one.
    pub refresh_token: Option<SecretString>,
    /// Usually `"Bearer"`.
    pub token_type: String,
    /// The granted scopes.
    pub scopes: Vec<String>,
    /// When the access token stops working; `None` when the server did not
    /// say (the token is then used until an API call is refused).
    pub expires_at: Option<Timestamp>,
    /// When the token was obtained.
    pub obtained_at: Timestamp,
    /// Other fields of the token response (`id_token`, ...); secret.
    pub extra: ExtraFields,
}

impl TokenRecord {
    /// A bearer token obtained at `obtained_at`, with no refresh token, no
    /// scopes and unknown expiry.
    pub fn new(access_token: impl Into<String>, obtained_at: Timestamp) -> Self {
        TokenRecord {
            access_token: SecretString::from(access_token.into()),
            refresh_token: None,
            token_type: "Bearer".to_owned(),
            scopes: Vec::new(),
            expires_at: None,
            obtained_at,
            extra: ExtraFields::default(),
        }
    }

    /// Sets the refresh token.
    pub fn with_refresh_token(mut self, refresh_token: impl Into<String>) -> Self {
        self.refresh_token = Some(SecretString::from(refresh_token.into()));
        self
    }

    /// Sets the granted scopes.
    pub fn with_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the absolute expiry.
    pub fn with_expires_at(mut self, expires_at: Timestamp) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// Sets the token type.
    pub fn with_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.token_type = token_type.into();
        self
    }

    /// Adds an extra field.
    pub fn with_extra(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.insert(name, value);
        self
    }

    /// Whether the token has expired at `now`.
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whether every scope in `required` was granted.
    pub fn has_scopes<S: AsRef<str>>(&self, required: &[S]) -> bool {
        required
            .iter()
            .all(|needed| self.scopes.iter().any(|granted| granted == needed.as_ref()))
    }
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("access_token", &"[redacted]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("token_type", &self.token_type)
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .field("obtained_at", &self.obtained_at)
            .field("extra", &self.extra)
            .finish()
    }
}

/// Extra fields of a token response, by name. Values are secrets; a value
/// that was not a JSON string in the response is kept as its JSON text.
/// `Debug` shows the names only.
#[derive(Clone, Default)]
pub struct ExtraFields(BTreeMap<String, SecretString>);

impl ExtraFields {
    /// Sets a field.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.insert(name.into(), SecretString::from(value.into()));
    }

    /// A field's value.
    pub fn get(&self, name: &str) -> Option<&SecretString> {
        self.0.get(name)
    }

    /// Removes a field.
    pub fn remove(&mut self, name: &str) -> Option<SecretString> {
        self.0.remove(name)
    }

    /// The fields, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SecretString)> {
        self.0.iter().map(|(name, value)| (name.as_str(), value))
    }

    /// Every value, mutably: what an encrypting wrapper rewrites.
    pub fn values_mut(&mut self) -> impl Iterator<Item = (&str, &mut SecretString)> {
        self.0
            .iter_mut()
            .map(|(name, value)| (name.as_str(), value))
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ExtraFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl PartialEq for ExtraFields {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(other.0.iter())
                .all(|((ka, va), (kb, vb))| ka == kb && va.expose_secret() == vb.expose_secret())
    }
}

/// A token as read back from a store, with the revision it was stored at.
#[derive(Clone, Debug)]
pub struct StoredToken {
    /// The token.
    pub record: TokenRecord,
    /// Its revision: pass it back to compare-and-swap or invalidate.
    pub revision: Revision,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys order by provider, then subject, whether or not they share
    /// their provider name's allocation (red when the shared-name shortcut
    /// skips the subject, or compares unshared names wrongly).
    #[test]
    fn keys_order_by_provider_then_subject_shared_or_not() {
        let github: Arc<str> = Arc::from("github");
        let shared = |subject: &str| TokenKey::shared(&github, subject.to_owned());
        let own = |provider: &str, subject: &str| TokenKey::new(provider, subject);
        assert!(shared("alice") < shared("bob"));
        assert!(shared("bob") > shared("alice"));
        assert_eq!(
            shared("alice").cmp(&shared("alice")),
            std::cmp::Ordering::Equal
        );
        assert_eq!(
            shared("alice").cmp(&own("github", "alice")),
            std::cmp::Ordering::Equal
        );
        assert!(own("github", "zed") < own("google", "alice"));
        assert!(shared("zed") < own("google", "alice"));
        assert!(own("gitea", "zed") < shared("alice"));
        let mut keys = [
            own("google", "a"),
            shared("b"),
            own("github", "a"),
            shared("c"),
        ];
        keys.sort();
        let order: Vec<(&str, &str)> = keys.iter().map(|k| (k.provider(), k.subject())).collect();
        assert_eq!(
            order,
            [
                ("github", "a"),
                ("github", "b"),
                ("github", "c"),
                ("google", "a")
            ]
        );
    }
}
