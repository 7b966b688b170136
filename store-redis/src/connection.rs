//! Opening connections: the command connection (a redis-rs
//! `ConnectionManager`, which reconnects by itself) and the dedicated
//! subscription connection that [`crate::subscription`] keeps up.

use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::Error;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, PushInfo, PushKind, RedisResult};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error;

/// What a connection needs to know besides the URL.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) client_name: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
}

/// A task that ends when its handle is dropped.
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `host:port` or the socket path, for messages: never the URL, which may
/// carry a password.
pub(crate) fn describe_addr(client: &Client) -> String {
    let info = client.get_connection_info();
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}"),
        ConnectionAddr::Unix(path) => format!("unix://{}", path.display()),
        other => other.to_string(),
    }
}

/// A client for `url` that speaks RESP3 (so one connection can carry both
/// commands and pushes, and a dropped connection is noticed at once).
pub(crate) fn client(url: &str, tls: &crate::config::TlsOptions) -> Result<Client, Error> {
    let info: redis::ConnectionInfo = url.parse().map_err(|e: redis::RedisError| {
        Error::invalid_input(
            "redis url",
            format!(
                "{} (expected redis://host:port/db, rediss://host:port/db or unix:///path/to/socket)",
                e.detail().unwrap_or("it does not parse")
            ),
        )
    })?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let info = info.set_redis_settings(settings);
    match info.addr() {
        ConnectionAddr::TcpTls { .. } => tls_client(info, tls),
        _ if tls.is_set() => Err(Error::invalid_input(
            "redis tls options",
            "TLS certificates were given for a URL without TLS: use a rediss:// URL",
        )),
        _ => Client::open(info).map_err(|e| Error::invalid_input("redis url", e.to_string())),
    }
}

#[cfg(feature = "tls")]
fn tls_client(
    info: redis::ConnectionInfo,
    tls: &crate::config::TlsOptions,
) -> Result<Client, Error> {
    // redis-rs builds its rustls config on the process-wide crypto provider.
    // rustls picks one by itself only when exactly one provider is compiled
    // in; applications that also link `ring` (through another dependency)
    // would panic there, so install ours unless they chose one.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: one is installed.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    if !tls.is_set() {
        return Client::open(info).map_err(|e| Error::invalid_input("redis url", e.to_string()));
    }
    check_pem(tls)?;
    let certificates = redis::TlsCertificates {
        client_tls: tls
            .client_identity
            .as_ref()
            .map(|identity| redis::ClientTlsConfig {
                client_cert: identity.certificate_pem.clone(),
                client_key: identity.key_pem.clone(),
            }),
        root_cert: tls.root_certificates_pem.clone(),
    };
    Client::build_with_tls(info, certificates).map_err(|e| {
        Error::invalid_input(
            "redis tls options",
            format!(
                "{} (certificates and keys must be PEM)",
                e.detail().unwrap_or("unusable")
            ),
        )
    })
}

/// redis-rs reads PEM leniently (text without a certificate is an empty
/// list, and every server then fails verification); catch that here, where
/// it is a configuration error rather than a connection failure.
#[cfg(feature = "tls")]
fn check_pem(tls: &crate::config::TlsOptions) -> Result<(), Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certificates = |pem: &[u8]| {
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .is_ok_and(|certificates| !certificates.is_empty())
    };
    if let Some(roots) = &tls.root_certificates_pem
        && !certificates(roots)
    {
        return Err(Error::invalid_input(
            "redis tls root certificates",
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
        ));
    }
    if let Some(identity) = &tls.client_identity {
        if !certificates(&identity.certificate_pem) {
            return Err(Error::invalid_input(
                "redis tls client certificate",
                "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
            ));
        }
        if PrivateKeyDer::from_pem_slice(&identity.key_pem).is_err() {
            return Err(Error::invalid_input(
                "redis tls client key",
                "no PEM private key (PKCS#8, PKCS#1 or SEC1) found",
            ));
        }
    }
    Ok(())
}

#[cfg(not(feature = "tls"))]
fn tls_client(_: redis::ConnectionInfo, _: &crate::config::TlsOptions) -> Result<Client, Error> {
    Err(Error::invalid_input(
        "redis url",
        "rediss:// needs TLS support, which is the `tls` feature of mcp-authkit-store-redis \
         (on by default): enable it, or use redis:// on a trusted network",
    ))
}

/// The command connection: a `ConnectionManager` with one connection,
/// reconnected by itself after a drop, named `client_name` on every
/// (re)connect. The returned task renames (and so re-opens) the connection
/// after each drop; it runs until the handle is dropped.
pub(crate) async fn command_connection(
    client: &Client,
    settings: &Settings,
) -> Result<(ConnectionManager, AbortOnDrop), Error> {
    let (pushes, mut push_receiver) = mpsc::unbounded_channel::<PushInfo>();
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.response_timeout))
        // One attempt per reconnect: a command never waits through a backoff
        // series while the server is down; it fails (retryably) within the
        // connect timeout, and the renaming task below keeps reconnecting.
        .set_number_of_retries(0)
        .set_push_sender(pushes);
    let connect = async {
        let mut manager = ConnectionManager::new_with_config(client.clone(), config).await?;
        set_name(&mut manager, &settings.client_name).await?;
        RedisResult::Ok(manager)
    };
    let manager = tokio::time::timeout(settings.connect_timeout, connect)
        .await
        .map_err(|_| Error::Timeout {
            operation: "connecting to redis",
            after: settings.connect_timeout,
        })?
        .map_err(|e| connect_error(client, e))?;

    let renamer = {
        let mut manager = manager.clone();
        let name = settings.client_name.clone();
        tokio::spawn(async move {
            while let Some(push) = push_receiver.recv().await {
                if push.kind != PushKind::Disconnection {
                    continue;
                }
                let mut delay = Duration::from_millis(50);
                while let Err(error) = set_name(&mut manager, &name).await {
                    tracing::debug!(%error, "redis command connection is not back yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        })
    };
    Ok((manager, AbortOnDrop(renamer)))
}

/// A connection for the completion subscription: RESP3, so pushes arrive on
/// `pushes` (including a `Disconnection` push when it drops), named
/// `client_name`.
pub(crate) async fn subscription_connection(
    client: &Client,
    settings: &Settings,
    pushes: mpsc::UnboundedSender<PushInfo>,
) -> RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.response_timeout))
        .set_push_sender(pushes);
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    set_name(&mut connection, &settings.client_name).await?;
    Ok(connection)
}

async fn set_name(connection: &mut impl redis::aio::ConnectionLike, name: &str) -> RedisResult<()> {
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(name)
        .exec_async(connection)
        .await
}

/// A failed first connect: says where, and keeps the cause.
fn connect_error(client: &Client, error: redis::RedisError) -> Error {
    if matches!(error.kind(), redis::ErrorKind::AuthenticationFailed)
        || error.code() == Some("WRONGPASS")
        || error.code() == Some("NOAUTH")
    {
        return Error::invalid_input(
            "redis credentials",
            format!(
                "{} refused them: check the user and password in the URL",
                describe_addr(client)
            ),
        );
    }
    let retryable = error::is_retryable(&error);
    Error::Backend {
        backend: crate::BACKEND,
        operation: "connecting to redis",
        retryable,
        source: Arc::new(ConnectError {
            addr: describe_addr(client),
            source: error,
        }),
    }
}

/// A connect failure with the address it was for.
#[derive(Debug)]
struct ConnectError {
    addr: String,
    source: redis::RedisError,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "could not connect to {}: {}", self.addr, self.source)
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
