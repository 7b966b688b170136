//! `PendingStore` on the flows, active-flows and outcomes tables.

use std::time::Duration;

use mcp_authkit_core::{
    FlowOutcome, FlowState, InsertOutcome, PendingFlow, PendingStore, PurgeReport, Result,
    TokenKey, async_trait, codec,
};

use crate::SqliteStore;
use crate::error::db;
use crate::tokens::ROWS;

#[async_trait]
impl PendingStore for SqliteStore {
    fn pending_backend_name(&self) -> &'static str {
        "sqlite"
    }

    async fn insert(&self, flow: &PendingFlow) -> Result<InsertOutcome> {
        const OP: &str = "insert pending flow";
        let bytes = codec::encode_flow(flow);
        let now = self.now().unix_millis();
        let _writer = self.hub().writer().await;
        self.write_transaction(OP, async |tx| {
            // The key's primary key decides: a free key, or one whose active
            // flow expired, takes this flow; a live one makes this change
            // nothing and return no row.
            let claimed: Option<String> = sqlx::query_scalar(
                "INSERT INTO mcp_authkit_active_flows (provider, subject, state, expires_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (provider, subject) DO UPDATE SET
                     state = excluded.state,
                     expires_at = excluded.expires_at
                 WHERE mcp_authkit_active_flows.expires_at <= ?5
                 RETURNING state",
            )
            .bind(flow.key.provider())
            .bind(flow.key.subject())
            .bind(flow.state.as_str())
            .bind(flow.expires_at.unix_millis())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| db(OP, e))?;
            if claimed.is_some() {
                sqlx::query(
                    "INSERT INTO mcp_authkit_flows (state, provider, subject, expires_at, flow)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .bind(flow.state.as_str())
                .bind(flow.key.provider())
                .bind(flow.key.subject())
                .bind(flow.expires_at.unix_millis())
                .bind(bytes)
                .execute(&mut *tx)
                .await
                .map_err(|e| db(OP, e))?;
                Ok(InsertOutcome::Inserted)
            } else {
                let active: String = sqlx::query_scalar(
                    "SELECT state FROM mcp_authkit_active_flows \
                     WHERE provider = ?1 AND subject = ?2",
                )
                .bind(flow.key.provider())
                .bind(flow.key.subject())
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| db(OP, e))?;
                Ok(InsertOutcome::Joined(FlowState::new(active)))
            }
        })
        .await
    }

    async fn get_flow(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        let bytes: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT flow FROM mcp_authkit_flows WHERE state = ?1 AND expires_at > ?2",
        )
        .bind(state.as_str())
        .bind(self.now().unix_millis())
        .fetch_optional(self.pool())
        .await
        .map_err(|e| db("get pending flow", e))?;
        bytes.map(|bytes| ROWS.flow(state, &bytes)).transpose()
    }

    async fn active_flow(&self, key: &TokenKey) -> Result<Option<FlowState>> {
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM mcp_authkit_active_flows
             WHERE provider = ?1 AND subject = ?2 AND expires_at > ?3",
        )
        .bind(key.provider())
        .bind(key.subject())
        .bind(self.now().unix_millis())
        .fetch_optional(self.pool())
        .await
        .map_err(|e| db("get active flow", e))?;
        Ok(state.map(FlowState::new))
    }

    async fn take(&self, state: &FlowState) -> Result<Option<PendingFlow>> {
        let now = self.now().unix_millis();
        let _writer = self.hub().writer().await;
        // One statement: of any number of racing callers in any process,
        // exactly one deletes the row and gets it back.
        // Every row read, so the commit's error is seen (see `durable` in
        // the crate docs): a take reported done but rolled back would hand
        // the flow to a second caller.
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "DELETE FROM mcp_authkit_flows WHERE state = ?1 AND expires_at > ?2 RETURNING flow",
        )
        .bind(state.as_str())
        .bind(now)
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
        {
            let _writer = self.hub().writer().await;
            self.write_transaction(OP, async |tx| {
                sqlx::query("DELETE FROM mcp_authkit_flows WHERE state = ?1")
                    .bind(state.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db(OP, e))?;
                sqlx::query(
                    "DELETE FROM mcp_authkit_active_flows
                     WHERE provider = ?1 AND subject = ?2 AND state = ?3",
                )
                .bind(key.provider())
                .bind(key.subject())
                .bind(state.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| db(OP, e))?;
                // REPLACE gives a completed-again flow a new sequence
                // number, so pollers in other processes see it.
                sqlx::query(
                    "REPLACE INTO mcp_authkit_outcomes (state, expires_at, outcome) \
                     VALUES (?1, ?2, ?3)",
                )
                .bind(state.as_str())
                .bind(keep_until)
                .bind(bytes)
                .execute(&mut *tx)
                .await
                .map_err(|e| db(OP, e))?;
                Ok(())
            })
            .await?;
        }
        self.hub().deliver(state, outcome);
        Ok(())
    }

    async fn outcome(&self, state: &FlowState) -> Result<Option<FlowOutcome>> {
        let bytes: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT outcome FROM mcp_authkit_outcomes WHERE state = ?1 AND expires_at > ?2",
        )
        .bind(state.as_str())
        .bind(self.now().unix_millis())
        .fetch_optional(self.pool())
        .await
        .map_err(|e| db("get flow outcome", e))?;
        bytes.map(|bytes| ROWS.outcome(state, &bytes)).transpose()
    }

    async fn wait(&self, state: &FlowState, timeout: Duration) -> Result<Option<FlowOutcome>> {
        let deadline = mcp_authkit_core::deadline_after(timeout);
        // Register, then fix the poller's cursor, then look: see the wake
        // module for why this order loses no completion.
        let mut registration = self.hub().register(state);
        self.hub().ensure_cursor().await?;
        if let Some(outcome) = self.outcome(state).await? {
            return Ok(Some(outcome));
        }
        Ok(registration.wait_until(deadline).await)
    }

    async fn purge_expired(&self) -> Result<PurgeReport> {
        self.purge().await
    }
}
