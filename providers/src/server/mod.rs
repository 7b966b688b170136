//! Server side: MCP tools gated behind a third party's OAuth.
//!
//! An [`OAuthProvider`] is one integration (GitHub, Google, Jira ...) of an
//! MCP server. It keeps each MCP user's third-party token through
//! [`mcp_authkit_core::TokenLifecycle`] (one store read for a valid token,
//! single-flight refresh across replicas, exactly-once callbacks), and
//! serves two routes the application mounts ([`OAuthProvider::router`]):
//!
//! - `GET {base}/connect?flow=<handle>`: the URL the MCP client shows the
//!   user (URL-mode elicitation). The handle is 256 random bits and all the
//!   link carries: no subject (often an e-mail address), no OAuth `state`,
//!   no token. The page finds the flow from the handle alone (on every
//!   backend and replica), checks that the browser user is the user who
//!   started the flow ([`BrowserUser`]), sets the flow's browser-binding
//!   cookie, and redirects to the third party with `state` and a PKCE
//!   challenge.
//! - `GET {base}/callback`: the redirect URI. Before anything else it checks
//!   that the browser brings the flow's binding cookie (and, with a
//!   `browser_user` hook, that the browser user is still the flow's user);
//!   then it takes the flow exactly once, checks `iss`, exchanges the code,
//!   stores the token and wakes the waiting tool call, on whichever replica
//!   it waits.
//!
//! # What the browser binding protects against, and what not
//!
//! MCP requires that the user who completes a URL elicitation is the user
//! who started it. The connect page's user check alone guards one hop: an
//! attacker could pass it with her own flow, copy the redirect to the third
//! party (which carries her `state`) and send it to a victim, whose
//! third-party account would then be bound to the attacker's MCP user. The
//! binding cookie closes that: the callback accepts only the browser that
//! passed the connect page for that flow. A missing or wrong cookie gets a
//! `403` page, and the flow is not taken, nothing is exchanged or stored,
//! and the waiting tool call goes on waiting for its rightful user.
//!
//! The cookie (`HttpOnly`, `SameSite=Lax`, `Path` = the provider's base
//! path, `Max-Age` = the flow's remaining life, `Secure` and `__Secure-`
//! on https) has one name per flow, so flows of several providers or users
//! in one browser never overwrite each other. Its value is keyed by the
//! flow's PKCE verifier; the flow stores only its digest; it never appears
//! in a URL, a page or a log.
//!
//! It does not protect against:
//!
//! - a user who hands over their whole browser (or its cookies): whoever
//!   holds the browser is that user here;
//! - under [`trust_link_holder`](OAuthProviderBuilder::trust_link_holder),
//!   a forwarded *connect link*: whoever opens it first in a browser binds
//!   that browser (the setting trusts the link holder by definition; use
//!   [`browser_user`](OAuthProviderBuilder::browser_user) on a shared
//!   server);
//! - an attacker who can set cookies for the server's host (a compromised
//!   sibling subdomain over plain http): serve the routes over https, where
//!   the `__Secure-` prefix refuses such cookies.
//!
//! With the `rmcp` feature, a tool of an rmcp server needs one line,
//! `let token = self.github.require_token(&ctx).await?;`, and the server
//! wraps its tool router once with `gate_tools` (see its docs for a whole
//! server). `require_token` documents the protocol: wait mode, fail-fast
//! mode (`-32042`), and `InputRequiredResult` on 2026-07-28 sessions.
//!
//! # Example
//!
//! ```
//! use mcp_authkit_providers::server::{BrowserIdentity, OAuthProvider};
//! use mcp_authkit_providers::standard::StandardOAuthClient;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let github = OAuthProvider::builder("github", "https://mcp.example.com/oauth/github")
//!     .display_name("GitHub")
//!     .client(StandardOAuthClient::github("client-id", "client-secret").build()?)
//!     .scopes(["repo"])
//!     // Who is at the browser, from the application's own session.
//!     .browser_user(|parts: &axum::http::request::Parts| {
//!         match parts.headers.get("x-app-user").and_then(|v| v.to_str().ok()) {
//!             Some(user) => BrowserIdentity::SignedIn(user.to_owned()),
//!             None => BrowserIdentity::SignedOut,
//!         }
//!     })
//!     .build()?;
//!
//! // Register https://mcp.example.com/oauth/github/callback at GitHub, and
//! // mount the routes next to the MCP endpoint.
//! assert_eq!(github.redirect_uri(), "https://mcp.example.com/oauth/github/callback");
//! let app: axum::Router = axum::Router::new().merge(github.router());
//! # let _ = app;
//! # Ok(()) }
//! ```

