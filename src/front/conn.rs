//! One client connection over HTTP/1.1: request heads read under their deadline (and their
//! size limit, as they grow), each request decided by the pure code of `crate::http1` and
//! `crate::routing`, then answered here, proxied ([`super::exchange`]) or handed to pingora
//! (the SFU's routes). Between requests the connection holds no buffer.

use super::exchange::{self, Exchange};
use super::io::{poll_read_with, read_some, write_within};
use super::Front;
use crate::http1::{forward, request, Reject, MAX_HEADERS};
use crate::metrics::status_class;
use crate::proxy::cors::{self, CorsDecision, CorsRequest};
use crate::routing::{find_instance, path_segment, room_key, Action};
use crate::runtime::Runtime;
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::futures::Notified;
use tokio::time::{Instant, Sleep};

/// How long an idle connection is kept once the process shuts down or hands over: shorter
/// than the wait before pingora's clean-up (`server::LINGER`, 2 s), after which the runtime
/// and any connection still on it are dropped.
const LINGER: Duration = Duration::from_secs(1);

/// What the connection is.
pub struct Client {
    pub ip: Option<IpAddr>,
    pub tls: bool,
}

/// How serving a connection ended.
pub enum Served {
    Closed,
    /// The rest belongs to pingora's HTTP service: these bytes were read already.
    HandOff(Vec<u8>),
}

/// What to do with a complete request head.
pub enum Step {
    More,
    Reject(Reject),
    Respond(Local),
    HandOff,
    Proxy(Box<Exchange>),
}

/// A response made at the edge.
pub struct Local {
    status: u16,
    body: LocalBody,
    headers: Vec<(&'static str, String)>,
    head_len: usize,
    keep_alive: bool,
    route: Arc<str>,
    reason: Option<&'static str>,
    /// The request was HEAD: the head only (Content-Length still says the body's size).
    head_only: bool,
}

/// The body of a local response: a fixed text, or a `respond` route's, shared with the config
/// rather than copied per request (a client that does not read it holds it only once).
enum LocalBody {
    Text(&'static str),
    Route(Arc<crate::config::Respond>),
}

impl LocalBody {
    fn content_type(&self) -> &str {
        match self {
            LocalBody::Text(_) => "text/plain; charset=utf-8",
            LocalBody::Route(r) => &r.content_type,
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            LocalBody::Text(t) => t.as_bytes(),
            LocalBody::Route(r) => r.body.as_bytes(),
        }
    }
}

/// Bodies up to this size go out in one write with their head; longer ones are written from
/// where they are.
const INLINE_BODY: usize = 4096;

/// Serves the connection accepted at `accepted` (its first request head is due
/// `timeouts.request_head` after that, a TLS handshake included). A plain function returning
/// an `async move` block, as [`wait`]: an `async fn` keeps a second copy of its arguments in
/// the connection's task for as long as it runs.
#[allow(clippy::manual_async_fn)]
pub fn serve<'a, C>(
    front: &'a Front,
    client: &'a mut C,
    who: &'a Client,
    accepted: Instant,
    shutdown: &'a ShutdownWatch,
) -> impl Future<Output = Served> + Send + 'a
where
    C: AsyncRead + AsyncWrite + Unpin + Send + ?Sized,
{
    // When the head of the request being waited for started to be due: the first one's from
    // the connection, a later one's from its first byte.
    let mut due = Some(accepted);
    async move {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            if buf.is_empty() {
                match wait(front, client, &mut buf, due, shutdown).await {
                    Waited::Bytes => {}
                    Waited::Closed => return Served::Closed,
                    Waited::Late => {
                        let _ = Box::pin(late(front, client)).await;
                        return Served::Closed;
                    }
                }
            }
            let started = due.take().unwrap_or_else(Instant::now);
            // Boxed: a connection waiting for its next request holds none of this state.
            match Box::pin(request(front, client, &mut buf, who, started, shutdown)).await {
                Next::Again => {}
                Next::Closed => return Served::Closed,
                Next::HandOff => return Served::HandOff(buf),
                Next::Tunnel(t) => {
                    // Boxed, and after the request's state is freed: an open tunnel holds
                    // only its sockets, its timer and what a side did not take yet.
                    Box::pin(t.run(front, client)).await;
                    return Served::Closed;
                }
            }
            if buf.is_empty() && buf.capacity() > 0 {
                buf = Vec::new();
            }
        }
    }
}

