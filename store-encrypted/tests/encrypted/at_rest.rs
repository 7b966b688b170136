//! Round trips through the wrapper, and what the backend holds meanwhile.

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_authkit_core::{
    CasOutcome, ExposeSecret, FlowOutcome, InsertOutcome, PendingStore, TokenKey, TokenRecord,
    TokenStore,
};
use mcp_authkit_store_encrypted::{EncryptedStore, EnvelopeInfo, testing};

use crate::common::{encrypted, flow, keyring, record};

fn assert_same_token(got: &TokenRecord, want: &TokenRecord) {
    assert_eq!(
        got.access_token.expose_secret(),
        want.access_token.expose_secret()
    );
    assert_eq!(
        got.refresh_token
            .as_ref()
            .map(|s| s.expose_secret().to_owned()),
        want.refresh_token
            .as_ref()
            .map(|s| s.expose_secret().to_owned())
    );
    assert_eq!(got.extra, want.extra);
    assert_eq!(got.token_type, want.token_type);
    assert_eq!(got.scopes, want.scopes);
    assert_eq!(got.expires_at, want.expires_at);
    assert_eq!(got.obtained_at, want.obtained_at);
}

/// Keys with characters that could confuse an encoding of associated data.
fn odd_keys() -> Vec<TokenKey> {
    vec![
        TokenKey::new("github", "alice"),
        TokenKey::new("", ""),
        TokenKey::new("a:b", "c"),
        TokenKey::new("a", "b:c"),
        TokenKey::new("p\u{0}x", "ü ser {*} ✓"),
        TokenKey::new("x".repeat(300), "y".repeat(300)),
    ]
}

#[tokio::test]
async fn tokens_round_trip_and_stay_sealed_in_the_backend() {
    let (backend, store) = encrypted(keyring("k1", 1));
    for (i, key) in odd_keys().iter().enumerate() {
        let original = record(&format!("user{i}"));
        let revision = store.put(key, &original).await.unwrap();
        let read = TokenStore::get(&store, key).await.unwrap().unwrap();
        assert_eq!(read.revision, revision, "revisions pass through");
        assert_same_token(&read.record, &original);
        testing::assert_token_sealed(&backend, key, &original).await;

        // Compare-and-swap seals too, and keeps its semantics.
        let replaced = record(&format!("user{i}-refreshed"));
        let CasOutcome::Swapped(next) = store
            .compare_and_swap(key, Some(revision), &replaced)
            .await
            .unwrap()
        else {
            panic!("the swap on the current revision succeeds");
        };
        assert!(matches!(
            store
                .compare_and_swap(key, Some(revision), &original)
                .await
                .unwrap(),
            CasOutcome::Conflict { current: Some(r) } if r == next
        ));
        assert_same_token(
            &TokenStore::get(&store, key).await.unwrap().unwrap().record,
            &replaced,
        );
        testing::assert_token_sealed(&backend, key, &replaced).await;
    }

    // A record without refresh token or extras, and an empty access token.
    let key = TokenKey::new("bare", "record");
    let bare = TokenRecord::new("", mcp_authkit_core::Timestamp::now());
    store.put(&key, &bare).await.unwrap();
    assert_same_token(
        &TokenStore::get(&store, &key).await.unwrap().unwrap().record,
        &bare,
    );
    testing::assert_token_sealed(&backend, &key, &bare).await;

    // Everything else passes through.
    let page = store.scan(None, 100).await.unwrap();
    assert_eq!(page.items.len(), odd_keys().len() + 1);
    let lease = store
        .try_acquire_lease(&key, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(
        backend
            .try_acquire_lease(&key, Duration::from_secs(30))
            .await
            .unwrap()
            .is_none(),
        "the lease is the inner store's"
    );
    assert!(store.release_lease(&key, &lease).await.unwrap());
    let revision = TokenStore::get(&store, &key)
        .await
        .unwrap()
        .unwrap()
        .revision;
    assert!(store.delete_if_revision(&key, revision).await.unwrap());
    assert!(!store.delete(&key).await.unwrap());
    assert!(TokenStore::get(&backend, &key).await.unwrap().is_none());
}

#[tokio::test]
async fn flows_round_trip_and_stay_sealed_in_the_backend() {
    let (backend, store) = encrypted(keyring("k1", 1));
    for key in odd_keys() {
        let original = flow(&key);
        assert_eq!(
            store.insert(&original).await.unwrap(),
            InsertOutcome::Inserted
        );
        testing::assert_flow_sealed(&backend, &original).await;
        let second = flow(&key);
        assert_eq!(
            store.insert(&second).await.unwrap(),
            InsertOutcome::Joined(original.state.clone()),
            "one active flow per key, as the inner store decides"
        );
        let got = PendingStore::get_flow(&store, &original.state)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            got.pkce_verifier.expose_secret(),
            original.pkce_verifier.expose_secret()
        );
        assert_eq!(
            got.pkce().challenge_s256(),
            original.pkce().challenge_s256()
        );
        assert_eq!(
            store.active_flow(&key).await.unwrap(),
            Some(original.state.clone())
        );
        let taken = store.take(&original.state).await.unwrap().unwrap();
        assert_eq!(
            taken.pkce_verifier.expose_secret(),
            original.pkce_verifier.expose_secret()
        );
        assert_eq!(taken.attributes, original.attributes);
        assert!(store.take(&original.state).await.unwrap().is_none());

        let outcome = FlowOutcome::Authorized {
            revision: mcp_authkit_core::Revision::new(7),
        };
        store
            .complete(&key, &original.state, &outcome, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            store.outcome(&original.state).await.unwrap(),
            Some(outcome.clone())
        );
        assert_eq!(
            store
                .wait(&original.state, Duration::from_millis(10))
                .await
                .unwrap(),
            Some(outcome)
        );
    }
    assert_eq!(store.purge_expired().await.unwrap().flows, 0);
}

