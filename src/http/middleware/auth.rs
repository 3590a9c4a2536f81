//! Authentication and fair share for the protected routes: the principal
//! behind the bearer credential (401 without one) and its share of requests
//! in flight (429 past `max_in_flight`); then the scope of the transcription
//! routes (403). The principal goes into the request, for the lock route's
//! scope and share checks and for the logs.

use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{AUTHORIZATION, HeaderMap};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};

use crate::auth::{Identities, Principal, Quota, Refusal};
use crate::http::error::ApiError;
use crate::metrics::Metrics;

/// Who the protected routes accept (shared by every worker).
pub(crate) type AuthPolicy = Arc<Identities>;

/// The principal's name, in request extensions (for logs).
#[derive(Clone, Debug)]
pub(crate) struct KeyName(pub Arc<str>);

/// The principal a request authenticated as, in request extensions.
#[derive(Clone, Debug)]
pub(crate) struct Caller(pub Arc<Principal>);

/// The metrics label of callers that did not authenticate (bounded: never
/// what they presented).
const UNAUTHENTICATED: &str = "unauthenticated";

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether a request that asks `Expect: 100-continue` may send its body:
/// only with a valid credential, so a body is never invited and then refused.
pub(crate) async fn may_continue(
    identities: &Identities,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    identities
        .authenticate(bearer_token(headers))
        .await
        .map(drop)
        .map_err(refusal_error)
}

/// 401 for a wrong credential; 503 when its issuer or STS cannot be asked.
fn refusal_error(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Unauthorized(why) => ApiError::Unauthorized(why),
        Refusal::Unavailable(why) => ApiError::Unavailable(why),
    }
}

/// 401 without a known credential; 429 past the principal's `max_in_flight`
/// (counted until the response is ready); the principal noted for the rest.
pub(crate) async fn require_api_key(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let (Some(identities), Some(metrics)) = (
        req.app_data::<web::Data<AuthPolicy>>().cloned(),
        req.app_data::<web::Data<Metrics>>().cloned(),
    ) else {
        return Ok(req.error_response(ApiError::Unauthorized("authentication is not configured")));
    };
    let principal = match identities.authenticate(bearer_token(req.headers())).await {
        Ok(principal) => principal,
        Err(refusal) => {
            let response = req.error_response(refusal_error(refusal));
            count(&metrics, UNAUTHENTICATED, &response);
            return Ok(response);
        }
    };
    let _in_flight = match principal.enter(Quota::InFlight) {
        Ok(counted) => counted,
        Err(_) => {
            refused(&metrics, &principal, "quota");
            let response = req.error_response(ApiError::QuotaExceeded(
                "this caller already has its max_in_flight requests in progress",
            ));
            count(&metrics, &principal.name, &response);
            return Ok(response);
        }
    };
    let name = Arc::clone(&principal.name);
    req.extensions_mut().insert(KeyName(Arc::clone(&name)));
    req.extensions_mut().insert(Caller(principal));
    let response = next.call(req).await?.map_into_boxed_body();
    count(&metrics, &name, &response);
    Ok(response)
}

/// `middleway_http_requests_by_principal_total{principal, status}`.
fn count<B>(metrics: &Metrics, principal: &str, response: &ServiceResponse<B>) {
    metrics
        .requests_by_principal
        .with_label_values(&[principal, response.status().as_str()])
        .inc();
}

/// 403 unless the principal's scopes include `transcriptions:read`.
pub(crate) async fn require_reads(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let caller = req.extensions().get::<Caller>().cloned();
    if let Some(Caller(principal)) = caller
        && !principal.scopes.reads_transcriptions()
    {
        if let Some(metrics) = req.app_data::<web::Data<Metrics>>() {
            refused(metrics, &principal, "forbidden");
        }
        return Ok(req.error_response(ApiError::Forbidden(
            "this caller's scopes do not include transcriptions:read",
        )));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// Counts a 403 (`forbidden`) or 429 (`quota`) of `principal`.
pub(crate) fn refused(metrics: &Metrics, principal: &Principal, reason: &str) {
    metrics
        .auth_refusals
        .with_label_values(&[&*principal.name, reason])
        .inc();
}

#[cfg(test)]
mod tests {
    use actix_web::body::BoxBody;
    use actix_web::dev::ServiceRequest;
    use actix_web::middleware::Next;

    use super::require_api_key;

    /// Every authenticated request's future holds this one: an OIDC or AWS
    /// verification inlined in it made it 2,880 bytes for API keys too.
    #[test]
    fn the_key_check_future_stays_small() {
        fn future_size<F>(_: fn(ServiceRequest, Next<BoxBody>) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = future_size(require_api_key);
        assert!(size <= 1024, "require_api_key's future is {size} bytes");
    }
}
