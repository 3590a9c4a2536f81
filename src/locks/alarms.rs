//! When to look at a lock again: the earliest lease or offer deadline of
//! each lock that has waiters here. One task sleeps until the next one and
//! tells the background worker ([`Event::Due`]).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::domain::LockName;
use super::events::{Event, Events};

/// Sets alarms; its task runs until the clock is dropped.
pub(crate) struct AlarmClock {
    tx: mpsc::UnboundedSender<(LockName, Instant)>,
}

impl AlarmClock {
    /// A clock whose task, on the current runtime, sends `Due(name)` to
    /// `events` at each alarm.
    pub(crate) fn start(events: Events) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(keep_alarms(rx, events));
        Self { tx }
    }

    /// Rings for `name` in `after` (+1 ms: a deadline equal to Redis' now is
    /// not yet past, and the clocks need not agree to the millisecond). An
    /// earlier alarm for the name stands.
    pub(crate) fn set(&self, name: &LockName, after: Duration) {
        let at = Instant::now() + after + Duration::from_millis(1);
        let _ = self.tx.send((name.clone(), at));
    }
}

async fn keep_alarms(mut rx: mpsc::UnboundedReceiver<(LockName, Instant)>, events: Events) {
    let mut due: BTreeSet<(Instant, LockName)> = BTreeSet::new();
    let mut by_name: HashMap<LockName, Instant> = HashMap::new();
    loop {
        let next = due.first().map(|(at, _)| *at);
        let wait = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            request = rx.recv() => {
                let Some((name, at)) = request else { return };
                match by_name.get(&name) {
                    Some(current) if *current <= at => {}
                    current => {
                        if let Some(current) = current {
                            due.remove(&(*current, name.clone()));
                        }
                        due.insert((at, name.clone()));
                        by_name.insert(name, at);
                    }
                }
            }
            () = wait => {
                let now = Instant::now();
                while let Some((at, _)) = due.first() {
                    if *at > now {
                        break;
                    }
                    if let Some((_, name)) = due.pop_first() {
                        by_name.remove(&name);
                        events.send(Event::Due(name));
                    }
                }
            }
        }
    }
}
