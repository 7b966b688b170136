//! [`PendingStore`] on Redis.

use std::time::Duration;

use mcp_authkit_core::codec::{FLOW_FORMAT_VERSION, OUTCOME_FORMAT_VERSION};
use mcp_authkit_core::{
    FlowOutcome, FlowState, InsertOutcome, PendingFlow, PendingStore, PurgeReport, Result,
    TokenKey, async_trait, codec,
};
use redis::Value;

use crate::error::{self, not_ours};
use crate::keys::state_tag;
use crate::scripts::{CLAIM_ACTIVE, COMPARE_AND_DELETE, STORE_FLOW};
use crate::subscription::Ready;
use crate::{RedisStore, millis};

/// How soon a waiter subscribes and reads the stored outcome again after
/// that read failed retryably (doubling up to [`RECHECK_MAX`]), or, on a
/// cluster that was just disrupted, after the last read.
const RECHECK_FIRST: Duration = Duration::from_millis(100);
const RECHECK_MAX: Duration = Duration::from_secs(2);

/// How long after a cluster disruption waiters keep checking the store by
/// themselves (see `Completions::settling`): longer than a failover with
/// the default `cluster-node-timeout` (15 s) and its settling.
const SETTLE_WINDOW: Duration = Duration::from_secs(60);

/// How long `take` keeps sending itself again after retryable errors on a
/// cluster: longer than a Redis Cluster failover with the default
/// `cluster-node-timeout` (15 s).
pub(crate) const RESEND_WINDOW: Duration = Duration::from_secs(30);

/// The same on a single server, at the least. Nothing fails over there and
/// the connection re-sends nothing by itself: a take's reply is lost only
/// to a dropped connection or a timeout, and the re-send helps only once
/// the server answers again, which a reconnect finds at once (a blip) or
/// not for a long while (a restart). Waiting 30 s on a dead server would
/// hold an OAuth callback that long for nothing.
const SINGLE_RESEND_WINDOW: Duration = Duration::from_secs(5);

/// Requests the cluster client sends per command at most (its first try
/// and its retries, see `connection.rs`), each up to one response timeout.
const CLUSTER_TRIES: u32 = 5;

/// Added to a taken record's lifetime beyond the last re-send's answer:
/// retry waits, scheduling, clock steps.
const TAKEN_RECORD_MARGIN: Duration = Duration::from_secs(10);
pub(crate) const RESEND_FIRST_DELAY: Duration = Duration::from_millis(25);
pub(crate) const RESEND_MAX_DELAY: Duration = Duration::from_secs(1);

/// A script reply `{status}` or `{status, text}`.
fn status_and_text(reply: &Value) -> Option<(i64, Option<Vec<u8>>)> {
    let Value::Array(items) = reply else {
        return None;
    };
    let status = match items.first()? {
        Value::Int(status) => *status,
        _ => return None,
    };
    let text = match items.get(1) {
        Some(Value::BulkString(bytes)) => Some(bytes.clone()),
        Some(Value::SimpleString(text)) => Some(text.clone().into_bytes()),
        _ => None,
    };
    Some((status, text))
}

impl RedisStore {
    /// How long `take` sends itself again after retryable errors.
    pub(crate) fn resend_window(&self) -> Duration {
        if self.inner.is_cluster() {
            RESEND_WINDOW
        } else {
            // At least one re-send after a reply that timed out.
            SINGLE_RESEND_WINDOW.max(self.inner.settings.response_timeout * 2)
        }
    }

    /// How long a taken flow's record stays when its take cannot remove it:
    /// as long as a run of that take may still arrive (the last re-send
    /// starts before the window ends and the cluster client may try it
    /// [`CLUSTER_TRIES`] times, each up to a response timeout), plus a
    /// margin. A take that gets its answer removes the record at once;
    /// `complete` removes it too.
    fn taken_record_ttl(&self) -> Duration {
        self.resend_window()
            + self.inner.settings.response_timeout * CLUSTER_TRIES
            + TAKEN_RECORD_MARGIN
    }

