//! Waking waiters with LISTEN/NOTIFY: one listening connection per process
//! and host, port, unix socket, TLS mode, database, user and schema, shared
//! by every store instance and every waiter on them.
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
//! then bumps the link's epoch: every waiter reads its outcome again, in
//! one statement per store instance (see below). A
//! connection that dies silently (no FIN or RST reaches us) is found by a
//! `SELECT 1` probe every [`PROBE_EVERY`] and handled the same way.
//!
//! The listener runs on a thread of its own with its own single-threaded
//! tokio runtime, not on the runtime of whoever waited first: a hub is
//! shared by every store instance of the process, and a runtime that shuts
//! down (a `#[tokio::test]`, a short-lived runtime of a CLI command, one of
//! several runtimes of an application) would take the listener with it and
//! leave the waiters of every other runtime deaf, with a link that still
//! says "up". Restarting the task on the next waiter's runtime would not
//! reach waiters already parked, nor one runtime dying under another's
//! listener. The thread costs one OS thread per server and schema; waiters
//! in any runtime are woken through `tokio::sync::watch`, which needs no
//! particular runtime.
//!
//! Every (re)connection uses the current connect options of the live store
//! instances' pools (`PgPool::connect_options`), not a copy taken at open:
//! an application that rotates a password with `PgPool::set_connect_options`
//! keeps a listener that can log in again. A failed attempt tries every
//! attached pool's options, newest first, before backing off, so one store
//! opened later with a stale password does not lock the others out.
//!
//! The listening connection is named (`application_name`)
//! [`LISTENER_APPLICATION`] followed by the channel, so operators and tests
//! find it in `pg_stat_activity` whatever it last ran (the probe's
//! `SELECT 1` replaces the `LISTEN` in its `query` column).
//!
//! A listener that is down ends no wait by itself. Meanwhile, per store
//! instance, one of its waiters at a time (whichever claims the poll when
//! it is due, [`Poller::claim`]) reads, through that instance's pool, which of the
//! instance's waited states have an outcome, in one statement every
//! [`POLL_EVERY`], and wakes their waiters with the outcome it read (from
//! the table, never from a notification). The database answers one
//! statement a second per store instance that has waiters, not one per
//! waiter, when it may be in trouble. The poll is per instance, not per
//! hub, because instances sharing a hub have pools of their own: one whose
//! pool is exhausted or failing must not hold up another's waiters.
//!
//! When the link comes up (a new epoch: its first connection as well as
//! every reconnection), the same holds for the read it calls for: the first
//! of an instance's waiters to see the epoch reads the outcomes of all the
//! instance's waited states in one statement ([`Poller::reread`]), hands
//! those found to their waiters (read from the table, as the poll does),
//! and the waiters its snapshot included read nothing themselves. The
//! snapshot is taken after `LISTEN` was in effect and after those waiters
//! registered, so a completion it does not see is notified to them. A
//! waiter watched after the snapshot reads on its own, and so does every
//! waiter of a batch that failed, took longer than [`POLL_LEASE`] (or than
//! the runner's deadline), or whose runner's wait was dropped before it
//! finished. A runner that stops being run without being dropped (a future
//! kept but not polled, a blocked runtime) delays its joiners up to
//! [`POLL_LEASE`], or to their own deadline if sooner; they then read on
//! their own, and a notification heard meanwhile ends the delay at once.
//! A flap costs one statement per instance, and a failing batch costs what
//! it cost before, never a lost completion nor a wait answered `None`
//! without a read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use mcp_authkit_core::Error;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::{oneshot, watch};

const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(20);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How often an idle listening connection is asked `SELECT 1`: a connection
/// that died without a FIN or RST (a frozen network, a dropped NAT entry)
/// would otherwise look alive forever while notifications go nowhere.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(15);
/// How often the outcomes of a store instance's waiters are polled, in one
/// statement, while the link is down: the pools' sessions may well work (a password
/// rotated on the server before the application's options follow, a
/// listener killed by an operator).
pub(crate) const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long a probe may take before the connection counts as dead.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The start of the listening connection's `application_name`; the channel
/// follows after a space (49 characters in all, under PostgreSQL's 63).
pub(crate) const LISTENER_APPLICATION: &str = "mcp-authkit listener";
/// The listener thread's name: Linux keeps 15 bytes of it (`ps`, `top`).
const THREAD_NAME: &str = "authkit-pg-wake";

