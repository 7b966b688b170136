//! The small HTML pages the connect and callback routes answer with.
//!
//! Every value that reaches a page passes through [`escape`]: callback
//! parameters (`error_description` in particular) are attacker-controlled.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Escapes text for HTML element content and double- or single-quoted
/// attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters have no business on the page.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A page: a title, a message and optional details, all plain text.
pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) title: String,
    pub(crate) message: String,
    pub(crate) details: Option<String>,
}

impl Page {
    pub(crate) fn new(
        status: StatusCode,
        title: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Page {
            status,
            title: title.into(),
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    pub(crate) fn render(&self) -> String {
        let details = self
            .details
            .as_deref()
            .map(|d| format!("<p class=\"details\">{}</p>", escape(d)))
            .unwrap_or_default();
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title}</title><style>body{{font-family:system-ui,sans-serif;max-width:36rem;\
             margin:4rem auto;padding:0 1rem;line-height:1.5}}.details{{color:#555;\
             font-size:.9rem;white-space:pre-wrap;overflow-wrap:anywhere}}</style></head>\
             <body><h1>{title}</h1><p>{message}</p>{details}</body></html>\n",
            title = escape(&self.title),
            message = escape(&self.message),
        )
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.render()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        secure_headers(headers);
        response
    }
}

/// Headers for every answer of the routes: no caching (the URLs carry
/// one-time values), no referrer (so they do not leak onward), no scripts.
pub(crate) fn secure_headers(headers: &mut axum::http::HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'none'",
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(escape("a\u{0}b"), "a\u{FFFD}b");
    }

    #[test]
    fn pages_escape_every_value() {
        let page = Page::new(StatusCode::BAD_REQUEST, "<t>", "<m>").details("<d>");
        let html = page.render();
        assert!(!html.contains("<t>") && !html.contains("<m>") && !html.contains("<d>"));
        assert!(html.contains("&lt;d&gt;"));
    }
}
