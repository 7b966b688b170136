//! The conformance backend for PostgreSQL: each scenario gets its own
//! schema in the database at DATABASE_URL (default
//! postgres://postgres@127.0.0.1:5432/test), dropped afterwards, and every
//! replica is an independent `PostgresStore` with its own pool.

use std::sync::Arc;

use mcp_authkit_conformance::{Backend, Replica, SetupError, async_trait};
use mcp_authkit_store_postgres::{PostgresStore, testing};

/// PostgreSQL at `DATABASE_URL`; a test fails, saying how to start one,
/// when none answers.
pub struct Postgres;

impl Postgres {
    pub async fn store(namespace: &str) -> Result<PostgresStore, SetupError> {
        Ok(PostgresStore::options(&testing::database_url().await)
            .schema(namespace)
            // Scenarios run in parallel and open several replicas each: a
            // small pool per replica keeps the server under its limit.
            .max_connections(3)
            .application_name("mcp-authkit-conformance")
            .open()
            .await?)
    }
}

#[async_trait]
impl Backend for Postgres {
    fn name(&self) -> &str {
        "postgres"
    }

    async fn create_namespace(&self) -> Result<String, SetupError> {
        Ok(testing::unique_schema("conformance"))
    }

    /// Works from the schema name alone: the cross-process scenario's child
    /// process opens the same schema with the same DATABASE_URL.
    async fn open(&self, namespace: &str) -> Result<Replica, SetupError> {
        let store = Arc::new(Self::store(namespace).await?);
        Ok(Replica::new(store.clone(), store))
    }

    async fn cleanup(&self, namespace: &str) {
        let url = testing::database_url().await;
        if let Err(error) = testing::drop_schema(&url, namespace).await {
            eprintln!("could not drop the schema {namespace}: {error}");
        }
    }
}
