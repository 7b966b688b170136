//! What a version 2 envelope binds besides its own place: every field of
//! the record that stays in clear.
//!
//! A record's first secret field (a token's access token, a flow's PKCE
//! verifier) carries, sealed in front of the secret, a fingerprint of the
//! record's clear fields: a 16-byte SHA-256 digest of all of them, then a
//! 4-byte hint per field. Opening the envelope checks the fingerprint
//! against the fields read beside it. The digest is what protects them
//! (128 bits, under AES-GCM's authentication); the hints (FNV-1a, cheap)
//! only tell which field was changed, so the error can name it.

use mcp_authkit_core::{PendingFlow, TokenRecord};
use sha2::{Digest, Sha256};

use crate::error::EncryptionError;

const DIGEST_LEN: usize = 16;
const HINT_LEN: usize = 4;

/// The clear fields of a token, in the order they are fingerprinted.
pub(crate) const TOKEN_FIELDS: usize = 6;
/// The clear fields of a pending flow, in the order they are fingerprinted.
pub(crate) const FLOW_FIELDS: usize = 7;

/// How many bytes the fingerprint of a record with `fields` clear fields
/// takes in front of the secret.
pub(crate) const fn fingerprint_len(fields: usize) -> usize {
    DIGEST_LEN + HINT_LEN * fields
}

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// Feeds the canonical bytes of a record's clear fields, one field after
/// another, to one SHA-256 of them all and to a hint per field. Every part
/// is length-prefixed, so no two values share an encoding.
struct Writer<const N: usize> {
    all: Sha256,
    hints: [(&'static str, u32); N],
    next: usize,
}

impl<const N: usize> Writer<N> {
    fn new() -> Self {
        let mut all = Sha256::new();
        all.update(b"mcp-authkit-store-encrypted clear fields v2\0");
        Writer {
            all,
            hints: [("", FNV_OFFSET); N],
            next: 0,
        }
    }

    /// Starts the next field.
    fn field(&mut self, name: &'static str) -> &mut Self {
        self.hints[self.next] = (name, FNV_OFFSET);
        self.next += 1;
        self.part(name.as_bytes())
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.all.update(bytes);
        let hint = &mut self.hints[self.next - 1].1;
        for &byte in bytes {
            *hint = (*hint ^ u32::from(byte)).wrapping_mul(FNV_PRIME);
        }
    }

    fn part(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes(&(bytes.len() as u64).to_be_bytes());
        self.bytes(bytes);
        self
    }

    fn count(&mut self, n: usize) -> &mut Self {
        self.part(&(n as u64).to_be_bytes())
    }

    fn list<'a>(&mut self, items: impl ExactSizeIterator<Item = &'a str>) -> &mut Self {
        self.count(items.len());
        for item in items {
            self.part(item.as_bytes());
        }
        self
    }

    fn optional(&mut self, value: Option<&[u8]>) -> &mut Self {
        match value {
            None => self.part(b"none"),
            Some(value) => self.part(b"some").part(value),
        }
    }

    fn finish(self) -> Fingerprint<N> {
        debug_assert_eq!(self.next, N, "every field written");
        let digest: [u8; 32] = self.all.finalize().into();
        Fingerprint {
            digest: digest[..DIGEST_LEN].try_into().expect("16 bytes"),
            hints: self.hints,
        }
    }
}

/// The fingerprint of a record's clear fields.
pub(crate) struct Fingerprint<const N: usize> {
    digest: [u8; DIGEST_LEN],
    hints: [(&'static str, u32); N],
}

/// A token's clear fields: token type, scopes, expiry, when it was
/// obtained, whether it has a refresh token, and the names of its extra
/// fields (their values are sealed, each in its own envelope).
pub(crate) fn token(record: &TokenRecord) -> Fingerprint<TOKEN_FIELDS> {
    let mut w = Writer::new();
    w.field("token_type").part(record.token_type.as_bytes());
    w.field("scopes")
        .list(record.scopes.iter().map(String::as_str));
    w.field("expires_at").optional(
        record
            .expires_at
            .map(|at| at.unix_millis().to_be_bytes())
            .as_ref()
            .map(|bytes| &bytes[..]),
    );
    w.field("obtained_at")
        .part(&record.obtained_at.unix_millis().to_be_bytes());
    w.field("refresh_token")
        .part(&[u8::from(record.refresh_token.is_some())]);
    let names = w.field("extra field names");
    names.count(record.extra.len());
    for (name, _) in record.extra.iter() {
        names.part(name.as_bytes());
    }
    w.finish()
}

/// A flow's clear fields besides its state and key (which are in the
/// envelope's associated data): redirect URI, scopes, elicitation id, who
/// started it, its attributes, and its creation and expiry times.
pub(crate) fn flow(flow: &PendingFlow) -> Fingerprint<FLOW_FIELDS> {
    let mut w = Writer::new();
    w.field("redirect_uri").part(flow.redirect_uri.as_bytes());
    w.field("scopes")
        .list(flow.scopes.iter().map(String::as_str));
    w.field("elicitation_id")
        .part(flow.elicitation_id.as_bytes());
    w.field("started_by")
        .optional(flow.started_by.as_deref().map(str::as_bytes));
    let attributes = w.field("attributes");
    attributes.count(flow.attributes.len());
    for (name, value) in &flow.attributes {
        attributes.part(name.as_bytes()).part(value.as_bytes());
    }
    w.field("created_at")
        .part(&flow.created_at.unix_millis().to_be_bytes());
    w.field("expires_at")
        .part(&flow.expires_at.unix_millis().to_be_bytes());
    w.finish()
}

impl<const N: usize> Fingerprint<N> {
    /// The bytes sealed in front of the secret.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(fingerprint_len(N));
        out.extend_from_slice(&self.digest);
        for (_, hint) in &self.hints {
            out.extend_from_slice(&hint.to_be_bytes());
        }
        out
    }

    /// Checks the fingerprint that was sealed against the fields read now;
    /// on a mismatch, names the field that changed.
    pub(crate) fn check(&self, sealed: &[u8]) -> Result<(), EncryptionError> {
        if sealed.len() == fingerprint_len(N) && sealed[..DIGEST_LEN] == self.digest {
            return Ok(());
        }
        let changed = self
            .hints
            .iter()
            .enumerate()
            .find(|(i, (_, hint))| {
                let at = DIGEST_LEN + i * HINT_LEN;
                sealed.get(at..at + HINT_LEN) != Some(&hint.to_be_bytes()[..])
            })
            .map_or("a field stored in clear", |(_, (name, _))| *name);
        Err(EncryptionError::ClearFieldTampered { field: changed })
    }
}
