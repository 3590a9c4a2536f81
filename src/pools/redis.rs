//! The Redis connections for non-blocking calls: deadpool pools of
//! multiplexed connections, made and checked by deadpool-redis' manager,
//! one pool per HTTP worker plus one for background tasks. Against a Redis
//! Cluster each pooled connection is a cluster connection instead (one
//! multiplexed socket per node, commands routed by key slot, MOVED and ASK
//! followed, the slot map refreshed when it changes), so `REDIS_POOL_MAX`
//! bounds the connections per node.
//!
//! Three measured reasons it is not one deadpool-redis pool as it comes
//! (uncontended lock pairs at 64 callers on the 2-core dev box went from
//! about 7,200/s to about 13,000/s; see bench/README.md):
//! - A multiplexed connection pipelines any number of concurrent calls, so
//!   a call holds a pool object only long enough to clone its handle. Calls
//!   then share one or two sockets, and Redis and the service read and write
//!   many commands per syscall.
//! - deadpool-redis' manager sends UNWATCH + PING on every checkout, which
//!   doubled the Redis commands of the hot path (each lock operation is one
//!   script call). A connection that answered within [`FRESH_FOR`] goes back
//!   into use unchecked; older ones get deadpool-redis' full check, and one
//!   that failed at the connection level (I/O, dropped, timeout) is replaced
//!   instead. Skipping UNWATCH is safe: nothing here uses WATCH or MULTI.
//! - A connection's driver task runs on the runtime that opened it, and each
//!   hop between threads costs two wake-ups per call. Each pool is used from
//!   one runtime only, so its calls never leave the thread that made them,
//!   and its connections end with their worker.
//!
//! A call that ends in WAIT (`LOCK_REPLICA_ACKS`) holds its connection
//! instead of sharing it ([`Checkout::Held`], not on a cluster): Redis reads
//! nothing more from a connection blocked in WAIT, so the other calls take
//! other connections of the same pool (the same `REDIS_POOL_MAX` bound).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, QueueMode, RecycleError, RecycleResult};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, TlsCertificates, TlsMode, Value,
};

use super::redis_target::{RedisTarget, invalid_redis_url, tcp_settings};
use crate::config::ConfigError;

/// A connection that answered this recently is handed out without a PING:
/// under load every connection is far fresher than this, and when idle the
/// PING costs nothing that matters.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// Connecting and waiting for a pool object are bounded by this.
const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// Each reply is bounded by this: the same bound the lock engine puts on a
/// whole call, so a burst of calls pipelined on one connection is not cut
/// off sooner by the connection than by the caller.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// The pool every non-blocking Redis call uses.
#[derive(Clone)]
pub struct RedisPool {
    pool: managed::Pool<RedisManager>,
}

