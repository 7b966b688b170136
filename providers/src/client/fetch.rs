//! The HTTP rules of the client side, in one place: HTTPS (plain HTTP only
//! to loopback, and only for an MCP server on loopback), no redirect to
//! another origin, bounded response bodies.
//!
//! A remote MCP server names the URLs the client fetches (its challenge's
//! `resource_metadata`, its metadata's authorization servers, their
//! endpoints). Were plain `http://127.0.0.1` allowed for a remote server,
//! any server could make the client send requests to services on the
//! user's own machine, and read their answers back through error
//! messages: a blind SSRF. Plain HTTP to loopback is for local
//! development, where the MCP server is on loopback itself.

use std::net::IpAddr;

use reqwest::header::{ACCEPT, LOCATION};
use serde_json::Value;
use url::{Host, Url};

use crate::client::error::{ClientAuthError, MetadataDocument};
use crate::http::OAuthHttpClient;

/// Metadata documents and registration answers are small; anything bigger
/// is a broken or hostile server. The one cap of every OAuth answer.
const MAX_BODY_BYTES: usize = crate::http::TOKEN_RESPONSE_LIMIT;
/// Same-origin redirects followed while fetching a metadata document.
const MAX_REDIRECTS: usize = 5;

/// What fetching a metadata document found.
pub(crate) enum Fetched {
    /// A JSON document (from the URL after same-origin redirects).
    Document(Value),
    /// A 4xx: not published here, try the next location.
    Absent(u16),
}

/// The OAuth HTTP client plus the client side's URL policy.
#[derive(Clone, Debug)]
pub(crate) struct Fetcher {
    http: OAuthHttpClient,
    allow_insecure_http: bool,
    /// The MCP server is on loopback: plain HTTP to loopback is allowed.
    local_development: bool,
}

impl Fetcher {
    /// The rules for a client of the MCP server at `server`.
    pub(crate) fn new(http: OAuthHttpClient, allow_insecure_http: bool, server: &Url) -> Self {
        Fetcher {
            http,
            allow_insecure_http,
            local_development: is_loopback(server),
        }
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        self.http.reqwest()
    }

    /// The OAuth HTTP client, for token requests.
    pub(crate) fn http(&self) -> &OAuthHttpClient {
        &self.http
    }

    /// Refuses `url` unless it is https, or http to loopback when the MCP
    /// server is on loopback too (or anywhere, when insecure HTTP was
    /// allowed for development).
    pub(crate) fn check_url(&self, what: &'static str, url: &Url) -> Result<(), ClientAuthError> {
        match url.scheme() {
            "https" => Ok(()),
            "http" if self.allow_insecure_http || (self.local_development && is_loopback(url)) => {
                Ok(())
            }
            _ => Err(ClientAuthError::InsecureUrl {
                what,
                url: url.to_string(),
            }),
        }
    }

    /// GETs a JSON metadata document, following same-origin redirects
    /// only; with `MCP-Protocol-Version: {protocol_version}` when given (the
    /// MCP server's own documents).
    pub(crate) async fn get_json(
        &self,
        document: MetadataDocument,
        url: &Url,
        protocol_version: Option<&str>,
    ) -> Result<Fetched, ClientAuthError> {
        let mut current = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self
                .client()
                .get(current.clone())
                .header(ACCEPT, "application/json");
            if let Some(version) = protocol_version {
                request = request.header("MCP-Protocol-Version", version);
            }
            let response = request
                .send()
                .await
                .map_err(|e| ClientAuthError::http(current.as_str(), e))?;
            let status = response.status();
            if status.is_redirection() {
                current = redirect_target(document, &current, &response)?;
                continue;
            }
            if status.is_client_error() {
                return Ok(Fetched::Absent(status.as_u16()));
            }
            if !status.is_success() {
                return Err(ClientAuthError::Metadata {
                    document,
                    url: current.to_string(),
                    reason: format!("the server answered HTTP {status}"),
                    status: Some(status.as_u16()),
                });
            }
            let body = read_limited(response)
                .await
                .map_err(|e| self.body_error(document, &current, e))?;
            let value: Value = serde_json::from_slice(&body).map_err(|e| {
                ClientAuthError::metadata(
                    document,
                    current.as_str(),
                    format!("the document is not valid JSON ({e})"),
                )
            })?;
            if !value.is_object() {
                return Err(ClientAuthError::metadata(
                    document,
                    current.as_str(),
                    "the document is not a JSON object",
                ));
            }
            return Ok(Fetched::Document(value));
        }
        Err(ClientAuthError::metadata(
            document,
            url.as_str(),
            format!("more than {MAX_REDIRECTS} redirects"),
        ))
    }

    fn body_error(
        &self,
        document: MetadataDocument,
        url: &Url,
        error: BodyError,
    ) -> ClientAuthError {
        match error {
            BodyError::Transport(e) => ClientAuthError::http(url.as_str(), e),
            BodyError::TooLarge => ClientAuthError::metadata(
                document,
                url.as_str(),
                format!("the document is larger than {MAX_BODY_BYTES} bytes"),
            ),
        }
    }
}

