//! Lock request types, parsed and validated at the edge: a value that exists is valid.

use std::time::Duration;

use serde_json::{Map, Value};
use validator::Validate;

use crate::error::{ApiError, FieldError};

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

/// A grant token as the client holds it: `<slot>.<fence>.<nonce>`, opaque to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken(String);

impl LockToken {
    /// Most characters a token may have (API.md).
    pub const MAX_LEN: usize = 128;

    /// Wraps a token received from a client (length already checked).
    pub fn from_client(raw: &str) -> Self {
        Self(raw.to_owned())
    }

    /// Wraps a token minted by the claim script.
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
}

/// A validated acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireRequest {
    /// Which lock.
    pub name: LockName,
    /// How long to wait for a slot (zero: try once).
    pub wait: Duration,
    /// Lease length of the grant.
    pub lease: Duration,
    /// Slots of the lock (1 = mutex).
    pub permits: u32,
}

/// A validated release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRequest {
    /// Which lock.
    pub name: LockName,
    /// The grant to end.
    pub token: LockToken,
}

/// A validated extend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendRequest {
    /// Which lock.
    pub name: LockName,
    /// The grant to extend.
    pub token: LockToken,
    /// New lease length from now.
    pub lease: Duration,
}

/// One `POST /locks` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockRequest {
    /// `{"op": "acquire", ...}`
    Acquire(AcquireRequest),
    /// `{"op": "release", ...}`
    Release(ReleaseRequest),
    /// `{"op": "extend", ...}`
    Extend(ExtendRequest),
}

/// The numeric field rules of API.md, checked by `validator`.
#[derive(Validate)]
struct NumericFields {
    #[validate(range(min = 0, max = 120_000, message = "must be an integer in 0..=120000"))]
    wait_ms: u64,
    #[validate(range(
        min = 100,
        max = 3_600_000,
        message = "must be an integer in 100..=3600000"
    ))]
    lease_ms: u64,
    #[validate(range(min = 1, max = 1024, message = "must be an integer in 1..=1024"))]
    permits: u64,
}

const DEFAULT_LEASE_MS: u64 = 30_000;

/// The fields each operation accepts; anything else is a 400 naming the field.
pub const ACQUIRE_FIELDS: &[&str] = &["op", "name", "wait_ms", "lease_ms", "permits"];
/// See [`ACQUIRE_FIELDS`].
pub const RELEASE_FIELDS: &[&str] = &["op", "name", "token"];
/// See [`ACQUIRE_FIELDS`].
pub const EXTEND_FIELDS: &[&str] = &["op", "name", "token", "lease_ms"];

/// The request body as the OpenAPI document describes it. Parsing goes
/// through [`LockRequest::from_json`] instead, which names every bad field;
/// a test keeps the two in step.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[schema(as = LockRequest)]
#[allow(dead_code)]
pub enum LockRequestSchema {
    /// Take a slot, waiting up to `wait_ms`.
    Acquire(AcquireBody),
    /// End a grant.
    Release(ReleaseBody),
    /// Move a live grant's deadline to now + `lease_ms`.
    Extend(ExtendBody),
}

/// The `op` values, one type each so the schema pins `op` per body.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum AcquireOp {
    /// `"acquire"`
    Acquire,
}

/// See [`AcquireOp`].
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ReleaseOp {
    /// `"release"`
    Release,
}

/// See [`AcquireOp`].
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ExtendOp {
    /// `"extend"`
    Extend,
}

/// `{"op": "acquire", ...}`
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct AcquireBody {
    op: AcquireOp,
    /// Lock name.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
    name: String,
    /// How long to wait for a free slot (0: try once).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 120000, default = 0)]
    wait_ms: u64,
    /// Lease length.
    #[serde(default)]
    #[schema(minimum = 100, maximum = 3600000, default = 30000)]
    lease_ms: u64,
    /// Slots of the lock (1: mutex).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1024, default = 1)]
    permits: u32,
}

/// `{"op": "release", ...}`
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ReleaseBody {
    op: ReleaseOp,
    /// Lock name.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
    name: String,
    /// The token from acquire.
    #[schema(min_length = 1, max_length = 128)]
    token: String,
}

