//! The wrapper: encrypts secret fields on the way in, decrypts them on the
//! way out, and passes everything else through.

use std::fmt;
use std::time::Duration;

use mcp_authkit_core::{
    CasOutcome, ExposeSecret, ExtraFields, FlowOutcome, FlowState, InsertOutcome, LeaseToken,
    PendingFlow, PendingStore, PurgeReport, Result, Revision, ScanCursor, ScanPage, SecretString,
    StoredToken, TokenKey, TokenRecord, TokenStore, async_trait,
};

use crate::binding;
use crate::envelope::{
    ENVELOPE_VERSION, EnvelopeInfo, NONCE_LEN, Opened, Place, TokenField, V1, open, seal,
};
use crate::error::EncryptionError;
use crate::key::Keyring;
use crate::nonce;

/// Nonces for a record with up to this many secret fields are drawn on the
/// stack; more use the heap.
const INLINE_NONCES: usize = 8;

/// Encryption at rest over any token or pending store.
///
/// Implements [`TokenStore`] when `S` does and [`PendingStore`] when `S`
/// does, so it wraps any store (a concrete one, a third party's, an
/// `Arc<dyn TokenStore>`) and can itself be wrapped or shared like any other.
/// See the [crate documentation](crate) for what is encrypted and what stays
/// in clear.
#[derive(Clone)]
pub struct EncryptedStore<S> {
    pub(crate) inner: S,
    pub(crate) keyring: Keyring,
    undecryptable_tokens_as_absent: bool,
    pub(crate) accept_unencrypted: bool,
}

impl<S> EncryptedStore<S> {
    /// Wraps `inner`: writes are encrypted with the keyring's primary key,
    /// reads are decrypted with whichever keyring key the value names.
    pub fn new(inner: S, keyring: Keyring) -> Self {
        EncryptedStore {
            inner,
            keyring,
            undecryptable_tokens_as_absent: false,
            accept_unencrypted: false,
        }
    }

    /// When `true`, [`TokenStore::get`] returns `None` for a token it cannot
    /// decrypt (unknown or wrong key, tampered, truncated or clear value)
    /// instead of an error, and logs a warning naming the key and the cause.
    /// The token lifecycle then asks the user to authorize again, and the new
    /// token overwrites the unreadable one.
    ///
    /// Off by default, because a missing key in the keyring would otherwise
    /// silently send every user back to the authorization page: turn it on
    /// when re-authorizing is preferable to an error (for example after
    /// deliberately dropping a leaked key). Pending flows are not affected;
    /// they expire within minutes anyway.
    pub fn treat_undecryptable_tokens_as_absent(mut self, enabled: bool) -> Self {
        self.undecryptable_tokens_as_absent = enabled;
        self
    }

    /// When `true`, secret fields stored in clear (by a store that was used
    /// without this wrapper) are read as they are instead of failing with
    /// [`EncryptionError::NotEncrypted`]; the next write, or a
    /// [`rekey_tokens`](Self::rekey_tokens), encrypts them.
    ///
    /// For migrating an existing store only: while it is on, someone who can
    /// write to the backend can plant a token in clear and have it used. Turn
    /// it on, run a rekey until its report is complete, then turn it off.
    pub fn accept_unencrypted_records(mut self, enabled: bool) -> Self {
        self.accept_unencrypted = enabled;
        self
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The wrapped store, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The keys in use.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The token with every secret field sealed under the primary key: the
    /// access token with the fingerprint of the clear fields, the other
    /// fields bound to the access token's nonce.
    pub(crate) fn encrypt_token(&self, key: &TokenKey, record: &TokenRecord) -> TokenRecord {
        let fields = 1 + usize::from(record.refresh_token.is_some()) + record.extra.len();
        let mut inline = [0u8; INLINE_NONCES * NONCE_LEN];
        let mut heap = Vec::new();
        let nonces: &mut [u8] = if fields <= INLINE_NONCES {
            &mut inline[..fields * NONCE_LEN]
        } else {
            heap.resize(fields * NONCE_LEN, 0);
            &mut heap
        };
        nonce::fill(nonces);
        let mut nonces = nonces
            .chunks_exact(NONCE_LEN)
            .map(|chunk| <&[u8; NONCE_LEN]>::try_from(chunk).expect("chunks of NONCE_LEN"));
        let primary = self.keyring.primary();
        let anchor = nonces.next().expect("a nonce for the access token");
        let access_token = seal(
            primary,
            &Place::Token {
                key,
                field: TokenField::AccessToken,
                record_nonce: None,
            },
            anchor,
            &binding::token(record).encode(),
            record.access_token.expose_secret(),
        );
        let mut seal_field = |field: TokenField<'_>, secret: &SecretString| {
            let nonce = nonces.next().expect("one nonce per field");
            let place = Place::Token {
                key,
                field,
                record_nonce: Some(anchor),
            };
            seal(primary, &place, nonce, b"", secret.expose_secret())
        };

        let mut out = TokenRecord::new(access_token, record.obtained_at);
        out.refresh_token = record
            .refresh_token
            .as_ref()
            .map(|secret| SecretString::from(seal_field(TokenField::RefreshToken, secret)));
        let mut extra = ExtraFields::default();
        for (name, value) in record.extra.iter() {
            extra.insert(name, seal_field(TokenField::Extra(name), value));
        }
        out.extra = extra;
        out.token_type.clone_from(&record.token_type);
        out.scopes.clone_from(&record.scopes);
        out.expires_at = record.expires_at;
        out
    }

