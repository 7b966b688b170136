//! What the providers for grants without a user share
//! ([`ClientCredentialsProvider`](crate::client::ClientCredentialsProvider),
//! [`CrossAppAccessProvider`](crate::client::CrossAppAccessProvider)):
//! discovery of the MCP server's authorization server, the token in the
//! store, renewed before it expires with one token request at a time in the
//! process and across processes (the store's lease), and the answers to
//! `401` and `403`.
//!
//! There is no refresh token to use: a new token comes from the same grant,
//! asked again.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use mcp_authkit_core::{
    CasOutcome, Clock, LeaseGuard, OAuthError, OAuthErrorKind, Revision, StoredToken, SystemClock,
    Timestamp, TokenKey, TokenRecord, TokenResponse, TokenStore,
};
use url::Url;

use crate::client::challenge::AuthChallenge;
use crate::client::discovery::{
    AuthorizationServerMetadata, DiscoveryRecord, canonical_server_url, discover, stored_discovery,
};
use crate::client::error::{ClientAuthError, cap};
use crate::client::fetch::Fetcher;
use crate::client::oauth::{ClientCredentials, require_bearer, token_request};
use crate::client::oauth_provider::union;
use crate::client::provider::BearerToken;
use crate::client::records;
use crate::http::OAuthHttpClient;

/// How long a token request may take: shorter than the lease, so the lease
/// never runs out while its holder is still asking.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the store's lease on a token lasts if its holder dies.
const LEASE_TTL: Duration = Duration::from_secs(30);
/// How long to wait for another process's token request.
const LEASE_WAIT: Duration = Duration::from_secs(35);

/// A grant without a user: how a token is obtained from the MCP server's
/// authorization server.
#[async_trait]
pub(crate) trait Grant: Send + Sync + 'static {
    /// Its `grant_type` there (checked against `grant_types_supported`
    /// before any request).
    fn grant_type(&self) -> &'static str;

    /// A token for `scopes` (none: the server's default) for `target`.
    async fn request(
        &self,
        target: &GrantTarget<'_>,
        scopes: &[String],
    ) -> Result<TokenResponse, ClientAuthError>;
}

/// Where a grant asks, and for what.
pub(crate) struct GrantTarget<'a> {
    pub(crate) fetcher: &'a Fetcher,
    pub(crate) metadata: &'a AuthorizationServerMetadata,
    /// The RFC 8707 `resource` of the token: the MCP server.
    pub(crate) resource: &'a str,
    pub(crate) now: Timestamp,
}

impl<'a> GrantTarget<'a> {
    /// A request to the token endpoint as `credentials`, for `scopes` and
    /// the resource; its answer must be a bearer token.
    pub(crate) async fn request_token(
        &self,
        what: &'static str,
        credentials: &ClientCredentials,
        scopes: &[String],
        grant: crate::token_request::Grant<'_>,
    ) -> Result<TokenResponse, ClientAuthError> {
        let mut request = token_request(self.fetcher, self.metadata, what, credentials, self.now);
        request.scopes = scopes;
        request.extra.push(("resource", self.resource.to_owned()));
        Ok(require_bearer(what, request.send(grant).await?)?)
    }
}

/// The settings the builders of both providers share.
pub(crate) struct MachineBuilder {
    pub(crate) server: String,
    pub(crate) tokens: Option<Arc<dyn TokenStore>>,
    pub(crate) http: Option<OAuthHttpClient>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) namespace: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) refresh_skew: Duration,
    pub(crate) allow_insecure_http: bool,
    pub(crate) legacy_fallback: bool,
    pub(crate) max_step_ups: u32,
}

impl MachineBuilder {
    pub(crate) fn new(server: String, namespace: &str) -> Self {
        MachineBuilder {
            server,
            tokens: None,
            http: None,
            clock: Arc::new(SystemClock),
            namespace: namespace.to_owned(),
            scopes: Vec::new(),
            refresh_skew: Duration::from_secs(60),
            allow_insecure_http: false,
            legacy_fallback: true,
            max_step_ups: 10,
        }
    }

