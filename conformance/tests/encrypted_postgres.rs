//! The conformance suite through `EncryptedStore` over PostgreSQL, and the
//! check that secrets reach the tables sealed.

mod backends {
    pub mod encrypted;
    pub mod postgres;
}

use backends::encrypted::Encrypted;
use backends::postgres::Postgres;

mcp_authkit_conformance::conformance_tests!(Encrypted::new(Postgres));

#[test]
fn secrets_stay_sealed_at_rest() {
    backends::encrypted::secrets_stay_sealed_at_rest(Postgres);
}
