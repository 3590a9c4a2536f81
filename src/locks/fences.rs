//! The highest fence this replica has seen per lock: a floor for the fences
//! of a lock that Redis creates again after losing it, in case Redis' clock
//! (where fences otherwise restart from) is behind (docs/locks.md).

use std::collections::HashMap;
use std::sync::Mutex;

use super::domain::LockName;

/// Most names remembered; past it the map starts over (the clock still holds).
const MAX_NAMES: usize = 100_000;

/// Highest fence seen, by name.
#[derive(Default)]
pub(crate) struct FenceFloors {
    seen: Mutex<HashMap<LockName, u64>>,
}

impl FenceFloors {
    /// Notes a fence granted or extended for `name`.
    pub(crate) fn saw(&self, name: &LockName, fence: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_NAMES && !seen.contains_key(name) {
            seen.clear();
        }
        let floor = seen.entry(name.clone()).or_default();
        *floor = (*floor).max(fence);
    }

    /// Fences of `name` created from now on must be above this.
    pub(crate) fn floor(&self, name: &LockName) -> u64 {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(name).copied().unwrap_or(0)
    }
}
