//! A pool of shards: its members (a snapshot swapped whole when membership changes), each
//! shard's live state (atomics: drained by the admin, passively marked down), and the two
//! choices the proxy asks of it: the shard for a room, and any shard for a request without one.

use super::conns::{Closer, RoomConns};
use super::drains::{AdminDrain, AdminDrains};
use super::stick_table::StickTable;
use super::sticky::{hrw_pick, name_seed};
use crate::config::{Pool as PoolConfig, ShardSpec};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
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
pub struct ShardState {
    admin_drain: AtomicBool,
    /// The replica whose admin API drained it (for the listing; `admin_drain` is the state).
    admin_drain_by: Mutex<Option<Arc<str>>>,
    /// Learnt from another replica (`[peers]`), not from this one's DNS: it serves the rooms
    /// stuck to it, lingering, and is not told to other replicas.
    from_peer: AtomicBool,
    down_until_ms: AtomicU64,
    /// When the shard vanished from DNS (0: it is listed). It lingers, draining, until its
    /// pool's `linger` has passed.
    vanished_at_ms: AtomicU64,
    next_addr: AtomicUsize,
    /// Active health: down after `fall` failed rounds, up after `rise` good ones.
    health_down: AtomicBool,
    fails: AtomicU32,
    passes: AtomicU32,
    /// Agent check: 0 ready, 1 drain, 2 down; and its weight in percent (100 unless told).
    agent_state: AtomicU8,
    agent_percent: AtomicU32,
}

/// What an agent check said of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    Ready,
    Drain,
    Down,
}

impl Default for ShardState {
    fn default() -> Self {
        ShardState {
            admin_drain: AtomicBool::new(false),
            admin_drain_by: Mutex::new(None),
            from_peer: AtomicBool::new(false),
            down_until_ms: AtomicU64::new(0),
            vanished_at_ms: AtomicU64::new(0),
            next_addr: AtomicUsize::new(0),
            health_down: AtomicBool::new(false),
            fails: AtomicU32::new(0),
            passes: AtomicU32::new(0),
            agent_state: AtomicU8::new(0),
            agent_percent: AtomicU32::new(100),
        }
    }
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

    /// The rendezvous weight: the configured or discovered one, scaled by an agent's `N%`.
    pub fn weight(&self) -> u32 {
        let percent = self.state.agent_percent.load(Ordering::Relaxed);
        let base = self.weight.load(Ordering::Relaxed);
        if percent == 100 {
            base
        } else {
            (u64::from(base) * u64::from(percent) / 100) as u32
        }
    }

