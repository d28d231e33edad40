//! Drains and undrains made through a replica's admin API, kept per pool by shard name and
//! shared with the other replicas (`[peers]`): an operator drains the edge, not one pod of it.
//! Each carries when and where it was made; of two for the same shard, every replica keeps the
//! later (then the one made by the greater replica name, then the drain), so they agree
//! whatever order the two arrive in. Kept by name, so a drain holds for a shard this replica
//! discovers only later, and across reloads. Pure but for a mutex.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A drain (or undrain) of one shard, made `at_ms` (Unix ms) through replica `by`'s admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminDrain {
    pub drained: bool,
    pub at_ms: u64,
    pub by: Arc<str>,
}

impl AdminDrain {
    /// Whether this one stands over `other` for the same shard, the same way on every replica.
    pub fn wins_over(&self, other: &AdminDrain) -> bool {
        (self.at_ms, &*self.by, self.drained) > (other.at_ms, &*other.by, other.drained)
    }
}

/// Shards remembered per pool, at most (the oldest is forgotten first).
pub const MAX_DRAINS: usize = 4096;

#[derive(Default)]
pub struct AdminDrains {
    by_shard: Mutex<HashMap<Arc<str>, AdminDrain>>,
}

impl AdminDrains {
    /// Takes `drain` for `shard` if it stands over what is known; returns whether it did.
    pub fn apply(&self, shard: &str, drain: AdminDrain) -> bool {
        let mut all = self.by_shard.lock().unwrap_or_else(|e| e.into_inner());
        if all.get(shard).is_some_and(|known| !drain.wins_over(known)) {
            return false;
        }
        if all.len() >= MAX_DRAINS && !all.contains_key(shard) {
            let oldest = all
                .iter()
                .min_by_key(|(_, d)| d.at_ms)
                .map(|(name, _)| name.clone());
            if let Some(name) = oldest {
                all.remove(&name);
            }
        }
        all.insert(Arc::from(shard), drain);
        true
    }

    pub fn get(&self, shard: &str) -> Option<AdminDrain> {
        let all = self.by_shard.lock().unwrap_or_else(|e| e.into_inner());
        all.get(shard).cloned()
    }

    /// Every shard's last drain or undrain, by shard name.
    pub fn all(&self) -> Vec<(Arc<str>, AdminDrain)> {
        let all = self.by_shard.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = all.iter().map(|(k, d)| (k.clone(), d.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(drained: bool, at_ms: u64, by: &str) -> AdminDrain {
        AdminDrain {
            drained,
            at_ms,
            by: Arc::from(by),
        }
    }

    #[test]
    fn the_later_call_stands_in_any_order() {
        let calls = [
            d(true, 100, "edge-a"),
            d(false, 200, "edge-b"),
            d(true, 200, "edge-a"),
            d(true, 50, "edge-c"),
        ];
        // Every order of the four gives the same outcome: b's undrain (200, "edge-b").
        let orders = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]];
        for order in orders {
            let drains = AdminDrains::default();
            for i in order {
                drains.apply("shard-1", calls[i].clone());
            }
            assert_eq!(drains.get("shard-1"), Some(d(false, 200, "edge-b")));
        }
        let drains = AdminDrains::default();
        assert!(drains.apply("shard-1", d(true, 10, "a")));
        assert!(
            !drains.apply("shard-1", d(true, 10, "a")),
            "the same call again"
        );
        assert!(!drains.apply("shard-1", d(false, 5, "z")), "an older call");
    }

    #[test]
    fn the_oldest_is_forgotten_past_the_limit() {
        let drains = AdminDrains::default();
        for i in 0..MAX_DRAINS as u64 + 1 {
            drains.apply(&format!("s{i}"), d(true, 1_000 + i, "a"));
        }
        assert_eq!(drains.all().len(), MAX_DRAINS);
        assert!(drains.get("s0").is_none());
        assert!(drains.get("s1").is_some());
    }
}
