//! Logging: the tracing subscriber, JSON lines or pretty, filtered by `RUST_LOG`.
//! (The per-request span and log line are `http::middleware::access_log`.)

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{Targets, filter_fn};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::LogFormat;

/// actix-http's connection handling, which logs a client's malformed request at ERROR.
const CONNECTION_ERRORS: &str = "actix_http::h1::dispatcher";

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let output = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .boxed(),
        LogFormat::Pretty => fmt::layer().pretty().with_writer(std::io::stdout).boxed(),
    };
    // A second init (tests build several apps in one process) is harmless.
    let _ = tracing_subscriber::registry()
        .with(output.with_filter(filter()).with_filter(filter_fn(|meta| {
            meta.target() != CONNECTION_ERRORS || *meta.level() > Level::ERROR
        })))
        .with(
            ClientErrorsAtWarn::default()
                .with_filter(Targets::new().with_target(CONNECTION_ERRORS, Level::ERROR)),
        )
        .try_init();
}

/// Anyone can send a malformed request, and actix-http logs each at ERROR:
/// they are the client's errors, so they are logged again at WARN, at most
/// once a second, with how many were folded into that line.
#[derive(Default)]
struct ClientErrorsAtWarn {
    /// When the last line was written.
    last: Mutex<Option<Instant>>,
    /// Errors since then.
    folded: AtomicU64,
}

/// Reads an event's `message` field.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

impl<S: Subscriber> Layer<S> for ClientErrorsAtWarn {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let folded = self.folded.fetch_add(1, Ordering::Relaxed);
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *last = Some(Instant::now());
        }
        self.folded.fetch_sub(folded + 1, Ordering::Relaxed);
        let mut message = Message::default();
        event.record(&mut message);
        tracing::warn!(
            target: "middleway::http",
            error = message.0,
            since_last_line = folded,
            "a client's connection failed (malformed request or I/O)"
        );
    }
}
