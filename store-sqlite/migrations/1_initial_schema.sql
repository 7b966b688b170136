-- mcp-authkit SQLite schema, version 1.
--
-- Every table carries the mcp_authkit_ prefix, so the schema can live in an
-- application's own database file beside its tables. Records are stored as
-- the versioned JSON of mcp_authkit_core::codec; what SQL must act on
-- (revision, expiry, the key) is kept in columns beside it.

-- One counter for the whole database: every token write takes the next
-- value, so a revision is never reused, also after a key is deleted and
-- written again. Triggers below keep it in step with the tokens table, so a
-- write and its revision bump are one statement.
CREATE TABLE mcp_authkit_revision_counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_revision INTEGER NOT NULL
);
INSERT INTO mcp_authkit_revision_counter (id, last_revision) VALUES (1, 0);

CREATE TABLE mcp_authkit_tokens (
    provider TEXT NOT NULL,
    subject TEXT NOT NULL,
    revision INTEGER NOT NULL,
    -- The access token's expiry (ms since the Unix epoch); NULL when unknown.
    expires_at INTEGER,
    record BLOB NOT NULL,
    PRIMARY KEY (provider, subject)
) WITHOUT ROWID;

CREATE TRIGGER mcp_authkit_tokens_revision_on_insert
AFTER INSERT ON mcp_authkit_tokens
BEGIN
    UPDATE mcp_authkit_revision_counter
    SET last_revision = NEW.revision
    WHERE id = 1 AND last_revision < NEW.revision;
END;

CREATE TRIGGER mcp_authkit_tokens_revision_on_update
AFTER UPDATE OF revision ON mcp_authkit_tokens
BEGIN
    UPDATE mcp_authkit_revision_counter
    SET last_revision = NEW.revision
    WHERE id = 1 AND last_revision < NEW.revision;
END;

-- Refresh leases: a row per held lease; a row past expires_at is free.
CREATE TABLE mcp_authkit_leases (
    provider TEXT NOT NULL,
    subject TEXT NOT NULL,
    lease_token TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (provider, subject)
) WITHOUT ROWID;
CREATE INDEX mcp_authkit_leases_expiry ON mcp_authkit_leases (expires_at);

-- Pending flows, from insert until take.
CREATE TABLE mcp_authkit_flows (
    state TEXT NOT NULL PRIMARY KEY,
    provider TEXT NOT NULL,
    subject TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    flow BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX mcp_authkit_flows_expiry ON mcp_authkit_flows (expires_at);

-- The active flow of each key, from insert until complete or expiry. The
-- primary key is what makes "one active flow per key" hold: a second insert
-- for the key conflicts instead of racing a read.
CREATE TABLE mcp_authkit_active_flows (
    provider TEXT NOT NULL,
    subject TEXT NOT NULL,
    state TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (provider, subject)
) WITHOUT ROWID;
CREATE INDEX mcp_authkit_active_flows_expiry ON mcp_authkit_active_flows (expires_at);

-- Outcomes of completed flows, kept for a short time. seq grows with every
-- completion (AUTOINCREMENT never reuses a value), and writes commit in seq
-- order, so a waiter in another process finds new completions by polling
-- for seq above the last one it saw.
CREATE TABLE mcp_authkit_outcomes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL UNIQUE,
    expires_at INTEGER NOT NULL,
    outcome BLOB NOT NULL
);
CREATE INDEX mcp_authkit_outcomes_expiry ON mcp_authkit_outcomes (expires_at);
