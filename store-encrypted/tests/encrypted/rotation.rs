//! Key rotation: previous keys decrypt, writes move records to the primary
//! key, and a rekey walks every token without losing a concurrent write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_authkit_core::{
    CasOutcome, ExposeSecret, Revision, StoredToken, TokenKey, TokenRecord, TokenStore,
};
use mcp_authkit_store_encrypted::{
    EncryptedStore, EncryptionError, EnvelopeInfo, Keyring, RekeyOptions, testing,
};
use mcp_authkit_store_memory::MemoryStore;

use crate::common::{Yielding, encrypted, key, keyring, record};

/// The primary k2 with k1 as previous key.
fn rotated() -> Keyring {
    Keyring::with_previous(key("k2", 2), [key("k1", 1)]).unwrap()
}

/// The key ids of every sealed field of the raw record under `key`.
async fn key_ids(backend: &MemoryStore, key: &TokenKey) -> Vec<String> {
    let raw = backend.get(key).await.unwrap().unwrap().record;
    let mut values = vec![raw.access_token.clone()];
    values.extend(raw.refresh_token.clone());
    values.extend(raw.extra.iter().map(|(_, v)| v.clone()));
    values
        .iter()
        .map(|v| EnvelopeInfo::read(v.expose_secret()).unwrap().key_id)
        .collect()
}

fn access(record: &TokenRecord) -> &str {
    record.access_token.expose_secret()
}

#[tokio::test]
async fn previous_keys_decrypt_and_the_next_write_reseals() {
    let (backend, old) = encrypted(keyring("k1", 1));
    let alice = TokenKey::new("github", "alice");
    let bob = TokenKey::new("github", "bob");
    old.put(&alice, &record("alice")).await.unwrap();
    old.put(&bob, &record("bob")).await.unwrap();

    let new = EncryptedStore::new(backend.clone(), rotated());
    let read = new.get(&alice).await.unwrap().unwrap();
    assert_eq!(access(&read.record), access(&record("alice")));
    assert!(key_ids(&backend, &alice).await.iter().all(|id| id == "k1"));

    // A refresh (compare-and-swap) and a new authorization (put) both reseal.
    let refreshed = record("alice-refreshed");
    new.compare_and_swap(&alice, Some(read.revision), &refreshed)
        .await
        .unwrap();
    new.put(&bob, &record("bob-again")).await.unwrap();
    for key in [&alice, &bob] {
        assert!(key_ids(&backend, key).await.iter().all(|id| id == "k2"));
    }
    testing::assert_token_sealed(&backend, &alice, &refreshed).await;

    // Once resealed, the old key is not needed.
    let only_new = EncryptedStore::new(backend.clone(), keyring("k2", 2));
    assert_eq!(
        access(&only_new.get(&alice).await.unwrap().unwrap().record),
        access(&refreshed)
    );
}

#[tokio::test]
async fn rekey_moves_every_token_to_the_primary_key() {
    let (backend, old) = encrypted(keyring("k1", 1));
    let keys: Vec<TokenKey> = (0..60)
        .map(|i| TokenKey::new("github", format!("user-{i}")))
        .collect();
    let originals: Vec<TokenRecord> = (0..keys.len()).map(|i| record(&format!("u{i}"))).collect();
    for (key, original) in keys.iter().zip(&originals) {
        old.put(key, original).await.unwrap();
    }
    // One token under a key nobody has any more.
    let lost = TokenKey::new("github", "lost");
    EncryptedStore::new(backend.clone(), keyring("k0", 9))
        .put(&lost, &record("lost"))
        .await
        .unwrap();
    let before: HashMap<TokenKey, Revision> = {
        let mut map = HashMap::new();
        for key in &keys {
            map.insert(
                key.clone(),
                backend.get(key).await.unwrap().unwrap().revision,
            );
        }
        map
    };

    let store = EncryptedStore::new(backend.clone(), rotated());
    let mut options = RekeyOptions::default();
    options.page_size = 7;
    let report = store.rekey_tokens_with(&options).await.unwrap();
    assert_eq!(report.scanned, 61);
    assert_eq!(report.rekeyed, 60);
    assert_eq!(report.already_current, 0);
    assert!(report.busy.is_empty());
    assert_eq!(report.undecryptable.len(), 1);
    let (key, error) = &report.undecryptable[0];
    assert_eq!(key, &lost);
    assert!(matches!(
        EncryptionError::find_in(error),
        Some(EncryptionError::UnknownKeyId { key_id }) if key_id == "k0"
    ));
    assert!(!report.is_complete());

    for (key, original) in keys.iter().zip(&originals) {
        assert!(key_ids(&backend, key).await.iter().all(|id| id == "k2"));
        assert!(backend.get(key).await.unwrap().unwrap().revision > before[key]);
        testing::assert_token_sealed(&backend, key, original).await;
    }
    // The old key can go: every token opens with the new one alone.
    let only_new = EncryptedStore::new(backend.clone(), keyring("k2", 2));
    for (key, original) in keys.iter().zip(&originals) {
        let read = only_new.get(key).await.unwrap().unwrap();
        assert_eq!(access(&read.record), access(original));
        assert_eq!(read.record.extra, original.extra);
        assert_eq!(read.record.expires_at, original.expires_at);
    }

    // A second run finds nothing to do.
    backend.delete(&lost).await.unwrap();
    let again = store.rekey_tokens().await.unwrap();
    assert_eq!((again.rekeyed, again.already_current), (0, 60));
    assert!(again.is_complete());
}

