//! # mcp-authkit-testkit
//!
//! A real OAuth 2.1 authorization server on loopback, written for tests of
//! OAuth and MCP clients and servers, with switches for every way a real one
//! misbehaves. It needs no network beyond `127.0.0.1` and starts in
//! milliseconds on a random port.
//!
//! - [`TestAuthServer`]: `/authorize` (PKCE S256, exact redirect URIs,
//!   `state`, `resource`, RFC 9207 `iss`, auto-consent, a consent page, or
//!   denial), `/token` (authorization code and refresh token grants,
//!   rotation, downscoping, `client_secret_basic`, `client_secret_post` and
//!   public clients, RFC 6749 error bodies), RFC 8414 and OpenID Connect
//!   discovery (also for issuers with a path), dynamic client registration
//!   (RFC 7591), Client ID Metadata Documents, RFC 7662 introspection, RFC
//!   7009 revocation, and a bearer-protected `/userinfo` that stands in for
//!   a third-party API.
//! - The grants without a user: `client_credentials` (with
//!   `client_secret_basic`, `client_secret_post` or an RFC 7523
//!   `private_key_jwt` assertion checked against the client's
//!   [`SigningKey`]), and enterprise-managed authorization: as the identity
//!   provider, [`issue_id_token`](AuthServerHandle::issue_id_token) and RFC
//!   8693 token exchange of that ID token for an ID-JAG; as the MCP server's
//!   authorization server, the RFC 7523 `jwt-bearer` grant for ID-JAGs of
//!   the identity providers it [trusts](AuthServerHandle::trust_identity_provider)
//!   (signature, `typ`, audience, expiry, client, resource, replay).
//! - Switches: [`Settings`] (changeable while running),
//!   [`MetadataFault`]s and [`DiscoveryDocuments`] for bad discovery,
//!   [`Failure`]s injected into the next requests of an [`Endpoint`]
//!   (5xx, a hang, a delay, `invalid_grant`, `access_denied`, malformed
//!   JSON), counters and a log of [`RecordedRequest`]s.
//! - [`ProtectedResource`]: the resource-server side, for an MCP server
//!   under test: Protected Resource Metadata (RFC 9728), `401`/`403`
//!   challenges with `resource_metadata` and `scope`, audience checks, and
//!   the validated [`TokenInfo`] in request extensions.
//! - [`Browser`]: the user's browser, headless: follows redirects hop by hop,
//!   keeps cookies, signs in as a chosen user, and can stop before an origin
//!   to read the authorization response.
//! - [`AuthorizationRequest`], [`AuthorizationResponse`] and [`Pkce`] for
//!   tests that play the client by hand.
//!
//! # Example: a full authorization code flow with PKCE and refresh
//!
//! ```
//! use mcp_authkit_testkit::{
//!     AuthorizationRequest, Browser, ClientRegistration, Endpoint, Failure, Pkce,
//!     TestAuthServer,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = TestAuthServer::start().await?;
//! let client = server.register_client(ClientRegistration::public("http://127.0.0.1:9/callback"))?;
//!
//! // The user's browser opens the authorization URL; stop before the
//! // client's redirect URI and read the code from the redirect.
//! let pkce = Pkce::new();
//! let url = server.authorization_url(
//!     &AuthorizationRequest::new(&client)
//!         .pkce(&pkce)
//!         .state("xyz")
//!         .scope("read write")
//!         .resource("https://mcp.example/mcp"),
//! );
//! let redirect = url::Url::parse(client.redirect_uri())?;
//! let browser = Browser::new().with_user("alice").stop_before(&redirect);
//! let response = browser.get(url.as_str()).await?.authorization_response();
//! assert_eq!(response.state.as_deref(), Some("xyz"));
//! assert_eq!(response.iss.as_deref(), Some(server.issuer()));
//!
//! // The client exchanges the code with its PKCE verifier.
//! let http = reqwest::Client::new();
//! let tokens: serde_json::Value = http
//!     .post(server.token_endpoint())
//!     .form(&[
//!         ("grant_type", "authorization_code"),
//!         ("code", response.code.as_deref().unwrap()),
//!         ("redirect_uri", client.redirect_uri()),
//!         ("client_id", &client.client_id),
//!         ("code_verifier", pkce.verifier()),
//!     ])
//!     .send()
//!     .await?
//!     .json()
//!     .await?;
//!
//! // A resource server validates the access token.
//! let info = server.introspect(tokens["access_token"].as_str().unwrap()).unwrap();
//! assert_eq!(info.subject, "alice");
//! assert!(info.has_scope("write") && info.is_for("https://mcp.example/mcp"));
//!
//! // The next refresh fails as if the user had revoked access.
//! server.fail_next(Endpoint::RefreshTokenGrant, 1, Failure::invalid_grant());
//! let refused = http
//!     .post(server.token_endpoint())
//!     .form(&[
//!         ("grant_type", "refresh_token"),
//!         ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
//!         ("client_id", &client.client_id),
//!     ])
//!     .send()
//!     .await?;
//! assert_eq!(refused.status(), 400);
//! assert_eq!(server.hits(Endpoint::Token), 2);
//! # Ok(())
//! # }
//! ```
//!
//! # Recipes
//!
//! - **An MCP server that needs a third-party token** (the server plays the
//!   OAuth client): point its provider at [`authorization_endpoint`] and
//!   [`token_endpoint`], call [`userinfo_endpoint`] as "the third-party
//!   API", and let a [`Browser`] follow the elicited URL to the server's own
//!   callback. Expire tokens with [`expire_access_tokens`] (the API answers
//!   `401`, refresh still works) or cut the user off with
//!   [`revoke_subject`] (refresh gets `invalid_grant`).
//! - **An MCP client** (discovery, registration, PKCE, step-up): put the
//!   MCP server behind a [`ProtectedResource`] (Protected Resource Metadata,
//!   `401`/`403` challenges); vary discovery with [`MetadataFault`] and
//!   [`DiscoveryDocuments`]; host the client's metadata document with
//!   [`host_json`]; read the code headlessly with
//!   [`Browser::stop_before`]; assert what the client sent with
//!   [`last_request`].
//! - **Servers that forget or refuse a client** (the shapes MCP clients meet
//!   in the wild): [`restart`] forgets dynamically registered clients and
//!   tokens as an in-memory server's restart does;
//!   [`Settings::client_secret_lifetime`] and [`expire_client_secrets`]
//!   expire secrets; [`Settings::require_client_id_in_body`] wants
//!   `client_id` in the form even with HTTP Basic (the MCP Python SDK);
//!   [`InvalidTokenAnswer::InternalError`] makes a [`ProtectedResource`]
//!   answer an unknown token with `500` instead of a challenge (the MCP
//!   TypeScript SDK's example server).
//! - **Machine-to-machine and enterprise clients**: register a
//!   [`ClientRegistration::service`] client (a secret) or
//!   [`ClientRegistration::private_key_jwt`] (a [`SigningKey`]'s public
//!   JWK) and point the client at the MCP server; for cross-app access,
//!   start a second server as the identity provider, call
//!   [`trust_identity_provider`] on the first, and give the client an ID
//!   token from [`issue_id_token`]. Shorten [`Settings::id_jag_lifetime`]
//!   to test expiry, drop a grant from [`Settings::grant_types_supported`]
//!   to test refusal.
//! - **Failure handling**: [`fail_next`] with [`Failure::Status`],
//!   [`Failure::Hang`], [`Failure::Delay`], [`Failure::invalid_grant`],
//!   [`Failure::access_denied`] or [`Failure::MalformedJson`], for one
//!   endpoint or one grant type, the next N times.
//!
//! [`authorization_endpoint`]: AuthServerHandle::authorization_endpoint
//! [`token_endpoint`]: AuthServerHandle::token_endpoint
//! [`userinfo_endpoint`]: AuthServerHandle::userinfo_endpoint
//! [`expire_access_tokens`]: AuthServerHandle::expire_access_tokens
//! [`revoke_subject`]: AuthServerHandle::revoke_subject
//! [`host_json`]: AuthServerHandle::host_json
//! [`last_request`]: AuthServerHandle::last_request
//! [`fail_next`]: AuthServerHandle::fail_next
//! [`restart`]: AuthServerHandle::restart
//! [`expire_client_secrets`]: AuthServerHandle::expire_client_secrets
//! [`trust_identity_provider`]: AuthServerHandle::trust_identity_provider
//! [`issue_id_token`]: AuthServerHandle::issue_id_token
//!
//! # Conventions
//!
//! - The issuer is `http://127.0.0.1:PORT` (plus the
//!   [issuer path](TestAuthServerBuilder::issuer_path)), without a trailing
//!   slash. Endpoints are `{issuer}/authorize`, `/token`, `/register`,
//!   `/introspect`, `/revoke`, `/userinfo`, `/jwks` and `/consent`.
//! - The signed-in user is [`Settings::default_subject`] unless a request
//!   names one with the [`USER_HEADER`] header or the [`USER_QUERY_PARAM`]
//!   query parameter.
//! - Tokens and codes are opaque random strings; the server keeps them in
//!   memory. Anything that prints (Debug, errors) redacts codes, tokens,
//!   verifiers and secrets.
//! - Dropping the [`TestAuthServer`] stops it; [`AuthServerHandle`] clones
//!   stay usable for reading counters.

