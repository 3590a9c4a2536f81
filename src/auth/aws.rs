//! AWS IAM bearers, as Vault's `aws` auth method checks them: the caller
//! signs (SigV4) an STS `GetCallerIdentity` request covering the header
//! `x-middleway-audience`, and hands it over as
//! `mw-aws-v1.<base64url of {"method","url","headers","body"}>`. The service
//! checks everything it can locally first (endpoint on the allow-list, the
//! exact body, the signed headers, the audience, the age), so it never sends
//! anything anywhere else and never replays a stale or foreign token; then
//! STS verifies the signature and names the caller. An assumed-role ARN
//! counts as its role's ARN.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::outbound::{Outbound, OutboundError, checked_url};
use super::verified::{Identity, Refusal, Verified};

/// What every IAM bearer starts with.
pub const PREFIX: &str = "mw-aws-v1.";
/// The only request a token may carry.
const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
/// A token is good for this long after it was signed (as in STS presigning).
const MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// A signing date this far ahead of our clock is still accepted.
const SKEW: Duration = Duration::from_secs(60);
/// Headers a token may carry; a real signer sends no more than these.
const MAX_HEADERS: usize = 16;
/// Headers never passed on to STS (the connection's own, set by the client).
const NOT_FORWARDED: [&str; 4] = ["host", "content-length", "connection", "transfer-encoding"];

/// Which STS endpoints tokens may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StsEndpoints {
    /// `https://sts.amazonaws.com/` and `https://sts.<region>.amazonaws.com/`.
    Aws,
    /// `AUTH_AWS_STS_ENDPOINTS`.
    Listed(Vec<Url>),
}

impl StsEndpoints {
    /// Parses `AUTH_AWS_STS_ENDPOINTS` (comma-separated URLs).
    pub fn parse(text: &str) -> Result<Self, String> {
        let urls = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let url = checked_url(s)?;
                if url.query().is_some() {
                    return Err(format!("{s:?} must not carry a query"));
                }
                Ok(url)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Err("names no endpoint".into());
        }
        Ok(Self::Listed(urls))
    }

    fn allows(&self, url: &Url) -> bool {
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return false;
        }
        match self {
            Self::Listed(urls) => urls.iter().any(|allowed| {
                allowed.scheme() == url.scheme()
                    && allowed.host() == url.host()
                    && allowed.port_or_known_default() == url.port_or_known_default()
                    && allowed.path() == url.path()
            }),
            Self::Aws => {
                let host = url.host_str().unwrap_or_default();
                let region_host = host
                    .strip_prefix("sts.")
                    .and_then(|rest| rest.strip_suffix(".amazonaws.com"))
                    .is_some_and(|region| {
                        !region.is_empty()
                            && region
                                .bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    });
                let global = host == "sts.amazonaws.com";
                url.scheme() == "https"
                    && (global || region_host)
                    && url.port().is_none()
                    && url.path() == "/"
            }
        }
    }
}

#[derive(Deserialize)]
struct SignedRequest {
    method: String,
    url: String,
    headers: HashMap<String, String>,
    body: String,
}

/// Verifies IAM tokens made for `audience`.
pub struct AwsVerifier {
    outbound: Outbound,
    audience: String,
    endpoints: StsEndpoints,
}

impl AwsVerifier {
    pub fn new(outbound: Outbound, audience: String, endpoints: StsEndpoints) -> Self {
        Self {
            outbound,
            audience,
            endpoints,
        }
    }

    /// Checks `token` (without [`PREFIX`]) and asks STS who signed it.
    pub async fn verify(&self, token: &str) -> Verified {
        let request = self.checked_request(token, SystemTime::now())?;
        let (status, body) = self
            .outbound
            .post(&request.url, request.headers, BODY.to_owned())
            .await
            .map_err(|e| match e {
                OutboundError::Unreachable | OutboundError::Status(_) | OutboundError::TooLarge => {
                    Refusal::Unavailable("STS cannot be reached")
                }
            })?;
        match status {
            200 => {}
            // STS refuses a bad or expired signature with 403 (and 400 for
            // a malformed one): the token is worth nothing.
            400..=499 => return Err(Refusal::Unauthorized("STS refused the signature")),
            _ => return Err(Refusal::Unavailable("STS cannot answer")),
        }
        let arn = caller_arn(&body).ok_or(Refusal::Unavailable("STS answered without an ARN"))?;
        Ok((
            Identity::Aws {
                arn: role_arn(&arn).into(),
            },
            request.until,
        ))
    }

