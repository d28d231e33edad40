//! A pool of shards: its members (a snapshot swapped whole when membership changes), each
//! shard's live state (atomics: drained by the admin, passively marked down), and the two
//! choices the proxy asks of it: the shard for a room, and any shard for a request without one.

use super::sticky::{hrw_pick, name_seed, StickTable};
use crate::config::{Pool as PoolConfig, ShardSpec};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One shard: a stable name (the hash identity), its web servers, and its state. Discovery
/// updates addresses and weight in place, so drain and health state outlive DNS answers.
pub struct Shard {
    pub name: Arc<str>,
    pub seed: u64,
    weight: AtomicU32,
    addrs: ArcSwap<Vec<SocketAddr>>,
    /// Drained by the config file.
    pub config_drain: bool,
    pub state: ShardState,
}

/// What changes about a shard while it serves. Milliseconds are on the caller's clock
/// (`now_ms` arguments), so decisions are testable without sleeping.
#[derive(Default)]
pub struct ShardState {
    admin_drain: AtomicBool,
    down_until_ms: AtomicU64,
    /// When the shard vanished from DNS (0: it is listed). It lingers, draining, until its
    /// pool's `linger` has passed.
    vanished_at_ms: AtomicU64,
    next_addr: AtomicUsize,
}

impl Shard {
    pub fn new(name: &str, weight: u32, addrs: Vec<SocketAddr>, config_drain: bool) -> Self {
        Shard {
            name: Arc::from(name),
            seed: name_seed(name),
            weight: AtomicU32::new(weight),
            addrs: ArcSwap::from_pointee(addrs),
            config_drain,
            state: ShardState::default(),
        }
    }

