//! `DB_FLEET_MAX`: one MySQL connection budget for every replica together,
//! per MySQL endpoint (the primary, and each read replica).
//!
//! The budget is a lock of the service's own engine, `~mysql-fleet` for the
//! primary and `~mysql-fleet:<host>:<port>` for a read replica, with
//! `permits = DB_FLEET_MAX`: a replica holds one grant (a *slot*) per MySQL
//! connection it has open, so however many replicas run, the fleet never
//! holds more connections than the budget. Waiting for a slot is waiting on
//! that lock: fleet-wide FIFO, no polling.
//!
//! - Slots follow the load: a worker's pool asks for one only to open a new
//!   connection; when other replicas are queued for slots, every replica
//!   closes connections idle for 0.5 s and hands their slots back.
//! - Each replica keeps one slot when idle, so its reads never start from nothing.
//! - Slots are leases ([`SLOT_LEASE`]) renewed every [`RENEW_EVERY`]; a replica
//!   killed with `kill -9` loses its slots when their leases end.
//! - Redis down: the replica keeps the slots it holds until their leases end,
//!   then falls back to one connection (the minimum) until Redis answers
//!   again. The fleet may then exceed the budget by one connection per
//!   replica: a replica must not stop reading because Redis is down.
//! - A lost slot (its lease expired while Redis was away, or Redis lost its
//!   data) closes a connection as soon as one is idle.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::LocalBoxFuture;
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::locks::{
    AcquireRequest, ExtendRequest, LockEngine, LockError, LockName, LockToken, ReleaseRequest,
};
use crate::metrics::Metrics;
use crate::pools::mysql::{AcquireError, BudgetSlot, ConnectionBudget};

/// A slot's lease: how long a killed replica's slots stay taken.
pub(crate) const SLOT_LEASE: Duration = Duration::from_secs(10);
/// How often slots are renewed, demand is checked and spare slots go back.
const RENEW_EVERY: Duration = Duration::from_millis(500);
/// A slot is renewed once less than this much of its lease is left.
const RENEW_WHEN_LEFT: Duration = Duration::from_secs(7);
/// Slots a replica keeps while idle.
const KEEP_WHEN_IDLE: usize = 1;

/// The replica's share of the fleet budget.
pub(crate) struct FleetBudget {
    name: LockName,
    /// The endpoint's label in metrics (`primary`, `replica-1`, ...).
    endpoint: String,
    permits: u32,
    held: Mutex<Held>,
    /// The last call to Redis failed: the fallback minimum applies.
    redis_down: AtomicBool,
    /// Other replicas are queued for slots.
    wanted_elsewhere: AtomicBool,
    /// This replica's own requests queued for slots.
    own_waiting: AtomicUsize,
    /// The engine of the renewal task (on the main runtime).
    engine: LockEngine,
    runtime: Handle,
    metrics: Metrics,
}

/// The slots held, and how many have a connection.
#[derive(Default)]
struct Held {
    slots: Vec<HeldSlot>,
    in_use: usize,
}

struct HeldSlot {
    token: LockToken,
    /// When its lease ends on this machine's clock (renewals move it).
    until: Instant,
}

impl FleetBudget {
    /// The budget of `permits` connections, through `engine` (which runs on
    /// the main runtime). Starts the renewal task; it stops when draining
    /// begins, and [`Self::give_back_all`] then returns every slot.
    pub(crate) fn start(
        (name, endpoint): (LockName, String),
        permits: u32,
        engine: LockEngine,
        metrics: Metrics,
        draining: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let runtime = Handle::current();
        let budget = Arc::new(Self {
            name,
            endpoint,
            permits,
            held: Mutex::default(),
            redis_down: AtomicBool::new(false),
            wanted_elsewhere: AtomicBool::new(false),
            own_waiting: AtomicUsize::new(0),
            engine,
            runtime: runtime.clone(),
            metrics,
        });
        runtime.spawn(Arc::clone(&budget).keep(draining));
        budget
    }

