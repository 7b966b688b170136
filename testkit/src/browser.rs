//! A headless "browser" for tests: follows a URL through its redirects hop
//! by hop, keeps cookies, and can stop before an origin to read a redirect
//! (for example the authorization code) without requesting it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::authorization::AuthorizationResponse;
use crate::authorize::USER_HEADER;
use crate::error::Error;
use crate::secret::redact_url;
use crate::transport::Clients;

/// A scripted browser.
///
/// Each navigation ([`get`](Self::get), [`post_form`](Self::post_form))
/// sends the request with redirects disabled, then follows `Location`
/// itself, recording every [`Hop`]. `301`/`302`/`303` continue with `GET`;
/// `307`/`308` repeat the method and form. Cookies set by responses are
/// sent back like a browser profile does: to the same origin, on paths
/// under their `Path`, until their `Max-Age` runs out, `Secure` ones over
/// https only. Clones share the jar; [`with_new_cookie_jar`](Self::with_new_cookie_jar)
/// starts another profile.
///
/// ```
/// # async fn demo() -> Result<(), mcp_authkit_testkit::Error> {
/// use mcp_authkit_testkit::Browser;
/// let client_origin = url::Url::parse("http://127.0.0.1:4000/").unwrap();
/// let browser = Browser::new()
///     .with_user("alice")               // the signed-in user at the test server
///     .stop_before(&client_origin);     // do not call the client's redirect URI
/// # let authorization_url = client_origin.clone();
/// let navigation = browser.get(authorization_url.as_str()).await?;
/// let response = navigation.authorization_response();
/// # let _ = response;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Browser {
    http: Arc<Clients>,
    headers: HeaderMap,
    cookies: Vec<(String, String)>,
    stop_before: Vec<url::Origin>,
    max_redirects: usize,
    timeout: Duration,
    jar: Arc<Mutex<CookieJar>>,
}

/// Cookies per origin (ASCII serialization).
type CookieJar = HashMap<String, Vec<StoredCookie>>;

/// A cookie a response set.
#[derive(Clone)]
struct StoredCookie {
    name: String,
    value: String,
    path: String,
    expires: Option<Instant>,
    secure: bool,
}

impl StoredCookie {
    fn applies_to(&self, url: &Url, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
            && (!self.secure || url.scheme() == "https")
            && path_matches(url.path(), &self.path)
    }
}

/// RFC 6265 section 5.1.4: the cookie path is the request path or one of
/// its directories.
fn path_matches(request: &str, cookie: &str) -> bool {
    request == cookie
        || (request.starts_with(cookie)
            && (cookie.ends_with('/') || request[cookie.len()..].starts_with('/')))
}

/// RFC 6265 section 5.1.4: a cookie without `Path` belongs to the request
/// path's directory.
fn default_path(request: &str) -> String {
    match request.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(last) => request[..last].to_owned(),
    }
}

impl Browser {
    /// A browser with no extra headers, following up to 20 redirects, each
    /// request timing out after 10 s.
    pub fn new() -> Self {
        Browser {
            http: Arc::new(Clients::new(None)),
            headers: HeaderMap::new(),
            cookies: Vec::new(),
            stop_before: Vec::new(),
            max_redirects: 20,
            timeout: Duration::from_secs(10),
            jar: Arc::default(),
        }
    }

