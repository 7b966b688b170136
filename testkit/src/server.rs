//! Starting and stopping the server, and the handle tests drive it with.

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::Extension;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use url::Url;

use crate::authorize::{self, RedirectOutcome};
use crate::client::{ClientRegistration, ClientSource, RegisteredClient};
use crate::error::Error;
use crate::failure::{Endpoint, Failure};
use crate::http::{malformed_json, plain_status};
use crate::keys::{PublicKey, SigningKey};
use crate::requests::RecordedRequest;
use crate::settings::{ConsentMode, Settings};
use crate::state::{Grant, MetadataPatch, State};
use crate::tokens::{IssuedTokens, PendingConsent, TokenGrant, TokenInfo};
use crate::transport::Clients;
use crate::{discovery, grants, introspection, registration, revocation, token};

/// Which of the two listeners a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Main,
    Other,
}

/// What every handler shares.
pub(crate) struct Shared {
    pub(crate) issuer: String,
    pub(crate) base: Url,
    pub(crate) other_base: Url,
    /// The issuer's path (`""` or `/tenant1`); endpoints live under it.
    pub(crate) prefix: String,
    /// For fetching Client ID Metadata Documents.
    pub(crate) http: Clients,
    pub(crate) state: Mutex<State>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Signs the ID tokens and ID-JAGs it issues as an identity provider.
    pub(crate) signing_key: SigningKey,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps behind (every
        // update is a single insert or remove), so keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(path);
        url
    }

    /// The URL of an endpoint under the issuer's path (`"/token"`).
    pub(crate) fn endpoint(&self, suffix: &str) -> Url {
        self.url(&format!("{}{suffix}", self.prefix))
    }

    pub(crate) fn begin(&self, request: RecordedRequest) -> Option<Failure> {
        self.lock().begin(request)
    }

    /// Plays an injected failure. `Ok(Some(error))` is an OAuth error code
    /// the endpoint renders its own way; `Err` is the whole answer.
    pub(crate) async fn run_failure(
        &self,
        failure: Option<Failure>,
    ) -> Result<Option<String>, Response> {
        match failure {
            None => Ok(None),
            Some(Failure::Delay(delay)) => {
                tokio::select! {
                    () = tokio::time::sleep(delay) => Ok(None),
                    () = self.wait_for_shutdown() => Err(shutting_down()),
                }
            }
            Some(Failure::Hang) => {
                self.wait_for_shutdown().await;
                Err(shutting_down())
            }
            Some(Failure::Status(code)) => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                Err(plain_status(
                    status,
                    &format!("injected failure: HTTP {code}"),
                ))
            }
            Some(Failure::MalformedJson) => Err(malformed_json()),
            Some(Failure::OAuthError(error)) => Ok(Some(error)),
        }
    }

    /// Plays an injected failure at an endpoint that answers JSON: the
    /// whole answer when there is one (an OAuth error code as a JSON error
    /// body), `None` to go on normally.
    pub(crate) async fn injected_json_failure(&self, failure: Option<Failure>) -> Option<Response> {
        match self.run_failure(failure).await {
            Ok(None) => None,
            Ok(Some(error)) => {
                Some(crate::http::OAuthFailure::new(&error, "injected failure").into_response())
            }
            Err(response) => Some(response),
        }
    }

    async fn wait_for_shutdown(&self) {
        let mut shutdown = self.shutdown.clone();
        // An error means the sender is gone, which also means shutdown.
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    }
}

fn shutting_down() -> Response {
    plain_status(StatusCode::SERVICE_UNAVAILABLE, "test server shutting down")
}

/// A loopback OAuth 2.1 authorization server for tests; shuts down on drop.
///
/// It dereferences to its [`AuthServerHandle`], which has every method a
/// test drives it with; clone a handle with [`handle`](Self::handle) to
/// give it to other tasks.
pub struct TestAuthServer {
    handle: AuthServerHandle,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl TestAuthServer {
    /// A builder, to configure the server before it starts.
    pub fn builder() -> TestAuthServerBuilder {
        TestAuthServerBuilder::new()
    }

    /// Starts a server with the default [`Settings`] on `127.0.0.1` and a
    /// random port.
    pub async fn start() -> Result<TestAuthServer, Error> {
        Self::builder().start().await
    }

    /// A cheap, cloneable handle to this server; it stays usable after the
    /// server stops (requests then fail to connect).
    pub fn handle(&self) -> AuthServerHandle {
        self.handle.clone()
    }

    /// Stops accepting requests, ends hanging ones, and waits (up to 5 s)
    /// for open connections to finish.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Deref for TestAuthServer {
    type Target = AuthServerHandle;

    fn deref(&self) -> &AuthServerHandle {
        &self.handle
    }
}

impl Drop for TestAuthServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

impl std::fmt::Debug for TestAuthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestAuthServer")
            .field("issuer", &self.handle.shared.issuer)
            .finish_non_exhaustive()
    }
}

