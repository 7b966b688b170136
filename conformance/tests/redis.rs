//! The conformance suite on the Redis backend, against a real server.

#[path = "backends/redis.rs"]
mod backend;

mcp_authkit_conformance::conformance_tests!(backend::Redis);
