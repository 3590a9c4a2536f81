//! What every copy of the engine and the background worker share: the
//! store, this replica's identity, the waiters here, the fences seen, and the
//! way to the worker.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::domain::{Grant, LockName};
use super::events::{Cleanup, Event, Events};
use super::fences::FenceFloors;
use super::store::{LockStore, random_id};
use super::waiters::Waiters;
use crate::metrics::Metrics;

/// Most clean-ups kept at once. A long Redis outage under load would
/// otherwise pile them up without bound; past it one is dropped (counted in
/// `middleway_lock_cleanups_dropped_total`), and what it would have undone
/// ends with its lease or claim deadline instead.
const MAX_PENDING_CLEANUPS: usize = 10_000;

/// Shared by every copy of the engine and by the background worker.
pub(crate) struct Core {
    /// Scripts and key names.
    pub store: LockStore,
    /// This replica in the scripts (16 random hex digits, new at every
    /// start): tickets name it, and its wake channel is named after it.
    pub replica: String,
    /// Requests waiting here, by ticket.
    pub waiters: Waiters,
    /// Highest fence seen per name.
    pub fences: FenceFloors,
    /// Lock metrics.
    pub metrics: Metrics,
    /// The background worker's inbox.
    pub events: Events,
    /// Requests waiting now, against `max_waiters`.
    pub waiting: AtomicUsize,
    /// `LOCK_MAX_WAITERS`.
    pub max_waiters: usize,
    /// Set while Redis has been unreachable past the grace period.
    pub outage: AtomicBool,
    /// Clean-ups not yet done, and a signal when one finishes (the drain waits for them).
    pub cleanups: PendingCleanups,
}

impl Core {
    /// The shared state of a new replica.
    pub(crate) fn new(
        store: LockStore,
        metrics: Metrics,
        events: Events,
        max_waiters: usize,
    ) -> Self {
        Self {
            store,
            replica: random_id(),
            waiters: Waiters::default(),
            fences: FenceFloors::default(),
            metrics,
            events,
            waiting: AtomicUsize::new(0),
            max_waiters,
            outage: AtomicBool::new(false),
            cleanups: PendingCleanups::default(),
        }
    }

    /// Counts a lock operation's outcome.
    pub(crate) fn count(&self, op: &str, outcome: &str) {
        self.metrics
            .lock_operations
            .with_label_values(&[op, outcome])
            .inc();
    }

    /// Leaves `cleanup` to the background worker, unless too many are pending.
    pub(crate) fn cleanup(&self, cleanup: Cleanup) {
        if !self.cleanups.start() {
            tracing::warn!(?cleanup, "too many lock clean-ups pending; dropping one");
            self.metrics.lock_cleanups_dropped.inc();
            return;
        }
        self.events.send(Event::Cleanup(cleanup));
    }

    /// A grant that came back after its lease could have ended: never
    /// answered, but released (if it still holds, the next waiter gets the
    /// slot now). Its fence was granted all the same, and counts as seen.
    pub(crate) fn answered_too_late(&self, name: &LockName, grant: Grant) {
        tracing::warn!(
            lock = name.as_str(),
            fence = grant.fence,
            "Redis answered a grant after its lease could have ended; handing it back"
        );
        self.fences.saw(name, grant.fence);
        self.count("acquire", "too_late");
        self.cleanup(Cleanup::Release {
            name: name.clone(),
            token: grant.token,
        });
    }

    /// Leaves the undoing of a request that gave up to the background worker.
    pub(crate) fn forget(&self, name: &LockName, ticket: &str, nonce: &str, scan: bool) {
        self.cleanup(Cleanup::Forget {
            name: name.clone(),
            ticket: ticket.to_owned(),
            nonce: nonce.to_owned(),
            scan,
        });
    }
}

/// Clean-ups started and not finished.
#[derive(Default)]
pub(crate) struct PendingCleanups {
    count: AtomicUsize,
    finished: Notify,
}

impl PendingCleanups {
    /// Counts one more; false (and not counted) past [`MAX_PENDING_CLEANUPS`].
    fn start(&self) -> bool {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_PENDING_CLEANUPS).then_some(n + 1)
            })
            .is_ok()
    }

    /// One finished (done, or given up on).
    pub(crate) fn finish(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.finished.notify_waiters();
    }

    /// Resolves once none is pending.
    pub(crate) async fn none_left(&self) {
        loop {
            let finished = self.finished.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            finished.await;
        }
    }
}
