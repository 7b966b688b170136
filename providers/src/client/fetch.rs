//! The HTTP rules of the client side, in one place: HTTPS (plain HTTP only
//! on loopback), no redirect to another origin, bounded response bodies.

use std::net::IpAddr;

use reqwest::header::{ACCEPT, LOCATION};
use serde_json::Value;
use url::{Host, Url};

use crate::client::error::{ClientAuthError, MetadataDocument};
use crate::http::OAuthHttpClient;

/// Metadata documents and token responses are small; anything bigger is a
/// broken or hostile server.
const MAX_BODY_BYTES: usize = 1024 * 1024;
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
}

impl Fetcher {
    pub(crate) fn new(http: OAuthHttpClient, allow_insecure_http: bool) -> Self {
        Fetcher {
            http,
            allow_insecure_http,
        }
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        self.http.reqwest()
    }

    /// Refuses `url` unless it is https, or http on loopback (or anywhere,
    /// when insecure HTTP was allowed for development).
    pub(crate) fn check_url(&self, what: &'static str, url: &Url) -> Result<(), ClientAuthError> {
        match url.scheme() {
            "https" => Ok(()),
            "http" if self.allow_insecure_http || is_loopback(url) => Ok(()),
            _ => Err(ClientAuthError::InsecureUrl {
                what,
                url: url.to_string(),
            }),
        }
    }

    /// GETs a JSON metadata document, following same-origin redirects only.
    pub(crate) async fn get_json(
        &self,
        document: MetadataDocument,
        url: &Url,
        protocol_version_header: bool,
    ) -> Result<Fetched, ClientAuthError> {
        let mut current = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self
                .client()
                .get(current.clone())
                .header(ACCEPT, "application/json");
            if protocol_version_header {
                request = request.header("MCP-Protocol-Version", "2025-11-25");
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
        let fetcher = Fetcher::new(OAuthHttpClient::from_reqwest(reqwest::Client::new()), false);
        let ok = |u: &str| {
            fetcher
                .check_url("endpoint", &Url::parse(u).unwrap())
                .is_ok()
        };
        assert!(ok("https://as.example/token"));
        assert!(ok("http://127.0.0.1:9/token"));
        assert!(!ok("http://as.example/token"));
        assert!(!ok("ftp://as.example/token"));
        let lax = Fetcher::new(OAuthHttpClient::from_reqwest(reqwest::Client::new()), true);
        assert!(
            lax.check_url("endpoint", &Url::parse("http://as.example/").unwrap())
                .is_ok()
        );
    }
}
