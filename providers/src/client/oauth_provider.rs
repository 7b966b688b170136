//! [`OAuthClientProvider`]: OAuth 2.1 for MCP clients as the MCP
//! authorization specification (2025-11-25) describes it, with tokens and
//! registrations in mcp-authkit stores.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use mcp_authkit_core::observe::GaveUp;
use mcp_authkit_core::{
    Access, BeginOutcome, CallbackParams, Clock, FlowOutcome, FlowRequest, FlowState,
    LifecycleConfig, OAuthError, OAuthErrorKind, PendingFlow, PendingStore, Revision, SecretString,
    SystemClock, TokenKey, TokenLifecycle, TokenStore,
};
use url::Url;

use crate::client::challenge::AuthChallenge;
use crate::client::discovery::{
    AuthorizationServerMetadata, DiscoveryRecord, canonical_server_url, discover, stored_discovery,
};
use crate::client::error::ClientAuthError;
use crate::client::fetch::Fetcher;
use crate::client::identity::{FLOW_CLIENT_ID, Identity, Registrations};
use crate::client::interaction::{
    AuthorizationPrompt, DEFAULT_AUTHORIZATION_TIMEOUT, OpenBrowser, PromptOutcome,
    UserInteraction, is_redirect_to,
};
use crate::client::oauth::{ClientCredentials, ServerClient, TokenEndpointAuthMethod};
use crate::client::provider::{AuthProvider, BearerToken};
use crate::client::records;
use crate::client::redirect::{LoopbackListener, LoopbackRedirect, RedirectTarget};
use crate::client::registration::{ClientMetadata, PreRegisteredClient};
use crate::http::OAuthHttpClient;

/// The default [`namespace`](OAuthClientProviderBuilder::namespace) of
/// stored records.
pub const DEFAULT_NAMESPACE: &str = "mcp-client";

/// OAuth 2.1 for an MCP client, per the MCP authorization specification
/// (2025-11-25); tokens and client registrations live in mcp-authkit stores.
///
/// On a `401` it discovers the MCP server's Protected Resource Metadata
/// (RFC 9728) and its authorization server's metadata (RFC 8414 / OpenID
/// Connect, with path insertion; the issuer is checked, and PKCE S256 must
/// be advertised); a server without resource metadata is reached the
/// 2025-03-26 way ([`allow_2025_03_26_fallback`](OAuthClientProviderBuilder::allow_2025_03_26_fallback)).
/// It checks that the server offers the `authorization_code` grant before
/// anyone is sent to a browser, finds a client identity (pre-registered, else a Client ID
/// Metadata Document when the server accepts it, else dynamic client
/// registration with the real redirect URI, stored and reused), and runs the
/// authorization code flow with PKCE S256, `state`, the RFC 9207 `iss` check
/// and the RFC 8707 `resource` on every request. The user completes it
/// through a [`UserInteraction`] hook; the redirect arrives at the built-in
/// loopback listener (or at the hook, headlessly).
///
/// Tokens are refreshed before they expire and when the server refuses
/// them, single-flight in the process and (through the store's lease)
/// across processes; a refresh token the server rejects (`invalid_grant`)
/// leads to a new authorization. A `403 insufficient_scope` steps up to the
/// union of the granted and the challenged scopes, a bounded number of
/// times in a row for the same scopes; whatever the scopes, at most
/// [`max_step_ups_per_session`](OAuthClientProviderBuilder::max_step_ups_per_session)
/// step-ups and [`max_prompts`](OAuthClientProviderBuilder::max_prompts)
/// sign-ins per window, so a hostile server cannot prompt forever.
/// [`sign_out`](Self::sign_out) revokes the tokens (RFC 7009) and forgets
/// them.
///
/// # How it authenticates at the token endpoint
///
/// A dynamic registration asks for a **public client** (`none`) whenever
/// the server advertises `none` in `token_endpoint_auth_methods_supported`:
/// a client on the user's machine cannot keep a secret (RFC 8252 section
/// 8.5), and PKCE protects its codes. Otherwise it asks for the secret
/// method the server advertises, `client_secret_basic` unless only
/// `client_secret_post` is (Basic is the one RFC 6749 requires servers to
/// support, and RFC 8414's default when nothing is advertised); it never
/// asks for an unadvertised `none`, which a server could register and still
/// refuse after the user signed in. The method the server assigns in its
/// answer is the one used. With Basic, `client_id` also goes in the form
/// body (RFC 6749 section 2.3.1 allows it, and servers built on the MCP
/// Python SDK, FastMCP included, refuse a token request without it).
/// Pre-registered clients use the method the server advertises, or the one
/// set with [`PreRegisteredClient::auth_method`].
///
/// # When the server forgets the client
///
/// A dynamic registration is reused across runs, but never past its
/// secret's expiry (`client_secret_expires_at`, counted from
/// `client_id_issued_at` so the two clocks need not agree): a sign-in its
/// secret would not outlive registers anew, and a refresh never sends an
/// expired secret. When the server refuses the registered client
/// (`invalid_client` or `unauthorized_client` from the token or
/// authorization endpoint, or an error page instead of a redirect at the
/// authorization endpoint, as from an in-memory server that restarted), the
/// registration is dropped and the sign-in runs once more with a new one; if the new one is
/// refused too, the error is returned and nothing is kept. A sign-in that
/// times out drops its registration as well, so the next attempt starts
/// clean. Replicas sharing the store read the registration before each
/// token request, so they follow the one that registered again.
/// Pre-registered and metadata-document clients are never replaced: their
/// refusal is returned as a configuration error.
/// [`sign_out(SignOut::ForgetRegistration)`](Self::sign_out) forgets the
/// registration on request.
///
/// # What it stores
///
/// Records are keyed by authorization server and resource, under a
/// namespace (default [`DEFAULT_NAMESPACE`]):
///
/// | record | provider | subject |
/// |---|---|---|
/// | the token | `{namespace}:{issuer}` | the resource (the MCP server's metadata `resource`) |
/// | a dynamic client registration | `{namespace}/registration` | the issuer |
/// | what discovery found | `{namespace}/discovery` | the MCP server URL |
///
/// so a persistent store (SQLite, Redis, encrypted, ...) keeps the client
/// signed in across restarts without new discovery, registration or sign-in.
/// Registrations and discovery results are typed records with their own
/// versioned format, kept as `TokenRecord`s whose token is the whole record
/// (`token_type` `mcp-authkit/client-registration` or
/// `mcp-authkit/discovery`), so an encrypting store encrypts client secrets
/// too. One registration is kept per authorization server (and namespace),
/// for one redirect URI: processes that sign in at the same time should
/// share a redirect URI (a fixed [`LoopbackRedirect::port`]), or each
/// replaces the other's registration.
///
/// ```no_run
/// use mcp_authkit_providers::client::{AuthProvider, ClientMetadata, OAuthClientProvider};
/// use mcp_authkit_store_memory::MemoryStore;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MemoryStore::new(); // a persistent store keeps users signed in
/// let provider = OAuthClientProvider::builder("https://mcp.example.com/mcp")
///     .store(store)
///     .client_metadata(ClientMetadata::new("Notes CLI"))
///     .build()?;
/// // Hand it to a transport (see `client::transport` with the `rmcp`
/// // feature), or drive it yourself:
/// let token = provider.token().await?; // None until the first sign-in
/// # let _ = token;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct OAuthClientProvider {
    inner: Arc<Inner>,
}

