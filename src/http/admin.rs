//! The admin listener: `/metrics` for Prometheus, nothing else.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use prometheus::{Encoder, TextEncoder};

use crate::metrics::Metrics;
use crate::pools::redis::RedisPools;
use crate::pools::replicas::ReadEndpoints;

/// What the admin listener reads.
#[derive(Clone)]
pub(crate) struct AdminState {
    /// The registry to render.
    pub metrics: Metrics,
    /// Read at scrape time for the pool gauges.
    pub mysql: Arc<ReadEndpoints>,
    /// Read at scrape time for the pool gauges.
    pub redis: Arc<RedisPools>,
}

/// `GET /metrics` on the admin listener.
pub(crate) async fn metrics_endpoint(state: web::Data<AdminState>) -> HttpResponse {
    state
        .metrics
        .set_pool_sizes(&state.mysql.sizes(), state.redis.status());
    HttpResponse::Ok()
        .content_type(TextEncoder::new().format_type())
        .body(state.metrics.render())
}
