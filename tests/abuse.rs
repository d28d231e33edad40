//! Abusive clients against the edge, each limit set low: silent and slowloris connections,
//! endless header blocks, clients that stop reading (a response, a tunnel), oversized room
//! names, bad WebSocket handshakes, and a flood past `limits.max_connections`; each is closed
//! within its deadline while a normal client is served throughout.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "abuse-token";

fn config(extra: &str, shard: SocketAddr) -> (String, SocketAddr, SocketAddr) {
    let (head, http, admin) = config_head(TOKEN);
    let config = format!(
        "{head}{extra}\n[[pool]]\nname = \"p\"\nshards.list = [{{ name = \"s\", addrs = [\"{shard}\"] }}]\n[[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"p\" }}\n"
    );
    (config, http, admin)
}

/// A normal request answered 200 by the backend, on a new connection.
async fn served(sg: &Shardgate) {
    let (status, _) = get(&client(), &sg.url("/http-bind?room=normal")).await;
    assert_eq!(status, 200, "a normal client is served");
}

async fn status_within(s: &mut TcpStream, limit: Duration) -> Option<u16> {
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(limit, s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .get(9..12)?
        .parse()
        .ok()
}

async fn timeouts(sg: &Shardgate, kind: &str) -> u64 {
    let text = get(&client(), &sg.admin_url("/metrics")).await.1;
    metric(
        &text,
        &format!("shardgate_timeouts_total{{kind=\"{kind}\"}}"),
    )
    .unwrap_or(0)
}

#[tokio::test]
async fn silent_and_slowloris_clients_get_408_at_the_head_deadline() {
    let backend = Backend::start("shard-0").await;
    let (config, http, admin) = config("[timeouts]\nrequest_head = \"1s\"\n", backend.addr);
    let sg = Shardgate::start(&config, http, admin);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..40 {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(http).await.unwrap();
            if i % 2 == 1 {
                // Slowloris: a header line every 300 ms, never the end of the head.
                s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
                for n in 0..20 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if s.write_all(format!("X-{n}: y\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    if n == 5 {
                        break;
                    }
                }
            }
            status_within(&mut s, Duration::from_secs(5)).await
        }));
    }
    served(&sg).await;
    for t in tasks {
        assert_eq!(t.await.unwrap(), Some(408));
    }
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(timeouts(&sg, "request_head").await >= 40);
    served(&sg).await;
}

#[tokio::test]
async fn an_endless_header_block_is_refused_as_it_grows() {
    let backend = Backend::start("shard-0").await;
    let (config, http, admin) = config("[limits]\nmax_header_bytes = 4096\n", backend.addr);
    let sg = Shardgate::start(&config, http, admin);
    let mut s = TcpStream::connect(http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: ")
        .await
        .unwrap();
    // More than the limit, the head never finished, the connection kept open.
    s.write_all(&[b'x'; 6000]).await.unwrap();
    assert_eq!(
        status_within(&mut s, Duration::from_secs(2)).await,
        Some(431)
    );
    assert_eq!(backend.requests(), 0);
    served(&sg).await;
}

/// A shard answering every request with `size` bytes, and every WebSocket handshake with a
/// 101 followed by bytes until its writes fail; `closed` is set when the edge let go.
async fn flooding_shard(size: usize, closed: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let reply = if text.contains("upgrade: websocket") {
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n".to_owned()
                } else {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n")
                };
                if s.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                let block = vec![b'z'; 64 * 1024];
                let mut sent = 0;
                while sent < size {
                    if s.write_all(&block).await.is_err() {
                        closed.store(true, Ordering::SeqCst);
                        return;
                    }
                    sent += block.len();
                }
                // Keep the connection until the edge closes it.
                let _ = s.read(&mut buf).await;
                closed.store(true, Ordering::SeqCst);
            });
        }
    });
    addr
}

