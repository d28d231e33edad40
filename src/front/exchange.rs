//! One proxied HTTP/1.1 request: the shard chosen (and a refusing shard avoided once), the
//! head and body sent, the response head read (interim ones passed on), the body relayed with
//! the framing the client's connection needs, or, after a 101, the WebSocket tunnel. A request
//! whose body came whole with its head is sent in one write and, if a kept-alive connection
//! turns out closed by its shard before answering, sent again on a new one.

use super::io::{read_some_within, write_within, SCRATCH};
use super::shards::Key;
use super::tunnel::{self, Close};
use super::Front;
use crate::http1::chunked::Chunked;
use crate::http1::forward::{self, ToClient};
use crate::http1::response::{self, MAX_HEAD};
use crate::http1::{Body, MAX_HEADERS};
use crate::metrics::status_class;
use crate::proxy::choice::{self, Wanted};
use crate::routing::Shard;
use crate::runtime::Runtime;
use crate::state::InFlight;
use pingora::server::ShutdownWatch;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

/// A request to proxy, as decided from its head.
pub struct Exchange {
    pub runtime: Arc<Runtime>,
    pub route: usize,
    pub pool: usize,
    pub room: Option<String>,
    pub instance: Option<Arc<Shard>>,
    /// The head to send to the shard.
    pub head: Vec<u8>,
    /// Length of the client's head at the start of the connection's buffer.
    pub head_len: usize,
    pub body: Body,
    pub keep_alive: bool,
    pub http10: bool,
    pub head_request: bool,
    pub websocket: bool,
    pub expect_continue: bool,
    pub cors_origin: Option<String>,
}

/// How an exchange ended.
enum Outcome {
    /// A response was passed on; the client's connection may carry another request.
    Done { status: u16, keep: bool },
    /// The shard accepted a WebSocket upgrade and its 101 was passed on.
    Tunnel(Box<Tunnel>),
    /// Nothing was passed on: the edge answers with this status and reason.
    Failed { status: u16, why: String },
    /// The client's connection cannot go on (either side failed mid-response, or the room
    /// moved while its shard held the request).
    Aborted { status: Option<u16> },
}

/// Which side of a copy failed.
enum Fail {
    Src(io::Error),
    Dst(io::Error),
    Framing(&'static str),
}

/// What follows an exchange on the client's connection.
pub enum Ended {
    /// Whether the connection carries another request.
    Keep(bool),
    /// A WebSocket tunnel, run once the request's own state is gone.
    Tunnel(Box<Tunnel>),
}

/// Proxies one request.
pub async fn run<C>(
    front: &Front,
    client: &mut C,
    buf: &mut Vec<u8>,
    mut x: Exchange,
    shutdown: &ShutdownWatch,
) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin + Send + ?Sized,
{
    let _in_flight = InFlight::new(front.shared.clone());
    let started = Instant::now();
    buf.drain(..x.head_len);
    // A body that came whole with the head goes in the same write.
    let whole = whole_body(buf, x.body);
    let mut head = std::mem::take(&mut x.head);
    if let Some(n) = whole {
        head.extend_from_slice(&buf[..n]);
        buf.drain(..n);
    }
    if buf.is_empty() {
        // Nothing pipelined: no buffer kept while the shard holds the request.
        *buf = Vec::new();
    }
    let runtime = x.runtime.clone();
    let pool = &runtime.pools[x.pool];
    let idle = runtime.config.timeouts.idle;
    let mut shard_name: Option<Arc<str>> = None;
    let outcome = proxy(
        front,
        client,
        buf,
        &x,
        &mut head,
        whole.is_some(),
        &mut shard_name,
        shutdown,
    )
    .await;
    let mut tunnel = None;
    let (status, keep) = match outcome {
        Outcome::Done { status, keep } => (Some(status), keep),
        Outcome::Tunnel(t) => {
            tunnel = Some(t);
            (Some(101), false)
        }
        Outcome::Aborted { status } => (status, false),
        Outcome::Failed { status, why } => {
            let mut out = Vec::with_capacity(200);
            let body = format!("{why}\n");
            let plain = "text/plain; charset=utf-8";
            forward::local_response(status, plain, &[], body.as_bytes(), true, &mut out);
            if x.head_request {
                out.truncate(out.len() - body.len());
            }
            let _ = write_within(client, &out, idle).await;
            (Some(status), false)
        }
    };
    let m = &front.shared.metrics;
    let route = &runtime.routes.routes[x.route].label;
    let shard = shard_name.as_deref().unwrap_or("-");
    m.requests
        .with_label_values(&[route, &pool.name, shard, status_class(status)])
        .inc();
    match tunnel {
        Some(t) => Ended::Tunnel(t),
        None => {
            if shard_name.is_some() {
                m.upstream_latency
                    .with_label_values(&[&pool.name])
                    .observe(started.elapsed().as_secs_f64());
            }
            Ended::Keep(keep)
        }
    }
}

fn timed_out(front: &Front, kind: &str) {
    front
        .shared
        .metrics
        .timeouts
        .with_label_values(&[kind])
        .inc();
}

/// Bytes of the body at the start of `buf`, when all of it is there.
fn whole_body(buf: &[u8], body: Body) -> Option<usize> {
    match body {
        Body::None => Some(0),
        Body::Length(n) => (buf.len() as u64 >= n).then_some(n as usize),
        Body::Chunked => {
            let mut c = Chunked::default();
            let n = c.feed(buf, |_| {}).ok()?;
            c.is_done().then_some(n)
        }
        Body::Close => None,
    }
}

/// This request's connection to its shard in its room's registry, until dropped.
struct Registered<'a> {
    pool: &'a Arc<crate::routing::Pool>,
    room: &'a str,
    id: u64,
    /// Handed over to a tunnel, which closes it.
    handed: bool,
}