/// Where a redirect response points, if it stays on the same origin.
fn redirect_target(
    document: MetadataDocument,
    from: &Url,
    response: &reqwest::Response,
) -> Result<Url, ClientAuthError> {
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ClientAuthError::metadata(
                document,
                from.as_str(),
                "a redirect without a usable Location header",
            )
        })?;
    let target = from.join(location).map_err(|e| {
        ClientAuthError::metadata(
            document,
            from.as_str(),
            format!("a redirect to an invalid URL ({e})"),
        )
    })?;
    if target.origin() != from.origin() {
        return Err(ClientAuthError::CrossOriginRedirect {
            url: from.to_string(),
            location: target.to_string(),
        });
    }
    Ok(target)
}

pub(crate) enum BodyError {
    Transport(reqwest::Error),
    TooLarge,
}

/// Reads a response body, refusing more than [`MAX_BODY_BYTES`].
pub(crate) async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_BODY_BYTES as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether a URL's host is a loopback address or `localhost`.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(Host::Domain(domain)) => {
            domain.eq_ignore_ascii_case("localhost")
                || domain.to_ascii_lowercase().ends_with(".localhost")
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for url in [
            "http://127.0.0.1:8/x",
            "http://127.9.9.9/",
            "http://[::1]:3000/",
            "http://localhost:1/",
            "http://LOCALHOST/",
            "http://a.localhost/",
        ] {
            assert!(is_loopback(&Url::parse(url).unwrap()), "{url}");
        }
        for url in [
            "http://10.0.0.1/",
            "http://example.com/",
            "http://localhost.example.com/",
        ] {
            assert!(!is_loopback(&Url::parse(url).unwrap()), "{url}");
        }
    }

    #[test]
    fn url_policy() {
        let fetcher = |server: &str, lax: bool| {
            let http = OAuthHttpClient::from_reqwest(reqwest::Client::new());
            Fetcher::new(http, lax, &Url::parse(server).unwrap())
        };
        let ok = |fetcher: &Fetcher, u: &str| {
            fetcher
                .check_url("endpoint", &Url::parse(u).unwrap())
                .is_ok()
        };
        let local = fetcher("http://127.0.0.1:3000/mcp", false);
        assert!(ok(&local, "https://as.example/token"));
        assert!(ok(&local, "http://127.0.0.1:9/token"));
        assert!(ok(&local, "http://localhost:9/token"));
        assert!(!ok(&local, "http://as.example/token"));
        assert!(!ok(&local, "ftp://as.example/token"));
        // A remote MCP server cannot send the client to plain-HTTP services
        // on the user's machine.
        let remote = fetcher("https://mcp.example/mcp", false);
        assert!(ok(&remote, "https://as.example/token"));
        assert!(!ok(&remote, "http://127.0.0.1:9/token"));
        assert!(!ok(&remote, "http://[::1]:9/token"));
        assert!(!ok(&remote, "http://localhost:9/token"));
        let lax = fetcher("https://mcp.example/mcp", true);
        assert!(ok(&lax, "http://as.example/"));
        assert!(ok(&lax, "http://127.0.0.1:9/"));
    }
}
