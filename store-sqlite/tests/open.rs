//! Opening a database: locations, settings, the schema's own migrations
//! table, and bad input refused without touching anything.

use std::path::Path;
use std::time::Duration;

use mcp_authkit_core::{Error, Timestamp, TokenKey, TokenRecord, TokenStore};
use mcp_authkit_store_sqlite::{MIGRATIONS_TABLE, SCHEMA_VERSION, SqliteStore};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

fn record(access: &str) -> TokenRecord {
    TokenRecord::new(access, Timestamp::now())
}

async fn raw_pool(path: &Path) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(path))
        .await
        .unwrap()
}

/// Every row of every table, as text: what "nothing changed" compares.
async fn dump(path: &Path) -> Vec<String> {
    let pool = raw_pool(path).await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut lines: Vec<String> = sqlx::query_scalar(
        "SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_master ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for table in tables {
        let sql = format!("SELECT * FROM \"{table}\"");
        for row in sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&pool)
            .await
            .unwrap()
        {
            let mut line = table.clone();
            for i in 0..row.len() {
                let value: Option<Vec<u8>> = row.try_get_unchecked(i).ok().flatten();
                line.push_str(&format!(" {value:?}"));
            }
            lines.push(line);
        }
    }
    pool.close().await;
    lines
}

#[tokio::test]
async fn creates_the_file_with_wal_full_sync_and_busy_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    assert!(!path.exists());
    let store = SqliteStore::options(&path)
        .busy_timeout(Duration::from_millis(1234))
        .open()
        .await
        .unwrap();
    assert!(path.exists(), "the file is created");
    assert_eq!(store.path(), path.canonicalize().unwrap());
    let mut conn = store.pool().acquire().await.unwrap();
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(synchronous, 2, "synchronous=FULL");
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(busy, 1234);
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM mcp_authkit_migrations")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert_eq!(versions, vec![SCHEMA_VERSION]);
    let host_table: Option<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE name = '_sqlx_migrations'")
            .fetch_optional(&mut *conn)
            .await
            .unwrap();
    assert_eq!(
        host_table, None,
        "the host's migrations table is not created"
    );
}

#[tokio::test]
async fn urls_and_paths_open_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("with space #1.db");
    let by_path = SqliteStore::open(&path).await.unwrap();
    let key = TokenKey::new("github", "alice");
    let revision = by_path.put(&key, &record("a")).await.unwrap();
    let encoded = path
        .to_str()
        .unwrap()
        .replace(' ', "%20")
        .replace('#', "%23");
    for url in [
        format!("sqlite://{encoded}"),
        format!("sqlite:{encoded}?mode=rwc"),
    ] {
        let by_url = SqliteStore::open(&url).await.unwrap();
        assert_eq!(by_url.path(), by_path.path(), "{url}");
        assert_eq!(by_url.get(&key).await.unwrap().unwrap().revision, revision);
    }
    for refused in ["sqlite::memory:", "sqlite://x.db?mode=ro"] {
        let error = SqliteStore::open(refused).await.unwrap_err();
        assert!(
            matches!(error, Error::InvalidInput { .. }),
            "{refused}: {error}"
        );
    }
}

#[tokio::test]
async fn refuses_a_path_that_cannot_be_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing_dir = dir.path().join("no-such-dir").join("store.db");
    let error = SqliteStore::open(&missing_dir).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("no-such-dir"), "{message}");
    assert!(message.contains("not an existing directory"), "{message}");
    assert!(!error.is_retryable());
    assert!(!missing_dir.parent().unwrap().exists(), "nothing created");

    // A directory where the file should be.
    let error = SqliteStore::open(dir.path()).await.unwrap_err();
    assert!(error.to_string().contains("is a directory"), "{error}");

    // A regular file used as a directory: SQLite's own refusal, explained.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let error = SqliteStore::open(file.join("store.db")).await.unwrap_err();
    assert!(error.to_string().contains("plain-file"), "{error}");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");

    // A name the file system refuses: SQLite's own refusal, explained.
    let too_long = dir.path().join(format!("{}.db", "x".repeat(300)));
    let error = SqliteStore::open(&too_long).await.unwrap_err();
    assert!(
        error.to_string().contains("cannot be opened or created"),
        "{error}"
    );
    assert!(std::error::Error::source(&error).is_some(), "source kept");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "nothing created"
    );
}

#[tokio::test]
async fn refuses_a_file_that_is_not_a_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let content = "These are someone's notes, not a database.\n".repeat(200);
    std::fs::write(&path, &content).unwrap();
    let error = SqliteStore::open(&path).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("not a SQLite database"), "{message}");
    assert!(message.contains("notes.txt"), "{message}");
    assert!(std::error::Error::source(&error).is_some(), "source kept");
    assert!(!error.is_retryable());
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        content,
        "left untouched"
    );
    assert!(!dir.path().join("notes.txt-wal").exists());
}

