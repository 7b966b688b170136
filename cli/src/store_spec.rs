//! Which store a command works on, from one `--store` argument.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mcp_authkit::memory::MemoryStore;
use mcp_authkit::postgres::PostgresStore;
use mcp_authkit::redis::RedisStore;
use mcp_authkit::sqlite::SqliteStore;
use mcp_authkit::{Error, PendingStore, TokenStore};

/// A store named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    /// An in-process store (only useful for the demo).
    Memory,
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A Redis server URL.
    Redis(String),
    /// A PostgreSQL database URL.
    Postgres(String),
}

impl std::str::FromStr for StoreSpec {
    type Err = String;

    /// `memory`, `sqlite:PATH`, `sqlite://PATH`, a path ending in `.db` /
    /// `.sqlite` / `.sqlite3`, or `redis://`, `rediss://`, `redis+unix://`,
    /// `unix://`, `redis+cluster://`, `rediss+cluster://` URLs, or
    /// `postgres://` / `postgresql://` URLs.
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "memory" {
            return Ok(StoreSpec::Memory);
        }
        if let Some(path) = text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(
                    "sqlite: needs a file path, e.g. sqlite:/var/lib/app/authkit.db".into(),
                );
            }
            return Ok(StoreSpec::Sqlite(PathBuf::from(path)));
        }
        let scheme = text.split_once("://").map(|(scheme, _)| scheme);
        if matches!(
            scheme,
            Some(
                "redis"
                    | "rediss"
                    | "redis+unix"
                    | "unix"
                    | "valkey"
                    | "valkeys"
                    | "redis+cluster"
                    | "rediss+cluster"
            )
        ) {
            return Ok(StoreSpec::Redis(text.to_owned()));
        }
        if matches!(scheme, Some("postgres" | "postgresql")) {
            return Ok(StoreSpec::Postgres(text.to_owned()));
        }
        if let Some(scheme) = scheme {
            return Err(format!(
                "unknown store scheme {scheme:?}: use memory, sqlite:PATH, redis://HOST:PORT or \
                 postgres://USER@HOST/DATABASE"
            ));
        }
        let path = PathBuf::from(text);
        match path.extension().and_then(|e| e.to_str()) {
            Some("db" | "sqlite" | "sqlite3") => Ok(StoreSpec::Sqlite(path)),
            _ => Err(format!(
                "{text:?} is not a store: use memory, sqlite:PATH (or a path ending in .db) or \
                 redis://HOST:PORT"
            )),
        }
    }
}

/// An opened store, as both traits.
#[derive(Clone)]
pub struct OpenStore {
    pub tokens: Arc<dyn TokenStore>,
    pub pending: Arc<dyn PendingStore>,
}

impl OpenStore {
    fn of<S: TokenStore + PendingStore>(store: S) -> Self {
        let store = Arc::new(store);
        OpenStore {
            tokens: store.clone(),
            pending: store,
        }
    }
}

impl StoreSpec {
    /// Opens the store. An existing SQLite file (or PostgreSQL schema with
    /// the store's tables) is required unless `create` (inspecting a typo'd
    /// path must not create an empty database). `namespace` is the Redis key
    /// prefix or the PostgreSQL schema.
    pub async fn open(&self, namespace: Option<&str>, create: bool) -> Result<OpenStore, Error> {
        match self {
            StoreSpec::Memory => Ok(OpenStore::of(MemoryStore::new())),
            StoreSpec::Sqlite(path) => {
                if !create && !path.exists() {
                    return Err(Error::invalid_input(
                        "store",
                        format!("there is no SQLite database at {}", path.display()),
                    ));
                }
                Ok(OpenStore::of(SqliteStore::open(path).await?))
            }
            StoreSpec::Redis(url) => {
                let mut builder =
                    RedisStore::builder(url.clone()).connect_timeout(Duration::from_secs(3));
                if let Some(prefix) = namespace {
                    builder = builder.prefix(prefix);
                }
                Ok(OpenStore::of(builder.connect().await?))
            }
            StoreSpec::Postgres(url) => {
                let mut options = PostgresStore::options(url)
                    .connect_timeout(Duration::from_secs(3))
                    .create_if_missing(create);
                if let Some(schema) = namespace {
                    options = options.schema(schema);
                }
                Ok(OpenStore::of(options.open().await?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("memory".parse(), Ok(StoreSpec::Memory));
        assert_eq!(
            "sqlite:/tmp/a.db".parse(),
            Ok(StoreSpec::Sqlite("/tmp/a.db".into()))
        );
        assert_eq!(
            "sqlite:///tmp/a.db".parse(),
            Ok(StoreSpec::Sqlite("/tmp/a.db".into()))
        );
        assert_eq!(
            "data/x.sqlite".parse(),
            Ok(StoreSpec::Sqlite("data/x.sqlite".into()))
        );
        assert_eq!(
            "redis://127.0.0.1:6379/2".parse(),
            Ok(StoreSpec::Redis("redis://127.0.0.1:6379/2".into()))
        );
        assert_eq!(
            "redis+cluster://127.0.0.1:7100,127.0.0.1:7101".parse(),
            Ok(StoreSpec::Redis(
                "redis+cluster://127.0.0.1:7100,127.0.0.1:7101".into()
            ))
        );
        assert_eq!(
            "postgres://app@db/app".parse(),
            Ok(StoreSpec::Postgres("postgres://app@db/app".into()))
        );
        assert!(
            "mysql://x"
                .parse::<StoreSpec>()
                .unwrap_err()
                .contains("unknown store scheme")
        );
        assert!(
            "notes.txt"
                .parse::<StoreSpec>()
                .unwrap_err()
                .contains("is not a store")
        );
        assert!("sqlite:".parse::<StoreSpec>().is_err());
    }
}
