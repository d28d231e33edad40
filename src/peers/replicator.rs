//! The replication state of one replica, sans-IO: its connections to the other replicas (each
//! through the handshake), the stick tables it shares, and what to send where.
//!
//! - Every replica dials every other; once a handshake shows both ids, the connection dialled
//!   by the higher id is closed, so each pair keeps exactly one.
//! - When a connection opens, each side sends what it knows: the shards it found itself (their
//!   addresses), its admin drains, its whole table, then `SyncDone`.
//! - New placements (and refreshes, at most one per room per quarter of the table's idle time)
//!   and admin drains are batched and sent to every open connection at the next `flush`, after
//!   the addresses of any shard not told yet (so an entry never names a shard the other side
//!   cannot reach).
//! - Entries received are merged (see `StickTable::merge`): everyone converges on the same
//!   placement, whatever order they arrive in. When a room's placement here lost to another
//!   replica's, the tunnels this replica opened for it to the losing shard are closed, so their
//!   clients reconnect to the winner.
//! - Shards received are learnt when this replica does not know them (see
//!   [`Pool::learn_member`]); drains received are applied if they are the latest.
//! - Open connections are pinged every [`PING_EVERY_MS`]; a connection that heard nothing for
//!   [`SILENCE_MS`] (a replica gone without a TCP reset, a handshake that stalls) is closed, so
//!   its replica is dialled again. Time is passed in (milliseconds on the driver's clock).

use super::session::{Handshake, HandshakeError};
use super::wire::{Drain, Entry, Frame, Member, MAX_ENTRIES};
use crate::routing::{AdminDrain, Merged, Placement, Pool};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// A connection, numbered by the driver.
pub type ConnId = u64;

/// How often an open connection is pinged.
pub const PING_EVERY_MS: u64 = 5_000;
/// A connection that heard nothing this long is closed.
pub const SILENCE_MS: u64 = 15_000;
/// Frames a connection may have waiting beyond a full table's: a replica that reads slower
/// than placements come is disconnected (it gets the whole table again when it reconnects)
/// rather than queued for without bound.
pub const QUEUE_SLACK: usize = 256;

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Send(ConnId, Frame),
    Close(ConnId, String),
    /// Close: a duplicate of the connection the other replica (this id) dials.
    Duplicate(ConnId, u64),
    /// Close: this replica reached itself (its own address is among the peers').
    Itself(ConnId),
}

struct Conn {
    handshake: Handshake,
    /// This replica dialled it.
    dialled: bool,
    /// The other side's whole table has arrived.
    synced: bool,
    /// Entries sent on it and received from it.
    sent: u64,
    received: u64,
    /// When a frame last arrived on it, and when it was last pinged.
    heard_ms: u64,
    pinged_ms: u64,
}

/// An open connection, for `/admin/peers` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub conn: ConnId,
    /// The other replica's id.
    pub replica: u64,
    /// This replica dialled it.
    pub dialled: bool,
    /// The other side's whole table has arrived.
    pub synced: bool,
    pub entries_sent: u64,
    pub entries_received: u64,
    /// Since the last frame from it (pings keep this under [`PING_EVERY_MS`] or so).
    pub silent_ms: u64,
}

/// Running totals for metrics and `/admin/peers`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub entries_sent: u64,
    pub entries_received: u64,
    /// Received placements that replaced this replica's (a conflict it lost).
    pub replaced: u64,
    pub refused: u64,
    /// Connections closed because nothing was heard on them for [`SILENCE_MS`].
    pub silent: u64,
    /// Rooms whose tunnels here were closed because another replica's placement won.
    pub rooms_reconnected: u64,
}

pub struct Replicator {
    replica: u64,
    secret: Arc<[u8]>,
    pools: HashMap<Arc<str>, Arc<Pool>>,
    conns: HashMap<ConnId, Conn>,
    pending: Vec<Entry>,
    pending_drains: Vec<Drain>,
    /// The shards (by pool) whose addresses were told to every open connection, as told.
    announced: HashMap<Arc<str>, HashMap<Arc<str>, Vec<SocketAddr>>>,
    totals: Totals,
}

