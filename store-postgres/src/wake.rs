//! Waking waiters with LISTEN/NOTIFY: one listening connection per process
//! and server/schema, shared by every store instance and every waiter.
//!
//! `complete` calls `pg_notify` in the transaction that stores the outcome,
//! so the notification is sent at commit, never for a rolled-back write.
//! Its payload is only the flow's state (hex): a notification is a hint to
//! read the stored outcome, never the outcome itself, since any role that
//! can connect to the database may NOTIFY any channel, while the outcome
//! table is guarded by GRANTs.
//!
//! No completion is lost: a waiter registers its state, waits until the
//! listener's `LISTEN` is in effect, and only then reads the stored
//! outcome. A completion committed before that read is found by it; one
//! committed after it is notified. When the listening connection drops
//! (`pg_terminate_backend`, a restart, a network failure), notifications
//! sent meanwhile are gone, so the listener reconnects, listens again, and
//! then bumps the link's epoch: every waiter reads its outcome again. A
//! connection that dies silently (no FIN or RST reaches us) is found by a
//! `SELECT 1` probe every [`PROBE_EVERY`] and handled the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use mcp_authkit_core::Error;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(20);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How often an idle listening connection is asked `SELECT 1`: a connection
/// that died without a FIN or RST (a frozen network, a dropped NAT entry)
/// would otherwise look alive forever while notifications go nowhere.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(15);
/// How long a probe may take before the connection counts as dead.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The state of the listening connection.
#[derive(Clone, Debug)]
pub(crate) enum Link {
    /// Not listening (yet, or since a drop); the last failure, if any.
    Down(Option<Error>),
    /// Listening; the epoch grows with every (re)connection.
    Up(u64),
}

type Waiters = HashMap<Vec<u8>, watch::Sender<u64>>;

struct Shared {
    channel: String,
    /// Waiters by state; each notification of a state bumps its counter.
    waiters: Mutex<Waiters>,
    link: watch::Sender<Link>,
}

/// Every critical section leaves its map consistent before anything that
/// could panic, so a poisoned lock still guards sound data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn deliver(&self, state: &[u8]) {
        if let Some(sender) = lock(&self.waiters).get(state) {
            sender.send_modify(|count| *count += 1);
        }
    }
}

/// The per-process listener of one server and schema.
pub(crate) struct Hub {
    shared: Arc<Shared>,
    connect: PgConnectOptions,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

fn hubs() -> MutexGuard<'static, HashMap<String, Weak<Hub>>> {
    static HUBS: OnceLock<Mutex<HashMap<String, Weak<Hub>>>> = OnceLock::new();
    lock(HUBS.get_or_init(Default::default))
}

/// The hex text of a state: notification payloads are text, states bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Hub {
    /// The hub of this process for the server `connect` points at and the
    /// schema whose channel is `channel`; created on first use.
    pub(crate) fn shared_for(connect: &PgConnectOptions, channel: &str) -> Arc<Hub> {
        let identity = format!(
            "{}\0{}\0{}\0{}\0{}",
            connect.get_host(),
            connect.get_port(),
            connect.get_database().unwrap_or_default(),
            connect.get_username(),
            channel
        );
        let mut hubs = hubs();
        hubs.retain(|_, hub| hub.strong_count() > 0);
        if let Some(hub) = hubs.get(&identity).and_then(Weak::upgrade) {
            return hub;
        }
        let hub = Arc::new(Hub {
            shared: Arc::new(Shared {
                channel: channel.to_owned(),
                waiters: Mutex::new(HashMap::new()),
                link: watch::Sender::new(Link::Down(None)),
            }),
            connect: connect.clone(),
            task: Mutex::new(None),
        });
        hubs.insert(identity, Arc::downgrade(&hub));
        hub
    }

    /// Starts the listener on the current runtime unless it runs; it
    /// starts with the first waiter, so a store that never waits holds no
    /// listening connection.
    fn ensure_listening(&self) {
        let mut task = lock(&self.task);
        if task.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        // A listener whose runtime shut down is replaced on this one.
        self.shared.link.send_replace(Link::Down(None));
        *task = Some(tokio::spawn(listen(
            Arc::clone(&self.shared),
            self.connect.clone(),
        )));
    }

    /// Registers a waiter for `state`; it sees every notification of that
    /// state from now on.
    pub(crate) fn register(&self, state: &[u8]) -> Registration {
        self.ensure_listening();
        let receiver = lock(&self.shared.waiters)
            .entry(state.to_vec())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe();
        Registration {
            shared: Arc::clone(&self.shared),
            state: state.to_vec(),
            receiver: Some(receiver),
        }
    }

    /// Wakes this process's waiters of `state` at once, after a commit made
    /// here (the notification follows, and only makes them read again).
    pub(crate) fn deliver_local(&self, state: &[u8]) {
        self.shared.deliver(state);
    }

    pub(crate) fn link(&self) -> watch::Receiver<Link> {
        self.shared.link.subscribe()
    }

    pub(crate) fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// How many states have waiters right now.
    pub(crate) fn waited_states(&self) -> usize {
        lock(&self.shared.waiters).len()
    }
}

