//! The PostgreSQL store against raw sqlx statements on the same pool
//! (same server, same connections), and the cross-process wake-up:
//! `complete` in process B to `wait` returning in process A, beside a raw
//! `NOTIFY` from B reaching a `PgListener` in A.
//!
//! Needs PostgreSQL at DATABASE_URL (default
//! postgres://postgres@127.0.0.1:5432/test); works in a fresh schema and
//! drops it afterwards.
//!
//! `cargo bench -p mcp-authkit-bench --bench postgres`

use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_bench::completer::{self, Completer};
use mcp_authkit_bench::{Stats, Table, flow, interleaved_tasks};
use mcp_authkit_core::{
    FlowState, InsertOutcome, PendingStore, TokenKey, TokenRecord, TokenStore, codec,
};
use mcp_authkit_store_postgres::PostgresStore;
use mcp_authkit_store_postgres::sqlx::{self, AssertSqlSafe, PgPool, postgres::PgListener};

const SCHEMA: &str = "MCP_AUTHKIT_BENCH_SCHEMA";

fn url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// What the benchmark runs on.
struct Context {
    store: PostgresStore,
    /// The store's own pool: the baseline runs on the same connections.
    pool: PgPool,
    keys: Vec<TokenKey>,
    record: TokenRecord,
    /// The record's stored bytes, what the raw baseline reads and writes.
    bytes: Vec<u8>,
    raw_get: String,
    raw_put: String,
    raw_insert: String,
    raw_take: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `get` beside a raw primary-key SELECT of the same bytes.
    Get,
    /// `put` (an upsert taking a sequence value) beside a raw upsert.
    Put,
    /// `insert` (a transaction of two statements) + `take` beside a raw
    /// INSERT + DELETE RETURNING of the same flow bytes.
    InsertTake,
}

impl Op {
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Op::Get => ("get", "raw SELECT"),
            Op::Put => ("put", "raw upsert"),
            Op::InsertTake => ("insert + take", "raw INSERT + DELETE RETURNING"),
        }
    }
}

async fn run(ctx: &Context, op: Op, raw: bool, n: usize) {
    match (op, raw) {
        (Op::Get, false) => {
            let key = &ctx.keys[n % ctx.keys.len()];
            std::hint::black_box(TokenStore::get(&ctx.store, key).await.unwrap());
        }
        (Op::Get, true) => {
            let key = &ctx.keys[n % ctx.keys.len()];
            let value: Option<Vec<u8>> = sqlx::query_scalar(AssertSqlSafe(ctx.raw_get.as_str()))
                .bind(key.subject().as_bytes())
                .fetch_optional(&ctx.pool)
                .await
                .unwrap();
            std::hint::black_box(value);
        }
        (Op::Put, false) => {
            let key = &ctx.keys[n % ctx.keys.len()];
            ctx.store.put(key, &ctx.record).await.unwrap();
        }
        (Op::Put, true) => {
            let key = &ctx.keys[n % ctx.keys.len()];
            sqlx::query(AssertSqlSafe(ctx.raw_put.as_str()))
                .bind(key.subject().as_bytes())
                .bind(&ctx.bytes)
                .execute(&ctx.pool)
                .await
                .unwrap();
        }
        (Op::InsertTake, false) => {
            let flow = flow(n);
            assert_eq!(
                ctx.store.insert(&flow).await.unwrap(),
                InsertOutcome::Inserted
            );
            assert!(ctx.store.take(&flow.state).await.unwrap().is_some());
        }
        (Op::InsertTake, true) => {
            let flow = flow(n);
            sqlx::query(AssertSqlSafe(ctx.raw_insert.as_str()))
                .bind(flow.state.as_str().as_bytes())
                .bind(codec::encode_flow(&flow))
                .execute(&ctx.pool)
                .await
                .unwrap();
            let taken: Option<Vec<u8>> = sqlx::query_scalar(AssertSqlSafe(ctx.raw_take.as_str()))
                .bind(flow.state.as_str().as_bytes())
                .fetch_optional(&ctx.pool)
                .await
                .unwrap();
            assert!(taken.is_some());
        }
    }
}

/// Ours and the baseline interleaved op by op on each of `tasks` tasks.
async fn interleaved(
    ctx: &Arc<Context>,
    op: Op,
    tasks: usize,
    iterations: usize,
) -> (Stats, Stats) {
    let ctx = Arc::clone(ctx);
    interleaved_tasks(op.names(), tasks, iterations, move |raw, n| {
        let ctx = Arc::clone(&ctx);
        async move { run(&ctx, op, raw, n).await }
    })
    .await
}

