//! The conformance suite on the SQLite backend, bare and through
//! `EncryptedStore` (cross-process scenario included), the check that
//! secrets reach the store sealed, and a look at the database file's raw
//! bytes.

mod backends {
    pub mod encrypted;
    pub mod sqlite;
}

use std::sync::Arc;

use backends::encrypted::Encrypted;
use backends::sqlite::Sqlite;
use mcp_authkit_core::{Timestamp, TokenKey, TokenRecord, TokenStore};
use mcp_authkit_store_encrypted::{EncryptedStore, EncryptionKey, Keyring};
use mcp_authkit_store_sqlite::{SqliteStore, database_files};

mcp_authkit_conformance::conformance_tests! {
    plain { backend: Sqlite }
    encrypted { backend: Encrypted::new(Sqlite) }
}

#[test]
fn secrets_stay_sealed_at_rest() {
    backends::encrypted::secrets_stay_sealed_at_rest(Sqlite);
}

/// Every byte SQLite wrote (database, WAL, shared memory) of a file holding
/// one token written through `store`.
async fn bytes_on_disk(
    store: Arc<dyn TokenStore>,
    sqlite: &SqliteStore,
    path: &std::path::Path,
) -> Vec<u8> {
    let record = TokenRecord::new("gho_plaintext_access_9f8e7d", Timestamp::now())
        .with_refresh_token("ghr_plaintext_refresh_1a2b3c")
        .with_extra("id_token", "eyJplaintext.id.token");
    store
        .put(&TokenKey::new("github", "alice"), &record)
        .await
        .unwrap();
    sqlite.close().await;
    let mut bytes = Vec::new();
    for file in database_files(path) {
        if let Ok(content) = std::fs::read(&file) {
            bytes.extend(content);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn no_secret_in_the_database_files() {
    let secrets = [
        "gho_plaintext_access_9f8e7d",
        "ghr_plaintext_refresh_1a2b3c",
        "eyJplaintext.id.token",
    ];
    let dir = tempfile::tempdir().unwrap();

    // Control: without the wrapper the secrets are in the file, so the
    // search below would find them.
    let clear_path = dir.path().join("clear.db");
    let clear = SqliteStore::open(&clear_path).await.unwrap();
    let bytes = bytes_on_disk(Arc::new(clear.clone()), &clear, &clear_path).await;
    assert!(
        secrets.iter().all(|s| contains(&bytes, s)),
        "the control finds the secrets"
    );

    let sealed_path = dir.path().join("sealed.db");
    let sqlite = SqliteStore::open(&sealed_path).await.unwrap();
    let key = EncryptionKey::generate("k1");
    let store = EncryptedStore::new(sqlite.clone(), Keyring::new(key));
    let bytes = bytes_on_disk(Arc::new(store), &sqlite, &sealed_path).await;
    assert!(
        contains(&bytes, "github") && contains(&bytes, "alice"),
        "the key stays in clear"
    );
    for secret in secrets {
        assert!(!contains(&bytes, secret), "{secret} is stored in clear");
    }
}
