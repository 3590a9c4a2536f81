//! `POST /locks`: one endpoint, the operation in the body.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::domain::{LockName, LockRequest};
use super::engine::LockEngine;
use super::store::Grant;
use crate::error::ApiError;
use crate::peer::client_gone;
use crate::startup::MAX_BODY_BYTES;

/// The 200 body of acquire and extend.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Grant)]
pub struct GrantBody<'a> {
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
pub struct ReleasedBody<'a> {
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

/// Reads a JSON body of at most `MAX_BODY_BYTES`: 415 unless `application/json`,
/// 413 when larger, 400 when not JSON.
async fn read_json_body(
    request: &HttpRequest,
    mut payload: web::Payload,
) -> Result<serde_json::Value, ApiError> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES) {
        return Err(ApiError::PayloadTooLarge);
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::invalid_field("body", "could not be read"))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid_field("body", format!("is not valid JSON ({e})")))
}

/// Middleware for routes whose requests may wait long (lock acquires wait
/// up to 120 s): moves the request's headers into a map of their own size.
///
/// actix-http gives every request a header map sized for 16 headers, about
/// 6.7 KB; a lock request carries five or six. Copying them (well under a
/// microsecond) frees about 5 KB per waiting request: 50 MiB at 10,000
/// waiters, a quarter of the memory they hold. (`head_mut` needs the only
/// handle on the request: no middleware above may keep a clone of it.)
pub async fn compact_headers(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let headers = &mut req.head_mut().headers;
    let headers_now = std::mem::take(headers);
    *headers = headers_now.into_iter().collect();
    next.call(req).await
}

/// `POST /locks`.
#[utoipa::path(
    post,
    path = "/locks",
    tag = "locks",
    security(("bearer" = [])),
    request_body(content = super::domain::LockRequestSchema, content_type = "application/json"),
    responses(
        (status = 200, description = "Granted, extended or released", body = inline(LockReply)),
        (status = 400, description = "Invalid request", body = inline(crate::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = inline(crate::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 409, description = "not-held or permits-mismatch", body = inline(crate::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 413, description = "Body over 16 KiB", body = inline(crate::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 415, description = "Body is not application/json", body = inline(crate::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 423, description = "No slot came free within wait_ms", body = inline(crate::error::ProblemSchema), content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds"))),
        (status = 503, description = "Redis unreachable, too many waiters, overloaded or draining", body = inline(crate::error::ProblemSchema), content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds"))),
    )
)]
pub async fn post_locks(
    request: HttpRequest,
    payload: web::Payload,
    engine: web::Data<LockEngine>,
) -> Result<HttpResponse, ApiError> {
    // The JSON value is dropped here: an acquire may hold this future for 120 s.
    let lock_request = LockRequest::from_json(&read_json_body(&request, payload).await?)?;
    match lock_request {
        LockRequest::Acquire(acquire) => {
            let grant = engine.acquire(&acquire, client_gone(&request)).await?;
            Ok(grant_response(
                &acquire.name,
                &grant,
                acquire.lease.as_millis() as u64,
            ))
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
            Ok(grant_response(
                &extend.name,
                &grant,
                extend.lease.as_millis() as u64,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::middleware::from_fn;
    use actix_web::test as actix_test;
    use actix_web::{App, HttpRequest, HttpResponse, web};

    use super::{compact_headers, rfc3339_ms};

    #[actix_web::test]
    async fn compacting_keeps_every_header_and_repeated_value() {
        let app = actix_test::init_service(App::new().wrap(from_fn(compact_headers)).route(
            "/",
            web::post().to(|req: HttpRequest| async move {
                let mut seen: Vec<String> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.to_str().unwrap()))
                    .collect();
                seen.sort();
                HttpResponse::Ok().body(seen.join(","))
            }),
        ))
        .await;
        let mut request = actix_test::TestRequest::post()
            .uri("/")
            .insert_header(("content-type", "application/json"))
            .append_header(("x-repeated", "1"))
            .append_header(("x-repeated", "2"));
        for i in 0..20 {
            request = request.insert_header((format!("x-h{i:02}"), i.to_string()));
        }
        let body = actix_test::call_and_read_body(&app, request.to_request()).await;
        let body = String::from_utf8(body.to_vec()).unwrap();
        let seen: Vec<&str> = body.split(',').collect();
        assert_eq!(seen.len(), 23, "{body}");
        assert!(seen.contains(&"content-type=application/json"));
        assert!(seen.contains(&"x-repeated=1") && seen.contains(&"x-repeated=2"));
        assert!(seen.contains(&"x-h19=19"));
    }

    #[test]
    fn expiry_times_have_three_fraction_digits() {
        assert_eq!(rfc3339_ms(1_795_000_000_000), "2026-11-18T11:06:40.000Z");
        assert_eq!(rfc3339_ms(1_795_000_000_345), "2026-11-18T11:06:40.345Z");
    }
}