mod authorization;
mod authorize;
mod browser;
mod cimd;
mod client;
mod client_auth;
mod discovery;
mod error;
mod failure;
mod grants;
mod http;
mod introspection;
mod keys;
mod pkce;
mod registration;
mod requests;
mod resource;
mod revocation;
mod secret;
mod server;
mod settings;
mod state;
mod token;
mod tokens;
mod transport;

pub use authorization::{AuthorizationRequest, AuthorizationResponse};
pub use authorize::{USER_HEADER, USER_QUERY_PARAM, WRONG_ISSUER};
pub use browser::{Browser, Hop, Navigation, Page};
pub use client::{ClientAuthMethod, ClientRegistration, ClientSource, RegisteredClient};
pub use error::Error;
pub use failure::{Endpoint, Failure};
pub use keys::{PublicKey, SigningKey};
pub use pkce::Pkce;
pub use requests::RecordedRequest;
pub use resource::{
    InvalidTokenAnswer, ProtectedResource, Rejection, ResourceEvent, ResourceMetadataFault,
    ResourceSettings, require_bearer,
};
pub use server::{AuthServerHandle, TestAuthServer, TestAuthServerBuilder};
pub use settings::{ConsentMode, DiscoveryDocuments, IssParameter, MetadataFault, Settings};
pub use tokens::{IssuedTokens, PendingConsent, TokenGrant, TokenInfo};

/// The RFC 7523 grant type that trades a JWT (an ID-JAG) for an access token.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The RFC 8693 token exchange grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of an Identity Assertion JWT Authorization Grant (ID-JAG).
pub const ID_JAG_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id-jag";
/// The RFC 8693 token type of an OpenID Connect ID token.
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// The `typ` header of an ID-JAG.
pub const ID_JAG_JWT_TYPE: &str = "oauth-id-jag+jwt";
/// The RFC 7523 `client_assertion_type` of `private_key_jwt`.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
