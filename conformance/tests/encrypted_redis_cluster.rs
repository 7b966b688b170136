//! The conformance suite through `EncryptedStore` over Redis Cluster.

mod backends {
    pub mod encrypted;
    pub mod redis_cluster;
}

use backends::encrypted::Encrypted;
use backends::redis_cluster::RedisCluster;

mcp_authkit_conformance::conformance_tests!(Encrypted::new(RedisCluster));

#[test]
fn secrets_stay_sealed_at_rest() {
    backends::encrypted::secrets_stay_sealed_at_rest(RedisCluster);
}