#[tokio::test]
async fn rekey_encrypts_clear_tokens_when_migrating() {
    let backend = MemoryStore::new();
    let alice = TokenKey::new("github", "alice");
    let legacy = record("legacy");
    backend.put(&alice, &legacy).await.unwrap();

    let strict = EncryptedStore::new(backend.clone(), keyring("k1", 1));
    let report = strict.rekey_tokens().await.unwrap();
    assert_eq!(report.undecryptable.len(), 1, "clear tokens are refused");
    assert!(matches!(
        EncryptionError::find_in(&report.undecryptable[0].1),
        Some(EncryptionError::NotEncrypted)
    ));

    let migrating = strict.accept_unencrypted_records(true);
    let report = migrating.rekey_tokens().await.unwrap();
    assert_eq!(report.rekeyed, 1);
    assert!(report.is_complete());
    testing::assert_token_sealed(&backend, &alice, &legacy).await;
}

#[tokio::test]
async fn rekey_leaves_a_token_being_refreshed_alone() {
    let (backend, old) = encrypted(keyring("k1", 1));
    let alice = TokenKey::new("github", "alice");
    old.put(&alice, &record("alice")).await.unwrap();
    let revision = backend.get(&alice).await.unwrap().unwrap().revision;

    // A refresher (in any replica) holds the key's lease.
    let lease = backend
        .try_acquire_lease(&alice, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let store = EncryptedStore::new(backend.clone(), rotated());
    let mut options = RekeyOptions::default();
    options.busy_passes = 2;
    options.busy_pause = Duration::from_millis(20);
    let report = store.rekey_tokens_with(&options).await.unwrap();
    assert_eq!(report.busy, vec![alice.clone()]);
    assert!(!report.is_complete());
    assert_eq!(
        backend.get(&alice).await.unwrap().unwrap().revision,
        revision,
        "not written while the lease is held"
    );

    // Freed during the busy passes: picked up by a later pass.
    let releaser = {
        let backend = backend.clone();
        let alice = alice.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert!(backend.release_lease(&alice, &lease).await.unwrap());
        })
    };
    options.busy_passes = 10;
    let report = store.rekey_tokens_with(&options).await.unwrap();
    releaser.await.unwrap();
    assert_eq!(report.rekeyed, 1);
    assert!(report.is_complete());
    assert!(key_ids(&backend, &alice).await.iter().all(|id| id == "k2"));
    // The rekey released its own lease.
    assert!(
        backend
            .try_acquire_lease(&alice, Duration::from_secs(30))
            .await
            .unwrap()
            .is_some()
    );
}

type Replica = EncryptedStore<Yielding<MemoryStore>>;

/// Writes (or reads) of each key: revision and access token.
type WriteLog = Arc<Mutex<HashMap<TokenKey, Vec<(Revision, String)>>>>;

