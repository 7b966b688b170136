//! The token lifecycle: serve, refresh, invalidate, and authorize through a
//! flow, on top of any [`TokenStore`], [`PendingStore`] and [`OAuthClient`].
//!
//! One [`TokenLifecycle`] serves one integration (one provider name, one
//! OAuth client) for every subject. Several processes (replicas) may each run
//! one over the same stores; they coordinate through the store alone.
//!
//! # Refresh
//!
//! A token within [`LifecycleConfig::refresh_skew`] of its expiry is
//! refreshed once, however many callers ask at the same time:
//!
//! 1. inside a process, concurrent callers for one subject share one refresh
//!    task (it is spawned, so a caller that gives up does not cancel a
//!    refresh the server may already have performed and rotated);
//! 2. across processes, that task takes the store's refresh lease for the key
//!    and then reads the token again: when another replica refreshed it in
//!    the meantime, its token is used and no second refresh is sent.
//!
//! Failures are classified: `invalid_grant` removes the token (by revision,
//! so a token another replica just refreshed survives) and asks for a new
//! authorization; anything else never deletes the token, and a token that
//! has not expired yet keeps being served while refreshes are retried after
//! [`LifecycleConfig::refresh_retry_after`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::watch;
use tracing::{Instrument, debug, info_span, warn};
use url::Url;

use crate::error::{Error, OAuthError, OAuthErrorKind, Result};
use crate::flow::{FlowOutcome, FlowState, InsertOutcome, PendingFlow};
use crate::oauth::{AuthorizationRequest, OAuthClient};
use crate::observe::{self, FlowBook, Observed, names};
use crate::record::{Revision, StoredToken, TokenKey, TokenRecord};
use crate::store::{CasOutcome, LeaseGuard, PendingStore, TokenStore};
use crate::time::{Clock, SystemClock, Timestamp};

/// Timing and defaults of a [`TokenLifecycle`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LifecycleConfig {
    /// Refresh a token this long before it expires. Default 60 s.
    pub refresh_skew: Duration,
    /// How long a started flow waits for its callback. Default 10 min.
    pub flow_ttl: Duration,
    /// How long a flow's outcome stays readable after completion, so a
    /// client that retries after the flow still learns how it ended.
    /// Default 2 min.
    pub outcome_ttl: Duration,
    /// How long a refresh lease lasts if its holder dies. Default 30 s.
    pub lease_ttl: Duration,
    /// How long to wait for another process's refresh before giving up.
    /// Default 35 s (a little over `lease_ttl`, so a dead holder's lease
    /// runs out while we wait).
    pub lease_wait: Duration,
    /// Limit on one refresh request. Must be shorter than `lease_ttl`, so the
    /// lease never runs out while its holder is still refreshing. Default 20 s.
    pub refresh_timeout: Duration,
    /// After a refresh failed without `invalid_grant`, serve the still-valid
    /// token this long before trying again. Default 5 s.
    pub refresh_retry_after: Duration,
    /// Scopes requested when a flow does not name its own.
    pub scopes: Vec<String>,
    /// The redirect URI flows use unless they name their own.
    pub redirect_uri: String,
}

impl LifecycleConfig {
    /// The defaults, with the integration's redirect URI and scopes.
    pub fn new(redirect_uri: impl Into<String>, scopes: Vec<String>) -> Self {
        LifecycleConfig {
            refresh_skew: Duration::from_secs(60),
            flow_ttl: Duration::from_secs(600),
            outcome_ttl: Duration::from_secs(120),
            lease_ttl: Duration::from_secs(30),
            lease_wait: Duration::from_secs(35),
            refresh_timeout: Duration::from_secs(20),
            refresh_retry_after: Duration::from_secs(5),
            scopes,
            redirect_uri: redirect_uri.into(),
        }
    }

    fn validate(&self) -> Result<()> {
        if self.refresh_timeout >= self.lease_ttl {
            return Err(Error::invalid_input(
                "lifecycle config",
                format!(
                    "refresh_timeout ({:?}) must be shorter than lease_ttl ({:?}), or a slow refresh \
                     could outlive its lease and race another replica",
                    self.refresh_timeout, self.lease_ttl
                ),
            ));
        }
        for (name, value) in [
            ("flow_ttl", self.flow_ttl),
            ("lease_ttl", self.lease_ttl),
            ("outcome_ttl", self.outcome_ttl),
        ] {
            if value.is_zero() {
                return Err(Error::invalid_input(
                    "lifecycle config",
                    format!("{name} must be greater than zero"),
                ));
            }
        }
        Ok(())
    }
}

