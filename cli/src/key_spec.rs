//! Encryption keys named on the command line: `ID=env:VARIABLE` or
//! `ID=file:PATH`. Raw key material is never accepted as an argument, where
//! it would land in shell history and process listings.

use mcp_authkit::encrypted::{EncryptionError, EncryptionKey};

/// Where a key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpec {
    pub id: String,
    pub source: KeySource,
}

/// The place a key's base64 text is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    Env(String),
    File(std::path::PathBuf),
}

impl std::str::FromStr for KeySpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = "a key is ID=env:VARIABLE or ID=file:PATH (the variable or file holds the \
                     base64 key from `mcp-authkit keys generate`)";
        let (id, source) = text.split_once('=').ok_or(usage)?;
        if id.is_empty() {
            return Err(format!("the key id is empty; {usage}"));
        }
        let source = if let Some(variable) = source.strip_prefix("env:") {
            KeySource::Env(variable.to_owned())
        } else if let Some(path) = source.strip_prefix("file:") {
            KeySource::File(path.into())
        } else {
            return Err(usage.to_owned());
        };
        Ok(KeySpec {
            id: id.to_owned(),
            source,
        })
    }
}

impl KeySpec {
    /// Loads the key.
    pub fn load(&self) -> Result<EncryptionKey, EncryptionError> {
        match &self.source {
            KeySource::Env(variable) => EncryptionKey::from_env(self.id.clone(), variable),
            KeySource::File(path) => EncryptionKey::from_file(self.id.clone(), path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_and_file_keys_and_refuses_raw_material() {
        assert_eq!(
            "k1=env:MY_KEY".parse(),
            Ok(KeySpec {
                id: "k1".into(),
                source: KeySource::Env("MY_KEY".into())
            })
        );
        assert_eq!(
            "k2=file:/run/secrets/key".parse(),
            Ok(KeySpec {
                id: "k2".into(),
                source: KeySource::File("/run/secrets/key".into())
            })
        );
        assert!(
            "k3=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
                .parse::<KeySpec>()
                .is_err()
        );
        assert!("=env:X".parse::<KeySpec>().is_err());
        assert!("nokey".parse::<KeySpec>().is_err());
    }
}
