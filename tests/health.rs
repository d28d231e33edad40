//! Active health checks and HAProxy-style agent checks: a failing shard's rooms move together
//! and stay; an agent saying `drain` keeps a shard's rooms and stops new ones; `ready` undoes it.

mod common;

use common::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

fn pool_config(head: &str, backends: &[&Backend], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("  {{ name = \"{}\", addrs = [\"{}\"] }},", b.name, b.addr))
        .collect();
    format!(
        "{head}[[pool]]\nname = \"shards\"\n{extra}\nshards.list = [\n{}\n]\n\n[[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"shards\" }}\n",
        list.join("\n")
    )
}

async fn wait_for_state(sg: &Shardgate, shard: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = admin_shards(sg, "t").await;
        let now = v["pools"][0]["shards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == shard)
            .map(|s| s["state"].as_str().unwrap().to_owned());
        if now.as_deref() == Some(state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{shard} is {now:?}, wanted {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_failing_its_health_check_loses_its_rooms_together() {
    let b = [
        Backend::start("shard-0").await,
        Backend::start("shard-1").await,
        Backend::start("shard-2").await,
    ];
    let (head, http, admin) = config_head("t");
    let health = "health = { path = \"/about/health\", interval = \"200ms\", timeout = \"500ms\", rise = 2, fall = 2 }";
    let sg = Shardgate::start(
        &pool_config(&head, &[&b[0], &b[1], &b[2]], health),
        http,
        admin,
    );
    let rooms: Vec<String> = (0..150).map(|i| format!("room-{i}")).collect();
    let before = placements(&sg, &rooms).await;

    b[1].set_health(503);
    wait_for_state(&sg, "shard-1", "down (health check)").await;
    let after = placements(&sg, &rooms).await;
    for r in &rooms {
        if before[r] == "shard-1" {
            assert_ne!(after[r], "shard-1", "{r} stayed on the failed shard");
        } else {
            assert_eq!(after[r], before[r], "{r} of a healthy shard moved");
        }
    }
    // Back up after `rise` good rounds; the moved rooms stay where they went.
    b[1].set_health(200);
    wait_for_state(&sg, "shard-1", "up").await;
    assert_eq!(placements(&sg, &rooms).await, after);
    let metrics = get(&client(), &sg.admin_url("/metrics")).await.1;
    assert!(
        metrics.contains("shardgate_health_checks_total{pool=\"shards\",result=\"fail\"}"),
        "{metrics}"
    );
}

/// A fake agent sidecar on `ip:port` that answers the current `word` and closes.
async fn agent(ip: &str, port: u16, word: Arc<Mutex<String>>) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind((ip, port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let line = format!("{}\n", word.lock().unwrap());
            let _ = s.write_all(line.as_bytes()).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_drain_then_ready() {
    let b = [
        Backend::start_at("shard-0", "127.0.0.2", 0).await,
        Backend::start_at("shard-1", "127.0.0.3", 0).await,
    ];
    let port = free_port();
    let w0 = Arc::new(Mutex::new("ready".to_owned()));
    let w1 = Arc::new(Mutex::new("up 100%".to_owned()));
    let _a0 = agent("127.0.0.2", port, w0.clone()).await;
    let _a1 = agent("127.0.0.3", port, w1.clone()).await;
    let (head, http, admin) = config_head("t");
    let extra = format!("agent = {{ port = {port}, interval = \"200ms\", timeout = \"500ms\" }}");
    let sg = Shardgate::start(&pool_config(&head, &[&b[0], &b[1]], &extra), http, admin);
    let rooms: Vec<String> = (0..100).map(|i| format!("old-{i}")).collect();
    let before = placements(&sg, &rooms).await;
    assert!(before.values().any(|s| s == "shard-1"));

    *w1.lock().unwrap() = "drain".into();
    wait_for_state(&sg, "shard-1", "draining (agent)").await;
    assert_eq!(
        placements(&sg, &rooms).await,
        before,
        "stuck rooms stay on the draining shard"
    );
    let fresh: Vec<String> = (0..100).map(|i| format!("new-{i}")).collect();
    assert!(placements(&sg, &fresh)
        .await
        .values()
        .all(|s| s == "shard-0"));

    *w1.lock().unwrap() = "ready".into();
    wait_for_state(&sg, "shard-1", "up").await;
    let more: Vec<String> = (0..100).map(|i| format!("more-{i}")).collect();
    assert!(placements(&sg, &more)
        .await
        .values()
        .any(|s| s == "shard-1"));

    *w1.lock().unwrap() = "maint".into();
    wait_for_state(&sg, "shard-1", "down (agent)").await;
}
