//! What the server does, all changeable while it runs.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::client::ClientAuthMethod;

/// How `/authorize` gets the user's consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ConsentMode {
    /// Consent is given at once: `302` to the redirect URI with a code.
    #[default]
    Auto,
    /// `/authorize` answers `200` with an HTML consent page whose form posts
    /// to [`consent_endpoint`](crate::AuthServerHandle::consent_endpoint);
    /// a test can also decide with
    /// [`approve_consent`](crate::AuthServerHandle::approve_consent) /
    /// [`deny_consent`](crate::AuthServerHandle::deny_consent).
    Page,
    /// The user always refuses: `302` with `error=access_denied`.
    Deny,
}

/// What the `iss` parameter of authorization responses (RFC 9207) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IssParameter {
    /// The issuer; metadata says `authorization_response_iss_parameter_supported: true`.
    #[default]
    Correct,
    /// No `iss`; metadata says `authorization_response_iss_parameter_supported: false`.
    Omitted,
    /// A different issuer ([`WRONG_ISSUER`](crate::WRONG_ISSUER)), as a
    /// mix-up attack would deliver; metadata still says supported.
    Wrong,
}

/// Which discovery documents the server answers (the others are `404`).
///
/// For an issuer with a path (`/tenant1`), OpenID Connect discovery exists at
/// two URLs: path insertion (`/.well-known/openid-configuration/tenant1`)
/// and path appending (`/tenant1/.well-known/openid-configuration`). For an
/// issuer without a path both are `/.well-known/openid-configuration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DiscoveryDocuments {
    /// RFC 8414 metadata and both OpenID Connect URLs.
    #[default]
    All,
    /// Only RFC 8414 metadata (`/.well-known/oauth-authorization-server...`).
    OAuthOnly,
    /// Only OpenID Connect discovery, at both URLs.
    OpenIdOnly,
    /// Only OpenID Connect discovery by path appending (the last URL an MCP
    /// client tries).
    OpenIdPathAppendedOnly,
    /// No discovery document at all.
    None,
}

impl DiscoveryDocuments {
    pub(crate) fn serves_oauth(self) -> bool {
        matches!(
            self,
            DiscoveryDocuments::All | DiscoveryDocuments::OAuthOnly
        )
    }

    pub(crate) fn serves_openid_inserted(self, issuer_has_path: bool) -> bool {
        match self {
            DiscoveryDocuments::All | DiscoveryDocuments::OpenIdOnly => true,
            DiscoveryDocuments::OpenIdPathAppendedOnly => !issuer_has_path,
            DiscoveryDocuments::OAuthOnly | DiscoveryDocuments::None => false,
        }
    }

    pub(crate) fn serves_openid_appended(self) -> bool {
        matches!(
            self,
            DiscoveryDocuments::All
                | DiscoveryDocuments::OpenIdOnly
                | DiscoveryDocuments::OpenIdPathAppendedOnly
        )
    }
}

/// A defect in every served discovery document, to test that clients
/// refuse bad metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetadataFault {
    /// `code_challenge_methods_supported` is left out (an MCP client must
    /// then refuse to proceed).
    NoCodeChallengeMethods,
    /// `code_challenge_methods_supported` is `["plain"]`: no S256.
    PlainPkceOnly,
    /// `issuer` is [`WRONG_ISSUER`](crate::WRONG_ISSUER), not the issuer
    /// the document was fetched for (RFC 8414 section 3.3).
    WrongIssuer,
    /// The body is not JSON (with `Content-Type: application/json`).
    MalformedJson,
    /// `302` to the same path on another origin
    /// ([`other_origin`](crate::AuthServerHandle::other_origin)), which
    /// serves the document: a client that follows it gets valid metadata it
    /// must not trust.
    CrossOriginRedirect,
}

