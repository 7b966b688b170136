//! The connect and callback routes.
//!
//! Each route first reads its query without touching the store
//! ([`read_connect`], [`read_callback`]), then decides with at most one
//! store read who may go on ([`gate`] for the callback): the parts an
//! attacker controls are plain functions, fuzzed and property-tested.

use axum::Router;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mcp_authkit_core::observe::{self, names};
use mcp_authkit_core::{
    CallbackParams, Error, FlowOutcome, FlowState, OAuthErrorKind, PendingFlow, SecretString,
};
use tracing::{debug, info, warn};

use super::OAuthProvider;
use super::binding::{self, CookieJar, Presented};
use super::browser::{BrowserIdentity, ConnectCheck};
use super::html::{Page, secure_headers};
use super::query::{Query, QueryError};

/// Longest query string accepted on the connect page.
const CONNECT_QUERY_LIMIT: usize = 4096;
/// Longest query string accepted on the callback (codes of some providers
/// run to a few kilobytes).
pub(crate) const CALLBACK_QUERY_LIMIT: usize = 16 * 1024;
const FLOW_ID_LIMIT: usize = 128;
const STATE_LIMIT: usize = 512;
const CODE_LIMIT: usize = 8 * 1024;
const ERROR_LIMIT: usize = 128;
const ERROR_DESCRIPTION_LIMIT: usize = 2048;
const ISS_LIMIT: usize = 2048;

pub(crate) fn router(provider: OAuthProvider) -> Router {
    let connect = provider.inner.connect_path.clone();
    let callback = provider.inner.callback_path.clone();
    Router::new()
        .route(&connect, get(connect_page))
        .route(&callback, get(callback_page))
        .with_state(provider)
}

fn redirect(to: &str) -> Response {
    let Ok(location) = HeaderValue::from_str(to) else {
        return Page::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "The sign-in address could not be built.",
        )
        .into_response();
    };
    let mut response = StatusCode::SEE_OTHER.into_response();
    response.headers_mut().insert(header::LOCATION, location);
    secure_headers(response.headers_mut());
    response
}

fn store_failure(provider: &OAuthProvider, error: &Error) -> Response {
    warn!(provider = %provider.name(), %error, "an authorization route could not reach its store");
    let status = if error.is_retryable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    Page::new(
        status,
        "Something went wrong",
        "The server could not process this step. Try again in a moment.",
    )
    .into_response()
}

// --- connect page -------------------------------------------------------

/// Why a connect request was refused before any lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnectRefusal {
    /// The query cannot be read exactly.
    Malformed(QueryError),
    /// No link handle.
    Incomplete,
    /// Something that is no handle this server issues.
    NotAHandle,
}

/// The link handle of a connect request, read without touching the store.
pub(crate) fn read_connect(raw: Option<&str>) -> Result<String, ConnectRefusal> {
    let query = Query::parse(raw, CONNECT_QUERY_LIMIT).map_err(ConnectRefusal::Malformed)?;
    match query.get("flow", FLOW_ID_LIMIT) {
        Err(error) => Err(ConnectRefusal::Malformed(error)),
        Ok(None) => Err(ConnectRefusal::Incomplete),
        Ok(Some(handle)) if binding::is_handle(handle) => Ok(handle.to_owned()),
        Ok(Some(_)) => Err(ConnectRefusal::NotAHandle),
    }
}

/// A link whose flow cannot be found or verified: the page says only what
/// is true of every such link, so it reveals nothing about anyone's flow.
fn unknown_link(provider: &OAuthProvider) -> Response {
    Page::new(
        StatusCode::NOT_FOUND,
        "This link has expired",
        format!(
            "This {} connection link is unknown or expired, or its sign-in already ended. If \
             you just finished signing in, return to your MCP client; otherwise run the action \
             again in your MCP client to get a new link.",
            provider.display_name()
        ),
    )
    .into_response()
}

