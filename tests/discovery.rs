//! Shards found by DNS SRV through a real DNS server in the test process, whose records change
//! while shardgate runs: added shards take new rooms only, vanished shards linger for their
//! rooms, a dead DNS server empties nothing, TTLs are honoured, and replicas agree.

mod common;

use common::dns::DnsServer;
use common::*;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::dns::{publish_shards, SHARDS_SRV as SRV};

fn config(
    dns: &DnsServer,
    extra_pool: &str,
) -> (String, std::net::SocketAddr, std::net::SocketAddr) {
    let (head, http, admin) = config_head("t");
    let text = format!(
        "{head}[resolver]\nnameservers = [\"{}\"]\nmin_ttl = \"200ms\"\nmax_ttl = \"2s\"\nhold_valid = \"5m\"\ntimeout = \"300ms\"\n\n\
         [[pool]]\nname = \"shards\"\nshards.srv = \"{SRV}\"\n{extra_pool}\n\
         [[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"shards\" }}\n",
        dns.addr
    );
    (text, http, admin)
}

async fn shard_of(c: &reqwest::Client, sg: &Shardgate, room: &str) -> String {
    let (status, body) = get(c, &sg.url(&format!("/http-bind?room={room}"))).await;
    assert_eq!(status, 200, "{room}: {body}");
    body.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_come_and_go_without_moving_live_rooms() {
    let dns = DnsServer::start().await;
    let b: Vec<Backend> = vec![
        Backend::start("shard-a").await,
        Backend::start("shard-b").await,
        Backend::start("shard-c").await,
        Backend::start("shard-d").await,
    ];
    publish_shards(&dns, 1, &[&b[0], &b[1], &b[2]]);
    let (text, http, admin) = config(&dns, "linger = \"30s\"\n");
    let sg = Shardgate::start(&text, http, admin);
    wait_for_members(&sg, 3, 3).await;

    let rooms: Vec<String> = (0..300).map(|i| format!("room-{i}")).collect();
    let before = placements(&sg, &rooms).await;
    let used: HashSet<&String> = before.values().collect();
    assert_eq!(used.len(), 3, "{used:?}");

    // A shard added: existing rooms stay put; new rooms can go to it.
    publish_shards(&dns, 1, &[&b[0], &b[1], &b[2], &b[3]]);
    let changed = Instant::now();
    wait_for_members(&sg, 4, 4).await;
    // No stale set past the TTL (1 s) plus a lookup round (timeout 300 ms) and polling.
    assert!(
        changed.elapsed() < Duration::from_millis(2500),
        "new member seen after {:?}",
        changed.elapsed()
    );
    assert_eq!(
        placements(&sg, &rooms).await,
        before,
        "existing rooms moved when a shard was added"
    );
    let fresh: Vec<String> = (0..300).map(|i| format!("new-{i}")).collect();
    let fresh_at = placements(&sg, &fresh).await;
    assert!(
        fresh_at.values().any(|s| s == "shard-d"),
        "the new shard takes new rooms"
    );

    // A shard removed from DNS lingers for its rooms and takes no new ones.
    publish_shards(&dns, 1, &[&b[0], &b[2], &b[3]]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        placements(&sg, &rooms).await,
        before,
        "rooms of the vanished shard-b moved"
    );
    let later: Vec<String> = (0..300).map(|i| format!("later-{i}")).collect();
    assert!(placements(&sg, &later)
        .await
        .values()
        .all(|s| s != "shard-b"));
    let listing = admin_shards(&sg, "t").await;
    let states: HashMap<String, String> = listing["pools"][0]["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states["shard-b.web.jitsi.test"], "draining (gone from DNS)",
        "{listing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_dns_server_empties_nothing_and_ttl_is_honoured() {
    let dns = DnsServer::start().await;
    let b = [
        Backend::start("shard-a").await,
        Backend::start("shard-b").await,
    ];
    publish_shards(&dns, 1, &[&b[0], &b[1]]);
    let (text, http, admin) = config(&dns, "");
    let sg = Shardgate::start(&text, http, admin);
    wait_for_members(&sg, 2, 2).await;

    // TTL 1 s for 4 s: about 4 lookups of the SRV name, not a storm.
    let q0 = dns.queries(SRV);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let asked = dns.queries(SRV) - q0;
    assert!(
        (2..=8).contains(&asked),
        "{asked} SRV lookups in 4 s with TTL 1 s"
    );

    let c = client();
    let rooms: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
    let before = placements(&sg, &rooms).await;
    dns.pause();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        placements(&sg, &rooms).await,
        before,
        "DNS down: members kept"
    );
    let metrics = get(&c, &sg.admin_url("/metrics")).await.1;
    assert!(
        metrics.contains("shardgate_dns_lookups_total{pool=\"shards\",result=\"error\"}"),
        "{metrics}"
    );
    dns.resume();
    assert_eq!(shard_of(&c, &sg, "r1").await, before["r1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fed_answers_in_different_orders_agree_on_every_room() {
    let dns1 = DnsServer::start().await;
    let dns2 = DnsServer::start().await;
    dns2.set_answer_order_reversed(true);
    let b = [
        Backend::start("shard-a").await,
        Backend::start("shard-b").await,
        Backend::start("shard-c").await,
    ];
    publish_shards(&dns1, 30, &[&b[0], &b[1], &b[2]]);
    publish_shards(&dns2, 30, &[&b[2], &b[1], &b[0]]);
    let (t1, h1, a1) = config(&dns1, "");
    let (t2, h2, a2) = config(&dns2, "");
    let sg1 = Shardgate::start(&t1, h1, a1);
    let sg2 = Shardgate::start(&t2, h2, a2);
    wait_for_members(&sg1, 3, 3).await;
    wait_for_members(&sg2, 3, 3).await;
    let rooms: Vec<String> = (0..10_000).map(|i| format!("room-{i}")).collect();
    let p1 = placements(&sg1, &rooms).await;
    let p2 = placements(&sg2, &rooms).await;
    let differ = rooms.iter().filter(|r| p1[*r] != p2[*r]).count();
    assert_eq!(differ, 0, "replicas disagree on {differ} of 10,000 rooms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_starts_before_names_resolve() {
    let dns = DnsServer::start().await;
    let b = Backend::start("shard-a").await;
    let (text, http, admin) = config(&dns, "");
    let sg = Shardgate::start(&text, http, admin);
    let c = client();
    let ready = get(&c, &sg.admin_url("/readyz")).await.1;
    assert!(
        ready.contains("pool shards: 0/0 shards up (empty"),
        "{ready}"
    );
    let (status, body) = get(&c, &sg.url("/http-bind?room=x")).await;
    assert_eq!(status, 503, "{body}");
    publish_shards(&dns, 1, &[&b]);
    wait_for_members(&sg, 1, 1).await;
    assert_eq!(shard_of(&c, &sg, "x").await, "shard-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_address_records_name_shard_servers_and_instances() {
    let dns = DnsServer::start().await;
    let a = Backend::start_at("web-a", "127.0.0.2", 0).await;
    // A second web server on the same port at another address; the name decides which is used.
    let port = a.addr.port();
    let b2 = Backend::start_at("web-b2", "127.0.0.3", port).await;
    dns.set_a(
        "shard-0.hosts.test.",
        1,
        &["127.0.0.2".parse::<IpAddr>().unwrap()],
    );
    dns.set_a(
        "jvb.hosts.test.",
        30,
        &["127.0.0.2".parse::<IpAddr>().unwrap()],
    );
    let (head, http, admin) = config_head("t");
    let text = format!(
        "{head}[resolver]\nnameservers = [\"{}\"]\nmin_ttl = \"200ms\"\nmax_ttl = \"1s\"\ntimeout = \"300ms\"\n\n\
         [[pool]]\nname = \"shards\"\nshards.list = [{{ name = \"shard-0\", host = \"shard-0.hosts.test.:{port}\" }}]\n\n\
         [[pool]]\nname = \"jvb\"\ninstances.dns = \"jvb.hosts.test.:{port}\"\ninstances.id = \"ip\"\n\n\
         [[route]]\npath_prefix = \"/colibri-ws/\"\ninstance = {{ pool = \"jvb\", segment = 2 }}\n\n\
         [[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"shards\" }}\n",
        dns.addr
    );
    let sg = Shardgate::start(&text, http, admin);
    wait_for_members(&sg, 1, 1).await;
    let c = client();
    assert_eq!(shard_of(&c, &sg, "x").await, "web-a");
    let (status, body) = get(&c, &sg.url("/colibri-ws/127.0.0.2/conf/ep")).await;
    assert_eq!((status, body.as_str()), (200, "web-a\n"));
    let (status, _) = get(&c, &sg.url("/colibri-ws/127.0.0.3/conf/ep")).await;
    assert_eq!(status, 404, "not a member of jvb.hosts.test");

    // The shard's name now points at another server: the room follows its shard there.
    dns.set_a(
        "shard-0.hosts.test.",
        1,
        &["127.0.0.3".parse::<IpAddr>().unwrap()],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while shard_of(&c, &sg, "x").await != "web-b2" {
        assert!(Instant::now() < deadline, "the new address was never used");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(b2.requests() > 0);
}
