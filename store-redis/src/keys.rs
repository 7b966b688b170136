//! The key layout: how token keys and flow states become Redis key names.
//!
//! See the crate documentation for the layout and why it is Redis Cluster
//! safe. Everything that builds or parses a key name lives here, so the
//! layout has one definition.

use mcp_authkit_core::{Error, FlowState, MalformedRecord, TokenKey};

use crate::BACKEND;

/// Characters kept as they are in key names; every other byte is written as
/// `%XX`. The set leaves out `%` (the escape), `.` (the separator between
/// provider and subject), `{` and `}` (hash tag delimiters), glob characters,
/// whitespace and control characters, so names stay readable in `redis-cli`
/// and the encoding is injective.
fn is_kept(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'-' | b'_'
                | b'~'
                | b'@'
                | b'+'
                | b'='
                | b'!'
                | b'$'
                | b'&'
                | b','
                | b';'
                | b':'
                | b'/'
                | b'#'
                | b'\''
                | b'('
                | b')'
        )
}

/// Percent-encodes `text` with the [`is_kept`] set, appending to `out`.
fn escape_into(out: &mut String, text: &str) {
    // Most names (provider ids, subjects, states) need no escaping.
    if text.bytes().all(is_kept) {
        out.push_str(text);
        return;
    }
    for &byte in text.as_bytes() {
        if is_kept(byte) {
            out.push(byte as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0xF)] as char);
        }
    }
}

/// Percent-encodes `text` with the [`is_kept`] set.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text);
    out
}

/// Reverses [`escape`]; `None` for text it never produces.
pub(crate) fn unescape(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                let byte = u8::from_str_radix(hex, 16).ok()?;
                // Only uppercase escapes of bytes outside the kept set are
                // ever written; anything else is not one of our names.
                if is_kept(byte) || hex.bytes().any(|b| b.is_ascii_lowercase()) {
                    return None;
                }
                out.push(byte);
                i += 3;
            }
            byte if is_kept(byte) => {
                out.push(byte);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The hash tag of a token key: `escape(provider).escape(subject)`. It is
/// never empty (it always holds the `.`), and never contains `}`.
fn token_tag(key: &TokenKey) -> String {
    let mut tag = String::with_capacity(key.provider().len() + key.subject().len() + 1);
    push_token_tag(&mut tag, key);
    tag
}

fn push_token_tag(out: &mut String, key: &TokenKey) {
    escape_into(out, key.provider());
    out.push('.');
    escape_into(out, key.subject());
}

/// The hash tag of a flow state. Generated states are base64url, which
/// [`escape`] keeps as they are; the empty state becomes `%`, which
/// [`escape`] never produces, so the tag is never empty (an empty `{}` would
/// make Redis Cluster hash the whole name, splitting a flow from its outcome).
pub(crate) fn state_tag(state: &FlowState) -> String {
    if state.as_str().is_empty() {
        "%".to_owned()
    } else {
        escape(state.as_str())
    }
}

/// Key names under one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
    /// `prefix:tok:{`, what every token key starts with.
    token_start: String,
    /// The SCAN pattern for token keys, glob characters of the prefix escaped.
    token_pattern: String,
    /// The channel completions are published on.
    channel: String,
}

