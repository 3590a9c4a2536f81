//! An acquire, step by step: admit (the replica may take one more waiter),
//! register (the waiter, before its ticket reaches Redis), first call (the
//! acquire script), wait (for the slot, the deadline or the caller leaving)
//! and settle (the answer, and nothing left behind in Redis).
//!
//! Every way out is bounded: the first call and the cancel at the deadline
//! by [`REDIS_CALL_TIMEOUT`], waiting by the deadline, and waiting for a
//! claim under way by one more call bound ([`CLAIM_BOUND`]). A request is
//! answered by its deadline plus those bounds, whatever Redis does.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::call::{CallFailed, REDIS_CALL_TIMEOUT, lease_may_be_over, redis_call};
use super::core::Core;
use super::domain::{AcquireRequest, Grant, LockName};
use super::engine::LockEngine;
use super::error::LockError;
use super::events::{Cleanup, Event};
use super::store::{AcquireCall, AcquireOutcome, Claimed, random_id};
use super::waiters::{WaitOutcome, Waiter};
use crate::telemetry::otel;

/// How long a request whose wait is over waits for a claim under way: the
/// claim is one bounded call, plus room for the task to run.
const CLAIM_BOUND: Duration = REDIS_CALL_TIMEOUT.saturating_add(Duration::from_millis(500));

impl LockEngine {
    /// Grants a slot, waiting up to `request.wait()` for one. A wait ends
    /// early when `caller_gone` resolves, and the caller's place moves on.
    /// Dropped before it ends (its caller left and the request with it), it
    /// leaves nothing behind: see [`Attempt`].
    pub(crate) async fn acquire(
        &self,
        request: &AcquireRequest,
        caller_gone: impl Future<Output = ()>,
    ) -> Result<Grant, LockError> {
        // Boxed: a waiting request's future must stay small (10,000 of them may wait).
        let steps = Box::pin(self.acquire_steps(request, caller_gone));
        if otel::enabled() && request.wait_ms > 0 {
            traced_wait(request, steps).await
        } else {
            steps.await
        }
    }

    async fn acquire_steps(
        &self,
        request: &AcquireRequest,
        caller_gone: impl Future<Output = ()>,
    ) -> Result<Grant, LockError> {
        // The wait counts from here, Redis calls included.
        let mut attempt = Attempt::new(&self.core, request);
        if request.wait_ms == 0 {
            let outcome = self.first_call(&attempt, 0).await;
            return self.settle_first_call(&mut attempt, outcome);
        }
        let _admitted = self.admit()?;
        let mut outcome = attempt.register();
        let wait_ms = attempt.time_left().as_millis() as u64;
        match self.first_call(&attempt, wait_ms.max(1)).await {
            Ok(AcquireOutcome::Queued(queued)) => {
                let missed = self
                    .core
                    .waiters
                    .set_arrival(attempt.ticket(), queued.arrival_us);
                if missed {
                    self.core.events.send(Event::Resync(request.name.clone()));
                }
                if let Some(after) = queued.next_in {
                    self.core.events.send(Event::Alarm {
                        name: request.name.clone(),
                        after,
                    });
                }
            }
            // Granted at once, or refused: the ticket was never queued, so
            // no offer can come for it.
            Ok(other) => {
                self.core.waiters.take(attempt.ticket());
                return self.settle_first_call(&mut attempt, Ok(other));
            }
            Err(failed) => {
                if self.core.waiters.take(attempt.ticket()).is_some() {
                    // What the script did (if it ran) is undone when the attempt drops.
                    if !failed.maybe_ran {
                        attempt.settled();
                    }
                    return Err(failed.error);
                }
                // It ran, and an offer already came back: its claim is under way.
                return self.claim_under_way(&mut attempt, &mut outcome).await;
            }
        }
        let ended = tokio::select! {
            outcome = &mut outcome => WaitEnded::Answered(outcome.unwrap_or(Err(LockError::RedisUnavailable))),
            () = tokio::time::sleep_until(attempt.deadline.into()) => WaitEnded::TimeUp,
            () = caller_gone => WaitEnded::CallerLeft,
        };
        self.settle(&mut attempt, &mut outcome, ended).await
    }

