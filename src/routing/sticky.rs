//! Sticky selection: weighted rendezvous (HRW) hashing of a room key over shards, and the stick
//! table that keeps live rooms where they are while shards come and go.
//!
//! The hash is fixed so that every replica and every version agrees on every room:
//!
//! ```text
//! seed(shard)       = xxh3_64(shard name, UTF-8)
//! h(room, shard)    = xxh3_64_with_seed(room key, UTF-8, seed(shard))
//! u                 = ((h >> 11) + 0.5) / 2^53                 in (0, 1)
//! score(room,shard) = weight / -ln(u)
//! ```
//!
//! The shard with the highest score takes the room (ties, which need equal 64-bit hashes, go to
//! the higher seed). When every candidate has the same weight the score is monotonic in `h`,
//! so `h` is compared directly. Removing a shard moves only the rooms it had; adding one moves
//! to it only the rooms it now wins; weights are honoured in proportion.

use moka::sync::Cache;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The per-shard seed of the rendezvous hash.
pub fn name_seed(name: &str) -> u64 {
    xxh3_64(name.as_bytes())
}

/// Picks the index (into `candidates`) of the shard that wins `room`.
/// Candidates are `(seed, weight)`; weight 0 never wins. `uniform` says every weight is equal.
pub fn hrw_pick(
    room: &str,
    candidates: impl Iterator<Item = (usize, u64, u32)>,
    uniform: bool,
) -> Option<usize> {
    let room = room.as_bytes();
    let mut best: Option<(usize, f64, u64, u64)> = None; // (index, score, h, seed)
    for (index, seed, weight) in candidates {
        if weight == 0 {
            continue;
        }
        let h = xxh3_64_with_seed(room, seed);
        let score = if uniform {
            0.0
        } else {
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            f64::from(weight) / -u.ln()
        };
        let better = match best {
            None => true,
            Some((_, _, bh, bseed)) if uniform => (h, seed) > (bh, bseed),
            Some((_, s, _, bseed)) => score > s || (score == s && seed > bseed),
        };
        if better {
            best = Some((index, score, h, seed));
        }
    }
    best.map(|(index, ..)| index)
}

/// Milliseconds since the Unix epoch: placement times are compared between replicas.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where a room lives, and since when (Unix milliseconds): replicas that placed one room on
/// two shards at once keep the same one (see [`Placement::wins_over`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub shard: Arc<str>,
    pub placed_at_ms: u64,
    /// When this replica last told the others the room is alive (local; not compared).
    pub refreshed_at_ms: u64,
}

impl Placement {
    /// Whether this placement of a room wins over `other`, the same way on every replica: the
    /// earlier one (a room stays where it went first), and at the same millisecond the lower
    /// shard name.
    pub fn wins_over(&self, other: &Placement) -> bool {
        (self.placed_at_ms, &*self.shard) < (other.placed_at_ms, &*other.shard)
    }
}

/// What merging another replica's placement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merged {
    /// The room was unknown here.
    New,
    /// Same shard: the entry's idle timer restarted (and the earlier time kept).
    Refreshed,
    /// The other placement won: the room's requests go to its shard from now on.
    Replaced,
    /// This replica's placement won; the other replica replaces its own when it hears of it.
    Kept,
}

/// Room key -> placement, forgotten after `ttl` without traffic, bounded to `capacity`
/// entries (least useful evicted first). Lookups refresh the idle timer.
#[derive(Clone)]
pub struct StickTable {
    cache: Cache<Arc<str>, Placement>,
}