/// Configures a [`TestAuthServer`]. Every setting can also change while
/// the server runs, except the issuer path and the address.
#[must_use]
pub struct TestAuthServerBuilder {
    settings: Settings,
    issuer_path: String,
    addr: SocketAddr,
    clients: Vec<ClientRegistration>,
    metadata_patch: Option<MetadataPatch>,
}

impl TestAuthServerBuilder {
    fn new() -> Self {
        TestAuthServerBuilder {
            settings: Settings::default(),
            issuer_path: String::new(),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            clients: Vec::new(),
            metadata_patch: None,
        }
    }

    /// Gives the issuer a path (`"/tenant1"`): the issuer becomes
    /// `http://127.0.0.1:PORT/tenant1`, endpoints move under it, and
    /// discovery documents are served with path insertion
    /// (`/.well-known/oauth-authorization-server/tenant1`) and, for OpenID
    /// Connect, path appending too.
    pub fn issuer_path(mut self, path: impl Into<String>) -> Self {
        self.issuer_path = path.into();
        self
    }

    /// The address to listen on. Default `127.0.0.1:0` (a random port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// A client known from the start; give it a fixed
    /// [`client_id`](ClientRegistration::client_id) to refer to it.
    pub fn client(mut self, client: ClientRegistration) -> Self {
        self.clients.push(client);
        self
    }

    /// Edits the [`Settings`].
    pub fn settings(mut self, edit: impl FnOnce(&mut Settings)) -> Self {
        edit(&mut self.settings);
        self
    }

    /// How consent is given ([`Settings::consent`]).
    pub fn consent(mut self, mode: ConsentMode) -> Self {
        self.settings.consent = mode;
        self
    }

    /// The signed-in user by default ([`Settings::default_subject`]).
    pub fn default_subject(mut self, subject: impl Into<String>) -> Self {
        self.settings.default_subject = subject.into();
        self
    }

    /// Access token lifetime ([`Settings::access_token_lifetime`]).
    pub fn access_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.settings.access_token_lifetime = lifetime;
        self
    }

    /// Refresh token lifetime ([`Settings::refresh_token_lifetime`]).
    pub fn refresh_token_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.settings.refresh_token_lifetime = lifetime;
        self
    }

    /// A function that edits every discovery document before it is served,
    /// for defects [`MetadataFault`](crate::MetadataFault) does not cover.
    pub fn metadata_patch(mut self, patch: impl Fn(&mut Value) + Send + Sync + 'static) -> Self {
        self.metadata_patch = Some(Arc::new(patch));
        self
    }

    /// Binds the listeners and starts serving.
    pub async fn start(self) -> Result<TestAuthServer, Error> {
        let prefix = normalize_issuer_path(&self.issuer_path)?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { addr, source })
        };
        let main = bind(self.addr).await?;
        let other = bind(SocketAddr::new(self.addr.ip(), 0)).await?;
        let main_addr = local_addr(&main, self.addr)?;
        let other_addr = local_addr(&other, self.addr)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            issuer: format!("http://{main_addr}{prefix}"),
            base: base_url(main_addr)?,
            other_base: base_url(other_addr)?,
            prefix,
            http: Clients::new(Some(Duration::from_secs(5))),
            state: Mutex::new(State::new(self.settings, self.metadata_patch)),
            shutdown: shutdown_rx.clone(),
            signing_key: SigningKey::generate_es256(),
        });
        let handle = AuthServerHandle { shared };
        for client in self.clients {
            handle.register_client(client)?;
        }
        let tasks = vec![
            spawn_server(
                main,
                router(&handle.shared, Origin::Main),
                shutdown_rx.clone(),
            ),
            spawn_server(other, router(&handle.shared, Origin::Other), shutdown_rx),
        ];
        Ok(TestAuthServer {
            handle,
            shutdown,
            tasks,
        })
    }
}