/// The state of the listening connection.
#[derive(Clone, Debug)]
pub(crate) enum Link {
    /// Not listening (yet, or since a drop); the last failure, if any.
    Down(Option<Error>),
    /// Listening; the epoch grows with every (re)connection.
    Up(u64),
}

/// What wakes a waiter: `None` for a notification (only a hint to read the
/// stored outcome), or the outcome's stored bytes when a poll read them
/// from the outcomes table itself (as trustworthy as the waiter's own read).
type Wake = Option<Arc<[u8]>>;

type Waiters = HashMap<Vec<u8>, watch::Sender<Wake>>;

struct Shared {
    channel: String,
    /// Waiters by state; each notification or poll of a state sends to it.
    waiters: Mutex<Waiters>,
    link: watch::Sender<Link>,
    /// The number of the last (re)connection; kept here, not in the
    /// listener, so it keeps growing if a listener thread is replaced.
    epoch: AtomicU64,
    /// The pools of the live store instances on this hub, by attachment id;
    /// each reconnection reads the newest one's current connect options.
    pools: Mutex<Vec<(u64, PgPool)>>,
    /// The options the hub was created with, for when no pool is attached.
    first_options: PgConnectOptions,
    /// Set by a test to make the listener thread panic at its next
    /// notification, to show that it is restarted.
    #[cfg(feature = "testing")]
    panic_next: std::sync::atomic::AtomicBool,
}

/// Every critical section leaves its map consistent before anything that
/// could panic, so a poisoned lock still guards sound data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn deliver(&self, state: &[u8], wake: Wake) {
        if let Some(sender) = lock(&self.waiters).get(state) {
            sender.send_replace(wake);
        }
    }

    /// What the next connection attempt tries, in order: the current
    /// options of every attached pool, newest first, read now; the hub's
    /// first options when none is attached.
    fn connect_options(&self) -> Vec<PgConnectOptions> {
        let pools = lock(&self.pools);
        if pools.is_empty() {
            return vec![self.first_options.clone()];
        }
        pools
            .iter()
            .rev()
            .map(|(_, pool)| (*pool.connect_options()).clone())
            .collect()
    }
}

/// The listener thread of a hub; it stops when this is dropped.
struct ListenerThread {
    /// Dropping it tells the thread to stop.
    _stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// The per-process listener of one server and schema.
pub(crate) struct Hub {
    shared: Arc<Shared>,
    listener: Mutex<Option<ListenerThread>>,
}

/// A store instance's pool, attached to its hub for as long as this lives.
pub(crate) struct AttachedPool {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for AttachedPool {
    fn drop(&mut self) {
        lock(&self.shared.pools).retain(|(id, _)| *id != self.id);
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
    /// The hub of this process for the server `connect` points at and
    /// `schema`, whose channel is `channel`; created on first use.
    pub(crate) fn shared_for(connect: &PgConnectOptions, schema: &str, channel: &str) -> Arc<Hub> {
        // The socket and the TLS mode too: a store that asked for TLS must
        // not share a listener that another store opened without it. The
        // schema's name itself, not only its channel (a hash of it): a
        // polled outcome is handed to every waiter of its state on the hub,
        // so a hub must never span two schemas' tables.
        let identity = format!(
            "{}\0{}\0{:?}\0{:?}\0{}\0{}\0{}\0{}",
            connect.get_host(),
            connect.get_port(),
            connect.get_socket(),
            connect.get_ssl_mode(),
            connect.get_database().unwrap_or_default(),
            connect.get_username(),
            schema,
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
                epoch: AtomicU64::new(0),
                pools: Mutex::new(Vec::new()),
                first_options: connect.clone(),
                #[cfg(feature = "testing")]
                panic_next: std::sync::atomic::AtomicBool::new(false),
            }),
            listener: Mutex::new(None),
        });
        hubs.insert(identity, Arc::downgrade(&hub));
        hub
    }

