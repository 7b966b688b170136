//! The completion listener: one subscription connection per store (shared
//! by its clones) that every waiter of the store listens through; on a
//! cluster, one per shard (see [`Completions::start_sharded`]).
//!
//! `complete` publishes `<state tag> <outcome>` on the prefix's channel in
//! the same script that stores the outcome. The listener task keeps one
//! RESP3 connection subscribed to that channel and hands each message to the
//! waiters registered for its state. A waiter registers, waits until the
//! subscription is confirmed, and only then reads the stored outcome: a
//! completion that lands before the read is in the store, one that lands
//! after it is delivered by the subscription. When the connection drops the
//! listener reconnects and re-subscribes, and every waiter reads the stored
//! outcome again, catching completions published while it was away.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mcp_authkit_core::{Error, FlowOutcome, codec};
use redis::cluster_async::ClusterConnection;
use redis::{Client, PushKind, Value};
use tokio::sync::{RwLock, mpsc, watch};
use tokio::time::Instant;

use crate::connection::{AbortOnDrop, ClusterTarget, Settings, subscription_connection};
use crate::keys::Keys;

/// How often a cluster listener unsubscribes the channels nobody waits on.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How long the sweep waits for one `SUNSUBSCRIBE` (at most the response
/// timeout): a channel that fails is tried again next sweep.
const SWEEP_UNSUBSCRIBE_LIMIT: Duration = Duration::from_millis(500);

/// How often the listener checks that its connection still answers, so a
/// connection that died silently (no reset, no close) is replaced.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);
const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(25);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// How often at most the sharded subscription connection is dropped for
/// not answering.
const REPLACE_INTERVAL: Duration = Duration::from_secs(2);

/// The state of the subscription. (On a cluster: `Up` until the first
/// disruption, `Down` ever after; each change tells waiters to subscribe
/// and read again.)
#[derive(Clone, Debug)]
pub(crate) enum Link {
    /// Not subscribed (yet, or since a drop); the last failure, if any.
    Down(Option<Error>),
    /// Subscribed.
    Up,
}

impl Link {
    fn is_down(&self) -> bool {
        matches!(self, Link::Down(_))
    }
}

type OutcomeSender = watch::Sender<Option<FlowOutcome>>;

struct Shared {
    /// Waiters by state tag; one sender per state, one receiver per waiter.
    waiters: Mutex<HashMap<String, OutcomeSender>>,
    /// Cluster: when the last disruption was seen (see
    /// [`Completions::settling`]).
    disrupted_at: Mutex<Option<Instant>>,
    link: watch::Sender<Link>,
}

