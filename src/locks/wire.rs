//! The `POST /locks` bodies: one enum that is both the parser and the
//! OpenAPI schema. Field types parse themselves (`LockName`, `LockToken`,
//! integers that say their range) and name their field when they fail;
//! `validator` checks the ranges.

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use validator::{Validate, ValidationErrors};

use super::domain::{LockName, LockToken};

/// One `POST /locks` body; `op` picks the operation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum LockRequest {
    /// Take a slot, waiting up to `wait_ms`.
    Acquire(AcquireRequest),
    /// End a grant.
    Release(ReleaseRequest),
    /// Move a live grant's deadline to now + `lease_ms`.
    Extend(ExtendRequest),
    /// Look at the lock: permits, holders (never their tokens), waiters.
    Inspect(InspectRequest),
}

/// `{"op": "acquire", ...}`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcquireRequest {
    /// Lock name.
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
    pub name: LockName,
    /// How long to wait for a free slot (0: try once).
    #[serde(default, deserialize_with = "wait_ms")]
    #[validate(range(max = 120_000, message = "must be an integer in 0..=120000"))]
    #[schema(minimum = 0, maximum = 120000, default = 0)]
    pub wait_ms: u64,
    /// Lease length.
    #[serde(default = "default_lease_ms", deserialize_with = "lease_ms")]
    #[validate(range(
        min = 100,
        max = 3_600_000,
        message = "must be an integer in 100..=3600000"
    ))]
    #[schema(minimum = 100, maximum = 3600000, default = 30000)]
    pub lease_ms: u64,
    /// Slots of the lock (1: mutex).
    #[serde(default = "default_permits", deserialize_with = "permits")]
    #[validate(range(min = 1, max = 1024, message = "must be an integer in 1..=1024"))]
    #[schema(minimum = 1, maximum = 1024, default = 1)]
    pub permits: u32,
}

/// `{"op": "release", ...}`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleaseRequest {
    /// Lock name.
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
    pub name: LockName,
    /// The token from acquire.
    #[schema(value_type = String, min_length = 1, max_length = 128)]
    pub token: LockToken,
}

/// `{"op": "extend", ...}`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExtendRequest {
    /// Lock name.
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
    pub name: LockName,
    /// The token from acquire.
    #[schema(value_type = String, min_length = 1, max_length = 128)]
    pub token: LockToken,
    /// New lease length from now.
    #[serde(default = "default_lease_ms", deserialize_with = "lease_ms")]
    #[validate(range(
        min = 100,
        max = 3_600_000,
        message = "must be an integer in 100..=3600000"
    ))]
    #[schema(minimum = 100, maximum = 3600000, default = 30000)]
    pub lease_ms: u64,
}

/// `{"op": "inspect", ...}`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InspectRequest {
    /// Lock name.
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
    pub name: LockName,
    /// A token to ask about: the answer says whether it holds the lock now.
    #[serde(default)]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 128)]
    pub token: Option<LockToken>,
}

impl Validate for LockRequest {
    fn validate(&self) -> Result<(), ValidationErrors> {
        match self {
            Self::Acquire(r) => r.validate(),
            Self::Release(r) => r.validate(),
            Self::Extend(r) => r.validate(),
            Self::Inspect(r) => r.validate(),
        }
    }
}

impl AcquireRequest {
    /// How long to wait for a slot (zero: try once).
    pub(crate) fn wait(&self) -> Duration {
        Duration::from_millis(self.wait_ms)
    }
}

/// An error message that names its field, `"<field>: <message>"`: serde does
/// not say which field of an internally tagged enum failed, so the field
/// says it itself (the HTTP edge reads the name back).
fn field_message(field: &str, message: impl std::fmt::Display) -> String {
    format!("{field}: {message}")
}

fn default_lease_ms() -> u64 {
    30_000
}

fn default_permits() -> u32 {
    1
}

fn wait_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    integer(d, "wait_ms", "0..=120000")
}

fn lease_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    integer(d, "lease_ms", "100..=3600000")
}

fn permits<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let value = integer(d, "permits", "1..=1024")?;
    u32::try_from(value).map_err(|_| {
        serde::de::Error::custom(field_message("permits", "must be an integer in 1..=1024"))
    })
}

/// A JSON integer (`25.0` counts, as in JSON Schema); anything else is an
/// error naming `field` and its range.
fn integer<'de, D: Deserializer<'de>>(d: D, field: &str, range: &str) -> Result<u64, D::Error> {
    let refuse = || {
        serde::de::Error::custom(field_message(
            field,
            format!("must be an integer in {range}"),
        ))
    };
    let number = serde_json::Number::deserialize(d).map_err(|_| refuse())?;
    number
        .as_u64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(f))
                .map(|f| f as u64)
        })
        .ok_or_else(refuse)
}

impl<'de> Deserialize<'de> for LockName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)
            .map_err(|_| serde::de::Error::custom(field_message("name", "must be a string")))?;
        LockName::parse(&raw).map_err(|why| serde::de::Error::custom(field_message("name", why)))
    }
}

impl<'de> Deserialize<'de> for LockToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)
            .map_err(|_| serde::de::Error::custom(field_message("token", "must be a string")))?;
        LockToken::from_client(raw)
            .map_err(|why| serde::de::Error::custom(field_message("token", why)))
    }
}
