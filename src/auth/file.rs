//! `AUTH_FILE`: principals, their API keys, scopes and limits (TOML, shape in
//! docs/API.md). Parsed and checked as a whole: a file with one bad entry is
//! refused whole, naming the entry, so a reload never applies half a file.

use std::collections::HashSet;

use serde::Deserialize;

use super::scopes::Scopes;

/// Shortest API key accepted: anything shorter is guessable.
const MIN_KEY_LEN: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    principals: Vec<PrincipalShape>,
    /// OIDC issuers (not served by this version: refused below).
    #[serde(default)]
    oidc: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalShape {
    name: String,
    #[serde(default)]
    api_keys: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    max_in_flight: Option<usize>,
    max_waiters: Option<usize>,
    oidc: Option<toml::Value>,
    aws: Option<toml::Value>,
}

/// One principal as the file defines it.
#[derive(Debug, Clone)]
pub struct PrincipalEntry {
    pub name: String,
    /// The keys, as given (hashed when the directory is built).
    pub api_keys: Vec<String>,
    pub scopes: Scopes,
    pub max_in_flight: Option<usize>,
    pub max_waiters: Option<usize>,
}

/// Parses and checks the file's text.
pub fn parse(text: &str) -> Result<Vec<PrincipalEntry>, String> {
    let file: FileShape =
        toml::from_str(text).map_err(|e| format!("is not valid: {}", e.message()))?;
    if file.oidc.is_some() {
        return Err(
            "names OIDC issuers, which this version cannot verify yet: remove [oidc]".into(),
        );
    }
    let mut names = HashSet::new();
    let mut keys = HashSet::new();
    let mut entries = Vec::new();
    for (index, p) in file.principals.into_iter().enumerate() {
        let at = format!("principal {} ({:?})", index + 1, p.name);
        if p.name.is_empty()
            || p.name.len() > 64
            || !p
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(format!(
                "{at}: a name must be 1 to 64 characters of [A-Za-z0-9._-]"
            ));
        }
        if !names.insert(p.name.clone()) {
            return Err(format!("{at}: the name is used twice"));
        }
        if p.oidc.is_some() || p.aws.is_some() {
            return Err(format!(
                "{at}: oidc and aws identities cannot be verified by this version yet; use api_keys"
            ));
        }
        if p.api_keys.is_empty() {
            return Err(format!(
                "{at}: no api_keys, so nobody could authenticate as it"
            ));
        }
        for key in &p.api_keys {
            if key.len() < MIN_KEY_LEN {
                return Err(format!(
                    "{at}: a key is shorter than {MIN_KEY_LEN} characters"
                ));
            }
            if !keys.insert(key.clone()) {
                return Err(format!("{at}: a key is also another principal's"));
            }
        }
        if p.scopes.is_empty() {
            return Err(format!("{at}: no scopes, so it could do nothing"));
        }
        let scopes = Scopes::parse(&p.scopes).map_err(|why| format!("{at}: {why}"))?;
        for (limit, value) in [
            ("max_in_flight", p.max_in_flight),
            ("max_waiters", p.max_waiters),
        ] {
            if value == Some(0) {
                return Err(format!("{at}: {limit} must be at least 1"));
            }
        }
        entries.push(PrincipalEntry {
            name: p.name,
            api_keys: p.api_keys,
            scopes,
            max_in_flight: p.max_in_flight,
            max_waiters: p.max_waiters,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[principals]]
name = "billing"
api_keys = ["billing-key-0123456789"]
scopes = ["transcriptions:read", "locks:billing-*"]
max_in_flight = 64
max_waiters = 500

[[principals]]
name = "reports"
api_keys = ["reports-key-0123456789", "reports-key-new-0123456"]
scopes = ["transcriptions:read"]
"#;

    #[test]
    fn a_good_file_gives_its_principals() {
        let entries = parse(GOOD).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].name, "billing");
        assert_eq!(entries[0].max_waiters, Some(500));
        assert!(entries[0].scopes.covers_lock("billing-7"));
        assert_eq!(entries[1].api_keys.len(), 2);
        assert_eq!(entries[1].max_in_flight, None);
    }

    #[test]
    fn a_bad_file_is_refused_naming_what_is_wrong() {
        let cases = [
            ("[[principals]]\nname = \"a\"\n", "no api_keys"),
            ("principals = 3", "is not valid"),
            (
                "[[principals]]\nname = \"a b\"\napi_keys=[\"0123456789abcdef\"]\nscopes=[\"locks:*\"]",
                "name must be",
            ),
            (
                "[[principals]]\nname = \"a\"\napi_keys=[\"short\"]\nscopes=[\"locks:*\"]",
                "shorter than 16",
            ),
            (
                "[[principals]]\nname = \"a\"\napi_keys=[\"0123456789abcdef\"]\nscopes=[\"locks:*\"]\nmax_waiters = 0",
                "max_waiters",
            ),
            (
                "[[principals]]\nname = \"a\"\napi_keys=[\"0123456789abcdef\"]\nscopes=[\"root\"]",
                "\"root\"",
            ),
            (
                "[[principals]]\nname = \"a\"\napi_keys=[\"0123456789abcdef\"]\nscopes=[\"locks:*\"]\n[[principals]]\nname = \"a\"\napi_keys=[\"0123456789abcdeg\"]\nscopes=[\"locks:*\"]",
                "used twice",
            ),
            (
                "[[principals]]\nname = \"a\"\napi_keys=[\"0123456789abcdef\"]\nscopes=[\"locks:*\"]\n[[principals]]\nname = \"b\"\napi_keys=[\"0123456789abcdef\"]\nscopes=[\"locks:*\"]",
                "another principal's",
            ),
            (
                "[[principals]]\nname = \"a\"\napi_keys=[\"0123456789abcdef\"]\nscopes=[\"locks:*\"]\ncolour = 1",
                "is not valid",
            ),
            (
                "[[principals]]\nname = \"a\"\naws = { arn = \"arn:aws:iam::1:role/r\" }\nscopes=[\"locks:*\"]",
                "cannot be verified",
            ),
        ];
        for (text, why) in cases {
            let error = parse(text).unwrap_err();
            assert!(error.contains(why), "{text:?}: {error}");
            assert!(
                !error.contains("0123456789abcdef"),
                "a key leaked into {error}"
            );
        }
    }
}
