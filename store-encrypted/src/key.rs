//! Encryption keys and the keyring that holds them.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::{Aes256Gcm, KeyInit};
use base64::Engine;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use mcp_authkit_core::SecretString;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::error::EncryptionError;

/// Bytes of an AES-256 key.
pub const KEY_LEN: usize = 32;
/// Longest key id.
pub const MAX_KEY_ID_LEN: usize = 32;
/// Bytes of the key check stored in every envelope.
pub(crate) const CHECK_LEN: usize = 8;

const PADDING_OPTIONAL: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const BASE64_STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, PADDING_OPTIONAL);
const BASE64_URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, PADDING_OPTIONAL);

/// One AES-256 key and the id stored beside everything it encrypts.
///
/// The id lets a [`Keyring`] pick the key that opens a value, so keys can be
/// rotated: give every new key a new id (`"2026-01"`, `"k2"`, ...).
///
/// The key material lives in one heap allocation that is zeroized when the
/// last clone is dropped, together with the expanded AES key schedule.
/// `Debug` shows the id only.
///
/// ```
/// use mcp_authkit_store_encrypted::EncryptionKey;
/// use mcp_authkit_core::ExposeSecret;
///
/// let key = EncryptionKey::generate("2026-01");
/// let saved = key.to_base64(); // keep this in your secret manager
/// let again = EncryptionKey::from_base64("2026-01", saved.expose_secret()).unwrap();
/// assert_eq!(again.id(), "2026-01");
/// assert!(!format!("{key:?}").contains(saved.expose_secret()));
/// ```
#[derive(Clone)]
pub struct EncryptionKey {
    inner: Arc<KeyInner>,
}

pub(crate) struct KeyInner {
    pub(crate) id: String,
    material: [u8; KEY_LEN],
    pub(crate) cipher: Aes256Gcm,
    /// A fingerprint of the material, so a value encrypted under another key
    /// with the same id is told apart from a tampered one.
    pub(crate) check: [u8; CHECK_LEN],
}

impl Drop for KeyInner {
    fn drop(&mut self) {
        // The cipher's key schedule zeroizes itself (aes-gcm's `zeroize`).
        self.material.zeroize();
    }
}

impl EncryptionKey {
    /// A key from its 32 raw bytes.
    pub fn from_bytes(id: impl Into<String>, bytes: &[u8]) -> Result<Self, EncryptionError> {
        let id = validate_id(id.into())?;
        if bytes.len() != KEY_LEN {
            return Err(EncryptionError::InvalidKey {
                key_id: id,
                reason: format!("expected {KEY_LEN} bytes, got {}", bytes.len()),
            });
        }
        if bytes.iter().all(|&b| b == 0) {
            return Err(EncryptionError::InvalidKey {
                key_id: id,
                reason: "it is all zeros, which looks like an uninitialized buffer".into(),
            });
        }
        let cipher = Aes256Gcm::new_from_slice(bytes).map_err(|_| EncryptionError::InvalidKey {
            key_id: id.clone(),
            reason: format!("expected {KEY_LEN} bytes"),
        })?;
        let mut inner = Arc::new(KeyInner {
            id,
            material: [0; KEY_LEN],
            cipher,
            check: key_check(bytes),
        });
        // Copied only once it sits in its final heap place, so no move leaves
        // a stray copy of the material behind.
        Arc::get_mut(&mut inner)
            .expect("a fresh Arc has one owner")
            .material
            .copy_from_slice(bytes);
        Ok(EncryptionKey { inner })
    }

    /// A key from the base64 of its 32 bytes (standard or URL-safe alphabet,
    /// padding optional, surrounding whitespace ignored).
    pub fn from_base64(id: impl Into<String>, text: &str) -> Result<Self, EncryptionError> {
        let id = id.into();
        let text = text.trim();
        let decoded = BASE64_STANDARD
            .decode(text)
            .or_else(|_| BASE64_URL_SAFE.decode(text))
            .map(Zeroizing::new)
            // The decoder's error quotes the offending byte: a byte of the key.
            .map_err(|_| EncryptionError::InvalidKey {
                key_id: id.clone(),
                reason: "it is not valid base64".into(),
            })?;
        Self::from_bytes(id, &decoded)
    }

