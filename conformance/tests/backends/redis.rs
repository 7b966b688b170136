//! The conformance backend for Redis: each scenario gets its own key prefix
//! on the server at REDIS_URL (default redis://127.0.0.1:6379), and every
//! replica is an independent `RedisStore` with its own connections.

use std::sync::Arc;

use mcp_authkit_conformance::{Backend, Replica, SetupError, async_trait};
use mcp_authkit_store_redis::{RedisStore, testing};

/// Redis at `REDIS_URL`; a test fails, saying how to start one, when none
/// answers.
pub struct Redis;

impl Redis {
    async fn store(namespace: &str) -> Result<RedisStore, SetupError> {
        Ok(RedisStore::builder(testing::redis_url().await)
            .prefix(namespace)
            // Named after the namespace, so `connections` counts this
            // scenario's connections and no other's.
            .client_name(namespace)
            .connect()
            .await?)
    }
}

#[async_trait]
impl Backend for Redis {
    fn name(&self) -> &str {
        "redis"
    }

    async fn create_namespace(&self) -> Result<String, SetupError> {
        Ok(testing::unique_prefix("conformance"))
    }

    /// Works from the prefix alone: the cross-process scenario's child
    /// process opens the same namespace with the same REDIS_URL.
    async fn open(&self, namespace: &str) -> Result<Replica, SetupError> {
        let store = Arc::new(Self::store(namespace).await?);
        Ok(Replica::new(store.clone(), store))
    }

    /// Counts the server's clients named after the namespace.
    async fn connections(&self, namespace: &str) -> Option<usize> {
        let client = redis::Client::open(testing::redis_url().await).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .ok()?;
        let name = format!(" name={namespace} ");
        Some(list.lines().filter(|line| line.contains(&name)).count())
    }

    async fn cleanup(&self, namespace: &str) {
        match Self::store(namespace).await {
            Ok(store) => {
                if let Err(error) = store.delete_namespace().await {
                    eprintln!("could not remove the keys of {namespace}: {error}");
                }
            }
            Err(error) => eprintln!("could not remove the keys of {namespace}: {error}"),
        }
    }
}