/// A usable access token.
#[derive(Clone)]
pub struct AccessToken {
    token: SecretString,
    token_type: String,
    revision: Revision,
    expires_at: Option<Timestamp>,
    scopes: Vec<String>,
}

impl AccessToken {
    fn from_record(record: &TokenRecord, revision: Revision) -> Self {
        AccessToken {
            token: record.access_token.clone(),
            token_type: record.token_type.clone(),
            revision,
            expires_at: record.expires_at,
            scopes: record.scopes.clone(),
        }
    }

    fn from_stored(stored: &StoredToken) -> Self {
        Self::from_record(&stored.record, stored.revision)
    }

    /// Takes the parts it needs out of a read it owns: the hot path copies
    /// no string (the secret, type and scopes move).
    fn from_owned(stored: StoredToken) -> Self {
        let StoredToken { record, revision } = stored;
        AccessToken {
            token: record.access_token,
            token_type: record.token_type,
            revision,
            expires_at: record.expires_at,
            scopes: record.scopes,
        }
    }

    /// The secret token (use `secrecy::ExposeSecret` to send it).
    pub fn secret(&self) -> &SecretString {
        &self.token
    }

    /// The token type, usually `"Bearer"`.
    pub fn token_type(&self) -> &str {
        &self.token_type
    }

    /// The stored revision: pass it to [`TokenLifecycle::invalidate`] when an
    /// API refuses this token, so a newer token is never removed by mistake.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// When it expires, if known.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.expires_at
    }

    /// The granted scopes.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("revision", &self.revision)
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// Why the user has to authorize (again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthorizationReason {
    /// No token is stored.
    NoToken,
    /// The token expired and cannot be refreshed.
    Expired,
    /// The authorization server rejected the refresh token (`invalid_grant`).
    RefreshRejected,
}

/// The answer of [`TokenLifecycle::access`].
#[derive(Clone, Debug)]
pub enum Access {
    /// A token to use now.
    Ready(AccessToken),
    /// The user must authorize: begin (or join) a flow.
    NeedsAuthorization(AuthorizationReason),
}

/// Options of a new flow; the defaults come from the [`LifecycleConfig`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct FlowRequest {
    /// Scopes to request instead of the configured ones.
    pub scopes: Option<Vec<String>>,
    /// Redirect URI instead of the configured one (e.g. a loopback listener's
    /// port chosen at run time).
    pub redirect_uri: Option<String>,
    /// Who starts the flow (an MCP session id, ...).
    pub started_by: Option<String>,
    /// Application data that travels with the flow.
    pub attributes: BTreeMap<String, String>,
}

impl FlowRequest {
    /// Requests these scopes.
    pub fn scopes(mut self, scopes: Vec<String>) -> Self {
        self.scopes = Some(scopes);
        self
    }

    /// Uses this redirect URI.
    pub fn redirect_uri(mut self, redirect_uri: impl Into<String>) -> Self {
        self.redirect_uri = Some(redirect_uri.into());
        self
    }

    /// Records who starts the flow.
    pub fn started_by(mut self, started_by: impl Into<String>) -> Self {
        self.started_by = Some(started_by.into());
        self
    }

    /// Adds an application attribute.
    pub fn attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }
}

/// The answer of [`TokenLifecycle::begin_authorization`].
#[derive(Clone, Debug)]
pub enum BeginOutcome {
    /// A new flow: send the user to it.
    Started(PendingFlow),
    /// Another caller's flow for the same key is waiting for the user: show
    /// the same flow and wait on it, instead of opening a second one.
    Joined(PendingFlow),
    /// Another caller's flow for the same key is receiving its callback right
    /// now: just wait on it.
    Completing(FlowState),
}

impl BeginOutcome {
    /// The state to wait on.
    pub fn state(&self) -> &FlowState {
        match self {
            BeginOutcome::Started(flow) | BeginOutcome::Joined(flow) => &flow.state,
            BeginOutcome::Completing(state) => state,
        }
    }

    /// The flow, unless it is already being completed.
    pub fn flow(&self) -> Option<&PendingFlow> {
        match self {
            BeginOutcome::Started(flow) | BeginOutcome::Joined(flow) => Some(flow),
            BeginOutcome::Completing(_) => None,
        }
    }
}

/// The query parameters of an authorization response (RFC 6749 section 4.1.2).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CallbackParams {
    /// `state`.
    pub state: FlowState,
    /// `code` on success.
    pub code: Option<SecretString>,
    /// `error` on failure (`access_denied`, ...).
    pub error: Option<String>,
    /// `error_description`.
    pub error_description: Option<String>,
    /// `iss` (RFC 9207).
    pub iss: Option<String>,
}