struct Inner {
    server: Url,
    fetcher: Fetcher,
    tokens: Arc<dyn TokenStore>,
    pending: Arc<dyn PendingStore>,
    clock: Arc<dyn Clock>,
    namespace: String,
    client_metadata: ClientMetadata,
    pre_registered: Option<PreRegisteredClient>,
    metadata_document_url: Option<String>,
    redirect: RedirectTarget,
    interaction: Arc<dyn UserInteraction>,
    refresh_skew: Duration,
    authorization_timeout: Duration,
    max_step_up_attempts: u32,
    legacy_fallback: bool,
    /// Every sign-in shown to the user, to cap them whatever the scopes.
    prompts: Mutex<PromptBudget>,
    session: RwLock<Option<Arc<Session>>>,
    /// Serializes discovery and registration: concurrent 401s discover once
    /// and register one client.
    setup: tokio::sync::Mutex<()>,
    listener: tokio::sync::Mutex<Option<LoopbackListener>>,
    /// Flows this provider has shown, by state, until they expire. Kept
    /// after the flow ends too: a request that read the flow just before
    /// it ended must still see it as ours, or it would show it again.
    own_flows: Mutex<HashMap<String, mcp_authkit_core::Timestamp>>,
    /// Held while a flow is begun and claimed in `own_flows`, so a
    /// concurrent request never sees this provider's new flow before it is
    /// marked as ours and mistakes it for one a dead run left behind.
    beginning: tokio::sync::Mutex<()>,
    /// The latest step-up: how many in a row asked for the same scopes.
    last_step_up: Mutex<Option<StepUp>>,
}

/// Step-ups in a row for one set of scopes.
struct StepUp {
    scopes: BTreeSet<String>,
    attempts: u32,
    /// The revision of the refused token that triggered the latest one:
    /// another refusal of that same token is a concurrent request, not a
    /// new attempt.
    from: Option<Revision>,
}

/// Limits on asking the user to sign in.
#[derive(Clone, Copy, Debug)]
struct PromptLimits {
    per_window: u32,
    window: Duration,
    step_ups_per_session: u32,
}

impl Default for PromptLimits {
    fn default() -> Self {
        PromptLimits {
            per_window: 6,
            window: Duration::from_secs(600),
            step_ups_per_session: 10,
        }
    }
}

/// The sign-ins shown to the user lately, and the step-ups so far. Unlike
/// the same-scopes counter, nothing resets it: not new scopes, not a `401`.
struct PromptBudget {
    limits: PromptLimits,
    shown: std::collections::VecDeque<mcp_authkit_core::Timestamp>,
    step_ups: u32,
}

impl PromptBudget {
    fn new(limits: PromptLimits) -> Self {
        PromptBudget {
            limits,
            shown: std::collections::VecDeque::new(),
            step_ups: 0,
        }
    }

    /// Counts a sign-in about to be shown at `now`, or refuses it.
    fn show(&mut self, now: mcp_authkit_core::Timestamp) -> Result<(), ClientAuthError> {
        let since = now.saturating_sub(self.limits.window);
        while self.shown.front().is_some_and(|at| *at <= since) {
            self.shown.pop_front();
        }
        if self.shown.len() >= self.limits.per_window as usize {
            return Err(ClientAuthError::TooManyPrompts {
                limit: self.limits.per_window,
                window: Some(self.limits.window),
            });
        }
        self.shown.push_back(now);
        Ok(())
    }

    /// Counts a step-up, or refuses it.
    fn step_up(&mut self) -> Result<(), ClientAuthError> {
        if self.step_ups >= self.limits.step_ups_per_session {
            return Err(ClientAuthError::TooManyPrompts {
                limit: self.limits.step_ups_per_session,
                window: None,
            });
        }
        self.step_ups += 1;
        Ok(())
    }
}

/// What discovery found for the MCP server, and the lifecycle that serves
/// its token.
struct Session {
    issuer: String,
    resource: String,
    /// `None` for a 2025-03-26 server.
    resource_metadata_url: Option<String>,
    /// The `resource_metadata` of the challenge that led to this discovery
    /// (the metadata may have been found elsewhere, at a fallback URL).
    challenge_metadata_url: Option<String>,
    scopes_supported: Option<Vec<String>>,
    /// Who the client is at the authorization server.
    identity: Arc<Identity>,
    /// The authorization server's metadata.
    metadata: Arc<AuthorizationServerMetadata>,
    /// Its OAuth client (the lifecycle's), for revocation.
    oauth: Arc<ServerClient>,
    lifecycle: TokenLifecycle,
    /// Discovered by this process (as opposed to read back from the store).
    live: bool,
}

impl Session {
    fn token_key(&self, namespace: &str) -> TokenKey {
        TokenKey::new(
            token_provider(namespace, &self.issuer),
            self.resource.clone(),
        )
    }
}

fn token_provider(namespace: &str, issuer: &str) -> String {
    format!("{namespace}:{issuer}")
}

impl fmt::Debug for OAuthClientProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let session = self.session();
        f.debug_struct("OAuthClientProvider")
            .field("server", &self.inner.server.as_str())
            .field("namespace", &self.inner.namespace)
            .field("issuer", &session.as_ref().map(|s| s.issuer.clone()))
            .field("resource", &session.as_ref().map(|s| s.resource.clone()))
            .finish_non_exhaustive()
    }
}

/// Configures an [`OAuthClientProvider`].
pub struct OAuthClientProviderBuilder {
    server: String,
    tokens: Option<Arc<dyn TokenStore>>,
    pending: Option<Arc<dyn PendingStore>>,
    http: Option<OAuthHttpClient>,
    clock: Arc<dyn Clock>,
    namespace: String,
    client_metadata: ClientMetadata,
    pre_registered: Option<PreRegisteredClient>,
    metadata_document_url: Option<String>,
    redirect: RedirectTarget,
    interaction: Arc<dyn UserInteraction>,
    refresh_skew: Duration,
    authorization_timeout: Duration,
    max_step_up_attempts: u32,
    allow_insecure_http: bool,
    legacy_fallback: bool,
    prompt_limits: PromptLimits,
}

impl OAuthClientProvider {
    /// Configures a provider for the MCP server at `server_url`.
    pub fn builder(server_url: impl Into<String>) -> OAuthClientProviderBuilder {
        OAuthClientProviderBuilder {
            server: server_url.into(),
            tokens: None,
            pending: None,
            http: None,
            clock: Arc::new(SystemClock),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            client_metadata: ClientMetadata::default(),
            pre_registered: None,
            metadata_document_url: None,
            redirect: RedirectTarget::Loopback(LoopbackRedirect::new()),
            interaction: Arc::new(OpenBrowser),
            refresh_skew: Duration::from_secs(60),
            authorization_timeout: DEFAULT_AUTHORIZATION_TIMEOUT,
            max_step_up_attempts: 2,
            allow_insecure_http: false,
            legacy_fallback: true,
            prompt_limits: PromptLimits::default(),
        }
    }
}