    /// Sends this header with every request.
    ///
    /// # Panics
    ///
    /// If `name` or `value` is not a valid header name or value: a typo in
    /// the test itself.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|_| panic!("{name:?} is not a valid header name"));
        let value = HeaderValue::from_str(value)
            .unwrap_or_else(|_| panic!("the value for header {name} is not a valid header value"));
        self.headers.append(name, value);
        self
    }

    /// Signs in as `subject` at the test server ([`USER_HEADER`]).
    pub fn with_user(self, subject: &str) -> Self {
        self.with_header(USER_HEADER, subject)
    }

    /// Sends this cookie to every origin.
    pub fn with_cookie(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.cookies.push((name.into(), value.into()));
        self
    }

    /// The same browser with an empty cookie jar of its own, like a second
    /// browser profile (it keeps the headers, settings and connections;
    /// clones made from it share the new jar).
    pub fn with_new_cookie_jar(mut self) -> Self {
        self.jar = Arc::default();
        self
    }

    /// `(name, value)` of the cookies set by responses that a request to
    /// `url` would carry now (not those of [`with_cookie`](Self::with_cookie)).
    ///
    /// # Panics
    ///
    /// If `url` is not a URL: a typo in the test itself.
    pub fn stored_cookies(&self, url: &str) -> Vec<(String, String)> {
        let url = Url::parse(url).unwrap_or_else(|e| panic!("{url:?} is not a URL: {e}"));
        self.jar_cookies(&url)
    }

    /// Stops before requesting any URL on `origin`'s origin (scheme, host
    /// and port); the navigation then ends [stopped](Navigation::stopped_at)
    /// at that URL. Use it to read the authorization response headlessly.
    pub fn stop_before(mut self, origin: &Url) -> Self {
        self.stop_before.push(origin.origin());
        self
    }

    /// The most redirects one navigation follows. Default 20.
    pub fn max_hops(mut self, max_redirects: usize) -> Self {
        self.max_redirects = max_redirects;
        self
    }

    /// The timeout of each request. Default 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Opens `url` and follows its redirects.
    pub async fn get(&self, url: &str) -> Result<Navigation, Error> {
        self.navigate(Method::GET, parse(url)?, None).await
    }

    /// Submits a form (`application/x-www-form-urlencoded`) to `url` and
    /// follows the redirects, as a browser submitting a form would.
    pub async fn post_form(&self, url: &str, fields: &[(&str, &str)]) -> Result<Navigation, Error> {
        let form = fields
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        self.navigate(Method::POST, parse(url)?, Some(form)).await
    }

    async fn navigate(
        &self,
        mut method: Method,
        mut url: Url,
        mut form: Option<Vec<(String, String)>>,
    ) -> Result<Navigation, Error> {
        let mut hops = Vec::new();
        loop {
            let origin = url.origin();
            if self.stop_before.contains(&origin) {
                return Ok(Navigation {
                    hops,
                    end: End::Stopped(url),
                });
            }
            if hops.len() > self.max_redirects {
                return Err(Error::TooManyRedirects {
                    limit: self.max_redirects,
                    url: redact_url(&url),
                });
            }
            let response = self.send(&method, &url, form.as_ref()).await?;
            let status = response.status();
            self.remember_cookies(&url, response.headers());
            let location = match response.headers().get(header::LOCATION) {
                Some(value) if status.is_redirection() => Some(location(&url, status, value)?),
                _ => None,
            };
            hops.push(Hop {
                method: method.clone(),
                url: url.clone(),
                status,
                location: location.clone(),
            });
            let Some(next) = location else {
                let headers = response.headers().clone();
                let body = response
                    .text()
                    .await
                    .map_err(|e| http_error(&method, &url, e))?;
                return Ok(Navigation {
                    hops,
                    end: End::Page(Page {
                        url,
                        status,
                        headers,
                        body,
                    }),
                });
            };
            if !matches!(status.as_u16(), 307 | 308) {
                method = Method::GET;
                form = None;
            }
            url = next;
        }
    }

    async fn send(
        &self,
        method: &Method,
        url: &Url,
        form: Option<&Vec<(String, String)>>,
    ) -> Result<reqwest::Response, Error> {
        let http = self
            .http
            .for_url(url)
            .map_err(|e| http_error(method, url, e))?;
        let mut request = http
            .request(method.clone(), url.clone())
            .headers(self.headers.clone())
            .timeout(self.timeout);
        if let Some(cookie) = self.cookie_header(url) {
            request = request.header(header::COOKIE, cookie);
        }
        if let Some(form) = form {
            request = request.form(form);
        }
        request.send().await.map_err(|e| http_error(method, url, e))
    }

    fn jar_cookies(&self, url: &Url) -> Vec<(String, String)> {
        let jar = self.jar.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut cookies: Vec<&StoredCookie> = jar
            .get(&url.origin().ascii_serialization())
            .into_iter()
            .flatten()
            .filter(|cookie| cookie.applies_to(url, now))
            .collect();
        // Longer paths first (RFC 6265 section 5.4); otherwise as set.
        cookies.sort_by_key(|cookie| std::cmp::Reverse(cookie.path.len()));
        cookies
            .into_iter()
            .map(|cookie| (cookie.name.clone(), cookie.value.clone()))
            .collect()
    }

    fn cookie_header(&self, url: &Url) -> Option<String> {
        let stored = self.jar_cookies(url);
        let pairs: Vec<String> = self
            .cookies
            .iter()
            .chain(&stored)
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }

    /// Keeps each `Set-Cookie` with its `Path`, `Max-Age` and `Secure`
    /// (`Expires` and `Domain` are ignored: cookies stay on their origin);
    /// an empty value or a `Max-Age` of zero or less deletes.
    fn remember_cookies(&self, url: &Url, headers: &HeaderMap) {
        let mut jar = self.jar.lock().unwrap_or_else(|p| p.into_inner());
        for value in headers.get_all(header::SET_COOKIE) {
            let Ok(value) = value.to_str() else { continue };
            let mut parts = value.split(';');
            let Some((name, cookie)) = parts.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let mut stored = StoredCookie {
                name: name.trim().to_owned(),
                value: cookie.trim().to_owned(),
                path: default_path(url.path()),
                expires: None,
                secure: false,
            };
            let mut deleted = stored.value.is_empty();
            for attribute in parts {
                let (key, value) = attribute.split_once('=').unwrap_or((attribute, ""));
                let (key, value) = (key.trim(), value.trim());
                if key.eq_ignore_ascii_case("path") && value.starts_with('/') {
                    stored.path = value.to_owned();
                } else if key.eq_ignore_ascii_case("max-age") {
                    match value.parse::<i64>() {
                        Ok(seconds) if seconds > 0 => {
                            stored.expires = Instant::now()
                                .checked_add(Duration::from_secs(seconds.unsigned_abs()));
                        }
                        Ok(_) => deleted = true,
                        Err(_) => {}
                    }
                } else if key.eq_ignore_ascii_case("secure") {
                    stored.secure = true;
                }
            }
            let cookies = jar.entry(url.origin().ascii_serialization()).or_default();
            cookies.retain(|c| !(c.name == stored.name && c.path == stored.path));
            if !deleted {
                cookies.push(stored);
            }
        }
    }
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("stop_before", &self.stop_before)
            .field("max_redirects", &self.max_redirects)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn parse(url: &str) -> Result<Url, Error> {
    Url::parse(url).map_err(|e| Error::InvalidInput {
        what: "url",
        reason: format!("{e}"),
    })
}

