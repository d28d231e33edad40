//! The edge's HTTP side on pingora, for HTTP/2 and the SFU's routes (HTTP/1.1 is served by
//! `crate::front`): one `ProxyHttp` whose filters stay thin and ask `routing` for every
//! decision. Does I/O (through pingora's sessions); all choices are made by
//! pure functions on one runtime snapshot loaded per request.
//!
//! Per request: check the header block (smuggling, size) -> match a route -> fixed answer, or
//! room key -> shard (sticky) or any shard -> connect (retry once on the next choice if the
//! shard refuses, marking it down) -> forward with X-Forwarded-* -> count.

pub mod choice;
pub mod cors;
pub mod headers;
pub mod upstream_tls;

use crate::metrics::status_class;
use crate::routing::{find_instance, path_segment, room_key, Action, Shard};
use crate::runtime::Runtime;
use crate::state::{InFlight, Shared};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::proxy::FailToProxy;
use std::sync::Arc;
use std::time::Instant;
use tracing::debug;

pub struct Edge {
    shared: Arc<Shared>,
}

impl Edge {
    pub fn new(shared: Arc<Shared>) -> Self {
        Edge { shared }
    }

    /// Chooses the shard for this request and says how to reach it.
    fn peer_for(&self, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let runtime = ctx.runtime.clone().expect("set by request_filter");
        let pool = &runtime.pools[ctx.pool.expect("only pool routes reach upstream_peer")];
        let want = choice::Wanted {
            room: ctx.room.as_deref(),
            instance: ctx.instance.as_ref(),
            failed: ctx.failed,
        };
        let shard = match choice::choose(&self.shared, pool, &want) {
            Ok(shard) => shard,
            Err(mut why) => {
                if let (Some(failed), true) = (&ctx.shard, ctx.failed.is_some()) {
                    why = format!("{why} (shard {} refused the connection)", failed.name);
                }
                ctx.refusal = Some(why.clone());
                return Error::e_explain(HTTPStatus(503), why);
            }
        };
        debug!(pool = %pool.name, shard = %shard.name, room = ctx.room.as_deref().unwrap_or("-"), "chosen");
        let timeouts = &runtime.config.timeouts;
        let Some(addr) = shard.next_addr() else {
            let why = format!(
                "shard {} of pool {} has no address right now",
                shard.name, pool.name
            );
            ctx.refusal = Some(why.clone());
            return Error::e_explain(HTTPStatus(503), why);
        };
        // Most configs have no upstream TLS: then no lookup by pool name per request.
        let tls = self.shared.upstream_tls.load();
        let mut peer = match (!tls.is_empty()).then(|| tls.get(&*pool.name)).flatten() {
            Some(identity) => identity.peer(addr),
            None => HttpPeer::new(addr, false, String::new()),
        };
        let inactivity = if ctx.upgrade {
            timeouts.tunnel
        } else {
            timeouts.idle
        };
        peer.options.connection_timeout = Some(timeouts.connect);
        peer.options.read_timeout = Some(inactivity);
        peer.options.write_timeout = Some(inactivity);
        peer.options.idle_timeout = Some(timeouts.keepalive);
        peer.options.alpn = ALPN::H1;
        ctx.shard = Some(shard);
        ctx.upstream_start = Some(Instant::now());
        Ok(Box::new(peer))
    }

    /// Marks the shard that refused this request's connection down (passive health) and says
    /// whether to retry once on the next choice.
    fn connect_failed(&self, ctx: &mut Ctx, e: &Error) -> bool {
        let (Some(runtime), Some(pool), Some(shard)) = (&ctx.runtime, ctx.pool, &ctx.shard) else {
            return false;
        };
        let pool = &runtime.pools[pool];
        ctx.failed = choice::refused(&self.shared, pool, shard, e);
        ctx.connect_failures += 1;
        if ctx.connect_failures < 2 {
            return true;
        }
        ctx.refusal = Some(format!(
            "shard {} of pool {} is unreachable",
            shard.name, pool.name
        ));
        false
    }
}

/// Per-request state.
pub struct Ctx {
    /// Counts this request as in flight until the context is dropped.
    _in_flight: InFlight,
    runtime: Option<Arc<Runtime>>,
    route: Option<usize>,
    pool: Option<usize>,
    room: Option<String>,
    shard: Option<Arc<Shard>>,
    /// Index of a shard that refused the connection; the retry avoids it.
    failed: Option<usize>,
    connect_failures: u8,
    upgrade: bool,
    upstream_start: Option<Instant>,
    /// Why no shard could take the request, for the 502/503 body.
    refusal: Option<String>,
    /// The member an instance route named.
    instance: Option<Arc<Shard>>,
    /// An allowed cross-origin request's Origin, echoed on the response.
    cors_origin: Option<String>,
}

/// The forwarding headers and the route's prefix strip, on the request as sent to the shard.
fn prepare_upstream_request(session: &Session, upstream: &mut RequestHeader, ctx: &Ctx) {
    let client = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    headers::add_forwarding(upstream, client, tls);
    if let (Some(runtime), Some(r)) = (&ctx.runtime, ctx.route) {
        let path = upstream.uri.path();
        if let Some(stripped) = runtime.routes.routes[r].upstream_path(path) {
            let new = match upstream.uri.query() {
                Some(q) => format!("{stripped}?{q}"),
                None => stripped.to_owned(),
            };
            if let Ok(uri) = new.parse::<http::Uri>() {
                upstream.set_uri(uri);
            }
        }
    }
}

