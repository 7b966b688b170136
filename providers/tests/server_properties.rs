//! Property tests of the sign-in routes (stable, in CI; the fuzz targets in
//! `fuzz/` explore the same ground longer): thousands of generated queries
//! and cookie headers against the real routes over HTTP. None makes a
//! route panic or answer anything but a page; none takes a flow, exchanges
//! a code or stores a token unless it names the flow's state and brings
//! the flow's binding cookie.
//!
//! The generator is seeded: set `ROUTE_PROPERTY_SEED` to replay a run, and
//! `ROUTE_PROPERTY_CASES` for more cases.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mcp_authkit_core::{
    AuthorizationRequest, FlowState, OAuthClient, OAuthError, OAuthErrorKind, PendingFlow,
    PendingStore, SecretString, TokenResponse,
};
use mcp_authkit_providers::server::{OAuthProvider, PendingAuthorization};
use mcp_authkit_store_memory::MemoryStore;
use url::Url;

/// An OAuth client that accepts every code, counting exchanges: whatever
/// reaches it would be stored.
struct AcceptsAnyCode {
    exchanges: Arc<AtomicUsize>,
}

#[mcp_authkit_core::async_trait]
impl OAuthClient for AcceptsAnyCode {
    fn authorization_url(&self, request: &AuthorizationRequest<'_>) -> Result<Url, OAuthError> {
        let mut url = Url::parse("https://as.example/authorize").unwrap();
        url.query_pairs_mut()
            .append_pair("state", request.state.as_str());
        Ok(url)
    }

    async fn exchange_code(
        &self,
        _code: &SecretString,
        _flow: &PendingFlow,
    ) -> Result<TokenResponse, OAuthError> {
        self.exchanges.fetch_add(1, Ordering::SeqCst);
        Ok(TokenResponse::new("a-token"))
    }

    async fn refresh(
        &self,
        _refresh_token: &SecretString,
        _scopes: &[String],
    ) -> Result<TokenResponse, OAuthError> {
        Err(OAuthError::new(OAuthErrorKind::Other, "no refresh"))
    }
}

/// SplitMix64: small, seedable, good enough to spread cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// What the current flow's request could name or bring.
struct Known {
    state: String,
    handle: String,
    cookie_name: String,
    cookie_value: String,
}

fn value(rng: &mut Rng, known: &Known) -> String {
    match rng.below(12) {
        0 => known.state.clone(),
        1 => known.handle.clone(),
        2 => String::new(),
        3 => "%".into(),
        4 => rng
            .pick(&["%zz", "%ff%fe", "%4", "%00", "%0A%0D"])
            .to_string(),
        5 => "x".repeat(
            rng.pick(&[127, 128, 129, 2047, 2049, 8193, 17000])
                .to_owned(),
        ),
        6 => format!("{}x", known.state),
        7 => known.state[..known.state.len() - 1].to_owned(),
        8 => rng
            .pick(&["access_denied", "bad\"code", "ünicode", "a b", "<script>"])
            .to_string(),
        9 => known.state.replace('-', "%2D"),
        _ => {
            let len = rng.below(40);
            (0..len)
                .map(|_| {
                    let bytes = b"abcXYZ019-_.~+%&=;/?#\\\"' ";
                    bytes[rng.below(bytes.len())] as char
                })
                .collect()
        }
    }
}

fn query(rng: &mut Rng, known: &Known) -> String {
    let names = [
        "state",
        "code",
        "error",
        "error_description",
        "iss",
        "flow",
        "user",
        "x",
        "",
        "st%61te",
    ];
    let count = rng.below(6);
    let mut pairs = Vec::new();
    for _ in 0..count {
        let name = rng.pick(&names).to_string();
        let pair = if rng.chance(10) {
            name
        } else {
            format!("{name}={}", value(rng, known))
        };
        pairs.push(pair);
    }
    let joiner = rng.pick(&["&", "&", "&", "&&", ";"]).to_string();
    pairs.join(&joiner)
}

fn cookie(rng: &mut Rng, known: &Known) -> Option<String> {
    let right = format!("{}={}", known.cookie_name, known.cookie_value);
    let parts: Vec<String> = (0..rng.below(4))
        .map(|_| match rng.below(8) {
            0 => right.clone(),
            1 => format!("{}=x{}", known.cookie_name, known.cookie_value),
            2 => format!("{}={}", known.cookie_name, known.state),
            3 => format!("{}=\"{}\"", known.cookie_name, known.cookie_value),
            4 => format!("mcp-authkit-other={}", known.cookie_value),
            5 => format!("{}=", known.cookie_name),
            6 => "app=1".into(),
            _ => "=;;=".into(),
        })
        .collect();
    let separator = *rng.pick(&["; ", ";", " ; "]);
    (!parts.is_empty()).then(|| parts.join(separator))
}