impl Replicator {
    pub fn new(replica: u64, secret: Arc<[u8]>) -> Self {
        Replicator {
            replica,
            secret,
            pools: HashMap::new(),
            conns: HashMap::new(),
            pending: Vec::new(),
            pending_drains: Vec::new(),
            announced: HashMap::new(),
            totals: Totals::default(),
        }
    }

    /// The pools (after a start or reload), by name.
    pub fn set_pools(&mut self, pools: HashMap<Arc<str>, Arc<Pool>>) {
        self.pools = pools;
    }

    /// A connection is up (`dialled` by this replica or accepted); returns the hello to send.
    pub fn connected(
        &mut self,
        conn: ConnId,
        dialled: bool,
        nonce: [u8; 16],
        now_ms: u64,
    ) -> Vec<Action> {
        let (handshake, hello) = Handshake::start(&self.secret, self.replica, nonce);
        self.conns.insert(
            conn,
            Conn {
                handshake,
                dialled,
                synced: false,
                sent: 0,
                received: 0,
                heard_ms: now_ms,
                pinged_ms: now_ms,
            },
        );
        vec![Action::Send(conn, hello)]
    }

    pub fn disconnected(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    /// A frame arrived on `conn`.
    pub fn received(&mut self, conn: ConnId, frame: Frame, now_ms: u64) -> Vec<Action> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        c.heard_ms = c.heard_ms.max(now_ms);
        if !c.handshake.is_open() {
            return match c.handshake.on_frame(&frame) {
                Err(e) => self.refuse(conn, e),
                Ok(reply) => {
                    let mut out: Vec<Action> =
                        reply.map(|f| Action::Send(conn, f)).into_iter().collect();
                    if c.handshake.is_open() {
                        out.extend(self.opened(conn));
                    }
                    out
                }
            };
        }
        match frame {
            Frame::Entries(entries) => {
                c.received += entries.len() as u64;
                self.totals.entries_received += entries.len() as u64;
                for e in entries {
                    self.merge(e);
                }
                Vec::new()
            }
            Frame::Members { pool, members } => {
                if let Some(pool) = self.pools.get(pool.as_str()) {
                    for m in members {
                        pool.learn_member(&m.shard, m.addrs, now_ms);
                    }
                }
                Vec::new()
            }
            Frame::Drain(d) => {
                if let Some(pool) = self.pools.get(d.pool.as_str()) {
                    let drain = AdminDrain {
                        drained: d.drained,
                        at_ms: d.at_ms,
                        by: Arc::from(d.by),
                    };
                    pool.admin_drain(&d.shard, drain);
                }
                Vec::new()
            }
            Frame::SyncDone => {
                c.synced = true;
                Vec::new()
            }
            Frame::Ping => Vec::new(),
            Frame::Hello { .. } | Frame::Auth { .. } => {
                vec![Action::Close(
                    conn,
                    "a second handshake on an open connection".into(),
                )]
            }
        }
    }

    /// A placement made here (a new room, a room moved, or a refresh due).
    pub fn placed(&mut self, pool: &str, room: &str, p: &Placement) {
        self.pending.extend(entry(pool, room, p));
    }

    /// A drain or undrain made through this replica's admin API.
    pub fn drained(&mut self, pool: &str, shard: &str, d: &AdminDrain) {
        self.pending_drains.push(drain_frame(pool, shard, d));
    }

