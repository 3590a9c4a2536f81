//! `LockEngine`: acquire, release and extend, on top of the store and the wait queues.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

use super::domain::LockName;
use super::error::LockError;
use super::queues::{WaitQueues, Waiter};
use super::shared::Shared;
use super::store::{AcquireOutcome, Grant, LockStore};
use super::waiters::run_wait_loop;
use super::wire::{AcquireRequest, ExtendRequest, ReleaseRequest};
use crate::metrics::Metrics;
use crate::pools::redis::RedisPool;

/// A bound on every non-blocking Redis call: past it Redis counts as unreachable.
const REDIS_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The lock service.
#[derive(Clone)]
pub(crate) struct LockEngine {
    shared: Arc<Shared>,
    /// Connections for the calls of requests, owned by this HTTP worker.
    pool: RedisPool,
    /// Flips to true when shutdown begins: waiters are answered 503 at once.
    draining: watch::Receiver<bool>,
}

/// Releases a place under `LOCK_MAX_WAITERS` when the waiting request ends, however it ends.
struct WaitingSlot<'a>(&'a AtomicUsize, &'a Metrics);

impl Drop for WaitingSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        self.1.lock_waiters.dec();
    }
}

fn unavailable(error: impl std::fmt::Display) -> LockError {
    tracing::warn!(%error, "Redis call failed");
    LockError::RedisUnavailable
}

/// Runs one Redis call with a time bound. The call is boxed before the
/// returned future exists: Redis client futures are kilobytes, and inlined
/// they would size every waiting request's future (held up to `wait_ms`) to match.
fn bounded<'a, T: 'a>(
    call: impl Future<Output = redis::RedisResult<T>> + 'a,
) -> impl Future<Output = Result<T, LockError>> + 'a {
    let call = Box::pin(call);
    async move {
        match tokio::time::timeout(REDIS_CALL_TIMEOUT, call).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(unavailable("timed out")),
        }
    }
}

/// Spawns the wait loop for a name. A plain function, so the loop's large
/// future is built here and never becomes part of the caller's async state.
fn start_wait_loop(shared: &Arc<Shared>, name: &LockName) {
    shared
        .runtime
        .spawn(run_wait_loop(Arc::clone(shared), name.clone()));
}

impl LockEngine {
    /// An engine over `pool` (scripts, used on `runtime`) and `client`
    /// (BLPOP connections). Give each HTTP worker its own with [`Self::for_worker`].
    pub(crate) fn new(
        pool: RedisPool,
        client: redis::Client,
        key_prefix: &str,
        max_waiters: usize,
        metrics: Metrics,
        runtime: Handle,
        draining: watch::Receiver<bool>,
    ) -> Self {
        let shared = Shared {
            store: LockStore::new(key_prefix),
            queues: WaitQueues::default(),
            pool: pool.clone(),
            client,
            runtime,
            metrics,
            waiting: AtomicUsize::new(0),
            max_waiters,
        };
        let engine = Self {
            shared: Arc::new(shared),
            pool,
            draining,
        };
        engine.fail_waiters_on_drain();
        engine
    }

