//! Discovery, in the order the MCP authorization specification (2025-11-25)
//! gives: Protected Resource Metadata (RFC 9728), then the authorization
//! server's metadata (RFC 8414 or OpenID Connect discovery).
//!
//! # Servers of the 2025-03-26 specification
//!
//! That version had no Protected Resource Metadata: the MCP server was its
//! own authorization server. When a server publishes none (every
//! well-known URL answers `4xx`, and its challenge names no
//! `resource_metadata`), the client falls back as that version says:
//! authorization server metadata at the MCP server's origin
//! (`/.well-known/oauth-authorization-server`), and without it the default
//! endpoints `/authorize`, `/token` and `/register` there. What it trusts
//! then is the MCP server's origin, exactly as it trusts the server with
//! its requests: the metadata must come from that origin and name an
//! issuer on it, its endpoints follow the usual URL rules, and PKCE S256
//! is required (assumed for the default endpoints, which the 2025-03-26
//! version made mandatory for every client). The fallback never applies
//! when Protected Resource Metadata exists, or is broken (a `5xx`, invalid
//! JSON, a wrong `resource`): that is an error, not a 2025-03-26 server.

use serde::Deserialize;
use serde_json::Value;
use url::Url;

use mcp_authkit_core::{TokenKey, TokenStore};

use crate::client::error::{ClientAuthError, MetadataDocument};
use crate::client::fetch::{Fetched, Fetcher};
use crate::client::records;

/// An MCP server's Protected Resource Metadata (RFC 9728 section 2).
#[derive(Clone, Debug, Deserialize)]
#[non_exhaustive]
pub struct ProtectedResourceMetadata {
    /// The resource identifier: the `resource` parameter of token requests.
    pub resource: String,
    /// The authorization servers that issue tokens for it.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// The scopes it uses; requested when a challenge names none.
    #[serde(default)]
    pub scopes_supported: Option<Vec<String>>,
    /// How it accepts bearer tokens (`header`, ...).
    #[serde(default)]
    pub bearer_methods_supported: Option<Vec<String>>,
}

/// An authorization server's metadata (RFC 8414 section 2; OpenID Connect
/// discovery documents have the same members).
#[derive(Clone, Debug, Deserialize)]
#[non_exhaustive]
pub struct AuthorizationServerMetadata {
    /// The issuer identifier; equal to the URL it was discovered for.
    pub issuer: String,
    /// Where the user's browser is sent.
    pub authorization_endpoint: String,
    /// Where codes and refresh tokens are exchanged.
    pub token_endpoint: String,
    /// Dynamic client registration (RFC 7591), when offered.
    #[serde(default)]
    pub registration_endpoint: Option<String>,
    /// Scopes the server knows.
    #[serde(default)]
    pub scopes_supported: Option<Vec<String>>,
    /// Response types; MCP needs `code`.
    #[serde(default)]
    pub response_types_supported: Option<Vec<String>>,
    /// Grant types (`authorization_code`, `refresh_token`, ...).
    #[serde(default)]
    pub grant_types_supported: Option<Vec<String>>,
    /// Client authentication methods at the token endpoint; RFC 8414's
    /// default when absent is `client_secret_basic`.
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    /// PKCE methods; MCP clients refuse to go on without `S256`.
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
    /// Whether authorization responses carry `iss` (RFC 9207).
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: Option<bool>,
    /// Token revocation (RFC 7009), when offered.
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// Whether URL client ids with a Client ID Metadata Document are
    /// accepted.
    #[serde(default)]
    pub client_id_metadata_document_supported: Option<bool>,
}

impl AuthorizationServerMetadata {
    /// Whether `method` is an accepted token endpoint authentication method.
    pub fn supports_auth_method(&self, method: &str) -> bool {
        match &self.token_endpoint_auth_methods_supported {
            Some(methods) => methods.iter().any(|m| m == method),
            None => method == "client_secret_basic",
        }
    }

    /// Metadata that knows only a server's issuer and token endpoint (an
    /// identity provider configured by hand).
    pub(crate) fn token_endpoint_only(issuer: &str, token_endpoint: &str) -> Self {
        serde_json::from_value(serde_json::json!({
            "issuer": issuer,
            "authorization_endpoint": token_endpoint,
            "token_endpoint": token_endpoint,
        }))
        .expect("strings make metadata")
    }