    /// Sends to every open connection the addresses of shards found since they were last
    /// told, then the drains and placements made since the last flush.
    pub fn flush(&mut self) -> Vec<Action> {
        if self.pending.is_empty() && self.pending_drains.is_empty() {
            return Vec::new();
        }
        let open: Vec<ConnId> = self.open_conns();
        let mut out = self.announce(&open);
        for d in std::mem::take(&mut self.pending_drains) {
            for conn in &open {
                out.push(Action::Send(*conn, Frame::Drain(d.clone())));
            }
        }
        let pending = std::mem::take(&mut self.pending);
        for chunk in pending.chunks(MAX_ENTRIES) {
            for conn in &open {
                self.totals.entries_sent += chunk.len() as u64;
                if let Some(c) = self.conns.get_mut(conn) {
                    c.sent += chunk.len() as u64;
                }
                out.push(Action::Send(*conn, Frame::Entries(chunk.to_vec())));
            }
        }
        out
    }

    /// Pings open connections that are due, and closes connections (open or in their
    /// handshake) that heard nothing for [`SILENCE_MS`].
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let mut silent: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| now_ms.saturating_sub(c.heard_ms) >= SILENCE_MS)
            .map(|(id, _)| *id)
            .collect();
        silent.sort_unstable();
        for conn in silent {
            self.conns.remove(&conn);
            self.totals.silent += 1;
            out.push(Action::Close(
                conn,
                format!("nothing heard for {} s", SILENCE_MS / 1000),
            ));
        }
        let mut due: Vec<ConnId> = Vec::new();
        for (id, c) in &mut self.conns {
            if c.handshake.is_open() && now_ms.saturating_sub(c.pinged_ms) >= PING_EVERY_MS {
                c.pinged_ms = now_ms;
                due.push(*id);
            }
        }
        due.sort_unstable();
        out.extend(due.into_iter().map(|id| Action::Send(id, Frame::Ping)));
        let open = self.open_conns();
        out.extend(self.announce(&open));
        out
    }

    /// `Members` frames to `open` for the shards whose addresses changed since last told.
    fn announce(&mut self, open: &[ConnId]) -> Vec<Action> {
        let mut out = Vec::new();
        for (name, pool) in &self.pools {
            let now: HashMap<Arc<str>, Vec<SocketAddr>> = pool.own_members().into_iter().collect();
            let told = self.announced.entry(name.clone()).or_default();
            let mut changed: Vec<Member> = now
                .iter()
                .filter(|(shard, addrs)| told.get(*shard) != Some(*addrs))
                .map(|(shard, addrs)| Member {
                    shard: shard.to_string(),
                    addrs: addrs.clone(),
                })
                .collect();
            *told = now;
            if changed.is_empty() {
                continue;
            }
            changed.sort_by(|a, b| a.shard.cmp(&b.shard));
            for conn in open {
                out.push(Action::Send(
                    *conn,
                    Frame::Members {
                        pool: name.to_string(),
                        members: changed.clone(),
                    },
                ));
            }
        }
        out
    }

    /// Connections whose handshake finished.
    pub fn open_conns(&self) -> Vec<ConnId> {
        let mut v: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.handshake.is_open())
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }

    /// Open connections whose other side's whole table has arrived, and all open ones.
    pub fn synced(&self) -> (usize, usize) {
        let open = self.conns.values().filter(|c| c.handshake.is_open());
        let (mut synced, mut all) = (0, 0);
        for c in open {
            all += 1;
            synced += usize::from(c.synced);
        }
        (synced, all)
    }

    /// Each open connection, by connection number.
    pub fn connections(&self, now_ms: u64) -> Vec<PeerStatus> {
        let mut v: Vec<PeerStatus> = self
            .conns
            .iter()
            .filter(|(_, c)| c.handshake.is_open())
            .filter_map(|(id, c)| {
                Some(PeerStatus {
                    conn: *id,
                    replica: c.handshake.peer()?,
                    dialled: c.dialled,
                    synced: c.synced,
                    entries_sent: c.sent,
                    entries_received: c.received,
                    silent_ms: now_ms.saturating_sub(c.heard_ms),
                })
            })
            .collect();
        v.sort_unstable_by_key(|p| p.conn);
        v
    }

    /// Connections still in their handshake.
    pub fn handshaking(&self) -> usize {
        self.conns
            .values()
            .filter(|c| !c.handshake.is_open())
            .count()
    }

    /// The replica id on the other end of `conn`, once known.
    pub fn peer_of(&self, conn: ConnId) -> Option<u64> {
        self.conns.get(&conn).and_then(|c| c.handshake.peer())
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// How many frames a connection's send queue may hold: a full sync of every table at its
    /// capacity, and [`QUEUE_SLACK`] more.
    pub fn queue_limit(&self) -> usize {
        let tables: usize = self
            .pools
            .values()
            .map(|p| {
                // The table, a members frame and every drain.
                let entries = p.stick.capacity().div_ceil(MAX_ENTRIES as u64);
                usize::try_from(entries)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1 + crate::routing::drains::MAX_DRAINS)
            })
            .fold(0, usize::saturating_add);
        tables.saturating_add(1 + QUEUE_SLACK)
    }

    /// The handshake finished: keep one connection per pair, and send on it what this replica
    /// knows: its shards, its drains, its whole table.
    fn opened(&mut self, conn: ConnId) -> Vec<Action> {
        let c = &self.conns[&conn];
        let peer = c
            .handshake
            .peer()
            .expect("an open handshake knows its peer");
        // The lower id's dial is the one kept.
        if c.dialled != (self.replica < peer) {
            self.conns.remove(&conn);
            return vec![Action::Duplicate(conn, peer)];
        }
        let mut out = Vec::new();
        let mut entries: Vec<Entry> = Vec::new();
        let mut pools: Vec<(&Arc<str>, &Arc<Pool>)> = self.pools.iter().collect();
        pools.sort_by(|a, b| a.0.cmp(b.0));
        for (name, pool) in pools {
            let members: Vec<Member> = pool
                .own_members()
                .into_iter()
                .map(|(shard, addrs)| Member {
                    shard: shard.to_string(),
                    addrs,
                })
                .collect();
            for chunk in members.chunks(usize::from(u16::MAX)) {
                let frame = Frame::Members {
                    pool: name.to_string(),
                    members: chunk.to_vec(),
                };
                out.push(Action::Send(conn, frame));
            }
            for (shard, d) in pool.drains.all() {
                out.push(Action::Send(
                    conn,
                    Frame::Drain(drain_frame(name, &shard, &d)),
                ));
            }
            for (room, p) in pool.stick.entries() {
                entries.extend(entry(name, &room, &p));
            }
        }
        self.totals.entries_sent += entries.len() as u64;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sent += entries.len() as u64;
        }
        out.extend(
            entries
                .chunks(MAX_ENTRIES)
                .map(|c| Action::Send(conn, Frame::Entries(c.to_vec()))),
        );
        out.push(Action::Send(conn, Frame::SyncDone));
        out
    }

    fn merge(&mut self, e: Entry) {
        let Some(pool) = self.pools.get(e.pool.as_str()) else {
            return;
        };
        let theirs = Placement {
            shard: Arc::from(e.shard.as_str()),
            version: e.version,
            placed_at_ms: e.placed_at_ms,
            refreshed_at_ms: e.placed_at_ms,
        };
        let shard = theirs.shard.clone();
        if let Merged::Replaced { .. } = pool.stick.merge(&e.room, theirs) {
            self.totals.replaced += 1;
            if pool.conns.close_except(&e.room, &shard) > 0 {
                self.totals.rooms_reconnected += 1;
            }
        }
    }

    fn refuse(&mut self, conn: ConnId, e: HandshakeError) -> Vec<Action> {
        self.conns.remove(&conn);
        if e == HandshakeError::SelfConnection {
            return vec![Action::Itself(conn)];
        }
        self.totals.refused += 1;
        vec![Action::Close(conn, e.to_string())]
    }
}