    /// Checks the shared settings; `what` names the provider in errors.
    pub(crate) fn build(
        self,
        what: &'static str,
        grant: Box<dyn Grant>,
    ) -> Result<Machine, ClientAuthError> {
        let server = canonical_server_url(&self.server)?;
        let tokens = self.tokens.ok_or_else(|| ClientAuthError::Config {
            what,
            reason: "no store: call .store(..) (or .token_store(..))".to_owned(),
        })?;
        let http = match self.http {
            Some(http) => http,
            None => OAuthHttpClient::new().map_err(|e| ClientAuthError::Config {
                what: "HTTP client",
                reason: format!("it could not be built ({e})"),
            })?,
        };
        let fetcher = Fetcher::new(http, self.allow_insecure_http, &server);
        Ok(Machine {
            server,
            tokens,
            fetcher,
            clock: self.clock,
            namespace: self.namespace,
            scopes: self.scopes,
            refresh_skew: self.refresh_skew,
            legacy_fallback: self.legacy_fallback,
            max_step_ups: self.max_step_ups,
            grant,
            target: RwLock::new(None),
            setup: tokio::sync::Mutex::new(()),
            requesting: tokio::sync::Mutex::new(()),
            step_ups: Mutex::new(0),
            declined: Mutex::new(BTreeSet::new()),
        })
    }
}

/// The setters both providers' builders share, documented once.
macro_rules! machine_builder_setters {
    () => {
        /// Keeps tokens and discovery results in `store` (a persistent or
        /// shared one keeps them across restarts and replicas).
        pub fn store<S: mcp_authkit_core::TokenStore>(mut self, store: S) -> Self {
            self.common.tokens = Some(std::sync::Arc::new(store));
            self
        }

        /// Keeps tokens and discovery results in this store.
        pub fn token_store(
            mut self,
            tokens: std::sync::Arc<dyn mcp_authkit_core::TokenStore>,
        ) -> Self {
            self.common.tokens = Some(tokens);
            self
        }

        /// Sends every request through this client (custom TLS roots,
        /// proxy); it must not follow redirects.
        pub fn http_client(mut self, http: $crate::http::OAuthHttpClient) -> Self {
            self.common.http = Some(http);
            self
        }

        /// Scopes every token request asks for, besides those the MCP
        /// server's challenge (or its `scopes_supported`) names.
        pub fn scopes<I, S>(mut self, scopes: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.common.scopes = scopes.into_iter().map(Into::into).collect();
            self
        }

        /// Prefixes every stored record's provider name; give each
        /// application (and each user, for cross-app access) its own.
        pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
            self.common.namespace = namespace.into();
            self
        }

        /// Renews tokens this long before they expire (at most half their
        /// lifetime). Default 60 s.
        pub fn refresh_skew(mut self, skew: std::time::Duration) -> Self {
            self.common.refresh_skew = skew;
            self
        }

        /// How many `403 insufficient_scope` step-ups this provider makes
        /// in its lifetime, whatever the scopes. Default 10.
        pub fn max_step_ups_per_session(mut self, step_ups: u32) -> Self {
            self.common.max_step_ups = step_ups;
            self
        }

        /// Falls back to 2025-03-26 discovery for MCP servers without
        /// Protected Resource Metadata. Default `true`.
        pub fn allow_2025_03_26_fallback(mut self, allow: bool) -> Self {
            self.common.legacy_fallback = allow;
            self
        }

        /// Accepts plain-HTTP authorization servers and metadata on any
        /// host. For development only.
        pub fn allow_insecure_http(mut self, allow: bool) -> Self {
            self.common.allow_insecure_http = allow;
            self
        }

        /// Reads time from `clock`.
        pub fn clock(mut self, clock: std::sync::Arc<dyn mcp_authkit_core::Clock>) -> Self {
            self.common.clock = clock;
            self
        }
    };
}
pub(crate) use machine_builder_setters;