    /// The budget as one HTTP worker's pool uses it: asking for slots
    /// through that worker's own engine (its own Redis pool and thread).
    pub(crate) fn for_worker(self: &Arc<Self>, engine: LockEngine) -> Rc<dyn ConnectionBudget> {
        Rc::new(WorkerBudget {
            fleet: Arc::clone(self),
            engine,
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections this replica may have open now.
    fn allowance(&self, held: &Held) -> usize {
        let floor = if self.redis_down.load(Ordering::Relaxed) {
            KEEP_WHEN_IDLE
        } else {
            0
        };
        held.slots.len().max(floor)
    }

    /// A slot already held and unused (or the fallback), if any.
    fn take_spare(self: &Arc<Self>) -> Option<BudgetSlot> {
        let mut held = self.held();
        if held.in_use >= self.allowance(&held) {
            return None;
        }
        held.in_use += 1;
        Some(Box::new(SlotInUse(Arc::clone(self))))
    }

    /// A slot for one more connection: a spare one, or a new grant from
    /// Redis (waiting up to `wait` in the fleet's queue).
    async fn lease(
        self: &Arc<Self>,
        engine: &LockEngine,
        wait: Duration,
    ) -> Result<BudgetSlot, AcquireError> {
        if let Some(slot) = self.take_spare() {
            return Ok(slot);
        }
        let request = AcquireRequest {
            name: self.name.clone(),
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            lease_ms: millis(SLOT_LEASE),
            permits: self.permits,
        };
        let asked = Instant::now();
        let outcome = {
            // Counted while queued (a dropped wait uncounts itself too).
            let _queued = OwnWait::start(&self.own_waiting);
            engine.acquire(&request, std::future::pending()).await
        };
        let outcome = match outcome {
            Ok(grant) => {
                self.redis_down.store(false, Ordering::Relaxed);
                let mut held = self.held();
                held.slots.push(HeldSlot {
                    token: grant.token,
                    until: asked + SLOT_LEASE,
                });
                held.in_use += 1;
                self.metrics
                    .mysql_fleet_permits
                    .with_label_values(&[&self.endpoint])
                    .set(gauge(held.slots.len()));
                Ok(Box::new(SlotInUse(Arc::clone(self))) as BudgetSlot)
            }
            Err(LockError::Timeout | LockError::TooManyWaiters) => Err(AcquireError::Exhausted),
            Err(LockError::Draining) => Err(AcquireError::Closed),
            Err(error) => {
                if !matches!(
                    error,
                    LockError::RedisUnavailable | LockError::AnsweredTooLate
                ) {
                    tracing::error!(%error, "the fleet budget's lock refused a slot");
                }
                self.redis_down.store(true, Ordering::Relaxed);
                self.take_spare().ok_or(AcquireError::Exhausted)
            }
        };
        let label = match &outcome {
            Ok(_) if self.redis_down.load(Ordering::Relaxed) => "fallback",
            Ok(_) => "granted",
            Err(_) => "exhausted",
        };
        self.metrics
            .mysql_fleet_leases
            .with_label_values(&[&self.endpoint, label])
            .inc();
        outcome
    }

    /// A connection closed: its slot is spare now, and goes back to the
    /// fleet at once when others wait for one.
    fn slot_returned(self: &Arc<Self>) {
        let mut held = self.held();
        held.in_use = held.in_use.saturating_sub(1);
        if self.wanted_elsewhere.load(Ordering::Relaxed) {
            let spare = self.take_surplus(&mut held);
            drop(held);
            if !spare.is_empty() {
                self.runtime.spawn(Arc::clone(self).give_back(spare));
            }
        }
    }

    /// Removes the slots held beyond those in use and the idle minimum.
    fn take_surplus(&self, held: &mut Held) -> Vec<LockToken> {
        let keep = held.in_use.max(KEEP_WHEN_IDLE);
        let surplus = held.slots.len().saturating_sub(keep);
        let tokens: Vec<LockToken> = held.slots.drain(..surplus).map(|slot| slot.token).collect();
        self.metrics
            .mysql_fleet_permits
            .with_label_values(&[&self.endpoint])
            .set(gauge(held.slots.len()));
        tokens
    }

    /// Releases `tokens` to the fleet (a failed release ends with its lease).
    async fn give_back(self: Arc<Self>, tokens: Vec<LockToken>) {
        for token in tokens {
            let request = ReleaseRequest {
                name: self.name.clone(),
                token,
            };
            if let Err(error) = self.engine.release(&request).await {
                tracing::debug!(%error, "returning a fleet slot failed; its lease will end it");
            }
        }
    }

    /// Renews slots, watches the fleet's queue and returns spare slots,
    /// until draining begins.
    async fn keep(self: Arc<Self>, mut draining: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(RENEW_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = draining.wait_for(|d| *d) => return,
            }
            self.renew().await;
            self.watch_queue().await;
            let spare = self.take_surplus(&mut self.held());
            if !spare.is_empty() {
                Arc::clone(&self).give_back(spare).await;
            }
        }
    }

    /// Extends the slots whose lease is running low; forgets those the
    /// fleet no longer grants (expired, or Redis lost its data) and those
    /// whose lease ran out while Redis did not answer.
    async fn renew(&self) {
        let now = Instant::now();
        let due: Vec<LockToken> = self
            .held()
            .slots
            .iter()
            .filter(|slot| slot.until.saturating_duration_since(now) < RENEW_WHEN_LEFT)
            .map(|slot| slot.token.clone())
            .collect();
        for token in due {
            let request = ExtendRequest {
                name: self.name.clone(),
                token: token.clone(),
                lease_ms: millis(SLOT_LEASE),
            };
            let asked = Instant::now();
            let renewed = match self.engine.extend(&request).await {
                Ok(_grant) => {
                    self.redis_down.store(false, Ordering::Relaxed);
                    Some(asked + SLOT_LEASE)
                }
                Err(LockError::NotHeld(reason)) => {
                    tracing::warn!(reason = reason.as_str(), "a fleet slot was lost");
                    None
                }
                Err(_unavailable) => {
                    self.redis_down.store(true, Ordering::Relaxed);
                    continue;
                }
            };
            let mut held = self.held();
            match renewed {
                Some(until) => held
                    .slots
                    .iter_mut()
                    .filter(|slot| slot.token == token)
                    .for_each(|slot| slot.until = until),
                None => held.slots.retain(|slot| slot.token != token),
            }
        }
        let mut held = self.held();
        let now = Instant::now();
        held.slots.retain(|slot| slot.until > now);
        self.metrics
            .mysql_fleet_permits
            .with_label_values(&[&self.endpoint])
            .set(gauge(held.slots.len()));
    }

    /// Whether other replicas are queued for slots.
    async fn watch_queue(&self) {
        match self.engine.waiting(&self.name).await {
            Ok(waiting) => {
                let own = self.own_waiting.load(Ordering::Relaxed);
                let others = usize::try_from(waiting).unwrap_or(usize::MAX) > own;
                self.wanted_elsewhere.store(others, Ordering::Relaxed);
            }
            Err(_unavailable) => self.wanted_elsewhere.store(false, Ordering::Relaxed),
        }
    }

    /// At shutdown, once the pools are closed: every slot goes back at once
    /// (not at the end of its lease), for the replicas that stay.
    pub(crate) async fn give_back_all(self: &Arc<Self>) {
        let tokens: Vec<LockToken> = {
            let mut held = self.held();
            held.slots.drain(..).map(|slot| slot.token).collect()
        };
        self.metrics
            .mysql_fleet_permits
            .with_label_values(&[&self.endpoint])
            .set(0);
        Arc::clone(self).give_back(tokens).await;
    }
}

/// One of this replica's own requests queued for a slot, until dropped.
struct OwnWait<'a>(&'a AtomicUsize);

impl<'a> OwnWait<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for OwnWait<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's slot; dropping it marks the slot spare.
struct SlotInUse(Arc<FleetBudget>);

impl Drop for SlotInUse {
    fn drop(&mut self) {
        self.0.slot_returned();
    }
}

/// The budget as one worker's pool sees it.
struct WorkerBudget {
    fleet: Arc<FleetBudget>,
    engine: LockEngine,
}

impl ConnectionBudget for WorkerBudget {
    fn lease(&self, wait: Duration) -> LocalBoxFuture<'_, Result<BudgetSlot, AcquireError>> {
        Box::pin(self.fleet.lease(&self.engine, wait))
    }

    fn over_budget(&self) -> bool {
        let held = self.fleet.held();
        held.in_use > self.fleet.allowance(&held)
    }

    fn wanted_elsewhere(&self) -> bool {
        self.fleet.wanted_elsewhere.load(Ordering::Relaxed)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn gauge(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}