mod binding;
mod browser;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod html;
mod query;
mod routes;
#[cfg(feature = "rmcp")]
mod tools;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::{
    Access, AccessToken, Clock, FlowOutcome, FlowState, InsertOutcome, LifecycleConfig,
    OAuthClient, PendingFlow, PendingStore, Revision, TokenLifecycle, TokenStore,
};
use mcp_authkit_store_memory::MemoryStore;
use url::Url;

pub use browser::{BrowserIdentity, BrowserUser};
#[cfg(feature = "rmcp")]
pub use tools::{
    AuthorizationRequired, RetryInput, SubjectResolver, TokenError, gate_tools,
    subject_from_extension,
};

use binding::CookieJar;
use browser::ConnectCheck;

/// How a tool call that needs authorization behaves on a 2025-11-25
/// session (2026-07-28 sessions always answer with an
/// `InputRequiredResult`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ElicitationStyle {
    /// Send `elicitation/create` (mode `url`) and keep the tool call open
    /// until the user finishes in the browser (up to the token timeout),
    /// then send `notifications/elicitation/complete` and run the tool.
    #[default]
    Wait,
    /// Answer at once with JSON-RPC error `-32042`
    /// (`URLElicitationRequiredError`) carrying the elicitation; send
    /// `notifications/elicitation/complete` to the session when the
    /// callback lands, and let the client retry the call.
    ///
    /// rmcp 3.11 logs every JSON-RPC error response at `WARN` level, the
    /// elicited link included: under
    /// [`trust_link_holder`](OAuthProviderBuilder::trust_link_holder),
    /// where the link starts the sign-in for whoever holds it, keep
    /// `rmcp::service` below `warn` in logs others read.
    FailFast,
}

/// Why a provider could not be built or an operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The provider's configuration is not usable.
    #[error("invalid OAuth provider configuration ({what}): {reason}")]
    Config {
        /// What is wrong.
        what: &'static str,
        /// Why, and how to fix it.
        reason: String,
    },
    /// A store or OAuth operation failed.
    #[error(transparent)]
    Lifecycle(#[from] mcp_authkit_core::Error),
}

impl ProviderError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Config { .. } => false,
            ProviderError::Lifecycle(error) => error.is_retryable(),
        }
    }

    fn config(what: &'static str, reason: impl Into<String>) -> Self {
        ProviderError::Config {
            what,
            reason: reason.into(),
        }
    }
}

/// A user's usable third-party token, with whose it is.
///
/// It dereferences to core's [`AccessToken`] (`secret()`, `revision()`,
/// `scopes()` ...). Pass it to [`OAuthProvider::invalidate`] when the API
/// answers `401`.
#[derive(Clone, Debug)]
pub struct UserToken {
    subject: String,
    token: AccessToken,
}

impl UserToken {
    /// The MCP user it belongs to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The token.
    pub fn access_token(&self) -> &AccessToken {
        &self.token
    }
}

impl std::ops::Deref for UserToken {
    type Target = AccessToken;

    fn deref(&self) -> &AccessToken {
        &self.token
    }
}

