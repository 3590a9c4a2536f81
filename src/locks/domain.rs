//! The lock's own types: a name that is valid by construction, the grant
//! token clients hold, a grant, why a token does not hold, and a lock's state.

/// A lock name: `[A-Za-z0-9._:-]{1,128}`. It never contains braces, so it is
/// safe inside a Redis Cluster hash tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

    /// A name the service uses for itself. It starts with `~`, which no
    /// client's name may contain, so no request can take or release its
    /// slots. Characters a name may not have become `-`.
    pub(crate) fn internal(name: &str) -> Self {
        let name: String = name
            .chars()
            .take(127)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        Self(format!("~{name}"))
    }

    /// A name as the lock scripts carry it in their messages: a client's
    /// name, or one the service uses for itself.
    pub(crate) fn from_script(raw: &str) -> Option<Self> {
        match raw.strip_prefix('~') {
            Some(own) => Self::parse(own).ok().map(|_| Self(raw.to_owned())),
            None => Self::parse(raw).ok(),
        }
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

    /// Whether it has the shape of a token we mint,
    /// `<incarnation>.<grant number>.<fence>.<nonce>`; anything else cannot
    /// hold a lock.
    pub fn is_well_formed(&self) -> bool {
        let mut parts = self.0.split('.');
        let hex = |p: Option<&str>| {
            p.is_some_and(|p| p.len() == 16 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        let digits = |p: Option<&str>| {
            p.is_some_and(|p| {
                !p.is_empty() && p.len() <= 19 && p.bytes().all(|b| b.is_ascii_digit())
            })
        };
        hex(parts.next())
            && digits(parts.next())
            && digits(parts.next())
            && hex(parts.next())
            && parts.next().is_none()
    }

    /// The fence the token carries (its third part).
    pub fn fence(&self) -> Option<u64> {
        self.0.split('.').nth(2).and_then(|f| f.parse().ok())
    }
}

/// An acquire, as the engine takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AcquireRequest {
    /// Which lock.
    pub name: LockName,
    /// How long to wait for a slot (0: try once).
    pub wait_ms: u64,
    /// The lease to grant.
    pub lease_ms: u64,
    /// Slots of the lock (1: mutex).
    pub permits: u32,
}

impl AcquireRequest {
    /// How long to wait for a slot (zero: try once).
    pub(crate) fn wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.wait_ms)
    }
}

/// A release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReleaseRequest {
    /// Which lock.
    pub name: LockName,
    /// The grant to end.
    pub token: LockToken,
}

/// An extend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExtendRequest {
    /// Which lock.
    pub name: LockName,
    /// The grant to extend.
    pub token: LockToken,
    /// New lease length from now.
    pub lease_ms: u64,
}

/// An inspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InspectRequest {
    /// Which lock.
    pub name: LockName,
    /// A token to ask about.
    pub token: Option<LockToken>,
}

/// A live grant, as the caller receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The bearer token for release and extend.
    pub token: LockToken,
    /// Strictly increasing per name.
    pub fence: u64,
    /// Lease deadline, Unix ms on the Redis clock.
    pub deadline_ms: u64,
}

/// Why a token does not hold its lock (API.md, "Why a token is not held").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotHeldReason {
    /// Its lease ran out.
    Expired,
    /// It was released (a retried release after a lost reply sees this).
    Released,
    /// Never granted, or longer ago than the lock remembers.
    Unknown,
}

impl NotHeldReason {
    /// Reads a script's word for it.
    pub fn from_script(word: &str) -> Self {
        match word {
            "expired" => Self::Expired,
            "released" => Self::Released,
            _ => Self::Unknown,
        }
    }

    /// The word the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Released => "released",
            Self::Unknown => "unknown",
        }
    }
}

/// One grant of a lock as `inspect` lists it (never its token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// Its fence.
    pub fence: u64,
    /// Its deadline, Unix ms on the Redis clock.
    pub deadline_ms: u64,
}

/// What `inspect` sees of a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockState {
    /// Slots, or `None` when the lock does not exist.
    pub permits: Option<u32>,
    /// Live grants.
    pub held: u64,
    /// The live grants, when they were asked for.
    pub holders: Vec<Holder>,
    /// Requests waiting, fleet-wide.
    pub waiting: u64,
    /// The latest fence granted, when the lock exists.
    pub fence: Option<u64>,
    /// About the token asked after, if any: held until this deadline, or why not.
    pub token: Option<Result<u64, NotHeldReason>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(raw: &str) -> LockToken {
        LockToken::minted(raw.to_owned())
    }

    #[test]
    fn only_minted_token_shapes_are_well_formed() {
        let minted = token("0123456789abcdef.7.1795000000000001.00ff00ff00ff00ff");
        assert!(minted.is_well_formed());
        assert_eq!(minted.fence(), Some(1_795_000_000_000_001));
        for bad in [
            "",
            "3",
            "3.4",
            "3.4.5.00ff00ff00ff00ff",
            "0123456789abcdef.1795000000000001.00ff00ff00ff00ff",
            "0123456789abcdef.7.4.xyz",
            "0123456789abcdef.7.a.00ff00ff00ff00ff",
            "0123456789abcdef.7.4.00ff00ff00ff00ff.9",
            "0123456789abcdef.7.12345678901234567890.00ff00ff00ff00ff",
        ] {
            assert!(!token(bad).is_well_formed(), "{bad}");
        }
    }

    #[test]
    fn script_messages_carry_client_names_and_the_service_s_own() {
        assert_eq!(
            LockName::from_script("device-42"),
            LockName::parse("device-42").ok()
        );
        assert_eq!(
            LockName::from_script("~mysql-fleet"),
            Some(LockName::internal("mysql-fleet"))
        );
        for junk in ["", "~", "~~x", "a b", "~a{b}"] {
            assert_eq!(LockName::from_script(junk), None, "{junk}");
        }
    }

    #[test]
    fn client_tokens_are_1_to_128_characters() {
        assert!(LockToken::from_client(String::new()).is_err());
        assert!(LockToken::from_client("t".repeat(129)).is_err());
        assert!(LockToken::from_client("t".repeat(128)).is_ok());
    }
}
