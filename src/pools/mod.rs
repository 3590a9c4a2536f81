//! The bounded connection pools the service owns: MySQL (sqlx) and Redis,
//! and TLS to both.

pub mod mysql;
pub mod redis;
pub mod redis_target;
pub mod tls;
