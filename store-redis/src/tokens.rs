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
        let name = self.inner.keys.lease(key);
        let lease = LeaseToken::generate();
        // PTTL rides along so that a value without a TTL, which this library
        // never writes, is reported instead of blocking refreshes forever.
        let (set, ttl_left): (Option<String>, i64) = self
            .inner
            .query_pipeline(
                redis::pipe()
                    .cmd("SET")
                    .arg(&name)
                    .arg(lease.as_str())
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl))
                    .cmd("PTTL")
                    .arg(&name),
            )
            .await
            .map_err(|e| error::on_key("acquire refresh lease", &name, e))?;
        match (set, ttl_left) {
            (Some(_), _) => Ok(Some(lease)),
            (None, -1) => Err(not_ours(
                &name,
                "it has no expiry, which a refresh lease always has",
            )),
            (None, _) => Ok(None),
        }
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
    /// during the scan. On a cluster the listing walks every master in turn
    /// (the cursor names the master by a slot it serves, so it follows a
    /// failover; a failover during the walk may list that shard's keys twice
    /// or, if its new master's table differs, miss keys written meanwhile).
    async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage<TokenKey>> {
        let bad_cursor = || {
            mcp_authkit_core::Error::invalid_input(
                "scan cursor",
                "it was not returned by a redis store",
            )
        };
        let nodes = self.inner.scan_nodes().await?;
        // A cursor is `position` on one server, `slot:position` on a cluster.
        let (mut node, mut position): (Option<u16>, u64) = match cursor {
            Some(cursor) => match cursor.as_str().split_once(':') {
                Some((slot, position)) => (
                    Some(slot.parse().map_err(|_| bad_cursor())?),
                    position.parse().map_err(|_| bad_cursor())?,
                ),
                None => (None, cursor.as_str().parse().map_err(|_| bad_cursor())?),
            },
            None => (nodes[0], 0),
        };
        if node.is_some() != self.inner.is_cluster() {
            return Err(bad_cursor());
        }
        let limit = limit.max(1);
        let keys = &self.inner.keys;
        let mut items = Vec::new();
        for _ in 0..SCAN_CALLS_PER_PAGE {
            let mut scan = redis::cmd("SCAN");
            scan.arg(position)
                .arg("MATCH")
                .arg(keys.token_pattern())
                .arg("COUNT")
                .arg(limit.clamp(10, 1000));
            let (next, names): (u64, Vec<String>) = self
                .inner
                .query_on(node, scan)
                .await
                .map_err(|e| error::backend("scan tokens", e))?;
            for name in names {
                items.push(keys.parse_token(&name)?);
            }
            position = next;
            if position == 0 {
                // This node is done: on to the next master, if any.
                match nodes.iter().find(|next| **next > node) {
                    Some(next) if node.is_some() => node = *next,
                    _ => {
                        node = None;
                        break;
                    }
                }
            }
            if items.len() >= limit {
                break;
            }
        }
        let next = match (node, position) {
            (None, 0) => None,
            (None, position) => Some(ScanCursor::new(position.to_string())),
            (Some(slot), position) => Some(ScanCursor::new(format!("{slot}:{position}"))),
        };
        Ok(ScanPage { items, next })
    }
}