impl RedisPool {
    /// A lazy pool of at most `max_size` connections to one server.
    /// Use it from one runtime only (see the module documentation).
    pub fn new(server: impl IntoConnectionInfo, max_size: usize) -> Result<Self, ConfigError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(IO_TIMEOUT))
            .set_response_timeout(Some(REPLY_TIMEOUT));
        let maker = deadpool_redis::Manager::new_with_config(server, config)
            .map_err(|_| invalid_redis_url())?;
        Self::with_maker(Maker::Server(maker), max_size)
    }

    /// A lazy pool of at most `max_size` connections to `target` (per node
    /// of a cluster).
    pub fn for_target(target: &RedisTarget, max_size: usize) -> Result<Self, ConfigError> {
        match target {
            RedisTarget::Server(server) => Self::new(server.clone(), max_size),
            RedisTarget::Cluster { seeds, ca_pem } => {
                let client =
                    cluster_client(seeds, ca_pem.as_deref()).map_err(|_| invalid_redis_url())?;
                Self::with_maker(Maker::Cluster(client), max_size)
            }
        }
    }

    fn with_maker(maker: Maker, max_size: usize) -> Result<Self, ConfigError> {
        let manager = RedisManager { maker };
        let timeouts = Some(IO_TIMEOUT);
        let pool = managed::Pool::builder(manager)
            .max_size(max_size)
            // The connection handed back last is handed out next: calls
            // concentrate on the fewest sockets, which batches best.
            .queue_mode(QueueMode::Lifo)
            .wait_timeout(timeouts)
            .create_timeout(timeouts)
            .recycle_timeout(timeouts)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|_| invalid_redis_url())?;
        Ok(Self { pool })
    }

    /// A handle on a live connection, shared with other callers.
    pub async fn connection(&self) -> RedisResult<RedisConnection> {
        self.checkout(Checkout::Shared).await
    }

    /// A handle on a live connection, shared or held (see [`Checkout`]).
    pub async fn checkout(&self, how: Checkout) -> RedisResult<RedisConnection> {
        // Boxed: deadpool's `get` future is about 7 KB (a whole connect and
        // recycle, in place), and every future awaiting a checkout, up to the
        // HTTP handler's, would be as large and copied whole at each move.
        let object = Box::pin(self.pool.get())
            .await
            .map_err(|e| RedisError::from((ErrorKind::Io, "Redis pool", e.to_string())))?;
        let mut conn = object.clone();
        if how == Checkout::Held && !self.is_cluster() {
            conn.held = Some(Arc::new(object));
        }
        Ok(conn)
    }

    /// Whether its connections are to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.pool.manager().maker, Maker::Cluster(_))
    }

    /// Drops the idle connections and refuses new checkouts.
    pub fn close(&self) {
        self.pool.close();
    }

    /// Connections open, and how many no call is checking out right now.
    pub fn status(&self) -> (usize, usize) {
        let status = self.pool.status();
        (status.size, status.available)
    }
}

/// A client for the cluster these seeds belong to, with the same bounds as
/// a server's connections; TLS (with the CA's roots, when given) when the
/// seeds are `rediss://`, for the nodes it discovers too.
fn cluster_client(seeds: &[ConnectionInfo], ca_pem: Option<&[u8]>) -> RedisResult<ClusterClient> {
    let mut builder = ClusterClientBuilder::new(seeds.to_vec())
        // The seeds' own settings do not reach the nodes found from them.
        .tcp_settings(tcp_settings())
        .connection_timeout(IO_TIMEOUT)
        .response_timeout(REPLY_TIMEOUT)
        // A failover takes the cluster a few seconds; the engine's own
        // bound (2 s per call) answers the caller, retries stay short.
        .retries(3)
        .min_retry_wait(50)
        .max_retry_wait(500);
    if seeds
        .first()
        .is_some_and(|s| matches!(s.addr(), redis::ConnectionAddr::TcpTls { .. }))
    {
        builder = builder.tls(TlsMode::Secure);
        if let Some(pem) = ca_pem {
            builder = builder.certs(TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            });
        }
    }
    builder.build()
}

/// The pools of one service: one per HTTP worker and one for background
/// tasks (wait loops, reapers, readiness), `REDIS_POOL_MAX` split between them.
pub struct RedisPools {
    background: RedisPool,
    workers: Vec<RedisPool>,
    /// Which worker pool the next HTTP worker takes.
    next: AtomicUsize,
}