fn main() {
    if completer::is_completer() {
        return completer();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(benchmark());
}

async fn benchmark() {
    let schema = format!(
        "mcp_authkit_bench_{}",
        mcp_authkit_core::random_urlsafe(8)
            .to_ascii_lowercase()
            .replace('-', "_")
    );
    let store = PostgresStore::options(&url())
        .schema(&schema)
        .open()
        .await
        .expect(
            "a PostgreSQL server at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test)",
        );
    let pool = store.pool().clone();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {schema}.raw_tokens (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
         CREATE TABLE {schema}.raw_flows (state BYTEA PRIMARY KEY, v BYTEA NOT NULL)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let keys: Vec<TokenKey> = (0..1000)
        .map(|i| TokenKey::new("github", format!("user-{i}")))
        .collect();
    let record = mcp_authkit_bench::github_record();
    let bytes = codec::encode_token(&record);
    let raw_put = format!(
        "INSERT INTO {schema}.raw_tokens (k, v) VALUES ($1, $2) \
         ON CONFLICT (k) DO UPDATE SET v = excluded.v"
    );
    for key in &keys {
        store.put(key, &record).await.unwrap();
        sqlx::query(AssertSqlSafe(raw_put.as_str()))
            .bind(key.subject().as_bytes())
            .bind(&bytes)
            .execute(&pool)
            .await
            .unwrap();
    }
    let ctx = Arc::new(Context {
        store: store.clone(),
        pool,
        keys,
        record,
        bytes,
        raw_get: format!("SELECT v FROM {schema}.raw_tokens WHERE k = $1"),
        raw_put,
        raw_insert: format!("INSERT INTO {schema}.raw_flows (state, v) VALUES ($1, $2)"),
        raw_take: format!("DELETE FROM {schema}.raw_flows WHERE state = $1 RETURNING v"),
    });
    let mut table = Table::new();
    for op in [Op::Get, Op::Put, Op::InsertTake] {
        let iterations = if op == Op::Get { 10_000 } else { 3_000 };
        let (base, ours) = interleaved(&ctx, op, 1, iterations).await;
        table.row("postgres", ours, Some(base));
    }
    for op in [Op::Get, Op::Put, Op::InsertTake] {
        let (base, ours) = interleaved(&ctx, op, 32, 200).await;
        table.row("postgres", ours, Some(base));
    }
    // Two baselines: a bare NOTIFY commits without waiting for the disk (it
    // writes no WAL record), while `complete` is a durable commit; the second
    // row is the same durable commit done by hand, so what the store adds to
    // the wake shows beside what the disk costs.
    let (wake, notify, durable) = cross_process_wakes(&store, &schema).await;
    table.row("postgres", wake, Some(durable.clone()));
    table.row("sqlx", notify, None);
    table.row("sqlx", durable, None);

    println!("{}", table.render());
    println!(
        "Targets: get <= 1.2x raw SELECT, put <= 1.5x raw upsert (same pool, interleaved); \
         cross-process wake p99 <= 5 ms on loopback."
    );
    store.drop_tables().await.unwrap();
    let _ = sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(store.pool())
    .await;
}

/// Times wakes across processes: this process waits (through the store, or
/// a raw PgListener), a child completes (or NOTIFYs) and reports when it
/// started to, on the shared system clock.
async fn cross_process_wakes(store: &PostgresStore, schema: &str) -> (Stats, Stats, Stats) {
    let mut completer = Completer::spawn(&[(SCHEMA, schema)]).await;

    let channel = format!("{schema}_raw");
    let mut listener = PgListener::connect(&url()).await.unwrap();
    listener.listen(&channel).await.unwrap();
    // The store's listener starts with its first waiter: warm it up.
    let _ = store
        .wait(&FlowState::generate(), Duration::from_millis(50))
        .await;

    let [wakes, notifies, durables] = completer::interleaved_wakes(async |kind| {
        if kind == 0 {
            return completer.wake(store).await;
        }
        let command = if kind == 1 { "notify" } else { "durable" };
        let notified = async {
            listener.recv().await.unwrap();
        };
        completer.raw_wake(command, &channel, notified).await
    })
    .await;
    (
        Stats::back_to_back("wake: complete in B -> wait returns in A", wakes),
        Stats::back_to_back("raw NOTIFY in B -> notification in A", notifies),
        Stats::back_to_back(
            "raw durable INSERT + NOTIFY in B -> notification in A",
            durables,
        ),
    )
}

/// Process B: completes flows, sends NOTIFYs or commits a row with one
/// when asked.
fn completer() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let schema = std::env::var(SCHEMA).unwrap();
        let store = PostgresStore::options(&url())
            .schema(schema.clone())
            .open()
            .await
            .unwrap();
        completer::serve(&store, async |command, argument, started| match command {
            "durable" => {
                // One row written and one notification, committed together
                // with the server's default synchronous_commit.
                let mut transaction = store.pool().begin().await.unwrap();
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {schema}.raw_flows (state, v) VALUES ($1, $2)"
                )))
                .bind(format!("durable-{started}").into_bytes())
                .bind(b"x".as_slice())
                .execute(&mut *transaction)
                .await
                .unwrap();
                sqlx::query("SELECT pg_notify($1, 'x')")
                    .bind(argument)
                    .execute(&mut *transaction)
                    .await
                    .unwrap();
                transaction.commit().await.unwrap();
            }
            "notify" => {
                sqlx::query("SELECT pg_notify($1, 'x')")
                    .bind(argument)
                    .execute(store.pool())
                    .await
                    .unwrap();
            }
            other => panic!("unknown command {other}"),
        })
        .await;
    });
}