    /// A key from an environment variable holding its base64.
    pub fn from_env(id: impl Into<String>, variable: &str) -> Result<Self, EncryptionError> {
        Self::from_env_value(id, variable, std::env::var(variable))
    }

    fn from_env_value(
        id: impl Into<String>,
        variable: &str,
        value: Result<String, std::env::VarError>,
    ) -> Result<Self, EncryptionError> {
        let value = value
            .map(Zeroizing::new)
            .map_err(|error| EncryptionError::KeyEnvVar {
                name: variable.to_owned(),
                // Not the VarError itself: its Debug would print a non-Unicode value.
                reason: match error {
                    std::env::VarError::NotPresent => "is not set",
                    std::env::VarError::NotUnicode(_) => "is not valid Unicode",
                },
            })?;
        Self::from_base64(id, &value)
    }

    /// A key from a file holding its base64 (a mounted secret, for example);
    /// a trailing newline is fine.
    pub fn from_file(
        id: impl Into<String>,
        path: impl AsRef<Path>,
    ) -> Result<Self, EncryptionError> {
        let path = path.as_ref();
        let bytes =
            std::fs::read(path)
                .map(Zeroizing::new)
                .map_err(|source| EncryptionError::KeyFile {
                    path: path.to_owned(),
                    source: Arc::new(source),
                })?;
        let id = id.into();
        let text = std::str::from_utf8(&bytes).map_err(|_| EncryptionError::InvalidKey {
            key_id: id.clone(),
            reason: format!("{} does not hold base64 text", path.display()),
        })?;
        Self::from_base64(id, text)
    }

