//! What a version 2 envelope binds besides its own place: every field of
//! the record that stays in clear.
//!
//! A record's first secret field (a token's access token, a flow's PKCE
//! verifier) carries, sealed in front of the secret, a fingerprint of the
//! record's clear fields: a 16-byte digest of all of them, then 4 bytes per
//! field. Opening the envelope checks the fingerprint against the fields
//! read beside it. The full digest is what protects them (128 bits, under
//! AES-GCM's authentication); the per-field bytes only tell which field was
//! changed, so the error can name it.

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

/// One field's canonical bytes: every part length-prefixed, so no two
/// values share an encoding.
struct Field {
    name: &'static str,
    hasher: Sha256,
}

impl Field {
    fn new(name: &'static str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"mcp-authkit-store-encrypted clear field v2\0");
        hasher.update(name.as_bytes());
        hasher.update([0]);
        Field { name, hasher }
    }

    fn part(mut self, bytes: &[u8]) -> Self {
        self.hasher.update((bytes.len() as u64).to_be_bytes());
        self.hasher.update(bytes);
        self
    }

    fn count(self, n: usize) -> Self {
        self.part(&(n as u64).to_be_bytes())
    }

    fn list<'a>(self, items: impl ExactSizeIterator<Item = &'a str>) -> Self {
        let mut field = self.count(items.len());
        for item in items {
            field = field.part(item.as_bytes());
        }
        field
    }

    fn optional(self, value: Option<&[u8]>) -> Self {
        match value {
            None => self.part(b"none"),
            Some(value) => self.part(b"some").part(value),
        }
    }
}

/// The per-field digests of a record's clear fields.
pub(crate) struct Fingerprint<const N: usize> {
    fields: [(&'static str, [u8; 32]); N],
}

fn finish<const N: usize>(fields: [Field; N]) -> Fingerprint<N> {
    Fingerprint {
        fields: fields.map(|field| (field.name, field.hasher.finalize().into())),
    }
}

/// A token's clear fields: token type, scopes, expiry, when it was
/// obtained, whether it has a refresh token, and the names of its extra
/// fields (their values are sealed, each in its own envelope).
pub(crate) fn token(record: &TokenRecord) -> Fingerprint<TOKEN_FIELDS> {
    let millis = |at: mcp_authkit_core::Timestamp| at.unix_millis().to_be_bytes();
    finish([
        Field::new("token_type").part(record.token_type.as_bytes()),
        Field::new("scopes").list(record.scopes.iter().map(String::as_str)),
        Field::new("expires_at").optional(record.expires_at.map(millis).as_ref().map(|b| &b[..])),
        Field::new("obtained_at").part(&millis(record.obtained_at)),
        Field::new("refresh_token").part(&[u8::from(record.refresh_token.is_some())]),
        Field::new("extra field names").list(
            record
                .extra
                .iter()
                .map(|(name, _)| name)
                .collect::<Vec<_>>()
                .into_iter(),
        ),
    ])
}

/// A flow's clear fields besides its state and key (which are in the
/// envelope's associated data): redirect URI, scopes, elicitation id, who
/// started it, its attributes, and its creation and expiry times.
pub(crate) fn flow(flow: &PendingFlow) -> Fingerprint<FLOW_FIELDS> {
    let mut attributes = Field::new("attributes").count(flow.attributes.len());
    for (name, value) in &flow.attributes {
        attributes = attributes.part(name.as_bytes()).part(value.as_bytes());
    }
    finish([
        Field::new("redirect_uri").part(flow.redirect_uri.as_bytes()),
        Field::new("scopes").list(flow.scopes.iter().map(String::as_str)),
        Field::new("elicitation_id").part(flow.elicitation_id.as_bytes()),
        Field::new("started_by").optional(flow.started_by.as_deref().map(str::as_bytes)),
        attributes,
        Field::new("created_at").part(&flow.created_at.unix_millis().to_be_bytes()),
        Field::new("expires_at").part(&flow.expires_at.unix_millis().to_be_bytes()),
    ])
}

impl<const N: usize> Fingerprint<N> {
    fn digest(&self) -> [u8; 32] {
        let mut all = Sha256::new();
        all.update(b"mcp-authkit-store-encrypted clear fields v2\0");
        for (_, digest) in &self.fields {
            all.update(digest);
        }
        all.finalize().into()
    }

    /// The bytes sealed in front of the secret.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(fingerprint_len(N));
        out.extend_from_slice(&self.digest()[..DIGEST_LEN]);
        for (_, digest) in &self.fields {
            out.extend_from_slice(&digest[..HINT_LEN]);
        }
        out
    }

    /// Checks the fingerprint that was sealed against the fields read now;
    /// on a mismatch, names the field that changed.
    pub(crate) fn check(&self, sealed: &[u8]) -> Result<(), EncryptionError> {
        if sealed.len() == fingerprint_len(N) && sealed[..DIGEST_LEN] == self.digest()[..DIGEST_LEN]
        {
            return Ok(());
        }
        let changed = self
            .fields
            .iter()
            .enumerate()
            .find(|(i, (_, digest))| {
                let at = DIGEST_LEN + i * HINT_LEN;
                sealed.get(at..at + HINT_LEN) != Some(&digest[..HINT_LEN])
            })
            .map_or("a field stored in clear", |(_, (name, _))| *name);
        Err(EncryptionError::ClearFieldTampered { field: changed })
    }
}
