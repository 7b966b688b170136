//! The user's part of an authorization: showing the authorization URL (or
//! driving it headlessly) and receiving the redirect.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::LOCATION;
use url::Url;

use crate::client::error::ClientAuthError;

/// An authorization the user has to complete.
#[derive(Clone)]
#[non_exhaustive]
pub struct AuthorizationPrompt {
    /// Where to send the user's browser.
    pub url: Url,
    /// Where the authorization server will redirect to afterwards.
    pub redirect_uri: String,
    /// The scopes asked for.
    pub scopes: Vec<String>,
    /// The authorization server.
    pub issuer: String,
    /// The MCP server (resource) the token is for.
    pub resource: String,
}

impl AuthorizationPrompt {
    /// A prompt for `url` that redirects to `redirect_uri`, for tests of a
    /// [`UserInteraction`] (the provider builds the real ones).
    pub fn new(url: Url, redirect_uri: impl Into<String>) -> Self {
        AuthorizationPrompt {
            url,
            redirect_uri: redirect_uri.into(),
            scopes: Vec::new(),
            issuer: String::new(),
            resource: String::new(),
        }
    }
}

impl fmt::Debug for AuthorizationPrompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL carries the state and PKCE challenge: not secrets, but
        // nothing a log needs either.
        f.debug_struct("AuthorizationPrompt")
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            .field("issuer", &self.issuer)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

/// What the user-interaction hook did.
#[derive(Clone)]
#[non_exhaustive]
pub enum PromptOutcome {
    /// The user was sent to the URL; the redirect arrives at the built-in
    /// loopback listener.
    AwaitRedirect,
    /// The hook obtained the redirect itself (headless): the full redirect
    /// URL with `code`, `state` and `iss`, or `error`.
    Redirected(Url),
}

impl fmt::Debug for PromptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PromptOutcome::AwaitRedirect => f.write_str("AwaitRedirect"),
            // The redirect carries the authorization code.
            PromptOutcome::Redirected(_) => f.write_str("Redirected([redacted])"),
        }
    }
}

/// How the user completes an authorization: open a browser, print the
/// URL, or drive it headlessly.
///
/// Built in: [`OpenBrowser`], [`PrintUrl`], [`HeadlessRedirect`], and any
/// `Fn(AuthorizationPrompt) -> Future<Output = Result<PromptOutcome, _>>`
/// through [`prompt_fn`].
#[async_trait]
pub trait UserInteraction: Send + Sync + 'static {
    /// Shows `prompt` to the user (or completes it) and says where the
    /// redirect will come from.
    async fn authorize(
        &self,
        prompt: &AuthorizationPrompt,
    ) -> Result<PromptOutcome, ClientAuthError>;
}

/// Opens the system browser at the authorization URL, and prints the URL on
/// stderr as well, for when no browser opens.
///
/// The browser is started without a shell (the `webbrowser` crate: the
/// browser's own executable on Windows, Launch Services on macOS, `$BROWSER`
/// or `xdg-open` and friends elsewhere), with the URL as one argument. The
/// URL comes from the authorization server's metadata: through a shell
/// (`cmd /C start` on Windows) a hostile server's `&`, `^` or `%VAR%` would
/// run commands on the user's machine, and every real URL would be cut at
/// its first `&`. Only `http` and `https` URLs are opened.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenBrowser;

#[async_trait]
impl UserInteraction for OpenBrowser {
    async fn authorize(
        &self,
        prompt: &AuthorizationPrompt,
    ) -> Result<PromptOutcome, ClientAuthError> {
        eprintln!(
            "Sign in to authorize access to {}:\n  {}",
            prompt.resource, prompt.url
        );
        let url = prompt.url.to_string();
        // A text-mode browser runs in the foreground until the user quits
        // it: off the async threads.
        let opened = tokio::task::spawn_blocking(move || webbrowser::open(&url)).await;
        match opened {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                eprintln!("(could not open a browser: {error}; open the URL above yourself)");
            }
            Err(error) => {
                eprintln!("(could not open a browser: {error}; open the URL above yourself)");
            }
        }
        Ok(PromptOutcome::AwaitRedirect)
    }
}

/// Prints the authorization URL on stderr for the user to open.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrintUrl;

#[async_trait]
impl UserInteraction for PrintUrl {
    async fn authorize(
        &self,
        prompt: &AuthorizationPrompt,
    ) -> Result<PromptOutcome, ClientAuthError> {
        eprintln!(
            "Open this URL to authorize access to {}:\n  {}",
            prompt.resource, prompt.url
        );
        Ok(PromptOutcome::AwaitRedirect)
    }
}

/// Completes the authorization without a user: requests the URL and follows
/// the authorization server's redirects (without sending them anywhere
/// else) until one points at the redirect URI, then returns it. An error
/// page (4xx) on the way is
/// [`ClientAuthError::AuthorizationRequestRefused`].
///
/// For servers that consent automatically: tests, CI, the MCP conformance
/// suite, and machine clients whose authorization server trusts them.
#[derive(Clone, Debug)]
pub struct HeadlessRedirect {
    client: reqwest::Client,
    max_hops: usize,
}

