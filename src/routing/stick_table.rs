//! The stick table: room key -> [`Placement`], so that a live room stays where it is while shards
//! come and go, and every replica converges on one placement per room.
//!
//! Sized for what it holds, not for a general cache: one hash map entry per room (its key, its
//! placement and when it was last used, about 64 bytes plus the key), split into parts each
//! behind its own mutex so that workers rarely meet. An entry unused for the table's `ttl` is
//! forgotten: skipped at once by lookups and dropped by a sweep of its part, at most every quarter
//! of `ttl`, on that part's next use or on [`StickTable::sweep`]. Past `capacity` rooms, a part
//! evicts its least recently used eighth before it takes a new room. Maps shrink back after the
//! rooms of a flood are gone.
//!
//! Time is the table's own monotonic clock (milliseconds since it was made); placements carry
//! Unix milliseconds, which are compared between replicas.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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

/// Rooms per part: small tables keep one part, so that every room counts against one capacity.
const ROOMS_PER_PART: u64 = 4096;
const MAX_PARTS: u64 = 32;

/// Room key -> placement, forgotten after `ttl` without use, bounded to `capacity` entries
/// (least recently used evicted first). Lookups refresh the idle timer. Clones share the table.
#[derive(Clone)]
pub struct StickTable {
    table: Arc<Table>,
}

struct Table {
    parts: Box<[Mutex<Part>]>,
    /// Picks a room's part (seeded apart from the maps' own hashing).
    spread: RandomState,
    ttl_ms: u64,
    capacity: u64,
    part_capacity: usize,
    epoch: Instant,
}

#[derive(Default)]
struct Part {
    rooms: HashMap<Box<str>, Entry>,
    /// When this part was last swept of idle entries (table milliseconds).
    swept_ms: u64,
}

struct Entry {
    placement: Placement,
    used_ms: u64,
}

impl Entry {
    /// Used within the last `ttl_ms` before `now_ms`.
    fn live(&self, now_ms: u64, ttl_ms: u64) -> bool {
        now_ms.saturating_sub(self.used_ms) < ttl_ms
    }
}

impl Part {
    /// Drops idle entries, at most every quarter `ttl` unless `force`d; gives memory back when
    /// the map is mostly empty.
    fn sweep(&mut self, now_ms: u64, ttl_ms: u64, force: bool) {
        if !force && now_ms.saturating_sub(self.swept_ms) < (ttl_ms / 4).max(1) {
            return;
        }
        self.swept_ms = now_ms;
        self.rooms.retain(|_, e| e.live(now_ms, ttl_ms));
        if self.rooms.capacity() > 64 && self.rooms.len() < self.rooms.capacity() / 4 {
            self.rooms.shrink_to(self.rooms.len() * 2);
        }
    }

    /// Makes room for one more entry under `capacity`: idle entries first, then the least
    /// recently used eighth.
    fn make_room(&mut self, now_ms: u64, ttl_ms: u64, capacity: usize) {
        if self.rooms.len() < capacity {
            return;
        }
        self.sweep(now_ms, ttl_ms, true);
        let excess = self.rooms.len() + 1;
        if excess <= capacity {
            return;
        }
        let evict = (excess - capacity).max(self.rooms.len() / 8).max(1);
        let mut used: Vec<u64> = self.rooms.values().map(|e| e.used_ms).collect();
        let (_, &mut cut, _) = used.select_nth_unstable(evict - 1);
        // Everything used before `cut` goes, and as many used at `cut` as the count needs.
        let mut at_cut = evict - used.iter().filter(|&&u| u < cut).count();
        self.rooms.retain(|_, e| {
            if e.used_ms < cut {
                return false;
            }
            if e.used_ms == cut && at_cut > 0 {
                at_cut -= 1;
                return false;
            }
            true
        });
    }

    /// Sets `room`'s placement to what `place` makes of its live one (`None` when it is new
    /// or idle), and marks it used now.
    fn upsert(
        &mut self,
        room: &str,
        now_ms: u64,
        ttl_ms: u64,
        capacity: usize,
        place: impl FnOnce(Option<Placement>) -> Placement,
    ) -> Placement {
        if let Some(e) = self.rooms.get_mut(room) {
            let live = e.live(now_ms, ttl_ms);
            e.placement = place(live.then(|| e.placement.clone()));
            e.used_ms = now_ms;
            return e.placement.clone();
        }
        self.make_room(now_ms, ttl_ms, capacity);
        let placement = place(None);
        let entry = Entry {
            placement: placement.clone(),
            used_ms: now_ms,
        };
        self.rooms.insert(Box::from(room), entry);
        placement
    }
}

