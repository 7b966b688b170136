//! The conformance suite on the PostgreSQL backend against a real server,
//! bare and through `EncryptedStore`, cross-process scenario included, and
//! the check that secrets reach the tables sealed.

mod backends {
    pub mod encrypted;
    pub mod postgres;
}

use backends::encrypted::Encrypted;
use backends::postgres::Postgres;

mcp_authkit_conformance::conformance_tests! {
    plain { backend: Postgres }
    encrypted { backend: Encrypted::new(Postgres) }
}

#[test]
fn secrets_stay_sealed_at_rest() {
    backends::encrypted::secrets_stay_sealed_at_rest(Postgres);
}
