//! `PendingStore` on the flows, active-flows and outcomes tables.

use std::ops::ControlFlow;
use std::time::Duration;

use mcp_authkit_core::{
    Error, FlowOutcome, FlowState, InsertOutcome, PendingFlow, PendingStore, PurgeReport, Result,
    TokenKey, async_trait, codec,
};
use sqlx::Connection;
use tokio::sync::watch;

use crate::PostgresStore;
use crate::error::db;
use crate::tokens::{ROWS, stmt};
use crate::wake::{Link, POLL_EVERY, POLL_LEASE, Polled, Reading, Registration, hex};

/// How soon a waiter reads the stored outcome again after that read failed
/// while the listener stayed up.
const RECHECK_AFTER_ERROR: Duration = Duration::from_millis(200);

fn stopped() -> Error {
    Error::Internal("the completion listener stopped (its tokio runtime shut down)".into())
}

impl PostgresStore {
    /// A wait's phase while the link is down: `Continue` with the link's
    /// epoch once it is up (the caller then reads the outcome), or `Break`
    /// with the wait's answer. This
    /// instance's poll (run by one of its waiters, maybe this one) wakes
    /// this waiter when its outcome is stored.
    async fn wait_while_down(
        &self,
        state: &FlowState,
        registration: &mut Registration,
        link: &mut watch::Receiver<Link>,
        seen_up: &mut bool,
        deadline: tokio::time::Instant,
    ) -> ControlFlow<Result<Option<FlowOutcome>>, u64> {
        // Pinned here, not in the select: a link that stays down but
        // changes (every failed reconnection) must not cancel a poll in
        // flight. Dropped (a claim in flight with it) when the link is up.
        let mut poll = std::pin::pin!(self.poll_while_down());
        let mut poll_failures = self.poller().failures();
        // Whether this wait's own read answered (asked only when the pool
        // is all the wait has, and only once: after that, this instance's
        // failed poll, through the same pool, says the pool fails too).
        let mut pool_answered = false;
        loop {
            let refused = match &*link.borrow_and_update() {
                Link::Up(epoch) => {
                    *seen_up = true;
                    return ControlFlow::Continue(*epoch);
                }
                Link::Down(error) => error.clone().filter(|error| !error.is_retryable()),
            };
            // A listener that cannot log in ends no wait while the pool
            // still answers; only a wait that has nothing that works (never
            // a listener, no pool) reports the refusal.
            let must_answer = refused.is_some() && !*seen_up;
            if must_answer && !pool_answered {
                match self.outcome(state).await {
                    Ok(Some(outcome)) => return ControlFlow::Break(Ok(Some(outcome))),
                    Ok(None) => {
                        pool_answered = true;
                        // Only a poll failing after this answer counts.
                        poll_failures.borrow_and_update();
                    }
                    Err(_) => {
                        return ControlFlow::Break(Err(
                            refused.expect("must_answer implies a refusal")
                        ));
                    }
                }
            }
            tokio::select! {
                changed = link.changed() => {
                    if changed.is_err() {
                        return ControlFlow::Break(Err(stopped()));
                    }
                }
                // Found by a poll, with its outcome; or completed in this
                // process, or notified just before the link dropped: read
                // it. A failure waits for the next poll.
                polled = registration.notified() => {
                    let outcome = match polled {
                        Some(bytes) => ROWS.outcome(state, &bytes).map(Some),
                        None => self.outcome(state).await,
                    };
                    if let Ok(Some(outcome)) = outcome {
                        return ControlFlow::Break(Ok(Some(outcome)));
                    }
                }
                // This instance's poll failed through the pool this wait
                // would read through: nothing works, report the refusal.
                changed = poll_failures.changed(), if must_answer => {
                    if changed.is_ok() {
                        return ControlFlow::Break(Err(
                            refused.expect("must_answer implies a refusal")
                        ));
                    }
                }
                never = &mut poll => match never {},
                // Out of time without a listener: answer from the store,
                // which is what a notification would have said.
                () = tokio::time::sleep_until(deadline) => {
                    return ControlFlow::Break(self.outcome(state).await);
                }
            }
        }
    }