/// What both providers expose of their machine: where they point, the
/// stored token's key, and the [`AuthProvider`](crate::client::AuthProvider)
/// answers.
macro_rules! machine_provider {
    ($provider:ident) => {
        impl $provider {
            /// The MCP server's URL.
            pub fn server_url(&self) -> &str {
                self.machine.server_url()
            }

            /// The authorization server in use, once discovered (or read
            /// back).
            pub fn issuer(&self) -> Option<String> {
                self.machine.issuer()
            }

            /// The resource tokens are requested for, once discovered.
            pub fn resource(&self) -> Option<String> {
                self.machine.resource()
            }

            /// The key the token is stored under, once discovered.
            pub fn token_key(&self) -> Option<mcp_authkit_core::TokenKey> {
                self.machine.token_key()
            }
        }

        impl std::fmt::Debug for $provider {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_tuple(stringify!($provider))
                    .field(&self.machine)
                    .finish()
            }
        }

        #[async_trait::async_trait]
        impl $crate::client::AuthProvider for $provider {
            async fn token(
                &self,
            ) -> Result<Option<$crate::client::BearerToken>, $crate::client::ClientAuthError> {
                self.machine.token().await
            }

            async fn handle_unauthorized(
                &self,
                challenge: &$crate::client::AuthChallenge,
            ) -> Result<$crate::client::BearerToken, $crate::client::ClientAuthError> {
                self.machine.handle_unauthorized(challenge).await
            }

            async fn handle_forbidden(
                &self,
                challenge: &$crate::client::AuthChallenge,
            ) -> Result<$crate::client::BearerToken, $crate::client::ClientAuthError> {
                self.machine.handle_forbidden(challenge).await
            }
        }
    };
}
pub(crate) use machine_provider;

/// The MCP server's authorization server, as discovery found it.
struct Target {
    issuer: String,
    resource: String,
    resource_metadata_url: Option<String>,
    /// The `resource_metadata` of the challenge that led here.
    challenge_metadata_url: Option<String>,
    scopes_supported: Option<Vec<String>>,
    metadata: AuthorizationServerMetadata,
    key: TokenKey,
    /// Discovered by this process (not read back from the store).
    live: bool,
}

/// A provider for a grant without a user, one MCP server.
pub(crate) struct Machine {
    server: Url,
    tokens: Arc<dyn TokenStore>,
    fetcher: Fetcher,
    clock: Arc<dyn Clock>,
    namespace: String,
    scopes: Vec<String>,
    refresh_skew: Duration,
    legacy_fallback: bool,
    max_step_ups: u32,
    grant: Box<dyn Grant>,
    target: RwLock<Option<Arc<Target>>>,
    /// One discovery at a time.
    setup: tokio::sync::Mutex<()>,
    /// One token request at a time in this process (the store's lease
    /// covers the others).
    requesting: tokio::sync::Mutex<()>,
    step_ups: Mutex<u32>,
    /// Scopes asked for in a step-up that the authorization server did not
    /// grant: asking again would get the same.
    declined: Mutex<BTreeSet<String>>,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = self.current();
        f.debug_struct("Machine")
            .field("server", &self.server.as_str())
            .field("grant_type", &self.grant.grant_type())
            .field("namespace", &self.namespace)
            .field("issuer", &target.as_ref().map(|t| t.issuer.clone()))
            .finish_non_exhaustive()
    }
}

impl Machine {
    pub(crate) fn server_url(&self) -> &str {
        self.server.as_str()
    }

    pub(crate) fn issuer(&self) -> Option<String> {
        self.current().map(|t| t.issuer.clone())
    }

    pub(crate) fn resource(&self) -> Option<String> {
        self.current().map(|t| t.resource.clone())
    }