/// A waiter's interest in one state; removes the entry with its last waiter.
pub(crate) struct Registration {
    shared: Arc<Shared>,
    state: Vec<u8>,
    receiver: Option<watch::Receiver<u64>>,
}

impl Registration {
    /// Waits for the next notification of the state.
    pub(crate) async fn notified(&mut self) {
        let receiver = self
            .receiver
            .as_mut()
            .expect("the receiver lives as long as the registration");
        if receiver.changed().await.is_err() {
            // The sender lives in the map while this receiver exists.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut waiters = lock(&self.shared.waiters);
        if waiters
            .get(&self.state)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            waiters.remove(&self.state);
        }
    }
}

fn closed() -> Error {
    Error::backend(
        crate::error::BACKEND,
        "listening for flow completions",
        true,
        std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the listening connection was closed",
        ),
    )
}

fn unanswered() -> Error {
    Error::backend(
        crate::error::BACKEND,
        "listening for flow completions",
        true,
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the listening connection did not answer a probe within {PROBE_TIMEOUT:?}; \
                 it counts as dead"
            ),
        ),
    )
}

/// Keeps one connection listening for as long as the hub lives.
async fn listen(shared: Arc<Shared>, connect: PgConnectOptions) {
    let mut delay = MIN_RECONNECT_DELAY;
    let mut epoch = 0u64;
    // After a loss, listening again bumps the epoch: every waiter then
    // reads its outcome again.
    loop {
        // A pool of one, only to hand PgListener its connection: never
        // shared. A new one per attempt: a dropped PgListener sends
        // `UNLISTEN *` on its old connection before giving it back, which
        // never ends on a connection that stopped answering, and would hold
        // a shared pool's only slot forever.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(connect.clone());
        let attempt = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.ignore_pool_close_event(true);
            // A lost connection ends this listener (below) instead of being
            // re-established inside try_recv, so the loss is visible as
            // `Link::Down` and every reconnection goes through one path.
            listener.eager_reconnect(false);
            listener.listen(&shared.channel).await?;
            sqlx::Result::Ok(listener)
        }
        .await;
        let mut listener = match attempt {
            Ok(listener) => listener,
            Err(error) => {
                let error = crate::error::db("listening for flow completions", error);
                tracing::debug!(%error, "completion listener is down; retrying");
                shared.link.send_replace(Link::Down(Some(error)));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                continue;
            }
        };
        delay = MIN_RECONNECT_DELAY;
        epoch += 1;
        shared.link.send_replace(Link::Up(epoch));
        let mut probes =
            tokio::time::interval_at(tokio::time::Instant::now() + PROBE_EVERY, PROBE_EVERY);
        probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lost = loop {
            // try_recv is cancel-safe (sqlx keeps a partly read message in
            // its buffer), so a probe may interrupt it at any moment.
            let received = tokio::select! {
                received = listener.try_recv() => received,
                _ = probes.tick() => {
                    // Notifications that arrive during the probe are
                    // buffered by the listener and returned by try_recv.
                    let probe = sqlx::query("SELECT 1").execute(&mut listener);
                    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(error)) => {
                            break crate::error::db("listening for flow completions", error);
                        }
                        Err(_) => break unanswered(),
                    }
                }
            };
            match received {
                Ok(Some(notification)) => match unhex(notification.payload()) {
                    Some(state) => shared.deliver(&state),
                    None => tracing::warn!(
                        "ignoring a notification on the completion channel that this library did not send"
                    ),
                },
                // The connection was lost; notifications sent from now on
                // until the next LISTEN are gone.
                Ok(None) => break closed(),
                Err(error) => break crate::error::db("listening for flow completions", error),
            }
        };
        tracing::debug!(error = %lost, "completion listener lost its connection; listening again");
        shared.link.send_replace(Link::Down(Some(lost)));
        drop(listener);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        for bytes in [&b""[..], b"\0state\xff", b"abc"] {
            assert_eq!(unhex(&hex(bytes)).as_deref(), Some(bytes));
        }
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
