//! The operator CLI, run as a process on real stores.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mcp_authkit::encrypted::{EncryptedStore, EncryptionKey, Keyring};
use mcp_authkit::sqlite::SqliteStore;
use mcp_authkit::{
    ExposeSecret, PendingFlow, PendingStore, Timestamp, TokenKey, TokenRecord, TokenStore,
};

fn cli(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcp-authkit"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("running the mcp-authkit binary")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn generated_key(id: &str) -> String {
    let output = cli(&["keys", "generate", "--id", id], &[]);
    assert!(output.status.success());
    let (stdout, _) = text(&output);
    let (printed_id, key) = stdout.trim().split_once(' ').expect("ID KEY");
    assert_eq!(printed_id, id);
    key.to_owned()
}

#[test]
fn keys_generate_prints_a_usable_distinct_key() {
    let a = generated_key("k1");
    let b = generated_key("k1");
    assert_ne!(a, b);
    EncryptionKey::from_base64("k1", &a).expect("a valid 256-bit key");
}

const SECRETS: [&str; 2] = ["gho_cli_secret_access_77", "ghr_cli_secret_refresh_88"];

fn record(expires_in: Option<i64>) -> TokenRecord {
    let now = Timestamp::now();
    let mut record = TokenRecord::new(SECRETS[0], now)
        .with_refresh_token(SECRETS[1])
        .with_scopes(["repo", "read:user"]);
    if let Some(seconds) = expires_in {
        record = record.with_expires_at(Timestamp::from_unix_millis(
            now.unix_millis() + seconds * 1000,
        ));
    }
    record
}