    /// Whether the server offers `grant_type`: listed in
    /// `grant_types_supported`, or that list is absent (many servers leave
    /// it out, so absence is not taken as RFC 8414's default of
    /// `authorization_code` and `implicit` only).
    pub fn supports_grant(&self, grant_type: &str) -> bool {
        self.grant_types_supported
            .as_ref()
            .is_none_or(|grants| grants.iter().any(|g| g == grant_type))
    }

    /// An error unless the server offers `grant_type`: checked before the
    /// client uses it, so nobody is sent to a browser for a grant the
    /// server would refuse.
    pub(crate) fn require_grant(&self, grant_type: &str) -> Result<(), ClientAuthError> {
        if self.supports_grant(grant_type) {
            return Ok(());
        }
        Err(ClientAuthError::GrantNotSupported {
            issuer: self.issuer.clone(),
            grant_type: grant_type.to_owned(),
            advertised: self.grant_types_supported.clone().unwrap_or_default(),
        })
    }

    /// Whether PKCE with S256 is advertised.
    pub fn supports_s256(&self) -> bool {
        self.code_challenge_methods_supported
            .as_ref()
            .is_some_and(|methods| methods.iter().any(|m| m == "S256"))
    }

    /// Whether authorization responses must carry `iss`.
    pub fn requires_iss(&self) -> bool {
        self.authorization_response_iss_parameter_supported == Some(true)
    }
}

/// Protected Resource Metadata and where it came from.
#[derive(Clone, Debug)]
pub(crate) struct DiscoveredResource {
    pub(crate) metadata: ProtectedResourceMetadata,
    pub(crate) url: Url,
}

/// Authorization server metadata, the JSON it was read from (kept so a
/// restarted client can refresh without discovering again), and its URL.
#[derive(Clone, Debug)]
pub(crate) struct DiscoveredServer {
    pub(crate) metadata: AuthorizationServerMetadata,
    pub(crate) document: Value,
    pub(crate) url: Url,
}

/// What discovery found for an MCP server, kept in the store (format in
/// `records`) so a restarted client can serve and refresh its token
/// without discovering again.
#[derive(Clone, Debug)]
pub(crate) struct DiscoveryRecord {
    pub(crate) issuer: String,
    pub(crate) resource: String,
    /// Where the Protected Resource Metadata was; `None` for a 2025-03-26
    /// server, which publishes none.
    pub(crate) resource_metadata_url: Option<String>,
    pub(crate) scopes_supported: Option<Vec<String>>,
    /// The authorization server metadata as fetched (checked again when
    /// read back).
    pub(crate) server_document: Value,
    pub(crate) server_metadata_url: Url,
}

impl DiscoveryRecord {
    pub(crate) fn new(resource: &DiscoveredResource, server: &DiscoveredServer) -> Self {
        DiscoveryRecord {
            issuer: server.metadata.issuer.clone(),
            resource: resource.metadata.resource.clone(),
            resource_metadata_url: Some(resource.url.to_string()),
            scopes_supported: resource.metadata.scopes_supported.clone(),
            server_document: server.document.clone(),
            server_metadata_url: server.url.clone(),
        }
    }

    /// A 2025-03-26 server: no resource metadata; the token is for the MCP
    /// server's URL.
    fn legacy(server_url: &Url, server: &DiscoveredServer) -> Self {
        DiscoveryRecord {
            issuer: server.metadata.issuer.clone(),
            resource: server_url.to_string(),
            resource_metadata_url: None,
            scopes_supported: None,
            server_document: server.document.clone(),
            server_metadata_url: server.url.clone(),
        }
    }
}

/// What a previous run stored under `key`, its metadata checked again;
/// `None` when nothing this release can read is stored (a record it cannot
/// read is reported and treated as absent: discovery runs again).
pub(crate) async fn stored_discovery(
    tokens: &dyn TokenStore,
    key: &TokenKey,
    fetcher: &Fetcher,
) -> Result<Option<Discovered>, ClientAuthError> {
    let Some(stored) = tokens.get(key).await? else {
        return Ok(None);
    };
    let record = match records::decode::<DiscoveryRecord>(&stored.record) {
        Ok(record) => record,
        Err(error) => {
            tracing::warn!(%error, "ignoring a stored discovery result this release cannot read");
            return Ok(None);
        }
    };
    let metadata = check_server_metadata(
        fetcher,
        &record.server_document,
        &record.issuer,
        &record.server_metadata_url,
    )?;
    Ok(Some(Discovered { record, metadata }))
}

