//! The requests waiting on this replica, by ticket. Whoever takes a waiter
//! out of the registry owns its outcome: the wake loop when an offer for it
//! arrives, the request itself when its wait runs out or its caller leaves.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

use super::domain::{Grant, LockName};
use super::error::LockError;

/// What a waiter is eventually told.
pub(crate) type WaitOutcome = Result<Grant, LockError>;

/// One queued acquire.
pub(crate) struct Waiter {
    /// Which lock.
    pub name: LockName,
    /// The lock's permits as the request gave them (for `sync`).
    pub permits: u32,
    /// The lease to claim with.
    pub lease_ms: u64,
    /// Ends the token of its grant (for `forget` after a lost reply).
    pub nonce: String,
    /// When its wait runs out (local clock).
    pub deadline: Instant,
    /// Where the outcome goes; closed when the request is gone.
    pub reply: oneshot::Sender<WaitOutcome>,
}

/// The local waiters: by ticket, and the tickets of each name.
#[derive(Default)]
pub(crate) struct Waiters {
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    by_ticket: HashMap<String, Waiter>,
    by_name: HashMap<LockName, HashSet<String>>,
}

impl Registry {
    fn insert(&mut self, ticket: String, waiter: Waiter) {
        self.by_name
            .entry(waiter.name.clone())
            .or_default()
            .insert(ticket.clone());
        self.by_ticket.insert(ticket, waiter);
    }
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `waiter` under `ticket` (before its ticket reaches Redis, so
    /// an offer that comes back at once finds it).
    pub(crate) fn insert(&self, ticket: String, waiter: Waiter) {
        self.lock().insert(ticket, waiter);
    }

    /// Takes the waiter out: its outcome is now the caller's to give.
    pub(crate) fn take(&self, ticket: &str) -> Option<Waiter> {
        let mut registry = self.lock();
        let waiter = registry.by_ticket.remove(ticket)?;
        if let Some(tickets) = registry.by_name.get_mut(&waiter.name) {
            tickets.remove(ticket);
            if tickets.is_empty() {
                registry.by_name.remove(&waiter.name);
            }
        }
        Some(waiter)
    }

    /// Puts back a waiter whose offer was lost, unless its wait is over or its
    /// request gone; then the waiter comes back to the caller to answer.
    pub(crate) fn put_back(&self, ticket: String, waiter: Waiter) -> Result<(), Waiter> {
        // Checked and inserted under one lock: a request whose deadline fired
        // while its entry was out waits for an answer instead, so it must get one.
        let mut registry = self.lock();
        if waiter.reply.is_closed() || Instant::now() >= waiter.deadline {
            return Err(waiter);
        }
        registry.insert(ticket, waiter);
        Ok(())
    }

    /// Whether requests wait on `name` here.
    pub(crate) fn waits_on(&self, name: &LockName) -> bool {
        self.lock().by_name.contains_key(name)
    }

    /// The names waited on here.
    pub(crate) fn names(&self) -> Vec<LockName> {
        self.lock().by_name.keys().cloned().collect()
    }

    /// The waiters of `name`, for `sync`: ticket, permits, lease, time left, nonce.
    pub(crate) fn of(&self, name: &LockName) -> Vec<(String, u32, u64, u64, String)> {
        let registry = self.lock();
        let now = Instant::now();
        registry
            .by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|ticket| {
                let w = registry.by_ticket.get(ticket)?;
                let left = w.deadline.saturating_duration_since(now).as_millis() as u64;
                Some((ticket.clone(), w.permits, w.lease_ms, left, w.nonce.clone()))
            })
            .collect()
    }

    /// Takes every waiter out (shutdown, Redis outage).
    pub(crate) fn take_all(&self) -> Vec<(String, Waiter)> {
        let mut registry = self.lock();
        registry.by_name.clear();
        registry.by_ticket.drain().collect()
    }
}
