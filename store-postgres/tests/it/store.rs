//! Keys, schema and migrations, the least-privilege role, the purge task.

use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::{
    CasOutcome, Clock, Error, FlowOutcome, InsertOutcome, ManualClock, PendingStore, Revision,
    Timestamp, TokenKey, TokenRecord, TokenStore,
};
use mcp_authkit_store_postgres::{MIGRATIONS_TABLE, PostgresStore, SCHEMA_VERSION};

use crate::common::{AppRole, Schema, admin, flow, url_as};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn keys_with_nul_and_look_alikes_stay_apart() {
    let schema = Schema::new("nul").await;
    let store = schema.open().await;
    let keys = [
        TokenKey::new("a\0b", "c"),
        TokenKey::new("a", "\0bc"),
        TokenKey::new("a", "b\0c"),
        TokenKey::new("a\0", "bc"),
        TokenKey::new("\0", "\0"),
        TokenKey::new("", ""),
        TokenKey::new("ü", "\u{10FFFF}"),
    ];
    for (i, key) in keys.iter().enumerate() {
        store
            .put(
                key,
                &TokenRecord::new(format!("token-{i}"), Timestamp::now()),
            )
            .await
            .unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        let got = store.get(key).await.unwrap().expect("stored");
        assert_eq!(
            mcp_authkit_core::ExposeSecret::expose_secret(&got.record.access_token),
            format!("token-{i}"),
            "{key:?}"
        );
    }
    // Scan gives every key back exactly, NUL included.
    let mut scanned = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.scan(cursor.as_ref(), 2).await.unwrap();
        scanned.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(scanned.len(), keys.len());
    for key in &keys {
        assert!(scanned.contains(key), "{key:?} scanned");
    }
    // Flows, leases and completions on a NUL key.
    let key = &keys[0];
    assert!(
        store
            .try_acquire_lease(key, MINUTE)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .try_acquire_lease(&keys[3], MINUTE)
            .await
            .unwrap()
            .is_some()
    );
    let f = flow(key, MINUTE);
    assert_eq!(store.insert(&f).await.unwrap(), InsertOutcome::Inserted);
    assert_eq!(store.active_flow(key).await.unwrap(), Some(f.state.clone()));
    assert_eq!(store.active_flow(&keys[3]).await.unwrap(), None);
    let taken = store.take(&f.state).await.unwrap().expect("taken");
    assert_eq!(taken.key, *key);
    let outcome = FlowOutcome::Authorized {
        revision: Revision::new(7),
    };
    store
        .complete(key, &f.state, &outcome, MINUTE)
        .await
        .unwrap();
    assert_eq!(store.wait(&f.state, MINUTE).await.unwrap(), Some(outcome));
    assert!(store.delete(&keys[1]).await.unwrap());
    assert!(store.get(&keys[2]).await.unwrap().is_some());
}

/// The schema's tables as the server lists them.
async fn tables(schema: &str) -> Vec<String> {
    let mut conn = admin().await;
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 \
         ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn tables_go_in_the_chosen_schema_with_their_own_migrations() {
    // Quotes of both kinds and upper case: the name is always quoted whole.
    let mut schema = Schema::new("odd").await;
    schema.name = format!("{} \"Q\" 'x'", schema.name);
    let store = schema.open().await;
    assert_eq!(store.schema(), schema.name);
    assert_eq!(
        tables(&schema.name).await,
        [
            "mcp_authkit_active_flows",
            "mcp_authkit_flows",
            "mcp_authkit_leases",
            "mcp_authkit_migrations",
            "mcp_authkit_outcomes",
            "mcp_authkit_tokens"
        ]
    );
    let key = TokenKey::new("github", "alice");
    let first = store
        .put(&key, &TokenRecord::new("t1", Timestamp::now()))
        .await
        .unwrap();
    // Opening again changes nothing, and sees the data.
    let again = schema.open().await;
    assert_eq!(again.get(&key).await.unwrap().unwrap().revision, first);
    let mut conn = admin().await;
    let versions: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM \"{}\".{MIGRATIONS_TABLE}",
        schema.name.replace('"', "\"\"")
    )))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(versions, [SCHEMA_VERSION]);
    // Nothing of ours leaked into sqlx's migrations table or `public`.
    let leaked: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema::text FROM information_schema.tables \
         WHERE table_name = 'mcp_authkit_tokens' AND table_schema = 'public'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(leaked.is_empty(), "the store wrote to public");
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_left_untouched() {
    let schema = Schema::new("newer").await;
    let store = schema.open().await;
    let key = TokenKey::new("github", "alice");
    store
        .put(&key, &TokenRecord::new("t1", Timestamp::now()))
        .await
        .unwrap();
    store.close().await;
    let mut conn = admin().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{}\".{MIGRATIONS_TABLE} (version, description) VALUES (99, 'future')",
        schema.name
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let before = tables(&schema.name).await;
    let refused = PostgresStore::options(&schema.url)
        .schema(&schema.name)
        .open()
        .await
        .expect_err("a newer schema is refused");
    assert!(
        matches!(
            refused,
            Error::UnsupportedFormat {
                found: 99,
                supported: 1,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("upgrade mcp-authkit"),
        "{refused}"
    );
    assert_eq!(tables(&schema.name).await, before);

    // A schema holding only a newer migrations table gets no tables at all.
    let bare = Schema::new("newer_bare").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".{MIGRATIONS_TABLE} \
         (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
          applied_at TIMESTAMPTZ NOT NULL DEFAULT now()); \
         INSERT INTO \"{0}\".{MIGRATIONS_TABLE} (version, description) VALUES (2, 'next')",
        bare.name
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let refused = PostgresStore::options(&bare.url)
        .schema(&bare.name)
        .open()
        .await
        .expect_err("refused");
    assert!(matches!(refused, Error::UnsupportedFormat { found: 2, .. }));
    assert_eq!(tables(&bare.name).await, [MIGRATIONS_TABLE]);
}

#[tokio::test]
async fn replicas_opening_a_new_schema_together_migrate_once() {
    let schema = Arc::new(Schema::new("race").await);
    let mut opens = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let schema = Arc::clone(&schema);
        opens.spawn(async move { schema.open().await });
    }
    while let Some(opened) = opens.join_next().await {
        opened.unwrap();
    }
    assert_eq!(tables(&schema.name).await.len(), 6);
}