impl Keys {
    /// Key names under `prefix`, which [`validate_prefix`] accepted.
    pub(crate) fn new(prefix: &str) -> Self {
        let token_start = format!("{prefix}:tok:{{");
        let token_pattern = format!("{}*}}", escape_glob(&token_start));
        Keys {
            prefix: prefix.to_owned(),
            token_start,
            token_pattern,
            channel: format!("{prefix}:completions"),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `prefix:tok:{tag}`: a hash with the record and its revision.
    pub(crate) fn token(&self, key: &TokenKey) -> String {
        // The hot path of every read: one allocation.
        let mut name = String::with_capacity(
            self.token_start.len() + key.provider().len() + key.subject().len() + 2,
        );
        name.push_str(&self.token_start);
        push_token_tag(&mut name, key);
        name.push('}');
        name
    }

    /// `prefix:tomb:{tag}`: the last revision of a deleted token, kept for a
    /// while so a re-created token continues above it.
    pub(crate) fn tombstone(&self, key: &TokenKey) -> String {
        format!("{}:tomb:{{{}}}", self.prefix, token_tag(key))
    }

    /// `prefix:lease:{tag}`: the refresh lease.
    pub(crate) fn lease(&self, key: &TokenKey) -> String {
        format!("{}:lease:{{{}}}", self.prefix, token_tag(key))
    }

    /// `prefix:active:{tag}`: the state of the key's active flow.
    pub(crate) fn active(&self, key: &TokenKey) -> String {
        format!("{}:active:{{{}}}", self.prefix, token_tag(key))
    }

    /// `prefix:flow:{state}`: a pending flow.
    pub(crate) fn flow(&self, state: &FlowState) -> String {
        format!("{}:flow:{{{}}}", self.prefix, state_tag(state))
    }

    /// `prefix:out:{state}`: a completed flow's outcome.
    pub(crate) fn outcome(&self, state: &FlowState) -> String {
        format!("{}:out:{{{}}}", self.prefix, state_tag(state))
    }

    /// `prefix:taken:{state}`: `<nonce> <flow bytes>` of the take that
    /// removed the flow, kept for a short while so that the same take sent
    /// again gets the same answer (see the take script).
    pub(crate) fn taken(&self, state: &FlowState) -> String {
        format!("{}:taken:{{{}}}", self.prefix, state_tag(state))
    }

    /// A flow or outcome key for messages: the state is a credential (whoever
    /// holds it can finish the flow), so only its first characters show.
    pub(crate) fn describe_state_key(&self, kind: &str, state: &FlowState) -> String {
        let shown: String = state_tag(state).chars().take(4).collect();
        format!("{}:{kind}:{{{shown}…}}", self.prefix)
    }

    /// Whether `name` is one of this prefix's keys: `prefix:kind:{...}` with
    /// one of our kinds. A longer prefix that starts with ours (`prefix:x`)
    /// never matches, since prefixes contain no braces.
    pub(crate) fn is_ours(&self, name: &str) -> bool {
        let Some(rest) = name
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix(':'))
        else {
            return false;
        };
        let Some((kind, tagged)) = rest.split_once(':') else {
            return false;
        };
        KINDS.contains(&kind) && tagged.starts_with('{') && tagged.ends_with('}')
    }

    /// The pub/sub channel completions are announced on.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// `prefix:done:{state}`: on a cluster, the sharded channel one flow's
    /// completion is announced on. It shares the flow's hash tag, so it lives
    /// on the flow's slot and the finish script can `SPUBLISH` to it.
    pub(crate) fn done_channel(&self, state: &FlowState) -> String {
        self.done_channel_of_tag(&state_tag(state))
    }

    /// [`done_channel`](Self::done_channel) from a state tag.
    pub(crate) fn done_channel_of_tag(&self, tag: &str) -> String {
        format!("{}:done:{{{tag}}}", self.prefix)
    }

    /// The SCAN MATCH pattern of token keys.
    pub(crate) fn token_pattern(&self) -> &str {
        &self.token_pattern
    }

    /// The token key a token key name stands for; a decode error naming the
    /// key for a name this layout never produces.
    pub(crate) fn parse_token(&self, name: &str) -> Result<TokenKey, Error> {
        let not_ours = || {
            Error::decode(
                BACKEND,
                name.to_owned(),
                mcp_authkit_core::CodecError::Malformed(MalformedRecord::new(
                    "the key name does not follow this library's token key layout",
                )),
            )
        };
        let tag = name
            .strip_prefix(&self.token_start)
            .and_then(|rest| rest.strip_suffix('}'))
            .ok_or_else(not_ours)?;
        let (provider, subject) = tag.split_once('.').ok_or_else(not_ours)?;
        let provider = unescape(provider).ok_or_else(not_ours)?;
        let subject = unescape(subject).ok_or_else(not_ours)?;
        Ok(TokenKey::new(provider, subject))
    }
}

/// The kinds of keys under a prefix.
const KINDS: [&str; 7] = ["tok", "tomb", "lease", "active", "flow", "out", "taken"];

/// `text` with Redis glob characters escaped, for a SCAN MATCH pattern.
pub(crate) fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Checks a key prefix: not empty, and free of `{`, `}` (they would take over
/// the hash tag), whitespace and control characters.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), Error> {
    if prefix.is_empty() {
        return Err(Error::invalid_input(
            "redis key prefix",
            "it is empty; use a name such as \"mcp-authkit\" or \"myapp:auth\"",
        ));
    }
    if let Some(bad) = prefix
        .chars()
        .find(|c| matches!(c, '{' | '}') || c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid_input(
            "redis key prefix",
            format!(
                "it contains {bad:?}; braces would change the Redis Cluster hash tag, and \
                 whitespace or control characters make keys hard to handle: use letters, \
                 digits and punctuation such as ':', '-' or '_'"
            ),
        ));
    }
    Ok(())
}