impl CallbackParams {
    /// A successful response.
    pub fn success(state: FlowState, code: impl Into<String>) -> Self {
        CallbackParams {
            state,
            code: Some(SecretString::from(code.into())),
            error: None,
            error_description: None,
            iss: None,
        }
    }

    /// An error response.
    pub fn error(state: FlowState, error: impl Into<String>, description: Option<String>) -> Self {
        CallbackParams {
            state,
            code: None,
            error: Some(error.into()),
            error_description: description,
            iss: None,
        }
    }

    /// Adds the `iss` parameter.
    pub fn with_iss(mut self, iss: impl Into<String>) -> Self {
        self.iss = Some(iss.into());
        self
    }
}

/// A flow that a callback ended.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CompletedFlow {
    /// Whose token it was for.
    pub key: TokenKey,
    /// The flow's state.
    pub state: FlowState,
    /// The flow's elicitation id (for the client's completion notice).
    pub elicitation_id: String,
    /// Who started it.
    pub started_by: Option<String>,
    /// How it ended.
    pub outcome: FlowOutcome,
}

type RefreshResult = Option<Result<Access>>;

struct Inner {
    provider: String,
    /// The same name, shared by every key this lifecycle builds.
    provider_key: Arc<str>,
    /// The `provider` of metric labels and span fields.
    label: String,
    oauth: Arc<dyn OAuthClient>,
    tokens: Arc<dyn TokenStore>,
    /// The same store as `tokens`, by its type, for the valid-token read.
    observed_tokens: Arc<Observed<dyn TokenStore>>,
    pending: Arc<dyn PendingStore>,
    clock: Arc<dyn Clock>,
    config: LifecycleConfig,
    /// Refreshes running in this process, by subject; joiners wait on them.
    inflight: Mutex<HashMap<String, watch::Receiver<RefreshResult>>>,
    /// Subjects whose last refresh failed transiently, until when to wait.
    retry_after: Mutex<HashMap<String, Timestamp>>,
    /// Flows as this process sees them: the pending gauge, wake latency.
    flows: FlowBook,
}

/// Takes a flow taken from the pending store out of this process's
/// [`FlowBook`] when dropped, however its completion went, and counts its
/// one end.
///
/// The take is the flow's end (no one else can have it any more), so the
/// count must not hang on the store call that follows: a flow whose
/// outcome was stored counts as that outcome
/// ([`completed`](Self::completed)); one whose completion failed or whose
/// future was dropped before it finished counts as `failed` here, or
/// started minus completed would keep it open forever.
struct EndsFlow<'a> {
    inner: &'a Inner,
    state: &'a FlowState,
    counted: bool,
}

impl<'a> EndsFlow<'a> {
    fn new(inner: &'a Inner, state: &'a FlowState) -> Self {
        EndsFlow {
            inner,
            state,
            counted: false,
        }
    }

    /// The flow's outcome is stored: counts it as `outcome`.
    fn completed(mut self, outcome: &'static str) {
        self.count(outcome);
    }

    fn count(&mut self, outcome: &'static str) {
        self.counted = true;
        observe::count(
            names::FLOWS_COMPLETED,
            &self.inner.label,
            Some(("outcome", outcome)),
        );
    }
}

impl Drop for EndsFlow<'_> {
    fn drop(&mut self) {
        self.inner.flows.ended(self.state, self.inner.clock.now());
        if !self.counted {
            self.count("failed");
        }
    }
}

/// Builds a [`TokenLifecycle`].
pub struct TokenLifecycleBuilder {
    provider: String,
    label: Option<String>,
    oauth: Arc<dyn OAuthClient>,
    tokens: Arc<dyn TokenStore>,
    pending: Arc<dyn PendingStore>,
    clock: Arc<dyn Clock>,
    config: LifecycleConfig,
}

impl TokenLifecycleBuilder {
    /// Reads time from `clock` (a [`ManualClock`](crate::ManualClock) in tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: LifecycleConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the refresh skew.
    pub fn refresh_skew(mut self, skew: Duration) -> Self {
        self.config.refresh_skew = skew;
        self
    }

    /// Sets how long flows stay valid.
    pub fn flow_ttl(mut self, ttl: Duration) -> Self {
        self.config.flow_ttl = ttl;
        self
    }

