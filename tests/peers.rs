//! Stick-table replication (WIP): three replicas in front of shards found by a real DNS server
//! in the test process; rooms arrive through random replicas, one replica restarts, and a shard
//! is added. With
//! `[peers]` no room is ever served by two shards; without, the same scenario splits rooms (so
//! the test can fail).

mod common;

use common::dns::DnsServer;
use common::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::dns::{publish_shards, SHARDS_SRV as SRV};
const ROOMS: usize = 5_000;

/// Runs the scenario; returns how many rooms were served by more than one shard.
async fn split_rooms(with_peers: bool) -> usize {
    let dns = DnsServer::start().await;
    let mut backends = Vec::new();
    for i in 0..4 {
        backends.push(Backend::start(&format!("shard-{i}")).await);
    }
    publish_shards(&dns, 1, &[&backends[0], &backends[1], &backends[2]]);
    let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let list: Vec<String> = peer_ports
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    let mut replicas = Vec::new();
    let mut configs = Vec::new();
    for port in &peer_ports {
        let (head, http, admin) = config_head("t");
        let peers = if with_peers {
            format!(
                "[peers]\nlisten = \"127.0.0.1:{port}\"\nlist = [{}]\nsecret = \"0123456789abcdef-test\"\nsync_wait = \"5s\"\n\n",
                list.join(", ")
            )
        } else {
            String::new()
        };
        let text = format!(
            "{head}[resolver]\nnameservers = [\"{}\"]\nmin_ttl = \"200ms\"\nmax_ttl = \"1s\"\ntimeout = \"300ms\"\n\n{peers}\
             [[pool]]\nname = \"shards\"\nshards.srv = \"{SRV}\"\n\n\
             [[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"shards\" }}\n",
            dns.addr
        );
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
    let mut served: HashMap<usize, HashSet<String>> = HashMap::new();
    let ask = async |replicas: &[Shardgate],
                     room: usize,
                     replica: usize,
                     served: &mut HashMap<usize, HashSet<String>>| {
        let url = replicas[replica].url(&format!("/http-bind?room=room-{room}"));
        let (status, body) = get(&c, &url).await;
        assert_eq!(status, 200, "{body}");
        served
            .entry(room)
            .or_default()
            .insert(body.trim().to_owned());
    };
    for room in 0..ROOMS {
        ask(&replicas, room, pick(), &mut served).await;
    }
    // Replication has milliseconds; give it a moment. Then one replica restarts (an empty
    // table: with peers it is not ready until the others' tables arrived), and a shard is added.
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
        ask(&replicas, room, pick(), &mut served).await;
    }
    served.values().filter(|shards| shards.len() > 1).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_peers_no_room_splits_when_a_shard_is_added() {
    let split = split_rooms(true).await;
    println!("with [peers]: {split} of {ROOMS} rooms served by two shards");
    assert_eq!(split, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_peers_the_same_scenario_splits_rooms() {
    let split = split_rooms(false).await;
    println!("without [peers]: {split} of {ROOMS} rooms served by two shards");
    assert!(
        split > ROOMS / 20,
        "the control should split rooms: {split}"
    );
}
