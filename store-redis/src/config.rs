//! The builder: URL, key prefix, timeouts, TLS material and clock.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::{Clock, Error, Result, SystemClock};

use crate::RedisStore;
use crate::connection::Settings;
use crate::keys::validate_prefix;

/// The key prefix used when none is set.
pub const DEFAULT_PREFIX: &str = "mcp-authkit";
/// The `CLIENT SETNAME` of our connections when none is set.
pub const DEFAULT_CLIENT_NAME: &str = "mcp-authkit";
/// How long opening a connection may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long Redis may take to answer one command by default.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a deleted token's revision is remembered by default.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);

/// PEM material for rediss:// connections to servers whose certificate is
/// not signed by a system root, or that require client certificates.
#[derive(Clone, Default)]
pub(crate) struct TlsOptions {
    pub(crate) root_certificates_pem: Option<Vec<u8>>,
    pub(crate) client_identity: Option<ClientIdentity>,
}

#[derive(Clone)]
pub(crate) struct ClientIdentity {
    pub(crate) certificate_pem: Vec<u8>,
    pub(crate) key_pem: Vec<u8>,
}

impl TlsOptions {
    pub(crate) fn is_set(&self) -> bool {
        self.root_certificates_pem.is_some() || self.client_identity.is_some()
    }
}

/// Configures and opens a [`RedisStore`]; see [`RedisStore::builder`].
#[must_use = "a builder does nothing until connect() is called"]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    client_name: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    tombstone_ttl: Duration,
    tls: TlsOptions,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for RedisStoreBuilder {
    // The URL may carry a password and the TLS options a private key: only
    // their presence is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("client_name", &self.client_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("tombstone_ttl", &self.tombstone_ttl)
            .field(
                "tls_root_certificates",
                &self.tls.root_certificates_pem.is_some(),
            )
            .field("tls_client_identity", &self.tls.client_identity.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        RedisStoreBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            client_name: DEFAULT_CLIENT_NAME.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            tls: TlsOptions::default(),
            clock: Arc::new(SystemClock),
        }
    }

    /// The namespace of every key (default [`DEFAULT_PREFIX`]). Stores with
    /// different prefixes on one server never see each other's data. No
    /// braces, whitespace or control characters.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The name our connections carry in `CLIENT LIST` (default
    /// [`DEFAULT_CLIENT_NAME`]); printable ASCII without spaces.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// How long opening a connection may take, on first connect and on every
    /// reconnect (default [`DEFAULT_CONNECT_TIMEOUT`]). An unreachable server
    /// is an error after this long, never a hang.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long Redis may take to answer one command before the call fails
    /// with a retryable error (default [`DEFAULT_RESPONSE_TIMEOUT`]).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long a deleted token's last revision is kept, so that a token
    /// written again under the same key continues above it even if the
    /// server clock stepped back (default [`DEFAULT_TOMBSTONE_TTL`]).
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    /// Trusts these PEM certificates (instead of the system roots) for a
    /// rediss:// server.
    pub fn tls_root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root_certificates_pem = Some(pem.into());
        self
    }

    /// Presents this PEM certificate chain and private key to a rediss://
    /// server that requires client certificates (`tls-auth-clients yes`).
    pub fn tls_client_identity_pem(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client_identity = Some(ClientIdentity {
            certificate_pem: certificate_pem.into(),
            key_pem: key_pem.into(),
        });
        self
    }

    /// The clock that decides whether a flow read back has expired (Redis
    /// also expires every flow by its own clock). The system clock by
    /// default; tests of code built on the lifecycle may pass a
    /// [`ManualClock`](mcp_authkit_core::ManualClock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Checks the settings, connects, and returns the store. Fails within
    /// the connect timeout when the server does not answer.
    pub async fn connect(self) -> Result<RedisStore> {
        validate_prefix(&self.prefix)?;
        validate_client_name(&self.client_name)?;
        for (what, value) in [
            ("redis connect timeout", self.connect_timeout),
            ("redis response timeout", self.response_timeout),
            ("redis tombstone ttl", self.tombstone_ttl),
        ] {
            if value.is_zero() {
                return Err(Error::invalid_input(what, "it must be longer than zero"));
            }
        }
        let target = crate::connection::target(&self.url, &self.tls)?;
        let settings = Settings {
            client_name: self.client_name,
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
        };
        RedisStore::open(
            target,
            settings,
            &self.prefix,
            self.tombstone_ttl,
            self.clock,
        )
        .await
    }
}

fn validate_client_name(name: &str) -> Result<()> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid_input(
            "redis client name",
            "Redis accepts printable ASCII without spaces, such as \"mcp-authkit\" or \"myapp-auth\"",
        ));
    }
    Ok(())
}
