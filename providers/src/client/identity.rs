//! The client's identity at one authorization server: configured
//! (pre-registered, or a Client ID Metadata Document URL), or a dynamic
//! registration that heals.
//!
//! A dynamic registration lives in the token store (format in `records`),
//! shared by every process using the store. It is read again before each
//! token request, so a replica uses the registration another replica made
//! after the server forgot the old one. It is replaced before a sign-in
//! that its secret would not outlive, and a refresh never sends an expired
//! secret. When the server refuses it (`invalid_client`,
//! `unauthorized_client`, an error page at its authorization endpoint) or a
//! sign-in with it times out, the provider [forgets](Identity::forget) it
//! and the next sign-in registers again. A new registration is stored with
//! compare-and-swap: when two processes register at once, both use the
//! one stored first.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use mcp_authkit_core::{
    CasOutcome, Clock, OAuthError, OAuthErrorKind, Revision, TokenKey, TokenStore,
};

use crate::client::discovery::AuthorizationServerMetadata;
use crate::client::error::ClientAuthError;
use crate::client::fetch::Fetcher;
use crate::client::oauth::ClientCredentials;
use crate::client::records::{self, RecordError};
use crate::client::registration::{ClientMetadata, Registration, register};

/// The flow attribute naming the client a sign-in started with: its code
/// is bound to that client, whatever happens to the registration meanwhile.
pub(crate) const FLOW_CLIENT_ID: &str = "client_id";

/// Who the client is at one authorization server.
pub(crate) enum Identity {
    /// Pre-registered or a metadata document: fixed, never registered again.
    Configured(ClientCredentials),
    /// Dynamic client registration.
    Registered(Box<Registrations>),
}

/// Where a dynamic registration lives and how a new one is made.
pub(crate) struct Registrations {
    pub(crate) tokens: Arc<dyn TokenStore>,
    pub(crate) key: TokenKey,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) fetcher: Fetcher,
    pub(crate) server: Arc<AuthorizationServerMetadata>,
    pub(crate) client: ClientMetadata,
    /// How long a sign-in may take: a registration must outlive it.
    pub(crate) sign_in: Duration,
    /// The registration in use, as last read from the store or made here.
    pub(crate) current: RwLock<Option<Registration>>,
    /// One registration at a time in this process.
    pub(crate) registering: tokio::sync::Mutex<()>,
}

impl Identity {
    /// Whether it is a dynamic registration (which can be dropped and made
    /// again), as opposed to configured credentials.
    pub(crate) fn is_registered(&self) -> bool {
        matches!(self, Identity::Registered(_))
    }

    /// The client id in use, if any yet.
    pub(crate) fn client_id(&self) -> Option<String> {
        match self {
            Identity::Configured(credentials) => Some(credentials.client_id.clone()),
            Identity::Registered(registrations) => registrations
                .current()
                .map(|registration| registration.client_id().to_owned()),
        }
    }

    /// The credentials to start a sign-in with `redirect_uri`: configured
    /// ones, the stored registration when it serves that redirect URI and
    /// outlives the sign-in, else a new registration.
    pub(crate) async fn for_sign_in(
        &self,
        redirect_uri: &str,
    ) -> Result<ClientCredentials, ClientAuthError> {
        match self {
            Identity::Configured(credentials) => Ok(credentials.clone()),
            Identity::Registered(registrations) => {
                Ok(registrations.for_sign_in(redirect_uri).await?.credentials)
            }
        }
    }

    /// The credentials of the client a sign-in started with (its code is
    /// bound to it).
    pub(crate) async fn for_code_exchange(
        &self,
        client_id: Option<&str>,
    ) -> Result<ClientCredentials, OAuthError> {
        let registrations = match self {
            Identity::Configured(credentials) => return Ok(credentials.clone()),
            Identity::Registered(registrations) => registrations,
        };
        if let Some(current) = registrations
            .current()
            .filter(|r| client_id.is_none_or(|id| id == r.client_id()))
        {
            return Ok(current.credentials);
        }
        match registrations.stored().await.map_err(store_failure)? {
            Some((registration, _))
                if client_id.is_none_or(|id| id == registration.client_id()) =>
            {
                Ok(registrations.adopt(registration).credentials)
            }
            _ => Err(OAuthError::new(
                OAuthErrorKind::InvalidClient,
                "the client registration this sign-in started with was dropped meanwhile; sign \
                 in again",
            )),
        }
    }

    /// The credentials for a refresh: the registration stored now (another
    /// process may have replaced the one this process knew), never one
    /// whose secret has expired.
    pub(crate) async fn for_refresh(&self) -> Result<ClientCredentials, OAuthError> {
        let registrations = match self {
            Identity::Configured(credentials) => return Ok(credentials.clone()),
            Identity::Registered(registrations) => registrations,
        };
        let Some((registration, _)) = registrations.stored().await.map_err(store_failure)? else {
            return Err(OAuthError::new(
                OAuthErrorKind::InvalidClient,
                "no client registration is stored for this authorization server (it was dropped); \
                 sign in again",
            ));
        };
        if registration.expired_at(registrations.clock.now()) {
            // The server said it would refuse the secret from now on: do
            // not send it.
            let expired = registration
                .secret_expires_at
                .map(|at| format!(" at {at}"))
                .unwrap_or_default();
            registrations.adopt(registration);
            return Err(OAuthError::new(
                OAuthErrorKind::InvalidClient,
                format!("the client secret expired{expired}; registering again"),
            ));
        }
        Ok(registrations.adopt(registration).credentials)
    }

