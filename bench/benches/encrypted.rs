//! The encrypting wrapper against the bare memory store it wraps: the cost
//! AES-256-GCM adds to each get and put of a token record.
//!
//! Bare and encrypted runs alternate for several rounds and each keeps its
//! best round, so a burst of load from elsewhere on the machine does not
//! land on one side only.

use mcp_authkit_bench::{Stats, Table, measure};
use mcp_authkit_core::{Timestamp, TokenKey, TokenRecord, TokenStore};
use mcp_authkit_store_encrypted::{EncryptedStore, EncryptionKey, Keyring};
use mcp_authkit_store_memory::MemoryStore;

const ITERATIONS: usize = 50_000;
const ROUNDS: usize = 6;

/// A typical GitHub-style token: access and refresh token, two scopes.
fn typical_record() -> TokenRecord {
    let now = Timestamp::now();
    TokenRecord::new("gho_0123456789abcdef0123456789abcdef01234567", now)
        .with_refresh_token(
            "ghr_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef01",
        )
        .with_scopes(["repo", "read:user"])
        .with_expires_at(now.saturating_add(std::time::Duration::from_secs(28_800)))
}

/// An OpenID Connect token: the typical record plus a 1 KB id_token.
fn oidc_record() -> TokenRecord {
    typical_record().with_extra("id_token", "e".repeat(1024))
}

async fn get_and_put<S: TokenStore>(
    label: &str,
    store: &S,
    keys: &[TokenKey],
    record: &TokenRecord,
) -> (Stats, Stats) {
    let get = measure(&format!("get ({label})"), ITERATIONS, |i| {
        let key = &keys[i % keys.len()];
        async move {
            std::hint::black_box(store.get(key).await.unwrap());
        }
    })
    .await;
    let put = measure(&format!("put ({label})"), ITERATIONS, |i| {
        let key = &keys[i % keys.len()];
        async move {
            std::hint::black_box(store.put(key, record).await.unwrap());
        }
    })
    .await;
    (get, put)
}

fn faster(best: Option<Stats>, candidate: Stats) -> Option<Stats> {
    match best {
        Some(best) if best.ops_per_sec >= candidate.ops_per_sec => Some(best),
        _ => Some(candidate),
    }
}

fn mean_micros(stats: &Stats) -> f64 {
    1e6 / stats.ops_per_sec
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let keys: Vec<TokenKey> = (0..1000)
        .map(|i| TokenKey::new("github", format!("user-{i}")))
        .collect();
    let keyring = Keyring::new(EncryptionKey::generate("bench"));
    let mut table = Table::new();
    let mut overheads = Vec::new();
    for (label, record) in [("typical", typical_record()), ("oidc", oidc_record())] {
        let bare = MemoryStore::new();
        let encrypted = EncryptedStore::new(MemoryStore::new(), keyring.clone());
        for key in &keys {
            bare.put(key, &record).await.unwrap();
            encrypted.put(key, &record).await.unwrap();
        }
        let (mut bare_get, mut bare_put, mut get, mut put) = (None, None, None, None);
        for _ in 0..ROUNDS {
            let (g, p) = get_and_put(label, &bare, &keys, &record).await;
            (bare_get, bare_put) = (faster(bare_get, g), faster(bare_put, p));
            let (g, p) = get_and_put(label, &encrypted, &keys, &record).await;
            (get, put) = (faster(get, g), faster(put, p));
        }
        let [bare_get, bare_put, get, put] =
            [bare_get, bare_put, get, put].map(|stats| stats.expect("at least one round"));
        overheads.push(format!(
            "{label}: get +{:.2} µs (p50 +{:.2} µs), put +{:.2} µs (p50 +{:.2} µs)",
            mean_micros(&get) - mean_micros(&bare_get),
            (get.p50.as_secs_f64() - bare_get.p50.as_secs_f64()) * 1e6,
            mean_micros(&put) - mean_micros(&bare_put),
            (put.p50.as_secs_f64() - bare_put.p50.as_secs_f64()) * 1e6,
        ));
        table.row("encrypted(memory)", get, Some(bare_get));
        table.row("encrypted(memory)", put, Some(bare_put));
    }
    println!("{}", table.render());
    println!("Overhead of encryption per operation, best of {ROUNDS} rounds (mean; median):");
    for line in overheads {
        println!("- {line}");
    }
}