    /// Admits one more waiter, unless the replica is draining or
    /// `LOCK_MAX_WAITERS` wait already.
    fn admit(&self) -> Result<Admitted<'_>, LockError> {
        let core = &self.core;
        if *self.draining.borrow() {
            return Err(LockError::Draining);
        }
        if core.waiting.fetch_add(1, Ordering::AcqRel) >= core.max_waiters {
            core.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(LockError::TooManyWaiters);
        }
        core.metrics.lock_waiters.inc();
        Ok(Admitted(core))
    }

    /// The acquire script: a grant, a refusal, or the ticket queued.
    async fn first_call(
        &self,
        attempt: &Attempt<'_>,
        wait_ms: u64,
    ) -> Result<AcquireOutcome, CallFailed> {
        let core = &self.core;
        let name = attempt.name;
        let call = AcquireCall {
            permits: attempt.request.permits,
            lease_ms: attempt.request.lease_ms,
            wait_ms,
            replica: core.replica.clone(),
            ticket: attempt.ticket().to_owned(),
            nonce: attempt.nonce.clone(),
            fence_floor: core.fences.floor(name),
        };
        self.calls.acquire(name, call).await
    }

    /// The answer to a first call that did not queue.
    fn settle_first_call(
        &self,
        attempt: &mut Attempt<'_>,
        outcome: Result<AcquireOutcome, CallFailed>,
    ) -> Result<Grant, LockError> {
        match outcome {
            Ok(AcquireOutcome::Granted(grant)) => {
                let sent = attempt.started;
                self.granted_by_call(attempt, grant, sent)
            }
            Ok(AcquireOutcome::PermitsMismatch(existing)) => {
                attempt.settled();
                Err(LockError::PermitsMismatch(existing))
            }
            Ok(AcquireOutcome::Busy | AcquireOutcome::Queued(_)) => {
                attempt.settled();
                Err(self.timed_out())
            }
            // Only a call that outlived its own request sees this.
            Ok(AcquireOutcome::GaveUp) => Err(LockError::RedisUnavailable),
            Err(failed) => {
                // No connection, so nothing reached Redis: nothing to undo.
                if !failed.maybe_ran {
                    attempt.settled();
                }
                Err(failed.error)
            }
        }
    }

    /// The wait is over: the slot came, the time is up, or the caller left.
    async fn settle(
        &self,
        attempt: &mut Attempt<'_>,
        outcome: &mut Inbox,
        ended: WaitEnded,
    ) -> Result<Grant, LockError> {
        match ended {
            // The worker answers only grants whose lease cannot be over yet.
            WaitEnded::Answered(Ok(grant)) => Ok(self.granted(attempt, grant)),
            // Whoever answered with an error left Redis as it should be (or
            // left the clean-up that makes it so).
            WaitEnded::Answered(Err(error)) => {
                attempt.settled();
                Err(error)
            }
            WaitEnded::CallerLeft => {
                self.core.count("acquire", "caller_gone");
                Err(LockError::CallerGone)
            }
            WaitEnded::TimeUp => {
                if self.core.waiters.take(attempt.ticket()).is_none() {
                    // The worker is claiming an offer for us: a caller still here takes it.
                    return self.claim_under_way(attempt, outcome).await;
                }
                self.cancel(attempt).await
            }
        }
    }

    /// The wait ran out: a slot offered meanwhile is still ours, else we leave the queue.
    async fn cancel(&self, attempt: &mut Attempt<'_>) -> Result<Grant, LockError> {
        let core = &self.core;
        let (name, ticket, lease_ms) = (attempt.name, attempt.ticket(), attempt.request.lease_ms);
        let cancel =
            |mut conn| async move { core.store.cancel(&mut conn, name, ticket, lease_ms).await };
        let sent = Instant::now();
        match redis_call(&self.pool, core.store.checkout_for_changes(), cancel).await? {
            Claimed::Granted(grant) => self.granted_by_call(attempt, grant, sent),
            Claimed::Nothing => {
                attempt.settled();
                Err(self.timed_out())
            }
        }
    }

    /// Waits, within [`CLAIM_BOUND`] after the deadline, for the claim the
    /// worker has under way for this request.
    async fn claim_under_way(
        &self,
        attempt: &mut Attempt<'_>,
        outcome: &mut Inbox,
    ) -> Result<Grant, LockError> {
        let until = attempt.deadline.max(Instant::now()) + CLAIM_BOUND;
        match tokio::time::timeout_at(until.into(), outcome).await {
            Ok(Ok(Ok(grant))) => Ok(self.granted(attempt, grant)),
            Ok(Ok(Err(error))) => Err(error),
            // A claim that lands later is released: this request has gone.
            Ok(Err(_)) | Err(_) => Err(LockError::RedisUnavailable),
        }
    }

    /// A grant made by this request's own call, sent at `sent`: answered
    /// unless its lease could be over by now, else handed back (503).
    fn granted_by_call(
        &self,
        attempt: &mut Attempt<'_>,
        grant: Grant,
        sent: Instant,
    ) -> Result<Grant, LockError> {
        if lease_may_be_over(sent, attempt.request.lease_ms) {
            attempt.settled();
            self.core.answered_too_late(attempt.name, grant);
            return Err(LockError::AnsweredTooLate);
        }
        Ok(self.granted(attempt, grant))
    }

    fn granted(&self, attempt: &mut Attempt<'_>, grant: Grant) -> Grant {
        attempt.settled();
        self.core.fences.saw(attempt.name, grant.fence);
        self.core.count("acquire", "granted");
        grant
    }

    fn timed_out(&self) -> LockError {
        self.core.count("acquire", "timeout");
        LockError::Timeout
    }
}

