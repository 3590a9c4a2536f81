//! The MySQL pools of one endpoint (the primary, or a read replica): one
//! per HTTP worker, `DB_POOL_MAX` split between them.
//!
//! A worker's pool is used from that worker's thread only, so it is a plain
//! LIFO of idle connections behind a semaphore: a read never wakes another
//! thread, checking a connection out or in spawns no task, and a connection
//! whose query completed goes straight back (sqlx's general pool spawns a
//! task and sends MySQL a COM_PING on every return: two round trips per read;
//! bench/README.md, "Read path").
//!
//! At shutdown each worker closes its own pool on its own runtime once its
//! last read has finished: every connection ends with COM_QUIT (MySQL counts
//! no aborted client), and no read in flight is cut off.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::LocalBoxFuture;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{Connection, MySqlConnection, MySqlPool};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use crate::config::DatabaseSettings;

/// A connection idle for longer than this is pinged before use, so one the
/// server dropped (wait_timeout, restart) is replaced instead of failing a
/// read. Busy connections skip the round trip.
const PING_AFTER_IDLE: Duration = Duration::from_secs(30);
/// Idle longer than this, a connection is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Connections are replaced after this long, so a replica's connections
/// spread again over the servers behind a load balancer (Aurora readers).
const MAX_LIFETIME: Duration = Duration::from_secs(1800);

/// A budget the pools lease connection slots from before opening a
/// connection (`DB_FLEET_MAX`: a budget shared by every replica). Each open
/// connection holds one slot, returned when the connection closes.
pub(crate) trait ConnectionBudget {
    /// A slot for one more connection, waiting at most `wait`.
    fn lease(&self, wait: Duration) -> LocalBoxFuture<'_, Result<BudgetSlot, AcquireError>>;
    /// Whether this replica holds more connections than slots (a lease was
    /// lost): connections are then closed instead of kept idle.
    fn over_budget(&self) -> bool;
    /// Whether other replicas wait for slots: idle connections are then
    /// closed, so their slots can move.
    fn wanted_elsewhere(&self) -> bool;
}

/// One connection's slot of a [`ConnectionBudget`]; dropping it gives it back.
pub(crate) type BudgetSlot = Box<dyn std::any::Any>;

/// How often a pool under a budget looks for idle connections to close.
const TRIM_EVERY: Duration = Duration::from_millis(250);
/// Idle this long while other replicas wait for slots, a connection is closed.
const TRIM_IDLE_AFTER: Duration = Duration::from_millis(500);

/// Why no connection could be checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcquireError {
    /// None came free within `DB_ACQUIRE_TIMEOUT_MS`.
    Exhausted,
    /// MySQL refused or did not answer a new connection.
    Unreachable,
    /// The pool is closed (shutdown).
    Closed,
}

/// The serving pools of one endpoint on one replica.
pub(crate) struct MysqlPools {
    /// How to connect.
    options: MySqlConnectOptions,
    acquire_timeout: Duration,
    /// Connections each worker may open: the total split between workers,
    /// the first `remainder` opened getting one more, so the shares add up
    /// to `DB_POOL_MAX` exactly.
    per_worker: usize,
    remainder: usize,
    /// Flips to true at shutdown: each pool then closes once quiet.
    draining: watch::Receiver<bool>,
    /// What every opened pool reports (read from other threads).
    opened: Mutex<Vec<Arc<PoolReport>>>,
    /// Connections opened before the current generation are closed instead
    /// of reused (see [`Self::forget_connections`]).
    generation: Arc<AtomicU64>,
}

/// What a worker's pool tells the rest of the process.
#[derive(Default)]
struct PoolReport {
    /// Connections open (idle or in use).
    open: AtomicUsize,
    /// Connections idle.
    idle: AtomicUsize,
    /// True once the pool is closed.
    closed: watch::Sender<bool>,
}

