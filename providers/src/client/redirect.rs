//! The built-in loopback redirect listener (RFC 8252 section 7.3): a tiny
//! HTTP server on `127.0.0.1` that receives the authorization response and
//! hands it to the flow waiting for its `state`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::sync::oneshot;
use url::Url;

use crate::client::error::ClientAuthError;

/// Where the authorization server sends the user's browser back to.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum RedirectTarget {
    /// The built-in loopback listener.
    Loopback(LoopbackRedirect),
    /// A redirect URI the application receives itself (a custom scheme, a
    /// web callback). Its [`UserInteraction`](crate::client::UserInteraction)
    /// must return [`PromptOutcome::Redirected`](crate::client::PromptOutcome)
    /// with the response.
    External(String),
}

/// The built-in loopback listener's address: `http://127.0.0.1:{port}{path}`.
///
/// With port `0` (the default) a free port is chosen when the first
/// authorization starts; a later start prefers the port a stored client
/// registration names, so the registration stays valid across restarts.
#[derive(Clone, Debug)]
pub struct LoopbackRedirect {
    pub(crate) ip: IpAddr,
    pub(crate) port: u16,
    pub(crate) path: String,
}

impl Default for LoopbackRedirect {
    fn default() -> Self {
        LoopbackRedirect {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            path: "/callback".to_owned(),
        }
    }
}

impl LoopbackRedirect {
    /// `http://127.0.0.1:{any free port}/callback`.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fixed port (for authorization servers that register exact
    /// redirect URIs, and for published Client ID Metadata Documents).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The callback path (default `/callback`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        self
    }

    /// Listens on `::1` instead of `127.0.0.1`.
    pub fn ipv6(mut self) -> Self {
        self.ip = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
        self
    }

    pub(crate) fn uri_for_port(&self, port: u16) -> String {
        let host = match self.ip {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        format!("http://{host}:{port}{}", self.path)
    }

    /// The port a redirect URI of this listener's shape names.
    pub(crate) fn port_of(&self, redirect_uri: &str) -> Option<u16> {
        let url = Url::parse(redirect_uri).ok()?;
        let port = url.port()?;
        (self.uri_for_port(port) == redirect_uri).then_some(port)
    }
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Url>>>>;

/// A running loopback listener; stops when dropped.
pub(crate) struct LoopbackListener {
    redirect_uri: String,
    waiters: Waiters,
    _shutdown: oneshot::Sender<()>,
}

impl LoopbackListener {
    /// Binds `config`'s address, on `preferred_port` first when the
    /// configured port is `0`.
    pub(crate) async fn bind(
        config: &LoopbackRedirect,
        preferred_port: Option<u16>,
    ) -> Result<LoopbackListener, ClientAuthError> {
        let listener = match (config.port, preferred_port) {
            (0, Some(port)) => {
                match tokio::net::TcpListener::bind(SocketAddr::new(config.ip, port)).await {
                    Ok(listener) => listener,
                    Err(_) => bind(SocketAddr::new(config.ip, 0)).await?,
                }
            }
            (port, _) => bind(SocketAddr::new(config.ip, port)).await?,
        };
        let port = listener
            .local_addr()
            .map_err(|e| {
                ClientAuthError::Interaction(format!("the redirect listener has no address ({e})"))
            })?
            .port();
        let redirect_uri = config.uri_for_port(port);
        let waiters: Waiters = Arc::default();
        let router = Router::new()
            .route(&config.path, get(receive))
            .with_state(Handler {
                redirect_uri: redirect_uri.clone(),
                waiters: Arc::clone(&waiters),
            });
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                tracing::warn!(%error, "the loopback redirect listener stopped");
            }
        });
        tracing::debug!(%redirect_uri, "loopback redirect listener started");
        Ok(LoopbackListener {
            redirect_uri,
            waiters,
            _shutdown: shutdown,
        })
    }

    pub(crate) fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// Registers interest in the response for `state`.
    pub(crate) fn expect(&self, state: &str) -> Expected {
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiters).insert(state.to_owned(), sender);
        Expected {
            receiver,
            state: state.to_owned(),
            waiters: Arc::clone(&self.waiters),
        }
    }
}

/// A pending wait for one flow's redirect; unregisters itself when dropped.
pub(crate) struct Expected {
    pub(crate) receiver: oneshot::Receiver<Url>,
    state: String,
    waiters: Waiters,
}

impl Drop for Expected {
    fn drop(&mut self) {
        lock(&self.waiters).remove(&self.state);
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ClientAuthError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        ClientAuthError::Interaction(format!(
            "could not listen on {addr} for the authorization redirect ({e})"
        ))
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone)]
struct Handler {
    redirect_uri: String,
    waiters: Waiters,
}

async fn receive(State(handler): State<Handler>, request: Request) -> Response {
    let query = request.uri().query().unwrap_or("");
    let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let waiter = params
        .get("state")
        .and_then(|state| lock(&handler.waiters).remove(state));
    let Some(waiter) = waiter else {
        return page(
            StatusCode::BAD_REQUEST,
            "This sign-in link is unknown or has expired",
            "Start the sign-in again from the application.",
        );
    };
    let mut callback = match Url::parse(&handler.redirect_uri) {
        Ok(url) => url,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    callback.set_query(Some(query));
    let _ = waiter.send(callback);
    match params.get("error") {
        Some(error) => page(
            StatusCode::OK,
            "Authorization was not granted",
            &format!("The authorization server said: {}", escape_html(error)),
        ),
        None => page(
            StatusCode::OK,
            "Authorization complete",
            "You can close this window and return to the application.",
        ),
    }
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    (
        status,
        Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body><h1>{title}</h1><p>{body}</p></body></html>"
        )),
    )
        .into_response()
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars().take(200) {
        match c {
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_and_ports() {
        let config = LoopbackRedirect::new().path("cb");
        assert_eq!(config.uri_for_port(4000), "http://127.0.0.1:4000/cb");
        assert_eq!(config.port_of("http://127.0.0.1:4000/cb"), Some(4000));
        assert_eq!(config.port_of("http://127.0.0.1:4000/other"), None);
        assert_eq!(config.port_of("http://localhost:4000/cb"), None);
        assert_eq!(
            LoopbackRedirect::new().ipv6().uri_for_port(1),
            "http://[::1]:1/callback"
        );
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape_html("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#39;");
    }
}
