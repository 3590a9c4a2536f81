//! The `POST /locks` bodies: one enum that is both the parser and the
//! OpenAPI schema. Field types parse themselves (`LockName`, `LockToken`,
//! integers that say their range) and name their field when they fail;
//! `validator` checks the ranges. Each body becomes the engine's request.

use serde::{Deserialize, Deserializer};
use validator::{Validate, ValidateRange, ValidationError, ValidationErrors};

use super::domain::{
    AcquireRequest, ExtendRequest, InspectRequest, LockName, LockToken, ReleaseRequest,
};

/// One `POST /locks` body; `op` picks the operation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum LockRequest {
    /// `{"op": "acquire", ...}`: take a slot, waiting up to `wait_ms`.
    Acquire {
        /// Lock name.
        #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
        name: LockName,
        /// How long to wait for a free slot (0: try once).
        #[serde(default, deserialize_with = "wait_ms")]
        #[schema(minimum = 0, maximum = 120000, default = 0)]
        wait_ms: u64,
        /// Lease length.
        #[serde(default = "default_lease_ms", deserialize_with = "lease_ms")]
        #[schema(minimum = 100, maximum = 3600000, default = 30000)]
        lease_ms: u64,
        /// Slots of the lock (1: mutex).
        #[serde(default = "default_permits", deserialize_with = "permits")]
        #[schema(minimum = 1, maximum = 1024, default = 1)]
        permits: u32,
    },
    /// `{"op": "release", ...}`: end a grant.
    Release {
        /// Lock name.
        #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
        name: LockName,
        /// The token from acquire.
        #[schema(value_type = String, min_length = 1, max_length = 128)]
        token: LockToken,
    },
    /// `{"op": "extend", ...}`: move a live grant's deadline to now + `lease_ms`.
    Extend {
        /// Lock name.
        #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
        name: LockName,
        /// The token from acquire.
        #[schema(value_type = String, min_length = 1, max_length = 128)]
        token: LockToken,
        /// New lease length from now.
        #[serde(default = "default_lease_ms", deserialize_with = "lease_ms")]
        #[schema(minimum = 100, maximum = 3600000, default = 30000)]
        lease_ms: u64,
    },
    /// `{"op": "inspect", ...}`: look at the lock (permits, holders without
    /// their tokens, waiters), changing nothing.
    Inspect {
        /// Lock name.
        #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
        name: LockName,
        /// A token to ask about: the answer says whether it holds the lock now.
        #[serde(default)]
        #[schema(value_type = Option<String>, min_length = 1, max_length = 128)]
        token: Option<LockToken>,
    },
}

/// What the engine is asked to do.
pub(crate) enum LockCommand {
    Acquire(AcquireRequest),
    Release(ReleaseRequest),
    Extend(ExtendRequest),
    Inspect(InspectRequest),
}

impl LockCommand {
    /// The lock it is about.
    pub(crate) fn name(&self) -> &LockName {
        match self {
            Self::Acquire(r) => &r.name,
            Self::Release(r) => &r.name,
            Self::Extend(r) => &r.name,
            Self::Inspect(r) => &r.name,
        }
    }

    /// Whether it may wait for a slot (an acquire with `wait_ms` > 0).
    pub(crate) fn waits(&self) -> bool {
        matches!(self, Self::Acquire(r) if r.wait_ms > 0)
    }

    /// The operation, as metrics label it.
    pub(crate) fn op(&self) -> &'static str {
        match self {
            Self::Acquire(_) => "acquire",
            Self::Release(_) => "release",
            Self::Extend(_) => "extend",
            Self::Inspect(_) => "inspect",
        }
    }
}

impl LockRequest {
    /// The body as the engine's request (call after [`Validate::validate`]).
    pub(crate) fn into_command(self) -> LockCommand {
        match self {
            Self::Acquire {
                name,
                wait_ms,
                lease_ms,
                permits,
            } => LockCommand::Acquire(AcquireRequest {
                name,
                wait_ms,
                lease_ms,
                permits,
            }),
            Self::Release { name, token } => LockCommand::Release(ReleaseRequest { name, token }),
            Self::Extend {
                name,
                token,
                lease_ms,
            } => LockCommand::Extend(ExtendRequest {
                name,
                token,
                lease_ms,
            }),
            Self::Inspect { name, token } => LockCommand::Inspect(InspectRequest { name, token }),
        }
    }
}

impl Validate for LockRequest {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::new();
        match self {
            Self::Acquire {
                wait_ms,
                lease_ms,
                permits,
                ..
            } => {
                within(&mut errors, "wait_ms", *wait_ms, 0, 120_000);
                within(&mut errors, "lease_ms", *lease_ms, 100, 3_600_000);
                within(&mut errors, "permits", *permits, 1, 1024);
            }
            Self::Extend { lease_ms, .. } => {
                within(&mut errors, "lease_ms", *lease_ms, 100, 3_600_000)
            }
            Self::Release { .. } | Self::Inspect { .. } => {}
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Records a range error for `field` unless `value` is in `min..=max`.
fn within<T: ValidateRange<T> + Copy + std::fmt::Display>(
    errors: &mut ValidationErrors,
    field: &'static str,
    value: T,
    min: T,
    max: T,
) {
    if !value.validate_range(Some(min), Some(max), None, None) {
        let mut error = ValidationError::new("range");
        error.message = Some(format!("must be an integer in {min}..={max}").into());
        errors.add(field, error);
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