impl std::fmt::Debug for TestAuthServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestAuthServerBuilder")
            .field("settings", &self.settings)
            .field("issuer_path", &self.issuer_path)
            .field("addr", &self.addr)
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

fn local_addr(listener: &TcpListener, requested: SocketAddr) -> Result<SocketAddr, Error> {
    listener.local_addr().map_err(|source| Error::Bind {
        addr: requested,
        source,
    })
}

fn base_url(addr: SocketAddr) -> Result<Url, Error> {
    Url::parse(&format!("http://{addr}/")).map_err(|e| Error::InvalidInput {
        what: "bind address",
        reason: format!("{addr} does not make a URL: {e}"),
    })
}

/// `""` for no path, else `/a/b` (no trailing slash); only unreserved
/// characters, so routes and URLs need no escaping.
fn normalize_issuer_path(path: &str) -> Result<String, Error> {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let invalid = |reason: &str| Error::InvalidInput {
        what: "issuer path",
        reason: format!("{path:?} {reason}"),
    };
    let Some(rest) = trimmed.strip_prefix('/') else {
        return Err(invalid("must start with '/'"));
    };
    for segment in rest.split('/') {
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            return Err(invalid(
                "must be '/'-separated non-empty segments of letters, digits, '-', '.', '_', '~'",
            ));
        }
    }
    Ok(trimmed.to_owned())
}

fn router(shared: &Arc<Shared>, origin: Origin) -> Router {
    let p = shared.prefix.as_str();
    let mut router = Router::new()
        .route(&format!("{p}/authorize"), get(authorize::authorize))
        .route(&format!("{p}/consent"), post(authorize::consent))
        .route(&format!("{p}/token"), post(token::token))
        .route(&format!("{p}/register"), post(registration::register))
        .route(&format!("{p}/revoke"), post(revocation::revoke))
        .route(&format!("{p}/introspect"), post(introspection::introspect))
        .route(&format!("{p}/userinfo"), get(introspection::userinfo))
        .route(&format!("{p}/jwks"), get(introspection::jwks))
        .route(
            &format!("/.well-known/oauth-authorization-server{p}"),
            get(discovery::oauth_metadata),
        )
        .route(
            &format!("/.well-known/openid-configuration{p}"),
            get(discovery::openid_configuration),
        );
    if !p.is_empty() {
        router = router.route(
            &format!("{p}/.well-known/openid-configuration"),
            get(discovery::openid_configuration_appended),
        );
    }
    router
        .fallback(discovery::fallback)
        .layer(Extension(origin))
        .with_state(Arc::clone(shared))
}

fn spawn_server(
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stopped = async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        };
        // Serving only ends on shutdown; an accept error there is not
        // something a test can act on.
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await;
    })
}

/// Drives a running [`TestAuthServer`]: its URLs, clients, switches,
/// injected failures, counters and tokens. Cheap to clone.
#[derive(Clone)]
pub struct AuthServerHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for AuthServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthServerHandle")
            .field("issuer", &self.shared.issuer)
            .finish_non_exhaustive()
    }
}

impl AuthServerHandle {
    // --- URLs ---------------------------------------------------------------

    /// `http://127.0.0.1:PORT/`.
    pub fn base_url(&self) -> &Url {
        &self.shared.base
    }

    /// The issuer identifier: `http://127.0.0.1:PORT` plus the issuer path,
    /// without a trailing slash. It is the `iss` of authorization responses
    /// and the `issuer` of metadata.
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// A second origin (another port) that serves the same endpoints, the
    /// target of [`MetadataFault::CrossOriginRedirect`](crate::MetadataFault)
    /// and the home of [`host_json`](Self::host_json) documents.
    pub fn other_origin(&self) -> &Url {
        &self.shared.other_base
    }

    /// `{issuer}/authorize`.
    pub fn authorization_endpoint(&self) -> Url {
        self.shared.endpoint("/authorize")
    }

    /// `{issuer}/token`.
    pub fn token_endpoint(&self) -> Url {
        self.shared.endpoint("/token")
    }

    /// `{issuer}/register` (RFC 7591).
    pub fn registration_endpoint(&self) -> Url {
        self.shared.endpoint("/register")
    }