/// The entry that tells placement `p` of `room`; `None` for a room key or name longer than
/// the protocol carries (255 bytes), which is not replicated rather than break the connection.
fn entry(pool: &str, room: &str, p: &Placement) -> Option<Entry> {
    if [pool, room, &p.shard].iter().any(|s| s.len() > 255) {
        return None;
    }
    Some(Entry {
        pool: pool.to_owned(),
        room: room.to_owned(),
        shard: p.shard.to_string(),
        placed_at_ms: p.placed_at_ms,
        version: p.version,
    })
}

fn drain_frame(pool: &str, shard: &str, d: &AdminDrain) -> Drain {
    Drain {
        pool: pool.to_owned(),
        shard: shard.to_owned(),
        drained: d.drained,
        at_ms: d.at_ms,
        by: d.by.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(id: u64, secret: &[u8]) -> (Replicator, Arc<Pool>) {
        let pool = Arc::new(crate::routing::pool::tests::dns_pool());
        let mut r = Replicator::new(id, Arc::from(secret));
        r.set_pools(HashMap::from([(Arc::from("shards"), pool.clone())]));
        (r, pool)
    }

    /// Hands `actions` (from the other end of `conn`) to `to`: frames are received, closes
    /// disconnect it (their reasons collected). Returns what `to` sends back.
    fn deliver(
        to: &mut Replicator,
        conn: ConnId,
        actions: Vec<Action>,
        closes: &mut Vec<String>,
    ) -> Vec<Action> {
        let mut replies = Vec::new();
        for act in actions {
            let why = match act {
                Action::Send(_, f) => {
                    replies.extend(to.received(conn, f, 0));
                    continue;
                }
                Action::Close(_, why) => why,
                Action::Duplicate(_, peer) => format!("duplicate of {peer}'s"),
                Action::Itself(_) => "itself".into(),
            };
            closes.push(why);
            to.disconnected(conn);
        }
        replies
    }

    /// Delivers actions between two replicas joined by connection `conn` until quiet; returns
    /// the reasons of closes.
    fn pump(
        a: &mut Replicator,
        b: &mut Replicator,
        conn: ConnId,
        mut to_b: Vec<Action>,
        mut to_a: Vec<Action>,
    ) -> Vec<String> {
        let mut closes = Vec::new();
        while !to_a.is_empty() || !to_b.is_empty() {
            let next_a = deliver(b, conn, std::mem::take(&mut to_b), &mut closes);
            let next_b = deliver(a, conn, std::mem::take(&mut to_a), &mut closes);
            to_a = next_a;
            to_b = next_b;
        }
        closes
    }

    fn at(shard: &str, ms: u64) -> Placement {
        Placement {
            shard: Arc::from(shard),
            version: 1,
            placed_at_ms: ms,
            refreshed_at_ms: ms,
        }
    }

    #[test]
    fn a_new_connection_syncs_both_tables_then_streams_placements() {
        let (mut a, ta) = replica(1, b"secret-secret-secret");
        let (mut b, tb) = replica(2, b"secret-secret-secret");
        ta.stick.insert("old-a", Arc::from("shard-0"), 100);
        tb.stick.insert("old-b", Arc::from("shard-1"), 100);
        // a (lower id) dials b.
        let hello_a = a.connected(7, true, [1; 16], 0);
        let hello_b = b.connected(7, false, [2; 16], 0);
        let closes = pump(&mut a, &mut b, 7, hello_a, hello_b);
        assert!(closes.is_empty(), "{closes:?}");
        assert_eq!(a.synced(), (1, 1));
        assert_eq!(b.synced(), (1, 1));
        assert_eq!(ta.stick.get("old-b").as_deref(), Some("shard-1"));
        assert_eq!(tb.stick.get("old-a").as_deref(), Some("shard-0"));

        ta.stick.insert("new", Arc::from("shard-2"), 200);
        a.placed("shards", "new", &at("shard-2", 200));
        let out = a.flush();
        assert_eq!(out.len(), 1);
        pump(&mut a, &mut b, 7, out, Vec::new());
        assert_eq!(tb.stick.get("new").as_deref(), Some("shard-2"));
        assert!(a.flush().is_empty(), "nothing left to send");
        // Each side counts what it exchanged on the connection: a's old entry and the new one.
        let pa = &a.connections(0)[0];
        assert_eq!((pa.replica, pa.dialled, pa.synced), (2, true, true));
        assert_eq!((pa.entries_sent, pa.entries_received), (2, 1));
        let pb = &b.connections(0)[0];
        assert_eq!((pb.entries_sent, pb.entries_received), (1, 2));
    }

    #[test]
    fn open_connections_are_pinged_and_silent_ones_closed() {
        let (mut a, _) = replica(1, b"secret-secret-secret");
        let (mut b, _) = replica(2, b"secret-secret-secret");
        let hello_a = a.connected(7, true, [1; 16], 0);
        let hello_b = b.connected(7, false, [2; 16], 0);
        pump(&mut a, &mut b, 7, hello_a, hello_b);
        // A handshake that never answers is closed too.
        let _ = a.connected(8, true, [3; 16], 0);
        assert!(a.tick(PING_EVERY_MS - 1).is_empty(), "nothing due yet");
        assert_eq!(a.tick(PING_EVERY_MS), [Action::Send(7, Frame::Ping)]);
        assert!(
            a.tick(PING_EVERY_MS + 1).is_empty(),
            "one ping per interval"
        );
        // Each side's pings keep the connection alive on the other; the stalled handshake goes.
        for t in (PING_EVERY_MS..=SILENCE_MS * 2).step_by(PING_EVERY_MS as usize) {
            let (from_b, from_a) = (b.tick(t), a.tick(t));
            for (acts, to) in [(from_b, &mut a), (from_a, &mut b)] {
                for act in acts {
                    match act {
                        Action::Send(7, f) => {
                            assert_eq!(f, Frame::Ping);
                            assert!(to.received(7, f, t).is_empty());
                        }
                        Action::Close(8, _) => assert!(t >= SILENCE_MS),
                        other => panic!("at {t}: {other:?}"),
                    }
                }
            }
        }
        assert_eq!(a.handshaking(), 0, "the stalled handshake was closed");
        assert_eq!(a.connections(SILENCE_MS * 2)[0].silent_ms, 0);
        // Then b goes quiet: a closes the connection once SILENCE_MS passed.
        let last = SILENCE_MS * 2;
        assert!(!a
            .tick(last + SILENCE_MS - 1)
            .iter()
            .any(|x| matches!(x, Action::Close(..))));
        let out = a.tick(last + SILENCE_MS);
        assert!(
            matches!(&out[..], [Action::Close(7, why)] if why.contains("nothing heard")),
            "{out:?}"
        );
        assert!(a.connections(last + SILENCE_MS).is_empty());
        assert_eq!(a.totals().silent, 2, "the handshake and the connection");
    }

    #[test]
    fn a_send_queue_holds_a_full_table_and_some_more() {
        let (a, _) = replica(1, b"secret-secret-secret");
        // The test table holds 10,000 rooms: 3 frames of MAX_ENTRIES; a members frame and
        // every drain; SyncDone.
        let drains = crate::routing::drains::MAX_DRAINS;
        assert_eq!(a.queue_limit(), 3 + 1 + drains + 1 + QUEUE_SLACK);
    }

    #[test]
    fn concurrent_placements_converge_and_the_loser_follows() {
        let (mut a, ta) = replica(1, b"k1k1k1k1k1k1k1k1");
        let (mut b, tb) = replica(2, b"k1k1k1k1k1k1k1k1");
        let (ha, hb) = (
            a.connected(1, true, [1; 16], 0),
            b.connected(1, false, [2; 16], 0),
        );
        pump(&mut a, &mut b, 1, ha, hb);
        ta.stick.insert("r", Arc::from("shard-b"), 500);
        a.placed("shards", "r", &at("shard-b", 500));
        tb.stick.insert("r", Arc::from("shard-a"), 500);
        b.placed("shards", "r", &at("shard-a", 500));
        let (fa, fb) = (a.flush(), b.flush());
        pump(&mut a, &mut b, 1, fa, fb);
        assert_eq!(ta.stick.get("r"), tb.stick.get("r"));
        assert_eq!(ta.stick.get("r").as_deref(), Some("shard-a"));
        assert_eq!(a.totals().replaced + b.totals().replaced, 1);
    }

    /// Two replicas joined by connection 1, synced.
    fn joined() -> ((Replicator, Arc<Pool>), (Replicator, Arc<Pool>)) {
        let (mut a, pa) = replica(1, b"k1k1k1k1k1k1k1k1");
        let (mut b, pb) = replica(2, b"k1k1k1k1k1k1k1k1");
        let (ha, hb) = (
            a.connected(1, true, [1; 16], 0),
            b.connected(1, false, [2; 16], 0),
        );
        assert!(pump(&mut a, &mut b, 1, ha, hb).is_empty());
        ((a, pa), (b, pb))
    }

    #[test]
    fn the_loser_of_a_concurrent_placement_closes_its_tunnels_to_the_losing_shard() {
        let ((mut a, pa), (mut b, pb)) = joined();
        // Both place "r" in the same millisecond; b's participant has a tunnel open already.
        pa.stick.insert("r", Arc::from("shard-a"), 500);
        a.placed("shards", "r", &pa.stick.placement("r").unwrap());
        pb.stick.insert("r", Arc::from("shard-b"), 500);
        b.placed("shards", "r", &pb.stick.placement("r").unwrap());
        let closes = Arc::new(crate::routing::pool::tests::Closes::default());
        pb.conn_opened("r", Arc::from("shard-b"), closes.clone());
        let (fa, fb) = (a.flush(), b.flush());
        pump(&mut a, &mut b, 1, fa, fb);
        assert_eq!(pb.stick.get("r").as_deref(), Some("shard-a"));
        assert_eq!(closes.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!((b.totals().replaced, b.totals().rooms_reconnected), (1, 1));
        assert_eq!((a.totals().replaced, a.totals().rooms_reconnected), (0, 0));
    }

    #[test]
    fn a_move_replaces_the_entry_of_the_dead_shard_on_the_other_replica() {
        // The issue's reproduction, sans I/O: b has "r" on shard-0 (from a's first placement);
        // a moves it off the dead shard-0 to shard-2; b takes the move.
        let ((mut a, pa), (mut b, pb)) = joined();
        let first = pa.stick.insert("r", Arc::from("shard-0"), 100);
        a.placed("shards", "r", &first);
        let out = a.flush();
        pump(&mut a, &mut b, 1, out, Vec::new());
        assert_eq!(pb.stick.get("r").as_deref(), Some("shard-0"));
        let moved = pa.stick.insert("r", Arc::from("shard-2"), 5_000);
        a.placed("shards", "r", &moved);
        let out = a.flush();
        pump(&mut a, &mut b, 1, out, Vec::new());
        let at_b = pb.stick.placement("r").unwrap();
        assert_eq!((&*at_b.shard, at_b.version), ("shard-2", 2));
        // b's own refresh of the old placement, sent before it heard of the move, loses at a.
        b.placed("shards", "r", &first);
        let out = b.flush();
        pump(&mut a, &mut b, 1, Vec::new(), out);
        assert_eq!(pa.stick.get("r").as_deref(), Some("shard-2"));
    }

    #[test]
    fn shards_and_drains_travel_at_sync_and_before_the_entries_that_name_them() {
        use crate::routing::{Members, Shard};
        let addr: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let (mut a, pa) = replica(1, b"k1k1k1k1k1k1k1k1");
        // a found shard-0 in DNS and a's admin drained it before b started.
        pa.update_members(|_| {
            Some(Members::new(vec![Arc::new(Shard::new(
                "shard-0",
                1,
                vec![addr],
                false,
            ))]))
        });
        let drain = AdminDrain {
            drained: true,
            at_ms: 7,
            by: Arc::from("edge-a"),
        };
        pa.admin_drain("shard-0", drain);
        pa.stick.insert("r", Arc::from("shard-0"), 1);
        let (mut b, pb) = replica(2, b"k1k1k1k1k1k1k1k1");
        let (ha, hb) = (
            a.connected(1, true, [1; 16], 0),
            b.connected(1, false, [2; 16], 0),
        );
        pump(&mut a, &mut b, 1, ha, hb);
        let members = pb.members.load();
        let learnt = members.get("shard-0").expect("learnt at the sync");
        assert_eq!(**learnt.addrs(), [addr]);
        assert_eq!(learnt.state_name(0), "draining (admin, via edge-a)");
        assert_eq!(pb.stick.get("r").as_deref(), Some("shard-0"));
        // b never tells a shard it only learnt.
        assert!(pb.own_members().is_empty());

        // A shard a discovers later is told before the first placement that names it.
        let new: SocketAddr = "127.0.0.1:9002".parse().unwrap();
        pa.update_members(|m| {
            let mut shards = m.shards.clone();
            shards.push(Arc::new(Shard::new("shard-1", 1, vec![new], false)));
            Some(Members::new(shards))
        });
        let p = pa.stick.insert("s", Arc::from("shard-1"), 2);
        a.placed("shards", "s", &p);
        let out = a.flush();
        let kinds: Vec<&str> = out
            .iter()
            .map(|x| match x {
                Action::Send(_, Frame::Members { .. }) => "members",
                Action::Send(_, Frame::Entries(_)) => "entries",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["members", "entries"]);
        pump(&mut a, &mut b, 1, out, Vec::new());
        assert_eq!(**pb.members.load().get("shard-1").unwrap().addrs(), [new]);
        assert!(a.flush().is_empty() && a.tick(1).is_empty(), "told once");

        // An undrain made at b reaches a.
        let undrain = AdminDrain {
            drained: false,
            at_ms: 9,
            by: Arc::from("edge-b"),
        };
        pb.admin_drain("shard-0", undrain.clone());
        b.drained("shards", "shard-0", &undrain);
        let out = b.flush();
        pump(&mut a, &mut b, 1, Vec::new(), out);
        assert_eq!(
            pa.members.load().get("shard-0").unwrap().state_name(0),
            "up"
        );
    }

    #[test]
    fn one_connection_per_pair_and_strangers_are_refused() {
        let (mut a, _) = replica(1, b"same-secret-1234");
        let (mut b, _) = replica(2, b"same-secret-1234");
        // b (higher id) dialled a: that connection is closed once both ids are known.
        let (ha, hb) = (
            a.connected(3, false, [1; 16], 0),
            b.connected(3, true, [2; 16], 0),
        );
        let closes = pump(&mut a, &mut b, 3, ha, hb);
        assert_eq!(
            closes.len(),
            2,
            "both ends close it on their own: {closes:?}"
        );
        assert!(a.open_conns().is_empty() && b.open_conns().is_empty());

        let (mut c, _) = replica(3, b"other-secret-999");
        let (ha, hc) = (
            a.connected(4, true, [5; 16], 0),
            c.connected(4, false, [6; 16], 0),
        );
        let closes = pump(&mut a, &mut c, 4, ha, hc);
        assert!(closes.iter().any(|w| w.contains("proof")), "{closes:?}");
        assert!(a.open_conns().is_empty() && c.open_conns().is_empty());
        assert_eq!(a.totals().refused + c.totals().refused, 2);
    }
}
