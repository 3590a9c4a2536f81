//! Counts and times every public request by route template.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, web};

use crate::metrics::Metrics;

/// Counts and times every public request by route pattern (never the raw
/// path, which would explode label cardinality).
pub(crate) async fn track_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let method = req.method().clone();
    let started = Instant::now();
    if let Some(m) = &metrics {
        m.requests_in_flight.inc();
    }
    let outcome = next.call(req).await;
    if let Some(m) = metrics {
        m.requests_in_flight.dec();
        // The route is known only once the router has run, i.e. after the call.
        let (route, status) = match &outcome {
            Ok(response) => (response.request().match_pattern(), response.status()),
            Err(error) => (None, error.as_response_error().status_code()),
        };
        let route = route.unwrap_or_else(|| "unmatched".to_owned());
        let labels = [route.as_str(), method.as_str(), status.as_str()];
        m.requests.with_label_values(&labels).inc();
        m.request_duration
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
    }
    outcome
}
