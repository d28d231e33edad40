//! HTTP/1.1 framing through the edge, against a shard that writes raw bytes: pipelining,
//! HTTP/1.0, HEAD, 204/304, chunked bodies both ways (and de-chunked for HTTP/1.0), Expect:
//! 100-continue, interim responses, close-delimited bodies, and a kept-alive shard connection
//! that its shard closed while the edge sent on it.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A shard that answers by path, on raw bytes, and records every request it got.
struct RawShard {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request (head and body) from `s`, with `buf` holding bytes read before.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let lower = head.to_ascii_lowercase();
    let body_end = if let Some(i) = lower.find("content-length: ") {
        let n: usize = lower[i + 16..].split("\r\n").next()?.trim().parse().ok()?;
        head_end + n
    } else if lower.contains("transfer-encoding: chunked") {
        loop {
            if let Some(i) = find(&buf[head_end..], b"0\r\n\r\n") {
                break head_end + i + 5;
            }
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    } else {
        head_end
    };
    while buf.len() < body_end {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..body_end].to_vec();
    buf.drain(..body_end);
    Some((head, body))
}

impl RawShard {
    async fn start() -> RawShard {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen_task = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen_task.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut served = 0;
                    while let Some((head, body)) = read_request(&mut s, &mut buf).await {
                        seen.lock().unwrap().push(head.clone());
                        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                        let path = path.split('?').next().unwrap_or("/");
                        served += 1;
                        let reply: Vec<u8> = match path {
                            "/cl" | "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
                            "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(),
                            "/close" => b"HTTP/1.1 200 OK\r\n\r\nuntil the close".to_vec(),
                            "/204" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
                            "/304" => b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n".to_vec(),
                            "/103" => b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
                            "/echo" => {
                                let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                                r.extend_from_slice(&body);
                                r
                            }
                            // Answers the first request of a connection only; a later one
                            // finds the connection closed, as a shard's keep-alive timeout
                            // closes it.
                            "/once" if served > 1 => return,
                            "/once" => b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce".to_vec(),
                            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                        };
                        let head_only = head.starts_with("HEAD ") || path == "/304";
                        let reply = if head.starts_with("HEAD ") {
                            reply[..find(&reply, b"\r\n\r\n").unwrap() + 4].to_vec()
                        } else {
                            reply
                        };
                        let _ = head_only;
                        if s.write_all(&reply).await.is_err() || path == "/close" {
                            return;
                        }
                    }
                });
            }
        });
        RawShard { addr, seen }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn edge(shard: &RawShard) -> Shardgate {
    let (head, http, admin) = config_head("t");
    let config = format!(
        "{head}[[pool]]\nname = \"p\"\nshards.list = [{{ name = \"s\", addrs = [\"{}\"] }}]\n[[route]]\npath_prefix = \"/\"\npool = \"p\"\n",
        shard.addr
    );
    Shardgate::start(&config, http, admin)
}

/// Writes `request` and reads until `until` responses ended (by the given end markers) or the
/// connection closes or 5 s pass.
async fn exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

