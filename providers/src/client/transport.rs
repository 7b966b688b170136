//! An rmcp streamable-HTTP client transport that authenticates with any
//! [`AuthProvider`] (feature `rmcp`).
//!
//! [`AuthorizedHttpClient`] wraps an rmcp [`StreamableHttpClient`] (by
//! default `reqwest::Client`): every request carries the provider's current
//! bearer token; a `401` goes to
//! [`handle_unauthorized`](AuthProvider::handle_unauthorized) and the
//! request is retried once; a `403` goes to
//! [`handle_forbidden`](AuthProvider::handle_forbidden) and is retried at
//! most [`max_step_ups`](AuthorizedHttpClient::max_step_ups) times. The SSE
//! stream (GET) and session deletion (DELETE) are authenticated the same way.
//! A `5xx` is not a challenge, so it never starts a sign-in: it becomes
//! [`AuthorizedHttpError::ServerError`], which says so.
//!
//! ```no_run
//! use mcp_authkit_providers::client::StaticProvider;
//! use mcp_authkit_providers::client::transport::streamable_http_transport;
//! use rmcp::ServiceExt;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let transport = streamable_http_transport(
//!     "https://mcp.example.com/mcp",
//!     StaticProvider::new(std::env::var("MCP_TOKEN")?),
//! );
//! let client = ().serve(transport).await?;
//! # let _ = client;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use mcp_authkit_core::ExposeSecret;
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse,
};
use sse_stream::Sse;

use crate::client::challenge::AuthChallenge;
use crate::client::error::ClientAuthError;
use crate::client::provider::{AuthProvider, BearerToken};

/// How many `403 insufficient_scope` answers one request may step up for by
/// default.
pub const DEFAULT_MAX_STEP_UPS: usize = 2;

/// An rmcp HTTP client that sends an [`AuthProvider`]'s token and reacts to
/// `401` and `403`.
pub struct AuthorizedHttpClient<C = reqwest::Client> {
    inner: C,
    provider: Arc<dyn AuthProvider>,
    max_step_ups: usize,
}

impl<C: Clone> Clone for AuthorizedHttpClient<C> {
    fn clone(&self) -> Self {
        AuthorizedHttpClient {
            inner: self.inner.clone(),
            provider: Arc::clone(&self.provider),
            max_step_ups: self.max_step_ups,
        }
    }
}

impl<C> fmt::Debug for AuthorizedHttpClient<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizedHttpClient")
            .field("max_step_ups", &self.max_step_ups)
            .finish_non_exhaustive()
    }
}

impl<C> AuthorizedHttpClient<C> {
    /// Sends through `inner`, authenticated by `provider`.
    pub fn new(inner: C, provider: impl AuthProvider) -> Self {
        Self::with_shared_provider(inner, Arc::new(provider))
    }

    /// Like [`new`](Self::new), for a provider shared with other code.
    pub fn with_shared_provider(inner: C, provider: Arc<dyn AuthProvider>) -> Self {
        AuthorizedHttpClient {
            inner,
            provider,
            max_step_ups: DEFAULT_MAX_STEP_UPS,
        }
    }

    /// How many scope step-ups one request may trigger (default
    /// [`DEFAULT_MAX_STEP_UPS`]); then the `403` is returned.
    pub fn max_step_ups(mut self, max: usize) -> Self {
        self.max_step_ups = max;
        self
    }

    /// The provider.
    pub fn provider(&self) -> &Arc<dyn AuthProvider> {
        &self.provider
    }
}

/// A streamable-HTTP transport to `url`, authenticated by `provider`, over a
/// new `reqwest::Client` (build an [`AuthorizedHttpClient`] yourself to
/// share one).
pub fn streamable_http_transport(
    url: impl Into<Arc<str>>,
    provider: impl AuthProvider,
) -> StreamableHttpClientTransport<AuthorizedHttpClient<reqwest::Client>> {
    StreamableHttpClientTransport::with_client(
        AuthorizedHttpClient::new(reqwest::Client::new(), provider),
        StreamableHttpClientTransportConfig::with_uri(url),
    )
}

/// What an [`AuthorizedHttpClient`] request can fail with, besides rmcp's
/// own errors: the inner client's error, or the provider's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizedHttpError<E> {
    /// The inner HTTP client failed.
    #[error(transparent)]
    Http(E),
    /// The provider could not supply a token.
    #[error(transparent)]
    Auth(ClientAuthError),
    /// The MCP server answered a server error (5xx). That is not an
    /// authorization challenge, so no new sign-in was tried, even when the
    /// cause is the token: some servers (the MCP TypeScript SDK's example)
    /// answer an unknown or expired token this way instead of with `401`.
    #[error(
        "the MCP server answered HTTP {status}: a server error, not an authorization challenge \
         (401 or 403), so the client did not sign in again{}",
        if *.token_sent {
            "; some servers answer an unknown or expired token this way, so if it persists, sign \
             out (OAuthClientProvider::sign_out) to sign in anew"
        } else {
            ""
        }
    )]
    ServerError {
        /// The HTTP status (500 to 599).
        status: u16,
        /// The server's `Retry-After`, as sent, if any.
        retry_after: Option<String>,
        /// Whether the request carried a token.
        token_sent: bool,
    },
}

type Lifted<E> = StreamableHttpError<AuthorizedHttpError<E>>;