enum Waited {
    Bytes,
    Closed,
    /// The first request's head did not start within `request_head`.
    Late,
}

/// Waits for the first bytes of a request: `request_head` from `due` when given, else the
/// keep-alive timeout. This is the state an idle connection sleeps in: keep it small.
#[allow(clippy::manual_async_fn)]
fn wait<'a, C>(
    front: &'a Front,
    client: &'a mut C,
    buf: &'a mut Vec<u8>,
    due: Option<Instant>,
    shutdown: &'a ShutdownWatch,
) -> impl Future<Output = Waited> + Send + 'a
where
    C: AsyncRead + Unpin + Send + ?Sized,
{
    async move {
        loop {
            let (keepalive, request_head, max_head) = {
                let runtime = front.shared.runtime.load();
                let c = &runtime.config;
                (
                    c.timeouts.keepalive,
                    c.timeouts.request_head,
                    c.limits.max_header_bytes,
                )
            };
            // Made before the check below, so a shutdown in between still wakes it.
            let stop = front.stopping.notified();
            // Shutting down: an idle connection still gets LINGER for a request already on
            // its way (answered with Connection: close), then closes; closing it at once would
            // fail a request the client sent in the same instant.
            let stopping = *shutdown.borrow();
            let wait = match due {
                Some(t) => (t + request_head).saturating_duration_since(Instant::now()),
                None if stopping => LINGER.min(keepalive),
                None => keepalive,
            };
            let idle = Idle {
                client: &mut *client,
                buf: &mut *buf,
                max_head,
                watch: due.is_none() && !stopping,
                stop,
                timer: tokio::time::sleep(wait),
            };
            return match idle.await {
                None => continue,
                Some(Ok(0)) => Waited::Closed,
                Some(Ok(_)) => Waited::Bytes,
                Some(Err(e)) if e.kind() == io::ErrorKind::TimedOut && due.is_some() => {
                    Waited::Late
                }
                Some(Err(_)) => Waited::Closed,
            };
        }
    }
}

pin_project_lite::pin_project! {
    /// One poll over the read, the timer and the shutdown (smaller than `select!` over
    /// `timeout` and the watch's `changed`, or a closure over the same): `Some` with what the
    /// read gave (`TimedOut` when the timer fired first), `None` when the listeners closed.
    struct Idle<'a, C: ?Sized> {
        client: &'a mut C,
        buf: &'a mut Vec<u8>,
        max_head: usize,
        // Whether the shutdown ends the wait (only between requests, and once).
        watch: bool,
        #[pin]
        stop: Notified<'a>,
        #[pin]
        timer: Sleep,
    }
}

impl<C: AsyncRead + Unpin + ?Sized> Future for Idle<'_, C> {
    type Output = Option<io::Result<usize>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let buf = this.buf;
        let read = poll_read_with(&mut **this.client, cx, *this.max_head + 1, |data, _| {
            buf.extend_from_slice(data);
            data.len()
        });
        if let Poll::Ready(r) = read {
            return Poll::Ready(Some(r));
        }
        if *this.watch && this.stop.poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        match this.timer.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(io::ErrorKind::TimedOut.into()))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The length of HTTP/2's client connection preface (`PRI * HTTP/2.0...`, RFC 9113 3.4).
const H2_PREFACE_LEN: usize = 24;

/// The start of an HTTP/2 connection: its preface's bytes, read within `request_head` of
/// `accepted` (the deadline of an HTTP/1.1 connection's first head, which pingora's h2
/// handshake does not have). `None` when the client closed or was late (counted).
pub async fn h2_preface<C>(front: &Front, client: &mut C, accepted: Instant) -> Option<Vec<u8>>
where
    C: AsyncRead + Unpin + ?Sized,
{
    let limit = front.shared.runtime.load().config.timeouts.request_head;
    let mut buf = Vec::with_capacity(H2_PREFACE_LEN);
    while buf.len() < H2_PREFACE_LEN {
        let room = H2_PREFACE_LEN - buf.len();
        match tokio::time::timeout_at(accepted + limit, read_some(client, &mut buf, room)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
            Err(_) => {
                let m = &front.shared.metrics;
                m.timeouts.with_label_values(&["request_head"]).inc();
                return None;
            }
        }
    }
    Some(buf)
}

