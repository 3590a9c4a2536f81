//! `AUTH_FILE`: principals (their API keys, OIDC subject, AWS role, scopes
//! and limits) and OIDC issuers (TOML, shape in docs/API.md). Parsed and
//! checked as a whole: a file with one bad entry is refused whole, naming
//! the entry, so a reload never applies half a file.

use std::collections::{BTreeMap, HashSet};

use reqwest::Url;
use serde::Deserialize;

use super::outbound::checked_url;
use super::scopes::Scopes;

/// Shortest API key accepted: anything shorter is guessable.
const MIN_KEY_LEN: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    principals: Vec<PrincipalShape>,
    /// OIDC issuers by their `iss`.
    #[serde(default)]
    oidc: BTreeMap<String, IssuerShape>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerShape {
    audience: String,
    jwks_uri: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcShape {
    issuer: String,
    subject: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AwsShape {
    arn: String,
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
    oidc: Option<OidcShape>,
    aws: Option<AwsShape>,
}

/// Everything the file defines.
#[derive(Debug, Clone, Default)]
pub struct AuthFile {
    pub principals: Vec<PrincipalEntry>,
    pub issuers: Vec<IssuerEntry>,
}

/// An OIDC issuer whose tokens are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IssuerEntry {
    /// Exactly as tokens carry it in `iss`.
    pub issuer: String,
    /// What `aud` must contain.
    pub audience: String,
    /// Where its keys are; `None`: found by discovery.
    pub jwks_uri: Option<Url>,
}

/// Which OIDC subjects a principal is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectMatch {
    pub issuer: String,
    /// Exact, or a prefix when the configured subject ends in `*`.
    pub subject: String,
    pub prefix: bool,
}

impl SubjectMatch {
    pub fn matches(&self, issuer: &str, subject: &str) -> bool {
        self.issuer == issuer
            && if self.prefix {
                subject.starts_with(&self.subject)
            } else {
                subject == self.subject
            }
    }
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
    pub oidc: Option<SubjectMatch>,
    /// An IAM role (or user) ARN.
    pub aws_arn: Option<String>,
}

/// Parses and checks the file's text; `aws_enabled`: whether
/// `AUTH_AWS_AUDIENCE` is set (without it no IAM token can be checked).
pub fn parse(text: &str, aws_enabled: bool) -> Result<AuthFile, String> {
    let file: FileShape =
        toml::from_str(text).map_err(|e| format!("is not valid: {}", e.message()))?;
    let mut issuers = Vec::new();
    for (issuer, shape) in &file.oidc {
        let at = format!("[oidc.{issuer:?}]");
        checked_url(issuer).map_err(|why| format!("{at}: the issuer {why}"))?;
        if shape.audience.is_empty() {
            return Err(format!("{at}: the audience is empty"));
        }
        let jwks_uri = match &shape.jwks_uri {
            Some(uri) => Some(checked_url(uri).map_err(|why| format!("{at}: jwks_uri {why}"))?),
            None => None,
        };
        issuers.push(IssuerEntry {
            issuer: issuer.clone(),
            audience: shape.audience.clone(),
            jwks_uri,
        });
    }
    let mut subjects = HashSet::new();
    let mut arns = HashSet::new();
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
        let oidc = match p.oidc {
            None => None,
            Some(OidcShape { issuer, subject }) => {
                if !file.oidc.contains_key(&issuer) {
                    return Err(format!(
                        "{at}: its OIDC issuer {issuer:?} has no [oidc.{issuer:?}] section"
                    ));
                }
                let (subject, prefix) = match subject.strip_suffix('*') {
                    Some(prefix) => (prefix.to_owned(), true),
                    None => (subject, false),
                };
                if subject.is_empty() || subject.contains('*') {
                    return Err(format!(
                        "{at}: an OIDC subject is a name, or a non-empty prefix ending in `*`"
                    ));
                }
                if !subjects.insert((issuer.clone(), subject.clone(), prefix)) {
                    return Err(format!(
                        "{at}: its OIDC subject is also another principal's"
                    ));
                }
                Some(SubjectMatch {
                    issuer,
                    subject,
                    prefix,
                })
            }
        };
        let aws_arn = match p.aws {
            None => None,
            Some(AwsShape { arn }) => {
                if !aws_enabled {
                    return Err(format!(
                        "{at}: an aws identity needs AUTH_AWS_AUDIENCE to be set"
                    ));
                }
                if !is_iam_arn(&arn) {
                    return Err(format!(
                        "{at}: aws.arn must be an IAM role or user ARN \
                         (arn:aws:iam::ACCOUNT:role/NAME); an assumed-role session is matched by its role"
                    ));
                }
                if !arns.insert(arn.clone()) {
                    return Err(format!("{at}: its aws.arn is also another principal's"));
                }
                Some(arn)
            }
        };
        if p.api_keys.is_empty() && oidc.is_none() && aws_arn.is_none() {
            return Err(format!(
                "{at}: no api_keys, oidc or aws, so nobody could authenticate as it"
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
            oidc,
            aws_arn,
        });
    }
    Ok(AuthFile {
        principals: entries,
        issuers,
    })
}

