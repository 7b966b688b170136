//! Test doubles: a scriptable in-memory OAuth client that counts its calls.
//!
//! Enabled by the `testing` feature; the conformance suite uses it to drive
//! the lifecycle on every backend. It speaks no HTTP: HTTP-level behaviour is
//! tested against the loopback authorization server in `mcp-authkit-testkit`.
//!
//! The hidden `container` module is the store crates' fallback to a Docker
//! container when their tests find no server: internal test plumbing, not
//! a stable API.

// Public only because the store crates' test helpers call it; a crate of
// its own would be the clean home, too big a move for now.
#[doc(hidden)]
pub mod container;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::error::{OAuthError, OAuthErrorKind};
use crate::flow::{PendingFlow, PkceVerifier};
use crate::oauth::{AuthorizationRequest, OAuthClient, TokenResponse};

#[cfg(feature = "testing-metrics")]
pub mod recording;

/// What the next refresh call does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshBehavior {
    /// Issue a new access token and rotate the refresh token.
    Succeed,
    /// Answer `invalid_grant`.
    InvalidGrant,
    /// Fail like a 503.
    Transient,
}

struct Issued {
    challenge: String,
    redirect_uri: String,
}

/// An in-memory OAuth client and authorization server in one.
///
/// [`approve`](Self::approve) plays the user's browser: it reads an
/// authorization URL and returns a code bound to its PKCE challenge;
/// [`exchange_code`](OAuthClient::exchange_code) checks the verifier against it,
/// accepts each code once, and issues `access-N` / `refresh-N` tokens.
pub struct FakeOAuthClient {
    issuer: Option<String>,
    lifetime: Mutex<Option<Duration>>,
    refresh_behavior: Mutex<RefreshBehavior>,
    refresh_delay: Mutex<Duration>,
    codes: Mutex<HashMap<String, Issued>>,
    /// Refresh tokens the fake still honours; rotation retires the old one.
    live_refresh_tokens: Mutex<HashMap<String, ()>>,
    accept_any_refresh_token: std::sync::atomic::AtomicBool,
    supports_refresh: std::sync::atomic::AtomicBool,
    serial: AtomicU64,
    refresh_calls: AtomicU64,
    /// Signalled at the start of every refresh call.
    refresh_started: tokio::sync::Notify,
    exchange_calls: AtomicU64,
}

impl Default for FakeOAuthClient {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeOAuthClient {
    /// Tokens live one hour; refreshes succeed.
    pub fn new() -> Self {
        FakeOAuthClient {
            issuer: None,
            lifetime: Mutex::new(Some(Duration::from_secs(3600))),
            refresh_behavior: Mutex::new(RefreshBehavior::Succeed),
            refresh_delay: Mutex::new(Duration::ZERO),
            codes: Mutex::new(HashMap::new()),
            live_refresh_tokens: Mutex::new(HashMap::new()),
            accept_any_refresh_token: std::sync::atomic::AtomicBool::new(false),
            supports_refresh: std::sync::atomic::AtomicBool::new(true),
            serial: AtomicU64::new(0),
            refresh_calls: AtomicU64::new(0),
            refresh_started: tokio::sync::Notify::new(),
            exchange_calls: AtomicU64::new(0),
        }
    }

    /// Requires `iss` on callbacks to equal `issuer`.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Sets the lifetime of issued tokens (`None`: no `expires_in`).
    pub fn set_token_lifetime(&self, lifetime: Option<Duration>) {
        *self.lifetime.lock().unwrap() = lifetime;
    }

    /// Sets what refreshes do from now on.
    pub fn set_refresh_behavior(&self, behavior: RefreshBehavior) {
        *self.refresh_behavior.lock().unwrap() = behavior;
    }

    /// Makes each refresh take this long (real time), to widen races.
    pub fn set_refresh_delay(&self, delay: Duration) {
        *self.refresh_delay.lock().unwrap() = delay;
    }

    /// Accepts refresh tokens this instance did not issue (another process's
    /// fake issued them), still counting every call.
    pub fn accept_any_refresh_token(&self, accept: bool) {
        self.accept_any_refresh_token
            .store(accept, Ordering::SeqCst);
    }

    /// Says whether this client can refresh at all
    /// ([`OAuthClient::supports_refresh`]); refresh calls are still counted.
    pub fn set_supports_refresh(&self, supported: bool) {
        self.supports_refresh.store(supported, Ordering::SeqCst);
    }

    /// How many refresh calls were made.
    pub fn refresh_calls(&self) -> u64 {
        self.refresh_calls.load(Ordering::SeqCst)
    }

    /// Returns once `n` refresh calls have started (at once if they have):
    /// lets a test act while a slow refresh is in flight.
    pub async fn refresh_calls_reach(&self, n: u64) {
        loop {
            let mut started = std::pin::pin!(self.refresh_started.notified());
            // Registered before the count is read, so no start is missed.
            started.as_mut().enable();
            if self.refresh_calls() >= n {
                return;
            }
            started.await;
        }
    }

