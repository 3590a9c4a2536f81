//! Bearer-key authentication for the protected routes.

use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::AUTHORIZATION;
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};

use crate::api_keys::ApiKeys;
use crate::http::error::ApiError;
use crate::metrics::Metrics;

/// The keys the protected routes accept; `None` when auth is disabled.
#[derive(Clone)]
pub(crate) struct AuthPolicy(pub Option<ApiKeys>);

/// The key name a request authenticated with, in request extensions (for logs).
#[derive(Clone, Debug)]
pub(crate) struct KeyName(pub Arc<str>);

fn bearer_token(req: &ServiceRequest) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Rejects requests without a valid bearer key with 401; notes the key name for logs.
pub(crate) async fn require_api_key(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let policy = req.app_data::<web::Data<AuthPolicy>>().map(|p| p.0.clone());
    if let Some(Some(keys)) = policy {
        let Some(name) = bearer_token(&req).and_then(|token| keys.authenticate(token)) else {
            return Ok(req.error_response(ApiError::Unauthorized));
        };
        if let Some(metrics) = req.app_data::<web::Data<Metrics>>() {
            metrics.requests_by_key.with_label_values(&[&*name]).inc();
        }
        req.extensions_mut().insert(KeyName(name));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}
