//! The conformance suite on the SQLite backend, cross-process scenario
//! included.

#[path = "backends/sqlite.rs"]
mod backend;

mcp_authkit_conformance::conformance_tests!(backend::Sqlite);
