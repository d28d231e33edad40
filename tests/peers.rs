//! Stick-table replication: three replicas in front of shards found by a real DNS server in the
//! test process; rooms arrive through random replicas while one replica restarts and shards are
//! added, drained, removed and killed. With `[peers]` no room is served by two shards at once and
//! none moves but off a dead shard; without, the same scenario splits rooms (so the test can
//! fail). And faults: a frozen replica, a stranger, garbage, a peer that stops reading.

mod common;

use common::dns::DnsServer;
use common::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::dns::{publish_shards, SHARDS_SRV as SRV};
const ROOMS: usize = 5_000;

/// The route every replica here has: everything to the `shards` pool, room-sticky.
const SHARD_ROUTE: &str = "[[route]]\npath_prefix = \"/\"\nshard = { pool = \"shards\" }\n";

/// The `[peers]` section of a replica listening on `port` and dialling `peers`, with `secret`.
fn peers_section(port: u16, peers: &[u16], secret: &str, sync_wait: &str) -> String {
    let list: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "[peers]\nlisten = \"127.0.0.1:{port}\"\nlist = [{}]\nsecret = \"{secret}\"\n\
         sync_wait = \"{sync_wait}\"\n\n",
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
    /// Rooms served by two shards within one phase (two participants apart at once).
    split: usize,
    /// Rooms whose shard changed from one phase to the next without their shard dying: a
    /// split too, as the room's earlier participants are still on its earlier shard.
    moved: usize,
}

