//! The one error type handlers return, rendered as RFC 9457 problem+json.
//!
//! Features return their own errors (`ReadError`, `LockError`); their routes
//! map them to an [`ApiError`]. Everything HTTP says about an error (status,
//! slug, title, detail, extra header) comes from one `match` in
//! [`ApiError::problem`].

use std::borrow::Cow;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::telemetry;

/// One field that failed validation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub(crate) struct FieldError {
    /// The JSON field (or `body`, `id`, `ids`) at fault.
    pub field: String,
    /// Why it was rejected.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything a request can fail with; each variant is one problem type.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 400: the request itself is wrong.
    #[error("invalid request: {0:?}")]
    InvalidRequest(FieldError),
    /// 401: missing or wrong bearer key.
    #[error("unauthorized")]
    Unauthorized(&'static str),
    /// 403: the principal's scopes do not cover this request.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// 429: the principal already has its `max_in_flight` requests or `max_waiters` waiters.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(&'static str),
    /// 404: no such resource or route.
    #[error("not found: {0}")]
    NotFound(String),
    /// 405: the route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The methods the route supports, for the `Allow` header.
        allow: &'static str,
    },
    /// 408: the request body did not arrive in time.
    #[error("request timeout")]
    RequestTimeout,
    /// 413: body over the limit.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 415: a body that is not `application/json`.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// 409: the token does not hold the lock now; why (`expired`, `released`, `unknown`).
    #[error("lock not held ({0})")]
    NotHeld(&'static str),
    /// 409: the lock exists with another `permits` value.
    #[error("permits mismatch: the lock has {existing} permits")]
    PermitsMismatch {
        /// The value the lock was created with.
        existing: u32,
    },
    /// 423: no slot came free within `wait_ms`.
    #[error("lock timeout")]
    LockTimeout,
    /// 503: a dependency is unreachable, a pool is exhausted, or we are shedding or draining.
    #[error("unavailable: {0}")]
    Unavailable(&'static str),
}

impl ApiError {
    /// A 400 naming one field.
    pub(crate) fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::InvalidRequest(FieldError::new(field, message))
    }

    /// Everything the response says about this error: the one match.
    fn problem(&self) -> Problem<'_> {
        use StatusCode as S;
        let (status, slug, title, detail): (_, _, _, Cow<'_, str>) = match self {
            Self::InvalidRequest(e) => (
                S::BAD_REQUEST,
                "invalid-request",
                "Invalid request",
                format!("{}: {}", e.field, e.message).into(),
            ),
            Self::Unauthorized(detail) => (
                S::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                (*detail).into(),
            ),
            Self::Forbidden(detail) => (S::FORBIDDEN, "forbidden", "Forbidden", (*detail).into()),
            Self::QuotaExceeded(detail) => (
                S::TOO_MANY_REQUESTS,
                "quota-exceeded",
                "Quota exceeded",
                (*detail).into(),
            ),
            Self::NotFound(what) => (S::NOT_FOUND, "not-found", "Not found", what.into()),
            Self::MethodNotAllowed { allow } => (
                S::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                format!("this route supports {allow} only").into(),
            ),
            Self::RequestTimeout => (
                S::REQUEST_TIMEOUT,
                "request-timeout",
                "Request timeout",
                "the request body did not arrive within 5 s".into(),
            ),
            Self::PayloadTooLarge => (
                S::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
                "the request body is over 16 KiB".into(),
            ),
            Self::UnsupportedMediaType => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "the request body must be `application/json`".into(),
            ),
            Self::NotHeld(reason) => (
                S::CONFLICT,
                "not-held",
                "Lock not held",
                match *reason {
                    "expired" => "that token's lease has expired",
                    "released" => "that token was released",
                    _ => "that token does not hold the lock (never granted, or too long ago)",
                }
                .into(),
            ),
            Self::PermitsMismatch { existing } => (
                S::CONFLICT,
                "permits-mismatch",
                "Permits mismatch",
                format!("the lock exists with permits = {existing}").into(),
            ),
            Self::LockTimeout => (
                S::LOCKED,
                "lock-timeout",
                "Lock timeout",
                "no slot came free within wait_ms".into(),
            ),
            Self::Unavailable(detail) => (
                S::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                (*detail).into(),
            ),
        };
        let header = match self {
            Self::Unauthorized(_) => Some((header::WWW_AUTHENTICATE, "Bearer".into())),
            Self::MethodNotAllowed { allow } => Some((header::ALLOW, (*allow).into())),
            // One second: long enough for a pool or a lock holder to move on,
            // short enough that a function's retry loop stays responsive.
            Self::LockTimeout | Self::Unavailable(_) | Self::QuotaExceeded(_) => {
                Some((header::RETRY_AFTER, "1".into()))
            }
            _ => None,
        };
        Problem {
            status,
            slug,
            title,
            detail,
            header,
        }
    }
}

/// What [`ApiError::problem`] yields.
struct Problem<'a> {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: Cow<'a, str>,
    header: Option<(HeaderName, Cow<'static, str>)>,
}

/// The problem+json body (RFC 9457).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub(crate) struct ProblemSchema<'a> {
    /// `urn:middleway:problem:<slug>`
    #[serde(rename = "type")]
    #[schema(example = "urn:middleway:problem:invalid-request")]
    kind: String,
    /// Short summary of the problem type.
    title: &'static str,
    /// The HTTP status.
    status: u16,
    /// What went wrong with this request.
    detail: &'a str,
    /// The request's `x-request-id`.
    request_id: &'a str,
    /// Per-field reasons (400 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    errors: Option<[&'a FieldError; 1]>,
    /// Why the token does not hold the lock (409 `not-held` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, pattern = "^(expired|released|unknown)$")]
    reason: Option<&'static str>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.problem().status
    }

    fn error_response(&self) -> HttpResponse {
        let problem = self.problem();
        let request_id = telemetry::current_request_id();
        let body = ProblemSchema {
            kind: format!("urn:middleway:problem:{}", problem.slug),
            title: problem.title,
            status: problem.status.as_u16(),
            detail: &problem.detail,
            request_id: request_id.as_deref().unwrap_or(""),
            errors: match self {
                Self::InvalidRequest(e) => Some([e]),
                _ => None,
            },
            reason: match self {
                Self::NotHeld(reason) => Some(reason),
                _ => None,
            },
        };
        let mut response = HttpResponse::build(problem.status);
        response.content_type("application/problem+json");
        if let Some((name, value)) = problem.header {
            response.insert_header((name, value.into_owned()));
        }
        // Serializing this struct cannot fail: only strings and numbers.
        response.body(serde_json::to_vec(&body).unwrap_or_default())
    }
}
