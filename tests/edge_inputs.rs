//! Hostile and unusual request bytes at the edge, written on raw TCP: request smuggling forms,
//! oversized header blocks, forwarding headers, fixed answers and unmatched routes, and the
//! rejection counters in `/metrics`.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "edge-token";

/// What came back on one raw connection.
#[derive(Debug)]
struct Raw {
    /// Status of the first response, if a status line arrived.
    status: Option<u16>,
    /// Everything read (lossy UTF-8).
    text: String,
    /// Why reading or writing stopped early (reset, broken pipe), if it did.
    error: Option<String>,
}

impl Raw {
    fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    /// Values of response header `name` (case-insensitive) in the first response.
    fn header(&self, name: &str) -> Vec<String> {
        let head = self.text.split_once("\r\n\r\n").map_or("", |(h, _)| h);
        head.lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

/// Writes `request` on a new connection (in a task, so a server that stops reading cannot
/// block us) and reads until the server closes, an error, or 5 s. The write half stays open
/// until reading is done, so the server never sees a half-close from us.
async fn send_raw(addr: SocketAddr, request: Vec<u8>) -> Raw {
    let stream = TcpStream::connect(addr).await.expect("connect to the edge");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let res = wr.write_all(&request).await;
        let res = match res {
            Ok(()) => wr.flush().await,
            e => e,
        };
        (wr, res.err().map(|e| format!("write: {e}")))
    });
    let mut buf = Vec::new();
    let mut error = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Err(_) => break, // 5 s without close
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => {
                error = Some(format!("read: {e}"));
                break;
            }
        }
    }
    let (_wr, write_error) = writer.await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok());
    Raw {
        status,
        text,
        error: error.or(write_error),
    }
}

/// A well-formed GET that closes the connection after the answer.
fn normal_get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: meet.example.com\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// One shard behind a sticky `/` route, with `extra` config (e.g. `[limits]`) added.
async fn one_shard(extra: &str) -> (Backend, Shardgate) {
    let backend = Backend::start("shard-0").await;
    let (head, http, admin) = config_head(TOKEN);
    let config = format!(
        "{head}{extra}\n{}[[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"shards\" }}\n",
        shard_pool("shards", &[&backend])
    );
    let sg = Shardgate::start(&config, http, admin);
    (backend, sg)
}

/// A normal GET answers 200 from the backend, and the backend count goes up by exactly one.
async fn assert_still_serves(sg: &Shardgate, backend: &Backend, after: &str) {
    let before = backend.requests();
    let r = send_raw(sg.http, normal_get("/http-bind?room=after")).await;
    assert_eq!(r.status, Some(200), "normal GET after {after}: {r:?}");
    assert_eq!(r.body(), "shard-0\n", "normal GET after {after}: {r:?}");
    assert_eq!(
        backend.requests(),
        before + 1,
        "the backend saw the normal GET after {after}"
    );
}

/// `value` of the sample `name{labels}` in a Prometheus text page; 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().unwrap())
        })
        .unwrap_or(0.0)
}

