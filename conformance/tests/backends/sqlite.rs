//! The SQLite backend adapter: a namespace is a fresh database file in the
//! system's temp directory, so a second process opens it from its path alone.

use std::sync::Arc;

use mcp_authkit_conformance::{Backend, Replica, SetupError, async_trait};
use mcp_authkit_store_sqlite::{SqliteStore, database_files};

pub struct Sqlite;

#[async_trait]
impl Backend for Sqlite {
    fn name(&self) -> &str {
        "sqlite"
    }

    async fn create_namespace(&self) -> Result<String, SetupError> {
        let path = std::env::temp_dir().join(format!(
            "mcp-authkit-conformance-{}.db",
            mcp_authkit_core::random_urlsafe(12)
        ));
        // The file itself is created by the first replica that opens it.
        Ok(path
            .to_str()
            .ok_or("the temp directory's path is not UTF-8")?
            .to_owned())
    }

    async fn open(&self, namespace: &str) -> Result<Replica, SetupError> {
        let store = Arc::new(SqliteStore::open(namespace).await?);
        Ok(Replica::new(store.clone(), store))
    }

    async fn cleanup(&self, namespace: &str) {
        for file in database_files(namespace.as_ref()) {
            let _ = std::fs::remove_file(file);
        }
    }
}