async fn connect_page(State(provider): State<OAuthProvider>, parts: Parts) -> Response {
    let handle = match read_connect(parts.uri.query()) {
        Ok(handle) => handle,
        Err(ConnectRefusal::Malformed(error)) => {
            return Page::new(
                StatusCode::BAD_REQUEST,
                "This link is not valid",
                "The address is malformed. Open the link exactly as you received it.",
            )
            .details(error.to_string())
            .into_response();
        }
        Err(ConnectRefusal::Incomplete) => {
            return Page::new(
                StatusCode::BAD_REQUEST,
                "This link is incomplete",
                "The address lacks part of the connection link. Open the link exactly as you received it.",
            )
            .into_response();
        }
        Err(ConnectRefusal::NotAHandle) => return unknown_link(&provider),
    };
    let state = binding::state_for(provider.name(), &handle);
    let lifecycle = provider.lifecycle();
    let flow = match lifecycle.pending_flow(&state).await {
        // The state is derived from the handle; comparing the stored handle
        // as well costs nothing and keeps the link's meaning explicit.
        Ok(Some(flow))
            if binding::constant_time_eq(flow.elicitation_id.as_bytes(), handle.as_bytes()) =>
        {
            flow
        }
        Ok(Some(_)) => return unknown_link(&provider),
        Ok(None) => return ended_or_unknown(&provider, &parts, &state).await,
        Err(error) => return store_failure(&provider, &error),
    };
    if let ConnectCheck::SameUser(hook) = &provider.inner.connect_check {
        match hook.identify(&parts).await {
            BrowserIdentity::SignedIn(user) if user == flow.key.subject() => {}
            BrowserIdentity::SignedIn(_) => {
                warn!(provider = %provider.name(), "connect page refused: the browser user is not the user who started the flow");
                return another_user(&provider);
            }
            BrowserIdentity::SignedOut => return sign_in_first(&provider),
            BrowserIdentity::SignIn(url) => return redirect(url.as_str()),
        }
    }
    match lifecycle.authorization_url(&flow) {
        Ok(url) => {
            debug!(provider = %provider.name(), "connect page: binding the browser and sending it to the authorization server");
            let mut response = redirect(url.as_str());
            let cookie = provider.inner.cookies.bind(&flow, provider.now());
            response.headers_mut().append(header::SET_COOKIE, cookie);
            response
        }
        Err(error) => {
            warn!(provider = %provider.name(), %error, "the authorization URL could not be built");
            Page::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                format!(
                    "The {} sign-in address could not be built.",
                    provider.display_name()
                ),
            )
            .into_response()
        }
    }
}

fn another_user(provider: &OAuthProvider) -> Response {
    Page::new(
        StatusCode::FORBIDDEN,
        "This link is for another user",
        format!(
            "You are signed in as a different user than the one who asked to connect {}. \
             Only the user who started this request can finish it. If you did not \
             start it, close this page.",
            provider.display_name()
        ),
    )
    .into_response()
}

fn sign_in_first(provider: &OAuthProvider) -> Response {
    Page::new(
        StatusCode::UNAUTHORIZED,
        "Sign in first",
        format!(
            "Sign in to this application, then open the link from your MCP client again to \
             connect {}.",
            provider.display_name()
        ),
    )
    .into_response()
}

/// A handle with no pending flow: its flow ended (its outcome is still
/// kept), is being completed right now, or never existed. Each answer is
/// given only once it is verified: an outcome exists only under a real
/// flow's state; "being completed" only when the browser's own user has
/// that flow active.
async fn ended_or_unknown(provider: &OAuthProvider, parts: &Parts, state: &FlowState) -> Response {
    let lifecycle = provider.lifecycle();
    let name = provider.display_name();
    match lifecycle.pending_store().outcome(state).await {
        Ok(Some(FlowOutcome::Authorized { .. })) => {
            return Page::new(
                StatusCode::OK,
                format!("{name} is connected"),
                "This sign-in already finished. You can close this tab and return to your MCP client.",
            )
            .into_response();
        }
        Ok(Some(_)) => {
            return Page::new(
                StatusCode::GONE,
                format!("{name} was not connected"),
                format!(
                    "This sign-in already ended without connecting {name}. Run the action again \
                     in your MCP client to get a new link."
                ),
            )
            .into_response();
        }
        Ok(None) => {}
        Err(error) => return store_failure(provider, &error),
    }
    if let ConnectCheck::SameUser(hook) = &provider.inner.connect_check
        && let BrowserIdentity::SignedIn(user) = hook.identify(parts).await
    {
        let key = lifecycle.key(&user);
        match lifecycle.pending_store().active_flow(&key).await {
            Ok(Some(active)) if active == *state => {
                return Page::new(
                    StatusCode::CONFLICT,
                    "Already finishing",
                    format!(
                        "This {name} connection is completing right now. Return to your MCP client."
                    ),
                )
                .into_response();
            }
            Ok(_) => {}
            Err(error) => return store_failure(provider, &error),
        }
    }
    unknown_link(provider)
}

