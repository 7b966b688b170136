//! rmcp glue: `require_token` for tools, the tool-router wrapper, and the
//! MCP messages the 2025-11-25 specification defines but rmcp 3.x no
//! longer models (`-32042`, `notifications/elicitation/complete`).

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::rmcp::handler::server::tool::{ToolCallContext, ToolRoute, ToolRouter};
use ::rmcp::model::{
    CallToolResponse, CallToolResult, ContentBlock, CustomNotification, ElicitRequest,
    ElicitRequestParams, ElicitationAction, ErrorCode, ErrorData, InputRequest, InputRequests,
    InputRequiredResult, InputResponses, ProtocolVersion, ServerNotification,
};
use ::rmcp::service::{ElicitationError, Peer, RequestContext, RoleServer, ServiceError};
use mcp_authkit_core::observe::{self, GaveUp, names};
use mcp_authkit_core::{FlowOutcome, FlowState};
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};
use url::Url;

use super::{
    ElicitationStyle, OAuthProvider, OAuthProviderBuilder, PendingAuthorization, ProviderError,
    UserToken,
};

/// JSON-RPC error code of `URLElicitationRequiredError` (MCP 2025-11-25).
pub const URL_ELICITATION_REQUIRED: ErrorCode = ErrorCode(-32042);
/// Method of the completion notification (MCP 2025-11-25).
pub const ELICITATION_COMPLETE_METHOD: &str = "notifications/elicitation/complete";
/// The member of an error's `data` through which [`gate_tools`] recognises
/// this crate's errors.
const MARKER: &str = "mcpAuthkit";
/// Outcome codes of flows the user ended in the MCP client.
const DECLINED: &str = "elicitation_declined";
const CANCELLED: &str = "elicitation_cancelled";

/// How a provider learns which MCP user a tool call is for.
///
/// Usually the MCP server's own authorization middleware validated a bearer
/// token and put its claims into the HTTP request's extensions; rmcp hands
/// the request's [`http::request::Parts`] to the tool in
/// `ctx.extensions`. [`subject_from_extension`] reads such claims.
/// Closures `Fn(&RequestContext<RoleServer>) -> Option<String>` implement
/// it too. The subject must be stable and unique per user (an `iss` + `sub`
/// pair, not an email that can change hands).
pub trait SubjectResolver: Send + Sync + 'static {
    /// The calling user's subject, or `None` when the call carries none.
    fn resolve(&self, ctx: &RequestContext<RoleServer>) -> Option<String>;
}

impl<F> SubjectResolver for F
where
    F: Fn(&RequestContext<RoleServer>) -> Option<String> + Send + Sync + 'static,
{
    fn resolve(&self, ctx: &RequestContext<RoleServer>) -> Option<String> {
        self(ctx)
    }
}

/// A resolver that reads a `T` the server's auth middleware inserted into
/// the HTTP request's extensions, and takes the subject from it.
///
/// ```
/// use mcp_authkit_providers::server::subject_from_extension;
///
/// #[derive(Clone)]
/// struct Claims { iss: String, sub: String }
///
/// let resolver = subject_from_extension(|claims: &Claims| {
///     Some(format!("{}|{}", claims.iss, claims.sub))
/// });
/// # let _ = resolver;
/// ```
pub fn subject_from_extension<T, F>(extract: F) -> impl SubjectResolver
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> Option<String> + Send + Sync + 'static,
{
    move |ctx: &RequestContext<RoleServer>| {
        let parts = ctx.extensions.get::<http::request::Parts>()?;
        parts.extensions.get::<T>().and_then(&extract)
    }
}

impl OAuthProviderBuilder {
    /// How tool calls name their user (required for
    /// [`require_token`](OAuthProvider::require_token)).
    pub fn subject_resolver(mut self, resolver: impl SubjectResolver) -> Self {
        self.subject_resolver = Some(Arc::new(resolver));
        self
    }
}

/// Per-provider state of the rmcp glue.
pub(crate) struct ToolState {
    resolver: Option<Arc<dyn SubjectResolver>>,
    /// (session, flow) pairs with an elicitation outstanding in this
    /// process: other calls of the same session wait instead of showing
    /// the user a second prompt.
    elicitations: Mutex<HashSet<(String, FlowState)>>,
    /// (session, flow) pairs with a completion watcher (fail-fast).
    watchers: Mutex<HashSet<(String, FlowState)>>,
}

