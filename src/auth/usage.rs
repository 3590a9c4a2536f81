//! Fair share: how many requests and lock waiters one principal has now,
//! against its `max_in_flight` and `max_waiters`. A count lives as long as
//! the principal's name does, across reloads of `AUTH_FILE`, so a reload
//! never forgets requests already in progress.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One principal's requests in progress and lock requests waiting.
#[derive(Debug, Default)]
pub struct Usage {
    in_flight: AtomicUsize,
    waiters: AtomicUsize,
}

/// Which of a principal's limits a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    InFlight,
    Waiters,
}

/// One counted request or waiter; uncounted when dropped.
#[derive(Debug)]
pub struct Counted {
    usage: Arc<Usage>,
    quota: Quota,
}

impl Usage {
    /// Counts one more of `quota` unless `limit` are counted already.
    pub fn enter(self: &Arc<Self>, quota: Quota, limit: Option<usize>) -> Result<Counted, Quota> {
        let counter = self.counter(quota);
        let admitted = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            limit.is_none_or(|limit| now < limit).then_some(now + 1)
        });
        match admitted {
            Ok(_) => Ok(Counted {
                usage: Arc::clone(self),
                quota,
            }),
            Err(_) => Err(quota),
        }
    }

    fn counter(&self, quota: Quota) -> &AtomicUsize {
        match quota {
            Quota::InFlight => &self.in_flight,
            Quota::Waiters => &self.waiters,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.usage
            .counter(self.quota)
            .fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_admits_that_many_at_once_and_a_leaver_makes_room() {
        let usage = Arc::new(Usage::default());
        let first = usage.enter(Quota::Waiters, Some(2)).unwrap();
        let _second = usage.enter(Quota::Waiters, Some(2)).unwrap();
        assert_eq!(
            usage.enter(Quota::Waiters, Some(2)).unwrap_err(),
            Quota::Waiters
        );
        assert!(
            usage.enter(Quota::InFlight, Some(1)).is_ok(),
            "each quota counts apart"
        );
        drop(first);
        assert!(usage.enter(Quota::Waiters, Some(2)).is_ok());
        let unlimited: Vec<_> = (0..100)
            .map(|_| usage.enter(Quota::InFlight, None).unwrap())
            .collect();
        assert_eq!(unlimited.len(), 100);
    }
}