// --- callback -------------------------------------------------------------

/// RFC 6749 section 4.1.2.1: `error` is `1*( %x20-21 / %x23-5B / %x5D-7E )`.
fn is_error_code(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

/// The parameters of a readable authorization response.
#[derive(Debug, Clone)]
pub(crate) struct RawCallback {
    pub(crate) state: FlowState,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    iss: Option<String>,
}

/// What a callback's query says, read without touching the store.
#[derive(Debug, Clone)]
pub(crate) enum CallbackQuery {
    /// Nothing in it can name a flow.
    Unusable(String),
    /// A readable response for the flow with this state.
    Response(RawCallback),
    /// A response naming one flow that cannot be read exactly: if its
    /// browser is the bound one, that flow ends as failed.
    Malformed { state: FlowState, reason: String },
}

impl CallbackQuery {
    /// Why it cannot be used, for the page.
    fn unusable_reason(&self) -> String {
        match self {
            CallbackQuery::Unusable(reason) => reason.clone(),
            _ => "the response names no flow".into(),
        }
    }

    /// The flow it names, if any.
    pub(crate) fn state(&self) -> Option<&FlowState> {
        match self {
            CallbackQuery::Unusable(_) => None,
            CallbackQuery::Response(raw) => Some(&raw.state),
            CallbackQuery::Malformed { state, .. } => Some(state),
        }
    }
}

/// Reads a callback's query strictly; when the strict reading fails, a
/// single plausible `state` is still picked out, so the flow it names can be
/// ended (by its own browser only, see [`gate`]).
pub(crate) fn read_callback(raw: Option<&str>) -> CallbackQuery {
    let query = match Query::parse(raw, CALLBACK_QUERY_LIMIT) {
        Ok(query) => query,
        Err(error) => {
            return match lenient_state(raw) {
                Some(state) => CallbackQuery::Malformed {
                    state,
                    reason: error.to_string(),
                },
                None => CallbackQuery::Unusable(error.to_string()),
            };
        }
    };
    let state = match query.get("state", STATE_LIMIT) {
        Ok(Some(state)) if !state.is_empty() => FlowState::new(state),
        Ok(_) => return CallbackQuery::Unusable("the response carries no state".into()),
        Err(error) => return CallbackQuery::Unusable(error.to_string()),
    };
    let fail = |reason: String| CallbackQuery::Malformed {
        state: state.clone(),
        reason,
    };
    let code = match query.get("code", CODE_LIMIT) {
        Ok(code) => code,
        Err(error) => return fail(error.to_string()),
    };
    let error = match query.get("error", ERROR_LIMIT) {
        Ok(Some(error)) if !is_error_code(error) => {
            return fail("the error parameter has characters RFC 6749 does not allow".into());
        }
        Ok(error) => error,
        Err(error) => return fail(error.to_string()),
    };
    let error_description = match query.get("error_description", ERROR_DESCRIPTION_LIMIT) {
        Ok(description) => description,
        Err(error) => return fail(error.to_string()),
    };
    let iss = match query.get("iss", ISS_LIMIT) {
        Ok(iss) => iss,
        Err(error) => return fail(error.to_string()),
    };
    if code.is_some_and(str::is_empty) {
        return fail("the code parameter is empty".into());
    }
    CallbackQuery::Response(RawCallback {
        state,
        code: code.map(str::to_owned),
        error: error.map(str::to_owned),
        error_description: error_description.map(str::to_owned),
        iss: iss.map(str::to_owned),
    })
}

/// Who may go on with a callback, decided from its query, the flow its
/// state names (one store read) and the browser's cookies.
#[derive(Debug)]
pub(crate) enum Gate<'f> {
    /// The query names no flow.
    Unusable,
    /// The state names no pending flow of this provider.
    UnknownFlow,
    /// The flow exists but this browser does not hold its binding: nothing
    /// may be taken, exchanged or stored.
    OtherBrowser(Presented),
    /// The browser that passed the connect page for this flow.
    Bound(&'f PendingFlow),
}

/// The callback's first check, before anything is taken or exchanged.
pub(crate) fn gate<'f>(
    query: &CallbackQuery,
    flow: Option<&'f PendingFlow>,
    cookies: &CookieJar,
    headers: &HeaderMap,
) -> Gate<'f> {
    let Some(state) = query.state() else {
        return Gate::Unusable;
    };
    let Some(flow) = flow.filter(|flow| flow.state == *state) else {
        return Gate::UnknownFlow;
    };
    match cookies.check(headers, flow) {
        Presented::Valid => Gate::Bound(flow),
        other => Gate::OtherBrowser(other),
    }
}

