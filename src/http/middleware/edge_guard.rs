//! Refuses, before anything else sees them, requests that no route can
//! serve and that would otherwise cost something: over-long methods (they
//! would land in logs and metric labels), connection upgrades (actix then
//! reads the body until the connection closes, so a plain answer would never
//! come), and ambiguous credentials (several `Authorization` headers).

use actix_web::Error;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{AUTHORIZATION, UPGRADE};
use actix_web::middleware::Next;

use crate::http::error::ApiError;

/// Longer than every registered HTTP method (the longest, UPDATEREDIRECTREF, has 17).
const MAX_METHOD_LEN: usize = 20;

/// Answers 400 at once to what [the module](self) describes.
pub(crate) async fn guard_edge(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let refusal = if req.method().as_str().len() > MAX_METHOD_LEN {
        Some(ApiError::invalid_field(
            "method",
            format!("must be at most {MAX_METHOD_LEN} characters"),
        ))
    } else if req.headers().contains_key(UPGRADE) {
        Some(ApiError::invalid_field(
            "upgrade",
            "no route of this service upgrades connections",
        ))
    } else if req.headers().get_all(AUTHORIZATION).nth(1).is_some() {
        Some(ApiError::invalid_field(
            "authorization",
            "must be given once",
        ))
    } else {
        None
    };
    match refusal {
        Some(error) => Ok(req.error_response(error)),
        None => Ok(next.call(req).await?.map_into_boxed_body()),
    }
}
