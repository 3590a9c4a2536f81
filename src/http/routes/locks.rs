//! `POST /locks`: one endpoint, the operation in the body; `LockError`
//! becomes an HTTP problem here.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::http::body::ValidJson;
use crate::http::error::ApiError;
use crate::http::peer::PeerWatch;
use crate::locks::{Grant, LockEngine, LockError, LockName, LockRequest};

impl From<LockError> for ApiError {
    fn from(error: LockError) -> Self {
        match error {
            LockError::NotHeld => ApiError::NotHeld,
            LockError::PermitsMismatch(existing) => ApiError::PermitsMismatch { existing },
            LockError::Timeout => ApiError::LockTimeout,
            LockError::RedisUnavailable => ApiError::Unavailable("Redis is unreachable"),
            LockError::TooManyWaiters => {
                ApiError::Unavailable("too many lock requests are waiting; retry shortly")
            }
            LockError::Draining => ApiError::Unavailable("the service is shutting down"),
            LockError::CallerGone => ApiError::Unavailable("the client disconnected"),
        }
    }
}

/// The 200 body of acquire and extend.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Grant)]
pub(crate) struct GrantBody<'a> {
    /// Lock name.
    name: &'a str,
    /// Bearer capability for release and extend (opaque, at most 128 chars).
    #[schema(max_length = 128)]
    token: &'a str,
    /// Strictly increases with every grant of this name.
    fence: u64,
    /// The lease granted.
    lease_ms: u64,
    /// Lease deadline, RFC 3339 UTC with milliseconds (Redis clock).
    #[schema(format = DateTime)]
    expires_at: String,
}

/// The 200 body of release.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Released)]
pub(crate) struct ReleasedBody<'a> {
    /// Lock name.
    name: &'a str,
    /// Always true on 200.
    released: bool,
}

/// What a 200 from `POST /locks` carries: a grant (acquire, extend) or a release.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
enum LockReply<'a> {
    /// acquire / extend
    Grant(GrantBody<'a>),
    /// release
    Released(ReleasedBody<'a>),
}

/// RFC 3339 UTC with milliseconds, from Unix ms on the Redis clock.
fn rfc3339_ms(unix_ms: u64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let at = at
        .replace_nanosecond((unix_ms % 1000) as u32 * 1_000_000)
        .unwrap_or(at);
    let text = at.format(&Rfc3339).unwrap_or_default();
    // `Rfc3339` drops trailing zero fractions; the contract wants exactly three digits.
    match text.split_once('.') {
        Some((seconds, _)) => format!("{seconds}.{:03}Z", unix_ms % 1000),
        None => format!("{}.{:03}Z", text.trim_end_matches('Z'), unix_ms % 1000),
    }
}

fn grant_response(name: &LockName, grant: &Grant, lease_ms: u64) -> HttpResponse {
    HttpResponse::Ok().json(GrantBody {
        name: name.as_str(),
        token: grant.token.as_str(),
        fence: grant.fence,
        lease_ms,
        expires_at: rfc3339_ms(grant.deadline_ms),
    })
}

/// `POST /locks`.
#[utoipa::path(
    post,
    path = "/locks",
    tag = "locks",
    security(("bearer" = [])),
    request_body(content = LockRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Granted, extended or released", body = inline(LockReply)),
        (status = 400, description = "Invalid request", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 409, description = "not-held or permits-mismatch", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 413, description = "Body over 16 KiB", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 415, description = "Body is not application/json", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 423, description = "No slot came free within wait_ms", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds"))),
        (status = 503, description = "Redis unreachable, too many waiters, overloaded or draining", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds"))),
    )
)]
pub(crate) async fn post_locks(
    request: HttpRequest,
    ValidJson(lock_request): ValidJson<LockRequest>,
    engine: web::Data<LockEngine>,
    peers: web::Data<PeerWatch>,
) -> Result<HttpResponse, ApiError> {
    match lock_request {
        LockRequest::Acquire(acquire) => {
            let grant = engine
                .acquire(&acquire, peers.client_gone(&request))
                .await?;
            Ok(grant_response(&acquire.name, &grant, acquire.lease_ms))
        }
        LockRequest::Release(release) => {
            engine.release(&release).await?;
            Ok(HttpResponse::Ok().json(ReleasedBody {
                name: release.name.as_str(),
                released: true,
            }))
        }
        LockRequest::Extend(extend) => {
            let grant = engine.extend(&extend).await?;
            Ok(grant_response(&extend.name, &grant, extend.lease_ms))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339_ms;

    #[test]
    fn expiry_times_have_three_fraction_digits() {
        assert_eq!(rfc3339_ms(1_795_000_000_000), "2026-11-18T11:06:40.000Z");
        assert_eq!(rfc3339_ms(1_795_000_000_345), "2026-11-18T11:06:40.345Z");
    }
}

#[cfg(test)]
mod parsing_tests {
    use std::time::Duration;

    use serde_json::{Value, json};
    use validator::Validate;

    use super::*;
    use crate::http::body::{JsonObject, field_error};

    fn parse(body: Value) -> Result<LockRequest, String> {
        let parsed = serde_json::from_value::<JsonObject<LockRequest>>(body)
            .map_err(|e| field_error(&e).field)?
            .0;
        match parsed.validate() {
            Ok(()) => Ok(parsed),
            Err(errors) => Err(errors
                .field_errors()
                .keys()
                .next()
                .map(|k| k.to_string())
                .unwrap_or_default()),
        }
    }

    #[test]
    fn acquire_defaults_follow_the_contract() {
        let Ok(LockRequest::Acquire(a)) = parse(json!({"op": "acquire", "name": "device-42"}))
        else {
            panic!()
        };
        assert_eq!(a.wait(), Duration::ZERO);
        assert_eq!(a.lease(), Duration::from_millis(30_000));
        assert_eq!(a.permits, 1);
    }

    #[test]
    fn a_bad_field_is_named_whether_serde_or_validator_refuses_it() {
        // The whole table runs against the live service in tests/api/locks.rs.
        assert_eq!(
            parse(json!({"op": "acquire", "name": "a", "wait_ms": "5"})).unwrap_err(),
            "wait_ms"
        );
        assert_eq!(
            parse(json!({"op": "acquire", "name": "a", "wait_ms": 120_001})).unwrap_err(),
            "wait_ms"
        );
        assert_eq!(
            parse(json!({"op": "release", "name": "a"})).unwrap_err(),
            "token"
        );
    }

    #[test]
    fn integral_floats_count_as_integers() {
        let Ok(LockRequest::Acquire(a)) =
            parse(json!({"op": "acquire", "name": "a", "lease_ms": 25349.0}))
        else {
            panic!()
        };
        assert_eq!(a.lease(), Duration::from_millis(25349));
    }
}
