//! Distributed locks on Redis lists (LOCKS.md): request types, the Redis
//! store and its Lua scripts, the per-name wait loops, the engine, the route.

mod domain;
mod engine;
pub(crate) mod route;
mod store;
mod waiters;

pub use domain::{
    ACQUIRE_FIELDS, AcquireRequest, EXTEND_FIELDS, ExtendRequest, LockName, LockRequest,
    LockRequestSchema, LockToken, RELEASE_FIELDS, ReleaseRequest,
};
pub use engine::LockEngine;
pub use route::{GrantBody, ReleasedBody, compact_headers, post_locks};
pub use store::{AcquireOutcome, Grant, HANDOFF_GRACE, LockKeys, LockStore};
