//! The browser binding of the sign-in routes, tried as an attacker would:
//! the callback must come from the browser that passed the connect page of
//! its flow. Real HTTP throughout: the testkit's authorization server, the
//! provider's routes on loopback, and headless browsers with their own
//! cookie jars.

use std::sync::Arc;
use std::time::Duration;

use axum::http::request::Parts;
use mcp_authkit_core::{FlowState, ManualClock, PendingStore, TokenStore};
use mcp_authkit_providers::http::OAuthHttpClient;
use mcp_authkit_providers::server::{BrowserIdentity, OAuthProvider, PendingAuthorization};
use mcp_authkit_providers::standard::StandardOAuthClient;
use mcp_authkit_store_memory::MemoryStore;
use mcp_authkit_testkit::{Browser, ClientRegistration, Endpoint, TestAuthServer};
use url::Url;

/// The application's session, as a header a test browser sends; the last
/// value counts, so a clone of a browser can "sign in" as someone else.
const APP_USER: &str = "x-app-user";

fn app_user(parts: &Parts) -> BrowserIdentity {
    parts
        .headers
        .get_all(APP_USER)
        .iter()
        .next_back()
        .and_then(|value| value.to_str().ok())
        .map(|user| BrowserIdentity::SignedIn(user.to_owned()))
        .unwrap_or(BrowserIdentity::SignedOut)
}

fn plain_http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_only(Vec::<reqwest::Certificate>::new())
        .build()
        .unwrap()
}

