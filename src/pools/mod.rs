//! The bounded connection pools the service owns: MySQL (sqlx) and Redis.

pub mod mysql;
pub mod redis;
