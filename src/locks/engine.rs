//! `LockEngine`: acquire, release, extend and inspect, for one request each.
//! A waiting acquire holds its place in Redis (a ticket in the lock's queue);
//! the wake loop brings it the slot (see `wake` and docs/locks.md).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

use super::core::{Cleanup, Core, bounded};
use super::domain::{
    AcquireRequest, ExtendRequest, Grant, InspectRequest, LockName, LockState, NotHeldReason,
    ReleaseRequest,
};
use super::error::LockError;
use super::store::{AcquireCall, AcquireOutcome, Claimed, LockStore, random_id};
use super::waiters::{WaitOutcome, Waiter};
use super::wake::{WakeSource, run_wake_loop};
use crate::metrics::Metrics;
use crate::pools::redis::RedisPool;
use crate::telemetry::otel;

/// The lock service of one replica.
#[derive(Clone)]
pub(crate) struct LockEngine {
    core: Arc<Core>,
    /// Connections for the calls of requests, owned by this HTTP worker.
    pool: RedisPool,
    /// Flips to true when shutdown begins: waiters are answered 503 at once.
    draining: watch::Receiver<bool>,
}

/// Holds a place under `LOCK_MAX_WAITERS` while a request waits, however it ends.
struct WaitingSlot<'a>(&'a Core);

impl Drop for WaitingSlot<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.lock_waiters.dec();
    }
}

/// A waiting request's claim on its ticket. If the request ends before its
/// outcome is settled (its caller hung up and actix dropped it, say), the
/// ticket leaves the queue and whatever was granted to it is handed on.
struct Place<'a> {
    core: &'a Arc<Core>,
    name: &'a LockName,
    ticket: String,
    nonce: String,
    /// The outcome the wake loop sends, once it has taken the waiter.
    outcome: oneshot::Receiver<WaitOutcome>,
    settled: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if self.core.waiters.take(&self.ticket).is_some() {
            self.core.cleanup(Cleanup::Forget {
                name: self.name.clone(),
                ticket: std::mem::take(&mut self.ticket),
                nonce: std::mem::take(&mut self.nonce),
                scan: false,
            });
            return;
        }
        // The wake loop holds the waiter: a grant it sent (or sends) here goes back.
        self.outcome.close();
        if let Ok(Ok(grant)) = self.outcome.try_recv() {
            self.core.cleanup(Cleanup::Release {
                name: self.name.clone(),
                token: grant.token,
            });
        }
    }
}

impl LockEngine {
    /// An engine over `store` (scripts, keys, replica acknowledgements),
    /// `pool` (for its tasks, used on `runtime`) and `wake` (where its wake
    /// connection listens). Starts the wake loop.
    /// Give each HTTP worker its own copy with [`Self::for_worker`].
    pub(crate) fn new(
        store: LockStore,
        pool: RedisPool,
        wake: WakeSource,
        max_waiters: usize,
        metrics: Metrics,
        runtime: Handle,
        draining: watch::Receiver<bool>,
    ) -> Self {
        let core = Core::new(store, pool.clone(), metrics, runtime.clone(), max_waiters);
        runtime.spawn(run_wake_loop(Arc::clone(&core), wake, draining.clone()));
        let on_drain = (Arc::clone(&core), draining.clone());
        runtime.spawn(async move {
            let (core, mut draining) = on_drain;
            if draining.wait_for(|d| *d).await.is_ok() {
                core.fail_all(LockError::Draining);
            }
        });
        Self {
            core,
            pool,
            draining,
        }
    }

    /// The same engine, making the calls of requests through `pool`.
    pub(crate) fn for_worker(&self, pool: RedisPool) -> Self {
        Self {
            core: Arc::clone(&self.core),
            pool,
            draining: self.draining.clone(),
        }
    }

    /// Grants a slot, waiting up to `request.wait()` for one. A wait ends
    /// early when `caller_gone` resolves, and the caller's place moves on.
    /// The flag says whether the request queued (its caller may have left meanwhile).
    pub(crate) async fn acquire(
        &self,
        request: &AcquireRequest,
        caller_gone: impl Future<Output = ()>,
    ) -> Result<(Grant, bool), LockError> {
        // Boxed: see `bounded` (a waiting request's future must stay small).
        let queued = std::cell::Cell::new(false);
        let inner = Box::pin(self.acquire_inner(request, caller_gone, &queued));
        let grant = if otel::enabled() && request.wait_ms > 0 {
            traced_wait(request, inner).await?
        } else {
            inner.await?
        };
        Ok((grant, queued.get()))
    }

