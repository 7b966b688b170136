//! Fresh schemas, throwaway roles and raw connections for the tests.

use std::time::Duration;

use mcp_authkit_core::{PendingFlow, Timestamp, TokenKey};
use mcp_authkit_store_postgres::{PostgresStore, testing};
use sqlx::{ConnectOptions, Connection, PgConnection, postgres::PgConnectOptions};

/// A fresh schema, dropped (with everything in it) when this goes.
pub struct Schema {
    pub url: String,
    pub name: String,
}

impl Schema {
    pub async fn new(label: &str) -> Schema {
        Schema {
            url: testing::database_url().await,
            name: testing::unique_schema(label),
        }
    }

    /// A new store instance (its own pool) on this schema.
    pub async fn open(&self) -> PostgresStore {
        PostgresStore::options(&self.url)
            .schema(&self.name)
            .max_connections(4)
            .open()
            .await
            .expect("open the store")
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Drop runs inside the test's runtime: a thread of its own blocks.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Err(error) = testing::drop_schema(&url, &name).await {
                    eprintln!("could not drop schema {name}: {error}");
                }
            });
        })
        .join();
    }
}

/// A raw connection as the server's superuser (DATABASE_URL).
pub async fn admin() -> PgConnection {
    let url = testing::database_url().await;
    let options: PgConnectOptions = url.parse().unwrap();
    options.connect().await.expect("an admin connection")
}

/// Runs `sql` (no parameters) as the superuser.
pub async fn admin_exec(sql: String) {
    let mut conn = admin().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("admin statement");
    let _ = conn.close().await;
}

/// DATABASE_URL with another user (trust authentication on the test server).
pub async fn url_as(user: &str) -> String {
    let url = testing::database_url().await;
    let options: PgConnectOptions = url.parse().unwrap();
    format!(
        "postgres://{user}@{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    )
}

/// A login role with exactly the grants the crate docs list for `schema`
/// (which must exist); dropped when this goes.
pub struct AppRole {
    pub name: String,
}

impl AppRole {
    pub async fn new(schema: &str, grant: bool) -> AppRole {
        let name = format!(
            "mcp_authkit_app_{}",
            mcp_authkit_core::random_urlsafe(6)
                .to_ascii_lowercase()
                .replace(['-', '_'], "x")
        );
        admin_exec(format!("CREATE ROLE {name} LOGIN")).await;
        if grant {
            admin_exec(least_privilege_grants(schema, &name)).await;
        }
        AppRole { name }
    }
}

/// The GRANTs of the crate docs ("Least-privilege role"), for `schema`.
pub fn least_privilege_grants(schema: &str, role: &str) -> String {
    let s = format!("\"{schema}\"");
    format!(
        "GRANT USAGE ON SCHEMA {s} TO {role};
         GRANT SELECT, INSERT, UPDATE, DELETE ON
             {s}.mcp_authkit_tokens, {s}.mcp_authkit_leases,
             {s}.mcp_authkit_flows, {s}.mcp_authkit_active_flows,
             {s}.mcp_authkit_outcomes TO {role};
         GRANT SELECT ON {s}.mcp_authkit_migrations TO {role};
         GRANT USAGE ON SEQUENCE {s}.mcp_authkit_revisions TO {role};"
    )
}

impl Drop for AppRole {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut conn = admin().await;
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}';
                     DROP OWNED BY {name}; DROP ROLE {name}"
                )))
                .execute(&mut conn)
                .await;
            });
        })
        .join();
    }
}

pub fn flow(key: &TokenKey, ttl: Duration) -> PendingFlow {
    PendingFlow::new(
        key.clone(),
        "http://127.0.0.1:9/callback",
        vec!["repo".into()],
        Timestamp::now(),
        ttl,
    )
}

/// Polls `check` every 10 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let give_up = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > give_up {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Backend pids of this store's channel listener(s), by the name the
/// listening connection gives itself: its `query` column changes with
/// every probe (`SELECT 1` every 15 s), its name does not.
pub async fn listener_pids(channel: &str) -> Vec<i32> {
    let mut conn = admin().await;
    let pids = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' \
         AND application_name = $1",
    )
    .bind(format!("mcp-authkit listener {channel}"))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    pids
}

pub async fn terminate(pid: i32) {
    let mut conn = admin().await;
    let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(done, "backend {pid} was terminated");
    let _ = conn.close().await;
}

/// A short random lower-case tag, to find what one test created.
pub fn unique_tag() -> String {
    mcp_authkit_core::random_urlsafe(6)
        .to_ascii_lowercase()
        .replace(['-', '_'], "x")
}

/// DATABASE_URL (the server's superuser).
pub async fn admin_url() -> String {
    testing::database_url().await
}

/// Whether this is a CI run (`CI=true`), where no test may skip.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
