//! Test harness: fake shard backends on loopback that answer with their own name, and the real
//! `shardgate` binary started on a generated config. Everything binds 127.0.0.1.

#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// A free loopback port (bound then released; the test binds it again right away).
/// Never the same port twice in one test process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// What a fake shard saw.
#[derive(Default)]
pub struct Seen {
    pub requests: AtomicUsize,
    /// Status of `/about/health` (0 means 200).
    pub health: std::sync::atomic::AtomicU16,
    /// Request lines and headers of recent requests, for header assertions.
    pub last_headers: Mutex<Vec<(String, String)>>,
}

impl Seen {
    /// Every value of header `name` (lower case) in the last request.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.last_headers
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Asserts the forwarding headers of the last request, each present exactly once.
    pub fn assert_forwarded(&self, xff: &str, proto: &str, host: &str) {
        let all = self.last_headers.lock().unwrap().clone();
        assert_eq!(self.header("x-forwarded-for"), vec![xff], "{all:?}");
        assert_eq!(self.header("x-forwarded-proto"), vec![proto], "{all:?}");
        assert_eq!(self.header("x-forwarded-host"), vec![host], "{all:?}");
        assert_eq!(
            self.header("host"),
            vec![host],
            "the client's Host is kept: {all:?}"
        );
    }
}

/// A fake Jitsi shard: answers `<name>\n` with header `x-shard: <name>`; `/hold?ms=N` answers
/// after N ms (BOSH-like); WebSocket upgrades echo every message prefixed with `<name>:`,
/// except on `/push` (a message every 500 ms, never reads) and `/refuse` (a 403 instead).
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: JoinHandle<()>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_on(name, 0).await
    }

    pub async fn start_on(name: &str, port: u16) -> Backend {
        Self::start_at(name, "127.0.0.1", port).await
    }

    /// On another loopback address (127.0.0.2, …), so per-address sidecars can share a port.
    pub async fn start_at(name: &str, ip: &str, port: u16) -> Backend {
        let listener = TcpListener::bind((ip, port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let name_owned = name.to_owned();
        let seen_task = seen.clone();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let conns = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let name = name_owned.clone();
                let seen = seen_task.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(name.clone(), seen.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
                conns.lock().unwrap().push(conn.abort_handle());
            }
        });
        Backend {
            name: name.to_owned(),
            addr,
            seen,
            task,
            connections,
        }
    }

    /// Like a crashed pod: stops accepting, drops the listener and every open connection.
    pub fn kill(&self) {
        self.task.abort();
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn set_health(&self, status: u16) {
        self.seen.health.store(status, Ordering::SeqCst);
    }

    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn handle(
    name: String,
    seen: Arc<Seen>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    // Health checks are not counted as requests.
    if req.uri().path() == "/about/health" {
        let status = match seen.health.load(Ordering::SeqCst) {
            0 => 200,
            s => s,
        };
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(format!("{name} health\n"))))
            .unwrap());
    }
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let mut headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    // The path as received, under a name no real header has.
    headers.push((
        ":path".into(),
        req.uri().path_and_query().map_or("", |p| p.as_str()).into(),
    ));
    *seen.last_headers.lock().unwrap() = headers;
    if req
        .headers()
        .get("upgrade")
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        if req.uri().path() == "/refuse" {
            return Ok(Response::builder()
                .status(403)
                .body(Full::new(Bytes::from(format!(
                    "{name} refused the upgrade\n"
                ))))
                .unwrap());
        }
        let push = req.uri().path() == "/push";
        let key = req.headers().get("sec-websocket-key").cloned();
        let upgrade = hyper::upgrade::on(&mut req);
        let ws_name = name.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            if push {
                // Speaks every 500 ms and never listens.
                for k in 0.. {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if ws.send(format!("{ws_name}:tick-{k}").into()).await.is_err() {
                        return;
                    }
                }
            }
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() {
                    let reply = format!("{ws_name}:{}", msg.into_text().unwrap());
                    if ws.send(reply.into()).await.is_err() {
                        return;
                    }
                } else if msg.is_close() {
                    return;
                }
            }
        });
        let accept = derive_accept_key(key.as_ref().map(|k| k.as_bytes()).unwrap_or(b""));
        return Ok(Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    if req.uri().path() == "/hold" {
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    Ok(Response::builder()
        .header("x-shard", &name)
        .body(Full::new(Bytes::from(format!("{name}\n"))))
        .unwrap())
}

/// A running `shardgate run --config …`, killed on drop.
pub struct Shardgate {
    pub child: Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// The `[[listener]]` + `[admin]` head of a config, with fresh ports.
pub fn config_head(token: &str) -> (String, SocketAddr, SocketAddr) {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        "[[listener]]\naddr = \"{http}\"\n\n[admin]\naddr = \"{admin}\"\ntoken = \"{token}\"\n\n"
    );
    (text, http, admin)
}

/// A pool `name` over `backends` (shard names from the backends) plus a sticky `/` route.
pub fn shard_pool(name: &str, backends: &[&Backend]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("  {{ name = \"{}\", addrs = [\"{}\"] }},", b.name, b.addr))
        .collect();
    format!(
        "[[pool]]\nname = \"{name}\"\npassive_down = \"30s\"\nshards.list = [\n{}\n]\n\n",
        list.join("\n")
    )
}