/// One HTTP worker's pool. Not `Send`: it never leaves its worker's thread.
pub(crate) struct WorkerPool {
    options: MySqlConnectOptions,
    /// The endpoint's connection generation (shared by its workers' pools).
    generation: Arc<AtomicU64>,
    acquire_timeout: Duration,
    /// The worker's bound: its share of `DB_POOL_MAX`.
    capacity: usize,
    /// One permit per connection that may be in use.
    permits: Arc<Semaphore>,
    /// Idle connections, most recently used last.
    idle: RefCell<Vec<IdleConnection>>,
    /// Reads running now; the pool does not close before they end.
    reads: Cell<usize>,
    /// Woken when `reads` drops to zero.
    quiet: Notify,
    report: Arc<PoolReport>,
    /// The fleet budget, when `DB_FLEET_MAX` is set.
    budget: Option<Rc<dyn ConnectionBudget>>,
}

struct IdleConnection {
    conn: MySqlConnection,
    generation: u64,
    born: Instant,
    since: Instant,
    slot: Option<BudgetSlot>,
}

/// A checked-out connection: back to the pool when dropped, unless it failed.
pub(crate) struct PooledConnection {
    conn: Option<MySqlConnection>,
    generation: u64,
    born: Instant,
    pool: Rc<WorkerPool>,
    slot: Option<BudgetSlot>,
    _permit: OwnedSemaphorePermit,
}

/// A read in flight on a worker's pool; the pool does not close before it ends.
pub(crate) struct ReadInFlight(Rc<WorkerPool>);

impl Drop for ReadInFlight {
    fn drop(&mut self) {
        let reads = self.0.reads.get() - 1;
        self.0.reads.set(reads);
        if reads == 0 {
            self.0.quiet.notify_waiters();
        }
    }
}

impl MysqlPools {
    /// Pools for `workers` HTTP workers over the endpoint `options` names,
    /// with `DB_POOL_MAX` and `DB_ACQUIRE_TIMEOUT_MS` from `database`;
    /// nothing connects until a read needs it.
    pub(crate) fn new(
        options: MySqlConnectOptions,
        database: &DatabaseSettings,
        workers: usize,
        draining: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let total = usize::try_from(database.pool_max).unwrap_or(usize::MAX);
        Arc::new(Self {
            per_worker: (total / workers.max(1)).max(1),
            remainder: total % workers.max(1),
            options,
            acquire_timeout: database.acquire_timeout,
            draining,
            opened: Mutex::default(),
            generation: Arc::default(),
        })
    }

    /// Every connection open now is closed instead of reused, in every
    /// worker's pool: the endpoint failed (its server restarted, or its DNS
    /// name now points at another server), so new connections resolve and
    /// connect afresh. Safe from any thread.
    pub(crate) fn forget_connections(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Opens the pool of the calling HTTP worker. Call it on that worker's
    /// runtime (its app factory runs there): the pool's connections and, at
    /// shutdown, its closing run there.
    pub(crate) fn open_for_worker(
        &self,
        budget: Option<Rc<dyn ConnectionBudget>>,
    ) -> Rc<WorkerPool> {
        let report = Arc::new(PoolReport::default());
        let capacity = {
            let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
            opened.push(Arc::clone(&report));
            self.per_worker + usize::from(opened.len() <= self.remainder)
        };
        let pool = Rc::new(WorkerPool {
            options: self.options.clone(),
            generation: Arc::clone(&self.generation),
            acquire_timeout: self.acquire_timeout,
            capacity,
            permits: Arc::new(Semaphore::new(capacity)),
            idle: RefCell::default(),
            reads: Cell::new(0),
            quiet: Notify::new(),
            report,
            budget,
        });
        if pool.budget.is_some() {
            tokio::task::spawn_local(trim_while_open(Rc::downgrade(&pool)));
        }
        let (closing, mut draining) = (Rc::clone(&pool), self.draining.clone());
        tokio::task::spawn_local(async move {
            if draining.wait_for(|d| *d).await.is_ok() {
                closing.close_when_quiet().await;
            }
        });
        pool
    }

    /// Connections open and idle, over every worker's pool.
    pub(crate) fn sizes(&self) -> (usize, usize) {
        let opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        opened.iter().fold((0, 0), |(open, idle), r| {
            (
                open + r.open.load(Ordering::Relaxed),
                idle + r.idle.load(Ordering::Relaxed),
            )
        })
    }

    /// Waits (at most `patience`) until every worker has closed its pool.
    pub(crate) async fn closed(&self, patience: Duration) {
        let reports: Vec<_> = self
            .opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(Arc::clone)
            .collect();
        let all = async {
            for report in reports {
                let _ = report.closed.subscribe().wait_for(|c| *c).await;
            }
        };
        if tokio::time::timeout(patience, all).await.is_err() {
            tracing::warn!("MySQL pools still busy at the end of the drain: closing anyway");
        }
    }
}

impl WorkerPool {
    /// Most connections this pool holds at once (its share of `DB_POOL_MAX`).
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// How long a read may wait for a connection (`DB_ACQUIRE_TIMEOUT_MS`).
    pub(crate) fn acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }

