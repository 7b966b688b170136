//! One token request across OS processes: two replicas of a machine
//! client, each with several concurrent requests, share a SQLite file and
//! ask the authorization server once between them.

use std::process::Stdio;
use std::time::Duration;

use mcp_authkit_providers::client::{
    AuthChallenge, AuthProvider, ClientCredentialsProvider, PreRegisteredClient,
};
use mcp_authkit_store_sqlite::SqliteStore;
use mcp_authkit_testkit::{ClientAuthMethod, Endpoint, Failure};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::client_credentials::{SECRET, register_secret_client};
use crate::support::{World, secret};

const ROLE: &str = "MCP_AUTHKIT_MACHINE_REPLICA";
const READY: &str = "replica ready";
const TOKEN: &str = "replica token: ";

/// The replica: waits for "go" on stdin, then asks for the token from 4
/// tasks at once and prints what it got.
#[tokio::test]
async fn replica_process() {
    if std::env::var(ROLE).is_err() {
        return;
    }
    let var = |name: &str| std::env::var(name).unwrap();
    let store = SqliteStore::open(var("REPLICA_DB")).await.unwrap();
    let provider = ClientCredentialsProvider::builder(
        var("REPLICA_MCP_URL"),
        PreRegisteredClient::confidential("bot", SECRET),
    )
    .store(store)
    .build()
    .unwrap();
    let challenge = AuthChallenge::new(Some(&format!(
        r#"Bearer resource_metadata="{}""#,
        var("REPLICA_METADATA")
    )));
    println!("{READY}");
    let mut go = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut go)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let provider = provider.clone();
            let challenge = challenge.clone();
            tokio::spawn(async move { provider.handle_unauthorized(&challenge).await })
        })
        .collect();
    for task in tasks {
        let token = task.await.unwrap().unwrap();
        println!("{TOKEN}{}", secret(&token));
    }
}

#[tokio::test]
async fn two_processes_share_one_token_request() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let world = World::start().await;
    register_secret_client(&world, ClientAuthMethod::ClientSecretBasic);
    // Slow enough that both processes ask while the first request is out.
    world.auth.fail_next(
        Endpoint::ClientCredentialsGrant,
        1,
        Failure::Delay(Duration::from_millis(500)),
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tokens.db");
    // Created (and migrated) once, before the replicas race.
    drop(SqliteStore::open(&db).await.unwrap());

    let mut replicas = Vec::new();
    for _ in 0..2 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "replicas::replica_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, "1")
            .env("REPLICA_DB", &db)
            .env("REPLICA_MCP_URL", &world.mcp_url)
            .env("REPLICA_METADATA", world.resource.metadata_url().as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains(READY) {
                    return;
                }
            }
            panic!("the replica exited before it was ready");
        })
        .await
        .expect("the replica starts");
        replicas.push((child, lines));
    }
    for (child, _) in &mut replicas {
        let stdin = child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").await.unwrap();
        stdin.flush().await.unwrap();
    }
    let mut tokens = Vec::new();
    for (mut child, mut lines) in replicas {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some((_, token)) = line.split_once(TOKEN) {
                tokens.push(token.to_owned());
            }
        }
        assert!(child.wait().await.unwrap().success());
    }
    assert_eq!(tokens.len(), 8, "4 requests in each process");
    assert!(
        tokens.iter().all(|t| t == &tokens[0]),
        "one token: {tokens:?}"
    );
    assert_eq!(world.auth.hits(Endpoint::ClientCredentialsGrant), 1);
}
