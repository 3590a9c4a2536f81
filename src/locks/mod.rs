//! Distributed locks on Redis (docs/locks.md): the request bodies (`wire`),
//! names, tokens and grants (`domain`), the Redis side and its Lua scripts
//! (`store`), the requests waiting here (`waiters`), how a replica waits and
//! wakes (`wake`, `alarms`), what the engine shares with those tasks (`core`)
//! and the engine. HTTP knows this module; this module knows nothing of HTTP.

mod alarms;
mod core;
mod domain;
mod engine;
mod error;
mod fences;
mod store;
mod waiters;
mod wake;
mod wire;

pub(crate) use domain::{
    AcquireRequest, ExtendRequest, Grant, InspectRequest, LockState, LockToken, ReleaseRequest,
};
pub(crate) use engine::LockEngine;
pub(crate) use error::LockError;
pub(crate) use wake::WakeSource;
pub(crate) use wire::{LockCommand, LockRequest};
// The benchmark's `direct-scripts` strategy runs the scripts without HTTP.
pub use domain::LockName;
pub use store::LockStore;