async fn metrics(sg: &Shardgate) -> String {
    let (status, body) = get(&client(), &sg.admin_url("/metrics")).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn rejected(metrics: &str, reason: &str) -> f64 {
    sample(
        metrics,
        &format!("shardgate_rejected_requests_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_forms_get_400_and_never_reach_the_backend() {
    let (backend, sg) = one_shard("").await;
    // Sanity: the plain form of the same request does reach the backend.
    assert_still_serves(&sg, &backend, "start").await;

    let cases: Vec<(&str, &str)> = vec![
        (
            "Content-Length with Transfer-Encoding: chunked",
            "POST /http-bind?room=a HTTP/1.1\r\nHost: meet.example.com\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding: chunked before Content-Length, smuggled GET in the body",
            "POST /http-bind?room=a HTTP/1.1\r\nHost: meet.example.com\r\nTransfer-Encoding: chunked\r\nContent-Length: 46\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: meet.example.com\r\n\r\n",
        ),
        (
            "two Content-Length headers with the same value",
            "POST /http-bind?room=a HTTP/1.1\r\nHost: meet.example.com\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        ),
        (
            "two Content-Length headers with different values",
            "POST /http-bind?room=a HTTP/1.1\r\nHost: meet.example.com\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        (
            "Content-Length: 3, 3",
            "POST /http-bind?room=a HTTP/1.1\r\nHost: meet.example.com\r\nContent-Length: 3, 3\r\n\r\nabc",
        ),
        (
            "obs-fold continuation line (space)",
            "GET /http-bind?room=a HTTP/1.1\r\nHost: meet.example.com\r\nX-Note: first\r\n second\r\n\r\n",
        ),
        (
            "obs-fold continuation line (tab) on Transfer-Encoding",
            "POST /http-bind?room=a HTTP/1.1\r\nHost: meet.example.com\r\nTransfer-Encoding:\r\n\tchunked\r\nContent-Length: 3\r\n\r\nabc",
        ),
        (
            "two Host headers",
            "GET /http-bind?room=a HTTP/1.1\r\nHost: meet.example.com\r\nHost: evil.example\r\n\r\n",
        ),
        (
            "HTTP/1.1 without Host",
            "GET /http-bind?room=a HTTP/1.1\r\nAccept: */*\r\n\r\n",
        ),
        (
            "non-chunked final Transfer-Encoding (gzip)",
            "POST /http-bind?room=a HTTP/1.1\r\nHost: meet.example.com\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        ),
        (
            "chunked not final (chunked, gzip)",
            "POST /http-bind?room=a HTTP/1.1\r\nHost: meet.example.com\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        ),
        (
            "space before the colon of Content-Length with Transfer-Encoding",
            "POST /http-bind?room=a HTTP/1.1\r\nHost: meet.example.com\r\nContent-Length : 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
    ];
    for (name, request) in cases {
        let before = backend.requests();
        let r = send_raw(sg.http, request.as_bytes().to_vec()).await;
        assert_eq!(r.status, Some(400), "{name}: {r:?}");
        assert_eq!(
            backend.requests(),
            before,
            "{name}: the backend saw a request it must never see"
        );
        assert_still_serves(&sg, &backend, name).await;
    }
    assert!(
        backend
            .seen
            .last_headers
            .lock()
            .unwrap()
            .iter()
            .all(|(k, _)| k != "content-length" && k != "transfer-encoding"),
        "only the plain GETs reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_block_over_the_configured_limit_gets_431() {
    let (backend, sg) = one_shard("[limits]\nmax_header_bytes = 4096\n").await;

    // A 10 KB cookie.
    let big = format!(
        "GET /http-bind?room=a HTTP/1.1\r\nHost: meet.example.com\r\nCookie: c={}\r\n\r\n",
        "x".repeat(10 * 1024)
    );
    let r = send_raw(sg.http, big.into_bytes()).await;
    assert_eq!(r.status, Some(431), "{r:?}");
    assert_eq!(
        backend.requests(),
        0,
        "the backend saw the oversized request"
    );
    assert_still_serves(&sg, &backend, "a 10 KB cookie").await;

    // The limit counts the whole block: request line, headers and the blank line. A block of
    // exactly 4096 bytes is the largest accepted, one more byte is refused.
    let fixed = "GET /http-bind?room=a HTTP/1.1\r\nHost: meet.example.com\r\nConnection: close\r\nCookie: c=\r\n\r\n";
    let sized = |total: usize| {
        let req = format!(
            "GET /http-bind?room=a HTTP/1.1\r\nHost: meet.example.com\r\nConnection: close\r\nCookie: c={}\r\n\r\n",
            "y".repeat(total - fixed.len())
        );
        assert_eq!(req.len(), total);
        req.into_bytes()
    };
    let before = backend.requests();
    let r = send_raw(sg.http, sized(4000)).await;
    assert_eq!(r.status, Some(200), "a 4000-byte block: {r:?}");
    assert_eq!(r.body(), "shard-0\n");
    let r = send_raw(sg.http, sized(4096)).await;
    assert_eq!(r.status, Some(200), "a 4096-byte block: {r:?}");
    assert_eq!(backend.requests(), before + 2);
    // The cookie the backend got is the one sent, whole.
    let cookie = backend.seen.header("cookie");
    assert_eq!(cookie.len(), 1);
    assert!(cookie[0].starts_with("c=yyy"), "{cookie:?}");
    assert_eq!(
        cookie[0].len(),
        "c=".len() + 4096 - fixed.len(),
        "{cookie:?}"
    );
    let r = send_raw(sg.http, sized(4097)).await;
    assert_eq!(r.status, Some(431), "a 4097-byte block: {r:?}");
    assert_eq!(
        backend.requests(),
        before + 2,
        "the backend saw the 4097-byte block"
    );
    assert_still_serves(&sg, &backend, "a 4097-byte block").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_limit_refuses_40k_and_huge_headers_and_keeps_serving() {
    let (backend, mut sg) = one_shard("").await;

    // Default limit is 32 KiB: 30 000 bytes pass, 40 000 get 431.
    let with_header = |n: usize| {
        format!(
            "GET /http-bind?room=a HTTP/1.1\r\nHost: meet.example.com\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
            "z".repeat(n)
        )
        .into_bytes()
    };
    let r = send_raw(sg.http, with_header(30_000)).await;
    assert_eq!(
        r.status,
        Some(200),
        "a 30 KB header under the default: {r:?}"
    );
    assert_eq!(backend.requests(), 1);
    let r = send_raw(sg.http, with_header(40_000)).await;
    assert_eq!(r.status, Some(431), "a 40 KB header: {r:?}");
    assert_eq!(backend.requests(), 1, "the backend saw the 40 KB header");
    assert_still_serves(&sg, &backend, "a 40 KB header").await;

    // ~2 MB: past pingora's own 1 MiB header buffer. A 4xx or a closed connection, never a
    // success and never a backend request.
    let before = backend.requests();
    let r = send_raw(sg.http, with_header(2 * 1024 * 1024)).await;
    match r.status {
        Some(s) => assert!((400..500).contains(&s), "a 2 MB header: {s}: {r:?}"),
        None => assert!(
            r.text.is_empty(),
            "no status line but bytes came back (stopped by {:?}): {:?}",
            r.error,
            r.text
        ),
    }
    assert_eq!(
        backend.requests(),
        before,
        "the backend saw the 2 MB header"
    );
    assert!(
        sg.child.try_wait().unwrap().is_none(),
        "shardgate exited after a 2 MB header"
    );
    assert_still_serves(&sg, &backend, "a 2 MB header").await;
    // Several at once, concurrently, do not take it down either.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let addr = sg.http;
        let req = with_header(2 * 1024 * 1024);
        tasks.push(tokio::spawn(async move { send_raw(addr, req).await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(
            r.status.is_none_or(|s| (400..500).contains(&s)),
            "concurrent 2 MB header: {r:?}"
        );
    }
    assert_eq!(backend.requests(), before + 1);
    assert!(sg.child.try_wait().unwrap().is_none());
    assert_still_serves(&sg, &backend, "four concurrent 2 MB headers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_reach_the_backend() {
    let (backend, sg) = one_shard("").await;

    let r = send_raw(
        sg.http,
        b"GET /http-bind?room=xff HTTP/1.1\r\nHost: meet.example.com:8443\r\nX-Forwarded-For: 198.51.100.7\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(r.status, Some(200), "{r:?}");
    assert_eq!(r.header("x-shard"), vec!["shard-0"], "{r:?}");
    backend
        .seen
        .assert_forwarded("198.51.100.7, 127.0.0.1", "http", "meet.example.com:8443");

    // Without a list from the client: just the client. Spoofed proto/host are replaced, not
    // passed along next to the edge's own.
    let r = send_raw(
        sg.http,
        b"GET /http-bind?room=xff HTTP/1.1\r\nHost: meet.example.com\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(r.status, Some(200), "{r:?}");
    backend
        .seen
        .assert_forwarded("127.0.0.1", "http", "meet.example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_split_over_two_lines_keeps_every_hop() {
    // RFC 9110 5.3: several field lines are one comma-joined list; a proxy appends to the list.
    let (backend, sg) = one_shard("").await;
    let r = send_raw(
        sg.http,
        b"GET /http-bind?room=xff HTTP/1.1\r\nHost: meet.example.com\r\nX-Forwarded-For: 198.51.100.7\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(r.status, Some(200), "{r:?}");
    assert_eq!(
        backend.seen.header("x-forwarded-for").join(", "),
        "198.51.100.7, 203.0.113.9, 127.0.0.1",
        "every hop the client listed, then the client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_route_answers_at_the_edge_and_unmatched_host_is_404() {
    let backend = Backend::start("shard-0").await;
    let (head, http, admin) = config_head(TOKEN);
    let config = format!(
        "{head}{}\
[[route]]\npath_prefix = \"/about/health\"\nrespond = {{ status = 200, body = \"fine\" }}\n\n\
[[route]]\nhost = \"a.example\"\nshard = {{ pool = \"shards\" }}\n",
        shard_pool("shards", &[&backend])
    );
    let sg = Shardgate::start(&config, http, admin);

    let get_host = |host: &str, path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
    };
    // The fixed answer, for any host, before the shard route.
    for host in ["a.example", "b.example"] {
        let r = send_raw(sg.http, get_host(host, "/about/health")).await;
        assert_eq!(r.status, Some(200), "{host}: {r:?}");
        assert_eq!(r.body(), "fine", "{host}: {r:?}");
        assert_eq!(r.header("content-type"), vec!["text/plain; charset=utf-8"]);
        assert_eq!(r.header("content-length"), vec!["4"]);
    }
    assert_eq!(
        backend.requests(),
        0,
        "the backend saw a fixed-answer request"
    );

    // Another host has no route.
    let r = send_raw(sg.http, get_host("b.example", "/http-bind?room=x")).await;
    assert_eq!(r.status, Some(404), "{r:?}");
    assert_eq!(r.body(), "no route for this host and path\n");
    assert_eq!(backend.requests(), 0, "the backend saw an unrouted request");

    // The route's host matches without port and case-insensitively.
    for host in ["a.example", "A.Example:8080"] {
        let r = send_raw(sg.http, get_host(host, "/http-bind?room=x")).await;
        assert_eq!(r.status, Some(200), "{host}: {r:?}");
        assert_eq!(r.body(), "shard-0\n", "{host}: {r:?}");
    }
    assert_eq!(backend.requests(), 2);

    let m = metrics(&sg).await;
    assert_eq!(rejected(&m, "no_route"), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_requests_are_counted_by_reason() {
    let (backend, sg) = one_shard("[limits]\nmax_header_bytes = 4096\n").await;
    let m = metrics(&sg).await;
    for reason in [
        "duplicate_content_length",
        "content_length_and_transfer_encoding",
        "missing_host",
        "header_too_large",
    ] {
        assert_eq!(
            rejected(&m, reason),
            0.0,
            "{reason} before any request: {m}"
        );
    }

    let send = |req: &str| send_raw(sg.http, req.as_bytes().to_vec());
    for _ in 0..2 {
        let r = send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc").await;
        assert_eq!(r.status, Some(400), "{r:?}");
    }
    let r = send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc")
        .await;
    assert_eq!(r.status, Some(400), "{r:?}");
    let r = send(
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, Some(400), "{r:?}");
    let r = send("GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, Some(400), "{r:?}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nCookie: {}\r\n\r\n",
        "c".repeat(5000)
    );
    let r = send(&big).await;
    assert_eq!(r.status, Some(431), "{r:?}");
    assert_eq!(backend.requests(), 0);

    let m = metrics(&sg).await;
    assert_eq!(rejected(&m, "duplicate_content_length"), 3.0, "{m}");
    assert_eq!(
        rejected(&m, "content_length_and_transfer_encoding"),
        1.0,
        "{m}"
    );
    assert_eq!(rejected(&m, "missing_host"), 1.0, "{m}");
    assert_eq!(rejected(&m, "header_too_large"), 1.0, "{m}");
    // A good request is not counted as rejected.
    assert_still_serves(&sg, &backend, "the rejected ones").await;
    let after = metrics(&sg).await;
    let total = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with("shardgate_rejected_requests_total{"))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum::<f64>()
    };
    assert_eq!(total(&after), 6.0, "{after}");
}