    /// `{issuer}/revoke` (RFC 7009).
    pub fn revocation_endpoint(&self) -> Url {
        self.shared.endpoint("/revoke")
    }

    /// `{issuer}/introspect` (RFC 7662).
    pub fn introspection_endpoint(&self) -> Url {
        self.shared.endpoint("/introspect")
    }

    /// `{issuer}/userinfo`: answers `200` with `{"sub", "client_id",
    /// "scope"}` for a valid bearer token and `401` otherwise, so it can
    /// stand in for a third-party API.
    pub fn userinfo_endpoint(&self) -> Url {
        self.shared.endpoint("/userinfo")
    }

    /// `{issuer}/jwks`: the public key of [`signing_key`](Self::signing_key).
    pub fn jwks_uri(&self) -> Url {
        self.shared.endpoint("/jwks")
    }

    /// `{issuer}/consent`: where the consent page's form posts
    /// (`consent_id`, `decision=approve|deny`).
    pub fn consent_endpoint(&self) -> Url {
        self.shared.endpoint("/consent")
    }

    /// The RFC 8414 metadata URL:
    /// `/.well-known/oauth-authorization-server` plus the issuer path.
    pub fn metadata_url(&self) -> Url {
        self.shared.url(&format!(
            "/.well-known/oauth-authorization-server{}",
            self.shared.prefix
        ))
    }

    /// The OpenID Connect discovery URL with path insertion:
    /// `/.well-known/openid-configuration` plus the issuer path.
    pub fn openid_configuration_url(&self) -> Url {
        self.shared.url(&format!(
            "/.well-known/openid-configuration{}",
            self.shared.prefix
        ))
    }

    /// The OpenID Connect discovery URL with path appending:
    /// `{issuer}/.well-known/openid-configuration` (the same as
    /// [`openid_configuration_url`](Self::openid_configuration_url) for an
    /// issuer without a path).
    pub fn openid_configuration_appended_url(&self) -> Url {
        self.shared.endpoint("/.well-known/openid-configuration")
    }

    /// The `/authorize` URL for `request`.
    pub fn authorization_url(&self, request: &crate::AuthorizationRequest) -> Url {
        request.to_url(&self.authorization_endpoint())
    }

    // --- clients --------------------------------------------------------------

    /// Registers a client (replacing one with the same id).
    pub fn register_client(&self, client: ClientRegistration) -> Result<RegisteredClient, Error> {
        let client = client.into_client(ClientSource::Preregistered)?;
        self.shared
            .lock()
            .clients
            .insert(client.client_id.clone(), client.clone());
        Ok(client)
    }

    /// The client with this id, however it was registered.
    pub fn client(&self, client_id: &str) -> Option<RegisteredClient> {
        self.shared.lock().clients.get(client_id).cloned()
    }

    /// Every known client.
    pub fn clients(&self) -> Vec<RegisteredClient> {
        self.shared.lock().clients.values().cloned().collect()
    }

    /// Makes the secret of every client that has one expired now, as when
    /// `client_secret_expires_at` passes: their token requests get
    /// `invalid_client` from then on. Returns how many were still valid.
    /// (To expire secrets of new registrations by themselves, set
    /// [`Settings::client_secret_lifetime`].)
    pub fn expire_client_secrets(&self) -> usize {
        self.shared.lock().expire_client_secrets()
    }

    /// Restarts the server as one that keeps everything in memory (the MCP
    /// SDKs' example servers, FastMCP's in-memory provider): it forgets
    /// every dynamically registered client and every Client ID Metadata
    /// Document it fetched, and every code, token and pending consent. Its
    /// settings and the clients it was configured with (the builder's,
    /// [`register_client`](Self::register_client)'s) stay, as do hosted
    /// documents, queued failures, counters and the request log; the
    /// listeners keep their addresses. Returns how many clients it forgot.
    ///
    /// A client that reuses a forgotten registration then meets what real
    /// servers answer: an error page at `/authorize` (no redirect, since
    /// the redirect URI cannot be trusted) and `invalid_client` at `/token`;
    /// its tokens are refused by a [`ProtectedResource`](crate::ProtectedResource).
    pub fn restart(&self) -> usize {
        self.shared.lock().restart()
    }

    // --- settings -------------------------------------------------------------

