//! Where reads go: the primary (`DATABASE_URL`) and the read replicas
//! (`DATABASE_READ_URLS`), each endpoint with pools of its own, and which
//! replicas take reads now.
//!
//! A replica takes reads while its last probe answered and its lag is within
//! `DB_REPLICA_MAX_LAG_MS` (`heartbeat` measures both); a read that fails on
//! it takes it out at once, and the probes bring it back. Among the replicas
//! in rotation a read goes to the one with the fewest reads in flight on its
//! worker; with none in rotation, the primary serves. `transcriptions` asks
//! for "a reader" and, on a miss, "the primary": it never picks hosts.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use sqlx::mysql::MySqlConnectOptions;
use tokio::sync::watch;

use super::mysql::{ConnectionBudget, MysqlPools, WorkerPool};
use crate::config::DatabaseSettings;
use crate::metrics::Metrics;

/// One endpoint of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `DATABASE_URL`.
    Primary,
    /// The n-th entry of `DATABASE_READ_URLS` (from 0).
    Replica(usize),
}

/// Every endpoint's pools and health, shared by the process.
pub(crate) struct ReadEndpoints {
    primary: EndpointPools,
    replicas: Vec<EndpointPools>,
    /// `DB_READ_MISS_PRIMARY`.
    miss_primary: bool,
    metrics: Metrics,
}

/// One endpoint: its pools, its name in metrics and logs, whether it takes reads.
pub(crate) struct EndpointPools {
    /// `primary`, `replica-1`, `replica-2`, ... (the metrics' `endpoint` label).
    pub(crate) label: String,
    /// `host:port`, for logs (no credentials).
    pub(crate) address: String,
    /// How the probes connect.
    pub(crate) options: MySqlConnectOptions,
    pub(crate) pools: Arc<MysqlPools>,
    /// A replica: answering and caught up. The primary: answering.
    serving: AtomicBool,
    /// `mysql_reads_total{endpoint}`, resolved once.
    reads: IntCounter,
}

impl EndpointPools {
    fn new(
        label: String,
        options: MySqlConnectOptions,
        database: &DatabaseSettings,
        workers: usize,
        draining: &watch::Receiver<bool>,
        metrics: &Metrics,
    ) -> Self {
        let address = format!("{}:{}", options.get_host(), options.get_port());
        Self {
            reads: metrics.mysql_reads.with_label_values(&[&label]),
            pools: MysqlPools::new(options.clone(), database, workers, draining.clone()),
            options,
            label,
            address,
            // The primary is assumed to answer until it does not; a replica
            // takes reads once a probe has found it caught up.
            serving: AtomicBool::new(false),
        }
    }

    /// Whether this endpoint takes reads now.
    pub(crate) fn serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }
}

impl ReadEndpoints {
    /// The primary and the replicas of `database`, each with pools for
    /// `workers` HTTP workers; nothing connects yet.
    pub(crate) fn new(
        database: &DatabaseSettings,
        workers: usize,
        draining: watch::Receiver<bool>,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let endpoint = |label: String, options: MySqlConnectOptions| {
            EndpointPools::new(label, options, database, workers, &draining, metrics)
        };
        let primary = endpoint("primary".into(), database.connect_options());
        primary.serving.store(true, Ordering::Relaxed);
        let replicas: Vec<EndpointPools> = database
            .replica_connect_options()
            .iter()
            .enumerate()
            .map(|(n, options)| endpoint(format!("replica-{}", n + 1), options.clone()))
            .collect();
        for replica in &replicas {
            tracing::info!(endpoint = %replica.label, address = %replica.address, "read replica");
        }
        Arc::new(Self {
            primary,
            replicas,
            miss_primary: database.read_miss_primary,
            metrics: metrics.clone(),
        })
    }

    /// The primary's pools and state.
    pub(crate) fn primary(&self) -> &EndpointPools {
        &self.primary
    }

    /// The replicas, in `DATABASE_READ_URLS` order.
    pub(crate) fn replicas(&self) -> &[EndpointPools] {
        &self.replicas
    }

