//! The resource-server side: an OAuth-protected resource (such as an MCP
//! server under test) that validates bearer tokens issued by a
//! [`TestAuthServer`](crate::TestAuthServer) and publishes Protected
//! Resource Metadata (RFC 9728).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use url::Url;

use crate::error::Error;
use crate::http::{absolute_uri, json, malformed_json, plain_status};
use crate::server::AuthServerHandle;
use crate::tokens::TokenInfo;

/// A defect in the Protected Resource Metadata document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResourceMetadataFault {
    /// `resource` is not the protected resource's URL (RFC 9728 section
    /// 3.3: the client must refuse it).
    WrongResource,
    /// The body is not JSON.
    MalformedJson,
    /// `authorization_servers` is missing.
    NoAuthorizationServers,
}

/// How a protected resource answers a request whose bearer token it does
/// not know (unknown, expired or revoked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum InvalidTokenAnswer {
    /// `401` with a `WWW-Authenticate: Bearer error="invalid_token"`
    /// challenge, as RFC 6750 and the MCP specification say.
    #[default]
    Challenge,
    /// `500` with `{"error": "server_error", "error_description": "Internal
    /// Server Error"}` and no challenge: what the MCP TypeScript SDK's
    /// example server answers when its token verifier throws. A client
    /// cannot tell from it that a new sign-in would help.
    InternalError,
}

/// What the protected resource does; change it while it runs with
/// [`ProtectedResource::update_settings`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ResourceSettings {
    /// Scopes every request needs; a token without them gets `403
    /// insufficient_scope` naming them. Default none.
    pub required_scopes: Vec<String>,
    /// `scopes_supported` in the metadata. Default `None` (left out).
    pub scopes_supported: Option<Vec<String>>,
    /// `authorization_servers` in the metadata. Default the test server's
    /// issuer.
    pub authorization_servers: Vec<String>,
    /// Put `resource_metadata="..."` in `WWW-Authenticate` challenges.
    /// Default `true`; turn it off to make clients fall back to the
    /// well-known URLs.
    pub resource_metadata_in_challenge: bool,
    /// Put `scope="..."` (the required scopes) in `401` challenges.
    /// Default `true`.
    pub scope_in_challenge: bool,
    /// Serve the metadata at the path-aware well-known URL
    /// (`/.well-known/oauth-protected-resource/mcp`). Default `true`.
    pub serve_path_metadata: bool,
    /// Serve the metadata at the root well-known URL
    /// (`/.well-known/oauth-protected-resource`). Default `true`.
    pub serve_root_metadata: bool,
    /// A defect in the metadata document. Default none.
    pub metadata_fault: Option<ResourceMetadataFault>,
    /// Refuse tokens whose audience (`resource`) does not include this
    /// resource, as the MCP authorization spec requires. Default `true`.
    pub require_audience: bool,
    /// How a token the authorization server does not know is answered.
    /// Default [`InvalidTokenAnswer::Challenge`].
    pub invalid_token_answer: InvalidTokenAnswer,
}

/// What happened at the protected resource, for
/// [`ProtectedResource::hits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResourceEvent {
    /// A metadata document was served.
    Metadata,
    /// A request was let through with a valid token.
    Authorized,
    /// A request was refused with `401` (or, for an unknown token, the
    /// configured [`InvalidTokenAnswer::InternalError`]).
    Unauthorized,
    /// A request was refused with `403 insufficient_scope`.
    Forbidden,
}

struct Inner {
    auth: AuthServerHandle,
    resource: String,
    metadata_url: Url,
    root_metadata_url: Url,
    settings: Mutex<ResourceSettings>,
    hits: Mutex<HashMap<ResourceEvent, u64>>,
}

/// An OAuth-protected resource for tests, backed by a test authorization
/// server's [`introspect`](AuthServerHandle::introspect).
///
/// Bind the resource's listener first (its URL is part of the metadata),
/// then wrap the application router:
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use axum::{Extension, Router, routing::post};
/// use mcp_authkit_testkit::{ProtectedResource, TestAuthServer, TokenInfo};
///
/// let auth = TestAuthServer::start().await?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let url = format!("http://{}/mcp", listener.local_addr()?);
/// let resource = ProtectedResource::new(&auth, &url)?;
///
/// // The validated token reaches handlers as a request extension.
/// let app = Router::new().route(
///     "/mcp",
///     post(|Extension(token): Extension<TokenInfo>| async move { token.subject }),
/// );
/// tokio::spawn(async move { axum::serve(listener, resource.protect(app)).await });
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ProtectedResource {
    inner: Arc<Inner>,
}

