-- A host application's own first migration; its version number is the same
-- as mcp-authkit's first, which is what would clash in a shared table.
CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
