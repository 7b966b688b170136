//! The schema the store lives in: its statements (built once, with the
//! schema's quoted name in every table name) and its migrations.

use std::sync::Arc;

use mcp_authkit_core::{Error, Result};
use sqlx::{AssertSqlSafe, Connection, PgPool};

use crate::error::db;
use crate::{MIGRATIONS_TABLE, SCHEMA_VERSION};

/// The migrations, in order: (version, description, SQL with `__SCHEMA__`).
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "initial schema",
    include_str!("../migrations/1_initial_schema.sql"),
)];

/// `name` as a quoted SQL identifier: the only way a user-chosen name
/// enters a statement, so any character in it stays part of the name.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Checks a schema name before it is used: PostgreSQL cuts identifiers at
/// 63 bytes (two long names could meet) and refuses NUL; control characters
/// (newlines, tabs, ...) are refused too: no one means them in a name, and
/// they make log lines and `psql` sessions lie.
pub(crate) fn check_schema_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 {
        return Err(Error::invalid_input(
            "postgres schema",
            "give a schema name of 1 to 63 bytes (default \"public\")",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid_input(
            "postgres schema",
            "the schema name holds a control character (a newline, tab, NUL...); \
             give one without",
        ));
    }
    Ok(())
}

/// The notification channel of a schema: fixed-length (channel names are
/// identifiers, cut at 63 bytes) and distinct per schema name.
pub(crate) fn channel_for(schema: &str) -> String {
    // FNV-1a, 64 bits: no dependency, and only needs to spread names.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in schema.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("mcp_authkit_{hash:016x}")
}

/// Every statement of the store, with the schema filled in.
pub(crate) struct Statements {
    /// The revisions sequence, as text for a `$n::regclass` parameter.
    pub(crate) sequence: Arc<str>,
    pub(crate) get: Arc<str>,
    pub(crate) revision: Arc<str>,
    pub(crate) put: Arc<str>,
    pub(crate) create: Arc<str>,
    pub(crate) swap: Arc<str>,
    pub(crate) delete: Arc<str>,
    pub(crate) delete_if_revision: Arc<str>,
    pub(crate) acquire_lease: Arc<str>,
    pub(crate) release_lease: Arc<str>,
    pub(crate) scan_first: Arc<str>,
    pub(crate) scan_after: Arc<str>,
    pub(crate) claim_active: Arc<str>,
    pub(crate) insert_flow: Arc<str>,
    pub(crate) active_state: Arc<str>,
    pub(crate) get_flow: Arc<str>,
    pub(crate) active_flow: Arc<str>,
    pub(crate) take: Arc<str>,
    pub(crate) delete_flow: Arc<str>,
    pub(crate) end_active: Arc<str>,
    pub(crate) store_outcome: Arc<str>,
    pub(crate) notify: Arc<str>,
    pub(crate) outcome: Arc<str>,
    pub(crate) poll_outcomes: Arc<str>,
    pub(crate) purge_flows: Arc<str>,
    pub(crate) purge_active: Arc<str>,
    pub(crate) purge_outcomes: Arc<str>,
    pub(crate) purge_leases: Arc<str>,
}

