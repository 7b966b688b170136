//! Opening connections: the command connection (a redis-rs
//! `ConnectionManager`, which reconnects by itself) and the dedicated
//! subscription connection that [`crate::subscription`] keeps up.

use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::Error;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, PushInfo, PushKind, RedisResult, Value,
};
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
    install_crypto_provider();
    if !tls.is_set() {
        return Client::open(info).map_err(|e| Error::invalid_input("redis url", e.to_string()));
    }
    check_pem(tls)?;
    Client::build_with_tls(info, certificates(tls)).map_err(|e| {
        Error::invalid_input(
            "redis tls options",
            format!(
                "{} (certificates and keys must be PEM)",
                e.detail().unwrap_or("unusable")
            ),
        )
    })
}

/// redis-rs builds its rustls config on the process-wide crypto provider.
/// rustls picks one by itself only when exactly one provider is compiled
/// in; applications that also link `ring` (through another dependency)
/// would panic there, so install ours unless they chose one.
#[cfg(feature = "tls")]
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: one is installed.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

#[cfg(feature = "tls")]
fn certificates(tls: &crate::config::TlsOptions) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: tls
            .client_identity
            .as_ref()
            .map(|identity| redis::ClientTlsConfig {
                client_cert: identity.certificate_pem.clone(),
                client_key: identity.key_pem.clone(),
            }),
        root_cert: tls.root_certificates_pem.clone(),
    }
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
    let connect = async {
        let mut manager = connect.await.map_err(|e| connect_error(client, e))?;
        refuse_cluster_node(client, &mut manager).await?;
        Ok::<_, Error>(manager)
    };
    let manager = tokio::time::timeout(settings.connect_timeout, connect)
        .await
        .map_err(|_| Error::Timeout {
            operation: "connecting to redis",
            after: settings.connect_timeout,
        })??;

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

/// The URL schemes that ask for Redis Cluster.
const CLUSTER_SCHEME: &str = "redis+cluster://";
const CLUSTER_TLS_SCHEME: &str = "rediss+cluster://";

/// Where a store connects: one server, or a Redis Cluster through seed nodes.
#[derive(Clone)]
pub(crate) enum Target {
    Single(Client),
    Cluster(ClusterTarget),
}

impl Target {
    /// The address for messages (never a password).
    pub(crate) fn describe(&self) -> String {
        match self {
            Target::Single(client) => describe_addr(client),
            Target::Cluster(cluster) => cluster.describe(),
        }
    }
}

/// The seed nodes of a cluster and how to reach them. Every node the
/// cluster client learns of later is reached with the same credentials and
/// TLS settings.
#[derive(Clone)]
pub(crate) struct ClusterTarget {
    nodes: Vec<redis::ConnectionInfo>,
    tls: crate::config::TlsOptions,
}

impl ClusterTarget {
    fn describe(&self) -> String {
        let scheme = match self.nodes.first().map(|n| n.addr()) {
            Some(ConnectionAddr::TcpTls { .. }) => CLUSTER_TLS_SCHEME,
            _ => CLUSTER_SCHEME,
        };
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|node| match node.addr() {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    format!("{host}:{port}")
                }
                other => other.to_string(),
            })
            .collect();
        format!("{scheme}{}", nodes.join(","))
    }

    /// A cluster client: RESP3, our timeouts, few quick retries (a command
    /// never waits through a long backoff series while a shard fails over:
    /// it fails retryably within the response timeout). `pushes` receives
    /// the pub/sub messages of every node. The retries also re-send a
    /// request whose connection dropped after it was sent: see "Re-sent
    /// commands" in the crate docs for what that means for each operation.
    pub(crate) fn client(
        &self,
        settings: &Settings,
        pushes: Option<mpsc::UnboundedSender<PushInfo>>,
    ) -> Result<redis::cluster::ClusterClient, Error> {
        let mut builder = redis::cluster::ClusterClientBuilder::new(self.nodes.clone())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .connection_timeout(settings.connect_timeout)
            .response_timeout(settings.response_timeout)
            .overall_response_timeout(Some(settings.response_timeout))
            .retries(4)
            .min_retry_wait(20)
            .max_retry_wait(400);
        #[cfg(feature = "tls")]
        if self.tls.is_set() {
            check_pem(&self.tls)?;
            builder = builder.certs(certificates(&self.tls));
        }
        if let Some(pushes) = pushes {
            builder = builder.push_sender(pushes);
        }
        builder.build().map_err(|e| {
            Error::invalid_input(
                "redis cluster url",
                e.detail().unwrap_or("unusable").to_owned(),
            )
        })
    }
}