    /// Names this lifecycle in metric labels and span fields (`provider`),
    /// in place of its provider name.
    ///
    /// The provider name is the default and right for a fixed name such as
    /// `github`. A provider name built from something discovered (the MCP
    /// client's is `{namespace}:{issuer}`, an issuer URL) must not become a
    /// label: labels stay a small, fixed set and never hold a URL.
    pub fn metrics_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Checks the configuration and builds.
    pub fn build(self) -> Result<TokenLifecycle> {
        self.config.validate()?;
        // Every store call of the lifecycle (and of the providers built on
        // it) goes through these: one place for spans and store metrics.
        let token_backend = self.tokens.backend_name();
        let pending_backend = self.pending.pending_backend_name();
        let observed_tokens = Arc::new(Observed::new(self.tokens, token_backend));
        let tokens: Arc<dyn TokenStore> = observed_tokens.clone();
        let pending: Arc<dyn PendingStore> = Arc::new(Observed::new(self.pending, pending_backend));
        let label = self.label.unwrap_or_else(|| self.provider.clone());
        let flows = FlowBook::new(&label, pending_backend);
        Ok(TokenLifecycle {
            inner: Arc::new(Inner {
                provider_key: Arc::from(self.provider.as_str()),
                label,
                provider: self.provider,
                oauth: self.oauth,
                tokens,
                observed_tokens,
                pending,
                clock: self.clock,
                config: self.config,
                inflight: Mutex::new(HashMap::new()),
                retry_after: Mutex::new(HashMap::new()),
                flows,
            }),
        })
    }
}

/// The token lifecycle of one integration; cheap to clone.
///
/// ```
/// # use std::sync::Arc;
/// # use mcp_authkit_core::*;
/// # async fn demo(
/// #     oauth: Arc<dyn OAuthClient>,
/// #     tokens: Arc<dyn TokenStore>,
/// #     pending: Arc<dyn PendingStore>,
/// # ) -> Result<()> {
/// let config = LifecycleConfig::new("https://mcp.example/github/callback", vec!["repo".into()]);
/// let github = TokenLifecycle::builder("github", oauth, tokens, pending)
///     .config(config)
///     .build()?;
///
/// match github.access("user-42").await? {
///     Access::Ready(token) => { /* call the API with token.secret() */ }
///     Access::NeedsAuthorization(_) => {
///         let begun = github.begin_authorization("user-42", FlowRequest::default()).await?;
///         if let Some(flow) = begun.flow() {
///             let url = github.authorization_url(flow)?;
///             // send the user to `url` (through your connect page), then:
///         }
///         let outcome = github.wait(begun.state(), std::time::Duration::from_secs(120)).await?;
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TokenLifecycle {
    inner: Arc<Inner>,
}

impl fmt::Debug for TokenLifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLifecycle")
            .field("provider", &self.inner.provider)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Removes a subject's in-flight refresh entry when the refresh task ends,
/// also when it panics, so later callers start a new refresh.
struct InflightEntry {
    inner: Arc<Inner>,
    subject: String,
}