/// An authorization flow a user has to finish in the browser.
///
/// `Debug` leaves out the link and the elicitation id: under
/// [`trust_link_holder`](OAuthProviderBuilder::trust_link_holder) whoever
/// holds them can start the sign-in.
#[derive(Clone)]
pub struct PendingAuthorization {
    subject: String,
    state: FlowState,
    elicitation_id: String,
    connect_url: Url,
    started: bool,
    expires_in: Option<Duration>,
}

impl fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("subject", &self.subject)
            .field("state", &self.state)
            .field("connect_url", &"[redacted]")
            .field("elicitation_id", &"[redacted]")
            .field("started", &self.started)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

impl PendingAuthorization {
    /// The MCP user it is for.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The URL to show the user: this server's connect page with the flow's
    /// opaque link handle (never the third party's authorize URL, never the
    /// OAuth `state`, never the subject). Empty of a handle when the flow is
    /// already being completed (there is nothing left to open).
    pub fn connect_url(&self) -> &Url {
        &self.connect_url
    }

    /// The elicitation id that stands for this flow on the MCP client.
    pub fn elicitation_id(&self) -> &str {
        &self.elicitation_id
    }

    /// Whether this call started the flow (`false`: it joined one that
    /// another call started for the same user).
    pub fn started(&self) -> bool {
        self.started
    }

    /// How long the flow stays open for its callback, when known.
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_in
    }
}

pub(crate) struct ProviderInner {
    pub(crate) name: String,
    pub(crate) display_name: String,
    pub(crate) lifecycle: TokenLifecycle,
    pub(crate) connect_url: Url,
    pub(crate) connect_path: String,
    pub(crate) callback_path: String,
    pub(crate) redirect_uri: String,
    pub(crate) token_timeout: Duration,
    pub(crate) connect_check: ConnectCheck,
    pub(crate) cookies: CookieJar,
    #[cfg_attr(not(feature = "rmcp"), allow(dead_code))]
    pub(crate) style: ElicitationStyle,
    pub(crate) clock: Arc<dyn Clock>,
    #[cfg(feature = "rmcp")]
    pub(crate) tools: tools::ToolState,
}

/// One third-party integration of an MCP server; cheap to clone.
///
/// Build it with [`OAuthProvider::builder`]; mount [`router`](Self::router);
/// with the `rmcp` feature, call `require_token` at the top of a tool.
#[derive(Clone)]
pub struct OAuthProvider {
    pub(crate) inner: Arc<ProviderInner>,
}

impl fmt::Debug for OAuthProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthProvider")
            .field("name", &self.inner.name)
            .field("connect_url", &self.inner.connect_url.as_str())
            .field("redirect_uri", &self.inner.redirect_uri)
            .field("token_timeout", &self.inner.token_timeout)
            .field("style", &self.inner.style)
            .finish_non_exhaustive()
    }
}

/// Builds an [`OAuthProvider`].
pub struct OAuthProviderBuilder {
    name: String,
    base_url: String,
    display_name: Option<String>,
    client: Option<Arc<dyn OAuthClient>>,
    scopes: Vec<String>,
    redirect_uri: Option<String>,
    tokens: Option<Arc<dyn TokenStore>>,
    pending: Option<Arc<dyn PendingStore>>,
    clock: Option<Arc<dyn Clock>>,
    token_timeout: Duration,
    refresh_skew: Option<Duration>,
    flow_ttl: Option<Duration>,
    connect_check: Option<ConnectCheck>,
    style: ElicitationStyle,
    #[cfg(feature = "rmcp")]
    subject_resolver: Option<Arc<dyn SubjectResolver>>,
}