    /// Best-effort removal of the record this take left, once it has its
    /// answer: it holds the whole flow (the PKCE verifier among it), and a
    /// caller that takes a flow without completing it (a discarded
    /// authorization) would leave it until its TTL. A failure leaves it to
    /// that TTL.
    async fn forget_taken(&self, state: &FlowState, nonce: &str) {
        let mut invocation = self.inner.scripts.forget_taken.prepare_invoke();
        invocation.key(self.inner.keys.taken(state)).arg(nonce);
        if let Err(error) = self.inner.invoke::<i64>(&invocation).await {
            tracing::debug!(%error, "could not remove a taken flow's record; it expires by its TTL");
        }
    }

    fn flow_location(&self, state: &FlowState) -> String {
        self.inner.keys.describe_state_key("flow", state)
    }

    fn outcome_location(&self, state: &FlowState) -> String {
        self.inner.keys.describe_state_key("out", state)
    }

    /// Best-effort removal of a flow this call stored and must not keep; a
    /// failure leaves it to its TTL (nobody knows its state).
    async fn forget_flow(&self, flow_key: &str) {
        if let Err(error) = self
            .inner
            .query::<i64>(redis::cmd("DEL").arg(flow_key))
            .await
        {
            tracing::warn!(%error, "could not remove an unused pending flow; it expires by its TTL");
        }
    }

    /// Best-effort end of an active mark this call set and must not keep.
    async fn release_mark(&self, key: &TokenKey, state: &FlowState) {
        let mut invocation = self.inner.scripts.compare_and_delete.prepare_invoke();
        invocation
            .key(self.inner.keys.active(key))
            .arg(state.as_str());
        if let Err(error) = self.inner.invoke::<i64>(&invocation).await {
            tracing::warn!(%error, "could not end an active-flow mark; it expires with the flow");
        }
    }

    /// The stored outcome, read through the command connection.
    async fn stored_outcome(&self, state: &FlowState) -> Result<Option<FlowOutcome>> {
        let name = self.inner.keys.outcome(state);
        let location = self.outcome_location(state);
        let bytes: Option<Vec<u8>> = self
            .inner
            .query(redis::cmd("GET").arg(&name))
            .await
            .map_err(|e| error::on_key("read flow outcome", &location, e))?;
        bytes
            .map(|bytes| {
                codec::decode_outcome(&bytes).map_err(|e| error::undecodable(&location, e))
            })
            .transpose()
    }
    /// One run of the take script under `nonce` (see `TAKE_FLOW` in
    /// `scripts.rs`).
    pub(crate) async fn take_once(
        &self,
        state: &FlowState,
        nonce: &str,
    ) -> Result<Option<PendingFlow>> {
        let location = self.flow_location(state);
        let mut invocation = self.inner.scripts.take_flow.prepare_invoke();
        invocation
            .key(self.inner.keys.flow(state))
            .key(self.inner.keys.taken(state))
            .arg(FLOW_FORMAT_VERSION)
            .arg(nonce)
            .arg(millis(self.taken_record_ttl()));
        let reply: Value = self
            .inner
            .invoke(&invocation)
            .await
            .map_err(|e| error::backend("take pending flow", e))?;
        let (status, bytes) = status_and_text(&reply)
            .ok_or_else(|| error::unexpected("take pending flow", format!("{reply:?}")))?;
        match (status, bytes) {
            (0, _) => Ok(None),
            (1, Some(bytes)) => {
                let flow =
                    codec::decode_flow(&bytes).map_err(|e| error::undecodable(&location, e))?;
                Ok((!flow.is_expired_at(self.inner.clock.now())).then_some(flow))
            }
            // Taken by an earlier run of this take, whose reply was lost:
            // the flow was still in Redis then, so within its TTL (set from
            // its expiry). It is this caller's even if it expired since.
            (2, Some(bytes)) => codec::decode_flow(&bytes)
                .map(Some)
                .map_err(|e| error::undecodable(&location, e)),
            (-1, Some(bytes)) => Err(match codec::decode_flow(&bytes) {
                Err(e) => error::undecodable(&location, e),
                Ok(_) => not_ours(&location, "it is not in the form this library writes"),
            }),
            (-1, None) => Err(not_ours(
                &location,
                "it holds a Redis type this library never writes there",
            )),
            (-2, _) => Err(not_ours(
                &self.inner.keys.describe_state_key("taken", state),
                "it should hold the record of the take that removed this flow",
            )),
            (status, _) => Err(error::unexpected(
                "take pending flow",
                format!("status {status}"),
            )),
        }
    }
}