impl Registered<'_> {
    fn hand_over(mut self) -> Registration {
        self.handed = true;
        Registration {
            pool: self.pool.clone(),
            room: self.room.to_owned(),
            id: self.id,
        }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if !self.handed {
            self.pool.conn_closed(self.room, self.id);
        }
    }
}

/// A tunnel's connection in its room's registry, until dropped.
struct Registration {
    pool: Arc<crate::routing::Pool>,
    room: String,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.pool.conn_closed(&self.room, self.id);
    }
}

/// A WebSocket tunnel after its 101: what it needs, and nothing of the request.
pub struct Tunnel {
    conn: super::shards::ShardConn,
    /// Bytes that came before the tunnel: from the client, from the shard.
    early: (Vec<u8>, Vec<u8>),
    quiet: Duration,
    close: Arc<Close>,
    _registration: Option<Registration>,
    _in_flight: InFlight,
}

impl Tunnel {
    /// Copies both ways until either side closes, the tunnel is quiet or stuck for its
    /// timeout, or its room moves.
    pub async fn run<C>(mut self, front: &Front, client: &mut C)
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + ?Sized,
    {
        let m = &front.shared.metrics;
        m.tunnels_open.inc();
        let early = std::mem::take(&mut self.early);
        let end = tunnel::run(client, &mut self.conn, early, self.quiet, &self.close.0).await;
        m.tunnels_open.dec();
        match end {
            tunnel::End::Quiet => timed_out(front, "tunnel_quiet"),
            tunnel::End::Stuck => timed_out(front, "tunnel_stuck"),
            tunnel::End::Closed | tunnel::End::Moved => {}
        }
        debug!(?end, "tunnel ended");
    }
}

