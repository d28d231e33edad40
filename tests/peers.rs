//! Stick-table replication: three replicas in front of shards found by a real DNS server in the
//! test process, each looking DNS up on its own schedule (as in Kubernetes, each on its TTL);
//! every room's three participants arrive through the three replicas while a replica restarts,
//! shards are added, drained (through one replica's admin API), removed (and a replica restarts
//! while the removed one lingers) and killed. With `[peers]` no room is served by two shards in a
//! phase and none moves but off a dead shard; without, the same scenario splits rooms (so the
//! test can fail). Participants joining at once through replicas whose views differ end on one
//! shard, the losers' WebSockets closed and reconnected. And faults: a frozen replica, a
//! stranger, garbage, a peer that stops reading.

mod common;

use common::dns::DnsServer;
use common::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::dns::{publish_shards, SHARDS_SRV as SRV};
const ROOMS: usize = 2_000;
/// New rooms of the drain phase.
const NEW_ROOMS: usize = 500;

/// The route every replica here has: everything to the `shards` pool, room-sticky.
const SHARD_ROUTE: &str = "[[route]]\npath_prefix = \"/\"\nshard = { pool = \"shards\" }\n";

/// The `[peers]` section of a replica listening on `port` and dialling `peers`, with `secret`.
fn peers_section(port: u16, peers: &[u16], secret: &str, sync_wait: &str) -> String {
    let list: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "[peers]\nlisten = \"127.0.0.1:{port}\"\nlist = [{}]\nsecret = \"{secret}\"\n\
         sync_wait = \"{sync_wait}\"\nname = \"edge-{port}\"\n\n",
        list.join(", ")
    )
}

/// A `[resolver]` asking `dns` (answers kept `min_ttl` to `max_ttl`) and the `shards` pool
/// named by its SRV record.
fn srv_discovery(dns: &DnsServer, min_ttl: &str, max_ttl: &str) -> String {
    format!(
        "[resolver]\nnameservers = [\"{}\"]\nmin_ttl = \"{min_ttl}\"\nmax_ttl = \"{max_ttl}\"\n\
         timeout = \"300ms\"\n\n[[pool]]\nname = \"shards\"\nshards.srv = \"{SRV}\"\n\n",
        dns.addr
    )
}

/// What the scenario saw.
struct Outcome {
    /// Rooms served by two shards within a phase (participants apart), in any phase.
    split: usize,
    /// Rooms whose shard changed from one phase to the next without their shard dying: a
    /// split too, as the room's earlier participants are still on its earlier shard.
    moved: usize,
    /// New rooms placed on the shard drained through one replica.
    on_drained: usize,
}

/// (phase, room) -> the shards that answered its participants.
type Served = HashMap<(usize, usize), HashSet<String>>;

/// The scenario's replicas, shards and DNS, and what they served.
struct Edge {
    dns: DnsServer,
    backends: Vec<Backend>,
    replicas: Vec<Shardgate>,
    configs: Vec<(String, std::net::SocketAddr, std::net::SocketAddr)>,
    served: Served,
    seed: u64,
}

impl Edge {
    /// A permutation of the three replicas, from the test's fixed pseudo-random sequence.
    fn order(&mut self) -> [usize; 3] {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        const ORDERS: [[usize; 3]; 6] = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        ORDERS[(self.seed % 6) as usize]
    }

    /// Each room's three participants arrive, one per replica in a random order: all rooms'
    /// first participants, then all second ones, then all third ones (participants of one
    /// room some time apart, as people join), 64 requests at a time.
    /// `shard_died`: a shard was just killed (its kept-alive connections fail once).
    async fn participants(
        &mut self,
        phase: usize,
        rooms: std::ops::Range<usize>,
        shard_died: bool,
    ) {
        let orders: Vec<[usize; 3]> = rooms.clone().map(|_| self.order()).collect();
        let c = client();
        for wave in 0..3 {
            let jobs: Vec<(usize, String)> = rooms
                .clone()
                .zip(&orders)
                .map(|(room, order)| {
                    let url =
                        self.replicas[order[wave]].url(&format!("/http-bind?room=room-{room}"));
                    (room, url)
                })
                .collect();
            for chunk in jobs.chunks(64) {
                let tasks: Vec<_> = chunk
                    .iter()
                    .map(|(room, url)| {
                        let (c, url, room) = (c.clone(), url.clone(), *room);
                        tokio::spawn(async move {
                            let (mut status, mut body) = get(&c, &url).await;
                            if status == 502 && shard_died {
                                // A request that met the killed shard on a kept-alive
                                // connection fails, as it would for any client; it asks again.
                                (status, body) = get(&c, &url).await;
                            }
                            assert_eq!(status, 200, "{url}: {body}");
                            (room, body.trim().to_owned())
                        })
                    })
                    .collect();
                for t in tasks {
                    let (room, shard) = t.await.unwrap();
                    self.served.entry((phase, room)).or_default().insert(shard);
                }
            }
        }
    }