    /// A fresh random key from the operating system's CSPRNG.
    ///
    /// # Panics
    /// If the operating system has no randomness to give, which no supported
    /// platform does at run time.
    pub fn generate(id: impl Into<String>) -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(bytes.as_mut()).expect("the OS random number generator failed");
        // A random key is all zeros with probability 2^-256; the id is the
        // only thing that can be invalid.
        match Self::from_bytes(id, bytes.as_ref()) {
            Ok(key) => key,
            Err(error) => panic!("{error}"),
        }
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The key's material in standard base64, to store it in a secret
    /// manager after [`generate`](Self::generate).
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(STANDARD.encode(self.inner.material))
    }

    pub(crate) fn inner(&self) -> &KeyInner {
        &self.inner
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

/// A new random key's base64, for setting up a deployment:
/// `println!("{}", generate_key_base64().expose_secret())` once, then store
/// it in the secret manager.
pub fn generate_key_base64() -> SecretString {
    EncryptionKey::generate("generated").to_base64()
}

fn validate_id(id: String) -> Result<String, EncryptionError> {
    if is_valid_id(&id) {
        Ok(id)
    } else {
        Err(EncryptionError::InvalidKeyId { key_id: id })
    }
}

pub(crate) fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn key_check(material: &[u8]) -> [u8; CHECK_LEN] {
    // A one-way, domain-separated fingerprint: it identifies the key without
    // revealing anything about it. (AES_K(0), the classic key check value,
    // must not be used: it is GCM's authentication key.)
    let digest = Sha256::new()
        .chain_update(b"mcp-authkit-store-encrypted key check v1\0")
        .chain_update(material)
        .finalize();
    let mut check = [0u8; CHECK_LEN];
    check.copy_from_slice(&digest[..CHECK_LEN]);
    check
}

/// The keys an [`EncryptedStore`](crate::EncryptedStore) uses: one primary
/// key encrypts every write, and every key (primary and previous) decrypts.
///
/// Cheap to clone. `Debug` shows the key ids only.
///
/// ```
/// use mcp_authkit_store_encrypted::{EncryptionKey, Keyring};
///
/// let old = EncryptionKey::generate("k1");
/// let new = EncryptionKey::generate("k2");
/// let keyring = Keyring::with_previous(new, [old]).unwrap();
/// assert_eq!(keyring.primary().id(), "k2");
/// assert_eq!(keyring.key_ids().collect::<Vec<_>>(), ["k2", "k1"]);
/// ```
#[derive(Clone)]
pub struct Keyring {
    /// The primary key first.
    keys: Arc<[EncryptionKey]>,
}

impl Keyring {
    /// A keyring of one key.
    pub fn new(primary: EncryptionKey) -> Self {
        Keyring {
            keys: Arc::from([primary]),
        }
    }

    /// A keyring that encrypts with `primary` and also decrypts what the
    /// `previous` keys encrypted. Every id must be distinct.
    pub fn with_previous(
        primary: EncryptionKey,
        previous: impl IntoIterator<Item = EncryptionKey>,
    ) -> Result<Self, EncryptionError> {
        let mut keys = vec![primary];
        for key in previous {
            if keys.iter().any(|k| k.id() == key.id()) {
                return Err(EncryptionError::DuplicateKeyId {
                    key_id: key.id().to_owned(),
                });
            }
            keys.push(key);
        }
        Ok(Keyring {
            keys: Arc::from(keys),
        })
    }

    /// The key every write is encrypted with.
    pub fn primary(&self) -> &EncryptionKey {
        &self.keys[0]
    }

    /// The ids of every key, the primary first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(EncryptionKey::id)
    }

    pub(crate) fn find(&self, id: &str) -> Option<&EncryptionKey> {
        self.keys.iter().find(|key| key.id() == id)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary().id())
            .field(
                "previous",
                &self.keys[1..]
                    .iter()
                    .map(EncryptionKey::id)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_authkit_core::ExposeSecret;

    #[test]
    fn key_ids_are_checked() {
        for bad in [
            "",
            "a:b",
            "with space",
            "é",
            &"x".repeat(MAX_KEY_ID_LEN + 1),
        ] {
            assert!(
                matches!(
                    EncryptionKey::from_bytes(bad, &[1; KEY_LEN]),
                    Err(EncryptionError::InvalidKeyId { .. })
                ),
                "{bad:?}"
            );
        }
        for good in ["k1", "2026-01", "prod_key.v2", &"x".repeat(MAX_KEY_ID_LEN)] {
            assert!(
                EncryptionKey::from_bytes(good, &[1; KEY_LEN]).is_ok(),
                "{good:?}"
            );
        }
    }

    #[test]
    fn key_material_is_checked() {
        for bytes in [&[1u8; 16][..], &[1u8; 33][..], &[][..]] {
            let error = EncryptionKey::from_bytes("k", bytes).unwrap_err();
            assert!(
                matches!(error, EncryptionError::InvalidKey { .. }),
                "{error}"
            );
            assert!(error.to_string().contains("expected 32 bytes"), "{error}");
        }
        let zeros = EncryptionKey::from_bytes("k", &[0; KEY_LEN]).unwrap_err();
        assert!(zeros.to_string().contains("all zeros"), "{zeros}");
    }

    #[test]
    fn base64_in_either_alphabet_with_or_without_padding() {
        // 0xfb 0xff... encodes with '+' and '/' in standard, '-' and '_' in URL-safe.
        let bytes = [0xfbu8; KEY_LEN];
        let reference = EncryptionKey::from_bytes("k", &bytes).unwrap();
        let standard = STANDARD.encode(bytes);
        assert!(standard.contains('+') || standard.contains('/'));
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        for text in [standard.clone(), format!("  {standard}\n"), url_safe] {
            let key = EncryptionKey::from_base64("k", &text).unwrap();
            assert_eq!(key.inner().check, reference.inner().check, "{text:?}");
        }
        let error = EncryptionKey::from_base64("k", "not base64 at all!").unwrap_err();
        assert!(error.to_string().contains("not valid base64"), "{error}");
        let short = EncryptionKey::from_base64("k", &STANDARD.encode([1u8; 16])).unwrap_err();
        assert!(short.to_string().contains("got 16"), "{short}");
    }

    #[test]
    fn generated_keys_round_trip_and_differ() {
        let a = EncryptionKey::generate("a");
        let b = EncryptionKey::generate("b");
        assert_ne!(a.inner().check, b.inner().check);
        let again = EncryptionKey::from_base64("a", a.to_base64().expose_secret()).unwrap();
        assert_eq!(again.inner().check, a.inner().check);
        let text = generate_key_base64();
        assert!(EncryptionKey::from_base64("x", text.expose_secret()).is_ok());
    }

    #[test]
    fn debug_never_shows_key_material() {
        let bytes: Vec<u8> = (1..=32).collect();
        let key = EncryptionKey::from_bytes("visible-id", &bytes).unwrap();
        let keyring =
            Keyring::with_previous(key.clone(), [EncryptionKey::generate("old")]).unwrap();
        let base64 = key.to_base64();
        for printed in [
            format!("{key:?}"),
            format!("{key:#?}"),
            format!("{keyring:?}"),
        ] {
            assert!(printed.contains("visible-id"), "{printed}");
            assert!(!printed.contains(base64.expose_secret()), "{printed}");
            // Neither the byte array nor any hex form of it.
            assert!(!printed.contains("1, 2, 3"), "{printed}");
            assert!(!printed.contains("010203"), "{printed}");
            assert!(!printed.contains("cipher"), "{printed}");
        }
    }

    #[test]
    fn key_material_is_zeroized_on_drop() {
        // The expanded key schedule wipes itself: aes-gcm's `zeroize`
        // feature is on (this does not compile otherwise).
        fn wipes_itself<T: zeroize::ZeroizeOnDrop>() {}
        wipes_itself::<Aes256Gcm>();

        let key = EncryptionKey::from_bytes("k", &[0xa5; KEY_LEN]).unwrap();
        let clone = key.clone();
        drop(key);
        assert_eq!(
            clone.inner().material,
            [0xa5; KEY_LEN],
            "a clone keeps it alive"
        );
        let inner = Arc::try_unwrap(clone.inner).ok().expect("the last owner");
        let mut inner = std::mem::ManuallyDrop::new(inner);
        // SAFETY: dropped exactly once (ManuallyDrop stops the second drop);
        // afterwards only the plain byte array is read, whose memory is
        // still this stack slot.
        unsafe { std::ptr::drop_in_place(&mut *inner) };
        assert_eq!(inner.material, [0; KEY_LEN]);
    }

    #[test]
    fn keyring_refuses_duplicate_ids() {
        let error = Keyring::with_previous(
            EncryptionKey::generate("same"),
            [EncryptionKey::generate("same")],
        )
        .unwrap_err();
        assert!(
            matches!(error, EncryptionError::DuplicateKeyId { .. }),
            "{error}"
        );
    }

    #[test]
    fn keys_load_from_env_and_file() {
        let key = EncryptionKey::generate("k");
        let text = key.to_base64();
        // Setting a variable is unsafe while other test threads run, so the
        // value path is tested through the function from_env delegates to,
        // and from_env itself on variables that exist or do not.
        let value = Ok(format!("{}\n", text.expose_secret()));
        let from_env = EncryptionKey::from_env_value("k", "KEY", value).unwrap();
        assert_eq!(from_env.inner().check, key.inner().check);
        let missing =
            EncryptionKey::from_env("k", "MCP_AUTHKIT_STORE_ENCRYPTED_UNSET").unwrap_err();
        assert!(missing.to_string().contains("is not set"), "{missing}");
        let not_a_key = EncryptionKey::from_env("k", "PATH").unwrap_err();
        assert!(
            matches!(not_a_key, EncryptionError::InvalidKey { .. }),
            "{not_a_key}"
        );

        let dir = std::env::temp_dir().join(format!(
            "mcp-authkit-key-test-{}",
            mcp_authkit_core::random_urlsafe(6)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, format!("{}\n", text.expose_secret())).unwrap();
        let from_file = EncryptionKey::from_file("k", &path).unwrap();
        assert_eq!(from_file.inner().check, key.inner().check);
        let absent = EncryptionKey::from_file("k", dir.join("absent")).unwrap_err();
        assert!(
            matches!(absent, EncryptionError::KeyFile { .. }),
            "{absent}"
        );
        assert!(
            std::error::Error::source(&absent).is_some(),
            "io error kept"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