impl HeadlessRedirect {
    /// Uses `client`, which must not follow redirects itself (an
    /// [`OAuthHttpClient`](crate::http::OAuthHttpClient)'s is suitable).
    pub fn new(client: reqwest::Client) -> Self {
        HeadlessRedirect {
            client,
            max_hops: 10,
        }
    }
}

#[async_trait]
impl UserInteraction for HeadlessRedirect {
    async fn authorize(
        &self,
        prompt: &AuthorizationPrompt,
    ) -> Result<PromptOutcome, ClientAuthError> {
        let redirect = Url::parse(&prompt.redirect_uri).map_err(|e| {
            ClientAuthError::Interaction(format!("the redirect URI is not a URL ({e})"))
        })?;
        let mut current = prompt.url.clone();
        for _ in 0..self.max_hops {
            let response = self
                .client
                .get(current.clone())
                .send()
                .await
                .map_err(|e| ClientAuthError::http(prompt.url.as_str(), e))?;
            let status = response.status();
            if status.is_client_error() {
                return Err(ClientAuthError::AuthorizationRequestRefused {
                    status: status.as_u16(),
                });
            }
            if !status.is_redirection() {
                return Err(ClientAuthError::Interaction(format!(
                    "the authorization server answered HTTP {status} instead of redirecting: it \
                     wants a user, so use an interactive prompt"
                )));
            }
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    ClientAuthError::Interaction("a redirect without a Location".to_owned())
                })?;
            let next = current.join(location).map_err(|e| {
                ClientAuthError::Interaction(format!("a redirect to an invalid URL ({e})"))
            })?;
            if is_redirect_to(&next, &redirect) {
                return Ok(PromptOutcome::Redirected(next));
            }
            current = next;
        }
        Err(ClientAuthError::Interaction(format!(
            "no redirect to the redirect URI after {} hops",
            self.max_hops
        )))
    }
}

/// Whether `url` is a request to `redirect_uri` (same scheme, host, port
/// and path; the query is the response).
pub(crate) fn is_redirect_to(url: &Url, redirect_uri: &Url) -> bool {
    url.scheme() == redirect_uri.scheme()
        && url.host_str() == redirect_uri.host_str()
        && url.port_or_known_default() == redirect_uri.port_or_known_default()
        && url.path() == redirect_uri.path()
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<PromptOutcome, ClientAuthError>> + Send>>;

/// A [`UserInteraction`] from a function, e.g. one that shows the URL in
/// the application's own window.
///
/// ```
/// use mcp_authkit_providers::client::{PromptOutcome, prompt_fn};
///
/// let interaction = prompt_fn(|prompt| async move {
///     println!("visit {}", prompt.url);
///     Ok(PromptOutcome::AwaitRedirect)
/// });
/// # let _ = interaction;
/// ```
pub fn prompt_fn<F, Fut>(f: F) -> impl UserInteraction
where
    F: Fn(AuthorizationPrompt) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<PromptOutcome, ClientAuthError>> + Send + 'static,
{
    PromptFn(move |prompt| -> BoxFuture { Box::pin(f(prompt)) })
}

struct PromptFn<F>(F);

#[async_trait]
impl<F> UserInteraction for PromptFn<F>
where
    F: Fn(AuthorizationPrompt) -> BoxFuture + Send + Sync + 'static,
{
    async fn authorize(
        &self,
        prompt: &AuthorizationPrompt,
    ) -> Result<PromptOutcome, ClientAuthError> {
        (self.0)(prompt.clone()).await
    }
}

/// How long a user has to finish signing in before the flow is abandoned.
pub(crate) const DEFAULT_AUTHORIZATION_TIMEOUT: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt() -> AuthorizationPrompt {
        AuthorizationPrompt {
            url: Url::parse("https://as.example/authorize?state=s").unwrap(),
            redirect_uri: "http://127.0.0.1:9/callback".into(),
            scopes: vec![],
            issuer: "https://as.example".into(),
            resource: "https://mcp.example/mcp".into(),
        }
    }

    #[tokio::test]
    async fn printing_the_url_waits_for_the_redirect() {
        let outcome = PrintUrl.authorize(&prompt()).await.unwrap();
        assert!(matches!(outcome, PromptOutcome::AwaitRedirect));
    }

    #[test]
    fn redirects_are_matched_on_origin_and_path() {
        let redirect = Url::parse("http://127.0.0.1:9/callback").unwrap();
        let matches = |u: &str| is_redirect_to(&Url::parse(u).unwrap(), &redirect);
        assert!(matches("http://127.0.0.1:9/callback?code=x&state=y"));
        assert!(!matches("http://127.0.0.1:10/callback?code=x"));
        assert!(!matches("http://127.0.0.1:9/other?code=x"));
        assert!(!matches("https://127.0.0.1:9/callback?code=x"));
        let debug = format!(
            "{:?}",
            PromptOutcome::Redirected(Url::parse("http://x/?code=secret").unwrap())
        );
        assert!(!debug.contains("secret"));
    }
}
