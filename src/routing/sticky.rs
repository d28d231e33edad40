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

/// Where a room lives: its shard, the room's generation there, and since when (Unix
/// milliseconds). Every replica keeps, of the placements it hears of, the one that wins (see
/// [`Placement::wins_over`]), so any order of delivery ends in the same table everywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub shard: Arc<str>,
    /// The room's generation: 1 when it is first placed, one more at each move (off a shard
    /// that died, left or refused it). A move therefore wins over the placement it replaces,
    /// on every replica, however late that placement's other copies arrive.
    pub version: u32,
    pub placed_at_ms: u64,
    /// When this replica last told the others the room is alive (local; not compared).
    pub refreshed_at_ms: u64,
}

impl Placement {
    /// A room's first placement, or its move from `previous` (the generation after it).
    pub fn new(shard: Arc<str>, previous: Option<&Placement>, placed_at_ms: u64) -> Self {
        Placement {
            shard,
            version: previous.map_or(1, |p| p.version.saturating_add(1)),
            placed_at_ms,
            refreshed_at_ms: placed_at_ms,
        }
    }

    /// Whether this placement of a room wins over `other`, the same way on every replica: the
    /// later generation (a move replaces what it moved from); within one generation the
    /// earlier placement (the first of two replicas placing a room at once), and at the same
    /// millisecond the lower shard name. A total order, so merging is commutative.
    pub fn wins_over(&self, other: &Placement) -> bool {
        self.rank() < other.rank()
    }

    fn rank(&self) -> (std::cmp::Reverse<u32>, u64, &str) {
        (
            std::cmp::Reverse(self.version),
            self.placed_at_ms,
            &self.shard,
        )
    }
}

