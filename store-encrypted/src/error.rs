//! The crate's one error type: loading keys, and opening encrypted values.

use std::path::PathBuf;
use std::sync::Arc;

/// What went wrong while loading a key or opening an encrypted value.
///
/// Each way a stored value can fail to decrypt has its own variant, so
/// operators can tell a misconfigured keyring from corrupt or tampered data.
/// No variant ever carries key material or plaintext. Store operations return
/// these inside [`mcp_authkit_core::Error::Decode`] (backend `"encrypted"`),
/// with the record and field as location; [`EncryptionError::find_in`] gets
/// them back out.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EncryptionError {
    /// The value is not an encrypted envelope: it was written in clear,
    /// without this wrapper.
    #[error(
        "the value is stored in clear, not encrypted: it was written without the encrypting \
         wrapper; have the user authorize again, or migrate existing data with \
         `accept_unencrypted_records(true)` and a rekey"
    )]
    NotEncrypted,

    /// The envelope ends early: the store cut the value short.
    #[error(
        "the encrypted value is truncated ({found} of at least {expected} characters): the \
         store cut it short; check the column or value size limit of the backend"
    )]
    Truncated {
        /// How many characters a complete envelope has (at least).
        expected: usize,
        /// How many were stored.
        found: usize,
    },

    /// The envelope is damaged in a way other than truncation.
    #[error("the encrypted value is malformed ({reason}): it is corrupt")]
    Malformed {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The envelope was written by a newer release.
    #[error(
        "the encrypted value uses envelope version {found}, but this release reads versions up \
         to {supported}: upgrade mcp-authkit-store-encrypted"
    )]
    UnsupportedVersion {
        /// The envelope's version.
        found: u32,
        /// The newest version this release reads.
        supported: u32,
    },

    /// The value was encrypted under a key id the keyring does not hold.
    #[error(
        "the value was encrypted under key id {key_id:?}, which is not in the keyring: add that \
         key to the keyring (as a previous key) to read it"
    )]
    UnknownKeyId {
        /// The envelope's key id.
        key_id: String,
    },

    /// The keyring holds a key under the envelope's id, but not the key the
    /// value was encrypted with.
    #[error(
        "the keyring's key {key_id:?} is not the key this value was encrypted with (the same id \
         names different key material): load the original key under that id"
    )]
    WrongKey {
        /// The envelope's key id.
        key_id: String,
    },

    /// The right key, but the value does not authenticate.
    #[error(
        "the encrypted value under key {key_id:?} failed authentication: it was altered, or \
         copied from another record or field"
    )]
    Tampered {
        /// The envelope's key id.
        key_id: String,
    },

    /// The record's secret fields decrypt, but a field stored in clear
    /// beside them (a token's scopes or expiry, a flow's redirect URI or
    /// attributes, ...) is not what was written with them: the record was
    /// edited in the backend.
    #[error(
        "the record's {field} was changed at rest: it no longer matches what was encrypted with \
         the record, so someone edited the stored record; the record is refused (have the user \
         authorize again)"
    )]
    ClearFieldTampered {
        /// The field that changed (`scopes`, `expires_at`, `redirect_uri`,
        /// ...).
        field: &'static str,
    },

    /// A key id that cannot be used.
    #[error(
        "invalid key id {key_id:?}: use 1 to {max} characters from A-Z, a-z, 0-9, '.', '_' and '-'",
        max = crate::key::MAX_KEY_ID_LEN
    )]
    InvalidKeyId {
        /// The rejected id.
        key_id: String,
    },

    /// Key material that cannot be used.
    #[error(
        "invalid encryption key {key_id:?}: {reason}; generate one with \
         `EncryptionKey::generate` or `openssl rand -base64 32`"
    )]
    InvalidKey {
        /// The id the key was to have.
        key_id: String,
        /// What is wrong (never the material itself).
        reason: String,
    },

    /// An environment variable that should hold a key does not.
    #[error("environment variable {name} {reason}: set it to the base64 of a 32-byte key")]
    KeyEnvVar {
        /// The variable's name.
        name: String,
        /// "is not set" or "is not valid Unicode".
        reason: &'static str,
    },

    /// A key file could not be read.
    #[error("could not read the key file {}: {source}", path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },

    /// Two keys of a keyring share an id.
    #[error("key id {key_id:?} appears twice in the keyring: give each key its own id")]
    DuplicateKeyId {
        /// The repeated id.
        key_id: String,
    },
}

impl EncryptionError {
    /// Whether the same operation may succeed if tried again: never, as every
    /// cause is in the data or the configuration.
    pub fn is_retryable(&self) -> bool {
        false
    }

    /// Whether this is a failure to open a stored value (as opposed to a
    /// failure to load a key).
    pub fn is_undecryptable(&self) -> bool {
        matches!(
            self,
            EncryptionError::NotEncrypted
                | EncryptionError::Truncated { .. }
                | EncryptionError::Malformed { .. }
                | EncryptionError::UnsupportedVersion { .. }
                | EncryptionError::UnknownKeyId { .. }
                | EncryptionError::WrongKey { .. }
                | EncryptionError::Tampered { .. }
                | EncryptionError::ClearFieldTampered { .. }
        )
    }

    /// The encryption error inside a store error, if that is what it was.
    ///
    /// ```
    /// # use mcp_authkit_store_encrypted::EncryptionError;
    /// fn explain(error: &mcp_authkit_core::Error) -> String {
    ///     match EncryptionError::find_in(error) {
    ///         Some(EncryptionError::UnknownKeyId { key_id }) => format!("missing key {key_id}"),
    ///         _ => error.to_string(),
    ///     }
    /// }
    /// ```
    pub fn find_in(error: &mcp_authkit_core::Error) -> Option<&EncryptionError> {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(error) = current {
            if let Some(found) = error.downcast_ref::<EncryptionError>() {
                return Some(found);
            }
            current = error.source();
        }
        None
    }

    pub(crate) fn into_store_error(self, location: String) -> mcp_authkit_core::Error {
        mcp_authkit_core::Error::Decode {
            backend: crate::BACKEND,
            location,
            source: Arc::new(self),
        }
    }
}

impl From<EncryptionError> for mcp_authkit_core::Error {
    /// Key-loading failures become invalid configuration; failures to open a
    /// value become [`Error::Decode`](mcp_authkit_core::Error::Decode). Both
    /// keep the [`EncryptionError`] as their source.
    fn from(error: EncryptionError) -> Self {
        if error.is_undecryptable() {
            error.into_store_error("an encrypted value".to_owned())
        } else {
            mcp_authkit_core::Error::Backend {
                backend: crate::BACKEND,
                operation: "load the encryption keys",
                retryable: false,
                source: Arc::new(error),
            }
        }
    }
}