    async fn acquire_inner(
        &self,
        request: &AcquireRequest,
        caller_gone: impl Future<Output = ()>,
        queued: &std::cell::Cell<bool>,
    ) -> Result<Grant, LockError> {
        // The wait counts from here, Redis calls included.
        let deadline = Instant::now() + request.wait();
        let core = &self.core;
        let name = &request.name;
        let nonce = random_id();
        if request.wait_ms == 0 {
            let outcome = self.call_acquire(request, "", &nonce, 0).await;
            return self.settle_immediate(name, &nonce, outcome);
        }
        if *self.draining.borrow() {
            return Err(LockError::Draining);
        }
        if core.waiting.fetch_add(1, Ordering::AcqRel) >= core.max_waiters {
            core.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(LockError::TooManyWaiters);
        }
        core.metrics.lock_waiters.inc();
        let _slot = WaitingSlot(core);
        let (reply, outcome) = oneshot::channel();
        let ticket = random_id();
        // Registered before the ticket exists in Redis: an offer can come back at once.
        core.waiters.insert(
            ticket.clone(),
            Waiter {
                name: name.clone(),
                permits: request.permits,
                lease_ms: request.lease_ms,
                nonce: nonce.clone(),
                deadline,
                reply,
            },
        );
        let mut place = Place {
            core,
            name,
            ticket,
            nonce,
            outcome,
            settled: false,
        };
        let wait_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
        match self
            .call_acquire(request, &place.ticket, &place.nonce, wait_ms.max(1))
            .await
        {
            Ok(AcquireOutcome::Queued {
                earliest_ms,
                now_ms,
            }) => {
                queued.set(true);
                let next = earliest_ms.map(|e| Duration::from_millis(e.saturating_sub(now_ms)));
                core.arm(name, next);
            }
            // Granted at once, or refused: the ticket was never queued, so
            // no offer can come for it.
            Ok(outcome) => {
                core.waiters.take(&place.ticket);
                place.settled = true;
                return self.settle_immediate(name, &place.nonce, Ok(outcome));
            }
            Err(error) => {
                if core.waiters.take(&place.ticket).is_some() {
                    // The script may have run: undo whatever it did.
                    place.settled = true;
                    core.cleanup(Cleanup::Forget {
                        name: name.clone(),
                        ticket: place.ticket.clone(),
                        nonce: place.nonce.clone(),
                        scan: true,
                    });
                    return Err(error);
                }
                // It ran, and an offer already came back: its outcome follows.
                return self.await_outcome(&mut place).await;
            }
        }
        let caller_left = tokio::select! {
            outcome = &mut place.outcome => {
                place.settled = true;
                return outcome.unwrap_or(Err(LockError::RedisUnavailable));
            }
            () = tokio::time::sleep_until(deadline.into()) => false,
            () = caller_gone => true,
        };
        if core.waiters.take(&place.ticket).is_none() {
            // The wake loop is claiming an offer for us: a caller still here takes it.
            if caller_left {
                core.count("acquire", "caller_gone");
                return Err(LockError::CallerGone);
            }
            return self.await_outcome(&mut place).await;
        }
        place.settled = true;
        if caller_left {
            core.count("acquire", "caller_gone");
            core.cleanup(Cleanup::Forget {
                name: name.clone(),
                ticket: place.ticket.clone(),
                nonce: place.nonce.clone(),
                scan: false,
            });
            return Err(LockError::CallerGone);
        }
        // The wait ran out: a slot offered meanwhile is still ours, else we leave.
        let cancel = async {
            let mut conn = self.pool.connection().await?;
            core.store
                .cancel(&mut conn, name, &place.ticket, request.lease_ms)
                .await
        };
        match bounded(cancel).await {
            Ok(Claimed::Granted(grant)) => Ok(self.granted(name, grant)),
            Ok(Claimed::Nothing) => Err(self.timed_out()),
            Err(error) => {
                // The cancel may have taken an offer before its reply was
                // lost (or its grant was not replicated): release that too.
                core.cleanup(Cleanup::Forget {
                    name: name.clone(),
                    ticket: place.ticket.clone(),
                    nonce: place.nonce.clone(),
                    scan: true,
                });
                Err(error)
            }
        }
    }

    async fn call_acquire(
        &self,
        request: &AcquireRequest,
        ticket: &str,
        nonce: &str,
        wait_ms: u64,
    ) -> Result<AcquireOutcome, LockError> {
        let core = &self.core;
        let call = AcquireCall {
            permits: request.permits,
            lease_ms: request.lease_ms,
            wait_ms,
            replica: &core.replica,
            ticket,
            nonce,
            fence_floor: core.fences.floor(&request.name),
        };
        bounded(async {
            let mut conn = self.pool.connection().await?;
            core.store.acquire(&mut conn, &request.name, &call).await
        })
        .await
    }

