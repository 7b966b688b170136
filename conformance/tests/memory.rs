//! The conformance suite on the in-process backend, bare and through
//! `EncryptedStore`, and the check that secrets reach that backend sealed.

mod backends {
    pub mod encrypted;
    pub mod memory;
}

use backends::encrypted::Encrypted;
use backends::memory::Memory;

mcp_authkit_conformance::conformance_tests! {
    plain {
        backend: Memory,
        process_local,
    }
    encrypted {
        backend: Encrypted::new(Memory),
        process_local,
    }
}

#[test]
fn secrets_stay_sealed_at_rest() {
    backends::encrypted::secrets_stay_sealed_at_rest(Memory);
}
