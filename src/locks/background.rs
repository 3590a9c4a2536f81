//! The engine's background worker: one task that takes [`Event`]s and runs
//! what each asks for (claims, re-checks, reaping, clean-ups) as tasks of
//! its own, which it owns: they stop when the worker stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::alarms::AlarmClock;
use super::call::{CallFailed, lease_may_be_over, redis_call};
use super::core::Core;
use super::domain::{LockName, LockToken};
use super::error::LockError;
use super::events::{Cleanup, Event};
use super::store::{Claimed, Reaped, SyncCall, TicketState};
use super::waiters::{OfferFor, Waiter};
use crate::pools::redis::{Checkout, RedisPool};

/// Between two tries of a call that failed.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Tries of a re-check beyond the first (Redis may be restarting).
const SYNC_ATTEMPTS: usize = 20;

/// How long a clean-up keeps trying while Redis does not answer.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(300);

/// A reap that failed is tried again this soon.
const REAP_RETRY: Duration = Duration::from_millis(200);

/// Runs the worker until `inbox` closes or the task is aborted.
pub(crate) async fn run_worker(
    core: Arc<Core>,
    pool: RedisPool,
    mut inbox: mpsc::UnboundedReceiver<Event>,
) {
    let mut worker = Worker {
        alarms: AlarmClock::start(core.events.clone()),
        jobs: Jobs { core, pool },
        resyncing: HashMap::new(),
        tasks: JoinSet::new(),
    };
    loop {
        tokio::select! {
            event = inbox.recv() => match event {
                Some(event) => worker.handle(event),
                None => return,
            },
            Some(_) = worker.tasks.join_next() => {}
        }
    }
}

/// The worker's state: what it runs with, its alarms, the re-checks under
/// way, and its tasks.
struct Worker {
    jobs: Jobs,
    alarms: AlarmClock,
    /// Names being re-checked, and whether another re-check was asked for meanwhile.
    resyncing: HashMap<LockName, bool>,
    tasks: JoinSet<()>,
}

impl Worker {
    fn handle(&mut self, event: Event) {
        tracing::debug!(?event, "lock event");
        let jobs = self.jobs.clone();
        let core = &self.jobs.core;
        match event {
            Event::Offer {
                name,
                ticket,
                token,
            } => {
                self.tasks.spawn(jobs.claim_offer(name, ticket, token));
            }
            Event::Alarm { name, after } => {
                if core.waiters.waits_on(&name) {
                    self.alarms.set(&name, after);
                }
            }
            Event::Due(name) => {
                if core.waiters.waits_on(&name) {
                    self.tasks.spawn(jobs.reap(name));
                }
            }
            Event::Resync(name) => self.resync(name),
            Event::Resynced(name) => {
                if self.resyncing.remove(&name) == Some(true) {
                    self.resync(name);
                }
            }
            Event::Reconnected => {
                core.outage.store(false, Ordering::Release);
                for name in core.waiters.names() {
                    self.resync(name);
                }
            }
            Event::FailAll(error) => {
                if error == LockError::RedisUnavailable {
                    core.outage.store(true, Ordering::Release);
                }
                for (ticket, waiter) in core.waiters.take_all() {
                    // Counted before the answer goes out: a drain that sees
                    // the request answered also sees its clean-up pending.
                    core.forget(&waiter.name, &ticket, &waiter.nonce, false);
                    let _ = waiter.reply.send(Err(error));
                }
            }
            Event::Cleanup(cleanup) => {
                self.tasks.spawn(jobs.clean_up(cleanup));
            }
        }
    }

    /// Re-checks `name`'s tickets, one re-check at a time per name (a second
    /// one asked for meanwhile runs once the first is done).
    fn resync(&mut self, name: LockName) {
        if !self.jobs.core.waiters.waits_on(&name) {
            return;
        }
        match self.resyncing.get_mut(&name) {
            Some(again) => *again = true,
            None => {
                self.resyncing.insert(name.clone(), false);
                self.tasks.spawn(self.jobs.clone().resync(name));
            }
        }
    }
}