/// Two providers (GitHub, Jira) of one MCP server over one memory store,
/// both played by the testkit's authorization server.
struct Site {
    auth: TestAuthServer,
    base: String,
    github: OAuthProvider,
    jira: OAuthProvider,
    store: Arc<dyn PendingStore>,
    clock: Arc<ManualClock>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Site {
    /// Over the memory store, on a clock the test moves.
    async fn start(trust_link_holder: bool) -> Site {
        let clock = Arc::new(ManualClock::starting_now());
        let store = Arc::new(MemoryStore::with_clock(clock.clone()));
        Site::start_on(trust_link_holder, clock, store.clone(), store).await
    }

    async fn start_on(
        trust_link_holder: bool,
        clock: Arc<ManualClock>,
        tokens: Arc<dyn TokenStore>,
        store: Arc<dyn PendingStore>,
    ) -> Site {
        let auth = TestAuthServer::start().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let provider = |name: &str, display: &str| {
            let provider_base = format!("{base}/oauth/{name}");
            let registered = auth
                .register_client(ClientRegistration::confidential(format!(
                    "{provider_base}/callback"
                )))
                .unwrap();
            let client = StandardOAuthClient::builder(
                registered.client_id,
                auth.authorization_endpoint().as_str(),
                auth.token_endpoint().as_str(),
            )
            .client_secret(registered.client_secret.unwrap())
            .issuer(auth.issuer())
            .http_client(OAuthHttpClient::from_reqwest(plain_http()))
            .build()
            .unwrap();
            let builder = OAuthProvider::builder(name, provider_base)
                .display_name(display)
                .client(client)
                .scopes(["repo"])
                .clock(clock.clone())
                .token_store(tokens.clone())
                .pending_store(store.clone());
            let builder = if trust_link_holder {
                builder.trust_link_holder()
            } else {
                builder.browser_user(app_user)
            };
            builder.build().unwrap()
        };
        let github = provider("github", "GitHub");
        let jira = provider("jira", "Jira");
        let app = github.router().merge(jira.router());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Site {
            auth,
            base,
            github,
            jira,
            store,
            clock,
            task,
        }
    }

    /// A browser profile of its own: signed in to the app as `user` and at
    /// the third party as `gh-{user}`.
    fn browser(&self, user: &str) -> Browser {
        Browser::new()
            .with_header(APP_USER, user)
            .with_user(&format!("gh-{user}"))
    }

    /// Begins `subject`'s flow at `provider` and opens its connect link in
    /// `browser`: the flow, and the authorize URL the browser was sent to.
    async fn start_flow(
        &self,
        provider: &OAuthProvider,
        subject: &str,
        browser: &Browser,
    ) -> (PendingAuthorization, Url) {
        let flow = provider.begin_authorization(subject, None).await.unwrap();
        let authorize = self.connect(browser, &flow).await;
        (flow, authorize)
    }

    /// Opens the connect link in `browser` and stops before the third
    /// party: the authorize URL the connect page sent the browser to.
    async fn connect(&self, browser: &Browser, pending: &PendingAuthorization) -> Url {
        let navigation = browser
            .clone()
            .stop_before(self.auth.base_url())
            .get(pending.connect_url().as_str())
            .await
            .unwrap();
        navigation
            .stopped_at()
            .unwrap_or_else(|| panic!("the connect page redirects: {navigation:?}"))
            .clone()
    }

    /// Opens a URL in `browser` (an authorize URL: the third party signs
    /// the browser's user in and redirects to the callback); the final page.
    async fn open(&self, browser: &Browser, url: &str) -> (u16, String) {
        let navigation = browser.get(url).await.unwrap();
        let page = navigation.page().unwrap();
        (page.status.as_u16(), page.body.clone())
    }

    fn exchanges(&self) -> u64 {
        self.auth.hits(Endpoint::AuthorizationCodeGrant)
    }
}

fn state_of(authorize: &Url) -> FlowState {
    FlowState::new(
        authorize
            .query_pairs()
            .find(|(name, _)| name == "state")
            .unwrap()
            .1
            .into_owned(),
    )
}

async fn token_of(provider: &OAuthProvider, subject: &str) -> Option<String> {
    use mcp_authkit_core::ExposeSecret;
    provider
        .token(subject)
        .await
        .unwrap()
        .map(|token| token.secret().expose_secret().to_owned())
}

async fn pending(provider: &OAuthProvider, state: &FlowState) -> bool {
    provider
        .lifecycle()
        .pending_flow(state)
        .await
        .unwrap()
        .is_some()
}

/// The userinfo `sub` behind a token: whose third-party account it is.
async fn account_of(site: &Site, token: &str) -> String {
    let body: serde_json::Value = plain_http()
        .get(site.auth.userinfo_endpoint())
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["sub"].as_str().unwrap().to_owned()
}

/// The (name, value) of the binding cookie `browser` holds for `provider`.
fn binding_cookie(browser: &Browser, provider: &OAuthProvider) -> (String, String) {
    let cookies = browser.stored_cookies(provider.redirect_uri());
    assert_eq!(cookies.len(), 1, "one binding cookie: {cookies:?}");
    cookies[0].clone()
}

fn assert_refused_as_other_browser((status, body): &(u16, String)) {
    assert_eq!(*status, 403, "{body}");
    assert!(
        body.contains("Open the link from your MCP client in this browser"),
        "{body}"
    );
}

#[tokio::test]
async fn a_callback_without_the_binding_is_refused_in_both_connect_modes() {
    for trust_link_holder in [false, true] {
        let site = Site::start(trust_link_holder).await;
        let alice = site.browser("alice");
        let (_, authorize) = site.start_flow(&site.github, "alice", &alice).await;
        let state = state_of(&authorize);

        // The same user in another browser (so only the binding differs).
        let elsewhere = site.browser("alice");
        let refused = site.open(&elsewhere, authorize.as_str()).await;
        assert_refused_as_other_browser(&refused);
        assert_eq!(site.exchanges(), 0, "nothing exchanged");
        assert_eq!(
            token_of(&site.github, "alice").await,
            None,
            "nothing stored"
        );
        assert!(pending(&site.github, &state).await, "the flow is intact");

        // The stored flow holds a digest of the browser secret, not the
        // secret; no page shows it.
        let (_, secret) = binding_cookie(&alice, &site.github);
        let stored = site.store.get_flow(&state).await.unwrap().unwrap();
        assert!(
            !stored
                .attributes
                .values()
                .any(|value| value.contains(&secret)),
            "{:?}",
            stored.attributes.keys()
        );
        assert!(!refused.1.contains(&secret));

        // The browser that passed the connect page finishes.
        let (status, body) = site.open(&alice, authorize.as_str()).await;
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains(&secret));
        let token = token_of(&site.github, "alice").await.unwrap();
        assert_eq!(account_of(&site, &token).await, "gh-alice");
        assert!(
            alice.stored_cookies(site.github.redirect_uri()).is_empty(),
            "the binding is removed once the flow ended"
        );
    }
}