impl StickTable {
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        StickTable {
            cache: Cache::builder()
                .time_to_idle(ttl)
                .max_capacity(capacity)
                .build(),
        }
    }

    /// The most rooms it remembers.
    pub fn capacity(&self) -> u64 {
        self.cache.policy().max_capacity().unwrap_or(u64::MAX)
    }

    /// The shard `room` is stuck to; refreshes the entry's idle timer.
    pub fn get(&self, room: &str) -> Option<Arc<str>> {
        self.cache.get(room).map(|p| p.shard)
    }

    /// Where `room` is stuck, and since when; refreshes the entry's idle timer.
    pub fn placement(&self, room: &str) -> Option<Placement> {
        self.cache.get(room)
    }

    /// Places `room` on `shard` now (`placed_at_ms`, Unix milliseconds).
    pub fn insert(&self, room: &str, shard: Arc<str>, placed_at_ms: u64) {
        self.cache.insert(
            Arc::from(room),
            Placement {
                shard,
                placed_at_ms,
                refreshed_at_ms: placed_at_ms,
            },
        );
    }

    /// `room`'s placement when it was last told to the others `every` or longer before
    /// `now_ms` (it is then marked as told now): refreshes for rooms in use, at most one per
    /// room per `every`.
    pub fn refresh_due(&self, room: &str, now_ms: u64, every: u64) -> Option<Placement> {
        let p = self.cache.get(room)?;
        if now_ms.saturating_sub(p.refreshed_at_ms) < every {
            return None;
        }
        let told = Placement {
            refreshed_at_ms: now_ms,
            ..p
        };
        self.cache.insert(Arc::from(room), told.clone());
        Some(told)
    }

    /// Takes another replica's placement of `room`, keeping whichever wins.
    pub fn merge(&self, room: &str, theirs: Placement) -> Merged {
        let key: Arc<str> = Arc::from(room);
        let mut merged = Merged::New;
        self.cache
            .entry(key)
            .and_upsert_with(|current| match current {
                None => theirs,
                Some(entry) => {
                    let ours = entry.into_value();
                    if ours.shard == theirs.shard {
                        merged = Merged::Refreshed;
                        Placement {
                            placed_at_ms: ours.placed_at_ms.min(theirs.placed_at_ms),
                            shard: ours.shard,
                            refreshed_at_ms: ours.refreshed_at_ms,
                        }
                    } else if theirs.wins_over(&ours) {
                        merged = Merged::Replaced;
                        theirs
                    } else {
                        merged = Merged::Kept;
                        ours
                    }
                }
            });
        merged
    }

    /// Number of entries (approximate while writes are pending).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry; walks the whole table (reloads, full syncs and the admin API only).
    pub fn entries(&self) -> Vec<(Arc<str>, Placement)> {
        self.cache
            .iter()
            .map(|(room, placement)| ((*room).clone(), placement))
            .collect()
    }

    /// Rooms per shard name; walks the whole table, for the admin API only.
    pub fn rooms_per_shard(&self) -> HashMap<Arc<str>, u64> {
        let mut counts = HashMap::new();
        for (_, placement) in self.cache.iter() {
            *counts.entry(placement.shard).or_insert(0) += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shards(n: usize) -> Vec<(String, u64)> {
        (0..n)
            .map(|i| {
                let name = format!("shard-{i}");
                let seed = name_seed(&name);
                (name, seed)
            })
            .collect()
    }

    fn pick(room: &str, set: &[(String, u64)], weights: &[u32]) -> Option<String> {
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        hrw_pick(
            room,
            set.iter()
                .enumerate()
                .map(|(i, (_, seed))| (i, *seed, weights[i])),
            uniform,
        )
        .map(|i| set[i].0.clone())
    }

    #[test]
    fn hash_is_fixed_across_versions() {
        // Replicas and future versions must agree; these values pin the documented function.
        assert_eq!(name_seed("shard-0"), xxh3_64(b"shard-0"));
        let set = shards(3);
        let picks: Vec<_> = ["a", "b", "c", "lobby", "standup"]
            .iter()
            .map(|r| pick(r, &set, &[1, 1, 1]).unwrap())
            .collect();
        let again: Vec<_> = ["a", "b", "c", "lobby", "standup"]
            .iter()
            .map(|r| pick(r, &set, &[5, 5, 5]).unwrap())
            .collect();
        assert_eq!(picks, again, "uniform weights of any size pick alike");
    }

    #[test]
    fn uniform_fast_path_matches_weighted_formula() {
        let set = shards(7);
        for i in 0..2000 {
            let room = format!("room-{i}");
            let fast = pick(&room, &set, &[1; 7]);
            let slow = hrw_pick(
                &room,
                set.iter().enumerate().map(|(i, (_, s))| (i, *s, 1)),
                false,
            )
            .map(|i| set[i].0.clone());
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn spread_is_even_and_weights_are_honoured() {
        let set = shards(3);
        let mut even = HashMap::new();
        let mut weighted = HashMap::new();
        for i in 0..30_000 {
            let room = format!("room-{i}");
            *even
                .entry(pick(&room, &set, &[1, 1, 1]).unwrap())
                .or_insert(0) += 1;
            *weighted
                .entry(pick(&room, &set, &[1, 1, 2]).unwrap())
                .or_insert(0) += 1;
        }
        for n in even.values() {
            assert!((9_000..=11_000).contains(n), "{even:?}");
        }
        let w2 = weighted["shard-2"] as f64 / 30_000.0;
        assert!(
            (0.47..0.53).contains(&w2),
            "weight 2 of 4 should take half: {weighted:?}"
        );
    }

    #[test]
    fn zero_weight_never_wins() {
        let set = shards(2);
        for i in 0..500 {
            assert_eq!(pick(&format!("r{i}"), &set, &[0, 1]).unwrap(), "shard-1");
        }
        assert_eq!(pick("r", &set, &[0, 0]), None);
    }

    proptest! {
        #[test]
        fn removing_a_shard_moves_only_its_rooms(n in 2usize..12, gone in 0usize..12, rooms in proptest::collection::vec("[a-z0-9]{1,16}", 1..200)) {
            let gone = gone % n;
            let set = shards(n);
            let mut rest = set.clone();
            rest.remove(gone);
            for room in &rooms {
                let before = pick(room, &set, &vec![1; n]).unwrap();
                let after = pick(room, &rest, &vec![1; n - 1]).unwrap();
                if before != set[gone].0 {
                    prop_assert_eq!(before, after);
                }
            }
        }

        #[test]
        fn adding_a_shard_moves_rooms_only_to_it(n in 1usize..12, w in proptest::collection::vec(1u32..5, 13), rooms in proptest::collection::vec("[a-z0-9]{1,16}", 1..200)) {
            let set = shards(n + 1);
            let before_set = set[..n].to_vec();
            for room in &rooms {
                let before = pick(room, &before_set, &w[..n]).unwrap();
                let after = pick(room, &set, &w[..n + 1]).unwrap();
                prop_assert!(after == before || after == set[n].0);
            }
        }
    }

    #[test]
    fn stick_table_remembers_and_counts() {
        let t = StickTable::new(Duration::from_secs(60), 100);
        t.insert("a", Arc::from("shard-0"), 1);
        t.insert("b", Arc::from("shard-0"), 1);
        t.insert("c", Arc::from("shard-1"), 1);
        assert_eq!(t.get("a").as_deref(), Some("shard-0"));
        assert_eq!(t.len(), 3);
        assert_eq!(t.rooms_per_shard()[&Arc::<str>::from("shard-0")], 2);
    }

    #[test]
    fn merging_keeps_the_first_placement_everywhere() {
        let at = |shard: &str, ms: u64| Placement {
            shard: Arc::from(shard),
            placed_at_ms: ms,
            refreshed_at_ms: ms,
        };
        let (x, y) = (
            StickTable::new(Duration::from_secs(60), 100),
            StickTable::new(Duration::from_secs(60), 100),
        );
        // Two replicas place "r" in the same instant on different shards, then hear of each
        // other's placement: both end on the same one.
        x.insert("r", Arc::from("shard-b"), 1_000);
        y.insert("r", Arc::from("shard-a"), 1_000);
        assert_eq!(x.merge("r", y.placement("r").unwrap()), Merged::Replaced);
        assert_eq!(y.merge("r", at("shard-b", 1_000)), Merged::Kept);
        assert_eq!(x.get("r"), y.get("r"));
        assert_eq!(x.get("r").as_deref(), Some("shard-a"));
        // A later placement elsewhere (a replica that never saw the room) loses.
        assert_eq!(x.merge("r", at("shard-new", 5_000)), Merged::Kept);
        assert_eq!(x.merge("r", at("shard-a", 3_000)), Merged::Refreshed);
        assert_eq!(x.placement("r").unwrap().placed_at_ms, 1_000);
        assert_eq!(x.merge("s", at("shard-new", 5_000)), Merged::New);
        assert_eq!(x.get("s").as_deref(), Some("shard-new"));
    }

    #[test]
    fn refreshes_are_due_once_per_interval() {
        let t = StickTable::new(Duration::from_secs(60), 100);
        t.insert("r", Arc::from("shard-0"), 1_000);
        assert_eq!(t.refresh_due("r", 5_000, 15_000), None);
        let told = t.refresh_due("r", 16_000, 15_000).unwrap();
        assert_eq!((told.placed_at_ms, told.refreshed_at_ms), (1_000, 16_000));
        assert_eq!(t.refresh_due("r", 17_000, 15_000), None);
        assert!(t.refresh_due("r", 31_000, 15_000).is_some());
        assert_eq!(t.refresh_due("unknown", 31_000, 15_000), None);
    }
}
