//! Distributed locks on Redis (docs/locks.md). One way down:
//! the route calls the engine (`engine`; an acquire's steps in `acquire`),
//! which makes every Redis call through `call` (a pooled connection, a time
//! bound, errors sorted; a request's acquires and releases through `batch`,
//! which sends those of concurrent requests together), which runs one script
//! of the `store` (replies read in one place). What happens away from requests, the background worker
//! (`background`) does, told by messages (`events`) from the wake connection
//! (`wake`), the alarm clock (`alarms`) and requests. `core` is what they
//! share: the waiters here (`waiters`) and the fences seen (`fences`).
//! Request bodies are in `wire`, names, tokens and grants in `domain`.
//! HTTP knows this module; this module knows nothing of HTTP.

mod acquire;
mod alarms;
mod background;
mod batch;
mod call;
mod core;
mod domain;
mod engine;
mod error;
mod events;
mod fences;
mod store;
mod waiters;
mod wake;
mod wire;

pub(crate) use domain::{
    AcquireRequest, ExtendRequest, Grant, LockState, LockToken, ReleaseRequest,
};
pub(crate) use engine::{EngineSettings, LockEngine};
pub(crate) use error::LockError;
pub(crate) use wake::WakeSource;
pub(crate) use wire::{LockCommand, LockRequest};
// The benchmark's `direct-scripts` strategy runs the scripts without HTTP.
pub use domain::LockName;
pub use store::LockStore;
