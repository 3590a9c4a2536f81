//! The MySQL pool: bounded, lazy, and checked only when a connection has
//! been idle long enough to have been dropped by the server.

use std::time::Duration;

use sqlx::MySqlPool;
use sqlx::mysql::MySqlPoolOptions;

use crate::config::DatabaseSettings;

/// A pooled connection idle for longer than this is pinged before use,
/// so a connection the server dropped (wait_timeout, restart) is replaced
/// instead of failing a request. Busy connections skip the round trip.
const TEST_IDLE_CONNECTION_AFTER: Duration = Duration::from_secs(30);

/// The serving pool: at most `DB_POOL_MAX` connections, opened on demand,
/// so the service starts (not ready) while MySQL is down.
pub fn serving_pool(database: &DatabaseSettings) -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(database.pool_max)
        .min_connections(0)
        .acquire_timeout(database.acquire_timeout)
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
        .connect_lazy_with(database.connect_options())
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