    /// Restarts replica `i` (an empty table: with peers it is not ready until the others'
    /// tables arrived).
    fn restart(&mut self, i: usize) {
        drop(self.replicas.remove(i));
        let (text, http, admin) = &self.configs[i];
        self.replicas
            .insert(i, Shardgate::start(text, *http, *admin));
    }

    fn publish(&self, shards: &[usize]) {
        let list: Vec<&Backend> = shards.iter().map(|i| &self.backends[*i]).collect();
        publish_shards(&self.dns, 1, &list);
    }

    /// Waits until every replica lists shard `i` in `state`.
    async fn wait_state(&self, i: usize, state: &str) {
        let name = shard_name(&self.backends[i]);
        for r in &self.replicas {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            loop {
                let listing = admin_shards(r, "t").await;
                let found = listing["pools"][0]["shards"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["name"] == name && s["state"] == state);
                if found {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name} not {state:?}: {listing}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn shard_name(b: &Backend) -> String {
    format!("{}.web.jitsi.test", b.name)
}

/// Runs the scenario: 3 shards, rooms whose participants arrive through the three replicas;
/// (2) a replica restarts and a 4th shard is added; (3) shard-1 is drained through replica 0's
/// admin API only, and new rooms arrive; (4) shard-2 leaves DNS (it lingers for its rooms) and a
/// replica restarts, never having seen it in DNS; (5) shard-0 is killed while shard-3 leaves
/// DNS, which the replicas see at different times: shard-0's rooms move. (6) Once more.
async fn scenario(with_peers: bool) -> Outcome {
    let dns = DnsServer::start().await;
    let mut backends = Vec::new();
    for i in 0..4 {
        backends.push(Backend::start(&format!("shard-{i}")).await);
    }
    let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut e = Edge {
        dns,
        backends,
        replicas: Vec::new(),
        configs: Vec::new(),
        served: HashMap::new(),
        seed: 0x9e37_79b9_7f4a_7c15,
    };
    e.publish(&[0, 1, 2]);
    // Each replica looks DNS up on its own schedule.
    for (port, every) in peer_ports.iter().zip(["200ms", "1s", "3s"]) {
        let (head, http, admin) = config_head("t");
        let peers = if with_peers {
            peers_section(*port, &peer_ports, SECRET, "5s")
        } else {
            String::new()
        };
        let discovery = srv_discovery(&e.dns, every, every);
        let text = format!("{head}{peers}{discovery}{SHARD_ROUTE}");
        e.replicas.push(Shardgate::start(&text, http, admin));
        e.configs.push((text, http, admin));
    }
    for r in &e.replicas {
        wait_for_members(r, 3, 3).await;
    }

    // 1: three shards.
    e.participants(1, 0..ROOMS, false).await;
    // 2: a replica restarts; a fourth shard is added.
    tokio::time::sleep(Duration::from_millis(300)).await;
    e.restart(1);
    wait_for_members(&e.replicas[1], 3, 3).await;
    e.publish(&[0, 1, 2, 3]);
    for r in &e.replicas {
        wait_for_members(r, 4, 4).await;
    }
    e.participants(2, 0..ROOMS, false).await;
    // 3: shard-1 is drained through replica 0's admin API only; new rooms arrive.
    let url = e.replicas[0].admin_url(&format!(
        "/admin/shards/shards/{}/drain",
        shard_name(&e.backends[1])
    ));
    let status = client()
        .post(url)
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    if with_peers {
        let via = format!("draining (admin, via edge-{})", peer_ports[0]);
        e.wait_state(1, &via).await;
    }
    e.participants(3, 0..ROOMS + NEW_ROOMS, false).await;
    let on_drained = (ROOMS..ROOMS + NEW_ROOMS)
        .filter(|room| e.served[&(3, *room)].contains("shard-1"))
        .count();
    // 4: shard-2 leaves DNS and lingers (draining) for its rooms; replica 2 restarts then, so its
    // DNS never names shard-2.
    e.publish(&[0, 1, 3]);
    e.wait_state(2, "draining (gone from DNS)").await;
    e.restart(2);
    // With peers it learns shard-2 (and its address) from the others.
    let members = 3 + usize::from(with_peers);
    wait_for_members(&e.replicas[2], members, members).await;
    e.participants(4, 0..ROOMS + NEW_ROOMS, false).await;
    // 5: shard-0 dies and shard-3 leaves DNS; replicas notice each at their own time. Rooms of
    // shard-0 move, each to one shard everywhere.
    e.backends[0].kill();
    e.publish(&[1, 3]);
    e.participants(5, 0..ROOMS + NEW_ROOMS, true).await;
    // 6: and stay there.
    e.participants(6, 0..ROOMS + NEW_ROOMS, false).await;

    let split = e
        .served
        .iter()
        .filter(|(_, shards)| shards.len() > 1)
        .map(|((_, room), _)| *room)
        .collect::<HashSet<_>>()
        .len();
    let mut moved = 0;
    for room in 0..ROOMS + NEW_ROOMS {
        let mut last: Option<&String> = None;
        for phase in 1..=6 {
            let Some(shards) = e.served.get(&(phase, room)) else {
                continue;
            };
            let Some(now) = shards.iter().next() else {
                continue;
            };
            if let Some(before) = last {
                let died = phase == 5 && before == "shard-0";
                if before != now && !died {
                    moved += 1;
                    break;
                }
            }
            last = Some(now);
        }
    }
    Outcome {
        split,
        moved,
        on_drained,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_peers_no_room_splits_while_shards_change() {
    let o = scenario(true).await;
    println!(
        "with [peers]: {} of {} rooms served by two shards in a phase, {} moved without cause, \
         {} new rooms on the drained shard",
        o.split,
        ROOMS + NEW_ROOMS,
        o.moved,
        o.on_drained
    );
    assert_eq!((o.split, o.moved, o.on_drained), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_peers_the_same_scenario_splits_rooms() {
    let o = scenario(false).await;
    println!(
        "without [peers]: {} of {} rooms served by two shards in a phase, {} moved without cause, \
         {} new rooms on the drained shard",
        o.split,
        ROOMS + NEW_ROOMS,
        o.moved,
        o.on_drained
    );
    assert!(
        o.split + o.moved > ROOMS / 20,
        "the control should split rooms: {} + {}",
        o.split,
        o.moved
    );
    assert!(
        o.on_drained > 0,
        "the other replicas did not know of the drain"
    );
}

/// The metrics of a replica's admin listener.
async fn scrape(r: &Shardgate) -> String {
    get(&client(), &r.admin_url("/metrics")).await.1
}

/// Waits up to `secs` for `ok(scrape)`; returns the scrape and how long it took.
async fn wait_scrape(r: &Shardgate, secs: u64, ok: impl Fn(&str) -> bool) -> (String, Duration) {
    let start = std::time::Instant::now();
    loop {
        let m = scrape(r).await;
        if ok(&m) {
            return (m, start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "not as expected after {secs} s:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn signal(r: &Shardgate, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &r.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

const SECRET: &str = "0123456789abcdef-test";

/// Two replicas listening for peers on `ports`, each listing both, over `backends`; returned
/// once each has synced with the other.
async fn synced_pair(ports: &[u16; 2], backends: &[Backend]) -> Vec<Shardgate> {
    let replicas: Vec<Shardgate> = ports
        .iter()
        .map(|port| replica(*port, ports, backends, SECRET))
        .collect();
    for r in &replicas {
        wait_scrape(r, 20, synced_with_one).await;
    }
    replicas
}

/// A replica listening for peers on `port` and dialling those on `peers`.
fn replica(port: u16, peers: &[u16], backends: &[Backend], secret: &str) -> Shardgate {
    let shards: Vec<&Backend> = backends.iter().collect();
    let (head, http, admin) = config_head("t");
    let text = format!(
        "{head}{}{}{SHARD_ROUTE}",
        peers_section(port, peers, secret, "5s"),
        shard_pool("shards", &shards)
    );
    Shardgate::start(&text, http, admin)
}

fn synced_with_one(m: &str) -> bool {
    metric(m, "shardgate_peers_connections{state=\"synced\"}") == Some(1)
}

/// A replica that stops answering without closing its connections (a frozen process: the
/// kernel still acknowledges TCP) is dropped by the others once nothing was heard from it for
/// 15 s, not much before; once it runs again, the two reconnect and sync. The metrics show each
/// peer's state, silence and entries all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_replica_is_dropped_then_rejoins() {
    let backends = [
        Backend::start("shard-0").await,
        Backend::start("shard-1").await,
    ];
    let ports = [free_port(), free_port()];
    let replicas = synced_pair(&ports, &backends).await;
    let (a, b) = (&replicas[0], &replicas[1]);

    // A room placed through a reaches b; both count it, per peer and in total.
    let (status, _) = get(&client(), &a.url("/http-bind?room=frozen")).await;
    assert_eq!(status, 200);
    let (m, _) = wait_scrape(b, 10, |m| {
        metric(m, "shardgate_peers_entries_total{direction=\"received\"}") >= Some(1)
    })
    .await;
    for line in [
        "shardgate_peer_synced{replica=",
        "shardgate_peer_silence_seconds{replica=",
        "shardgate_peer_entries{direction=\"received\",replica=",
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
    let peers: serde_json::Value = client()
        .get(b.admin_url("/admin/peers"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let conn = &peers["connections"][0];
    assert!(conn["entries_received"].as_u64() >= Some(1), "{peers}");
    assert!(conn["silent_ms"].as_u64() < Some(15_000), "{peers}");

    // b freezes: a keeps the connection while pings are due, and drops it at 15 s of silence.
    signal(b, "-STOP");
    let (_, took) = wait_scrape(a, 30, |m| {
        metric(m, "shardgate_peers_connections{state=\"synced\"}") == Some(0)
            && !m.contains("shardgate_peer_synced{replica=")
    })
    .await;
    println!("a frozen replica was dropped after {took:?}");
    // Silence counts from b's last ping, up to 5 s (and a 1 s tick) before the freeze.
    assert!(
        took >= Duration::from_secs(9),
        "dropped too early: {took:?}"
    );

    // b runs again: they reconnect and sync.
    signal(b, "-CONT");
    wait_scrape(a, 30, synced_with_one).await;
    wait_scrape(b, 30, synced_with_one).await;
}

/// A replica with another secret is refused (and counted) by both sides, and bytes that are
/// not the protocol close their connection; the replicas that belong together stay synced and
/// keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_garbage_are_refused_and_the_replicas_go_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backends = [Backend::start("shard-0").await];
    let ports = [free_port(), free_port()];
    let replicas = synced_pair(&ports, &backends).await;
    let (a, b) = (&replicas[0], &replicas[1]);

    // c knows a's address but not the secret.
    let own = free_port();
    let stranger = replica(own, &[ports[0], own], &backends, "another-secret-of-16+");
    let refused = |m: &str| metric(m, "shardgate_peers_refused_total") >= Some(1);
    wait_scrape(a, 20, refused).await;
    wait_scrape(&stranger, 20, refused).await;
    let m = scrape(&stranger).await;
    assert_eq!(
        metric(&m, "shardgate_peers_connections{state=\"synced\"}"),
        Some(0),
        "{m}"
    );

    // Bytes that are not the protocol on a's peer port (a frame of an unknown kind, a length
    // over the limit): a closes each such connection at once.
    for noise in [
        &[0u8, 0, 0, 1, 0xEE][..],
        &[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0],
    ] {
        let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", ports[0]))
            .await
            .unwrap();
        let _ = raw.write_all(noise).await;
        let mut buf = vec![0u8; 65536];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match raw.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a kept a connection that sent {noise:?}");
    }

    // a and b never noticed.
    for r in [a, b] {
        let m = scrape(r).await;
        assert!(synced_with_one(&m), "{m}");
        let (status, _) = get(&client(), &r.url("/http-bind?room=still")).await;
        assert_eq!(status, 200);
    }
}

/// A replica (here a fake one that does the handshake, then pings but never reads) that takes
/// less than it is sent: its connection is closed once its send queue is full, rather than
/// queued for without bound; requests are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_dropped_not_queued_for() {
    use shardgate::peers::session::Handshake;
    use shardgate::peers::wire::{decode, encode, Frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let backends = [Backend::start("shard-0").await];
    let port = free_port();
    let (head, http, admin) = config_head("t");
    let text = format!(
        "{head}{}{}sticky = {{ ttl = \"10m\", capacity = 1000 }}\n\n{SHARD_ROUTE}",
        peers_section(port, &[port], SECRET, "1s"),
        shard_pool("shards", &[&backends[0]])
    );
    let a = Shardgate::start(&text, http, admin);

    // The fake replica: id 0, so its own dial is the connection kept; a small receive buffer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let (mut hs, hello) = Handshake::start(SECRET.as_bytes(), 0, [7; 16]);
    let send = |f: &Frame| {
        let mut out = Vec::new();
        encode(f, &mut out).unwrap();
        out
    };
    wr.write_all(&send(&hello)).await.unwrap();
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    while !hs.is_open() {
        let n = rd.read(&mut chunk).await.unwrap();
        assert!(n > 0, "a closed the handshake");
        pending.extend_from_slice(&chunk[..n]);
        while let Some((frame, used)) = decode(&pending).unwrap() {
            pending.drain(..used);
            if let Some(reply) = hs.on_frame(&frame).unwrap() {
                wr.write_all(&send(&reply)).await.unwrap();
            }
        }
    }
    // From now on it only pings (so it is not dropped for silence) and reads nothing.
    let pinger = tokio::spawn(async move {
        loop {
            if wr.write_all(&send(&Frame::Ping)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });

    // Placements stream to it (a frame per 10 ms flush), from 8 clients, until a gives up on
    // it: once the kernel's socket buffers (megabytes) and then the queue are full.
    let long = "x".repeat(200);
    let start = std::time::Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for k in 0..8 {
        let (url, done, long) = (a.url(""), done.clone(), long.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            let mut room = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) =
                    get(&c, &format!("{url}/http-bind?room=slow-{k}-{room}-{long}")).await;
                assert_eq!(status, 200, "{body}");
                room += 1;
            }
            room
        }));
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let m = scrape(&a).await;
        if metric(&m, "shardgate_peers_closed_total{reason=\"slow\"}") >= Some(1) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "a slow replica was never dropped:\n{m}"
        );
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut rooms = 0;
    for l in load {
        rooms += l.await.unwrap();
    }
    println!(
        "dropped the slow replica after {rooms} rooms, {:?}",
        start.elapsed()
    );
    let c = client();
    pinger.abort();
    let (status, _) = get(&c, &a.url("/http-bind?room=after")).await;
    assert_eq!(status, 200);
}

/// A replica that discovers shards by `dns`, looking it up every `every`, with peers.
fn dns_replica(port: u16, peers: &[u16], dns: &DnsServer, every: &str) -> Shardgate {
    let (head, http, admin) = config_head("t");
    let text = format!(
        "{head}{}{}{SHARD_ROUTE}",
        peers_section(port, peers, SECRET, "5s"),
        srv_discovery(dns, every, every)
    );
    Shardgate::start(&text, http, admin)
}

/// Right after a shard is added, one replica's DNS answer can lag another's (each looks up on
/// its own TTL), and a replica's DNS may never name a shard another uses. A room one replica
/// placed on such a shard is followed by the others at once: the shard's address came with
/// the placement. The shard takes no new rooms where DNS has not named it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_a_shard_not_discovered_here_is_followed_at_once() {
    let dns = DnsServer::start().await;
    let other_dns = DnsServer::start().await;
    let b0 = Backend::start("shard-0").await;
    let b1 = Backend::start("shard-1").await;
    publish_shards(&dns, 1, &[&b0]);
    publish_shards(&other_dns, 1, &[&b0]);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    // `a` looks DNS up every 200 ms; `b` and `c` every minute; `c`'s DNS never names shard-1.
    let a = dns_replica(ports[0], &ports, &dns, "200ms");
    let b = dns_replica(ports[1], &ports, &dns, "60s");
    let c = dns_replica(ports[2], &ports, &other_dns, "60s");
    for r in [&a, &b, &c] {
        wait_for_members(r, 1, 1).await;
    }
    publish_shards(&dns, 1, &[&b0, &b1]);
    wait_for_members(&a, 2, 2).await;

    let http = client();
    let mut placed = Vec::new();
    for room in 0..100 {
        let (status, body) = get(&http, &a.url(&format!("/http-bind?room=room-{room}"))).await;
        assert_eq!(status, 200, "{body}");
        placed.push(body.trim().to_owned());
    }
    let on_new = placed.iter().filter(|s| *s == "shard-1").count();
    assert!(on_new >= 20, "{placed:?}");
    for r in [&b, &c] {
        wait_scrape(r, 10, |m| {
            metric(m, "shardgate_peers_entries_total{direction=\"received\"}") >= Some(100)
        })
        .await;
    }
    // `b` and `c` follow every placement, without waiting.
    for r in [&b, &c] {
        for (room, shard) in placed.iter().enumerate() {
            let started = std::time::Instant::now();
            let (status, body) = get(&http, &r.url(&format!("/http-bind?room=room-{room}"))).await;
            assert_eq!((status, body.trim()), (200, shard.as_str()), "room-{room}");
            assert!(started.elapsed() < Duration::from_millis(500));
        }
        let listing = admin_shards(r, "t").await;
        let learnt = listing["pools"][0]["shards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "shard-1.web.jitsi.test")
            .cloned();
        assert_eq!(
            learnt.as_ref().map(|s| s["state"].clone()),
            Some("draining (known from another replica)".into()),
            "{listing}"
        );
        // New rooms through it stay on the shard its own DNS names.
        for room in 0..50 {
            let (_, body) = get(&http, &r.url(&format!("/http-bind?room=fresh-{room}"))).await;
            assert_eq!(body.trim(), "shard-0");
        }
    }
}

/// The reproduction: two replicas with listed shards; shard-2 drained through b's admin
/// API only; rooms placed through a; shard-0 killed and its rooms asked through a (a moves
/// them). b follows the moves within half a second, and knew of the drain: a never moved a
/// room to shard-2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_off_a_dead_shard_reaches_the_other_replica() {
    let backends = [
        Backend::start("shard-0").await,
        Backend::start("shard-1").await,
        Backend::start("shard-2").await,
    ];
    let ports = [free_port(), free_port()];
    let replicas = synced_pair(&ports, &backends).await;
    let (a, b) = (&replicas[0], &replicas[1]);
    let c = client();
    let status = c
        .post(b.admin_url("/admin/shards/shards/shard-2/drain"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let rooms: Vec<String> = (0..60).map(|i| format!("r{i}")).collect();
    let first = placements(a, &rooms).await;
    backends[0].kill();
    // Its kept-alive connections are seen closed (a request on one in the same instant fails,
    // as for any client).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dead: Vec<String> = rooms
        .iter()
        .filter(|r| first[*r] == "shard-0")
        .cloned()
        .collect();
    assert!(!dead.is_empty());
    let moved = placements(a, &dead).await;
    assert!(moved.values().all(|s| s == "shard-1"), "{moved:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for room in &dead {
        let v = admin_json(b, &format!("/admin/rooms/{room}"), "t").await;
        assert_eq!(v["stuck"][0]["shard"], "shard-1", "{room}: {v}");
    }
    let at_b = placements(b, &dead).await;
    assert_eq!(at_b, moved);
}

/// Three replicas with peers in front of two shards: the first looks DNS up every 200 ms and
/// found shard-1; the two others look up every minute and know shard-1 only from the first
/// (draining for them: no new rooms there).
async fn views_that_differ() -> (DnsServer, [Backend; 2], [Shardgate; 3]) {
    let dns = DnsServer::start().await;
    let b0 = Backend::start("shard-0").await;
    let b1 = Backend::start("shard-1").await;
    publish_shards(&dns, 1, &[&b0]);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let replicas = [
        dns_replica(ports[0], &ports, &dns, "200ms"),
        dns_replica(ports[1], &ports, &dns, "60s"),
        dns_replica(ports[2], &ports, &dns, "60s"),
    ];
    for r in &replicas {
        wait_for_members(r, 1, 1).await;
    }
    publish_shards(&dns, 1, &[&b0, &b1]);
    for r in &replicas {
        wait_for_members(r, 2, 2).await;
    }
    (dns, [b0, b1], replicas)
}

/// Participants of new rooms arriving in the same instant through three replicas whose views
/// differ (`a` found a new shard that `b` and `c` have not: they know it from `a` only for the
/// rooms stuck to it) are placed on two shards at first; once the placements meet, the losers'
/// WebSockets are closed and reconnect to the winner. Every room ends whole, bounded in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_joining_at_once_through_three_replicas_end_on_one_shard() {
    let (_dns, _shards, replicas) = views_that_differ().await;
    // On a loaded machine a round may place no room on two shards (one replica's placement
    // reached the others first): then another round, so the test is never vacuous.
    for round in 0..3 {
        let (split_at_first, took) = join_at_once(&replicas, round).await;
        let mut reconnected = 0;
        for r in &replicas {
            let m = scrape(r).await;
            reconnected += metric(&m, "shardgate_peers_rooms_reconnected_total").unwrap_or(0);
        }
        println!(
            "{split_at_first} of {JOINS} rooms joined at once were split at first; each room \
             whole at most {took:?} after its participants joined; {reconnected} rooms' losing \
             tunnels closed so far"
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
        if split_at_first > 0 {
            assert!(reconnected > 0);
            return;
        }
    }
    panic!("no room was placed on two shards in three rounds");
}

/// Rooms joined at once in each round of the test above.
const JOINS: usize = 120;

/// One round: every room's three participants join at once (rooms 20 ms apart); waits until
/// every room is whole and stays so. Returns how many rooms were split at first, and the longest
/// time a room took to be whole after its participants joined.
async fn join_at_once(replicas: &[Shardgate; 3], round: usize) -> (usize, Duration) {
    use futures_util::{SinkExt, StreamExt};

    // Each participant: join (a WebSocket through its replica, one message echoed by the
    // shard), report the shard, and when the edge closes the socket, join again.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, usize, String)>();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(JOINS * 3 + 1));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for room in 0..JOINS {
        for (who, r) in replicas.iter().enumerate() {
            let url = format!("ws://{}/xmpp-websocket?room=join-{round}-{room}", r.http);
            let (tx, start, stop) = (tx.clone(), start.clone(), stop.clone());
            let addr = r.http;
            tasks.push(tokio::spawn(async move {
                // Connected before the start, so that only the upgrade requests wait for it.
                let mut early = Some(tokio::net::TcpStream::connect(addr).await.unwrap());
                start.wait().await;
                // A room's three participants in the same instant; rooms 20 ms apart.
                tokio::time::sleep(Duration::from_millis(20 * room as u64)).await;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let tcp = match early.take() {
                        Some(tcp) => tcp,
                        None => match tokio::net::TcpStream::connect(addr).await {
                            Ok(tcp) => tcp,
                            Err(_) => continue,
                        },
                    };
                    let Ok((mut ws, _)) = tokio_tungstenite::client_async(&url, tcp).await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    if ws.send("hi".into()).await.is_err() {
                        continue;
                    }
                    let Some(Ok(reply)) = ws.next().await else {
                        continue;
                    };
                    let text = reply.into_text().unwrap().to_string();
                    let shard = text.strip_suffix(":hi").unwrap_or(&text).to_owned();
                    let _ = tx.send((room, who, shard));
                    // Held until the edge closes it (or the test ends).
                    loop {
                        tokio::select! {
                            m = ws.next() => match m {
                                Some(Ok(_)) => continue,
                                _ => break,
                            },
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                                    return;
                                }
                            }
                        }
                    }
                }
            }));
        }
    }
    drop(tx);
    start.wait().await;
    let began = std::time::Instant::now();
    let mut now: HashMap<(usize, usize), String> = HashMap::new();
    let mut first: HashMap<(usize, usize), String> = HashMap::new();
    // When each room's participants last changed shard, from the instant they joined.
    let mut settled: HashMap<usize, Duration> = HashMap::new();
    let whole = |now: &HashMap<(usize, usize), String>| {
        (0..JOINS).all(|room| {
            let shards: Vec<_> = (0..3).filter_map(|w| now.get(&(room, w))).collect();
            shards.len() == 3 && shards.iter().all(|s| *s == shards[0])
        })
    };
    while !whole(&now) {
        let left = Duration::from_secs(20).saturating_sub(began.elapsed());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((room, who, shard))) => {
                first.entry((room, who)).or_insert_with(|| shard.clone());
                now.insert((room, who), shard);
                let joined = Duration::from_millis(20 * room as u64);
                settled.insert(room, began.elapsed().saturating_sub(joined));
            }
            _ => panic!("rooms still split after 20 s: {now:?}"),
        }
    }
    let took = settled.values().max().copied().unwrap_or_default();
    // Whole for a while longer: nothing moves again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok((room, who, shard)) = rx.try_recv() {
        now.insert((room, who), shard);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(whole(&now), "split again: {now:?}");
    let split_at_first = (0..JOINS)
        .filter(|room| {
            let shards: HashSet<_> = (0..3).filter_map(|w| first.get(&(*room, w))).collect();
            shards.len() > 1
        })
        .count();
    for t in tasks {
        t.abort();
    }
    (split_at_first, took)
}

/// The same with requests the shards hold (BOSH long-polls, here answered after 4 s): the ones
/// a losing placement sent to the losing shard are ended at once (the client's connection is
/// closed, as a restart of that shard would), so no participant is answered by the shard the
/// room left; the rest are answered by the room's shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_on_the_losing_shard_are_ended_at_once() {
    let (_dns, _shards, replicas) = views_that_differ().await;
    // As above: rounds until one sent requests to a losing shard.
    for round in 0..3 {
        let ended = hold_at_once(&replicas, round).await;
        println!(
            "{ended} of {} held requests were on a losing shard and ended at once",
            HOLDS * 3
        );
        if ended > 0 {
            return;
        }
    }
    panic!("no request was sent to a losing shard in three rounds");
}

/// Rooms whose three requests are sent at once in each round of the test above.
const HOLDS: usize = 60;

/// One round: three held requests per room at once (rooms 20 ms apart); checks that every
/// answer came from the room's shard (the one every replica routes it to afterwards), and
/// returns how many requests were ended early.
async fn hold_at_once(replicas: &[Shardgate; 3], round: usize) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const JOINS: usize = HOLDS;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(JOINS * 3 + 1));
    let mut tasks = Vec::new();
    for room in 0..JOINS {
        for r in replicas {
            let (addr, start) = (r.http, start.clone());
            tasks.push(tokio::spawn(async move {
                let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                start.wait().await;
                tokio::time::sleep(Duration::from_millis(20 * room as u64)).await;
                let began = std::time::Instant::now();
                let req =
                    format!("GET /hold?room=held-{round}-{room}&ms=4000 HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n");
                tcp.write_all(req.as_bytes()).await.unwrap();
                let mut answer = Vec::new();
                let _ = tcp.read_to_end(&mut answer).await;
                let answer = String::from_utf8_lossy(&answer).to_string();
                // The shard's name ends the body of a full answer.
                let shard = answer.contains(" 200 ").then(|| {
                    answer
                        .trim_end()
                        .rsplit('\n')
                        .next()
                        .unwrap_or("")
                        .to_owned()
                });
                (room, shard, began.elapsed())
            }));
        }
    }
    start.wait().await;
    let mut answered: HashMap<usize, HashSet<String>> = HashMap::new();
    let mut ended = 0;
    for t in tasks {
        let (room, shard, took) = t.await.unwrap();
        match shard {
            Some(s) => {
                answered.entry(room).or_default().insert(s);
            }
            None => {
                assert!(
                    took < Duration::from_secs(2),
                    "held-{room} ended after {took:?}"
                );
                ended += 1;
            }
        }
    }
    // Every room's answers came from one shard, the one every replica routes it to now.
    let c = client();
    for room in 0..JOINS {
        let mut now = HashSet::new();
        for r in replicas {
            now.insert(
                get(&c, &r.url(&format!("/http-bind?room=held-{round}-{room}")))
                    .await
                    .1,
            );
        }
        assert_eq!(now.len(), 1, "held-{room}: {now:?}");
        let shard = now.into_iter().next().unwrap().trim().to_owned();
        let got = answered.get(&room).cloned().unwrap_or_default();
        assert!(
            got.iter().all(|s| *s == shard),
            "held-{room}: {got:?}, now {shard}"
        );
    }
    ended
}
