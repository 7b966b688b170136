//! The conformance backend for Redis Cluster: each scenario gets its own key
//! prefix on the cluster at REDIS_CLUSTER_URL (or the one
//! scripts/redis-cluster.sh starts), and every replica is an independent
//! `RedisStore` with its own cluster connections.

use std::sync::Arc;

use mcp_authkit_conformance::{Backend, Replica, SetupError, async_trait};
use mcp_authkit_store_redis::{RedisStore, testing};

/// A Redis Cluster; a test fails, saying how to start one, when none
/// answers.
pub struct RedisCluster;

impl RedisCluster {
    async fn store(namespace: &str) -> Result<RedisStore, SetupError> {
        Ok(RedisStore::builder(testing::redis_cluster_url().await)
            .prefix(namespace)
            .client_name("mcp-authkit-conformance")
            .connect()
            .await?)
    }
}

#[async_trait]
impl Backend for RedisCluster {
    fn name(&self) -> &str {
        "redis-cluster"
    }

    async fn create_namespace(&self) -> Result<String, SetupError> {
        Ok(testing::unique_prefix("conformance"))
    }

    /// Works from the prefix alone: the cross-process scenario's child
    /// process finds the same cluster and opens the same namespace.
    async fn open(&self, namespace: &str) -> Result<Replica, SetupError> {
        let store = Arc::new(Self::store(namespace).await?);
        Ok(Replica::new(store.clone(), store))
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
