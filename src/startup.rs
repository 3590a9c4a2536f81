//! Building and running the service: pools, both listeners, graceful shutdown.

use std::net::{SocketAddr, TcpListener};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpResponse, HttpServer, web};
use sqlx::MySqlPool;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use tokio::sync::watch;
use tracing_actix_web::TracingLogger;

use crate::auth::{AuthPolicy, require_api_key};
use crate::config::{ConfigError, Settings};
use crate::error::ApiError;
use crate::health::{Readiness, healthz, readyz};
use crate::locks::{LockEngine, compact_headers, post_locks};
use crate::metrics::{Metrics, metrics_endpoint, track_requests};
use crate::openapi::openapi_json;
use crate::overload::{InFlightLimit, shed_overload};
use crate::peer::record_peer_socket;
use crate::redis_pool::{RedisPools, invalid_redis_url};
use crate::telemetry::{RequestSpan, request_id_middleware};
use crate::transcriptions::{TranscriptionReader, TranscriptionRepo, get_transcription};

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// A pooled MySQL connection idle for longer than this is pinged before use,
/// so a connection the server dropped (wait_timeout, restart) is replaced
/// instead of failing a request. Busy connections skip the round trip.
const TEST_IDLE_CONNECTION_AFTER: Duration = Duration::from_secs(30);

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

/// Pool gauges are read from the pools when `/metrics` is scraped.
pub struct PoolGauges {
    mysql: MySqlPool,
    redis: Arc<RedisPools>,
}

impl PoolGauges {
    /// Copies the pools' current sizes into the gauges.
    pub fn refresh(&self, metrics: &Metrics) {
        let (size, idle) = (i64::from(self.mysql.size()), self.mysql.num_idle() as i64);
        metrics
            .mysql_pool_connections
            .with_label_values(&["open"])
            .set(size);
        metrics
            .mysql_pool_connections
            .with_label_values(&["idle"])
            .set(idle);
        metrics
            .mysql_pool_connections
            .with_label_values(&["in_use"])
            .set(size - idle);
        let (open, idle) = self.redis.status();
        metrics
            .redis_pool_connections
            .with_label_values(&["open"])
            .set(open as i64);
        metrics
            .redis_pool_connections
            .with_label_values(&["idle"])
            .set(idle as i64);
    }
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
    mysql: MySqlPool,
    redis: Arc<RedisPools>,
    shutdown: ShutdownTrigger,
}

impl Application {
    /// Binds both listeners and creates the pools. Pools connect lazily, so
    /// the service starts (not ready) even while MySQL or Redis is down.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let metrics = Metrics::new();
        metrics.mysql_pool_max.set(i64::from(settings.db_pool_max));
        let mysql = mysql_pool(&settings)?;
        let (draining, drain_watch) = watch::channel(false);
        // Pool I/O runs on this (the main) runtime, which outlives the HTTP
        // workers: connections stay usable until the pools close them cleanly.
        let backend = tokio::runtime::Handle::current();
        // One Redis pool per HTTP worker, so request calls stay on their thread.
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let redis = Arc::new(RedisPools::new(
            settings.redis_url.expose(),
            settings.redis_pool_max,
            workers,
        )?);

        let reader = web::Data::new(TranscriptionReader::new(
            TranscriptionRepo::new(mysql.clone(), metrics.clone()),
            metrics.clone(),
            backend.clone(),
        ));
        let redis_client =
            redis::Client::open(settings.redis_url.expose()).map_err(|_| invalid_redis_url())?;
        let locks = LockEngine::new(
            redis.background().clone(),
            redis_client,
            &settings.redis_key_prefix,
            settings.lock_max_waiters,
            metrics.clone(),
            backend.clone(),
            drain_watch.clone(),
        );
        let readiness = web::Data::new(Readiness {
            mysql: mysql.clone(),
            redis: redis.background().clone(),
            draining: drain_watch,
            runtime: backend.clone(),
        });
        let auth = web::Data::new(AuthPolicy(
            (!settings.auth_disabled).then(|| settings.api_keys.clone()),
        ));
        let limit = web::Data::new(InFlightLimit::new(settings.max_in_flight));
        let metrics_data = web::Data::new(metrics.clone());