impl ToolState {
    pub(crate) fn new(resolver: Option<Arc<dyn SubjectResolver>>) -> Self {
        ToolState {
            resolver,
            elicitations: Mutex::new(HashSet::new()),
            watchers: Mutex::new(HashSet::new()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes a (session, flow) claim when dropped.
struct Claim<'a> {
    set: &'a Mutex<HashSet<(String, FlowState)>>,
    entry: Option<(String, FlowState)>,
}

impl<'a> Claim<'a> {
    /// Claims `entry`; `None` when another call holds it.
    fn take(
        set: &'a Mutex<HashSet<(String, FlowState)>>,
        entry: (String, FlowState),
    ) -> Option<Self> {
        // The guard must be gone before a Claim exists: dropping a Claim
        // locks the set again.
        let inserted = lock(set).insert(entry.clone());
        inserted.then(|| Claim {
            set,
            entry: Some(entry),
        })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            lock(self.set).remove(&entry);
        }
    }
}

/// The elicitation a client must show the user before the call can
/// succeed: JSON-RPC error `-32042` on 2025-11-25 sessions, an
/// `InputRequiredResult` on 2026-07-28 ones (through [`gate_tools`]).
#[derive(Clone)]
pub struct AuthorizationRequired {
    provider: String,
    message: String,
    url: Url,
    elicitation_id: String,
    request_state: Option<String>,
}

impl fmt::Debug for AuthorizationRequired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The link and the elicitation id (also inside the request state)
        // start the sign-in for whoever holds them under trust_link_holder.
        f.debug_struct("AuthorizationRequired")
            .field("provider", &self.provider)
            .field("url", &"[redacted]")
            .field("elicitation_id", &"[redacted]")
            .field("input_required", &self.request_state.is_some())
            .finish()
    }
}

impl AuthorizationRequired {
    /// The connect page to open.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The message for the user.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The elicitation id (empty on 2026-07-28 sessions, which dropped it).
    pub fn elicitation_id(&self) -> &str {
        &self.elicitation_id
    }

    /// Whether it is answered as an `InputRequiredResult` (2026-07-28).
    pub fn is_input_required(&self) -> bool {
        self.request_state.is_some()
    }

    /// The key of the URL elicitation in `inputRequests` / `inputResponses`.
    pub fn input_key(&self) -> String {
        input_key(&self.provider)
    }

    /// The `InputRequiredResult` carrying the URL elicitation.
    pub fn input_required_result(&self) -> InputRequiredResult {
        let mut requests = InputRequests::new();
        requests.insert(
            self.input_key(),
            InputRequest::Elicitation(ElicitRequest::new(
                ElicitRequestParams::UrlElicitationParams {
                    meta: None,
                    message: self.message.clone(),
                    url: self.url.to_string(),
                    elicitation_id: String::new(),
                },
            )),
        );
        InputRequiredResult::new(Some(requests), self.request_state.clone())
    }

    fn error_data(&self) -> ErrorData {
        let mut data = json!({
            "elicitations": [{
                "mode": "url",
                "elicitationId": self.elicitation_id,
                "url": self.url.as_str(),
                "message": self.message,
            }],
        });
        if let Some(state) = &self.request_state {
            data[MARKER] = json!({
                "kind": "input_required",
                "provider": self.provider,
                "inputKey": self.input_key(),
                "requestState": state,
            });
        }
        ErrorData::new(URL_ELICITATION_REQUIRED, self.message.clone(), Some(data))
    }
}

fn input_key(provider: &str) -> String {
    format!("mcp-authkit/{provider}")
}

fn request_state(provider: &str, elicitation_id: &str) -> String {
    format!("mcp-authkit/{provider}/{elicitation_id}")
}

