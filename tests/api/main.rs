//! One integration test binary (STYLE.md): a file per area.

mod edge;
mod fleet_budget;
mod health;
mod helpers;
mod lock_engine;
mod lock_faults;
mod locks;
mod observability;
mod production;
mod production_backends;
mod redis_cluster;
mod redis_pool;
mod traces;
mod transcription_batches;
mod transcription_faults;
mod transcriptions;