/// `{"op": "extend", ...}`
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ExtendBody {
    op: ExtendOp,
    /// Lock name.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
    name: String,
    /// The token from acquire.
    #[schema(min_length = 1, max_length = 128)]
    token: String,
    /// New lease length from now.
    #[serde(default)]
    #[schema(minimum = 100, maximum = 3600000, default = 30000)]
    lease_ms: u64,
}

/// Reads fields out of the JSON object, collecting every problem rather than
/// stopping at the first, so a client sees all its mistakes at once.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    fn string(&mut self, field: &str) -> Option<&'a str> {
        match self.object.get(field) {
            Some(Value::String(s)) => Some(s),
            Some(_) => self.fail(field, "must be a string"),
            None => self.fail(field, "is required"),
        }
    }

    /// A non-negative integer, or `default` when absent. `1.5`, `"5"` and `-1`
    /// are refused; `25.0` is the integer 25, as JSON Schema counts it.
    fn integer(&mut self, field: &str, default: u64) -> u64 {
        let value = match self.object.get(field) {
            None => return default,
            Some(Value::Number(n)) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(f))
                    .map(|f| f as u64)
            }),
            Some(_) => None,
        };
        value.unwrap_or_else(|| {
            self.fail::<()>(field, "must be a non-negative integer");
            default
        })
    }

    fn name(&mut self) -> Option<LockName> {
        let raw = self.string("name")?;
        LockName::parse(raw)
            .map_err(|why| self.fail::<()>("name", why))
            .ok()
    }

    fn token(&mut self) -> Option<LockToken> {
        let raw = self.string("token")?;
        if raw.is_empty() || raw.len() > LockToken::MAX_LEN {
            return self.fail("token", "must be 1 to 128 characters");
        }
        Some(LockToken::from_client(raw))
    }

    fn fail<T>(&mut self, field: &str, message: &str) -> Option<T> {
        self.errors.push(FieldError::new(field, message));
        None
    }
}

