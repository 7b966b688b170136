//! [`TokenStore`] on Redis.

use std::time::Duration;

use mcp_authkit_core::{
    CasOutcome, LeaseToken, Result, Revision, ScanCursor, ScanPage, StoredToken, TokenKey,
    TokenRecord, TokenStore, async_trait, codec,
};

use crate::error::{self, not_ours};
use crate::{RedisStore, millis};

/// How many SCAN calls one page may make before it returns what it has, so a
/// page over a large keyspace of other data still comes back quickly.
const SCAN_CALLS_PER_PAGE: usize = 16;

/// What the write and delete scripts answered.
enum ScriptReply {
    Done(Option<u64>),
    Conflict(Option<u64>),
    /// KEYS[n] (1-based) holds a value that is not ours.
    NotOurs(usize),
}

fn script_reply(reply: Vec<i64>, operation: &'static str) -> Result<ScriptReply> {
    let number = |i: usize| reply.get(i).map(|n| *n as u64);
    match reply.first() {
        Some(1) => Ok(ScriptReply::Done(number(1))),
        Some(0) => Ok(ScriptReply::Conflict(number(1))),
        Some(-1) => Ok(ScriptReply::NotOurs(number(1).unwrap_or(1) as usize)),
        _ => Err(error::unexpected(operation, format!("{reply:?}"))),
    }
}

impl RedisStore {
    fn not_ours_token(&self, key: &TokenKey, which: usize) -> mcp_authkit_core::Error {
        let keys = &self.inner.keys;
        if which == 2 {
            not_ours(
                &keys.tombstone(key),
                "it should hold a deleted token's revision",
            )
        } else {
            not_ours(
                &keys.token(key),
                "it should be a hash with the fields rev and rec",
            )
        }
    }

    /// Writes `record` unless the stored revision differs from `expected`
    /// (`any`: write whatever is stored).
    async fn write_token(
        &self,
        key: &TokenKey,
        expected: &str,
        record: &TokenRecord,
        operation: &'static str,
    ) -> Result<ScriptReply> {
        let keys = &self.inner.keys;
        let name = keys.token(key);
        let mut invocation = self.inner.scripts.write_token.prepare_invoke();
        invocation
            .key(&name)
            .key(keys.tombstone(key))
            .arg(codec::encode_token(record))
            .arg(expected);
        let reply: Vec<i64> = self
            .inner
            .invoke(&invocation)
            .await
            .map_err(|e| error::on_key(operation, &name, e))?;
        script_reply(reply, operation)
    }

    async fn delete_token(
        &self,
        key: &TokenKey,
        expected: &str,
        operation: &'static str,
    ) -> Result<bool> {
        let keys = &self.inner.keys;
        let name = keys.token(key);
        let mut invocation = self.inner.scripts.delete_token.prepare_invoke();
        invocation
            .key(&name)
            .key(keys.tombstone(key))
            .arg(expected)
            .arg(self.inner.tombstone_ttl_ms);
        let reply: Vec<i64> = self
            .inner
            .invoke(&invocation)
            .await
            .map_err(|e| error::on_key(operation, &name, e))?;
        match script_reply(reply, operation)? {
            ScriptReply::Done(_) => Ok(true),
            ScriptReply::Conflict(_) => Ok(false),
            ScriptReply::NotOurs(which) => Err(self.not_ours_token(key, which)),
        }
    }
}

impl RedisStore {
    /// One `SCAN` call at `position` on `master` (`None`: the one server):
    /// appends the token keys found, returns the next position.
    async fn scan_once(
        &self,
        master: Option<&crate::ScanMaster>,
        position: u64,
        limit: usize,
        items: &mut Vec<TokenKey>,
    ) -> Result<u64> {
        let keys = &self.inner.keys;
        let mut scan = redis::cmd("SCAN");
        scan.arg(position)
            .arg("MATCH")
            .arg(keys.token_pattern())
            .arg("COUNT")
            .arg(limit.clamp(10, 1000));
        let (next, names): (u64, Vec<String>) = self
            .inner
            .query_on(master, scan)
            .await
            .map_err(|e| error::backend("scan tokens", e))?;
        for name in names {
            items.push(keys.parse_token(&name)?);
        }
        Ok(next)
    }