    /// The weight before any agent scaling.
    pub fn base_weight(&self) -> u32 {
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

    /// Up: not marked down (passively, by its health check or its agent), and it has somewhere
    /// to connect to.
    pub fn is_up(&self, now_ms: u64) -> bool {
        now_ms >= self.state.down_until_ms.load(Ordering::Relaxed)
            && !self.state.health_down.load(Ordering::Relaxed)
            && self.agent_state() != AgentState::Down
            && !self.addrs.load().is_empty()
    }

    pub fn is_draining(&self) -> bool {
        self.config_drain
            || self.state.admin_drain.load(Ordering::Relaxed)
            || self.is_lingering()
            || self.agent_state() == AgentState::Drain
    }

    pub fn agent_state(&self) -> AgentState {
        match self.state.agent_state.load(Ordering::Relaxed) {
            1 => AgentState::Drain,
            2 => AgentState::Down,
            _ => AgentState::Ready,
        }
    }

    /// Applies an agent's reply: a new state and/or a weight percentage.
    pub fn set_agent(&self, state: Option<AgentState>, percent: Option<u32>) {
        if let Some(state) = state {
            let v = match state {
                AgentState::Ready => 0,
                AgentState::Drain => 1,
                AgentState::Down => 2,
            };
            self.state.agent_state.store(v, Ordering::Relaxed);
        }
        if let Some(p) = percent {
            self.state
                .agent_percent
                .store(p.min(256), Ordering::Relaxed);
        }
    }

    pub fn is_health_down(&self) -> bool {
        self.state.health_down.load(Ordering::Relaxed)
    }

    /// Records one health round (an active check, or a refused connection as a failure).
    /// Returns the new state when it flipped: `Some(false)` down, `Some(true)` up again.
    pub fn record_health(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let st = &self.state;
        if ok {
            st.fails.store(0, Ordering::Relaxed);
            let passes = st.passes.fetch_add(1, Ordering::Relaxed) + 1;
            (passes >= rise && st.health_down.swap(false, Ordering::Relaxed)).then_some(true)
        } else {
            st.passes.store(0, Ordering::Relaxed);
            let fails = st.fails.fetch_add(1, Ordering::Relaxed) + 1;
            (fails >= fall && !st.health_down.swap(true, Ordering::Relaxed)).then_some(false)
        }
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
    pub fn state_name(&self, now_ms: u64) -> String {
        let fixed = if self.addrs.load().is_empty() {
            "down (no address)"
        } else if self.is_health_down() {
            "down (health check)"
        } else if self.agent_state() == AgentState::Down {
            "down (agent)"
        } else if now_ms < self.state.down_until_ms.load(Ordering::Relaxed) {
            "down (refused a connection)"
        } else if self.config_drain {
            "draining (config)"
        } else if self.state.admin_drain.load(Ordering::Relaxed) {
            let by = self
                .state
                .admin_drain_by
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            return match by.as_deref() {
                Some(by) => format!("draining (admin, via {by})"),
                None => "draining (admin)".to_owned(),
            };
        } else if self.is_from_peer() {
            "draining (known from another replica)"
        } else if self.is_lingering() {
            "draining (gone from DNS)"
        } else if self.agent_state() == AgentState::Drain {
            "draining (agent)"
        } else {
            "up"
        };
        fixed.to_owned()
    }

    /// Drains the shard through the admin API of replica `by`, or undrains it (`None`).
    pub fn set_admin_drain(&self, by: Option<Arc<str>>) {
        self.state
            .admin_drain
            .store(by.is_some(), Ordering::Relaxed);
        *self
            .state
            .admin_drain_by
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = by;
    }

    /// Learnt from another replica, not (yet) from this one's discovery.
    pub fn is_from_peer(&self) -> bool {
        self.state.from_peer.load(Ordering::Relaxed)
    }

    /// Marks the shard as learnt from another replica, or as found by this one's discovery.
    pub fn set_from_peer(&self, from_peer: bool) {
        self.state.from_peer.store(from_peer, Ordering::Relaxed);
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
}

impl Members {
    pub fn new(shards: Vec<Arc<Shard>>) -> Self {
        let by_name = shards
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        Members { shards, by_name }
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
    /// The active health check, whose `fall` refused connections also count toward.
    pub health: Option<crate::config::Health>,
    /// How URL segments name members, for instance pools.
    pub instance_id: Option<crate::config::InstanceId>,
    round_robin: AtomicUsize,
    /// Rooms' open connections (tunnels, requests the shard may hold); their stick entries are
    /// refreshed while they live, and they are closed when the room moves to another shard.
    /// Touched when one opens or closes (a lock of one of its parts) and when a room moves.
    pub conns: RoomConns,
    /// Drains and undrains made through the admin API (this replica's and the others').
    pub drains: AdminDrains,
    /// Members are named by DNS: another replica may know a shard this one does not (not yet,
    /// or no longer), and may tell its addresses.
    pub learns_members: bool,
    /// Held while members are replaced (discovery, a shard learnt from another replica, a
    /// drain), so that no writer's change is lost to another's.
    members_write: Mutex<()>,
}

impl Pool {
    pub fn from_config(c: &PoolConfig) -> Self {
        let list = match c.members() {
            crate::config::MemberSource::List(list) => list,
            _ => &[],
        };
        let shards = list
            .iter()
            .map(|spec| Arc::new(Shard::from_spec(spec)))
            .collect();
        Pool {
            name: Arc::from(c.name.as_str()),
            members: ArcSwap::from_pointee(Members::new(shards)),
            stick: StickTable::new(c.sticky.ttl, c.sticky.capacity),
            stick_ttl: c.sticky.ttl,
            passive_down: c.passive_down,
            linger: c.linger,
            health: c.health.clone(),
            instance_id: c.instances.as_ref().map(|i| i.id),
            round_robin: AtomicUsize::new(0),
            conns: RoomConns::default(),
            drains: AdminDrains::default(),
            learns_members: c.shards.is_some()
                && !matches!(c.members(), crate::config::MemberSource::List(_)),
            members_write: Mutex::new(()),
        }
    }

    /// This (new) pool, taking over from `old` after a config change: members found by
    /// discovery are kept until discovery answers again (when both look members up), listed
    /// members keep the state of the old member of the same name, and stick entries of shards
    /// that still exist are copied.
    pub fn carrying_over(self, old: &Pool) -> Self {
        let old_members = old.members.load();
        let new_members = self.members.load();
        let shards: Vec<Arc<Shard>> = if new_members.shards.is_empty() {
            old_members.shards.clone()
        } else {
            new_members
                .shards
                .iter()
                .map(|s| match old_members.get(&s.name) {
                    Some(o) if o.config_drain == s.config_drain => {
                        o.set_weight(s.base_weight());
                        if !s.addrs().is_empty() {
                            o.set_addrs(s.addrs().to_vec());
                        }
                        o.clone()
                    }
                    _ => s.clone(),
                })
                .collect()
        };
        drop(new_members);
        let members = Members::new(shards);
        for (room, placement) in old.stick.entries() {
            if members.get(&placement.shard).is_some() {
                self.stick.restore(&room, placement);
            }
        }
        for (shard, drain) in old.drains.all() {
            self.drains.apply(&shard, drain);
        }
        self.update_members(|_| Some(members));
        self
    }

    /// Replaces the members with what `next` makes of the current ones (`None`: no change).
    /// New members get the admin drains already made for their names.
    pub fn update_members(&self, next: impl FnOnce(&Members) -> Option<Members>) {
        let _writing = self.members_write.lock().unwrap_or_else(|e| e.into_inner());
        let Some(members) = next(&self.members.load()) else {
            return;
        };
        for shard in &members.shards {
            if let Some(d) = self.drains.get(&shard.name) {
                shard.set_admin_drain(d.drained.then_some(d.by));
            }
        }
        self.members.store(Arc::new(members));
    }

    /// Takes a drain or undrain of `shard` (made here or by another replica) if it is the
    /// latest; returns whether it was. Applies to the shard now and when it is discovered later.
    pub fn admin_drain(&self, shard: &str, drain: AdminDrain) -> bool {
        let _writing = self.members_write.lock().unwrap_or_else(|e| e.into_inner());
        if !self.drains.apply(shard, drain.clone()) {
            return false;
        }
        if let Some(s) = self.members.load().get(shard) {
            s.set_admin_drain(drain.drained.then_some(drain.by));
        }
        true
    }

    /// Another replica's shard this one does not know (not discovered yet, or gone from DNS
    /// before this replica started): it joins the members lingering, so the rooms stuck to it
    /// reach it, and takes no new rooms. Only for pools whose members DNS names. Returns
    /// whether it was added.
    pub fn learn_member(&self, name: &str, addrs: Vec<SocketAddr>, now_ms: u64) -> bool {
        if !self.learns_members || addrs.is_empty() {
            return false;
        }
        let mut added = false;
        self.update_members(|m| {
            if m.get(name).is_some() {
                return None;
            }
            let shard = Shard::new(name, 1, addrs, false);
            shard.set_from_peer(true);
            shard.set_vanished(Some(now_ms));
            let mut shards = m.shards.clone();
            shards.push(Arc::new(shard));
            shards.sort_by(|a, b| a.name.cmp(&b.name));
            added = true;
            Some(Members::new(shards))
        });
        added
    }

    /// The members this replica found itself (its DNS or config), with their addresses: what
    /// it tells the other replicas. Empty unless members are named by DNS.
    pub fn own_members(&self) -> Vec<(Arc<str>, Vec<SocketAddr>)> {
        if !self.learns_members {
            return Vec::new();
        }
        self.members
            .load()
            .shards
            .iter()
            // What the peer protocol carries: names of up to 255 bytes, 255 addresses each.
            .filter(|s| !s.is_from_peer() && !s.addrs().is_empty() && s.name.len() <= 255)
            .map(|s| {
                (
                    s.name.clone(),
                    s.addrs().iter().take(255).copied().collect(),
                )
            })
            .collect()
    }

    /// The shard for `room`: where it is stuck if that shard is up (draining or not), else the
    /// rendezvous choice among shards that are up, not draining and not in `exclude`, which is
    /// then remembered as placed at `unix_ms` (a move raises the room's generation, and closes
    /// this replica's connections of the room to where it was). `None` when no shard can take
    /// it.
    pub fn choose_for_room(
        &self,
        members: &Members,
        room: &str,
        (now_ms, unix_ms): (u64, u64),
        exclude: &[usize],
    ) -> Option<Choice> {
        let stuck = self.stick.get(room);
        if let Some(i) = stuck.as_deref().and_then(|name| members.index_of(name)) {
            if members.shards[i].is_up(now_ms) && !exclude.contains(&i) {
                return Some(Choice::Stuck(i));
            }
        }
        let candidates: Vec<(usize, u64, u32)> = members
            .shards
            .iter()
            .enumerate()
            .filter(|(i, s)| s.is_up(now_ms) && !s.is_draining() && !exclude.contains(i))
            .map(|(i, s)| (i, s.seed, s.weight()))
            .collect();
        let uniform = candidates.windows(2).all(|w| w[0].2 == w[1].2);
        let i = hrw_pick(room, candidates.into_iter(), uniform)?;
        let shard = &members.shards[i].name;
        self.stick.insert(room, shard.clone(), unix_ms);
        Some(match stuck {
            Some(_) => {
                self.conns.close_except(room, shard);
                Choice::Moved(i)
            }
            None => Choice::New(i),
        })
    }

    pub fn stick_ttl(&self) -> Duration {
        self.stick_ttl
    }

    /// A connection of `room` to `shard` opened (a tunnel, a request the shard may hold);
    /// returns its id for [`Pool::conn_closed`]. If the room moved elsewhere while it was being
    /// opened, it is closed at once.
    pub fn conn_opened(&self, room: &str, shard: Arc<str>, closer: Arc<dyn Closer>) -> u64 {
        let id = self.conns.opened(room, shard.clone(), closer.clone());
        if self.stick.get(room).is_some_and(|now| now != shard) {
            closer.close();
        }
        id
    }

    pub fn conn_closed(&self, room: &str, id: u64) {
        self.conns.closed(room, id);
    }

    /// Refreshes the stick entry of every room that has an open connection, so that a quiet
    /// WebSocket does not let its room be forgotten, then sweeps the table of rooms that ended.
    /// Returns how many rooms were refreshed.
    pub fn refresh_open_rooms(&self) -> usize {
        let rooms = self.conns.rooms();
        for room in &rooms {
            self.stick.get(room);
        }
        self.stick.sweep();
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
pub(crate) mod tests {
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
                host: None,
            })
            .collect();
        Pool::from_config(&PoolConfig {
            name: "p".into(),
            shards: Some(Shards {
                list,
                srv: None,
                dns: None,
            }),
            instances: None,
            sticky: Sticky::default(),
            passive_down: Duration::from_secs(10),
            linger: Duration::from_secs(600),
            health: None,
            agent: None,
            tls: None,
        })
    }

    fn room_shard(p: &Pool, room: &str, now: u64) -> Option<String> {
        let m = p.members.load();
        p.choose_for_room(&m, room, (now, 0), &[])
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
        p.members.load().shards[1].set_admin_drain(Some(Arc::from("admin")));
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

    /// Counts the closes of the connections it stands for.
    #[derive(Default)]
    pub(crate) struct Closes(pub(crate) AtomicUsize);

    impl Closer for Closes {
        fn close(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn open_tunnels_keep_their_rooms_remembered() {
        let mut p = pool(3);
        p.stick = StickTable::new(Duration::from_millis(300), 100);
        let m = p.members.load();
        let busy = m.shards[p.choose_for_room(&m, "busy", (0, 0), &[]).unwrap().index()]
            .name
            .clone();
        p.choose_for_room(&m, "quiet", (0, 0), &[]);
        let closes = Arc::new(Closes::default());
        let first = p.conn_opened("busy", busy.clone(), closes.clone());
        let second = p.conn_opened("busy", busy, closes.clone());
        p.conn_closed("busy", first);
        for _ in 0..8 {
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(p.refresh_open_rooms(), 1);
        }
        assert!(
            p.stick.get("busy").is_some(),
            "a room with an open tunnel stays"
        );
        assert!(
            p.stick.get("quiet").is_none(),
            "a room without traffic is forgotten"
        );
        p.conn_closed("busy", second);
        assert_eq!(p.refresh_open_rooms(), 0);
        assert_eq!(closes.0.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_move_closes_the_rooms_tunnels_to_the_shard_it_left() {
        let p = pool(3);
        let m = p.members.load();
        let first = p.choose_for_room(&m, "r", (0, 0), &[]).unwrap().index();
        let closes = Arc::new(Closes::default());
        p.conn_opened("r", m.shards[first].name.clone(), closes.clone());
        m.shards[first].mark_down(10_000);
        let moved = p.choose_for_room(&m, "r", (5, 5), &[]).unwrap();
        assert!(matches!(moved, Choice::Moved(i) if i != first));
        assert_eq!(closes.0.load(Ordering::Relaxed), 1);
        assert_eq!(p.stick.placement("r").unwrap().version, 2);
        // A tunnel that opens to the old shard after the move is closed at once.
        let late = Arc::new(Closes::default());
        p.conn_opened("r", m.shards[first].name.clone(), late.clone());
        assert_eq!(late.0.load(Ordering::Relaxed), 1);
        let here = Arc::new(Closes::default());
        p.conn_opened("r", m.shards[moved.index()].name.clone(), here.clone());
        assert_eq!(here.0.load(Ordering::Relaxed), 0);
    }

    /// A pool whose shards DNS names, with room for 10,000 rooms.
    pub(crate) fn dns_pool() -> Pool {
        Pool::from_config(&PoolConfig {
            name: "shards".into(),
            shards: Some(Shards {
                list: Vec::new(),
                srv: Some("_http._tcp.web.test.".into()),
                dns: None,
            }),
            instances: None,
            sticky: Sticky {
                ttl: Duration::from_secs(60),
                capacity: 10_000,
            },
            passive_down: Duration::from_secs(10),
            linger: Duration::from_secs(600),
            health: None,
            agent: None,
            tls: None,
        })
    }

    #[test]
    fn a_shard_learnt_from_a_peer_serves_its_rooms_and_takes_no_new_ones() {
        let addr: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        assert!(
            !pool(1).learn_member("x", vec![addr], 1),
            "listed members only"
        );
        let p = dns_pool();
        p.update_members(|_| {
            Some(Members::new(vec![Arc::new(Shard::new(
                "a",
                1,
                vec![addr],
                false,
            ))]))
        });
        assert!(p.learn_member("b", vec![addr], 1));
        assert!(!p.learn_member("b", vec![addr], 2), "known already");
        assert!(!p.learn_member("a", vec![addr], 2), "discovered here");
        let m = p.members.load();
        let b = m.get("b").unwrap();
        assert!(b.is_draining() && b.is_from_peer());
        assert_eq!(b.state_name(0), "draining (known from another replica)");
        // Only what this replica found is told to others.
        let own: Vec<_> = p.own_members().into_iter().map(|(n, _)| n).collect();
        assert_eq!(own, [Arc::<str>::from("a")]);
        // A room another replica put on b goes there; new rooms do not.
        p.stick.insert("r", Arc::from("b"), 1);
        assert_eq!(
            p.choose_for_room(&m, "r", (0, 0), &[]),
            Some(Choice::Stuck(1))
        );
        assert_eq!(
            p.choose_for_room(&m, "new", (0, 0), &[]),
            Some(Choice::New(0))
        );
    }

    #[test]
    fn admin_drains_hold_for_shards_discovered_later_and_the_latest_stands() {
        let p = dns_pool();
        let drain = |drained, at_ms, by: &str| AdminDrain {
            drained,
            at_ms,
            by: Arc::from(by),
        };
        assert!(p.admin_drain("later", drain(true, 10, "edge-b")));
        let addr: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        p.update_members(|_| {
            Some(Members::new(vec![Arc::new(Shard::new(
                "later",
                1,
                vec![addr],
                false,
            ))]))
        });
        let m = p.members.load();
        assert_eq!(m.shards[0].state_name(0), "draining (admin, via edge-b)");
        assert!(!p.admin_drain("later", drain(false, 5, "edge-a")), "older");
        assert!(m.shards[0].is_draining());
        assert!(p.admin_drain("later", drain(false, 20, "edge-a")));
        assert!(!m.shards[0].is_draining());
        assert_eq!(m.shards[0].state_name(0), "up");
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
        m.shards[0].set_admin_drain(Some(Arc::from("admin")));
        for _ in 0..30 {
            let i = p.choose_any(&m, 0, &[2]).unwrap();
            assert_eq!(i, 1);
        }
        m.shards[1].set_admin_drain(Some(Arc::from("admin")));
        assert!(
            p.choose_any(&m, 0, &[2]).is_some(),
            "draining shards serve when nothing else can"
        );
    }
}
