//! Endpoints, and the failures a test can inject into their next requests.

use std::time::Duration;

/// One endpoint of the server, or one grant type at the token endpoint.
///
/// Counters ([`hits`](crate::AuthServerHandle::hits)), the request log and
/// failure injection all name requests this way. A token request counts as
/// [`Token`](Endpoint::Token) and as its grant's variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Endpoint {
    /// `GET /authorize`.
    Authorize,
    /// `POST /consent` (the consent page's form).
    Consent,
    /// `POST /token`, any grant type.
    Token,
    /// `POST /token` with `grant_type=authorization_code`.
    AuthorizationCodeGrant,
    /// `POST /token` with `grant_type=refresh_token`.
    RefreshTokenGrant,
    /// `POST /token` with `grant_type=client_credentials`.
    ClientCredentialsGrant,
    /// `POST /token` with the RFC 7523 `jwt-bearer` grant (an ID-JAG).
    JwtBearerGrant,
    /// `POST /token` with the RFC 8693 token exchange grant.
    TokenExchangeGrant,
    /// `POST /revoke` (RFC 7009).
    Revocation,
    /// `POST /register` (RFC 7591).
    Registration,
    /// `POST /introspect` (RFC 7662).
    Introspection,
    /// `GET /userinfo`: a bearer-protected "third-party API".
    Userinfo,
    /// `GET /jwks` (an empty key set, for OpenID Connect clients).
    Jwks,
    /// RFC 8414 metadata, `/.well-known/oauth-authorization-server...`.
    AuthorizationServerMetadata,
    /// OpenID Connect discovery, either URL.
    OpenIdConfiguration,
    /// A document served with
    /// [`host_json`](crate::AuthServerHandle::host_json) on the other origin.
    HostedDocument,
}

/// What the next requests to an endpoint get instead of a normal answer.
///
/// A failure replaces processing: a token request that gets one does not
/// use up its code or refresh token (except [`Delay`](Failure::Delay),
/// after which the request is processed normally).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// This HTTP status with a plain-text body (for example 500 or 503).
    Status(u16),
    /// No answer until the server shuts down: tests client timeouts.
    Hang,
    /// The normal answer, after this long.
    Delay(Duration),
    /// This OAuth error code: at `/authorize` a redirect with `error=` to a
    /// valid redirect URI (a bad client or redirect URI still gets the error
    /// page); elsewhere a JSON error body, `401` for `invalid_client` and
    /// `400` otherwise.
    OAuthError(String),
    /// `200` with `Content-Type: application/json` and a body that is not JSON.
    MalformedJson,
}

impl Failure {
    /// `invalid_grant`: at the token endpoint, a code or refresh token that
    /// was revoked.
    pub fn invalid_grant() -> Self {
        Failure::OAuthError("invalid_grant".to_owned())
    }

    /// `access_denied`: at `/authorize`, the user refused.
    pub fn access_denied() -> Self {
        Failure::OAuthError("access_denied".to_owned())
    }

    /// `500 Internal Server Error`.
    pub fn server_error() -> Self {
        Failure::Status(500)
    }
}
