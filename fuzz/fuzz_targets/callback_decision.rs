//! The callback's first decision: given any query and any `Cookie` header,
//! a flow goes on (completed, or ended as malformed) only when the query
//! names it and the browser brings its binding cookie. The cookie's value
//! is a keyed hash the fuzzer cannot learn, so "goes on" must mean that the
//! input carried the value spliced in by the first byte's flags.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mcp_authkit_providers::server::fuzzing::{CallbackFixture, Decision};

fn fixture() -> &'static CallbackFixture {
    static FIXTURE: OnceLock<CallbackFixture> = OnceLock::new();
    FIXTURE.get_or_init(CallbackFixture::new)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    // Query and cookie header, split at the first 0xFF (never in UTF-8).
    let (query, cookie) = match rest.iter().position(|&b| b == 0xFF) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let mut query = query.to_owned();
    if flags & 1 != 0 {
        query = format!("state={}&{query}", fixture.state());
    }
    if flags & 2 != 0 {
        query.push_str("&code=c");
    }
    let mut cookie = cookie.to_vec();
    let right = format!("{}={}", fixture.cookie_name(), fixture.cookie_value());
    if flags & 4 != 0 {
        cookie.extend_from_slice(format!("; {right}").as_bytes());
    }
    if flags & 8 != 0 {
        let wrong = format!("; {}=x{}", fixture.cookie_name(), fixture.cookie_value());
        cookie.extend_from_slice(wrong.as_bytes());
    }
    let decision = fixture.decide(&query, &cookie);
    if matches!(decision, Decision::Complete | Decision::AbandonMalformed) {
        assert!(
            flags & 4 != 0,
            "went on without the binding: {query:?} {cookie:?}"
        );
        let names_flow = url::form_urlencoded::parse(query.as_bytes())
            .any(|(name, value)| name == "state" && value == fixture.state());
        assert!(names_flow, "went on for another flow: {query:?}");
    }
});