impl fmt::Debug for OAuthProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthProviderBuilder")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl OAuthProvider {
    /// Starts building the provider `name` (the key prefix in the token
    /// store: `"github"`), whose routes live under `base_url`
    /// (`https://mcp.example.com/oauth/github`: the connect page is
    /// `{base_url}/connect`, the redirect URI `{base_url}/callback`).
    pub fn builder(name: impl Into<String>, base_url: impl Into<String>) -> OAuthProviderBuilder {
        OAuthProviderBuilder {
            name: name.into(),
            base_url: base_url.into(),
            display_name: None,
            client: None,
            scopes: Vec::new(),
            redirect_uri: None,
            tokens: None,
            pending: None,
            clock: None,
            token_timeout: Duration::from_secs(120),
            refresh_skew: None,
            flow_ttl: None,
            connect_check: None,
            style: ElicitationStyle::Wait,
            #[cfg(feature = "rmcp")]
            subject_resolver: None,
        }
    }

    /// The provider name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The name shown to users (`"GitHub"`).
    pub fn display_name(&self) -> &str {
        &self.inner.display_name
    }

    /// The redirect URI to register at the third party.
    pub fn redirect_uri(&self) -> &str {
        &self.inner.redirect_uri
    }

    /// The connect page's URL, without its per-flow query.
    pub fn connect_page(&self) -> &Url {
        &self.inner.connect_url
    }

    /// How long a tool call waits for the user to finish in the browser.
    pub fn token_timeout(&self) -> Duration {
        self.inner.token_timeout
    }

    /// The token lifecycle underneath, for what this type does not wrap.
    pub fn lifecycle(&self) -> &TokenLifecycle {
        &self.inner.lifecycle
    }

    /// `subject`'s token if one is usable now (refreshed first when it is
    /// about to expire); `None` when the user has to authorize.
    ///
    /// A valid token costs one store read and no network I/O.
    pub async fn token(&self, subject: &str) -> Result<Option<UserToken>, ProviderError> {
        Ok(self.token_owned(subject.to_owned()).await?.ok())
    }

    /// [`token`](Self::token) without copying the subject: `Err(subject)`
    /// hands it back when the user has to authorize.
    pub(crate) async fn token_owned(
        &self,
        subject: String,
    ) -> Result<Result<UserToken, String>, ProviderError> {
        let (access, subject) = self.inner.lifecycle.access_owned(subject).await;
        Ok(match access? {
            Access::Ready(token) => Ok(UserToken { subject, token }),
            Access::NeedsAuthorization(_) => Err(subject),
        })
    }

    /// Starts an authorization flow for `subject`, or joins the one in
    /// progress for the same user (concurrent calls share one flow).
    /// `started_by` records who asked (an MCP session id).
    ///
    /// The flow is the lifecycle's, with two things of this provider's own:
    /// its elicitation id is the link handle (256 random bits) and its
    /// `state` is derived from it one way, so the connect page finds the
    /// flow from the link alone; and it records the digest of its browser
    /// binding.
    pub async fn begin_authorization(
        &self,
        subject: &str,
        started_by: Option<&str>,
    ) -> Result<PendingAuthorization, ProviderError> {
        let lifecycle = &self.inner.lifecycle;
        let config = lifecycle.config();
        let now = self.now();
        let mut flow = PendingFlow::new(
            lifecycle.key(subject),
            config.redirect_uri.clone(),
            config.scopes.clone(),
            now,
            config.flow_ttl,
        );
        flow.elicitation_id = binding::new_handle();
        flow.state = binding::state_for(&self.inner.name, &flow.elicitation_id);
        flow.started_by = started_by.map(str::to_owned);
        binding::seal(&mut flow);
        let (flow, started) = match lifecycle.pending_store().insert(&flow).await? {
            InsertOutcome::Inserted => {
                lifecycle.record_flow_started(&flow);
                (flow, true)
            }
            InsertOutcome::Joined(state) => match lifecycle.pending_flow(&state).await? {
                Some(existing) => {
                    lifecycle.record_flow_joined();
                    (existing, false)
                }
                // The active flow's callback is being handled right now: the
                // connect link is no longer needed, so hand out that flow's
                // handle with the outcome to wait for.
                None => {
                    lifecycle.record_flow_joined();
                    return Ok(PendingAuthorization {
                        subject: subject.to_owned(),
                        connect_url: self.inner.connect_url.clone(),
                        state,
                        elicitation_id: String::new(),
                        started: false,
                        expires_in: None,
                    });
                }
            },
        };
        Ok(self.pending_for(subject, flow, started))
    }

    /// The handle on a pending `flow` of `subject`.
    pub(crate) fn pending_for(
        &self,
        subject: &str,
        flow: PendingFlow,
        started: bool,
    ) -> PendingAuthorization {
        PendingAuthorization {
            subject: subject.to_owned(),
            connect_url: self.connect_url_for(&flow.elicitation_id),
            expires_in: Some(flow.expires_at.saturating_duration_since(self.now())),
            elicitation_id: flow.elicitation_id,
            state: flow.state,
            started,
        }
    }

    /// Waits up to `timeout` for the flow to end; `None` if it did not.
    pub async fn wait_for_authorization(
        &self,
        pending: &PendingAuthorization,
        timeout: Duration,
    ) -> Result<Option<FlowOutcome>, ProviderError> {
        Ok(self.inner.lifecycle.wait(&pending.state, timeout).await?)
    }

    /// Ends a flow without a callback (the user declined), waking everyone
    /// who waits on it with `outcome`. Returns whether it was still pending.
    pub async fn abandon_authorization(
        &self,
        pending: &PendingAuthorization,
        outcome: FlowOutcome,
    ) -> Result<bool, ProviderError> {
        Ok(self
            .inner
            .lifecycle
            .abandon_flow(&pending.state, outcome)
            .await?)
    }

    /// Removes the token an API refused (say with `401`), so the next
    /// `require_token` asks the user again. Only this revision is removed:
    /// a token another request refreshed meanwhile is kept. Returns whether
    /// a token was removed.
    pub async fn invalidate(&self, token: &UserToken) -> Result<bool, ProviderError> {
        self.invalidate_revision(&token.subject, token.revision())
            .await
    }

    /// Removes `subject`'s token if it is still at `revision`.
    pub async fn invalidate_revision(
        &self,
        subject: &str,
        revision: Revision,
    ) -> Result<bool, ProviderError> {
        Ok(self
            .inner
            .lifecycle
            .invalidate(subject, Some(revision))
            .await?)
    }

    /// Removes `subject`'s token whatever its revision (the user
    /// disconnected the integration). Returns whether there was one.
    pub async fn invalidate_token(&self, subject: &str) -> Result<bool, ProviderError> {
        Ok(self.inner.lifecycle.invalidate(subject, None).await?)
    }

    /// The connect and callback routes, at the paths of the base URL and
    /// redirect URI; merge them into the application's router.
    pub fn router(&self) -> axum::Router {
        routes::router(self.clone())
    }

    /// A readiness route at `path` (say `/ready`), for a load balancer or
    /// an orchestrator: `200` when the token store and the pending store
    /// each answer one cheap round trip ([`TokenStore::ping`]),
    /// with their backends and latencies as JSON; `503` naming the store
    /// that did not (the error itself goes to the log, not to the caller).
    /// Merge it where the probe can reach it; it shows no user data.
    pub fn readiness_router(&self, path: &str) -> axum::Router {
        routes::readiness_router(self.clone(), path)
    }

    fn now(&self) -> mcp_authkit_core::Timestamp {
        self.inner.clock.now()
    }

    /// `{connect}?flow=<handle>`: one opaque handle, which the connect page
    /// maps to the flow (its `state` is derived from it). No subject, no
    /// OAuth `state`.
    fn connect_url_for(&self, handle: &str) -> Url {
        let mut url = self.inner.connect_url.clone();
        url.query_pairs_mut().append_pair("flow", handle);
        url
    }
}