#[tokio::test(flavor = "multi_thread")]
async fn inspect_lists_tokens_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .put(&TokenKey::new("github", "alice"), &record(Some(3600)))
        .await
        .unwrap();
    store
        .put(&TokenKey::new("google", "bob\tsmith"), &record(Some(-10)))
        .await
        .unwrap();
    store.close().await;

    let output = cli(
        &["inspect", "--store", &format!("sqlite:{}", path.display())],
        &[],
    );
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("github\talice\t"), "{stdout}");
    assert!(
        stdout.contains("bob\\tsmith"),
        "tabs in keys are escaped: {stdout}"
    );
    assert!(stdout.contains("(expired)"), "{stdout}");
    assert!(
        stdout.contains("repo read:user") && stdout.contains("clear"),
        "{stdout}"
    );
    assert!(stderr.contains("2 token(s)"));
    for secret in SECRETS {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "a secret was printed"
        );
    }

    let only = cli(
        &[
            "inspect",
            "--store",
            path.to_str().unwrap(),
            "--provider",
            "google",
        ],
        &[],
    );
    let (stdout, _) = text(&only);
    assert!(
        stdout.contains("google") && !stdout.contains("github"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rekey_moves_every_token_to_the_new_key_and_refuses_a_wrong_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let old = generated_key("old");
    let new = generated_key("new");
    let sqlite = SqliteStore::open(&path).await.unwrap();
    let under_old = EncryptedStore::new(
        sqlite.clone(),
        Keyring::new(EncryptionKey::from_base64("old", &old).unwrap()),
    );
    for i in 0..5 {
        under_old
            .put(
                &TokenKey::new("github", format!("user-{i}")),
                &record(Some(3600)),
            )
            .await
            .unwrap();
    }
    sqlite.close().await;
    let store = format!("sqlite:{}", path.display());
    let envs = [("OLD_KEY", old.as_str()), ("NEW_KEY", new.as_str())];

    // Without the old key nothing can be read: a clear error, nothing changed.
    let output = cli(
        &["rekey", "--store", &store, "--key", "new=env:NEW_KEY"],
        &envs,
    );
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(
        stderr.contains("could not be decrypted") && stderr.contains("previous-key"),
        "{stderr}"
    );
    assert!(stdout.contains("undecryptable 5"), "{stdout}");

    let output = cli(
        &[
            "rekey",
            "--store",
            &store,
            "--key",
            "new=env:NEW_KEY",
            "--previous-key",
            "old=env:OLD_KEY",
        ],
        &envs,
    );
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("re-encrypted 5"), "{stdout}");

    let inspect = cli(&["inspect", "--store", &store], &[]);
    let (stdout, _) = text(&inspect);
    assert_eq!(stdout.matches("encrypted (new)").count(), 5, "{stdout}");

    // The new key alone now reads every token.
    let sqlite = SqliteStore::open(&path).await.unwrap();
    let under_new = EncryptedStore::new(
        sqlite,
        Keyring::new(EncryptionKey::from_base64("new", &new).unwrap()),
    );
    let stored = TokenStore::get(&under_new, &TokenKey::new("github", "user-3"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.record.access_token.expose_secret(), SECRETS[0]);
    for secret in [old.as_str(), new.as_str()] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "a key was printed"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_removes_expired_flows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let flow = PendingFlow::new(
        TokenKey::new("github", "alice"),
        "http://127.0.0.1:9/cb",
        vec![],
        Timestamp::now(),
        Duration::from_millis(50),
    );
    store.insert(&flow).await.unwrap();
    store.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let output = cli(&["purge", "--store", path.to_str().unwrap()], &[]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("purged 1 expired flows"), "{stdout}");
}

#[test]
fn bad_stores_and_keys_are_clear_errors() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["inspect", "--store", "mysql://db/x"],
            "unknown store scheme",
        ),
        (
            &["inspect", "--store", "/nonexistent/dir/tokens.db"],
            "there is no SQLite database",
        ),
        (&["inspect", "--store", "notes.txt"], "is not a store"),
        (
            &["rekey", "--store", "memory", "--key", "k=c2VjcmV0"],
            "ID=env:VARIABLE",
        ),
        (
            &[
                "rekey",
                "--store",
                "memory",
                "--key",
                "k=env:MCP_AUTHKIT_NOT_SET_ANYWHERE",
            ],
            "MCP_AUTHKIT_NOT_SET_ANYWHERE",
        ),
    ];
    for (args, expected) in cases {
        let output = cli(args, &[]);
        let (_, stderr) = text(&output);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn an_unreachable_redis_fails_fast() {
    let started = Instant::now();
    // Nothing listens on port 1 of loopback.
    let output = cli(&["purge", "--store", "redis://127.0.0.1:1"], &[]);
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(stderr.contains("cannot open the store"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "no hang");
}

/// The README's main command, on each embedded store, plain and encrypted:
/// it checks every lifecycle step itself and exits 0, and never prints a
/// token, refresh token or code (the test server's start with at_, rt_, code_).
#[test]
fn the_demo_runs_end_to_end_without_printing_secrets() {
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    for args in [
        &["demo"][..],
        &["demo", "--store", "memory"],
        &["demo", "--store", "sqlite", "--encrypt"],
        &[
            "demo",
            "--store",
            "redis",
            "--encrypt",
            "--redis-url",
            &redis_url,
        ],
    ] {
        let output = cli(args, &[]);
        let (stdout, stderr) = text(&output);
        assert!(
            output.status.success(),
            "{args:?} failed:\n{stdout}\n{stderr}"
        );
        for step in [
            "URL elicitation",
            "callback page: 200",
            "notifications/elicitation/complete received",
            "refreshed silently: revision ",
            "1 refresh request",
            "GitHub API answered 401",
            "2 elicitations, 2 code exchanges, 1 silent refresh, 1 invalidation",
        ] {
            assert!(
                stdout.contains(step),
                "{args:?} did not show {step:?}:\n{stdout}"
            );
        }
        for secret_prefix in ["at_", "rt_", "code_"] {
            assert!(
                !stdout.contains(secret_prefix),
                "{args:?} printed a secret:\n{stdout}"
            );
        }
        if args.contains(&"--encrypt") {
            assert!(stdout.contains("at rest encrypted"), "{stdout}");
            assert!(!stdout.contains("at rest in clear"), "{stdout}");
        }
    }
}
