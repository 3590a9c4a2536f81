//! `POST /locks`: one endpoint, the operation in the body; `LockError`
//! becomes an HTTP problem here.

use std::time::Instant;

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth::{Counted, Principal, Quota};
use crate::http::body::ValidJson;
use crate::http::error::ApiError;
use crate::http::middleware::auth::{Caller, refused};
use crate::http::peer::{PeerState, PeerWatch};
use crate::locks::{Grant, LockCommand, LockEngine, LockError, LockName, LockRequest, LockState};
use crate::metrics::Metrics;

impl From<LockError> for ApiError {
    fn from(error: LockError) -> Self {
        match error {
            LockError::NotHeld(reason) => ApiError::NotHeld(reason.as_str()),
            LockError::PermitsMismatch(existing) => ApiError::PermitsMismatch { existing },
            LockError::Timeout => ApiError::LockTimeout,
            LockError::RedisUnavailable => ApiError::Unavailable("Redis is unreachable"),
            LockError::AnsweredTooLate => ApiError::Unavailable(
                "Redis answered after the lease could have ended (a grant is handed back, an extension may stand); retry",
            ),
            LockError::NotReplicated => ApiError::Unavailable(
                "Redis replicas did not confirm the change in time (LOCK_REPLICA_ACKS); retry",
            ),
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

/// One grant in an inspect body: its fence and deadline, never its token.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct HolderBody {
    /// The grant's fence.
    fence: u64,
    /// Its lease deadline, RFC 3339 UTC with milliseconds (Redis clock).
    #[schema(format = DateTime)]
    expires_at: String,
}

/// The 200 body of inspect.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = LockInspection)]
pub(crate) struct InspectBody<'a> {
    /// Lock name.
    name: &'a str,
    /// Slots of the lock; null when it does not exist.
    permits: Option<u32>,
    /// Live grants.
    held: usize,
    /// Requests waiting, across every replica.
    waiting: u64,
    /// The latest fence granted; null when the lock does not exist.
    fence: Option<u64>,
    /// The live grants (never their tokens).
    holders: Vec<HolderBody>,
    /// With `token`: whether it holds the lock now.
    #[serde(skip_serializing_if = "Option::is_none")]
    token_held: Option<bool>,
    /// With `token`, when it holds the lock: its lease deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// With `token`, when it does not hold the lock: `expired`, `released` or `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(expired|released|unknown)$")]
    reason: Option<&'static str>,
}

/// What a 200 from `POST /locks` carries: a grant (acquire, extend), a release, a lock's state.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
enum LockReply<'a> {
    /// acquire / extend
    Grant(GrantBody<'a>),
    /// release
    Released(ReleasedBody<'a>),
    /// inspect
    Inspection(InspectBody<'a>),
}

fn inspect_response(name: &LockName, state: LockState) -> HttpResponse {
    let (token_held, expires_at, reason) = match state.token {
        None => (None, None, None),
        Some(Ok(deadline)) => (Some(true), Some(rfc3339_ms(deadline)), None),
        Some(Err(why)) => (Some(false), None, Some(why.as_str())),
    };
    HttpResponse::Ok().json(InspectBody {
        name: name.as_str(),
        permits: state.permits,
        held: usize::try_from(state.held).unwrap_or(usize::MAX),
        waiting: state.waiting,
        fence: state.fence,
        holders: state
            .holders
            .iter()
            .map(|h| HolderBody {
                fence: h.fence,
                expires_at: rfc3339_ms(h.deadline_ms),
            })
            .collect(),
        token_held,
        expires_at,
        reason,
    })
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
        (status = 200, description = "Granted, extended, released, or the lock's state", body = inline(LockReply)),
        (status = 400, description = "Invalid request", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong key", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 403, description = "The caller's scopes do not cover this request (AUTH_FILE)", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
        (status = 429, description = "The caller already has its max_in_flight requests (or max_waiters lock waiters), with Retry-After", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds"))),
        (status = 409, description = "not-held (with `reason`) or permits-mismatch", body = inline(crate::http::error::ProblemSchema), content_type = "application/problem+json"),
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
    metrics: web::Data<Metrics>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let command = lock_request.into_command();
    let op = command.op();
    // Scope and share first: a refused request touches nothing.
    let caller = request.extensions().get::<Caller>().cloned();
    let _waiting = match caller
        .as_ref()
        .map(|Caller(p)| admit(p, &command, &metrics))
    {
        Some(Err(refused)) => return Err(refused),
        Some(Ok(waiting)) => waiting,
        None => None,
    };
    let answered = run(command, &request, &engine, &peers).await;
    let outcome = match &answered {
        Ok(_) => "ok",
        Err(error) => error.outcome(),
    };
    metrics
        .lock_request_duration
        .with_label_values(&[op, outcome])
        .observe(started.elapsed().as_secs_f64());
    Ok(answered?)
}

/// 403 outside the principal's lock scopes; 429 for a waiting acquire past
/// its `max_waiters` (counted while the request lives).
fn admit(
    principal: &Principal,
    command: &LockCommand,
    metrics: &Metrics,
) -> Result<Option<Counted>, ApiError> {
    if !principal.scopes.covers_lock(command.name().as_str()) {
        refused(metrics, principal, "forbidden");
        return Err(ApiError::Forbidden(
            "this caller's scopes do not cover this lock name",
        ));
    }
    if !command.waits() {
        return Ok(None);
    }
    match principal.enter(Quota::Waiters) {
        Ok(counted) => Ok(Some(counted)),
        Err(_) => {
            refused(metrics, principal, "quota");
            Err(ApiError::QuotaExceeded(
                "this caller already has its max_waiters lock requests waiting",
            ))
        }
    }
}

async fn run(
    command: LockCommand,
    request: &HttpRequest,
    engine: &LockEngine,
    peers: &PeerWatch,
) -> Result<HttpResponse, LockError> {
    match command {
        LockCommand::Acquire(acquire) => {
            let grant = engine.acquire(&acquire, peers.client_gone(request)).await?;
            deliver(request, peers, engine, &acquire.name, &grant)?;
            Ok(grant_response(&acquire.name, &grant, acquire.lease_ms))
        }
        LockCommand::Release(release) => {
            engine.release(&release).await?;
            Ok(HttpResponse::Ok().json(ReleasedBody {
                name: release.name.as_str(),
                released: true,
            }))
        }
        LockCommand::Extend(extend) => {
            let grant = engine.extend(&extend).await?;
            Ok(grant_response(&extend.name, &grant, extend.lease_ms))
        }
        LockCommand::Inspect(inspect) => {
            let state = engine.inspect(&inspect).await?;
            Ok(inspect_response(&inspect.name, state))
        }
    }
}

/// A grant must reach its caller or go to the next waiter, whether it came at
/// once or after a wait (a caller may give up on a slow Redis as well as on a
/// long wait): a peer already gone gets nothing (the slot moves on now); a
/// peer that has closed its sending side may have half-closed (legal: it
/// still reads) or left, which only its reset to our answer tells, so that
/// answer is watched.
fn deliver(
    request: &HttpRequest,
    peers: &PeerWatch,
    engine: &LockEngine,
    name: &LockName,
    grant: &Grant,
) -> Result<(), LockError> {
    match peers.state(request) {
        PeerState::Open => Ok(()),
        PeerState::Gone => {
            engine.give_back(name, grant.clone());
            Err(LockError::CallerGone)
        }
        PeerState::HalfClosed => {
            if let Some(delivery) = peers.watch_delivery(request) {
                let (engine, name, grant) = (engine.clone(), name.clone(), grant.clone());
                actix_web::rt::spawn(async move {
                    if delivery.refused().await {
                        engine.give_back(&name, grant);
                    }
                });
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{post_locks, rfc3339_ms};

    /// actix moves each request's future whole into a box, layer after
    /// layer, and up to 10,000 lock requests may wait at once: with the Redis
    /// pool's checkout inlined it was 8,176 bytes, the memmove the largest
    /// symbol of a lock pair's profile.
    #[test]
    fn a_lock_request_future_stays_small() {
        fn future_size<A, B, C, D, E, F>(_: fn(A, B, C, D, E) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = future_size(post_locks);
        assert!(size <= 4096, "POST /locks's future is {size} bytes");
    }

    #[test]
    fn expiry_times_have_three_fraction_digits() {
        assert_eq!(rfc3339_ms(1_795_000_000_000), "2026-11-18T11:06:40.000Z");
        assert_eq!(rfc3339_ms(1_795_000_000_345), "2026-11-18T11:06:40.345Z");
    }
}

#[cfg(test)]
mod parsing_tests {

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
        let Ok(LockRequest::Acquire {
            wait_ms,
            lease_ms,
            permits,
            ..
        }) = parse(json!({"op": "acquire", "name": "device-42"}))
        else {
            panic!()
        };
        assert_eq!((wait_ms, lease_ms, permits), (0, 30_000, 1));
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
        let Ok(LockRequest::Acquire { lease_ms, .. }) =
            parse(json!({"op": "acquire", "name": "a", "lease_ms": 25349.0}))
        else {
            panic!()
        };
        assert_eq!(lease_ms, 25349);
    }
}