impl Shared {
    /// A cluster disruption: waiters subscribe and read again now, and keep
    /// checking for a while (see [`Completions::settling`]).
    fn disrupted(&self) {
        *lock(&self.disrupted_at) = Some(Instant::now());
        self.link.send_replace(Link::Down(None));
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<String, OutcomeSender>> {
        // No critical section can panic half-way; the map stays sound.
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn deliver(&self, data: &[Value]) {
        let Some(Value::BulkString(message)) = data.get(1) else {
            return;
        };
        let Some(space) = message.iter().position(|b| *b == b' ') else {
            tracing::warn!(
                "ignoring a message on the completion channel that this library did not publish"
            );
            return;
        };
        let Ok(tag) = std::str::from_utf8(&message[..space]) else {
            return;
        };
        let waiters = self.waiters();
        // Decoded only when someone in this process waits for it.
        let Some(sender) = waiters.get(tag) else {
            return;
        };
        match codec::decode_outcome(&message[space + 1..]) {
            Ok(outcome) => {
                sender.send_replace(Some(outcome));
            }
            Err(error) => tracing::warn!(
                %error,
                "ignoring an undecodable completion message; its waiters will read the stored outcome"
            ),
        }
    }
}

/// The listener of one store; dropping it stops the task and closes the
/// connection.
pub(crate) struct Completions {
    shared: Arc<Shared>,
    /// Set on a cluster: the sharded subscriptions.
    sharded: Option<Arc<Sharded>>,
    task: AbortOnDrop,
}

/// Whether a waiter may read the stored outcome now.
pub(crate) enum Ready {
    /// Subscribed: whatever is published from now on is delivered.
    Yes,
    /// The deadline passed first.
    TimedOut,
    /// Cluster: the subscribe failed retryably (a shard failing over, a
    /// connection that does not answer); the waiter reads the store and
    /// tries again after a backoff.
    NotYet,
}

/// The sharded subscriptions of a store on a cluster: one redis-rs cluster
/// connection used for `SSUBSCRIBE` only, which keeps one connection per
/// node it needs (the master of each slot a waited flow lives on), however
/// many flows are waited on. redis-rs re-subscribes after a reconnect or a
/// topology change; waiters do not trust that alone: after any disruption
/// (a dropped node connection, a server-sent `SUNSUBSCRIBE` when a slot
/// moves) they subscribe again themselves and read the stored outcome again.
struct Sharded {
    client: redis::cluster::ClusterClient,
    settings: Settings,
    keys: Keys,
    /// The subscribing cluster connection; `None` until the first wait, or
    /// after it was dropped for not answering (see [`Sharded::subscribe`]).
    connection: Mutex<Option<ClusterConnection>>,
    /// Held while a connection is opened, so waiters open one, not many.
    opening: tokio::sync::Mutex<()>,
    /// When the connection was last dropped for not answering.
    dropped_at: Mutex<Option<Instant>>,
    /// Tags whose channel we subscribed to (and did not unsubscribe since).
    subscribed: Mutex<HashSet<String>>,
    /// Subscribes hold it shared, the sweep that unsubscribes idle channels
    /// exclusively: a channel is never unsubscribed under a waiter that
    /// registered before the sweep looked and subscribed after it.
    gate: RwLock<()>,
}

impl Sharded {
    async fn connection(&self) -> redis::RedisResult<ClusterConnection> {
        if let Some(connection) = lock(&self.connection).clone() {
            return Ok(connection);
        }
        let _opening = self.opening.lock().await;
        if let Some(connection) = lock(&self.connection).clone() {
            return Ok(connection);
        }
        let open = async {
            let mut connection = self.client.get_async_connection().await?;
            crate::connection::name_cluster_connections(
                &mut connection,
                &self.settings.client_name,
            )
            .await;
            redis::RedisResult::Ok(connection)
        };
        let connection = tokio::time::timeout(self.settings.connect_timeout, open)
            .await
            .map_err(|_| timed_out("opening the subscription connection"))??;
        *lock(&self.connection) = Some(connection.clone());
        Ok(connection)
    }

    /// Drops the subscribing connection after a command on it got no
    /// answer, at most once per [`REPLACE_INTERVAL`]; the next subscribe
    /// opens a new one (and the waiters subscribe again, since their
    /// subscriptions went with the old one). Measured with redis-rs 1.8
    /// through a planned failover (`CLUSTER FAILOVER`): now and then a
    /// cluster connection stops answering for good (every `SSUBSCRIBE` of
    /// every shard timed out for a minute), while a new one answers at once.
    fn drop_unanswering(&self, shared: &Shared) {
        {
            let mut dropped_at = lock(&self.dropped_at);
            if dropped_at.is_some_and(|at| at.elapsed() < REPLACE_INTERVAL) {
                return;
            }
            *dropped_at = Some(Instant::now());
        }
        if lock(&self.connection).take().is_some() {
            tracing::debug!("the sharded subscription connection stopped answering; replacing it");
            lock(&self.subscribed).clear();
            shared.disrupted();
        }
    }

    /// Subscribes to the channel of `tag` (again: `SSUBSCRIBE` of a channel
    /// the connection already has is a no-op that confirms it). `again`:
    /// after a disruption, when the slot may have a new master.
    async fn subscribe(&self, shared: &Shared, tag: &str, again: bool) -> redis::RedisResult<()> {
        let _shared = self.gate.read().await;
        let mut connection = self.connection().await?;
        let limit = self.settings.response_timeout;
        let channel = self.keys.done_channel_of_tag(tag);
        if again {
            // A demoted master still accepts SSUBSCRIBE (replicas serve
            // shard channels) but, measured on Redis 7.0, a subscription
            // made there after the failover missed every later SPUBLISH.
            // A keyed read of the channel's own slot (the channel name is
            // never a key) gets a MOVED from a demoted master, which makes
            // redis-rs refresh its slot map, so the SSUBSCRIBE below goes to
            // the slot's current master.
            let exists = redis::cmd("EXISTS").arg(&channel).to_owned();
            let answered =
                tokio::time::timeout(limit, exists.query_async::<i64>(&mut connection)).await;
            if answered.is_err() {
                self.drop_unanswering(shared);
            }
            answered.map_err(|_| timed_out("EXISTS got no answer"))??;
        }
        let answered = tokio::time::timeout(limit, connection.ssubscribe(channel)).await;
        if answered.is_err() {
            self.drop_unanswering(shared);
        }
        answered.map_err(|_| timed_out("SSUBSCRIBE got no answer"))??;
        lock(&self.subscribed).insert(tag.to_owned());
        Ok(())
    }

    /// Unsubscribes the channels nobody in this process waits on any more.
    /// Skips the round when a subscribe holds the gate (it may be stuck on
    /// an unreachable shard: waiting would hold back every later subscribe
    /// behind this queued writer). Unsubscribes go out concurrently with a
    /// short limit, so one unreachable shard costs one short wait, not one
    /// per channel.
    async fn sweep(&self, shared: &Shared) {
        let Ok(_exclusive) = self.gate.try_write() else {
            return;
        };
        let idle: Vec<String> = {
            let waiters = shared.waiters();
            lock(&self.subscribed)
                .iter()
                .filter(|tag| !waiters.contains_key(*tag))
                .cloned()
                .collect()
        };
        if idle.is_empty() {
            return;
        }
        let Some(connection) = lock(&self.connection).clone() else {
            return;
        };
        let limit = self.settings.response_timeout.min(SWEEP_UNSUBSCRIBE_LIMIT);
        let mut unsubscribes = tokio::task::JoinSet::new();
        for tag in idle {
            let mut connection = connection.clone();
            let channel = self.keys.done_channel_of_tag(&tag);
            unsubscribes.spawn(async move {
                let done = tokio::time::timeout(limit, connection.sunsubscribe(channel)).await;
                (tag, matches!(done, Ok(Ok(()))))
            });
        }
        while let Some(finished) = unsubscribes.join_next().await {
            // A failure leaves a subscription nobody listens to, which costs
            // nothing but its messages; it is tried again next sweep.
            if let Ok((tag, true)) = finished {
                lock(&self.subscribed).remove(&tag);
            }
        }
    }
}

fn timed_out(what: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        what.to_owned(),
    ))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Completions {
    /// Starts listening on `channel` (in the background: waiters see the
    /// link come up).
    pub(crate) fn start(client: Client, settings: Settings, channel: String) -> Self {
        let shared = Arc::new(Shared {
            waiters: Mutex::new(HashMap::new()),
            disrupted_at: Mutex::new(None),
            link: watch::Sender::new(Link::Down(None)),
        });
        let task = tokio::spawn(listen(Arc::clone(&shared), client, settings, channel));
        Completions {
            shared,
            sharded: None,
            task: AbortOnDrop(task),
        }
    }

    /// Starts the listener of a cluster store: waiters subscribe to their
    /// flow's sharded channel themselves ([`ready`](Self::ready)); the task
    /// delivers messages, tells waiters of disruptions, and unsubscribes
    /// channels nobody waits on.
    pub(crate) fn start_sharded(
        target: &ClusterTarget,
        settings: Settings,
        keys: Keys,
    ) -> Result<Self, Error> {
        let (pushes, incoming) = mpsc::unbounded_channel();
        let client = target.client(&settings, Some(pushes))?;
        let shared = Arc::new(Shared {
            waiters: Mutex::new(HashMap::new()),
            disrupted_at: Mutex::new(None),
            link: watch::Sender::new(Link::Up),
        });
        let sharded = Arc::new(Sharded {
            client,
            settings,
            keys,
            connection: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            dropped_at: Mutex::new(None),
            subscribed: Mutex::new(HashSet::new()),
            gate: RwLock::new(()),
        });
        let task = tokio::spawn(listen_sharded(
            Arc::clone(&shared),
            Arc::clone(&sharded),
            incoming,
        ));
        Ok(Completions {
            shared,
            sharded: Some(sharded),
            task: AbortOnDrop(task),
        })
    }

    /// Waits until a completion of `registration`'s state published from now
    /// on will be delivered, or the deadline. Single server: the store's
    /// subscription is up. Cluster: the flow's sharded channel is
    /// subscribed (retried while the shard is unreachable or failing over).
    pub(crate) async fn ready(
        &self,
        registration: &Registration,
        link: &mut watch::Receiver<Link>,
        deadline: Instant,
    ) -> Result<Ready, Error> {
        if let Some(sharded) = &self.sharded {
            // Disruptions seen so far are handled by this subscribe.
            let again = link.borrow_and_update().is_down();
            let attempt = tokio::time::timeout_at(
                deadline,
                sharded.subscribe(&self.shared, &registration.tag, again),
            )
            .await;
            return match attempt {
                Err(_) => Ok(Ready::TimedOut),
                Ok(Ok(())) => Ok(Ready::Yes),
                Ok(Err(error)) => {
                    let error = crate::error::backend("subscribing to a flow's completion", error);
                    if !error.is_retryable() {
                        return Err(error);
                    }
                    tracing::debug!(%error, "sharded subscription failed; the waiter retries");
                    Ok(Ready::NotYet)
                }
            };
        }
        loop {
            match &*link.borrow_and_update() {
                Link::Up => return Ok(Ready::Yes),
                // A refusal that retrying cannot fix (say, an ACL that
                // forbids SUBSCRIBE) would otherwise look like a wait
                // that never ends.
                Link::Down(Some(error)) if !error.is_retryable() => return Err(error.clone()),
                Link::Down(_) => {}
            }
            match tokio::time::timeout_at(deadline, link.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(Error::Internal("the completion listener stopped".into()));
                }
                Err(_) => return Ok(Ready::TimedOut),
            }
        }
    }