impl<C> AuthorizedHttpClient<C>
where
    C: StreamableHttpClient + Sync,
{
    /// Runs `send` with the current token, then reacts to `401`/`403`.
    async fn authorized<T, F, Fut>(&self, send: F) -> Result<T, Lifted<C::Error>>
    where
        F: Fn(Option<String>) -> Fut,
        Fut: Future<Output = Result<T, StreamableHttpError<C::Error>>>,
    {
        let mut token = self.provider.token().await.map_err(auth_failed)?;
        let mut retried_unauthorized = false;
        let mut step_ups = 0;
        loop {
            let header = token
                .as_ref()
                .map(|t: &BearerToken| t.secret().expose_secret().to_owned());
            let token_sent = header.is_some();
            match send(header).await {
                Err(StreamableHttpError::HttpStatus(error)) if error.status >= 500 => {
                    return Err(StreamableHttpError::Client(
                        AuthorizedHttpError::ServerError {
                            status: error.status,
                            retry_after: error.retry_after,
                            token_sent,
                        },
                    ));
                }
                Err(StreamableHttpError::AuthRequired(refusal)) if !retried_unauthorized => {
                    retried_unauthorized = true;
                    let challenge = AuthChallenge::new(Some(&refusal.www_authenticate_header))
                        .with_rejected_token(token.take());
                    token = Some(
                        self.provider
                            .handle_unauthorized(&challenge)
                            .await
                            .map_err(auth_failed)?,
                    );
                }
                Err(StreamableHttpError::InsufficientScope(refusal))
                    if step_ups < self.max_step_ups =>
                {
                    step_ups += 1;
                    let challenge = AuthChallenge::new(Some(&refusal.www_authenticate_header))
                        .with_rejected_token(token.take());
                    token = Some(
                        self.provider
                            .handle_forbidden(&challenge)
                            .await
                            .map_err(auth_failed)?,
                    );
                }
                result => return result.map_err(lift),
            }
        }
    }
}

fn auth_failed<E>(error: ClientAuthError) -> Lifted<E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    StreamableHttpError::Client(AuthorizedHttpError::Auth(error))
}

/// rmcp's error over the inner client's error type, re-typed over ours.
fn lift<E>(error: StreamableHttpError<E>) -> Lifted<E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    use StreamableHttpError as S;
    match error {
        S::Client(e) => S::Client(AuthorizedHttpError::Http(e)),
        S::Sse(e) => S::Sse(e),
        S::Io(e) => S::Io(e),
        S::HttpStatus(e) => S::HttpStatus(e),
        S::UnexpectedEndOfStream => S::UnexpectedEndOfStream,
        S::UnexpectedServerResponse(m) => S::UnexpectedServerResponse(m),
        S::ResponseBodyTooLarge { max_size } => S::ResponseBodyTooLarge { max_size },
        S::UnexpectedContentType(c) => S::UnexpectedContentType(c),
        S::ServerDoesNotSupportSse => S::ServerDoesNotSupportSse,
        S::ServerDoesNotSupportDeleteSession => S::ServerDoesNotSupportDeleteSession,
        S::TokioJoinError(e) => S::TokioJoinError(e),
        S::Deserialize(e) => S::Deserialize(e),
        S::TransportChannelClosed => S::TransportChannelClosed,
        S::MissingSessionIdInResponse => S::MissingSessionIdInResponse,
        S::Auth(e) => S::Auth(e),
        S::AuthRequired(e) => S::AuthRequired(e),
        S::InsufficientScope(e) => S::InsufficientScope(e),
        S::ReservedHeaderConflict(h) => S::ReservedHeaderConflict(h),
        S::SessionExpired => S::SessionExpired,
        S::SessionRecoveryTimeout => S::SessionRecoveryTimeout,
        S::ReinitializationFailed(e) => S::ReinitializationFailed(e),
        S::ControlRequestTimeout => S::ControlRequestTimeout,
        // A variant added after rmcp 3.9: keep its message.
        other => S::UnexpectedServerResponse(other.to_string().into()),
    }
}

type SseStream = BoxStream<'static, Result<Sse, SseError>>;

impl<C> StreamableHttpClient for AuthorizedHttpClient<C>
where
    C: StreamableHttpClient + Sync,
{
    type Error = AuthorizedHttpError<C::Error>;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, Lifted<C::Error>> {
        self.authorized(|token| {
            self.inner.post_message(
                uri.clone(),
                message.clone(),
                session_id.clone(),
                token,
                custom_headers.clone(),
            )
        })
        .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, Lifted<C::Error>> {
        self.authorized(|token| {
            self.inner.post_message_with_max_sse_event_size(
                uri.clone(),
                message.clone(),
                session_id.clone(),
                token,
                custom_headers.clone(),
                max_sse_event_size,
            )
        })
        .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), Lifted<C::Error>> {
        self.authorized(|token| {
            self.inner.delete_session(
                uri.clone(),
                session_id.clone(),
                token,
                custom_headers.clone(),
            )
        })
        .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<SseStream, Lifted<C::Error>> {
        self.authorized(|token| {
            self.inner.get_stream(
                uri.clone(),
                session_id.clone(),
                last_event_id.clone(),
                token,
                custom_headers.clone(),
            )
        })
        .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<SseStream, Lifted<C::Error>> {
        self.authorized(|token| {
            self.inner.get_stream_with_max_sse_event_size(
                uri.clone(),
                session_id.clone(),
                last_event_id.clone(),
                token,
                custom_headers.clone(),
                max_sse_event_size,
            )
        })
        .await
    }
}