    /// Attaches a store instance's pool: while the returned guard lives,
    /// reconnections may log in with that pool's current options (tried
    /// newest first).
    pub(crate) fn attach(&self, pool: &PgPool) -> AttachedPool {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.pools).push((id, pool.clone()));
        AttachedPool {
            shared: Arc::clone(&self.shared),
            id,
        }
    }

    /// Starts the listener thread unless it runs; it starts with the first
    /// waiter, so a store that never waits holds no listening connection.
    fn ensure_listening(&self) {
        let mut listener = lock(&self.listener);
        if listener
            .as_ref()
            .is_some_and(|running| !running.thread.is_finished())
        {
            return;
        }
        // The thread restarts its listener after a panic, so it ends only
        // if that restart failed: start another, and tell the waiters to
        // read again meanwhile.
        self.shared.link.send_replace(Link::Down(None));
        let (stop, stopped) = oneshot::channel();
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || run_listener(shared, stopped));
        match spawned {
            Ok(thread) => {
                *listener = Some(ListenerThread {
                    _stop: stop,
                    thread,
                })
            }
            Err(error) => {
                // Not retryable: waiters report it instead of waiting for a
                // listener that cannot start.
                self.shared
                    .link
                    .send_replace(Link::Down(Some(Error::Internal(format!(
                        "could not start the PostgreSQL completion listener thread: {error}"
                    )))));
            }
        }
    }

    /// Registers a waiter for `state`; it sees every notification of that
    /// state from now on.
    pub(crate) fn register(&self, state: &[u8]) -> Registration {
        self.ensure_listening();
        let receiver = lock(&self.shared.waiters)
            .entry(state.to_vec())
            .or_insert_with(|| watch::Sender::new(None))
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
        self.shared.deliver(state, None);
    }

    /// Wakes the waiters of `state` with the outcome a poll read from the
    /// store: handing it over spares each of them a read, and a pool
    /// session, while new logins may be what fails.
    pub(crate) fn deliver_polled(&self, state: &[u8], outcome: Vec<u8>) {
        self.shared.deliver(state, Some(outcome.into()));
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

    /// Makes the listener thread panic when it receives its next
    /// notification.
    #[cfg(feature = "testing")]
    pub(crate) fn panic_listener_at_next_notification(&self) {
        self.shared.panic_next.store(true, Ordering::SeqCst);
    }
}

/// The poll of one store instance's waited states while the link is down.
///
/// Each instance (each pool) has its own, not one per hub: a poll runs
/// through its instance's pool, and a pool that is exhausted (a poll
/// waiting its `acquire_timeout`) or failing must delay nobody but its own
/// waiters, who could not be answered through it anyway. The cost stays
/// bounded by the number of store instances with waiters, not by the
/// number of waiters.
#[derive(Default)]
pub(crate) struct Poller {
    /// Who polls next and when: any waiter of the instance in its down
    /// phase may claim the poll once it is due, so a waiter whose future
    /// stops being run (an idle runtime, a future kept but not polled)
    /// delays the others by at most [`POLL_LEASE`], never for the rest of
    /// their wait.
    lease: Mutex<Lease>,
    /// The instance's waited states, with how many of its waits wait on
    /// each: what its poll and its re-reads read.
    states: Mutex<States>,
    /// The batched re-read of the latest epoch this instance's waiters
    /// reached, if any (see [`Poller::reread`]).
    reread: Mutex<Option<Arc<Reread>>>,
    /// Set by a test to make the next batched re-read fail.
    #[cfg(feature = "testing")]
    fail_next_reread: std::sync::atomic::AtomicBool,
    /// Bumped by every failed poll: the poll went through the same pool
    /// as a waiter's own read would, so a waiter whose only answer is that
    /// pool (a refused listener that never was up) takes the failure as
    /// its own instead of reading again (one statement, not one per
    /// waiter).
    failures: watch::Sender<u64>,
}

/// How long a claimed poll keeps others from polling: a claimer still run
/// gives its poll up by then (it counts as failed), and one no longer run
/// stops mattering. Longer than the pace, so a poll of a slow but working
/// pool is not started twice at once.
pub(crate) const POLL_LEASE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct States {
    /// How many of the instance's waits wait on each state.
    counts: HashMap<Vec<u8>, usize>,
    /// The number of the last watch: every wait gets the next one, so a
    /// re-read knows which waits its snapshot of `counts` includes.
    tickets: u64,
}

/// The one re-read of an instance's waited states for a link epoch.
pub(crate) struct Reread {
    epoch: u64,
    /// The last watch ticket its snapshot of the states includes.
    covers: u64,
    /// `None` while in flight; then `Some(true)` once the outcomes it
    /// found were handed to their waiters ([`Hub::deliver_polled`]), or
    /// `Some(false)` if it failed (or its runner gave it up) and every
    /// joiner must read on its own.
    done: watch::Sender<Option<bool>>,
}