    /// A wait's read on entering link epoch `epoch`: one statement for all
    /// of this instance's waits that reach it, not one each (see
    /// `Poller::reread`). `Ok(None)` after a batch that read: whatever it
    /// found was handed to the waiters' registrations
    /// ([`crate::wake::Hub::deliver_polled`]), which the caller's wait for
    /// a wake-up then sees at once. A batch that failed, was given up, or
    /// outlasted [`POLL_LEASE`] or this wait's deadline leaves each of its
    /// waits to read on its own: no completion is missed because a batch
    /// did not answer, and a joiner never answers `None` without a read.
    async fn read_entering(
        &self,
        state: &FlowState,
        registration: &mut Registration,
        polled: &Polled<'_>,
        epoch: u64,
        deadline: tokio::time::Instant,
    ) -> Result<Option<FlowOutcome>> {
        // A batch is given up at the lease, or at this wait's deadline if
        // sooner: a runner must not overrun its own deadline, and a runner
        // that stops being run must not hold its joiners past theirs.
        let give_up = deadline.min(tokio::time::Instant::now() + POLL_LEASE);
        let read = match self.poller().reread(polled, epoch) {
            Reading::Own => false,
            Reading::Run(run) => {
                let read = self.read_batch(&run.states, give_up).await;
                run.finish(read);
                read
            }
            Reading::Join(mut done) => {
                let joined = tokio::time::timeout_at(give_up, done.wait_for(Option::is_some));
                tokio::select! {
                    // A delivery first: it answers this wait at once.
                    biased;
                    // Read from the table by the batch or a poll: as good as
                    // this wait's own read. A notification (a hint only) is
                    // answered by the read below, without waiting for the
                    // batch.
                    wake = registration.notified() => {
                        if let Some(outcome) = wake.and_then(|bytes| ROWS.outcome(state, &bytes).ok()) {
                            return Ok(Some(outcome));
                        }
                        false
                    }
                    finished = joined => matches!(finished, Ok(Ok(read)) if *read == Some(true)),
                }
            }
        };
        if read {
            Ok(None)
        } else {
            // Even at the deadline: one last read, as `wait_while_down`
            // answers at its deadline, never `None` unread.
            self.outcome(state).await
        }
    }

    /// The batched re-read's statement ([`Self::deliver_outcomes`]):
    /// `false` if it failed or was not done by `give_up`.
    async fn read_batch(&self, states: &[Vec<u8>], give_up: tokio::time::Instant) -> bool {
        #[cfg(feature = "testing")]
        if self.poller().take_reread_failure() {
            return false;
        }
        match self.deliver_outcomes(states, give_up).await {
            Ok(()) => true,
            Err(Some(error)) => {
                tracing::debug!(
                    error = %db("re-read flow outcomes", error),
                    "re-reading the outcomes after the completion listener came back failed; \
                     each waiter reads its own"
                );
                false
            }
            Err(None) => {
                tracing::debug!(
                    "re-reading the outcomes after the completion listener came back timed out; \
                     each waiter reads its own"
                );
                false
            }
        }
    }

    /// Reads the outcomes of `states` in one statement, through this
    /// instance's pool and with its clock, and hands each one found to its
    /// waiters: from the table, never from a notification. What the poll
    /// while the link is down and the re-read when it is back both do.
    /// `Err(None)`: not done by `give_up`.
    async fn deliver_outcomes(
        &self,
        states: &[Vec<u8>],
        give_up: tokio::time::Instant,
    ) -> std::result::Result<(), Option<sqlx::Error>> {
        let found = tokio::time::timeout_at(
            give_up,
            sqlx::query_as::<_, (Vec<u8>, Vec<u8>)>(stmt(&self.sql().poll_outcomes))
                .bind(states)
                .bind(self.now().unix_millis())
                .fetch_all(self.pool()),
        )
        .await
        .map_err(|_elapsed| None)?
        .map_err(Some)?;
        for (state, outcome) in found {
            self.hub().deliver_polled(&state, outcome);
        }
        Ok(())
    }

    /// This instance's poll while the hub's link is down, run by whichever
    /// of its waiters claims it when it is due (see `Poller::claim`):
    /// every [`POLL_EVERY`], one statement reads the outcomes of every
    /// state this instance's waits wait on, through its pool and with its
    /// clock, and wakes their waiters with them. The outcome comes from the
    /// table, as the waiter's own read would, so this is as safe as that
    /// read; it spares each woken waiter a statement and a pool session
    /// (new logins may be what fails). A failed poll is retried at the same
    /// pace, by whichever waiter claims it: another waiter of this instance
    /// goes through the same pool, and other instances poll on their own.
    /// A poll that outlasts its claim ([`crate::wake::POLL_LEASE`]) is
    /// given up as failed, so two polls of an instance never run at once
    /// while their claimers are run. Never ends; dropped when this
    /// waiter's down phase or wait ends.
    async fn poll_while_down(&self) -> std::convert::Infallible {
        let poller = self.poller();
        // The first poll of an outage comes a period after it began (the
        // listener usually reconnects long before), then the instance's
        // pace.
        let not_before = tokio::time::Instant::now() + POLL_EVERY;
        loop {
            // Looked at again at least once a period: a claim in flight
            // usually ends long before it lapses.
            let due = poller.due(not_before);
            tokio::time::sleep_until(due.min(tokio::time::Instant::now() + POLL_EVERY)).await;
            // Not due yet, or another waiter claimed it first: look again.
            let Some(claim) = poller.claim(not_before) else {
                continue;
            };
            let states = poller.states();
            // Given up when the claim lapses, not a lease after now: no
            // other claimer's poll starts while this one still runs.
            match self.deliver_outcomes(&states, claim.lapses).await {
                Ok(()) => {}
                Err(Some(error)) => {
                    tracing::debug!(
                        error = %db("poll flow outcomes", error),
                        "polling the outcomes while the completion listener is down failed"
                    );
                    poller.failed();
                }
                Err(None) => {
                    tracing::debug!(
                        "polling the outcomes while the completion listener is down took longer than its claim"
                    );
                    poller.failed();
                }
            }
            drop(claim);
        }
    }
}

