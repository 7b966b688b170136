//! The conformance suite on the in-process backend.

mod backends {
    pub mod memory;
}

mcp_authkit_conformance::conformance_tests!(backends::memory::Memory; process_local);