    /// Cluster only: whether the last disruption (a dropped node connection,
    /// a server-ended subscription) was less than `window` ago. Until a
    /// failover has settled, a waiter's new subscription may land on a
    /// master that is being demoted: measured on Redis 7.0, such a
    /// subscription silently misses every later `SPUBLISH` (the demoted
    /// node does not end it). While settling, waiters do not trust their
    /// subscription alone: they subscribe and read again every little while.
    pub(crate) fn settling(&self, window: Duration) -> bool {
        self.sharded.is_some()
            && lock(&self.shared.disrupted_at).is_some_and(|at| at.elapsed() < window)
    }

    /// Whether the listener still runs (it stops when the runtime it was
    /// started on shuts down).
    pub(crate) fn is_running(&self) -> bool {
        !self.task.0.is_finished()
    }

    /// Registers a waiter for the state with this tag; it receives every
    /// completion of that state delivered from now on.
    pub(crate) fn register(&self, tag: String) -> Registration {
        let receiver = self
            .shared
            .waiters()
            .entry(tag.clone())
            .or_insert_with(|| watch::Sender::new(None))
            .subscribe();
        Registration {
            shared: Arc::clone(&self.shared),
            tag,
            receiver: Some(receiver),
        }
    }

    /// The subscription's state, to wait for it to come up or change.
    pub(crate) fn link(&self) -> watch::Receiver<Link> {
        self.shared.link.subscribe()
    }

