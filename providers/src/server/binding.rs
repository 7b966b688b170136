//! The link handle and the browser binding of a sign-in flow.
//!
//! - The **link handle** is what the elicited URL carries: 256 random bits
//!   (the flow's elicitation id), nothing personal. The flow's OAuth `state`
//!   is derived from it one way, so the connect page finds the flow with a
//!   plain [`PendingStore::get_flow`](mcp_authkit_core::PendingStore::get_flow)
//!   on every backend and every replica, and the handle cannot be recovered
//!   from the `state` the authorization server and the callback URL see.
//! - The **browser binding** is a cookie the connect page sets on the
//!   browser it sends on to the provider. Its value is keyed by the flow's
//!   PKCE verifier (a secret that never leaves the server before the code
//!   exchange), and the flow stores only its SHA-256 digest. The callback
//!   refuses a response that does not bring it, so an authorize URL or a
//!   callback forwarded to another browser is useless.

use axum::http::HeaderValue;
use axum::http::header::{COOKIE, HeaderMap};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mcp_authkit_core::{ExposeSecret, FlowState, PendingFlow, Timestamp, random_urlsafe};
use sha2::{Digest, Sha256};

/// The flow attribute holding the digest of the browser secret.
pub(crate) const DIGEST_ATTRIBUTE: &str = "mcp-authkit.browser-binding";
/// Length of a handle this crate issues: 32 bytes in base64url.
const HANDLE_LEN: usize = 43;

/// A fresh link handle: 256 bits from the OS CSPRNG, base64url.
pub(crate) fn new_handle() -> String {
    random_urlsafe(32)
}

/// Whether `text` has the shape of a handle this crate issues. Anything
/// else is refused before the store is asked.
pub(crate) fn is_handle(text: &str) -> bool {
    text.len() == HANDLE_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The OAuth `state` of the flow `handle` stands for at `provider` (the
/// provider's name is mixed in, so one provider's link never finds another
/// provider's flow in a shared store).
pub(crate) fn state_for(provider: &str, handle: &str) -> FlowState {
    let digest = Sha256::new()
        .chain_update(b"mcp-authkit link state v1\0")
        .chain_update((provider.len() as u64).to_be_bytes())
        .chain_update(provider.as_bytes())
        .chain_update(handle.as_bytes())
        .finalize();
    FlowState::new(URL_SAFE_NO_PAD.encode(digest))
}

/// The browser secret of `flow`: HMAC-SHA256 keyed by its PKCE verifier
/// over its state. Only the server can compute it, and only while the flow
/// is pending.
fn browser_secret(flow: &PendingFlow) -> String {
    let mac = hmac_sha256(
        flow.pkce_verifier.expose_secret().as_bytes(),
        &[
            b"mcp-authkit browser binding v1\0",
            flow.state.as_str().as_bytes(),
        ],
    );
    URL_SAFE_NO_PAD.encode(mac)
}

/// What the flow stores: the digest of its browser secret.
pub(crate) fn digest_of_secret(secret: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes()))
}

/// Records the digest of `flow`'s browser secret in the flow, before it is
/// stored.
pub(crate) fn seal(flow: &mut PendingFlow) {
    let digest = digest_of_secret(&browser_secret(flow));
    flow.attributes.insert(DIGEST_ATTRIBUTE.to_owned(), digest);
}

/// HMAC (RFC 2104) with SHA-256.
fn hmac_sha256(key: &[u8], message: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new().chain_update(block.map(|b| b ^ 0x36));
    for part in message {
        inner.update(part);
    }
    Sha256::new()
        .chain_update(block.map(|b| b ^ 0x5c))
        .chain_update(inner.finalize())
        .finalize()
        .into()
}

/// Compares without an early exit, so timing does not reveal how much of a
/// guess matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where and how the binding cookies of one provider live.
#[derive(Clone, Debug)]
pub(crate) struct CookieJar {
    /// The directory shared by the connect page and the callback.
    path: String,
    /// `Secure` and the `__Secure-` prefix (the connect page is https).
    secure: bool,
}

