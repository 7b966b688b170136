//! Strict query-string parsing for the callback and connect routes.
//!
//! Browsers and authorization servers send well-formed queries; anything
//! else (bad percent-encoding, invalid UTF-8, a parameter given twice, an
//! oversized value) is refused rather than guessed at, so a malformed
//! callback can never be read as a different one.

use std::collections::HashMap;

/// Why a query was refused. Messages name the parameter, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueryError {
    TooLong { limit: usize },
    Malformed { reason: String },
    Duplicate { name: String },
    ValueTooLong { name: &'static str, limit: usize },
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::TooLong { limit } => {
                write!(f, "the query string is longer than {limit} bytes")
            }
            QueryError::Malformed { reason } => {
                write!(f, "the query string is malformed: {reason}")
            }
            QueryError::Duplicate { name } => {
                write!(f, "the parameter {name:?} appears more than once")
            }
            QueryError::ValueTooLong { name, limit } => {
                write!(f, "the parameter {name:?} is longer than {limit} bytes")
            }
        }
    }
}

/// The parameters of a query, each present at most once.
#[derive(Debug, Default)]
pub(crate) struct Query {
    params: HashMap<String, String>,
}

impl Query {
    /// Parses `raw` (without the `?`), refusing it when longer than `limit`.
    pub(crate) fn parse(raw: Option<&str>, limit: usize) -> Result<Query, QueryError> {
        let raw = raw.unwrap_or_default();
        if raw.len() > limit {
            return Err(QueryError::TooLong { limit });
        }
        let mut params = HashMap::new();
        for pair in raw.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name)?;
            let value = decode(value)?;
            if params.contains_key(&name) {
                // Names are ours to show only if they are short and printable.
                let shown = if name.len() <= 40 && name.chars().all(|c| c.is_ascii_graphic()) {
                    name
                } else {
                    "(unprintable)".to_owned()
                };
                return Err(QueryError::Duplicate { name: shown });
            }
            params.insert(name, value);
        }
        Ok(Query { params })
    }

    /// Every parameter, in no particular order.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// A parameter, refused when longer than `limit` bytes.
    pub(crate) fn get(&self, name: &'static str, limit: usize) -> Result<Option<&str>, QueryError> {
        match self.params.get(name) {
            Some(value) if value.len() > limit => Err(QueryError::ValueTooLong { name, limit }),
            Some(value) => Ok(Some(value.as_str())),
            None => Ok(None),
        }
    }
}

/// `application/x-www-form-urlencoded` decoding that fails instead of
/// substituting: `+` is a space, `%XX` a byte, and the bytes must be UTF-8.
fn decode(text: &str) -> Result<String, QueryError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                // Two hex digits exactly: u8::from_str_radix would also take
                // a sign ("%+3" as byte 3), which no other decoder does.
                let (Some(high), Some(low)) = (
                    bytes.get(i + 1).copied().and_then(hex_digit),
                    bytes.get(i + 2).copied().and_then(hex_digit),
                ) else {
                    return Err(QueryError::Malformed {
                        reason: "a '%' is not followed by two hex digits".into(),
                    });
                };
                out.push(high << 4 | low);
                i += 3;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| QueryError::Malformed {
        reason: "a parameter is not valid UTF-8".into(),
    })
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_keeps_each_parameter_once() {
        let query = Query::parse(Some("state=a%2Bb&code=x+y&empty"), 100).unwrap();
        assert_eq!(query.get("state", 10).unwrap(), Some("a+b"));
        assert_eq!(query.get("code", 10).unwrap(), Some("x y"));
        assert_eq!(query.get("empty", 10).unwrap(), Some(""));
        assert_eq!(query.get("missing", 10).unwrap(), None);
    }

    #[test]
    fn refuses_what_it_cannot_read_exactly() {
        assert!(matches!(
            Query::parse(Some("state=a&state=b"), 100),
            Err(QueryError::Duplicate { .. })
        ));
        assert!(matches!(
            Query::parse(Some("state=%zz"), 100),
            Err(QueryError::Malformed { .. })
        ));
        assert!(matches!(
            Query::parse(Some("state=%ff%fe"), 100),
            Err(QueryError::Malformed { .. })
        ));
        assert!(matches!(
            Query::parse(Some("state=%4"), 100),
            Err(QueryError::Malformed { .. })
        ));
        // Found by the route_query fuzz target: a sign is no hex digit
        // (u8::from_str_radix accepts "+3" as 3).
        for escape in ["%+3A", "%+a", "%-1", "% 1"] {
            assert!(
                matches!(
                    Query::parse(Some(&format!("state={escape}")), 100),
                    Err(QueryError::Malformed { .. })
                ),
                "{escape}"
            );
        }
        assert!(matches!(
            Query::parse(Some(&"a".repeat(101)), 100),
            Err(QueryError::TooLong { limit: 100 })
        ));
        let query = Query::parse(Some("code=0123456789"), 100).unwrap();
        assert!(matches!(
            query.get("code", 5),
            Err(QueryError::ValueTooLong {
                name: "code",
                limit: 5
            })
        ));
    }
}