    /// The current settings.
    pub fn settings(&self) -> Settings {
        self.shared.lock().settings.clone()
    }

    /// Changes settings; the next request sees them.
    ///
    /// ```
    /// # async fn demo(server: &mcp_authkit_testkit::TestAuthServer) {
    /// use mcp_authkit_testkit::{ConsentMode, MetadataFault};
    /// server.update_settings(|s| {
    ///     s.consent = ConsentMode::Deny;
    ///     s.metadata_fault = Some(MetadataFault::WrongIssuer);
    /// });
    /// # }
    /// ```
    pub fn update_settings(&self, edit: impl FnOnce(&mut Settings)) {
        edit(&mut self.shared.lock().settings);
    }

    /// Sets the function that edits every discovery document before it is
    /// served (replacing any earlier one).
    pub fn set_metadata_patch(&self, patch: impl Fn(&mut Value) + Send + Sync + 'static) {
        self.shared.lock().metadata_patch = Some(Arc::new(patch));
    }

    /// Removes the metadata patch.
    pub fn clear_metadata_patch(&self) {
        self.shared.lock().metadata_patch = None;
    }

    /// Serves `document` as JSON at `path` on the
    /// [other origin](Self::other_origin) and returns its URL: a place for a
    /// Client ID Metadata Document, or any document a test needs hosted.
    pub fn host_json(&self, path: &str, document: Value) -> Url {
        let mut url = self.shared.other_base.clone();
        url.set_path(path);
        self.shared
            .lock()
            .hosted
            .insert(url.path().to_owned(), document);
        url
    }

    // --- failures -------------------------------------------------------------

    /// Makes the next `times` requests to `endpoint` fail with `failure`.
    /// Failures queue in order; for token requests the grant's queue
    /// ([`Endpoint::RefreshTokenGrant`], ...) is used before
    /// [`Endpoint::Token`]'s.
    pub fn fail_next(&self, endpoint: Endpoint, times: usize, failure: Failure) {
        self.shared.lock().push_failures(endpoint, times, failure);
    }

    /// How many injected failures are still queued for `endpoint`.
    pub fn pending_failures(&self, endpoint: Endpoint) -> usize {
        self.shared.lock().pending_failures(endpoint)
    }

    /// Drops every queued failure.
    pub fn clear_failures(&self) {
        self.shared.lock().clear_failures();
    }

    // --- counters and log -----------------------------------------------------

    /// How many requests reached `endpoint` (including failed and injected
    /// ones) since start or [`reset_counters`](Self::reset_counters).
    pub fn hits(&self, endpoint: Endpoint) -> u64 {
        self.shared.lock().hits(endpoint)
    }

    /// The requests that reached `endpoint`, oldest first.
    pub fn requests(&self, endpoint: Endpoint) -> Vec<RecordedRequest> {
        self.shared.lock().requests(Some(endpoint))
    }

    /// The latest request that reached `endpoint`.
    pub fn last_request(&self, endpoint: Endpoint) -> Option<RecordedRequest> {
        self.requests(endpoint).pop()
    }

