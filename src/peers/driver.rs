//! The replication's I/O: a listener for other replicas, dials to the ones found (again every
//! round), a reader and a writer task per connection (its send queue bounded: a replica too slow
//! to read is disconnected), and the loop that feeds the [`Replicator`], flushes placements every
//! few milliseconds, ticks its pings and silence limit, and reports `/admin/peers` and metrics.

use super::replicator::{Action, ConnId, PeerStatus, Replicator, Totals};
use super::wire::{decode, encode, Frame};
use crate::routing::{AdminDrain, Placement, Pool};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Placements are batched this long.
const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// Replicas not connected are dialled again this often.
const DIAL_EVERY: Duration = Duration::from_secs(2);

/// Where the other replicas are.
pub enum Source {
    List(Vec<SocketAddr>),
    /// SRV records (a headless Service's named port): every target's addresses at its port.
    Srv(String),
    /// A name's A/AAAA records, at `port`.
    Dns(String, u16),
}

impl Source {
    /// The replicas' addresses now (this replica's own may be among them). A failed lookup
    /// gives none this round; the next round asks again.
    async fn resolve(&self, resolver: Option<&hickory_resolver::TokioResolver>) -> Vec<SocketAddr> {
        use crate::discovery::resolver::{lookup_host, lookup_srv};
        match (self, resolver) {
            (Source::List(addrs), _) => addrs.clone(),
            (Source::Srv(name), Some(r)) => match lookup_srv(r, name).await {
                Ok((records, addrs, _)) => records
                    .iter()
                    .flat_map(|rec| {
                        let ips = addrs
                            .get(&crate::discovery::srv::host_key(&rec.target))
                            .cloned()
                            .unwrap_or_default();
                        ips.into_iter().map(move |ip| SocketAddr::new(ip, rec.port))
                    })
                    .collect(),
                Err(e) => {
                    debug!(error = %e, "peers: SRV lookup failed");
                    Vec::new()
                }
            },
            (Source::Dns(name, port), Some(r)) => match lookup_host(r, name, *port).await {
                Ok((addrs, _)) => addrs,
                Err(e) => {
                    debug!(error = %e, "peers: lookup failed");
                    Vec::new()
                }
            },
            (_, None) => Vec::new(),
        }
    }
}

/// `/readyz`'s wait for the first full sync: done when every replica reached has sent its
/// whole table, or when `until` passed.
pub struct Readiness {
    flag: Arc<std::sync::atomic::AtomicBool>,
    until: std::time::Instant,
}

impl Readiness {
    pub fn new(flag: Arc<std::sync::atomic::AtomicBool>, wait: Duration) -> Self {
        Readiness {
            flag,
            until: std::time::Instant::now() + wait,
        }
    }

    fn done(&self) -> bool {
        self.flag.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn check(&self, settled: bool, peers: usize) {
        if settled {
            info!(peers, "stick tables synced from the other replicas");
        } else if std::time::Instant::now() >= self.until {
            info!(
                peers,
                "stick tables: not every replica synced in time; ready anyway"
            );
        } else {
            return;
        }
        self.flag.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What this replica tells the others: a placement its proxy made, or a drain made through its
/// admin API.
pub enum Update {
    Placed {
        pool: Arc<str>,
        room: Arc<str>,
        placement: Placement,
    },
    Drained {
        pool: Arc<str>,
        shard: Arc<str>,
        drain: AdminDrain,
    },
}

enum Event {
    Up {
        stream: TcpStream,
        dialled: Option<SocketAddr>,
    },
    Frame(ConnId, Frame),
    Down(ConnId),
    /// A dial failed; the address is tried again at the next round.
    Unreachable(SocketAddr),
}

/// Binds the peer port (here, so a taken port fails the start) and runs replication on a
/// thread of its own. The pools are taken again every dial round, so a reload that rebuilds a
/// pool (and its table) is followed.
pub fn start(
    config: &crate::config::Peers,
    shared: &Arc<crate::state::Shared>,
) -> Result<mpsc::UnboundedSender<Update>, String> {
    let listen = std::net::TcpListener::bind(config.listen)
        .map_err(|e| format!("peers: cannot listen on {}: {e}", config.listen))?;
    listen
        .set_nonblocking(true)
        .map_err(|e| format!("peers: {e}"))?;
    let source = match (&config.srv, &config.dns) {
        (Some(name), _) => Source::Srv(name.clone()),
        (None, Some(host)) => {
            let (name, port) = host
                .rsplit_once(':')
                .and_then(|(n, p)| Some((n.to_owned(), p.parse().ok()?)))
                .ok_or_else(|| format!("peers.dns: {host:?} is not name:port"))?;
            Source::Dns(name, port)
        }
        (None, None) => Source::List(
            config
                .list
                .iter()
                .map(|a| a.parse().map_err(|e| format!("peers.list: {a:?}: {e}")))
                .collect::<Result<_, String>>()?,
        ),
    };
    let resolver = match source {
        Source::List(_) => None,
        _ => Some(crate::discovery::resolver::build(
            &shared.runtime.load().config.resolver,
        )?),
    };
    // The pools now: a reload may rebuild a pool (and its table).
    let from = shared.clone();
    let pools = move || -> HashMap<Arc<str>, Arc<Pool>> {
        from.runtime
            .load()
            .pools
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect()
    };
    let secret: Arc<[u8]> = Arc::from(config.secret.as_bytes());
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).map_err(|e| format!("peers: no randomness: {e}"))?;
    let replica = u64::from_be_bytes(id);
    let (tx, rx) = mpsc::unbounded_channel();
    shared
        .peers_synced
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let synced = Readiness::new(shared.peers_synced.clone(), config.sync_wait);
    let report_to = shared.clone();
    std::thread::Builder::new()
        .name("peers".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return tracing::error!(error = %e, "peers: no runtime"),
            };
            rt.block_on(async move {
                match TcpListener::from_std(listen) {
                    Ok(listen) => {
                        run(
                            listen,
                            source,
                            resolver,
                            synced,
                            Some(report_to),
                            replica,
                            secret,
                            pools,
                            rx,
                        )
                        .await
                    }
                    Err(e) => tracing::error!(error = %e, "peers: listener"),
                }
            });
        })
        .map_err(|e| format!("peers: cannot start its thread: {e}"))?;
    Ok(tx)
}