    fn checked_request(&self, token: &str, now: SystemTime) -> Result<Checked, Refusal> {
        let malformed = Refusal::Unauthorized("malformed IAM token");
        let json = URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map_err(|_| malformed)?;
        let request: SignedRequest = serde_json::from_slice(&json).map_err(|_| malformed)?;
        if request.method != "POST" {
            return Err(Refusal::Unauthorized("the IAM token's method is not POST"));
        }
        let url = Url::parse(&request.url).map_err(|_| malformed)?;
        if !self.endpoints.allows(&url) {
            return Err(Refusal::Unauthorized(
                "the IAM token names an STS endpoint this service does not use",
            ));
        }
        if request.body != BODY {
            return Err(Refusal::Unauthorized(
                "the IAM token's body is not GetCallerIdentity",
            ));
        }
        if request.headers.len() > MAX_HEADERS {
            return Err(malformed);
        }
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        };
        let authorization = header("authorization").ok_or(malformed)?;
        let signed = signed_headers(authorization).ok_or(malformed)?;
        if !signed.contains(&"host") || !signed.contains(&"x-middleway-audience") {
            return Err(Refusal::Unauthorized(
                "the IAM token's signature does not cover host and x-middleway-audience",
            ));
        }
        if header("x-middleway-audience") != Some(self.audience.as_str()) {
            return Err(Refusal::Unauthorized("wrong audience"));
        }
        if let Some(host) = header("host")
            && Some(host) != host_of(&url).as_deref()
        {
            return Err(Refusal::Unauthorized(
                "the IAM token's host is not its URL's",
            ));
        }
        let signed_at = header("x-amz-date")
            .and_then(parse_amz_date)
            .ok_or(malformed)?;
        let until = signed_at + MAX_AGE;
        if until <= now {
            return Err(Refusal::Unauthorized("expired"));
        }
        if signed_at > now + SKEW {
            return Err(Refusal::Unauthorized("not valid yet"));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| malformed)?;
            if NOT_FORWARDED.contains(&name.as_str()) {
                continue;
            }
            let value = HeaderValue::from_str(value).map_err(|_| malformed)?;
            headers.insert(name, value);
        }
        Ok(Checked {
            url,
            headers,
            until,
        })
    }
}

struct Checked {
    url: Url,
    headers: HeaderMap,
    until: SystemTime,
}

/// The names in `SignedHeaders=` of a SigV4 `Authorization` for service `sts`.
fn signed_headers(authorization: &str) -> Option<Vec<&str>> {
    let fields = authorization.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let mut names = None;
    let mut service_is_sts = false;
    for field in fields.split(',').map(str::trim) {
        if let Some(list) = field.strip_prefix("SignedHeaders=") {
            names = Some(list.split(';').collect());
        } else if let Some(credential) = field.strip_prefix("Credential=") {
            // AKID/DATE/REGION/SERVICE/aws4_request
            service_is_sts = credential.split('/').nth(3) == Some("sts");
        }
    }
    names.filter(|_| service_is_sts)
}