    /// The same engine, making the calls of requests through `pool`.
    pub(crate) fn for_worker(&self, pool: RedisPool) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            pool,
            draining: self.draining.clone(),
        }
    }

    /// On shutdown, waiting callers get 503 at once and retry on another replica.
    fn fail_waiters_on_drain(&self) {
        let (shared, mut draining) = (Arc::clone(&self.shared), self.draining.clone());
        self.shared.runtime.spawn(async move {
            if draining.wait_for(|d| *d).await.is_ok() {
                shared.queues.fail_everyone(|| LockError::Draining);
            }
        });
    }

    /// Grants a slot, waiting up to `request.wait` for one. A wait ends early
    /// when `caller_gone` resolves, giving the caller's place to the next waiter.
    pub(crate) async fn acquire(
        &self,
        request: &AcquireRequest,
        caller_gone: impl Future<Output = ()>,
    ) -> Result<Grant, LockError> {
        let shared = &self.shared;
        // Callers queued here go first: a newcomer may only take a free slot directly when none wait.
        let take_now = request.wait().is_zero() || !shared.queues.has_waiters(&request.name);
        let outcome = bounded(async {
            let keys = shared.store.keys(&request.name);
            let mut conn = self.pool.connection().await?;
            shared
                .store
                .acquire(&mut conn, &keys, request.permits, request.lease(), take_now)
                .await
        })
        .await?;
        match outcome {
            AcquireOutcome::Granted(grant) => {
                shared
                    .metrics
                    .lock_operations
                    .with_label_values(&["acquire", "granted"])
                    .inc();
                return Ok(grant);
            }
            AcquireOutcome::PermitsMismatch(existing) => {
                return Err(LockError::PermitsMismatch(existing));
            }
            AcquireOutcome::Empty if request.wait().is_zero() => return Err(self.timed_out()),
            AcquireOutcome::Empty => {}
        }
        self.wait_for_slot(request, caller_gone).await
    }

    async fn wait_for_slot(
        &self,
        request: &AcquireRequest,
        caller_gone: impl Future<Output = ()>,
    ) -> Result<Grant, LockError> {
        let shared = &self.shared;
        if *self.draining.borrow() {
            return Err(LockError::Draining);
        }
        if shared.waiting.fetch_add(1, Ordering::AcqRel) >= shared.max_waiters {
            shared.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(LockError::TooManyWaiters);
        }
        shared.metrics.lock_waiters.inc();
        let _waiting = WaitingSlot(&shared.waiting, &shared.metrics);
        let (reply, mut granted) = oneshot::channel();
        if shared.queues.enqueue(
            &request.name,
            Waiter {
                lease: request.lease(),
                reply,
            },
        ) {
            start_wait_loop(shared, &request.name);
        }
        // Once this function returns or is dropped, `granted` is closed and
        // the wait loop skips this waiter, or hands on a slot it raced to us.
        let caller_left = tokio::select! {
            outcome = &mut granted => {
                return outcome.unwrap_or(Err(LockError::RedisUnavailable));
            }
            () = tokio::time::sleep(request.wait()) => false,
            () = caller_gone => true,
        };
        // A grant may have landed just as we gave up. A caller still here
        // takes it; a slot for a caller who left goes straight back.
        granted.close();
        let raced = granted.try_recv().ok();
        if !caller_left {
            return raced.unwrap_or_else(|| Err(self.timed_out()));
        }
        shared
            .metrics
            .lock_operations
            .with_label_values(&["acquire", "caller_gone"])
            .inc();
        if let Some(Ok(grant)) = raced {
            let keys = shared.store.keys(&request.name);
            let _ = bounded(async {
                let mut conn = self.pool.connection().await?;
                shared.store.release(&mut conn, &keys, &grant.token).await
            })
            .await;
        }
        Err(LockError::CallerGone)
    }

    fn timed_out(&self) -> LockError {
        self.shared
            .metrics
            .lock_operations
            .with_label_values(&["acquire", "timeout"])
            .inc();
        LockError::Timeout
    }

    /// Ends a grant; `NotHeld` unless `request.token` holds the lock now.
    pub(crate) async fn release(&self, request: &ReleaseRequest) -> Result<(), LockError> {
        let shared = &self.shared;
        if !request.token.is_well_formed() {
            return Err(self.not_held("release"));
        }
        let keys = shared.store.keys(&request.name);
        let released = bounded(async {
            let mut conn = self.pool.connection().await?;
            shared.store.release(&mut conn, &keys, &request.token).await
        })
        .await?;
        if !released {
            return Err(self.not_held("release"));
        }
        shared
            .metrics
            .lock_operations
            .with_label_values(&["release", "released"])
            .inc();
        Ok(())
    }

    /// Extends a live grant; returns it with its new deadline.
    pub(crate) async fn extend(&self, request: &ExtendRequest) -> Result<Grant, LockError> {
        let shared = &self.shared;
        if !request.token.is_well_formed() {
            return Err(self.not_held("extend"));
        }
        let keys = shared.store.keys(&request.name);
        let deadline = bounded(async {
            let mut conn = self.pool.connection().await?;
            shared
                .store
                .extend(&mut conn, &keys, &request.token, request.lease())
                .await
        })
        .await?
        .ok_or_else(|| self.not_held("extend"))?;
        shared
            .metrics
            .lock_operations
            .with_label_values(&["extend", "extended"])
            .inc();
        let fence = request.token.fence().unwrap_or_default();
        Ok(Grant {
            token: request.token.clone(),
            fence,
            deadline_ms: deadline,
        })
    }

    fn not_held(&self, op: &str) -> LockError {
        self.shared
            .metrics
            .lock_operations
            .with_label_values(&[op, "not_held"])
            .inc();
        LockError::NotHeld
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locks::domain::LockName;

    /// 10,000 waiters each hold an acquire future for up to `wait_ms`: it
    /// must stay small (it was 14 KB before the Redis calls were boxed).
    #[tokio::test]
    async fn a_waiting_acquire_is_small() {
        let pool = RedisPool::new("redis://127.0.0.1:1/0", 1).unwrap();
        let client = redis::Client::open("redis://127.0.0.1:1/0").unwrap();
        let (_drain, draining) = watch::channel(false);
        let engine = LockEngine::new(
            pool,
            client,
            "p:",
            10,
            Metrics::new(),
            Handle::current(),
            draining,
        );
        let request = AcquireRequest {
            name: LockName::parse("a").unwrap(),
            wait_ms: 1000,
            lease_ms: 1000,
            permits: 1,
        };
        let acquire = engine.acquire(&request, std::future::pending());
        assert!(
            std::mem::size_of_val(&acquire) < 2048,
            "{} bytes",
            std::mem::size_of_val(&acquire)
        );
    }
}