impl OAuthProviderBuilder {
    /// The name shown to users in messages and pages (`"GitHub"`).
    /// Default: the provider name.
    pub fn display_name(mut self, display_name: impl Into<String>) -> Self {
        self.display_name = Some(display_name.into());
        self
    }

    /// The OAuth client: a [`StandardOAuthClient`](crate::standard::StandardOAuthClient)
    /// for standard OAuth 2.0 providers, or your own [`OAuthClient`] for a
    /// custom flow (authorization URL building, code exchange, optional
    /// refresh).
    pub fn client(mut self, client: impl OAuthClient) -> Self {
        self.client = Some(Arc::new(client));
        self
    }

    /// Like [`client`](Self::client), for a client already shared.
    pub fn shared_client(mut self, client: Arc<dyn OAuthClient>) -> Self {
        self.client = Some(client);
        self
    }

    /// The scopes to request.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// A redirect URI other than `{base_url}/callback` (its path is where
    /// the callback route is mounted). It must be on the base URL's origin,
    /// so the browser-binding cookie reaches it.
    pub fn redirect_uri(mut self, redirect_uri: impl Into<String>) -> Self {
        self.redirect_uri = Some(redirect_uri.into());
        self
    }

    /// Where tokens are kept. Default: an in-memory store, which only suits
    /// a single process; share Redis or SQLite between replicas.
    pub fn token_store(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.tokens = Some(store);
        self
    }