fn http_error(method: &Method, url: &Url, error: reqwest::Error) -> Error {
    Error::Http {
        method: method.to_string(),
        url: redact_url(url),
        source: error.without_url(),
    }
}

fn location(url: &Url, status: StatusCode, value: &HeaderValue) -> Result<Url, Error> {
    let bad = |reason: String| Error::BadLocation {
        url: redact_url(url),
        status: status.as_u16(),
        reason,
    };
    let value = value
        .to_str()
        .map_err(|_| bad("not visible ASCII".to_owned()))?;
    url.join(value).map_err(|e| bad(e.to_string()))
}

/// One request of a navigation.
#[derive(Clone)]
#[non_exhaustive]
pub struct Hop {
    /// The method used.
    pub method: Method,
    /// The URL requested.
    pub url: Url,
    /// The status it answered.
    pub status: StatusCode,
    /// Where it redirected, resolved against `url`.
    pub location: Option<Url>,
}

impl fmt::Debug for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hop")
            .field("method", &self.method)
            .field("url", &redact_url(&self.url))
            .field("status", &self.status)
            .field("location", &self.location.as_ref().map(redact_url))
            .finish()
    }
}

/// The response a navigation ended on.
#[derive(Clone)]
#[non_exhaustive]
pub struct Page {
    /// Its URL.
    pub url: Url,
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body, as text.
    pub body: String,
}

impl Page {
    /// The `value` of the first `<input name="NAME" value="...">` in the
    /// body. A small scanner for simple pages such as the consent page
    /// (double-quoted attributes), not an HTML parser.
    pub fn input_value(&self, name: &str) -> Option<String> {
        let wanted = format!("name=\"{name}\"");
        self.body
            .split("<input")
            .skip(1)
            .filter_map(|rest| rest.split('>').next())
            .find(|tag| tag.contains(&wanted))
            .and_then(|tag| {
                let start = tag.find("value=\"")? + "value=\"".len();
                let end = tag[start..].find('"')? + start;
                Some(unescape_html(&tag[start..end]))
            })
    }
}

fn unescape_html(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The body may hold anything, tokens included: show only its size.
        f.debug_struct("Page")
            .field("url", &redact_url(&self.url))
            .field("status", &self.status)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum End {
    Stopped(Url),
    Page(Page),
}

/// Where a navigation went, and where it ended: on a page, or stopped
/// before a URL on a [`stop_before`](Browser::stop_before) origin.
#[derive(Clone)]
pub struct Navigation {
    hops: Vec<Hop>,
    end: End,
}

impl Navigation {
    /// Every request made, in order (a stopped-at URL is not one).
    pub fn hops(&self) -> &[Hop] {
        &self.hops
    }

    /// The URL the navigation stopped before, if it stopped.
    pub fn stopped_at(&self) -> Option<&Url> {
        match &self.end {
            End::Stopped(url) => Some(url),
            End::Page(_) => None,
        }
    }

    /// The page it ended on, unless it stopped.
    pub fn page(&self) -> Option<&Page> {
        match &self.end {
            End::Page(page) => Some(page),
            End::Stopped(_) => None,
        }
    }

    /// The last URL: the stopped-at URL or the final page's URL.
    pub fn final_url(&self) -> &Url {
        match &self.end {
            End::Stopped(url) => url,
            End::Page(page) => &page.url,
        }
    }

    /// The authorization response parameters (`code`, `state`, `iss`,
    /// `error`) in the [final URL](Self::final_url).
    pub fn authorization_response(&self) -> AuthorizationResponse {
        AuthorizationResponse::from_url(self.final_url())
    }
}

impl fmt::Debug for Navigation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Navigation");
        debug.field("hops", &self.hops);
        match &self.end {
            End::Stopped(url) => debug.field("stopped_at", &redact_url(url)),
            End::Page(page) => debug.field("page", page),
        };
        debug.finish()
    }
}