/// How a wait ended.
enum WaitEnded {
    /// The worker answered (a claimed slot, or an error).
    Answered(WaitOutcome),
    /// The deadline passed first.
    TimeUp,
    /// The caller hung up first.
    CallerLeft,
}

/// Holds a place under `LOCK_MAX_WAITERS` while a request waits, however it ends.
struct Admitted<'a>(&'a Core);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.lock_waiters.dec();
    }
}

/// One acquire as Redis may know it: its nonce (every grant made for it ends
/// its token), its ticket once it queues, and its deadline. Dropped before it
/// is settled (a call failed, or its caller left, or actix dropped the
/// request), it leaves a clean-up behind that undoes whatever Redis did for
/// it: a late call of it grants nothing, its ticket leaves the queue, an
/// offer to it moves on, and a grant made for it is released.
struct Attempt<'a> {
    core: &'a Arc<Core>,
    request: &'a AcquireRequest,
    name: &'a LockName,
    nonce: String,
    /// Empty until the request waits.
    ticket: String,
    /// When the request began: no call of it ran earlier.
    started: Instant,
    /// When the wait runs out (local clock).
    deadline: Instant,
    /// Nothing of it is left in Redis that needs undoing.
    settled: Cell<bool>,
}

impl<'a> Attempt<'a> {
    fn new(core: &'a Arc<Core>, request: &'a AcquireRequest) -> Self {
        let started = Instant::now();
        Self {
            core,
            request,
            name: &request.name,
            nonce: random_id(),
            ticket: String::new(),
            started,
            deadline: started + request.wait(),
            settled: Cell::new(false),
        }
    }

    fn ticket(&self) -> &str {
        &self.ticket
    }

    fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Registers the waiter under a new ticket, before the ticket reaches
    /// Redis (an offer can come back at once); returns where its outcome arrives.
    fn register(&mut self) -> Inbox {
        let (reply, outcome) = oneshot::channel();
        let outcome = Inbox {
            core: Arc::clone(self.core),
            name: self.name.clone(),
            outcome,
        };
        self.ticket = random_id();
        self.core.waiters.insert(
            self.ticket.clone(),
            Waiter {
                name: self.name.clone(),
                permits: self.request.permits,
                lease_ms: self.request.lease_ms,
                nonce: self.nonce.clone(),
                deadline: self.deadline,
                arrival_us: None,
                recheck_missed: false,
                reply,
            },
        );
        outcome
    }

    /// Nothing of this attempt needs undoing.
    fn settled(&self) {
        self.settled.set(true);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.settled.get() {
            return;
        }
        if !self.ticket.is_empty() {
            self.core.waiters.take(&self.ticket);
        }
        self.core.forget(self.name, &self.ticket, &self.nonce, true);
    }
}

/// Where a waiter's outcome arrives. A grant the worker claimed for it can
/// land after the request settled another way (its first call was granted
/// while a re-check queued and claimed its ticket too, or it gave up just
/// then): dropped unread, the inbox releases such a grant, which nobody holds.
struct Inbox {
    core: Arc<Core>,
    name: LockName,
    outcome: oneshot::Receiver<WaitOutcome>,
}

impl Future for Inbox {
    type Output = Result<WaitOutcome, oneshot::error::RecvError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.outcome).poll(cx)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // Closed first: a grant sent from now on comes back to its sender,
        // which releases it; one sent before is released here.
        self.outcome.close();
        if let Ok(Ok(unread)) = self.outcome.try_recv() {
            self.core.cleanup(Cleanup::Release {
                name: self.name.clone(),
                token: unread.token,
            });
        }
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
    use tokio::runtime::Handle;
    use tokio::sync::watch;

    use super::*;
    use crate::locks::engine::EngineSettings;
    use crate::locks::store::LockStore;
    use crate::locks::wake::WakeSource;
    use crate::metrics::Metrics;
    use crate::pools::redis::RedisPool;

    /// 10,000 waiters each hold an acquire future for up to `wait_ms`: it
    /// must stay small (it was 14 KB before the Redis calls were boxed).
    #[tokio::test]
    async fn a_waiting_acquire_is_small() {
        let pool = RedisPool::new("redis://127.0.0.1:1/0", 1).unwrap();
        let client = redis::Client::open("redis://127.0.0.1:1/0").unwrap();
        let (_drain, draining) = watch::channel(false);
        let engine = LockEngine::start(EngineSettings {
            store: LockStore::new("p:"),
            background_pool: pool,
            wake: WakeSource::new(vec![client]),
            max_waiters: 10,
            metrics: Metrics::new(),
            runtime: Handle::current(),
            draining,
        });
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