#[tokio::test]
async fn least_privilege_role_runs_the_store() {
    let schema = Schema::new("role").await;
    // The owner (the server's superuser here) creates the schema once.
    schema.open().await.close().await;
    let role = AppRole::new(&schema.name, true).await;
    let store = PostgresStore::options(&url_as(&role.name).await)
        .schema(&schema.name)
        .open()
        .await
        .expect("the documented grants are enough to open");
    let key = TokenKey::new("github", "alice");
    let r1 = store
        .put(&key, &TokenRecord::new("t1", Timestamp::now()))
        .await
        .unwrap();
    assert!(matches!(
        store
            .compare_and_swap(&key, Some(r1), &TokenRecord::new("t2", Timestamp::now()))
            .await
            .unwrap(),
        CasOutcome::Swapped(_)
    ));
    let lease = store
        .try_acquire_lease(&key, MINUTE)
        .await
        .unwrap()
        .unwrap();
    assert!(store.release_lease(&key, &lease).await.unwrap());
    assert_eq!(
        store.scan(None, 10).await.unwrap().items,
        std::slice::from_ref(&key)
    );
    let f = flow(&key, MINUTE);
    store.insert(&f).await.unwrap();
    store.take(&f.state).await.unwrap().unwrap();
    let waiter = {
        let (store, state) = (store.clone(), f.state.clone());
        tokio::spawn(async move { store.wait(&state, MINUTE).await })
    };
    let outcome = FlowOutcome::Authorized { revision: r1 };
    store
        .complete(&key, &f.state, &outcome, MINUTE)
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), Some(outcome));
    store.purge_expired().await.unwrap();
    assert!(store.delete_if_revision(&key, r1).await.is_ok());

    // Without the grants: a clear, non-retryable refusal naming the cause.
    let bare = AppRole::new(&schema.name, false).await;
    let refused = PostgresStore::options(&url_as(&bare.name).await)
        .schema(&schema.name)
        .open()
        .await;
    let error = match refused {
        Ok(store) => store.get(&key).await.expect_err("no privilege"),
        Err(error) => error,
    };
    assert!(!error.is_retryable(), "{error}");
    assert!(error.to_string().contains("lacks a privilege"), "{error}");
}

#[tokio::test]
async fn the_purge_task_removes_expired_rows() {
    let schema = Schema::new("purge").await;
    let clock = Arc::new(ManualClock::new(Timestamp::now()));
    let store = PostgresStore::options(&schema.url)
        .schema(&schema.name)
        .clock(clock.clone())
        .open()
        .await
        .unwrap();
    // More than one batch of flows.
    for i in 0..300 {
        let key = TokenKey::new("p", format!("user-{i}"));
        let f = mcp_authkit_core::PendingFlow::new(
            key,
            "http://127.0.0.1:9/cb",
            vec![],
            clock.now(),
            Duration::from_secs(10),
        );
        store.insert(&f).await.unwrap();
    }
    clock.advance(Duration::from_secs(11));
    let task = store.spawn_purge_task(Duration::from_millis(20));
    let mut conn = admin().await;
    let count = format!("SELECT count(*) FROM \"{}\".mcp_authkit_flows", schema.name);
    let emptied = crate::common::eventually(Duration::from_secs(10), async || {
        let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count.clone()))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        left == 0
    })
    .await;
    assert!(emptied, "the task purged every expired flow");
    assert!(task.is_running());
}