/// Runs replication until `placed` closes. `peers` are the other replicas' addresses.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    listen: TcpListener,
    source: Source,
    resolver: Option<hickory_resolver::TokioResolver>,
    synced: Readiness,
    report_to: Option<Arc<crate::state::Shared>>,
    replica: u64,
    secret: Arc<[u8]>,
    pools: impl Fn() -> HashMap<Arc<str>, Arc<Pool>>,
    mut updates: mpsc::UnboundedReceiver<Update>,
) {
    let own = listen.local_addr().ok();
    let mut r = Replicator::new(replica, secret);
    r.set_pools(pools());
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut writers: HashMap<ConnId, ConnIo> = HashMap::new();
    let mut dialled: HashMap<ConnId, SocketAddr> = HashMap::new();
    let mut dialling: HashSet<SocketAddr> = HashSet::new();
    // Addresses whose replica (this id) has the lower id and dials us: not dialled while a
    // connection with that replica is open.
    let mut yield_to: HashMap<SocketAddr, u64> = HashMap::new();
    // Addresses that turned out to be this replica.
    let mut itself: HashSet<SocketAddr> = HashSet::new();
    let mut next_conn: ConnId = 1;
    let mut rounds = 0u64;
    // The clock shard state is measured on (a shard learnt from another replica lingers from
    // now on it).
    let start = Instant::now();
    let clock = report_to.clone();
    let now_ms = move || match &clock {
        Some(shared) => shared.now_ms(),
        None => start.elapsed().as_millis() as u64,
    };
    let mut reported = Reported::default();
    let mut report = tokio::time::interval(Duration::from_secs(1));
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let mut dial = tokio::time::interval(DIAL_EVERY);
    loop {
        let actions = tokio::select! {
            accepted = listen.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = events_tx.send(Event::Up { stream, dialled: None });
                    Vec::new()
                }
                Err(e) => {
                    debug!(error = %e, "peer accept failed");
                    Vec::new()
                }
            },
            event = events.recv() => match event {
                Some(Event::Up { stream, dialled: to }) => {
                    let conn = next_conn;
                    next_conn += 1;
                    if let Some(addr) = to {
                        dialling.remove(&addr);
                        dialled.insert(conn, addr);
                    }
                    let io = spawn_conn(conn, stream, events_tx.clone(), r.queue_limit());
                    writers.insert(conn, io);
                    r.connected(conn, to.is_some(), nonce(), now_ms())
                }
                Some(Event::Frame(conn, frame)) => r.received(conn, frame, now_ms()),
                Some(Event::Down(conn)) => {
                    r.disconnected(conn);
                    writers.remove(&conn);
                    dialled.remove(&conn);
                    Vec::new()
                }
                Some(Event::Unreachable(addr)) => {
                    dialling.remove(&addr);
                    Vec::new()
                }
                None => return,
            },
            update = updates.recv() => match update {
                Some(Update::Placed { pool, room, placement }) => {
                    r.placed(&pool, &room, &placement);
                    Vec::new()
                }
                Some(Update::Drained { pool, shard, drain }) => {
                    r.drained(&pool, &shard, &drain);
                    Vec::new()
                }
                None => return,
            },
            _ = flush.tick() => r.flush(),
            _ = report.tick() => {
                let now = now_ms();
                let out = r.tick(now);
                if let Some(shared) = &report_to {
                    let peers = r.connections(now);
                    let status = status_json(replica, own, synced.done(), &peers, &dialled, &r);
                    *shared.peers_status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
                    reported.update(&shared.metrics.peers, &peers, r.handshaking(), r.totals());
                }
                out
            }
            _ = dial.tick() => {
                let connected: HashSet<SocketAddr> = dialled.values().copied().collect();
                let open_peers: HashSet<u64> =
                    r.open_conns().into_iter().filter_map(|c| r.peer_of(c)).collect();
                rounds += 1;
                r.set_pools(pools());
                let peers = source.resolve(resolver.as_ref()).await;
                for addr in &peers {
                    let yielded = yield_to.get(addr).is_some_and(|id| open_peers.contains(id));
                    if Some(*addr) == own
                        || itself.contains(addr)
                        || connected.contains(addr)
                        || yielded
                        || !dialling.insert(*addr)
                    {
                        continue;
                    }
                    let tx = events_tx.clone();
                    let addr = *addr;
                    tokio::spawn(async move {
                        match TcpStream::connect(addr).await {
                            Ok(stream) => {
                                let _ = tx.send(Event::Up { stream, dialled: Some(addr) });
                            }
                            Err(e) => {
                                debug!(peer = %addr, error = %e, "peer not reachable");
                                let _ = tx.send(Event::Unreachable(addr));
                            }
                        }
                    });
                }
                Vec::new()
            }
        };
        if !synced.done() {
            let (from, open) = r.synced();
            let settled = rounds > 1 && dialling.is_empty() && r.handshaking() == 0 && from == open;
            synced.check(settled, open);
        }
        for action in actions {
            match action {
                Action::Send(conn, frame) => {
                    let full = writers.get(&conn).is_some_and(|w| {
                        matches!(
                            w.frames.try_send(frame),
                            Err(mpsc::error::TrySendError::Full(_))
                        )
                    });
                    if full {
                        warn!(conn, "peer too slow: its send queue is full; closed (it gets the whole table again when it reconnects)");
                        r.disconnected(conn);
                        writers.remove(&conn);
                        dialled.remove(&conn);
                        if let Some(shared) = &report_to {
                            shared
                                .metrics
                                .peers
                                .closed
                                .with_label_values(&["slow"])
                                .inc();
                        }
                    }
                }
                // Closing drops the connection's reader too, so no `Down` follows: forget it
                // here, or its address would count as connected and never be dialled again.
                Action::Close(conn, why) => {
                    info!(conn, reason = %why, "peer connection closed");
                    writers.remove(&conn);
                    dialled.remove(&conn);
                }
                Action::Duplicate(conn, peer) => {
                    if let Some(addr) = dialled.remove(&conn) {
                        yield_to.insert(addr, peer);
                    }
                    writers.remove(&conn);
                }
                Action::Itself(conn) => {
                    if let Some(addr) = dialled.remove(&conn) {
                        itself.insert(addr);
                    }
                    writers.remove(&conn);
                }
            }
        }
    }
}