impl OAuthClientProviderBuilder {
    /// Keeps tokens, registrations and pending flows in `store`.
    pub fn store<S>(self, store: S) -> Self
    where
        S: TokenStore + PendingStore,
    {
        let store = Arc::new(store);
        self.token_store(store.clone()).pending_store(store)
    }

    /// Keeps tokens, registrations and discovery results here.
    pub fn token_store(mut self, tokens: Arc<dyn TokenStore>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Keeps authorization flows (state, PKCE verifier) here.
    pub fn pending_store(mut self, pending: Arc<dyn PendingStore>) -> Self {
        self.pending = Some(pending);
        self
    }

    /// Sends every request through this client (custom TLS roots, proxy);
    /// it must not follow redirects.
    pub fn http_client(mut self, http: OAuthHttpClient) -> Self {
        self.http = Some(http);
        self
    }

    /// Names and describes the client in registrations and documents.
    pub fn client_metadata(mut self, metadata: ClientMetadata) -> Self {
        self.client_metadata = metadata;
        self
    }

    /// A client registered out of band; used before anything else.
    pub fn pre_registered(mut self, client: PreRegisteredClient) -> Self {
        self.pre_registered = Some(client);
        self
    }

    /// The https URL of this client's Client ID Metadata Document, used as
    /// its `client_id` at servers that advertise
    /// `client_id_metadata_document_supported` (see
    /// [`ClientMetadata::metadata_document`]).
    pub fn client_metadata_document(mut self, url: impl Into<String>) -> Self {
        self.metadata_document_url = Some(url.into());
        self
    }

    /// Where the browser comes back to. Default: the loopback listener on
    /// `http://127.0.0.1:{free port}/callback`.
    pub fn redirect(mut self, redirect: RedirectTarget) -> Self {
        self.redirect = redirect;
        self
    }

    /// How the user completes an authorization. Default [`OpenBrowser`].
    pub fn interaction(mut self, interaction: impl UserInteraction) -> Self {
        self.interaction = Arc::new(interaction);
        self
    }

    /// Prefixes every stored record's provider name (default
    /// [`DEFAULT_NAMESPACE`]); give each application, or each local user
    /// account of one application, its own.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Refreshes tokens this long before they expire. Default 60 s.
    pub fn refresh_skew(mut self, skew: Duration) -> Self {
        self.refresh_skew = skew;
        self
    }

    /// How long the user has to finish signing in. Default 5 min.
    pub fn authorization_timeout(mut self, timeout: Duration) -> Self {
        self.authorization_timeout = timeout;
        self
    }

    /// How many step-up authorizations in a row may ask for the same scopes
    /// before [`ClientAuthError::StepUpLimit`]. Default 2.
    pub fn max_step_up_attempts(mut self, attempts: u32) -> Self {
        self.max_step_up_attempts = attempts;
        self
    }

    /// How many times the user may be asked to sign in (a sign-in after a
    /// `401` or a step-up after a `403`, whatever the scopes) within
    /// `window` before [`ClientAuthError::TooManyPrompts`]. Default 6 per
    /// 10 minutes: a server that keeps refusing tokens or asking for
    /// scopes cannot make the user sign in forever.
    pub fn max_prompts(mut self, prompts: u32, window: Duration) -> Self {
        self.prompt_limits.per_window = prompts;
        self.prompt_limits.window = window;
        self
    }

    /// How many step-ups (`403 insufficient_scope` sign-ins, whatever the
    /// scopes) this provider makes in its lifetime before
    /// [`ClientAuthError::TooManyPrompts`]. Default 10.
    pub fn max_step_ups_per_session(mut self, step_ups: u32) -> Self {
        self.prompt_limits.step_ups_per_session = step_ups;
        self
    }

    /// Falls back to 2025-03-26 discovery for servers that publish no
    /// Protected Resource Metadata (authorization server metadata at the
    /// MCP server's origin, else its default `/authorize`, `/token` and
    /// `/register`). Default `true`; `false` refuses such servers. The
    /// fallback never applies to a server that publishes resource metadata;
    /// see the `discovery` notes in the crate docs for what it trusts.
    pub fn allow_2025_03_26_fallback(mut self, allow: bool) -> Self {
        self.legacy_fallback = allow;
        self
    }

    /// Accepts plain-HTTP authorization servers and metadata on any host.
    /// For development only. Without it, plain HTTP is accepted only to
    /// loopback addresses, and only when the MCP server is on loopback too:
    /// a remote server cannot send the client to services on the user's
    /// machine.
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// Reads time from `clock`.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Checks the configuration and builds the provider. Nothing is
    /// fetched yet.
    pub fn build(self) -> Result<OAuthClientProvider, ClientAuthError> {
        let server = canonical_server_url(&self.server)?;
        let (Some(tokens), Some(pending)) = (self.tokens, self.pending) else {
            return Err(ClientAuthError::Config {
                what: "OAuthClientProvider",
                reason: "no store: call .store(..) (or .token_store(..) and .pending_store(..))"
                    .to_owned(),
            });
        };
        if let Some(url) = &self.metadata_document_url {
            let parsed = Url::parse(url).map_err(|e| ClientAuthError::Config {
                what: "client metadata document URL",
                reason: format!("{url:?} is not a URL ({e})"),
            })?;
            if parsed.scheme() != "https" && !crate::client::fetch::is_loopback(&parsed) {
                return Err(ClientAuthError::Config {
                    what: "client metadata document URL",
                    reason: format!("{url} must be an https URL"),
                });
            }
        }
        if let RedirectTarget::External(uri) = &self.redirect {
            Url::parse(uri).map_err(|e| ClientAuthError::Config {
                what: "redirect URI",
                reason: format!("{uri:?} is not a URL ({e})"),
            })?;
        }
        let http = match self.http {
            Some(http) => http,
            None => OAuthHttpClient::new().map_err(|e| ClientAuthError::Config {
                what: "HTTP client",
                reason: format!("it could not be built ({e})"),
            })?,
        };
        let fetcher = Fetcher::new(http, self.allow_insecure_http, &server);
        Ok(OAuthClientProvider {
            inner: Arc::new(Inner {
                server,
                fetcher,
                tokens,
                pending,
                clock: self.clock,
                namespace: self.namespace,
                client_metadata: self.client_metadata,
                pre_registered: self.pre_registered,
                metadata_document_url: self.metadata_document_url,
                redirect: self.redirect,
                interaction: self.interaction,
                refresh_skew: self.refresh_skew,
                authorization_timeout: self.authorization_timeout,
                max_step_up_attempts: self.max_step_up_attempts,
                legacy_fallback: self.legacy_fallback,
                prompts: Mutex::new(PromptBudget::new(self.prompt_limits)),
                session: RwLock::new(None),
                setup: tokio::sync::Mutex::new(()),
                listener: tokio::sync::Mutex::new(None),
                own_flows: Mutex::new(HashMap::new()),
                beginning: tokio::sync::Mutex::new(()),
                last_step_up: Mutex::new(None),
            }),
        })
    }
}

impl OAuthClientProvider {
    /// The MCP server's URL.
    pub fn server_url(&self) -> &str {
        self.inner.server.as_str()
    }

