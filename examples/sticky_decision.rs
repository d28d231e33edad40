//! Measures the sticky decision: `Pool::choose_for_room` over 100 shards with 1,000,000 rooms in
//! the stick table, for rooms already stuck (the common case) and for new rooms (a rendezvous
//! hash over every shard, then an insert).
//!
//! Run: `cargo run --release --example sticky_decision`

use shardgate::config::{Pool as PoolConfig, ShardSpec, Shards, Sticky};
use shardgate::routing::Pool;
use std::time::{Duration, Instant};

const SHARDS: usize = 100;
const ROOMS: usize = 1_000_000;

fn main() {
    let list = (0..SHARDS)
        .map(|i| ShardSpec {
            name: format!("shard-{i}"),
            addrs: vec![format!("127.0.0.1:{}", 10_000 + i).parse().unwrap()],
            weight: 1 + (i % 3) as u32,
            drain: false,
            srv: None,
            host: None,
        })
        .collect();
    let pool = Pool::from_config(&PoolConfig {
        name: "shards".into(),
        shards: Some(Shards {
            list,
            srv: None,
            dns: None,
        }),
        instances: None,
        sticky: Sticky {
            ttl: Duration::from_secs(3600),
            capacity: 2 * ROOMS as u64,
        },
        passive_down: Duration::from_secs(10),
        linger: Duration::from_secs(600),
        health: None,
        agent: None,
        tls: None,
    });
    let members = pool.members.load();
    let rooms: Vec<String> = (0..ROOMS).map(|i| format!("tenant/room-{i}")).collect();

    let started = Instant::now();
    for room in &rooms {
        pool.choose_for_room(&members, room, (0, 0), &[]).unwrap();
    }
    let new = started.elapsed();
    println!("stick table entries: {}", pool.stick.len());

    let started = Instant::now();
    let mut checksum = 0usize;
    for room in rooms.iter().rev() {
        checksum += pool
            .choose_for_room(&members, room, (0, 0), &[])
            .unwrap()
            .index();
    }
    let stuck = started.elapsed();

    let per = |d: Duration| d.as_nanos() as f64 / ROOMS as f64;
    println!("shards: {SHARDS} (weights 1-3), rooms: {ROOMS}");
    println!(
        "new room (hash over {SHARDS} shards + insert): {:.0} ns/decision",
        per(new)
    );
    println!("stuck room (table hit): {:.0} ns/decision", per(stuck));
    println!("(checksum {checksum})");
    println!("command: cargo run --release --example sticky_decision");
}
