//! One integration test binary (STYLE.md): a file per area.

mod aws_iam;
mod edge;
mod fleet_budget;
mod health;
mod helpers;
mod lock_data_loss;
mod lock_engine;
mod lock_failover;
mod lock_faults;
mod lock_hangups;
mod lock_replicas;
mod locks;
mod observability;
mod oidc;
mod principals;
mod production;
mod production_backends;
mod read_replicas;
mod redis_cluster;
mod redis_pool;
mod sizing;
mod tls_listener;
mod traces;
mod transcription_batches;
mod transcription_faults;
mod transcriptions;