/// What a waiter entering an epoch does about its read (see
/// [`Poller::reread`]).
pub(crate) enum Reading {
    /// Runs the epoch's batch: reads `states`, hands what it found to
    /// their waiters, then [`RereadRun::finish`].
    Run(RereadRun),
    /// Waits for the epoch's batch, which covers this wait.
    Join(watch::Receiver<Option<bool>>),
    /// Reads on its own: the epoch's batch started before this wait was
    /// watched, so it may have read before a completion this wait was not
    /// registered to hear about.
    Own,
}

/// A claimed batched re-read: marks it failed if dropped unfinished (its
/// waiter's wait over or cancelled), so joiners read on their own instead
/// of waiting for it.
pub(crate) struct RereadRun {
    reread: Arc<Reread>,
    pub(crate) states: Vec<Vec<u8>>,
}

impl RereadRun {
    /// Tells the batch's joiners whether it read (its outcomes delivered)
    /// or failed.
    pub(crate) fn finish(self, read: bool) {
        self.reread.done.send_replace(Some(read));
    }
}

impl Drop for RereadRun {
    fn drop(&mut self) {
        self.reread.done.send_if_modified(|done| {
            if done.is_none() {
                *done = Some(false);
                true
            } else {
                false
            }
        });
    }
}

#[derive(Default)]
struct Lease {
    /// When the last poll started, whoever ran it: the pace holds across
    /// claimers.
    last: Option<tokio::time::Instant>,
    /// The poll in flight, if any: its claim's number and when the claim
    /// lapses.
    claimed: Option<(u64, tokio::time::Instant)>,
    /// Numbers the claims, so a lapsed claimer's release does not end its
    /// successor's claim.
    claims: u64,
}

impl Poller {
    /// When this instance's poll is next due for a waiter whose down phase
    /// lets it poll from `not_before`: [`POLL_EVERY`] after the last poll
    /// started, and not while a live claim is in flight.
    pub(crate) fn due(&self, not_before: tokio::time::Instant) -> tokio::time::Instant {
        lock(&self.lease).due(not_before)
    }

    /// Claims the poll if it is due now for a waiter that may poll from
    /// `not_before`; `None` when another waiter claimed it first. The poll
    /// runs on a waiter, not on the listener's thread: it goes through the
    /// instance's pool on the waiter's own runtime (a pool's connections
    /// belong to the runtime that opened them, and the point is to use the
    /// pool's sessions, which may work while new logins do not), it never
    /// delays the listener's reconnection, and it stops by itself when the
    /// link is up again (every waiter leaves its down phase) or nobody
    /// waits.
    pub(crate) fn claim(&self, not_before: tokio::time::Instant) -> Option<PollClaim<'_>> {
        let now = tokio::time::Instant::now();
        // Checked and claimed under one lock: of waiters due at once, on
        // any threads, one claims.
        let mut lease = lock(&self.lease);
        if lease.due(not_before) > now {
            return None;
        }
        lease.claims += 1;
        let id = lease.claims;
        lease.last = Some(now);
        let lapses = now + POLL_LEASE;
        lease.claimed = Some((id, lapses));
        Some(PollClaim {
            poller: self,
            id,
            lapses,
        })
    }

    /// Records that the poll failed.
    pub(crate) fn failed(&self) {
        self.failures.send_modify(|failures| *failures += 1);
    }

    pub(crate) fn failures(&self) -> watch::Receiver<u64> {
        self.failures.subscribe()
    }

    /// Adds a wait's state to what this instance polls and re-reads, until
    /// the returned guard is dropped. Called after the wait registered with
    /// the hub: a re-read whose snapshot includes this watch started after
    /// the registration, so a completion committed after its read is
    /// notified to this wait.
    pub(crate) fn watch(&self, state: &[u8]) -> Polled<'_> {
        let mut states = lock(&self.states);
        *states.counts.entry(state.to_vec()).or_default() += 1;
        states.tickets += 1;
        Polled {
            poller: self,
            state: state.to_vec(),
            ticket: states.tickets,
        }
    }

    /// Every state one of this instance's waits waits on.
    pub(crate) fn states(&self) -> Vec<Vec<u8>> {
        lock(&self.states).counts.keys().cloned().collect()
    }

    /// What a wait (`polled`) does about its read on entering link epoch
    /// `epoch` (the link seen up, so that epoch's `LISTEN` is in effect).
    ///
    /// The first of the instance's waits to reach an epoch runs one
    /// statement for all of them (`Reading::Run`): after a listener flap,
    /// the database answers one statement per store instance, not one per
    /// waiter, when it may be in trouble. The waits its snapshot includes
    /// join it; a wait watched after the snapshot, or still at an older
    /// epoch than the batch (the link moved on; it will come round again),
    /// reads on its own, as does every joiner if the batch fails.
    pub(crate) fn reread(&self, polled: &Polled<'_>, epoch: u64) -> Reading {
        let mut current = lock(&self.reread);
        match current.as_deref() {
            Some(reread) if reread.epoch == epoch && polled.ticket <= reread.covers => {
                return Reading::Join(reread.done.subscribe());
            }
            Some(reread) if reread.epoch >= epoch => return Reading::Own,
            _ => {}
        }
        let (states, covers) = {
            let states = lock(&self.states);
            (states.counts.keys().cloned().collect(), states.tickets)
        };
        let reread = Arc::new(Reread {
            epoch,
            covers,
            done: watch::Sender::new(None),
        });
        *current = Some(Arc::clone(&reread));
        Reading::Run(RereadRun { reread, states })
    }

    /// Whether a test asked the next batched re-read to fail (once).
    #[cfg(feature = "testing")]
    pub(crate) fn take_reread_failure(&self) -> bool {
        self.fail_next_reread.swap(false, Ordering::SeqCst)
    }

    /// Makes the next batched re-read fail, for a test.
    #[cfg(feature = "testing")]
    pub(crate) fn fail_next_reread(&self) {
        self.fail_next_reread.store(true, Ordering::SeqCst);
    }
}

