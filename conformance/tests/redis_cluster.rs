//! The conformance suite on the Redis backend over a real Redis Cluster
//! (three masters, three replicas), bare and through `EncryptedStore`,
//! cross-process scenario included, and the check that secrets reach the
//! cluster sealed.

mod backends {
    pub mod encrypted;
    pub mod redis_cluster;
}

use backends::encrypted::Encrypted;
use backends::redis_cluster::RedisCluster;

mcp_authkit_conformance::conformance_tests! {
    plain { backend: RedisCluster }
    encrypted { backend: Encrypted::new(RedisCluster) }
}

#[test]
fn secrets_stay_sealed_at_rest() {
    backends::encrypted::secrets_stay_sealed_at_rest(RedisCluster);
}