impl ProtectedResource {
    /// A resource at `resource_url` (an absolute URL, e.g.
    /// `http://127.0.0.1:PORT/mcp`) that trusts `auth`.
    pub fn new(auth: &AuthServerHandle, resource_url: &str) -> Result<Self, Error> {
        let url = absolute_uri(resource_url).map_err(|reason| Error::InvalidInput {
            what: "resource url",
            reason,
        })?;
        if url.query().is_some() {
            return Err(Error::InvalidInput {
                what: "resource url",
                reason: "a protected resource URL has no query (RFC 9728 section 3.1)".to_owned(),
            });
        }
        let path = url.path().trim_end_matches('/');
        // The path becomes an axum route: keep to characters with no
        // meaning in route syntax.
        if !path.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~' | b'%')
        }) {
            return Err(Error::InvalidInput {
                what: "resource url",
                reason: format!(
                    "the path {path:?} may only hold letters, digits, '/', '-', '.', '_', '~' \
                     and percent-escapes"
                ),
            });
        }
        let mut metadata_url = url.clone();
        metadata_url.set_path(&format!("/.well-known/oauth-protected-resource{path}"));
        let mut root_metadata_url = url.clone();
        root_metadata_url.set_path("/.well-known/oauth-protected-resource");
        let settings = ResourceSettings {
            required_scopes: Vec::new(),
            scopes_supported: None,
            authorization_servers: vec![auth.issuer().to_owned()],
            resource_metadata_in_challenge: true,
            scope_in_challenge: true,
            serve_path_metadata: true,
            serve_root_metadata: true,
            metadata_fault: None,
            require_audience: true,
            invalid_token_answer: InvalidTokenAnswer::Challenge,
        };
        Ok(ProtectedResource {
            inner: Arc::new(Inner {
                auth: auth.clone(),
                resource: resource_url.to_owned(),
                metadata_url,
                root_metadata_url,
                settings: Mutex::new(settings),
                hits: Mutex::default(),
            }),
        })
    }

    /// The resource URL, exactly as given (the `resource` of its metadata
    /// and the audience tokens must carry).
    pub fn resource(&self) -> &str {
        &self.inner.resource
    }

    /// The path-aware metadata URL (RFC 9728 section 3.1), the one
    /// challenges name.
    pub fn metadata_url(&self) -> &Url {
        &self.inner.metadata_url
    }

    /// The metadata URL at the root of the origin.
    pub fn root_metadata_url(&self) -> &Url {
        &self.inner.root_metadata_url
    }

    /// The current settings.
    pub fn settings(&self) -> ResourceSettings {
        self.lock_settings().clone()
    }

    /// Changes settings; the next request sees them.
    pub fn update_settings(&self, edit: impl FnOnce(&mut ResourceSettings)) {
        edit(&mut self.lock_settings());
    }

    /// How often `event` happened.
    pub fn hits(&self, event: ResourceEvent) -> u64 {
        self.lock_hits().get(&event).copied().unwrap_or(0)
    }

    /// The Protected Resource Metadata document, with the configured defect.
    pub fn metadata_document(&self) -> Value {
        let settings = self.settings();
        let resource = match settings.metadata_fault {
            Some(ResourceMetadataFault::WrongResource) => {
                format!("{}-elsewhere", self.inner.resource.trim_end_matches('/'))
            }
            _ => self.inner.resource.clone(),
        };
        let mut doc = json!({
            "resource": resource,
            "bearer_methods_supported": ["header"],
        });
        if settings.metadata_fault != Some(ResourceMetadataFault::NoAuthorizationServers) {
            doc["authorization_servers"] = json!(settings.authorization_servers);
        }
        if let Some(scopes) = &settings.scopes_supported {
            doc["scopes_supported"] = json!(scopes);
        }
        doc
    }

    /// Validates the bearer token of a request: the token info, or the
    /// `401`/`403` answer with its `WWW-Authenticate` challenge.
    pub fn check(&self, headers: &HeaderMap) -> Result<TokenInfo, Rejection> {
        let outcome = self.evaluate(headers);
        let event = match &outcome {
            Ok(_) => ResourceEvent::Authorized,
            Err(rejection) if rejection.status == StatusCode::FORBIDDEN => ResourceEvent::Forbidden,
            Err(_) => ResourceEvent::Unauthorized,
        };
        *self.lock_hits().entry(event).or_default() += 1;
        outcome
    }

    fn evaluate(&self, headers: &HeaderMap) -> Result<TokenInfo, Rejection> {
        let settings = self.settings();
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let Some(token) = token else {
            let scope = (settings.scope_in_challenge && !settings.required_scopes.is_empty())
                .then(|| settings.required_scopes.join(" "));
            return Err(self.rejection(&settings, StatusCode::UNAUTHORIZED, None, scope));
        };
        let Some(info) = self.inner.auth.introspect(token) else {
            if settings.invalid_token_answer == InvalidTokenAnswer::InternalError {
                return Err(Rejection {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    www_authenticate: String::new(),
                });
            }
            return Err(self.rejection(
                &settings,
                StatusCode::UNAUTHORIZED,
                Some(("invalid_token", "the token is unknown, expired or revoked")),
                None,
            ));
        };
        if settings.require_audience && !info.is_for(&self.inner.resource) {
            return Err(self.rejection(
                &settings,
                StatusCode::UNAUTHORIZED,
                Some((
                    "invalid_token",
                    "the token was not issued for this resource",
                )),
                None,
            ));
        }
        if settings.required_scopes.iter().any(|s| !info.has_scope(s)) {
            return Err(self.rejection(
                &settings,
                StatusCode::FORBIDDEN,
                Some(("insufficient_scope", "the token lacks a required scope")),
                Some(settings.required_scopes.join(" ")),
            ));
        }
        Ok(info)
    }

    fn rejection(
        &self,
        settings: &ResourceSettings,
        status: StatusCode,
        error: Option<(&str, &str)>,
        scope: Option<String>,
    ) -> Rejection {
        let mut params = Vec::new();
        if let Some((code, description)) = error {
            params.push(format!("error=\"{code}\""));
            params.push(format!("error_description=\"{description}\""));
        }
        if let Some(scope) = scope {
            params.push(format!("scope=\"{scope}\""));
        }
        if settings.resource_metadata_in_challenge {
            params.push(format!("resource_metadata=\"{}\"", self.inner.metadata_url));
        }
        let challenge = if params.is_empty() {
            "Bearer".to_owned()
        } else {
            format!("Bearer {}", params.join(", "))
        };
        Rejection {
            status,
            www_authenticate: challenge,
        }
    }

    /// A router that serves the metadata at the well-known URLs.
    pub fn metadata_router(&self) -> Router {
        let path = self.inner.metadata_url.path().to_owned();
        let root = self.inner.root_metadata_url.path().to_owned();
        let resource = self.clone();
        let mut router = Router::new().route(
            &root,
            get(move || async move { resource.serve_metadata(true) }),
        );
        if path != root {
            let resource = self.clone();
            router = router.route(
                &path,
                get(move || async move { resource.serve_metadata(false) }),
            );
        }
        router
    }

    fn serve_metadata(&self, is_root: bool) -> Response {
        let settings = self.settings();
        let served = if is_root {
            settings.serve_root_metadata
                || (self.inner.metadata_url == self.inner.root_metadata_url
                    && settings.serve_path_metadata)
        } else {
            settings.serve_path_metadata
        };
        if !served {
            return plain_status(
                StatusCode::NOT_FOUND,
                "this metadata document is not served",
            );
        }
        *self.lock_hits().entry(ResourceEvent::Metadata).or_default() += 1;
        if settings.metadata_fault == Some(ResourceMetadataFault::MalformedJson) {
            return malformed_json();
        }
        json(StatusCode::OK, &self.metadata_document())
    }

    /// `app` with every route behind the bearer check ([`require_bearer`]),
    /// plus the metadata routes (not behind it).
    pub fn protect(&self, app: Router) -> Router {
        app.layer(from_fn_with_state(self.clone(), require_bearer))
            .merge(self.metadata_router())
    }

    fn lock_settings(&self) -> MutexGuard<'_, ResourceSettings> {
        self.inner
            .settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn lock_hits(&self) -> MutexGuard<'_, HashMap<ResourceEvent, u64>> {
        self.inner.hits.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for ProtectedResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtectedResource")
            .field("resource", &self.inner.resource)
            .field("settings", &self.settings())
            .finish_non_exhaustive()
    }
}

/// Axum middleware for
/// `axum::middleware::from_fn_with_state(resource, require_bearer)`: lets
/// requests with a valid token through, with the [`TokenInfo`] in the
/// request's extensions, and answers the others with the challenge.
pub async fn require_bearer(
    State(resource): State<ProtectedResource>,
    mut request: Request,
    next: Next,
) -> Response {
    match resource.check(request.headers()) {
        Ok(info) => {
            request.extensions_mut().insert(info);
            next.run(request).await
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// A refused request: `401` or `403` with a `WWW-Authenticate: Bearer`
/// challenge (RFC 6750 section 3, RFC 9728 section 5.1), or the `500` of
/// [`InvalidTokenAnswer::InternalError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejection {
    /// `401 Unauthorized`, `403 Forbidden` or `500 Internal Server Error`.
    pub status: StatusCode,
    /// The `WWW-Authenticate` value (empty for a `500`, which has none).
    pub www_authenticate: String,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            return json(
                self.status,
                &json!({"error": "server_error", "error_description": "Internal Server Error"}),
            );
        }
        let mut response = plain_status(self.status, "a valid bearer token is required");
        if let Ok(value) = HeaderValue::from_str(&self.www_authenticate) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}