/// What the callback found in the request's cookies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Presented {
    /// A cookie of this flow with the right secret.
    Valid,
    /// No cookie of this flow.
    Missing,
    /// A cookie of this flow with another value (or a flow without a
    /// binding: one not begun through the provider).
    Wrong,
}

impl CookieJar {
    /// Cookies for a provider whose connect page and callback live at these
    /// paths.
    pub(crate) fn new(connect_path: &str, callback_path: &str, secure: bool) -> Self {
        CookieJar {
            path: common_directory(connect_path, callback_path),
            secure,
        }
    }

    /// The cookie's name for the flow with `state`: distinct per flow, so
    /// two flows in one browser (two providers, two users) never overwrite
    /// each other's binding; it reveals neither the state nor the handle.
    pub(crate) fn name(&self, state: &FlowState) -> String {
        let digest = Sha256::new()
            .chain_update(b"mcp-authkit binding cookie name v1\0")
            .chain_update(state.as_str().as_bytes())
            .finalize();
        let id = URL_SAFE_NO_PAD.encode(&digest[..16]);
        if self.secure {
            format!("__Secure-mcp-authkit-{id}")
        } else {
            format!("mcp-authkit-{id}")
        }
    }

    /// The `Set-Cookie` that binds this browser to `flow` until the flow
    /// expires.
    pub(crate) fn bind(&self, flow: &PendingFlow, now: Timestamp) -> HeaderValue {
        let remaining = flow.expires_at.saturating_duration_since(now);
        // Whole seconds, rounded up: the cookie must not die before the flow.
        let max_age = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
        self.header(
            &self.name(&flow.state),
            &browser_secret(flow),
            max_age.max(1),
        )
    }

    /// The `Set-Cookie` that removes the binding of the flow with `state`.
    pub(crate) fn unbind(&self, state: &FlowState) -> HeaderValue {
        self.header(&self.name(state), "", 0)
    }

    fn header(&self, name: &str, value: &str, max_age: u64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let text = format!(
            "{name}={value}; Path={}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}",
            self.path
        );
        // Names and values are base64url, the path comes from a parsed URL.
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
    }

    /// Whether the request brings `flow`'s binding. Every cookie of that
    /// name is compared (a browser may send several), each in constant time
    /// against the digest stored in the flow.
    pub(crate) fn check(&self, headers: &HeaderMap, flow: &PendingFlow) -> Presented {
        let name = self.name(&flow.state);
        let mut values = cookie_values(headers, &name).peekable();
        if values.peek().is_none() {
            return Presented::Missing;
        }
        let Some(expected) = flow.attributes.get(DIGEST_ATTRIBUTE) else {
            return Presented::Wrong;
        };
        let mut valid = false;
        for value in values {
            valid |= constant_time_eq(digest_of_secret(value).as_bytes(), expected.as_bytes());
        }
        if valid {
            Presented::Valid
        } else {
            Presented::Wrong
        }
    }
}

