//! One HTTP client for every OAuth request: a `reqwest` client wrapped so the
//! `oauth2` crate (built for an older reqwest) can send requests through it.
//!
//! Token and registration endpoints must not follow redirects (a redirect
//! could carry credentials to another origin), so [`OAuthHttpClient::new`]
//! builds a client with redirects disabled and timeouts set.
//!
//! Token requests of the server side ([`StandardOAuthClient`](crate::standard::StandardOAuthClient))
//! go through [`send_token_request`], which enforces the rules whatever
//! client the application passed to [`OAuthHttpClient::from_reqwest`]: the
//! request's form is never sent to a redirect target, no redirected answer
//! is accepted, and at most [`TOKEN_RESPONSE_LIMIT`] bytes are read. It is
//! written so the client side's token requests can use it as well.

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
    /// The endpoint answered with a redirect (or the application's HTTP
    /// client followed one): token requests never follow redirects, which
    /// could carry credentials elsewhere or let another server answer.
    #[error(
        "the token endpoint redirected the request (HTTP {status}); token requests never follow \
         redirects: configure the endpoint's final URL"
    )]
    Redirected {
        /// The status of the answer that was refused.
        status: u16,
    },
    /// The answer's body is larger than a token response can be.
    #[error("the token endpoint's answer is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
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
    ///
    /// It should not follow redirects. Token requests of the server side
    /// are safe either way ([`send_token_request`]): their form is never
    /// re-sent to a redirect target and a redirected answer is refused.
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

/// The largest token-endpoint answer read. Token responses are small; a
/// bigger one is a broken or hostile server (the client side caps its
/// metadata documents at the same size).
pub const TOKEN_RESPONSE_LIMIT: usize = 1024 * 1024;

/// Sends one token request (code exchange, refresh) through `client`, with
/// the rules every token request follows whatever client it is:
///
/// - the form goes out as a one-shot body: a client that follows redirects
///   cannot replay it (code, PKCE verifier, refresh token, client secret)
///   to a `307`/`308` target;
/// - an answer that is a redirect, or that comes from another URL than the
///   one asked (a client that followed a `301`/`302`/`303` with a bodyless
///   `GET`, which reqwest sends without credentials to another origin), is
///   refused with [`HttpError::Redirected`];
/// - at most [`TOKEN_RESPONSE_LIMIT`] bytes of the answer are read.
pub async fn send_token_request(
    client: &reqwest::Client,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let request = http::Request::from_parts(parts, OneShotBody::new(body));
    let request =
        reqwest::Request::try_from(request.map(reqwest::Body::wrap)).map_err(HttpError::Request)?;
    let asked = request.url().clone();
    let mut response = client
        .execute(request)
        .await
        .map_err(HttpError::Transport)?;
    let status = response.status();
    if status.is_redirection() || *response.url() != asked {
        return Err(HttpError::Redirected {
            status: status.as_u16(),
        });
    }
    if response
        .content_length()
        .is_some_and(|length| length > TOKEN_RESPONSE_LIMIT as u64)
    {
        return Err(HttpError::BodyTooLarge {
            limit: TOKEN_RESPONSE_LIMIT,
        });
    }
    let mut builder = http::Response::builder().status(status);
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(HttpError::Transport)? {
        if body.len() + chunk.len() > TOKEN_RESPONSE_LIMIT {
            return Err(HttpError::BodyTooLarge {
                limit: TOKEN_RESPONSE_LIMIT,
            });
        }
        body.extend_from_slice(&chunk);
    }
    builder.body(body).map_err(HttpError::Response)
}

/// A request body that can be read once: reqwest cannot clone it, so it
/// never re-sends it after a redirect. Its exact size is known, so it still
/// goes out with a `Content-Length`.
struct OneShotBody(Option<bytes::Bytes>);

impl OneShotBody {
    fn new(body: Vec<u8>) -> Self {
        OneShotBody(Some(bytes::Bytes::from(body)))
    }
}

impl http_body::Body for OneShotBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|data| Ok(http_body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.as_ref().map_or(0, |data| data.len() as u64))
    }
}
