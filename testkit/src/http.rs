//! Request parameter parsing and the response shapes every endpoint shares.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use url::Url;

/// Parameters of a query string or form body, in order.
#[derive(Clone, Default)]
pub(crate) struct Params(pub(crate) Vec<(String, String)>);

/// A parameter sent more than once where RFC 6749 allows one.
pub(crate) struct Repeated(pub(crate) &'static str);

impl Params {
    pub(crate) fn parse(encoded: &[u8]) -> Self {
        Params(
            url::form_urlencoded::parse(encoded)
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect(),
        )
    }

    /// The one value of `name`. Empty values count as absent (RFC 6749
    /// section 3.1); a repeated parameter is an error (section 3.1 too).
    pub(crate) fn single(&self, name: &'static str) -> Result<Option<&str>, Repeated> {
        let mut found = self
            .0
            .iter()
            .filter(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str());
        let first = found.next();
        if found.next().is_some() {
            return Err(Repeated(name));
        }
        Ok(first)
    }

    /// Every non-empty value of `name` (`resource` may repeat, RFC 8707).
    pub(crate) fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// An OAuth error as the token, registration and introspection endpoints
/// return it (RFC 6749 section 5.2, RFC 7591 section 3.2.2).
#[derive(Debug, Clone)]
pub(crate) struct OAuthFailure {
    pub(crate) status: StatusCode,
    pub(crate) error: String,
    pub(crate) description: String,
    /// Answer with `WWW-Authenticate: Basic` (the client tried Basic auth).
    pub(crate) basic_challenge: bool,
}

impl OAuthFailure {
    pub(crate) fn new(error: &str, description: impl Into<String>) -> Self {
        let status = if error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        OAuthFailure {
            status,
            error: error.to_owned(),
            description: description.into(),
            basic_challenge: false,
        }
    }

    pub(crate) fn invalid_request(description: impl Into<String>) -> Self {
        Self::new("invalid_request", description)
    }

    pub(crate) fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new("invalid_grant", description)
    }

    pub(crate) fn invalid_client(description: impl Into<String>) -> Self {
        Self::new("invalid_client", description)
    }

    pub(crate) fn repeated(repeated: Repeated) -> Self {
        Self::invalid_request(format!("parameter {} was sent more than once", repeated.0))
    }
}

impl IntoResponse for OAuthFailure {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.error,
            "error_description": self.description,
        });
        let mut response = json(self.status, &body);
        if self.basic_challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"mcp-authkit-testkit\""),
            );
        }
        response
    }
}

/// A JSON response that no cache keeps (RFC 6749 section 5.1).
pub(crate) fn json(status: StatusCode, body: &Value) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    (status, headers, body.to_string()).into_response()
}

/// A body that claims to be JSON and is not.
pub(crate) fn malformed_json() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{\"access_token\": \"truncated",
    )
        .into_response()
}

/// A plain-text answer with `status`, as a failing proxy or server sends.
pub(crate) fn plain_status(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text.to_owned(),
    )
        .into_response()
}

/// A small HTML page.
pub(crate) fn html(status: StatusCode, title: &str, body_html: &str) -> Response {
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\
         <body><h1>{}</h1>\n{}\n</body></html>\n",
        escape_html(title),
        escape_html(title),
        body_html
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

/// A `302 Found` to `location`.
pub(crate) fn found(location: &Url) -> Response {
    match HeaderValue::from_str(location.as_str()) {
        Ok(value) => (
            StatusCode::FOUND,
            [(header::LOCATION, value)],
            String::new(),
        )
            .into_response(),
        // A parsed Url is ASCII, so this does not happen; never redirect
        // to something the server could not express.
        Err(_) => plain_status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unrepresentable location",
        ),
    }
}

pub(crate) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Headers as owned pairs, for the request log.
pub(crate) fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// An absolute URL without a fragment, as redirect URIs and resource
/// indicators must be.
pub(crate) fn absolute_uri(value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| format!("{value:?} is not an absolute URI: {e}"))?;
    if url.fragment().is_some() {
        return Err(format!("{value:?} must not contain a fragment"));
    }
    Ok(url)
}

/// Space-separated scopes, deduplicated in order.
pub(crate) fn split_scopes(scope: &str) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    for s in scope.split(' ').filter(|s| !s.is_empty()) {
        if !scopes.iter().any(|known| known == s) {
            scopes.push(s.to_owned());
        }
    }
    scopes
}
