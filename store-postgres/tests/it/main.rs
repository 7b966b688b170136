//! Tests of the PostgreSQL store against the real server at DATABASE_URL
//! (default postgres://postgres@127.0.0.1:5432/test; it must be a superuser
//! for the role tests). Every test works in a fresh schema, dropped after.

mod cluster;
mod common;
mod disk_full;
mod errors;
mod resilience;
mod restart;
mod store;
mod wake;
