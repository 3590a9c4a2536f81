//! The root span of each request (method, route, request id), so log lines
//! written while serving it carry them, and the one completion line per request.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::RootSpanBuilder;

use super::auth::KeyName;
use super::metrics::method_label;
use super::request_context::{RequestId, RequestStart, Route};
use crate::telemetry::otel;

/// Builds the request span for `tracing_actix_web::TracingLogger`.
///
/// Status, latency and key name go on the completion line, not on the span:
/// a field recorded into a span after its creation makes the subscriber
/// format the span's fields again, and only the completion line needs them.
pub(crate) struct AccessLog;

impl RootSpanBuilder for AccessLog {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let extensions = request.extensions();
        let request_id = extensions.get::<RequestId>().map(|r| &*r.0).unwrap_or("");
        let route = extensions
            .get::<Route>()
            .map(|r| &*r.0)
            .unwrap_or("unmatched");
        let method = method_label(request.method());
        let span = tracing::info_span!(
            "request",
            method,
            route,
            request_id,
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            enduser.id = tracing::field::Empty,
        );
        // Trace fields stay empty (and out of the log line) unless traces are exported.
        if otel::enabled() {
            span.record("otel.name", format!("{method} {route}"));
            span.record("otel.kind", "server");
            otel::continue_trace(&span, request.headers());
        }
        span
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        let response = match outcome {
            Ok(response) => response,
            // Our middlewares answer errors as responses; an `Err` here is actix's own.
            Err(error) => {
                let status = error.as_response_error().status_code().as_u16();
                span.in_scope(|| tracing::info!(status, "request completed"));
                return;
            }
        };
        let extensions = response.request().extensions();
        let latency_ms = extensions
            .get::<RequestStart>()
            .map(|s| s.0.elapsed().as_secs_f64() * 1000.0)
            .unwrap_or_default();
        // The principal (v1 called it the key's name: both fields, one value).
        let principal = extensions.get::<KeyName>().map(|k| &*k.0);
        let api_key = principal;
        if otel::enabled() {
            span.record("http.response.status_code", response.status().as_u16());
            // The principal (OpenTelemetry's `enduser.id`): a configured name, never a credential.
            if let Some(principal) = principal {
                span.record("enduser.id", principal);
            }
        }
        span.in_scope(|| {
            tracing::info!(
                status = response.status().as_u16(),
                latency_ms,
                principal,
                api_key,
                "request completed"
            )
        });
    }
}