async fn callback_page(State(provider): State<OAuthProvider>, parts: Parts) -> Response {
    let query = read_callback(parts.uri.query());
    let flow = match query.state() {
        Some(state) => match provider.lifecycle().pending_flow(state).await {
            Ok(flow) => flow,
            Err(error) => return store_failure(&provider, &error),
        },
        None => None,
    };
    let flow = match gate(
        &query,
        flow.as_ref(),
        &provider.inner.cookies,
        &parts.headers,
    ) {
        Gate::Unusable => {
            refused(&provider, "malformed");
            return malformed_page(&provider, query.unusable_reason());
        }
        Gate::UnknownFlow => {
            refused(&provider, "unknown_state");
            return unknown_response(&provider);
        }
        Gate::OtherBrowser(presented) => {
            refused(&provider, "binding_mismatch");
            warn!(provider = %provider.name(), ?presented, "callback refused: this browser did not open the connect link of the flow");
            return other_browser(&provider);
        }
        Gate::Bound(flow) => flow,
    };
    // Defence in depth: the browser user is still the flow's user.
    if let ConnectCheck::SameUser(hook) = &provider.inner.connect_check {
        match hook.identify(&parts).await {
            BrowserIdentity::SignedIn(user) if user == flow.key.subject() => {}
            BrowserIdentity::SignedIn(_) => {
                refused(&provider, "user_mismatch");
                warn!(provider = %provider.name(), "callback refused: the browser user is not the user who started the flow");
                return another_user(&provider);
            }
            BrowserIdentity::SignedOut => return sign_in_first(&provider),
            BrowserIdentity::SignIn(url) => return redirect(url.as_str()),
        }
    }
    let state = flow.state.clone();
    let (mut response, ended) = match query {
        CallbackQuery::Malformed { state, reason } => {
            refused(&provider, "malformed");
            abandon_malformed(&provider, &state, reason).await
        }
        CallbackQuery::Response(raw) => complete(&provider, raw).await,
        // The gate lets no such query through.
        unusable @ CallbackQuery::Unusable(_) => {
            (malformed_page(&provider, unusable.unusable_reason()), false)
        }
    };
    if ended {
        // The flow is over: its binding has nothing left to guard.
        let unbind = provider.inner.cookies.unbind(&state);
        response.headers_mut().append(header::SET_COOKIE, unbind);
    }
    response
}

pub(crate) fn readiness_router(provider: OAuthProvider, path: &str) -> Router {
    Router::new()
        .route(path, get(readiness))
        .with_state(provider)
}

