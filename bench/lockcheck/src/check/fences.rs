//! Fences: strictly increasing in the real-time order of grants (a grant
//! answered before another was asked for has the lower fence), across
//! failovers and data loss alike; and the fenced MySQL row, written by each
//! holder `WHERE fence < ?`, never takes a lower fence after a higher one
//! and never refuses the holder that holds the lock.

use std::collections::HashMap;

use super::{Bounds, Finding, Holding, describe};
use crate::history::{History, Kind, Op};

/// Grant Y asked for after grant X was answered has a higher fence than X.
pub fn real_time_order(history: &History) -> Finding {
    let mut finding = Finding::new("fence order");
    let mut by_name: HashMap<&str, Vec<&Op>> = HashMap::new();
    for grant in history.grants() {
        by_name.entry(&grant.name).or_default().push(grant);
    }
    let mut checked = 0;
    for grants in by_name.values() {
        checked += grants.len();
        for (x, y) in not_rising(grants) {
            finding.violation(|| {
                format!(
                    "a fence that does not rise:\n    {}\n  answered before\n    {}\n  was asked for",
                    describe(x),
                    describe(y)
                )
            });
        }
        let mut fences: Vec<Option<u64>> = grants.iter().map(|g| g.fence).collect();
        fences.sort();
        for pair in fences.windows(2) {
            if pair[0] == pair[1] {
                finding.violation(|| format!("fence {:?} granted twice", pair[0]));
            }
        }
    }
    finding.checked = format!("{checked} grants");
    finding
}

/// The fenced row: accepted writes rise in real-time order, and a mutex's
/// holder is never refused while it holds (a higher fence could only have
/// been issued while it held if exclusion or fence order broke).
pub fn fenced_resource(
    history: &History,
    holdings: &HashMap<&str, Vec<Holding<'_>>>,
    bounds: &Bounds,
) -> Finding {
    let mut finding = Finding::new("fenced row");
    let writes: Vec<&Op> = history
        .ops
        .iter()
        .filter(|op| op.kind == Kind::FencedWrite && op.accepted.is_some())
        .collect();
    let mut accepted: Vec<&Op> = writes
        .iter()
        .copied()
        .filter(|w| w.accepted == Some(true))
        .collect();
    accepted.sort_by_key(|w| w.complete_us);
    // A holder that writes again changes nothing: its first write counts.
    let mut seen = std::collections::HashSet::new();
    accepted.retain(|w| seen.insert(w.grant_of));
    let mut by_name: HashMap<&str, Vec<&Op>> = HashMap::new();
    for w in &accepted {
        by_name.entry(&w.name).or_default().push(w);
    }
    for done in by_name.values() {
        for (h, w) in not_rising(done) {
            finding.violation(|| {
                format!(
                    "the row took fence {:?} after {:?}:\n    {}\n    {}",
                    w.fence,
                    h.fence,
                    describe(h),
                    describe(w)
                )
            });
        }
    }
    // A mutex holder refused while it held.
    let holding_of: HashMap<u64, &Holding<'_>> = holdings
        .values()
        .flatten()
        .map(|h| (h.grant.id, h))
        .collect();
    let refused: Vec<&&Op> = writes
        .iter()
        .filter(|w| w.accepted == Some(false))
        .collect();
    for w in refused.iter().filter(|w| w.permits == 1) {
        let Some(h) = w.grant_of.and_then(|g| holding_of.get(&g)) else {
            continue;
        };
        if w.invoke_us >= h.start && w.complete_us + bounds.clock_margin <= h.end && !h.lost {
            finding.violation(|| {
                format!(
                    "the row (at fence {:?}) refused the holder of the mutex:\n    {}\n    {}",
                    w.read_back,
                    describe(h.grant),
                    describe(w)
                )
            });
        }
    }
    // A semaphore's holders race each other for the row, so only a
    // mutex's refusals say something: with no violation above, each came
    // after its holder's lease ended or its grant was lost.
    let refused_mutex = refused.iter().filter(|w| w.permits == 1).count();
    finding.checked = format!(
        "{} writes ({} taken, {} refused, {refused_mutex} of them by a mutex's row)",
        writes.len(),
        writes.len() - refused.len(),
        refused.len()
    );
    finding
}

/// Pairs (x, y) of `ops` where x completed before y was invoked, yet y's
/// fence is not above x's (x the highest-fenced of those done by then).
fn not_rising<'a>(ops: &[&'a Op]) -> Vec<(&'a Op, &'a Op)> {
    let mut done = ops.to_vec();
    done.sort_by_key(|op| op.complete_us);
    let mut asked = ops.to_vec();
    asked.sort_by_key(|op| op.invoke_us);
    let (mut highest, mut next): (Option<&Op>, usize) = (None, 0);
    let mut falls = Vec::new();
    for y in asked {
        while next < done.len() && done[next].complete_us < y.invoke_us {
            if highest.is_none_or(|h| done[next].fence > h.fence) {
                highest = Some(done[next]);
            }
            next += 1;
        }
        if let Some(x) = highest
            && y.fence <= x.fence
        {
            falls.push((x, y));
        }
    }
    falls
}