/// A purge that selected an expired lease, active mark or outcome must not
/// delete it when a takeover (the store's `ON CONFLICT DO UPDATE ... WHERE
/// expires_at <= now`) renewed the row while the purge waited for its lock.
#[tokio::test]
async fn purge_spares_a_row_renewed_while_it_waited() {
    let live = i64::MAX / 2;
    // Each case in a fresh schema and store: the race showed in whichever
    // case ran first, so none runs after another.
    for case in 0..3 {
        let schema = Schema::new("purgerace").await;
        let store = schema.open().await;
        let s = format!("\"{}\"", schema.name);
        // (table, the expired row, the takeover that renews it)
        let cases = [
            (
                "mcp_authkit_leases",
                format!("INSERT INTO {s}.mcp_authkit_leases VALUES ('p', 's', 'old', 1)"),
                format!(
                    "INSERT INTO {s}.mcp_authkit_leases AS l VALUES ('p', 's', 'new', {live}) \
                 ON CONFLICT (provider, subject) DO UPDATE SET \
                 lease_token = excluded.lease_token, expires_at = excluded.expires_at \
                 WHERE l.expires_at <= 2"
                ),
            ),
            (
                "mcp_authkit_active_flows",
                format!("INSERT INTO {s}.mcp_authkit_active_flows VALUES ('p', 's', 'old', 1)"),
                format!(
                    "INSERT INTO {s}.mcp_authkit_active_flows AS a VALUES ('p', 's', 'new', {live}) \
                 ON CONFLICT (provider, subject) DO UPDATE SET \
                 state = excluded.state, expires_at = excluded.expires_at \
                 WHERE a.expires_at <= 2"
                ),
            ),
            (
                "mcp_authkit_outcomes",
                format!("INSERT INTO {s}.mcp_authkit_outcomes VALUES ('st', 1, 'old')"),
                format!(
                    "INSERT INTO {s}.mcp_authkit_outcomes VALUES ('st', {live}, 'new') \
                 ON CONFLICT (state) DO UPDATE SET \
                 expires_at = excluded.expires_at, outcome = excluded.outcome"
                ),
            ),
        ];
        let (table, expired, takeover) = cases[case].clone();
        crate::common::admin_exec(expired).await;
        let mut holder = admin().await;
        let mut tx = sqlx::Connection::begin(&mut holder).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(takeover))
            .execute(&mut *tx)
            .await
            .unwrap();
        let purge = {
            let store = store.clone();
            tokio::spawn(async move { store.purge_expired().await })
        };
        // Commit only once the purge's DELETE waits for the row lock.
        let mut watcher = admin().await;
        let blocked = crate::common::eventually(Duration::from_secs(10), async || {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE 'DELETE FROM%' \
                 AND query LIKE '%' || $1 || '%'",
            )
            .bind(table)
            .fetch_one(&mut watcher)
            .await
            .unwrap();
            waiting > 0
        })
        .await;
        assert!(blocked, "{table}: the purge waited for the renewed row");
        tx.commit().await.unwrap();
        purge.await.unwrap().unwrap();
        let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {s}.{table} WHERE expires_at = {live}"
        )))
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        assert_eq!(left, 1, "{table}: the renewed row survived the purge");
    }
}

/// Schema names with quotes and the statements' own marker are names, not
/// SQL: the store works in exactly that schema and creates nothing else; a
/// name with a newline is refused before anything runs.
#[tokio::test]
async fn hostile_schema_names_stay_names() {
    let tag = crate::common::unique_tag();
    let names = [
        format!("x{tag}__S__'y"),
        format!("x{tag}\"; drop'--"),
        format!("x{tag}'||'__S__\".\"z"),
    ];
    let mut conn = admin().await;
    let ours = async |conn: &mut sqlx::PgConnection| -> Vec<String> {
        sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1) ORDER BY 1",
        )
        .bind(format!("x{tag}"))
        .fetch_all(conn)
        .await
        .unwrap()
    };
    for name in &names {
        let schema = Schema {
            url: crate::common::admin_url().await,
            name: name.clone(),
        };
        let store = schema.open().await;
        let key = TokenKey::new("p", "s");
        let r1 = store
            .put(&key, &TokenRecord::new("one", Timestamp::now()))
            .await
            .unwrap();
        let swapped = store
            .compare_and_swap(&key, Some(r1), &TokenRecord::new("two", Timestamp::now()))
            .await
            .unwrap();
        assert!(
            matches!(swapped, CasOutcome::Swapped(r) if r > r1),
            "{name:?}"
        );
        let got = store.get(&key).await.unwrap().expect("stored");
        assert_eq!(
            mcp_authkit_core::ExposeSecret::expose_secret(&got.record.access_token),
            "two"
        );
        assert_eq!(ours(&mut conn).await, vec![name.clone()], "{name:?}");
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname LIKE 'mcp_authkit_%'",
        )
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert!(tables >= 6, "{name:?}: the tables are in the named schema");
        store.close().await;
        drop(schema);
    }
    let injected = format!("x{tag}\nCREATE SCHEMA x{tag}evil;\n--");
    let error = PostgresStore::options(&crate::common::admin_url().await)
        .schema(&injected)
        .open()
        .await
        .expect_err("a newline in the schema name is refused");
    assert!(!error.is_retryable(), "{error}");
    assert!(error.to_string().contains("control character"), "{error}");
    assert!(ours(&mut conn).await.is_empty(), "nothing was created");
}