impl RedisPools {
    /// Pools for `workers` HTTP workers and the background, at most
    /// `max_total` connections (per node of a cluster) to `target` in all:
    /// the total split between the pools, the first `max_total % pools`
    /// getting one more. With fewer connections than pools, workers share
    /// pools (round robin; with one connection in all, the background's):
    /// slower, since a shared connection's calls hop threads, but never past
    /// `max_total`.
    pub fn new(
        target: &RedisTarget,
        max_total: usize,
        workers: usize,
    ) -> Result<Self, ConfigError> {
        let max_total = max_total.max(1);
        let count = (workers + 1).min(max_total);
        let mut pools = (0..count)
            .map(|i| {
                RedisPool::for_target(
                    target,
                    max_total / count + usize::from(i < max_total % count),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            background: pools.remove(0),
            // Empty when there is one pool in all: `for_worker` then hands out the background's.
            workers: pools,
            next: AtomicUsize::new(0),
        })
    }

    /// The pool for tasks on the main runtime.
    pub fn background(&self) -> &RedisPool {
        &self.background
    }

    /// A pool for the HTTP worker calling this (from its app factory). A
    /// worker that actix restarts takes the next pool; connections the
    /// previous one left behind fail and are replaced.
    pub fn for_worker(&self) -> RedisPool {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.workers
            .get(i % self.workers.len().max(1))
            .unwrap_or(&self.background)
            .clone()
    }

    /// Closes every pool.
    pub fn close(&self) {
        self.all().for_each(RedisPool::close);
    }

    /// Connections open, and idle (see [`RedisPool::status`]), over all pools.
    pub fn status(&self) -> (usize, usize) {
        self.all()
            .map(RedisPool::status)
            .fold((0, 0), |(o, i), (open, idle)| (o + open, i + idle))
    }

    fn all(&self) -> impl Iterator<Item = &RedisPool> {
        std::iter::once(&self.background).chain(&self.workers)
    }
}

/// How a call uses its pooled connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checkout {
    /// Back in the pool at once: other calls use the connection meanwhile,
    /// their commands pipelined with this one's.
    Shared,
    /// Out of the pool until the handle (and its clones) drop: for a change
    /// followed by WAIT. Redis reads nothing more from a connection blocked
    /// in WAIT until the replicas confirm or the timeout passes, so a shared
    /// connection would hold up every other call on it for that long.
    ///
    /// Shared on a cluster all the same: there a WAIT blocks only the socket
    /// to the key's node, and held cluster connections would let the calls
    /// stuck on a failing node take every connection from the calls to
    /// healthy ones (a 3-node storm test fell short of its critical sections).
    Held,
}

/// A handle on a pooled multiplexed connection. Clones share the socket and
/// report how their calls went, so the pool knows when to replace it.
#[derive(Clone)]
pub struct RedisConnection {
    link: Link,
    health: Arc<Health>,
    /// For a [`Checkout::Held`] handle: the pool object, out of the pool
    /// while this lives.
    held: Option<Arc<managed::Object<RedisManager>>>,
}

/// The connection itself: to one server, or to a cluster.
#[derive(Clone)]
enum Link {
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl RedisConnection {
    /// Whether Redis can serve: the server answers PING; a cluster answers
    /// `CLUSTER INFO` with `cluster_state:ok` (every slot has a primary).
    pub async fn serves(&mut self) -> bool {
        match &self.link {
            Link::Server(_) => redis::cmd("PING").query_async::<String>(self).await.is_ok(),
            Link::Cluster(_) => redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async::<String>(self)
                .await
                .is_ok_and(|info| info.lines().any(|l| l.trim() == "cluster_state:ok")),
        }
    }
}

/// Waits (WAIT) until `replicas` replicas have the writes this connection
/// made to the node that owns `key`, at most `timeout_ms`; how many did.
pub trait WaitForReplicas: ConnectionLike + Send + Sized {
    fn wait_for_replicas<'a>(
        &'a mut self,
        _key: &'a str,
        replicas: u32,
        timeout_ms: u64,
    ) -> RedisFuture<'a, u32> {
        Box::pin(async move { wait_command(replicas, timeout_ms).query_async(self).await })
    }
}

fn wait_command(replicas: u32, timeout_ms: u64) -> Cmd {
    let mut wait = redis::cmd("WAIT");
    wait.arg(replicas).arg(timeout_ms);
    wait
}

impl WaitForReplicas for MultiplexedConnection {}

