//! Who is at the browser: the application's answer, which the connect page
//! compares with the user who started the flow.
//!
//! MCP 2025-11-25 (elicitation, "Phishing") requires that the user who
//! completes a URL-mode flow is the user who started it: otherwise an
//! attacker could start a flow for *their* MCP identity and trick a victim
//! into opening the link, binding the victim's third-party account to the
//! attacker. The application knows its users (a session cookie, its own
//! login), so it answers through [`BrowserUser`].

use std::sync::Arc;

use async_trait::async_trait;
use axum::http::request::Parts;
use url::Url;

/// What the application knows about the browser that opened the connect
/// page.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrowserIdentity {
    /// Signed in as this subject (the same kind of id the MCP subject
    /// resolver returns).
    SignedIn(String),
    /// Not signed in: the page tells the user to sign in to the application
    /// first and open the link again.
    SignedOut,
    /// Not signed in: send the browser to the application's sign-in page
    /// (which should bring the user back to the request's URL afterwards).
    SignIn(Url),
}

/// The application's hook that identifies the browser user from the connect
/// request (its cookies and headers).
///
/// Closures `Fn(&Parts) -> BrowserIdentity` implement it; implement the
/// trait for lookups that need `await` (a session store).
///
/// ```
/// use mcp_authkit_providers::server::BrowserIdentity;
/// use axum::http::request::Parts;
///
/// // The application's own session cookie, here `app_user=<subject>` for brevity;
/// // a real application looks its signed session up.
/// let hook = |parts: &Parts| {
///     let cookies = parts.headers.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("");
///     cookies
///         .split(';')
///         .find_map(|c| c.trim().strip_prefix("app_user="))
///         .map(|user| BrowserIdentity::SignedIn(user.to_owned()))
///         .unwrap_or(BrowserIdentity::SignedOut)
/// };
/// # let _ = hook;
/// ```
#[async_trait]
pub trait BrowserUser: Send + Sync + 'static {
    /// Identifies the user behind the connect request.
    async fn identify(&self, request: &Parts) -> BrowserIdentity;
}

#[async_trait]
impl<F> BrowserUser for F
where
    F: Fn(&Parts) -> BrowserIdentity + Send + Sync + 'static,
{
    async fn identify(&self, request: &Parts) -> BrowserIdentity {
        self(request)
    }
}

/// How the connect page decides who may continue a flow.
#[derive(Clone)]
pub(crate) enum ConnectCheck {
    /// The application's hook must name the flow's subject.
    SameUser(Arc<dyn BrowserUser>),
    /// Anyone holding the link may continue (an explicit opt-in).
    TrustLinkHolder,
}