    /// [`try_acquire_lease`](TokenStore::try_acquire_lease) with the token
    /// chosen. Safe to send twice: the cluster client re-sends a request
    /// whose connection dropped before the reply, although the server may
    /// have run it; a key that already holds our token (random, never
    /// shared) was set by an earlier send of this same call, so the lease
    /// is ours.
    pub(crate) async fn acquire_lease(
        &self,
        key: &TokenKey,
        ttl: Duration,
        lease: LeaseToken,
    ) -> Result<Option<LeaseToken>> {
        let name = self.inner.keys.lease(key);
        // PTTL rides along so that a value without a TTL, which this library
        // never writes, is reported instead of blocking refreshes forever.
        let (set, holder, ttl_left): (Option<String>, Option<String>, i64) = self
            .inner
            .query_pipeline(
                redis::pipe()
                    .cmd("SET")
                    .arg(&name)
                    .arg(lease.as_str())
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl))
                    .cmd("GET")
                    .arg(&name)
                    .cmd("PTTL")
                    .arg(&name),
            )
            .await
            .map_err(|e| error::on_key("acquire refresh lease", &name, e))?;
        match (set, ttl_left) {
            (Some(_), _) => Ok(Some(lease)),
            (None, _) if holder.as_deref() == Some(lease.as_str()) => Ok(Some(lease)),
            (None, -1) => Err(not_ours(
                &name,
                "it has no expiry, which a refresh lease always has",
            )),
            (None, _) => Ok(None),
        }
    }
}