#[async_trait]
impl PendingStore for PostgresStore {
    fn pending_backend_name(&self) -> &'static str {
        "postgres"
    }

    async fn insert(&self, flow: &PendingFlow) -> Result<InsertOutcome> {
        const OP: &str = "insert pending flow";
        let bytes = codec::encode_flow(flow);
        let provider = flow.key.provider().as_bytes();
        let subject = flow.key.subject().as_bytes();
        let state = flow.state.as_str().as_bytes();
        let mut conn = self.pool().acquire().await.map_err(|e| db(OP, e))?;
        loop {
            let now = self.now().unix_millis();
            let mut tx = conn.begin().await.map_err(|e| db(OP, e))?;
            // The key's primary key decides: a free key, or one whose
            // active flow expired, takes this flow; a live one makes this
            // change nothing and return no row.
            let claimed: Vec<Vec<u8>> = sqlx::query_scalar(stmt(&self.sql().claim_active))
                .bind(provider)
                .bind(subject)
                .bind(state)
                .bind(flow.expires_at.unix_millis())
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| db(OP, e))?;
            let outcome = if claimed.is_empty() {
                let active: Option<Vec<u8>> = sqlx::query_scalar(stmt(&self.sql().active_state))
                    .bind(provider)
                    .bind(subject)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| db(OP, e))?;
                match active {
                    Some(active) => InsertOutcome::Joined(FlowState::new(
                        String::from_utf8_lossy(&active).into_owned(),
                    )),
                    // Completed between the conflict and this read: the key
                    // is free again.
                    None => continue,
                }
            } else {
                sqlx::query(stmt(&self.sql().insert_flow))
                    .bind(state)
                    .bind(provider)
                    .bind(subject)
                    .bind(flow.expires_at.unix_millis())
                    .bind(&bytes)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db(OP, e))?;
                InsertOutcome::Inserted
            };
            tx.commit().await.map_err(|e| db(OP, e))?;
            return Ok(outcome);
        }
    }

    async fn get_flow(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        let bytes: Option<Vec<u8>> = sqlx::query_scalar(stmt(&self.sql().get_flow))
            .bind(state.as_str().as_bytes())
            .bind(self.now().unix_millis())
            .fetch_optional(self.pool())
            .await
            .map_err(|e| db("get pending flow", e))?;
        bytes.map(|bytes| ROWS.flow(state, &bytes)).transpose()
    }

    async fn active_flow(&self, key: &TokenKey) -> Result<Option<FlowState>> {
        let state: Option<Vec<u8>> = sqlx::query_scalar(stmt(&self.sql().active_flow))
            .bind(key.provider().as_bytes())
            .bind(key.subject().as_bytes())
            .bind(self.now().unix_millis())
            .fetch_optional(self.pool())
            .await
            .map_err(|e| db("get active flow", e))?;
        Ok(state.map(|state| FlowState::new(String::from_utf8_lossy(&state).into_owned())))
    }

    async fn take(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        // One statement: of any number of racing callers in any process,
        // exactly one deletes the row and gets it back. Every row read, so
        // an error at commit is seen: a take reported done but rolled back
        // would hand the flow to a second caller.
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(stmt(&self.sql().take))
            .bind(state.as_str().as_bytes())
            .bind(self.now().unix_millis())
            .fetch_all(self.pool())
            .await
            .map_err(|e| db("take pending flow", e))?;
        rows.into_iter()
            .next()
            .map(|bytes| ROWS.flow(state, &bytes))
            .transpose()
    }

    async fn complete(
        &self,
        key: &TokenKey,
        state: &FlowState,
        outcome: &FlowOutcome,
        keep_for: Duration,
    ) -> Result<()> {
        const OP: &str = "complete flow";
        let bytes = codec::encode_outcome(outcome);
        let keep_until = self.now().saturating_add(keep_for).unix_millis();
        let state_bytes = state.as_str().as_bytes();
        let mut tx = self.pool().begin().await.map_err(|e| db(OP, e))?;
        sqlx::query(stmt(&self.sql().delete_flow))
            .bind(state_bytes)
            .execute(&mut *tx)
            .await
            .map_err(|e| db(OP, e))?;
        sqlx::query(stmt(&self.sql().end_active))
            .bind(key.provider().as_bytes())
            .bind(key.subject().as_bytes())
            .bind(state_bytes)
            .execute(&mut *tx)
            .await
            .map_err(|e| db(OP, e))?;
        sqlx::query(stmt(&self.sql().store_outcome))
            .bind(state_bytes)
            .bind(keep_until)
            .bind(bytes)
            .execute(&mut *tx)
            .await
            .map_err(|e| db(OP, e))?;
        // Sent by the server at commit, and only if the commit succeeds.
        sqlx::query(stmt(&self.sql().notify))
            .bind(self.hub().channel())
            .bind(hex(state_bytes))
            .execute(&mut *tx)
            .await
            .map_err(|e| db(OP, e))?;
        tx.commit().await.map_err(|e| db(OP, e))?;
        self.hub().deliver_local(state_bytes);
        Ok(())
    }

    async fn outcome(&self, state: &FlowState) -> Result<Option<FlowOutcome>> {
        let bytes: Option<Vec<u8>> = sqlx::query_scalar(stmt(&self.sql().outcome))
            .bind(state.as_str().as_bytes())
            .bind(self.now().unix_millis())
            .fetch_optional(self.pool())
            .await
            .map_err(|e| db("get flow outcome", e))?;
        bytes.map(|bytes| ROWS.outcome(state, &bytes)).transpose()
    }

    async fn wait(&self, state: &FlowState, timeout: Duration) -> Result<Option<FlowOutcome>> {
        let deadline = mcp_authkit_core::deadline_after(timeout);
        // Registered before the stored outcome is read: every notification
        // (and every poll) from now on reaches this waiter.
        let mut registration = self.hub().register(state.as_str().as_bytes());
        // Watched after the registration: a batched re-read that includes
        // this watch reads after any notification could be missed.
        let polled = self.poller().watch(state.as_str().as_bytes());
        let mut link = self.hub().link();
        let mut seen_up = false;
        // The epoch this wait last read in: its first read in an epoch
        // may be the instance's batch, any later one (a notification, a
        // retry) is its own, since the batch may have read before it.
        let mut read_in = None;
        loop {
            // Until LISTEN is in effect, a read could miss a completion
            // committed right after it.
            let epoch = match self
                .wait_while_down(state, &mut registration, &mut link, &mut seen_up, deadline)
                .await
            {
                ControlFlow::Break(answer) => return answer,
                ControlFlow::Continue(epoch) => epoch,
            };
            let read = if read_in == Some(epoch) {
                self.outcome(state).await
            } else {
                read_in = Some(epoch);
                self.read_entering(state, &mut registration, &polled, epoch, deadline)
                    .await
            };
            let mut recheck = false;
            match read {
                Ok(Some(outcome)) => return Ok(Some(outcome)),
                Ok(None) => {}
                Err(error) if error.is_retryable() => recheck = true,
                Err(error) => return Err(error),
            }
            tokio::select! {
                // A delivery first: at the deadline it still answers.
                biased;
                // Read by a batch or a poll, from the table: as good as this
                // wait's own read. Notified (a hint only): read the stored
                // outcome.
                wake = registration.notified() => {
                    if let Some(outcome) = wake.and_then(|bytes| ROWS.outcome(state, &bytes).ok()) {
                        return Ok(Some(outcome));
                    }
                }
                // Dropped or listening again: read again, since notifications
                // sent in between were not delivered.
                changed = link.changed() => {
                    if changed.is_err() {
                        return Err(stopped());
                    }
                }
                () = tokio::time::sleep(RECHECK_AFTER_ERROR), if recheck => {}
                // Out of time. What reached the registration since the last
                // read still answers (a batch's delivery made just before the
                // deadline, or a hint: one last read), and so does a last
                // read that failed: its error, not `None`.
                () = tokio::time::sleep_until(deadline) => {
                    return match registration.try_take() {
                        Some(Some(bytes)) => match ROWS.outcome(state, &bytes) {
                            Ok(outcome) => Ok(Some(outcome)),
                            Err(_) => self.outcome(state).await,
                        },
                        Some(None) => self.outcome(state).await,
                        None if recheck => self.outcome(state).await,
                        None => Ok(None),
                    };
                }
            }
        }
    }

    async fn purge_expired(&self) -> Result<PurgeReport> {
        self.purge().await
    }
}
