//! The query parser of the connect and callback routes: no input panics
//! it; whatever it accepts, a standard form decoder reads the same way (it
//! refuses, never guesses); the connect page accepts only handles the
//! server could have issued.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_authkit_providers::server::fuzzing;

fuzz_target!(|data: &[u8]| {
    // Request targets reach the routes as text.
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(strict) = fuzzing::parse_query(raw, 1 << 20) {
        let mut lenient: Vec<(String, String)> = url::form_urlencoded::parse(raw.as_bytes())
            .into_owned()
            .collect();
        lenient.sort();
        assert_eq!(strict, lenient, "read differently: {raw:?}");
    }
    if let Some(handle) = fuzzing::read_connect(raw) {
        assert_eq!(handle.len(), 43, "{raw:?}");
        assert!(
            handle
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{raw:?}"
        );
    }
});