    /// Every endpoint: the primary first, then the replicas.
    pub(crate) fn all(&self) -> impl Iterator<Item = &EndpointPools> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }

    fn get(&self, endpoint: Endpoint) -> &EndpointPools {
        match endpoint {
            Endpoint::Primary => &self.primary,
            Endpoint::Replica(n) => &self.replicas[n],
        }
    }

    /// What the probes found: `serving` says whether `endpoint` takes reads.
    /// An endpoint that stopped answering has its connections forgotten, so
    /// none made before the failure is reused after it.
    pub(crate) fn set_serving(&self, endpoint: Endpoint, serving: bool, answered: bool) {
        let pools = self.get(endpoint);
        let was = pools.serving.swap(serving, Ordering::Relaxed);
        if !answered && was {
            pools.pools.forget_connections();
        }
        if was != serving {
            tracing::info!(endpoint = %pools.label, serving, "MySQL endpoint rotation");
        }
        self.metrics
            .mysql_endpoint_serving
            .with_label_values(&[&pools.label])
            .set(i64::from(serving));
    }

    /// A read failed on `endpoint` (connection error, dead server, timeout):
    /// a replica leaves the rotation at once, and its connections made
    /// before the failure are closed rather than reused. The primary stays
    /// as it is: one failed read (a connection MySQL dropped while idle, a
    /// connect that the fleet budget's wait left no time for) says little
    /// about the others, and the heartbeat watches it.
    fn failed(&self, endpoint: Endpoint) {
        if let Endpoint::Replica(_) = endpoint {
            // Forgotten even if the probes took it out already.
            self.get(endpoint).pools.forget_connections();
            self.set_serving(endpoint, false, false);
        }
    }

    /// Opens the calling HTTP worker's pools of every endpoint, each under
    /// the budget `budget` gives for it (`DB_FLEET_MAX`). Call it on that
    /// worker's runtime.
    pub(crate) fn open_for_worker(
        self: &Arc<Self>,
        budget: impl Fn(usize) -> Option<Rc<dyn ConnectionBudget>>,
    ) -> Rc<WorkerReads> {
        let primary = self.primary.pools.open_for_worker(budget(0));
        let replicas = self
            .replicas
            .iter()
            .enumerate()
            .map(|(n, replica)| replica.pools.open_for_worker(budget(n + 1)))
            .collect();
        Rc::new(WorkerReads {
            shared: Arc::clone(self),
            primary,
            replicas,
            cursor: Cell::new(0),
        })
    }

    /// (open, idle) connections of every endpoint, by label.
    pub(crate) fn sizes(&self) -> Vec<(&str, (usize, usize))> {
        self.all()
            .map(|e| (e.label.as_str(), e.pools.sizes()))
            .collect()
    }

    /// Waits (at most `patience` in all) until every endpoint's pools are closed.
    pub(crate) async fn closed(&self, patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        for endpoint in self.all() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            endpoint.pools.closed(left).await;
        }
    }
}

/// One HTTP worker's view: its pool of each endpoint, and the choice of one.
pub(crate) struct WorkerReads {
    shared: Arc<ReadEndpoints>,
    primary: Rc<WorkerPool>,
    replicas: Vec<Rc<WorkerPool>>,
    /// Where the next search for the least busy replica starts, so equally
    /// busy replicas take turns.
    cursor: Cell<usize>,
}

impl WorkerReads {
    /// The endpoint for the next read: the replica in rotation with the
    /// fewest reads in flight here (other than `avoid`), or the primary.
    pub(crate) fn reader(&self, avoid: Option<Endpoint>) -> Endpoint {
        let count = self.replicas.len();
        if count == 0 {
            return Endpoint::Primary;
        }
        let start = self.cursor.get();
        self.cursor.set((start + 1) % count);
        (0..count)
            .map(|k| (start + k) % count)
            .filter(|&n| avoid != Some(Endpoint::Replica(n)) && self.shared.replicas[n].serving())
            .min_by_key(|&n| self.replicas[n].reads_in_flight())
            .map_or(Endpoint::Primary, Endpoint::Replica)
    }

    /// This worker's pool of `endpoint`.
    pub(crate) fn pool(&self, endpoint: Endpoint) -> &Rc<WorkerPool> {
        match endpoint {
            Endpoint::Primary => &self.primary,
            Endpoint::Replica(n) => &self.replicas[n],
        }
    }

    /// Counts a query sent to `endpoint`.
    pub(crate) fn count_read(&self, endpoint: Endpoint) {
        self.shared.get(endpoint).reads.inc();
    }

    /// A read failed on `endpoint`; see [`ReadEndpoints::failed`].
    pub(crate) fn failed(&self, endpoint: Endpoint) {
        self.shared.failed(endpoint);
    }

    /// Whether ids missing in a read from `endpoint` must be looked up on
    /// the primary before they are called missing (`DB_READ_MISS_PRIMARY`).
    pub(crate) fn recheck_misses(&self, endpoint: Endpoint) -> bool {
        self.shared.miss_primary && endpoint != Endpoint::Primary
    }

    /// Whether another endpoint could take a read that failed on
    /// `endpoint`: after a replica, another replica or the primary; the
    /// primary is chosen only when no replica serves.
    pub(crate) fn has_alternative(&self, endpoint: Endpoint) -> bool {
        endpoint != Endpoint::Primary
    }

    /// Queries this worker may run at once: the capacity of the endpoints
    /// taking reads (the primary's when no replica does).
    pub(crate) fn max_queries(&self) -> usize {
        let replicas: usize = self
            .replicas
            .iter()
            .zip(&self.shared.replicas)
            .filter(|(_, shared)| shared.serving())
            .map(|(pool, _)| pool.capacity())
            .sum();
        if replicas == 0 {
            self.primary.capacity()
        } else {
            replicas
        }
    }

    /// How long a read may wait for a connection (`DB_ACQUIRE_TIMEOUT_MS`).
    pub(crate) fn acquire_timeout(&self) -> Duration {
        self.primary.acquire_timeout()
    }

    /// Whether some replica takes reads now (readiness: reads can be
    /// served while the primary is away).
    pub(crate) fn any_replica_serving(&self) -> bool {
        self.shared.replicas.iter().any(EndpointPools::serving)
    }
}
