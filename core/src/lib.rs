//! # mcp-authkit-core
//!
//! The records, storage traits, errors, clock and token lifecycle that every
//! other mcp-authkit crate builds on. It knows no backend and no MCP SDK.
//!
//! - [`TokenStore`] keeps OAuth tokens by [`TokenKey`] (provider + subject),
//!   with revisions, compare-and-swap and a cross-process refresh lease.
//! - [`PendingStore`] keeps authorization flows between their start and their
//!   callback: exactly-once take, one active flow per key, and completion
//!   that wakes waiters in every process.
//! - [`TokenLifecycle`] serves tokens, refreshes them single-flight across
//!   processes, classifies refresh failures, and runs flows over an
//!   [`OAuthClient`].
//!
//! # Implementing a store
//!
//! A backend implements both traits (or one of them) with `#[async_trait]`.
//! It stores records through [`codec`] (versioned JSON), and keeps the
//! fields it must act on (revision, expiry) where it can query them.
//! This in-memory sketch shows the shape of a token store; see
//! `mcp-authkit-store-memory` for a complete one, and run
//! `mcp-authkit-conformance` on yours to prove every guarantee above.
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//! use std::time::Duration;
//! use async_trait::async_trait;
//! use mcp_authkit_core::*;
//!
//! #[derive(Default)]
//! struct MyStore {
//!     rows: Mutex<HashMap<TokenKey, (Vec<u8>, u64)>>,
//!     next_revision: Mutex<u64>,
//! }
//!
//! impl MyStore {
//!     fn next(&self) -> u64 {
//!         let mut next = self.next_revision.lock().unwrap();
//!         *next += 1;
//!         *next
//!     }
//! }
//!
//! #[async_trait]
//! impl TokenStore for MyStore {
//!     async fn get(&self, key: &TokenKey) -> Result<Option<StoredToken>> {
//!         let rows = self.rows.lock().unwrap();
//!         let Some((bytes, revision)) = rows.get(key) else { return Ok(None) };
//!         let record = codec::decode_token(bytes)
//!             .map_err(|e| Error::decode("mine", key.to_string(), e))?;
//!         Ok(Some(StoredToken { record, revision: Revision::new(*revision) }))
//!     }
//!     async fn put(&self, key: &TokenKey, record: &TokenRecord) -> Result<Revision> {
//!         let revision = self.next();
//!         self.rows.lock().unwrap().insert(key.clone(), (codec::encode_token(record), revision));
//!         Ok(Revision::new(revision))
//!     }
//!     // compare_and_swap, delete, delete_if_revision, leases and scan follow
//!     // the same pattern; each must be atomic.
//! #   async fn compare_and_swap(&self, _: &TokenKey, _: Option<Revision>, _: &TokenRecord) -> Result<CasOutcome> { unimplemented!() }
//! #   async fn delete(&self, _: &TokenKey) -> Result<bool> { unimplemented!() }
//! #   async fn delete_if_revision(&self, _: &TokenKey, _: Revision) -> Result<bool> { unimplemented!() }
//! #   async fn try_acquire_lease(&self, _: &TokenKey, _: Duration) -> Result<Option<LeaseToken>> { unimplemented!() }
//! #   async fn release_lease(&self, _: &TokenKey, _: &LeaseToken) -> Result<bool> { unimplemented!() }
//! #   async fn scan(&self, _: Option<&ScanCursor>, _: usize) -> Result<ScanPage<TokenKey>> { unimplemented!() }
//! }
//! ```
//!
//! A backend whose expired entries stay until removed (SQL tables) offers
//! a background purge through [`PurgeTask`], and one that keeps its rows
//! in SQL-style columns decodes them with [`rows`].
//!
//! Wrappers are stores too: `mcp-authkit-store-encrypted` implements both
//! traits over any inner store, so stacks compose.

#![warn(missing_docs)]

pub mod codec;
mod error;
mod flow;
mod lifecycle;
mod oauth;
pub mod observe;
mod purge_task;
mod record;
pub mod rows;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod time;

#[cfg(feature = "rustls")]
pub use error::is_certificate_refusal;
pub use error::{
    BoxError, CodecError, Error, MalformedRecord, OAuthError, OAuthErrorKind, Result, find_cause,
};
pub use flow::{FlowOutcome, FlowState, InsertOutcome, PendingFlow, PkceVerifier, random_urlsafe};
pub use lifecycle::{
    Access, AccessToken, AuthorizationReason, BeginOutcome, CallbackParams, CompletedFlow,
    FlowRequest, LifecycleConfig, TokenLifecycle, TokenLifecycleBuilder,
};
pub use oauth::{AuthorizationRequest, OAuthClient, TokenResponse};
pub use purge_task::PurgeTask;
pub use record::{ExtraFields, Revision, StoredToken, TokenKey, TokenRecord};
pub use store::{
    CasOutcome, LeaseGuard, LeaseToken, PING_PROVIDER, PendingStore, PurgeReport, ScanCursor,
    ScanPage, TokenStore,
};
pub use time::{Clock, ManualClock, SystemClock, Timestamp, deadline_after};

/// Re-exported so stores implement the traits with the same macro version.
pub use async_trait::async_trait;
/// Secret wrappers used in records, re-exported so users need no direct
/// `secrecy` dependency.
pub use secrecy::{ExposeSecret, SecretString};
/// The URL type of [`OAuthClient::authorization_url`].
pub use url::Url;
