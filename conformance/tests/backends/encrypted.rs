//! The conformance adapter of `EncryptedStore` over any other adapter, and a
//! check that secrets reach that backend sealed.
//!
//! Running the suite encrypted over another backend takes one test file:
//!
//! ```ignore
//! // tests/sqlite.rs
//! mod backends {
//!     pub mod encrypted;
//!     pub mod sqlite;
//! }
//! use backends::{encrypted::Encrypted, sqlite::Sqlite};
//!
//! mcp_authkit_conformance::conformance_tests! {
//!     plain { backend: Sqlite }
//!     encrypted { backend: Encrypted::new(Sqlite) }
//! }
//!
//! #[test]
//! fn secrets_stay_sealed_at_rest() {
//!     backends::encrypted::secrets_stay_sealed_at_rest(Sqlite);
//! }
//! ```

use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_conformance::{Backend, Replica, SetupError, async_trait};
use mcp_authkit_core::{ExposeSecret, PendingFlow, Timestamp, TokenKey, TokenRecord};
use mcp_authkit_store_encrypted::{EncryptedStore, EncryptionKey, Keyring, testing};

/// `inner` with every replica wrapped in an [`EncryptedStore`]: the suite
/// then checks that the wrapper keeps every guarantee of the store it wraps.
pub struct Encrypted<B> {
    inner: B,
    name: String,
}

impl<B: Backend> Encrypted<B> {
    /// Wraps the adapter `inner`.
    pub fn new(inner: B) -> Self {
        let name = format!("encrypted({})", inner.name());
        Encrypted { inner, name }
    }
}

/// The keys of every process of the suite: fixed material, so the child of
/// the cross-process scenario opens what the parent wrote. A previous key
/// besides the primary makes every read pick its key by id.
fn keyring() -> Keyring {
    let key = |id: &str, byte: u8| EncryptionKey::from_bytes(id, &[byte; 32]).unwrap();
    Keyring::with_previous(key("conformance-2", 0x42), [key("conformance-1", 0x41)]).unwrap()
}

fn wrap(replica: Replica) -> Replica {
    let keyring = keyring();
    Replica::new(
        Arc::new(EncryptedStore::new(replica.tokens, keyring.clone())),
        Arc::new(EncryptedStore::new(replica.pending, keyring)),
    )
}

#[async_trait]
impl<B: Backend> Backend for Encrypted<B> {
    fn name(&self) -> &str {
        &self.name
    }

    async fn create_namespace(&self) -> Result<String, SetupError> {
        self.inner.create_namespace().await
    }

    async fn open(&self, namespace: &str) -> Result<Replica, SetupError> {
        Ok(wrap(self.inner.open(namespace).await?))
    }

    async fn cleanup(&self, namespace: &str) {
        self.inner.cleanup(namespace).await
    }

    async fn connections(&self, namespace: &str) -> Option<usize> {
        self.inner.connections(namespace).await
    }
}

/// Writes tokens and flows through the wrapper, then reads a separately
/// opened, unwrapped replica of the same namespace of `inner` and checks
/// that every secret is sealed there and everything in clear is intact.
pub fn secrets_stay_sealed_at_rest<B: Backend>(inner: B) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let inner = Arc::new(inner);
    runtime.block_on(async move {
        let namespace = inner
            .create_namespace()
            .await
            .unwrap_or_else(|e| panic!("backend {:?}: no namespace: {e}", inner.name()));
        let check = {
            let (inner, namespace) = (Arc::clone(&inner), namespace.clone());
            tokio::spawn(async move { write_then_inspect(&*inner, &namespace).await })
        };
        let outcome = check.await;
        inner.cleanup(&namespace).await;
        if let Err(error) = outcome {
            std::panic::resume_unwind(error.into_panic());
        }
    });
}

async fn write_then_inspect<B: Backend>(inner: &B, namespace: &str) {
    let open = || async {
        inner
            .open(namespace)
            .await
            .unwrap_or_else(|e| panic!("backend {:?}: cannot open: {e}", inner.name()))
    };
    let sealed = wrap(open().await);
    let now = Timestamp::now();
    let keys = [
        TokenKey::new("github", "alice"),
        TokenKey::new("p:{x}", "ü ser *"),
        TokenKey::new("", ""),
    ];
    let mut written = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let record = TokenRecord::new(format!("at-secret-{i}-0123456789"), now)
            .with_refresh_token(format!("rt-secret-{i}-0123456789"))
            .with_scopes(["repo", "read:user"])
            .with_expires_at(now.saturating_add(Duration::from_secs(3600)))
            .with_extra("id_token", format!("id-token-secret-{i}-0123456789"));
        sealed.tokens.put(key, &record).await.expect("put");
        let flow = PendingFlow::new(
            key.clone(),
            "http://127.0.0.1:9/callback",
            vec!["repo".into()],
            now,
            Duration::from_secs(600),
        );
        sealed.pending.insert(&flow).await.expect("insert flow");
        written.push((key, record, flow));
    }

    let raw = open().await;
    let reader = wrap(open().await);
    for (key, record, flow) in &written {
        testing::assert_token_sealed(&*raw.tokens, key, record).await;
        testing::assert_flow_sealed(&*raw.pending, flow).await;
        // And another wrapped replica reads them back.
        let read = reader.tokens.get(key).await.expect("get").expect("stored");
        assert_eq!(
            read.record.access_token.expose_secret(),
            record.access_token.expose_secret()
        );
        let taken = reader
            .pending
            .take(&flow.state)
            .await
            .expect("take")
            .expect("flow");
        assert_eq!(
            taken.pkce_verifier.expose_secret(),
            flow.pkce_verifier.expose_secret()
        );
    }
}
