//! The lock's own types: a name that is valid by construction, and the grant
//! token clients hold.

/// A lock name: `[A-Za-z0-9._:-]{1,128}`. It never contains braces, so it is
/// safe inside a Redis Cluster hash tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LockName(String);

impl LockName {
    /// Parses a name.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let ok = (1..=128).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        ok.then(|| Self(raw.to_owned()))
            .ok_or("must be 1 to 128 characters of [A-Za-z0-9._:-]")
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A grant token as the client holds it: opaque, at most 128 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken(String);

impl LockToken {
    /// Most characters a token may have (API.md).
    pub const MAX_LEN: usize = 128;

    /// A token received from a client: 1 to 128 characters, any content
    /// (a token of a shape we never mint is simply not held).
    pub fn from_client(raw: String) -> Result<Self, &'static str> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err("must be 1 to 128 characters");
        }
        Ok(Self(raw))
    }

    /// Wraps a token minted by a lock script.
    pub fn minted(raw: String) -> Self {
        Self(raw)
    }

    /// The token text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it has the shape of a token we mint; anything else cannot hold a lock.
    pub fn is_well_formed(&self) -> bool {
        let mut parts = self.0.split('.');
        let digits = |p: Option<&str>| {
            p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        let hex = |p: Option<&str>| {
            p.is_some_and(|p| p.len() == 16 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        digits(parts.next()) && digits(parts.next()) && hex(parts.next()) && parts.next().is_none()
    }

    /// The fence the token carries (its second part).
    pub fn fence(&self) -> Option<u64> {
        self.0.split('.').nth(1).and_then(|f| f.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(raw: &str) -> LockToken {
        LockToken::minted(raw.to_owned())
    }

    #[test]
    fn only_minted_token_shapes_are_well_formed() {
        assert!(token("3.1795000000000001.00ff00ff00ff00ff").is_well_formed());
        for bad in [
            "",
            "3",
            "3.4",
            "3.4.xyz",
            "a.4.00ff00ff00ff00ff",
            "3.4.00ff00ff00ff00ff.9",
        ] {
            assert!(!token(bad).is_well_formed(), "{bad}");
        }
    }

    #[test]
    fn client_tokens_are_1_to_128_characters() {
        assert!(LockToken::from_client(String::new()).is_err());
        assert!(LockToken::from_client("t".repeat(129)).is_err());
        assert!(LockToken::from_client("t".repeat(128)).is_ok());
    }
}