/// The server's behaviour. Set it before start with
/// [`TestAuthServerBuilder::settings`](crate::TestAuthServerBuilder::settings)
/// or while running with
/// [`update_settings`](crate::AuthServerHandle::update_settings); every
/// field takes effect on the next request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    /// How consent is given. Default [`ConsentMode::Auto`].
    pub consent: ConsentMode,
    /// The signed-in user when a request names none through
    /// [`USER_HEADER`](crate::USER_HEADER) or
    /// [`USER_QUERY_PARAM`](crate::USER_QUERY_PARAM). Default `"test-user"`.
    pub default_subject: String,
    /// The RFC 9207 `iss` parameter. Default [`IssParameter::Correct`].
    pub iss_parameter: IssParameter,
    /// Refuse authorization requests without `code_challenge`. Default `true`.
    pub require_pkce: bool,
    /// Accept `code_challenge_method=plain` (and a missing method, which
    /// means plain). Default `false`: only S256.
    pub allow_plain_pkce: bool,
    /// Accept a loopback IP redirect URI (`http://127.0.0.1:PORT/...`,
    /// `http://[::1]:PORT/...`) on any port when one is registered on
    /// another port (RFC 8252 section 7.3). Default `false`: exact match.
    pub loopback_redirect_any_port: bool,
    /// Refuse authorization requests without a `resource` (RFC 8707) with
    /// `invalid_target`. Default `false`.
    pub require_resource: bool,
    /// Scopes advertised in metadata; when set, requests for others fail
    /// with `invalid_scope`. Default `None`: any scope is granted.
    pub scopes_supported: Option<Vec<String>>,
    /// Scopes granted when a request names none. Default empty.
    pub default_scopes: Vec<String>,
    /// When set, grants are silently narrowed to these scopes (a user who
    /// unticks boxes); the token response's `scope` says so. Default `None`.
    pub grant_only: Option<Vec<String>>,
    /// How long an authorization code is valid. Default 60 s.
    pub code_lifetime: Duration,
    /// Access token lifetime (`expires_in`, whole seconds). Default 3600 s.
    pub access_token_lifetime: Duration,
    /// Send `expires_in` in token responses. Default `true`.
    pub send_expires_in: bool,
    /// Issue refresh tokens. Default `true`.
    pub issue_refresh_tokens: bool,
    /// Refresh token lifetime; `None` never expires. Default `None`.
    pub refresh_token_lifetime: Option<Duration>,
    /// Rotate refresh tokens: each refresh returns a new one and the old
    /// one stops working. When `false`, the response has no
    /// `refresh_token` and the old one stays valid. Default `true`.
    pub rotate_refresh_tokens: bool,
    /// Treat the use of an already rotated refresh token as theft (OAuth 2.1
    /// section 4.3.1): besides `invalid_grant`, revoke every token of that
    /// authorization, including the newest refresh token. Makes a client
    /// that refreshes twice with one token (no single-flight) lose its
    /// session, loudly. Default `false`.
    pub revoke_on_refresh_token_reuse: bool,
    /// The `token_type` of token responses. Default `"Bearer"`.
    pub token_type: String,
    /// Extra members added to every successful token response.
    pub extra_token_fields: Map<String, Value>,
    /// Serve dynamic client registration (RFC 7591) and advertise
    /// `registration_endpoint`. Default `true`.
    pub dynamic_registration: bool,
    /// Accept URL client ids by fetching their Client ID Metadata Document,
    /// and advertise `client_id_metadata_document_supported`. The document
    /// is fetched on every authorization request (count the fetches with
    /// [`client_metadata_fetches`](crate::AuthServerHandle::client_metadata_fetches)).
    /// Default `true`.
    pub client_id_metadata_documents: bool,
    /// Serve RFC 7662 introspection and advertise it. Default `true`.
    pub introspection: bool,
    /// The `token_endpoint_auth_methods_supported` advertised; registration
    /// refuses others. Default basic, post, none and `private_key_jwt`.
    pub token_endpoint_auth_methods: Vec<ClientAuthMethod>,
    /// The `grant_types_supported` advertised; the token endpoint answers
    /// any other grant with `unsupported_grant_type`. Default every grant
    /// the server implements: `authorization_code`, `refresh_token`,
    /// `client_credentials`, [`JWT_BEARER_GRANT`](crate::JWT_BEARER_GRANT)
    /// and [`TOKEN_EXCHANGE_GRANT`](crate::TOKEN_EXCHANGE_GRANT).
    pub grant_types_supported: Vec<String>,
    /// Serve RFC 7009 token revocation and advertise `revocation_endpoint`.
    /// Default `true`.
    pub revocation: bool,
    /// How long the ID tokens of
    /// [`issue_id_token`](crate::AuthServerHandle::issue_id_token) are
    /// valid. Default 1 h.
    pub id_token_lifetime: Duration,
    /// How long the ID-JAGs the token exchange issues are valid. Default
    /// 5 min.
    pub id_jag_lifetime: Duration,
    /// Refuse token requests without `client_id` in the form body, even
    /// when HTTP Basic names the client, with `401 invalid_client` "Missing
    /// client_id": how the MCP Python SDK's authorization server (and
    /// FastMCP, built on it) behaves. RFC 6749 section 2.3.1 lets a client
    /// send it there alongside Basic. Default `false`.
    pub require_client_id_in_body: bool,
    /// Dynamically registered clients with a secret get one that expires
    /// this long after registration (`client_secret_expires_at`); a token
    /// request with an expired secret gets `401 invalid_client`. Default
    /// `None`: secrets never expire (`client_secret_expires_at: 0`). See
    /// also [`expire_client_secrets`](crate::AuthServerHandle::expire_client_secrets).
    pub client_secret_lifetime: Option<Duration>,
    /// Which discovery documents are served. Default all.
    pub discovery: DiscoveryDocuments,
    /// A defect in the discovery documents. Default none.
    pub metadata_fault: Option<MetadataFault>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            consent: ConsentMode::Auto,
            default_subject: "test-user".to_owned(),
            iss_parameter: IssParameter::Correct,
            require_pkce: true,
            allow_plain_pkce: false,
            loopback_redirect_any_port: false,
            require_resource: false,
            scopes_supported: None,
            default_scopes: Vec::new(),
            grant_only: None,
            code_lifetime: Duration::from_secs(60),
            access_token_lifetime: Duration::from_secs(3600),
            send_expires_in: true,
            issue_refresh_tokens: true,
            refresh_token_lifetime: None,
            rotate_refresh_tokens: true,
            revoke_on_refresh_token_reuse: false,
            token_type: "Bearer".to_owned(),
            extra_token_fields: Map::new(),
            dynamic_registration: true,
            client_id_metadata_documents: true,
            introspection: true,
            token_endpoint_auth_methods: vec![
                ClientAuthMethod::ClientSecretBasic,
                ClientAuthMethod::ClientSecretPost,
                ClientAuthMethod::None,
                ClientAuthMethod::PrivateKeyJwt,
            ],
            grant_types_supported: [
                "authorization_code",
                "refresh_token",
                "client_credentials",
                crate::JWT_BEARER_GRANT,
                crate::TOKEN_EXCHANGE_GRANT,
            ]
            .map(str::to_owned)
            .to_vec(),
            revocation: true,
            id_token_lifetime: Duration::from_secs(3600),
            id_jag_lifetime: Duration::from_secs(300),
            require_client_id_in_body: false,
            client_secret_lifetime: None,
            discovery: DiscoveryDocuments::All,
            metadata_fault: None,
        }
    }
}