/// One ping per store; the answer names backends and latencies only.
async fn readiness(State(provider): State<OAuthProvider>) -> Response {
    let lifecycle = provider.lifecycle();
    let tokens = lifecycle.token_store();
    let pending = lifecycle.pending_store();
    let (token_result, pending_result) = tokio::join!(tokens.ping(), pending.ping_pending());
    let mut ready = true;
    let mut report = |which: &str, backend: &str, result: Result<std::time::Duration, Error>| {
        match result {
            Ok(latency) => serde_json::json!({
                "backend": backend,
                "ok": true,
                "latency_ms": latency.as_secs_f64() * 1000.0,
            }),
            Err(error) => {
                ready = false;
                warn!(provider = %provider.name(), store = which, backend, %error, "readiness: a store did not answer");
                serde_json::json!({
                    "backend": backend,
                    "ok": false,
                    "retryable": error.is_retryable(),
                })
            }
        }
    };
    let body = serde_json::json!({
        "provider": provider.name(),
        "token_store": report("token", tokens.backend_name(), token_result),
        "pending_store": report("pending", pending.pending_backend_name(), pending_result),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Counts a refused callback (`mcp_authkit_callbacks_refused_total`).
fn refused(provider: &OAuthProvider, reason: &'static str) {
    observe::count(
        names::CALLBACKS_REFUSED,
        provider.name(),
        Some(("reason", reason)),
    );
}

fn other_browser(provider: &OAuthProvider) -> Response {
    Page::new(
        StatusCode::FORBIDDEN,
        format!("{} was not connected", provider.display_name()),
        "This sign-in was started in another browser. Open the link from your MCP client in \
         this browser to connect your account; nothing was changed. If you did not ask to \
         connect anything, close this page.",
    )
    .into_response()
}

fn unknown_response(provider: &OAuthProvider) -> Response {
    Page::new(
        StatusCode::BAD_REQUEST,
        "This sign-in has expired",
        format!(
            "This {} authorization response is unknown, expired, or was already used, \
             so nothing was stored. Run the action again in your MCP client.",
            provider.display_name()
        ),
    )
    .into_response()
}

fn malformed_page(provider: &OAuthProvider, reason: String) -> Response {
    Page::new(
        StatusCode::BAD_REQUEST,
        format!("{} was not connected", provider.display_name()),
        "The authorization response is malformed, so it was refused and nothing was stored.",
    )
    .details(reason)
    .into_response()
}

/// The `state` of a query the strict parser refused, when it holds exactly
/// one plausible one: enough to end that flow, nothing else is trusted.
fn lenient_state(raw: Option<&str>) -> Option<FlowState> {
    let raw = raw?;
    if raw.len() > CALLBACK_QUERY_LIMIT {
        return None;
    }
    let mut states = url::form_urlencoded::parse(raw.as_bytes())
        .filter(|(name, _)| name == "state")
        .map(|(_, value)| value.into_owned());
    match (states.next(), states.next()) {
        (Some(state), None)
            if !state.is_empty()
                && state.len() <= STATE_LIMIT
                && state
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Some(FlowState::new(state))
        }
        _ => None,
    }
}

/// A bound callback whose parameters cannot be read: nothing is exchanged
/// or stored; the flow ends as failed, so the tool call waiting on it stops
/// with the reason. Returns the page and whether the flow ended.
async fn abandon_malformed(
    provider: &OAuthProvider,
    state: &FlowState,
    reason: String,
) -> (Response, bool) {
    let outcome = FlowOutcome::Failed {
        reason: format!("the authorization response was malformed: {reason}"),
    };
    if let Err(error) = provider.lifecycle().abandon_flow(state, outcome).await {
        return (store_failure(provider, &error), false);
    }
    (malformed_page(provider, reason), true)
}

/// Takes the flow, exchanges the code and stores the token. Returns the
/// page and whether the flow ended (it stays intact only when the store
/// could not be reached before it was taken).
async fn complete(provider: &OAuthProvider, raw: RawCallback) -> (Response, bool) {
    let mut params = CallbackParams::success(raw.state, String::new());
    params.code = raw.code.map(SecretString::from);
    params.error = raw.error;
    params.error_description = raw.error_description;
    params.iss = raw.iss;
    let name = provider.display_name().to_owned();
    let page = match provider.lifecycle().complete_authorization(params).await {
        Ok(done) => match done.outcome {
            FlowOutcome::Authorized { .. } => {
                info!(provider = %provider.name(), "authorization completed");
                Page::new(
                    StatusCode::OK,
                    format!("{name} is connected"),
                    "You can close this tab and return to your MCP client.",
                )
            }
            FlowOutcome::Denied { error, description } => {
                info!(provider = %provider.name(), %error, "the authorization server refused the authorization");
                let status = if error == "access_denied" {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::BAD_REQUEST
                };
                let message = if error == "access_denied" {
                    format!("Access to {name} was not granted, so nothing was connected.")
                } else {
                    format!("{name} refused the authorization ({error}), so nothing was connected.")
                };
                let mut page = Page::new(status, format!("{name} was not connected"), message);
                if let Some(description) = description {
                    page = page.details(description);
                }
                page
            }
            FlowOutcome::Failed { reason } => Page::new(
                StatusCode::BAD_GATEWAY,
                format!("{name} was not connected"),
                reason,
            ),
            _ => Page::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{name} was not connected"),
                "The authorization ended in an unexpected way.",
            ),
        },
        // Another request with this browser's binding took the flow first.
        Err(Error::FlowNotFound) => {
            refused(provider, "unknown_state");
            return (unknown_response(provider), false);
        }
        Err(Error::OAuth(error)) => {
            refused(
                provider,
                if error.kind() == OAuthErrorKind::IssuerMismatch {
                    "issuer_mismatch"
                } else {
                    "provider_error"
                },
            );
            warn!(provider = %provider.name(), %error, kind = ?error.kind(), "authorization callback failed");
            let (status, message) = match error.kind() {
                OAuthErrorKind::IssuerMismatch => (
                    StatusCode::BAD_REQUEST,
                    "The response did not come from the expected authorization server, so it was refused and nothing was stored.".to_owned(),
                ),
                OAuthErrorKind::InvalidGrant => (
                    StatusCode::BAD_REQUEST,
                    format!("{name} did not accept the authorization code (expired or already used), so nothing was stored. Run the action again."),
                ),
                OAuthErrorKind::Transient => (
                    StatusCode::BAD_GATEWAY,
                    format!("{name} could not be reached to finish the connection. Run the action again in a moment."),
                ),
                _ => (
                    StatusCode::BAD_GATEWAY,
                    format!("{name} did not complete the connection, so nothing was stored."),
                ),
            };
            Page::new(status, format!("{name} was not connected"), message)
                .details(error.to_string())
        }
        Err(Error::InvalidInput { reason, .. }) => {
            refused(provider, "malformed");
            Page::new(
                StatusCode::BAD_REQUEST,
                format!("{name} was not connected"),
                format!("The authorization response is incomplete: {reason}. Nothing was stored."),
            )
        }
        Err(error) => return (store_failure(provider, &error), false),
    };
    (page.into_response(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_follow_rfc6749() {
        assert!(is_error_code("access_denied"));
        assert!(!is_error_code(""));
        assert!(!is_error_code("bad\"quote"));
        assert!(!is_error_code("back\\slash"));
        assert!(!is_error_code("ünicode"));
    }

    #[test]
    fn connect_queries_carry_one_handle_and_nothing_else_counts() {
        let handle = binding::new_handle();
        assert_eq!(
            read_connect(Some(&format!("flow={handle}"))),
            Ok(handle.clone())
        );
        assert_eq!(
            read_connect(Some(&format!("user=alice&flow={handle}"))),
            Ok(handle.clone()),
            "other parameters are ignored"
        );
        assert_eq!(read_connect(None), Err(ConnectRefusal::Incomplete));
        assert_eq!(
            read_connect(Some("flow=abc")),
            Err(ConnectRefusal::NotAHandle)
        );
        assert!(matches!(
            read_connect(Some(&format!("flow={handle}&flow={handle}"))),
            Err(ConnectRefusal::Malformed(_))
        ));
    }
}
