//! The text envelope one encrypted field is stored as, and the associated
//! data that binds it to its place.
//!
//! ```text
//! mcpenc:v2:<key id>:<payload bytes>:<base64url(check ‖ nonce ‖ ciphertext ‖ tag)>
//! ```
//!
//! - `mcpenc:` marks an encrypted value, so a value stored in clear is
//!   recognized as such instead of failing as garbage.
//! - `v2` is the envelope version. Version 2 authenticates the whole
//!   record: the first secret field of a record seals a fingerprint of the
//!   record's clear fields in front of the secret (see [`crate::binding`]),
//!   and the record's other secret fields are bound to that field's nonce,
//!   so all of them come from one write. Version 1 (the first release)
//!   bound each field to its place only; it is still read.
//! - the key id names the keyring key that opens it.
//! - the payload length lets a value cut short by the store be reported as
//!   truncated rather than as tampered.
//! - the payload: an 8-byte key check (a one-way fingerprint of the key, so a
//!   different key under the same id is reported as the wrong key), the
//!   96-bit random nonce, the AES-256-GCM ciphertext and its 16-byte tag.
//!
//! It is text because the records' secret fields are strings, so any
//! backend stores an envelope wherever it stored the secret.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, Nonce, Tag};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mcp_authkit_core::{FlowState, TokenKey};
use zeroize::Zeroize;

use crate::error::EncryptionError;
use crate::key::{CHECK_LEN, EncryptionKey, Keyring, is_valid_id};

/// What starts every encrypted value.
pub const ENVELOPE_PREFIX: &str = "mcpenc:";
/// The envelope version this release writes.
pub const ENVELOPE_VERSION: u32 = 2;
/// The first release's envelope version, still read.
pub(crate) const V1: u32 = 1;

pub(crate) const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = CHECK_LEN + NONCE_LEN;
/// No field is anywhere near this; a larger claimed length is corruption.
const MAX_PAYLOAD_LEN: usize = 1 << 24;
const DOMAIN: &[u8] = b"mcp-authkit-store-encrypted";
/// Payloads (a secret plus 36 bytes) up to this size are sealed and opened
/// on the stack; typical tokens are well below it.
const INLINE_PAYLOAD: usize = 512;
/// Associated data up to this size is built on the stack.
const INLINE_AAD: usize = 256;

/// Which secret field of which record a value belongs to: the associated
/// data every ciphertext is bound to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Place<'a> {
    /// A token record's field, bound to its provider and subject.
    Token {
        /// The record's key.
        key: &'a TokenKey,
        /// Which field.
        field: TokenField<'a>,
        /// In version 2, a field other than the access token is also bound
        /// to the nonce of the record's access token envelope: fields of
        /// different writes cannot be mixed.
        record_nonce: Option<&'a [u8; NONCE_LEN]>,
    },
    /// A pending flow's PKCE verifier, bound to the flow's state and to the
    /// key the flow will store its token under.
    FlowVerifier {
        /// The flow's state.
        state: &'a FlowState,
        /// Whose token the flow obtains.
        key: &'a TokenKey,
    },
}

/// A secret field of a token record.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TokenField<'a> {
    AccessToken,
    RefreshToken,
    Extra(&'a str),
}

