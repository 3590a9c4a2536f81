//! Bearer-key authentication for the protected routes.

use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{AUTHORIZATION, HeaderMap};
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

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl AuthPolicy {
    /// The name of the key `headers` authenticate with; `Some("")` when
    /// auth is disabled; `None` when they carry no valid key.
    fn key_name(&self, headers: &HeaderMap) -> Option<Arc<str>> {
        match &self.0 {
            None => Some(Arc::from("")),
            Some(keys) => bearer_token(headers).and_then(|token| keys.authenticate(token)),
        }
    }

    /// Whether a request that asks `Expect: 100-continue` may send its body:
    /// only with a valid key, so a body is never invited and then refused.
    pub(crate) fn may_continue(&self, headers: &HeaderMap) -> bool {
        self.key_name(headers).is_some()
    }
}

/// Rejects requests without a valid bearer key with 401; notes the key name for logs.
pub(crate) async fn require_api_key(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let policy = req.app_data::<web::Data<AuthPolicy>>().cloned();
    if let Some(policy) = policy
        && policy.0.is_some()
    {
        let Some(name) = policy.key_name(req.headers()) else {
            return Ok(req.error_response(ApiError::Unauthorized));
        };
        if let Some(metrics) = req.app_data::<web::Data<Metrics>>() {
            metrics.requests_by_key.with_label_values(&[&*name]).inc();
        }
        req.extensions_mut().insert(KeyName(name));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}