/// A connection's reader and writer: frames to send go into `frames`; dropping it closes the
/// connection (the writer finishes what it has and shuts the stream down; the reader, which a
/// silent replica would keep waiting forever, is stopped).
struct ConnIo {
    frames: mpsc::Sender<Frame>,
    reader: tokio::task::AbortHandle,
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn spawn_conn(
    conn: ConnId,
    stream: TcpStream,
    events: mpsc::UnboundedSender<Event>,
    queue: usize,
) -> ConnIo {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Frame>(queue.max(1));
    tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(frame) = rx.recv().await {
            buf.clear();
            if encode(&frame, &mut buf).is_err() || wr.write_all(&buf).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let reader = tokio::spawn(async move {
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        'read: loop {
            let n = match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&chunk[..n]);
            loop {
                match decode(&pending) {
                    Ok(Some((frame, used))) => {
                        pending.drain(..used);
                        if events.send(Event::Frame(conn, frame)).is_err() {
                            break 'read;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        debug!(conn, error = %e, "bad peer frame; closing");
                        break 'read;
                    }
                }
            }
        }
        let _ = events.send(Event::Down(conn));
    });
    ConnIo {
        frames: tx,
        reader: reader.abort_handle(),
    }
}

/// `/admin/peers`' answer.
fn status_json(
    replica: u64,
    own: Option<SocketAddr>,
    ready: bool,
    peers: &[PeerStatus],
    dialled: &HashMap<ConnId, SocketAddr>,
    r: &Replicator,
) -> serde_json::Value {
    let conns: Vec<serde_json::Value> = peers
        .iter()
        .map(|p| {
            serde_json::json!({
                "connection": p.conn,
                "replica": format!("{:016x}", p.replica),
                "address": dialled.get(&p.conn).map(|a| a.to_string()),
                "dialled_by": if p.dialled { "this replica" } else { "the other" },
                "synced": p.synced,
                "entries_sent": p.entries_sent,
                "entries_received": p.entries_received,
                "silent_ms": p.silent_ms,
            })
        })
        .collect();
    let t = r.totals();
    serde_json::json!({
        "replica": format!("{replica:016x}"),
        "listen": own.map(|a| a.to_string()),
        "ready": ready,
        "connections": conns,
        "handshaking": r.handshaking(),
        "entries_sent": t.entries_sent,
        "entries_received": t.entries_received,
        "conflicts_lost": t.replaced,
        "rooms_reconnected": t.rooms_reconnected,
        "refused": t.refused,
    })
}

/// What the metrics were last set from: the totals (counters grow by the difference) and the
/// replicas labelled (a replica gone has its series removed).
#[derive(Default)]
struct Reported {
    totals: Totals,
    replicas: HashSet<String>,
}

impl Reported {
    fn update(
        &mut self,
        m: &crate::metrics::PeerMetrics,
        peers: &[PeerStatus],
        handshaking: usize,
        totals: &Totals,
    ) {
        let synced = peers.iter().filter(|p| p.synced).count();
        for (state, n) in [
            ("handshaking", handshaking),
            ("syncing", peers.len() - synced),
            ("synced", synced),
        ] {
            m.connections.with_label_values(&[state]).set(n as i64);
        }
        let mut now = HashSet::new();
        for p in peers {
            let id = format!("{:016x}", p.replica);
            m.synced.with_label_values(&[&id]).set(i64::from(p.synced));
            m.entries
                .with_label_values(&[&id, "sent"])
                .set(p.entries_sent as i64);
            m.entries
                .with_label_values(&[&id, "received"])
                .set(p.entries_received as i64);
            m.silence
                .with_label_values(&[&id])
                .set((p.silent_ms / 1000) as i64);
            now.insert(id);
        }
        for gone in self.replicas.difference(&now) {
            let _ = m.synced.remove_label_values(&[gone]);
            let _ = m.entries.remove_label_values(&[gone, "sent"]);
            let _ = m.entries.remove_label_values(&[gone, "received"]);
            let _ = m.silence.remove_label_values(&[gone]);
        }
        self.replicas = now;
        let grew = |now: u64, before: u64| now.saturating_sub(before);
        m.entries_total
            .with_label_values(&["sent"])
            .inc_by(grew(totals.entries_sent, self.totals.entries_sent));
        m.entries_total
            .with_label_values(&["received"])
            .inc_by(grew(totals.entries_received, self.totals.entries_received));
        m.conflicts_lost
            .inc_by(grew(totals.replaced, self.totals.replaced));
        m.rooms_reconnected.inc_by(grew(
            totals.rooms_reconnected,
            self.totals.rooms_reconnected,
        ));
        m.refused.inc_by(grew(totals.refused, self.totals.refused));
        m.closed
            .with_label_values(&["silent"])
            .inc_by(grew(totals.silent, self.totals.silent));
        self.totals = totals.clone();
    }
}

fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    getrandom::fill(&mut n).expect("the OS provides randomness");
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn replica(
        id: u64,
        listen: TcpListener,
        peers: Vec<SocketAddr>,
    ) -> (Arc<Pool>, mpsc::UnboundedSender<Update>) {
        let pool = Arc::new(crate::routing::pool::tests::dns_pool());
        let (tx, rx) = mpsc::unbounded_channel();
        let pools = HashMap::from([(Arc::from("shards"), pool.clone())]);
        tokio::spawn(run(
            listen,
            Source::List(peers),
            None,
            Readiness::new(Arc::default(), Duration::from_secs(1)),
            None,
            id,
            Arc::from(&b"0123456789abcdef"[..]),
            move || pools.clone(),
            rx,
        ));
        (pool, tx)
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn placements_reach_the_other_replica_and_a_late_one_gets_the_table() {
        let la = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lb = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
        let (ta, pa) = replica(1, la, vec![aa, ab]).await;
        ta.stick.insert("early", Arc::from("shard-0"), 10);
        let (tb, _pb) = replica(2, lb, vec![aa, ab]).await;
        eventually("b's full sync", || tb.stick.get("early").is_some()).await;

        let placement = ta.stick.insert("live", Arc::from("shard-1"), 20);
        pa.send(Update::Placed {
            pool: Arc::from("shards"),
            room: Arc::from("live"),
            placement,
        })
        .ok()
        .unwrap();
        eventually("the new placement at b", || {
            tb.stick.get("live").as_deref() == Some("shard-1")
        })
        .await;
    }
}