impl Statements {
    pub(crate) fn new(schema: &str) -> Statements {
        let s = quote_ident(schema);
        // One marker, replaced in one pass: the quoted name is never
        // scanned again, so whatever it holds stays part of the name. The
        // sequence is bound as a parameter (`$n::regclass`), never spliced
        // into a string literal.
        let sql = |text: &str| -> Arc<str> { text.replace("__S__", &s).into() };
        Statements {
            sequence: format!("{s}.mcp_authkit_revisions").into(),
            get: sql("SELECT revision, record FROM __S__.mcp_authkit_tokens \
                      WHERE provider = $1 AND subject = $2"),
            revision: sql("SELECT revision FROM __S__.mcp_authkit_tokens \
                           WHERE provider = $1 AND subject = $2"),
            // The conflict branch takes its own revision: nextval there runs
            // after the row lock is held, so it is above the revision of
            // any write that committed before it (the VALUES one was drawn
            // before waiting for that lock).
            put: sql("INSERT INTO __S__.mcp_authkit_tokens AS t \
                          (provider, subject, revision, expires_at, record) \
                      VALUES ($1, $2, nextval($5::regclass), $3, $4) \
                      ON CONFLICT (provider, subject) DO UPDATE SET \
                          revision = nextval($5::regclass), \
                          expires_at = excluded.expires_at, record = excluded.record \
                      RETURNING revision"),
            create: sql("INSERT INTO __S__.mcp_authkit_tokens \
                             (provider, subject, revision, expires_at, record) \
                         VALUES ($1, $2, nextval($5::regclass), $3, $4) \
                         ON CONFLICT (provider, subject) DO NOTHING RETURNING revision"),
            swap: sql("UPDATE __S__.mcp_authkit_tokens SET \
                           revision = nextval($6::regclass), \
                           expires_at = $3, record = $4 \
                       WHERE provider = $1 AND subject = $2 AND revision = $5 \
                       RETURNING revision"),
            delete: sql("DELETE FROM __S__.mcp_authkit_tokens \
                         WHERE provider = $1 AND subject = $2"),
            delete_if_revision: sql("DELETE FROM __S__.mcp_authkit_tokens \
                                     WHERE provider = $1 AND subject = $2 AND revision = $3"),
            // A free key, or one whose lease ran out, takes the lease; a live
            // lease makes this change nothing and return no row.
            acquire_lease: sql("INSERT INTO __S__.mcp_authkit_leases AS l \
                                    (provider, subject, lease_token, expires_at) \
                                VALUES ($1, $2, $3, $4) \
                                ON CONFLICT (provider, subject) DO UPDATE SET \
                                    lease_token = excluded.lease_token, \
                                    expires_at = excluded.expires_at \
                                WHERE l.expires_at <= $5 \
                                RETURNING lease_token"),
            release_lease: sql("DELETE FROM __S__.mcp_authkit_leases \
                                WHERE provider = $1 AND subject = $2 AND lease_token = $3 \
                                RETURNING expires_at"),
            scan_first: sql("SELECT provider, subject FROM __S__.mcp_authkit_tokens \
                             ORDER BY provider, subject LIMIT $1"),
            scan_after: sql("SELECT provider, subject FROM __S__.mcp_authkit_tokens \
                             WHERE (provider, subject) > ($1, $2) \
                             ORDER BY provider, subject LIMIT $3"),
            claim_active: sql("INSERT INTO __S__.mcp_authkit_active_flows AS a \
                                   (provider, subject, state, expires_at) \
                               VALUES ($1, $2, $3, $4) \
                               ON CONFLICT (provider, subject) DO UPDATE SET \
                                   state = excluded.state, expires_at = excluded.expires_at \
                               WHERE a.expires_at <= $5 \
                               RETURNING state"),
            insert_flow: sql("INSERT INTO __S__.mcp_authkit_flows \
                                  (state, provider, subject, expires_at, flow) \
                              VALUES ($1, $2, $3, $4, $5)"),
            active_state: sql("SELECT state FROM __S__.mcp_authkit_active_flows \
                               WHERE provider = $1 AND subject = $2"),
            get_flow: sql("SELECT flow FROM __S__.mcp_authkit_flows \
                           WHERE state = $1 AND expires_at > $2"),
            active_flow: sql("SELECT state FROM __S__.mcp_authkit_active_flows \
                              WHERE provider = $1 AND subject = $2 AND expires_at > $3"),
            take: sql("DELETE FROM __S__.mcp_authkit_flows \
                       WHERE state = $1 AND expires_at > $2 RETURNING flow"),
            delete_flow: sql("DELETE FROM __S__.mcp_authkit_flows WHERE state = $1"),
            end_active: sql("DELETE FROM __S__.mcp_authkit_active_flows \
                             WHERE provider = $1 AND subject = $2 AND state = $3"),
            store_outcome: sql(
                "INSERT INTO __S__.mcp_authkit_outcomes (state, expires_at, outcome) \
                                VALUES ($1, $2, $3) \
                                ON CONFLICT (state) DO UPDATE SET \
                                    expires_at = excluded.expires_at, outcome = excluded.outcome",
            ),
            notify: "SELECT pg_notify($1, $2)".into(),
            outcome: sql("SELECT outcome FROM __S__.mcp_authkit_outcomes \
                          WHERE state = $1 AND expires_at > $2"),
            // The outcomes of every state a store instance waits on, in one
            // statement.
            poll_outcomes: sql("SELECT state, outcome FROM __S__.mcp_authkit_outcomes \
                                WHERE state = ANY($1) AND expires_at > $2"),
            // Every purge checks the expiry again on the row it deletes: a
            // takeover (ON CONFLICT DO UPDATE) that renewed the row after the
            // subquery read it commits while the DELETE waits for its lock,
            // and the DELETE then sees the renewed row (READ COMMITTED
            // rechecks only the outer WHERE, not the subquery's).
            purge_flows: sql("DELETE FROM __S__.mcp_authkit_flows WHERE state IN \
                              (SELECT state FROM __S__.mcp_authkit_flows \
                               WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2) \
                              AND expires_at <= $1"),
            purge_active: sql("DELETE FROM __S__.mcp_authkit_active_flows \
                               WHERE (provider, subject) IN \
                               (SELECT provider, subject FROM __S__.mcp_authkit_active_flows \
                                WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2) \
                               AND expires_at <= $1"),
            purge_outcomes: sql("DELETE FROM __S__.mcp_authkit_outcomes WHERE state IN \
                                 (SELECT state FROM __S__.mcp_authkit_outcomes \
                                  WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2) \
                                 AND expires_at <= $1"),
            purge_leases: sql("DELETE FROM __S__.mcp_authkit_leases \
                               WHERE (provider, subject) IN \
                               (SELECT provider, subject FROM __S__.mcp_authkit_leases \
                                WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2) \
                               AND expires_at <= $1"),
        }
    }
}

