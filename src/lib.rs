//! # mcp-authkit
//!
//! OAuth token and pending-flow storage for MCP servers and clients, with the
//! token lifecycle on top: one dependency, backends picked by feature.
//!
//! | feature | what it adds |
//! |---|---|
//! | `memory` (default) | [`memory::MemoryStore`], in-process |
//! | `sqlite` | `sqlite::SqliteStore`, the embedded default for one machine |
//! | `redis` | `redis::RedisStore`, shared state for many replicas |
//! | `postgres` | `postgres::PostgresStore`, durable shared state on PostgreSQL |
//! | `encrypted` | `encrypted::EncryptedStore`, AES-256-GCM over any store |
//! | `providers` | server-side `OAuthProvider` and client-side `AuthProvider`s |
//! | `rmcp` | `providers` plus the rmcp integration |
//!
//! Everything of [`mcp_authkit_core`] is re-exported at the top level.
//!
//! ```
//! use mcp_authkit::{TokenKey, TokenRecord, TokenStore, Timestamp};
//! use mcp_authkit::memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> mcp_authkit::Result<()> {
//! let store = MemoryStore::new();
//! let key = TokenKey::new("github", "user-1");
//! store.put(&key, &TokenRecord::new("gho_x", Timestamp::now())).await?;
//! assert!(store.get(&key).await?.is_some());
//! # Ok(())
//! # }
//! ```

pub use mcp_authkit_core::*;

/// The in-process backend.
#[cfg(feature = "memory")]
pub mod memory {
    pub use mcp_authkit_store_memory::*;
}

/// The SQLite backend.
#[cfg(feature = "sqlite")]
pub mod sqlite {
    pub use mcp_authkit_store_sqlite::*;
}

/// The Redis backend.
#[cfg(feature = "redis")]
pub mod redis {
    pub use mcp_authkit_store_redis::*;
}

/// The PostgreSQL backend.
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use mcp_authkit_store_postgres::*;
}

/// Encryption at rest over any store.
#[cfg(feature = "encrypted")]
pub mod encrypted {
    pub use mcp_authkit_store_encrypted::*;
}

/// Server-side and client-side OAuth providers.
#[cfg(feature = "providers")]
pub mod providers {
    pub use mcp_authkit_providers::*;
}
