//! Building and running the service: settings → pools → state → listeners →
//! run → drain.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::web;
use sqlx::MySqlPool;
use tokio::sync::watch;

use crate::config::{ConfigError, Settings};
use crate::http::admin::AdminState;
use crate::http::health::Readiness;
use crate::http::middleware::auth::AuthPolicy;
use crate::http::middleware::overload::InFlightLimit;
use crate::http::peer::{PeerWatch, SweeperGuard};
use crate::http::{AppState, admin_server, public_server};
use crate::locks::LockEngine;
use crate::metrics::Metrics;
use crate::pools::mysql::serving_pool;
use crate::pools::redis::{RedisPools, invalid_redis_url};
use crate::transcriptions::{TranscriptionReader, TranscriptionRepo};

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

/// Starts graceful shutdown: readiness turns 503 at once, the listeners stop
/// accepting, in-flight requests finish within the shutdown timeout.
#[derive(Clone)]
pub struct ShutdownTrigger {
    /// Flips to true once: readiness and the lock engine watch it.
    draining: Arc<watch::Sender<bool>>,
    public: ServerHandle,
    admin: ServerHandle,
}

impl ShutdownTrigger {
    /// Begins the drain; idempotent.
    pub fn trigger(&self) {
        if self.draining.send_replace(true) {
            return;
        }
        tracing::info!("shutdown requested: draining");
        // The stop commands are sent on call; the returned futures only report completion.
        drop(self.public.stop(true));
        drop(self.admin.stop(true));
    }
}

/// A built, bound, not yet running service.
pub struct Application {
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    public: Server,
    admin: Server,
    /// Closed after the drain, so MySQL sees COM_QUIT on every connection.
    mysql: MySqlPool,
    /// Closed after the drain.
    redis: Arc<RedisPools>,
    /// Stops the hang-up sweeper thread when the application is dropped.
    _sweeper: SweeperGuard,
    shutdown: ShutdownTrigger,
}

impl Application {
    /// Binds both listeners and creates the pools. Pools connect lazily, so
    /// the service starts (not ready) even while MySQL or Redis is down.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let metrics = Metrics::new();
        let mysql = serving_pool(&settings.database);
        let redis = Arc::new(RedisPools::new(
            settings.redis_url.expose(),
            settings.redis_pool_max,
            workers,
        )?);
        let (draining, drain_watch) = watch::channel(false);
        let (peers, sweeper) = PeerWatch::start()?;
        let state = app_state(&settings, &mysql, &redis, &metrics, peers, drain_watch)?;
        let admin_state = web::Data::new(AdminState {
            metrics,
            mysql: mysql.clone(),
            redis: Arc::clone(&redis),
        });

        let listener = bind_listener(settings.bind_addr, "BIND_ADDR")?;
        let public_addr = listener.local_addr()?;
        let public = public_server(listener, state, workers, settings.shutdown_timeout)?;
        let admin_listener = bind_listener(settings.admin_bind_addr, "ADMIN_BIND_ADDR")?;
        let admin_addr = admin_listener.local_addr()?;
        let admin = admin_server(admin_listener, admin_state)?;

        let shutdown = ShutdownTrigger {
            draining: Arc::new(draining),
            public: public.handle(),
            admin: admin.handle(),
        };
        Ok(Self {
            public_addr,
            admin_addr,
            public,
            admin,
            mysql,
            redis,
            _sweeper: sweeper,
            shutdown,
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

    /// Serves until SIGTERM/SIGINT (or the trigger), drains, then closes the
    /// pools so MySQL sees a clean COM_QUIT on every connection.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let trigger = self.shutdown.clone();
        let signals = tokio::spawn(async move {
            wait_for_signal().await;
            trigger.trigger();
        });
        let (public, admin) = tokio::join!(self.public, self.admin);
        signals.abort();
        self.mysql.close().await;
        self.redis.close();
        tracing::info!("stopped");
        public.and(admin)
    }
}

/// The public listener's state: both capabilities over the pools, and what
/// the middlewares and probes need.
fn app_state(
    settings: &Settings,
    mysql: &MySqlPool,
    redis: &Arc<RedisPools>,
    metrics: &Metrics,
    peers: PeerWatch,
    draining: watch::Receiver<bool>,
) -> Result<AppState, ConfigError> {
    metrics
        .mysql_pool_max
        .set(i64::from(settings.database.pool_max));
    // Queries and background tasks run on this (the main) runtime, which
    // outlives the HTTP workers: connections stay usable until closed cleanly.
    let backend = tokio::runtime::Handle::current();
    let redis_client =
        redis::Client::open(settings.redis_url.expose()).map_err(|_| invalid_redis_url())?;
    Ok(AppState {
        reader: web::Data::new(TranscriptionReader::new(
            TranscriptionRepo::new(mysql.clone(), metrics.clone()),
            metrics.clone(),
            backend.clone(),
        )),
        locks: LockEngine::new(
            redis.background().clone(),
            redis_client,
            &settings.redis_key_prefix,
            settings.lock_max_waiters,
            metrics.clone(),
            backend.clone(),
            draining.clone(),
        ),
        redis: Arc::clone(redis),
        readiness: web::Data::new(Readiness {
            mysql: mysql.clone(),
            redis: redis.background().clone(),
            draining,
            runtime: backend,
        }),
        auth: web::Data::new(AuthPolicy(
            (!settings.auth_disabled).then(|| settings.api_keys.clone()),
        )),
        limit: web::Data::new(InFlightLimit::new(settings.max_in_flight)),
        metrics: web::Data::new(metrics.clone()),
        peers: web::Data::new(peers),
    })
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