    /// Drops the dynamic registration `client_id` (refused by the server,
    /// or its sign-in timed out), unless the store already holds another
    /// one; the next sign-in registers again. Returns whether it removed
    /// the stored registration. Configured credentials are never dropped.
    pub(crate) async fn forget(&self, client_id: &str) -> Result<bool, ClientAuthError> {
        let Identity::Registered(registrations) = self else {
            return Ok(false);
        };
        registrations.forget_current(Some(client_id));
        match registrations.stored().await? {
            Some((stored, revision)) if stored.client_id() == client_id => {
                tracing::info!(
                    client_id,
                    "dropping a client registration the server refused"
                );
                Ok(registrations
                    .tokens
                    .delete_if_revision(&registrations.key, revision)
                    .await?)
            }
            _ => Ok(false),
        }
    }

    /// Drops whatever dynamic registration is stored (on request: a sign-out
    /// that forgets the registration). Returns whether there was one.
    pub(crate) async fn forget_any(&self) -> Result<bool, ClientAuthError> {
        let Identity::Registered(registrations) = self else {
            return Ok(false);
        };
        registrations.forget_current(None);
        Ok(registrations.tokens.delete(&registrations.key).await?)
    }

    /// The stored registration's redirect URIs (to listen where it allows).
    pub(crate) async fn registered_redirect_uris(&self) -> Result<Vec<String>, ClientAuthError> {
        match self {
            Identity::Configured(_) => Ok(Vec::new()),
            Identity::Registered(registrations) => Ok(registrations
                .stored()
                .await?
                .map(|(registration, _)| registration.redirect_uris)
                .unwrap_or_default()),
        }
    }
}

fn store_failure(error: ClientAuthError) -> OAuthError {
    OAuthError::new(
        OAuthErrorKind::Transient,
        "the client registration could not be read from the store",
    )
    .with_source(error)
}

impl Registrations {
    fn current(&self) -> Option<Registration> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn adopt(&self, registration: Registration) -> Registration {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(registration.clone());
        registration
    }

    fn forget_current(&self, client_id: Option<&str>) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if client_id.is_none_or(|id| current.as_ref().is_some_and(|r| r.client_id() == id)) {
            *current = None;
        }
    }

    /// The stored registration and its revision; an unreadable record is
    /// reported and treated as absent (it is replaced by the next one).
    async fn stored(&self) -> Result<Option<(Registration, Revision)>, ClientAuthError> {
        let Some(stored) = self.tokens.get(&self.key).await? else {
            return Ok(None);
        };
        match records::decode::<Registration>(&stored.record) {
            Ok(registration) => Ok(Some((registration, stored.revision))),
            Err(error) => {
                warn_unreadable(&error);
                Ok(None)
            }
        }
    }

    async fn for_sign_in(&self, redirect_uri: &str) -> Result<Registration, ClientAuthError> {
        let _registering = self.registering.lock().await;
        let stored = self.tokens.get(&self.key).await?;
        let revision = stored.as_ref().map(|s| s.revision);
        let usable = stored
            .and_then(|s| {
                records::decode::<Registration>(&s.record)
                    .map_err(|error| warn_unreadable(&error))
                    .ok()
            })
            .filter(|r| r.usable_for(redirect_uri, self.clock.now(), self.sign_in));
        if let Some(registration) = usable {
            return Ok(self.adopt(registration));
        }
        let now = self.clock.now();
        let registration =
            register(&self.fetcher, &self.server, &self.client, redirect_uri, now).await?;
        let record = records::encode(&registration, now);
        match self
            .tokens
            .compare_and_swap(&self.key, revision, &record)
            .await?
        {
            CasOutcome::Swapped(_) => {
                tracing::info!(
                    issuer = %self.server.issuer,
                    client_id = %registration.client_id(),
                    method = %registration.credentials.auth_method,
                    "registered a client"
                );
                Ok(self.adopt(registration))
            }
            CasOutcome::Conflict { .. } => {
                // Another process stored one meanwhile: use it, so that
                // every process signs in and refreshes as the same client.
                match self.stored().await? {
                    Some((theirs, _)) if theirs.usable_for(redirect_uri, now, self.sign_in) => {
                        Ok(self.adopt(theirs))
                    }
                    _ => {
                        self.tokens.put(&self.key, &record).await?;
                        Ok(self.adopt(registration))
                    }
                }
            }
        }
    }
}

fn warn_unreadable(error: &RecordError) {
    tracing::warn!(%error, "ignoring a stored client registration this release cannot read");
}