/// What follows a request.
enum Next {
    /// Wait for the next request on this connection.
    Again,
    Closed,
    /// The rest belongs to pingora's HTTP service.
    HandOff,
    /// A WebSocket tunnel, the last use of the connection.
    Tunnel(Box<exchange::Tunnel>),
}

/// Reads the rest of a request's head (due `request_head` after `started`), decides, and
/// answers, proxies or hands the request over.
async fn request<C>(
    front: &Front,
    client: &mut C,
    buf: &mut Vec<u8>,
    who: &Client,
    started: Instant,
    shutdown: &ShutdownWatch,
) -> Next
where
    C: AsyncRead + AsyncWrite + Unpin + Send + ?Sized,
{
    let runtime = front.shared.runtime.load_full();
    let t = &runtime.config.timeouts;
    let max_head = runtime.config.limits.max_header_bytes;
    let deadline = started + t.request_head;
    let step = loop {
        match decide(&runtime, buf, who) {
            Step::More => {}
            step => break step,
        }
        let room = max_head + 1 - buf.len().min(max_head);
        match tokio::time::timeout_at(deadline, read_some(client, buf, room)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Next::Closed,
            Ok(Ok(_)) => {}
            Err(_) => {
                let _ = late(front, client).await;
                return Next::Closed;
            }
        }
    };
    match step {
        Step::More => unreachable!("the loop above only ends on a complete head"),
        Step::Reject(r) => {
            let _ = reject(front, client, r, t.idle).await;
            Next::Closed
        }
        Step::HandOff => Next::HandOff,
        Step::Respond(local) => {
            buf.drain(..local.head_len);
            let keep = local.keep_alive && !*shutdown.borrow();
            let answered = respond(front, client, &local, keep, t.idle).await;
            if answered.is_err() || !keep {
                return Next::Closed;
            }
            Next::Again
        }
        Step::Proxy(x) => match exchange::run(front, client, buf, *x, shutdown).await {
            exchange::Ended::Keep(true) => Next::Again,
            exchange::Ended::Keep(false) => Next::Closed,
            exchange::Ended::Tunnel(t) => Next::Tunnel(t),
        },
    }
}

/// A request head that took longer than `request_head`: 408.
async fn late<C>(front: &Front, client: &mut C) -> io::Result<()>
where
    C: AsyncWrite + Unpin + ?Sized,
{
    front
        .shared
        .metrics
        .timeouts
        .with_label_values(&["request_head"])
        .inc();
    let idle = front.shared.runtime.load().config.timeouts.idle;
    let late = Reject::new(408, "request_head_timeout", "request head took too long\n");
    reject(front, client, late, idle).await
}

async fn reject<C>(front: &Front, client: &mut C, r: Reject, limit: Duration) -> io::Result<()>
where
    C: AsyncWrite + Unpin + ?Sized,
{
    let m = &front.shared.metrics;
    m.rejected.with_label_values(&[r.reason]).inc();
    m.requests
        .with_label_values(&["-", "-", "-", status_class(Some(r.status))])
        .inc();
    let mut out = Vec::with_capacity(160 + r.message.len());
    forward::local_response(
        r.status,
        "text/plain; charset=utf-8",
        &[],
        r.message.as_bytes(),
        true,
        &mut out,
    );
    write_within(client, &out, limit).await
}

async fn respond<C>(
    front: &Front,
    client: &mut C,
    local: &Local,
    keep: bool,
    limit: Duration,
) -> io::Result<()>
where
    C: AsyncWrite + Unpin + ?Sized,
{
    let m = &front.shared.metrics;
    if let Some(reason) = local.reason {
        m.rejected.with_label_values(&[reason]).inc();
    }
    m.requests
        .with_label_values(&[&local.route, "-", "-", status_class(Some(local.status))])
        .inc();
    let headers: Vec<(&str, &str)> = local
        .headers
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let body = local.body.bytes();
    let mut out = Vec::with_capacity(256 + body.len().min(INLINE_BODY));
    forward::local_response_head(
        local.status,
        local.body.content_type(),
        &headers,
        body.len(),
        !keep,
        &mut out,
    );
    let body = if local.head_only { &[][..] } else { body };
    if body.len() <= INLINE_BODY {
        out.extend_from_slice(body);
        return write_within(client, &out, limit).await;
    }
    write_within(client, &out, limit).await?;
    write_within(client, body, limit).await
}

