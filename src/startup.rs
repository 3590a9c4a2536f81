//! Building and running the service: settings → pools → state → listeners →
//! run → drain.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle};
use actix_web::web;
use tokio::sync::watch;

use crate::auth::{AuthCounters, AuthSettings, Identities};
use crate::config::{ConfigError, Settings};
use crate::crypto::install_provider;
use crate::fleet::FleetBudget;
use crate::http::admin::AdminState;
use crate::http::middleware::overload::InFlightLimit;
use crate::http::peer::{PeerWatch, SweeperGuard};
use crate::http::tls::ListenerCertificate;
use crate::http::{AppState, admin_server, public_server};
use crate::locks::{EngineSettings, LockEngine, LockName, LockStore, WakeSource};
use crate::metrics::Metrics;
use crate::pools::heartbeat::Heartbeat;
use crate::pools::redis::RedisPools;
use crate::pools::redis_target::{RedisTarget, invalid_redis_url};
use crate::pools::replicas::ReadEndpoints;
use crate::pools::tls::{verify_mysql, verify_redis};
use crate::transcriptions::ReadCoalescer;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A setting is unusable (exit code 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound, or similar (exit code 1).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Starts graceful shutdown: readiness turns 503 at once; the replica keeps
/// serving for `SHUTDOWN_DELAY_S` while endpoints and load balancers drop it
/// (what a preStop pause does, without needing a hook), then the listeners
/// stop accepting and in-flight requests finish within the shutdown timeout.
#[derive(Clone)]
pub struct ShutdownTrigger {
    /// Flips to true first: readiness watches it.
    leaving: Arc<watch::Sender<bool>>,
    /// Flips to true after the delay: the lock engine, the pools and
    /// `Application::run_until_stopped` watch it, and drain.
    draining: Arc<watch::Sender<bool>>,
    delay: Duration,
}

impl ShutdownTrigger {
    /// Begins shutdown; a second call during the delay drains at once (an
    /// operator's second Ctrl-C, or a second SIGTERM, means now).
    /// Call within the Tokio runtime.
    pub fn trigger(&self) {
        if self.leaving.send_replace(true) || self.delay.is_zero() {
            self.drain_now();
            return;
        }
        tracing::info!(
            delay_s = self.delay.as_secs(),
            "shutdown requested: unready, serving on while load balancers drop this replica"
        );
        let (draining, delay) = (self.clone(), self.delay);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            draining.drain_now();
        });
    }

    fn drain_now(&self) {
        self.leaving.send_replace(true);
        if !self.draining.send_replace(true) {
            tracing::info!("draining");
        }
    }
}

/// A built, bound, not yet running service.
pub struct Application {
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    public: Server,
    admin: Server,
    /// Each worker's pools close (COM_QUIT) once its reads are done.
    mysql: Arc<ReadEndpoints>,
    /// Writes the replica heartbeat and probes the replicas (with
    /// `DATABASE_READ_URLS`); stops with the application.
    _heartbeat: Option<tokio::task::JoinSet<()>>,
    /// Closed after the drain.
    redis: Arc<RedisPools>,
    /// The fleet budgets' slots go back once the pools are closed.
    fleet: Vec<Arc<FleetBudget>>,
    /// The lock engine: the drain lets the work requests left behind finish
    /// before Redis closes.
    locks: LockEngine,
    /// Requests being served, which the drain waits for.
    metrics: Metrics,
    /// How long the drain may take.
    drain_timeout: Duration,
    /// Stops the hang-up sweeper thread when the application is dropped.
    _sweeper: SweeperGuard,
    /// Re-reads the listener's certificate files (HTTPS only); stops with the application.
    _certificate_reloads: Option<AbortOnDrop>,
    /// Re-reads `AUTH_FILE` (on change and SIGHUP); stops with the application.
    _identity_reloads: AbortOnDrop,
    shutdown: ShutdownTrigger,
}

