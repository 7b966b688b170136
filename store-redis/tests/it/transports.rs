//! URLs other than redis://: unix sockets and TLS, on private servers.

use std::process::Command;
use std::time::Duration;

use mcp_authkit_core::{
    Error, FlowOutcome, PendingFlow, PendingStore, Timestamp, TokenKey, TokenRecord, TokenStore,
};
use mcp_authkit_store_redis::RedisStore;

use crate::common::{Namespace, PrivateRedis, free_port};

/// Put, get, and a wait woken by a completion: the whole path works.
pub(crate) async fn round_trip(store: &RedisStore) {
    let key = TokenKey::new("github", "transport");
    let revision = store
        .put(&key, &TokenRecord::new("t", Timestamp::now()))
        .await
        .unwrap();
    assert_eq!(
        TokenStore::get(store, &key)
            .await
            .unwrap()
            .unwrap()
            .revision,
        revision
    );
    let flow = PendingFlow::new(
        key.clone(),
        "http://127.0.0.1:9/cb",
        vec![],
        Timestamp::now(),
        Duration::from_secs(60),
    );
    store.insert(&flow).await.unwrap();
    let waiter = {
        let store = store.clone();
        let state = flow.state.clone();
        tokio::spawn(async move { store.wait(&state, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let outcome = FlowOutcome::Authorized { revision };
    store
        .complete(&key, &flow.state, &outcome, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), Some(outcome));
}

#[tokio::test]
async fn unix_socket_urls_work() {
    let server = PrivateRedis::start(&[
        "--unixsocket",
        "{dir}/redis.sock",
        "--unixsocketperm",
        "700",
    ]);
    let socket = server.path("redis.sock");
    for url in [
        format!("unix://{}", socket.display()),
        format!("redis+unix://{}", socket.display()),
    ] {
        let ns = Namespace::new(&server.url(), "unix");
        let store = RedisStore::builder(&url)
            .prefix(ns.prefix())
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(format!("{store:?}").contains("redis.sock"));
        round_trip(&store).await;
    }
    let missing = format!("unix://{}", server.path("missing.sock").display());
    let error = RedisStore::connect(&missing).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line tool is installed");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM
/// files in `dir`.
pub(crate) fn make_certificates(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=mcp-authkit test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(dir, &ca);
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [
        ("server", "127.0.0.1"),
        ("client", "mcp-authkit test client"),
    ] {
        let subject = format!("/CN={cn}");
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let mut request = vec!["req", "-subj", subject.as_str()];
        request.extend(ec);
        request.extend(["-keyout", key.as_str(), "-out", csr.as_str()]);
        openssl(dir, &request);
        let cert = format!("{name}.crt");
        let ext = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        );
    }
}

#[tokio::test]
async fn rediss_urls_verify_the_server_and_present_client_certificates() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let file = |name: &str| certs.path().join(name).display().to_string();
    let tls_port = free_port();
    let server = PrivateRedis::start(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &file("server.crt"),
        "--tls-key-file",
        &file("server.key"),
        "--tls-ca-cert-file",
        &file("ca.crt"),
        "--tls-auth-clients",
        "yes",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let read = |name: &str| std::fs::read(certs.path().join(name)).unwrap();
    let ns = Namespace::new(&server.url(), "tls");

    let store = RedisStore::builder(&url)
        .prefix(ns.prefix())
        .tls_root_certificates_pem(read("ca.crt"))
        .tls_client_identity_pem(read("client.crt"), read("client.key"))
        .connect()
        .await
        .expect("a TLS connection with the test CA and a client certificate");
    assert!(format!("{store:?}").contains("rediss://127.0.0.1"));
    round_trip(&store).await;

    // The server's certificate is checked: not signed by a system root.
    let untrusted = RedisStore::builder(&url)
        .prefix(ns.prefix())
        .tls_client_identity_pem(read("client.crt"), read("client.key"))
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    // A refused certificate stays refused: not worth retrying, and said.
    let error = untrusted.expect_err("an unknown CA is refused");
    assert!(!error.is_retryable(), "{error:?}");
    assert!(error.to_string().contains("certificate"), "{error}");
    // The server requires a client certificate.
    let anonymous = RedisStore::builder(&url)
        .prefix(ns.prefix())
        .tls_root_certificates_pem(read("ca.crt"))
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    assert!(anonymous.is_err(), "no client certificate, no connection");
    // Unusable PEM is a configuration error.
    for builder in [
        RedisStore::builder(&url).tls_root_certificates_pem("not pem"),
        RedisStore::builder(&url).tls_client_identity_pem("not pem", read("client.key")),
        RedisStore::builder(&url).tls_client_identity_pem(read("client.crt"), "not pem"),
    ] {
        let error = builder.connect().await.unwrap_err();
        assert!(matches!(error, Error::InvalidInput { .. }), "{error:?}");
        assert!(error.to_string().contains("tls"), "{error}");
    }
}

/// The ACL rules the crate docs give are enough for an application, which
/// cannot list the keys of the database; the operator rules add listing;
/// without the channel permission, complete and wait fail at once instead
/// of waiting in vain.
#[tokio::test]
async fn a_least_privilege_acl_user_is_enough() {
    let server = PrivateRedis::start(&[]);
    let mut admin = crate::common::raw(&server.url()).await;
    let prefix = "acl-app";
    let rules = mcp_authkit_store_redis::acl_rules(prefix);
    for (user, rules) in [
        ("auth", rules.clone()),
        (
            "operator",
            mcp_authkit_store_redis::acl_operator_rules(prefix),
        ),
        ("deaf", rules.replace(&format!("&{prefix}:completions"), "")),
    ] {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(user)
            .arg("on")
            .arg(">pw")
            .arg(rules.split_whitespace().collect::<Vec<_>>())
            .query_async(&mut admin)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("SET")
        .arg("other-app:secret-key-name")
        .arg("x")
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = |user: &str| format!("redis://{user}:pw@127.0.0.1:{}", server.port);
    let store = RedisStore::builder(url("auth"))
        .prefix(prefix)
        .connect()
        .await
        .unwrap();
    round_trip(&store).await;
    let key = TokenKey::new("github", "acl");
    let lease = store
        .try_acquire_lease(&key, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(store.release_lease(&key, &lease).await.unwrap());
    let revision = store
        .put(&key, &TokenRecord::new("t", Timestamp::now()))
        .await
        .unwrap();
    assert!(store.delete_if_revision(&key, revision).await.unwrap());
    // Listing keys is not the application's business: SCAN would show every
    // key name of the database.
    let error = store.scan(None, 10).await.unwrap_err();
    assert!(
        error.to_string().to_lowercase().contains("noperm"),
        "{error}"
    );
    assert!(store.delete_namespace().await.is_err());
    let mut app_connection = redis::Client::open(url("auth"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let listed: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
        .arg(0)
        .query_async(&mut app_connection)
        .await;
    assert!(listed.is_err(), "the application user cannot list keys");
    // Another prefix is off limits for this user.
    let elsewhere = RedisStore::builder(url("auth"))
        .prefix("other-app")
        .connect()
        .await
        .unwrap();
    assert!(TokenStore::get(&elsewhere, &key).await.is_err());

    // The operator lists, inspects and removes the prefix's keys.
    store
        .put(&key, &TokenRecord::new("t", Timestamp::now()))
        .await
        .unwrap();
    let operator = RedisStore::builder(url("operator"))
        .prefix(prefix)
        .connect()
        .await
        .unwrap();
    assert!(operator.scan(None, 10).await.unwrap().items.contains(&key));
    assert!(TokenStore::get(&operator, &key).await.unwrap().is_some());
    assert!(operator.delete_namespace().await.unwrap() >= 1);
    assert!(TokenStore::get(&store, &key).await.unwrap().is_none());

    let deaf = RedisStore::builder(url("deaf"))
        .prefix(prefix)
        .connect()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let error = deaf
        .wait(
            &mcp_authkit_core::FlowState::generate(),
            Duration::from_secs(20),
        )
        .await
        .unwrap_err();
    assert!(!error.is_retryable(), "{error}");
    assert!(
        error.to_string().to_lowercase().contains("noperm"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let state = mcp_authkit_core::FlowState::generate();
    let error = deaf
        .complete(
            &key,
            &state,
            &FlowOutcome::Failed { reason: "x".into() },
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(!error.is_retryable(), "{error}");
    assert!(error.to_string().contains("publish"), "{error}");
    assert_eq!(
        store.outcome(&state).await.unwrap(),
        None,
        "the refused completion wrote nothing"
    );
}
