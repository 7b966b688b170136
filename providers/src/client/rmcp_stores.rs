//! rmcp's own OAuth storage traits on mcp-authkit stores (feature `rmcp`).
//!
//! rmcp's `AuthorizationManager` keeps credentials in a [`CredentialStore`]
//! and PKCE state in a [`StateStore`], and ships in-memory ones only. These
//! adapters put them in any mcp-authkit store, so rmcp's built-in OAuth
//! gets SQLite, Redis and encrypted persistence, and refreshes coordinated
//! across processes by the store's refresh lease.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mcp_authkit_core::{PendingStore, TokenKey, TokenStore};
//! use mcp_authkit_providers::client::rmcp_stores::{CredentialStoreAdapter, StateStoreAdapter};
//! use mcp_authkit_store_memory::MemoryStore;
//! use rmcp::transport::auth::AuthorizationManager;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Arc::new(MemoryStore::new()); // SQLite, Redis, encrypted, ...
//! let mut manager = AuthorizationManager::new("https://mcp.example.com/mcp").await?;
//! manager.set_credential_store(CredentialStoreAdapter::new(
//!     store.clone(),
//!     TokenKey::new("rmcp", "https://mcp.example.com/mcp"),
//! ));
//! manager.set_state_store(StateStoreAdapter::new(store, "rmcp-flows"));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mcp_authkit_core::{
    ExposeSecret, FlowState, InsertOutcome, LeaseGuard, PendingFlow, PendingStore, SecretString,
    Timestamp, TokenKey, TokenRecord, TokenStore,
};
use oauth2::TokenResponse as _;
use rmcp::transport::auth::{
    AuthError, CredentialRefreshGuard, CredentialStore, OAuthTokenResponse, StateStore,
    StoredAuthorizationState, StoredCredentials,
};
use serde_json::{Map, Value};

/// The `token_type` that marks records written by [`CredentialStoreAdapter`].
const CREDENTIALS_RECORD: &str = "mcp-authkit/rmcp-credentials";

/// rmcp's [`CredentialStore`] on an mcp-authkit [`TokenStore`]: the
/// credentials of one MCP server live under one [`TokenKey`].
///
/// The access and refresh tokens are stored as the record's tokens, the
/// granted scopes and expiry as its scopes and `expires_at`, and the rest of
/// rmcp's token response as extra fields, so encrypting stores encrypt all
/// of it. [`acquire_refresh_guard`](CredentialStore::acquire_refresh_guard)
/// takes the store's refresh lease for the key, so refreshes are serialized
/// across every process sharing the store.
#[derive(Clone)]
pub struct CredentialStoreAdapter {
    tokens: Arc<dyn TokenStore>,
    key: TokenKey,
    lease_ttl: Duration,
    lease_wait: Duration,
}

impl fmt::Debug for CredentialStoreAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialStoreAdapter")
            .field("key", &self.key)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

impl CredentialStoreAdapter {
    /// Credentials under `key` in `tokens`.
    pub fn new(tokens: Arc<dyn TokenStore>, key: TokenKey) -> Self {
        CredentialStoreAdapter {
            tokens,
            key,
            lease_ttl: Duration::from_secs(30),
            lease_wait: Duration::from_secs(35),
        }
    }

    /// How long a refresh lease lasts if its holder dies (default 30 s), and
    /// how long to wait for another holder (default 35 s).
    pub fn lease(mut self, ttl: Duration, wait: Duration) -> Self {
        self.lease_ttl = ttl;
        self.lease_wait = wait;
        self
    }

    /// The key the credentials are stored under.
    pub fn key(&self) -> &TokenKey {
        &self.key
    }
}

fn store_error(error: mcp_authkit_core::Error) -> AuthError {
    AuthError::CredentialStoreError(error.to_string())
}

fn unix_seconds(at: Timestamp) -> u64 {
    u64::try_from(at.unix_millis() / 1000).unwrap_or(0)
}

fn from_unix_seconds(seconds: u64) -> Timestamp {
    Timestamp::from_unix_millis(i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX))
}

