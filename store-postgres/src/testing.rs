//! Helpers for tests that need a PostgreSQL server (feature `testing`).
//!
//! [`database_url`] finds one: `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) if it answers; otherwise,
//! outside CI, when the tests were built with `--cfg mcp_authkit_containers`
//! and a Docker engine runs, a `postgres:16-alpine` container started
//! through testcontainers; otherwise the test fails with a message that
//! says how to provide one (with `CI=true` it also says the CI script must
//! start it). A test never skips silently for want of PostgreSQL.
//!
//! Give every test its own [`unique_schema`] and remove it afterwards with
//! [`drop_schema`], so parallel runs on one server never collide.

use std::time::Duration;

use mcp_authkit_core::testing::container::{self, Unavailable};
use sqlx::{ConnectOptions, Connection, postgres::PgConnectOptions};
use tokio::sync::OnceCell;

/// Where tests look for PostgreSQL when `DATABASE_URL` is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A schema name no other test run uses: `mcp_authkit_test_{label}_{random}`
/// (lower case, so it needs no quoting in a `psql` session).
pub fn unique_schema(label: &str) -> String {
    let random: String = mcp_authkit_core::random_urlsafe(9)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("mcp_authkit_test_{label}_{random}")
}

/// The URL of a PostgreSQL server for tests; panics, saying how to provide
/// one, when there is none. Found once per process.
pub async fn database_url() -> String {
    static URL: OnceCell<String> = OnceCell::const_new();
    URL.get_or_init(find).await.clone()
}

async fn find() -> String {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    locate(&url, ci)
        .await
        .unwrap_or_else(|message| panic!("{message}"))
}

/// The PostgreSQL for tests: `url` if it answers; else, outside CI, a
/// container (core's [`container`]); else the message that says how to
/// provide one.
async fn locate(url: &str, ci: bool) -> Result<String, String> {
    let error = match probe(url).await {
        Ok(()) => return Ok(url.to_owned()),
        Err(error) => error,
    };
    if ci {
        return Err(missing_message(url, &error, ci));
    }
    match container_url().await {
        Ok(container_url) => Ok(container_url),
        Err(Unavailable::Failed(why)) => Err(format!(
            "no PostgreSQL server accepts connections at {} ({error}) and {why}: start \
             PostgreSQL or set DATABASE_URL. {}",
            address_of(url),
            how_to_provide(ci)
        )),
        Err(_) => Err(missing_message(url, &error, ci)),
    }
}

