//! One HTTP client for every OAuth request: a `reqwest` client wrapped so the
//! `oauth2` crate (built for an older reqwest) can send requests through it.
//!
//! Token and registration endpoints must not follow redirects (a redirect
//! could carry credentials to another origin), so [`OAuthHttpClient::new`]
//! builds a client with redirects disabled and timeouts set; an application
//! that brings its own client through [`OAuthHttpClient::from_reqwest`] is
//! responsible for the same.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use mcp_authkit_core::{OAuthError, OAuthErrorKind};

/// Why an HTTP exchange failed below the OAuth layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The request could not be built from the `oauth2` crate's request.
    #[error("the OAuth request could not be built: {0}")]
    Request(#[source] reqwest::Error),
    /// Connecting, sending or reading failed (includes timeouts).
    #[error("the OAuth request failed in transit: {0}")]
    Transport(#[source] reqwest::Error),
    /// The response could not be handed back to the `oauth2` crate.
    #[error("the OAuth response could not be read: {0}")]
    Response(#[source] http::Error),
}

impl HttpError {
    /// As a classified OAuth error: transport failures and timeouts are
    /// transient, except a refused server certificate, which stays refused
    /// until someone changes the trust settings; anything else is a protocol
    /// problem.
    pub fn into_oauth_error(self, what: &str) -> OAuthError {
        match &self {
            HttpError::Transport(error) if mcp_authkit_core::is_certificate_refusal(error) => {
                OAuthError::new(
                    OAuthErrorKind::CertificateRejected,
                    format!(
                        "{what}: the server's TLS certificate was rejected; \
                         trust its certificate authority in the HTTP client"
                    ),
                )
                .with_source(self)
            }
            HttpError::Transport(_) => {
                OAuthError::transport(format!("{what}: request failed"), self)
            }
            _ => OAuthError::new(OAuthErrorKind::Protocol, format!("{what}: {self}"))
                .with_source(self),
        }
    }
}

/// A `reqwest` client usable as the `oauth2` crate's async HTTP client.
#[derive(Clone, Debug)]
pub struct OAuthHttpClient {
    client: reqwest::Client,
}

impl OAuthHttpClient {
    /// A client that never follows redirects, with a 10 s connect timeout
    /// and a 30 s overall timeout.
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(OAuthHttpClient { client })
    }

    /// Uses an application's client (custom TLS roots, proxy, timeouts).
    /// It should not follow redirects.
    pub fn from_reqwest(client: reqwest::Client) -> Self {
        OAuthHttpClient { client }
    }

    /// The underlying client.
    pub fn reqwest(&self) -> &reqwest::Client {
        &self.client
    }

    async fn send(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        let request = reqwest::Request::try_from(request).map_err(HttpError::Request)?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(HttpError::Transport)?;
        let mut builder = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let body = response.bytes().await.map_err(HttpError::Transport)?;
        builder.body(body.to_vec()).map_err(HttpError::Response)
    }
}

impl<'c> oauth2::AsyncHttpClient<'c> for OAuthHttpClient {
    type Error = HttpError;
    type Future =
        Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}