    /// Where flows wait for their callback. Default: in memory (a single
    /// process). Replicas must share it: the callback may land on any.
    pub fn pending_store(mut self, store: Arc<dyn PendingStore>) -> Self {
        self.pending = Some(store);
        self
    }

    /// One backend for both tokens and flows.
    pub fn store<S>(self, store: Arc<S>) -> Self
    where
        S: TokenStore + PendingStore,
    {
        let tokens: Arc<dyn TokenStore> = store.clone();
        let pending: Arc<dyn PendingStore> = store;
        self.token_store(tokens).pending_store(pending)
    }

    /// How long a tool call waits for the user to finish in the browser.
    /// Default 120 s.
    pub fn token_timeout(mut self, timeout: Duration) -> Self {
        self.token_timeout = timeout;
        self
    }

    /// Refresh a token this long before it expires. Default 60 s.
    pub fn refresh_skew(mut self, skew: Duration) -> Self {
        self.refresh_skew = Some(skew);
        self
    }

    /// How long a started flow stays valid for its callback. Default 10 min.
    pub fn flow_ttl(mut self, ttl: Duration) -> Self {
        self.flow_ttl = Some(ttl);
        self
    }

    /// Reads time from `clock` (a [`ManualClock`](mcp_authkit_core::ManualClock)
    /// in tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// How calls that need authorization behave on 2025-11-25 sessions.
    /// Default [`ElicitationStyle::Wait`].
    pub fn elicitation(mut self, style: ElicitationStyle) -> Self {
        self.style = style;
        self
    }

    /// The application's hook that says who is at the browser; the connect
    /// page continues only when it names the user who started the flow, and
    /// the callback asks it again before it takes the flow.
    pub fn browser_user(mut self, hook: impl BrowserUser) -> Self {
        self.connect_check = Some(ConnectCheck::SameUser(Arc::new(hook)));
        self
    }

    /// Lets whoever holds a connect link continue the flow, without checking
    /// who is at the browser.
    ///
    /// Only for a local, single-user setup (a server on the user's own
    /// machine, where the MCP user and the browser user are the same
    /// person). On a shared server it allows the phishing attack the MCP
    /// specification warns about: an attacker starts a flow and sends the
    /// connect link to a victim, whose third-party account then serves the
    /// attacker's tool calls. The browser binding still applies: the
    /// callback accepts only the browser that opened the connect link, so
    /// a forwarded authorize URL or callback is refused; but the connect
    /// link itself is a bearer link here.
    pub fn trust_link_holder(mut self) -> Self {
        self.connect_check = Some(ConnectCheck::TrustLinkHolder);
        self
    }

