//! The conformance suite on the Redis backend against a real server, bare
//! and through `EncryptedStore`, the check that secrets reach the store
//! sealed, and a look at the raw values on the server.

mod backends {
    pub mod encrypted;
    pub mod redis;
}

use backends::encrypted::Encrypted;
use backends::redis::Redis;
use mcp_authkit_core::{PendingFlow, PendingStore, Timestamp, TokenKey, TokenRecord, TokenStore};
use mcp_authkit_store_encrypted::{EncryptedStore, EncryptionKey, Keyring};
use mcp_authkit_store_redis::{RedisStore, testing};
use redis::AsyncCommands;

mcp_authkit_conformance::conformance_tests! {
    plain { backend: Redis }
    encrypted { backend: Encrypted::new(Redis) }
}

#[test]
fn secrets_stay_sealed_at_rest() {
    backends::encrypted::secrets_stay_sealed_at_rest(Redis);
}

/// Every value stored under `prefix`, as raw bytes, whatever its type.
async fn raw_values(url: &str, prefix: &str) -> Vec<u8> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = conn.keys(format!("{prefix}*")).await.unwrap();
    assert!(!keys.is_empty(), "the store wrote under {prefix}");
    let mut bytes = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        match kind.as_str() {
            "string" => bytes.extend(conn.get::<_, Vec<u8>>(&key).await.unwrap()),
            "hash" => {
                let fields: Vec<Vec<u8>> = conn.hgetall(&key).await.unwrap();
                fields.into_iter().for_each(|f| bytes.extend(f));
            }
            other => panic!("unexpected type {other} at {key}"),
        }
    }
    bytes
}

async fn write_secrets(tokens: &dyn TokenStore, pending: &dyn PendingStore) -> Vec<String> {
    let record = TokenRecord::new("gho_plaintext_access_9f8e7d", Timestamp::now())
        .with_refresh_token("ghr_plaintext_refresh_1a2b3c")
        .with_extra("id_token", "eyJplaintext.id.token");
    tokens
        .put(&TokenKey::new("github", "alice"), &record)
        .await
        .unwrap();
    let flow = PendingFlow::new(
        TokenKey::new("github", "bob"),
        "http://127.0.0.1:9/cb",
        vec![],
        Timestamp::now(),
        std::time::Duration::from_secs(60),
    );
    pending.insert(&flow).await.unwrap();
    let verifier = mcp_authkit_core::ExposeSecret::expose_secret(&flow.pkce_verifier).to_owned();
    vec![
        "gho_plaintext_access_9f8e7d".into(),
        "ghr_plaintext_refresh_1a2b3c".into(),
        "eyJplaintext.id.token".into(),
        verifier,
    ]
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn no_secret_in_the_raw_redis_values() {
    let url = testing::redis_url().await;

    // Control: without the wrapper the secrets are on the server as written,
    // so the search below would find them.
    let clear = RedisStore::builder(url.clone())
        .prefix(testing::unique_prefix("clear"))
        .connect()
        .await
        .unwrap();
    let secrets = write_secrets(&clear, &clear).await;
    let bytes = raw_values(&url, clear.prefix()).await;
    clear.delete_namespace().await.unwrap();
    assert!(
        secrets.iter().all(|s| contains(&bytes, s)),
        "the control finds the secrets"
    );

    let inner = RedisStore::builder(url.clone())
        .prefix(testing::unique_prefix("sealed"))
        .connect()
        .await
        .unwrap();
    let keyring = Keyring::new(EncryptionKey::generate("k1"));
    let sealed = EncryptedStore::new(inner.clone(), keyring);
    let secrets = write_secrets(&sealed, &sealed).await;
    let bytes = raw_values(&url, inner.prefix()).await;
    inner.delete_namespace().await.unwrap();
    assert!(
        contains(&bytes, "github"),
        "what a backend needs stays in clear"
    );
    for secret in &secrets {
        assert!(
            !contains(&bytes, secret),
            "a secret is stored in clear on the server"
        );
    }
}
