//! The conformance suite on the Redis backend over a real Redis Cluster
//! (three masters, three replicas), cross-process scenario included.

#[path = "backends/redis_cluster.rs"]
mod backend;

mcp_authkit_conformance::conformance_tests!(backend::RedisCluster);