impl StickTable {
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        let parts = (capacity / ROOMS_PER_PART).clamp(1, MAX_PARTS);
        StickTable {
            table: Arc::new(Table {
                parts: (0..parts).map(|_| Mutex::default()).collect(),
                spread: RandomState::new(),
                ttl_ms: (ttl.as_millis() as u64).max(1),
                capacity,
                part_capacity: capacity.div_ceil(parts).max(1) as usize,
                epoch: Instant::now(),
            }),
        }
    }

    /// The most rooms it remembers.
    pub fn capacity(&self) -> u64 {
        self.table.capacity
    }

    /// The shard `room` is stuck to; refreshes the entry's idle timer.
    pub fn get(&self, room: &str) -> Option<Arc<str>> {
        self.placement(room).map(|p| p.shard)
    }

    /// Where `room` is stuck, and since when; refreshes the entry's idle timer.
    pub fn placement(&self, room: &str) -> Option<Placement> {
        let (mut part, now, ttl) = self.part(room);
        let e = part.rooms.get_mut(room)?;
        if !e.live(now, ttl) {
            return None;
        }
        e.used_ms = now;
        Some(e.placement.clone())
    }

    /// Places `room` on `shard` now (`placed_at_ms`, Unix milliseconds): its first placement,
    /// or a move from where it is (the next generation). Returns the placement.
    pub fn insert(&self, room: &str, shard: Arc<str>, placed_at_ms: u64) -> Placement {
        self.upsert(room, |previous| {
            Placement::new(shard, previous.as_ref(), placed_at_ms)
        })
    }

    /// Keeps `placement` of `room` as it is (a reload carrying a table over).
    pub fn restore(&self, room: &str, placement: Placement) {
        self.upsert(room, |_| placement);
    }

    /// `room`'s placement when it was last told to the others `every` or longer before
    /// `now_ms` (it is then marked as told now): refreshes for rooms in use, at most one per
    /// room per `every`.
    pub fn refresh_due(&self, room: &str, now_ms: u64, every: u64) -> Option<Placement> {
        let (mut part, now, ttl) = self.part(room);
        let e = part.rooms.get_mut(room)?;
        if !e.live(now, ttl) || now_ms.saturating_sub(e.placement.refreshed_at_ms) < every {
            return None;
        }
        e.used_ms = now;
        e.placement.refreshed_at_ms = now_ms;
        Some(e.placement.clone())
    }

    /// Takes another replica's placement of `room`, keeping whichever wins.
    pub fn merge(&self, room: &str, theirs: Placement) -> Merged {
        let mut merged = Merged::New;
        self.upsert(room, |current| match current {
            None => theirs,
            Some(ours) if !theirs.wins_over(&ours) => {
                merged = Merged::Kept;
                ours
            }
            Some(ours) => {
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

    /// Number of rooms remembered (idle ones not yet swept are not counted).
    pub fn len(&self) -> u64 {
        let now = self.now_ms();
        let ttl = self.table.ttl_ms;
        self.parts()
            .map(|part| part.rooms.values().filter(|e| e.live(now, ttl)).count() as u64)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry; walks the whole table (reloads, full syncs and the admin API only).
    pub fn entries(&self) -> Vec<(Arc<str>, Placement)> {
        let now = self.now_ms();
        let ttl = self.table.ttl_ms;
        let mut all = Vec::new();
        for part in self.parts() {
            all.extend(
                part.rooms
                    .iter()
                    .filter(|(_, e)| e.live(now, ttl))
                    .map(|(room, e)| (Arc::from(&**room), e.placement.clone())),
            );
        }
        all
    }

    /// Rooms per shard name; walks the whole table, for the admin API only.
    pub fn rooms_per_shard(&self) -> HashMap<Arc<str>, u64> {
        let now = self.now_ms();
        let ttl = self.table.ttl_ms;
        let mut counts: HashMap<Arc<str>, u64> = HashMap::new();
        for part in self.parts() {
            for e in part.rooms.values() {
                if e.live(now, ttl) {
                    *counts.entry(e.placement.shard.clone()).or_default() += 1;
                }
            }
        }
        counts
    }

    /// Drops idle entries from every part whose last sweep is a quarter `ttl` old, so that a
    /// table nobody asks still gives back the memory of rooms that ended.
    pub fn sweep(&self) {
        let now = self.now_ms();
        for part in self.table.parts.iter() {
            lock(part).sweep(now, self.table.ttl_ms, false);
        }
    }

    fn now_ms(&self) -> u64 {
        self.table.epoch.elapsed().as_millis() as u64
    }

    /// `room`'s part, locked and swept when due, with the time now and the ttl.
    fn part(&self, room: &str) -> (MutexGuard<'_, Part>, u64, u64) {
        let t = &self.table;
        let i = (t.spread.hash_one(room) % t.parts.len() as u64) as usize;
        let now = self.now_ms();
        let mut part = lock(&t.parts[i]);
        part.sweep(now, t.ttl_ms, false);
        (part, now, t.ttl_ms)
    }

    fn parts(&self) -> impl Iterator<Item = MutexGuard<'_, Part>> {
        self.table.parts.iter().map(lock)
    }

    fn upsert(&self, room: &str, place: impl FnOnce(Option<Placement>) -> Placement) -> Placement {
        let capacity = self.table.part_capacity;
        let (mut part, now, ttl) = self.part(room);
        part.upsert(room, now, ttl, capacity, place)
    }
}

/// A part's lock; a panic while one was held left its map consistent (every change is one
/// map operation), so a poisoned lock is taken as it is.
fn lock(part: &Mutex<Part>) -> MutexGuard<'_, Part> {
    part.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    #[test]
    fn idle_rooms_are_forgotten_and_swept() {
        let t = StickTable::new(Duration::from_millis(50), 100);
        t.insert("idle", Arc::from("shard-0"), 1);
        t.insert("busy", Arc::from("shard-0"), 1);
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(20));
            assert!(t.get("busy").is_some());
        }
        assert_eq!(t.get("idle"), None, "unused for longer than the ttl");
        assert_eq!(t.len(), 1);
        t.sweep();
        let part = lock(&t.table.parts[0]);
        assert!(!part.rooms.contains_key("idle"), "the sweep dropped it");
        drop(part);
        // A room placed again after it was forgotten starts a new generation 1.
        assert_eq!(t.insert("idle", Arc::from("shard-1"), 2).version, 1);
    }

    #[test]
    fn capacity_evicts_the_least_recently_used() {
        let t = StickTable::new(Duration::from_secs(60), 16);
        for i in 0..16 {
            t.insert(&format!("r{i}"), Arc::from("s"), 1);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(t.get("r0").is_some(), "r0 is now the most recently used");
        t.insert("new", Arc::from("s"), 1);
        assert!(t.len() <= 16, "{}", t.len());
        assert!(t.get("new").is_some());
        assert!(t.get("r0").is_some(), "used last, kept");
        assert!(t.get("r1").is_none(), "least recently used, evicted");
        for i in 0..1000 {
            t.insert(&format!("flood-{i}"), Arc::from("s"), 1);
            assert!(t.len() <= 16);
        }
    }

    #[test]
    fn a_flood_of_rooms_gives_its_memory_back() {
        let t = StickTable::new(Duration::from_millis(30), 1_000_000);
        for i in 0..50_000 {
            t.insert(&format!("flood-{i}"), Arc::from("s"), 1);
        }
        let grown: usize = t.parts().map(|p| p.rooms.capacity()).sum();
        std::thread::sleep(Duration::from_millis(40));
        t.sweep();
        let after: usize = t.parts().map(|p| p.rooms.capacity()).sum();
        assert_eq!(t.len(), 0);
        assert!(after * 100 < grown, "{grown} slots before, {after} after");
    }

    #[test]
    fn large_tables_spread_rooms_over_parts() {
        let t = StickTable::new(Duration::from_secs(60), 1_000_000);
        assert_eq!(t.table.parts.len(), MAX_PARTS as usize);
        for i in 0..10_000 {
            t.insert(&format!("r{i}"), Arc::from("s"), 1);
        }
        assert_eq!(t.len(), 10_000);
        assert_eq!(t.entries().len(), 10_000);
        for part in t.parts() {
            assert!(part.rooms.len() > 100, "{}", part.rooms.len());
        }
    }
}
