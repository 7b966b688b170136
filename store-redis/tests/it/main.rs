//! Integration tests of the Redis store against real servers: the shared
//! one at REDIS_URL (default redis://127.0.0.1:6379) and private
//! `redis-server` processes for tests that stop, kill or reconfigure one.
//! One binary, so the workspace links one test executable for them.

mod cluster;
mod common;
mod resilience;
mod store;
mod transports;
