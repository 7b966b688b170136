//! The completion listener: one subscription connection per store (shared
//! by its clones) that every waiter of the store listens through.
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mcp_authkit_core::{Error, FlowOutcome, codec};
use redis::{Client, PushKind, Value};
use tokio::sync::{mpsc, watch};

use crate::connection::{AbortOnDrop, Settings, subscription_connection};

/// How often the listener checks that its connection still answers, so a
/// connection that died silently (no reset, no close) is replaced.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);
const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(25);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// The state of the subscription.
#[derive(Clone, Debug)]
pub(crate) enum Link {
    /// Not subscribed (yet, or since a drop); the last failure, if any.
    Down(Option<Error>),
    /// Subscribed.
    Up,
}

type OutcomeSender = watch::Sender<Option<FlowOutcome>>;

struct Shared {
    /// Waiters by state tag; one sender per state, one receiver per waiter.
    waiters: Mutex<HashMap<String, OutcomeSender>>,
    link: watch::Sender<Link>,
}

impl Shared {
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
    task: AbortOnDrop,
}

impl Completions {
    /// Starts listening on `channel` (in the background: waiters see the
    /// link come up).
    pub(crate) fn start(client: Client, settings: Settings, channel: String) -> Self {
        let shared = Arc::new(Shared {
            waiters: Mutex::new(HashMap::new()),
            link: watch::Sender::new(Link::Down(None)),
        });
        let task = tokio::spawn(listen(Arc::clone(&shared), client, settings, channel));
        Completions {
            shared,
            task: AbortOnDrop(task),
        }
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
