//! The stored format of records: versioned JSON that every backend writes.
//!
//! Each encoded value starts with a format version `"v"`. A release reads
//! every version up to its own and refuses newer ones with
//! [`CodecError::UnsupportedVersion`], so a rollback never misreads data a
//! newer release wrote. Fields are added compatibly (readers ignore unknown
//! fields; new fields get defaults); any other change bumps the version and
//! keeps a reader for the old one here.
//!
//! Secrets are written in the clear by these functions: this is the only
//! place they are serialized, on purpose, so nothing else can put them in a
//! log. Wrap a store in `mcp-authkit-store-encrypted` to keep them encrypted
//! at rest.
//!
//! ```
//! use mcp_authkit_core::{codec, TokenRecord, Timestamp};
//! use secrecy::ExposeSecret;
//!
//! let record = TokenRecord::new("at", Timestamp::from_unix_millis(5)).with_refresh_token("rt");
//! let bytes = codec::encode_token(&record);
//! let back = codec::decode_token(&bytes).unwrap();
//! assert_eq!(back.access_token.expose_secret(), "at");
//! ```

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::error::CodecError;
use crate::flow::{FlowOutcome, FlowState, PendingFlow};
use crate::record::{ExtraFields, TokenKey, TokenRecord};
use crate::time::Timestamp;

/// The token record format this release writes.
pub const TOKEN_FORMAT_VERSION: u64 = 1;
/// The pending flow format this release writes.
pub const FLOW_FORMAT_VERSION: u64 = 1;
/// The flow outcome format this release writes.
pub const OUTCOME_FORMAT_VERSION: u64 = 1;

#[derive(Deserialize)]
struct VersionOnly {
    v: u64,
}

fn version_of(bytes: &[u8], what: &'static str, supported: u64) -> Result<u64, CodecError> {
    // Every encoder here writes `{"v":N,` first, so reading the digits
    // spares a second JSON parse on each read; anything else (hand-edited or
    // foreign data) takes the full parse.
    let v = match leading_version(bytes) {
        Some(v) => v,
        None => {
            let VersionOnly { v } =
                serde_json::from_slice(bytes).map_err(|e| CodecError::Malformed(e.into()))?;
            v
        }
    };
    if v > supported || v == 0 {
        return Err(CodecError::UnsupportedVersion {
            what,
            found: v,
            supported,
        });
    }
    Ok(v)
}

/// N of a value that starts with `{"v":N,` (at most 9 digits).
fn leading_version(bytes: &[u8]) -> Option<u64> {
    let rest = bytes.strip_prefix(br#"{"v":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 9 || rest.get(digits) != Some(&b',') {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

fn expose(secret: &SecretString) -> &str {
    secret.expose_secret()
}

#[derive(Serialize)]
struct TokenV1Out<'a> {
    v: u64,
    access_token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    token_type: &'a str,
    scopes: &'a [String],
    expires_at: Option<Timestamp>,
    obtained_at: Timestamp,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    extra: BTreeMap<&'a str, &'a str>,
}

#[derive(Deserialize)]
struct TokenV1In {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    token_type: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    expires_at: Option<Timestamp>,
    obtained_at: Timestamp,
    #[serde(default)]
    extra: BTreeMap<String, String>,
}

/// Encodes a token record in the current format.
pub fn encode_token(record: &TokenRecord) -> Vec<u8> {
    let out = TokenV1Out {
        v: TOKEN_FORMAT_VERSION,
        access_token: expose(&record.access_token),
        refresh_token: record.refresh_token.as_ref().map(expose),
        token_type: &record.token_type,
        scopes: &record.scopes,
        expires_at: record.expires_at,
        obtained_at: record.obtained_at,
        extra: record.extra.iter().map(|(k, v)| (k, expose(v))).collect(),
    };
    serde_json::to_vec(&out).expect("a token record always serializes")
}

/// Decodes a token record written by this or an earlier release.
pub fn decode_token(bytes: &[u8]) -> Result<TokenRecord, CodecError> {
    version_of(bytes, "token record", TOKEN_FORMAT_VERSION)?;
    let input: TokenV1In =
        serde_json::from_slice(bytes).map_err(|e| CodecError::Malformed(e.into()))?;
    let mut extra = ExtraFields::default();
    for (name, value) in input.extra {
        extra.insert(name, value);
    }
    Ok(TokenRecord {
        access_token: SecretString::from(input.access_token),
        refresh_token: input.refresh_token.map(SecretString::from),
        token_type: input.token_type,
        scopes: input.scopes,
        expires_at: input.expires_at,
        obtained_at: input.obtained_at,
        extra,
    })
}

#[derive(Serialize)]
struct FlowV1Out<'a> {
    v: u64,
    state: &'a str,
    provider: &'a str,
    subject: &'a str,
    pkce_verifier: &'a str,
    redirect_uri: &'a str,
    scopes: &'a [String],
    elicitation_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_by: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attributes: &'a BTreeMap<String, String>,
    created_at: Timestamp,
    expires_at: Timestamp,
}