/// What discovery found: the record to keep, and the checked metadata.
pub(crate) struct Discovered {
    pub(crate) record: DiscoveryRecord,
    pub(crate) metadata: AuthorizationServerMetadata,
}

/// Finds the authorization server of the MCP server at `server`: through
/// its Protected Resource Metadata (at the challenge's `resource_metadata`
/// URL, else the well-known URLs) and the first authorization server it
/// names that has usable metadata; or, for a server that publishes no
/// resource metadata and names none in its challenge, through the
/// 2025-03-26 fallback when `legacy_fallback` allows it (see the module
/// docs).
pub(crate) async fn discover(
    fetcher: &Fetcher,
    server: &Url,
    from_challenge: Option<&str>,
    legacy_fallback: bool,
) -> Result<Discovered, ClientAuthError> {
    match find_resource(fetcher, server, from_challenge).await? {
        ResourceSearch::Found(resource) => {
            let found = discover_server(fetcher, &resource).await?;
            Ok(Discovered {
                record: DiscoveryRecord::new(&resource, &found),
                metadata: found.metadata,
            })
        }
        ResourceSearch::Absent(_) if legacy_fallback && from_challenge.is_none() => {
            tracing::info!(
                %server,
                "no protected resource metadata: falling back to 2025-03-26 discovery"
            );
            let found = discover_legacy(fetcher, server).await?;
            Ok(Discovered {
                record: DiscoveryRecord::legacy(server, &found),
                metadata: found.metadata,
            })
        }
        ResourceSearch::Absent(tried) => Err(ClientAuthError::metadata(
            MetadataDocument::ProtectedResource,
            server.as_str(),
            format!(
                "the MCP server publishes no Protected Resource Metadata (tried {}); it must, for \
                 clients to find its authorization server{}",
                tried.join(", "),
                if legacy_fallback {
                    ""
                } else {
                    " (the 2025-03-26 fallback is turned off)"
                }
            ),
        )),
    }
}

/// The first authorization server of the metadata that answers with
/// usable metadata; the first error when none does.
async fn discover_server(
    fetcher: &Fetcher,
    resource: &DiscoveredResource,
) -> Result<DiscoveredServer, ClientAuthError> {
    let mut first_error = None;
    for issuer in &resource.metadata.authorization_servers {
        match discover_authorization_server(fetcher, issuer).await {
            Ok(server) => return Ok(server),
            Err(error) => {
                tracing::warn!(%issuer, %error, "authorization server unusable");
                first_error.get_or_insert(error);
            }
        }
    }
    Err(first_error.expect("protected resource metadata names at least one server"))
}

/// The 2025-03-26 discovery: metadata at the MCP server's origin, else its
/// default endpoints.
async fn discover_legacy(
    fetcher: &Fetcher,
    server: &Url,
) -> Result<DiscoveredServer, ClientAuthError> {
    let mut origin = server.clone();
    origin.set_path("/");
    origin.set_query(None);
    origin.set_fragment(None);
    let url = origin
        .join("/.well-known/oauth-authorization-server")
        .expect("a well-known path joins any http(s) URL");
    fetcher.check_url("authorization server metadata URL", &url)?;
    let document = match fetcher
        .get_json(
            MetadataDocument::AuthorizationServer,
            &url,
            Some("2025-03-26"),
        )
        .await?
    {
        Fetched::Document(document) => {
            let issuer = document.get("issuer").and_then(Value::as_str).unwrap_or("");
            let on_origin = Url::parse(issuer).is_ok_and(|i| i.origin() == server.origin());
            if !on_origin {
                return Err(ClientAuthError::metadata(
                    MetadataDocument::AuthorizationServer,
                    url.as_str(),
                    format!(
                        "its issuer {:?} is not on the MCP server's origin; a server without \
                         protected resource metadata (2025-03-26) must be its own authorization \
                         server",
                        crate::client::error::cap(issuer)
                    ),
                ));
            }
            document
        }
        Fetched::Absent(_) => {
            let at = |path: &str| {
                origin
                    .join(path)
                    .expect("an absolute path joins")
                    .to_string()
            };
            serde_json::json!({
                "issuer": origin.as_str().trim_end_matches('/'),
                "authorization_endpoint": at("/authorize"),
                "token_endpoint": at("/token"),
                "registration_endpoint": at("/register"),
                "response_types_supported": ["code"],
                // 2025-03-26 made PKCE mandatory for every client.
                "code_challenge_methods_supported": ["S256"],
            })
        }
    };
    let issuer = document["issuer"].as_str().unwrap_or_default().to_owned();
    let metadata = check_server_metadata(fetcher, &document, &issuer, &url)?;
    Ok(DiscoveredServer {
        metadata,
        document,
        url,
    })
}

