//! Counts and times every public request by route template.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};

use actix_web::http::Method;

use super::request_context::Route;
use crate::metrics::Metrics;

/// A metric label or log field for `method`: a closed set, so no client can
/// grow the label space (or a log line) with methods of its own.
pub(crate) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Counts and times every public request by route pattern (never the raw
/// path, which would explode label cardinality).
pub(crate) async fn track_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<Route>()
        .cloned()
        .unwrap_or_else(Route::unmatched);
    let started = Instant::now();
    if let Some(m) = &metrics {
        m.requests_in_flight.inc();
    }
    let outcome = next.call(req).await;
    if let Some(m) = metrics {
        m.requests_in_flight.dec();
        let status = match &outcome {
            Ok(response) => response.status(),
            Err(error) => error.as_response_error().status_code(),
        };
        let labels = [&*route.0, method, status.as_str()];
        m.requests.with_label_values(&labels).inc();
        m.request_duration
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
    }
    outcome
}