async fn wait_for(flag: &AtomicBool, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if flag.load(Ordering::SeqCst) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_client_that_stops_reading_a_response_is_let_go() {
    let closed = Arc::new(AtomicBool::new(false));
    let shard = flooding_shard(64 << 20, closed.clone()).await;
    let (config, http, admin) = config("[timeouts]\nidle = \"2s\"\n", shard);
    let sg = Shardgate::start(&config, http, admin);
    let mut s = TcpStream::connect(http).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Never read: the socket buffers fill, then the edge's writes wait.
    assert!(
        wait_for(&closed, Duration::from_secs(15)).await,
        "the edge let the shard go"
    );
    assert!(timeouts(&sg, "client_write").await >= 1);
    drop(s);
}

#[tokio::test]
async fn a_tunnel_whose_client_stops_reading_is_closed() {
    let closed = Arc::new(AtomicBool::new(false));
    let shard = flooding_shard(1 << 30, closed.clone()).await;
    let (config, http, admin) = config("[timeouts]\ntunnel = \"2s\"\n", shard);
    let sg = Shardgate::start(&config, http, admin);
    let mut s = TcpStream::connect(http).await.unwrap();
    s.write_all(b"GET /xmpp-websocket?room=r HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    // Keep sending (so the tunnel is never quiet) but never read.
    let writer = tokio::spawn(async move {
        for _ in 0..200 {
            if s.write_all(b"\x81\x85\x00\x00\x00\x00hello").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(
        wait_for(&closed, Duration::from_secs(15)).await,
        "the edge closed the tunnel"
    );
    assert!(timeouts(&sg, "tunnel_stuck").await >= 1);
    writer.abort();
    served(&sg).await;
}

#[tokio::test]
async fn long_room_names_and_bad_websocket_handshakes_get_400() {
    let backend = Backend::start("shard-0").await;
    let (config, http, admin) = config("[limits]\nmax_room_bytes = 64\n", backend.addr);
    let sg = Shardgate::start(&config, http, admin);
    let c = client();
    let long = "r".repeat(65);
    let (status, _) = get(&c, &sg.url(&format!("/http-bind?room={long}"))).await;
    assert_eq!(status, 400);
    let (status, _) = get(&c, &sg.url(&format!("/http-bind?room={}", &long[..64]))).await;
    assert_eq!(status, 200);
    for bad in [
        "GET /xmpp-websocket?room=r HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n",
        "GET /xmpp-websocket?room=r HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n",
        "GET /xmpp-websocket?room=r HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(bad.as_bytes()).await.unwrap();
        assert_eq!(status_within(&mut s, Duration::from_secs(2)).await, Some(400), "{bad}");
    }
    assert_eq!(
        backend.requests(),
        1,
        "only the good request reached the shard"
    );
}

#[tokio::test]
async fn max_connections_holds_and_the_edge_recovers() {
    let backend = Backend::start("shard-0").await;
    let (config, http, admin) = config(
        "[limits]\nmax_connections = 20\n[timeouts]\nrequest_head = \"30s\"\n",
        backend.addr,
    );
    let sg = Shardgate::start(&config, http, admin);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(http).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Past the limit: the connection waits in the backlog, unanswered.
    let mut waiting = TcpStream::connect(http).await.unwrap();
    waiting
        .write_all(b"GET /http-bind?room=late HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        status_within(&mut waiting, Duration::from_secs(1)).await,
        None
    );
    // Those it has are served.
    let mut first = held.remove(0);
    first
        .write_all(b"GET /http-bind?room=held HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        status_within(&mut first, Duration::from_secs(2)).await,
        Some(200)
    );
    drop(first);
    // The flood ends: the waiting connection is served.
    held.truncate(10);
    assert_eq!(
        status_within(&mut waiting, Duration::from_secs(3)).await,
        Some(200)
    );
    let text = get(&client(), &sg.admin_url("/metrics")).await.1;
    assert!(metric(&text, "shardgate_connections_limited_total").unwrap_or(0) >= 1);
    drop(held);
    served(&sg).await;
}
