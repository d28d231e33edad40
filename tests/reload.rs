//! Config reloads while serving: routes move between pools under load with no failed request,
//! a Kubernetes ConfigMap `..data` swap and SIGHUP are picked up, a broken file leaves the old
//! config serving and is reported.

mod common;

use common::*;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Two pools (blue, green) of two shards each; `/` goes to `target`.
fn config(head: &str, blue: &[&Backend], green: &[&Backend], target: &str) -> String {
    format!(
        "{head}{}{}[[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"{target}\" }}\n",
        shard_pool("blue", blue),
        shard_pool("green", green)
    )
}

/// One request of the load: when it started and ended, the pool that answered, its status.
type Served = (Instant, Instant, String, u16);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Replaces `path` the way editors do: write a new file, rename it over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn served_by(c: &reqwest::Client, sg: &Shardgate, room: &str) -> String {
    let (status, body) = get(c, &sg.url(&format!("/http-bind?room={room}"))).await;
    assert_eq!(status, 200, "{body}");
    body.trim().to_owned()
}

async fn wait_for_pool(c: &reqwest::Client, sg: &Shardgate, pool: &str) -> Duration {
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        if served_by(c, sg, &format!("probe-{n}"))
            .await
            .starts_with(pool)
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{pool} never served"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_lose_nothing() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let b = [
        Backend::start("blue-0").await,
        Backend::start("blue-1").await,
        Backend::start("green-0").await,
        Backend::start("green-1").await,
    ];
    let (head, http, admin) = config_head("t");
    let to_blue = config(&head, &[&b[0], &b[1]], &[&b[2], &b[3]], "blue");
    let to_green = config(&head, &[&b[0], &b[1]], &[&b[2], &b[3]], "green");
    let sg = Arc::new(Shardgate::start(&to_blue, http, admin));
    let path = sg.dir.path().join("shardgate.toml");

    // 200 connections, each sending requests back to back and recording (start, end, pool).
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<Served>>> = Arc::default();
    let mut clients = Vec::new();
    for i in 0..200 {
        let (sg, stop, log) = (sg.clone(), stop.clone(), log.clone());
        clients.push(tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let started = Instant::now();
                let r = c
                    .get(sg.url(&format!("/http-bind?room=c{i}-{k}")))
                    .send()
                    .await;
                let (status, body) = match r {
                    Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(_) => (0, String::new()),
                };
                let pool = body.split('-').next().unwrap_or("").to_owned();
                log.lock()
                    .unwrap()
                    .push((started, Instant::now(), pool, status));
            }
        }));
    }

    let c = client();
    let mut latencies = Vec::new();
    let mut serving = Vec::new();
    // (pool named by the config, from when it serves, until the next write)
    let mut windows: Vec<(&str, Instant, Instant)> = Vec::new();
    for round in 0..50 {
        let (text, pool) = if round % 2 == 0 {
            (&to_green, "green")
        } else {
            (&to_blue, "blue")
        };
        let written = Instant::now();
        if let Some(last) = windows.last_mut() {
            last.2 = written;
        }
        let written_ms = unix_ms();
        replace(&path, text);
        serving.push(wait_for_pool(&c, &sg, pool).await);
        let cfg = admin_json(&sg, "/admin/config", "t").await;
        latencies.push(Duration::from_millis(
            cfg["loaded_at_unix_ms"]
                .as_u64()
                .unwrap()
                .saturating_sub(written_ms),
        ));
        windows.push((
            pool,
            Instant::now(),
            Instant::now() + Duration::from_secs(3600),
        ));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    windows.last_mut().unwrap().2 = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.await.unwrap();
    }

    let log = std::mem::take(&mut *log.lock().unwrap());
    let failed = log.iter().filter(|(.., status)| *status != 200).count();
    assert!(log.len() > 1000, "only {} requests", log.len());
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during reloads",
        log.len()
    );
    // A request that started after a config was serving and ended before the next write was
    // served by the pool that config names.
    let mut wrong = 0;
    for (start, end, pool, _) in log.iter() {
        if let Some((want, ..)) = windows
            .iter()
            .find(|(_, from, until)| start >= from && end <= until)
        {
            wrong += usize::from(pool != want);
        }
    }
    assert_eq!(
        wrong, 0,
        "{wrong} requests served by the pool of an older config"
    );
    latencies.sort();
    serving.sort();
    println!(
        "reload latency, 50 reloads under 200 busy connections: file replaced -> new config swapped in: median {:?}, p90 {:?}, max {:?}; \
         -> a probe request saw it: median {:?}, max {:?}; {} requests, 0 failed",
        latencies[25], latencies[45], latencies[49], serving[25], serving[49], log.len()
    );
    let metrics = get(&c, &sg.admin_url("/metrics")).await.1;
    assert!(
        metrics.contains("shardgate_config_reloads_total{result=\"ok\"} 50"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_swap_sighup_and_a_broken_file() {
    let b = [
        Backend::start("blue-0").await,
        Backend::start("green-0").await,
    ];
    let (head, http, admin) = config_head("t");
    let to_blue = config(&head, &[&b[0]], &[&b[1]], "blue");
    let to_green = config(&head, &[&b[0]], &[&b[1]], "green");
    // A ConfigMap volume: the file is a symlink through ..data to a timestamped directory.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..2026_01")).unwrap();
    std::fs::write(d.join("..2026_01/shardgate.toml"), &to_blue).unwrap();
    std::os::unix::fs::symlink("..2026_01", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/shardgate.toml", d.join("shardgate.toml")).unwrap();
    let sg = Shardgate::start_file(d.join("shardgate.toml"), dir, http, admin);
    let c = client();
    assert!(served_by(&c, &sg, "a").await.starts_with("blue"));

    // Kubelet's update: a new directory, a new ..data link renamed over the old one.
    let d = sg.dir.path();
    std::fs::create_dir(d.join("..2026_02")).unwrap();
    std::fs::write(d.join("..2026_02/shardgate.toml"), &to_green).unwrap();
    std::os::unix::fs::symlink("..2026_02", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    let took = wait_for_pool(&c, &sg, "green").await;
    println!("ConfigMap ..data swap picked up after {took:?}");

    // A broken file: rejected, the running config stays, the error is shown and counted.
    std::fs::write(
        d.join("..2026_02/shardgate.toml"),
        to_blue.replace("[[route]]", "[[route]\nbogus"),
    )
    .unwrap();
    let r = c
        .post(sg.admin_url("/admin/reload"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(
        served_by(&c, &sg, "b").await.starts_with("green"),
        "the old config serves on"
    );
    let cfg = admin_json(&sg, "/admin/config", "t").await;
    let err = cfg["last_error"]["error"].as_str().unwrap();
    assert!(
        err.contains("shardgate.toml:") && err.contains(':'),
        "{cfg}"
    );
    let metrics = get(&c, &sg.admin_url("/metrics")).await.1;
    assert!(
        metrics.contains("shardgate_config_reloads_total{result=\"error\"}"),
        "{metrics}"
    );

    // Fixed, then SIGHUP (the watcher may also see it; either way it is applied once).
    std::fs::write(d.join("..2026_02/shardgate.toml"), &to_blue).unwrap();
    let pid = sg.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_for_pool(&c, &sg, "blue").await;
    let cfg = admin_json(&sg, "/admin/config", "t").await;
    assert_eq!(cfg["hash"].as_str().unwrap().len(), 16, "{cfg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_rooms_survive_a_reload_that_changes_their_pool() {
    let b = [
        Backend::start("s-0").await,
        Backend::start("s-1").await,
        Backend::start("s-2").await,
    ];
    let (head, http, admin) = config_head("t");
    let text = |extra: &str| {
        format!(
            "{head}{}{extra}\n[[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"shards\" }}\n",
            shard_pool("shards", &[&b[0], &b[1], &b[2]]).replace(
                "passive_down = \"30s\"\n",
                "passive_down = \"30s\"\nsticky = { ttl = \"10m\" }\n"
            )
        )
    };
    let sg = Shardgate::start(&text(""), http, admin);
    let rooms: Vec<String> = (0..200).map(|i| format!("room-{i}")).collect();
    let before = placements(&sg, &rooms).await;
    // Drain shard s-0 in the config: the pool changes, its rooms must not move.
    let drained = text("").replace(
        &format!("name = \"s-0\", addrs = [\"{}\"] }}", b[0].addr),
        &format!(
            "name = \"s-0\", addrs = [\"{}\"], drain = true }}",
            b[0].addr
        ),
    );
    assert_ne!(drained, text(""));
    std::fs::write(sg.dir.path().join("shardgate.toml"), &drained).unwrap();
    let c = client();
    let r = c
        .post(sg.admin_url("/admin/reload"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        placements(&sg, &rooms).await,
        before,
        "a reload moved live rooms"
    );
    let fresh: Vec<String> = (0..100).map(|i| format!("new-{i}")).collect();
    assert!(placements(&sg, &fresh).await.values().all(|s| s != "s-0"));
}
