//! What the engine shares with the tasks that work for its waiters (the wake
//! loop, the alarm clock, clean-ups), and the operations those tasks run:
//! claim an offer, re-check a lock's tickets, reap at a deadline, and finish
//! what a lost reply or a departed caller left behind.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use super::alarms::AlarmClock;
use super::domain::{LockName, LockToken};
use super::error::LockError;
use super::fences::FenceFloors;
use super::store::{
    Claimed, LockStore, Replica, SyncTicket, TicketState, is_not_replicated, random_id,
};
use super::waiters::Waiters;
use crate::metrics::Metrics;
use crate::pools::redis::RedisPool;

/// A bound on every Redis call a request or a task makes: past it Redis
/// counts as unreachable for that call.
pub(crate) const REDIS_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Between two tries of a call that failed.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Tries of a `sync` beyond the first (Redis may be restarting).
const SYNC_ATTEMPTS: usize = 20;

/// How long a clean-up keeps trying while Redis does not answer.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(300);

/// A background task of the engine (spawned on `Core::runtime`).
pub(crate) type Task = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Shared by every copy of the engine and its tasks.
pub(crate) struct Core {
    /// Scripts and key names.
    pub store: LockStore,
    /// This replica in the scripts: id and wake list.
    pub replica: Replica,
    /// Requests waiting here, by ticket.
    pub waiters: Waiters,
    /// Highest fence seen per name.
    pub fences: FenceFloors,
    /// Reaps a lock at its next deadline while it has waiters here.
    pub alarms: AlarmClock,
    /// Connections for the tasks' calls (on `runtime`).
    pub pool: RedisPool,
    /// Lock metrics.
    pub metrics: Metrics,
    /// Where the tasks run: the main runtime, which outlives HTTP workers.
    pub runtime: Handle,
    /// Requests waiting now, against `max_waiters`.
    pub waiting: AtomicUsize,
    /// Set by the wake loop while Redis has been unreachable past its grace.
    pub outage: AtomicBool,
    /// `LOCK_MAX_WAITERS`.
    pub max_waiters: usize,
}

/// Work left behind by a request that could not finish it: retried until
/// Redis answers, or until it no longer matters.
#[derive(Debug)]
pub(crate) enum Cleanup {
    /// A waiter gave up: drop its ticket, pass on an offer to it; with
    /// `scan`, release a grant made for `nonce` whose reply was lost.
    Forget {
        name: LockName,
        ticket: String,
        nonce: String,
        scan: bool,
    },
    /// An offer for a waiter that is no longer here: pass it on.
    Decline {
        name: LockName,
        ticket: String,
        token: LockToken,
        fence: u64,
    },
    /// A grant nobody received: release it.
    Release { name: LockName, token: LockToken },
}

/// Runs one Redis call with a time bound. The call is boxed before the
/// returned future exists: Redis client futures are kilobytes, and inlined
/// they would size every waiting request's future (held up to `wait_ms`) to match.
pub(crate) fn bounded<'a, T: 'a>(
    call: impl Future<Output = redis::RedisResult<T>> + 'a,
) -> impl Future<Output = Result<T, LockError>> + 'a {
    let call = Box::pin(call);
    async move {
        match tokio::time::timeout(REDIS_CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) if is_not_replicated(&error) => {
                tracing::warn!(%error, "lock change not confirmed by Redis replicas");
                Err(LockError::NotReplicated)
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "Redis call failed");
                Err(LockError::RedisUnavailable)
            }
            Err(_) => {
                tracing::warn!("Redis call timed out");
                Err(LockError::RedisUnavailable)
            }
        }
    }
}

impl Core {
    /// The core, with an alarm clock (on the current runtime) that reaps
    /// through it.
    pub(crate) fn new(
        store: LockStore,
        pool: RedisPool,
        metrics: Metrics,
        runtime: Handle,
        max_waiters: usize,
    ) -> Arc<Self> {
        let id = random_id();
        let replica = Replica {
            wake: store.wake_key(&id),
            id,
        };
        Arc::new_cyclic(|core: &Weak<Core>| {
            let core = core.clone();
            let alarms = AlarmClock::start(move |name| {
                if let Some(core) = core.upgrade() {
                    let task = Arc::clone(&core);
                    core.runtime.spawn(async move { task.reap(name).await });
                }
            });
            Core {
                store,
                replica,
                waiters: Waiters::default(),
                fences: FenceFloors::default(),
                alarms,
                pool,
                metrics,
                runtime,
                waiting: AtomicUsize::new(0),
                outage: AtomicBool::new(false),
                max_waiters,
            }
        })
    }