/// What each job runs with: the shared state and the worker's own pool.
#[derive(Clone)]
struct Jobs {
    core: Arc<Core>,
    pool: RedisPool,
}

impl Jobs {
    /// An offer of `name`'s slot to `ticket` arrived: claim it for the
    /// waiter, or pass it on when the waiter is not here.
    async fn claim_offer(self, name: LockName, ticket: String, token: LockToken) {
        let core = &self.core;
        let waiter = match core.waiters.take_for_claim(&ticket) {
            OfferFor::Waiter(waiter) => waiter,
            // A second copy of an offer being claimed.
            OfferFor::BeingClaimed => return,
            OfferFor::Nobody => return self.decline(name, ticket, token).await,
        };
        if waiter.reply.is_closed() {
            core.waiters.claim_ended(&ticket);
            return self.decline(name, ticket, token).await;
        }
        // A claim is idempotent (a repeat reports the grant the first one
        // made), so a call that failed is tried again until the wait is over:
        // a connection broken by a Redis restart must not cost a waiter its
        // slot. The lease began no earlier than the first call that may have run.
        let mut lease_from = None;
        let claimed = loop {
            let sent = Instant::now();
            let claimed = self.claim(&waiter, &ticket, &token).await;
            if !matches!(
                claimed,
                Err(CallFailed {
                    maybe_ran: false,
                    ..
                })
            ) {
                lease_from.get_or_insert(sent);
            }
            if claimed.is_ok()
                || Instant::now() >= waiter.deadline
                || waiter.reply.is_closed()
                || core.outage.load(Ordering::Acquire)
            {
                break claimed;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        };
        match claimed {
            Ok(Claimed::Granted(grant))
                if lease_from.is_some_and(|sent| lease_may_be_over(sent, waiter.lease_ms)) =>
            {
                core.waiters.claim_ended(&ticket);
                core.answered_too_late(&waiter.name, grant);
                let _ = waiter.reply.send(Err(LockError::AnsweredTooLate));
            }
            Ok(Claimed::Granted(grant)) => {
                core.waiters.claim_ended(&ticket);
                core.fences.saw(&waiter.name, grant.fence);
                core.count("acquire", "granted");
                if let Err(Ok(unwanted)) = waiter.reply.send(Ok(grant)) {
                    // The request left between our check and the grant.
                    core.cleanup(Cleanup::Release {
                        name: waiter.name,
                        token: unwanted.token,
                    });
                }
            }
            // The offer was passed on before we claimed it (we were slow, or
            // counted as gone): the waiter queues again, at its place, unless
            // its time is up.
            Ok(Claimed::Nothing) => match core.waiters.put_back(ticket, waiter) {
                Ok(()) => core.events.send(Event::Resync(name)),
                Err(waiter) => {
                    let _ = waiter.reply.send(Err(LockError::Timeout));
                }
            },
            Err(error) => {
                // The claim may have run: undo whatever it did.
                core.waiters.claim_ended(&ticket);
                core.forget(&waiter.name, &ticket, &waiter.nonce, true);
                let _ = waiter.reply.send(Err(error.into()));
            }
        }
    }

    async fn claim(
        &self,
        waiter: &Waiter,
        ticket: &str,
        token: &LockToken,
    ) -> Result<Claimed, CallFailed> {
        let core = &self.core;
        let claim = |mut conn| async move {
            core.store
                .claim(
                    &mut conn,
                    &waiter.name,
                    ticket,
                    token,
                    waiter.lease_ms,
                    &core.replica,
                )
                .await
        };
        redis_call(&self.pool, self.core.store.checkout_for_changes(), claim).await
    }

    /// Passes on an offer nobody here takes (a claimed grant is never touched).
    async fn decline(self, name: LockName, ticket: String, token: LockToken) {
        let (store, name, ticket, token) = (&self.core.store, &name, &ticket, &token);
        let decline = || {
            redis_call(&self.pool, Checkout::Shared, move |mut conn| async move {
                store.decline(&mut conn, name, ticket, token).await
            })
        };
        // An offer that is not passed on now ends at its claim deadline.
        let _ = retried(decline, 3).await;
    }

    /// Re-checks this replica's tickets of `name` against Redis: queues again
    /// (at their places) the ones Redis lost or skipped, claims offers
    /// waiting for them.
    async fn resync(self, name: LockName) {
        let core = &self.core;
        if let Some((permits, tickets)) = core.waiters.sync_tickets(&name) {
            let call = SyncCall {
                permits,
                replica: &core.replica,
                fence_floor: core.fences.floor(&name),
                tickets: &tickets,
            };
            let (name, call) = (&name, &call);
            let sync = || {
                redis_call(&self.pool, Checkout::Shared, move |mut conn| async move {
                    core.store.sync(&mut conn, name, call).await
                })
            };
            // Re-checks run when something went wrong: Redis may still be coming back.
            let synced = retried(sync, SYNC_ATTEMPTS).await;
            if let Ok(synced) = synced {
                for (waiting, state) in tickets.iter().zip(synced.tickets) {
                    match state {
                        TicketState::Queued | TicketState::Requeued | TicketState::GaveUp => {}
                        TicketState::Offered(token) => core.events.send(Event::Offer {
                            name: name.clone(),
                            ticket: waiting.ticket.clone(),
                            token,
                        }),
                        TicketState::Mismatch => {
                            if let Some(waiter) = core.waiters.take(&waiting.ticket) {
                                let mismatch = LockError::PermitsMismatch(synced.permits);
                                let _ = waiter.reply.send(Err(mismatch));
                            }
                        }
                    }
                }
                if let Some(after) = synced.next_in {
                    core.events.send(Event::Alarm {
                        name: name.clone(),
                        after,
                    });
                }
            }
        }
        core.events.send(Event::Resynced(name));
    }

    /// `name`'s alarm rang: end what expired, serve the queue, set the next alarm.
    async fn reap(self, name: LockName) {
        let core = &self.core;
        let named = &name;
        let reap = |mut conn| async move { core.store.reap(&mut conn, named, &core.replica).await };
        let event = match redis_call(&self.pool, Checkout::Shared, reap).await {
            Ok(Reaped::Reaped { expired, next_in }) => {
                core.metrics.lock_expiries.inc_by(expired);
                let Some(after) = next_in else { return };
                Event::Alarm { name, after }
            }
            // Redis lost the lock: its waiters here queue again.
            Ok(Reaped::Missing) => Event::Resync(name),
            // Try again shortly: the wake connection notices a real outage.
            Err(_) => Event::Alarm {
                name,
                after: REAP_RETRY,
            },
        };
        core.events.send(event);
    }

    /// Runs `cleanup`, retrying until Redis answers or the work no longer
    /// matters (what it undoes has expired by then).
    async fn clean_up(self, cleanup: Cleanup) {
        let core = &self.core;
        let give_up = Instant::now() + CLEANUP_PATIENCE;
        let mut pause = Duration::from_millis(50);
        // Only a release is confirmed by replicas (WAIT).
        let checkout = match cleanup {
            Cleanup::Forget { .. } => Checkout::Shared,
            Cleanup::Release { .. } => core.store.checkout_for_changes(),
        };
        loop {
            let cleanup = &cleanup;
            let attempt = |mut conn| async move {
                match cleanup {
                    Cleanup::Forget {
                        name,
                        ticket,
                        nonce,
                        scan,
                    } => core
                        .store
                        .forget(&mut conn, name, ticket, nonce, *scan)
                        .await
                        .map(drop),
                    Cleanup::Release { name, token } => {
                        core.store.release(&mut conn, name, token).await.map(drop)
                    }
                }
            };
            if redis_call(&self.pool, checkout, attempt).await.is_ok() || Instant::now() >= give_up
            {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
        core.cleanups.finish();
    }
}

/// `call()`, tried up to `1 + attempts` times while it fails.
async fn retried<T, F: Future<Output = Result<T, super::call::CallFailed>>>(
    mut call: impl FnMut() -> F,
    attempts: usize,
) -> Result<T, super::call::CallFailed> {
    let mut outcome = call().await;
    for _ in 0..attempts {
        if outcome.is_ok() {
            break;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
        outcome = call().await;
    }
    outcome
}