    /// Reads running now on this worker's pool.
    pub(crate) fn reads_in_flight(&self) -> usize {
        self.reads.get()
    }

    /// Counts a read until the returned guard drops.
    pub(crate) fn begin_read(self: &Rc<Self>) -> ReadInFlight {
        self.reads.set(self.reads.get() + 1);
        ReadInFlight(Rc::clone(self))
    }

    /// A connection, waiting up to the acquire timeout for one to come free.
    pub(crate) async fn acquire(self: &Rc<Self>) -> Result<PooledConnection, AcquireError> {
        let started = Instant::now();
        let permit = match tokio::time::timeout(
            self.acquire_timeout,
            Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(AcquireError::Closed),
            Err(_elapsed) => return Err(AcquireError::Exhausted),
        };
        while let Some(idle) = self.take_idle() {
            // A connection given up here returns its budget slot once closed.
            let IdleConnection {
                mut conn,
                generation,
                born,
                since,
                slot,
            } = idle;
            // Its endpoint failed since (the server may be gone or moved),
            // or it is old: closed rather than reused.
            let stale = generation != self.current_generation();
            if stale || since.elapsed() > IDLE_TIMEOUT || born.elapsed() > MAX_LIFETIME {
                self.retire(conn, slot);
                continue;
            }
            if since.elapsed() > PING_AFTER_IDLE && conn.ping().await.is_err() {
                self.forget_one();
                continue;
            }
            return Ok(self.checked_out(conn, generation, born, slot, permit));
        }
        // A new connection needs a slot of the fleet budget first, if there is one.
        let slot = match &self.budget {
            Some(budget) => {
                let left = self.acquire_timeout.saturating_sub(started.elapsed());
                Some(budget.lease(left).await?)
            }
            None => None,
        };
        let left = self.acquire_timeout.saturating_sub(started.elapsed());
        let generation = self.current_generation();
        match tokio::time::timeout(left, MySqlConnection::connect_with(&self.options)).await {
            Ok(Ok(conn)) => {
                self.report.open.fetch_add(1, Ordering::Relaxed);
                Ok(self.checked_out(conn, generation, Instant::now(), slot, permit))
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %describe(&error), "MySQL connection failed");
                Err(AcquireError::Unreachable)
            }
            Err(_elapsed) => Err(AcquireError::Unreachable),
        }
    }

    fn current_generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn take_idle(&self) -> Option<IdleConnection> {
        let idle = self.idle.borrow_mut().pop()?;
        self.report.idle.fetch_sub(1, Ordering::Relaxed);
        Some(idle)
    }

    fn checked_out(
        self: &Rc<Self>,
        conn: MySqlConnection,
        generation: u64,
        born: Instant,
        slot: Option<BudgetSlot>,
        permit: OwnedSemaphorePermit,
    ) -> PooledConnection {
        PooledConnection {
            conn: Some(conn),
            generation,
            born,
            pool: Rc::clone(self),
            slot,
            _permit: permit,
        }
    }

    /// Under a budget: closes idle connections this replica may no longer
    /// hold (a lease was lost) or that other replicas are waiting for.
    fn trim_idle(&self) {
        let Some(budget) = &self.budget else { return };
        loop {
            let over = budget.over_budget();
            let idle_enough = |c: &IdleConnection| over || c.since.elapsed() >= TRIM_IDLE_AFTER;
            if !over && !budget.wanted_elsewhere() {
                return;
            }
            // The least recently used first: the others are likelier to be reused.
            let position = self.idle.borrow().iter().position(idle_enough);
            let Some(position) = position else { return };
            let IdleConnection { conn, slot, .. } = self.idle.borrow_mut().remove(position);
            self.report.idle.fetch_sub(1, Ordering::Relaxed);
            self.retire(conn, slot);
        }
    }

    /// A connection that failed: dropped without ceremony.
    fn forget_one(&self) {
        self.report.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A healthy connection no longer wanted: closed with COM_QUIT, in the
    /// background. Its budget slot goes back only once it is closed, so the
    /// fleet never holds more connections than the budget, even for a moment.
    fn retire(&self, conn: MySqlConnection, slot: Option<BudgetSlot>) {
        self.forget_one();
        tokio::task::spawn_local(async move {
            let _ = conn.close().await;
            drop(slot);
        });
    }

    /// Closes the pool once no read is in flight: every idle connection
    /// with COM_QUIT; a read that comes later is refused.
    async fn close_when_quiet(&self) {
        loop {
            let quiet = self.quiet.notified();
            if self.reads.get() == 0 {
                break;
            }
            quiet.await;
        }
        self.permits.close();
        let idle: Vec<IdleConnection> = std::mem::take(&mut *self.idle.borrow_mut());
        for connection in idle {
            self.report.idle.fetch_sub(1, Ordering::Relaxed);
            self.forget_one();
            let _ = connection.conn.close().await;
        }
        self.report.closed.send_replace(true);
    }
}

