//! What a principal may do: `transcriptions:read` (both GET routes) and
//! `locks:<pattern>` (every lock operation on names matching: exact, or a
//! prefix ending in `*`; `locks:*` is every name).

/// A principal's scopes, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    transcriptions: bool,
    locks: Vec<NamePattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NamePattern {
    Exact(String),
    Prefix(String),
}

impl Scopes {
    /// Every scope (keys from `API_KEYS` / `API_KEYS_FILE`, and `AUTH_DISABLED`).
    pub fn all() -> Self {
        Self {
            transcriptions: true,
            locks: vec![NamePattern::Prefix(String::new())],
        }
    }

    /// Parses the `scopes` list of a principal.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut scopes = Self::default();
        for entry in entries {
            match entry.split_once(':') {
                Some(("transcriptions", "read")) => scopes.transcriptions = true,
                Some(("locks", pattern)) if !pattern.is_empty() => {
                    scopes.locks.push(match pattern.strip_suffix('*') {
                        Some(prefix) if !prefix.contains('*') => NamePattern::Prefix(prefix.into()),
                        None if !pattern.contains('*') => NamePattern::Exact(pattern.into()),
                        _ => {
                            return Err(format!(
                                "scope {entry:?}: `*` may only end a lock pattern"
                            ));
                        }
                    });
                }
                _ => {
                    return Err(format!(
                        "scope {entry:?} is not transcriptions:read or locks:<name or prefix*>"
                    ));
                }
            }
        }
        Ok(scopes)
    }

    /// Whether the transcription reads are covered.
    pub fn reads_transcriptions(&self) -> bool {
        self.transcriptions
    }

    /// Whether lock `name` is covered.
    pub fn covers_lock(&self, name: &str) -> bool {
        self.locks.iter().any(|pattern| match pattern {
            NamePattern::Exact(exact) => exact == name,
            NamePattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(entries: &[&str]) -> Result<Scopes, String> {
        Scopes::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn lock_patterns_are_exact_names_or_prefixes() {
        let s = scopes(&["locks:billing-*", "locks:shared"]).unwrap();
        assert!(s.covers_lock("billing-1") && s.covers_lock("billing-") && s.covers_lock("shared"));
        assert!(!s.covers_lock("shared-2") && !s.covers_lock("billin") && !s.covers_lock("other"));
        assert!(!s.reads_transcriptions());
        let every = scopes(&["locks:*", "transcriptions:read"]).unwrap();
        assert!(every.covers_lock("anything") && every.reads_transcriptions());
        assert_eq!(Scopes::all(), Scopes::all());
        assert!(Scopes::all().covers_lock("x"));
    }

    #[test]
    fn a_scope_that_is_not_one_is_refused_with_its_text() {
        for bad in [
            "locks:",
            "locks:a*b*",
            "locks:*a",
            "transcriptions:write",
            "admin",
            "",
        ] {
            let error = scopes(&[bad]).unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }
}
