//! How the token-request layer reads a token endpoint's answer (a server
//! the client does not control): no input panics it; a refused answer's
//! message quotes nothing of the body but the server's own `error` and
//! `error_description` (the body may hold a token); an accepted one has a
//! token type.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_authkit_providers::token_fuzzing;

/// A value only the body holds: an error message that contains it quoted
/// the body.
const MARKER: &str = "SECRETMARKER";

fuzz_target!(|data: &[u8]| {
    let (head, body) = data.split_at(data.len().min(3));
    let status = match head.first().copied().unwrap_or(0) % 6 {
        0 => 200,
        1 => 400,
        2 => 401,
        3 => 429,
        4 => 503,
        _ => 302,
    };
    let content_type = match head.get(1).copied().unwrap_or(0) % 3 {
        0 => Some("application/json"),
        1 => Some("text/html"),
        _ => None,
    };
    // Put the marker where a token would be.
    let text = String::from_utf8_lossy(body).replace("$", MARKER);
    match token_fuzzing::read_answer(status, content_type, text.as_bytes()) {
        Ok((token_type, _refresh, _expires_in, _scopes)) => {
            assert!(
                !token_type.is_empty() || text.contains("\"token_type\""),
                "{text:?}"
            );
        }
        Err(message) => {
            // Only what the server said about the error may be repeated.
            let said = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .map(|body| {
                    ["error", "error_description"]
                        .iter()
                        .filter_map(|field| body.get(field)?.as_str().map(str::to_owned))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            assert!(
                !message.contains(MARKER) || said.contains(MARKER),
                "quoted the body: {message} <- {text:?}"
            );
        }
    }
});