    /// Opens one field; `None` when it is stored in clear and that is
    /// accepted (migration).
    fn open_field(
        &self,
        place: &Place<'_>,
        secret: &SecretString,
        fingerprint_len: usize,
    ) -> std::result::Result<Option<Opened>, EncryptionError> {
        match open(
            &self.keyring,
            place,
            secret.expose_secret(),
            fingerprint_len,
        ) {
            Ok(opened) => Ok(Some(opened)),
            Err(EncryptionError::NotEncrypted) if self.accept_unencrypted => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Opens every secret field of a stored token in place; on failure, the
    /// error names the field and the cause.
    ///
    /// In a version 2 record the access token comes first: its fingerprint
    /// must match the clear fields read beside it, and every other field
    /// must be a version 2 envelope bound to its nonce.
    pub(crate) fn open_token(&self, key: &TokenKey, record: &mut TokenRecord) -> Result<()> {
        let fingerprint = binding::token(record);
        let anchor_place = Place::Token {
            key,
            field: TokenField::AccessToken,
            record_nonce: None,
        };
        let fail =
            |place: &Place<'_>, error: EncryptionError| error.into_store_error(place.describe());
        let anchor = self
            .open_field(
                &anchor_place,
                &record.access_token,
                binding::fingerprint_len(binding::TOKEN_FIELDS),
            )
            .map_err(|error| fail(&anchor_place, error))?;
        let (version, nonce) = match &anchor {
            Some(opened) => (opened.version, Some(opened.nonce)),
            None => (V1, None),
        };
        if let Some(opened) = &anchor
            && opened.version >= 2
        {
            fingerprint
                .check(&opened.fingerprint)
                .map_err(|error| fail(&anchor_place, error))?;
        }
        let open_one = |field: TokenField<'_>, secret: &mut SecretString| {
            let place = Place::Token {
                key,
                field,
                record_nonce: nonce.as_ref(),
            };
            match self.open_field(&place, secret, 0) {
                Ok(Some(opened)) if opened.version < version => Err(fail(
                    &place,
                    // A field of an older envelope version in a newer
                    // record: put back from an earlier write.
                    EncryptionError::Tampered {
                        key_id: EnvelopeInfo::read(secret.expose_secret())
                            .map(|info| info.key_id)
                            .unwrap_or_default(),
                    },
                )),
                Ok(Some(opened)) => {
                    *secret = SecretString::from(opened.secret);
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(error) => Err(fail(&place, error)),
            }
        };
        if let Some(refresh) = record.refresh_token.as_mut() {
            open_one(TokenField::RefreshToken, refresh)?;
        }
        for (name, value) in record.extra.values_mut() {
            open_one(TokenField::Extra(name), value)?;
        }
        if let Some(opened) = anchor {
            record.access_token = SecretString::from(opened.secret);
        }
        Ok(())
    }

    /// Whether every secret field of a stored (sealed) token is under the
    /// primary key in the current envelope version.
    pub(crate) fn is_sealed_under_primary(&self, record: &TokenRecord) -> bool {
        let primary = self.keyring.primary().id();
        let under_primary = |secret: &SecretString| {
            EnvelopeInfo::read(secret.expose_secret())
                .is_ok_and(|info| info.version == ENVELOPE_VERSION && info.key_id == primary)
        };
        under_primary(&record.access_token)
            && record.refresh_token.as_ref().is_none_or(under_primary)
            && record.extra.iter().all(|(_, value)| under_primary(value))
    }

    fn encrypt_flow(&self, flow: &PendingFlow) -> PendingFlow {
        let mut nonce = [0u8; NONCE_LEN];
        nonce::fill(&mut nonce);
        let place = Place::FlowVerifier {
            state: &flow.state,
            key: &flow.key,
        };
        let sealed = seal(
            self.keyring.primary(),
            &place,
            &nonce,
            &binding::flow(flow).encode(),
            flow.pkce_verifier.expose_secret(),
        );
        let mut out = flow.clone();
        out.pkce_verifier = SecretString::from(sealed);
        out
    }

    fn open_flow(&self, flow: &mut PendingFlow) -> Result<()> {
        let place = Place::FlowVerifier {
            state: &flow.state,
            key: &flow.key,
        };
        let fail = |error: EncryptionError| error.into_store_error(place.describe());
        let opened = self
            .open_field(
                &place,
                &flow.pkce_verifier,
                binding::fingerprint_len(binding::FLOW_FIELDS),
            )
            .map_err(fail)?;
        if let Some(opened) = opened {
            if opened.version >= 2 {
                binding::flow(flow)
                    .check(&opened.fingerprint)
                    .map_err(fail)?;
            }
            flow.pkce_verifier = SecretString::from(opened.secret);
        }
        Ok(())
    }
}

impl<S> fmt::Debug for EncryptedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("keyring", &self.keyring)
            .field(
                "undecryptable_tokens_as_absent",
                &self.undecryptable_tokens_as_absent,
            )
            .field("accept_unencrypted", &self.accept_unencrypted)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: TokenStore> TokenStore for EncryptedStore<S> {
    fn backend_name(&self) -> &'static str {
        "encrypted"
    }

    /// The inner store's: nothing to decrypt.
    async fn ping(&self) -> Result<std::time::Duration> {
        self.inner.ping().await
    }

    async fn get(&self, key: &TokenKey) -> Result<Option<StoredToken>> {
        let Some(mut stored) = self.inner.get(key).await? else {
            return Ok(None);
        };
        match self.open_token(key, &mut stored.record) {
            Ok(()) => Ok(Some(stored)),
            Err(error) if self.undecryptable_tokens_as_absent => {
                tracing::warn!(
                    %error,
                    revision = %stored.revision,
                    "a stored token cannot be decrypted; treating it as absent, so the user \
                     authorizes again"
                );
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    async fn put(&self, key: &TokenKey, record: &TokenRecord) -> Result<Revision> {
        self.inner.put(key, &self.encrypt_token(key, record)).await
    }

    async fn compare_and_swap(
        &self,
        key: &TokenKey,
        expected: Option<Revision>,
        record: &TokenRecord,
    ) -> Result<CasOutcome> {
        let sealed = self.encrypt_token(key, record);
        self.inner.compare_and_swap(key, expected, &sealed).await
    }

    async fn delete(&self, key: &TokenKey) -> Result<bool> {
        self.inner.delete(key).await
    }

    async fn delete_if_revision(&self, key: &TokenKey, revision: Revision) -> Result<bool> {
        self.inner.delete_if_revision(key, revision).await
    }

    async fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<LeaseToken>> {
        self.inner.try_acquire_lease(key, ttl).await
    }

    async fn release_lease(&self, key: &TokenKey, lease: &LeaseToken) -> Result<bool> {
        self.inner.release_lease(key, lease).await
    }

    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage<TokenKey>> {
        self.inner.scan(cursor, limit).await
    }
}

#[async_trait]
impl<S: PendingStore> PendingStore for EncryptedStore<S> {
    fn pending_backend_name(&self) -> &'static str {
        "encrypted"
    }

    /// The inner store's: nothing to decrypt.
    async fn ping_pending(&self) -> Result<std::time::Duration> {
        self.inner.ping_pending().await
    }

    async fn insert(&self, flow: &PendingFlow) -> Result<InsertOutcome> {
        self.inner.insert(&self.encrypt_flow(flow)).await
    }

    async fn get_flow(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        let Some(mut flow) = self.inner.get_flow(state).await? else {
            return Ok(None);
        };
        self.open_flow(&mut flow)?;
        Ok(Some(flow))
    }

    async fn active_flow(&self, key: &TokenKey) -> Result<Option<FlowState>> {
        self.inner.active_flow(key).await
    }

    async fn take(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        let Some(mut flow) = self.inner.take(state).await? else {
            return Ok(None);
        };
        self.open_flow(&mut flow)?;
        Ok(Some(flow))
    }

    async fn complete(
        &self,
        key: &TokenKey,
        state: &FlowState,
        outcome: &FlowOutcome,
        keep_for: Duration,
    ) -> Result<()> {
        self.inner.complete(key, state, outcome, keep_for).await
    }

    async fn outcome(&self, state: &FlowState) -> Result<Option<FlowOutcome>> {
        self.inner.outcome(state).await
    }

    async fn wait(&self, state: &FlowState, timeout: Duration) -> Result<Option<FlowOutcome>> {
        self.inner.wait(state, timeout).await
    }

    async fn purge_expired(&self) -> Result<PurgeReport> {
        self.inner.purge_expired().await
    }
}
