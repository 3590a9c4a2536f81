//! actix-http's connection errors, which are the client's, logged at WARN.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Anyone can send a malformed request, and actix-http logs each at ERROR:
/// they are the client's errors, so they are logged again at WARN, at most
/// once a second, with how many were folded into that line.
#[derive(Default)]
pub(super) struct ClientErrorsAtWarn {
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
