//! 8,000 WebSocket tunnels through the edge, all carrying messages: the edge's resident memory
//! stays under 16 KiB per tunnel over its idle size (an idle tunnel holds no data buffer), and
//! returns near that size once they close.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TUNNELS: usize = 8_000;
const BOUND_PER_TUNNEL: u64 = 16 * 1024;

/// A shard that accepts every WebSocket handshake and echoes what follows.
async fn echo_shard() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1024];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let ok = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                if s.write_all(ok).await.is_err() {
                    return;
                }
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// A masked text frame and what the echo shard sends back (the same bytes).
const FRAME: &[u8] = b"\x81\x85\x00\x00\x00\x00hello";

async fn message(s: &mut TcpStream) {
    s.write_all(FRAME).await.unwrap();
    let mut back = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut back))
        .await
        .expect("echo within 20 s")
        .unwrap();
    assert_eq!(&back, FRAME);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_thousand_tunnels_fit_in_sixteen_kib_each() {
    // Each tunnel is two sockets here (client and shard side); the hard limit is 20,000.
    let limit = rlimit::increase_nofile_limit(20_000).unwrap();
    assert!(
        limit >= 2 * TUNNELS as u64 + 1_000,
        "this test needs {} open files (two per tunnel), the hard limit allows {limit}",
        2 * TUNNELS + 1_000
    );
    let shard = echo_shard().await;
    let (head, http, admin) = config_head("t");
    let config = format!(
        "{head}[[pool]]\nname = \"p\"\nshards.list = [{{ name = \"s\", addrs = [\"{shard}\"] }}]\n[[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"p\" }}\n"
    );
    let sg = Shardgate::start(&config, http, admin);
    // Warm up (a first tunnel, the worker threads' scratch buffers), then the idle size.
    let mut warm = open(http, 0).await;
    message(&mut warm).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_bytes(sg.child.id());
    let mut tunnels = Vec::with_capacity(TUNNELS);
    for batch in 0..TUNNELS / 500 {
        let opened = (0..500).map(|i| {
            tokio::spawn(async move {
                let mut s = open(http, batch * 500 + i + 1).await;
                message(&mut s).await;
                s
            })
        });
        for t in opened {
            tunnels.push(t.await.unwrap());
        }
    }
    // Every tunnel carries another message, all at once.
    let mut round = Vec::with_capacity(TUNNELS);
    for mut s in tunnels.drain(..) {
        round.push(tokio::spawn(async move {
            message(&mut s).await;
            s
        }));
    }
    for t in round {
        tunnels.push(t.await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open_rss = rss_bytes(sg.child.id());
    let per = open_rss.saturating_sub(idle) / TUNNELS as u64;
    println!(
        "idle {} KiB, with {TUNNELS} tunnels {} KiB: {:.1} KiB per tunnel",
        idle / 1024,
        open_rss / 1024,
        per as f64 / 1024.0
    );
    assert!(
        open_rss < idle + TUNNELS as u64 * BOUND_PER_TUNNEL,
        "{per} bytes per tunnel"
    );
    let text = get(&client(), &sg.admin_url("/metrics")).await.1;
    assert_eq!(
        metric(&text, "shardgate_tunnels_open"),
        Some(TUNNELS as u64 + 1)
    );
    // The clients leave: the memory the tunnels held goes back to the system (within a
    // quarter of what they took; the allocator's background thread returns freed pages over
    // its 10 s decay).
    drop(tunnels);
    let back = idle + (open_rss.saturating_sub(idle)) / 4;
    let mut after = rss_bytes(sg.child.id());
    for _ in 0..150 {
        if after <= back {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        message(&mut warm).await;
        after = rss_bytes(sg.child.id());
    }
    println!("after the tunnels closed: {} KiB", after / 1024);
    assert!(
        after <= back,
        "RSS {} KiB after the tunnels closed; idle was {} KiB, open {} KiB",
        after / 1024,
        idle / 1024,
        open_rss / 1024
    );
}

async fn open(http: SocketAddr, n: usize) -> TcpStream {
    let mut s = TcpStream::connect(http).await.unwrap();
    let req = format!("GET /xmpp-websocket?room=room-{n} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut byte))
            .await
            .expect("101 within 20 s")
            .unwrap();
        assert_eq!(n, 1, "closed during the handshake");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}