async fn respond_text(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            _in_flight: InFlight::new(self.shared.clone()),
            runtime: None,
            route: None,
            pool: None,
            room: None,
            shard: None,
            failed: None,
            connect_failures: 0,
            upgrade: false,
            upstream_start: None,
            refusal: None,
            instance: None,
            cors_origin: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let runtime = self.shared.runtime.load_full();
        let limits = &runtime.config.limits;
        let timeouts = &runtime.config.timeouts;
        let raw = session.as_http1().map(|h1| h1.get_headers_raw_bytes());
        if let Err(reject) = headers::check_request(
            session.req_header(),
            raw.as_deref(),
            limits.max_header_bytes,
        ) {
            debug!(reason = reject.reason, "request rejected");
            self.shared
                .metrics
                .rejected
                .with_label_values(&[reject.reason])
                .inc();
            session.set_keepalive(None);
            respond_text(
                session,
                reject.status,
                "text/plain; charset=utf-8",
                Bytes::from_static(reject.message.as_bytes()),
            )
            .await?;
            return Ok(true);
        }
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(timeouts.keepalive.as_secs().max(1)));
        }
        ctx.upgrade = session.is_upgrade_req();
        session.set_read_timeout(Some(if ctx.upgrade {
            timeouts.tunnel
        } else {
            timeouts.idle
        }));

        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host());
        let path = req.uri.path();
        let Some(route_index) = runtime.routes.find(host, path) else {
            self.shared
                .metrics
                .rejected
                .with_label_values(&["no_route"])
                .inc();
            respond_text(
                session,
                404,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"no route for this host and path\n"),
            )
            .await?;
            return Ok(true);
        };
        ctx.route = Some(route_index);
        let route = &runtime.routes.routes[route_index];
        match cors::decide(route, &cors::CorsRequest::of(req), ctx.upgrade) {
            cors::CorsDecision::Pass => {}
            cors::CorsDecision::Allow(origin) => ctx.cors_origin = Some(origin),
            cors::CorsDecision::Preflight(headers) => {
                let resp = cors::preflight_response(&headers);
                session.write_response_header(resp, true).await?;
                ctx.runtime = Some(runtime);
                return Ok(true);
            }
            cors::CorsDecision::Refuse => {
                self.shared
                    .metrics
                    .rejected
                    .with_label_values(&["origin_not_allowed"])
                    .inc();
                respond_text(
                    session,
                    403,
                    "text/plain; charset=utf-8",
                    Bytes::from_static(b"origin not allowed\n"),
                )
                .await?;
                ctx.runtime = Some(runtime);
                return Ok(true);
            }
        }
        match &route.action {
            Action::Respond(r) => {
                let r = r.clone();
                respond_text(
                    session,
                    r.status,
                    &r.content_type,
                    Bytes::from(r.body.clone()),
                )
                .await?;
                ctx.runtime = Some(runtime);
                return Ok(true);
            }
            Action::Shard { pool, key } => {
                ctx.pool = Some(*pool);
                ctx.room = room_key(path, req.uri.query(), *key);
            }
            Action::Sfu => {
                let base = route.base().to_owned();
                crate::sfu::http::serve(session, &base, self.shared.sfu.get()).await?;
                ctx.runtime = Some(runtime);
                return Ok(true);
            }
            Action::Pool(pool) => ctx.pool = Some(*pool),
            Action::Instance { pool, segment } => {
                let p = &runtime.pools[*pool];
                let form = p.instance_id.unwrap_or_default();
                let members = p.members.load();
                let found = path_segment(path, *segment)
                    .and_then(|id| find_instance(&members, id, form))
                    .map(|i| members.shards[i].clone());
                let Some(index) = found else {
                    self.shared
                        .metrics
                        .rejected
                        .with_label_values(&["unknown_instance"])
                        .inc();
                    respond_text(
                        session,
                        404,
                        "text/plain; charset=utf-8",
                        Bytes::from_static(b"no such instance\n"),
                    )
                    .await?;
                    ctx.runtime = Some(runtime);
                    return Ok(true);
                };
                ctx.pool = Some(*pool);
                ctx.instance = Some(index);
            }
        }
        ctx.runtime = Some(runtime);
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        self.peer_for(ctx)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if self.connect_failed(ctx, &e) {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        prepare_upstream_request(session, upstream, ctx);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(origin) = &ctx.cors_origin {
            cors::add_allow(resp, origin);
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 && session.response_written().is_none() {
            // The connection is not reused after an error: say so, so clients do not race it.
            session.set_keepalive(None);
            let body = match (&ctx.refusal, code) {
                (Some(why), _) => format!("{why}\n"),
                (None, 502) => match &ctx.shard {
                    Some(s) => format!("shard {} failed to answer\n", s.name),
                    None => "bad gateway\n".to_owned(),
                },
                (None, 504) => "shard timed out\n".to_owned(),
                (None, 400) => "bad request\n".to_owned(),
                _ => format!("error {code}\n"),
            };
            let _ = respond_text(
                session,
                code,
                "text/plain; charset=utf-8",
                Bytes::from(body),
            )
            .await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// A client that hangs up mid-request is ordinary (a closed tab, the end of a load test):
    /// not an error worth a log line per connection.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        e.esource() == &ErrorSource::Downstream
            && matches!(e.etype(), ConnectionClosed | ReadError | WriteError)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map(|r| r.status.as_u16());
        let Some(runtime) = &ctx.runtime else { return };
        let route = ctx.route.map_or("-", |r| &runtime.routes.routes[r].label);
        let pool = ctx.pool.map_or("-", |p| &runtime.pools[p].name);
        let shard = ctx.shard.as_ref().map_or("-", |s| &s.name);
        let m = &self.shared.metrics;
        m.requests
            .with_label_values(&[route, pool, shard, status_class(status)])
            .inc();
        if let Some(start) = ctx.upstream_start {
            m.upstream_latency
                .with_label_values(&[pool])
                .observe(start.elapsed().as_secs_f64());
        }
    }
}
