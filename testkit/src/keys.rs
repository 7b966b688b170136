//! Keys that sign and verify JWTs: clients' RFC 7523 assertions, and the ID
//! tokens and ID-JAGs the server issues as an enterprise identity provider.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value;

use crate::error::Error;
use crate::secret::{REDACTED, random_string};

/// A private key that signs JWTs, with its public half as a JWK.
///
/// Give the [`private_key_pem`](Self::private_key_pem) to the client under
/// test and its [`public_jwk`](Self::public_jwk) to the server (a client
/// registered with [`ClientRegistration::private_key_jwt`](crate::ClientRegistration::private_key_jwt),
/// or an issuer the server [trusts](crate::AuthServerHandle::trust_issuer)).
/// Debug output never shows the private key.
#[derive(Clone)]
pub struct SigningKey {
    algorithm: Algorithm,
    encoding: EncodingKey,
    pem: String,
    public: PublicKey,
}

/// The public half of a [`SigningKey`]: verifies what it signed.
#[derive(Clone)]
pub struct PublicKey {
    algorithm: Algorithm,
    decoding: DecodingKey,
    jwk: Value,
}

impl SigningKey {
    /// A new P-256 key for `ES256`.
    pub fn generate_es256() -> SigningKey {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("the crypto library generates P-256 keys");
        SigningKey::from_pem("ES256", &pem("PRIVATE KEY", pkcs8.as_ref()))
            .expect("a generated key is valid")
    }

    /// A new 2048-bit RSA key for `RS256`.
    pub fn generate_rs256() -> SigningKey {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::rsa::{KeyPair, KeySize};
        let key =
            KeyPair::generate(KeySize::Rsa2048).expect("the crypto library generates RSA keys");
        let pkcs8 = key.as_der().expect("an RSA key encodes as PKCS#8");
        SigningKey::from_pem("RS256", &pem("PRIVATE KEY", pkcs8.as_ref()))
            .expect("a generated key is valid")
    }

    /// A key from a PEM private key (PKCS#8 `PRIVATE KEY`, or PKCS#1 `RSA
    /// PRIVATE KEY` for RSA) for the JWS algorithm `algorithm` (`ES256`,
    /// `ES384`, `RS256`, `PS256`, `EdDSA` ...).
    pub fn from_pem(algorithm: &str, pem: &str) -> Result<SigningKey, Error> {
        let invalid = |reason: String| Error::InvalidInput {
            what: "signing key",
            reason,
        };
        let algorithm: Algorithm = algorithm
            .parse()
            .map_err(|_| invalid(format!("{algorithm:?} is not a JWS algorithm")))?;
        let encoding = match algorithm {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                return Err(invalid("HMAC algorithms have no public key".to_owned()));
            }
            _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .map_err(|e| invalid(format!("the PEM is not a {algorithm:?} private key ({e})")))?;
        let mut jwk = Jwk::from_encoding_key(&encoding, algorithm)
            .map_err(|e| invalid(format!("no public key could be derived ({e})")))?;
        jwk.common.key_id = Some(format!("key-{}", random_string(6)));
        let decoding = DecodingKey::from_jwk(&jwk)
            .map_err(|e| invalid(format!("the public key is not usable ({e})")))?;
        let jwk = serde_json::to_value(&jwk).expect("a JWK serializes");
        Ok(SigningKey {
            algorithm,
            encoding,
            pem: pem.to_owned(),
            public: PublicKey {
                algorithm,
                decoding,
                jwk,
            },
        })
    }

    /// The JWS algorithm name (`ES256` ...).
    pub fn algorithm(&self) -> String {
        algorithm_name(self.algorithm)
    }

    /// The private key, PEM-encoded: what a client under test is configured
    /// with.
    pub fn private_key_pem(&self) -> &str {
        &self.pem
    }

    /// The key id (`kid`) of the public JWK and of signed headers.
    pub fn kid(&self) -> &str {
        self.public.jwk["kid"].as_str().unwrap_or_default()
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> Value {
        self.public.jwk.clone()
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    /// Signs `claims` as a compact JWS, with `typ` in the header when given
    /// (`oauth-id-jag+jwt` ...) and this key's `kid`.
    pub fn sign(&self, typ: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.typ = typ.map(str::to_owned);
        header.kid = Some(self.kid().to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("a JSON object signs")
    }
}

impl PublicKey {
    /// A public key from a JWK (`kty` `EC`, `RSA` or `OKP`, with `alg`).
    pub fn from_jwk(jwk: &Value) -> Result<PublicKey, Error> {
        let invalid = |reason: String| Error::InvalidInput {
            what: "public key",
            reason,
        };
        let parsed: Jwk =
            serde_json::from_value(jwk.clone()).map_err(|e| invalid(format!("not a JWK ({e})")))?;
        let algorithm = parsed
            .common
            .key_algorithm
            .and_then(|alg| alg.to_string().parse::<Algorithm>().ok())
            .ok_or_else(|| invalid("the JWK names no usable alg".to_owned()))?;
        let decoding =
            DecodingKey::from_jwk(&parsed).map_err(|e| invalid(format!("not usable ({e})")))?;
        Ok(PublicKey {
            algorithm,
            decoding,
            jwk: jwk.clone(),
        })
    }

    /// The key as a JWK.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// The claims of `token` if this key signed it with its algorithm;
    /// claims (`exp`, `aud` ...) are left to the caller.
    pub(crate) fn verify(&self, token: &str) -> Result<Value, String> {
        let mut validation = Validation::new(self.algorithm);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<Value>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| format!("the signature does not verify ({e})"))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid())
            .field("private_key", &REDACTED)
            .finish()
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.jwk == other.jwk
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm)
            .field("jwk", &self.jwk)
            .finish()
    }
}

fn algorithm_name(algorithm: Algorithm) -> String {
    format!("{algorithm:?}")
}

/// `der` as PEM with this label.
fn pem(label: &str, der: &[u8]) -> String {
    let encoded = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The header and claims of a compact JWS, unverified: to find which key
/// should verify it.
pub(crate) fn peek(token: &str) -> Option<(Value, Value)> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let (header, claims, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let decode = |part: &str| -> Option<Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
    };
    Some((decode(header)?, decode(claims)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signatures_verify_with_the_public_half_only() {
        for key in [SigningKey::generate_es256(), SigningKey::generate_rs256()] {
            let token = key.sign(Some("test+jwt"), &json!({"sub": "a"}));
            let (header, claims) = peek(&token).unwrap();
            assert_eq!(header["typ"], "test+jwt");
            assert_eq!(header["kid"], key.kid());
            assert_eq!(claims["sub"], "a");
            let public = PublicKey::from_jwk(&key.public_jwk()).unwrap();
            assert_eq!(public.verify(&token).unwrap()["sub"], "a");
            let other = SigningKey::generate_es256().public_key();
            assert!(other.verify(&token).is_err());
            // A copy of the key from its PEM signs the same way.
            let again = SigningKey::from_pem(&key.algorithm(), key.private_key_pem()).unwrap();
            assert!(public.verify(&again.sign(None, &json!({}))).is_ok());
            assert!(!format!("{key:?}").contains(key.private_key_pem()));
        }
    }

    #[test]
    fn a_tampered_token_does_not_verify() {
        let key = SigningKey::generate_es256();
        let token = key.sign(None, &json!({"sub": "alice"}));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory"}"#);
        parts[1] = &forged;
        assert!(key.public_key().verify(&parts.join(".")).is_err());
    }
}
