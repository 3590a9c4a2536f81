//! Liveness: every request is answered by `wait_ms` plus a margin, unless
//! its replica was stopped or killed meanwhile; and a slot that frees (a
//! release, a lease running out) reaches a request waiting for it within
//! the hand-off bound, in quiet spells. (That every lock is acquirable again
//! once the faults stop, and that nothing is left held or queued, is checked
//! live at the end of the run: see `main`.)

use std::collections::HashMap;

use super::{Bounds, Finding, Holding, describe, percentile};
use crate::history::{History, Kind, Op, Outcome};

/// Every request answered in time.
pub fn answered(history: &History, bounds: &Bounds) -> Finding {
    let mut finding = Finding::new("answered in time");
    let mut checked = 0;
    let mut latest_past_wait = 0;
    for op in &history.ops {
        if op.kind == Kind::FencedWrite || op.hang_up_ms.is_some() {
            continue;
        }
        // A replica that is stopped or killed answers nobody meanwhile.
        let its_replica_down = history.fault_during(op.invoke_us, op.complete_us, |f| {
            f.replicas_down.contains(&op.replica)
        });
        if its_replica_down {
            continue;
        }
        checked += 1;
        let took = op.complete_us - op.invoke_us;
        let allowed = op.wait_ms as i64 * 1000 + bounds.answer_margin;
        let unanswered = op.status.is_none();
        if !unanswered && took <= allowed {
            latest_past_wait = latest_past_wait.max(took - op.wait_ms as i64 * 1000);
            continue;
        }
        finding.violation(|| {
            format!(
                "{} after {:.3} s (allowed {:.3} s): {}",
                if unanswered {
                    "no answer"
                } else {
                    "answered late"
                },
                took as f64 / 1e6,
                allowed as f64 / 1e6,
                describe(op)
            )
        });
    }
    finding.checked = format!("{checked} requests to replicas that were running");
    finding.notes = format!(
        "latest answer past wait_ms: {:.3} s (allowed {:.1} s)",
        latest_past_wait as f64 / 1e6,
        bounds.answer_margin as f64 / 1e6
    );
    finding
}

/// A freed slot reaches a waiting request within the bound.
pub fn hand_off(
    history: &History,
    holdings: &HashMap<&str, Vec<Holding<'_>>>,
    bounds: &Bounds,
) -> Finding {
    let mut finding = Finding::new("hand-off");
    let mut waiting: HashMap<&str, Vec<&Op>> = HashMap::new();
    let mut granted: HashMap<&str, Vec<i64>> = HashMap::new();
    for op in history.ops.iter().filter(|op| op.kind == Kind::Acquire) {
        if op.granted() {
            granted.entry(&op.name).or_default().push(op.complete_us);
        }
        let waited = op.outcome == Outcome::Ok || op.status == Some(423);
        if op.wait_ms > 0 && op.hang_up_ms.is_none() && waited {
            waiting.entry(&op.name).or_default().push(op);
        }
    }
    for times in granted.values_mut() {
        times.sort();
    }
    let (mut judged, mut latencies) = (0, Vec::new());
    for (name, held) in holdings {
        let grants = granted.get(name).map(Vec::as_slice).unwrap_or_default();
        let waiters = waiting.get(name).map(Vec::as_slice).unwrap_or_default();
        for h in held.iter().filter(|h| !h.lost && !h.uncertain) {
            // When the slot freed: its release answered, or its lease ended first.
            let freed = match h.released {
                Some(r) if r.outcome == Outcome::Ok && r.invoke_us < h.deadline => r.complete_us,
                Some(r) if r.invoke_us < h.deadline => continue,
                _ => h.deadline,
            };
            let window_end = freed + bounds.hand_off;
            // Requests queued before it freed and still waiting then, with
            // time left past the bound: the slot must reach one of them.
            let someone_waited = waiters.iter().any(|w| {
                w.invoke_us + bounds.queued_after < freed
                    && w.complete_us > freed
                    && w.invoke_us + w.wait_ms as i64 * 1000 > window_end + bounds.order_margin
            });
            if !someone_waited {
                continue;
            }
            if history.fault_during(freed - bounds.settle, window_end, |_| true) {
                continue;
            }
            judged += 1;
            let next = grants.iter().find(|&&g| g > freed - bounds.clock_margin);
            match next {
                Some(&g) if g <= window_end => latencies.push((g - freed).max(0)),
                _ => finding.violation(|| {
                    format!(
                        "the slot of {name} freed at {:.3} s reached nobody within {:.1} s while requests waited; freed by\n    {}",
                        freed as f64 / 1e6,
                        bounds.hand_off as f64 / 1e6,
                        describe(h.grant)
                    )
                }),
            }
        }
    }
    latencies.sort();
    finding.checked = format!("{judged} freed slots with requests waiting, in quiet spells");
    finding.notes = format!(
        "hand-off p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 50) as f64 / 1e3,
        percentile(&latencies, 99) as f64 / 1e3,
        latencies.last().copied().unwrap_or(0) as f64 / 1e3
    );
    finding
}
