//! One client connection over HTTP/1.1: request heads read under their deadline (and their
//! size limit, as they grow), each request decided by the pure code of `crate::http1` and
//! `crate::routing`, then answered here, proxied ([`super::exchange`]) or handed to pingora
//! (the SFU's routes). Between requests the connection holds no buffer.

use super::exchange::{self, Exchange};
use super::io::{read_some, write_within};
use super::Front;
use crate::http1::{forward, request, Reject, MAX_HEADERS};
use crate::metrics::status_class;
use crate::proxy::cors::{self, CorsDecision, CorsRequest};
use crate::routing::{find_instance, path_segment, room_key, Action};
use crate::runtime::Runtime;
use pingora::server::ShutdownWatch;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

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
    content_type: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    head_len: usize,
    keep_alive: bool,
    route: Arc<str>,
    reason: Option<&'static str>,
    /// The request was HEAD: the head only (Content-Length still says the body's size).
    head_only: bool,
}

pub async fn serve<C>(
    front: &Front,
    client: &mut C,
    who: &Client,
    shutdown: &ShutdownWatch,
) -> Served
where
    C: AsyncRead + AsyncWrite + Unpin + Send + ?Sized,
{
    let mut buf: Vec<u8> = Vec::new();
    let mut first = true;
    let accepted = Instant::now();
    loop {
        let runtime = front.shared.runtime.load_full();
        let t = &runtime.config.timeouts;
        let max_head = runtime.config.limits.max_header_bytes;
        // The head's deadline runs from the connection (first request) or from the first byte
        // of the next one; before that byte, the keep-alive timeout applies.
        let mut head_deadline = (first || !buf.is_empty()).then(|| {
            if first {
                accepted + t.request_head
            } else {
                Instant::now() + t.request_head
            }
        });
        let step = loop {
            if !buf.is_empty() {
                match decide(&runtime, &buf, who) {
                    Step::More => {}
                    step => break step,
                }
            }
            // Shutting down: an idle connection still gets LINGER for a request already on its
            // way (answered with Connection: close), then closes; closing it at once would
            // fail a request the client sent in the same instant.
            let stopping = *shutdown.borrow();
            let wait = match head_deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None if stopping => LINGER.min(t.keepalive),
                None => t.keepalive,
            };
            let mut stop = shutdown.clone();
            let room = max_head + 1 - buf.len().min(max_head);
            let read = tokio::select! {
                r = tokio::time::timeout(wait, read_some(client, &mut buf, room)) => r,
                _ = stop.changed(), if head_deadline.is_none() && !stopping => continue,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return Served::Closed,
                Ok(Ok(_)) => {
                    if head_deadline.is_none() {
                        head_deadline = Some(Instant::now() + t.request_head);
                    }
                }
                Err(_) if head_deadline.is_none() => return Served::Closed,
                Err(_) => {
                    front
                        .shared
                        .metrics
                        .timeouts
                        .with_label_values(&["request_head"])
                        .inc();
                    let late =
                        Reject::new(408, "request_head_timeout", "request head took too long\n");
                    let _ = Box::pin(reject(front, client, late, t.idle)).await;
                    return Served::Closed;
                }
            }
        };
        first = false;
        match step {
            Step::More => unreachable!("the loop above only ends on a complete head"),
            Step::Reject(r) => {
                let _ = Box::pin(reject(front, client, r, t.idle)).await;
                return Served::Closed;
            }
            Step::HandOff => return Served::HandOff(buf),
            Step::Respond(local) => {
                buf.drain(..local.head_len);
                let keep = local.keep_alive && !*shutdown.borrow();
                let answered = Box::pin(respond(front, client, &local, keep, t.idle)).await;
                if answered.is_err() || !keep {
                    return Served::Closed;
                }
            }
            Step::Proxy(x) => {
                // Boxed: a connection waiting for its next request holds no exchange's state.
                let keep = Box::pin(exchange::run(front, client, &mut buf, *x, shutdown)).await;
                if !keep {
                    return Served::Closed;
                }
            }
        }
        if buf.is_empty() && buf.capacity() > 0 {
            buf = Vec::new();
        }
    }
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
    let mut out = Vec::with_capacity(200 + local.body.len());
    forward::local_response(
        local.status,
        &local.content_type,
        &headers,
        &local.body,
        !keep,
        &mut out,
    );
    if local.head_only {
        out.truncate(out.len() - local.body.len());
    }
    write_within(client, &out, limit).await
}

fn text(
    status: u16,
    body: &str,
    head_len: usize,
    route: &Arc<str>,
    reason: Option<&'static str>,
) -> Step {
    Step::Respond(Local {
        status,
        content_type: "text/plain; charset=utf-8".into(),
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
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
                content_type: "text/plain".into(),
                headers,
                body: Vec::new(),
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
                content_type: r.content_type.clone(),
                headers: Vec::new(),
                body: r.body.as_bytes().to_vec(),
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