const QUICK: Duration = Duration::from_millis(700);

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let shard = RawShard::start().await;
    let sg = edge(&shard).await;
    let out = exchange(
        sg.http,
        b"GET /cl HTTP/1.1\r\nHost: a\r\n\r\nGET /chunked HTTP/1.1\r\nHost: a\r\n\r\nGET /204 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let statuses: Vec<&str> = out.matches("HTTP/1.1 ").collect();
    assert_eq!(statuses.len(), 3, "{out}");
    let first = out.find("hello").unwrap();
    let second = out.find("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap();
    let third = out.find("204 No Content").unwrap();
    assert!(first < second && second < third, "{out}");
    assert!(out.ends_with("\r\n\r\n"), "nothing after the 204: {out:?}");
}

#[tokio::test]
async fn http10_clients_get_what_they_can_read() {
    let shard = RawShard::start().await;
    let sg = edge(&shard).await;
    // No keep-alive asked: the connection closes after the answer.
    let out = exchange(sg.http, b"GET /cl HTTP/1.0\r\n\r\n", Duration::from_secs(5)).await;
    assert!(
        out.contains("Connection: close") && out.ends_with("hello"),
        "{out}"
    );
    // Keep-alive asked: said back, and the connection stays.
    let out = exchange(
        sg.http,
        b"GET /cl HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        QUICK,
    )
    .await;
    assert!(
        out.contains("Connection: keep-alive") && out.ends_with("hello"),
        "{out}"
    );
    // A chunked answer is de-chunked for an HTTP/1.0 client, which reads to the close.
    let out = exchange(
        sg.http,
        b"GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        !out.to_ascii_lowercase().contains("transfer-encoding"),
        "{out}"
    );
    assert!(
        out.contains("Connection: close") && out.ends_with("\r\n\r\nhello world"),
        "{out}"
    );
    // The shard was asked in HTTP/1.1.
    assert!(shard.requests().iter().all(|r| r.contains(" HTTP/1.1\r\n")));
}

#[tokio::test]
async fn bodiless_responses_end_at_their_head() {
    let shard = RawShard::start().await;
    let sg = edge(&shard).await;
    for (request, status) in [
        ("HEAD /head HTTP/1.1\r\nHost: a\r\n\r\n", "200 OK"),
        ("GET /204 HTTP/1.1\r\nHost: a\r\n\r\n", "204 No Content"),
        ("GET /304 HTTP/1.1\r\nHost: a\r\n\r\n", "304 Not Modified"),
    ] {
        // The same connection carries a second request right after: it would be taken as
        // the first one's body if the edge waited for one.
        let both = format!("{request}GET /cl HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let out = exchange(sg.http, both.as_bytes(), Duration::from_secs(5)).await;
        let (first, second) = out.split_at(
            out.find("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close")
                .unwrap_or(0),
        );
        assert!(first.starts_with(&format!("HTTP/1.1 {status}")), "{out}");
        assert!(
            first.ends_with("\r\n\r\n"),
            "no body after {status}: {out:?}"
        );
        assert!(second.ends_with("hello"), "{out}");
    }
}

#[tokio::test]
async fn chunked_and_continue_requests_reach_the_shard_intact() {
    let shard = RawShard::start().await;
    let sg = edge(&shard).await;
    let chunked = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
    let out = exchange(sg.http, chunked, Duration::from_secs(5)).await;
    assert!(
        out.ends_with("3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"),
        "{out}"
    );
    // Expect: 100-continue: the edge says 100, then takes the body.
    let mut s = TcpStream::connect(sg.http).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut chunk = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&chunk[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"ping").await.unwrap();
    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(
        rest.starts_with("HTTP/1.1 200 OK") && rest.ends_with("ping"),
        "{rest}"
    );
    assert!(
        !shard
            .requests()
            .iter()
            .any(|r| r.to_ascii_lowercase().contains("expect:")),
        "the edge answered the Expect itself"
    );
    // A chunked body with a bad size line never reaches the shard.
    let before = shard.requests().len();
    let bad = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
    let out = exchange(sg.http, bad, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        shard.requests().len(),
        before,
        "no whole request reached the shard"
    );
}

#[tokio::test]
async fn interim_and_close_delimited_responses_pass_through() {
    let shard = RawShard::start().await;
    let sg = edge(&shard).await;
    let out = exchange(
        sg.http,
        b"GET /103 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK"),
        "{out}"
    );
    assert!(out.ends_with("ok"), "{out}");
    let out = exchange(
        sg.http,
        b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        out.contains("Connection: close") && out.ends_with("until the close"),
        "{out}"
    );
}

#[tokio::test]
async fn a_kept_alive_connection_its_shard_closed_is_retried_on_a_new_one() {
    let shard = RawShard::start().await;
    let sg = edge(&shard).await;
    let c = client();
    for i in 0..5 {
        // Each request after the first goes out on the connection the first one left open,
        // which the shard then closes without answering; the edge asks again on a new one.
        let (status, body) = get(&c, &sg.url("/once")).await;
        assert_eq!((status, body.as_str()), (200, "once"), "request {i}");
    }
    let posted = c
        .post(sg.url("/once"))
        .body("a small body, sent whole")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
}

#[tokio::test]
async fn answers_made_at_the_edge_have_no_body_for_head() {
    let shard = RawShard::start().await;
    let (head, http, admin) = config_head("t");
    let config = format!(
        "{head}[[pool]]\nname = \"p\"\nshards.list = [{{ name = \"s\", addrs = [\"{}\"] }}]\n[[route]]\npath_prefix = \"/about/health\"\nrespond = {{ status = 200, body = \"fine\" }}\n[[route]]\npath_prefix = \"/\"\npool = \"p\"\n",
        shard.addr
    );
    let sg = Shardgate::start(&config, http, admin);
    let out = exchange(
        sg.http,
        b"HEAD /about/health HTTP/1.1\r\nHost: a\r\n\r\nGET /about/health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let (first, second) = out.split_at(out.rfind("HTTP/1.1 200").unwrap());
    assert!(
        first.contains("Content-Length: 4") && first.ends_with("\r\n\r\n"),
        "{out:?}"
    );
    assert!(second.ends_with("\r\n\r\nfine"), "{out:?}");
}

#[tokio::test]
async fn a_large_answer_made_at_the_edge_goes_out_whole_after_its_head() {
    // Bodies past 4 KiB are written after the head, from the config (not copied).
    let body = "0123456789".repeat(1_000);
    let (head, http, admin) = config_head("t");
    let config = format!(
        "{head}[[route]]\npath_prefix = \"/\"\nrespond = {{ status = 200, body = \"{body}\", content_type = \"text/html\" }}\n"
    );
    let sg = Shardgate::start(&config, http, admin);
    let out = exchange(
        sg.http,
        b"HEAD /page HTTP/1.1\r\nHost: a\r\n\r\nGET /page HTTP/1.1\r\nHost: a\r\n\r\nGET /page HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let answers: Vec<&str> = out.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(answers.len(), 3, "{out:?}");
    for (i, a) in answers.iter().enumerate() {
        assert!(a.contains("Content-Type: text/html\r\n"), "{a:?}");
        assert!(a.contains("Content-Length: 10000\r\n"), "{a:?}");
        let (_, rest) = a.split_once("\r\n\r\n").unwrap();
        let expected = if i == 0 { "" } else { body.as_str() };
        assert_eq!(rest, expected, "answer {i}");
    }
}