impl Place<'_> {
    /// The parts of the associated data of an envelope of `version`, after
    /// the domain, version and key id: at most six.
    fn parts(&self, version: u32) -> ([&[u8]; 6], usize) {
        match self {
            Place::Token {
                key,
                field,
                record_nonce,
            } => {
                let (field, name): (&[u8], &[u8]) = match field {
                    TokenField::AccessToken => (b"access_token", b""),
                    TokenField::RefreshToken => (b"refresh_token", b""),
                    TokenField::Extra(name) => (b"extra", name.as_bytes()),
                };
                let mut parts = [
                    b"token".as_slice(),
                    key.provider().as_bytes(),
                    key.subject().as_bytes(),
                    field,
                    b"",
                    b"",
                ];
                // Version 1 had no empty parts: an extra field's name was
                // the fifth part only when there was one.
                let mut count = 4;
                if matches!(
                    self,
                    Place::Token {
                        field: TokenField::Extra(_),
                        ..
                    }
                ) {
                    parts[count] = name;
                    count += 1;
                }
                if version >= 2
                    && let Some(nonce) = record_nonce
                {
                    parts[count] = nonce.as_slice();
                    count += 1;
                }
                (parts, count)
            }
            Place::FlowVerifier { state, key } => (
                [
                    b"flow".as_slice(),
                    state.as_str().as_bytes(),
                    key.provider().as_bytes(),
                    key.subject().as_bytes(),
                    b"pkce_verifier",
                    b"",
                ],
                5,
            ),
        }
    }

    /// Calls `use_it` with the associated data for a value of envelope
    /// `version` under `key_id`: every part length-prefixed, so no two
    /// places (or key ids) share an encoding whatever characters they
    /// contain. Built on the stack when it fits.
    fn with_associated_data<T>(
        &self,
        version: u32,
        key_id: &str,
        use_it: impl FnOnce(&[u8]) -> T,
    ) -> T {
        let (parts, count) = self.parts(version);
        let version = version.to_be_bytes();
        let all = [DOMAIN, version.as_slice(), key_id.as_bytes()];
        let all = all.iter().chain(&parts[..count]);
        let len: usize = all.clone().map(|part| 4 + part.len()).sum();
        let mut inline = [0u8; INLINE_AAD];
        let mut heap = Vec::new();
        let out: &mut [u8] = if len <= INLINE_AAD {
            &mut inline[..len]
        } else {
            heap.resize(len, 0);
            &mut heap
        };
        let mut at = 0;
        for part in all {
            // Parts are far below 4 GiB: stores refuse such keys long before.
            let prefix = u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes();
            out[at..at + 4].copy_from_slice(&prefix);
            out[at + 4..at + 4 + part.len()].copy_from_slice(part);
            at += 4 + part.len();
        }
        use_it(out)
    }

    #[cfg(test)]
    fn associated_data(&self, key_id: &str) -> Vec<u8> {
        self.with_associated_data(ENVELOPE_VERSION, key_id, <[u8]>::to_vec)
    }

    /// Where the value is, for error messages: never its content.
    pub(crate) fn describe(&self) -> String {
        match self {
            Place::Token { key, field, .. } => {
                let field = match field {
                    TokenField::AccessToken => "access_token".to_owned(),
                    TokenField::RefreshToken => "refresh_token".to_owned(),
                    TokenField::Extra(name) => format!("extra field {name:?}"),
                };
                format!("token {key}, {field}")
            }
            Place::FlowVerifier { state, key } => {
                format!("pending flow {state:?} for {key}, pkce_verifier")
            }
        }
    }
}

/// Encrypts `fingerprint` (empty, or the record's clear fields, see
/// [`crate::binding`]) followed by `plaintext` for `place` under `key` with
/// `nonce`, as a current-version envelope.
pub(crate) fn seal(
    key: &EncryptionKey,
    place: &Place<'_>,
    nonce: &[u8; NONCE_LEN],
    fingerprint: &[u8],
    plaintext: &str,
) -> String {
    let inner = key.inner();
    let sealed_len = fingerprint.len() + plaintext.len();
    let payload_len = HEADER_LEN + sealed_len + TAG_LEN;
    let mut inline = [0u8; INLINE_PAYLOAD];
    let mut heap = Vec::new();
    let payload: &mut [u8] = if payload_len <= INLINE_PAYLOAD {
        &mut inline[..payload_len]
    } else {
        heap.resize(payload_len, 0);
        &mut heap
    };
    let (header, rest) = payload.split_at_mut(HEADER_LEN);
    header[..CHECK_LEN].copy_from_slice(&inner.check);
    header[CHECK_LEN..].copy_from_slice(nonce);
    let (message, tag_out) = rest.split_at_mut(sealed_len);
    message[..fingerprint.len()].copy_from_slice(fingerprint);
    message[fingerprint.len()..].copy_from_slice(plaintext.as_bytes());
    // Encrypted in place: the buffer holds no plaintext afterwards.
    let tag = place.with_associated_data(ENVELOPE_VERSION, &inner.id, |aad| {
        inner
            .cipher
            .encrypt_inout_detached(&Nonce::<Aes256Gcm>::from(*nonce), aad, message.into())
            .expect("AES-GCM encrypts anything below 64 GiB")
    });
    tag_out.copy_from_slice(&tag);

    let mut out = String::with_capacity(
        ENVELOPE_PREFIX.len() + 4 + inner.id.len() + 10 + payload_len.div_ceil(3) * 4,
    );
    out.push_str(ENVELOPE_PREFIX);
    out.push('v');
    push_decimal(&mut out, ENVELOPE_VERSION as usize);
    out.push(':');
    out.push_str(&inner.id);
    out.push(':');
    push_decimal(&mut out, payload_len);
    out.push(':');
    URL_SAFE_NO_PAD.encode_string(&*payload, &mut out);
    out
}