    /// How many states have waiters right now.
    #[cfg(test)]
    pub(crate) fn waited_states(&self) -> usize {
        self.shared.waiters().len()
    }
}

/// A waiter's interest in one state; removes the state's entry when its last
/// waiter goes.
pub(crate) struct Registration {
    shared: Arc<Shared>,
    tag: String,
    receiver: Option<watch::Receiver<Option<FlowOutcome>>>,
}

impl Registration {
    /// Waits until a completion of the state is delivered.
    pub(crate) async fn delivered(&mut self) -> FlowOutcome {
        let receiver = self
            .receiver
            .as_mut()
            .expect("the receiver lives as long as the registration");
        let delivered = receiver
            .wait_for(Option::is_some)
            .await
            .map(|outcome| outcome.clone());
        match delivered {
            Ok(Some(outcome)) => outcome,
            // The sender lives in the map while this receiver exists.
            _ => std::future::pending().await,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut waiters = self.shared.waiters();
        if waiters
            .get(&self.tag)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            waiters.remove(&self.tag);
        }
    }
}

fn closed() -> Error {
    Error::backend(
        crate::BACKEND,
        "listening for flow completions",
        true,
        std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the subscription connection was closed",
        ),
    )
}

/// Keeps the subscription up for as long as the store lives.
async fn listen(shared: Arc<Shared>, client: Client, settings: Settings, channel: String) {
    let mut delay = MIN_RECONNECT_DELAY;
    let connect_limit = settings
        .connect_timeout
        .saturating_add(settings.response_timeout);
    loop {
        let (pushes, mut incoming) = mpsc::unbounded_channel();
        let attempt = tokio::time::timeout(connect_limit, async {
            let mut connection = subscription_connection(&client, &settings, pushes).await?;
            connection.subscribe(&channel).await?;
            redis::RedisResult::Ok(connection)
        })
        .await;
        let mut connection = match attempt {
            Ok(Ok(connection)) => connection,
            failed => {
                let error = match failed {
                    Ok(Err(error)) => crate::error::backend("subscribing to completions", error),
                    _ => Error::Timeout {
                        operation: "subscribing to flow completions",
                        after: connect_limit,
                    },
                };
                tracing::debug!(%error, "completion subscription is down; retrying");
                shared.link.send_replace(Link::Down(Some(error)));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                continue;
            }
        };
        delay = MIN_RECONNECT_DELAY;
        shared.link.send_replace(Link::Up);

        let mut health = tokio::time::interval(HEALTH_CHECK_INTERVAL);
        health.tick().await;
        let lost = loop {
            tokio::select! {
                push = incoming.recv() => match push {
                    Some(push) if push.kind == PushKind::Message => shared.deliver(&push.data),
                    Some(push) if push.kind == PushKind::Disconnection => break closed(),
                    Some(_) => {}
                    None => break closed(),
                },
                _ = health.tick() => {
                    if let Err(error) = redis::cmd("PING").exec_async(&mut connection).await {
                        break crate::error::backend("checking the completion subscription", error);
                    }
                }
            }
        };
        tracing::debug!(error = %lost, "completion subscription lost; re-subscribing");
        shared.link.send_replace(Link::Down(Some(lost)));
    }
}