/// `arn:<partition>:iam::<12 digits>:role/…` or `…:user/…`.
fn is_iam_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(
        parts.as_slice(),
        ["arn", partition, "iam", "", account, resource]
            if partition.starts_with("aws")
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && (resource.starts_with("role/") || resource.starts_with("user/"))
                && resource.len() > 5
    )
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
        let entries = parse(GOOD, true).unwrap().principals;
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].name, "billing");
        assert_eq!(entries[0].max_waiters, Some(500));
        assert!(entries[0].scopes.covers_lock("billing-7"));
        assert_eq!(entries[1].api_keys.len(), 2);
        assert_eq!(entries[1].max_in_flight, None);
    }

    #[test]
    fn oidc_subjects_and_aws_roles_name_principals() {
        let text = r#"
[[principals]]
name = "ingest"
oidc = { issuer = "https://issuer.example", subject = "system:serviceaccount:media:*" }
scopes = ["locks:ingest-*"]

[[principals]]
name = "reports"
aws = { arn = "arn:aws:iam::123456789012:role/reports-fn" }
scopes = ["transcriptions:read"]

[oidc."https://issuer.example"]
audience = "middleway"
jwks_uri = "https://issuer.example/keys"
"#;
        let file = parse(text, true).unwrap();
        assert_eq!(file.issuers.len(), 1);
        assert_eq!(file.issuers[0].audience, "middleway");
        let ingest = file.principals[0].oidc.as_ref().unwrap();
        assert!(ingest.matches(
            "https://issuer.example",
            "system:serviceaccount:media:ingest"
        ));
        assert!(!ingest.matches(
            "https://issuer.example",
            "system:serviceaccount:other:ingest"
        ));
        assert!(!ingest.matches(
            "https://other.example",
            "system:serviceaccount:media:ingest"
        ));
        assert_eq!(
            file.principals[1].aws_arn.as_deref(),
            Some("arn:aws:iam::123456789012:role/reports-fn")
        );
        let refused = parse(text, false).unwrap_err();
        assert!(refused.contains("AUTH_AWS_AUDIENCE"), "{refused}");
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
                "[[principals]]\nname = \"a\"\naws = { arn = \"arn:aws:sts::123456789012:assumed-role/r/s\" }\nscopes=[\"locks:*\"]",
                "IAM role or user ARN",
            ),
            (
                "[[principals]]\nname = \"a\"\naws = { arn = \"arn:aws:iam::123456789012:role/r\" }\nscopes=[\"locks:*\"]\n[[principals]]\nname = \"b\"\naws = { arn = \"arn:aws:iam::123456789012:role/r\" }\nscopes=[\"locks:*\"]",
                "also another principal's",
            ),
            (
                "[[principals]]\nname = \"a\"\noidc = { issuer = \"https://i.example\", subject = \"s\" }\nscopes=[\"locks:*\"]",
                "has no [oidc.",
            ),
            (
                "[[principals]]\nname = \"a\"\noidc = { issuer = \"https://i.example\", subject = \"*\" }\nscopes=[\"locks:*\"]\n[oidc.\"https://i.example\"]\naudience = \"mw\"",
                "non-empty prefix",
            ),
            (
                "[oidc.\"http://i.example\"]\naudience = \"mw\"",
                "must be https://",
            ),
            (
                "[oidc.\"https://i.example\"]\naudience = \"mw\"\njwks_uri = \"http://10.1.1.1/keys\"",
                "jwks_uri",
            ),
            (
                "[oidc.\"https://i.example\"]\naudience = \"\"",
                "audience is empty",
            ),
        ];
        for (text, why) in cases {
            let error = parse(text, true).unwrap_err();
            assert!(error.contains(why), "{text:?}: {error}");
            assert!(
                !error.contains("0123456789abcdef"),
                "a key leaked into {error}"
            );
        }
    }
}
