//! The one error type handlers return, rendered as RFC 9457 problem+json.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::telemetry::current_request_id;

/// One field that failed validation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    /// The JSON field (or `body`, `id`) at fault.
    pub field: String,
    /// Why it was rejected.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything a request can fail with; each variant is one problem type.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request itself is wrong.
    #[error("invalid request: {detail}")]
    InvalidRequest {
        /// Human-readable summary.
        detail: String,
        /// Per-field reasons.
        errors: Vec<FieldError>,
    },
    /// 401: missing or wrong bearer key.
    #[error("unauthorized")]
    Unauthorized,
    /// 404: no such resource or route.
    #[error("not found: {0}")]
    NotFound(String),
    /// 405: the route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The methods the route supports, for the `Allow` header.
        allow: &'static str,
    },
    /// 413: body over the limit.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 415: a body that is not `application/json`.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// 409: the token does not hold the lock now.
    #[error("lock not held")]
    NotHeld,
    /// 409: the lock exists with another `permits` value.
    #[error("permits mismatch: the lock has {existing} permits")]
    PermitsMismatch {
        /// The value the lock was created with.
        existing: u32,
    },
    /// 423: no slot came free within `wait_ms`.
    #[error("lock timeout")]
    LockTimeout {
        /// Suggested wait before trying again, in seconds.
        retry_after_s: u64,
    },
    /// 503: a dependency is unreachable, a pool is exhausted, or we are shedding or draining.
    #[error("unavailable: {detail}")]
    Unavailable {
        /// Which dependency or condition; safe to show.
        detail: &'static str,
        /// Suggested wait before trying again, in seconds.
        retry_after_s: u64,
    },
    /// 500: a bug. Logged in full, shown as nothing.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 naming one field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::InvalidRequest {
            detail: format!("{field}: {message}"),
            errors: vec![FieldError::new(field, message)],
        }
    }

    /// A 503 for an unreachable or saturated dependency.
    pub fn unavailable(detail: &'static str) -> Self {
        Self::Unavailable {
            detail,
            retry_after_s: 1,
        }
    }

    fn slug_and_title(&self) -> (&'static str, &'static str) {
        match self {
            Self::InvalidRequest { .. } => ("invalid-request", "Invalid request"),
            Self::Unauthorized => ("unauthorized", "Unauthorized"),
            Self::NotFound(_) => ("not-found", "Not found"),
            Self::MethodNotAllowed { .. } => ("method-not-allowed", "Method not allowed"),
            Self::PayloadTooLarge => ("payload-too-large", "Payload too large"),
            Self::UnsupportedMediaType => ("unsupported-media-type", "Unsupported media type"),
            Self::NotHeld => ("not-held", "Lock not held"),
            Self::PermitsMismatch { .. } => ("permits-mismatch", "Permits mismatch"),
            Self::LockTimeout { .. } => ("lock-timeout", "Lock timeout"),
            Self::Unavailable { .. } => ("unavailable", "Service unavailable"),
            Self::Internal(_) => ("internal", "Internal error"),
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::InvalidRequest { detail, .. } => detail.clone(),
            Self::Unauthorized => "a valid `Authorization: Bearer <key>` header is required".into(),
            Self::NotFound(what) => what.clone(),
            Self::MethodNotAllowed { allow } => format!("this route supports {allow} only"),
            Self::PayloadTooLarge => "the request body is over 16 KiB".into(),
            Self::UnsupportedMediaType => "the request body must be `application/json`".into(),
            Self::NotHeld => {
                "that token does not hold the lock (released, expired or never granted)".into()
            }
            Self::PermitsMismatch { existing } => {
                format!("the lock exists with permits = {existing}")
            }
            Self::LockTimeout { .. } => "no slot came free within wait_ms".into(),
            Self::Unavailable { detail, .. } => (*detail).into(),
            Self::Internal(_) => "an unexpected error occurred; it has been logged".into(),
        }
    }
}

/// The problem+json body (RFC 9457).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemSchema<'a> {
    /// `urn:middleway:problem:<slug>`
    #[serde(rename = "type")]
    #[schema(example = "urn:middleway:problem:invalid-request")]
    kind: String,
    /// Short summary of the problem type.
    title: &'static str,
    /// The HTTP status.
    status: u16,
    /// What went wrong with this request.
    detail: String,
    /// The request's `x-request-id`.
    request_id: &'a str,
    /// Per-field reasons (400 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    errors: Option<&'a [FieldError]>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotHeld | Self::PermitsMismatch { .. } => StatusCode::CONFLICT,
            Self::LockTimeout { .. } => StatusCode::LOCKED,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(cause) = self {
            tracing::error!(cause = %cause, "internal error");
        }
        let status = self.status_code();
        let (slug, title) = self.slug_and_title();
        let request_id = current_request_id();
        let problem = ProblemSchema {
            kind: format!("urn:middleway:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail: self.detail(),
            request_id: request_id.as_deref().unwrap_or(""),
            errors: match self {
                Self::InvalidRequest { errors, .. } if !errors.is_empty() => Some(errors),
                _ => None,
            },
        };
        let mut response = HttpResponse::build(status);
        response.content_type("application/problem+json");
        match self {
            Self::Unauthorized => {
                response
                    .insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            Self::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, *allow));
            }
            Self::LockTimeout { retry_after_s } | Self::Unavailable { retry_after_s, .. } => {
                response.insert_header((header::RETRY_AFTER, retry_after_s.to_string()));
            }
            _ => {}
        }
        // Serializing this struct cannot fail: only strings and numbers.
        response.body(serde_json::to_vec(&problem).unwrap_or_default())
    }
}
