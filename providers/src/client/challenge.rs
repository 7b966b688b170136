//! `WWW-Authenticate` challenges (RFC 9110 section 11.6.1, RFC 6750 section
//! 3, RFC 9728 section 5.1) and what a 401/403 hands to an
//! [`AuthProvider`](crate::client::AuthProvider).

use std::fmt;

use crate::client::provider::BearerToken;

/// One challenge of a `WWW-Authenticate` header: a scheme with either
/// parameters or a token68.
#[derive(Clone, PartialEq, Eq)]
pub struct Challenge {
    scheme: String,
    token68: Option<String>,
    params: Vec<(String, String)>,
}

impl Challenge {
    /// The authentication scheme as sent (`Bearer`, `Basic`, ...).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// Whether this is a `Bearer` challenge (schemes are case-insensitive).
    pub fn is_bearer(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("bearer")
    }

    /// A parameter's value, unquoted; names are case-insensitive.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every parameter in order, names in lower case.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The token68 form (`Basic dXNlcg==`), when the challenge uses it.
    pub fn token68(&self) -> Option<&str> {
        self.token68.as_deref()
    }
}

impl fmt::Debug for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Challenge")
            .field("scheme", &self.scheme)
            .field("token68", &self.token68)
            .field("params", &self.params)
            .finish()
    }
}