impl Application {
    /// Binds both listeners and creates the pools. Pools connect lazily, so
    /// the service starts (not ready) even while MySQL or Redis is down; a
    /// backend reached over TLS is tried once first, so a certificate that
    /// does not verify stops the start (see `pools::tls`).
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        install_provider();
        let redis_target = RedisTarget::from_settings(&settings)?;
        verify_redis(&redis_target, settings.redis_tls_ca_file.is_some()).await?;
        verify_mysql(&settings.database).await?;
        let workers = settings
            .workers
            .unwrap_or_else(|| default_workers(settings.database.pool_max));
        tracing::info!(workers, "HTTP workers");
        let metrics = Metrics::new();
        metrics
            .http_workers
            .set(i64::try_from(workers).unwrap_or(i64::MAX));
        let (leaving, leave_watch) = watch::channel(false);
        let (draining, drain_watch) = watch::channel(false);
        let mysql = ReadEndpoints::new(&settings.database, workers, drain_watch.clone(), &metrics);
        let heartbeat = Heartbeat::start(
            &mysql,
            settings.database.replica_max_lag,
            &metrics,
            drain_watch.clone(),
        );
        let redis = Arc::new(RedisPools::new(
            &redis_target,
            settings.redis_pool_max,
            workers,
        )?);
        let identities = Identities::load(
            AuthSettings {
                api_keys: settings.api_keys.keys().to_vec(),
                file: settings.auth_file.clone(),
                disabled: settings.auth_disabled,
                aws_audience: settings.aws_audience.clone(),
                aws_sts_endpoints: settings.aws_sts_endpoints.clone(),
            },
            AuthCounters {
                reloads: metrics.auth_reloads.clone(),
                verifications: metrics.auth_verifications.clone(),
            },
        )
        .map_err(|why| ConfigError::new("AUTH_FILE", why))?;
        let identity_reloads = AbortOnDrop(tokio::spawn(Arc::clone(&identities).keep_fresh()));
        let (peers, sweeper) = PeerWatch::start()?;
        let wake = wake_source(&redis_target)?;
        let state = app_state(
            &settings,
            &mysql,
            (&redis, wake),
            &metrics,
            (peers, identities),
            (leave_watch, drain_watch),
        );
        let fleet = state.fleet.clone();
        let locks = state.locks.clone();
        let admin_state = web::Data::new(AdminState {
            metrics: metrics.clone(),
            mysql: Arc::clone(&mysql),
            redis: Arc::clone(&redis),
        });

        let listener = bind_listener(settings.bind_addr, "BIND_ADDR")?;
        let public_addr = listener.local_addr()?;
        let certificate = settings
            .listener_tls
            .as_ref()
            .map(|files| ListenerCertificate::load(files, metrics.clone()))
            .transpose()?;
        let certificate_reloads = certificate
            .clone()
            .map(|certificate| AbortOnDrop(tokio::spawn(certificate.keep_fresh())));
        let public = public_server(listener, state, workers, certificate)?;
        let admin_listener = bind_listener(settings.admin_bind_addr, "ADMIN_BIND_ADDR")?;
        let admin_addr = admin_listener.local_addr()?;
        let admin = admin_server(admin_listener, admin_state)?;

        Ok(Self {
            fleet,
            _heartbeat: heartbeat,
            locks,
            public_addr,
            admin_addr,
            public,
            admin,
            mysql,
            redis,
            metrics,
            drain_timeout: settings.shutdown_timeout,
            _sweeper: sweeper,
            _certificate_reloads: certificate_reloads,
            _identity_reloads: identity_reloads,
            shutdown: ShutdownTrigger {
                leaving: Arc::new(leaving),
                draining: Arc::new(draining),
                delay: settings.shutdown_delay,
            },
        })
    }

    /// The public listener's address (port 0 in settings becomes a real port here).
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// A handle that starts graceful shutdown (SIGTERM does the same).
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        self.shutdown.clone()
    }

    /// Serves until SIGTERM/SIGINT (or the trigger), then drains: stop
    /// accepting, let in-flight requests finish (within the shutdown
    /// timeout), let every worker close its MySQL pool (COM_QUIT on every
    /// connection, on the worker's own runtime), stop the servers, close Redis.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let trigger = self.shutdown.clone();
        let signals = tokio::spawn(async move {
            wait_for_signal().await;
            trigger.trigger();
        });
        let drain = Drain {
            draining: self.shutdown.draining.subscribe(),
            public: self.public.handle(),
            admin: self.admin.handle(),
            mysql: Arc::clone(&self.mysql),
            fleet: self.fleet.clone(),
            locks: self.locks.clone(),
            metrics: self.metrics.clone(),
            timeout: self.drain_timeout,
        };
        let draining = tokio::spawn(drain.run());
        let (public, admin) = tokio::join!(self.public, self.admin);
        signals.abort();
        draining.abort();
        self.redis.close();
        tracing::info!("stopped");
        public.and(admin)
    }
}

/// The shutdown sequence, once draining begins.
struct Drain {
    draining: watch::Receiver<bool>,
    public: ServerHandle,
    admin: ServerHandle,
    mysql: Arc<ReadEndpoints>,
    fleet: Vec<Arc<FleetBudget>>,
    locks: LockEngine,
    metrics: Metrics,
    timeout: Duration,
}

