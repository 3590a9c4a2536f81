//! The one way a lock call reaches Redis: a connection from a pool, a time
//! bound, and Redis' errors sorted into the lock's own.

use std::future::Future;
use std::time::{Duration, Instant};

use super::error::LockError;
use super::store::is_not_replicated;
use crate::pools::redis::{Checkout, RedisConnection, RedisPool};

/// A bound on every Redis call a request or a task makes: past it Redis
/// counts as unreachable for that call.
pub(crate) const REDIS_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a lease of `lease_ms` that a call sent at `sent` began or
/// renewed may be over now. The script ran no earlier than `sent`, so the
/// lease ends no earlier than `sent + lease_ms`; a reply that comes later
/// than that (a replica slow to confirm under `LOCK_REPLICA_ACKS`, a slow
/// link) may carry a slot that has already passed to someone else.
pub(crate) fn lease_may_be_over(sent: Instant, lease_ms: u64) -> bool {
    sent.elapsed() >= Duration::from_millis(lease_ms)
}

/// A call that came back without an answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallFailed {
    /// What the lock reports.
    pub error: LockError,
    /// Whether the command may have reached Redis, and so may have run
    /// (false when no connection could even be had).
    pub maybe_ran: bool,
}

impl From<CallFailed> for LockError {
    fn from(failed: CallFailed) -> Self {
        failed.error
    }
}

/// Runs `op` on a connection of `pool` taken as `checkout` says (`op` moves
/// it into its future), within [`REDIS_CALL_TIMEOUT`]. The call is boxed
/// before the returned future exists: Redis client futures are kilobytes,
/// and inlined they would size every waiting request's future (held up to
/// `wait_ms`) to match.
pub(crate) fn redis_call<'a, T: 'a, F>(
    pool: &'a RedisPool,
    checkout: Checkout,
    op: impl FnOnce(RedisConnection) -> F + 'a,
) -> impl Future<Output = Result<T, CallFailed>> + 'a
where
    F: Future<Output = redis::RedisResult<T>> + 'a,
{
    let call = Box::pin(async move {
        let conn = pool.checkout(checkout).await.map_err(|e| (e, false))?;
        op(conn).await.map_err(|e| (e, true))
    });
    async move {
        match tokio::time::timeout(REDIS_CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err((error, maybe_ran))) => Err(failed(&error, maybe_ran)),
            Err(_) => Err(timed_out()),
        }
    }
}

/// A Redis error, as the lock reports it.
pub(crate) fn failed(error: &redis::RedisError, maybe_ran: bool) -> CallFailed {
    if is_not_replicated(error) {
        tracing::warn!(%error, "lock change not confirmed by Redis replicas");
        return CallFailed {
            error: LockError::NotReplicated,
            maybe_ran,
        };
    }
    tracing::warn!(%error, "Redis call failed");
    CallFailed {
        error: LockError::RedisUnavailable,
        maybe_ran,
    }
}

/// A call with no answer within [`REDIS_CALL_TIMEOUT`] (it may have run).
pub(crate) fn timed_out() -> CallFailed {
    tracing::warn!("Redis call timed out");
    CallFailed {
        error: LockError::RedisUnavailable,
        maybe_ran: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_may_be_over_once_as_long_as_it_has_passed_since_the_call_was_sent() {
        let now = Instant::now();
        assert!(!lease_may_be_over(now, 60_000));
        let sent = now - Duration::from_millis(150);
        assert!(lease_may_be_over(sent, 100));
        assert!(lease_may_be_over(sent, 150));
        assert!(!lease_may_be_over(sent, 10_000));
    }
}
