//! middleway: a narrow HTTP service that owns bounded MySQL and Redis pools
//! so short-lived functions never open database connections themselves.
//!
//! A tour, from the top down (imports run this way only):
//! - [`startup`]: settings → pools → state → listeners → run → drain.
//! - [`auth`]: who a caller is (principals from API keys and `AUTH_FILE`,
//!   reloaded in place) and what it may do (scopes, fair share).
//! - `http`: the route table, problem+json errors, JSON bodies, the
//!   middlewares (request id, auth, shedding, metrics), health, OpenAPI,
//!   noticing clients that hang up.
//! - `transcriptions`: `GET /transcriptions/{id}` over the MySQL pool.
//! - `locks`: `POST /locks`, distributed locks on Redis lists.
//! - [`pools`]: the MySQL and Redis pools.
//! - [`config`]: settings from the environment, validated, secrets redacted.
//! - [`telemetry`]: logging. `metrics`: the Prometheus registry.
//! - [`crypto`]: the process's TLS crypto provider (ring).
//! - [`seed`]: realistic demo rows for `middleway seed`.

pub mod auth;
pub mod config;
pub mod crypto;
mod fleet;
mod http;
pub mod locks;
mod metrics;
pub mod pools;
pub mod seed;
pub mod startup;
pub mod telemetry;
mod transcriptions;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
