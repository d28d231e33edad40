//! Room-sticky routing through the real binary: rooms stay on one shard, spread evenly, follow
//! drains and failures together.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};

const TOKEN: &str = "test-token";

async fn three_shards() -> (Vec<Backend>, Shardgate) {
    let backends = vec![
        Backend::start("shard-0").await,
        Backend::start("shard-1").await,
        Backend::start("shard-2").await,
    ];
    let (head, http, admin) = config_head(TOKEN);
    let refs: Vec<&Backend> = backends.iter().collect();
    let config = format!(
        "{head}{}[[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"shards\" }}\n",
        shard_pool("shards", &refs)
    );
    let sg = Shardgate::start(&config, http, admin);
    (backends, sg)
}

/// Sends `per_room` requests for each room (alternating signalling paths and letter case) and
/// returns room -> set of shards that answered.
async fn spread(
    sg: &Shardgate,
    rooms: &[String],
    per_room: usize,
) -> HashMap<String, HashSet<String>> {
    let c = client();
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    let paths = ["/http-bind", "/config.js", "/conference-request/v1"];
    for chunk in rooms.chunks(50) {
        let mut tasks = Vec::new();
        for room in chunk {
            for i in 0..per_room {
                let c = c.clone();
                let room = room.clone();
                let path = paths[i % paths.len()];
                let shown = if i % 3 == 0 {
                    room.to_uppercase()
                } else {
                    room.clone()
                };
                let url = sg.url(&format!("{path}?room={shown}"));
                tasks.push(tokio::spawn(async move { (room, get(&c, &url).await) }));
            }
        }
        for t in tasks {
            let (room, (status, body)) = t.await.unwrap();
            assert_eq!(status, 200, "room {room}: {body}");
            seen.entry(room).or_default().insert(body.trim().to_owned());
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_rooms_each_land_on_one_shard_evenly() {
    let (_backends, sg) = three_shards().await;
    let rooms: Vec<String> = (0..1000).map(|i| format!("room-{i}")).collect();
    let seen = spread(&sg, &rooms, 10).await;
    assert_eq!(seen.len(), 1000);
    let mut per_shard: HashMap<String, usize> = HashMap::new();
    for (room, shards) in &seen {
        assert_eq!(shards.len(), 1, "room {room} was served by {shards:?}");
        *per_shard
            .entry(shards.iter().next().unwrap().clone())
            .or_default() += 1;
    }
    assert_eq!(per_shard.len(), 3, "{per_shard:?}");
    for (shard, n) in &per_shard {
        let share = *n as f64 / 1000.0 * 3.0;
        assert!(
            (0.85..=1.15).contains(&share),
            "{shard} has {n} of 1000 rooms: {per_shard:?}"
        );
    }
    // The stick table and the admin API agree with what the clients saw.
    let c = client();
    let r = c
        .get(sg.admin_url("/admin/rooms/ROOM-7"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["stuck"][0]["shard"].as_str().unwrap(),
        seen["room-7"].iter().next().unwrap()
    );
    let metrics = get(&c, &sg.admin_url("/metrics")).await.1;
    assert!(
        metrics.contains("shardgate_stick_table_entries{pool=\"shards\"} 1000"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "shardgate_requests_total{class=\"2xx\",pool=\"shards\",route=\"/\",shard=\"shard-0\"}"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_shard_keeps_its_rooms_and_gets_no_new_ones() {
    let (_backends, sg) = three_shards().await;
    let rooms: Vec<String> = (0..300).map(|i| format!("old-{i}")).collect();
    let before = spread(&sg, &rooms, 2).await;
    let c = client();
    // Without the token: 401, nothing changes.
    let r = c
        .post(sg.admin_url("/admin/shards/shards/shard-1/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(sg.admin_url("/admin/shards/shards/shard-1/drain"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let after = spread(&sg, &rooms, 2).await;
    assert_eq!(
        before, after,
        "stuck rooms stay put, including those on the draining shard"
    );
    assert!(
        before.values().any(|s| s.contains("shard-1")),
        "shard-1 had rooms to keep"
    );
    let fresh: Vec<String> = (0..300).map(|i| format!("new-{i}")).collect();
    for (room, shards) in spread(&sg, &fresh, 2).await {
        assert!(
            !shards.contains("shard-1"),
            "new room {room} went to the draining shard"
        );
    }
    let listing = admin_shards(&sg, TOKEN).await;
    let s1 = &listing["pools"][0]["shards"][1];
    assert_eq!(s1["name"], "shard-1");
    // Named after the replica whose admin API drained it (here the host).
    let state = s1["state"].as_str().unwrap();
    assert!(state.starts_with("draining (admin, via "), "{state}");
    assert!(s1["rooms"].as_u64().unwrap() > 50, "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_shards_rooms_move_and_stay_together() {
    let (backends, sg) = three_shards().await;
    let rooms: Vec<String> = (0..300).map(|i| format!("live-{i}")).collect();
    let before = spread(&sg, &rooms, 2).await;
    backends[2].kill();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // Every request still succeeds (retry on the next choice), and each room lands on one shard.
    let after = spread(&sg, &rooms, 6).await;
    for room in &rooms {
        let (b, a) = (&before[room], &after[room]);
        assert_eq!(a.len(), 1, "room {room} split after the kill: {a:?}");
        if b.contains("shard-2") {
            assert!(!a.contains("shard-2"));
        } else {
            assert_eq!(a, b, "room {room} of a live shard moved");
        }
    }
    // And they stay where they moved.
    assert_eq!(spread(&sg, &rooms, 2).await, after);
    let metrics = get(&client(), &sg.admin_url("/metrics")).await.1;
    assert!(
        metrics.contains(
            "shardgate_upstream_connect_failures_total{pool=\"shards\",shard=\"shard-2\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("shardgate_shard_state{pool=\"shards\",shard=\"shard-2\",state=\"down\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_shard_up_gives_503_with_a_reason() {
    let dead = Backend::start("shard-0").await;
    dead.kill();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (head, http, admin) = config_head(TOKEN);
    let config = format!(
        "{head}{}[[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"shards\" }}\n",
        shard_pool("shards", &[&dead])
    );
    let sg = Shardgate::start(&config, http, admin);
    let c = client();
    // The shard refuses, is marked down, and no other shard can take the room.
    for path in ["/http-bind?room=a", "/http-bind?room=a", "/static/app.js"] {
        let (status, body) = get(&c, &sg.url(path)).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.starts_with("no shard of pool shards is up"), "{body}");
    }
}