    /// Checks the configuration and builds the provider.
    pub fn build(self) -> Result<OAuthProvider, ProviderError> {
        if self.name.is_empty() {
            return Err(ProviderError::config(
                "name",
                "the provider name is empty; name it after the integration (\"github\")",
            ));
        }
        let client = self.client.ok_or_else(|| {
            ProviderError::config(
                "OAuth client",
                "no OAuth client: call client(StandardOAuthClient::builder(..).build()?) \
                 or client(your_custom_flow)",
            )
        })?;
        let connect_check = self.connect_check.ok_or_else(|| {
            ProviderError::config(
                "connect check",
                "the connect page must know who is at the browser: call \
                 browser_user(hook) with your application's sign-in check, or \
                 trust_link_holder() for a local single-user server",
            )
        })?;
        if self.token_timeout.is_zero() {
            return Err(ProviderError::config(
                "token timeout",
                "it must be greater than zero",
            ));
        }
        let base = parse_http_url("base URL", self.base_url.trim_end_matches('/'))?;
        let base_path = base.path().trim_end_matches('/').to_owned();
        let mut connect_url = base.clone();
        connect_url.set_path(&format!("{base_path}/connect"));
        connect_url.set_query(None);
        let redirect_uri = match self.redirect_uri {
            Some(uri) => uri,
            None => {
                let mut callback = base.clone();
                callback.set_path(&format!("{base_path}/callback"));
                callback.set_query(None);
                callback.to_string()
            }
        };
        let callback = parse_http_url("redirect URI", &redirect_uri)?;
        if callback.query().is_some() || callback.fragment().is_some() {
            return Err(ProviderError::config(
                "redirect URI",
                "it must not carry a query or fragment",
            ));
        }
        if callback.path() == connect_url.path() {
            return Err(ProviderError::config(
                "redirect URI",
                "its path is the connect page's path; pick another",
            ));
        }
        if callback.origin() != connect_url.origin() {
            return Err(ProviderError::config(
                "redirect URI",
                format!(
                    "{redirect_uri:?} is not on the base URL's origin ({}): the callback must \
                     receive the browser-binding cookie the connect page sets, so both must be \
                     on one scheme, host and port",
                    connect_url.origin().ascii_serialization()
                ),
            ));
        }
        let cookies = CookieJar::new(
            connect_url.path(),
            callback.path(),
            connect_url.scheme() == "https",
        );
        let store = MemoryStore::new();
        let tokens = self
            .tokens
            .unwrap_or_else(|| Arc::new(store.clone()) as Arc<dyn TokenStore>);
        let pending = self
            .pending
            .unwrap_or_else(|| Arc::new(store) as Arc<dyn PendingStore>);
        let clock: Arc<dyn Clock> = self
            .clock
            .unwrap_or_else(|| Arc::new(mcp_authkit_core::SystemClock));
        let mut config = LifecycleConfig::new(redirect_uri.clone(), self.scopes);
        if let Some(skew) = self.refresh_skew {
            config.refresh_skew = skew;
        }
        if let Some(ttl) = self.flow_ttl {
            config.flow_ttl = ttl;
        }
        let lifecycle = TokenLifecycle::builder(self.name.clone(), client, tokens, pending)
            .clock(clock.clone())
            .config(config)
            .build()?;
        Ok(OAuthProvider {
            inner: Arc::new(ProviderInner {
                display_name: self.display_name.unwrap_or_else(|| self.name.clone()),
                name: self.name,
                lifecycle,
                connect_path: connect_url.path().to_owned(),
                callback_path: callback.path().to_owned(),
                connect_url,
                redirect_uri,
                token_timeout: self.token_timeout,
                connect_check,
                cookies,
                style: self.style,
                clock,
                #[cfg(feature = "rmcp")]
                tools: tools::ToolState::new(self.subject_resolver),
            }),
        })
    }
}

fn parse_http_url(what: &'static str, text: &str) -> Result<Url, ProviderError> {
    let url = Url::parse(text)
        .map_err(|error| ProviderError::config(what, format!("{text:?} is not a URL: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ProviderError::config(
            what,
            format!("{text:?} must be an absolute http(s) URL"),
        ));
    }
    Ok(url)
}
