//! Opening a database: settings, checks and migrations.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::{Error, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqlitePool};

use crate::error::{
    BACKEND, SQLITE_BUSY, SQLITE_CANTOPEN, SQLITE_CORRUPT, SQLITE_LOCKED, SQLITE_NOTADB,
    SQLITE_READONLY, is_retryable, primary_code,
};
use crate::{Inner, MIGRATIONS_TABLE, SCHEMA_VERSION, SqliteStore, SqliteStoreOptions, location};

/// Why a database could not be opened, with the file it was about.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub(crate) struct OpenError {
    path: String,
    problem: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

fn open_failure(
    path: &Path,
    retryable: bool,
    problem: impl Into<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> Error {
    Error::backend(
        BACKEND,
        "open database",
        retryable,
        OpenError {
            path: path.display().to_string(),
            problem: problem.into(),
            source,
        },
    )
}

/// A connect or migrate error, explained for the file at `path`.
fn explain(path: &Path, error: sqlx::Error) -> Error {
    let problem = match primary_code(&error) {
        Some(SQLITE_NOTADB) => {
            "the file is not a SQLite database (or it is encrypted); it was left untouched. \
             Point the store at a new file, or at a SQLite database it may add its tables to"
        }
        Some(SQLITE_CORRUPT) => {
            "the database file is damaged; it was left untouched. Restore it from a backup \
             or point the store at a new file"
        }
        Some(SQLITE_CANTOPEN) => {
            "the file cannot be opened or created; check that the path names a file (not a \
             directory) and that this process may write to it, to its directory, and to the \
             -wal and -shm files beside it"
        }
        Some(SQLITE_READONLY) => {
            "the database is read-only to this process; the store needs to write to it and \
             to the -wal and -shm files beside it"
        }
        Some(SQLITE_BUSY | SQLITE_LOCKED) => {
            "another connection holds a lock on the database; try again, or raise the busy \
             timeout"
        }
        _ => "could not open the database",
    };
    let retryable = is_retryable(&error);
    open_failure(path, retryable, problem, Some(Box::new(error)))
}

/// Refuses paths SQLite would fail on with a vaguer message: a missing
/// directory, or a directory where the file should be.
fn check_path(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(open_failure(
            path,
            false,
            "this is a directory; give the path of a database file inside it",
            None,
        ));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(open_failure(
            path,
            false,
            format!(
                "the file cannot be created because {} is not an existing directory; create \
                 the directory first or choose another path",
                parent.display()
            ),
            None,
        ));
    }
    Ok(())
}

/// Creates the database file, empty and readable by this account only
/// (mode 0600), when it does not exist yet. SQLite would create it with
/// 0644 under the usual umask, readable by every local account, and it
/// gives the `-wal` and `-shm` files the mode of the database file: tokens
/// are secrets, so all three are made private from the start. An existing
/// file keeps its mode (an operator may share it on purpose); one that other
/// accounts can read is reported in a warning.
#[cfg(unix)]
fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            if let Ok(metadata) = std::fs::metadata(path)
                && metadata.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", metadata.permissions().mode() & 0o777),
                    "the token database can be read by other accounts; consider chmod 600 on it \
                     and its -wal and -shm files"
                );
            }
            Ok(())
        }
        Err(error) => Err(open_failure(
            path,
            false,
            "the file cannot be opened or created; check that the path names a file this \
             process may create in that directory",
            Some(Box::new(error)),
        )),
    }
}

#[cfg(not(unix))]
fn create_private(_path: &Path) -> Result<()> {
    Ok(())
}