    pub fn from_spec(spec: &ShardSpec) -> Self {
        Shard::new(&spec.name, spec.weight, spec.addrs.clone(), spec.drain)
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    pub fn addrs(&self) -> arc_swap::Guard<Arc<Vec<SocketAddr>>> {
        self.addrs.load()
    }

    /// Replaces the addresses when they changed (discovery).
    pub fn set_addrs(&self, addrs: Vec<SocketAddr>) {
        if **self.addrs.load() != addrs {
            self.addrs.store(Arc::new(addrs));
        }
    }

    /// Up: not marked down, and it has somewhere to connect to.
    pub fn is_up(&self, now_ms: u64) -> bool {
        now_ms >= self.state.down_until_ms.load(Ordering::Relaxed) && !self.addrs.load().is_empty()
    }

    pub fn is_draining(&self) -> bool {
        self.config_drain || self.state.admin_drain.load(Ordering::Relaxed) || self.is_lingering()
    }

    /// Vanished from DNS, still serving its stuck rooms.
    pub fn is_lingering(&self) -> bool {
        self.state.vanished_at_ms.load(Ordering::Relaxed) != 0
    }

    /// When it vanished from DNS, if it did.
    pub fn vanished_at(&self) -> Option<u64> {
        match self.state.vanished_at_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Marks the shard vanished from DNS at `now_ms` (kept if already set), or listed again.
    pub fn set_vanished(&self, now_ms: Option<u64>) {
        match now_ms {
            Some(t) => {
                let _ = self.state.vanished_at_ms.compare_exchange(
                    0,
                    t.max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            None => self.state.vanished_at_ms.store(0, Ordering::Relaxed),
        }
    }

    /// Why the shard is in its state, for the admin listing.
    pub fn state_name(&self, now_ms: u64) -> &'static str {
        if !self.is_up(now_ms) {
            "down"
        } else if self.config_drain {
            "draining (config)"
        } else if self.state.admin_drain.load(Ordering::Relaxed) {
            "draining (admin)"
        } else if self.is_lingering() {
            "draining (gone from DNS)"
        } else {
            "up"
        }
    }

    pub fn set_admin_drain(&self, drain: bool) {
        self.state.admin_drain.store(drain, Ordering::Relaxed);
    }

    /// Passive health: the shard refused a connection; leave it out until `until_ms`.
    pub fn mark_down(&self, until_ms: u64) {
        self.state
            .down_until_ms
            .fetch_max(until_ms, Ordering::Relaxed);
    }

    /// The next of the shard's web servers, round robin; `None` when it has none now.
    pub fn next_addr(&self) -> Option<SocketAddr> {
        let addrs = self.addrs.load();
        if addrs.is_empty() {
            return None;
        }
        let i = self.state.next_addr.fetch_add(1, Ordering::Relaxed);
        Some(addrs[i % addrs.len()])
    }
}

/// A snapshot of a pool's membership.
pub struct Members {
    pub shards: Vec<Arc<Shard>>,
    by_name: HashMap<Arc<str>, usize>,
    uniform: bool,
}

impl Members {
    pub fn new(shards: Vec<Arc<Shard>>) -> Self {
        let by_name = shards
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let uniform = shards.windows(2).all(|w| w[0].weight() == w[1].weight());
        Members {
            shards,
            by_name,
            uniform,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Shard>> {
        self.by_name.get(name).map(|&i| &self.shards[i])
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
}

/// How a room's shard was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The room was already on this shard.
    Stuck(usize),
    /// A room not seen before (or forgotten), placed by the rendezvous hash.
    New(usize),
    /// The room's shard is down or gone; it moved to the next choice.
    Moved(usize),
}

impl Choice {
    pub fn index(self) -> usize {
        match self {
            Choice::Stuck(i) | Choice::New(i) | Choice::Moved(i) => i,
        }
    }
}

pub struct Pool {
    pub name: Arc<str>,
    pub members: ArcSwap<Members>,
    pub stick: StickTable,
    stick_ttl: Duration,
    pub passive_down: Duration,
    pub linger: Duration,
    round_robin: AtomicUsize,
    /// Rooms with open tunnels (room -> count); their stick entries are refreshed while they
    /// live. Touched when a tunnel opens or closes, never per request.
    open_tunnels: Mutex<HashMap<Arc<str>, u32>>,
}

impl Pool {
    pub fn from_config(c: &PoolConfig) -> Self {
        let shards = c
            .shards
            .iter()
            .flat_map(|s| &s.list)
            .map(|spec| Arc::new(Shard::from_spec(spec)))
            .collect();
        Pool {
            name: Arc::from(c.name.as_str()),
            members: ArcSwap::from_pointee(Members::new(shards)),
            stick: StickTable::new(c.sticky.ttl, c.sticky.capacity),
            stick_ttl: c.sticky.ttl,
            passive_down: c.passive_down,
            linger: c.linger,
            round_robin: AtomicUsize::new(0),
            open_tunnels: Mutex::new(HashMap::new()),
        }
    }

    /// The shard for `room`: where it is stuck if that shard is up (draining or not), else the
    /// rendezvous choice among shards that are up, not draining and not in `exclude`, which is
    /// then remembered. `None` when no shard can take the room.
    pub fn choose_for_room(
        &self,
        members: &Members,
        room: &str,
        now_ms: u64,
        exclude: &[usize],
    ) -> Option<Choice> {
        let stuck = self.stick.get(room);
        if let Some(i) = stuck.as_deref().and_then(|name| members.index_of(name)) {
            if members.shards[i].is_up(now_ms) && !exclude.contains(&i) {
                return Some(Choice::Stuck(i));
            }
        }
        let candidates = members
            .shards
            .iter()
            .enumerate()
            .filter(|(i, s)| s.is_up(now_ms) && !s.is_draining() && !exclude.contains(i))
            .map(|(i, s)| (i, s.seed, s.weight()));
        let i = hrw_pick(room, candidates, members.uniform)?;
        self.stick.insert(room, members.shards[i].name.clone());
        Some(match stuck {
            Some(_) => Choice::Moved(i),
            None => Choice::New(i),
        })
    }

    pub fn stick_ttl(&self) -> Duration {
        self.stick_ttl
    }

    pub fn tunnel_opened(&self, room: &str) {
        let mut open = self.open_tunnels.lock().unwrap_or_else(|e| e.into_inner());
        *open.entry(Arc::from(room)).or_insert(0) += 1;
    }

    pub fn tunnel_closed(&self, room: &str) {
        let mut open = self.open_tunnels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(room) {
            *n -= 1;
            if *n == 0 {
                open.remove(room);
            }
        }
    }

    /// Refreshes the stick entry of every room that has an open tunnel, so that a quiet
    /// WebSocket does not let its room be forgotten. Returns how many rooms were refreshed.
    pub fn refresh_open_tunnels(&self) -> usize {
        let rooms: Vec<Arc<str>> = {
            let open = self.open_tunnels.lock().unwrap_or_else(|e| e.into_inner());
            open.keys().cloned().collect()
        };
        for room in &rooms {
            self.stick.get(room);
        }
        rooms.len()
    }

    /// Any shard for a request that names no room: round robin over shards that are up and not
    /// draining; draining shards only when nothing else is up.
    pub fn choose_any(&self, members: &Members, now_ms: u64, exclude: &[usize]) -> Option<usize> {
        let n = members.shards.len();
        if n == 0 {
            return None;
        }
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let usable = |i: &usize| members.shards[*i].is_up(now_ms) && !exclude.contains(i);
        let mut order = (0..n).map(|k| (start + k) % n);
        order
            .clone()
            .filter(usable)
            .find(|&i| !members.shards[i].is_draining())
            .or_else(|| order.find(usable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Shards, Sticky};

    fn pool(n: usize) -> Pool {
        let list = (0..n)
            .map(|i| ShardSpec {
                name: format!("shard-{i}"),
                addrs: vec![format!("127.0.0.1:{}", 9000 + i).parse().unwrap()],
                weight: 1,
                drain: false,
                srv: None,
            })
            .collect();
        Pool::from_config(&PoolConfig {
            name: "p".into(),
            shards: Some(Shards { list, srv: None }),
            sticky: Sticky::default(),
            passive_down: Duration::from_secs(10),
            linger: Duration::from_secs(600),
        })
    }

    fn room_shard(p: &Pool, room: &str, now: u64) -> Option<String> {
        let m = p.members.load();
        p.choose_for_room(&m, room, now, &[])
            .map(|c| m.shards[c.index()].name.to_string())
    }

    #[test]
    fn draining_shard_keeps_its_rooms_and_gets_no_new_ones() {
        let p = pool(3);
        let rooms: Vec<String> = (0..300).map(|i| format!("room-{i}")).collect();
        let before: Vec<_> = rooms
            .iter()
            .map(|r| room_shard(&p, r, 0).unwrap())
            .collect();
        p.members.load().shards[1].set_admin_drain(true);
        for (r, b) in rooms.iter().zip(&before) {
            assert_eq!(&room_shard(&p, r, 0).unwrap(), b, "stuck rooms stay");
        }
        for i in 0..300 {
            assert_ne!(room_shard(&p, &format!("new-{i}"), 0).unwrap(), "shard-1");
        }
    }

    #[test]
    fn down_shard_rooms_move_together_and_stay() {
        let p = pool(3);
        let rooms: Vec<String> = (0..300).map(|i| format!("room-{i}")).collect();
        let before: Vec<_> = rooms
            .iter()
            .map(|r| room_shard(&p, r, 0).unwrap())
            .collect();
        p.members.load().shards[0].mark_down(10_000);
        let after: Vec<_> = rooms
            .iter()
            .map(|r| room_shard(&p, r, 5).unwrap())
            .collect();
        for ((b, a), _) in before.iter().zip(&after).zip(&rooms) {
            if b == "shard-0" {
                assert_ne!(a, "shard-0");
            } else {
                assert_eq!(a, b, "rooms of live shards never move");
            }
        }
        // The shard comes back: moved rooms stay where they went.
        let back: Vec<_> = rooms
            .iter()
            .map(|r| room_shard(&p, r, 20_000).unwrap())
            .collect();
        assert_eq!(back, after);
    }

    #[test]
    fn open_tunnels_keep_their_rooms_remembered() {
        let mut p = pool(3);
        p.stick = StickTable::new(Duration::from_millis(300), 100);
        let m = p.members.load();
        p.choose_for_room(&m, "busy", 0, &[]);
        p.choose_for_room(&m, "quiet", 0, &[]);
        p.tunnel_opened("busy");
        p.tunnel_opened("busy");
        p.tunnel_closed("busy");
        for _ in 0..8 {
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(p.refresh_open_tunnels(), 1);
        }
        assert!(
            p.stick.get("busy").is_some(),
            "a room with an open tunnel stays"
        );
        assert!(
            p.stick.get("quiet").is_none(),
            "a room without traffic is forgotten"
        );
        p.tunnel_closed("busy");
        assert_eq!(p.refresh_open_tunnels(), 0);
    }

    #[test]
    fn nothing_up_means_no_choice() {
        let p = pool(2);
        for s in &p.members.load().shards {
            s.mark_down(100);
        }
        assert_eq!(room_shard(&p, "r", 50), None);
        assert_eq!(p.choose_any(&p.members.load(), 50, &[]), None);
        assert!(p.choose_any(&p.members.load(), 100, &[]).is_some());
    }

    #[test]
    fn any_prefers_non_draining_and_respects_exclude() {
        let p = pool(3);
        let m = p.members.load();
        m.shards[0].set_admin_drain(true);
        for _ in 0..30 {
            let i = p.choose_any(&m, 0, &[2]).unwrap();
            assert_eq!(i, 1);
        }
        m.shards[1].set_admin_drain(true);
        assert!(
            p.choose_any(&m, 0, &[2]).is_some(),
            "draining shards serve when nothing else can"
        );
    }
}
