//! The memory store against a plain `Mutex<HashMap>` holding the same records.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mcp_authkit_bench::{Table, measure};
use mcp_authkit_core::{Timestamp, TokenKey, TokenRecord, TokenStore};
use mcp_authkit_store_memory::MemoryStore;

#[tokio::main]
async fn main() {
    let store = MemoryStore::new();
    let keys: Vec<TokenKey> = (0..1000)
        .map(|i| TokenKey::new("github", format!("user-{i}")))
        .collect();
    let record = TokenRecord::new(
        "gho_0123456789abcdef0123456789abcdef01234567",
        Timestamp::now(),
    )
    .with_refresh_token("ghr_0123456789abcdef")
    .with_scopes(["repo", "read:user"]);
    let raw: Arc<Mutex<HashMap<TokenKey, TokenRecord>>> = Arc::default();
    for key in &keys {
        store.put(key, &record).await.unwrap();
        raw.lock().unwrap().insert(key.clone(), record.clone());
    }
    let n = 200_000;
    let raw_get = measure("raw map get", n, |i| {
        let raw = Arc::clone(&raw);
        let key = &keys[i % keys.len()];
        async move {
            std::hint::black_box(raw.lock().unwrap().get(key).cloned());
        }
    })
    .await;
    let get = measure("get", n, |i| {
        let store = &store;
        let key = &keys[i % keys.len()];
        async move {
            std::hint::black_box(TokenStore::get(store, key).await.unwrap());
        }
    })
    .await;
    let raw_put = measure("raw map insert", n, |i| {
        let raw = Arc::clone(&raw);
        let key = keys[i % keys.len()].clone();
        let record = record.clone();
        async move {
            raw.lock().unwrap().insert(key, record);
        }
    })
    .await;
    let put = measure("put", n, |i| {
        let store = &store;
        let key = &keys[i % keys.len()];
        let record = &record;
        async move {
            store.put(key, record).await.unwrap();
        }
    })
    .await;
    let mut table = Table::new();
    table.row("memory", get, Some(raw_get));
    table.row("memory", put, Some(raw_put));
    println!("{}", table.render());
}