/// Why [`OAuthProvider::require_token`] returned no token.
///
/// `?` turns it into rmcp's [`ErrorData`]; with the tool router wrapped by
/// [`gate_tools`], the user-facing cases become tool results with
/// `isError: true` (what the user reads), `-32042` stays a JSON-RPC error,
/// and 2026-07-28 sessions get an `InputRequiredResult`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The request names no user (no resolver, or it found nothing).
    #[error(
        "{display} cannot be used: this request carries no authenticated user. The MCP \
         server's own sign-in must identify the caller; sign in to the MCP server and try again"
    )]
    NoSubject {
        /// The provider's display name.
        display: String,
    },
    /// The client declared URL-mode elicitation on a protocol version that
    /// has none (2025-06-18 and older), so it cannot be sent.
    #[error(
        "{display} authorization is required, but this MCP session uses protocol version \
         {version}, which is too old for authorization links (URL-mode elicitation needs \
         2025-11-25 or newer). Update your MCP client, then try again"
    )]
    ProtocolTooOld {
        /// The provider's display name.
        display: String,
        /// The session's negotiated protocol version.
        version: String,
    },
    /// The client did not declare URL-mode elicitation, so it cannot show
    /// the link.
    #[error(
        "{display} authorization is required, but this MCP client cannot open authorization \
         links: it did not declare URL-mode elicitation (MCP 2025-11-25). Use an MCP client \
         that supports URL elicitation to connect your {display} account, then try again"
    )]
    UrlElicitationUnsupported {
        /// The provider's display name.
        display: String,
    },
    /// The user must open a link first (fail-fast and 2026-07-28).
    #[error("{}", .0.message)]
    AuthorizationRequired(Box<AuthorizationRequired>),
    /// The user declined to open the link.
    #[error(
        "you declined to connect {display}, so this tool cannot run; run it again to get a new link"
    )]
    Declined {
        /// The provider's display name.
        display: String,
    },
    /// The user dismissed the prompt.
    #[error(
        "connecting {display} was cancelled, so this tool cannot run; run it again to get a new link"
    )]
    Cancelled {
        /// The provider's display name.
        display: String,
    },
    /// The user did not finish in the browser in time.
    #[error(
        "{display} authorization was not completed within {} s; run the tool again (if you \
         finished in the browser meanwhile, it will work now)", .after.as_secs()
    )]
    TimedOut {
        /// The provider's display name.
        display: String,
        /// The token timeout.
        after: Duration,
    },
    /// The third party refused (`access_denied` ...).
    #[error("{display} did not grant access ({error}{}); run the tool again to retry", .description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Denied {
        /// The provider's display name.
        display: String,
        /// The OAuth error code.
        error: String,
        /// The provider's description (untrusted text).
        description: Option<String>,
    },
    /// The flow broke (code exchange failed, issuer mismatch, malformed
    /// callback).
    #[error("connecting {display} failed: {reason}; run the tool again to get a new link")]
    Failed {
        /// The provider's display name.
        display: String,
        /// What went wrong.
        reason: String,
    },
    /// A retried 2026-07-28 call whose flow ended without a token.
    #[error(
        "the {display} authorization did not complete (it was refused, failed or expired); \
         run the tool again to get a new link"
    )]
    Incomplete {
        /// The provider's display name.
        display: String,
    },
    /// The elicitation could not be sent or answered.
    #[error("the {display} authorization link could not be sent to the MCP client: {source}")]
    Elicitation {
        /// The provider's display name.
        display: String,
        /// rmcp's error.
        #[source]
        source: ServiceError,
    },
    /// A store or OAuth operation failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

impl TokenError {
    /// Whether calling again later may succeed without anything else
    /// changing (a store or network hiccup, or a flow the user may still
    /// finish).
    pub fn is_retryable(&self) -> bool {
        match self {
            TokenError::Provider(error) => error.is_retryable(),
            TokenError::Elicitation { .. }
            | TokenError::TimedOut { .. }
            | TokenError::AuthorizationRequired(_) => true,
            _ => false,
        }
    }

    fn is_tool_error(&self) -> bool {
        !matches!(
            self,
            TokenError::AuthorizationRequired(_)
                | TokenError::Provider(_)
                | TokenError::Elicitation { .. }
        )
    }

    fn from_outcome(display: &str, outcome: FlowOutcome) -> Self {
        let display = display.to_owned();
        match outcome {
            FlowOutcome::Denied { error, .. } if error == DECLINED => {
                TokenError::Declined { display }
            }
            FlowOutcome::Denied { error, .. } if error == CANCELLED => {
                TokenError::Cancelled { display }
            }
            // The description is the authorization server's text and ends up
            // in front of the model: keep it short and printable.
            FlowOutcome::Denied { error, description } => TokenError::Denied {
                display,
                error,
                description: description
                    .map(|text| text.chars().filter(|c| !c.is_control()).take(200).collect()),
            },
            FlowOutcome::Failed { reason } => TokenError::Failed { display, reason },
            _ => TokenError::Failed {
                display,
                reason: "the authorization ended in an unexpected way".into(),
            },
        }
    }
}

impl From<TokenError> for ErrorData {
    fn from(error: TokenError) -> Self {
        match &error {
            TokenError::AuthorizationRequired(required) => required.error_data(),
            _ if error.is_tool_error() => ErrorData::new(
                ErrorCode::INVALID_REQUEST,
                error.to_string(),
                Some(json!({ MARKER: { "kind": "tool_error" } })),
            ),
            _ => ErrorData::internal_error(error.to_string(), None),
        }
    }
}

/// The `inputResponses` and `requestState` of a retried tool call
/// (2026-07-28), which [`gate_tools`] copies into the request context so
/// `require_token` can read them.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RetryInput {
    /// The client's answers to the previous round's `inputRequests`.
    pub input_responses: Option<InputResponses>,
    /// The previous round's echoed `requestState`.
    pub request_state: Option<String>,
}

type ToolFuture<'a> =
    Pin<Box<dyn Future<Output = Result<CallToolResponse, ErrorData>> + Send + 'a>>;