impl Lease {
    fn due(&self, not_before: tokio::time::Instant) -> tokio::time::Instant {
        let mut due = not_before;
        if let Some(last) = self.last {
            due = due.max(last + POLL_EVERY);
        }
        if let Some((_, lapses)) = self.claimed {
            due = due.max(lapses);
        }
        due
    }
}

/// A claimed poll of an instance; ends the claim when dropped (the poll
/// done, or its waiter's down phase or wait over), so the next poll waits
/// for the pace only.
pub(crate) struct PollClaim<'a> {
    poller: &'a Poller,
    id: u64,
    /// When others may claim again: the poll must be given up by then.
    pub(crate) lapses: tokio::time::Instant,
}

impl Drop for PollClaim<'_> {
    fn drop(&mut self) {
        let mut lease = lock(&self.poller.lease);
        if lease.claimed.is_some_and(|(id, _)| id == self.id) {
            lease.claimed = None;
        }
    }
}

/// A wait's state in its instance's poll; removed with its last wait.
pub(crate) struct Polled<'a> {
    poller: &'a Poller,
    state: Vec<u8>,
    /// Which watch this is: a re-read covers it if its snapshot was taken
    /// at or after this ticket.
    ticket: u64,
}

impl Drop for Polled<'_> {
    fn drop(&mut self) {
        let mut states = lock(&self.poller.states);
        let states = &mut states.counts;
        if let Some(count) = states.get_mut(&self.state) {
            *count -= 1;
            if *count == 0 {
                states.remove(&self.state);
            }
        }
    }
}

/// A waiter's interest in one state; removes the entry with its last waiter.
pub(crate) struct Registration {
    shared: Arc<Shared>,
    state: Vec<u8>,
    receiver: Option<watch::Receiver<Wake>>,
}

impl Registration {
    /// Waits for the next notification or poll of the state; returns the
    /// outcome's stored bytes when a poll read them.
    pub(crate) async fn notified(&mut self) -> Wake {
        let receiver = self
            .receiver
            .as_mut()
            .expect("the receiver lives as long as the registration");
        if receiver.changed().await.is_err() {
            // The sender lives in the map while this receiver exists.
            std::future::pending::<()>().await;
        }
        receiver.borrow_and_update().clone()
    }

