//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): the
//! parts of the sign-in routes an attacker controls, as plain functions.
//! Not a stable API.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use mcp_authkit_core::{PendingFlow, Timestamp, TokenKey};

use super::binding::{self, CookieJar};
use super::query::Query;
use super::routes::{self, Gate};

/// The strict query parser: every parameter once, sorted by name, or why
/// the query was refused.
pub fn parse_query(raw: &str, limit: usize) -> Result<Vec<(String, String)>, String> {
    let query = Query::parse(Some(raw), limit).map_err(|error| error.to_string())?;
    let mut pairs: Vec<(String, String)> = query
        .pairs()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    pairs.sort();
    Ok(pairs)
}

/// The connect page's reading of its query: the link handle, if any.
pub fn read_connect(raw: &str) -> Option<String> {
    routes::read_connect(Some(raw)).ok()
}

/// What the callback decided before touching anything but one store read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing in the query names a flow.
    Unusable,
    /// The state names no pending flow.
    UnknownFlow,
    /// The flow's browser binding is missing or wrong: refused.
    OtherBrowser,
    /// Bound, and the response is readable: the flow would be completed.
    Complete,
    /// Bound, and the response is malformed: the flow would end as failed.
    AbandonMalformed,
}

/// One pending flow, sealed as the provider seals it, to decide callbacks
/// against.
pub struct CallbackFixture {
    flow: PendingFlow,
    cookies: CookieJar,
    name: String,
    value: String,
}

impl Default for CallbackFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl CallbackFixture {
    /// A fresh flow of provider `github` for `alice`.
    pub fn new() -> Self {
        let now = Timestamp::from_unix_millis(1_000_000);
        let mut flow = PendingFlow::new(
            TokenKey::new("github", "alice"),
            "http://127.0.0.1/oauth/github/callback",
            vec!["repo".into()],
            now,
            Duration::from_secs(600),
        );
        flow.elicitation_id = binding::new_handle();
        flow.state = binding::state_for("github", &flow.elicitation_id);
        binding::seal(&mut flow);
        let cookies = CookieJar::new("/oauth/github/connect", "/oauth/github/callback", false);
        let set = cookies.bind(&flow, now);
        let pair = set
            .to_str()
            .ok()
            .and_then(|text| text.split(';').next())
            .and_then(|pair| pair.split_once('='))
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .unwrap_or_default();
        CallbackFixture {
            flow,
            cookies,
            name: pair.0,
            value: pair.1,
        }
    }

    /// The flow's OAuth state.
    pub fn state(&self) -> &str {
        self.flow.state.as_str()
    }

    /// The name of the flow's binding cookie.
    pub fn cookie_name(&self) -> &str {
        &self.name
    }

    /// The value of the flow's binding cookie.
    pub fn cookie_value(&self) -> &str {
        &self.value
    }

    /// The callback's decision for a raw query and raw `Cookie` header
    /// bytes (an unusable header value is no header).
    pub fn decide(&self, query: &str, cookie: &[u8]) -> Decision {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(cookie) {
            headers.insert(header::COOKIE, value);
        }
        let read = routes::read_callback(Some(query));
        // The store holds exactly this one flow.
        let found = read
            .state()
            .filter(|state| **state == self.flow.state)
            .map(|_| &self.flow);
        match routes::gate(&read, found, &self.cookies, &headers) {
            Gate::Unusable => Decision::Unusable,
            Gate::UnknownFlow => Decision::UnknownFlow,
            Gate::OtherBrowser(_) => Decision::OtherBrowser,
            Gate::Bound(_) => match read {
                routes::CallbackQuery::Response(_) => Decision::Complete,
                _ => Decision::AbandonMalformed,
            },
        }
    }
}