pub(crate) async fn open(options: SqliteStoreOptions) -> Result<SqliteStore> {
    let (connect, path) = location::resolve(&options.location)?;
    check_path(&path)?;
    create_private(&path)?;
    let connect = connect
        .create_if_missing(true)
        .read_only(false)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(options.busy_timeout);
    let pool = connect_pool(&options, &connect)
        .await
        .map_err(|error| explain(&path, error))?;
    if let Err(error) = migrate(&pool, &path).await {
        pool.close().await;
        return Err(error);
    }
    let canonical = std::fs::canonicalize(&path).map_err(|error| {
        open_failure(
            &path,
            false,
            "the database was opened but its path cannot be resolved",
            Some(Box::new(error)),
        )
    })?;
    let hub = crate::wake::Hub::for_file(
        &canonical,
        connect,
        options.poll_min,
        options.poll_max,
        Arc::clone(&options.clock),
    );
    let reader = crate::reader::Reader::new(&canonical, options.max_connections as usize);
    Ok(SqliteStore {
        inner: Arc::new(Inner {
            pool,
            path: canonical,
            clock: options.clock,
            hub,
            reader,
        }),
    })
}

/// The pool, with its first connection open. Switching a new file to WAL
/// needs an exclusive lock that SQLite does not wait for, so a first open
/// racing another one (in any process) is retried here until the busy
/// timeout has passed.
async fn connect_pool(
    options: &SqliteStoreOptions,
    connect: &SqliteConnectOptions,
) -> sqlx::Result<SqlitePool> {
    let give_up = mcp_authkit_core::deadline_after(options.busy_timeout);
    let mut pause = Duration::from_millis(2);
    loop {
        let attempt = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .min_connections(0)
            // SQLite connections do not go stale; no maintenance task, so
            // the pool is not tied to the runtime it was created on.
            .max_lifetime(None)
            .idle_timeout(None)
            // A ping before every use would double the round trips of a read.
            .test_before_acquire(false)
            .connect_with(connect.clone())
            .await;
        match attempt {
            Err(error)
                if matches!(primary_code(&error), Some(SQLITE_BUSY | SQLITE_LOCKED))
                    && mcp_authkit_core::deadline_after(pause) < give_up =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// The newest schema version recorded in our migrations table, if it exists.
async fn recorded_version(conn: &mut sqlx::SqliteConnection) -> sqlx::Result<Option<i64>> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")
            .bind(MIGRATIONS_TABLE)
            .fetch_optional(&mut *conn)
            .await?;
    if exists.is_none() {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT max(version) FROM mcp_authkit_migrations")
        .fetch_one(&mut *conn)
        .await
}

fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

/// Brings the schema up to date inside one `BEGIN IMMEDIATE` transaction,
/// so processes opening a new file at the same time take turns, and a
/// refused database is left exactly as it was.
async fn migrate(pool: &SqlitePool, path: &Path) -> Result<()> {
    let explain = |error| explain(path, error);
    let mut conn = pool.acquire().await.map_err(explain)?;
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(explain)?;
    if let Some(found) = recorded_version(&mut tx).await.map_err(explain)?
        && found > SCHEMA_VERSION
    {
        return Err(newer_schema(found));
    }
    // `run_direct` is `run` on a plain connection; `run` itself trips the
    // compiler's Send check on `&mut SqliteConnection` (sqlx documents it).
    migrator()
        .run_direct(None, &mut *tx, false)
        .await
        .map_err(|error| match error {
            sqlx::migrate::MigrateError::VersionMissing(found) => newer_schema(found),
            sqlx::migrate::MigrateError::Execute(error) => explain(error),
            other => open_failure(
                path,
                false,
                format!(
                    "the mcp-authkit schema in this file is not one this release wrote (see the \
                 {MIGRATIONS_TABLE} table)"
                ),
                Some(Box::new(other)),
            ),
        })?;
    tx.commit().await.map_err(explain)?;
    Ok(())
}

fn newer_schema(found: i64) -> Error {
    Error::UnsupportedFormat {
        what: "sqlite schema",
        found: u64::try_from(found).unwrap_or(0),
        supported: SCHEMA_VERSION as u64,
    }
}

/// The files of the database at `path`: the database itself and the `-wal`
/// and `-shm` files SQLite keeps beside it. Copy or remove them together.
pub fn database_files(path: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [path.to_owned(), with("-wal"), with("-shm")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_version_is_the_last_migration() {
        let last = migrator().iter().map(|m| m.version).max();
        assert_eq!(last, Some(SCHEMA_VERSION));
    }
}