/// Parses a `WWW-Authenticate` value into its challenges.
///
/// Accepts quoted and bare (token) parameter values, backslash escapes in
/// quoted strings, several challenges in one value (`Basic realm="a",
/// Bearer scope="b"`), token68 challenges, and stray whitespace and commas.
/// It never fails: what cannot be read is skipped.
///
/// ```
/// use mcp_authkit_providers::client::parse_www_authenticate;
///
/// let challenges = parse_www_authenticate(
///     r#"Basic realm="legacy", Bearer error="insufficient_scope", scope="files:read files:write", resource_metadata=https://mcp.example/.well-known/oauth-protected-resource"#,
/// );
/// assert_eq!(challenges.len(), 2);
/// let bearer = &challenges[1];
/// assert!(bearer.is_bearer());
/// assert_eq!(bearer.param("scope"), Some("files:read files:write"));
/// assert_eq!(
///     bearer.param("resource_metadata"),
///     Some("https://mcp.example/.well-known/oauth-protected-resource")
/// );
/// ```
pub fn parse_www_authenticate(value: &str) -> Vec<Challenge> {
    let mut parser = Parser {
        bytes: value.as_bytes(),
        text: value,
        pos: 0,
    };
    let mut challenges: Vec<Challenge> = Vec::new();
    loop {
        parser.skip_separators();
        if parser.at_end() {
            break;
        }
        let Some(token) = parser.token() else {
            // Not a token where one must be: skip this character.
            parser.pos += parser.text[parser.pos..]
                .chars()
                .next()
                .map_or(1, char::len_utf8);
            continue;
        };
        parser.skip_whitespace();
        if parser.peek() == Some(b'=') && !challenges.is_empty() && !parser.is_token68_tail() {
            // `name = value`: a parameter of the current challenge.
            parser.pos += 1;
            parser.skip_whitespace();
            let value = parser.value();
            if let Some(current) = challenges.last_mut() {
                current.params.push((token.to_ascii_lowercase(), value));
            }
            continue;
        }
        // A new challenge: its scheme, then a token68 or parameters.
        let mut challenge = Challenge {
            scheme: token.to_owned(),
            token68: None,
            params: Vec::new(),
        };
        if let Some(token68) = parser.token68() {
            challenge.token68 = Some(token68);
        }
        challenges.push(challenge);
    }
    challenges
}

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn skip_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.pos += 1;
        }
    }

    fn token(&mut self) -> Option<&'a str> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        (self.pos > start).then(|| &self.text[start..self.pos])
    }

    /// Whether the `=` at the cursor ends a token68 (only `=`s, then the end
    /// or a comma) rather than starting a parameter value.
    fn is_token68_tail(&self) -> bool {
        let rest = &self.bytes[self.pos..];
        let after = rest.iter().position(|b| *b != b'=').unwrap_or(rest.len());
        rest[after..]
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t'))
            .is_none_or(|b| *b == b',')
    }

    /// A token68 right after a scheme: only when it is not the name of the
    /// first parameter.
    fn token68(&mut self) -> Option<String> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
        {
            self.pos += 1;
        }
        if self.pos == start {
            return None;
        }
        let body_end = self.pos;
        if self.peek() == Some(b'=') && !self.is_token68_tail() {
            // `scheme name=value`: the first parameter, not a token68.
            self.pos = start;
            return None;
        }
        while self.peek() == Some(b'=') {
            self.pos += 1;
        }
        let rest_is_param = {
            let mut probe = self.pos;
            while matches!(self.bytes.get(probe), Some(b' ' | b'\t')) {
                probe += 1;
            }
            !matches!(self.bytes.get(probe), None | Some(b','))
        };
        if rest_is_param && body_end == self.pos {
            // A token followed by something else: the start of parameters.
            self.pos = start;
            return None;
        }
        Some(self.text[start..self.pos].to_owned())
    }

    fn value(&mut self) -> String {
        if self.peek() == Some(b'"') {
            self.pos += 1;
            let mut value = String::new();
            let mut chars = self.text[self.pos..].char_indices();
            let mut consumed = self.text.len() - self.pos;
            while let Some((offset, c)) = chars.next() {
                match c {
                    '"' => {
                        consumed = offset + 1;
                        break;
                    }
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    c => value.push(c),
                }
            }
            self.pos += consumed;
            value
        } else {
            let start = self.pos;
            while self
                .peek()
                .is_some_and(|b| !matches!(b, b',' | b' ' | b'\t'))
            {
                self.pos += 1;
            }
            self.text[start..self.pos].to_owned()
        }
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What a `401` or `403` answer tells an [`AuthProvider`]: the
/// `WWW-Authenticate` value, its parsed challenges, and the token that was
/// refused (if the transport sent one).
///
/// [`AuthProvider`]: crate::client::AuthProvider
#[derive(Clone, Default)]
pub struct AuthChallenge {
    www_authenticate: Option<String>,
    challenges: Vec<Challenge>,
    rejected: Option<BearerToken>,
}

impl AuthChallenge {
    /// From the response's `WWW-Authenticate` value (`None` when the server
    /// sent none).
    pub fn new(www_authenticate: Option<&str>) -> Self {
        AuthChallenge {
            www_authenticate: www_authenticate.map(str::to_owned),
            challenges: www_authenticate
                .map(parse_www_authenticate)
                .unwrap_or_default(),
            rejected: None,
        }
    }

    /// From every `WWW-Authenticate` field of a response (a server may send
    /// one per scheme).
    pub fn from_header_values<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let values: Vec<&str> = values.into_iter().collect();
        if values.is_empty() {
            return Self::new(None);
        }
        Self::new(Some(&values.join(", ")))
    }

    /// Records the token the server refused, so the provider replaces that
    /// one and not a newer one another request already obtained.
    pub fn with_rejected_token(mut self, token: Option<BearerToken>) -> Self {
        self.rejected = token;
        self
    }

    /// The raw `WWW-Authenticate` value.
    pub fn www_authenticate(&self) -> Option<&str> {
        self.www_authenticate.as_deref()
    }

    /// Every challenge of the header.
    pub fn challenges(&self) -> &[Challenge] {
        &self.challenges
    }

    /// The first `Bearer` challenge.
    pub fn bearer(&self) -> Option<&Challenge> {
        self.challenges.iter().find(|c| c.is_bearer())
    }

    /// The scopes the `Bearer` challenge names (`scope="a b"`), in order.
    pub fn scopes(&self) -> Vec<String> {
        self.bearer_param("scope")
            .map(|scope| scope.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// The `Bearer` challenge's `error` (`invalid_token`,
    /// `insufficient_scope`, ...).
    pub fn error(&self) -> Option<&str> {
        self.bearer_param("error")
    }

    /// The `Bearer` challenge's `error_description`.
    pub fn error_description(&self) -> Option<&str> {
        self.bearer_param("error_description")
    }

    /// The Protected Resource Metadata URL of the challenge (RFC 9728
    /// section 5.1).
    pub fn resource_metadata(&self) -> Option<&str> {
        self.bearer_param("resource_metadata")
    }

    /// Whether the server asks for more scopes (`error="insufficient_scope"`).
    pub fn is_insufficient_scope(&self) -> bool {
        self.error() == Some("insufficient_scope")
    }

    /// The refused token, if the transport recorded it.
    pub fn rejected_token(&self) -> Option<&BearerToken> {
        self.rejected.as_ref()
    }

    fn bearer_param(&self, name: &str) -> Option<&str> {
        self.bearer().and_then(|c| c.param(name))
    }
}

impl fmt::Debug for AuthChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthChallenge")
            .field("www_authenticate", &self.www_authenticate)
            .field("rejected", &self.rejected)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = (String, Option<String>, Vec<(String, String)>);

    fn parse(value: &str) -> Vec<Parsed> {
        parse_www_authenticate(value)
            .into_iter()
            .map(|c| (c.scheme, c.token68, c.params))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn quoted_and_bare_values() {
        assert_eq!(
            parse(r#"Bearer realm="mcp", error=invalid_token, scope="a b""#),
            vec![(
                "Bearer".into(),
                None,
                pairs(&[
                    ("realm", "mcp"),
                    ("error", "invalid_token"),
                    ("scope", "a b")
                ])
            )]
        );
    }

    #[test]
    fn escapes_commas_and_equals_inside_quotes() {
        let parsed = parse(r#"Bearer error_description="a \"quoted\", b=c", scope=x"#);
        assert_eq!(
            parsed[0].2,
            pairs(&[("error_description", r#"a "quoted", b=c"#), ("scope", "x")])
        );
    }

    #[test]
    fn several_challenges_in_one_value() {
        let parsed = parse(
            r#"Basic realm="legacy", Bearer resource_metadata="https://x/.well-known/oauth-protected-resource", DPoP algs="ES256""#,
        );
        let schemes: Vec<_> = parsed.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(schemes, ["Basic", "Bearer", "DPoP"]);
        assert_eq!(parsed[0].2, pairs(&[("realm", "legacy")]));
        assert_eq!(
            parsed[1].2,
            pairs(&[(
                "resource_metadata",
                "https://x/.well-known/oauth-protected-resource"
            )])
        );
        assert_eq!(parsed[2].2, pairs(&[("algs", "ES256")]));
    }

    #[test]
    fn bare_scheme_token68_and_case() {
        assert_eq!(parse("Bearer"), vec![("Bearer".into(), None, vec![])]);
        assert_eq!(
            parse("Basic dXNlcjpwYXNz==, bearer SCOPE=\"x\""),
            vec![
                ("Basic".into(), Some("dXNlcjpwYXNz==".into()), vec![]),
                ("bearer".into(), None, pairs(&[("scope", "x")])),
            ]
        );
        let challenge =
            AuthChallenge::new(Some("BEARER Scope=\"a  b\" , Error=insufficient_scope"));
        assert_eq!(challenge.scopes(), ["a", "b"]);
        assert!(challenge.is_insufficient_scope());
    }

    #[test]
    fn whitespace_around_equals_and_junk() {
        let parsed = parse(" ,, Bearer  scope = \"a\" ,  error = x ,");
        assert_eq!(parsed[0].2, pairs(&[("scope", "a"), ("error", "x")]));
        // Garbage never panics and keeps what it can.
        for junk in [
            "=",
            "\"",
            "Bearer scope=\"unterminated",
            "é=é, ,=",
            "Bearer =",
        ] {
            let _ = parse_www_authenticate(junk);
        }
        assert_eq!(
            parse("Bearer scope=\"unterminated")[0].2,
            pairs(&[("scope", "unterminated")])
        );
    }

    #[test]
    fn challenge_accessors() {
        let challenge = AuthChallenge::from_header_values([
            "Basic realm=\"x\"",
            "Bearer error=\"insufficient_scope\", scope=\"files:write\", resource_metadata=\"https://mcp.example/.well-known/oauth-protected-resource/mcp\", error_description=\"need write\"",
        ]);
        assert_eq!(challenge.scopes(), ["files:write"]);
        assert_eq!(challenge.error_description(), Some("need write"));
        assert_eq!(
            challenge.resource_metadata(),
            Some("https://mcp.example/.well-known/oauth-protected-resource/mcp")
        );
        assert!(AuthChallenge::new(None).scopes().is_empty());
        assert!(AuthChallenge::new(Some("Basic realm=x")).bearer().is_none());
    }
}