/// Delivers the messages of a cluster store's sharded subscriptions, tells
/// waiters of every disruption (through the link: they subscribe and read
/// again), and unsubscribes channels nobody waits on.
async fn listen_sharded(
    shared: Arc<Shared>,
    sharded: Arc<Sharded>,
    mut incoming: mpsc::UnboundedReceiver<redis::PushInfo>,
) {
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The sweep runs in its own task: messages keep flowing while it waits
    // on a shard. One at a time; aborted with this task.
    let mut sweeping: Option<AbortOnDrop> = None;
    loop {
        tokio::select! {
            push = incoming.recv() => {
                let Some(push) = push else { return };
                match push.kind {
                    PushKind::SMessage | PushKind::Message => shared.deliver(&push.data),
                    // A node connection dropped (its master failed, say):
                    // redis-rs reconnects and re-subscribes in the
                    // background; waiters do it too, and read again.
                    PushKind::Disconnection => {
                        tracing::debug!("a sharded subscription connection dropped");
                        shared.disrupted();
                    }
                    // The server ends subscriptions of a slot the node no
                    // longer serves (resharding, failover); our own sweep's
                    // unsubscribes land here too, for channels nobody waits on.
                    PushKind::SUnsubscribe => {
                        let waited = channel_tag(&push.data)
                            .is_some_and(|tag| shared.waiters().contains_key(tag));
                        if waited {
                            tracing::debug!("the server ended a sharded subscription");
                            shared.disrupted();
                        }
                    }
                    _ => {}
                }
            }
            _ = sweep.tick() => {
                if sweeping.as_ref().is_none_or(|task| task.0.is_finished()) {
                    let (shared, sharded) = (Arc::clone(&shared), Arc::clone(&sharded));
                    sweeping = Some(AbortOnDrop(tokio::spawn(async move {
                        sharded.sweep(&shared).await;
                    })));
                }
            }
        }
    }
}