/// The handle and the binding need nothing of a backend but `get_flow` and
/// the flow's attributes: the same refusal and the same rightful finish on
/// SQLite, encrypted SQLite and Redis (and memory, above).
#[tokio::test]
async fn the_binding_holds_on_every_backend() {
    use mcp_authkit_store_encrypted::{EncryptedStore, EncryptionKey, Keyring};
    use mcp_authkit_store_redis::RedisStore;
    use mcp_authkit_store_sqlite::SqliteStore;

    let directory = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(
        SqliteStore::open(directory.path().join("plain.db"))
            .await
            .unwrap(),
    );
    let encrypted = Arc::new(EncryptedStore::new(
        SqliteStore::open(directory.path().join("encrypted.db"))
            .await
            .unwrap(),
        Keyring::new(EncryptionKey::generate("test")),
    ));
    let prefix = mcp_authkit_store_redis::testing::unique_prefix("providers-binding");
    let redis = Arc::new(
        RedisStore::builder(mcp_authkit_store_redis::testing::redis_url().await)
            .prefix(prefix)
            .connect()
            .await
            .unwrap(),
    );
    type Backend = (&'static str, Arc<dyn TokenStore>, Arc<dyn PendingStore>);
    let backends: Vec<Backend> = vec![
        ("sqlite", sqlite.clone(), sqlite),
        ("encrypted(sqlite)", encrypted.clone(), encrypted),
        ("redis", redis.clone(), redis.clone()),
    ];
    for (name, tokens, flows) in backends {
        let clock = Arc::new(ManualClock::starting_now());
        let site = Site::start_on(false, clock, tokens, flows).await;
        let alice = site.browser("alice");
        let (flow, authorize) = site.start_flow(&site.github, "alice", &alice).await;
        assert!(
            !flow.connect_url().as_str().contains("alice"),
            "{name}: {}",
            flow.connect_url()
        );
        let refused = site.open(&site.browser("alice"), authorize.as_str()).await;
        assert_refused_as_other_browser(&refused);
        assert!(pending(&site.github, &state_of(&authorize)).await, "{name}");
        let (status, body) = site.open(&alice, authorize.as_str()).await;
        assert_eq!(status, 200, "{name}: {body}");
        assert!(token_of(&site.github, "alice").await.is_some(), "{name}");
        assert_eq!(site.exchanges(), 1, "{name}");
    }
    redis.delete_namespace().await.unwrap();
}

#[tokio::test]
async fn a_wrong_cookie_or_another_flows_cookie_is_refused() {
    let site = Site::start(false).await;
    let alice = site.browser("alice");
    let (_, authorize) = site.start_flow(&site.github, "alice", &alice).await;
    let state = state_of(&authorize);
    let (name, value) = binding_cookie(&alice, &site.github);

    // The right name with a guessed value.
    let guessed = format!(
        "{}{}",
        if value.starts_with('A') { "B" } else { "A" },
        &value[1..]
    );
    let forger = site.browser("alice").with_cookie(name.clone(), guessed);
    assert_refused_as_other_browser(&site.open(&forger, authorize.as_str()).await);

    // Bob's own flow of the same provider: his cookie is for his flow only,
    // under its own name or moved under Alice's.
    let bob = site.browser("bob");
    site.start_flow(&site.github, "bob", &bob).await;
    let (_, bob_value) = binding_cookie(&bob, &site.github);
    let mallory = site.browser("alice").with_new_cookie_jar();
    let with_bobs = bob.clone().with_header(APP_USER, "alice");
    assert_refused_as_other_browser(&site.open(&with_bobs, authorize.as_str()).await);
    let moved = mallory.with_cookie(name, bob_value);
    assert_refused_as_other_browser(&site.open(&moved, authorize.as_str()).await);

    assert_eq!(site.exchanges(), 0);
    assert_eq!(token_of(&site.github, "alice").await, None);
    assert_eq!(token_of(&site.github, "bob").await, None);
    assert!(pending(&site.github, &state).await);
    let (status, _) = site.open(&alice, authorize.as_str()).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn another_providers_cookie_is_refused() {
    let site = Site::start(false).await;
    let alice = site.browser("alice");
    let (_, github_authorize) = site.start_flow(&site.github, "alice", &alice).await;

    // This browser passed only Jira's connect page.
    let other = site.browser("alice");
    site.start_flow(&site.jira, "alice", &other).await;
    let (_, jira_value) = binding_cookie(&other, &site.jira);
    assert!(
        other.stored_cookies(site.github.redirect_uri()).is_empty(),
        "Jira's binding stays on Jira's path"
    );
    assert_refused_as_other_browser(&site.open(&other, github_authorize.as_str()).await);
    let (github_name, _) = binding_cookie(&alice, &site.github);
    let moved = site.browser("alice").with_cookie(github_name, jira_value);
    assert_refused_as_other_browser(&site.open(&moved, github_authorize.as_str()).await);
    assert_eq!(site.exchanges(), 0);
    assert_eq!(token_of(&site.github, "alice").await, None);
    assert!(pending(&site.github, &state_of(&github_authorize)).await);
}

#[tokio::test]
async fn a_replayed_callback_with_the_right_cookie_changes_nothing() {
    let site = Site::start(false).await;
    let alice = site.browser("alice");
    let (_, authorize) = site.start_flow(&site.github, "alice", &alice).await;
    let (name, value) = binding_cookie(&alice, &site.github);
    let navigation = alice.get(authorize.as_str()).await.unwrap();
    assert_eq!(navigation.page().unwrap().status, 200);
    let callback = navigation
        .hops()
        .iter()
        .find(|hop| hop.url.path().ends_with("/callback"))
        .unwrap()
        .url
        .clone();
    let before = site
        .github
        .lifecycle()
        .stored_token("alice")
        .await
        .unwrap()
        .unwrap();

    let replayer = site.browser("alice").with_cookie(name, value);
    let (status, body) = site.open(&replayer, callback.as_str()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("already used") && body.contains("nothing was stored"),
        "{body}"
    );
    assert_eq!(site.exchanges(), 1, "no second exchange");
    let after = site
        .github
        .lifecycle()
        .stored_token("alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.revision, before.revision, "nothing stored");
}

#[tokio::test]
async fn two_flows_in_one_browser_keep_their_own_bindings() {
    // Two providers, one user.
    let site = Site::start(false).await;
    let alice = site.browser("alice");
    let (_, github_authorize) = site.start_flow(&site.github, "alice", &alice).await;
    let (_, jira_authorize) = site.start_flow(&site.jira, "alice", &alice).await;
    assert_eq!(site.open(&alice, jira_authorize.as_str()).await.0, 200);
    assert_eq!(site.open(&alice, github_authorize.as_str()).await.0, 200);
    assert!(token_of(&site.github, "alice").await.is_some());
    assert!(token_of(&site.jira, "alice").await.is_some());

    // Two MCP users, one browser (a local setup that trusts the link holder).
    let site = Site::start(true).await;
    let browser = site.browser("shared");
    let (_, alice_authorize) = site.start_flow(&site.github, "alice", &browser).await;
    let (_, bob_authorize) = site.start_flow(&site.github, "bob", &browser).await;
    assert_eq!(
        browser.stored_cookies(site.github.redirect_uri()).len(),
        2,
        "one binding per flow"
    );
    assert_eq!(site.open(&browser, alice_authorize.as_str()).await.0, 200);
    assert_eq!(site.open(&browser, bob_authorize.as_str()).await.0, 200);
    assert!(token_of(&site.github, "alice").await.is_some());
    assert!(token_of(&site.github, "bob").await.is_some());
}

#[tokio::test]
async fn the_callback_asks_the_browser_user_hook_again() {
    let site = Site::start(false).await;
    let alice = site.browser("alice");
    let (_, authorize) = site.start_flow(&site.github, "alice", &alice).await;
    // The same browser profile (the binding cookie), now signed in to the
    // application as someone else.
    let switched = alice.clone().with_header(APP_USER, "bob");
    let (status, body) = site.open(&switched, authorize.as_str()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("another user"), "{body}");
    assert_eq!(site.exchanges(), 0);
    assert!(pending(&site.github, &state_of(&authorize)).await);
    assert_eq!(site.open(&alice, authorize.as_str()).await.0, 200);
}

#[tokio::test]
async fn the_binding_cookie_is_scoped_to_the_flow_and_the_provider() {
    let site = Site::start(false).await;
    let flow = site
        .github
        .begin_authorization("alice", None)
        .await
        .unwrap();
    let response = plain_http()
        .get(flow.connect_url().as_str())
        .header(APP_USER, "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let cookies: Vec<_> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let cookie = &cookies[0];
    assert!(cookie.starts_with("mcp-authkit-"), "{cookie}");
    for attribute in [
        "; Path=/oauth/github;",
        "; Max-Age=600;",
        "; HttpOnly",
        "; SameSite=Lax",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    let location = response.headers()["location"].to_str().unwrap();
    let state = state_of(&Url::parse(location).unwrap());
    let handle = query_value(flow.connect_url(), "flow");
    for secret in [state.as_str(), handle.as_str()] {
        assert!(!cookie.contains(secret), "{cookie}");
    }
    // The remaining lifetime of the flow, not a fixed one.
    site.clock.advance(Duration::from_secs(100));
    let later = plain_http()
        .get(flow.connect_url().as_str())
        .header(APP_USER, "alice")
        .send()
        .await
        .unwrap();
    let cookie = later.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Max-Age=500;"), "{cookie}");
}

fn query_value(url: &Url, name: &str) -> String {
    url.query_pairs()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

#[tokio::test]
async fn pages_tell_the_truth_about_a_link() {
    let site = Site::start(false).await;
    let alice = site.browser("alice");
    let bob = site.browser("bob");

    // An unknown handle: a page that says nothing about anyone.
    let unknown = format!("{}/oauth/github/connect?flow={}", site.base, "A".repeat(43));
    let (status, body) = site.open(&alice, &unknown).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("unknown or expired"), "{body}");

    // A flow whose callback is being handled right now (taken, not yet
    // completed): "finishing" only for its own user.
    let (flow, authorize) = site.start_flow(&site.github, "alice", &alice).await;
    let state = state_of(&authorize);
    let taken = site.store.take(&state).await.unwrap().unwrap();
    let link = flow.connect_url().as_str();
    let (status, body) = site.open(&alice, link).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("completing right now"), "{body}");
    let (status, body) = site.open(&bob, link).await;
    assert_eq!(status, 404, "another user learns nothing: {body}");
    assert!(
        !body.contains("completing") && !body.contains("alice"),
        "{body}"
    );
    let (status, _) = site.open(&bob, &unknown).await;
    assert_eq!(status, 404);

    // Completed by another tab (or another call sharing the flow): a
    // second tab says it is connected.
    let revision = site
        .github
        .lifecycle()
        .store_token(
            "alice",
            &mcp_authkit_core::TokenRecord::new(
                "t",
                mcp_authkit_core::Timestamp::from_unix_millis(0),
            ),
        )
        .await
        .unwrap();
    site.store
        .complete(
            &taken.key,
            &state,
            &mcp_authkit_core::FlowOutcome::Authorized { revision },
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    let (status, body) = site.open(&alice, link).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("GitHub is connected"), "{body}");

    // A flow the user declined in the client: ended, not connected.
    let declined = site.github.begin_authorization("bob", None).await.unwrap();
    site.github
        .abandon_authorization(
            &declined,
            mcp_authkit_core::FlowOutcome::Denied {
                error: "elicitation_declined".into(),
                description: None,
            },
        )
        .await
        .unwrap();
    let (status, body) = site.open(&bob, declined.connect_url().as_str()).await;
    assert_eq!(status, 410, "{body}");
    assert!(body.contains("without connecting GitHub"), "{body}");

    // One provider's link on another provider's connect page is unknown
    // there, even once its flow completed.
    let (jira, jira_authorize) = site.start_flow(&site.jira, "alice", &alice).await;
    assert_eq!(site.open(&alice, jira_authorize.as_str()).await.0, 200);
    let handle = query_value(jira.connect_url(), "flow");
    let on_github = format!("{}/oauth/github/connect?flow={handle}", site.base);
    let (status, body) = site.open(&alice, &on_github).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn a_callback_on_another_origin_is_refused_at_build_time() {
    let error = OAuthProvider::builder("github", "https://mcp.example.com/oauth/github")
        .client(StandardOAuthClient::github("id", "secret").build().unwrap())
        .redirect_uri("https://callback.example.com/oauth/github/callback")
        .trust_link_holder()
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("origin"), "{error}");
}

#[tokio::test]
async fn debug_output_leaves_out_the_link() {
    let site = Site::start(false).await;
    let flow = site
        .github
        .begin_authorization("alice", None)
        .await
        .unwrap();
    let handle = query_value(flow.connect_url(), "flow");
    let printed = format!("{flow:?}");
    assert!(!printed.contains(&handle), "{printed}");
    assert!(!printed.contains(flow.elicitation_id()), "{printed}");
    let stored = site
        .store
        .get_flow(
            &site
                .github
                .lifecycle()
                .pending_store()
                .active_flow(&site.github.lifecycle().key("alice"))
                .await
                .unwrap()
                .unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    let printed = format!("{stored:?}");
    assert!(!printed.contains(&handle), "{printed}");
}