/// The hash tag Redis Cluster hashes for `name`: the text between the first
/// `{` and the next `}` when it is not empty, else the whole name.
#[cfg(test)]
pub(crate) fn cluster_hash_tag(name: &str) -> &str {
    if let Some(open) = name.find('{')
        && let Some(len) = name[open + 1..].find('}')
        && len > 0
    {
        return &name[open + 1..open + 1 + len];
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn odd_parts() -> Vec<String> {
        let mut parts: Vec<String> = [
            "",
            ":",
            ".",
            "%",
            "%41",
            "{",
            "}",
            "{tag}",
            "*",
            "a*b",
            "with space",
            "ümlaut",
            "日本語",
            "emoji🦀",
            "new\nline",
            "quote\"'",
            "back\\slash",
            "a.b",
            "[x]",
            "?",
            "AB",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        parts.push("x".repeat(1024));
        parts
    }

    #[test]
    fn escaping_round_trips_and_is_injective() {
        let parts = odd_parts();
        let mut seen = std::collections::HashSet::new();
        for part in &parts {
            let escaped = escape(part);
            assert!(
                !escaped.contains(['{', '}', '.', ' ', '*', '?', '[']),
                "{escaped}"
            );
            assert_eq!(unescape(&escaped).as_deref(), Some(part.as_str()));
            assert!(seen.insert(escaped), "two parts escape alike: {part:?}");
        }
        // Only what escape writes is read back.
        for foreign in ["%41", "%2e", "a b", "%", "%4", "{x}"] {
            assert_eq!(unescape(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn token_names_are_distinct_and_parse_back() {
        let keys = Keys::new("app:auth");
        let parts = odd_parts();
        let mut names = std::collections::HashSet::new();
        for provider in &parts {
            for subject in parts.iter().take(8) {
                let key = TokenKey::new(provider.clone(), subject.clone());
                let name = keys.token(&key);
                assert_eq!(keys.parse_token(&name).unwrap(), key);
                assert!(names.insert(name), "{key:?} collides");
            }
        }
        assert!(keys.parse_token("app:auth:tok:{nodot}").is_err());
        assert!(keys.parse_token("app:auth:tok:{a.b c}").is_err());
        assert!(keys.parse_token("other:tok:{a.b}").is_err());
    }

    #[test]
    fn keys_of_one_operation_share_a_hash_tag() {
        let keys = Keys::new("p");
        for provider in odd_parts() {
            let key = TokenKey::new(provider, "user}x{");
            let tag = cluster_hash_tag(&keys.token(&key)).to_owned();
            assert!(!tag.is_empty());
            // put, compare-and-swap and delete touch the token and its tombstone.
            assert_eq!(cluster_hash_tag(&keys.tombstone(&key)), tag);
            assert_eq!(cluster_hash_tag(&keys.lease(&key)), tag);
            assert_eq!(cluster_hash_tag(&keys.active(&key)), tag);
        }
        for state in [
            "",
            "}",
            "{",
            "abc}def",
            "a.b",
            FlowState::generate().as_str(),
        ] {
            let state = FlowState::new(state);
            // complete touches the flow and its outcome in one script.
            let tag = cluster_hash_tag(&keys.flow(&state)).to_owned();
            assert_ne!(tag, keys.flow(&state), "{state:?} has a real tag");
            assert_eq!(cluster_hash_tag(&keys.outcome(&state)), tag);
            // take touches the flow and its taken record.
            assert_eq!(cluster_hash_tag(&keys.taken(&state)), tag);
        }
        let generated = FlowState::generate();
        assert_eq!(
            state_tag(&generated),
            generated.as_str(),
            "states are kept readable"
        );
    }

    #[test]
    fn prefixes_are_checked_and_their_glob_characters_escaped() {
        assert!(validate_prefix("mcp-authkit").is_ok());
        assert!(validate_prefix("a*b?[c]").is_ok());
        for bad in ["", "a{b", "a}b", "a b", "a\nb"] {
            let error = validate_prefix(bad).unwrap_err();
            assert!(!error.is_retryable());
            assert!(error.to_string().contains("prefix"), "{error}");
        }
        assert_eq!(Keys::new("a*b").token_pattern(), "a\\*b:tok:{*}");
        let keys = Keys::new("app");
        let key = TokenKey::new("github", "u");
        let state = FlowState::generate();
        for name in [
            keys.token(&key),
            keys.tombstone(&key),
            keys.lease(&key),
            keys.active(&key),
            keys.flow(&state),
            keys.outcome(&state),
        ] {
            assert!(keys.is_ours(&name), "{name}");
            for other in ["app:x", "app:tok", "ap", "app:tok:"] {
                assert!(!Keys::new(other).is_ours(&name), "{other} claims {name}");
            }
        }
        assert!(!keys.is_ours("app:completions"));
        assert!(!keys.is_ours("app:other:{x}"));
    }
}
