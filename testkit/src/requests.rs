//! The log of requests the server received, for assertions on what a
//! client under test sent.

use std::fmt;

use serde_json::Value;

use crate::failure::Endpoint;
use crate::secret::{is_secret_header, is_secret_param, redact_pairs};

/// One request the server received.
///
/// Accessors return values as sent, secrets included: asserting that a
/// client sent the right `code_verifier` or `resource` is the point. Debug
/// output redacts codes, tokens, verifiers, secrets and the
/// `Authorization` and `Cookie` headers.
#[derive(Clone)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// The endpoint (for a token request, [`Endpoint::Token`]).
    pub endpoint: Endpoint,
    /// For a token request, the grant's endpoint variant, when known.
    pub grant: Option<Endpoint>,
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request path.
    pub path: String,
    /// Query parameters, in order.
    pub query: Vec<(String, String)>,
    /// Form body parameters, in order (token, introspection, consent).
    pub form: Vec<(String, String)>,
    /// A JSON body (registration), when it parsed.
    pub json: Option<Value>,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// Whether this request counts for `endpoint`.
    pub fn is(&self, endpoint: Endpoint) -> bool {
        self.endpoint == endpoint || self.grant == Some(endpoint)
    }

    /// The first value of `name`, from the query, else the form body.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .chain(&self.form)
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name` (query, then form body), e.g. each `resource`.
    pub fn params(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .chain(&self.form)
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for RecordedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordedRequest")
            .field("endpoint", &self.endpoint)
            .field("grant", &self.grant)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &redact_pairs(&self.query, is_secret_param))
            .field("form", &redact_pairs(&self.form, is_secret_param))
            .field("json", &self.json.as_ref().map(|_| "{..}"))
            .field("headers", &redact_pairs(&self.headers, is_secret_header))
            .finish()
    }
}

impl RecordedRequest {
    pub(crate) fn new(
        endpoint: Endpoint,
        method: &axum::http::Method,
        uri: &axum::http::Uri,
        headers: &axum::http::HeaderMap,
    ) -> Self {
        RecordedRequest {
            endpoint,
            grant: None,
            method: method.as_str().to_owned(),
            path: uri.path().to_owned(),
            query: uri
                .query()
                .map(|q| crate::http::Params::parse(q.as_bytes()).0)
                .unwrap_or_default(),
            form: Vec::new(),
            json: None,
            headers: crate::http::header_pairs(headers),
        }
    }

    pub(crate) fn grant(mut self, grant: Option<Endpoint>) -> Self {
        self.grant = grant;
        self
    }

    pub(crate) fn form(mut self, form: &crate::http::Params) -> Self {
        self.form = form.0.clone();
        self
    }

    pub(crate) fn json(mut self, json: Option<Value>) -> Self {
        self.json = json;
        self
    }
}
