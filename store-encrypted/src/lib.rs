//! # mcp-authkit-store-encrypted
//!
//! Encryption at rest over any mcp-authkit store: [`EncryptedStore`] wraps a
//! [`TokenStore`] and/or [`PendingStore`] (ours, a third party's, or an
//! `Arc<dyn TokenStore>`) and is one itself. Every secret is sealed with
//! AES-256-GCM under a fresh random 96-bit nonce before it reaches the
//! backend, so a database dump, a backup or a Redis snapshot holds no usable
//! token.
//!
//! ```
//! use mcp_authkit_core::{ExposeSecret, TokenKey, TokenRecord, TokenStore, Timestamp};
//! use mcp_authkit_store_encrypted::{EncryptedStore, EncryptionKey, Keyring};
//! use mcp_authkit_store_memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // In production: EncryptionKey::from_env("2026-01", "MCP_AUTHKIT_KEY")?
//! let key = EncryptionKey::generate("2026-01");
//! let backend = MemoryStore::new();
//! let store = EncryptedStore::new(backend.clone(), Keyring::new(key));
//!
//! let user = TokenKey::new("github", "user-1");
//! let record = TokenRecord::new("gho_secret", Timestamp::now()).with_refresh_token("ghr_secret");
//! store.put(&user, &record).await?;
//!
//! // Through the wrapper: the token.
//! let read = store.get(&user).await?.unwrap();
//! assert_eq!(read.record.access_token.expose_secret(), "gho_secret");
//! // In the backend: an envelope.
//! let raw = backend.get(&user).await?.unwrap();
//! assert!(raw.record.access_token.expose_secret().starts_with("mcpenc:v2:2026-01:"));
//! # Ok(())
//! # }
//! ```
//!
//! # What is encrypted, and what stays in clear
//!
//! The wrapper rewrites only the secret fields of each record, in place, and
//! passes every operation through to the inner store. Everything a backend
//! acts on stays readable, so revisions, compare-and-swap, leases, scans,
//! TTLs and purges work exactly as without the wrapper. Fields in clear are
//! still authenticated: see below.
//!
//! | record | encrypted | in clear (authenticated), and why |
//! |---|---|---|
//! | token | access token, refresh token, the value of every `extra` field (`id_token`, ...) | provider and subject (the lookup key); revision (compare-and-swap; not authenticated, see below); `expires_at` and `obtained_at` (refresh decisions, and backends that index expiry); token type and scopes (scope checks, and not secret); the *names* of extra fields |
//! | pending flow | the PKCE verifier | the state (the lookup key); the flow's provider and subject (one active flow per key); `expires_at` and `created_at` (TTL); redirect URI, scopes, elicitation id, `started_by` and attributes (not secret) |
//! | flow outcome | nothing | it holds a revision or an OAuth error code, no secret |
//! | lease | nothing | a random value that proves nothing outside the store |
//!
//! # What the ciphertext is bound to
//!
//! Each ciphertext authenticates associated data naming its place: the
//! record kind, the field (and the extra field's name), the key id, and the
//! record's key: provider and subject for a token; state, provider and
//! subject for a flow. The parts are length-prefixed, so no two places
//! share an encoding. A ciphertext copied into another user's row, another
//! provider's row, another field, or another flow therefore fails to
//! decrypt ([`EncryptionError::Tampered`]), and so does a flow whose clear
//! provider or subject was changed to divert its token to another user.
//!
//! Every other field of the record is authenticated too (envelope version
//! 2): the record's first secret (a token's access token, a flow's PKCE
//! verifier) seals a fingerprint of its clear fields, listed in the table
//! above, and the token's other secret fields are bound to that envelope,
//! so all of a record's fields come from one write. Someone who can write
//! to the backend and changes a token's scopes, expiry, token type or
//! refresh-token presence, or a flow's redirect URI, attributes (where
//! rmcp's stored issuer requirement lives), scopes or times, gets a record
//! that no longer opens: [`EncryptionError::ClearFieldTampered`] names the
//! field. So does a secret field taken from another write of the same
//! record ([`EncryptionError::Tampered`]).
//!
//! ## What rollback can and cannot do
//!
//! The revision is assigned by the backend after encryption, so it cannot
//! be bound: someone who can write to the backend can put back a whole
//! earlier record of the *same key*, as it was once stored (a restored
//! backup does the same). It opens, and it can only be a token that user
//! once had, with the scopes and expiry it had then: an old access token
//! the provider has probably expired or revoked, and a refresh token the
//! provider rotated away, which it answers with `invalid_grant`, so the
//! lifecycle removes it and the user authorizes again. Rollback cannot mix
//! fields of two writes, change any field, move a record to another user,
//! provider or flow, or make a record out of parts. A record of the first
//! release (envelope version 1) authenticates its secret fields only:
//! until [`EncryptedStore::rekey_tokens`] has rewritten every token, a
//! version 1 record put back can carry edited clear fields. Encryption at
//! rest protects the secrets and the records' integrity from whoever can
//! read or write the backend; it does not stop that someone from deleting
//! records or serving an old one.
//!
//! # Envelope
//!
//! An encrypted field is stored as text, where the secret was:
//! `mcpenc:v2:<key id>:<payload length>:<base64url payload>`, the payload
//! being an 8-byte key check, the nonce, the ciphertext and the 16-byte tag;
//! the first secret of a record carries 40 (token) or 44 (flow) bytes of
//! fingerprint inside its ciphertext. The version lets a later release keep
//! reading it: version 1 envelopes of the first release are still read, and
//! rewritten in version 2 by the next write of the record or by
//! [`EncryptedStore::rekey_tokens`] (flows expire within their TTL).
//! [`EnvelopeInfo::read`] tells which key and version a value has without
//! decrypting it. It adds about 80 characters to each secret field (about
//! 135 to the first); mind column size limits.
//!
//! # Keys
//!
//! An [`EncryptionKey`] is 32 random bytes and an id; load it from raw bytes,
//! base64, an environment variable or a file
//! ([`from_bytes`](EncryptionKey::from_bytes),
//! [`from_base64`](EncryptionKey::from_base64),
//! [`from_env`](EncryptionKey::from_env),
//! [`from_file`](EncryptionKey::from_file)), or make one with
//! [`EncryptionKey::generate`] / [`generate_key_base64`]. Key material is
//! zeroized when dropped and never appears in `Debug` output or errors.
//!
//! A [`Keyring`] holds one primary key, which encrypts every write, and any
//! number of previous keys, which only decrypt. A token under a previous key
//! is re-encrypted under the primary key by its next write (a refresh, a new
//! authorization), or at once by [`EncryptedStore::rekey_tokens`].
//!
//! # Rotating a key
//!
//! With several replicas, roll out in steps so that no replica ever meets a
//! value under a key it does not have:
//!
//! 1. Add the new key to every replica's keyring as a *previous* key, and
//!    deploy.
//! 2. Make it the primary key (the old one becomes previous) and deploy.
//! 3. Run [`EncryptedStore::rekey_tokens`] on one replica until its report
//!    [is complete](RekeyReport::is_complete). It walks every token, skips
//!    keys that are being refreshed and comes back to them, and writes with
//!    compare-and-swap, so the application keeps running meanwhile.
//! 4. Pending flows are not rekeyed (a pending store cannot be listed, and a
//!    flow must be taken exactly once): wait until every flow started before
//!    step 2 has expired, that is the flow TTL after step 2 finished
//!    everywhere (10 minutes with the lifecycle's default
//!    [`LifecycleConfig::flow_ttl`](mcp_authkit_core::LifecycleConfig)).
//! 5. Remove the old key from the keyrings and deploy.
//!
//! A flow under a removed key fails at its callback with
//! [`EncryptionError::UnknownKeyId`]; the user starts the action again.
//!
//! If the old key leaked, skip the waiting: make the new key primary,
//! rekey, remove the old key, and consider
//! [`treat_undecryptable_tokens_as_absent`](EncryptedStore::treat_undecryptable_tokens_as_absent).
//!
//! # Failures
//!
//! Opening a stored value fails with a distinct [`EncryptionError`] for
//! each cause, never with garbage plaintext and never with a panic:
//! [`NotEncrypted`](EncryptionError::NotEncrypted) (stored in clear),
//! [`Truncated`](EncryptionError::Truncated),
//! [`Malformed`](EncryptionError::Malformed),
//! [`UnsupportedVersion`](EncryptionError::UnsupportedVersion),
//! [`UnknownKeyId`](EncryptionError::UnknownKeyId),
//! [`WrongKey`](EncryptionError::WrongKey) (the keyring's key of that id is
//! a different key), [`Tampered`](EncryptionError::Tampered) (right key,
//! but the value or its place was changed) and
//! [`ClearFieldTampered`](EncryptionError::ClearFieldTampered) (a field in
//! clear was edited). Store operations return it as
//! the source of a [`mcp_authkit_core::Error::Decode`] whose location names
//! the record and field; [`EncryptionError::find_in`] gets it back.
//!
//! Two options change this:
//! [`treat_undecryptable_tokens_as_absent`](EncryptedStore::treat_undecryptable_tokens_as_absent)
//! makes an undecryptable token read as absent, so the user simply
//! authorizes again; [`accept_unencrypted_records`](EncryptedStore::accept_unencrypted_records)
//! reads tokens stored in clear, for migrating an existing store.