impl LockRequest {
    /// Parses a request body that is already valid JSON.
    pub fn from_json(body: &Value) -> Result<Self, ApiError> {
        let Value::Object(object) = body else {
            return Err(ApiError::invalid_field("body", "must be a JSON object"));
        };
        let op = match object.get("op") {
            Some(Value::String(op)) if ["acquire", "release", "extend"].contains(&op.as_str()) => {
                op.as_str()
            }
            Some(_) => {
                return Err(ApiError::invalid_field(
                    "op",
                    "must be one of acquire, release, extend",
                ));
            }
            None => return Err(ApiError::invalid_field("op", "is required")),
        };
        let allowed = match op {
            "acquire" => ACQUIRE_FIELDS,
            "release" => RELEASE_FIELDS,
            _ => EXTEND_FIELDS,
        };
        let mut fields = Fields {
            object,
            errors: Vec::new(),
        };
        for key in object.keys().filter(|k| !allowed.contains(&k.as_str())) {
            fields.errors.push(FieldError::new(
                key.as_str(),
                format!("is not a field of {op}"),
            ));
        }
        let name = fields.name();
        let mut number = |field: &str, default: u64| {
            if allowed.contains(&field) {
                fields.integer(field, default)
            } else {
                default
            }
        };
        let numbers = NumericFields {
            wait_ms: number("wait_ms", 0),
            lease_ms: number("lease_ms", DEFAULT_LEASE_MS),
            permits: number("permits", 1),
        };
        if let Err(report) = numbers.validate() {
            for (field, problems) in report.field_errors() {
                for problem in problems {
                    let message = problem.message.as_deref().unwrap_or("is out of range");
                    fields.errors.push(FieldError::new(field.as_ref(), message));
                }
            }
        }
        let token = (op != "acquire").then(|| fields.token()).flatten();
        if !fields.errors.is_empty() {
            let detail = fields
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ApiError::InvalidRequest {
                detail,
                errors: fields.errors,
            });
        }
        // Every field is present and valid past this point; the `expect`s document it.
        let name = name.expect("checked above");
        let lease = Duration::from_millis(numbers.lease_ms);
        Ok(match op {
            "acquire" => Self::Acquire(AcquireRequest {
                name,
                wait: Duration::from_millis(numbers.wait_ms),
                lease,
                permits: u32::try_from(numbers.permits).expect("validated to 1..=1024"),
            }),
            "release" => Self::Release(ReleaseRequest {
                name,
                token: token.expect("checked above"),
            }),
            _ => Self::Extend(ExtendRequest {
                name,
                token: token.expect("checked above"),
                lease,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(body: Value) -> Vec<String> {
        match LockRequest::from_json(&body) {
            Err(ApiError::InvalidRequest { errors, .. }) => {
                errors.into_iter().map(|e| e.field).collect()
            }
            other => panic!("expected 400 for {body}, got {other:?}"),
        }
    }

    #[test]
    fn acquire_defaults_follow_the_contract() {
        let parsed =
            LockRequest::from_json(&json!({"op": "acquire", "name": "device-42"})).unwrap();
        let LockRequest::Acquire(a) = parsed else {
            panic!()
        };
        assert_eq!(a.wait, Duration::ZERO);
        assert_eq!(a.lease, Duration::from_millis(30_000));
        assert_eq!(a.permits, 1);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(json!({"name": "a"})), ["op"]);
        assert_eq!(field_of(json!({"op": "steal", "name": "a"})), ["op"]);
        assert_eq!(field_of(json!({"op": "acquire", "name": ""})), ["name"]);
        assert_eq!(
            field_of(json!({"op": "acquire", "name": "a".repeat(129)})),
            ["name"]
        );
        assert_eq!(field_of(json!({"op": "acquire", "name": "a b"})), ["name"]);
        assert_eq!(field_of(json!({"op": "acquire", "name": "é"})), ["name"]);
        assert_eq!(
            field_of(json!({"op": "acquire", "name": "a", "wait_ms": -1})),
            ["wait_ms"]
        );
        assert_eq!(
            field_of(json!({"op": "acquire", "name": "a", "wait_ms": 120_001})),
            ["wait_ms"]
        );
        assert_eq!(
            field_of(json!({"op": "acquire", "name": "a", "wait_ms": "5"})),
            ["wait_ms"]
        );
        assert_eq!(
            field_of(json!({"op": "acquire", "name": "a", "wait_ms": 1.5})),
            ["wait_ms"]
        );
        assert_eq!(
            field_of(json!({"op": "acquire", "name": "a", "lease_ms": 99})),
            ["lease_ms"]
        );
        assert_eq!(
            field_of(json!({"op": "acquire", "name": "a", "permits": 0})),
            ["permits"]
        );
        assert_eq!(
            field_of(json!({"op": "acquire", "name": "a", "permits": 1025})),
            ["permits"]
        );
        assert_eq!(
            field_of(json!({"op": "acquire", "name": "a", "colour": "red"})),
            ["colour"]
        );
        assert_eq!(field_of(json!({"op": "release", "name": "a"})), ["token"]);
        assert_eq!(
            field_of(json!({"op": "release", "name": "a", "token": "t", "wait_ms": 5})),
            ["wait_ms"]
        );
        assert_eq!(
            field_of(json!({"op": "extend", "name": "a", "token": "x".repeat(129)})),
            ["token"]
        );
        assert_eq!(field_of(json!([1, 2])), ["body"]);
    }

    #[test]
    fn integral_floats_count_as_integers() {
        let parsed =
            LockRequest::from_json(&json!({"op": "acquire", "name": "a", "lease_ms": 25349.0}))
                .unwrap();
        let LockRequest::Acquire(a) = parsed else {
            panic!()
        };
        assert_eq!(a.lease, Duration::from_millis(25349));
    }

    #[test]
    fn only_minted_token_shapes_are_well_formed() {
        assert!(LockToken::from_client("3.1795000000000001.00ff00ff00ff00ff").is_well_formed());
        for bad in [
            "",
            "3",
            "3.4",
            "3.4.xyz",
            "a.4.00ff00ff00ff00ff",
            "3.4.00ff00ff00ff00ff.9",
        ] {
            assert!(!LockToken::from_client(bad).is_well_formed(), "{bad}");
        }
    }
}