impl Shardgate {
    /// Starts shardgate on `config` (which must use `http`/`admin` from [`config_head`]) and
    /// waits until its admin listener answers.
    pub fn start(config: &str, http: SocketAddr, admin: SocketAddr) -> Shardgate {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shardgate.toml");
        std::fs::write(&path, config).unwrap();
        Self::start_file(path, dir, http, admin)
    }

    pub fn start_file(
        path: PathBuf,
        dir: tempfile::TempDir,
        http: SocketAddr,
        admin: SocketAddr,
    ) -> Shardgate {
        Self::start_with_args(path, dir, http, admin, &[])
    }

    /// As [`Shardgate::start_file`], with more arguments after `run --config FILE`.
    pub fn start_with_args(
        path: PathBuf,
        dir: tempfile::TempDir,
        http: SocketAddr,
        admin: SocketAddr,
        args: &[&std::ffi::OsStr],
    ) -> Shardgate {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .args(["run", "--config"])
            .arg(&path)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("SHARDGATE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("SHARDGATE_THREADS", "2")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shardgate");
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut sg = Shardgate {
            child,
            http,
            admin,
            dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(admin).is_ok()
                && std::net::TcpStream::connect(http).is_ok()
            {
                // Make sure our process answers: it exits at once when a port is taken.
                std::thread::sleep(Duration::from_millis(150));
                if let Ok(Some(status)) = sg.child.try_wait() {
                    panic!(
                        "shardgate exited with {status}: {}",
                        sg.log.lock().unwrap().join("\n")
                    );
                }
                return sg;
            }
            if let Ok(Some(status)) = sg.child.try_wait() {
                panic!(
                    "shardgate exited with {status}: {}",
                    sg.log.lock().unwrap().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "shardgate did not start: {}",
                sg.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

impl Drop for Shardgate {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- shardgate log ---\n{}",
                self.log
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client with keep-alive and no proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// `GET /admin/shards` with the bearer token, as JSON.
pub async fn admin_shards(sg: &Shardgate, token: &str) -> serde_json::Value {
    admin_json(sg, "/admin/shards", token).await
}

/// `GET <path>` on the admin listener with the bearer token, as JSON.
pub async fn admin_json(sg: &Shardgate, path: &str, token: &str) -> serde_json::Value {
    client()
        .get(sg.admin_url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Room -> the shard that answered `/http-bind?room=<room>` (100 requests at a time; each must
/// be a 200).
pub async fn placements(
    sg: &Shardgate,
    rooms: &[String],
) -> std::collections::HashMap<String, String> {
    let c = client();
    let mut out = std::collections::HashMap::new();
    for chunk in rooms.chunks(100) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|r| {
                let (c, r, url) = (
                    c.clone(),
                    r.clone(),
                    sg.url(&format!("/http-bind?room={r}")),
                );
                tokio::spawn(async move {
                    let (status, body) = get(&c, &url).await;
                    assert_eq!(status, 200, "{r}: {body}");
                    (r, body.trim().to_owned())
                })
            })
            .collect();
        for t in tasks {
            let (r, s) = t.await.unwrap();
            out.insert(r, s);
        }
    }
    out
}

/// GET `url` and return (status, body).
/// The value of the first metric line of a Prometheus scrape that starts with `line_start`
/// (name and labels, e.g. `shardgate_media_flows{zone="z0"}`).
pub fn metric(metrics: &str, line_start: &str) -> Option<u64> {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub async fn get(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = c
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}
/// Waits until `sg`'s `/readyz` shows `up` of `total` shards up in pool `shards`.
pub async fn wait_for_members(sg: &Shardgate, up: usize, total: usize) {
    let c = client();
    let want = format!("pool shards: {up}/{total} shards up");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body = get(&c, &sg.admin_url("/readyz")).await.1;
        if body.contains(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "wanted {want:?}, /readyz says {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub mod dns;
pub mod k8s;
pub mod webrtc;
