//! Zero-downtime binary upgrade: a new process started with `--upgrade` takes the listening
//! sockets over when the old one gets SIGQUIT (or the old one starts it itself on SIGUSR2).
//! Clients opening connections throughout see no error, and a WebSocket opened on the old
//! process keeps working until it closes.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn signal(pid: u32, sig: &str) {
    assert!(std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// Stops, at the end of the test however it ends, every process whose arguments name this
/// test's upgrade socket: the successor the old process started, which this test did not.
struct KillSuccessors(std::path::PathBuf);

impl Drop for KillSuccessors {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pkill")
            .args(["-INT", "-f"])
            .arg(self.0.as_os_str())
            .status();
    }
}

/// Requests on a new connection each, until stopped; counts answers and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(url: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let c = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let mut workers = Vec::new();
            for w in 0..4 {
                let (s, o, f, c, url) = (s.clone(), o.clone(), f.clone(), c.clone(), url.clone());
                workers.push(tokio::spawn(async move {
                    let mut n = 0;
                    while !s.load(Ordering::Relaxed) {
                        n += 1;
                        match c.get(format!("{url}?room=w{w}-{n}")).send().await {
                            Ok(r) if r.status() == 200 => {
                                o.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => f.lock().unwrap().push(format!("status {}", r.status())),
                            Err(e) => f.lock().unwrap().push(format!("{e:?}")),
                        }
                    }
                }));
            }
            for w in workers {
                w.await.unwrap();
            }
        });
        Load {
            stop,
            ok,
            failed,
            task,
        }
    }

    /// Stops the load; fails the test if any request failed or too few were made.
    async fn finish_without_failures(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let failed = self.failed.lock().unwrap().clone();
        let ok = self.ok.load(Ordering::Relaxed);
        println!(
            "during the upgrade: {ok} requests answered, {} failed",
            failed.len()
        );
        assert!(failed.is_empty(), "{failed:#?}");
        assert!(ok > 100, "only {ok} requests");
    }
}

/// The text of a log line without its ANSI colour codes.
fn without_colours(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

fn wait_for_exit(sg: &mut Shardgate, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if sg.child.try_wait().unwrap().is_some() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "the old process did not exit: {}",
            sg.log.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn old_process(socket: &Path) -> (Backend, Shardgate) {
    let backend = Backend::start("shard-0").await;
    let (head, http, admin) = config_head("t");
    let config = format!(
        "{head}{}[[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"p\" }}\n",
        shard_pool("p", &[&backend])
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shardgate.toml");
    std::fs::write(&path, config).unwrap();
    let sg = Shardgate::start_with_args(
        path,
        dir,
        http,
        admin,
        &[OsStr::new("--upgrade-socket"), socket.as_os_str()],
    );
    (backend, sg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_upgrade_then_sigquit_hands_over_without_a_failed_request() {
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("upgrade.sock");
    let (_backend, mut old) = old_process(&socket).await;
    let load = Load::start(old.url("/plain"));
    let ws_url = format!("ws://{}/xmpp-websocket?room=kept", old.http);
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();

    // SIGQUIT with nobody waiting is refused: handing over to nobody would stop serving.
    signal(old.child.id(), "-QUIT");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "exited on a lone SIGQUIT"
    );
    assert!(
        old.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("no new process is waiting")),
        "{}",
        old.log.lock().unwrap().join("\n")
    );

    let new = Shardgate::start_with_args(
        old.dir.path().join("shardgate.toml"),
        tempfile::tempdir().unwrap(),
        old.http,
        old.admin,
        &[
            OsStr::new("--upgrade"),
            OsStr::new("--upgrade-socket"),
            socket.as_os_str(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the new process never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(old.child.id(), "-QUIT");

    // The tunnel opened on the old process still works after the hand-over, and keeps the old
    // process alive until it closes.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the old process left a tunnel"
    );
    ws.send(Message::text("still")).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert_eq!(reply.unwrap().unwrap(), Message::text("shard-0:still"));
    ws.close(None).await.unwrap();
    let took = wait_for_exit(&mut old, Duration::from_secs(10));
    println!("old process exited {took:?} after its last tunnel closed");

    // Only the new process is left, and it serves.
    let (status, body) = get(&client(), &old.url("/plain?room=after")).await;
    assert_eq!((status, body.as_str()), (200, "shard-0\n"));
    load.finish_without_failures().await;
    drop(new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_the_binary_on_disk_and_hands_over() {
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("upgrade.sock");
    let _successors = KillSuccessors(socket.clone());
    let (_backend, mut old) = old_process(&socket).await;
    let load = Load::start(old.url("/plain"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(old.child.id(), "-USR2");
    wait_for_exit(&mut old, Duration::from_secs(20));
    let log = old.log.lock().unwrap().clone();
    let successor: Option<u32> = log.iter().map(|l| without_colours(l)).find_map(|l| {
        l.contains("new process waiting")
            .then(|| {
                l.split("pid=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .flatten()
    });
    let successor = successor.unwrap_or_else(|| panic!("no successor pid in {}", log.join("\n")));
    assert!(successor > 0);
    let (status, body) = get(&client(), &old.url("/plain?room=after")).await;
    assert_eq!((status, body.as_str()), (200, "shard-0\n"));
    load.finish_without_failures().await;
}
