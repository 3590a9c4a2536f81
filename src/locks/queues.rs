//! Local FIFO queues of waiting acquires, by lock name.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use super::domain::LockName;
use super::error::LockError;
use super::store::Grant;

/// What a waiter is eventually told.
pub(super) type WaitResult = Result<Grant, LockError>;

/// One queued acquire.
pub(super) struct Waiter {
    /// The lease to claim with.
    pub lease: Duration,
    /// Where the grant goes; closed when the HTTP request is gone.
    pub reply: oneshot::Sender<WaitResult>,
}

/// Local FIFO queues by lock name; a name has an entry while its loop runs.
#[derive(Default)]
pub(super) struct WaitQueues {
    queues: Mutex<HashMap<LockName, VecDeque<Waiter>>>,
}

impl WaitQueues {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LockName, VecDeque<Waiter>>> {
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether local waiters are queued on `name` (newcomers must queue behind them).
    pub(super) fn has_waiters(&self, name: &LockName) -> bool {
        self.lock().get(name).is_some_and(|q| !q.is_empty())
    }

    /// Queues `waiter`; true when no loop serves `name` yet and the caller must start one.
    pub(super) fn enqueue(&self, name: &LockName, waiter: Waiter) -> bool {
        let mut queues = self.lock();
        match queues.get_mut(name) {
            Some(queue) => {
                queue.push_back(waiter);
                false
            }
            None => {
                queues.insert(name.clone(), VecDeque::from([waiter]));
                true
            }
        }
    }

    /// The first waiter still listening, dropping those that left.
    pub(super) fn next_live(&self, name: &LockName) -> Option<Waiter> {
        let mut queues = self.lock();
        let queue = queues.get_mut(name)?;
        while let Some(waiter) = queue.pop_front() {
            if !waiter.reply.is_closed() {
                return Some(waiter);
            }
        }
        None
    }

    pub(super) fn push_front(&self, name: &LockName, waiter: Waiter) {
        if let Some(queue) = self.lock().get_mut(name) {
            queue.push_front(waiter);
        }
    }

    /// Ends the loop for `name` if nobody is waiting; dead waiters are dropped.
    /// Deciding under the lock means an enqueue either sees the loop or starts a new one.
    pub(super) fn retire_if_idle(&self, name: &LockName) -> bool {
        let mut queues = self.lock();
        let idle = queues.get_mut(name).is_none_or(|queue| {
            queue.retain(|w| !w.reply.is_closed());
            queue.is_empty()
        });
        if idle {
            queues.remove(name);
        }
        idle
    }

    /// Fails every waiter of `name` and ends its loop.
    pub(super) fn fail_all(&self, name: &LockName, error: impl Fn() -> LockError) {
        if let Some(queue) = self.lock().remove(name) {
            for waiter in queue {
                let _ = waiter.reply.send(Err(error()));
            }
        }
    }

    /// Fails every waiter of every name (shutdown).
    pub(super) fn fail_everyone(&self, error: impl Fn() -> LockError) {
        let all: Vec<_> = self.lock().drain().collect();
        for (_, queue) in all {
            for waiter in queue {
                let _ = waiter.reply.send(Err(error()));
            }
        }
    }
}
