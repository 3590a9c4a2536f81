//! OpenTelemetry traces over OTLP/HTTP (protobuf), configured by
//! OpenTelemetry's own variables and on only when an endpoint is set
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
//!
//! Off, nothing here runs: no layer, no propagator, and the spans only
//! traces need are `debug` spans, disabled at the default `info` level. On,
//! finished spans go to a batch processor (a bounded queue drained by its own
//! thread), so a request never waits for the collector; spans the collector
//! did not take are counted in `middleway_otel_dropped_spans_total`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, OnceLock};

use actix_web::http::header::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter};
use prometheus::IntCounter;
use tracing::{Level, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

use crate::crypto;

/// Spans the collector did not take (unreachable, refused, timed out).
pub(crate) static DROPPED_SPANS: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "otel_dropped_spans_total",
        "Trace spans dropped because the OTLP collector did not take them",
    )
    .expect("static")
});

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether traces are exported.
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn endpoint_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// The layer that turns spans into OpenTelemetry spans, when an endpoint is
/// configured (otherwise `None`, and tracing costs what it did before).
pub(crate) fn layer<S>() -> Option<Box<dyn Layer<S> + Send + Sync>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    if !endpoint_configured() {
        return None;
    }
    // This runs before startup installs the provider the exporter's client needs.
    crypto::install_provider();
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("OpenTelemetry: cannot build the OTLP exporter ({error}); traces are off");
            return None;
        }
    };
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "middleway".to_owned());
    // The builder reads OTEL_TRACES_SAMPLER / _ARG and OTEL_BSP_* itself.
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(CountingExporter(exporter)).build())
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    let tracer = provider.tracer("middleway");
    let _ = PROVIDER.set(provider);
    ENABLED.store(true, Ordering::Relaxed);
    // Only the service's own spans: request, MySQL read, Redis script, lock wait.
    let only_ours = Targets::new().with_target("middleway", Level::DEBUG);
    Some(Box::new(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_filter(only_ours),
    ))
}

/// Exports what is still queued (at exit).
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}

/// Continues the caller's trace: makes the W3C `traceparent` / `tracestate`
/// of `headers` the parent of `span`. A missing or malformed header starts a
/// new trace.
pub(crate) fn continue_trace(span: &Span, headers: &HeaderMap) {
    if !enabled() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The `traceparent` of `span` when it is sampled (for a SQL comment).
pub(crate) fn sampled_traceparent(span: &Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    let span_ref = context.span();
    let ids = span_ref.span_context();
    (ids.is_valid() && ids.is_sampled())
        .then(|| format!("00-{}-{}-01", ids.trace_id(), ids.span_id()))
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The OTLP exporter, counting the spans of every batch it failed to deliver.
#[derive(Debug)]
struct CountingExporter(opentelemetry_otlp::SpanExporter);

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let exported = self.0.export(batch).await;
        if exported.is_err() {
            DROPPED_SPANS.inc_by(u64::try_from(spans).unwrap_or(u64::MAX));
        }
        exported
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}
