//! Checks that what reached a backend through an [`EncryptedStore`] holds no
//! secret in clear: for the tests of backends, stacks and deployments.
//!
//! Each function reads the *inner* store (the one the wrapper writes to)
//! directly and panics with a description of what leaked. Enabled by the
//! `testing` feature.
//!
//! ```
//! use mcp_authkit_core::{TokenKey, TokenRecord, TokenStore, Timestamp};
//! use mcp_authkit_store_encrypted::{EncryptedStore, EncryptionKey, Keyring, testing};
//! use mcp_authkit_store_memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let backend = MemoryStore::new();
//! let store = EncryptedStore::new(backend.clone(), Keyring::new(EncryptionKey::generate("k1")));
//! let key = TokenKey::new("github", "alice");
//! let record = TokenRecord::new("gho_access_secret", Timestamp::now());
//! store.put(&key, &record).await.unwrap();
//! testing::assert_token_sealed(&backend, &key, &record).await;
//! # }
//! ```
//!
//! [`EncryptedStore`]: crate::EncryptedStore

use mcp_authkit_core::{
    ExposeSecret, PendingFlow, PendingStore, SecretString, TokenKey, TokenRecord, TokenStore, codec,
};

use crate::envelope::EnvelopeInfo;

/// Secrets shorter than this are checked field by field only: a short string
/// can turn up inside base64 by chance.
const MIN_SEARCHED_LEN: usize = 8;

fn assert_sealed_field(what: &str, stored: &SecretString, plaintext: &SecretString) {
    let stored = stored.expose_secret();
    if let Err(error) = EnvelopeInfo::read(stored) {
        panic!("{what} is not an encrypted envelope in the inner store: {error}");
    }
    assert!(
        stored != plaintext.expose_secret(),
        "{what} is stored in clear"
    );
}

fn assert_absent_from(what: &str, encoded: &[u8], secrets: &[&SecretString]) {
    let encoded = String::from_utf8_lossy(encoded);
    for (i, secret) in secrets.iter().enumerate() {
        let secret = secret.expose_secret();
        if secret.len() >= MIN_SEARCHED_LEN {
            assert!(
                !encoded.contains(secret),
                "secret #{i} appears in clear in the stored form of {what}"
            );
        }
    }
}

/// Panics unless the token under `key` in `inner` keeps every secret of
/// `original` (access token, refresh token, every extra value) sealed, none
/// of them appears anywhere in its stored form, and every field that stays
/// in clear equals the original.
pub async fn assert_token_sealed<S>(inner: &S, key: &TokenKey, original: &TokenRecord)
where
    S: TokenStore + ?Sized,
{
    let what = format!("token {key}");
    let stored = match inner.get(key).await {
        Ok(Some(stored)) => stored.record,
        Ok(None) => panic!("the inner store holds no {what}"),
        Err(error) => panic!("reading {what} from the inner store failed: {error}"),
    };
    assert_sealed_field(
        &format!("{what}: access_token"),
        &stored.access_token,
        &original.access_token,
    );
    match (&stored.refresh_token, &original.refresh_token) {
        (Some(sealed), Some(plain)) => {
            assert_sealed_field(&format!("{what}: refresh_token"), sealed, plain)
        }
        (None, None) => {}
        _ => panic!("{what}: the refresh token is present on one side only"),
    }
    let mut secrets = vec![&original.access_token];
    secrets.extend(original.refresh_token.as_ref());
    assert_eq!(
        stored
            .extra
            .iter()
            .map(|(name, _)| name)
            .collect::<Vec<_>>(),
        original
            .extra
            .iter()
            .map(|(name, _)| name)
            .collect::<Vec<_>>(),
        "{what}: extra field names stay in clear"
    );
    for (name, plain) in original.extra.iter() {
        let sealed = stored.extra.get(name).expect("same names");
        assert_sealed_field(&format!("{what}: extra {name:?}"), sealed, plain);
        secrets.push(plain);
    }
    assert_eq!(stored.token_type, original.token_type, "{what}: token_type");
    assert_eq!(stored.scopes, original.scopes, "{what}: scopes");
    assert_eq!(stored.expires_at, original.expires_at, "{what}: expires_at");
    assert_eq!(
        stored.obtained_at, original.obtained_at,
        "{what}: obtained_at"
    );
    assert_absent_from(&what, &codec::encode_token(&stored), &secrets);
}

/// Panics unless the flow `original` in `inner` keeps its PKCE verifier
/// sealed, the verifier appears nowhere in its stored form, and every field
/// that stays in clear equals the original.
pub async fn assert_flow_sealed<S>(inner: &S, original: &PendingFlow)
where
    S: PendingStore + ?Sized,
{
    let what = format!("pending flow for {}", original.key);
    let stored = match inner.get_flow(&original.state).await {
        Ok(Some(stored)) => stored,
        Ok(None) => panic!("the inner store holds no {what}"),
        Err(error) => panic!("reading {what} from the inner store failed: {error}"),
    };
    assert_sealed_field(
        &format!("{what}: pkce_verifier"),
        &stored.pkce_verifier,
        &original.pkce_verifier,
    );
    assert_eq!(stored.state, original.state, "{what}: state");
    assert_eq!(stored.key, original.key, "{what}: key");
    assert_eq!(
        stored.redirect_uri, original.redirect_uri,
        "{what}: redirect_uri"
    );
    assert_eq!(stored.scopes, original.scopes, "{what}: scopes");
    assert_eq!(
        stored.elicitation_id, original.elicitation_id,
        "{what}: elicitation_id"
    );
    assert_eq!(stored.started_by, original.started_by, "{what}: started_by");
    assert_eq!(stored.attributes, original.attributes, "{what}: attributes");
    assert_eq!(stored.created_at, original.created_at, "{what}: created_at");
    assert_eq!(stored.expires_at, original.expires_at, "{what}: expires_at");
    assert_absent_from(
        &what,
        &codec::encode_flow(&stored),
        &[&original.pkce_verifier],
    );
}