#[allow(clippy::too_many_arguments)]
async fn proxy<C>(
    front: &Front,
    client: &mut C,
    buf: &mut Vec<u8>,
    x: &Exchange,
    head: &mut Vec<u8>,
    whole: bool,
    shard_name: &mut Option<Arc<str>>,
    shutdown: &ShutdownWatch,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin + Send + ?Sized,
{
    let runtime = &x.runtime;
    let pool = &runtime.pools[x.pool];
    let t = &runtime.config.timeouts;
    let mut failed = None;
    let mut refusals = 0;
    let mut fresh_only = false;
    loop {
        // Choose and connect.
        let want = Wanted {
            room: x.room.as_deref(),
            instance: x.instance.as_ref(),
            failed,
        };
        let shard = match choice::choose(&front.shared, pool, &want) {
            Ok(s) => s,
            Err(mut why) => {
                if let (Some(name), true) = (shard_name.as_ref(), failed.is_some()) {
                    why = format!("{why} (shard {name} refused the connection)");
                }
                return Outcome::Failed { status: 503, why };
            }
        };
        *shard_name = Some(shard.name.clone());
        let Some(addr) = shard.next_addr() else {
            return Outcome::Failed {
                status: 503,
                why: format!(
                    "shard {} of pool {} has no address right now",
                    shard.name, pool.name
                ),
            };
        };
        let tls = front.shared.upstream_tls.load();
        let identity = (!tls.is_empty()).then(|| tls.get(&*pool.name)).flatten();
        let key = Key {
            addr,
            tls: identity.map(|i| (pool.name.clone(), i.material_hash())),
        };
        let kept = (!fresh_only && !x.websocket)
            .then(|| front.shards.take(&key))
            .flatten();
        let reused = kept.is_some();
        let mut conn = match kept {
            Some(c) => c,
            // Boxed: the connect's state (about 2 KB) only lives while it connects.
            None => match Box::pin(front.shards.connect(
                addr,
                identity.map(|i| i.peer(addr)),
                t.connect,
            ))
            .await
            {
                Ok(c) => c,
                Err(e) => {
                    failed = choice::refused(&front.shared, pool, &shard, &e);
                    refusals += 1;
                    if refusals >= 2 {
                        return Outcome::Failed {
                            status: 503,
                            why: format!(
                                "shard {} of pool {} is unreachable",
                                shard.name, pool.name
                            ),
                        };
                    }
                    continue;
                }
            },
        };
        let close = Close::new();
        let registered = x.room.as_deref().map(|room| Registered {
            pool,
            room,
            id: pool.conn_opened(room, shard.name.clone(), close.clone()),
            handed: false,
        });
        // A kept-alive connection the shard closed meanwhile fails before any answer: then
        // a request that can be sent again is, on a new connection.
        let retry = reused && whole;
        if let Err(e) = write_within(&mut conn, head, t.idle).await {
            if retry {
                fresh_only = true;
                continue;
            }
            debug!(shard = %shard.name, error = %e, "writing the request to the shard failed");
            return Outcome::Failed {
                status: 502,
                why: format!("shard {} failed to answer", shard.name),
            };
        }
        if !retry {
            // Sent, and never sent again: not kept while the shard holds the request.
            *head = Vec::new();
        }
        if !whole {
            let go_on = b"HTTP/1.1 100 Continue\r\n\r\n";
            if x.expect_continue && write_within(client, go_on, t.idle).await.is_err() {
                return Outcome::Aborted { status: None };
            }
            // Boxed, like the other long copies: a held request or a tunnel keeps only the
            // state it waits in.
            let copied = Box::pin(copy_body(
                client,
                &mut conn,
                buf,
                Vec::new(),
                x.body,
                false,
                t.idle,
            ));
            match copied.await {
                Ok(()) => {}
                Err(Fail::Src(e)) => {
                    if e.kind() == io::ErrorKind::TimedOut {
                        timed_out(front, "request_body");
                    }
                    debug!(error = %e, "reading the request body from the client failed");
                    return Outcome::Aborted { status: None };
                }
                Err(Fail::Framing(why)) => {
                    debug!(why, "bad chunked request body");
                    return Outcome::Failed {
                        status: 400,
                        why: "bad request body".into(),
                    };
                }
                Err(Fail::Dst(e)) => {
                    if e.kind() == io::ErrorKind::TimedOut {
                        timed_out(front, "shard_write");
                    }
                    debug!(shard = %shard.name, error = %e, "sending the request body failed");
                    return Outcome::Failed {
                        status: 502,
                        why: format!("shard {} failed to answer", shard.name),
                    };
                }
            }
        }
        // The response head (interim ones passed on).
        let mut rbuf: Vec<u8> = Vec::new();
        let resp = loop {
            if !rbuf.is_empty() {
                match response_head(&rbuf, x, shutdown) {
                    Ok(Some(h)) if h.status < 200 && h.status != 101 => {
                        rbuf.drain(..h.len);
                        if write_within(client, &h.out, t.idle).await.is_err() {
                            return Outcome::Aborted { status: None };
                        }
                        continue;
                    }
                    Ok(Some(h)) => break h,
                    Ok(None) => {}
                    Err(why) => {
                        debug!(shard = %shard.name, why = why.0, "bad response from the shard");
                        return Outcome::Failed {
                            status: 502,
                            why: format!("shard {} sent an invalid response", shard.name),
                        };
                    }
                }
            }
            let read = tokio::select! {
                r = read_some_within(&mut conn, &mut rbuf, MAX_HEAD + 1, t.idle) => r,
                _ = close.0.notified() => {
                    debug!(room = x.room.as_deref(), "request ended: its room moved to another shard");
                    return Outcome::Aborted { status: None };
                }
            };
            match read {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    timed_out(front, "response");
                    return Outcome::Failed {
                        status: 504,
                        why: "shard timed out".into(),
                    };
                }
                _ if retry && rbuf.is_empty() => break Head::retry(),
                _ => {
                    return Outcome::Failed {
                        status: 502,
                        why: format!("shard {} failed to answer", shard.name),
                    }
                }
            }
        };
        if resp.len == 0 {
            fresh_only = true;
            continue;
        }
        if retry {
            *head = Vec::new();
        }
        rbuf.drain(..resp.len);
        if resp.websocket && x.websocket {
            if write_within(client, &resp.out, t.idle).await.is_err() {
                return Outcome::Aborted { status: Some(101) };
            }
            return Outcome::Tunnel(Box::new(Tunnel {
                conn,
                early: (std::mem::take(buf), rbuf),
                quiet: t.tunnel,
                close,
                _registration: registered.map(Registered::hand_over),
                _in_flight: InFlight::new(front.shared.clone()),
            }));
        }
        if resp.status == 101 {
            // A switch the client did not ask for: nothing sane can follow.
            return Outcome::Failed {
                status: 502,
                why: format!("shard {} switched protocols unasked", shard.name),
            };
        }
        let dechunk = x.http10 && resp.body == Body::Chunked;
        let copied = Box::pin(copy_body(
            &mut conn, client, &mut rbuf, resp.out, resp.body, dechunk, t.idle,
        ));
        return match copied.await {
            Ok(()) => {
                if resp.shard_keeps && rbuf.is_empty() {
                    front.shards.give(key, conn, t.keepalive);
                }
                Outcome::Done {
                    status: resp.status,
                    keep: resp.client_keeps,
                }
            }
            Err(e) => {
                let (side, error) = match e {
                    Fail::Src(e) => {
                        if e.kind() == io::ErrorKind::TimedOut {
                            timed_out(front, "response");
                        }
                        ("shard", e.to_string())
                    }
                    Fail::Dst(e) => {
                        if e.kind() == io::ErrorKind::TimedOut {
                            timed_out(front, "client_write");
                        }
                        ("client", e.to_string())
                    }
                    Fail::Framing(why) => ("shard", why.to_owned()),
                };
                debug!(side, %error, "response ended early");
                Outcome::Aborted {
                    status: Some(resp.status),
                }
            }
        };
    }
}