/// The newest version recorded in the schema's migrations table; `None`
/// when the table does not exist.
async fn recorded_version(
    conn: &mut sqlx::PgConnection,
    schema: &str,
) -> sqlx::Result<Option<i64>> {
    let table = format!("{}.{}", quote_ident(schema), MIGRATIONS_TABLE);
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(&table)
        .fetch_one(&mut *conn)
        .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let version: Option<i64> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT max(version) FROM {table}")))
            .fetch_one(&mut *conn)
            .await?;
    Ok(Some(version.unwrap_or(0)))
}

fn newer_schema(found: i64) -> Error {
    Error::UnsupportedFormat {
        what: "postgres schema",
        found: u64::try_from(found).unwrap_or(0),
        supported: SCHEMA_VERSION as u64,
    }
}

/// Brings the schema up to date. A schema at the current version is only
/// read (a least-privilege role opens it); one that needs migrating is
/// migrated in one transaction under an advisory lock, so replicas opening
/// at once take turns; a schema newer than this release is refused before
/// anything is changed.
pub(crate) async fn migrate(pool: &PgPool, schema: &str, create: bool) -> Result<()> {
    const OP: &str = "migrate schema";
    let mut conn = pool.acquire().await.map_err(|e| db(OP, e))?;
    match recorded_version(&mut conn, schema)
        .await
        .map_err(|e| db(OP, e))?
    {
        Some(found) if found > SCHEMA_VERSION => return Err(newer_schema(found)),
        Some(found) if found == SCHEMA_VERSION => return Ok(()),
        None if !create => {
            return Err(Error::invalid_input(
                "postgres schema",
                format!(
                    "there are no mcp-authkit tables in the schema {schema:?} of this database; \
                     check the URL and the schema name"
                ),
            ));
        }
        _ => {}
    }
    let quoted = quote_ident(schema);
    let mut tx = conn.begin().await.map_err(|e| db(OP, e))?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('mcp_authkit migrations ' || $1))")
        .bind(schema)
        .execute(&mut *tx)
        .await
        .map_err(|e| db(OP, e))?;
    let schema_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db(OP, e))?;
    if !schema_exists {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {quoted}"
        )))
        .execute(&mut *tx)
        .await
        .map_err(|e| db(OP, e))?;
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {quoted}.{MIGRATIONS_TABLE} (
             version BIGINT PRIMARY KEY,
             description TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )"
    )))
    .execute(&mut *tx)
    .await
    .map_err(|e| db(OP, e))?;
    // Read again under the lock: another replica may have migrated meanwhile.
    let found = recorded_version(&mut tx, schema)
        .await
        .map_err(|e| db(OP, e))?
        .unwrap_or(0);
    if found > SCHEMA_VERSION {
        // Dropping the transaction rolls it back: nothing changed.
        return Err(newer_schema(found));
    }
    for (version, description, text) in MIGRATIONS {
        if *version <= found {
            continue;
        }
        sqlx::raw_sql(AssertSqlSafe(text.replace("__SCHEMA__", &quoted)))
            .execute(&mut *tx)
            .await
            .map_err(|e| db(OP, e))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {quoted}.{MIGRATIONS_TABLE} (version, description) VALUES ($1, $2)"
        )))
        .bind(version)
        .bind(description)
        .execute(&mut *tx)
        .await
        .map_err(|e| db(OP, e))?;
    }
    tx.commit().await.map_err(|e| db(OP, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_version_is_the_last_migration() {
        assert_eq!(MIGRATIONS.last().map(|m| m.0), Some(SCHEMA_VERSION));
    }

    #[test]
    fn the_schema_marker_appears_only_in_statements() {
        // A marker in a comment would put the name there, where a newline
        // in it would end the comment.
        for (_, _, text) in MIGRATIONS {
            for line in text.lines() {
                if let Some(at) = line.find("--") {
                    assert!(!line[at..].contains("__SCHEMA__"), "{line}");
                }
            }
        }
    }

    #[test]
    fn control_characters_are_refused_in_schema_names() {
        for name in ["a\nb", "a\rb", "a\tb", "a\0b", "\u{7f}"] {
            let error = check_schema_name(name).expect_err(name);
            assert!(error.to_string().contains("control character"), "{error}");
        }
        check_schema_name("a'b\"c __S__ ü").unwrap();
    }

    #[test]
    fn names_are_quoted_whole() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_ne!(channel_for("a"), channel_for("b"));
        assert!(channel_for(&"x".repeat(63)).len() <= 63);
    }
}