/// The values of every cookie called `name` in the request's `Cookie`
/// headers (HTTP/2 may split them into several).
pub(crate) fn cookie_values<'h>(
    headers: &'h HeaderMap,
    name: &'h str,
) -> impl Iterator<Item = &'h str> + 'h {
    headers
        .get_all(COOKIE)
        .into_iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(move |pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// The longest directory both paths are in (`/oauth/github` for
/// `/oauth/github/connect` and `/oauth/github/callback`), `/` at least.
fn common_directory(a: &str, b: &str) -> String {
    let directory = |path: &str| -> Vec<String> {
        let mut segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        segments.pop();
        segments
    };
    let shared: Vec<String> = directory(a)
        .into_iter()
        .zip(directory(b))
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect();
    format!("/{}", shared.join("/"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mcp_authkit_core::TokenKey;

    use super::*;

    fn flow() -> PendingFlow {
        let mut flow = PendingFlow::new(
            TokenKey::new("github", "alice"),
            "https://mcp.example.com/oauth/github/callback",
            vec![],
            Timestamp::from_unix_millis(1_000),
            Duration::from_secs(600),
        );
        flow.elicitation_id = new_handle();
        flow.state = state_for("github", &flow.elicitation_id);
        seal(&mut flow);
        flow
    }

    #[test]
    fn hmac_matches_rfc4231_test_cases() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            URL_SAFE_NO_PAD.encode(mac),
            URL_SAFE_NO_PAD.encode([
                0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95,
                0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9,
                0x64, 0xec, 0x38, 0x43,
            ])
        );
        // Test case 6: a key longer than the block is hashed first.
        let mac = hmac_sha256(
            &[0xaa; 131],
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(mac[..8], [0x60, 0xe4, 0x31, 0x59, 0x1e, 0xe0, 0xb6, 0x7f]);
    }

    #[test]
    fn handles_are_long_random_and_map_one_way_to_distinct_states() {
        let (a, b) = (new_handle(), new_handle());
        assert_ne!(a, b);
        assert!(is_handle(&a) && is_handle(&b));
        assert_ne!(state_for("github", &a), state_for("github", &b));
        assert_eq!(state_for("github", &a), state_for("github", &a));
        assert_ne!(
            state_for("github", &a),
            state_for("jira", &a),
            "per provider"
        );
        assert!(!state_for("github", &a).as_str().contains(&a));
        assert!(!is_handle("short"));
        assert!(!is_handle(&format!("{}=", &a[..42])));
    }

    #[test]
    fn the_cookie_binds_only_its_own_flow() {
        let jar = CookieJar::new("/oauth/github/connect", "/oauth/github/callback", false);
        let one = flow();
        let other = flow();
        let set = jar.bind(&one, Timestamp::from_unix_millis(1_000));
        let set = set.to_str().unwrap();
        assert!(
            set.ends_with("; Path=/oauth/github; Max-Age=600; HttpOnly; SameSite=Lax"),
            "{set}"
        );
        let (name, value) = set.split(';').next().unwrap().split_once('=').unwrap();
        assert_ne!(name, jar.name(&other.state), "a name per flow");
        assert!(!set.contains(one.state.as_str()) && !set.contains(&one.elicitation_id));

        let request = |cookie: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
            headers
        };
        let good = request(&format!("other=1; {name}={value}"));
        assert_eq!(jar.check(&good, &one), Presented::Valid);
        assert_eq!(jar.check(&good, &other), Presented::Missing);
        assert_eq!(jar.check(&HeaderMap::new(), &one), Presented::Missing);
        let wrong = request(&format!("{name}=x{}", &value[1..]));
        assert_eq!(jar.check(&wrong, &one), Presented::Wrong);
        // Another flow's value under this flow's name.
        let other_value = jar.bind(&other, Timestamp::from_unix_millis(1_000));
        let other_value = other_value.to_str().unwrap().split(';').next().unwrap();
        let moved = request(&format!(
            "{name}={}",
            other_value.split_once('=').unwrap().1
        ));
        assert_eq!(jar.check(&moved, &one), Presented::Wrong);
        // A planted duplicate does not hide the right one.
        let both = request(&format!("{name}=planted; {name}={value}"));
        assert_eq!(jar.check(&both, &one), Presented::Valid);
        // A flow without a stored digest is never bound.
        let mut unsealed = one.clone();
        unsealed.attributes.clear();
        assert_eq!(jar.check(&good, &unsealed), Presented::Wrong);

        let cleared = jar.unbind(&one.state);
        assert!(cleared.to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn https_cookies_are_secure_and_prefixed() {
        let jar = CookieJar::new("/a/connect", "/a/callback", true);
        let set = jar.bind(&flow(), Timestamp::from_unix_millis(1_500));
        let set = set.to_str().unwrap();
        assert!(set.starts_with("__Secure-mcp-authkit-"), "{set}");
        assert!(set.ends_with("; Secure"), "{set}");
        assert!(set.contains("Max-Age=600;"), "rounded up: {set}");
    }

    #[test]
    fn the_cookie_path_covers_both_routes() {
        assert_eq!(
            common_directory("/oauth/github/connect", "/oauth/github/callback"),
            "/oauth/github"
        );
        assert_eq!(common_directory("/connect", "/callback"), "/");
        assert_eq!(common_directory("/a/b/connect", "/a/cb"), "/a");
        assert_eq!(common_directory("/x/connect", "/y/callback"), "/");
    }
}