fn text(
    status: u16,
    body: &'static str,
    head_len: usize,
    route: &Arc<str>,
    reason: Option<&'static str>,
) -> Step {
    Step::Respond(Local {
        status,
        headers: Vec::new(),
        body: LocalBody::Text(body),
        head_len,
        keep_alive: true,
        route: route.clone(),
        reason,
        head_only: false,
    })
}

/// A local answer as this request can take it: the connection kept only if the client allows
/// it and no body of its is still to come; no body for HEAD.
fn for_request(step: Step, req: &request::Request) -> Step {
    match step {
        Step::Respond(mut l) => {
            l.keep_alive &= req.keep_alive && req.body == crate::http1::Body::None;
            l.head_only = req.is_head();
            Step::Respond(l)
        }
        other => other,
    }
}

/// Decides what a request gets, from the head at the start of `buf` (pure but for the
/// placement a room choice may make later, in the exchange).
pub fn decide(runtime: &Arc<Runtime>, buf: &[u8], who: &Client) -> Step {
    let limits = &runtime.config.limits;
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let req = match request::parse(buf, &mut storage, limits.max_header_bytes) {
        Ok(None) => return Step::More,
        Err(r) => return Step::Reject(r),
        Ok(Some(req)) => req,
    };
    let Some(route_index) = runtime.routes.find(req.host, req.path) else {
        let step = text(
            404,
            "no route for this host and path\n",
            req.head_len,
            &Arc::from("-"),
            Some("no_route"),
        );
        return for_request(step, &req);
    };
    let route = &runtime.routes.routes[route_index];
    let local = |step: Step| for_request(step, &req);
    let cors_req = CorsRequest {
        options: req.method == "OPTIONS",
        origin: req.header("origin"),
        request_method: req.header("access-control-request-method").is_some(),
        request_headers: req.header("access-control-request-headers"),
    };
    let mut cors_origin = None;
    match cors::decide(route, &cors_req, req.websocket) {
        CorsDecision::Pass => {}
        CorsDecision::Allow(origin) => cors_origin = Some(origin),
        CorsDecision::Preflight(headers) => {
            return local(Step::Respond(Local {
                status: 204,
                headers,
                body: LocalBody::Text(""),
                head_len: req.head_len,
                keep_alive: true,
                route: route.label.clone(),
                reason: None,
                head_only: false,
            }))
        }
        CorsDecision::Refuse => {
            return local(text(
                403,
                "origin not allowed\n",
                req.head_len,
                &route.label,
                Some("origin_not_allowed"),
            ))
        }
    }
    let (pool, room, instance) = match &route.action {
        Action::Respond(r) => {
            return local(Step::Respond(Local {
                status: r.status,
                headers: Vec::new(),
                body: LocalBody::Route(r.clone()),
                head_len: req.head_len,
                keep_alive: true,
                route: route.label.clone(),
                reason: None,
                head_only: false,
            }))
        }
        Action::Sfu => return Step::HandOff,
        Action::Shard { pool, key } => {
            let room = room_key(req.path, req.query, *key);
            if room
                .as_ref()
                .is_some_and(|r| r.len() > limits.max_room_bytes)
            {
                return Step::Reject(Reject::new(400, "room_too_long", "room name too long\n"));
            }
            (*pool, room, None)
        }
        Action::Pool(pool) => (*pool, None, None),
        Action::Instance { pool, segment } => {
            let p = &runtime.pools[*pool];
            let form = p.instance_id.unwrap_or_default();
            let members = p.members.load();
            let found = path_segment(req.path, *segment)
                .and_then(|id| find_instance(&members, id, form))
                .map(|i| members.shards[i].clone());
            match found {
                Some(shard) => (*pool, None, Some(shard)),
                None => {
                    return local(text(
                        404,
                        "no such instance\n",
                        req.head_len,
                        &route.label,
                        Some("unknown_instance"),
                    ))
                }
            }
        }
    };
    let mut head = Vec::with_capacity(req.head_len + 160);
    let fwd = forward::Forwarding {
        client: who.ip,
        tls: who.tls,
        path: route.upstream_path(req.path),
    };
    forward::request_head(&req, &fwd, &mut head);
    Step::Proxy(Box::new(Exchange {
        runtime: runtime.clone(),
        route: route_index,
        pool,
        room,
        instance,
        head,
        head_len: req.head_len,
        body: req.body,
        keep_alive: req.keep_alive,
        http10: req.minor == 0,
        head_request: req.is_head(),
        websocket: req.websocket,
        expect_continue: req.expect_continue,
        cors_origin,
    }))
}