#[tokio::test]
async fn every_encryption_uses_a_fresh_nonce() {
    let (backend, store) = encrypted(keyring("k1", 1));
    let key = TokenKey::new("github", "alice");
    let original = record("same");
    let mut seen = HashSet::new();
    for _ in 0..1000 {
        store.put(&key, &original).await.unwrap();
        let raw = TokenStore::get(&backend, &key)
            .await
            .unwrap()
            .unwrap()
            .record;
        // Same plaintext, key and place: only the nonce can make these differ.
        assert!(seen.insert(raw.access_token.expose_secret().to_owned()));
        assert!(seen.insert(raw.refresh_token.unwrap().expose_secret().to_owned()));
    }
}

#[tokio::test]
async fn wraps_shared_and_stacked_stores() {
    let (backend, _) = encrypted(keyring("k1", 1));
    let shared_tokens: Arc<dyn TokenStore> = Arc::new(backend.clone());
    let shared_pending: Arc<dyn PendingStore> = Arc::new(backend.clone());
    let over_dyn = EncryptedStore::new(shared_tokens, keyring("k1", 1));
    let key = TokenKey::new("github", "alice");
    let original = record("dyn");
    over_dyn.put(&key, &original).await.unwrap();
    assert_same_token(
        &TokenStore::get(&over_dyn, &key)
            .await
            .unwrap()
            .unwrap()
            .record,
        &original,
    );
    testing::assert_token_sealed(&backend, &key, &original).await;
    let pending_over_dyn = EncryptedStore::new(shared_pending, keyring("k1", 1));
    let f = flow(&key);
    pending_over_dyn.insert(&f).await.unwrap();
    testing::assert_flow_sealed(&backend, &f).await;

    // A stack: the outer layer's envelopes are what the inner layer seals.
    let inner_layer = EncryptedStore::new(backend.clone(), keyring("inner", 2));
    let outer_layer = EncryptedStore::new(inner_layer.clone(), keyring("outer", 3));
    let stacked: Arc<dyn TokenStore> = Arc::new(outer_layer);
    let key = TokenKey::new("github", "stacked");
    stacked.put(&key, &original).await.unwrap();
    assert_same_token(&stacked.get(&key).await.unwrap().unwrap().record, &original);
    let middle = TokenStore::get(&inner_layer, &key)
        .await
        .unwrap()
        .unwrap()
        .record;
    let bottom = TokenStore::get(&backend, &key)
        .await
        .unwrap()
        .unwrap()
        .record;
    let id_of = |record: &TokenRecord| {
        EnvelopeInfo::read(record.access_token.expose_secret())
            .unwrap()
            .key_id
    };
    assert_eq!(id_of(&middle), "outer");
    assert_eq!(id_of(&bottom), "inner");
    testing::assert_token_sealed(&backend, &key, &original).await;
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn debug_output_and_logs_hold_no_secret() {
    let key1 = crate::common::key("k1", 1);
    let material = key1.to_base64();
    let (backend, store) = encrypted(mcp_authkit_store_encrypted::Keyring::new(key1));
    let store = store.treat_undecryptable_tokens_as_absent(true);
    let printed = format!("{store:?}");
    assert!(printed.contains("k1"), "{printed}");
    assert!(!printed.contains(material.expose_secret()), "{printed}");

    // A token under a key this keyring lacks: read as absent, with a warning.
    let key = TokenKey::new("github", "alice");
    let original = record("logged");
    let other = EncryptedStore::new(backend.clone(), keyring("k0", 9));
    other.put(&key, &original).await.unwrap();
    let envelope = TokenStore::get(&backend, &key)
        .await
        .unwrap()
        .unwrap()
        .record
        .access_token
        .expose_secret()
        .to_owned();

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    assert!(TokenStore::get(&store, &key).await.unwrap().is_none());
    drop(guard);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("WARN"), "{logs}");
    assert!(logs.contains("treating it as absent"), "{logs}");
    assert!(
        logs.contains("\"k0\""),
        "the log names the missing key id: {logs}"
    );
    assert!(logs.contains("alice"), "the log names the token: {logs}");
    for secret in [
        original.access_token.expose_secret(),
        original.refresh_token.as_ref().unwrap().expose_secret(),
        material.expose_secret(),
        &envelope[envelope.len() - 20..],
    ] {
        assert!(!logs.contains(secret), "{logs}");
    }
}
