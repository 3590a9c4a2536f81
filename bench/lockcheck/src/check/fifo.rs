//! FIFO: a request that queued clearly earlier (sent `queued_after` before)
//! is served before a later one, across replicas: no later request is
//! granted (by `order_margin`) while it still waits. Not judged across a
//! fault or for `settle` after one: docs/locks.md names how each may reorder
//! (a replica counted as gone loses its turn, Redis losing a queue, a
//! request whose replica or Redis link stalls reaching Redis later).

use std::collections::HashMap;

use super::{Bounds, Finding, describe};
use crate::history::{History, Kind, Op, Outcome};

pub fn check(history: &History, bounds: &Bounds) -> Finding {
    let mut finding = Finding::new("fifo");
    let mut waited: HashMap<&str, Vec<&Op>> = HashMap::new();
    let mut granted: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in history.ops.iter().filter(|op| op.kind == Kind::Acquire) {
        if op.granted() {
            granted.entry(&op.name).or_default().push(op);
        }
        let answered = op.outcome == Outcome::Ok || op.status == Some(423);
        if op.wait_ms > 0 && op.hang_up_ms.is_none() && answered {
            waited.entry(&op.name).or_default().push(op);
        }
    }
    let mut judged = 0;
    for (name, waiters) in &waited {
        let mut grants = granted.get(name).cloned().unwrap_or_default();
        grants.sort_by_key(|g| g.complete_us);
        for a in waiters {
            let quiet = !history.fault_during(a.invoke_us - bounds.settle, a.complete_us, |_| true);
            if !quiet {
                continue;
            }
            judged += 1;
            let overtaken = grants.iter().find(|b| {
                b.id != a.id
                    && b.invoke_us > a.invoke_us + bounds.queued_after
                    && b.complete_us + bounds.order_margin < a.complete_us
            });
            if let Some(b) = overtaken {
                finding.violation(|| {
                    format!(
                        "a later request was served while an earlier one waited:\n    {}\n  waited, and\n    {}\n  was granted",
                        describe(a),
                        describe(b)
                    )
                });
            }
        }
    }
    finding.checked = format!("{judged} waits in quiet spells");
    finding
}
