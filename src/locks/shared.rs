//! The state the engine shares with its wait loops and their reapers.

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::runtime::Handle;

use super::queues::WaitQueues;
use super::store::LockStore;
use crate::metrics::Metrics;
use crate::pools::redis::{RedisConnection, RedisPool};

/// State shared by the engine, its wait loops and their reapers.
pub(super) struct Shared {
    /// Scripts and key names.
    pub store: LockStore,
    /// Local waiters by name.
    pub queues: WaitQueues,
    /// Pooled connections for the wait loops' and reapers' scripts (on `runtime`).
    pub pool: RedisPool,
    /// Opens the dedicated BLPOP connections.
    pub client: redis::Client,
    /// Where wait loops run: the main runtime, which outlives HTTP workers.
    pub runtime: Handle,
    /// Lock metrics.
    pub metrics: Metrics,
    /// Requests waiting now, against `max_waiters`.
    pub waiting: AtomicUsize,
    /// `LOCK_MAX_WAITERS`.
    pub max_waiters: usize,
}

impl Shared {
    /// A pooled connection for tasks on `runtime`, or an error when Redis
    /// or the pool is unavailable.
    pub(super) async fn pooled(&self) -> redis::RedisResult<RedisConnection> {
        self.pool.connection().await
    }

    /// A fresh connection of its own for one BLPOP loop (no response timeout: it blocks by design).
    pub(super) async fn blocking_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}
