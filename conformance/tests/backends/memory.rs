//! The conformance adapter of the in-process backend; shared by the test
//! binaries that run the suite on it, bare or wrapped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use mcp_authkit_conformance::{Backend, Replica, SetupError, async_trait};
use mcp_authkit_store_memory::MemoryStore;

/// Namespaces of this process: clones of one store are its replicas.
fn registry() -> &'static Mutex<HashMap<String, MemoryStore>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, MemoryStore>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The memory backend: each namespace is one `MemoryStore` of this process.
pub struct Memory;

#[async_trait]
impl Backend for Memory {
    fn name(&self) -> &str {
        "memory"
    }

    async fn create_namespace(&self) -> Result<String, SetupError> {
        let name = mcp_authkit_core::random_urlsafe(8);
        registry()
            .lock()
            .unwrap()
            .insert(name.clone(), MemoryStore::new());
        Ok(name)
    }

    async fn open(&self, namespace: &str) -> Result<Replica, SetupError> {
        let store = registry()
            .lock()
            .unwrap()
            .get(namespace)
            .cloned()
            .ok_or("no such namespace in this process")?;
        let store = Arc::new(store);
        Ok(Replica::new(store.clone(), store))
    }

    async fn cleanup(&self, namespace: &str) {
        registry().lock().unwrap().remove(namespace);
    }
}