/// Wraps every tool of `router` so [`TokenError`]s reach the client the way
/// MCP wants them:
///
/// - user-facing failures (declined, timed out, no URL elicitation ...)
///   become tool results with `isError: true`;
/// - on 2026-07-28 requests, "authorization required" becomes an
///   `InputRequiredResult` with the URL elicitation, and the retried call's
///   `inputResponses` / `requestState` reach `require_token`;
/// - `-32042` stays a JSON-RPC error on 2025-11-25 sessions.
///
/// Other errors pass through untouched.
///
/// rmcp's `#[tool_handler]` builds a fresh router per call unless told to
/// use a field, so keep the gated router in one and name it:
///
/// ```
/// use mcp_authkit_providers::server::{OAuthProvider, gate_tools, subject_from_extension};
/// use mcp_authkit_providers::standard::StandardOAuthClient;
/// use rmcp::handler::server::router::tool::ToolRouter;
/// use rmcp::model::{CallToolResult, ContentBlock, ErrorData, ServerCapabilities, ServerConfig};
/// use rmcp::service::{RequestContext, RoleServer};
/// use rmcp::{ServerHandler, tool, tool_handler, tool_router};
/// use secrecy::ExposeSecret;
///
/// /// What the server's own auth middleware put into the HTTP request.
/// #[derive(Clone)]
/// struct Claims { sub: String }
///
/// #[derive(Clone)]
/// struct MyServer { github: OAuthProvider, tool_router: ToolRouter<Self> }
///
/// #[tool_router]
/// impl MyServer {
///     #[tool(description = "List my repositories")]
///     async fn my_repos(&self, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
///         let token = self.github.require_token(&ctx).await?;
///         let _bearer = token.secret().expose_secret(); // call the GitHub API with it
///         Ok(CallToolResult::success(vec![ContentBlock::text("...")]))
///     }
/// }
///
/// #[tool_handler(router = self.tool_router)]
/// impl ServerHandler for MyServer {
///     fn get_info(&self) -> ServerConfig {
///         ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let github = OAuthProvider::builder("github", "https://mcp.example.com/oauth/github")
///     .client(StandardOAuthClient::github("client-id", "client-secret").build()?)
///     .subject_resolver(subject_from_extension(|claims: &Claims| Some(claims.sub.clone())))
///     .browser_user(|_: &axum::http::request::Parts| {
///         mcp_authkit_providers::server::BrowserIdentity::SignedOut // your sign-in check
///     })
///     .build()?;
/// let server = MyServer { github, tool_router: gate_tools(MyServer::tool_router()) };
/// # let _ = server;
/// # Ok(()) }
/// ```
pub fn gate_tools<S>(mut router: ToolRouter<S>) -> ToolRouter<S>
where
    S: Send + Sync + 'static,
{
    let names: Vec<_> = router.map.keys().cloned().collect();
    for name in names {
        let Some(route) = router.map.remove(&name) else {
            continue;
        };
        let inner = Arc::clone(&route.call);
        let gated = ToolRoute::new_dyn(route.attr.clone(), move |context| {
            gated_call(&inner, context)
        });
        router.map.insert(name, gated);
    }
    router
}

fn gated_call<'s, S>(
    inner: &Arc<::rmcp::handler::server::tool::DynCallToolHandler<S>>,
    mut context: ToolCallContext<'s, S>,
) -> ToolFuture<'s>
where
    S: Send + Sync + 'static,
{
    let input_required = context
        .request_context
        .protocol_version()
        .is_some_and(|version| uses_input_required(&version));
    context.request_context.extensions.insert(RetryInput {
        input_responses: context.input_responses.clone(),
        request_state: context.request_state.clone(),
    });
    let call = inner(context);
    Box::pin(async move {
        match call.await {
            Ok(response) => Ok(response),
            Err(error) => convert_error(error, input_required),
        }
    })
}

fn uses_input_required(version: &ProtocolVersion) -> bool {
    version.as_str() >= ProtocolVersion::V_2026_07_28.as_str()
}

fn supports_url_elicitation(version: &ProtocolVersion) -> bool {
    version.as_str() >= ProtocolVersion::V_2025_11_25.as_str()
}

fn convert_error(error: ErrorData, input_required: bool) -> Result<CallToolResponse, ErrorData> {
    let Some(marker) = error.data.as_ref().and_then(|data| data.get(MARKER)) else {
        return Err(error);
    };
    match marker.get("kind").and_then(Value::as_str) {
        Some("tool_error") => {
            Ok(CallToolResult::error(vec![ContentBlock::text(error.message.to_string())]).into())
        }
        Some("input_required") if input_required => {
            let elicitation = error
                .data
                .as_ref()
                .and_then(|data| data["elicitations"].get(0));
            let (Some(key), Some(state), Some(url), Some(message)) = (
                marker.get("inputKey").and_then(Value::as_str),
                marker.get("requestState").and_then(Value::as_str),
                elicitation.and_then(|e| e["url"].as_str()),
                elicitation.and_then(|e| e["message"].as_str()),
            ) else {
                return Err(error);
            };
            let mut requests = InputRequests::new();
            requests.insert(
                key.to_owned(),
                InputRequest::Elicitation(ElicitRequest::new(
                    ElicitRequestParams::UrlElicitationParams {
                        meta: None,
                        message: message.to_owned(),
                        url: url.to_owned(),
                        elicitation_id: String::new(),
                    },
                )),
            );
            Ok(InputRequiredResult::new(Some(requests), Some(state.to_owned())).into())
        }
        _ => Err(error),
    }
}

