//! What the background worker is told: by the wake connection (offers,
//! alarms, skipped tickets, locks created again), by the alarm clock, and by
//! requests that leave work behind. Nothing calls back up into the engine:
//! everything reaches the worker as one of these messages.

use std::time::Duration;

use tokio::sync::mpsc;

use super::domain::{LockName, LockToken};
use super::error::LockError;

/// One message to the background worker.
#[derive(Debug)]
pub(crate) enum Event {
    /// A slot of `name` is offered to `ticket`: claim it for its waiter, or
    /// pass it on when the waiter is not here.
    Offer {
        name: LockName,
        ticket: String,
        token: LockToken,
    },
    /// `name`'s earliest deadline is `after` from now: reap it then, while
    /// requests wait on it here.
    Alarm { name: LockName, after: Duration },
    /// The alarm of `name` rang: reap it now.
    Due(LockName),
    /// Re-check this replica's tickets of `name` against Redis (one was
    /// skipped, an offer came to nothing, or the lock was created again).
    Resync(LockName),
    /// A re-check of `name` finished.
    Resynced(LockName),
    /// The wake connection is back after a drop: re-check every lock waited on here.
    Reconnected,
    /// Redis has been unreachable past the grace period, or the service is
    /// draining: answer every waiter with this error.
    FailAll(LockError),
    /// Work a request left behind, retried until Redis answers.
    Cleanup(Cleanup),
}

/// Work left behind by a request that could not finish it.
#[derive(Debug)]
pub(crate) enum Cleanup {
    /// A request gave up: whatever of it reaches Redis later grants nothing,
    /// its ticket (if any) leaves the queue, an offer to it moves on; with
    /// `scan`, a grant made for `nonce` (a reply that was lost) is released.
    Forget {
        name: LockName,
        ticket: String,
        nonce: String,
        scan: bool,
    },
    /// A grant nobody received: release it.
    Release { name: LockName, token: LockToken },
}

/// Where events go (cheap to clone).
#[derive(Clone)]
pub(crate) struct Events(mpsc::UnboundedSender<Event>);

impl Events {
    /// A sender and the worker's end.
    pub(crate) fn channel() -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    /// Sends `event` (dropped once the worker has stopped, at shutdown).
    pub(crate) fn send(&self, event: Event) {
        let _ = self.0.send(event);
    }
}