/// Whether a PostgreSQL server accepts a connection at `url`.
pub async fn probe(url: &str) -> Result<(), String> {
    let options: PgConnectOptions = url.parse().map_err(|_| "not a postgres URL".to_owned())?;
    match tokio::time::timeout(PROBE_TIMEOUT, options.connect()).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

/// What a test says when it finds no PostgreSQL.
pub fn missing_message(url: &str, error: &str, ci: bool) -> String {
    format!(
        "no PostgreSQL server accepts connections at {} ({error}). {}",
        address_of(url),
        how_to_provide(ci)
    )
}

fn how_to_provide(ci: bool) -> String {
    let mut message = String::from(
        "These tests need PostgreSQL 13 or newer:\n\
         - start one: `docker run --rm -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust \
         -e POSTGRES_DB=test postgres:16-alpine`, or a local server with a database `test`, or\n\
         - point DATABASE_URL at one, e.g. \
         `DATABASE_URL=postgres://postgres@127.0.0.1:5433/test cargo test`",
    );
    if ci {
        message.push_str(
            "\nCI=true: tests never skip or start containers in CI; the CI script must start \
             PostgreSQL (.ci/run does).",
        );
    } else {
        message.push_str(&container::hint("postgres:16-alpine"));
    }
    message
}

/// The URL of the test container, started (or found) once per process:
/// every caller in this process, tests of the fallback included, shares the
/// one attempt, so no two of them race to create the named container.
async fn container_url() -> Result<String, Unavailable> {
    static CONTAINER: OnceCell<Result<String, Unavailable>> = OnceCell::const_new();
    CONTAINER.get_or_init(start_container).await.clone()
}

/// How long a started or restarted container may take to answer.
#[cfg(mcp_authkit_containers)]
const CONTAINER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A `postgres:16-alpine` container (trust authentication, database
/// `test`, published on 127.0.0.1 only; core's `testing::container`),
/// outside CI.
async fn start_container() -> Result<String, Unavailable> {
    #[cfg(mcp_authkit_containers)]
    {
        use testcontainers_modules::postgres::Postgres;
        use testcontainers_modules::testcontainers::ImageExt;
        let image = || {
            Postgres::default()
                .with_host_auth()
                .with_db_name("test")
                .with_tag("16-alpine")
        };
        let (host, port) =
            container::start(image, "mcp-authkit-test-postgres-loopback", 5432).await?;
        let url = format!("postgres://postgres@{host}:{port}/test");
        // A reused container that was stopped has just been restarted,
        // with no wait for its server: give it time to come up.
        let deadline = tokio::time::Instant::now() + CONTAINER_READY_TIMEOUT;
        loop {
            match probe(&url).await {
                Ok(()) => return Ok(url),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(Unavailable::Failed(format!(
                        "its PostgreSQL container at {host}:{port} did not answer within \
                         {CONTAINER_READY_TIMEOUT:?} ({e})"
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
    #[cfg(not(mcp_authkit_containers))]
    Err(Unavailable::NotBuilt)
}

/// Where `url` points (host, port, database) and nothing else: a URL's user
/// part, password and query (`?password=...`) never reach a message.
fn address_of(url: &str) -> String {
    match url.parse::<PgConnectOptions>() {
        Ok(options) => format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        ),
        Err(_) => "DATABASE_URL (not a postgres URL; not shown)".to_owned(),
    }
}

/// Drops `schema` and everything in it (a test's cleanup).
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), String> {
    let options: PgConnectOptions = url.parse().map_err(|_| "not a postgres URL".to_owned())?;
    let mut connection = options.connect().await.map_err(|e| e.to_string())?;
    let statement = format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        crate::schema::quote_ident(schema)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(&mut connection)
        .await
        .map_err(|e| e.to_string())?;
    let _ = connection.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_messages_never_show_passwords_or_queries() {
        for url in [
            "postgres://u:hunter2@db.example:5433/app",
            "postgres://db.example:5433/app?password=hunter2&user=u",
            "postgres:///app?host=db.example&port=5433&password=hunter2",
            "postgres://u:hun@ter2@db.example:5433/app",
            "not a url hunter2",
        ] {
            let message = missing_message(url, "refused", false);
            assert!(!message.contains("hunter2"), "{url}: {message}");
            assert!(!message.contains("ter2"), "{url}: {message}");
            if !url.starts_with("not") {
                assert!(message.contains("db.example:5433/app"), "{url}: {message}");
            }
        }
    }

    fn closed_port_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("postgres://postgres:hunter2@127.0.0.1:{port}/test")
    }

    #[tokio::test]
    async fn with_no_server_in_ci_the_failure_says_ci_must_start_one() {
        let message = locate(&closed_port_url(), true).await.unwrap_err();
        assert!(message.contains("CI=true"), "{message}");
        assert!(message.contains("DATABASE_URL"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        // No container is tried in CI (a failed try would show as "could
        // not use Docker" in the message).
        assert!(!message.contains("could not use Docker"), "{message}");
    }

    /// Outside CI the fallback is tried. The test does not predict whether
    /// a Docker engine is there (testcontainers decides that its own way):
    /// a container it got must answer; a failure must say what was lacking
    /// and how to provide PostgreSQL instead.
    #[tokio::test]
    async fn with_no_server_outside_ci_the_container_fallback_says_what_it_lacked() {
        let message = match locate(&closed_port_url(), false).await {
            Ok(found) => {
                if !container::BUILT {
                    panic!("a container without the cfg: {found}");
                }
                probe(&found).await.unwrap();
                return;
            }
            Err(message) => message,
        };
        assert!(
            message.contains("no PostgreSQL server accepts connections at 127.0.0.1:"),
            "{message}"
        );
        assert!(message.contains("DATABASE_URL"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        if container::BUILT {
            assert!(message.contains("and could not use Docker"), "{message}");
            assert!(
                message.contains(": start PostgreSQL or set DATABASE_URL."),
                "{message}"
            );
        } else {
            assert!(
                message.contains("--cfg mcp_authkit_containers"),
                "{message}"
            );
        }
    }
}