/// rmcp's credentials as a token record.
fn encode(credentials: &StoredCredentials) -> Result<TokenRecord, AuthError> {
    let received_at = credentials.token_received_at.map(from_unix_seconds);
    let mut record = TokenRecord::new(String::new(), received_at.unwrap_or_else(Timestamp::now))
        .with_token_type(CREDENTIALS_RECORD)
        .with_scopes(credentials.granted_scopes.clone())
        .with_extra("client_id", credentials.client_id.clone());
    if let Some(issuer) = &credentials.issuer {
        record = record.with_extra("issuer", issuer.clone());
    }
    if received_at.is_none() {
        record = record.with_extra("received_at_unknown", "true");
    }
    if let Some(response) = &credentials.token_response {
        let Value::Object(mut fields) = serde_json::to_value(response)
            .map_err(|e| AuthError::InternalError(format!("token response: {e}")))?
        else {
            return Err(AuthError::InternalError(
                "a token response did not serialize to an object".to_owned(),
            ));
        };
        if let Some(Value::String(token)) = fields.remove("access_token") {
            record.access_token = SecretString::from(token);
        }
        if let Some(Value::String(token)) = fields.remove("refresh_token") {
            record.refresh_token = Some(SecretString::from(token));
        }
        if let (Some(received_at), Some(seconds)) = (
            received_at,
            fields.get("expires_in").and_then(Value::as_u64),
        ) {
            record.expires_at = Some(received_at.saturating_add(Duration::from_secs(seconds)));
        }
        record = record.with_extra("token_response", Value::Object(fields).to_string());
    }
    Ok(record)
}

/// A token record back as rmcp's credentials.
fn decode(record: &TokenRecord, location: &TokenKey) -> Result<StoredCredentials, AuthError> {
    let malformed = || {
        AuthError::CredentialStoreError(format!(
            "the record at {location} is not rmcp credentials written by mcp-authkit"
        ))
    };
    if record.token_type != CREDENTIALS_RECORD {
        return Err(malformed());
    }
    let extra = |name: &str| record.extra.get(name).map(|v| v.expose_secret().to_owned());
    let client_id = extra("client_id").ok_or_else(malformed)?;
    let token_response = match extra("token_response") {
        None => None,
        Some(json) => {
            let mut fields: Map<String, Value> =
                serde_json::from_str(&json).map_err(|_| malformed())?;
            fields.insert(
                "access_token".to_owned(),
                Value::String(record.access_token.expose_secret().to_owned()),
            );
            if let Some(token) = &record.refresh_token {
                fields.insert(
                    "refresh_token".to_owned(),
                    Value::String(token.expose_secret().to_owned()),
                );
            }
            let response: OAuthTokenResponse =
                serde_json::from_value(Value::Object(fields)).map_err(|_| malformed())?;
            Some(response)
        }
    };
    let received_at =
        (extra("received_at_unknown").is_none()).then(|| unix_seconds(record.obtained_at));
    Ok(StoredCredentials::new(
        client_id,
        token_response,
        record.scopes.clone(),
        received_at,
    )
    .with_issuer(extra("issuer")))
}

#[async_trait]
impl CredentialStore for CredentialStoreAdapter {
    async fn load(&self) -> Result<Option<StoredCredentials>, AuthError> {
        match self.tokens.get(&self.key).await.map_err(store_error)? {
            Some(stored) => decode(&stored.record, &self.key).map(Some),
            None => Ok(None),
        }
    }

