use std::time::Duration;

use mcp_authkit_core::{
    CasOutcome, LeaseToken, PendingFlow, Result, Revision, ScanCursor, ScanPage, StoredToken,
    Timestamp, TokenKey, TokenRecord, TokenStore, async_trait,
};
use mcp_authkit_store_encrypted::{EncryptedStore, EncryptionKey, Keyring};
use mcp_authkit_store_memory::MemoryStore;

/// A key with fixed material, so tests can build "the same id, another key".
pub fn key(id: &str, byte: u8) -> EncryptionKey {
    EncryptionKey::from_bytes(id, &[byte; 32]).unwrap()
}

pub fn keyring(id: &str, byte: u8) -> Keyring {
    Keyring::new(key(id, byte))
}

/// A memory backend and the wrapper over it.
pub fn encrypted(keyring: Keyring) -> (MemoryStore, EncryptedStore<MemoryStore>) {
    let backend = MemoryStore::new();
    (backend.clone(), EncryptedStore::new(backend, keyring))
}

/// A typical record whose every secret is distinctive.
pub fn record(tag: &str) -> TokenRecord {
    let now = Timestamp::now();
    TokenRecord::new(format!("gho_access_{tag}_0123456789"), now)
        .with_refresh_token(format!("ghr_refresh_{tag}_0123456789"))
        .with_scopes(["repo", "read:user"])
        .with_expires_at(now.saturating_add(Duration::from_secs(3600)))
        .with_token_type("bearer")
        .with_extra("id_token", format!("eyJ.id_token_{tag}.sig"))
        .with_extra("custom", format!("custom_value_{tag}"))
}

pub fn flow(key: &TokenKey) -> PendingFlow {
    PendingFlow::new(
        key.clone(),
        "http://127.0.0.1:9/callback",
        vec!["repo".into()],
        Timestamp::now(),
        Duration::from_secs(600),
    )
    .with_started_by("session-1")
    .with_attribute("resource", "https://mcp.example/")
}

/// A token store that yields to the scheduler around every call, so tasks
/// interleave between a read and the write that follows it, as they would
/// over a network backend.
#[derive(Clone)]
pub struct Yielding<S>(pub S);

async fn yielding<T>(op: impl std::future::Future<Output = T>) -> T {
    tokio::task::yield_now().await;
    let result = op.await;
    tokio::task::yield_now().await;
    result
}

#[async_trait]
impl<S: TokenStore> TokenStore for Yielding<S> {
    async fn get(&self, key: &TokenKey) -> Result<Option<StoredToken>> {
        yielding(self.0.get(key)).await
    }
    async fn put(&self, key: &TokenKey, record: &TokenRecord) -> Result<Revision> {
        yielding(self.0.put(key, record)).await
    }
    async fn compare_and_swap(
        &self,
        key: &TokenKey,
        expected: Option<Revision>,
        record: &TokenRecord,
    ) -> Result<CasOutcome> {
        yielding(self.0.compare_and_swap(key, expected, record)).await
    }
    async fn delete(&self, key: &TokenKey) -> Result<bool> {
        yielding(self.0.delete(key)).await
    }
    async fn delete_if_revision(&self, key: &TokenKey, revision: Revision) -> Result<bool> {
        yielding(self.0.delete_if_revision(key, revision)).await
    }
    async fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<LeaseToken>> {
        yielding(self.0.try_acquire_lease(key, ttl)).await
    }
    async fn release_lease(&self, key: &TokenKey, lease: &LeaseToken) -> Result<bool> {
        yielding(self.0.release_lease(key, lease)).await
    }
    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage<TokenKey>> {
        yielding(self.0.scan(cursor, limit)).await
    }
}
