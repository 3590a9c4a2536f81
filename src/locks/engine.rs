//! `LockEngine`: acquire (in `acquire`), release, extend and inspect, for one
//! request each. A waiting acquire holds its place in Redis (a ticket in the
//! lock's queue); the background worker brings it the slot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::background::run_worker;
use super::batch::CallBatcher;
use super::call::{lease_may_be_over, redis_call};
use super::core::Core;
use super::domain::{
    ExtendRequest, Grant, InspectRequest, LockName, LockState, NotHeldReason, ReleaseRequest,
};
use super::error::LockError;
use super::events::{Cleanup, Event, Events};
use super::store::LockStore;
use super::wake::{WakeLoop, WakeSource};
use crate::metrics::Metrics;
use crate::pools::redis::{Checkout, RedisPool};

/// What an engine starts with.
pub(crate) struct EngineSettings {
    /// Scripts, keys, replica acknowledgements.
    pub store: LockStore,
    /// Connections for the background worker's calls (on `runtime`).
    pub background_pool: RedisPool,
    /// Where the wake connection subscribes.
    pub wake: WakeSource,
    /// `LOCK_MAX_WAITERS`.
    pub max_waiters: usize,
    pub metrics: Metrics,
    /// Where the worker and the wake loop run: the main runtime, which
    /// outlives the HTTP workers.
    pub runtime: Handle,
    /// Flips to true when shutdown begins: waiters are answered 503 at once.
    pub draining: watch::Receiver<bool>,
}

/// The lock service of one replica.
#[derive(Clone)]
pub(crate) struct LockEngine {
    pub(super) core: Arc<Core>,
    /// Connections for the calls of requests, owned by this HTTP worker.
    pub(super) pool: RedisPool,
    /// Acquires and releases of requests, sent together through `pool`.
    pub(super) calls: CallBatcher,
    /// True once shutdown began.
    pub(super) draining: watch::Receiver<bool>,
    /// Stops the background tasks when the last copy of the engine goes.
    _tasks: Arc<TasksGuard>,
}

/// Aborts the engine's background tasks (worker, wake loop, drain watch) when dropped.
struct TasksGuard(Vec<AbortHandle>);

impl Drop for TasksGuard {
    fn drop(&mut self) {
        self.0.iter().for_each(AbortHandle::abort);
    }
}

impl LockEngine {
    /// An engine, with its background worker and wake loop running.
    /// Give each HTTP worker its own copy with [`Self::for_worker`].
    pub(crate) fn start(settings: EngineSettings) -> Self {
        let (events, inbox) = Events::channel();
        let core = Arc::new(Core::new(
            settings.store,
            settings.metrics.clone(),
            events.clone(),
            settings.max_waiters,
        ));
        let wake_loop = WakeLoop {
            source: settings.wake,
            wake_channel: core.store.wake_channel(&core.replica),
            events_channel: core.store.events_channel(),
            events: events.clone(),
            metrics: settings.metrics,
            draining: settings.draining.clone(),
        };
        let runtime = &settings.runtime;
        let mut draining = settings.draining.clone();
        let tasks = vec![
            runtime
                .spawn(run_worker(
                    Arc::clone(&core),
                    settings.background_pool.clone(),
                    inbox,
                ))
                .abort_handle(),
            runtime.spawn(wake_loop.run()).abort_handle(),
            runtime
                .spawn(async move {
                    if draining.wait_for(|d| *d).await.is_ok() {
                        events.send(Event::FailAll(LockError::Draining));
                    }
                })
                .abort_handle(),
        ];
        Self {
            calls: CallBatcher::new(Arc::clone(&core), settings.background_pool.clone()),
            core,
            pool: settings.background_pool,
            draining: settings.draining,
            _tasks: Arc::new(TasksGuard(tasks)),
        }
    }

    /// The same engine, making the calls of requests through `pool`.
    pub(crate) fn for_worker(&self, pool: RedisPool) -> Self {
        Self {
            calls: CallBatcher::new(Arc::clone(&self.core), pool.clone()),
            pool,
            ..self.clone()
        }
    }

    /// Hands back a grant whose answer could not be delivered (the caller
    /// has gone): the next waiter gets the slot at once.
    pub(crate) fn give_back(&self, name: &LockName, grant: Grant) {
        self.core.count("acquire", "undelivered");
        self.core.cleanup(Cleanup::Release {
            name: name.clone(),
            token: grant.token,
        });
    }

    /// Ends a grant; `NotHeld` (with the reason) unless `request.token` holds the lock now.
    pub(crate) async fn release(&self, request: &ReleaseRequest) -> Result<(), LockError> {
        if !request.token.is_well_formed() {
            return Err(self.not_held("release", NotHeldReason::Unknown));
        }
        match self.calls.release(&request.name, &request.token).await? {
            Ok(()) => {
                self.core.count("release", "released");
                Ok(())
            }
            Err(reason) => Err(self.not_held("release", reason)),
        }
    }

    /// Extends a live grant; returns it with its new deadline.
    pub(crate) async fn extend(&self, request: &ExtendRequest) -> Result<Grant, LockError> {
        let fence = request
            .token
            .fence()
            .filter(|_| request.token.is_well_formed());
        let Some(fence) = fence else {
            return Err(self.not_held("extend", NotHeldReason::Unknown));
        };
        let store = &self.core.store;
        let (name, token) = (&request.name, &request.token);
        let lease_ms = request.lease_ms;
        let extend = |mut conn| async move { store.extend(&mut conn, name, token, lease_ms).await };
        let sent = Instant::now();
        match redis_call(&self.pool, store.checkout_for_changes(), extend).await? {
            // The new lease may be over already: the holder must not count on
            // it (the extension stands; a retry tells whether it still holds).
            Ok(_) if lease_may_be_over(sent, lease_ms) => {
                tracing::warn!(
                    lock = name.as_str(),
                    fence,
                    "Redis answered an extension after its lease could have ended"
                );
                self.core.count("extend", "too_late");
                self.core.fences.saw(name, fence);
                Err(LockError::AnsweredTooLate)
            }
            Ok(deadline_ms) => {
                self.core.count("extend", "extended");
                self.core.fences.saw(name, fence);
                Ok(Grant {
                    token: token.clone(),
                    fence,
                    deadline_ms,
                })
            }
            Err(reason) => Err(self.not_held("extend", reason)),
        }
    }

    /// The lock as it is now, with its holders (nothing changes).
    pub(crate) async fn inspect(&self, request: &InspectRequest) -> Result<LockState, LockError> {
        let store = &self.core.store;
        let token = request.token.as_ref();
        let name = &request.name;
        let inspect = |mut conn| async move { store.inspect(&mut conn, name, token, true).await };
        Ok(redis_call(&self.pool, Checkout::Shared, inspect).await?)
    }

    /// How many requests wait on `name`, fleet-wide (O(log n), whatever the permits).
    pub(crate) async fn waiting(&self, name: &LockName) -> Result<u64, LockError> {
        let store = &self.core.store;
        let count = |mut conn| async move { store.inspect(&mut conn, name, None, false).await };
        Ok(redis_call(&self.pool, Checkout::Shared, count)
            .await?
            .waiting)
    }

    /// Resolves once the work requests left behind is done (a draining
    /// replica waits for it before it closes its Redis connections), or
    /// after `within`.
    pub(crate) async fn settled(&self, within: Duration) {
        let _ = tokio::time::timeout(within, self.core.cleanups.none_left()).await;
    }

    fn not_held(&self, op: &str, reason: NotHeldReason) -> LockError {
        self.core.count(op, "not_held");
        LockError::NotHeld(reason)
    }
}
