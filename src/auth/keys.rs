//! Bearer API keys: `name:key` pairs (`API_KEYS`, `API_KEYS_FILE`), kept as
//! SHA-256 digests only; [`super::Identities`] compares them in constant time.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// Shortest key accepted: anything shorter is guessable.
const MIN_KEY_LEN: usize = 16;

/// One configured key. Only its SHA-256 is kept, so the key itself never
/// sits in memory dumps or `Debug` output.
#[derive(Clone)]
pub struct ApiKey {
    /// The key's name: shown in logs and metrics instead of the key.
    name: Arc<str>,
    /// SHA-256 of the key.
    digest: [u8; 32],
}

impl ApiKey {
    /// Parses `name:key`.
    pub fn parse(entry: &str) -> Result<Self, &'static str> {
        let (name, key) = entry.split_once(':').ok_or("must be `name:key`")?;
        let (name, key) = (name.trim(), key.trim());
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err("has a name that is not [A-Za-z0-9._-]+");
        }
        if key.len() < MIN_KEY_LEN {
            return Err("has a key shorter than 16 characters");
        }
        Ok(Self {
            name: name.into(),
            digest: Sha256::digest(key.as_bytes()).into(),
        })
    }
}

impl ApiKey {
    /// The key's name (a principal's, in `auth`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 of the key.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.name)
    }
}

/// The set of keys active at once (several during a rotation).
#[derive(Clone, Debug, Default)]
pub struct ApiKeys(Arc<[ApiKey]>);

impl ApiKeys {
    /// Wraps the configured keys.
    pub fn new(keys: Vec<ApiKey>) -> Self {
        Self(keys.into())
    }

    /// The keys.
    pub fn keys(&self) -> &[ApiKey] {
        &self.0
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_entries_are_refused() {
        assert!(ApiKey::parse("nokey").is_err());
        assert!(ApiKey::parse(":aaaaaaaaaaaaaaaa").is_err());
        assert!(ApiKey::parse("short:abc").is_err());
        assert!(ApiKey::parse("bad name:aaaaaaaaaaaaaaaa").is_err());
    }

    #[test]
    fn debug_shows_the_name_only() {
        let key = ApiKey::parse("ci:supersecretvalue123").unwrap();
        assert_eq!(format!("{key:?}"), "ApiKey(ci)");
    }
}
