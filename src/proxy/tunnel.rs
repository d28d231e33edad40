//! WebSocket (HTTP/1.1 Upgrade) tunnels, driven here instead of by pingora's proxy loop.
//!
//! pingora 0.9's loop runs the two halves of a request concurrently, and its upstream half can
//! take the upgrade request's end-of-body marker *after* the shard's 101, which it reads as "the
//! client is done" and ends a tunnel that just opened (pingora issue 946; about one tunnel in
//! 2,000 on a loaded machine). Here the handshake is sequential: the request goes out, the
//! response head comes back and is passed on, and only after a 101 are bytes copied both ways,
//! until either side closes, the tunnel has been quiet for `timeouts.tunnel`, or its room moved
//! to another shard ([`Close`]: the client reconnects to where the room is now). Connecting,
//! TLS and HTTP/1 framing are still pingora's (its connector and client session).

use super::{cors, prepare_upstream_request, Ctx, Edge};
use bytes::Bytes;
use pingora::connectors::http::v1::Connector;
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession as ShardSession;
use tracing::debug;

/// What woke the copy loop.
enum Event {
    FromClient(Result<Option<Bytes>>),
    FromShard(Result<Option<Bytes>>),
    Quiet,
    Moved,
}

/// A tunnel's way to be ended from outside: its room moved to another shard.
#[derive(Default)]
pub struct Close(tokio::sync::Notify);

impl crate::routing::Closer for Close {
    fn close(&self) {
        // A permit is kept if the loop is not waiting yet, so no close is lost.
        self.0.notify_one();
    }
}

impl Edge {
    /// Serves an upgrade request: chooses the shard, connects (retrying once on the next choice
    /// if the shard refuses), relays the handshake, and after a 101 copies both ways. `Err`
    /// before anything was written to the client (pingora answers with the error), or when a
    /// response already passed on cannot be followed (the connection is closed).
    pub(super) async fn tunnel(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let mut shard = self.connect(ctx).await?;
        let mut req = session.req_header().clone();
        req.set_version(http::Version::HTTP_11);
        prepare_upstream_request(session, &mut req, ctx);
        shard
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| e.into_up())?;
        loop {
            shard.read_response().await.map_err(|e| e.into_up())?;
            match shard.get_status() {
                Some(s) if s.is_informational() && s.as_u16() != 101 => continue,
                _ => break,
            }
        }
        let mut resp = shard
            .resp_header()
            .cloned()
            .ok_or_else(|| Error::explain(InvalidHTTPHeader, "no response head").into_up())?;
        if let Some(origin) = &ctx.cors_origin {
            cors::add_allow(&mut resp, origin);
        }
        session.write_response_header(Box::new(resp), false).await?;
        if shard.was_upgraded() {
            if !session.was_upgraded() {
                // A 101 the client did not ask for (another protocol): nothing sane can follow.
                return Error::e_explain(
                    InvalidHTTPHeader,
                    "the shard switched to a protocol the client did not ask for",
                )
                .map_err(|e| e.into_up());
            }
            self.tunnel_opened(ctx);
            self.copy_both_ways(session, &mut shard, ctx).await;
        } else {
            // The shard refused the upgrade: pass its answer on as an ordinary response.
            while let Some(body) = shard.read_body_bytes().await.map_err(|e| e.into_up())? {
                session.write_response_body(Some(body), false).await?;
            }
            session.write_response_body(None, true).await?;
        }
        shard.shutdown().await;
        Ok(())
    }

    /// A fresh HTTP/1.1 connection to the chosen shard; a refusal marks the shard down and
    /// the next choice is tried once.
    async fn connect(&self, ctx: &mut Ctx) -> Result<ShardSession> {
        loop {
            let peer = self.peer_for(ctx)?;
            match self.tunnels.get_http_session(peer.as_ref()).await {
                Ok((mut shard, _)) => {
                    shard.read_timeout = peer.options.read_timeout;
                    shard.write_timeout = peer.options.write_timeout;
                    return Ok(shard);
                }
                Err(e) => {
                    if !self.connect_failed(ctx, &e) {
                        return Err(e.into_up());
                    }
                }
            }
        }
    }

    /// Copies bytes between client and shard until either closes, fails, both stay quiet for
    /// `timeouts.tunnel`, or the room moves to another shard. Each end is closed by the caller.
    async fn copy_both_ways(&self, session: &mut Session, shard: &mut ShardSession, ctx: &Ctx) {
        let quiet = ctx
            .runtime
            .as_ref()
            .map(|r| r.config.timeouts.tunnel)
            .expect("set by request_filter");
        // One inactivity deadline for the tunnel instead of a read timeout per direction: a
        // one-way stream (the shard pushing, the client silent) is not idle.
        session.set_read_timeout(None);
        shard.read_timeout = None;
        shard.maybe_upgrade_body_writer();
        let idle = tokio::time::sleep(quiet);
        tokio::pin!(idle);
        loop {
            let event = tokio::select! {
                r = session.read_request_body() => Event::FromClient(r),
                r = shard.read_body_bytes() => Event::FromShard(r),
                _ = &mut idle => Event::Quiet,
                _ = ctx.close.0.notified() => Event::Moved,
            };
            let written = match event {
                Event::FromClient(Ok(Some(data))) => shard.write_body(&data).await.map(|_| ()),
                Event::FromShard(Ok(Some(data))) => {
                    session.write_response_body(Some(data), false).await
                }
                Event::FromClient(Ok(None)) | Event::FromShard(Ok(None)) => break,
                Event::FromClient(Err(e)) | Event::FromShard(Err(e)) => {
                    debug!(error = %e, "tunnel ended");
                    break;
                }
                Event::Quiet => {
                    debug!(after = ?quiet, "tunnel closed after being quiet");
                    break;
                }
                Event::Moved => {
                    debug!(
                        room = ctx.room.as_deref(),
                        "tunnel closed: its room moved to another shard"
                    );
                    break;
                }
            };
            if let Err(e) = written {
                debug!(error = %e, "tunnel ended");
                break;
            }
            idle.as_mut().reset(tokio::time::Instant::now() + quiet);
        }
    }
}

/// A new connector for tunnels: their connections are never pooled, so it holds no idle ones.
pub(super) fn connector() -> Connector {
    Connector::new(None)
}

/// Whether an upgrade request can be tunnelled here: it must carry no body of its own (a
/// WebSocket handshake never does), since only the handshake's head is relayed before the 101.
pub(super) fn can_tunnel(req: &RequestHeader) -> bool {
    let no_length = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .is_none_or(|v| v.as_bytes() == b"0");
    no_length && !req.headers.contains_key(http::header::TRANSFER_ENCODING)
}