#[derive(Deserialize)]
struct FlowV1In {
    state: String,
    provider: String,
    subject: String,
    pkce_verifier: String,
    redirect_uri: String,
    #[serde(default)]
    scopes: Vec<String>,
    elicitation_id: String,
    #[serde(default)]
    started_by: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    created_at: Timestamp,
    expires_at: Timestamp,
}

/// Encodes a pending flow in the current format.
pub fn encode_flow(flow: &PendingFlow) -> Vec<u8> {
    let out = FlowV1Out {
        v: FLOW_FORMAT_VERSION,
        state: flow.state.as_str(),
        provider: flow.key.provider(),
        subject: flow.key.subject(),
        pkce_verifier: expose(&flow.pkce_verifier),
        redirect_uri: &flow.redirect_uri,
        scopes: &flow.scopes,
        elicitation_id: &flow.elicitation_id,
        started_by: flow.started_by.as_deref(),
        attributes: &flow.attributes,
        created_at: flow.created_at,
        expires_at: flow.expires_at,
    };
    serde_json::to_vec(&out).expect("a pending flow always serializes")
}

/// Decodes a pending flow written by this or an earlier release.
pub fn decode_flow(bytes: &[u8]) -> Result<PendingFlow, CodecError> {
    version_of(bytes, "pending flow", FLOW_FORMAT_VERSION)?;
    let input: FlowV1In =
        serde_json::from_slice(bytes).map_err(|e| CodecError::Malformed(e.into()))?;
    Ok(PendingFlow {
        state: FlowState::new(input.state),
        key: TokenKey::new(input.provider, input.subject),
        pkce_verifier: SecretString::from(input.pkce_verifier),
        redirect_uri: input.redirect_uri,
        scopes: input.scopes,
        elicitation_id: input.elicitation_id,
        started_by: input.started_by,
        attributes: input.attributes,
        created_at: input.created_at,
        expires_at: input.expires_at,
    })
}

#[derive(Serialize)]
struct OutcomeV1Out<'a> {
    v: u64,
    #[serde(flatten)]
    outcome: &'a FlowOutcome,
}

#[derive(Deserialize)]
struct OutcomeV1In {
    #[serde(flatten)]
    outcome: FlowOutcome,
}

/// Encodes a flow outcome in the current format.
pub fn encode_outcome(outcome: &FlowOutcome) -> Vec<u8> {
    serde_json::to_vec(&OutcomeV1Out {
        v: OUTCOME_FORMAT_VERSION,
        outcome,
    })
    .expect("a flow outcome always serializes")
}

