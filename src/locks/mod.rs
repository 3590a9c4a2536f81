//! Distributed locks on Redis lists (docs/locks.md): the request bodies
//! (`wire`), names and tokens (`domain`), the Redis side and its Lua scripts
//! (`store`), per-name wait loops (`waiters`) and the engine that ties them
//! together. HTTP knows this module; this module knows nothing of HTTP.

mod domain;
mod engine;
mod error;
mod queues;
mod shared;
mod store;
mod waiters;
mod wire;

pub(crate) use engine::LockEngine;
pub(crate) use error::LockError;
pub(crate) use store::Grant;
pub(crate) use wire::LockRequest;
// The benchmark's `direct-scripts` strategy runs the scripts without HTTP.
pub use domain::LockName;
pub use store::{AcquireOutcome, LockStore};