    /// Counts a lock operation's outcome.
    pub(crate) fn count(&self, op: &str, outcome: &str) {
        self.metrics
            .lock_operations
            .with_label_values(&[op, outcome])
            .inc();
    }

    /// Sets the alarm of `name` when its next deadline is known and requests wait on it here.
    pub(crate) fn arm(&self, name: &LockName, next_in: Option<Duration>) {
        if let Some(after) = next_in
            && self.waiters.waits_on(name)
        {
            self.alarms.set(name, after);
        }
    }

    /// An offer of `name`'s slot to `ticket` arrived (wake list or `sync`):
    /// claim it for the waiter, or pass it on when the waiter is not here.
    pub(crate) fn take_offer(
        self: Arc<Self>,
        name: LockName,
        ticket: String,
        token: LockToken,
        fence: u64,
    ) -> Task {
        Box::pin(async move { self.claim_offer(name, ticket, token, fence).await })
    }

    async fn claim_offer(
        self: Arc<Self>,
        name: LockName,
        ticket: String,
        token: LockToken,
        fence: u64,
    ) {
        let Some(waiter) = self.waiters.take(&ticket) else {
            // Not ours to claim (the waiter left, or its own cancel took the
            // offer): a pending offer moves on; a claimed grant is untouched.
            self.cleanup(Cleanup::Decline {
                name,
                ticket,
                token,
                fence,
            });
            return;
        };
        if waiter.reply.is_closed() {
            self.cleanup(Cleanup::Decline {
                name: waiter.name,
                ticket,
                token,
                fence,
            });
            return;
        }
        // A claim is idempotent (a repeat reports the grant the first one
        // made), so a call that failed is tried again until the wait is over:
        // a connection broken by a Redis restart must not cost a waiter its slot.
        let mut claimed = self.claim(&waiter, &ticket, &token, fence).await;
        while claimed.is_err()
            && Instant::now() < waiter.deadline
            && !waiter.reply.is_closed()
            && !self.outage.load(Ordering::Acquire)
        {
            tokio::time::sleep(RETRY_PAUSE).await;
            claimed = self.claim(&waiter, &ticket, &token, fence).await;
        }
        match claimed {
            Ok(Claimed::Granted(grant)) => {
                self.fences.saw(&waiter.name, grant.fence);
                self.count("acquire", "granted");
                if let Err(Ok(unwanted)) = waiter.reply.send(Ok(grant)) {
                    // The request left between our check and the grant.
                    self.cleanup(Cleanup::Release {
                        name: waiter.name,
                        token: unwanted.token,
                    });
                }
            }
            // The offer was passed on before we claimed it (we were slow, or
            // counted as gone): the waiter queues again unless its time is up.
            Ok(Claimed::Nothing) => {
                let name = waiter.name.clone();
                match self.waiters.put_back(ticket, waiter) {
                    Ok(()) => {
                        let sync = Arc::clone(&self).sync(name);
                        self.runtime.spawn(sync);
                    }
                    Err(waiter) => {
                        let _ = waiter.reply.send(Err(LockError::Timeout));
                    }
                }
            }
            Err(error) => {
                // The claim may have run: undo it whatever it did.
                self.cleanup(Cleanup::Forget {
                    name: waiter.name,
                    ticket,
                    nonce: waiter.nonce,
                    scan: true,
                });
                let _ = waiter.reply.send(Err(error));
            }
        }
    }

    async fn claim(
        &self,
        waiter: &super::waiters::Waiter,
        ticket: &str,
        token: &LockToken,
        fence: u64,
    ) -> Result<Claimed, LockError> {
        bounded(async {
            let mut conn = self.pool.connection().await?;
            self.store
                .claim(
                    &mut conn,
                    &waiter.name,
                    ticket,
                    (token, fence),
                    waiter.lease_ms,
                    &self.replica,
                )
                .await
        })
        .await
    }

    /// Re-checks this replica's tickets of `name` against Redis: queues again
    /// the ones Redis lost or skipped, claims offers waiting for them.
    pub(crate) fn sync(self: Arc<Self>, name: LockName) -> Task {
        Box::pin(async move { self.sync_tickets(name).await })
    }