        let listener = bind_listener(settings.bind_addr, "BIND_ADDR")?;
        let public_addr = listener.local_addr()?;
        let worker_redis = Arc::clone(&redis);
        let public = HttpServer::new(move || {
            App::new()
                .app_data(reader.clone())
                .app_data(web::Data::new(locks.for_worker(worker_redis.for_worker())))
                .app_data(readiness.clone())
                .app_data(auth.clone())
                .app_data(limit.clone())
                .app_data(metrics_data.clone())
                .wrap(from_fn(track_requests))
                .wrap(TracingLogger::<RequestSpan>::new())
                .wrap(from_fn(request_id_middleware))
                .service(open_get("/healthz", healthz))
                .service(open_get("/readyz", readyz))
                .service(open_get("/openapi.json", openapi_json))
                .service(
                    web::resource("/transcriptions/{id}")
                        .wrap(from_fn(shed_overload))
                        .wrap(from_fn(require_api_key))
                        .route(web::get().to(get_transcription))
                        .default_service(web::to(|| method_not_allowed("GET"))),
                )
                .service(
                    web::resource("/locks")
                        .wrap(from_fn(compact_headers))
                        .wrap(from_fn(shed_overload))
                        .wrap(from_fn(require_api_key))
                        .route(web::post().to(post_locks))
                        .default_service(web::to(|| method_not_allowed("POST"))),
                )
                .default_service(web::to(not_found))
        })
        .on_connect(record_peer_socket)
        .workers(workers)
        .listen(listener)?
        .disable_signals()
        .shutdown_timeout(settings.shutdown_timeout.as_secs())
        // Time to receive a request's headers; slow-loris clients are cut off.
        .client_request_timeout(Duration::from_secs(5))
        .client_disconnect_timeout(Duration::from_secs(1))
        // Longer than the keep-alive of typical client agents, so the server
        // is not the side that closes a connection a client is about to reuse.
        .keep_alive(Duration::from_secs(75))
        .run();

        let admin_listener = bind_listener(settings.admin_bind_addr, "ADMIN_BIND_ADDR")?;
        let admin_addr = admin_listener.local_addr()?;
        let gauges = web::Data::new(PoolGauges {
            mysql: mysql.clone(),
            redis: Arc::clone(&redis),
        });
        let admin_metrics = web::Data::new(metrics);
        let admin = HttpServer::new(move || {
            App::new()
                .app_data(admin_metrics.clone())
                .app_data(gauges.clone())
                .route("/metrics", web::get().to(metrics_endpoint))
                .default_service(web::to(not_found))
        })
        .listen(admin_listener)?
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .run();

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

fn mysql_pool(settings: &Settings) -> Result<MySqlPool, ConfigError> {
    let options =
        MySqlConnectOptions::from_str(settings.database_url.expose()).map_err(|_| ConfigError {
            variable: "DATABASE_URL",
            message: "is not a valid mysql:// URL".into(),
        })?;
    Ok(MySqlPoolOptions::new()
        .max_connections(settings.db_pool_max)
        .min_connections(0)
        .acquire_timeout(settings.db_acquire_timeout)
        .idle_timeout(Duration::from_secs(300))
        .max_lifetime(Duration::from_secs(1800))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > TEST_IDLE_CONNECTION_AFTER {
                    use sqlx::Connection;
                    // A failed ping makes the pool discard this connection and try another.
                    return conn.ping().await.map(|_| true);
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}

async fn method_not_allowed(allow: &'static str) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow })
}

/// A GET route that needs no key, answering 405 to other methods.
fn open_get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::to(|| method_not_allowed("GET")))
}
