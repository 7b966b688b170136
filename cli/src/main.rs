//! `mcp-authkit`: the operator's tool for mcp-authkit stores.
//!
//! ```text
//! mcp-authkit demo [--store memory|sqlite|redis|postgres] [--encrypt]
//! mcp-authkit keys generate [--id ID]
//! mcp-authkit inspect --store STORE [--provider P]
//! mcp-authkit purge   --store STORE
//! mcp-authkit rekey   --store STORE --key ID=env:VAR [--previous-key ID=file:PATH ...]
//! ```
//!
//! STORE is `sqlite:PATH` (or a path ending in `.db`), `redis://HOST:PORT`
//! (with `--redis-prefix`), `postgres://USER@HOST/DATABASE` (with
//! `--pg-schema`), or `memory`. No command ever prints a token,
//! refresh token or verifier.

mod demo;
mod key_spec;
mod store_spec;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mcp_authkit::encrypted::{EncryptedStore, EncryptionKey, EnvelopeInfo, Keyring};
use mcp_authkit::{ExposeSecret, ScanCursor, Timestamp, TokenKey};

use key_spec::KeySpec;
use store_spec::StoreSpec;

#[derive(Parser)]
#[command(
    name = "mcp-authkit",
    version,
    about = "Operate mcp-authkit token stores."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct StoreArgs {
    /// The store: sqlite:PATH, a path ending in .db, redis://HOST:PORT,
    /// postgres://USER@HOST/DATABASE, or memory.
    #[arg(long, value_name = "STORE")]
    store: StoreSpec,
    /// Key prefix of a Redis store (default: mcp-authkit).
    #[arg(long, value_name = "PREFIX")]
    redis_prefix: Option<String>,
    /// Schema of a PostgreSQL store (default: public).
    #[arg(long, value_name = "SCHEMA")]
    pg_schema: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole lifecycle end to end on loopback: elicitation, browser,
    /// callback, token stored, refresh, invalidation. No credentials needed.
    Demo {
        /// The backend to run on.
        #[arg(long, value_enum, default_value = "sqlite")]
        store: demo::DemoStore,
        /// Keep the SQLite database at this path instead of a temporary file.
        #[arg(long, value_name = "PATH")]
        sqlite_path: Option<std::path::PathBuf>,
        /// The Redis server for --store redis.
        #[arg(long, value_name = "URL", default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
        /// The PostgreSQL database for --store postgres (the demo works in a
        /// fresh schema it drops afterwards).
        #[arg(
            long,
            value_name = "URL",
            default_value = "postgres://postgres@127.0.0.1:5432/test"
        )]
        database_url: String,
        /// Wrap the store in AES-256-GCM encryption (with a fresh key).
        #[arg(long)]
        encrypt: bool,
    },
    /// Encryption keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// List stored tokens: provider, subject, revision, expiry, scopes. Never secrets.
    Inspect {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this provider's tokens.
        #[arg(long)]
        provider: Option<String>,
    },
    /// Remove expired pending flows, outcomes and leases.
    Purge {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Re-encrypt every token under the primary key, so old keys can be retired.
    Rekey {
        #[command(flatten)]
        store: StoreArgs,
        /// The new primary key: ID=env:VARIABLE or ID=file:PATH.
        #[arg(long, value_name = "ID=SOURCE")]
        key: KeySpec,
        /// A key records may still be encrypted under (repeatable).
        #[arg(long = "previous-key", value_name = "ID=SOURCE")]
        previous: Vec<KeySpec>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random 256-bit key, base64, for MCP_AUTHKIT_KEY-style variables.
    Generate {
        /// An id to print beside the key (how you will name it in --key ID=...).
        #[arg(long, default_value = "key-1")]
        id: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

type CommandResult = Result<(), String>;

async fn run(command: Command) -> CommandResult {
    match command {
        Command::Demo {
            store,
            sqlite_path,
            redis_url,
            database_url,
            encrypt,
        } => {
            demo::run(demo::DemoOptions {
                store,
                sqlite_path,
                redis_url,
                database_url,
                encrypt,
            })
            .await
        }
        Command::Keys {
            command: KeysCommand::Generate { id },
        } => {
            let key = EncryptionKey::generate(id.clone());
            eprintln!("# keep this key secret; losing it makes its tokens unreadable");
            println!("{id} {}", key.to_base64().expose_secret());
            Ok(())
        }
        Command::Inspect { store, provider } => inspect(&store, provider.as_deref()).await,
        Command::Purge { store } => {
            let opened = open(&store).await?;
            let report = opened
                .pending
                .purge_expired()
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "purged {} expired flows, {} outcomes, {} leases",
                report.flows, report.outcomes, report.leases
            );
            Ok(())
        }
        Command::Rekey {
            store,
            key,
            previous,
        } => rekey(&store, &key, &previous).await,
    }
}

async fn open(args: &StoreArgs) -> Result<store_spec::OpenStore, String> {
    let namespace = match args.store {
        StoreSpec::Postgres(_) => args.pg_schema.as_deref(),
        _ => args.redis_prefix.as_deref(),
    };
    args.store
        .open(namespace, false)
        .await
        .map_err(|e| format!("cannot open the store: {e}"))
}

async fn inspect(args: &StoreArgs, provider: Option<&str>) -> CommandResult {
    let opened = open(args).await?;
    let now = Timestamp::now();
    println!("provider\tsubject\trevision\tobtained\texpires\tscopes\trefresh\tat rest");
    let mut cursor: Option<ScanCursor> = None;
    let mut listed = 0;
    loop {
        let page = opened
            .tokens
            .scan(cursor.as_ref(), 200)
            .await
            .map_err(|e| e.to_string())?;
        for key in page.items {
            if provider.is_some_and(|p| p != key.provider()) {
                continue;
            }
            match opened.tokens.get(&key).await {
                Ok(Some(stored)) => {
                    let record = &stored.record;
                    let expires = match record.expires_at {
                        None => "unknown".to_owned(),
                        Some(at) if at <= now => format!("{at} (expired)"),
                        Some(at) => at.to_string(),
                    };
                    let at_rest = match EnvelopeInfo::read(record.access_token.expose_secret()) {
                        Ok(info) => format!("encrypted ({})", info.key_id),
                        Err(_) => "clear".to_owned(),
                    };
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        printable(key.provider()),
                        printable(key.subject()),
                        stored.revision.get(),
                        record.obtained_at,
                        expires,
                        record.scopes.join(" "),
                        if record.refresh_token.is_some() {
                            "yes"
                        } else {
                            "no"
                        },
                        at_rest
                    );
                    listed += 1;
                }
                Ok(None) => {}
                Err(error) => println!(
                    "{}\t{}\t-\t-\t-\t-\t-\tunreadable: {error}",
                    printable(key.provider()),
                    printable(key.subject())
                ),
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    eprintln!("{listed} token(s)");
    Ok(())
}

/// Tabs and newlines in keys would break the table; show them escaped.
fn printable(text: &str) -> String {
    text.escape_debug().to_string()
}

async fn rekey(args: &StoreArgs, primary: &KeySpec, previous: &[KeySpec]) -> CommandResult {
    let load = |spec: &KeySpec| spec.load().map_err(|e| format!("key {:?}: {e}", spec.id));
    let primary = load(primary)?;
    let previous = previous.iter().map(load).collect::<Result<Vec<_>, _>>()?;
    let keyring = Keyring::with_previous(primary, previous).map_err(|e| e.to_string())?;
    let opened = open(args).await?;
    let store = EncryptedStore::new(opened.tokens, keyring);
    let report = store
        .rekey_tokens()
        .await
        .map_err(|e| format!("rekey failed: {e}"))?;
    println!(
        "scanned {}, re-encrypted {}, already current {}, vanished {}, busy {}, undecryptable {}",
        report.scanned,
        report.rekeyed,
        report.already_current,
        report.vanished,
        report.busy.len(),
        report.undecryptable.len()
    );
    for (key, error) in &report.undecryptable {
        eprintln!("  cannot decrypt {}: {error}", describe(key));
    }
    for key in &report.busy {
        eprintln!(
            "  still being refreshed, run rekey again: {}",
            describe(key)
        );
    }
    if report.is_complete() {
        println!(
            "every token is under the primary key; previous keys can be retired after one flow TTL"
        );
        Ok(())
    } else if !report.undecryptable.is_empty() {
        Err(format!(
            "{} token(s) could not be decrypted with the given keys: is a --previous-key missing or wrong?",
            report.undecryptable.len()
        ))
    } else {
        Err("some tokens were busy; run rekey again".to_owned())
    }
}

fn describe(key: &TokenKey) -> String {
    format!(
        "{} / {}",
        printable(key.provider()),
        printable(key.subject())
    )
}