/// The MCP server's canonical URL: no fragment.
pub(crate) fn canonical_server_url(server: &str) -> Result<Url, ClientAuthError> {
    let mut url = Url::parse(server).map_err(|e| ClientAuthError::Config {
        what: "MCP server URL",
        reason: format!("{server:?} is not an absolute URL ({e})"),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ClientAuthError::Config {
            what: "MCP server URL",
            reason: format!("{server:?} is not an http(s) URL"),
        });
    }
    url.set_fragment(None);
    Ok(url)
}

/// The well-known Protected Resource Metadata URLs of `server`, in the
/// order the MCP specification gives: path-aware first, then the root.
pub(crate) fn resource_metadata_candidates(server: &Url) -> Vec<Url> {
    let path = server.path().trim_end_matches('/');
    let mut root = server.clone();
    root.set_query(None);
    root.set_fragment(None);
    root.set_path("/.well-known/oauth-protected-resource");
    if path.is_empty() {
        return vec![root];
    }
    let mut path_aware = root.clone();
    path_aware.set_path(&format!("/.well-known/oauth-protected-resource{path}"));
    vec![path_aware, root]
}

/// The metadata URLs of `issuer`, in the MCP specification's order: for an
/// issuer with a path, RFC 8414 with path insertion, OpenID Connect with
/// path insertion, then OpenID Connect with path appending; for one
/// without, RFC 8414 then OpenID Connect.
pub(crate) fn authorization_server_metadata_candidates(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let at = |p: String| {
        let mut url = issuer.clone();
        url.set_query(None);
        url.set_fragment(None);
        url.set_path(&p);
        url
    };
    if path.is_empty() {
        vec![
            at("/.well-known/oauth-authorization-server".to_owned()),
            at("/.well-known/openid-configuration".to_owned()),
        ]
    } else {
        vec![
            at(format!("/.well-known/oauth-authorization-server{path}")),
            at(format!("/.well-known/openid-configuration{path}")),
            at(format!("{path}/.well-known/openid-configuration")),
        ]
    }
}

