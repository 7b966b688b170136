//! The connect and callback routes.

use axum::Router;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mcp_authkit_core::{
    CallbackParams, Error, FlowOutcome, FlowState, OAuthErrorKind, SecretString,
};
use tracing::{debug, info, warn};

use super::OAuthProvider;
use super::browser::{BrowserIdentity, ConnectCheck};
use super::html::{Page, secure_headers};
use super::query::{Query, QueryError};

/// Longest query string accepted on the connect page.
const CONNECT_QUERY_LIMIT: usize = 4096;
/// Longest query string accepted on the callback (codes of some providers
/// run to a few kilobytes).
const CALLBACK_QUERY_LIMIT: usize = 16 * 1024;
const SUBJECT_LIMIT: usize = 1024;
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

fn bad_query(error: &QueryError) -> Response {
    Page::new(
        StatusCode::BAD_REQUEST,
        "This link is not valid",
        "The address is malformed. Open the link exactly as you received it.",
    )
    .details(error.to_string())
    .into_response()
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

fn unknown_link(provider: &OAuthProvider) -> Response {
    Page::new(
        StatusCode::NOT_FOUND,
        "This link has expired",
        format!(
            "This {} connection link is unknown, expired, or was already used. \
             Run the action again in your MCP client to get a new link.",
            provider.display_name()
        ),
    )
    .into_response()
}

/// Compares without an early exit, so timing does not reveal how much of a
/// guessed flow id matched.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn connect_page(State(provider): State<OAuthProvider>, parts: Parts) -> Response {
    let query = match Query::parse(parts.uri.query(), CONNECT_QUERY_LIMIT) {
        Ok(query) => query,
        Err(error) => return bad_query(&error),
    };
    let (subject, flow_id) = match (
        query.get("user", SUBJECT_LIMIT),
        query.get("flow", FLOW_ID_LIMIT),
    ) {
        (Ok(Some(subject)), Ok(Some(flow_id))) if !flow_id.is_empty() => (subject, flow_id),
        (Err(error), _) | (_, Err(error)) => return bad_query(&error),
        _ => {
            return Page::new(
                StatusCode::BAD_REQUEST,
                "This link is incomplete",
                "The address lacks part of the connection link. Open the link exactly as you received it.",
            )
            .into_response();
        }
    };
    let lifecycle = provider.lifecycle();
    let key = lifecycle.key(subject);
    let state = match lifecycle.pending_store().active_flow(&key).await {
        Ok(Some(state)) => state,
        Ok(None) => return unknown_link(&provider),
        Err(error) => return store_failure(&provider, &error),
    };
    let flow = match lifecycle.pending_flow(&state).await {
        Ok(Some(flow)) if constant_time_eq(&flow.elicitation_id, flow_id) => flow,
        Ok(Some(_)) => return unknown_link(&provider),
        Ok(None) => {
            return Page::new(
                StatusCode::CONFLICT,
                "Already finishing",
                format!(
                    "This {} connection is completing right now. Return to your MCP client.",
                    provider.display_name()
                ),
            )
            .into_response();
        }
        Err(error) => return store_failure(&provider, &error),
    };
    if let ConnectCheck::SameUser(hook) = &provider.inner.connect_check {
        match hook.identify(&parts).await {
            BrowserIdentity::SignedIn(user) if user == flow.key.subject() => {}
            BrowserIdentity::SignedIn(_) => {
                warn!(provider = %provider.name(), "connect page refused: the browser user is not the user who started the flow");
                return Page::new(
                    StatusCode::FORBIDDEN,
                    "This link is for another user",
                    format!(
                        "You are signed in as a different user than the one who asked to connect {}. \
                         Only the user who started this request can finish it. If you did not \
                         start it, close this page.",
                        provider.display_name()
                    ),
                )
                .into_response();
            }
            BrowserIdentity::SignedOut => {
                return Page::new(
                    StatusCode::UNAUTHORIZED,
                    "Sign in first",
                    format!(
                        "Sign in to this application, then open the link again to connect {}.",
                        provider.display_name()
                    ),
                )
                .into_response();
            }
            BrowserIdentity::SignIn(url) => return redirect(url.as_str()),
        }
    }
    match lifecycle.authorization_url(&flow) {
        Ok(url) => {
            debug!(provider = %provider.name(), "connect page: sending the browser to the authorization server");
            redirect(url.as_str())
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

/// RFC 6749 section 4.1.2.1: `error` is `1*( %x20-21 / %x23-5B / %x5D-7E )`.
fn is_error_code(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

struct RawCallback<'q> {
    state: FlowState,
    code: Option<&'q str>,
    error: Option<&'q str>,
    error_description: Option<&'q str>,
    iss: Option<&'q str>,
}

fn read_callback(query: &Query) -> Result<RawCallback<'_>, (Option<FlowState>, String)> {
    let state = match query.get("state", STATE_LIMIT) {
        Ok(Some(state)) if !state.is_empty() => FlowState::new(state),
        Ok(_) => return Err((None, "the response carries no state".into())),
        Err(error) => return Err((None, error.to_string())),
    };
    let fail = |reason: String| Err((Some(state.clone()), reason));
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
    Ok(RawCallback {
        state,
        code,
        error,
        error_description,
        iss,
    })
}

async fn callback_page(State(provider): State<OAuthProvider>, parts: Parts) -> Response {
    let query = match Query::parse(parts.uri.query(), CALLBACK_QUERY_LIMIT) {
        Ok(query) => query,
        Err(error) => {
            let state = lenient_state(parts.uri.query());
            return malformed_callback(&provider, state, error.to_string()).await;
        }
    };
    let raw = match read_callback(&query) {
        Ok(raw) => raw,
        Err((state, reason)) => return malformed_callback(&provider, state, reason).await,
    };
    let mut params = CallbackParams::success(raw.state, String::new());
    params.code = raw.code.map(|code| SecretString::from(code.to_owned()));
    params.error = raw.error.map(str::to_owned);
    params.error_description = raw.error_description.map(str::to_owned);
    params.iss = raw.iss.map(str::to_owned);
    let name = provider.display_name().to_owned();
    match provider.lifecycle().complete_authorization(params).await {
        Ok(done) => match done.outcome {
            FlowOutcome::Authorized { .. } => {
                info!(provider = %provider.name(), "authorization completed");
                Page::new(
                    StatusCode::OK,
                    format!("{name} is connected"),
                    "You can close this tab and return to your MCP client.",
                )
                .into_response()
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
                page.into_response()
            }
            FlowOutcome::Failed { reason } => Page::new(
                StatusCode::BAD_GATEWAY,
                format!("{name} was not connected"),
                reason,
            )
            .into_response(),
            _ => Page::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{name} was not connected"),
                "The authorization ended in an unexpected way.",
            )
            .into_response(),
        },
        Err(Error::FlowNotFound) => Page::new(
            StatusCode::BAD_REQUEST,
            "This sign-in has expired",
            format!(
                "This {name} authorization response is unknown, expired, or was already used, \
                 so nothing was stored. Run the action again in your MCP client."
            ),
        )
        .into_response(),
        Err(Error::OAuth(error)) => {
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
                .into_response()
        }
        Err(Error::InvalidInput { reason, .. }) => Page::new(
            StatusCode::BAD_REQUEST,
            format!("{name} was not connected"),
            format!("The authorization response is incomplete: {reason}. Nothing was stored."),
        )
        .into_response(),
        Err(error) => store_failure(&provider, &error),
    }
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

/// A callback whose parameters cannot be read: nothing is exchanged or
/// stored; when it names a pending flow of this provider, that flow ends as
/// failed, so the tool call waiting on it stops with the reason.
async fn malformed_callback(
    provider: &OAuthProvider,
    state: Option<FlowState>,
    reason: String,
) -> Response {
    if let Some(state) = state {
        let lifecycle = provider.lifecycle();
        match lifecycle.pending_flow(&state).await {
            Ok(Some(_)) => {
                let outcome = FlowOutcome::Failed {
                    reason: format!("the authorization response was malformed: {reason}"),
                };
                if let Err(error) = lifecycle.abandon_flow(&state, outcome).await {
                    return store_failure(provider, &error);
                }
            }
            Ok(None) => {}
            Err(error) => return store_failure(provider, &error),
        }
    }
    Page::new(
        StatusCode::BAD_REQUEST,
        format!("{} was not connected", provider.display_name()),
        "The authorization response is malformed, so it was refused and nothing was stored.",
    )
    .details(reason)
    .into_response()
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
    fn constant_time_comparison_is_equality() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