impl Drop for InflightEntry {
    fn drop(&mut self) {
        lock(&self.inner.inflight).remove(&self.subject);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps hold no invariant a panicking holder could break halfway.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TokenLifecycle {
    /// Starts building the lifecycle of `provider`.
    pub fn builder(
        provider: impl Into<String>,
        oauth: Arc<dyn OAuthClient>,
        tokens: Arc<dyn TokenStore>,
        pending: Arc<dyn PendingStore>,
    ) -> TokenLifecycleBuilder {
        TokenLifecycleBuilder {
            provider: provider.into(),
            label: None,
            oauth,
            tokens,
            pending,
            clock: Arc::new(SystemClock),
            config: LifecycleConfig::new(String::new(), Vec::new()),
        }
    }

    /// The provider name every key of this lifecycle carries.
    pub fn provider(&self) -> &str {
        &self.inner.provider
    }

    /// The configuration.
    pub fn config(&self) -> &LifecycleConfig {
        &self.inner.config
    }

    /// The token store.
    pub fn token_store(&self) -> &Arc<dyn TokenStore> {
        &self.inner.tokens
    }

    /// The pending store.
    pub fn pending_store(&self) -> &Arc<dyn PendingStore> {
        &self.inner.pending
    }

    /// The key of `subject`'s token.
    pub fn key(&self, subject: &str) -> TokenKey {
        TokenKey::shared(&self.inner.provider_key, subject.to_owned())
    }

    /// A token for `subject`, refreshed first if it is about to expire, or
    /// why the user has to authorize.
    ///
    /// A valid token costs one store read and no network I/O.
    pub async fn access(&self, subject: &str) -> Result<Access> {
        self.access_key(&self.key(subject)).await
    }

    /// [`access`](Self::access) for a caller that owns the subject and
    /// needs it back (a provider returns it with the token): the key holds
    /// the subject itself, so the read copies no string.
    pub async fn access_owned(&self, subject: String) -> (Result<Access>, String) {
        let key = TokenKey::shared(&self.inner.provider_key, subject);
        let access = self.access_key(&key).await;
        (access, key.into_subject())
    }

    async fn access_key(&self, key: &TokenKey) -> Result<Access> {
        // The observed store's own method: no second boxed future.
        let Some(stored) = self.inner.observed_tokens.get_direct(key).await? else {
            self.inner.flows.tick_with(|| self.inner.clock.now());
            return Ok(Access::NeedsAuthorization(AuthorizationReason::NoToken));
        };
        if stored.record.expires_at.is_none() {
            // A token that never expires (GitHub's OAuth apps) needs no
            // clock: reading the wall clock is a tenth of the raw read.
            self.inner.flows.tick_with(|| self.inner.clock.now());
            return Ok(Access::Ready(AccessToken::from_owned(stored)));
        }
        let now = self.inner.clock.now();
        // Expired flows leave the pending gauge here at the latest, not only
        // at this lifecycle's next flow event.
        self.inner.flows.tick(now);
        if !self.needs_refresh(&stored.record, now) {
            return Ok(Access::Ready(AccessToken::from_owned(stored)));
        }
        let subject = key.subject();
        let expired = stored.record.is_expired_at(now);
        let refreshable =
            stored.record.refresh_token.is_some() && self.inner.oauth.supports_refresh();
        if !refreshable {
            return Ok(if expired {
                Access::NeedsAuthorization(AuthorizationReason::Expired)
            } else {
                Access::Ready(AccessToken::from_stored(&stored))
            });
        }
        if !expired && self.backing_off(subject, now) {
            return Ok(Access::Ready(AccessToken::from_stored(&stored)));
        }
        self.refresh_single_flight(subject, stored).await
    }

    /// Stores a token obtained some other way; returns its revision.
    pub async fn store_token(&self, subject: &str, record: &TokenRecord) -> Result<Revision> {
        self.inner.tokens.put(&self.key(subject), record).await
    }

    /// The stored token of `subject`, as is (no refresh).
    pub async fn stored_token(&self, subject: &str) -> Result<Option<StoredToken>> {
        self.inner.tokens.get(&self.key(subject)).await
    }

    /// Removes `subject`'s token so the next access asks for authorization.
    ///
    /// Pass the revision of the token an API refused: if another request has
    /// refreshed it since, the newer token is kept. `None` removes whatever
    /// is stored. Returns whether a token was removed.
    pub async fn invalidate(&self, subject: &str, revision: Option<Revision>) -> Result<bool> {
        let key = self.key(subject);
        match revision {
            Some(revision) => self.inner.tokens.delete_if_revision(&key, revision).await,
            None => self.inner.tokens.delete(&key).await,
        }
    }

    fn needs_refresh(&self, record: &TokenRecord, now: Timestamp) -> bool {
        record
            .expires_at
            .is_some_and(|at| at <= now.saturating_add(self.inner.config.refresh_skew))
    }

    fn backing_off(&self, subject: &str, now: Timestamp) -> bool {
        let mut retry_after = lock(&self.inner.retry_after);
        match retry_after.get(subject) {
            Some(until) if *until > now => true,
            Some(_) => {
                retry_after.remove(subject);
                false
            }
            None => false,
        }
    }

    async fn refresh_single_flight(&self, subject: &str, observed: StoredToken) -> Result<Access> {
        let mut receiver = {
            let mut inflight = lock(&self.inner.inflight);
            match inflight.get(subject) {
                Some(receiver) => receiver.clone(),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    inflight.insert(subject.to_owned(), receiver.clone());
                    let this = self.clone();
                    let entry = InflightEntry {
                        inner: Arc::clone(&self.inner),
                        subject: subject.to_owned(),
                    };
                    let span = info_span!("refresh", provider = %self.inner.label);
                    tokio::spawn(
                        async move {
                            let key = this.key(&entry.subject);
                            let result = this.refresh_across_processes(&key, observed).await;
                            // Publish before the entry goes away, so every
                            // caller that joined gets this result.
                            let _ = sender.send(Some(result));
                            drop(entry);
                        }
                        .instrument(span),
                    );
                    receiver
                }
            }
        };
        let result = receiver
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Internal("a token refresh task ended without a result".into()))?;
        result
            .clone()
            .unwrap_or_else(|| Err(Error::Internal("refresh result missing".into())))
    }