    /// The authorization server in use, once discovered (or read back).
    pub fn issuer(&self) -> Option<String> {
        self.session().map(|s| s.issuer.clone())
    }

    /// The resource identifier tokens are requested for, once discovered.
    pub fn resource(&self) -> Option<String> {
        self.session().map(|s| s.resource.clone())
    }

    /// The key the token is stored under, once discovered.
    pub fn token_key(&self) -> Option<TokenKey> {
        self.session().map(|s| s.token_key(&self.inner.namespace))
    }

    /// Signs the user out: revokes the tokens at the authorization server
    /// when it offers revocation (RFC 7009: the refresh token, which ends
    /// the whole grant, then the access token), then forgets them, so the
    /// next request signs in again; with [`SignOut::ForgetRegistration`]
    /// it forgets the dynamic client registration too, so that sign-in
    /// registers again. Discovery results stay.
    ///
    /// The tokens are removed from the store even when revocation fails
    /// (the server is down, refuses the client): [`SignedOut::revocation`]
    /// says so, and a warning is logged.
    ///
    /// ```no_run
    /// # async fn demo(provider: mcp_authkit_providers::client::OAuthClientProvider)
    /// # -> Result<(), mcp_authkit_providers::client::ClientAuthError> {
    /// use mcp_authkit_providers::client::{Revocation, SignOut};
    ///
    /// let signed_out = provider.sign_out(SignOut::KeepRegistration).await?;
    /// if let Revocation::Failed(error) = &signed_out.revocation {
    ///     eprintln!("signed out here; the server may still honour the token: {error}");
    /// }
    /// provider.sign_out(SignOut::ForgetRegistration).await?; // start over entirely
    /// # Ok(()) }
    /// ```
    pub async fn sign_out(&self, what: SignOut) -> Result<SignedOut, ClientAuthError> {
        let Some(session) = self.current_session().await? else {
            return Ok(SignedOut {
                removed: false,
                revocation: Revocation::NothingToRevoke,
            });
        };
        let key = session.token_key(&self.inner.namespace);
        let stored = self.inner.tokens.get(&key).await?;
        let revocation = match (&session.metadata.revocation_endpoint, &stored) {
            (_, None) => Revocation::NothingToRevoke,
            (None, Some(_)) => Revocation::NotOffered,
            (Some(endpoint), Some(stored)) => {
                match revoke_tokens(&session.oauth, endpoint, &stored.record).await {
                    Ok(()) => Revocation::Revoked,
                    Err(error) => {
                        tracing::warn!(
                            %error,
                            "revoking the tokens at sign-out failed; removing them here anyway"
                        );
                        Revocation::Failed(error)
                    }
                }
            }
        };
        let removed = self.inner.tokens.delete(&key).await?;
        if what == SignOut::ForgetRegistration && session.identity.forget_any().await? {
            tracing::info!(issuer = %session.issuer, "forgot the client registration");
        }
        Ok(SignedOut {
            removed,
            revocation,
        })
    }

