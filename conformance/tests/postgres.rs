//! The conformance suite on the PostgreSQL backend, against a real server,
//! cross-process scenario included.

#[path = "backends/postgres.rs"]
mod backend;

mcp_authkit_conformance::conformance_tests!(backend::Postgres);