impl WaitForReplicas for RedisConnection {
    fn wait_for_replicas<'a>(
        &'a mut self,
        key: &'a str,
        replicas: u32,
        timeout_ms: u64,
    ) -> RedisFuture<'a, u32> {
        Box::pin(async move {
            let wait = wait_command(replicas, timeout_ms);
            let result = match &mut self.link {
                Link::Server(conn) => conn.req_packed_command(&wait).await,
                // The cluster client would send WAIT to every primary; only
                // the key's primary took the write.
                Link::Cluster(conn) => {
                    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                        Route::with_key(key, SlotAddr::Master),
                    ));
                    conn.route_command(wait, route).await
                }
            };
            self.health.note(&result);
            Ok(redis::from_redis_value(result?)?)
        })
    }
}

/// How a connection's calls have gone lately.
struct Health {
    /// When the last reply arrived, in nanoseconds since [`EPOCH`].
    last_reply: AtomicU64,
    /// Set after a connection-level failure: the pool replaces the connection.
    broken: AtomicBool,
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_nanos() -> u64 {
    EPOCH.elapsed().as_nanos() as u64
}

impl Health {
    /// A connection that has just answered (the handshake, or a check).
    fn answered_now() -> Self {
        Self {
            last_reply: AtomicU64::new(now_nanos()),
            broken: AtomicBool::new(false),
        }
    }

    fn note<T>(&self, result: &RedisResult<T>) {
        match result {
            Err(e) if is_connection_failure(e) => self.broken.store(true, Ordering::Relaxed),
            // A reply, even a server-side error (a script's, NOSCRIPT), shows the connection works.
            _ => self.mark_answered(),
        }
    }

    fn mark_answered(&self) {
        self.last_reply.store(now_nanos(), Ordering::Relaxed);
    }

    fn answered_within(&self, window: Duration) -> bool {
        let last = self.last_reply.load(Ordering::Relaxed);
        now_nanos().saturating_sub(last) < window.as_nanos() as u64
    }
}

fn is_connection_failure(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = match &mut self.link {
                Link::Server(conn) => conn.req_packed_command(cmd).await,
                Link::Cluster(conn) => conn.req_packed_command(cmd).await,
            };
            self.health.note(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = match &mut self.link {
                Link::Server(conn) => conn.req_packed_commands(cmd, offset, count).await,
                Link::Cluster(conn) => conn.req_packed_commands(cmd, offset, count).await,
            };
            self.health.note(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Server(conn) => conn.get_db(),
            Link::Cluster(_) => 0,
        }
    }
}

/// Makes connections and checks stale ones (through deadpool-redis'
/// manager for a server); passes fresh ones, replaces failed ones.
struct RedisManager {
    maker: Maker,
}

enum Maker {
    Server(deadpool_redis::Manager),
    Cluster(ClusterClient),
}

impl managed::Manager for RedisManager {
    type Type = RedisConnection;
    type Error = RedisError;

    async fn create(&self) -> RedisResult<RedisConnection> {
        let link = match &self.maker {
            Maker::Server(maker) => Link::Server(managed::Manager::create(maker).await?),
            Maker::Cluster(client) => Link::Cluster(client.get_async_connection().await?),
        };
        Ok(RedisConnection {
            link,
            health: Arc::new(Health::answered_now()),
            held: None,
        })
    }

    async fn recycle(
        &self,
        conn: &mut RedisConnection,
        metrics: &Metrics,
    ) -> RecycleResult<RedisError> {
        if conn.health.broken.load(Ordering::Relaxed) {
            return Err(RecycleError::message("the connection failed in use"));
        }
        if conn.health.answered_within(FRESH_FOR) {
            return Ok(());
        }
        let result = match (&self.maker, &mut conn.link) {
            (Maker::Server(maker), Link::Server(link)) => {
                managed::Manager::recycle(maker, link, metrics).await
            }
            (_, Link::Cluster(link)) => redis::cmd("PING")
                .query_async::<String>(link)
                .await
                .map(drop)
                .map_err(RecycleError::Backend),
            (Maker::Cluster(_), Link::Server(_)) => Err(RecycleError::message(
                "a server connection in a cluster pool",
            )),
        };
        if result.is_ok() {
            conn.health.mark_answered();
        }
        result
    }
}