#[async_trait]
impl PendingStore for RedisStore {
    fn pending_backend_name(&self) -> &'static str {
        self.backend_label()
    }

    /// One `PING`, as for tokens: both kinds of record share a connection.
    async fn ping_pending(&self) -> Result<std::time::Duration> {
        self.inner.ping().await
    }

    async fn insert(&self, flow: &PendingFlow) -> Result<InsertOutcome> {
        let now = self.inner.clock.now();
        if flow.is_expired_at(now) {
            // Gone for every operation at once, as if it expired right away.
            return Ok(InsertOutcome::Inserted);
        }
        let ttl = millis(flow.expires_at.saturating_duration_since(now));
        let keys = &self.inner.keys;
        let flow_key = keys.flow(&flow.state);
        let mark = keys.active(&flow.key);
        // Flow first, mark second: a caller that sees the mark always finds
        // the flow (see the crate docs). One round trip on a single server;
        // two on a cluster, where the keys live on different slots.
        let mut store_flow = redis::cmd("EVAL");
        store_flow
            .arg(STORE_FLOW)
            .arg(1)
            .arg(&flow_key)
            .arg(codec::encode_flow(flow))
            .arg(ttl);
        let mut claim_active = redis::cmd("EVAL");
        claim_active
            .arg(CLAIM_ACTIVE)
            .arg(1)
            .arg(&mark)
            .arg(flow.state.as_str())
            .arg(ttl);
        let (stored, claim): (i64, Value) = if self.inner.is_cluster() {
            let stored: i64 = self
                .inner
                .query(&store_flow)
                .await
                .map_err(|e| error::backend("insert pending flow", e))?;
            let claim = if stored < 0 {
                // Not ours to claim for: the claim is skipped.
                Value::Array(vec![Value::Int(0)])
            } else {
                self.inner
                    .query(&claim_active)
                    .await
                    .map_err(|e| error::backend("insert pending flow", e))?
            };
            (stored, claim)
        } else {
            self.inner
                .query_pipeline(
                    redis::pipe()
                        .add_command(store_flow)
                        .add_command(claim_active),
                )
                .await
                .map_err(|e| error::backend("insert pending flow", e))?
        };
        let claim = status_and_text(&claim)
            .ok_or_else(|| error::unexpected("insert pending flow", format!("{claim:?}")))?;
        if stored < 0 {
            if claim.0 == 1 {
                self.release_mark(&flow.key, &flow.state).await;
            }
            return Err(not_ours(
                &self.flow_location(&flow.state),
                "it holds another value under this flow's state (states must be unique)",
            ));
        }
        match claim {
            (1, _) => Ok(InsertOutcome::Inserted),
            (0, Some(active)) => {
                // Ours (stored now, or by an earlier try of this insert)
                // and never active: nobody else knows it.
                if stored >= 0 {
                    self.forget_flow(&flow_key).await;
                }
                let active = String::from_utf8(active).map_err(|_| {
                    not_ours(&mark, "it should hold the state of the key's active flow")
                })?;
                Ok(InsertOutcome::Joined(FlowState::new(active)))
            }
            (-1, _) => {
                if stored >= 0 {
                    self.forget_flow(&flow_key).await;
                }
                Err(not_ours(
                    &mark,
                    "it should hold the state of the key's active flow, with an expiry",
                ))
            }
            other => Err(error::unexpected(
                "insert pending flow",
                format!("status {}", other.0),
            )),
        }
    }

    async fn get_flow(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        let name = self.inner.keys.flow(state);
        let location = self.flow_location(state);
        let bytes: Option<Vec<u8>> = self
            .inner
            .query(redis::cmd("GET").arg(&name))
            .await
            .map_err(|e| error::on_key("read pending flow", &location, e))?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let flow = codec::decode_flow(&bytes).map_err(|e| error::undecodable(&location, e))?;
        Ok((!flow.is_expired_at(self.inner.clock.now())).then_some(flow))
    }

    async fn active_flow(&self, key: &TokenKey) -> Result<Option<FlowState>> {
        let name = self.inner.keys.active(key);
        let state: Option<String> = self
            .inner
            .query(redis::cmd("GET").arg(&name))
            .await
            .map_err(|e| error::on_key("read active flow", &name, e))?;
        Ok(state.map(FlowState::new))
    }

    /// Sent again with the same nonce after a retryable error, for up to
    /// 30 seconds on a cluster (a failover) and 5 seconds on a single
    /// server (at least two response timeouts): the take script answers a
    /// second run of one take with the flow the first run removed, so a
    /// reply lost to a dropped connection or a failover does not lose the
    /// flow (see the crate docs). The record that makes this work is
    /// removed as soon as the take has its answer.
    ///
    /// A retryable error from `take` means no run's reply arrived in that
    /// window; the flow may have been taken by a run whose reply was lost,
    /// and is then gone for every caller: a new `take` answers `None`.
    async fn take(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        let nonce = mcp_authkit_core::random_urlsafe(16);
        let give_up = tokio::time::Instant::now() + self.resend_window();
        let mut delay = RESEND_FIRST_DELAY;
        loop {
            match self.take_once(state, &nonce).await {
                Err(error)
                    if error.is_retryable() && tokio::time::Instant::now() + delay < give_up =>
                {
                    tracing::debug!(%error, "take failed retryably; sending it again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RESEND_MAX_DELAY);
                }
                Ok(Some(flow)) => {
                    self.forget_taken(state, &nonce).await;
                    return Ok(Some(flow));
                }
                result => return result,
            }
        }
    }

    async fn complete(
        &self,
        key: &TokenKey,
        state: &FlowState,
        outcome: &FlowOutcome,
        keep_for: Duration,
    ) -> Result<()> {
        let keys = &self.inner.keys;
        let mark = keys.active(key);
        let encoded = codec::encode_outcome(outcome);
        let mut message = state_tag(state).into_bytes();
        message.push(b' ');
        message.extend_from_slice(&encoded);
        let (channel, publish) = if self.inner.is_cluster() {
            (keys.done_channel(state), "SPUBLISH")
        } else {
            (keys.channel().to_owned(), "PUBLISH")
        };
        let mut end_mark = redis::cmd("EVAL");
        end_mark
            .arg(COMPARE_AND_DELETE)
            .arg(1)
            .arg(&mark)
            .arg(state.as_str());
        let mut finish = redis::cmd("EVAL");
        finish
            .arg(&self.inner.scripts.finish_flow)
            .arg(3)
            .arg(keys.flow(state))
            .arg(keys.outcome(state))
            .arg(keys.taken(state))
            .arg(encoded)
            .arg(millis(keep_for))
            .arg(channel)
            .arg(message)
            .arg(FLOW_FORMAT_VERSION)
            .arg(OUTCOME_FORMAT_VERSION)
            .arg(publish);
        // The mark ends first, so a waiter woken by the announcement that
        // starts a new flow is not joined to this one (see the crate docs):
        // in one pipeline on a single server, as two steps on a cluster.
        let (mark_ended, finished): (i64, i64) = if self.inner.is_cluster() {
            let mark_ended: i64 = self
                .inner
                .query(&end_mark)
                .await
                .map_err(|e| error::backend("complete flow", e))?;
            let finished: i64 = self
                .inner
                .query(&finish)
                .await
                .map_err(|e| error::backend("complete flow", e))?;
            (mark_ended, finished)
        } else {
            self.inner
                .query_pipeline(redis::pipe().add_command(end_mark).add_command(finish))
                .await
                .map_err(|e| error::backend("complete flow", e))?
        };
        match finished {
            1 => {}
            -1 => {
                return Err(not_ours(
                    &self.flow_location(state),
                    "it is not a pending flow this release can read",
                ));
            }
            -2 => {
                return Err(not_ours(
                    &self.outcome_location(state),
                    "it is not a flow outcome this release can read",
                ));
            }
            other => {
                return Err(error::unexpected(
                    "complete flow",
                    format!("status {other}"),
                ));
            }
        }
        if mark_ended < 0 {
            return Err(not_ours(
                &mark,
                "it should hold the state of the key's active flow",
            ));
        }
        Ok(())
    }

    async fn outcome(&self, state: &FlowState) -> Result<Option<FlowOutcome>> {
        self.stored_outcome(state).await
    }

    async fn wait(&self, state: &FlowState, timeout: Duration) -> Result<Option<FlowOutcome>> {
        let deadline = mcp_authkit_core::deadline_after(timeout);
        let completions = self.inner.completions()?;
        // Registered before the stored outcome is read: what is published
        // from now on reaches this waiter.
        let mut registration = completions.register(state_tag(state));
        let mut link = completions.link();
        let mut recheck_delay = RECHECK_FIRST;
        loop {
            // Until the subscription is confirmed, a read could miss a
            // completion published right after it.
            let subscribed = match completions
                .ready(&registration, &mut link, deadline)
                .await?
            {
                Ready::Yes => true,
                // Out of time without a subscription: answer from the
                // store, which is what the subscription would have told.
                Ready::TimedOut => return self.stored_outcome(state).await,
                // Not subscribed (yet): the store still has the answer if
                // there is one; subscribe again after a backoff.
                Ready::NotYet => false,
            };
            // A retryable read error (a shard failing over, a dropped
            // connection, a timeout) does not end the wait: it subscribes
            // and reads again, backing off, until its deadline.
            let recheck = match self.stored_outcome(state).await {
                Ok(Some(outcome)) => return Ok(Some(outcome)),
                Ok(None) => !subscribed || completions.settling(SETTLE_WINDOW),
                Err(error) if error.is_retryable() => {
                    tracing::debug!(%error, "a waiter's read failed; reading again");
                    true
                }
                Err(error) => return Err(error),
            };
            if !recheck {
                recheck_delay = RECHECK_FIRST;
            }
            tokio::select! {
                outcome = registration.delivered() => return Ok(Some(outcome)),
                // Dropped or re-subscribed: read the store again, since
                // announcements made in between were not delivered.
                changed = link.changed() => {
                    if changed.is_err() {
                        return Err(mcp_authkit_core::Error::Internal(
                            "the completion listener stopped".into(),
                        ));
                    }
                }
                _ = tokio::time::sleep(recheck_delay), if recheck => {
                    recheck_delay = (recheck_delay * 2).min(RECHECK_MAX);
                }
                // One last read, as in the TimedOut branch: an outcome
                // stored after the read above whose announcement was lost
                // is still the answer.
                _ = tokio::time::sleep_until(deadline) => return self.stored_outcome(state).await,
            }
        }
    }

    async fn purge_expired(&self) -> Result<PurgeReport> {
        // Every flow, mark, outcome, lease and tombstone carries a Redis TTL.
        Ok(PurgeReport::default())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mcp_authkit_core::{FlowOutcome, FlowState, PendingStore, codec};

    use crate::{RedisStore, testing};

    #[tokio::test]
    async fn waiters_that_time_out_leave_nothing_registered() {
        let store = RedisStore::builder(testing::redis_url().await)
            .prefix(testing::unique_prefix("unregister"))
            .connect()
            .await
            .unwrap();
        let mut waits = tokio::task::JoinSet::new();
        for i in 0..50 {
            let store = store.clone();
            // Some states twice, so entries shared by two waiters are covered.
            let state = FlowState::new(format!("never-completed-{}", i % 40));
            waits.spawn(async move { store.wait(&state, Duration::from_millis(200)).await });
        }
        while let Some(waited) = waits.join_next().await {
            assert_eq!(waited.unwrap().unwrap(), None);
        }
        assert_eq!(store.inner.completions().unwrap().waited_states(), 0);
        store.delete_namespace().await.unwrap();
    }

    /// A take sent twice (the cluster client re-sends a script whose reply
    /// was lost, and `take` re-sends after a retryable error) gets the flow
    /// both times; any other take gets nothing, and once the flow is
    /// completed its taken record is gone.
    #[tokio::test]
    async fn a_take_sent_twice_gets_the_flow_both_times() {
        use mcp_authkit_core::{PendingFlow, Timestamp, TokenKey};
        let store = RedisStore::builder(testing::redis_url().await)
            .prefix(testing::unique_prefix("take-resent"))
            .connect()
            .await
            .unwrap();
        let key = TokenKey::new("github", "resent");
        let flow = PendingFlow::new(
            key.clone(),
            "http://127.0.0.1:9/callback",
            vec!["repo".into()],
            Timestamp::now(),
            Duration::from_secs(300),
        );
        store.insert(&flow).await.unwrap();
        let bytes = |taken: Option<PendingFlow>| taken.map(|flow| codec::encode_flow(&flow));
        let first = store.take_once(&flow.state, "nonce-a").await.unwrap();
        assert_eq!(bytes(first), Some(codec::encode_flow(&flow)));
        // Left by a take that did not get its answer: it lasts as long as
        // that take may still be re-sent, derived from the re-send window
        // and the response timeout (single server: 6 + 5 x 3 + 10 s).
        let ttl: i64 = store
            .inner
            .query(redis::cmd("PTTL").arg(store.inner.keys.taken(&flow.state)))
            .await
            .unwrap();
        assert!(
            (25_000..=31_000).contains(&ttl),
            "taken record TTL {ttl} ms"
        );
        let resent = store.take_once(&flow.state, "nonce-a").await.unwrap();
        assert_eq!(
            bytes(resent),
            Some(codec::encode_flow(&flow)),
            "the re-sent take gets the same flow"
        );
        assert!(
            store
                .take_once(&flow.state, "nonce-b")
                .await
                .unwrap()
                .is_none()
        );
        assert!(store.take(&flow.state).await.unwrap().is_none());
        let outcome = FlowOutcome::Failed { reason: "x".into() };
        store
            .complete(&key, &flow.state, &outcome, Duration::from_secs(60))
            .await
            .unwrap();
        let taken: i64 = store
            .inner
            .query(redis::cmd("EXISTS").arg(store.inner.keys.taken(&flow.state)))
            .await
            .unwrap();
        assert_eq!(taken, 0, "complete removes the taken record");
        assert!(
            store
                .take_once(&flow.state, "nonce-a")
                .await
                .unwrap()
                .is_none()
        );
        store.delete_namespace().await.unwrap();
    }

    /// An outcome stored while the waiter sleeps, whose announcement never
    /// arrives (lost with a dropped subscription, say), is still returned at
    /// the deadline rather than `None`.
    #[tokio::test]
    async fn wait_reads_the_store_once_more_at_its_deadline() {
        let store = RedisStore::builder(testing::redis_url().await)
            .prefix(testing::unique_prefix("deadline-read"))
            .connect()
            .await
            .unwrap();
        let state = FlowState::new("stored-without-announcement");
        let waiter = {
            let (store, state) = (store.clone(), state.clone());
            tokio::spawn(async move { store.wait(&state, Duration::from_millis(600)).await })
        };
        // Well after the waiter's first read, well before its deadline.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let outcome = FlowOutcome::Failed { reason: "x".into() };
        // Written straight to the key: no SPUBLISH/PUBLISH reaches the waiter.
        let _: () = store
            .inner
            .query(
                redis::cmd("SET")
                    .arg(store.inner.keys.outcome(&state))
                    .arg(codec::encode_outcome(&outcome))
                    .arg("PX")
                    .arg(60_000),
            )
            .await
            .unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), Some(outcome));
        store.delete_namespace().await.unwrap();
    }
}
