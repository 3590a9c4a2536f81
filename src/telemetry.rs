//! Logging: the tracing subscriber (json | pretty), the request id every
//! response carries, and the per-request span with method, route, status and latency.

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::RootSpanBuilder;
use tracing_subscriber::EnvFilter;

use crate::auth::KeyName;
use crate::config::LogFormat;

/// The response header carrying the request id.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    /// The id of the request being served, so error bodies can quote it
    /// without every handler threading it through.
    static REQUEST_ID: Arc<str>;
}

/// The request id, stored in request extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub Arc<str>);

/// When the request arrived, for the latency in the completion log line.
#[derive(Clone, Copy)]
struct RequestStart(Instant);

/// The id of the request this task is serving, if any.
pub fn current_request_id() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    // A second init (tests build several apps in one process) is harmless.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.pretty().try_init(),
    };
}

/// A caller's id is kept when it is 1–64 chars of `[A-Za-z0-9._-]`.
fn is_acceptable_request_id(value: &[u8]) -> bool {
    (1..=64).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn new_request_id() -> Arc<str> {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
    .into()
}

/// Outermost middleware: picks the request id, makes it visible to error
/// rendering, and stamps it on every response (errors included). Inner
/// middlewares answer errors as responses (never `Err`) so none escapes this.
pub async fn request_id_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let id: Arc<str> = match req.headers().get(&REQUEST_ID_HEADER) {
        Some(v) if is_acceptable_request_id(v.as_bytes()) => {
            Arc::from(v.to_str().unwrap_or_default())
        }
        _ => new_request_id(),
    };
    req.extensions_mut().insert(RequestId(Arc::clone(&id)));
    req.extensions_mut().insert(RequestStart(Instant::now()));
    // Our middlewares and handlers turn errors into responses inside this
    // scope, so every problem body can quote the id.
    let mut response = REQUEST_ID
        .scope(Arc::clone(&id), next.call(req))
        .await?
        .map_into_boxed_body();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    Ok(response)
}

/// The root span of each request (method, route, request id), so log lines
/// written while serving it carry them, and the one completion line per request.
///
/// Status, latency and key name go on the completion line, not on the span:
/// the JSON formatter keeps span fields as a JSON string and re-parses and
/// re-serializes it on every `record`, which cost about a third of the lock
/// throughput.
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|r| Arc::clone(&r.0))
            .unwrap_or_default();
        let route = request
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        tracing::info_span!(
            "request",
            method = %request.method(),
            route = %route,
            request_id = %request_id,
        )
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
        let api_key = extensions.get::<KeyName>().map(|k| &*k.0);
        // Written inside the span, so method, route and request id come with it.
        span.in_scope(|| {
            tracing::info!(
                status = response.status().as_u16(),
                latency_ms,
                api_key,
                "request completed"
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::is_acceptable_request_id;

    #[test]
    fn request_ids_follow_the_contract() {
        assert!(is_acceptable_request_id(b"abc-DEF_1.2"));
        assert!(is_acceptable_request_id(&[b'a'; 64]));
        assert!(!is_acceptable_request_id(&[b'a'; 65]));
        assert!(!is_acceptable_request_id(b""));
        assert!(!is_acceptable_request_id(b"a b"));
        assert!(!is_acceptable_request_id("é".as_bytes()));
    }
}