/// Runs the scenario: 3 shards, 5,000 rooms through random replicas; a replica restarts; a 4th
/// shard is added; a shard is drained (500 new rooms arrive); a shard leaves DNS (it lingers
/// for its rooms); a shard is killed (its rooms move). Every phase asks for every room again.
async fn scenario(with_peers: bool) -> Outcome {
    let dns = DnsServer::start().await;
    let mut backends = Vec::new();
    for i in 0..4 {
        backends.push(Backend::start(&format!("shard-{i}")).await);
    }
    publish_shards(&dns, 1, &[&backends[0], &backends[1], &backends[2]]);
    let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut replicas = Vec::new();
    let mut configs = Vec::new();
    for port in &peer_ports {
        let (head, http, admin) = config_head("t");
        let peers = if with_peers {
            peers_section(*port, &peer_ports, SECRET, "5s")
        } else {
            String::new()
        };
        let discovery = srv_discovery(&dns, "200ms", "1s");
        let text = format!("{head}{peers}{discovery}{SHARD_ROUTE}");
        replicas.push(Shardgate::start(&text, http, admin));
        configs.push((text, http, admin));
    }
    for r in &replicas {
        wait_for_members(r, 3, 3).await;
    }
    let c = client();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut pick = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 3) as usize
    };
    // (phase, room) -> the shards that answered.
    let mut served: HashMap<(usize, usize), HashSet<String>> = HashMap::new();
    let ask = async |replicas: &[Shardgate],
                     phase: usize,
                     room: usize,
                     replica: usize,
                     served: &mut HashMap<(usize, usize), HashSet<String>>| {
        let url = replicas[replica].url(&format!("/http-bind?room=room-{room}"));
        let (status, body) = get(&c, &url).await;
        assert_eq!(status, 200, "{body}");
        served
            .entry((phase, room))
            .or_default()
            .insert(body.trim().to_owned());
    };
    let shard_name = |b: &Backend| format!("{}.web.jitsi.test", b.name);

    // 1: three shards.
    for room in 0..ROOMS {
        ask(&replicas, 1, room, pick(), &mut served).await;
    }
    // 2: one replica restarts (an empty table: with peers it is not ready until the others'
    // tables arrived), and a fourth shard is added.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(replicas.remove(1));
    let (text, http, admin) = &configs[1];
    replicas.insert(1, Shardgate::start(text, *http, *admin));
    wait_for_members(&replicas[1], 3, 3).await;
    publish_shards(
        &dns,
        1,
        &[&backends[0], &backends[1], &backends[2], &backends[3]],
    );
    for r in &replicas {
        wait_for_members(r, 4, 4).await;
    }
    for room in 0..ROOMS {
        ask(&replicas, 2, room, pick(), &mut served).await;
    }
    // 3: shard-1 is drained on every replica; 500 new rooms arrive.
    for r in &replicas {
        let url = r.admin_url(&format!(
            "/admin/shards/shards/{}/drain",
            shard_name(&backends[1])
        ));
        let status = c.post(url).bearer_auth("t").send().await.unwrap().status();
        assert_eq!(status, 200);
    }
    for room in 0..ROOMS + 500 {
        ask(&replicas, 3, room, pick(), &mut served).await;
    }
    for room in ROOMS..ROOMS + 500 {
        assert!(
            !served[&(3, room)].contains("shard-1"),
            "a new room on the drained shard"
        );
    }
    // 4: shard-2 leaves DNS; it lingers (draining) for its rooms.
    publish_shards(&dns, 1, &[&backends[0], &backends[1], &backends[3]]);
    for r in &replicas {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let listing = admin_shards(r, "t").await;
            let gone = listing["pools"][0]["shards"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| {
                    s["name"] == shard_name(&backends[2])
                        && s["state"] == "draining (gone from DNS)"
                });
            if gone {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{listing}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for room in 0..ROOMS + 500 {
        ask(&replicas, 4, room, pick(), &mut served).await;
    }
    // 5: shard-0 dies; its rooms move together to their next choice.
    backends[0].kill();
    for room in 0..ROOMS + 500 {
        ask(&replicas, 5, room, pick(), &mut served).await;
    }

    let split = served.values().filter(|shards| shards.len() > 1).count();
    let mut moved = 0;
    for room in 0..ROOMS + 500 {
        let mut last: Option<&String> = None;
        for phase in 1..=5 {
            let Some(shards) = served.get(&(phase, room)) else {
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
    Outcome { split, moved }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_peers_no_room_splits_while_shards_change() {
    let o = scenario(true).await;
    println!(
        "with [peers]: {} of {} rooms served by two shards at once, {} moved without cause",
        o.split,
        ROOMS + 500,
        o.moved
    );
    assert_eq!((o.split, o.moved), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_peers_the_same_scenario_splits_rooms() {
    let o = scenario(false).await;
    println!(
        "without [peers]: {} of {} rooms served by two shards at once, {} moved without cause",
        o.split,
        ROOMS + 500,
        o.moved
    );
    assert!(
        o.split + o.moved > ROOMS / 20,
        "the control should split rooms: {} + {}",
        o.split,
        o.moved
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

/// Replicas listening for peers on `ports`, each listing all of them, over `backends`.
fn pair(ports: &[u16], backends: &[Backend], secret: &str) -> Vec<Shardgate> {
    ports
        .iter()
        .map(|port| replica(*port, ports, backends, secret))
        .collect()
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
    let replicas = pair(&ports, &backends, SECRET);
    let (a, b) = (&replicas[0], &replicas[1]);
    wait_scrape(a, 20, synced_with_one).await;
    wait_scrape(b, 20, synced_with_one).await;

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
    let replicas = pair(&ports, &backends, SECRET);
    let (a, b) = (&replicas[0], &replicas[1]);
    wait_scrape(a, 20, synced_with_one).await;

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
/// its own TTL). A room the first replica placed on the new shard is followed by one that has
/// not discovered it yet: it looks DNS up at once and waits for the answer. A placement on a
/// shard its DNS never names is placed again there after two lookups, not refused, and that
/// shard is not waited for again for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_a_shard_not_yet_discovered_here_is_followed_after_a_lookup() {
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
    let on_new: Vec<usize> = (0..100).filter(|r| placed[*r] == "shard-1").collect();
    assert!(on_new.len() >= 20, "{placed:?}");
    for r in [&b, &c] {
        wait_scrape(r, 10, |m| {
            metric(m, "shardgate_peers_entries_total{direction=\"received\"}") >= Some(100)
        })
        .await;
    }

    // `b` follows every placement; only the first room on shard-1 waits for a lookup.
    let awaited = |outcome: &str| {
        format!("shardgate_rooms_awaited_shard_total{{outcome=\"{outcome}\",pool=\"shards\"}}")
    };
    for (room, shard) in placed.iter().enumerate() {
        let (status, body) = get(&http, &b.url(&format!("/http-bind?room=room-{room}"))).await;
        assert_eq!(
            (status, body.trim()),
            (200, shard.as_str()),
            "room-{room} at b"
        );
    }
    let m = scrape(&b).await;
    assert_eq!(metric(&m, &awaited("found")), Some(1), "{m}");
    assert_eq!(metric(&m, &awaited("not_found")), None, "{m}");

    // `c` cannot find shard-1: after two lookups (not the 2 s limit), the room is placed on a
    // shard it knows; other rooms on shard-1 are placed at once (the shard is remembered as not
    // found).
    for (n, room) in on_new.iter().take(3).enumerate() {
        let started = std::time::Instant::now();
        let (status, body) = get(&http, &c.url(&format!("/http-bind?room=room-{room}"))).await;
        assert_eq!((status, body.trim()), (200, "shard-0"), "room-{room} at c");
        if n == 0 {
            let took = started.elapsed();
            assert!(took < Duration::from_millis(1_900), "{took:?}");
        }
    }
    let m = scrape(&c).await;
    assert_eq!(metric(&m, &awaited("not_found")), Some(1), "{m}");
    assert_eq!(metric(&m, &awaited("found")), None, "{m}");
}