//!
//! # Cost
//!
//! Each secret field costs one AES-256-GCM operation, a base64 step and one
//! string allocation, and each record one SHA-256 of its clear fields (the
//! fingerprint); nonces come from a per-thread batch of OS randomness
//! (discarded in a forked child), not a system call per write. Over the
//! in-memory store, on a loaded 2-core AMD EPYC (AVX-512) virtual machine, a
//! typical token (access and refresh token) costs about 1.7 µs more per get
//! and 1.8 µs more per put than without encryption (median; the fingerprint
//! is about 0.5 µs of it); a token with a 1 KB `id_token` about 3.7 µs and
//! 3.9 µs. Network backends take tens to hundreds
//! of microseconds per operation, so the wrapper adds a few percent there.
//! Measure on your machine with `cargo bench -p mcp-authkit-bench --bench
//! encrypted`.

#![warn(missing_docs)]

mod binding;
mod envelope;
mod error;
mod key;
mod nonce;
mod rekey;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use envelope::{ENVELOPE_PREFIX, ENVELOPE_VERSION, EnvelopeInfo};
pub use error::EncryptionError;
pub use key::{EncryptionKey, KEY_LEN, Keyring, MAX_KEY_ID_LEN, generate_key_base64};
pub use rekey::{RekeyOptions, RekeyReport};
pub use store::EncryptedStore;

#[doc(no_inline)]
pub use mcp_authkit_core::{PendingStore, TokenStore};

/// The backend name in the errors of this crate.
pub(crate) const BACKEND: &str = "encrypted";
