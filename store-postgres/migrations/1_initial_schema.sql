-- mcp-authkit PostgreSQL schema, version 1.
--
-- The schema placeholder is replaced by the quoted schema the store was opened with, so
-- the tables can live in an application's own database and schema. Every
-- name carries the mcp_authkit_ prefix. Key parts (provider, subject) and
-- flow states are BYTEA: keys may hold any UTF-8, NUL included, which TEXT
-- cannot store. Times are milliseconds since the Unix epoch from the store's
-- clock, as in the other backends.

-- Every token write takes the next value: a sequence never hands a value out
-- twice, also across deletes and rolled-back writes, so a revision is never
-- reused. Gaps are fine.
CREATE SEQUENCE __SCHEMA__.mcp_authkit_revisions AS BIGINT;

CREATE TABLE __SCHEMA__.mcp_authkit_tokens (
    provider BYTEA NOT NULL,
    subject BYTEA NOT NULL,
    revision BIGINT NOT NULL,
    -- The access token's expiry; NULL when unknown.
    expires_at BIGINT,
    record BYTEA NOT NULL,
    PRIMARY KEY (provider, subject)
);

-- Refresh leases: a row per held lease; a row past expires_at is free.
CREATE TABLE __SCHEMA__.mcp_authkit_leases (
    provider BYTEA NOT NULL,
    subject BYTEA NOT NULL,
    lease_token TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX mcp_authkit_leases_expiry ON __SCHEMA__.mcp_authkit_leases (expires_at);

-- Pending flows, from insert until take.
CREATE TABLE __SCHEMA__.mcp_authkit_flows (
    state BYTEA NOT NULL PRIMARY KEY,
    provider BYTEA NOT NULL,
    subject BYTEA NOT NULL,
    expires_at BIGINT NOT NULL,
    flow BYTEA NOT NULL
);
CREATE INDEX mcp_authkit_flows_expiry ON __SCHEMA__.mcp_authkit_flows (expires_at);

-- The active flow of each key, from insert until complete or expiry; the
-- primary key makes a second insert for a busy key conflict instead of
-- racing a read.
CREATE TABLE __SCHEMA__.mcp_authkit_active_flows (
    provider BYTEA NOT NULL,
    subject BYTEA NOT NULL,
    state BYTEA NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX mcp_authkit_active_flows_expiry ON __SCHEMA__.mcp_authkit_active_flows (expires_at);

-- Outcomes of completed flows, kept for a short time.
CREATE TABLE __SCHEMA__.mcp_authkit_outcomes (
    state BYTEA NOT NULL PRIMARY KEY,
    expires_at BIGINT NOT NULL,
    outcome BYTEA NOT NULL
);
CREATE INDEX mcp_authkit_outcomes_expiry ON __SCHEMA__.mcp_authkit_outcomes (expires_at);
