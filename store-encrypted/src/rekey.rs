//! Re-encrypting every stored token under the primary key, so an old key can
//! be retired.

use std::time::Duration;

use mcp_authkit_core::{CasOutcome, Error, Result, ScanCursor, TokenKey, TokenStore};

use crate::store::EncryptedStore;

/// How [`EncryptedStore::rekey_tokens_with`] walks the store.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RekeyOptions {
    /// Keys listed per scan page.
    pub page_size: usize,
    /// How long the rekey holds a key's refresh lease while it rewrites the
    /// key's token; the lease runs out by itself after this if the process
    /// dies meanwhile.
    pub lease_ttl: Duration,
    /// How many more passes to make over keys whose lease a refresher held,
    /// after the walk.
    pub busy_passes: u32,
    /// The pause before each of those passes.
    pub busy_pause: Duration,
}

impl Default for RekeyOptions {
    fn default() -> Self {
        RekeyOptions {
            page_size: 200,
            lease_ttl: Duration::from_secs(10),
            busy_passes: 5,
            busy_pause: Duration::from_millis(500),
        }
    }
}

/// What a rekey did. Counts are of keys as the scan listed them (a key
/// written during the walk may be listed twice).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RekeyReport {
    /// Keys listed by the scan.
    pub scanned: u64,
    /// Tokens re-encrypted under the primary key (including tokens stored in
    /// clear, when [`accept_unencrypted_records`](EncryptedStore::accept_unencrypted_records)
    /// is on).
    pub rekeyed: u64,
    /// Tokens already under the primary key.
    pub already_current: u64,
    /// Keys whose token was deleted during the walk.
    pub vanished: u64,
    /// Keys still being refreshed (their lease held, or rewritten under us
    /// again and again) after every pass: run the rekey again.
    pub busy: Vec<TokenKey>,
    /// Tokens that could not be decrypted, left as they are, with the reason
    /// (an [`EncryptionError`](crate::EncryptionError) inside, see
    /// [`EncryptionError::find_in`](crate::EncryptionError::find_in)).
    pub undecryptable: Vec<(TokenKey, Error)>,
}

impl RekeyReport {
    /// Whether every token is now under the primary key: when this holds,
    /// no token needs a previous key any more.
    pub fn is_complete(&self) -> bool {
        self.busy.is_empty() && self.undecryptable.is_empty()
    }
}

enum Step {
    Rekeyed,
    Current,
    Vanished,
    Busy,
    Undecryptable(Error),
}

/// Attempts at a compare-and-swap when a writer that does not take the lease
/// (a new authorization) keeps replacing the token.
const SWAP_ATTEMPTS: usize = 3;

impl<S: TokenStore> EncryptedStore<S> {
    /// Re-encrypts every stored token under the primary key, with default
    /// [`RekeyOptions`].
    pub async fn rekey_tokens(&self) -> Result<RekeyReport> {
        self.rekey_tokens_with(&RekeyOptions::default()).await
    }

    /// Re-encrypts every stored token under the primary key, so that the
    /// previous keys can be removed from the keyring once the report
    /// [is complete](RekeyReport::is_complete).
    ///
    /// Walks the keys with [`TokenStore::scan`]. For each key it takes the
    /// key's refresh lease (the one the token lifecycle refreshes under), so
    /// it never races a refresh: a key whose lease is held is revisited after
    /// the walk. It then reads the token, decrypts it, and writes it back
    /// with compare-and-swap on the revision it read, so a token written
    /// meanwhile (by a new authorization, which takes no lease) is never
    /// overwritten: it is read again instead. Tokens that do not decrypt are
    /// left alone and listed in the report.
    ///
    /// Safe to run while the application serves requests, from any replica,
    /// and more than once. Store errors end the walk; what was rekeyed so far
    /// stays rekeyed, so simply run it again.
    pub async fn rekey_tokens_with(&self, options: &RekeyOptions) -> Result<RekeyReport> {
        let mut report = RekeyReport::default();
        let mut busy = Vec::new();
        let mut cursor: Option<ScanCursor> = None;
        loop {
            let page = self
                .inner
                .scan(cursor.as_ref(), options.page_size.max(1))
                .await?;
            for key in page.items {
                report.scanned += 1;
                let step = self.rekey_one(&key, options).await?;
                record(&mut report, &mut busy, key, step);
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        for _ in 0..options.busy_passes {
            if busy.is_empty() {
                break;
            }
            tokio::time::sleep(options.busy_pause).await;
            for key in std::mem::take(&mut busy) {
                let step = self.rekey_one(&key, options).await?;
                record(&mut report, &mut busy, key, step);
            }
        }
        report.busy = busy;
        tracing::info!(
            scanned = report.scanned,
            rekeyed = report.rekeyed,
            already_current = report.already_current,
            busy = report.busy.len(),
            undecryptable = report.undecryptable.len(),
            primary = self.keyring.primary().id(),
            "rekey of stored tokens finished"
        );
        Ok(report)
    }

    async fn rekey_one(&self, key: &TokenKey, options: &RekeyOptions) -> Result<Step> {
        let Some(lease) = self.inner.try_acquire_lease(key, options.lease_ttl).await? else {
            return Ok(Step::Busy);
        };
        let step = self.rekey_holding_lease(key).await;
        if let Err(error) = self.inner.release_lease(key, &lease).await {
            tracing::warn!(%error, %key, "could not release a lease after rekeying; it expires by its TTL");
        }
        step
    }

    async fn rekey_holding_lease(&self, key: &TokenKey) -> Result<Step> {
        for _ in 0..SWAP_ATTEMPTS {
            let Some(stored) = self.inner.get(key).await? else {
                return Ok(Step::Vanished);
            };
            let mut record = stored.record.clone();
            if let Err(error) = self.open_token(key, &mut record) {
                return Ok(Step::Undecryptable(error));
            }
            if self.is_sealed_under_primary(&stored.record) {
                return Ok(Step::Current);
            }
            let sealed = self.encrypt_token(key, &record);
            match self
                .inner
                .compare_and_swap(key, Some(stored.revision), &sealed)
                .await?
            {
                CasOutcome::Swapped(_) => return Ok(Step::Rekeyed),
                CasOutcome::Conflict { current: None } => return Ok(Step::Vanished),
                // Replaced since we read it: look at the new token.
                CasOutcome::Conflict { current: Some(_) } => {}
            }
        }
        Ok(Step::Busy)
    }
}

fn record(report: &mut RekeyReport, busy: &mut Vec<TokenKey>, key: TokenKey, step: Step) {
    match step {
        Step::Rekeyed => report.rekeyed += 1,
        Step::Current => report.already_current += 1,
        Step::Vanished => report.vanished += 1,
        Step::Busy => busy.push(key),
        Step::Undecryptable(error) => report.undecryptable.push((key, error)),
    }
}
