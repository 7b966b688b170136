//! The SQLite backend adapter: a namespace is a fresh database file in the
//! system's temp directory, so a second process opens it from its path alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use mcp_authkit_conformance::{Backend, Replica, SetupError, async_trait};
use mcp_authkit_store_sqlite::{SqliteStore, database_files};

pub struct Sqlite;

/// The stores this process opened, per namespace, so their pools'
/// connections can be counted.
fn opened() -> &'static Mutex<HashMap<String, Vec<SqliteStore>>> {
    static OPENED: OnceLock<Mutex<HashMap<String, Vec<SqliteStore>>>> = OnceLock::new();
    OPENED.get_or_init(Default::default)
}

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
        let store = SqliteStore::open(namespace).await?;
        opened()
            .lock()
            .unwrap()
            .entry(namespace.to_owned())
            .or_default()
            .push(store.clone());
        let store = Arc::new(store);
        Ok(Replica::new(store.clone(), store))
    }

    /// The connections of the replicas' pools.
    async fn connections(&self, namespace: &str) -> Option<usize> {
        let opened = opened().lock().unwrap();
        Some(
            opened
                .get(namespace)?
                .iter()
                .map(|s| s.pool().size() as usize)
                .sum(),
        )
    }

    async fn cleanup(&self, namespace: &str) {
        opened().lock().unwrap().remove(namespace);
        for file in database_files(namespace.as_ref()) {
            let _ = std::fs::remove_file(file);
        }
    }
}
