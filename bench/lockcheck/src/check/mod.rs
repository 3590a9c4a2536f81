//! The checks. Each reads the whole history and reports how many violations
//! it found, with the first counterexample (operations and their times).
//! The margins they allow are in [`Bounds`] and printed with the report.

mod exclusion;
mod fences;
mod fifo;
mod liveness;

use std::collections::HashMap;

use crate::history::{History, Kind, Op, Outcome};

/// What one check found.
pub struct Finding {
    pub check: &'static str,
    /// How much it looked at (grants, pairs, requests...), in words.
    pub checked: String,
    pub violations: usize,
    /// The first counterexample.
    pub first: Option<String>,
    /// What it measured on the way.
    pub notes: String,
}

impl Finding {
    fn new(check: &'static str) -> Self {
        Self {
            check,
            checked: String::new(),
            violations: 0,
            first: None,
            notes: String::new(),
        }
    }

    fn violation(&mut self, describe: impl FnOnce() -> String) {
        self.violations += 1;
        if self.first.is_none() {
            self.first = Some(describe());
        }
    }
}

/// The margins the checks allow, all in µs.
pub struct Bounds {
    /// Clock reading slack between this process and Redis (one machine, one clock).
    pub clock_margin: i64,
    /// A waiting request counts as queued this long after it was sent.
    pub queued_after: i64,
    /// Two grants closer than this are not ordered by the FIFO check.
    pub order_margin: i64,
    /// After a fault ends, FIFO and hand-off are judged again only after this
    /// (an offer left unclaimed by a stalled replica moves on after 2 s).
    pub settle: i64,
    /// A request is answered within `wait_ms` plus this.
    pub answer_margin: i64,
    /// A freed slot reaches a waiting request within this (quiet spells).
    pub hand_off: i64,
}

impl Bounds {
    pub const DEFAULT: Bounds = Bounds {
        clock_margin: 2_000,
        queued_after: 200_000,
        order_margin: 100_000,
        settle: 2_500_000,
        answer_margin: 4_000_000,
        hand_off: 1_000_000,
    };
}

/// Runs every check of the history.
pub fn run_all(history: &History, bounds: &Bounds) -> Vec<Finding> {
    let holdings = holdings(history, bounds);
    vec![
        exclusion::check(&holdings),
        fences::real_time_order(history),
        fences::fenced_resource(history, &holdings, bounds),
        fifo::check(history, bounds),
        liveness::answered(history, bounds),
        liveness::hand_off(history, &holdings, bounds),
    ]
}

/// A grant as its holder held it.
pub struct Holding<'a> {
    pub grant: &'a Op,
    /// Its answer arrived (µs).
    pub start: i64,
    /// Its holder invoked its release, or its lease ran out (the last
    /// confirmed deadline, less the clock margin), whichever came first;
    /// cut short by a fault that may have lost it.
    pub end: i64,
    /// When its release was first invoked, if it was.
    pub released: Option<&'a Op>,
    /// Its last confirmed lease deadline (µs, Redis clock).
    pub deadline: i64,
    /// An extend of it has an unknown outcome: its real deadline is not known.
    pub uncertain: bool,
    /// A fault that may have lost it from Redis began while it was held.
    pub lost: bool,
}

/// Every grant as held, by lock name.
pub fn holdings<'a>(history: &'a History, bounds: &Bounds) -> HashMap<&'a str, Vec<Holding<'a>>> {
    let mut about: HashMap<u64, Vec<&Op>> = HashMap::new();
    for op in &history.ops {
        if let Some(grant) = op.grant_of {
            about.entry(grant).or_default().push(op);
        }
    }
    let mut by_name: HashMap<&str, Vec<Holding<'a>>> = HashMap::new();
    for grant in history.grants() {
        let mut related = about.get(&grant.id).cloned().unwrap_or_default();
        related.sort_by_key(|op| op.invoke_us);
        // An extend replaces the deadline (now + its lease: it may shorten it).
        let mut deadline = grant.expires_at_ms.unwrap_or(0) * 1000;
        let mut uncertain = false;
        let mut released: Option<&Op> = None;
        for op in related {
            match (op.kind, op.outcome) {
                (Kind::Extend, Outcome::Ok) => {
                    deadline = op.expires_at_ms.unwrap_or(0) * 1000;
                }
                // It may have set `invoke + lease` or later, or nothing: the
                // earlier of that and the deadline it had is all that is sure.
                (Kind::Extend, Outcome::Unknown) => {
                    deadline = deadline.min(op.invoke_us + op.lease_ms as i64 * 1000);
                    uncertain = true;
                }
                (Kind::Release, _) if released.is_none() => released = Some(op),
                _ => {}
            }
        }
        let mut end =
            (deadline - bounds.clock_margin).min(released.map_or(i64::MAX, |r| r.invoke_us));
        let start = grant.complete_us;
        // Redis may have lost it (and granted the slot again) from the
        // moment such a fault began.
        let loss = history
            .faults
            .iter()
            .filter(|f| f.data_loss && f.end_us >= grant.invoke_us && f.start_us < end)
            .map(|f| f.start_us)
            .min();
        if let Some(at) = loss {
            end = end.min(at.max(start));
        }
        by_name.entry(&grant.name).or_default().push(Holding {
            grant,
            start,
            end: end.max(start),
            released,
            deadline,
            uncertain,
            lost: loss.is_some(),
        });
    }
    by_name
}

/// `op` in words, for a counterexample.
pub fn describe(op: &Op) -> String {
    let mut text = format!(
        "#{} {:?} of {} via replica {} (client {}), invoked {:.3} s, completed {:.3} s",
        op.id,
        op.kind,
        op.name,
        op.replica,
        op.client,
        op.invoke_us as f64 / 1e6,
        op.complete_us as f64 / 1e6
    );
    if let Some(status) = op.status {
        text += &format!(", status {status}");
    }
    if let Some(fence) = op.fence {
        text += &format!(", fence {fence}");
    }
    if let Some(expires) = op.expires_at_ms {
        text += &format!(", expires {:.3} s", expires as f64 / 1e3);
    }
    if op.wait_ms > 0 {
        text += &format!(", wait_ms {}", op.wait_ms);
    }
    text
}

/// The p-th percentile (0..=100) of sorted `values`.
pub fn percentile(sorted: &[i64], p: usize) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() - 1) * p / 100]
}
