//! Exclusion: at no instant do more than `permits` grants of a name hold,
//! counting a grant from its answer until its release was invoked or its
//! lease ended (see [`super::Holding`]). A fault that may have lost a grant
//! from Redis (data loss: FLUSHALL, eviction, a failover without replica
//! acknowledgements) ends it at that fault: docs/locks.md promises no
//! exclusion across a loss, only fences that go on rising.

use std::collections::HashMap;

use super::{Finding, Holding, describe};

pub fn check(holdings: &HashMap<&str, Vec<Holding<'_>>>) -> Finding {
    let mut finding = Finding::new("exclusion");
    let mut grants = 0;
    let mut cut_by_loss = 0;
    for (name, held) in holdings {
        grants += held.len();
        cut_by_loss += held.iter().filter(|h| h.lost).count();
        let permits = held.first().map_or(1, |h| h.grant.permits) as usize;
        // (time, +1 start / -1 end, holding); ends sort before starts at one instant.
        let mut events: Vec<(i64, i8, usize)> = Vec::with_capacity(held.len() * 2);
        for (i, h) in held.iter().enumerate() {
            if h.end > h.start {
                events.push((h.start, 1, i));
                events.push((h.end, -1, i));
            }
        }
        events.sort();
        let mut inside: Vec<usize> = Vec::new();
        for (at, step, i) in events {
            if step < 0 {
                inside.retain(|&j| j != i);
                continue;
            }
            inside.push(i);
            if inside.len() > permits {
                finding.violation(|| {
                    let holders: Vec<String> = inside
                        .iter()
                        .map(|&j| {
                            let h = &held[j];
                            format!(
                                "    {} (holding {:.3}..{:.3} s)",
                                describe(h.grant),
                                h.start as f64 / 1e6,
                                h.end as f64 / 1e6
                            )
                        })
                        .collect();
                    format!(
                        "{} holders of {name} (permits {permits}) at {:.3} s:\n{}",
                        inside.len(),
                        at as f64 / 1e6,
                        holders.join("\n")
                    )
                });
            }
        }
    }
    finding.checked = format!("{grants} grants");
    finding.notes = format!("{cut_by_loss} grants cut short by a fault that may have lost them");
    finding
}
