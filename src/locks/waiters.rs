//! The requests waiting on this replica, by ticket. Whoever takes a waiter
//! out of the registry owns its outcome: the background worker when an offer
//! for it arrives (it claims the slot), the request itself when its wait runs
//! out or its caller leaves. While a claim is under way the ticket is marked
//! as being claimed, so a second copy of the same offer (a re-check after a
//! reconnect sees it again) is ignored, never declined.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

use super::domain::{Grant, LockName};
use super::error::LockError;
use super::store::SyncTicket;

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
    /// Its place in line once Redis queued it (Redis clock, µs): kept when it
    /// must be queued again. `None` while its first call is under way.
    pub arrival_us: Option<u64>,
    /// A re-check of its lock ran while its first call was under way, and
    /// left it out: it must run again once the ticket is queued.
    pub recheck_missed: bool,
    /// Where the outcome goes; closed when the request is gone.
    pub reply: oneshot::Sender<WaitOutcome>,
}

/// Who an offer for a ticket is for.
pub(crate) enum OfferFor {
    /// This waiter: claim it for them (the ticket is now marked as being claimed).
    Waiter(Waiter),
    /// A claim for the ticket is already under way: this is a second copy.
    BeingClaimed,
    /// Nobody here (the request left, or settled already).
    Nobody,
}

/// The local waiters: by ticket, the tickets of each name, and the tickets
/// whose claim is under way.
#[derive(Default)]
pub(crate) struct Waiters {
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    by_ticket: HashMap<String, Waiter>,
    by_name: HashMap<LockName, HashSet<String>>,
    claiming: HashSet<String>,
}

impl Registry {
    fn insert(&mut self, ticket: String, waiter: Waiter) {
        self.by_name
            .entry(waiter.name.clone())
            .or_default()
            .insert(ticket.clone());
        self.by_ticket.insert(ticket, waiter);
    }