#[tokio::test]
async fn refuses_a_schema_newer_than_this_release_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .put(&TokenKey::new("github", "alice"), &record("kept"))
        .await
        .unwrap();
    store.close().await;
    // What a later release's migration would have left behind.
    let pool = raw_pool(&path).await;
    sqlx::query(
        "INSERT INTO mcp_authkit_migrations (version, description, success, checksum, \
         execution_time) VALUES (?1, 'from the future', TRUE, x'00', 0)",
    )
    .bind(SCHEMA_VERSION + 1)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("CREATE TABLE mcp_authkit_future (x)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let before = dump(&path).await;

    let error = SqliteStore::open(&path).await.unwrap_err();
    match &error {
        Error::UnsupportedFormat {
            what,
            found,
            supported,
        } => {
            assert_eq!(*what, "sqlite schema");
            assert_eq!(*found, (SCHEMA_VERSION + 1) as u64);
            assert_eq!(*supported, SCHEMA_VERSION as u64);
        }
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
    assert!(error.to_string().contains("upgrade mcp-authkit"), "{error}");
    assert_eq!(dump(&path).await, before, "nothing changed");
}

/// The host application's sqlx migrations and ours share one file, each in
/// its own table, in either order, again and again.
#[tokio::test]
async fn shares_a_file_with_the_host_applications_sqlx_migrations() {
    let host = sqlx::migrate!("./tests/host_migrations");
    for store_first in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let app = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .unwrap();
        if store_first {
            SqliteStore::open(&path).await.unwrap().close().await;
        }
        host.run(&app).await.expect("host migrations");
        let store = SqliteStore::open(&path)
            .await
            .expect("store beside the host schema");
        let key = TokenKey::new("github", "bob");
        store.put(&key, &record("t")).await.unwrap();
        // Both migrators again: neither sees the other's versions.
        host.run(&app).await.expect("host migrations run again");
        let again = SqliteStore::open(&path).await.expect("store opens again");
        assert!(again.get(&key).await.unwrap().is_some());

        let host_versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&app)
                .await
                .unwrap();
        assert_eq!(host_versions, vec![1, 2]);
        let ours: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT version FROM {MIGRATIONS_TABLE} ORDER BY version"
        )))
        .fetch_all(&app)
        .await
        .unwrap();
        assert_eq!(ours, vec![SCHEMA_VERSION]);
        sqlx::query("INSERT INTO users (name) VALUES ('host data')")
            .execute(&app)
            .await
            .unwrap();
        app.close().await;
    }
}

/// Instances opening a new file at the same moment take turns creating
/// the schema; all of them work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_opens_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.db");
    let mut opens = tokio::task::JoinSet::new();
    for i in 0..8 {
        let path = path.clone();
        opens.spawn(async move {
            let store = SqliteStore::open(&path).await.expect("open");
            store
                .put(&TokenKey::new("p", format!("s{i}")), &record("t"))
                .await
                .unwrap()
        });
    }
    let mut revisions = Vec::new();
    while let Some(joined) = opens.join_next().await {
        revisions.push(joined.unwrap());
    }
    revisions.sort();
    revisions.dedup();
    assert_eq!(revisions.len(), 8, "every write got its own revision");
}

#[tokio::test]
async fn data_and_revisions_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reopen.db");
    let key = TokenKey::new("github", "carol");
    let first = {
        let store = SqliteStore::open(&path).await.unwrap();
        let revision = store.put(&key, &record("one")).await.unwrap();
        assert!(store.delete(&key).await.unwrap());
        store.close().await;
        revision
    };
    let store = SqliteStore::open(&path).await.unwrap();
    let second = store.put(&key, &record("two")).await.unwrap();
    assert!(
        second > first,
        "the counter is stored: {first} then {second}"
    );
}

/// The database and its -wal and -shm files are private to this account
/// (0600), whatever the umask lets through: tokens are secrets. An existing
/// file keeps the mode its owner gave it.
#[cfg(unix)]
#[tokio::test]
async fn new_database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("private.db");
    let store = SqliteStore::open(&path).await.unwrap();
    // A write, so the -wal and -shm files exist.
    store
        .put(&TokenKey::new("github", "alice"), &record("secret"))
        .await
        .unwrap();
    let mode = |file: &Path| std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
    for file in mcp_authkit_store_sqlite::database_files(&path) {
        assert!(file.exists(), "{} exists", file.display());
        assert_eq!(
            mode(&file),
            0o600,
            "{} is readable by this account only",
            file.display()
        );
    }
    store.close().await;

    // A file an operator shared on purpose is left as it is.
    let shared = dir.path().join("shared.db");
    std::fs::write(&shared, b"").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).unwrap();
    let store = SqliteStore::open(&shared).await.unwrap();
    store.close().await;
    assert_eq!(mode(&shared), 0o640);
}