/// Decodes a flow outcome written by this or an earlier release.
pub fn decode_outcome(bytes: &[u8]) -> Result<FlowOutcome, CodecError> {
    version_of(bytes, "flow outcome", OUTCOME_FORMAT_VERSION)?;
    let input: OutcomeV1In =
        serde_json::from_slice(bytes).map_err(|e| CodecError::Malformed(e.into()))?;
    Ok(input.outcome)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::Revision;

    #[test]
    fn token_round_trips_every_field() {
        let record = TokenRecord::new("access", Timestamp::from_unix_millis(1_000))
            .with_refresh_token("refresh")
            .with_scopes(["a", "b c"])
            .with_expires_at(Timestamp::from_unix_millis(9_000))
            .with_token_type("DPoP")
            .with_extra("id_token", "eyJ.x.y");
        let back = decode_token(&encode_token(&record)).unwrap();
        assert_eq!(back.access_token.expose_secret(), "access");
        assert_eq!(back.refresh_token.unwrap().expose_secret(), "refresh");
        assert_eq!(back.scopes, vec!["a", "b c"]);
        assert_eq!(back.expires_at, Some(Timestamp::from_unix_millis(9_000)));
        assert_eq!(back.obtained_at, Timestamp::from_unix_millis(1_000));
        assert_eq!(back.token_type, "DPoP");
        assert_eq!(back.extra, record.extra);
    }

    /// Bytes as release 0.1 wrote them: later releases must keep reading them.
    #[test]
    fn reads_the_frozen_v1_token_format() {
        let v1 = br#"{"v":1,"access_token":"a","token_type":"Bearer","scopes":["s"],"expires_at":null,"obtained_at":7}"#;
        let record = decode_token(v1).unwrap();
        assert_eq!(record.access_token.expose_secret(), "a");
        assert!(record.refresh_token.is_none());
        assert_eq!(record.expires_at, None);
    }

    #[test]
    fn refuses_newer_and_foreign_data() {
        let newer = br#"{"v":2,"access_token":"a"}"#;
        assert!(matches!(
            decode_token(newer),
            Err(CodecError::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            })
        ));
        assert!(matches!(
            decode_token(b"hello"),
            Err(CodecError::Malformed(_))
        ));
        assert!(matches!(
            decode_token(br#"{"v":1}"#),
            Err(CodecError::Malformed(_))
        ));
        assert!(matches!(
            decode_flow(br#"{"x":1}"#),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn version_is_read_fast_or_by_a_full_parse() {
        assert_eq!(leading_version(br#"{"v":1,"a":2}"#), Some(1));
        assert_eq!(leading_version(br#"{"v":12,"a":2}"#), Some(12));
        assert_eq!(leading_version(br#"{ "v":1,"a":2}"#), None);
        assert_eq!(leading_version(br#"{"v":1}"#), None);
        assert_eq!(leading_version(br#"{"v":-1,"#), None);
        // Other spellings of the same document still decode.
        let spaced = br#"{ "access_token":"a", "v": 1, "token_type":"Bearer","obtained_at":7}"#;
        assert_eq!(
            decode_token(spaced).unwrap().access_token.expose_secret(),
            "a"
        );
        let newer = br#"{"token_type":"x","v":3}"#;
        assert!(matches!(
            decode_token(newer),
            Err(CodecError::UnsupportedVersion { found: 3, .. })
        ));
    }

    #[test]
    fn malformed_errors_never_echo_secrets() {
        // A secret where a number belongs: the parser would quote it.
        let bytes =
            br#"{"v":1,"access_token":"a","token_type":"Bearer","obtained_at":"s3cr3t-token"}"#;
        let raw = serde_json::from_slice::<TokenV1In>(bytes)
            .err()
            .expect("a mistyped field does not parse")
            .to_string();
        assert!(raw.contains("s3cr3t-token"), "the parser quotes it: {raw}");
        let error = decode_token(bytes).unwrap_err().to_string();
        assert!(!error.contains("s3cr3t-token"), "{error}");
        assert!(error.contains("invalid type"), "{error}");
    }

    #[test]
    fn flow_and_outcome_round_trip() {
        let flow = PendingFlow::new(
            TokenKey::new("p:{x}", "ü ser"),
            "http://127.0.0.1:1/cb",
            vec!["repo".into()],
            Timestamp::from_unix_millis(10),
            Duration::from_secs(5),
        )
        .with_started_by("session-1")
        .with_attribute("resource", "https://mcp.example");
        let back = decode_flow(&encode_flow(&flow)).unwrap();
        assert_eq!(back.state, flow.state);
        assert_eq!(back.key, flow.key);
        assert_eq!(
            back.pkce_verifier.expose_secret(),
            flow.pkce_verifier.expose_secret()
        );
        assert_eq!(back.expires_at, Timestamp::from_unix_millis(5_010));
        assert_eq!(back.attributes, flow.attributes);
        assert_eq!(back.started_by.as_deref(), Some("session-1"));

        for outcome in [
            FlowOutcome::Authorized {
                revision: Revision::new(3),
            },
            FlowOutcome::Denied {
                error: "access_denied".into(),
                description: Some("no".into()),
            },
            FlowOutcome::Failed {
                reason: "exchange failed".into(),
            },
        ] {
            assert_eq!(decode_outcome(&encode_outcome(&outcome)).unwrap(), outcome);
        }
    }
}