    /// How many code exchanges were made.
    pub fn exchange_calls(&self) -> u64 {
        self.exchange_calls.load(Ordering::SeqCst)
    }

    /// Plays the browser and the consenting user: returns a code for the
    /// authorization URL, bound to its PKCE challenge and redirect URI.
    ///
    /// # Panics
    /// If the URL lacks `code_challenge`, `code_challenge_method=S256` or
    /// `redirect_uri`: the client under test built a bad URL.
    pub fn approve(&self, authorization_url: &Url) -> String {
        let query: HashMap<_, _> = authorization_url.query_pairs().into_owned().collect();
        assert_eq!(
            query.get("code_challenge_method").map(String::as_str),
            Some("S256")
        );
        let code = format!("code-{}", self.serial.fetch_add(1, Ordering::SeqCst));
        self.codes.lock().unwrap().insert(
            code.clone(),
            Issued {
                challenge: query["code_challenge"].clone(),
                redirect_uri: query["redirect_uri"].clone(),
            },
        );
        code
    }

    /// Issues a token pair directly, as if a flow had completed.
    pub fn issue(&self) -> TokenResponse {
        let n = self.serial.fetch_add(1, Ordering::SeqCst);
        let refresh = format!("refresh-{n}");
        self.live_refresh_tokens
            .lock()
            .unwrap()
            .insert(refresh.clone(), ());
        let mut response = TokenResponse::new(format!("access-{n}")).with_refresh_token(refresh);
        if let Some(lifetime) = *self.lifetime.lock().unwrap() {
            response = response.with_expires_in(lifetime);
        }
        response
    }
}

#[async_trait]
impl OAuthClient for FakeOAuthClient {
    fn authorization_url(&self, request: &AuthorizationRequest<'_>) -> Result<Url, OAuthError> {
        let mut url = Url::parse("https://fake-as.invalid/authorize").expect("static URL");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", "fake-client")
            .append_pair("state", request.state.as_str())
            .append_pair("code_challenge", request.pkce_challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("redirect_uri", request.redirect_uri)
            .append_pair("scope", &request.scopes.join(" "));
        Ok(url)
    }

    async fn exchange_code(
        &self,
        code: &SecretString,
        flow: &PendingFlow,
    ) -> Result<TokenResponse, OAuthError> {
        self.exchange_calls.fetch_add(1, Ordering::SeqCst);
        let issued = self.codes.lock().unwrap().remove(code.expose_secret());
        let Some(issued) = issued else {
            return Err(OAuthError::from_response(
                Some(400),
                "invalid_grant",
                Some("unknown or reused code"),
            ));
        };
        let challenge = PkceVerifier::new(flow.pkce_verifier.clone()).challenge_s256();
        if issued.challenge != challenge || issued.redirect_uri != flow.redirect_uri {
            return Err(OAuthError::from_response(
                Some(400),
                "invalid_grant",
                Some("PKCE verifier or redirect_uri mismatch"),
            ));
        }
        Ok(self.issue())
    }

    async fn refresh(
        &self,
        refresh_token: &SecretString,
        _scopes: &[String],
    ) -> Result<TokenResponse, OAuthError> {
        self.refresh_calls.fetch_add(1, Ordering::SeqCst);
        self.refresh_started.notify_waiters();
        let delay = *self.refresh_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let behavior = self.refresh_behavior.lock().unwrap().clone();
        match behavior {
            RefreshBehavior::InvalidGrant => Err(OAuthError::from_response(
                Some(400),
                "invalid_grant",
                Some("refresh token revoked"),
            )),
            RefreshBehavior::Transient => {
                Err(
                    OAuthError::from_response(Some(503), "temporarily_unavailable", None)
                        .with_status(503),
                )
            }
            RefreshBehavior::Succeed => {
                let known = self
                    .live_refresh_tokens
                    .lock()
                    .unwrap()
                    .remove(refresh_token.expose_secret())
                    .is_some();
                if !known && !self.accept_any_refresh_token.load(Ordering::SeqCst) {
                    return Err(OAuthError::from_response(
                        Some(400),
                        "invalid_grant",
                        Some("refresh token unknown or already rotated"),
                    ));
                }
                Ok(self.issue())
            }
        }
    }

    fn supports_refresh(&self) -> bool {
        self.supports_refresh.load(Ordering::SeqCst)
    }

    fn check_issuer(&self, iss: Option<&str>) -> Result<(), OAuthError> {
        match (&self.issuer, iss) {
            (Some(expected), Some(got)) if expected != got => Err(OAuthError::new(
                OAuthErrorKind::IssuerMismatch,
                format!(
                    "the authorization response came from issuer {got:?}, expected {expected:?}"
                ),
            )),
            _ => Ok(()),
        }
    }
}