fn observe(log: &WriteLog, key: &TokenKey, stored: &StoredToken) {
    log.lock()
        .unwrap()
        .entry(key.clone())
        .or_default()
        .push((stored.revision, access(&stored.record).to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rekey_during_refreshes_and_authorizations_loses_no_write() {
    let (backend, old) = encrypted(keyring("k1", 1));
    let refreshed: Vec<TokenKey> = (0..16)
        .map(|i| TokenKey::new("github", format!("refreshed-{i}")))
        .collect();
    let authorized: Vec<TokenKey> = (0..16)
        .map(|i| TokenKey::new("gitlab", format!("authorized-{i}")))
        .collect();
    for key in refreshed.iter().chain(&authorized) {
        old.put(key, &record("initial")).await.unwrap();
    }
    // A rolling deploy: replicas still encrypting with k1 (knowing k2) and
    // replicas already on k2, so tokens keep going back to k1 and the rekey
    // keeps racing writers for them.
    let rolling_out = Keyring::with_previous(key("k1", 1), [key("k2", 2)]).unwrap();
    let replicas: Vec<Arc<Replica>> = (0..6)
        .map(|i| {
            let keyring = if i % 2 == 0 {
                rotated()
            } else {
                rolling_out.clone()
            };
            Arc::new(EncryptedStore::new(Yielding(backend.clone()), keyring))
        })
        .collect();
    let log: WriteLog = Arc::default();
    let observed: WriteLog = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let refresh_conflicts = Arc::new(AtomicU64::new(0));
    let refreshes = Arc::new(AtomicU64::new(0));

    let mut writers = Vec::new();
    for task in 0..6 {
        let stores = replicas.clone();
        let keys = refreshed.clone();
        let (log, stop, observed) = (Arc::clone(&log), Arc::clone(&stop), Arc::clone(&observed));
        let (conflicts, count) = (Arc::clone(&refresh_conflicts), Arc::clone(&refreshes));
        // Refreshers: the lifecycle's protocol, lease then compare-and-swap.
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let store = &stores[(n as usize + task) % stores.len()];
                let key = &keys[(n as usize * 7 + task) % keys.len()];
                let Some(lease) = store
                    .try_acquire_lease(key, Duration::from_secs(30))
                    .await
                    .unwrap()
                else {
                    tokio::task::yield_now().await;
                    continue;
                };
                let current = store.get(key).await.unwrap().unwrap();
                observe(&observed, key, &current);
                let value = format!("refresh-{task}-{n}");
                tokio::task::yield_now().await;
                match store
                    .compare_and_swap(key, Some(current.revision), &record(&value))
                    .await
                    .unwrap()
                {
                    CasOutcome::Swapped(revision) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        let value = access(&record(&value)).to_owned();
                        log.lock()
                            .unwrap()
                            .entry(key.clone())
                            .or_default()
                            .push((revision, value));
                    }
                    CasOutcome::Conflict { .. } => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                }
                assert!(store.release_lease(key, &lease).await.unwrap());
            }
        }));
    }
    for task in 0..3 {
        let stores = replicas.clone();
        let keys = authorized.clone();
        let (log, stop, observed) = (Arc::clone(&log), Arc::clone(&stop), Arc::clone(&observed));
        // New authorizations: no lease, compare-and-swap on what they read.
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let store = &stores[(n as usize + task) % stores.len()];
                let key = &keys[(n as usize * 5 + task) % keys.len()];
                let current = store.get(key).await.unwrap().unwrap();
                observe(&observed, key, &current);
                let value = format!("authorize-{task}-{n}");
                tokio::task::yield_now().await;
                if let CasOutcome::Swapped(revision) = store
                    .compare_and_swap(key, Some(current.revision), &record(&value))
                    .await
                    .unwrap()
                {
                    let value = access(&record(&value)).to_owned();
                    log.lock()
                        .unwrap()
                        .entry(key.clone())
                        .or_default()
                        .push((revision, value));
                }
            }
        }));
    }

    let mut options = RekeyOptions::default();
    options.page_size = 5;
    options.busy_pause = Duration::from_millis(1);
    let mut rekeyed = 0;
    let started = std::time::Instant::now();
    // Long enough for many races, however busy the machine is.
    while started.elapsed() < Duration::from_millis(300)
        || (started.elapsed() < Duration::from_secs(20)
            && (rekeyed < 50 || refreshes.load(Ordering::Relaxed) < 100))
    {
        let report = replicas[0].rekey_tokens_with(&options).await.unwrap();
        assert!(report.undecryptable.is_empty());
        rekeyed += report.rekeyed;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }

    assert!(
        rekeyed >= 50,
        "the rekey rewrote tokens during the writes: {rekeyed}"
    );
    assert!(
        refreshes.load(Ordering::Relaxed) >= 100,
        "the refreshers ran"
    );
    assert_eq!(
        refresh_conflicts.load(Ordering::Relaxed),
        0,
        "a rekey never makes a refresh under the lease lose its compare-and-swap"
    );
    // Every read, during the run and now, shows the value of the last
    // successful write at or below its revision: a rekey only ever rewrites
    // the newest value.
    let log = log.lock().unwrap().clone();
    let value_at = |key: &TokenKey, revision: Revision| {
        log.get(key)
            .and_then(|writes| {
                writes
                    .iter()
                    .filter(|(written, _)| *written <= revision)
                    .max_by_key(|(written, _)| *written)
            })
            .map(|(_, value)| value.clone())
            .unwrap_or_else(|| access(&record("initial")).to_owned())
    };
    let observed = observed.lock().unwrap().clone();
    let mut reads = 0;
    for (key, reads_of_key) in &observed {
        for (revision, value) in reads_of_key {
            reads += 1;
            assert_eq!(value, &value_at(key, *revision), "{key} at {revision}");
        }
    }
    assert!(reads > 200, "{reads} reads checked");
    for key in refreshed.iter().chain(&authorized) {
        let stored = replicas[1].get(key).await.unwrap().unwrap();
        let expected = log
            .get(key)
            .and_then(|writes| writes.iter().max_by_key(|(revision, _)| *revision))
            .map(|(_, value)| value.clone())
            .unwrap_or_else(|| access(&record("initial")).to_owned());
        assert_eq!(access(&stored.record), expected, "{key}");
    }
    let last = replicas[2].rekey_tokens().await.unwrap();
    assert!(last.is_complete());
    for key in refreshed.iter().chain(&authorized) {
        assert!(key_ids(&backend, key).await.iter().all(|id| id == "k2"));
    }
}