/// Tools outside [`gate_tools`] still work on 2025-11-25 sessions, but
/// their errors reach the client as JSON-RPC errors instead of tool
/// results, and 2026-07-28 clients get `-32042` instead of an
/// `InputRequiredResult`: say so once.
fn warn_ungated_once() {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        warn!(
            "require_token was called from a tool outside gate_tools: wrap the tool router with \
             gate_tools(..) (and use #[tool_handler(router = self.tool_router)]) so 2026-07-28 \
             clients get InputRequiredResult and users see tool errors"
        );
    }
}

/// The MCP session a request belongs to (streamable HTTP `Mcp-Session-Id`).
fn session_id(ctx: &RequestContext<RoleServer>) -> Option<String> {
    ctx.extensions
        .get::<http::request::Parts>()?
        .headers
        .get("mcp-session-id")?
        .to_str()
        .ok()
        .map(str::to_owned)
}

async fn notify_complete(peer: &Peer<RoleServer>, elicitation_id: &str) {
    let notification = ServerNotification::CustomNotification(CustomNotification::new(
        ELICITATION_COMPLETE_METHOD,
        Some(json!({ "elicitationId": elicitation_id })),
    ));
    if let Err(error) = peer.send_notification(notification).await {
        debug!(%error, "the elicitation completion notice could not be sent (the session may be gone)");
    }
}

