//! The bounded connection pools the service owns: MySQL (sqlx) and Redis,
//! and TLS to both; the MySQL read endpoints (primary and replicas) and
//! the heartbeat that measures the replicas' lag.

pub(crate) mod heartbeat;
pub mod mysql;
pub mod redis;
pub mod redis_target;
pub(crate) mod replicas;
pub mod tls;