struct Routes {
    base: String,
    provider: OAuthProvider,
    store: Arc<MemoryStore>,
    exchanges: Arc<AtomicUsize>,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Routes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Routes {
    async fn start() -> Routes {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let exchanges = Arc::new(AtomicUsize::new(0));
        let store = Arc::new(MemoryStore::new());
        let provider = OAuthProvider::builder("github", format!("{base}/oauth/github"))
            .client(AcceptsAnyCode {
                exchanges: exchanges.clone(),
            })
            .store(store.clone())
            .trust_link_holder()
            .build()
            .unwrap();
        let app = provider.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_only(Vec::<reqwest::Certificate>::new())
            .build()
            .unwrap();
        Routes {
            base,
            provider,
            store,
            exchanges,
            http,
            task,
        }
    }

    /// A new pending flow, and its binding as a browser gets it.
    async fn flow(&self, subject: &str) -> (PendingAuthorization, Known) {
        let pending = self
            .provider
            .begin_authorization(subject, None)
            .await
            .unwrap();
        let response = self
            .http
            .get(pending.connect_url().as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 303);
        let location = Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
        let state = location
            .query_pairs()
            .find(|(n, _)| n == "state")
            .unwrap()
            .1
            .into_owned();
        let set = response.headers()["set-cookie"].to_str().unwrap();
        let (name, value) = set.split(';').next().unwrap().split_once('=').unwrap();
        let handle = pending
            .connect_url()
            .query_pairs()
            .find(|(n, _)| n == "flow")
            .unwrap()
            .1
            .into_owned();
        let known = Known {
            state,
            handle,
            cookie_name: name.to_owned(),
            cookie_value: value.to_owned(),
        };
        (pending, known)
    }

    async fn get(&self, path: &str, query: &str, cookie: Option<&str>) -> (u16, String) {
        let mut request = self
            .http
            .get(format!("{}/oauth/github/{path}?{query}", self.base));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("the route answered nothing (a panic?) for {query:?}: {e}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        if status != 303 {
            assert_eq!(
                content_type.as_deref(),
                Some("text/html; charset=utf-8"),
                "{status} for {query:?}"
            );
        }
        (status, response.text().await.unwrap())
    }
}

fn seed() -> u64 {
    std::env::var("ROUTE_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0F12)
}

fn cases() -> usize {
    std::env::var("ROUTE_PROPERTY_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500)
}

/// Whether the request names the flow (its `state` parameter, as a
/// standard decoder reads it) and brings its exact binding cookie.
fn names_and_binds(query: &str, cookie: Option<&str>, known: &Known) -> bool {
    let names = url::form_urlencoded::parse(query.as_bytes())
        .any(|(name, value)| name == "state" && value == known.state);
    let binds = cookie.is_some_and(|cookie| {
        cookie.split(';').any(|pair| {
            pair.trim().split_once('=').is_some_and(|(n, v)| {
                n.trim() == known.cookie_name && v.trim().trim_matches('"') == known.cookie_value
            })
        })
    });
    names && binds
}

#[tokio::test]
async fn no_callback_without_state_and_binding_takes_a_flow_or_stores_a_token() {
    let routes = Routes::start().await;
    let seed = seed();
    let mut rng = Rng(seed);
    let (mut pending, mut known) = routes.flow("alice").await;
    let mut went_on = 0;
    for case in 0..cases() {
        let query = query(&mut rng, &known);
        let cookie = cookie(&mut rng, &known);
        let exchanges = routes.exchanges.load(Ordering::SeqCst);
        let (status, body) = routes.get("callback", &query, cookie.as_deref()).await;
        assert!(
            [200, 400, 403, 502].contains(&status),
            "seed {seed} case {case}: {status} for {query:?} {cookie:?}: {body}"
        );
        let state = FlowState::new(known.state.clone());
        let intact = routes.store.get_flow(&state).await.unwrap().is_some();
        let stored = routes.provider.token("alice").await.unwrap().is_some();
        let exchanged = routes.exchanges.load(Ordering::SeqCst) > exchanges;
        if !intact || stored || exchanged {
            assert!(
                names_and_binds(&query, cookie.as_deref(), &known),
                "seed {seed} case {case}: the flow went on (taken: {}, stored: {stored}, \
                 exchanged: {exchanged}) for {query:?} with {cookie:?}",
                !intact
            );
            went_on += 1;
            routes.provider.invalidate_token("alice").await.unwrap();
            let _ = routes
                .provider
                .abandon_authorization(
                    &pending,
                    mcp_authkit_core::FlowOutcome::Failed {
                        reason: "next case".into(),
                    },
                )
                .await;
            (pending, known) = routes.flow("alice").await;
        }
    }
    // The generator reaches the path where a flow rightly goes on.
    assert!(
        went_on > 0,
        "seed {seed}: no case named the flow with its binding"
    );
    println!(
        "seed {seed}: {went_on} of {} cases rightly went on",
        cases()
    );
}

#[tokio::test]
async fn no_connect_query_panics_or_reveals_a_flow() {
    let routes = Routes::start().await;
    let seed = seed();
    let mut rng = Rng(seed ^ 0x00C0_FFEE);
    let (_pending, known) = routes.flow("alice").await;
    for case in 0..cases() {
        let query = query(&mut rng, &known);
        let (status, body) = routes.get("connect", &query, None).await;
        assert!(
            [303, 400, 404].contains(&status),
            "seed {seed} case {case}: {status} for {query:?}: {body}"
        );
        assert!(!body.contains("alice"), "seed {seed} case {case}: {body}");
        if status == 303 {
            let handle = url::form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| name == "flow")
                .map(|(_, value)| value.into_owned());
            assert_eq!(
                handle.as_deref(),
                Some(known.handle.as_str()),
                "seed {seed} case {case}: sent on without the flow's handle: {query:?}"
            );
        }
    }
    assert!(routes.exchanges.load(Ordering::SeqCst) == 0);
}