/// Whether `advertised` (a metadata `resource`) identifies `server`: same
/// origin, and its path is the server's path or a parent of it on a `/`
/// boundary (`https://mcp.example` covers `https://mcp.example/mcp`, but
/// `https://mcp.example/mcp-other` does not cover `https://mcp.example/mcp`).
pub(crate) fn resource_covers(advertised: &str, server: &Url) -> bool {
    let Ok(advertised) = Url::parse(advertised) else {
        return false;
    };
    if advertised.fragment().is_some() || advertised.origin() != server.origin() {
        return false;
    }
    let prefix = advertised.path().trim_end_matches('/');
    let path = server.path().trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Whether an MCP server publishes Protected Resource Metadata.
enum ResourceSearch {
    Found(DiscoveredResource),
    /// Every location answered `4xx`: these were tried.
    Absent(Vec<String>),
}

/// Finds and checks the MCP server's Protected Resource Metadata: at the
/// challenge's `resource_metadata` URL when there is one, else (or when it
/// is absent there) at the well-known URLs.
async fn find_resource(
    fetcher: &Fetcher,
    server: &Url,
    from_challenge: Option<&str>,
) -> Result<ResourceSearch, ClientAuthError> {
    let mut candidates = Vec::new();
    if let Some(url) = from_challenge {
        let url = Url::parse(url).map_err(|e| {
            ClientAuthError::metadata(
                MetadataDocument::ProtectedResource,
                url,
                format!("the resource_metadata URL of the challenge is not a URL ({e})"),
            )
        })?;
        candidates.push(url);
    }
    for url in resource_metadata_candidates(server) {
        if !candidates.contains(&url) {
            candidates.push(url);
        }
    }
    let mut tried = Vec::new();
    for url in candidates {
        fetcher.check_url("protected resource metadata URL", &url)?;
        match fetcher
            .get_json(
                MetadataDocument::ProtectedResource,
                &url,
                Some("2025-11-25"),
            )
            .await?
        {
            Fetched::Absent(status) => tried.push(format!("{url} (HTTP {status})")),
            Fetched::Document(document) => {
                let metadata = parse_resource_metadata(document, &url, server)?;
                return Ok(ResourceSearch::Found(DiscoveredResource { metadata, url }));
            }
        }
    }
    Ok(ResourceSearch::Absent(tried))
}

fn parse_resource_metadata(
    document: Value,
    url: &Url,
    server: &Url,
) -> Result<ProtectedResourceMetadata, ClientAuthError> {
    let invalid = |reason: String| {
        ClientAuthError::metadata(MetadataDocument::ProtectedResource, url.as_str(), reason)
    };
    let metadata: ProtectedResourceMetadata = serde_json::from_value(document)
        .map_err(|e| invalid(format!("the document is not valid metadata ({e})")))?;
    if !resource_covers(&metadata.resource, server) {
        return Err(ClientAuthError::ResourceMismatch {
            server: server.to_string(),
            advertised: metadata.resource,
            metadata_url: url.to_string(),
        });
    }
    if metadata.authorization_servers.is_empty() {
        return Err(invalid(
            "it names no authorization_servers, so there is nowhere to get a token".to_owned(),
        ));
    }
    Ok(metadata)
}

/// Finds, fetches and checks the metadata of the authorization server
/// `issuer`: its `issuer` must be `issuer`, its endpoints https (or
/// loopback), and it must advertise PKCE S256.
pub(crate) async fn discover_authorization_server(
    fetcher: &Fetcher,
    issuer: &str,
) -> Result<DiscoveredServer, ClientAuthError> {
    let issuer_url = Url::parse(issuer).map_err(|e| {
        ClientAuthError::metadata(
            MetadataDocument::ProtectedResource,
            issuer,
            format!("an authorization server named in the metadata is not a URL ({e})"),
        )
    })?;
    fetcher.check_url("authorization server", &issuer_url)?;
    let mut tried = Vec::new();
    for url in authorization_server_metadata_candidates(&issuer_url) {
        match fetcher
            .get_json(MetadataDocument::AuthorizationServer, &url, None)
            .await?
        {
            Fetched::Absent(status) => tried.push(format!("{url} (HTTP {status})")),
            Fetched::Document(document) => {
                let metadata = check_server_metadata(fetcher, &document, issuer, &url)?;
                return Ok(DiscoveredServer {
                    metadata,
                    document,
                    url,
                });
            }
        }
    }
    Err(ClientAuthError::metadata(
        MetadataDocument::AuthorizationServer,
        issuer,
        format!(
            "no RFC 8414 or OpenID Connect discovery document found (tried {})",
            tried.join(", ")
        ),
    ))
}

/// Checks a metadata document (freshly fetched, or read back from the
/// store after a restart).
pub(crate) fn check_server_metadata(
    fetcher: &Fetcher,
    document: &Value,
    issuer: &str,
    url: &Url,
) -> Result<AuthorizationServerMetadata, ClientAuthError> {
    let metadata: AuthorizationServerMetadata =
        serde_json::from_value(document.clone()).map_err(|e| {
            ClientAuthError::metadata(
                MetadataDocument::AuthorizationServer,
                url.as_str(),
                format!("the document is not valid metadata ({e})"),
            )
        })?;
    if !same_issuer(&metadata.issuer, issuer) {
        return Err(ClientAuthError::IssuerMismatch {
            expected: issuer.to_owned(),
            found: metadata.issuer,
            url: url.to_string(),
        });
    }
    for (what, endpoint) in [
        (
            "authorization endpoint",
            Some(&metadata.authorization_endpoint),
        ),
        ("token endpoint", Some(&metadata.token_endpoint)),
        (
            "registration endpoint",
            metadata.registration_endpoint.as_ref(),
        ),
        ("revocation endpoint", metadata.revocation_endpoint.as_ref()),
    ] {
        let Some(endpoint) = endpoint else { continue };
        let parsed = Url::parse(endpoint).map_err(|e| {
            ClientAuthError::metadata(
                MetadataDocument::AuthorizationServer,
                url.as_str(),
                format!("its {what} {endpoint:?} is not a URL ({e})"),
            )
        })?;
        fetcher.check_url(what, &parsed)?;
    }
    if !metadata.supports_s256() {
        return Err(ClientAuthError::PkceUnsupported {
            issuer: issuer.to_owned(),
            advertised: metadata
                .code_challenge_methods_supported
                .clone()
                .unwrap_or_default(),
        });
    }
    Ok(metadata)
}

/// Issuers compare as strings (RFC 8414 section 3.3), except that a bare
/// origin with and without its `/` path are the same URL.
fn same_issuer(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (Url::parse(a), Url::parse(b)) {
        (Ok(a), Ok(b)) => a.path() == "/" && b.path() == "/" && a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: Vec<Url>) -> Vec<String> {
        list.into_iter().map(String::from).collect()
    }

    #[test]
    fn resource_metadata_order() {
        let server = Url::parse("https://mcp.example/public/mcp").unwrap();
        assert_eq!(
            urls(resource_metadata_candidates(&server)),
            [
                "https://mcp.example/.well-known/oauth-protected-resource/public/mcp",
                "https://mcp.example/.well-known/oauth-protected-resource",
            ]
        );
        let root = Url::parse("https://mcp.example/").unwrap();
        assert_eq!(
            urls(resource_metadata_candidates(&root)),
            ["https://mcp.example/.well-known/oauth-protected-resource"]
        );
    }

    #[test]
    fn authorization_server_metadata_order() {
        let with_path = Url::parse("https://auth.example/tenant1").unwrap();
        assert_eq!(
            urls(authorization_server_metadata_candidates(&with_path)),
            [
                "https://auth.example/.well-known/oauth-authorization-server/tenant1",
                "https://auth.example/.well-known/openid-configuration/tenant1",
                "https://auth.example/tenant1/.well-known/openid-configuration",
            ]
        );
        let bare = Url::parse("https://auth.example").unwrap();
        assert_eq!(
            urls(authorization_server_metadata_candidates(&bare)),
            [
                "https://auth.example/.well-known/oauth-authorization-server",
                "https://auth.example/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn resource_match_is_same_origin_and_a_path_prefix() {
        let server = Url::parse("https://mcp.example/mcp").unwrap();
        assert!(resource_covers("https://mcp.example/mcp", &server));
        assert!(resource_covers("https://mcp.example/mcp/", &server));
        assert!(resource_covers("https://mcp.example", &server));
        assert!(resource_covers("https://mcp.example/", &server));
        assert!(!resource_covers(
            "https://mcp.example/mcp-elsewhere",
            &server
        ));
        assert!(!resource_covers("https://mcp.example/other", &server));
        assert!(!resource_covers("https://mcp.example:444/mcp", &server));
        assert!(!resource_covers("http://mcp.example/mcp", &server));
        assert!(!resource_covers("https://evil.example/mcp", &server));
        assert!(!resource_covers("https://mcp.example/mcp#x", &server));
        assert!(!resource_covers("not a url", &server));
        let deeper = Url::parse("https://mcp.example/mcp/v2").unwrap();
        assert!(resource_covers("https://mcp.example/mcp", &deeper));
    }

    #[test]
    fn issuer_comparison() {
        assert!(same_issuer("https://a.example", "https://a.example/"));
        assert!(same_issuer("https://a.example/t1", "https://a.example/t1"));
        assert!(!same_issuer(
            "https://a.example/t1",
            "https://a.example/t1/"
        ));
        assert!(!same_issuer("https://a.example", "https://b.example"));
    }
}