impl PooledConnection {
    /// The connection.
    pub(crate) fn conn(&mut self) -> &mut MySqlConnection {
        // Present until drop or `discard`.
        self.conn.as_mut().expect("a checked-out connection")
    }

    /// Drops the connection instead of returning it (after an error or a
    /// timeout its state is unknown).
    pub(crate) fn discard(mut self) {
        if self.conn.take().is_some() {
            self.pool.forget_one();
        }
    }
}

/// Trims a budgeted pool's idle connections until the pool is gone or closed.
async fn trim_while_open(pool: std::rc::Weak<WorkerPool>) {
    loop {
        tokio::time::sleep(TRIM_EVERY).await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.permits.is_closed() {
            return;
        }
        pool.trim_idle();
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let over_budget = self.pool.budget.as_ref().is_some_and(|b| b.over_budget());
        let stale = self.generation != self.pool.current_generation();
        if self.pool.permits.is_closed() || over_budget || stale {
            // Shutting down, more connections than budget slots, or its
            // endpoint failed since it was opened: close it properly.
            self.pool.retire(conn, self.slot.take());
            return;
        }
        self.pool.idle.borrow_mut().push(IdleConnection {
            conn,
            generation: self.generation,
            born: self.born,
            since: Instant::now(),
            slot: self.slot.take(),
        });
        self.pool.report.idle.fetch_add(1, Ordering::Relaxed);
    }
}

/// A small pool for `migrate` and `seed`, connected at once so a wrong URL
/// fails before any work starts.
pub async fn tool_pool(database: &DatabaseSettings) -> Result<MySqlPool, sqlx::Error> {
    MySqlPoolOptions::new()
        .max_connections(4)
        .connect_with(database.connect_options())
        .await
}

/// A sqlx error without the URL or credentials it may carry.
pub fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}