    /// What reached the state since it was last looked at, without waiting:
    /// at a wait's deadline, a delivery that lost the race to it still
    /// answers.
    pub(crate) fn try_take(&mut self) -> Option<Wake> {
        let receiver = self.receiver.as_mut()?;
        if receiver.has_changed().unwrap_or(false) {
            Some(receiver.borrow_and_update().clone())
        } else {
            None
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

fn panicked() -> Error {
    Error::backend(
        crate::error::BACKEND,
        "listening for flow completions",
        true,
        std::io::Error::other("the completion listener panicked; it is restarted"),
    )
}

/// Publishes a retryable `Link::Down` when the listener unwinds: a link
/// left reading "up" would leave every waiter deaf.
struct DownOnUnwind<'a>(&'a Shared);

impl Drop for DownOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.link.send_replace(Link::Down(Some(panicked())));
        }
    }
}

/// The body of the listener thread: listens until the hub is dropped, and
/// starts listening again after a panic (a bug here or in a dependency
/// must not leave the process's waiters deaf for good).
fn run_listener(shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    loop {
        // A fresh runtime per run: one a panic unwound through is not
        // trusted again.
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                shared
                    .link
                    .send_replace(Link::Down(Some(Error::Internal(format!(
                        "could not start the runtime of the PostgreSQL completion listener: {error}"
                    )))));
                return;
            }
        };
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(async {
                let _down = DownOnUnwind(&shared);
                tokio::select! {
                    () = listen(&shared) => {}
                    // Sent or dropped: the hub is gone.
                    _ = &mut stop => {}
                }
            })
        }));
        drop(runtime);
        if run.is_ok() {
            return;
        }
        tracing::error!("the PostgreSQL completion listener panicked; restarting it");
        // Not in a tight loop if it panics again at once.
        std::thread::sleep(MAX_RECONNECT_DELAY);
    }
}