    pub(crate) fn token_key(&self) -> Option<TokenKey> {
        self.current().map(|t| t.key.clone())
    }

    fn current(&self) -> Option<Arc<Target>> {
        self.target
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_current(&self, target: Arc<Target>) {
        *self.target.write().unwrap_or_else(|p| p.into_inner()) = Some(target);
    }

    fn discovery_key(&self) -> TokenKey {
        TokenKey::new(
            format!("{}/discovery", self.namespace),
            self.server.as_str(),
        )
    }

    fn new_target(
        &self,
        record: DiscoveryRecord,
        metadata: AuthorizationServerMetadata,
        live: bool,
    ) -> Target {
        let key = TokenKey::new(
            format!("{}:{}", self.namespace, metadata.issuer),
            record.resource.clone(),
        );
        Target {
            issuer: metadata.issuer.clone(),
            resource: record.resource,
            resource_metadata_url: record.resource_metadata_url,
            challenge_metadata_url: None,
            scopes_supported: record.scopes_supported,
            metadata,
            key,
            live,
        }
    }

    /// The target in memory, else the one a previous run stored.
    async fn stored_target(&self) -> Result<Option<Arc<Target>>, ClientAuthError> {
        if let Some(target) = self.current() {
            return Ok(Some(target));
        }
        let _setup = self.setup.lock().await;
        if let Some(target) = self.current() {
            return Ok(Some(target));
        }
        let Some(found) =
            stored_discovery(self.tokens.as_ref(), &self.discovery_key(), &self.fetcher).await?
        else {
            return Ok(None);
        };
        let target = Arc::new(self.new_target(found.record, found.metadata, false));
        self.set_current(Arc::clone(&target));
        Ok(Some(target))
    }

    /// Discovers (again) unless the target in memory was discovered by
    /// this process for the metadata the challenge names.
    async fn target_for(&self, challenge: &AuthChallenge) -> Result<Arc<Target>, ClientAuthError> {
        let keep = |target: &Target| {
            target.live
                && challenge.resource_metadata().is_none_or(|url| {
                    target.resource_metadata_url.as_deref() == Some(url)
                        || target.challenge_metadata_url.as_deref() == Some(url)
                })
        };
        if let Some(target) = self.current().filter(|t| keep(t)) {
            return Ok(target);
        }
        let _setup = self.setup.lock().await;
        if let Some(target) = self.current().filter(|t| keep(t)) {
            return Ok(target);
        }
        let found = discover(
            &self.fetcher,
            &self.server,
            challenge.resource_metadata(),
            self.legacy_fallback,
        )
        .await?;
        self.tokens
            .put(
                &self.discovery_key(),
                &records::encode(&found.record, self.clock.now()),
            )
            .await?;
        let mut target = self.new_target(found.record, found.metadata, true);
        target.challenge_metadata_url = challenge.resource_metadata().map(str::to_owned);
        let target = Arc::new(target);
        self.set_current(Arc::clone(&target));
        Ok(target)
    }

    /// Whether `record` should be renewed at `now`: within the skew of its
    /// expiry, the skew being at most half its lifetime (a 30-second token
    /// is not renewed on every request).
    fn needs_renewal(&self, record: &TokenRecord, now: Timestamp) -> bool {
        let Some(expires_at) = record.expires_at else {
            return false;
        };
        let lifetime = expires_at.saturating_duration_since(record.obtained_at);
        let skew = self.refresh_skew.min(lifetime / 2);
        expires_at <= now.saturating_add(skew)
    }

    /// The stored token if it can be used for `scopes`: not the refused
    /// one, not due for renewal, with the scopes.
    fn usable(
        &self,
        stored: &StoredToken,
        refused: Option<Revision>,
        scopes: &[String],
    ) -> Option<BearerToken> {
        let usable = Some(stored.revision) != refused
            && !self.needs_renewal(&stored.record, self.clock.now())
            && stored.record.has_scopes(scopes);
        usable.then(|| BearerToken::from_stored(stored))
    }

    async fn usable_now(
        &self,
        target: &Target,
        refused: Option<Revision>,
        scopes: &[String],
    ) -> Result<Option<BearerToken>, ClientAuthError> {
        Ok(self
            .tokens
            .get(&target.key)
            .await?
            .and_then(|stored| self.usable(&stored, refused, scopes)))
    }

    /// The scopes of a new token: the configured ones, the challenge's (or
    /// else the resource's `scopes_supported`), and what `granted` had.
    fn scopes_for(&self, target: &Target, named: Vec<String>, granted: &[String]) -> Vec<String> {
        let named = if named.is_empty() {
            target.scopes_supported.clone().unwrap_or_default()
        } else {
            named
        };
        union(&union(granted, &self.scopes), &named)
    }

    pub(crate) async fn token(&self) -> Result<Option<BearerToken>, ClientAuthError> {
        let Some(target) = self.stored_target().await? else {
            return Ok(None);
        };
        let stored = self.tokens.get(&target.key).await?;
        let scopes = match &stored {
            Some(stored) => {
                if let Some(token) = self.usable(stored, None, &[]) {
                    return Ok(Some(token));
                }
                stored.record.scopes.clone()
            }
            None => self.scopes_for(&target, Vec::new(), &[]),
        };
        match self.obtain(&target, scopes, None).await {
            Ok(token) => Ok(Some(token)),
            // Renewal failed, but the old token still works for a while.
            Err(error)
                if stored
                    .as_ref()
                    .is_some_and(|s| !s.record.is_expired_at(self.clock.now())) =>
            {
                tracing::warn!(%error, "renewing the token failed; using it until it expires");
                Ok(stored.as_ref().map(BearerToken::from_stored))
            }
            Err(error) => Err(error),
        }
    }

    pub(crate) async fn handle_unauthorized(
        &self,
        challenge: &AuthChallenge,
    ) -> Result<BearerToken, ClientAuthError> {
        let target = self.target_for(challenge).await?;
        let refused = challenge.rejected_token();
        let granted = refused.map(|t| t.scopes().to_vec()).unwrap_or_default();
        let scopes = self.scopes_for(&target, challenge.scopes(), &granted);
        self.obtain(&target, scopes, refused.and_then(BearerToken::revision))
            .await
    }

    pub(crate) async fn handle_forbidden(
        &self,
        challenge: &AuthChallenge,
    ) -> Result<BearerToken, ClientAuthError> {
        if !challenge.is_insufficient_scope() {
            return Err(ClientAuthError::Forbidden {
                error: challenge.error().map(cap),
                description: challenge.error_description().map(cap),
            });
        }
        let target = self.target_for(challenge).await?;
        let refused = challenge.rejected_token();
        let stored = self.tokens.get(&target.key).await?;
        let granted = match (refused, &stored) {
            (Some(token), _) if !token.scopes().is_empty() => token.scopes().to_vec(),
            (_, Some(stored)) => stored.record.scopes.clone(),
            _ => Vec::new(),
        };
        let scopes = self.scopes_for(&target, challenge.scopes(), &granted);
        let refused_revision = refused.and_then(BearerToken::revision);
        if let Some(stored) = &stored
            && let Some(token) = self.usable(stored, refused_revision, &scopes)
        {
            // A concurrent request already got these scopes.
            return Ok(token);
        }
        if refused.is_some() && scopes.iter().all(|s| granted.contains(s)) {
            // Refused for scopes the token has: asking again gets the same.
            return Err(ClientAuthError::StepUpLimit {
                scopes,
                attempts: 1,
            });
        }
        let declined: Vec<String> = {
            let declined = self.declined.lock().unwrap_or_else(|p| p.into_inner());
            scopes
                .iter()
                .filter(|s| declined.contains(*s))
                .cloned()
                .collect()
        };
        if !declined.is_empty() {
            return Err(ClientAuthError::ScopesNotGranted {
                missing: declined,
                granted,
            });
        }
        {
            let mut step_ups = self.step_ups.lock().unwrap_or_else(|p| p.into_inner());
            if *step_ups >= self.max_step_ups {
                return Err(ClientAuthError::TooManyPrompts {
                    limit: self.max_step_ups,
                    window: None,
                });
            }
            *step_ups += 1;
        }
        tracing::info!(?scopes, "stepping up scopes");
        let token = self
            .obtain(&target, scopes.clone(), refused_revision)
            .await?;
        let missing: Vec<String> = scopes
            .iter()
            .filter(|s| !token.scopes().contains(s))
            .cloned()
            .collect();
        if !missing.is_empty() {
            // The authorization server narrowed the grant: this client may
            // not have them, however often it asks.
            self.declined
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(missing.iter().cloned());
            return Err(ClientAuthError::ScopesNotGranted {
                missing,
                granted: token.scopes().to_vec(),
            });
        }
        Ok(token)
    }

    /// A token for `scopes` other than the refused one: one stored meanwhile
    /// by another request or process, else a new one from the grant, asked
    /// by one request at a time across every process sharing the store.
    async fn obtain(
        &self,
        target: &Target,
        scopes: Vec<String>,
        refused: Option<Revision>,
    ) -> Result<BearerToken, ClientAuthError> {
        let _one_here = self.requesting.lock().await;
        if let Some(token) = self.usable_now(target, refused, &scopes).await? {
            return Ok(token);
        }
        let deadline = tokio::time::Instant::now() + LEASE_WAIT;
        let mut backoff = Duration::from_millis(5);
        let lease = loop {
            if let Some(lease) =
                LeaseGuard::try_acquire(Arc::clone(&self.tokens), target.key.clone(), LEASE_TTL)
                    .await?
            {
                break lease;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
            if let Some(token) = self.usable_now(target, refused, &scopes).await? {
                return Ok(token);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientAuthError::TimedOut {
                    what: "waiting for another process's token request",
                    after: LEASE_WAIT,
                });
            }
        };
        let result = self.request_holding_lease(target, scopes, refused).await;
        if let Err(error) = lease.release().await {
            tracing::warn!(%error, "could not release the token lease; it expires by its TTL");
        }
        result
    }

    async fn request_holding_lease(
        &self,
        target: &Target,
        scopes: Vec<String>,
        refused: Option<Revision>,
    ) -> Result<BearerToken, ClientAuthError> {
        let previous = self.tokens.get(&target.key).await?;
        if let Some(token) = previous
            .as_ref()
            .and_then(|p| self.usable(p, refused, &scopes))
        {
            return Ok(token);
        }
        target.metadata.require_grant(self.grant.grant_type())?;
        let request = GrantTarget {
            fetcher: &self.fetcher,
            metadata: &target.metadata,
            resource: &target.resource,
            now: self.clock.now(),
        };
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.grant.request(&request, &scopes))
            .await
            .unwrap_or_else(|_| {
                Err(ClientAuthError::Authorization(OAuthError::new(
                    OAuthErrorKind::Transient,
                    format!("the token request did not finish within {REQUEST_TIMEOUT:?}"),
                )))
            })?;
        let record = response.into_record(self.clock.now(), &scopes);
        let revision = match self
            .tokens
            .compare_and_swap(&target.key, previous.map(|p| p.revision), &record)
            .await?
        {
            CasOutcome::Swapped(revision) => revision,
            // Written while this process held the lease: only when the
            // lease ran out under a slow request. Ours is the newest.
            CasOutcome::Conflict { .. } => self.tokens.put(&target.key, &record).await?,
        };
        tracing::debug!(grant_type = self.grant.grant_type(), "obtained a token");
        Ok(BearerToken::from_stored(&StoredToken { record, revision }))
    }
}