    async fn save(&self, credentials: StoredCredentials) -> Result<(), AuthError> {
        let record = encode(&credentials)?;
        self.tokens
            .put(&self.key, &record)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn clear(&self) -> Result<(), AuthError> {
        self.tokens.delete(&self.key).await.map_err(store_error)?;
        Ok(())
    }

    async fn on_refresh_token_rejected(
        &self,
        credentials: &StoredCredentials,
    ) -> Result<(), AuthError> {
        // Remove the rejected credentials only if they are still the stored
        // ones: another process may have replaced them meanwhile.
        let Some(stored) = self.tokens.get(&self.key).await.map_err(store_error)? else {
            return Ok(());
        };
        let rejected = credentials
            .token_response
            .as_ref()
            .and_then(|r| r.refresh_token().map(|t| t.secret().to_owned()));
        let current = stored
            .record
            .refresh_token
            .as_ref()
            .map(|t| t.expose_secret().to_owned());
        if rejected.is_some() && rejected == current {
            self.tokens
                .delete_if_revision(&self.key, stored.revision)
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    async fn acquire_refresh_guard(&self) -> Result<Option<CredentialRefreshGuard>, AuthError> {
        let deadline = mcp_authkit_core::deadline_after(self.lease_wait);
        let mut backoff = Duration::from_millis(5);
        loop {
            if let Some(guard) =
                LeaseGuard::try_acquire(Arc::clone(&self.tokens), self.key.clone(), self.lease_ttl)
                    .await
                    .map_err(store_error)?
            {
                return Ok(Some(CredentialRefreshGuard::new(guard)));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AuthError::CredentialStoreError(format!(
                    "another process held the refresh lease of {} for more than {:?}",
                    self.key, self.lease_wait
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }
}

/// rmcp's [`StateStore`] on an mcp-authkit [`PendingStore`]: each
/// authorization's PKCE verifier and expected issuer is a pending flow,
/// kept for a TTL (default 10 minutes) and then forgotten, and taken
/// exactly once when rmcp deletes it after the callback.
#[derive(Clone)]
pub struct StateStoreAdapter {
    pending: Arc<dyn PendingStore>,
    provider: String,
    ttl: Duration,
}

impl fmt::Debug for StateStoreAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStoreAdapter")
            .field("provider", &self.provider)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl StateStoreAdapter {
    /// States in `pending`, under the provider name `provider`.
    pub fn new(pending: Arc<dyn PendingStore>, provider: impl Into<String>) -> Self {
        StateStoreAdapter {
            pending,
            provider: provider.into(),
            ttl: Duration::from_secs(600),
        }
    }

    /// How long an unfinished authorization's state is kept.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

const EXPECTED_ISSUER: &str = "rmcp.expected_issuer";
const REQUIRE_ISSUER: &str = "rmcp.require_issuer";

fn to_state(flow: PendingFlow) -> StoredAuthorizationState {
    let mut state = StoredAuthorizationState::new_with_expected_issuer(
        &oauth2::PkceCodeVerifier::new(flow.pkce_verifier.expose_secret().to_owned()),
        &oauth2::CsrfToken::new(flow.state.as_str().to_owned()),
        flow.attributes.get(EXPECTED_ISSUER).cloned(),
        flow.attributes
            .get(REQUIRE_ISSUER)
            .is_some_and(|v| v == "true"),
    )
    .with_requested_scopes(flow.scopes);
    state.created_at = unix_seconds(flow.created_at);
    state
}

#[async_trait]
impl StateStore for StateStoreAdapter {
    async fn save(
        &self,
        csrf_token: &str,
        state: StoredAuthorizationState,
    ) -> Result<(), AuthError> {
        let created_at = from_unix_seconds(state.created_at);
        let mut attributes = BTreeMap::new();
        if let Some(issuer) = &state.expected_issuer {
            attributes.insert(EXPECTED_ISSUER.to_owned(), issuer.clone());
        }
        attributes.insert(REQUIRE_ISSUER.to_owned(), state.require_issuer.to_string());
        // Each state is its own key, so rmcp's concurrent authorizations
        // never join one another.
        let mut flow = PendingFlow::new(
            TokenKey::new(self.provider.clone(), csrf_token),
            String::new(),
            state.requested_scopes.clone(),
            created_at,
            self.ttl,
        );
        flow.state = FlowState::new(csrf_token);
        flow.pkce_verifier = SecretString::from(state.pkce_verifier.clone());
        flow.attributes = attributes;
        if flow.is_expired_at(Timestamp::now()) {
            return Err(AuthError::CredentialStoreError(
                "the authorization state is already older than its TTL".to_owned(),
            ));
        }
        match self.pending.insert(&flow).await.map_err(store_error)? {
            InsertOutcome::Inserted => Ok(()),
            InsertOutcome::Joined(_) => Err(AuthError::CredentialStoreError(
                "this authorization state is already stored".to_owned(),
            )),
        }
    }

    async fn load(&self, csrf_token: &str) -> Result<Option<StoredAuthorizationState>, AuthError> {
        let flow = self
            .pending
            .get_flow(&FlowState::new(csrf_token))
            .await
            .map_err(store_error)?;
        Ok(flow
            .filter(|flow| flow.key.provider() == self.provider)
            .map(to_state))
    }

    async fn delete(&self, csrf_token: &str) -> Result<(), AuthError> {
        let state = FlowState::new(csrf_token);
        if self
            .pending
            .get_flow(&state)
            .await
            .map_err(store_error)?
            .is_some_and(|flow| flow.key.provider() == self.provider)
        {
            self.pending.take(&state).await.map_err(store_error)?;
        }
        Ok(())
    }
}
