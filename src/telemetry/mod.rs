//! Logging: the tracing subscriber, JSON lines or pretty, filtered by
//! `RUST_LOG`, and the id of the request being served.
//! (The per-request span and log line are `http::middleware::access_log`.)

mod client_errors;
mod json;
pub(crate) mod otel;
mod stdout;

pub use otel::flush;

use std::future::Future;
use std::sync::Arc;

use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use self::client_errors::ClientErrorsAtWarn;
use self::json::{JsonFields, JsonLines};
use self::stdout::Stdout;
use crate::config::LogFormat;

/// actix-http's connection handling, which logs a client's malformed request at ERROR.
const CONNECTION_ERRORS: &str = "actix_http::h1::dispatcher";

tokio::task_local! {
    /// The id of the request being served, so error bodies and log lines can
    /// quote it without every handler threading it through.
    static REQUEST_ID: Arc<str>;
}

/// Runs `fut` (the serving of one request) with `id` as its request id.
pub(crate) fn serving<F: Future>(id: Arc<str>, fut: F) -> impl Future<Output = F::Output> {
    REQUEST_ID.scope(id, fut)
}

/// The id of the request this task is serving, if any.
pub(crate) fn current_request_id() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) {
    // actix-http's connection module logs only client errors (at ERROR, which
    // `ClientErrorsAtWarn` rewrites) and TRACE noise, so the output leaves it
    // out. As a directive, not a filter function: every filter here must be
    // one whose verdict is cached per call site, or each disabled `trace!` in
    // actix's hot path would be evaluated again on every request.
    let output_filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(
            format!("{CONNECTION_ERRORS}=off")
                .parse()
                .expect("a valid directive"),
        );
    let output = match format {
        LogFormat::Json => fmt::layer()
            .event_format(JsonLines)
            .fmt_fields(JsonFields)
            .with_writer(Stdout)
            .boxed(),
        LogFormat::Pretty => fmt::layer().pretty().with_writer(Stdout).boxed(),
    };
    // A second init (tests build several apps in one process) is harmless.
    let _ = tracing_subscriber::registry()
        .with(otel::layer())
        .with(output.with_filter(output_filter))
        .with(
            ClientErrorsAtWarn::default()
                .with_filter(Targets::new().with_target(CONNECTION_ERRORS, Level::ERROR)),
        )
        .try_init();
}