/// `host[:port]` as a signer puts it in the `host` header.
fn host_of(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// `YYYYMMDDTHHMMSSZ`.
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let at = time::PrimitiveDateTime::parse(text, format)
        .ok()?
        .assume_utc();
    let seconds = u64::try_from(at.unix_timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// The `<Arn>` of a `GetCallerIdentity` answer.
fn caller_arn(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Arn>")? + "<Arn>".len();
    let end = start + text[start..].find("</Arn>")?;
    Some(text[start..end].trim().to_owned())
}

/// `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION` → `arn:aws:iam::ACCOUNT:role/ROLE`;
/// any other ARN as it is.
fn role_arn(arn: &str) -> String {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if let ["arn", partition, "sts", "", account, resource] = parts.as_slice()
        && let Some(rest) = resource.strip_prefix("assumed-role/")
        && let Some((role, _session)) = rest.split_once('/')
    {
        return format!("arn:{partition}:iam::{account}:role/{role}");
    }
    arn.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIENCE: &str = "middleway-test";

    fn verifier(endpoints: StsEndpoints) -> AwsVerifier {
        AwsVerifier::new(Outbound::new(), AUDIENCE.into(), endpoints)
    }

    fn token(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut request = serde_json::json!({
            "method": "POST",
            "url": "https://sts.us-east-1.amazonaws.com/",
            "headers": {
                "Authorization": "AWS4-HMAC-SHA256 Credential=AKIA/20261204/us-east-1/sts/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-middleway-audience, Signature=00",
                "X-Amz-Date": "20261204T120000Z",
                "x-middleway-audience": AUDIENCE,
                "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            },
            "body": BODY,
        });
        edit(&mut request);
        URL_SAFE_NO_PAD.encode(request.to_string())
    }

    fn at(text: &str) -> SystemTime {
        parse_amz_date(text).unwrap()
    }

    #[test]
    fn a_well_formed_token_passes_the_local_checks() {
        let checked = verifier(StsEndpoints::Aws)
            .checked_request(&token(|_| {}), at("20261204T120500Z"))
            .unwrap();
        assert_eq!(checked.until, at("20261204T121500Z"));
        assert!(checked.headers.contains_key("x-middleway-audience"));
    }

    #[test]
    fn every_local_check_refuses_before_anything_is_sent() {
        let now = at("20261204T120500Z");
        let cases: Vec<(String, &str)> = vec![
            ("!!!".into(), "malformed"),
            (URL_SAFE_NO_PAD.encode("[]"), "malformed"),
            (token(|r| r["method"] = "GET".into()), "not POST"),
            (
                token(|r| r["url"] = "https://attacker.example/".into()),
                "endpoint",
            ),
            (
                token(|r| r["url"] = "https://sts.amazonaws.com.attacker.example/".into()),
                "endpoint",
            ),
            (
                token(|r| r["url"] = "http://sts.us-east-1.amazonaws.com/".into()),
                "endpoint",
            ),
            (
                token(|r| r["url"] = "https://sts.us-east-1.amazonaws.com/?Action=x".into()),
                "endpoint",
            ),
            (
                token(|r| r["body"] = "Action=AssumeRole&Version=2011-06-15".into()),
                "body",
            ),
            (
                token(|r| r["headers"]["x-middleway-audience"] = "another-service".into()),
                "wrong audience",
            ),
            (
                token(|r| {
                    r["headers"]["Authorization"] = "AWS4-HMAC-SHA256 Credential=AKIA/20261204/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date, Signature=00".into()
                }),
                "does not cover",
            ),
            (
                token(|r| {
                    r["headers"]["Authorization"] = "AWS4-HMAC-SHA256 Credential=AKIA/20261204/us-east-1/s3/aws4_request, SignedHeaders=host;x-middleway-audience, Signature=00".into()
                }),
                "malformed",
            ),
            (
                token(|r| r["headers"]["X-Amz-Date"] = "20261204T114959Z".into()),
                "expired",
            ),
            (
                token(|r| r["headers"]["X-Amz-Date"] = "20261204T120701Z".into()),
                "not valid yet",
            ),
            (
                token(|r| r["headers"]["X-Amz-Date"] = "yesterday".into()),
                "malformed",
            ),
            (
                token(|r| r["headers"]["Host"] = "attacker.example".into()),
                "host",
            ),
        ];
        let verifier = verifier(StsEndpoints::Aws);
        for (token, why) in cases {
            match verifier.checked_request(&token, now) {
                Err(Refusal::Unauthorized(detail)) => {
                    assert!(detail.contains(why), "{detail} for {why}")
                }
                other => panic!("{why}: {:?}", other.map(|c| c.url)),
            }
        }
    }

    #[test]
    fn listed_endpoints_replace_the_aws_ones() {
        let listed =
            StsEndpoints::parse("http://127.0.0.1:5000/, https://sts.internal.example/").unwrap();
        assert!(listed.allows(&Url::parse("http://127.0.0.1:5000/").unwrap()));
        assert!(listed.allows(&Url::parse("https://sts.internal.example/").unwrap()));
        assert!(!listed.allows(&Url::parse("http://127.0.0.1:5001/").unwrap()));
        assert!(!listed.allows(&Url::parse("https://sts.amazonaws.com/").unwrap()));
        assert!(StsEndpoints::parse("http://sts.internal.example/").is_err());
        assert!(StsEndpoints::parse(" , ").is_err());
    }

    #[test]
    fn an_assumed_role_counts_as_its_role() {
        assert_eq!(
            role_arn("arn:aws:sts::123456789012:assumed-role/reports-fn/session-1"),
            "arn:aws:iam::123456789012:role/reports-fn"
        );
        assert_eq!(
            role_arn("arn:aws:iam::123456789012:user/alice"),
            "arn:aws:iam::123456789012:user/alice"
        );
        let answer = b"<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>arn:aws:sts::123456789012:assumed-role/r/s</Arn></GetCallerIdentityResult></GetCallerIdentityResponse>";
        assert_eq!(
            caller_arn(answer).as_deref(),
            Some("arn:aws:sts::123456789012:assumed-role/r/s")
        );
    }
}
