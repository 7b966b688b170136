//! Where the database is: a file path or a `sqlite:` URL.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use mcp_authkit_core::{Error, Result};
use sqlx::sqlite::SqliteConnectOptions;

const WHAT: &str = "sqlite database location";

/// The connect options and the file path named by `location`.
pub(crate) fn resolve(location: &Path) -> Result<(SqliteConnectOptions, PathBuf)> {
    let url = location.to_str().filter(|text| text.starts_with("sqlite:"));
    let (options, path) = match url {
        Some(url) => from_url(url)?,
        None => (
            SqliteConnectOptions::new().filename(location),
            location.to_owned(),
        ),
    };
    if path.as_os_str().is_empty() {
        return Err(Error::invalid_input(
            WHAT,
            "it names no file; give a path such as /var/lib/app/authkit.db or \
             sqlite:///var/lib/app/authkit.db",
        ));
    }
    Ok((options, path))
}

fn from_url(url: &str) -> Result<(SqliteConnectOptions, PathBuf)> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    let param = |name: &str| {
        params
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    };
    if database == ":memory:" || param("mode") == Some("memory") {
        return Err(Error::invalid_input(
            WHAT,
            "an in-memory SQLite database is neither shared between processes nor kept; \
             give a file path, or use mcp-authkit-store-memory for an in-process store",
        ));
    }
    if param("mode") == Some("ro") || matches!(param("immutable"), Some("1" | "true")) {
        return Err(Error::invalid_input(
            WHAT,
            "the store writes tokens and flows, so the database cannot be read-only; \
             remove mode=ro / immutable from the URL",
        ));
    }
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|error| Error::invalid_input(WHAT, format!("not a usable sqlite URL: {error}")))?;
    let path = options.get_filename().to_owned();
    Ok((options, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_urls_name_files() {
        let cases = [
            ("/tmp/a.db", "/tmp/a.db"),
            ("relative/a.db", "relative/a.db"),
            ("sqlite:///tmp/a.db", "/tmp/a.db"),
            ("sqlite://relative.db", "relative.db"),
            ("sqlite:relative.db", "relative.db"),
            (
                "sqlite:///tmp/with%20space.db?mode=rwc",
                "/tmp/with space.db",
            ),
        ];
        for (location, path) in cases {
            let (_, resolved) = resolve(Path::new(location)).unwrap();
            assert_eq!(resolved, Path::new(path), "{location}");
        }
    }

    #[test]
    fn memory_read_only_and_empty_locations_are_refused() {
        for location in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://x.db?mode=memory",
            "sqlite://x.db?mode=ro",
            "sqlite://x.db?immutable=1",
            "sqlite://",
            "",
            "sqlite://x.db?bogus=1",
        ] {
            let error = resolve(Path::new(location)).unwrap_err();
            assert!(
                matches!(error, Error::InvalidInput { .. }),
                "{location}: {error}"
            );
        }
    }
}