    async fn sync_tickets(self: Arc<Self>, name: LockName) {
        let mine = self.waiters.of(&name);
        let Some(permits) = mine.first().map(|w| w.1) else {
            return;
        };
        let tickets: Vec<SyncTicket<'_>> = mine
            .iter()
            .map(|(ticket, _, lease_ms, wait_left_ms, nonce)| SyncTicket {
                ticket,
                lease_ms: *lease_ms,
                wait_left_ms: *wait_left_ms,
                nonce,
            })
            .collect();
        let floor = self.fences.floor(&name);
        let call = || async {
            let mut conn = self.pool.connection().await?;
            self.store
                .sync(&mut conn, &name, permits, &self.replica, floor, &tickets)
                .await
        };
        // Syncing runs when something went wrong; Redis may still be coming back.
        let mut synced = bounded(call()).await;
        for _ in 0..SYNC_ATTEMPTS {
            if synced.is_ok() {
                break;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
            synced = bounded(call()).await;
        }
        let Ok(synced) = synced else {
            return;
        };
        for ((ticket, ..), state) in mine.iter().zip(synced.tickets) {
            match state {
                TicketState::Queued | TicketState::Requeued | TicketState::GaveUp => {}
                TicketState::Offered { token, fence } => {
                    let offer =
                        Arc::clone(&self).take_offer(name.clone(), ticket.clone(), token, fence);
                    self.runtime.spawn(offer);
                }
                TicketState::Mismatch => {
                    if let Some(waiter) = self.waiters.take(ticket) {
                        let _ = waiter
                            .reply
                            .send(Err(LockError::PermitsMismatch(synced.permits)));
                    }
                }
            }
        }
        self.arm(&name, synced.next_in);
    }

    /// `name`'s alarm rang: end what expired, serve the queue, set the next alarm.
    pub(crate) async fn reap(self: Arc<Self>, name: LockName) {
        if !self.waiters.waits_on(&name) {
            return;
        }
        let call = async {
            let mut conn = self.pool.connection().await?;
            self.store.reap(&mut conn, &name, &self.replica).await
        };
        match bounded(call).await {
            Ok(reaped) => {
                self.metrics.lock_expiries.inc_by(reaped.expired);
                self.arm(&name, reaped.next_in);
            }
            // Try again shortly: the wake loop notices a real outage.
            Err(_) => self.alarms.set(&name, Duration::from_millis(200)),
        }
    }

    /// Answers every waiter here with `error` and drops their tickets.
    pub(crate) fn fail_all(self: &Arc<Self>, error: LockError) {
        for (ticket, waiter) in self.waiters.take_all() {
            let _ = waiter.reply.send(Err(error));
            self.cleanup(Cleanup::Forget {
                name: waiter.name,
                ticket,
                nonce: waiter.nonce,
                scan: false,
            });
        }
    }

    /// Runs `cleanup` in a task of its own, retrying until Redis answers or
    /// the work no longer matters (what it undoes has expired by then).
    pub(crate) fn cleanup(self: &Arc<Self>, cleanup: Cleanup) {
        let core = Arc::clone(self);
        self.runtime
            .spawn(async move { core.run_cleanup(cleanup).await });
    }

    async fn run_cleanup(&self, cleanup: Cleanup) {
        // Offers expire by themselves after a few seconds and tickets with
        // their wait. A grant nobody received outlives this only when Redis
        // stays unreachable longer: then its lease ends it.
        let give_up = Instant::now() + CLEANUP_PATIENCE;
        let mut pause = Duration::from_millis(50);
        loop {
            let call = async {
                let mut conn = self.pool.connection().await?;
                match &cleanup {
                    Cleanup::Forget {
                        name,
                        ticket,
                        nonce,
                        scan,
                    } => self
                        .store
                        .forget(&mut conn, name, ticket, nonce, *scan)
                        .await
                        .map(drop),
                    Cleanup::Decline {
                        name,
                        ticket,
                        token,
                        fence,
                    } => self
                        .store
                        .decline(&mut conn, name, ticket, (token, *fence))
                        .await
                        .map(drop),
                    Cleanup::Release { name, token } => {
                        self.store.release(&mut conn, name, token).await.map(drop)
                    }
                }
            };
            if bounded(call).await.is_ok() || Instant::now() >= give_up {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}