/// Parses a URL: `redis+cluster://` / `rediss+cluster://` (a comma-separated
/// list of seed nodes) asks for a cluster, anything else is one server.
pub(crate) fn target(url: &str, tls: &crate::config::TlsOptions) -> Result<Target, Error> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix(CLUSTER_TLS_SCHEME) {
        ("rediss", rest)
    } else {
        return client(url, tls).map(Target::Single);
    };
    let usage = "expected redis+cluster://[user:password@]host:port[,host:port...] \
                 (or rediss+cluster:// for TLS)";
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((credentials, hosts)) => (Some(credentials), hosts),
        None => (None, rest),
    };
    let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
    let hosts = hosts.strip_suffix("/0").unwrap_or(hosts);
    if hosts.contains('/') || hosts.contains('?') {
        return Err(Error::invalid_input(
            "redis cluster url",
            format!("{usage}; a cluster has only database 0 and takes no options"),
        ));
    }
    let mut nodes = Vec::new();
    for host in hosts.split(',').filter(|h| !h.is_empty()) {
        let node = match credentials {
            Some(credentials) => format!("{scheme}://{credentials}@{host}"),
            None => format!("{scheme}://{host}"),
        };
        let info: redis::ConnectionInfo = node.parse().map_err(|e: redis::RedisError| {
            Error::invalid_input(
                "redis cluster url",
                format!(
                    "node {host}: {} ({usage})",
                    e.detail().unwrap_or("it does not parse")
                ),
            )
        })?;
        nodes.push(info);
    }
    if nodes.is_empty() {
        return Err(Error::invalid_input(
            "redis cluster url",
            format!("no node given; {usage}"),
        ));
    }
    if scheme == "rediss" && cfg!(not(feature = "tls")) {
        return Err(Error::invalid_input(
            "redis url",
            "rediss+cluster:// needs TLS support, which is the `tls` feature of \
             mcp-authkit-store-redis (on by default)",
        ));
    }
    if scheme == "redis" && tls.is_set() {
        return Err(Error::invalid_input(
            "redis tls options",
            "TLS certificates were given for a URL without TLS: use a rediss+cluster:// URL",
        ));
    }
    #[cfg(feature = "tls")]
    if scheme == "rediss" {
        install_crypto_provider();
    }
    Ok(Target::Cluster(ClusterTarget {
        nodes,
        tls: tls.clone(),
    }))
}

/// The command connection of a cluster: redis-rs's cluster client, which
/// keeps one multiplexed connection per node, routes each command to its
/// slot's master and follows MOVED/ASK and failovers by itself.
pub(crate) async fn cluster_connection(
    target: &ClusterTarget,
    settings: &Settings,
) -> Result<redis::cluster_async::ClusterConnection, Error> {
    let client = target.client(settings, None)?;
    let connect = async {
        let mut connection = client.get_async_connection().await?;
        redis::cmd("PING").exec_async(&mut connection).await?;
        name_cluster_connections(&mut connection, &settings.client_name).await;
        RedisResult::Ok(connection)
    };
    tokio::time::timeout(settings.connect_timeout, connect)
        .await
        .map_err(|_| Error::Timeout {
            operation: "connecting to the redis cluster",
            after: settings.connect_timeout,
        })?
        .map_err(|e| cluster_connect_error(target, e))
}

/// Names the node connections a cluster connection holds now (`CLIENT
/// SETNAME` on every node). Best effort: redis-rs opens node connections by
/// itself (a new node, a reconnect), and those stay unnamed.
pub(crate) async fn name_cluster_connections(
    connection: &mut redis::cluster_async::ClusterConnection,
    name: &str,
) {
    use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
    let mut setname = redis::cmd("CLIENT");
    setname.arg("SETNAME").arg(name);
    let every_node = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None));
    if let Err(error) = connection.route_command(setname, every_node).await {
        tracing::debug!(%error, "could not name the cluster connections");
    }
}

/// A failed first connect to a cluster, with what to do about it.
fn cluster_connect_error(target: &ClusterTarget, error: redis::RedisError) -> Error {
    let text = error.to_string();
    if text.contains("cluster support disabled") {
        return Error::invalid_input(
            "redis url",
            format!(
                "{} names a single Redis server (cluster support disabled), not a cluster: \
                 use a redis:// URL for it",
                target.describe()
            ),
        );
    }
    if matches!(error.kind(), redis::ErrorKind::AuthenticationFailed)
        || error.code() == Some("WRONGPASS")
        || error.code() == Some("NOAUTH")
    {
        return Error::invalid_input(
            "redis credentials",
            format!(
                "{} refused them: check the user and password in the URL",
                target.describe()
            ),
        );
    }
    // redis-rs's cluster client keeps only the text of the node errors
    // behind "Failed to create initial connections", so a refused
    // certificate (rustls's words) is recognised by it: no retry makes an
    // untrusted certificate trusted.
    let refused_certificate = text.contains("invalid peer certificate");
    Error::Backend {
        backend: crate::BACKEND,
        operation: "connecting to the redis cluster",
        retryable: !refused_certificate && error::is_retryable(&error),
        source: Arc::new(ConnectError {
            addr: target.describe(),
            source: error,
        }),
    }
}

/// Refuses a single-server URL that names a cluster node: such a store would
/// fail with MOVED on every key another shard serves. A user whose ACL
/// forbids `INFO` skips the check.
async fn refuse_cluster_node(
    client: &Client,
    manager: &mut ConnectionManager,
) -> Result<(), Error> {
    let info: RedisResult<String> = redis::cmd("INFO").arg("cluster").query_async(manager).await;
    match info {
        Ok(info) if info.lines().any(|line| line.trim() == "cluster_enabled:1") => {
            let (ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. }) =
                client.get_connection_info().addr()
            else {
                return Ok(());
            };
            Err(Error::invalid_input(
                "redis url",
                format!(
                    "{} is a Redis Cluster node: use redis+cluster://{host}:{port} \
                     (with TLS: rediss+cluster://), so every key reaches its shard",
                    describe_addr(client)
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// The store's command connection, single server or cluster.
#[derive(Clone)]
pub(crate) enum Commands {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Commands::Single(connection) => connection.req_packed_command(cmd),
            Commands::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(connection) => connection.get_db(),
            Commands::Cluster(connection) => connection.get_db(),
        }
    }
}