/// A response head as passed on to the client.
struct Head {
    status: u16,
    /// The head for the client.
    out: Vec<u8>,
    /// Its length in the shard's bytes (0: none came; send the request again).
    len: usize,
    body: Body,
    shard_keeps: bool,
    client_keeps: bool,
    websocket: bool,
}

impl Head {
    fn retry() -> Head {
        Head {
            status: 0,
            out: Vec::new(),
            len: 0,
            body: Body::None,
            shard_keeps: false,
            client_keeps: false,
            websocket: false,
        }
    }
}

fn response_head(
    rbuf: &[u8],
    x: &Exchange,
    shutdown: &ShutdownWatch,
) -> Result<Option<Head>, response::BadResponse> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Some(resp) = response::parse(rbuf, &mut storage, x.head_request)? else {
        return Ok(None);
    };
    let dechunk = x.http10 && resp.body == Body::Chunked;
    let client_keeps = x.keep_alive && resp.body != Body::Close && !dechunk && !*shutdown.borrow();
    let to = ToClient {
        keep_alive: client_keeps,
        http10: x.http10,
        dechunk,
        cors_origin: x.cors_origin.as_deref(),
    };
    let mut out = Vec::with_capacity(resp.head_len + 64);
    forward::response_head(&resp, &to, &mut out);
    Ok(Some(Head {
        status: resp.status,
        out,
        len: resp.head_len,
        body: resp.body,
        shard_keeps: resp.keep_alive,
        client_keeps,
        websocket: resp.websocket,
    }))
}

/// Copies one body from `src` to `dst`, after writing `out` (a head) with its first bytes.
/// `pre` holds bytes already read from `src`; those past the body stay there.
async fn copy_body<R, W>(
    src: &mut R,
    dst: &mut W,
    pre: &mut Vec<u8>,
    mut out: Vec<u8>,
    body: Body,
    dechunk: bool,
    idle: Duration,
) -> Result<(), Fail>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut left = match body {
        Body::Length(n) => n,
        _ => 0,
    };
    let mut chunked = Chunked::default();
    let mut ranges = Vec::new();
    loop {
        let done = match body {
            Body::None => true,
            Body::Length(_) => {
                let take = (left.min(pre.len() as u64)) as usize;
                out.extend_from_slice(&pre[..take]);
                pre.drain(..take);
                left -= take as u64;
                left == 0
            }
            Body::Chunked => {
                ranges.clear();
                let used = chunked
                    .feed(pre, |r| {
                        if dechunk {
                            ranges.push(r)
                        }
                    })
                    .map_err(|e| Fail::Framing(e.0))?;
                if dechunk {
                    for r in ranges.iter() {
                        out.extend_from_slice(&pre[r.clone()]);
                    }
                } else {
                    out.extend_from_slice(&pre[..used]);
                }
                pre.drain(..used);
                chunked.is_done()
            }
            Body::Close => {
                out.extend_from_slice(pre);
                pre.clear();
                false
            }
        };
        if !out.is_empty() {
            write_within(dst, &out, idle).await.map_err(Fail::Dst)?;
            out.clear();
        }
        if done {
            return Ok(());
        }
        let max = match body {
            Body::Length(_) => left.min(SCRATCH as u64) as usize,
            _ => SCRATCH,
        };
        match read_some_within(src, pre, max, idle).await {
            Ok(0) if body == Body::Close => return Ok(()),
            Ok(0) => return Err(Fail::Src(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) => return Err(Fail::Src(e)),
        }
    }
}
