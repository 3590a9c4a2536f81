//! Distributed locks on Redis lists (LOCKS.md): request types, the Redis
//! store and its Lua scripts, the per-name wait loops, the engine, the route.

mod domain;
mod engine;
mod route;
mod store;
mod waiters;

pub use domain::{AcquireRequest, ExtendRequest, LockName, LockRequest, LockToken, ReleaseRequest};
pub use engine::LockEngine;
pub use route::post_locks;
pub use store::{Grant, HANDOFF_GRACE};
