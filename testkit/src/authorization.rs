//! The client's side of an authorization request, for tests that play the
//! client by hand: building the `/authorize` URL and reading the response.

use std::fmt;

use url::Url;

use crate::client::RegisteredClient;
use crate::pkce::Pkce;
use crate::secret::REDACTED;

/// An authorization request (`response_type=code`), turned into a URL with
/// [`AuthServerHandle::authorization_url`](crate::AuthServerHandle::authorization_url).
///
/// Nothing is added implicitly besides `response_type=code`: a test that
/// wants PKCE, state or a resource says so, and a test of a missing
/// parameter leaves it out.
#[derive(Clone)]
pub struct AuthorizationRequest {
    client_id: String,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<(String, Option<String>)>,
    resources: Vec<String>,
    extra: Vec<(String, String)>,
}

impl AuthorizationRequest {
    /// A request for `client` with its first redirect URI.
    pub fn new(client: &RegisteredClient) -> Self {
        Self::for_client_id(&client.client_id).redirect_uri(client.redirect_uri())
    }

    /// A request for any client id (a URL one, an unknown one ...), without
    /// a redirect URI.
    pub fn for_client_id(client_id: impl Into<String>) -> Self {
        AuthorizationRequest {
            client_id: client_id.into(),
            redirect_uri: None,
            scope: None,
            state: None,
            code_challenge: None,
            resources: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Sets `redirect_uri`.
    pub fn redirect_uri(mut self, redirect_uri: impl Into<String>) -> Self {
        self.redirect_uri = Some(redirect_uri.into());
        self
    }

    /// Leaves `redirect_uri` out.
    pub fn without_redirect_uri(mut self) -> Self {
        self.redirect_uri = None;
        self
    }

    /// Sets `scope` (space-separated).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Sets `state`.
    pub fn state(mut self, state: impl Into<String>) -> Self {
        self.state = Some(state.into());
        self
    }

    /// Sets `code_challenge` and `code_challenge_method=S256` from `pkce`.
    pub fn pkce(self, pkce: &Pkce) -> Self {
        self.code_challenge(pkce.challenge(), Some("S256"))
    }

    /// Sets `code_challenge` and, when given, `code_challenge_method`.
    pub fn code_challenge(mut self, challenge: impl Into<String>, method: Option<&str>) -> Self {
        self.code_challenge = Some((challenge.into(), method.map(str::to_owned)));
        self
    }

    /// Adds a `resource` (RFC 8707).
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// Adds any other parameter (for example
    /// [`USER_QUERY_PARAM`](crate::USER_QUERY_PARAM)).
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.push((name.into(), value.into()));
        self
    }

    /// The URL at `authorization_endpoint`.
    pub fn to_url(&self, authorization_endpoint: &Url) -> Url {
        let mut url = authorization_endpoint.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("response_type", "code");
            query.append_pair("client_id", &self.client_id);
            if let Some(redirect_uri) = &self.redirect_uri {
                query.append_pair("redirect_uri", redirect_uri);
            }
            if let Some(scope) = &self.scope {
                query.append_pair("scope", scope);
            }
            if let Some(state) = &self.state {
                query.append_pair("state", state);
            }
            if let Some((challenge, method)) = &self.code_challenge {
                query.append_pair("code_challenge", challenge);
                if let Some(method) = method {
                    query.append_pair("code_challenge_method", method);
                }
            }
            for resource in &self.resources {
                query.append_pair("resource", resource);
            }
            for (name, value) in &self.extra {
                query.append_pair(name, value);
            }
        }
        url
    }
}

impl fmt::Debug for AuthorizationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationRequest")
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("scope", &self.scope)
            .field("state", &self.state)
            .field("code_challenge", &self.code_challenge)
            .field("resources", &self.resources)
            .field("extra", &self.extra)
            .finish()
    }
}

/// The parameters of an authorization response (the redirect to the
/// client): a code, or an error.
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AuthorizationResponse {
    /// The authorization code. Redacted in Debug output.
    pub code: Option<String>,
    /// The client's `state`, echoed.
    pub state: Option<String>,
    /// The issuer (RFC 9207).
    pub iss: Option<String>,
    /// The OAuth error code (`access_denied`, `invalid_request`, ...).
    pub error: Option<String>,
    /// The error's description.
    pub error_description: Option<String>,
}

impl AuthorizationResponse {
    /// Reads the response parameters from the query of `url` (the
    /// `Location` of the redirect, or the URL the browser stopped at).
    pub fn from_url(url: &Url) -> Self {
        let mut response = AuthorizationResponse::default();
        for (name, value) in url.query_pairs() {
            let slot = match name.as_ref() {
                "code" => &mut response.code,
                "state" => &mut response.state,
                "iss" => &mut response.iss,
                "error" => &mut response.error,
                "error_description" => &mut response.error_description,
                _ => continue,
            };
            slot.get_or_insert_with(|| value.into_owned());
        }
        response
    }
}

impl fmt::Debug for AuthorizationResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationResponse")
            .field("code", &self.code.as_ref().map(|_| REDACTED))
            .field("state", &self.state)
            .field("iss", &self.iss)
            .field("error", &self.error)
            .field("error_description", &self.error_description)
            .finish()
    }
}