impl OAuthProvider {
    /// The calling user's token for this provider, asking the user to
    /// authorize first when there is none: the one line at the top of a
    /// gated tool.
    ///
    /// See [`gate_tools`] for a whole server.
    ///
    /// - A valid token is returned at once: one store read, no network I/O.
    ///   One about to expire is refreshed (single-flight across replicas).
    /// - Otherwise an authorization flow starts (or the user's flow in
    ///   progress is joined), and the client gets a URL-mode elicitation for
    ///   this server's connect page, chosen by the negotiated protocol
    ///   version and the client's declared capabilities:
    ///   - 2025-11-25, [`ElicitationStyle::Wait`]: `elicitation/create`,
    ///     then the call waits for the callback (up to the token timeout),
    ///     sends `notifications/elicitation/complete` and returns the token.
    ///     Concurrent calls of one session share one prompt and one flow.
    ///   - 2025-11-25, [`ElicitationStyle::FailFast`]: error `-32042` with
    ///     the elicitation in `data`; the completion notice reaches the
    ///     session when the callback lands; the retried call finds the token.
    ///   - 2026-07-28: an `InputRequiredResult` (needs [`gate_tools`]); the
    ///     retried call finds the token, or waits for the flow the user
    ///     accepted.
    ///   - A client that did not declare URL elicitation gets
    ///     [`TokenError::UrlElicitationUnsupported`]; one that declared it
    ///     on a protocol version without it (2025-06-18 and older) gets
    ///     [`TokenError::ProtocolTooOld`]. No flow is started and no other
    ///     mode is tried.
    ///
    /// The elicited URL is this server's connect page with an opaque link
    /// handle: no subject, no OAuth `state` (see the [module docs](super)
    /// for the browser binding that guards the callback).
    ///
    /// # Where the completion notice goes
    ///
    /// rmcp's streamable HTTP server (3.11) sends a server notification on
    /// the tool call's own response stream only for progress and
    /// cancellation; every other notification, `notifications/elicitation/complete`
    /// included, goes on the session's standalone `GET` stream (server
    /// requests such as `elicitation/create` do ride the call's stream, by
    /// their originating request). rmcp has no way to tag a notification
    /// with its request, so a client that never opens that optional stream
    /// does not see the notice (one that opens it later gets it then): in
    /// wait mode it still gets the tool's result on the call's stream right
    /// after; in fail-fast mode it learns that the user finished when it
    /// retries.
    pub async fn require_token(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<UserToken, TokenError> {
        let subject = match self.token_owned(self.subject(ctx)?).await? {
            Ok(token) => return Ok(token),
            Err(subject) => subject,
        };
        let span = info_span!("authorize", provider = %self.inner.name);
        self.authorize(ctx, subject).instrument(span).await
    }

    /// The calling user's subject, through the configured resolver.
    pub fn subject(&self, ctx: &RequestContext<RoleServer>) -> Result<String, TokenError> {
        self.inner
            .tools
            .resolver
            .as_ref()
            .and_then(|resolver| resolver.resolve(ctx))
            .ok_or_else(|| TokenError::NoSubject {
                display: self.inner.display_name.clone(),
            })
    }

    async fn authorize(
        &self,
        ctx: &RequestContext<RoleServer>,
        subject: String,
    ) -> Result<UserToken, TokenError> {
        let display = &self.inner.display_name;
        if ctx.extensions.get::<RetryInput>().is_none() {
            warn_ungated_once();
        }
        let version = ctx
            .protocol_version()
            .unwrap_or(ProtocolVersion::V_2025_03_26);
        let declares_url = ctx
            .client_capabilities()
            .and_then(|caps| caps.elicitation)
            .is_some_and(|elicitation| elicitation.url.is_some());
        if !declares_url {
            self.count(names::TOOL_CALLS_REFUSED, ("reason", "no_url_elicitation"));
            return Err(TokenError::UrlElicitationUnsupported {
                display: display.clone(),
            });
        }
        if !supports_url_elicitation(&version) {
            self.count(names::TOOL_CALLS_REFUSED, ("reason", "protocol_too_old"));
            return Err(TokenError::ProtocolTooOld {
                display: display.clone(),
                version: version.as_str().to_owned(),
            });
        }
        if uses_input_required(&version) {
            return self.input_required_round(ctx, subject).await;
        }
        let session = session_id(ctx);
        match self.inner.style {
            ElicitationStyle::FailFast => self.fail_fast(ctx, subject, session).await,
            _ => self.wait_mode(ctx, subject, session).await,
        }
    }

    /// Adds one to the counter `name` of this provider with `label`.
    fn count(&self, name: &'static str, label: (&'static str, &'static str)) {
        observe::count(name, &self.inner.name, Some(label));
    }

    fn prompt(&self, continues: bool) -> String {
        let display = &self.inner.display_name;
        if continues {
            format!(
                "{display} authorization is required: open the link to connect your {display} \
                 account. This request continues once you are done."
            )
        } else {
            format!(
                "{display} authorization is required: open the link to connect your {display} \
                 account, then try again."
            )
        }
    }

    async fn wait_mode(
        &self,
        ctx: &RequestContext<RoleServer>,
        subject: String,
        session: Option<String>,
    ) -> Result<UserToken, TokenError> {
        let display = self.inner.display_name.clone();
        let timeout = self.inner.token_timeout;
        let deadline = mcp_authkit_core::deadline_after(timeout);
        let pending = self
            .begin_authorization(&subject, session.as_deref())
            .await?;
        // One prompt per session and flow: a concurrent call of the same
        // session that joined the flow just waits for it.
        let claim = match (&session, pending.elicitation_id.is_empty()) {
            (_, true) => None,
            (Some(session), false) => Claim::take(
                &self.inner.tools.elicitations,
                (session.clone(), pending.state.clone()),
            ),
            (None, false) => Some(Claim {
                set: &self.inner.tools.elicitations,
                entry: None,
            }),
        };
        let elicits = claim.is_some();
        if elicits {
            self.count(names::ELICITATIONS, ("path", "wait"));
            let sent = ctx.peer.elicit_url_with_timeout(
                self.prompt(true),
                pending.connect_url().clone(),
                pending.elicitation_id(),
                Some(timeout),
            );
            // Biased, the answer first: a prompt answered in the same poll
            // as the cancellation is taken as answered, not abandoned.
            let action = tokio::select! {
                biased;
                action = sent => action,
                () = ctx.ct.cancelled() => {
                    // The request gave up before the user answered: the
                    // flow it started ends with it. Others may have seen
                    // it: prompts are claimed per (session, flow), so
                    // another session of the same user that joined this
                    // flow may be showing its own prompt for it. That
                    // call answers `cancelled` too, its link then leads
                    // to an unknown state, and the user starts over. A
                    // known limit, left as it is.
                    self.abandon_if_started(&pending, CANCELLED).await;
                    return Err(self.give_up(GaveUp::Cancelled));
                }
            };
            match action {
                Ok(ElicitationAction::Accept) => {}
                Ok(ElicitationAction::Decline) => {
                    self.abandon_if_started(&pending, DECLINED).await;
                    return Err(TokenError::Declined { display });
                }
                Ok(_) => {
                    self.abandon_if_started(&pending, CANCELLED).await;
                    return Err(TokenError::Cancelled { display });
                }
                Err(ElicitationError::Service(ServiceError::Timeout { .. })) => {
                    return Err(self.give_up(GaveUp::TimedOut));
                }
                Err(ElicitationError::Service(source)) => {
                    // The prompt's request failed (the session's transport,
                    // or the client answered with an error): the call
                    // cannot wait on, and the flow is left to its callback
                    // or its expiry like any other give-up.
                    self.inner.lifecycle.record_wait_given_up(GaveUp::Error);
                    return Err(TokenError::Elicitation { display, source });
                }
                Err(ElicitationError::UserDeclined) => {
                    self.abandon_if_started(&pending, DECLINED).await;
                    return Err(TokenError::Declined { display });
                }
                Err(_) => {
                    return Err(TokenError::UrlElicitationUnsupported { display });
                }
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let outcome = self.wait_or_give_up(ctx, &pending, remaining).await?;
        drop(claim);
        if elicits && !pending.elicitation_id.is_empty() {
            notify_complete(&ctx.peer, pending.elicitation_id()).await;
        }
        self.after_outcome(&subject, outcome).await
    }

    async fn after_outcome(
        &self,
        subject: &str,
        outcome: FlowOutcome,
    ) -> Result<UserToken, TokenError> {
        if !outcome.is_authorized() {
            return Err(TokenError::from_outcome(&self.inner.display_name, outcome));
        }
        match self.token(subject).await? {
            Some(token) => Ok(token),
            None => Err(TokenError::Failed {
                display: self.inner.display_name.clone(),
                reason: "the new token was removed before it could be used".into(),
            }),
        }
    }

    /// Waits up to the token timeout for `pending` to end, then returns the
    /// token it stored or why there is none.
    async fn wait_then_token(
        &self,
        ctx: &RequestContext<RoleServer>,
        subject: &str,
        pending: &PendingAuthorization,
    ) -> Result<UserToken, TokenError> {
        let outcome = self
            .wait_or_give_up(ctx, pending, self.inner.token_timeout)
            .await?;
        self.after_outcome(subject, outcome).await
    }

    /// Waits up to `wait` for `pending` to end, unless the request is
    /// cancelled first; a call that stops waiting is counted here, once.
    ///
    /// Every tool call that waits for a callback goes through here, so
    /// none can give up uncounted; a fail-fast watcher does not (it is no
    /// call, and its flow expiring is no one giving up).
    async fn wait_or_give_up(
        &self,
        ctx: &RequestContext<RoleServer>,
        pending: &PendingAuthorization,
        wait: Duration,
    ) -> Result<FlowOutcome, TokenError> {
        // Biased, the outcome first: a sign-in that completed in the same
        // poll as the cancellation is reported as done, not as cancelled
        // (a random pick would count a give-up for a flow that ended).
        let outcome = tokio::select! {
            biased;
            outcome = self.wait_for_authorization(pending, wait) => outcome?,
            () = ctx.ct.cancelled() => return Err(self.give_up(GaveUp::Cancelled)),
        };
        outcome.ok_or_else(|| self.give_up(GaveUp::TimedOut))
    }

    /// Counts a call that stopped waiting for a sign-in (timed out or
    /// cancelled) and returns what it answers. Not the flow's end: the
    /// flow goes on, and its callback, if the user finishes, counts its
    /// one completion.
    fn give_up(&self, reason: GaveUp) -> TokenError {
        self.inner.lifecycle.record_wait_given_up(reason);
        let display = self.inner.display_name.clone();
        if reason == GaveUp::Cancelled {
            TokenError::Cancelled { display }
        } else {
            TokenError::TimedOut {
                display,
                after: self.inner.token_timeout,
            }
        }
    }

    async fn abandon_if_started(&self, pending: &PendingAuthorization, code: &str) {
        if !pending.started() {
            return;
        }
        let outcome = FlowOutcome::Denied {
            error: code.to_owned(),
            description: Some("the user ended the prompt in the MCP client".into()),
        };
        if let Err(error) = self.abandon_authorization(pending, outcome).await {
            warn!(provider = %self.inner.name, %error, "could not end the declined flow; it expires by itself");
        }
    }

    async fn fail_fast(
        &self,
        ctx: &RequestContext<RoleServer>,
        subject: String,
        session: Option<String>,
    ) -> Result<UserToken, TokenError> {
        let pending = self
            .begin_authorization(&subject, session.as_deref())
            .await?;
        if pending.elicitation_id.is_empty() {
            // The callback is being handled right now: no link to show.
            return self.wait_then_token(ctx, &subject, &pending).await;
        }
        self.watch_for_completion(ctx.peer.clone(), session.unwrap_or_default(), &pending);
        self.count(names::ELICITATIONS, ("path", "fail_fast"));
        Err(TokenError::AuthorizationRequired(Box::new(
            AuthorizationRequired {
                provider: self.inner.name.clone(),
                message: self.prompt(false),
                url: pending.connect_url().clone(),
                elicitation_id: pending.elicitation_id().to_owned(),
                request_state: None,
            },
        )))
    }

    /// Sends `notifications/elicitation/complete` to the session once the
    /// flow ends, wherever its callback lands (the store wakes this
    /// process). One watcher per session and flow.
    fn watch_for_completion(
        &self,
        peer: Peer<RoleServer>,
        session: String,
        pending: &PendingAuthorization,
    ) {
        let entry = (session, pending.state.clone());
        if !lock(&self.inner.tools.watchers).insert(entry.clone()) {
            return;
        }
        let provider = self.clone();
        let pending = pending.clone();
        let ttl = pending.expires_in.unwrap_or(Duration::from_secs(600));
        tokio::spawn(async move {
            let outcome = provider.wait_for_authorization(&pending, ttl).await;
            match outcome {
                Ok(Some(_)) => notify_complete(&peer, pending.elicitation_id()).await,
                Ok(None) => debug!("flow expired without a callback; no completion notice"),
                Err(error) => warn!(%error, "waiting for a flow's completion failed"),
            }
            lock(&provider.inner.tools.watchers).remove(&entry);
        });
    }

    async fn input_required_round(
        &self,
        ctx: &RequestContext<RoleServer>,
        subject: String,
    ) -> Result<UserToken, TokenError> {
        let display = self.inner.display_name.clone();
        let key = input_key(&self.inner.name);
        let retry = ctx.extensions.get::<RetryInput>();
        let answer = retry
            .and_then(|retry| retry.input_responses.as_ref())
            .and_then(|responses| responses.get(&key))
            .and_then(|response| response.get("action"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let echoed = retry.and_then(|retry| retry.request_state.clone());
        if let Some(action) = answer {
            let current = self.active_authorization(&subject).await?;
            let matches = match (&current, &echoed) {
                (Some(current), Some(echoed)) => {
                    *echoed == request_state(&self.inner.name, current.elicitation_id())
                        || current.elicitation_id.is_empty()
                }
                _ => false,
            };
            match (action.as_str(), current) {
                ("accept", Some(current)) if matches => {
                    return self.wait_then_token(ctx, &subject, &current).await;
                }
                ("accept", None) => return Err(TokenError::Incomplete { display }),
                ("decline", current) => {
                    if let Some(current) = current.filter(|_| matches) {
                        self.abandon_if_started(&current, DECLINED).await;
                    }
                    return Err(TokenError::Declined { display });
                }
                ("cancel", current) => {
                    if let Some(current) = current.filter(|_| matches) {
                        self.abandon_if_started(&current, CANCELLED).await;
                    }
                    return Err(TokenError::Cancelled { display });
                }
                // An answer for another flow: ask again for the current one.
                _ => {}
            }
        }
        let pending = self.begin_authorization(&subject, None).await?;
        if pending.elicitation_id.is_empty() {
            // The callback is being handled right now: no link to show.
            return self.wait_then_token(ctx, &subject, &pending).await;
        }
        self.count(names::ELICITATIONS, ("path", "input_required"));
        Err(TokenError::AuthorizationRequired(Box::new(
            AuthorizationRequired {
                provider: self.inner.name.clone(),
                message: self.prompt(false),
                url: pending.connect_url().clone(),
                elicitation_id: pending.elicitation_id().to_owned(),
                request_state: Some(request_state(&self.inner.name, pending.elicitation_id())),
            },
        )))
    }

    /// The user's flow in progress, if any, as a handle to wait on.
    async fn active_authorization(
        &self,
        subject: &str,
    ) -> Result<Option<PendingAuthorization>, ProviderError> {
        let lifecycle = &self.inner.lifecycle;
        let key = lifecycle.key(subject);
        let Some(state) = lifecycle.pending_store().active_flow(&key).await? else {
            return Ok(None);
        };
        Ok(Some(match lifecycle.pending_flow(&state).await? {
            Some(flow) => self.pending_for(subject, flow, true),
            None => PendingAuthorization {
                subject: subject.to_owned(),
                connect_url: self.inner.connect_url.clone(),
                elicitation_id: String::new(),
                expires_in: None,
                state,
                started: false,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_authorization_required_leaves_out_the_link() {
        let handle = "bGluay1oYW5kbGUtMjU2LWJpdHMtcmFuZG9tLXZhbHVl";
        let required = AuthorizationRequired {
            provider: "github".into(),
            message: "open the link".into(),
            url: Url::parse(&format!(
                "https://mcp.example.com/oauth/github/connect?flow={handle}"
            ))
            .unwrap(),
            elicitation_id: handle.into(),
            request_state: Some(request_state("github", handle)),
        };
        let printed = format!("{required:?}");
        assert!(!printed.contains(handle), "{printed}");
        assert!(printed.contains("github") && printed.contains("input_required: true"));
    }
}