    /// Takes the store lease (waiting while another process holds it), then
    /// refreshes unless someone else already did.
    async fn refresh_across_processes(
        &self,
        key: &TokenKey,
        observed: StoredToken,
    ) -> Result<Access> {
        let config = &self.inner.config;
        let deadline = crate::time::deadline_after(config.lease_wait);
        let mut backoff = Duration::from_millis(5);
        let guard = loop {
            let tokens = Arc::clone(&self.inner.tokens);
            if let Some(guard) =
                LeaseGuard::try_acquire(tokens, key.clone(), config.lease_ttl).await?
            {
                break guard;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
            let now = self.inner.clock.now();
            match self.inner.tokens.get(key).await? {
                None => {
                    return Ok(Access::NeedsAuthorization(
                        AuthorizationReason::RefreshRejected,
                    ));
                }
                Some(current) if self.someone_else_refreshed(&observed, &current, now) => {
                    debug!("another process refreshed the token");
                    self.count_refresh("other_replica");
                    return Ok(Access::Ready(AccessToken::from_stored(&current)));
                }
                Some(current) if tokio::time::Instant::now() >= deadline => {
                    if !current.record.is_expired_at(now) {
                        return Ok(Access::Ready(AccessToken::from_stored(&current)));
                    }
                    return Err(Error::Timeout {
                        operation: "waiting for another process to finish refreshing the token",
                        after: config.lease_wait,
                    });
                }
                Some(_) => {}
            }
        };
        let result = self.refresh_holding_lease(key, &observed).await;
        if let Err(error) = guard.release().await {
            warn!(%error, "could not release the refresh lease; it expires by its TTL");
        }
        result
    }

    fn someone_else_refreshed(
        &self,
        observed: &StoredToken,
        current: &StoredToken,
        now: Timestamp,
    ) -> bool {
        current.revision != observed.revision && !current.record.is_expired_at(now)
    }

    async fn refresh_holding_lease(
        &self,
        key: &TokenKey,
        observed: &StoredToken,
    ) -> Result<Access> {
        let Some(current) = self.inner.tokens.get(key).await? else {
            return Ok(Access::NeedsAuthorization(AuthorizationReason::NoToken));
        };
        let now = self.inner.clock.now();
        if self.someone_else_refreshed(observed, &current, now)
            || !self.needs_refresh(&current.record, now)
        {
            self.count_refresh("other_replica");
            return Ok(Access::Ready(AccessToken::from_stored(&current)));
        }
        let Some(refresh_token) = current.record.refresh_token.clone() else {
            return Ok(if current.record.is_expired_at(now) {
                Access::NeedsAuthorization(AuthorizationReason::Expired)
            } else {
                Access::Ready(AccessToken::from_stored(&current))
            });
        };
        let timeout = self.inner.config.refresh_timeout;
        let started = std::time::Instant::now();
        let response = tokio::time::timeout(
            timeout,
            self.inner
                .oauth
                .refresh(&refresh_token, &current.record.scopes),
        )
        .await
        .unwrap_or_else(|_| {
            Err(OAuthError::new(
                OAuthErrorKind::Transient,
                format!("the refresh request did not finish within {timeout:?}"),
            ))
        });
        observe::record_duration(
            names::REFRESH_DURATION,
            &self.inner.label,
            started.elapsed(),
        );
        match response {
            Ok(response) => {
                let record =
                    response.into_refreshed_record(self.inner.clock.now(), &current.record);
                match self
                    .inner
                    .tokens
                    .compare_and_swap(key, Some(current.revision), &record)
                    .await?
                {
                    CasOutcome::Swapped(revision) => {
                        lock(&self.inner.retry_after).remove(key.subject());
                        debug!(%revision, "token refreshed");
                        self.count_refresh("refreshed");
                        Ok(Access::Ready(AccessToken::from_record(&record, revision)))
                    }
                    CasOutcome::Conflict { .. } => {
                        // Written meanwhile by a new authorization (or by a
                        // replica whose lease we outlived): theirs is newer.
                        debug!("token changed during refresh; using the stored one");
                        self.count_refresh("other_replica");
                        self.current_or(key, AuthorizationReason::NoToken).await
                    }
                }
            }
            Err(error) => self.refresh_failed(key, current, error).await,
        }
    }

    async fn refresh_failed(
        &self,
        key: &TokenKey,
        current: StoredToken,
        error: OAuthError,
    ) -> Result<Access> {
        let now = self.inner.clock.now();
        if error.kind() == OAuthErrorKind::InvalidGrant {
            self.count_refresh("invalid_grant");
            warn!(%error, "refresh token rejected; removing the token so the user authorizes again");
            if self
                .inner
                .tokens
                .delete_if_revision(key, current.revision)
                .await?
            {
                return Ok(Access::NeedsAuthorization(
                    AuthorizationReason::RefreshRejected,
                ));
            }
            return self
                .current_or(key, AuthorizationReason::RefreshRejected)
                .await;
        }
        self.count_refresh("transient");
        lock(&self.inner.retry_after).insert(
            key.subject().to_owned(),
            now.saturating_add(self.inner.config.refresh_retry_after),
        );
        if current.record.is_expired_at(now) {
            warn!(%error, "token refresh failed and the token has expired");
            Err(Error::OAuth(error))
        } else {
            warn!(%error, "token refresh failed; serving the still-valid token");
            Ok(Access::Ready(AccessToken::from_stored(&current)))
        }
    }

    fn count_refresh(&self, result: &'static str) {
        observe::count(
            names::REFRESHES,
            &self.inner.label,
            Some(("result", result)),
        );
    }

    /// Counts a flow that a request started (`true`) or joined.
    fn count_begin(&self, started: bool) {
        let name = if started {
            names::FLOWS_STARTED
        } else {
            names::FLOWS_JOINED
        };
        observe::count(name, &self.inner.label, None);
    }

    async fn current_or(&self, key: &TokenKey, reason: AuthorizationReason) -> Result<Access> {
        let now = self.inner.clock.now();
        Ok(match self.inner.tokens.get(key).await? {
            Some(stored) if !stored.record.is_expired_at(now) => {
                Access::Ready(AccessToken::from_stored(&stored))
            }
            _ => Access::NeedsAuthorization(reason),
        })
    }

    /// Starts an authorization flow for `subject`, or joins the one in
    /// progress for the same subject.
    pub async fn begin_authorization(
        &self,
        subject: &str,
        request: FlowRequest,
    ) -> Result<BeginOutcome> {
        let config = &self.inner.config;
        let redirect_uri = request
            .redirect_uri
            .unwrap_or_else(|| config.redirect_uri.clone());
        if redirect_uri.is_empty() {
            return Err(Error::invalid_input(
                "redirect uri",
                "no redirect URI is configured for this provider and the flow named none",
            ));
        }
        let scopes = request.scopes.unwrap_or_else(|| config.scopes.clone());
        let mut flow = PendingFlow::new(
            self.key(subject),
            redirect_uri,
            scopes,
            self.inner.clock.now(),
            config.flow_ttl,
        );
        flow.started_by = request.started_by;
        flow.attributes = request.attributes;
        let begun = match self.inner.pending.insert(&flow).await? {
            InsertOutcome::Inserted => {
                self.inner.flows.started(&flow, self.inner.clock.now());
                BeginOutcome::Started(flow)
            }
            InsertOutcome::Joined(state) => match self.inner.pending.get_flow(&state).await? {
                Some(existing) => BeginOutcome::Joined(existing),
                None => BeginOutcome::Completing(state),
            },
        };
        self.count_begin(matches!(begun, BeginOutcome::Started(_)));
        Ok(begun)
    }

    /// Reports a flow that a provider inserted itself (outside
    /// [`begin_authorization`](Self::begin_authorization)) in the flow
    /// metrics: counted as started, and pending until it ends.
    pub fn record_flow_started(&self, flow: &PendingFlow) {
        self.inner.flows.started(flow, self.inner.clock.now());
        self.count_begin(true);
    }

    /// Reports a request that joined a flow in progress outside
    /// [`begin_authorization`](Self::begin_authorization).
    pub fn record_flow_joined(&self) {
        self.count_begin(false);
    }

    /// Reports a call that stopped waiting for a sign-in (its own or one it
    /// joined) before the flow ended, and why.
    ///
    /// Not a flow's end: the flow stays open unless the caller also ends
    /// it, and its callback, if the user still finishes, counts the one
    /// completion. Counting the give-up as a completion too counted such a
    /// flow twice (see the [`observe`](crate::observe) docs).
    pub fn record_wait_given_up(&self, reason: observe::GaveUp) {
        observe::count(
            names::WAITS_GIVEN_UP,
            &self.inner.label,
            Some(("reason", reason.label())),
        );
    }

    /// A pending flow by state, without taking it (for a connect page).
    pub async fn pending_flow(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        Ok(self
            .inner
            .pending
            .get_flow(state)
            .await?
            .filter(|flow| flow.key.provider() == self.inner.provider))
    }

    /// The authorization server URL for `flow` (with state and PKCE challenge).
    pub fn authorization_url(&self, flow: &PendingFlow) -> Result<Url> {
        let challenge = flow.pkce().challenge_s256();
        let request = AuthorizationRequest::for_flow(flow, &challenge);
        Ok(self.inner.oauth.authorization_url(&request)?)
    }

    /// Handles an authorization response: takes the flow (exactly once across
    /// all processes), checks the issuer, exchanges the code with the PKCE
    /// verifier, stores the token and completes the flow, waking its waiters.
    ///
    /// An `error` response completes the flow as
    /// [`FlowOutcome::Denied`] and returns it. An unknown, expired or reused
    /// state is [`Error::FlowNotFound`]; a failed exchange completes the flow
    /// as [`FlowOutcome::Failed`] and returns the error.
    pub async fn complete_authorization(&self, params: CallbackParams) -> Result<CompletedFlow> {
        let span = info_span!("callback", provider = %self.inner.label);
        self.complete_authorization_inner(params)
            .instrument(span)
            .await
    }

    async fn complete_authorization_inner(&self, params: CallbackParams) -> Result<CompletedFlow> {
        let pending = &self.inner.pending;
        // A state of another provider must not be consumed here: its own
        // callback may still arrive.
        if self.pending_flow(&params.state).await?.is_none() {
            return Err(Error::FlowNotFound);
        }
        let Some(flow) = pending.take(&params.state).await? else {
            return Err(Error::FlowNotFound);
        };
        // Taken: the flow is over for this process whether completing it
        // fails, this future is dropped (a cancelled callback handler) or
        // something panics.
        let ends = EndsFlow::new(&self.inner, &flow.state);
        let result = self.finish_flow(&flow, params).await;
        let outcome = match &result {
            Ok(outcome) => outcome.clone(),
            Err(error) => FlowOutcome::Failed {
                reason: error.to_string(),
            },
        };
        let flows = &self.inner.flows;
        flows.completing(&flow.state, self.inner.config.outcome_ttl);
        pending
            .complete(
                &flow.key,
                &flow.state,
                &outcome,
                self.inner.config.outcome_ttl,
            )
            .await?;
        ends.completed(observe::outcome_label(&outcome));
        result.map(|outcome| CompletedFlow {
            key: flow.key,
            state: flow.state,
            elicitation_id: flow.elicitation_id,
            started_by: flow.started_by,
            outcome,
        })
    }

    async fn finish_flow(&self, flow: &PendingFlow, params: CallbackParams) -> Result<FlowOutcome> {
        self.inner.oauth.check_issuer(params.iss.as_deref())?;
        if let Some(error) = params.error {
            return Ok(FlowOutcome::Denied {
                error,
                description: params.error_description,
            });
        }
        let Some(code) = params.code else {
            return Err(Error::invalid_input(
                "authorization response",
                "it carries neither a code nor an error",
            ));
        };
        let response = self.inner.oauth.exchange_code(&code, flow).await?;
        let record = response.into_record(self.inner.clock.now(), &flow.scopes);
        let revision = self.inner.tokens.put(&flow.key, &record).await?;
        lock(&self.inner.retry_after).remove(flow.key.subject());
        Ok(FlowOutcome::Authorized { revision })
    }

    /// Ends a pending flow without a callback (the user declined, the tool
    /// call was cancelled), so everyone waiting on it stops waiting. Returns
    /// whether the flow was still pending.
    pub async fn abandon_flow(&self, state: &FlowState, outcome: FlowOutcome) -> Result<bool> {
        let Some(flow) = self.inner.pending.take(state).await? else {
            return Ok(false);
        };
        let ends = EndsFlow::new(&self.inner, state);
        self.inner
            .flows
            .completing(state, self.inner.config.outcome_ttl);
        self.inner
            .pending
            .complete(&flow.key, state, &outcome, self.inner.config.outcome_ttl)
            .await?;
        ends.completed("abandoned");
        Ok(true)
    }

    /// Waits for a flow's outcome; `None` after `timeout`.
    ///
    /// With the `metrics` feature, an outcome ends the flow in the pending
    /// gauge, and a wait woken by a completion made in this process records
    /// its wake latency. A `None` counts nothing: the caller that gives up
    /// reports it with [`record_wait_given_up`](Self::record_wait_given_up),
    /// since not every wait is a call giving up (a background watcher that
    /// waits out a flow's life to send a notice is not).
    pub async fn wait(&self, state: &FlowState, timeout: Duration) -> Result<Option<FlowOutcome>> {
        let flows = &self.inner.flows;
        let since = flows.mark();
        let outcome = self.inner.pending.wait(state, timeout).await?;
        if outcome.is_some() {
            flows.woke(state, since, self.inner.clock.now());
        }
        Ok(outcome)
    }
}