#[async_trait]
impl TokenStore for RedisStore {
    fn backend_name(&self) -> &'static str {
        self.backend_label()
    }

    /// One `PING` (the application's ACL allows it).
    async fn ping(&self) -> Result<std::time::Duration> {
        self.inner.ping().await
    }

    async fn get(&self, key: &TokenKey) -> Result<Option<StoredToken>> {
        let name = self.inner.keys.token(key);
        let (revision, record): (Option<String>, Option<Vec<u8>>) = self
            .inner
            .query(redis::cmd("HMGET").arg(&name).arg("rev").arg("rec"))
            .await
            .map_err(|e| error::on_key("get token", &name, e))?;
        let (revision, record) = match (revision, record) {
            (None, None) => return Ok(None),
            (Some(revision), Some(record)) => (revision, record),
            _ => return Err(self.not_ours_token(key, 1)),
        };
        let revision = revision
            .parse::<u64>()
            .map_err(|_| self.not_ours_token(key, 1))?;
        let record = codec::decode_token(&record).map_err(|e| error::undecodable(&name, e))?;
        Ok(Some(StoredToken {
            record,
            revision: Revision::new(revision),
        }))
    }

    async fn put(&self, key: &TokenKey, record: &TokenRecord) -> Result<Revision> {
        match self.write_token(key, "any", record, "put token").await? {
            ScriptReply::Done(Some(revision)) => Ok(Revision::new(revision)),
            ScriptReply::NotOurs(which) => Err(self.not_ours_token(key, which)),
            _ => Err(error::unexpected("put token", "without a revision")),
        }
    }

    async fn compare_and_swap(
        &self,
        key: &TokenKey,
        expected: Option<Revision>,
        record: &TokenRecord,
    ) -> Result<CasOutcome> {
        let expected = match expected {
            Some(revision) => revision.get().to_string(),
            None => "none".to_owned(),
        };
        match self
            .write_token(key, &expected, record, "compare-and-swap token")
            .await?
        {
            ScriptReply::Done(Some(revision)) => Ok(CasOutcome::Swapped(Revision::new(revision))),
            ScriptReply::Conflict(current) => Ok(CasOutcome::Conflict {
                current: current.map(Revision::new),
            }),
            ScriptReply::NotOurs(which) => Err(self.not_ours_token(key, which)),
            ScriptReply::Done(None) => Err(error::unexpected(
                "compare-and-swap token",
                "without a revision",
            )),
        }
    }

    async fn delete(&self, key: &TokenKey) -> Result<bool> {
        self.delete_token(key, "any", "delete token").await
    }

    async fn delete_if_revision(&self, key: &TokenKey, revision: Revision) -> Result<bool> {
        self.delete_token(key, &revision.get().to_string(), "delete token by revision")
            .await
    }

    async fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<LeaseToken>> {
        self.acquire_lease(key, ttl, LeaseToken::generate()).await
    }

    async fn release_lease(&self, key: &TokenKey, lease: &LeaseToken) -> Result<bool> {
        let name = self.inner.keys.lease(key);
        let mut invocation = self.inner.scripts.compare_and_delete.prepare_invoke();
        invocation.key(&name).arg(lease.as_str());
        let released: i64 = self
            .inner
            .invoke(&invocation)
            .await
            .map_err(|e| error::on_key("release refresh lease", &name, e))?;
        match released {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(not_ours(&name, "it should hold a lease token")),
        }
    }

    /// Lists token keys with `SCAN`. A page holds about `limit` keys (Redis
    /// decides exactly; a page may hold a few more, or none while more
    /// follow), and a key may be listed twice if the keyspace is resized
    /// during the scan. On a cluster the listing walks every master in turn.
    /// The cursor names the master it is on by node id (a SCAN position is
    /// only valid on the node that returned it) and the masters already
    /// walked. When that master is no longer a master (a failover), the
    /// listing goes on with the masters not walked yet, among them the one
    /// that took over, which is walked from the start: every key present
    /// throughout is listed, some twice. Resharding during a listing is not
    /// covered: keys moved to a master already walked may be missed.
    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage<TokenKey>> {
        let bad_cursor = || {
            mcp_authkit_core::Error::invalid_input(
                "scan cursor",
                "it was not returned by a redis store",
            )
        };
        if !self.inner.is_cluster() {
            let position: u64 = match cursor {
                Some(cursor) => cursor.as_str().parse().map_err(|_| bad_cursor())?,
                None => 0,
            };
            let limit = limit.max(1);
            let mut position = position;
            let mut items = Vec::new();
            for _ in 0..SCAN_CALLS_PER_PAGE {
                position = self.scan_once(None, position, limit, &mut items).await?;
                if position == 0 || items.len() >= limit {
                    break;
                }
            }
            let next = (position != 0).then(|| ScanCursor::new(position.to_string()));
            return Ok(ScanPage { items, next });
        }
        // A cluster cursor is `node id:position:walked ids, comma-separated`.
        let (mut current, mut position, mut walked): (String, u64, Vec<String>) = match cursor {
            Some(cursor) => {
                let mut parts = cursor.as_str().splitn(3, ':');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(id), Some(position), Some(walked)) if !id.is_empty() => (
                        id.to_owned(),
                        position.parse().map_err(|_| bad_cursor())?,
                        walked
                            .split(',')
                            .filter(|id| !id.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    ),
                    _ => return Err(bad_cursor()),
                }
            }
            None => (String::new(), 0, Vec::new()),
        };
        let masters = self.inner.scan_masters().await?;
        let next_unwalked = |walked: &[String]| {
            masters
                .iter()
                .find(|master| !walked.contains(&master.id))
                .map(|master| master.id.clone())
        };
        if !masters.iter().any(|master| master.id == current) {
            // A new listing, or its master failed over: its position means
            // nothing elsewhere, so the next master not walked starts at 0.
            position = 0;
            match next_unwalked(&walked) {
                Some(id) => current = id,
                None => {
                    return Ok(ScanPage {
                        items: Vec::new(),
                        next: None,
                    });
                }
            }
        }
        let limit = limit.max(1);
        let mut items = Vec::new();
        for _ in 0..SCAN_CALLS_PER_PAGE {
            let master = masters.iter().find(|master| master.id == current);
            position = self.scan_once(master, position, limit, &mut items).await?;
            if position == 0 {
                // This master is done: on to the next one not walked.
                walked.push(std::mem::take(&mut current));
                match next_unwalked(&walked) {
                    Some(id) => current = id,
                    None => return Ok(ScanPage { items, next: None }),
                }
            }
            if items.len() >= limit {
                break;
            }
        }
        let next = format!("{current}:{position}:{}", walked.join(","));
        Ok(ScanPage {
            items,
            next: Some(ScanCursor::new(next)),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mcp_authkit_core::{LeaseToken, TokenKey, TokenStore};

    use crate::{RedisStore, testing};

    /// The cluster client re-sends a request whose connection dropped
    /// before the reply, though the server may have run it: the second send
    /// of one acquisition finds the key holding its own token, and the
    /// lease is reported acquired (it is held), not refused.
    #[tokio::test]
    async fn a_lease_acquisition_sent_twice_is_acquired() {
        let store = RedisStore::builder(testing::redis_url().await)
            .prefix(testing::unique_prefix("lease-resent"))
            .connect()
            .await
            .unwrap();
        let key = TokenKey::new("github", "resent");
        let ttl = Duration::from_secs(30);
        let lease = LeaseToken::generate();
        let first = store.acquire_lease(&key, ttl, lease.clone()).await.unwrap();
        assert_eq!(first.as_ref(), Some(&lease));
        let resent = store.acquire_lease(&key, ttl, lease.clone()).await.unwrap();
        assert_eq!(
            resent.as_ref(),
            Some(&lease),
            "the re-sent acquisition holds the lease"
        );
        // Anyone else is still refused while it is held.
        assert_eq!(store.try_acquire_lease(&key, ttl).await.unwrap(), None);
        assert!(store.release_lease(&key, &lease).await.unwrap());
        store.delete_namespace().await.unwrap();
    }
}