    fn remove(&mut self, ticket: &str) -> Option<Waiter> {
        let waiter = self.by_ticket.remove(ticket)?;
        if let Some(tickets) = self.by_name.get_mut(&waiter.name) {
            tickets.remove(ticket);
            if tickets.is_empty() {
                self.by_name.remove(&waiter.name);
            }
        }
        Some(waiter)
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

    /// Notes the waiter's place in line once Redis queued it; true when a
    /// re-check of its lock left it out meanwhile (run one again).
    pub(crate) fn set_arrival(&self, ticket: &str, arrival_us: u64) -> bool {
        let mut registry = self.lock();
        let Some(waiter) = registry.by_ticket.get_mut(ticket) else {
            return false;
        };
        waiter.arrival_us = Some(arrival_us);
        std::mem::take(&mut waiter.recheck_missed)
    }

    /// Takes the waiter out: its outcome is now the caller's to give.
    pub(crate) fn take(&self, ticket: &str) -> Option<Waiter> {
        self.lock().remove(ticket)
    }

    /// Takes the waiter out to claim an offer for it, and marks its ticket
    /// as being claimed until [`Self::claim_ended`] or [`Self::put_back`].
    pub(crate) fn take_for_claim(&self, ticket: &str) -> OfferFor {
        let mut registry = self.lock();
        if registry.claiming.contains(ticket) {
            return OfferFor::BeingClaimed;
        }
        match registry.remove(ticket) {
            Some(waiter) => {
                registry.claiming.insert(ticket.to_owned());
                OfferFor::Waiter(waiter)
            }
            None => OfferFor::Nobody,
        }
    }

    /// The claim of `ticket` is over (its waiter was answered).
    pub(crate) fn claim_ended(&self, ticket: &str) {
        self.lock().claiming.remove(ticket);
    }

    /// Puts back a waiter whose offer came to nothing, unless its wait is
    /// over or its request gone; then the waiter comes back to the caller to
    /// answer. Either way the claim is over.
    pub(crate) fn put_back(&self, ticket: String, waiter: Waiter) -> Result<(), Waiter> {
        // Checked and inserted under one lock: a request whose deadline fired
        // while its entry was out waits for an answer instead, so it must get one.
        let mut registry = self.lock();
        registry.claiming.remove(&ticket);
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

    /// The waiters of `name` as `sync` re-checks them, with the permits they
    /// asked for (the same for all, or they could not share the lock).
    /// A waiter whose first call is still under way is left out (and
    /// marked): that call may have been granted at once, and queueing its
    /// ticket too would grant the request twice; once queued, it is re-checked.
    pub(crate) fn sync_tickets(&self, name: &LockName) -> Option<(u32, Vec<SyncTicket>)> {
        let mut registry = self.lock();
        let registry = &mut *registry;
        let now = Instant::now();
        let mut permits = None;
        let tickets = registry
            .by_name
            .get(name)?
            .iter()
            .filter_map(|ticket| {
                let w = registry.by_ticket.get_mut(ticket)?;
                if w.arrival_us.is_none() {
                    w.recheck_missed = true;
                    return None;
                }
                permits = Some(w.permits);
                Some(SyncTicket {
                    ticket: ticket.clone(),
                    lease_ms: w.lease_ms,
                    wait_left_ms: w.deadline.saturating_duration_since(now).as_millis() as u64,
                    nonce: w.nonce.clone(),
                    arrival_us: w.arrival_us,
                })
            })
            .collect();
        Some((permits?, tickets))
    }

    /// Takes every waiter out (shutdown, Redis outage).
    pub(crate) fn take_all(&self) -> Vec<(String, Waiter)> {
        let mut registry = self.lock();
        registry.by_name.clear();
        registry.by_ticket.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn waiter() -> (Waiter, oneshot::Receiver<WaitOutcome>) {
        let (reply, outcome) = oneshot::channel();
        let waiter = Waiter {
            name: LockName::parse("n").unwrap(),
            permits: 1,
            lease_ms: 1000,
            nonce: "00".into(),
            deadline: Instant::now() + Duration::from_secs(60),
            arrival_us: None,
            recheck_missed: false,
            reply,
        };
        (waiter, outcome)
    }

    /// Issue 23, defect 7: a second copy of an offer never reaches the
    /// waiter, and is not "for nobody" (which would decline it) while the
    /// first copy's claim is under way.
    #[test]
    fn a_second_copy_of_an_offer_is_ignored_while_the_first_is_claimed() {
        let waiters = Waiters::default();
        let (w, _outcome) = waiter();
        waiters.insert("t".into(), w);
        let OfferFor::Waiter(claimed) = waiters.take_for_claim("t") else {
            panic!("the first copy finds the waiter");
        };
        assert!(matches!(
            waiters.take_for_claim("t"),
            OfferFor::BeingClaimed
        ));
        assert!(waiters.put_back("t".into(), claimed).is_ok());
        assert!(matches!(waiters.take_for_claim("t"), OfferFor::Waiter(_)));
        waiters.claim_ended("t");
        assert!(matches!(waiters.take_for_claim("t"), OfferFor::Nobody));
    }

    /// A lock created by a request's own first call is announced to every
    /// replica, and the announcement can be heard here before that call's
    /// reply. Re-queueing the ticket then granted the request a second slot
    /// that nobody held (seen under load: a fleet budget slot lost for its
    /// whole lease). A ticket not yet queued is left out of the re-check and
    /// re-checked once it is queued.
    #[test]
    fn a_recheck_leaves_out_a_ticket_whose_first_call_is_under_way() {
        let name = LockName::parse("n").unwrap();
        let waiters = Waiters::default();
        let (in_flight, _a) = waiter();
        let (queued, _b) = waiter();
        waiters.insert("first-call".into(), in_flight);
        waiters.insert("queued".into(), queued);
        assert!(!waiters.set_arrival("queued", 7));

        let (_, tickets) = waiters.sync_tickets(&name).expect("one ticket to re-check");
        let names: Vec<&str> = tickets.iter().map(|t| t.ticket.as_str()).collect();
        assert_eq!(names, ["queued"]);
        assert_eq!(tickets[0].arrival_us, Some(7));

        assert!(
            waiters.set_arrival("first-call", 9),
            "the re-check it missed must run again"
        );
        assert!(!waiters.set_arrival("first-call", 9), "once");
        assert_eq!(waiters.sync_tickets(&name).unwrap().1.len(), 2);
    }
}