impl Drain {
    async fn run(mut self) {
        if self.draining.wait_for(|d| *d).await.is_err() {
            return;
        }
        let deadline = Instant::now() + self.timeout;
        self.public.pause().await;
        while self.metrics.requests_in_flight.get() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Waiters were answered 503 at once: their tickets leave the queues
        // before Redis closes, so nobody waits behind them.
        self.locks
            .settled(deadline.saturating_duration_since(Instant::now()))
            .await;
        self.mysql
            .closed(deadline.saturating_duration_since(Instant::now()))
            .await;
        for fleet in &self.fleet {
            fleet.give_back_all().await;
        }
        tokio::join!(self.public.stop(true), self.admin.stop(true));
    }
}

/// The public listener's state: both capabilities over the pools, and what
/// the middlewares and probes need.
fn app_state(
    settings: &Settings,
    mysql: &Arc<ReadEndpoints>,
    (redis, wake): (&Arc<RedisPools>, WakeSource),
    metrics: &Metrics,
    (peers, identities): (PeerWatch, Arc<Identities>),
    (leaving, draining): (watch::Receiver<bool>, watch::Receiver<bool>),
) -> AppState {
    // DB_POOL_MAX per endpoint: the bound the pool gauges, summed over the
    // endpoints, are measured against.
    let endpoints = 1 + settings.database.replica_connect_options().len();
    metrics
        .mysql_pool_max
        .set(i64::from(settings.database.pool_max) * endpoints as i64);
    metrics
        .lock_max_waiters
        .set(i64::try_from(settings.lock_max_waiters).unwrap_or(i64::MAX));
    // The lock engine's tasks run on this (the main) runtime, which outlives
    // the HTTP workers.
    let backend = tokio::runtime::Handle::current();
    let store =
        LockStore::new(&settings.redis_key_prefix).with_replica_acks(settings.lock_replica_acks);
    let locks = LockEngine::start(EngineSettings {
        store,
        background_pool: redis.background().clone(),
        wake,
        max_waiters: settings.lock_max_waiters,
        metrics: metrics.clone(),
        runtime: backend,
        draining: draining.clone(),
    });
    // One budget per endpoint: the primary's lock keeps its v1.1 name, a
    // replica's is named by its address (the same for every service replica).
    let fleet = match settings.database.fleet_max {
        None => Vec::new(),
        Some(permits) => mysql
            .all()
            .map(|endpoint| {
                let name = match endpoint.label.as_str() {
                    "primary" => LockName::internal("mysql-fleet"),
                    _ => LockName::internal(&format!("mysql-fleet:{}", endpoint.address)),
                };
                let engine = locks.for_worker(redis.background().clone());
                let id = (name, endpoint.label.clone());
                FleetBudget::start(id, permits, engine, metrics.clone(), draining.clone())
            })
            .collect(),
    };
    AppState {
        mysql: Arc::clone(mysql),
        coalescer: ReadCoalescer::new(),
        locks,
        redis: Arc::clone(redis),
        fleet,
        leaving,
        readiness: Arc::default(),
        auth: web::Data::new(identities),
        limit: web::Data::new(InFlightLimit::new(settings.max_in_flight)),
        metrics: web::Data::new(metrics.clone()),
        peers: web::Data::new(peers),
    }
}

/// Where the lock engine's one wake connection subscribes: the server, or
/// any of the cluster's seed nodes.
fn wake_source(target: &RedisTarget) -> Result<WakeSource, ConfigError> {
    let clients = target
        .nodes()
        .iter()
        .map(|node| redis::Client::open(node.clone()).map_err(|_| invalid_redis_url()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(WakeSource::new(clients))
}

/// Pending connections the kernel queues before `accept` (capped by
/// `net.core.somaxconn`). `std`'s default of 128 overflows when hundreds of
/// cold functions connect at once, costing each overflow a 1 s SYN retry.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listener with a deliberate backlog. (actix's own `backlog()`
/// applies only to addresses actix binds itself, not to a listener handed to
/// it.) Errors name the setting, e.g. "BIND_ADDR 0.0.0.0:8080: Address already in use".
fn bind_listener(addr: SocketAddr, variable: &str) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let bind = || -> std::io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        // A restarted replica can rebind while old connections sit in TIME_WAIT.
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        Ok(socket.into())
    };
    bind().map_err(|e| std::io::Error::new(e.kind(), format!("{variable} {addr}: {e}")))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; SIGTERM will not drain");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// One HTTP worker per core the process may use: Rust's
/// `available_parallelism` reads the cgroup's CPU quota (v1 and v2), so a
/// container limited to 2 CPUs on a 64-core node runs 2 workers, not 64.
/// Never more workers than MySQL connections: each worker reads over its own
/// share of `DB_POOL_MAX`, and a worker with no share could never answer a read.
fn default_workers(pool_max: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    cores
        .min(usize::try_from(pool_max).unwrap_or(usize::MAX))
        .max(1)
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
