//! Client ID Metadata Documents: a client whose id is a URL publishes its
//! metadata there, and the server fetches and checks it.

use std::net::IpAddr;

use axum::http::{StatusCode, header};
use url::{Host, Url};

use crate::client::{ClientAuthMethod, ClientSource, RegisteredClient};
use crate::http::absolute_uri;
use crate::server::Shared;

/// Documents larger than this are refused (the draft suggests a small
/// limit; 5 KB is typical, tests get some slack).
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

pub(crate) fn is_url_client_id(client_id: &str) -> bool {
    client_id.starts_with("https://") || client_id.starts_with("http://")
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Fetches and checks the document at `client_id`; the error is a message
/// for the authorization error page.
pub(crate) async fn fetch_client(
    shared: &Shared,
    client_id: &str,
) -> Result<RegisteredClient, String> {
    let url = Url::parse(client_id)
        .map_err(|e| format!("client_id {client_id:?} is not a valid URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        _ => {
            return Err(format!(
                "client_id {client_id:?} must be an https URL (http only on loopback, for tests)"
            ));
        }
    }
    if url.path() == "/" || url.fragment().is_some() {
        return Err(format!(
            "client_id {client_id:?} must have a path and no fragment to be a metadata document URL"
        ));
    }

    shared.lock().client_metadata_fetches += 1;
    let failed =
        |what: String| format!("fetching the client metadata document {client_id}: {what}");
    let http = shared
        .http
        .for_url(&url)
        .map_err(|e| failed(format!("no HTTP client: {e}")))?;
    let response = http
        .get(url)
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| failed(e.without_url().to_string()))?;
    if response.status() != StatusCode::OK {
        return Err(failed(format!("HTTP {}", response.status())));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| failed(e.without_url().to_string()))?;
    if body.len() > MAX_DOCUMENT_BYTES {
        return Err(failed(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
    }
    let document: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| failed(format!("not JSON: {e}")))?;

    let document_id = document.get("client_id").and_then(|v| v.as_str());
    if document_id != Some(client_id) {
        return Err(failed(format!(
            "its client_id {document_id:?} is not the URL it was fetched from"
        )));
    }
    let redirect_uris: Vec<String> = document
        .get("redirect_uris")
        .and_then(|v| v.as_array())
        .map(|uris| {
            uris.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if redirect_uris.is_empty() {
        return Err(failed("it lists no redirect_uris".to_owned()));
    }
    for uri in &redirect_uris {
        absolute_uri(uri).map_err(|reason| failed(format!("bad redirect_uri: {reason}")))?;
    }
    match document
        .get("token_endpoint_auth_method")
        .and_then(|v| v.as_str())
    {
        None | Some("none") => {}
        Some(method @ ("client_secret_basic" | "client_secret_post" | "client_secret_jwt")) => {
            return Err(failed(format!(
                "token_endpoint_auth_method {method} uses a shared secret, which a metadata \
                 document client cannot have"
            )));
        }
        Some(other) => {
            return Err(failed(format!(
                "token_endpoint_auth_method {other:?} is not supported by this server (use none)"
            )));
        }
    }
    Ok(RegisteredClient {
        client_id: client_id.to_owned(),
        client_secret: None,
        redirect_uris,
        auth_method: ClientAuthMethod::None,
        name: document
            .get("client_name")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        source: ClientSource::MetadataDocument,
        secret_expires_at: None,
        public_key: None,
        id_jag_client_id: None,
    })
}