/// Keeps one connection listening for as long as the hub lives.
async fn listen(shared: &Shared) {
    let mut delay = MIN_RECONNECT_DELAY;
    // After a loss, listening again bumps the epoch: every waiter then
    // reads its outcome again.
    loop {
        // Read at every attempt: a rotated password is picked up here.
        let mut attempt = Err(None);
        for connect in shared.connect_options() {
            match connect_listener(shared, connect).await {
                Ok(listener) => {
                    attempt = Ok(listener);
                    break;
                }
                // The newest pool's refusal is the one reported.
                Err(error) => {
                    if let Err(first @ None) = &mut attempt {
                        *first = Some(error);
                    }
                }
            }
        }
        let mut listener = match attempt {
            Ok(listener) => listener,
            Err(error) => {
                let error = error.expect("at least one set of options was tried");
                let error = crate::error::db("listening for flow completions", error);
                tracing::debug!(%error, "completion listener is down; retrying");
                shared.link.send_replace(Link::Down(Some(error)));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                continue;
            }
        };
        delay = MIN_RECONNECT_DELAY;
        let epoch = shared.epoch.fetch_add(1, Ordering::Relaxed) + 1;
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
            #[cfg(feature = "testing")]
            if received.is_ok() && shared.panic_next.swap(false, Ordering::SeqCst) {
                panic!("the completion listener panics, as a test asked");
            }
            match received {
                Ok(Some(notification)) => match unhex(notification.payload()) {
                    Some(state) => shared.deliver(&state, None),
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

/// One connection that listens on the hub's channel, opened with `connect`.
async fn connect_listener(shared: &Shared, connect: PgConnectOptions) -> sqlx::Result<PgListener> {
    let connect = connect.application_name(&format!("{LISTENER_APPLICATION} {}", shared.channel));
    // A pool of one, only to hand PgListener its connection: never shared.
    // A new one per attempt: a dropped PgListener sends `UNLISTEN *` on its
    // old connection before giving it back, which never ends on a
    // connection that stopped answering, and would hold a shared pool's
    // only slot forever.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(connect);
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.ignore_pool_close_event(true);
    // A lost connection ends this listener (below) instead of being
    // re-established inside try_recv, so the loss is visible as
    // `Link::Down` and every reconnection goes through one path.
    listener.eager_reconnect(false);
    listener.listen(&shared.channel).await?;
    Ok(listener)
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

    /// The poll's claim: one claimer at a time, the pace kept across
    /// claimers, a claim ended as soon as its poll is done, and one whose
    /// claimer is never run again (its guard never dropped) keeping the
    /// others out for [`POLL_LEASE`] only, not for good. No clock is
    /// advanced: only when the next poll is due is asserted.
    #[tokio::test]
    async fn a_poll_claim_ends_with_its_poll_or_lapses() {
        let poller = Poller::default();
        let t0 = tokio::time::Instant::now();
        assert!(poller.due(t0) <= tokio::time::Instant::now());
        let claim = poller.claim(t0).expect("due: nobody polled yet");
        let claimed_at = tokio::time::Instant::now();
        assert!(poller.claim(t0).is_none(), "one claimer at a time");
        assert!(poller.due(t0) >= t0 + POLL_LEASE, "held while in flight");
        drop(claim);
        // Done: the next poll waits for the pace only.
        let due = poller.due(t0);
        assert!(due >= t0 + POLL_EVERY && due <= claimed_at + POLL_EVERY);
        assert!(poller.claim(t0).is_none(), "not before the pace");

        // A claimer that stops being run: its claim lapses.
        let poller = Poller::default();
        std::mem::forget(poller.claim(t0).expect("due"));
        let after = tokio::time::Instant::now();
        assert!(poller.claim(t0).is_none());
        let due = poller.due(t0);
        assert!(
            due >= t0 + POLL_LEASE && due <= after + POLL_LEASE,
            "{due:?}"
        );
    }

    /// The batched re-read of an epoch: the first wait to reach it runs
    /// it, waits its snapshot includes join it, a wait watched after the
    /// snapshot or still at an older epoch reads on its own, the next
    /// epoch gets a batch of its own, and a batch given up unfinished tells
    /// its joiners to read on their own.
    #[test]
    fn one_reread_per_epoch_covers_the_waits_watched_before_it() {
        let poller = Poller::default();
        let (a, b) = (poller.watch(b"a"), poller.watch(b"b"));
        let Reading::Run(run) = poller.reread(&a, 1) else {
            panic!("the first wait to reach epoch 1 runs its batch");
        };
        let mut states = run.states.clone();
        states.sort();
        assert_eq!(states, vec![b"a".to_vec(), b"b".to_vec()]);
        let Reading::Join(mut joined) = poller.reread(&b, 1) else {
            panic!("a wait watched before the batch joins it");
        };
        let late = poller.watch(b"c");
        assert!(matches!(poller.reread(&late, 1), Reading::Own));
        assert!(joined.borrow_and_update().is_none(), "in flight");
        run.finish(true);
        assert_eq!(*joined.borrow_and_update(), Some(true));

        let Reading::Run(next) = poller.reread(&late, 2) else {
            panic!("a new epoch gets a batch of its own");
        };
        assert!(matches!(poller.reread(&a, 1), Reading::Own), "moved on");
        let Reading::Join(mut joined) = poller.reread(&a, 2) else {
            panic!("covered");
        };
        drop(next);
        assert_eq!(*joined.borrow_and_update(), Some(false), "given up");
        drop(b);
        assert_eq!(poller.states().len(), 2);
    }

    /// Stores that differ only in TLS mode or unix socket do not share a
    /// listener: one opened without TLS must not serve a store that asked
    /// for it. No server needed: a hub connects only when waited on.
    #[test]
    fn tls_mode_and_socket_are_part_of_the_listeners_identity() {
        use sqlx::postgres::PgSslMode;
        let base: PgConnectOptions = "postgres://someone@127.0.0.1:5432/db".parse().unwrap();
        let channel = "mcp_authkit_identity_test";
        let hub = Hub::shared_for(&base, "s", channel);
        assert!(Arc::ptr_eq(
            &hub,
            &Hub::shared_for(&base.clone(), "s", channel)
        ));
        let tls = base.clone().ssl_mode(PgSslMode::Require);
        assert!(!Arc::ptr_eq(&hub, &Hub::shared_for(&tls, "s", channel)));
        let socket = base.clone().socket("/run/postgresql");
        assert!(!Arc::ptr_eq(&hub, &Hub::shared_for(&socket, "s", channel)));
    }

    /// Two schemas never share a hub, even if their channels were the same
    /// (the channel is a 64-bit hash of the name): a polled outcome goes to
    /// every waiter of its state on the hub, read from one schema's table.
    #[test]
    fn the_schema_name_is_part_of_the_listeners_identity() {
        let base: PgConnectOptions = "postgres://someone@127.0.0.1:5432/db".parse().unwrap();
        let channel = "mcp_authkit_same_channel_test";
        let hub = Hub::shared_for(&base, "one", channel);
        assert!(Arc::ptr_eq(&hub, &Hub::shared_for(&base, "one", channel)));
        assert!(!Arc::ptr_eq(&hub, &Hub::shared_for(&base, "two", channel)));
    }
}