    /// The answer to an acquire that did not queue.
    fn settle_immediate(
        &self,
        name: &LockName,
        nonce: &str,
        outcome: Result<AcquireOutcome, LockError>,
    ) -> Result<Grant, LockError> {
        match outcome {
            Ok(AcquireOutcome::Granted(grant)) => Ok(self.granted(name, grant)),
            Ok(AcquireOutcome::PermitsMismatch(existing)) => {
                Err(LockError::PermitsMismatch(existing))
            }
            Ok(AcquireOutcome::Busy | AcquireOutcome::Queued { .. }) => Err(self.timed_out()),
            // Only a call that outlived its own request sees this.
            Ok(AcquireOutcome::GaveUp) => Err(LockError::RedisUnavailable),
            Err(error) => {
                // The script may have granted before its reply was lost.
                self.core.cleanup(Cleanup::Forget {
                    name: name.clone(),
                    ticket: String::new(),
                    nonce: nonce.to_owned(),
                    scan: true,
                });
                Err(error)
            }
        }
    }

    /// Waits for the outcome the wake loop is settling for this request.
    async fn await_outcome(&self, place: &mut Place<'_>) -> Result<Grant, LockError> {
        let outcome = (&mut place.outcome).await;
        place.settled = true;
        outcome.unwrap_or(Err(LockError::RedisUnavailable))
    }

    fn granted(&self, name: &LockName, grant: Grant) -> Grant {
        self.core.fences.saw(name, grant.fence);
        self.core.count("acquire", "granted");
        grant
    }

    fn timed_out(&self) -> LockError {
        self.core.count("acquire", "timeout");
        LockError::Timeout
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
        let core = &self.core;
        if !request.token.is_well_formed() {
            return Err(self.not_held("release", NotHeldReason::Unknown));
        }
        let released = bounded(async {
            let mut conn = self.pool.connection().await?;
            core.store
                .release(&mut conn, &request.name, &request.token)
                .await
        })
        .await?;
        match released {
            Ok(()) => {
                core.count("release", "released");
                Ok(())
            }
            Err(reason) => Err(self.not_held("release", reason)),
        }
    }

    /// Extends a live grant; returns it with its new deadline.
    pub(crate) async fn extend(&self, request: &ExtendRequest) -> Result<Grant, LockError> {
        let core = &self.core;
        let fence = request
            .token
            .fence()
            .filter(|_| request.token.is_well_formed());
        let Some(fence) = fence else {
            return Err(self.not_held("extend", NotHeldReason::Unknown));
        };
        let extended = bounded(async {
            let mut conn = self.pool.connection().await?;
            core.store
                .extend(&mut conn, &request.name, &request.token, request.lease_ms)
                .await
        })
        .await?;
        match extended {
            Ok(deadline_ms) => {
                core.count("extend", "extended");
                core.fences.saw(&request.name, fence);
                Ok(Grant {
                    token: request.token.clone(),
                    fence,
                    deadline_ms,
                })
            }
            Err(reason) => Err(self.not_held("extend", reason)),
        }
    }

    /// The lock as it is now (nothing changes).
    pub(crate) async fn inspect(&self, request: &InspectRequest) -> Result<LockState, LockError> {
        let core = &self.core;
        bounded(async {
            let mut conn = self.pool.connection().await?;
            core.store
                .inspect(&mut conn, &request.name, request.token.as_ref())
                .await
        })
        .await
    }

    fn not_held(&self, op: &str, reason: NotHeldReason) -> LockError {
        self.core.count(op, "not_held");
        LockError::NotHeld(reason)
    }
}

/// A wait as a span of its own (only when traces are exported): the lock's
/// name, how it ended and the fence granted; never the token.
async fn traced_wait(
    request: &AcquireRequest,
    wait: impl Future<Output = Result<Grant, LockError>>,
) -> Result<Grant, LockError> {
    use tracing::Instrument;
    let span = tracing::debug_span!(
        "lock.wait",
        lock.name = request.name.as_str(),
        lock.permits = request.permits,
        wait_ms = request.wait_ms,
        outcome = tracing::field::Empty,
        fence = tracing::field::Empty,
    );
    let outcome = wait.instrument(span.clone()).await;
    match &outcome {
        Ok(grant) => {
            span.record("outcome", "granted");
            span.record("fence", grant.fence);
        }
        Err(error) => {
            span.record("outcome", error.outcome());
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10,000 waiters each hold an acquire future for up to `wait_ms`: it
    /// must stay small (it was 14 KB before the Redis calls were boxed).
    #[tokio::test]
    async fn a_waiting_acquire_is_small() {
        let pool = RedisPool::new("redis://127.0.0.1:1/0", 1).unwrap();
        let client = redis::Client::open("redis://127.0.0.1:1/0").unwrap();
        let (_drain, draining) = watch::channel(false);
        let engine = LockEngine::new(
            LockStore::new("p:"),
            pool,
            WakeSource::list(client),
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
