//! Why a lock operation did not succeed, in the lock's own words; the route
//! maps each to an HTTP problem.

use super::domain::NotHeldReason;

/// A lock operation's failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LockError {
    /// The token does not hold the lock now, and why.
    #[error("the token does not hold the lock ({})", .0.as_str())]
    NotHeld(NotHeldReason),
    /// The lock exists with another `permits` value.
    #[error("the lock exists with permits = {0}")]
    PermitsMismatch(u32),
    /// No slot came free within `wait_ms`.
    #[error("no slot came free in time")]
    Timeout,
    /// Redis did not answer.
    #[error("Redis is unreachable")]
    RedisUnavailable,
    /// Redis answered a grant or an extension after its lease could have
    /// ended: a grant was handed back, an extension may stand.
    #[error("Redis answered after the lease could have ended")]
    AnsweredTooLate,
    /// Too few Redis replicas confirmed the change in time (`LOCK_REPLICA_ACKS`).
    #[error("Redis replicas did not confirm the change in time")]
    NotReplicated,
    /// `LOCK_MAX_WAITERS` requests are waiting already.
    #[error("too many lock requests are waiting")]
    TooManyWaiters,
    /// The service is shutting down.
    #[error("the service is shutting down")]
    Draining,
    /// The client hung up while waiting.
    #[error("the client disconnected")]
    CallerGone,
}

impl LockError {
    /// How a wait ended, as a word for traces and metrics.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Self::NotHeld(_) => "not-held",
            Self::PermitsMismatch(_) => "permits-mismatch",
            Self::Timeout => "timeout",
            Self::RedisUnavailable => "unavailable",
            Self::AnsweredTooLate => "too-late",
            Self::NotReplicated => "not-replicated",
            Self::TooManyWaiters => "too-many-waiters",
            Self::Draining => "draining",
            Self::CallerGone => "caller-gone",
        }
    }
}