fn push_decimal(out: &mut String, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

/// What an opened envelope held.
pub(crate) struct Opened {
    /// Its version.
    pub(crate) version: u32,
    /// Its nonce, which the record's other fields are bound to.
    pub(crate) nonce: [u8; NONCE_LEN],
    /// The fingerprint sealed in front of the secret (empty in version 1,
    /// and for fields that carry none).
    pub(crate) fingerprint: Vec<u8>,
    /// The secret.
    pub(crate) secret: String,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Decrypts a value sealed for `place` with any key of `keyring`; in a
/// version 2 envelope, the first `fingerprint_len` bytes sealed are the
/// record's fingerprint.
pub(crate) fn open(
    keyring: &Keyring,
    place: &Place<'_>,
    value: &str,
    fingerprint_len: usize,
) -> Result<Opened, EncryptionError> {
    let envelope = parse(value)?;
    let key = keyring
        .find(envelope.key_id)
        .ok_or_else(|| EncryptionError::UnknownKeyId {
            key_id: envelope.key_id.to_owned(),
        })?;
    let inner = key.inner();
    let mut inline = [0u8; INLINE_PAYLOAD];
    let mut heap = Vec::new();
    let payload: &mut [u8] = if envelope.payload_len <= INLINE_PAYLOAD {
        &mut inline[..envelope.payload_len]
    } else {
        heap.resize(envelope.payload_len, 0);
        &mut heap
    };
    // Only the used part can hold plaintext; zeroizing all of the inline
    // buffer would cost more than the decryption.
    let payload = ZeroizeOnDrop(payload);
    let payload = &mut *payload.0;
    match URL_SAFE_NO_PAD.decode_slice(envelope.payload, &mut *payload) {
        Ok(decoded) if decoded == payload.len() => {}
        _ => {
            return Err(EncryptionError::Malformed {
                reason: "the payload is not base64url of the length in the header",
            });
        }
    }
    if payload[..CHECK_LEN] != inner.check {
        return Err(EncryptionError::WrongKey {
            key_id: envelope.key_id.to_owned(),
        });
    }
    let (header, rest) = payload.split_at_mut(HEADER_LEN);
    let (message, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
    let nonce_bytes: [u8; NONCE_LEN] = header[CHECK_LEN..].try_into().expect("12 nonce bytes");
    let nonce = Nonce::<Aes256Gcm>::from(nonce_bytes);
    let tag = Tag::<Aes256Gcm>::try_from(&*tag).expect("16 tag bytes");
    place
        .with_associated_data(envelope.version, &inner.id, |aad| {
            inner
                .cipher
                .decrypt_inout_detached(&nonce, aad, (&mut *message).into(), &tag)
        })
        .map_err(|_| EncryptionError::Tampered {
            key_id: envelope.key_id.to_owned(),
        })?;
    let fingerprint_len = if envelope.version >= 2 {
        fingerprint_len
    } else {
        0
    };
    if message.len() < fingerprint_len {
        // Authentic, yet without the fingerprint its place calls for: the
        // envelope of a field sealed without one, moved here.
        return Err(EncryptionError::Tampered {
            key_id: envelope.key_id.to_owned(),
        });
    }
    let (fingerprint, secret) = message.split_at(fingerprint_len);
    // Copied out into an exactly sized string; the buffer is zeroized on drop.
    let secret = std::str::from_utf8(secret)
        .map(str::to_owned)
        .map_err(|_| EncryptionError::Malformed {
            reason: "the decrypted value is not UTF-8",
        })?;
    Ok(Opened {
        version: envelope.version,
        nonce: nonce_bytes,
        fingerprint: fingerprint.to_vec(),
        secret,
    })
}

/// Zeroizes a borrowed buffer when dropped, on every return path.
struct ZeroizeOnDrop<'a>(&'a mut [u8]);

impl Drop for ZeroizeOnDrop<'_> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// What an envelope's header says, read without decrypting it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnvelopeInfo {
    /// The envelope version.
    pub version: u32,
    /// The id of the key that encrypted it.
    pub key_id: String,
}

impl EnvelopeInfo {
    /// Reads the header of a stored value: which key encrypted it. Fails as
    /// decryption would for values that are in clear, truncated or malformed.
    ///
    /// ```
    /// use mcp_authkit_store_encrypted::{EncryptionError, EnvelopeInfo};
    ///
    /// assert!(matches!(EnvelopeInfo::read("gho_plain"), Err(EncryptionError::NotEncrypted)));
    /// ```
    pub fn read(value: &str) -> Result<EnvelopeInfo, EncryptionError> {
        let envelope = parse(value)?;
        Ok(EnvelopeInfo {
            version: envelope.version,
            key_id: envelope.key_id.to_owned(),
        })
    }
}

struct Envelope<'a> {
    version: u32,
    key_id: &'a str,
    payload_len: usize,
    payload: &'a str,
}

fn truncated(value: &str, expected: usize) -> EncryptionError {
    EncryptionError::Truncated {
        expected,
        found: value.len(),
    }
}

fn parse(value: &str) -> Result<Envelope<'_>, EncryptionError> {
    let Some(rest) = value.strip_prefix(ENVELOPE_PREFIX) else {
        if !value.is_empty() && ENVELOPE_PREFIX.starts_with(value) {
            return Err(truncated(value, ENVELOPE_PREFIX.len() + 1));
        }
        return Err(EncryptionError::NotEncrypted);
    };
    // The smallest conceivable rest of an envelope, for truncation reports.
    let minimum = value.len() + 1;
    let Some((version, rest)) = rest.split_once(':') else {
        return Err(truncated(value, minimum));
    };
    let version = version
        .strip_prefix('v')
        .filter(|digits| {
            !digits.is_empty()
                && !digits.starts_with('0')
                && digits.bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|digits| digits.parse::<u32>().ok())
        .ok_or(EncryptionError::Malformed {
            reason: "the envelope version is not v<number>",
        })?;
    // Canonical digits start at 1, so anything else is newer.
    if !(V1..=ENVELOPE_VERSION).contains(&version) {
        return Err(EncryptionError::UnsupportedVersion {
            found: version,
            supported: ENVELOPE_VERSION,
        });
    }
    let Some((key_id, rest)) = rest.split_once(':') else {
        return Err(truncated(value, minimum));
    };
    if !is_valid_id(key_id) {
        return Err(EncryptionError::Malformed {
            reason: "the key id is not a valid key id",
        });
    }
    let Some((length, payload)) = rest.split_once(':') else {
        return Err(truncated(value, minimum));
    };
    let payload_len = length
        .parse::<usize>()
        .ok()
        // Canonical digits only, so one value has exactly one envelope text.
        .filter(|_| length.bytes().all(|b| b.is_ascii_digit()) && !length.starts_with('0'))
        .filter(|&len| (HEADER_LEN + TAG_LEN..=MAX_PAYLOAD_LEN).contains(&len))
        .ok_or(EncryptionError::Malformed {
            reason: "the payload length is not a plausible number",
        })?;
    let expected_chars = (payload_len * 4).div_ceil(3);
    if payload.len() < expected_chars {
        return Err(truncated(
            value,
            value.len() - payload.len() + expected_chars,
        ));
    }
    if payload.len() > expected_chars {
        return Err(EncryptionError::Malformed {
            reason: "the payload is longer than its header says",
        });
    }
    Ok(Envelope {
        version,
        key_id,
        payload_len,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Keyring {
        Keyring::new(EncryptionKey::from_bytes("k1", &[7; 32]).unwrap())
    }

    fn place(key: &TokenKey) -> Place<'_> {
        Place::Token {
            key,
            field: TokenField::AccessToken,
            record_nonce: None,
        }
    }

    #[test]
    fn seals_and_opens() {
        let keyring = keyring();
        let key = TokenKey::new("github", "alice");
        for plaintext in ["", "gho_abc", &"x".repeat(5000), "ü ✓ \u{0}"] {
            let sealed = seal(keyring.primary(), &place(&key), &[1; 12], b"", plaintext);
            assert!(sealed.starts_with("mcpenc:v2:k1:"), "{sealed}");
            assert_eq!(
                open(&keyring, &place(&key), &sealed, 0).unwrap().secret,
                plaintext
            );
            assert_eq!(EnvelopeInfo::read(&sealed).unwrap().key_id, "k1");
        }
    }

    #[test]
    fn every_prefix_of_an_envelope_is_reported_truncated() {
        let keyring = keyring();
        let key = TokenKey::new("github", "alice");
        let sealed = seal(keyring.primary(), &place(&key), &[1; 12], b"", "gho_abc");
        for end in 1..sealed.len() {
            let cut = &sealed[..end];
            match open(&keyring, &place(&key), cut, 0) {
                Err(EncryptionError::Truncated { expected, found }) => {
                    assert_eq!(found, end);
                    assert!(expected > found, "{cut:?}: {expected} > {found}");
                }
                other => panic!("{cut:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn damaged_headers_are_malformed_or_unsupported() {
        let keyring = keyring();
        let key = TokenKey::new("github", "alice");
        let sealed = seal(keyring.primary(), &place(&key), &[1; 12], b"", "gho_abc");
        let body = sealed.strip_prefix("mcpenc:v2:").unwrap();
        let cases = [
            (format!("mcpenc:vx:{body}"), "version"),
            (format!("mcpenc:v0:{body}"), "version"),
            (format!("mcpenc:v01:{body}"), "version"),
            (format!("mcpenc:v2:bad id:{}", &body[3..]), "key id"),
            (format!("{sealed}AAAA"), "longer"),
            (sealed.replacen(":43:", ":4x:", 1), "length"),
            (sealed.replacen(":43:", ":1:", 1), "length"),
            (sealed.replacen(":43:", ":043:", 1), "length"),
            (sealed.replacen(":43:", ":+43:", 1), "length"),
        ];
        for (value, reason_part) in cases {
            match open(&keyring, &place(&key), &value, 0) {
                Err(EncryptionError::Malformed { reason }) => {
                    assert!(reason.contains(reason_part), "{value}: {reason}")
                }
                other => panic!("{value} gave {other:?}"),
            }
        }
        let mut bad_char = sealed.clone();
        bad_char.pop();
        bad_char.push('*');
        assert!(matches!(
            open(&keyring, &place(&key), &bad_char, 0),
            Err(EncryptionError::Malformed { .. })
        ));
        assert!(matches!(
            open(&keyring, &place(&key), &format!("mcpenc:v3:{body}"), 0),
            Err(EncryptionError::UnsupportedVersion {
                found: 3,
                supported: 2
            })
        ));
    }

    #[test]
    fn associated_data_is_unambiguous() {
        // Shifting characters between provider and subject changes the AAD.
        let a = TokenKey::new("ab", "c");
        let b = TokenKey::new("a", "bc");
        assert_ne!(
            place(&a).associated_data("k"),
            place(&b).associated_data("k")
        );
        let extra_a = Place::Token {
            key: &a,
            field: TokenField::Extra("access_token"),
            record_nonce: None,
        };
        assert_ne!(extra_a.associated_data("k"), place(&a).associated_data("k"));
        assert_ne!(
            place(&a).associated_data("k1"),
            place(&a).associated_data("k")
        );
    }
}
