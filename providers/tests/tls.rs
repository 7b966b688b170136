//! A server whose TLS certificate the client does not trust. Every OAuth
//! request to it fails with an error that says the certificate was rejected
//! and is not retryable (retrying cannot fix trust settings), while the same
//! server, once its certificate is trusted, gets past TLS: so the refusal is
//! the certificate's and nothing else's.
//!
//! The server is `openssl s_server` with a self-signed certificate made for
//! the test: a real TLS handshake on loopback.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use mcp_authkit_core::{ExposeSecret, OAuthClient, OAuthErrorKind, SecretString};
use mcp_authkit_providers::client::{
    AuthChallenge, AuthProvider, ClientAuthError, OAuthClientProvider,
};
use mcp_authkit_providers::http::OAuthHttpClient;
use mcp_authkit_providers::standard::StandardOAuthClient;
use mcp_authkit_store_memory::MemoryStore;

/// An HTTPS server on loopback with a self-signed certificate for
/// 127.0.0.1. It answers a GET with an HTML status page and never answers a
/// POST.
struct UntrustedServer {
    child: Child,
    base_url: String,
    certificate_pem: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl UntrustedServer {
    fn start() -> UntrustedServer {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            // A server certificate, not a CA one: rustls refuses a CA
            // certificate as the server's own even when it is trusted.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "extendedKeyUsage=serverAuth", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect(
                "these tests need the `openssl` command-line tool to run a TLS server \
                 (Debian: apt-get install openssl)",
            );
        assert!(made.success(), "openssl could not make a test certificate");
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", "127.0.0.1:0", "-www", "-cert"])
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server starts");
        // s_server announces the port it bound as "ACCEPT 127.0.0.1:<port>".
        // The rest of its output is drained by a thread, so the server never
        // blocks on (or dies of) a full or closed pipe.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                line.strip_prefix("ACCEPT 127.0.0.1:")
                    .map(|port| port.trim().to_owned())
            })
            .expect("openssl s_server announced its port");
        std::thread::spawn(move || lines.for_each(drop));
        UntrustedServer {
            child,
            base_url: format!("https://127.0.0.1:{port}"),
            certificate_pem: std::fs::read(&cert).unwrap(),
            _dir: dir,
        }
    }

    /// An HTTP client that trusts this server's certificate, with redirects
    /// off as token requests require, and a short timeout because the server
    /// never answers a POST.
    fn trusting_client(&self) -> OAuthHttpClient {
        let certificate = reqwest::Certificate::from_pem(&self.certificate_pem).unwrap();
        OAuthHttpClient::from_reqwest(
            reqwest::Client::builder()
                .add_root_certificate(certificate)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(1))
                .build()
                .unwrap(),
        )
    }
}

impl Drop for UntrustedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn oauth_client(server: &UntrustedServer, http: Option<OAuthHttpClient>) -> StandardOAuthClient {
    let mut builder = StandardOAuthClient::builder(
        "client-1",
        format!("{}/authorize", server.base_url),
        format!("{}/token", server.base_url),
    );
    if let Some(http) = http {
        builder = builder.http_client(http);
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn a_refused_certificate_on_the_token_endpoint_is_not_retryable() {
    let server = UntrustedServer::start();
    let refresh_token = SecretString::from("rt-secret-7f3a9".to_owned());

    let error = oauth_client(&server, None)
        .refresh(&refresh_token, &[])
        .await
        .unwrap_err();
    assert_eq!(error.kind(), OAuthErrorKind::CertificateRejected, "{error}");
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("certificate"), "{error}");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains(refresh_token.expose_secret()), "{shown}");

    // Trusted, the same request gets through TLS and then waits for an
    // answer this server never gives: an ordinary, retryable timeout.
    let error = oauth_client(&server, Some(server.trusting_client()))
        .refresh(&refresh_token, &[])
        .await
        .unwrap_err();
    assert_eq!(error.kind(), OAuthErrorKind::Transient, "{error}");
}

#[tokio::test]
async fn a_refused_certificate_during_discovery_is_not_retryable() {
    let server = UntrustedServer::start();
    let provider = |http: OAuthHttpClient| {
        OAuthClientProvider::builder(format!("{}/mcp", server.base_url))
            .store(MemoryStore::new())
            .http_client(http)
            .build()
            .unwrap()
    };

    let error = provider(OAuthHttpClient::new().unwrap())
        .handle_unauthorized(&AuthChallenge::new(Some("Bearer")))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ClientAuthError::CertificateRejected { url, .. } if url.starts_with(&server.base_url)),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("certificate"), "{error}");

    let error = provider(server.trusting_client())
        .handle_unauthorized(&AuthChallenge::new(Some("Bearer")))
        .await
        .unwrap_err();
    assert!(
        !matches!(
            error,
            ClientAuthError::CertificateRejected { .. } | ClientAuthError::Http { .. }
        ),
        "past TLS, discovery fails on the answer, not in transit: {error:?}"
    );
}