    fn session(&self) -> Option<Arc<Session>> {
        self.inner
            .session
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_session(&self, session: Arc<Session>) {
        *self
            .inner
            .session
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(session);
    }

    fn discovery_key(&self) -> TokenKey {
        TokenKey::new(
            format!("{}/discovery", self.inner.namespace),
            self.inner.server.as_str(),
        )
    }

    fn registration_key(&self, issuer: &str) -> TokenKey {
        TokenKey::new(format!("{}/registration", self.inner.namespace), issuer)
    }

    /// The session in memory, else the one a previous run stored.
    async fn current_session(&self) -> Result<Option<Arc<Session>>, ClientAuthError> {
        if let Some(session) = self.session() {
            return Ok(Some(session));
        }
        let _setup = self.inner.setup.lock().await;
        if let Some(session) = self.session() {
            return Ok(Some(session));
        }
        let Some(found) = stored_discovery(
            self.inner.tokens.as_ref(),
            &self.discovery_key(),
            &self.inner.fetcher,
        )
        .await?
        else {
            return Ok(None);
        };
        let session = Arc::new(self.new_session(found.record, found.metadata, false)?);
        self.set_session(Arc::clone(&session));
        Ok(Some(session))
    }

    /// Discovers (again) when there is no session, when the one in memory
    /// was read back from the store, or when the challenge names other
    /// metadata; else keeps the current one.
    async fn session_for(
        &self,
        challenge: &AuthChallenge,
    ) -> Result<Arc<Session>, ClientAuthError> {
        let keep = |session: &Session| {
            session.live
                && challenge.resource_metadata().is_none_or(|url| {
                    session.resource_metadata_url.as_deref() == Some(url)
                        || session.challenge_metadata_url.as_deref() == Some(url)
                })
        };
        if let Some(session) = self.session().filter(|s| keep(s)) {
            return Ok(session);
        }
        let _setup = self.inner.setup.lock().await;
        if let Some(session) = self.session().filter(|s| keep(s)) {
            return Ok(session);
        }
        let found = discover(
            &self.inner.fetcher,
            &self.inner.server,
            challenge.resource_metadata(),
            self.inner.legacy_fallback,
        )
        .await?;
        self.inner
            .tokens
            .put(
                &self.discovery_key(),
                &records::encode(&found.record, self.inner.clock.now()),
            )
            .await?;
        let mut session = self.new_session(found.record, found.metadata, true)?;
        session.challenge_metadata_url = challenge.resource_metadata().map(str::to_owned);
        tracing::debug!(issuer = %session.issuer, resource = %session.resource, "discovered");
        let session = Arc::new(session);
        self.set_session(Arc::clone(&session));
        Ok(session)
    }

    fn new_session(
        &self,
        discovery: DiscoveryRecord,
        metadata: AuthorizationServerMetadata,
        live: bool,
    ) -> Result<Session, ClientAuthError> {
        let metadata = Arc::new(metadata);
        let identity = Arc::new(self.identity_at(&metadata));
        let oauth = Arc::new(ServerClient {
            fetcher: self.inner.fetcher.clone(),
            metadata: Arc::clone(&metadata),
            identity: Arc::clone(&identity),
            resource: discovery.resource.clone(),
            clock: Arc::clone(&self.inner.clock),
        });
        let mut config = LifecycleConfig::new(String::new(), Vec::new());
        config.refresh_skew = self.inner.refresh_skew;
        // A flow nobody completes expires when its waiter gives up, so a
        // crashed run does not leave one that later runs would join.
        config.flow_ttl = self.inner.authorization_timeout + Duration::from_secs(5);
        let lifecycle = TokenLifecycle::builder(
            token_provider(&self.inner.namespace, &metadata.issuer),
            Arc::clone(&oauth) as Arc<dyn mcp_authkit_core::OAuthClient>,
            Arc::clone(&self.inner.tokens),
            Arc::clone(&self.inner.pending),
        )
        .config(config)
        .clock(Arc::clone(&self.inner.clock))
        // Metrics name the client by its namespace, never by the issuer:
        // labels hold no URL.
        .metrics_label(self.inner.namespace.clone())
        .build()?;
        Ok(Session {
            issuer: metadata.issuer.clone(),
            resource: discovery.resource,
            resource_metadata_url: discovery.resource_metadata_url,
            challenge_metadata_url: None,
            scopes_supported: discovery.scopes_supported,
            identity,
            metadata,
            oauth,
            lifecycle,
            live,
        })
    }

    /// Who this client is at the authorization server of `metadata`:
    /// pre-registered, a metadata document the server accepts, or a dynamic
    /// registration (stored, or made at the first sign-in).
    fn identity_at(&self, metadata: &Arc<AuthorizationServerMetadata>) -> Identity {
        if let Some(client) = self
            .inner
            .pre_registered
            .as_ref()
            .filter(|c| c.applies_to(&metadata.issuer))
        {
            return Identity::Configured(client.credentials(metadata));
        }
        if let Some(url) = &self.inner.metadata_document_url
            && metadata.client_id_metadata_document_supported == Some(true)
        {
            return Identity::Configured(ClientCredentials::with_secret(
                url.clone(),
                None,
                TokenEndpointAuthMethod::None,
            ));
        }
        Identity::Registered(Box::new(Registrations {
            tokens: Arc::clone(&self.inner.tokens),
            key: self.registration_key(&metadata.issuer),
            clock: Arc::clone(&self.inner.clock),
            fetcher: self.inner.fetcher.clone(),
            server: Arc::clone(metadata),
            client: self.inner.client_metadata.clone(),
            sign_in: self.inner.authorization_timeout,
            current: RwLock::new(None),
            registering: tokio::sync::Mutex::new(()),
        }))
    }

    /// The redirect URI of the next flow, starting the loopback listener if
    /// it is the target.
    async fn redirect_uri(&self, session: &Session) -> Result<String, ClientAuthError> {
        match &self.inner.redirect {
            RedirectTarget::External(uri) => Ok(uri.clone()),
            RedirectTarget::Loopback(config) => {
                let mut listener = self.inner.listener.lock().await;
                if let Some(listener) = listener.as_ref() {
                    return Ok(listener.redirect_uri().to_owned());
                }
                // Prefer the port a stored registration names, so it stays
                // valid across restarts.
                let preferred = session
                    .identity
                    .registered_redirect_uris()
                    .await?
                    .iter()
                    .find_map(|u| config.port_of(u));
                let started = LoopbackListener::bind(config, preferred).await?;
                let uri = started.redirect_uri().to_owned();
                *listener = Some(started);
                Ok(uri)
            }
        }
    }

    /// Runs (or joins) an authorization for `scopes` and returns the new
    /// token. `replacing` is the revision of the stored token (if any) when
    /// the caller decided it needs a new one.
    ///
    /// A dynamic registration the server refuses during a sign-in this
    /// provider shows (`invalid_client` or `unauthorized_client` from the
    /// authorization or token endpoint, an error page at the authorization
    /// endpoint) is dropped, and the sign-in runs once more with a new
    /// registration; one whose sign-in timed out is dropped too, so the
    /// next attempt starts clean. A refused registration is never kept.
    async fn authorize(
        &self,
        session: Arc<Session>,
        scopes: Vec<String>,
        replacing: Option<Revision>,
        needed: &[String],
    ) -> Result<BearerToken, ClientAuthError> {
        // Before anyone is sent to a browser for a grant the server refuses.
        session.metadata.require_grant("authorization_code")?;
        let mut registered_again = false;
        loop {
            let failure = match self
                .authorize_once(&session, &scopes, replacing, needed)
                .await
            {
                Ok(token) => return Ok(token),
                Err(failure) => failure,
            };
            let Some(client_id) = failure
                .client_id
                .filter(|_| session.identity.is_registered())
            else {
                return Err(failure.error);
            };
            let refused = refuses_client(&failure.error);
            if !refused && !matches!(failure.error, ClientAuthError::TimedOut { .. }) {
                return Err(failure.error);
            }
            session.identity.forget(&client_id).await?;
            if !refused || registered_again {
                return Err(failure.error);
            }
            tracing::warn!(
                error = %failure.error,
                "the authorization server refused the registered client; registering again"
            );
            registered_again = true;
        }
    }

    /// One sign-in attempt: the client identity for the redirect URI, then
    /// a flow (started, or joined).
    async fn authorize_once(
        &self,
        session: &Session,
        scopes: &[String],
        replacing: Option<Revision>,
        needed: &[String],
    ) -> Result<BearerToken, SignInFailure> {
        let redirect_uri = self.redirect_uri(session).await?;
        let credentials = session.identity.for_sign_in(&redirect_uri).await?;
        let request = FlowRequest::default()
            .scopes(scopes.to_vec())
            .redirect_uri(redirect_uri.clone())
            .attribute(FLOW_CLIENT_ID, credentials.client_id.clone());
        let step = {
            // The flow is claimed as ours (or judged orphaned) under the
            // same lock it is begun under; see `beginning`.
            let _beginning = self.inner.beginning.lock().await;
            let begun = session
                .lifecycle
                .begin_authorization(&session.resource, request)
                .await?;
            match begun {
                BeginOutcome::Started(flow) => {
                    let guard = FlowGuard::new(self, session, &flow);
                    SignInStep::Started(flow, guard)
                }
                BeginOutcome::Joined(flow)
                    if matches!(self.inner.redirect, RedirectTarget::Loopback(_))
                        && flow.redirect_uri == redirect_uri
                        && !self.is_own_flow(&flow.state) =>
                {
                    // Our listener's port, which no live process but this
                    // one can hold, and a flow this provider is not
                    // running: a run that died mid-sign-in started it.
                    // Show it again rather than wait for nobody.
                    let guard = FlowGuard::new(self, session, &flow);
                    SignInStep::Show(flow, guard)
                }
                BeginOutcome::Joined(flow) => SignInStep::Wait(flow.state),
                BeginOutcome::Completing(state) => SignInStep::Wait(state),
            }
        };
        match step {
            SignInStep::Started(flow, mut guard) => {
                // A concurrent request's flow may have finished between our
                // decision and this start (its token is stored before its
                // flow ends): then ours is not needed.
                if let Some(fresh) = self.fresh_token(session, replacing, needed).await? {
                    guard.disarm();
                    let outcome = FlowOutcome::Authorized {
                        revision: fresh.revision().expect("a stored token has a revision"),
                    };
                    session.lifecycle.abandon_flow(&flow.state, outcome).await?;
                    return Ok(fresh);
                }
                self.run_flow(session, flow, guard).await?
            }
            SignInStep::Show(flow, guard) => self.run_flow(session, flow, guard).await?,
            SignInStep::Wait(state) => self.wait_for_flow(session, &state).await?,
        }
        match session.lifecycle.access(&session.resource).await? {
            Access::Ready(token) => Ok(BearerToken::from_access(&token)),
            Access::NeedsAuthorization(_) => Err(ClientAuthError::Authorization(OAuthError::new(
                OAuthErrorKind::Other,
                "the authorization completed but no token is stored; it may have been signed out \
                 meanwhile",
            ))
            .into()),
        }
    }

    /// A valid stored token other than the one at `replacing` that has the
    /// `scopes` the server asked for.
    async fn fresh_token(
        &self,
        session: &Session,
        replacing: Option<Revision>,
        scopes: &[String],
    ) -> Result<Option<BearerToken>, ClientAuthError> {
        let key = session.token_key(&self.inner.namespace);
        let Some(stored) = self.inner.tokens.get(&key).await? else {
            return Ok(None);
        };
        let fresh = Some(stored.revision) != replacing
            && !stored.record.is_expired_at(self.inner.clock.now())
            && stored.record.has_scopes(scopes);
        Ok(fresh.then(|| BearerToken::from_stored(&stored)))
    }

    fn is_own_flow(&self, state: &FlowState) -> bool {
        lock(&self.inner.own_flows).contains_key(state.as_str())
    }

    async fn wait_for_flow(
        &self,
        session: &Session,
        state: &FlowState,
    ) -> Result<(), ClientAuthError> {
        let waiting = Waiting::new(&session.lifecycle);
        let outcome = session
            .lifecycle
            .wait(state, self.inner.authorization_timeout)
            .await;
        waiting.ended();
        match outcome? {
            Some(FlowOutcome::Authorized { .. }) => Ok(()),
            Some(outcome) => Err(outcome_error(outcome)),
            None => {
                // Not the flow's end: the request that shows it ends it.
                session.lifecycle.record_wait_given_up(GaveUp::TimedOut);
                Err(ClientAuthError::TimedOut {
                    what: "the authorization another request started",
                    after: self.inner.authorization_timeout,
                })
            }
        }
    }

    /// Shows the flow to the user, receives the redirect and completes it.
    /// A failure names the client the flow was for; the flow is ended
    /// before it returns, so a retry starts a new one.
    async fn run_flow(
        &self,
        session: &Session,
        flow: PendingFlow,
        mut guard: FlowGuard,
    ) -> Result<(), SignInFailure> {
        let client_id = flow.attributes.get(FLOW_CLIENT_ID).cloned();
        let result = self.show_and_complete(session, &flow, &mut guard).await;
        if let Err(error) = &result
            && guard.armed
        {
            guard.disarm();
            let outcome = FlowOutcome::Failed {
                reason: crate::client::error::cap(&error.to_string()),
            };
            if let Err(error) = session.lifecycle.abandon_flow(&flow.state, outcome).await {
                tracing::warn!(%error, "could not end a failed authorization flow");
            }
        }
        result.map_err(|error| SignInFailure { error, client_id })
    }

    async fn show_and_complete(
        &self,
        session: &Session,
        flow: &PendingFlow,
        guard: &mut FlowGuard,
    ) -> Result<(), ClientAuthError> {
        let url = session.lifecycle.authorization_url(flow)?;
        let expected = match self.inner.listener.lock().await.as_ref() {
            Some(listener) if listener.redirect_uri() == flow.redirect_uri => {
                Some(listener.expect(flow.state.as_str()))
            }
            _ => None,
        };
        let prompt = AuthorizationPrompt {
            url,
            redirect_uri: flow.redirect_uri.clone(),
            scopes: flow.scopes.clone(),
            issuer: session.issuer.clone(),
            resource: session.resource.clone(),
        };
        let now = self.inner.clock.now();
        lock(&self.inner.prompts).show(now)?;
        // The request waits for the user from here: in the hook, when it
        // shows the link and awaits the redirect itself, or at the loopback
        // listener after it. A request dropped in either place gave up.
        let waiting = Waiting::new(&session.lifecycle);
        let shown = self.inner.interaction.authorize(&prompt).await;
        let callback = match shown {
            Ok(PromptOutcome::Redirected(url)) => {
                waiting.ended();
                url
            }
            Err(error) => {
                waiting.ended();
                return Err(error);
            }
            Ok(PromptOutcome::AwaitRedirect) => {
                let Some(mut expected) = expected else {
                    waiting.ended();
                    return Err(ClientAuthError::Config {
                        what: "user interaction",
                        reason: "the redirect URI is external, so the interaction hook must \
                                 return PromptOutcome::Redirected with the authorization response"
                            .to_owned(),
                    });
                };
                let redirect =
                    tokio::time::timeout(self.inner.authorization_timeout, &mut expected.receiver)
                        .await;
                waiting.ended();
                match redirect {
                    Ok(Ok(url)) => url,
                    Ok(Err(_)) => {
                        return Err(ClientAuthError::Interaction(
                            "the redirect listener stopped".to_owned(),
                        ));
                    }
                    Err(_) => {
                        // The wait gave up; `run_flow` then ends the flow
                        // (counted as `abandoned`), so no later request
                        // joins a sign-in nobody finishes.
                        session.lifecycle.record_wait_given_up(GaveUp::TimedOut);
                        return Err(ClientAuthError::TimedOut {
                            what: "signing in",
                            after: self.inner.authorization_timeout,
                        });
                    }
                }
            }
        };
        let params = callback_params(&callback, flow)?;
        // From here on the lifecycle ends the flow, whatever happens.
        guard.disarm();
        let completed = session.lifecycle.complete_authorization(params).await?;
        match completed.outcome {
            FlowOutcome::Authorized { .. } => Ok(()),
            outcome => Err(outcome_error(outcome)),
        }
    }

    /// Marks the refused token expired so the lifecycle refreshes it
    /// (single-flight); returns the token to retry with, or `None` when a
    /// new authorization is needed.
    async fn replace_refused_token(
        &self,
        session: &Session,
        refused: Option<&BearerToken>,
    ) -> Result<Option<BearerToken>, ClientAuthError> {
        let tokens = &self.inner.tokens;
        let key = session.token_key(&self.inner.namespace);
        let now = self.inner.clock.now();
        let Some(stored) = tokens.get(&key).await? else {
            return Ok(None);
        };
        if let Some(refused) = refused {
            if refused.revision() == Some(stored.revision) {
                if stored.record.refresh_token.is_none() {
                    tokens.delete_if_revision(&key, stored.revision).await?;
                    return Ok(None);
                }
                // Record that the server no longer takes it, at exactly the
                // refused revision: the lifecycle then refreshes it (once,
                // under the store's lease). A conflict means another
                // request got there first; the lifecycle reads its result.
                let mut expired = stored.record.clone();
                expired.expires_at = Some(now);
                tokens
                    .compare_and_swap(&key, Some(stored.revision), &expired)
                    .await?;
            } else if !stored.record.is_expired_at(now) {
                // Another request already replaced the refused token.
                return Ok(Some(BearerToken::from_stored(&stored)));
            }
        }
        match session.lifecycle.access(&session.resource).await {
            Ok(Access::Ready(token)) => Ok(Some(BearerToken::from_access(&token))),
            Ok(Access::NeedsAuthorization(_)) => Ok(None),
            Err(error) => self.refresh_failed(session, error).await,
        }
    }

    /// A refresh failed. When it refused a dynamic registration
    /// (`invalid_client`, `unauthorized_client`, or a secret known to have
    /// expired), the registration is dropped, and so is the expired token
    /// (its refresh token belongs to that client): `None`, so the next
    /// sign-in registers again. Any other failure, or the refusal of
    /// configured credentials, is the caller's error.
    async fn refresh_failed(
        &self,
        session: &Session,
        error: mcp_authkit_core::Error,
    ) -> Result<Option<BearerToken>, ClientAuthError> {
        let refused = matches!(&error, mcp_authkit_core::Error::OAuth(e) if e.kind() == OAuthErrorKind::InvalidClient);
        if !refused || !session.identity.is_registered() {
            return Err(error.into());
        }
        tracing::warn!(%error, "the client was refused at refresh; registering again");
        if let Some(client_id) = session.identity.client_id() {
            session.identity.forget(&client_id).await?;
        }
        let tokens = &self.inner.tokens;
        let key = session.token_key(&self.inner.namespace);
        match tokens.get(&key).await? {
            // Another request signed in again meanwhile.
            Some(stored) if !stored.record.is_expired_at(self.inner.clock.now()) => {
                Ok(Some(BearerToken::from_stored(&stored)))
            }
            Some(stored) => {
                tokens.delete_if_revision(&key, stored.revision).await?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// The scopes of a new authorization after a 401: the challenge's, else
    /// the resource's `scopes_supported`, else none; plus what the replaced
    /// token had, so a re-authorization does not lose a step-up.
    fn scopes_after_unauthorized(
        &self,
        session: &Session,
        challenge: &AuthChallenge,
        previously_granted: &[String],
    ) -> Vec<String> {
        let mut scopes = challenge.scopes();
        if scopes.is_empty() {
            scopes = session.scopes_supported.clone().unwrap_or_default();
        }
        union(previously_granted, &scopes)
    }

    /// Counts a step-up for `scopes` triggered by the refusal of the token at
    /// `from`; refuses once `max_step_up_attempts` in a row asked for the
    /// same scopes.
    fn count_step_up(
        &self,
        scopes: &[String],
        from: Option<Revision>,
    ) -> Result<(), ClientAuthError> {
        let wanted: BTreeSet<String> = scopes.iter().cloned().collect();
        let mut last = lock(&self.inner.last_step_up);
        let attempts = match last.as_ref() {
            Some(step) if step.scopes == wanted && from.is_some() && step.from == from => {
                return Ok(());
            }
            Some(step) if step.scopes == wanted => step.attempts + 1,
            _ => 1,
        };
        if attempts > self.inner.max_step_up_attempts {
            return Err(ClientAuthError::StepUpLimit {
                scopes: scopes.to_vec(),
                attempts: attempts - 1,
            });
        }
        *last = Some(StepUp {
            scopes: wanted,
            attempts,
            from,
        });
        Ok(())
    }
}

#[async_trait]
impl AuthProvider for OAuthClientProvider {
    async fn token(&self) -> Result<Option<BearerToken>, ClientAuthError> {
        let Some(session) = self.current_session().await? else {
            return Ok(None);
        };
        match session.lifecycle.access(&session.resource).await {
            Ok(Access::Ready(token)) => Ok(Some(BearerToken::from_access(&token))),
            Ok(Access::NeedsAuthorization(_)) => Ok(None),
            // A refused registration: no token, so the server's 401 starts
            // a sign-in with a new one.
            Err(error) => self.refresh_failed(&session, error).await,
        }
    }

    async fn handle_unauthorized(
        &self,
        challenge: &AuthChallenge,
    ) -> Result<BearerToken, ClientAuthError> {
        let session = self.session_for(challenge).await?;
        let key = session.token_key(&self.inner.namespace);
        let previous = self.inner.tokens.get(&key).await?;
        if let Some(token) = self
            .replace_refused_token(&session, challenge.rejected_token())
            .await?
        {
            return Ok(token);
        }
        let granted = previous.map(|p| p.record.scopes).unwrap_or_default();
        let scopes = self.scopes_after_unauthorized(&session, challenge, &granted);
        *lock(&self.inner.last_step_up) = None;
        let session = self.session().unwrap_or(session);
        let refused = challenge.rejected_token().and_then(BearerToken::revision);
        self.authorize(session, scopes, refused, &challenge.scopes())
            .await
    }

    async fn handle_forbidden(
        &self,
        challenge: &AuthChallenge,
    ) -> Result<BearerToken, ClientAuthError> {
        if !challenge.is_insufficient_scope() {
            return Err(ClientAuthError::Forbidden {
                error: challenge.error().map(crate::client::error::cap),
                description: challenge.error_description().map(crate::client::error::cap),
            });
        }
        let session = self.session_for(challenge).await?;
        let key = session.token_key(&self.inner.namespace);
        let refused = challenge.rejected_token();
        let stored = self.inner.tokens.get(&key).await?;
        let granted = match (refused, &stored) {
            (Some(token), _) if !token.scopes().is_empty() => token.scopes().to_vec(),
            (_, Some(stored)) => stored.record.scopes.clone(),
            _ => Vec::new(),
        };
        let mut required = challenge.scopes();
        if required.is_empty() {
            required = session.scopes_supported.clone().unwrap_or_default();
        }
        let scopes = union(&granted, &required);
        if let (Some(refused), Some(stored)) = (refused, &stored)
            && refused.revision() != Some(stored.revision)
            && !stored.record.is_expired_at(self.inner.clock.now())
            && stored.record.has_scopes(&scopes)
        {
            // A concurrent request already stepped up to these scopes.
            return Ok(BearerToken::from_stored(stored));
        }
        self.count_step_up(&scopes, refused.and_then(BearerToken::revision))?;
        lock(&self.inner.prompts).step_up()?;
        tracing::info!(?scopes, "stepping up scopes");
        let session = self.session().unwrap_or(session);
        let refused = refused.and_then(BearerToken::revision);
        self.authorize(session, scopes.clone(), refused, &scopes)
            .await
    }
}

/// What [`OAuthClientProvider::sign_out`] forgets besides the token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignOut {
    /// Only the token: the next sign-in reuses the client registration.
    #[default]
    KeepRegistration,
    /// The token and the dynamic client registration at its authorization
    /// server: the next sign-in registers again (to start over, or when
    /// the registration was revoked out of band). Configured clients
    /// (pre-registered, metadata document) have none to forget.
    ForgetRegistration,
}

/// What [`OAuthClientProvider::sign_out`] did.
#[derive(Debug)]
#[non_exhaustive]
pub struct SignedOut {
    /// Whether a token was stored (and is now removed).
    pub removed: bool,
    /// What became of the tokens at the authorization server.
    pub revocation: Revocation,
}

/// Whether the authorization server revoked the tokens at sign-out.
#[derive(Debug)]
#[non_exhaustive]
pub enum Revocation {
    /// It revoked them (RFC 7009).
    Revoked,
    /// It offers no `revocation_endpoint`: the tokens stay valid there
    /// until they expire.
    NotOffered,
    /// There was no token to revoke.
    NothingToRevoke,
    /// Revocation failed; the tokens were removed here all the same, but
    /// the server may still honour them until they expire.
    Failed(ClientAuthError),
}

/// Revokes the refresh token (which ends the grant) and the access token.
async fn revoke_tokens(
    oauth: &ServerClient,
    endpoint: &str,
    record: &mcp_authkit_core::TokenRecord,
) -> Result<(), ClientAuthError> {
    if let Some(refresh_token) = &record.refresh_token {
        oauth
            .revoke(endpoint, refresh_token, "refresh_token")
            .await?;
    }
    oauth
        .revoke(endpoint, &record.access_token, "access_token")
        .await?;
    Ok(())
}

/// Why a sign-in attempt failed, and with which client when this provider
/// showed the flow itself (so a refused registration can be dropped).
struct SignInFailure {
    error: ClientAuthError,
    client_id: Option<String>,
}

impl From<ClientAuthError> for SignInFailure {
    fn from(error: ClientAuthError) -> Self {
        SignInFailure {
            error,
            client_id: None,
        }
    }
}

impl From<mcp_authkit_core::Error> for SignInFailure {
    fn from(error: mcp_authkit_core::Error) -> Self {
        ClientAuthError::from(error).into()
    }
}

/// Whether the authorization server refused the client itself (as opposed
/// to the user, a code, a scope): `invalid_client` or `unauthorized_client`
/// from an endpoint, or an error page at the authorization endpoint.
fn refuses_client(error: &ClientAuthError) -> bool {
    matches!(error, ClientAuthError::AuthorizationRequestRefused { .. })
        || error
            .oauth_error()
            .is_some_and(|e| e.kind() == OAuthErrorKind::InvalidClient)
}

/// `a` followed by what of `b` it lacks.
pub(crate) fn union(a: &[String], b: &[String]) -> Vec<String> {
    let mut all = a.to_vec();
    for scope in b {
        if !all.contains(scope) {
            all.push(scope.clone());
        }
    }
    all
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn outcome_error(outcome: FlowOutcome) -> ClientAuthError {
    match outcome {
        FlowOutcome::Denied { error, description } => ClientAuthError::Authorization(
            OAuthError::from_response(None, &error, description.as_deref()),
        ),
        FlowOutcome::Failed { reason } => ClientAuthError::Authorization(OAuthError::new(
            OAuthErrorKind::Other,
            crate::client::error::cap(&reason),
        )),
        other => ClientAuthError::Authorization(OAuthError::new(
            OAuthErrorKind::Other,
            format!("the authorization ended unexpectedly ({other:?})"),
        )),
    }
}

/// The authorization response of `flow` from the redirect URL.
fn callback_params(callback: &Url, flow: &PendingFlow) -> Result<CallbackParams, ClientAuthError> {
    let expected = Url::parse(&flow.redirect_uri).map_err(|e| ClientAuthError::Config {
        what: "redirect URI",
        reason: format!("it is not a URL ({e})"),
    })?;
    if !is_redirect_to(callback, &expected) {
        return Err(ClientAuthError::Interaction(
            "the authorization response did not come to the redirect URI".to_owned(),
        ));
    }
    let mut state = None;
    let mut code = None;
    let mut error = None;
    let mut description = None;
    let mut iss = None;
    for (name, value) in callback.query_pairs() {
        let slot = match name.as_ref() {
            "state" => &mut state,
            "code" => &mut code,
            "error" => &mut error,
            "error_description" => &mut description,
            "iss" => &mut iss,
            _ => continue,
        };
        if slot.is_some() {
            return Err(ClientAuthError::Interaction(format!(
                "the authorization response repeats the parameter {name}"
            )));
        }
        *slot = Some(value.into_owned());
    }
    match state {
        None => return Err(ClientAuthError::StateMismatch("missing")),
        Some(state) if state != flow.state.as_str() => {
            return Err(ClientAuthError::StateMismatch("different"));
        }
        Some(_) => {}
    }
    let mut params = match (code, error) {
        (_, Some(error)) => CallbackParams::error(flow.state.clone(), error, description),
        (Some(code), None) => {
            let mut params = CallbackParams::success(flow.state.clone(), String::new());
            params.code = Some(SecretString::from(code));
            params
        }
        (None, None) => {
            return Err(ClientAuthError::Interaction(
                "the authorization response has neither a code nor an error".to_owned(),
            ));
        }
    };
    if let Some(iss) = iss {
        params = params.with_iss(iss);
    }
    Ok(params)
}

/// What a sign-in attempt does with the flow it began or found.
enum SignInStep {
    /// A new flow, ours to show unless a token arrived meanwhile.
    Started(PendingFlow, FlowGuard),
    /// A flow a dead run left behind, ours to show again.
    Show(PendingFlow, FlowGuard),
    /// Another request's flow: wait for its outcome.
    Wait(FlowState),
}

/// Counts a wait for a sign-in as given up, `cancelled`, when the
/// request's future is dropped while it waits: the caller gave up on the
/// request (its own request timeout, say), and no code after the wait
/// runs to say so. A wait that ends by itself says how it ended.
struct Waiting<'a> {
    lifecycle: &'a TokenLifecycle,
    armed: bool,
}

impl<'a> Waiting<'a> {
    fn new(lifecycle: &'a TokenLifecycle) -> Self {
        Waiting {
            lifecycle,
            armed: true,
        }
    }

    /// The wait ended: with the outcome, an error, or its own timeout,
    /// which the caller counts.
    fn ended(mut self) {
        self.armed = false;
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.lifecycle.record_wait_given_up(GaveUp::Cancelled);
        }
    }
}

/// Keeps track of a flow this provider shows, and ends it (so waiters stop
/// waiting) if it is dropped before the callback completed it.
struct FlowGuard {
    lifecycle: TokenLifecycle,
    state: FlowState,
    armed: bool,
}

impl FlowGuard {
    fn new(provider: &OAuthClientProvider, session: &Session, flow: &PendingFlow) -> Self {
        let now = provider.inner.clock.now();
        let mut own = lock(&provider.inner.own_flows);
        own.retain(|_, expires_at| *expires_at > now);
        own.insert(flow.state.as_str().to_owned(), flow.expires_at);
        FlowGuard {
            lifecycle: session.lifecycle.clone(),
            state: flow.state.clone(),
            armed: true,
        }
    }

    /// The callback is being processed: completion (or its failure) ends
    /// the flow, not this guard.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for FlowGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let lifecycle = self.lifecycle.clone();
        let state = self.state.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let outcome = FlowOutcome::Failed {
                    reason: "the client stopped waiting for this sign-in".to_owned(),
                };
                if let Err(error) = lifecycle.abandon_flow(&state, outcome).await {
                    tracing::warn!(%error, "could not end an abandoned authorization flow");
                }
            });
        }
    }
}