/// What merging another replica's placement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    /// The room was unknown here.
    New,
    /// Ours won or is the same placement; its idle timer restarted.
    Kept,
    /// The other placement won on the same shard (an older copy of it): nothing moves.
    Refreshed,
    /// The other placement won on another shard: the room's requests go there from now on,
    /// and connections this replica opened to `from` for the room are on the losing shard.
    Replaced { from: Arc<str> },
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

    /// Places `room` on `shard` now (`placed_at_ms`, Unix milliseconds): its first placement,
    /// or a move from where it is (the next generation). Returns the placement.
    pub fn insert(&self, room: &str, shard: Arc<str>, placed_at_ms: u64) -> Placement {
        self.cache
            .entry(Arc::from(room))
            .and_upsert_with(|previous| {
                let previous = previous.map(|e| e.into_value());
                Placement::new(shard, previous.as_ref(), placed_at_ms)
            })
            .into_value()
    }

    /// Keeps `placement` of `room` as it is (a reload carrying a table over).
    pub fn restore(&self, room: &str, placement: Placement) {
        self.cache.insert(Arc::from(room), placement);
    }

    /// `room`'s placement when it was last told to the others `every` or longer before
    /// `now_ms` (it is then marked as told now): refreshes for rooms in use, at most one per
    /// room per `every`.
    pub fn refresh_due(&self, room: &str, now_ms: u64, every: u64) -> Option<Placement> {
        let p = self.cache.get(room)?;
        if now_ms.saturating_sub(p.refreshed_at_ms) < every {
            return None;
        }
        // Marked on the entry as it is now: a merge since the read above is kept.
        let told = self
            .cache
            .entry(Arc::from(room))
            .and_upsert_with(|current| Placement {
                refreshed_at_ms: now_ms,
                ..current.map_or(p, |e| e.into_value())
            })
            .into_value();
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
                    if !theirs.wins_over(&ours) {
                        merged = Merged::Kept;
                        return ours;
                    }
                    merged = if ours.shard == theirs.shard {
                        Merged::Refreshed
                    } else {
                        Merged::Replaced {
                            from: ours.shard.clone(),
                        }
                    };
                    Placement {
                        refreshed_at_ms: ours.refreshed_at_ms,
                        ..theirs
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

    fn at(shard: &str, version: u32, ms: u64) -> Placement {
        Placement {
            shard: Arc::from(shard),
            version,
            placed_at_ms: ms,
            refreshed_at_ms: ms,
        }
    }

    #[test]
    fn merging_keeps_the_first_placement_of_the_latest_generation() {
        let (x, y) = (
            StickTable::new(Duration::from_secs(60), 100),
            StickTable::new(Duration::from_secs(60), 100),
        );
        // Two replicas place "r" in the same instant on different shards, then hear of each
        // other's placement: both end on the same one.
        x.insert("r", Arc::from("shard-b"), 1_000);
        y.insert("r", Arc::from("shard-a"), 1_000);
        assert_eq!(
            x.merge("r", y.placement("r").unwrap()),
            Merged::Replaced {
                from: Arc::from("shard-b")
            }
        );
        assert_eq!(y.merge("r", at("shard-b", 1, 1_000)), Merged::Kept);
        assert_eq!(x.get("r"), y.get("r"));
        assert_eq!(x.get("r").as_deref(), Some("shard-a"));
        // A later placement elsewhere in the same generation (a replica that never saw the
        // room) loses; an older copy of the same placement changes nothing.
        assert_eq!(x.merge("r", at("shard-new", 1, 5_000)), Merged::Kept);
        assert_eq!(x.merge("r", at("shard-a", 1, 3_000)), Merged::Kept);
        assert_eq!(x.merge("r", at("shard-a", 1, 500)), Merged::Refreshed);
        assert_eq!(x.placement("r").unwrap().placed_at_ms, 500);
        assert_eq!(x.merge("s", at("shard-new", 1, 5_000)), Merged::New);
        assert_eq!(x.get("s").as_deref(), Some("shard-new"));
    }

    #[test]
    fn a_move_replaces_the_placement_it_moved_from_everywhere() {
        // The issue's reproduction: x moves "r" off a dead shard-0; y, which still has the
        // first placement (earlier), takes the move and does not keep the dead shard.
        let (x, y) = (
            StickTable::new(Duration::from_secs(60), 100),
            StickTable::new(Duration::from_secs(60), 100),
        );
        let first = x.insert("r", Arc::from("shard-0"), 1_000);
        assert_eq!(first.version, 1);
        assert_eq!(y.merge("r", first.clone()), Merged::New);
        let moved = x.insert("r", Arc::from("shard-2"), 9_000);
        assert_eq!((moved.version, &*moved.shard), (2, "shard-2"));
        assert_eq!(
            y.merge("r", moved),
            Merged::Replaced {
                from: Arc::from("shard-0")
            }
        );
        assert_eq!(y.get("r").as_deref(), Some("shard-2"));
        // The first placement, told again late (a refresh from a replica that had not heard
        // of the move), no longer wins.
        assert_eq!(y.merge("r", first), Merged::Kept);
        assert_eq!(y.get("r").as_deref(), Some("shard-2"));
    }

    /// The rule this replaced (the earliest placement wins, whatever moved since): the same
    /// move is dropped, so replicas keep the dead shard's entry and each re-places the room
    /// by its own view. Kept here so the tests above show what the version changes.
    fn old_rule_wins(a: &Placement, b: &Placement) -> bool {
        (a.placed_at_ms, &*a.shard) < (b.placed_at_ms, &*b.shard)
    }

    #[test]
    fn the_old_rule_kept_the_dead_shard() {
        let first = at("shard-0", 1, 1_000);
        let moved = at("shard-2", 2, 9_000);
        assert!(old_rule_wins(&first, &moved), "the old rule drops the move");
        assert!(moved.wins_over(&first), "the generation makes it win");
    }

    proptest! {
        /// Any order of delivering the same placements (including duplicates) leaves the same
        /// placement on every replica, whichever placements it made itself.
        #[test]
        fn merging_is_independent_of_delivery_order(
            placements in proptest::collection::vec((0usize..4, 1u32..4, 0u64..5), 1..12),
            orders in proptest::collection::vec(any::<u64>(), 3),
        ) {
            let all: Vec<Placement> = placements
                .iter()
                .map(|(s, v, t)| at(&format!("shard-{s}"), *v, 1_000 + t))
                .collect();
            let best = all
                .iter()
                .fold(None::<&Placement>, |b, p| match b {
                    Some(b) if !p.wins_over(b) => Some(b),
                    _ => Some(p),
                })
                .unwrap();
            for seed in orders {
                let t = StickTable::new(Duration::from_secs(60), 100);
                let mut order: Vec<usize> = (0..all.len()).collect();
                let mut x = seed | 1;
                for i in (1..order.len()).rev() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    order.swap(i, (x % (i as u64 + 1)) as usize);
                }
                for i in order {
                    t.merge("r", all[i].clone());
                }
                let got = t.placement("r").unwrap();
                prop_assert_eq!(
                    (&got.shard, got.version, got.placed_at_ms),
                    (&best.shard, best.version, best.placed_at_ms)
                );
            }
        }
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
