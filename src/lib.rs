//! middleway: a narrow HTTP service that owns bounded MySQL and Redis pools
//! so short-lived functions never open database connections themselves.
//!
//! A tour:
//! - [`config`]: settings from the environment, validated, secrets redacted.
//! - [`startup`]: pools, the public and admin listeners, graceful shutdown.
//! - [`telemetry`]: logging, request ids, per-request spans.
//! - [`error`]: the one `ApiError`, rendered as problem+json.
//! - [`auth`]: bearer API keys.
//! - [`overload`]: the in-flight cap that sheds load with 503.
//! - [`peer`]: noticing a client that hung up while its request waits.
//! - [`redis_pool`]: the Redis pool, without a PING per checkout.
//! - [`metrics`]: Prometheus metrics on the admin listener.
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`openapi`]: the OpenAPI 3.1 document, generated from the handlers.
//! - [`transcriptions`]: `GET /transcriptions/{id}`.
//! - [`locks`]: `POST /locks`, distributed locks on Redis lists.
//! - [`seed`]: realistic demo rows for `middleway seed`.

pub mod auth;
pub mod config;
pub mod error;
pub mod health;
pub mod locks;
pub mod metrics;
pub mod openapi;
pub mod overload;
pub mod peer;
pub mod redis_pool;
pub mod seed;
pub mod startup;
pub mod telemetry;
pub mod transcriptions;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