/// The state tag in a `prefix:done:{tag}` channel name of a push.
fn channel_tag(data: &[Value]) -> Option<&str> {
    let Some(Value::BulkString(channel)) = data.first() else {
        return None;
    };
    let channel = std::str::from_utf8(channel).ok()?;
    let start = channel.find('{')?;
    channel[start + 1..].strip_suffix('}')
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mcp_authkit_core::{FlowOutcome, PendingFlow, PendingStore, Timestamp, TokenKey};

    use crate::{RedisStore, testing};

    /// A subscribe that hangs (its shard unreachable) holds the gate shared;
    /// the idle-channel sweep must not stop the delivery of messages of
    /// other shards while it waits for the gate.
    #[tokio::test]
    async fn a_sweep_waiting_for_the_gate_does_not_stall_deliveries() {
        let url = testing::redis_cluster_url().await;
        let prefix = testing::unique_prefix("sweep-stall");
        let waiting = RedisStore::builder(&url)
            .prefix(&prefix)
            .connect()
            .await
            .unwrap();
        let completing = RedisStore::builder(&url)
            .prefix(&prefix)
            .connect()
            .await
            .unwrap();
        let key = TokenKey::new("github", "sweep");
        let flow = PendingFlow::new(
            key.clone(),
            "http://127.0.0.1:9/callback",
            vec![],
            Timestamp::now(),
            Duration::from_secs(300),
        );
        completing.insert(&flow).await.unwrap();
        let waiter = {
            let (store, state) = (waiting.clone(), flow.state.clone());
            tokio::spawn(async move { store.wait(&state, Duration::from_secs(30)).await })
        };
        // Subscribed (the first sweep tick, at once, found nothing idle).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let completions = waiting.inner.completions().unwrap();
        let sharded = completions.sharded.as_ref().unwrap();
        let hung_subscribe = sharded.gate.read().await;
        // Past the next sweep tick.
        tokio::time::sleep(super::SWEEP_INTERVAL * 2).await;
        let outcome = FlowOutcome::Failed { reason: "x".into() };
        completing
            .complete(&key, &flow.state, &outcome, Duration::from_secs(60))
            .await
            .unwrap();
        // Far below the wait's own 30 s: delivered, not read at the deadline.
        let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the completion was not delivered while a sweep waited");
        assert_eq!(waited.unwrap().unwrap(), Some(outcome));
        drop(hung_subscribe);
        waiting.delete_namespace().await.unwrap();
    }
}
