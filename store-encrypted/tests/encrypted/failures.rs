//! Every way a stored value can fail to open: a distinct error, never
//! garbage plaintext, never a panic.

use mcp_authkit_core::{
    Error, ExposeSecret, PendingStore, SecretString, TokenKey, TokenRecord, TokenStore,
};
use mcp_authkit_store_encrypted::{EncryptedStore, EncryptionError, Keyring};
use mcp_authkit_store_memory::MemoryStore;

use crate::common::{encrypted, flow, key, keyring, record};

/// Rewrites the access token of the raw record under `key` in the backend.
async fn rewrite_access_token(
    backend: &MemoryStore,
    key: &TokenKey,
    rewrite: impl FnOnce(&str) -> String,
) {
    let mut raw = TokenStore::get(backend, key).await.unwrap().unwrap().record;
    let new = rewrite(raw.access_token.expose_secret());
    raw.access_token = SecretString::from(new);
    backend.put(key, &raw).await.unwrap();
}

/// Flips one character inside the base64 payload, away from its ends.
fn flip_payload_char(envelope: &str) -> String {
    let mut chars: Vec<char> = envelope.chars().collect();
    let at = chars.len() - 30;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

fn encryption_error(error: &Error) -> &EncryptionError {
    EncryptionError::find_in(error).unwrap_or_else(|| panic!("no EncryptionError in {error}"))
}

/// The properties every decryption failure shares.
fn assert_clean_failure(error: &Error, location: &str, secrets: &[&str]) {
    let Error::Decode {
        backend,
        location: at,
        ..
    } = error
    else {
        panic!("decryption failures are Decode errors: {error:?}");
    };
    assert_eq!(*backend, "encrypted");
    assert!(at.contains(location), "{at} names {location}");
    assert!(!error.is_retryable());
    assert!(std::error::Error::source(error).is_some(), "source kept");
    let shown = format!("{error} {error:?}");
    for secret in secrets {
        assert!(!shown.contains(secret), "{shown}");
    }
}

#[tokio::test]
async fn each_failure_is_a_distinct_clear_error() {
    let alice = TokenKey::new("github", "alice");
    let original = record("alice");
    let secrets = [
        original.access_token.expose_secret(),
        original.refresh_token.as_ref().unwrap().expose_secret(),
    ];

    // Written under k1 (material 1).
    let fresh = || async {
        let (backend, store) = encrypted(keyring("k1", 1));
        store.put(&alice, &original).await.unwrap();
        (backend, store)
    };

    // The same id, other material.
    let (backend, _) = fresh().await;
    let wrong = EncryptedStore::new(backend, keyring("k1", 2));
    let error = TokenStore::get(&wrong, &alice).await.unwrap_err();
    assert_clean_failure(&error, "access_token", &secrets);
    assert!(
        matches!(encryption_error(&error), EncryptionError::WrongKey { key_id } if key_id == "k1"),
        "{error}"
    );
    assert!(
        error.to_string().contains("different key material"),
        "{error}"
    );

    // An id the keyring lacks.
    let (backend, _) = fresh().await;
    let unknown = EncryptedStore::new(backend, keyring("k2", 1));
    let error = TokenStore::get(&unknown, &alice).await.unwrap_err();
    assert_clean_failure(&error, "access_token", &secrets);
    assert!(
        matches!(encryption_error(&error), EncryptionError::UnknownKeyId { key_id } if key_id == "k1"),
        "{error}"
    );
    assert!(error.to_string().contains("not in the keyring"), "{error}");

    // A changed ciphertext.
    let (backend, store) = fresh().await;
    rewrite_access_token(&backend, &alice, flip_payload_char).await;
    let error = TokenStore::get(&store, &alice).await.unwrap_err();
    assert_clean_failure(&error, "access_token", &secrets);
    assert!(
        matches!(encryption_error(&error), EncryptionError::Tampered { .. }),
        "{error}"
    );

    // Cut short by the backend.
    let (backend, store) = fresh().await;
    rewrite_access_token(&backend, &alice, |e| e[..e.len() - 10].to_owned()).await;
    let error = TokenStore::get(&store, &alice).await.unwrap_err();
    assert_clean_failure(&error, "access_token", &secrets);
    assert!(
        matches!(encryption_error(&error), EncryptionError::Truncated { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("truncated"), "{error}");

    // Stored in clear, by something that bypassed the wrapper.
    let (backend, store) = fresh().await;
    backend.put(&alice, &original).await.unwrap();
    let error = TokenStore::get(&store, &alice).await.unwrap_err();
    assert_clean_failure(&error, "access_token", &secrets);
    assert!(
        matches!(encryption_error(&error), EncryptionError::NotEncrypted),
        "{error}"
    );
    assert!(error.to_string().contains("stored in clear"), "{error}");

    // Only the refresh token in clear: the error names that field.
    let (backend, store) = fresh().await;
    let mut raw = TokenStore::get(&backend, &alice)
        .await
        .unwrap()
        .unwrap()
        .record;
    raw.refresh_token = original.refresh_token.clone();
    backend.put(&alice, &raw).await.unwrap();
    let error = TokenStore::get(&store, &alice).await.unwrap_err();
    assert_clean_failure(&error, "refresh_token", &secrets);
    assert!(matches!(
        encryption_error(&error),
        EncryptionError::NotEncrypted
    ));
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_place_does_not_open() {
    let (backend, store) = encrypted(keyring("k1", 1));
    let alice = TokenKey::new("github", "alice");
    let bob = TokenKey::new("github", "bob");
    let alice_at_gitlab = TokenKey::new("gitlab", "alice");
    store.put(&alice, &record("alice")).await.unwrap();
    store.put(&bob, &record("bob")).await.unwrap();
    let alice_raw = TokenStore::get(&backend, &alice)
        .await
        .unwrap()
        .unwrap()
        .record;

    let tampered = |error: &Error| {
        matches!(
            EncryptionError::find_in(error),
            Some(EncryptionError::Tampered { .. })
        )
    };

    // Alice's whole sealed record into Bob's row, and into another provider.
    for victim in [&bob, &alice_at_gitlab] {
        backend.put(victim, &alice_raw).await.unwrap();
        let error = TokenStore::get(&store, victim).await.unwrap_err();
        assert!(tampered(&error), "{error}");
    }

    // Only the access token moved into Bob's otherwise intact record.
    store.put(&bob, &record("bob")).await.unwrap();
    let mut bob_raw = TokenStore::get(&backend, &bob)
        .await
        .unwrap()
        .unwrap()
        .record;
    bob_raw.access_token = alice_raw.access_token.clone();
    backend.put(&bob, &bob_raw).await.unwrap();
    assert!(tampered(&TokenStore::get(&store, &bob).await.unwrap_err()));

    // Fields swapped within Alice's record.
    let mut swapped = alice_raw.clone();
    swapped.access_token = alice_raw.refresh_token.clone().unwrap();
    swapped.refresh_token = Some(alice_raw.access_token.clone());
    backend.put(&alice, &swapped).await.unwrap();
    assert!(tampered(
        &TokenStore::get(&store, &alice).await.unwrap_err()
    ));

    // An extra value under another extra name.
    let mut renamed = alice_raw.clone();
    let id_token = renamed.extra.get("id_token").unwrap().clone();
    renamed.extra.insert("custom", id_token.expose_secret());
    backend.put(&alice, &renamed).await.unwrap();
    let error = TokenStore::get(&store, &alice).await.unwrap_err();
    assert!(tampered(&error), "{error}");
    assert!(
        error.to_string().contains("extra field \"custom\""),
        "{error}"
    );

    // A flow's verifier into another flow, and a flow diverted to another user.
    let first = flow(&alice);
    let second = flow(&bob);
    store.insert(&first).await.unwrap();
    store.insert(&second).await.unwrap();
    let first_raw = PendingStore::get_flow(&backend, &first.state)
        .await
        .unwrap()
        .unwrap();
    let second_raw = PendingStore::get_flow(&backend, &second.state)
        .await
        .unwrap()
        .unwrap();
    let mut moved = second_raw.clone();
    moved.pkce_verifier = first_raw.pkce_verifier.clone();
    let mut diverted = first_raw.clone();
    diverted.key = bob.clone();
    for (label, planted) in [("moved verifier", moved), ("diverted flow", diverted)] {
        // Planted in a backend of their own, where no other flow is active.
        let inner = MemoryStore::new();
        inner.insert(&planted).await.unwrap();
        let over = EncryptedStore::new(inner, keyring("k1", 1));
        let error = over.take(&planted.state).await.unwrap_err();
        assert!(tampered(&error), "{label}: {error}");
        assert!(
            error.to_string().contains("pkce_verifier"),
            "{label}: {error}"
        );
    }
}

/// A tiny deterministic generator, so a failure reproduces.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[tokio::test]
async fn damaged_values_never_open_and_never_panic() {
    let (backend, store) = encrypted(keyring("k1", 1));
    let alice = TokenKey::new("github", "alice");
    let original = TokenRecord::new("gho_short", mcp_authkit_core::Timestamp::now());
    store.put(&alice, &original).await.unwrap();
    let envelope = TokenStore::get(&backend, &alice)
        .await
        .unwrap()
        .unwrap()
        .record
        .access_token
        .expose_secret()
        .to_owned();
    let alphabet: Vec<char> = "AZaz09-_:v.+/=\u{0}é".chars().collect();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..3000 {
        let mut chars: Vec<char> = envelope.chars().collect();
        for _ in 0..1 + rng.below(3) {
            match rng.below(4) {
                0 => {
                    let at = rng.below(chars.len());
                    chars[at] = alphabet[rng.below(alphabet.len())];
                }
                1 => {
                    let at = rng.below(chars.len());
                    chars.remove(at);
                }
                2 => {
                    let at = rng.below(chars.len() + 1);
                    chars.insert(at, alphabet[rng.below(alphabet.len())]);
                }
                _ => chars.truncate(rng.below(chars.len() + 1)),
            }
            if chars.is_empty() {
                chars.push('x');
            }
        }
        let damaged: String = chars.into_iter().collect();
        if damaged == envelope {
            continue;
        }
        rewrite_access_token(&backend, &alice, |_| damaged.clone()).await;
        match TokenStore::get(&store, &alice).await {
            Ok(Some(read)) => panic!(
                "round {round}: {damaged:?} opened to {:?}",
                read.record.access_token.expose_secret()
            ),
            Ok(None) => panic!("round {round}: the record vanished"),
            Err(error) => {
                let cause = EncryptionError::find_in(&error).expect("an encryption error");
                assert!(cause.is_undecryptable(), "round {round}: {cause}");
            }
        }
    }
}

/// A way to damage a stored envelope.
type Damage = fn(&str) -> String;

#[tokio::test]
async fn undecryptable_tokens_can_read_as_absent() {
    let alice = TokenKey::new("github", "alice");
    let original = record("alice");
    let damages: [(&str, Damage); 4] = [
        ("tampered", flip_payload_char),
        ("truncated", |e| e[..e.len() / 2].to_owned()),
        ("in clear", |_| "gho_plain".to_owned()),
        ("unknown key", |e| e.replacen(":k1:", ":k0:", 1)),
    ];
    for (label, damage) in damages {
        let (backend, store) = encrypted(keyring("k1", 1));
        let store = store.treat_undecryptable_tokens_as_absent(true);
        store.put(&alice, &original).await.unwrap();
        rewrite_access_token(&backend, &alice, damage).await;
        assert!(
            TokenStore::get(&store, &alice).await.unwrap().is_none(),
            "{label}: read as absent"
        );
        // The unreadable record is left for the next authorization to replace.
        assert!(
            TokenStore::get(&backend, &alice).await.unwrap().is_some(),
            "{label}"
        );
        let again = record("re-authorized");
        store.put(&alice, &again).await.unwrap();
        let read = TokenStore::get(&store, &alice).await.unwrap().unwrap();
        assert_eq!(
            read.record.access_token.expose_secret(),
            again.access_token.expose_secret(),
            "{label}"
        );
    }

    // A wrong key too, and the option leaves flows alone.
    let (backend, store) = encrypted(keyring("k1", 1));
    store.put(&alice, &original).await.unwrap();
    let f = flow(&alice);
    store.insert(&f).await.unwrap();
    let wrong = EncryptedStore::new(backend, Keyring::new(key("k1", 2)))
        .treat_undecryptable_tokens_as_absent(true);
    assert!(TokenStore::get(&wrong, &alice).await.unwrap().is_none());
    let error = PendingStore::get_flow(&wrong, &f.state).await.unwrap_err();
    assert!(matches!(
        EncryptionError::find_in(&error),
        Some(EncryptionError::WrongKey { .. })
    ));
}

#[tokio::test]
async fn clear_records_are_read_only_when_migrating() {
    let alice = TokenKey::new("github", "alice");
    let original = record("legacy");
    let backend = MemoryStore::new();
    backend.put(&alice, &original).await.unwrap();
    let strict = EncryptedStore::new(backend.clone(), keyring("k1", 1));
    assert!(TokenStore::get(&strict, &alice).await.is_err());
    let migrating = strict.clone().accept_unencrypted_records(true);
    let read = TokenStore::get(&migrating, &alice).await.unwrap().unwrap();
    assert_eq!(
        read.record.access_token.expose_secret(),
        original.access_token.expose_secret()
    );
    // Sealed values still must open: the option accepts clear values only.
    store_put_then_tamper(&migrating, &backend, &alice).await;
}

async fn store_put_then_tamper(
    store: &EncryptedStore<MemoryStore>,
    backend: &MemoryStore,
    key: &TokenKey,
) {
    store.put(key, &record("sealed")).await.unwrap();
    rewrite_access_token(backend, key, flip_payload_char).await;
    assert!(matches!(
        EncryptionError::find_in(&TokenStore::get(store, key).await.unwrap_err()),
        Some(EncryptionError::Tampered { .. })
    ));
}