    /// Every request, oldest first.
    pub fn all_requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests(None)
    }

    /// How many Client ID Metadata Documents the server fetched.
    pub fn client_metadata_fetches(&self) -> u64 {
        self.shared.lock().client_metadata_fetches
    }

    /// Zeroes the counters and empties the request log.
    pub fn reset_counters(&self) {
        self.shared.lock().reset_counters();
    }

    // --- consent --------------------------------------------------------------

    /// Authorization requests waiting at the consent page, oldest first.
    pub fn pending_consents(&self) -> Vec<PendingConsent> {
        self.shared.lock().pending_consents()
    }

    /// Approves a pending consent as the user would, and returns the URL
    /// the browser would be sent to (the redirect URI with `code`, `state`
    /// and `iss`).
    pub fn approve_consent(&self, id: &str) -> Result<Url, Error> {
        self.decide_consent(id, true)
    }

    /// Denies a pending consent, and returns the URL the browser would be
    /// sent to (the redirect URI with `error=access_denied`).
    pub fn deny_consent(&self, id: &str) -> Result<Url, Error> {
        self.decide_consent(id, false)
    }

    fn decide_consent(&self, id: &str, approve: bool) -> Result<Url, Error> {
        let mut state = self.shared.lock();
        let approval = state
            .take_consent(id)
            .ok_or_else(|| Error::UnknownConsent { id: id.to_owned() })?;
        let iss = state.settings.iss_parameter;
        let outcome = if approve {
            RedirectOutcome::Code(state.issue_code(approval.clone()))
        } else {
            RedirectOutcome::denied()
        };
        drop(state);
        authorize::redirect_url(
            &self.shared,
            iss,
            &approval.redirect_uri,
            approval.state.as_deref(),
            &outcome,
        )
        .map_err(|reason| Error::InvalidInput {
            what: "redirect uri",
            reason,
        })
    }

    // --- enterprise-managed authorization ---------------------------------------

    /// The key this server signs ID tokens and ID-JAGs with (a new ES256
    /// key per server); its public half is served at
    /// [`jwks_uri`](Self::jwks_uri).
    pub fn signing_key(&self) -> &SigningKey {
        &self.shared.signing_key
    }

    /// As the enterprise identity provider: an OpenID Connect ID token for
    /// `subject`, issued to `client_id` (its `aud`), valid for
    /// [`Settings::id_token_lifetime`]. A client exchanges it at this
    /// server's token endpoint for an ID-JAG (RFC 8693 token exchange).
    pub fn issue_id_token(&self, subject: &str, client_id: &str) -> String {
        let lifetime = self.shared.lock().settings.id_token_lifetime;
        grants::id_token(&self.shared, subject, client_id, lifetime)
    }

    /// As the MCP server's authorization server: accepts ID-JAGs that
    /// `issuer` signed with `key` in the `jwt-bearer` grant.
    pub fn trust_issuer(&self, issuer: impl Into<String>, key: PublicKey) {
        self.shared
            .lock()
            .trusted_issuers
            .insert(issuer.into(), key);
    }

    /// Accepts the ID-JAGs of the identity provider `idp` (another test
    /// server): [`trust_issuer`](Self::trust_issuer) with its issuer and
    /// key.
    pub fn trust_identity_provider(&self, idp: &AuthServerHandle) {
        self.trust_issuer(idp.issuer(), idp.signing_key().public_key());
    }

    // --- tokens ---------------------------------------------------------------

    /// What a valid access token stands for; `None` for an unknown,
    /// expired or revoked one. This is how a resource server in a test
    /// validates bearer tokens (over HTTP, use the introspection endpoint).
    pub fn introspect(&self, access_token: &str) -> Option<TokenInfo> {
        self.shared.lock().introspect(access_token)
    }

    /// Issues tokens for a registered client without a flow, as if the user
    /// had authorized it: for tests that start with a signed-in user.
    pub fn mint_tokens(&self, grant: TokenGrant) -> Result<IssuedTokens, Error> {
        let mut state = self.shared.lock();
        if !state.clients.contains_key(&grant.client_id) {
            return Err(Error::UnknownClient {
                client_id: grant.client_id,
            });
        }
        Ok(state.mint(Grant {
            client_id: grant.client_id,
            subject: grant.subject,
            scopes: grant.scopes,
            resources: grant.resources,
        }))
    }

    /// Revokes one access or refresh token; `true` if it existed.
    pub fn revoke_token(&self, token: &str) -> bool {
        self.shared.lock().revoke_token(token)
    }

    /// Revokes every token of a user (the user disconnected the app): its
    /// refresh tokens then get `invalid_grant` and its access tokens `401`.
    /// Returns how many tokens it removed, expired ones included.
    pub fn revoke_subject(&self, subject: &str) -> usize {
        self.shared.lock().revoke_subject(subject)
    }

    /// Makes every current access token expired, while refresh tokens keep
    /// working. Returns how many were still valid.
    pub fn expire_access_tokens(&self) -> usize {
        self.shared.lock().expire_access_tokens()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_paths_are_normalized_or_refused() {
        assert_eq!(normalize_issuer_path("").unwrap(), "");
        assert_eq!(normalize_issuer_path("/").unwrap(), "");
        assert_eq!(normalize_issuer_path("/tenant1/").unwrap(), "/tenant1");
        assert_eq!(normalize_issuer_path("/a/b").unwrap(), "/a/b");
        assert!(normalize_issuer_path("tenant1").is_err());
        assert!(normalize_issuer_path("/a//b").is_err());
        assert!(normalize_issuer_path("/{x}").is_err());
    }
}
