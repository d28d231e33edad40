//! The edge's client side: its own listeners ([`listen`], TCP and TLS, accepting under
//! `limits.max_connections`) hand each connection here. HTTP/1.1 is served by this module's
//! own lean path (a connection holds no buffer while it waits, see [`io`]); HTTP/2 (by ALPN)
//! and the SFU's routes go to pingora's HTTP service, [`crate::proxy::Edge`].

pub mod client;
mod conn;
mod exchange;
mod inherit;
pub mod io;
pub mod limit;
pub mod listen;
mod maybe_tls;
mod replay;
pub mod shards;
pub mod tunnel;

use crate::proxy::Edge;
use crate::state::Shared;
use client::ClientIo;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

pub struct Front {
    pub shared: Arc<Shared>,
    pub shards: Arc<shards::Shards>,
    pub limit: Arc<limit::Limit>,
    /// Wakes the connections waiting for a request when the listeners close (see
    /// [`Front::stop`]).
    stopping: tokio::sync::Notify,
    /// Serves HTTP/2 and what this path hands over.
    pingora: Arc<HttpProxy<Edge>>,
}

impl Front {
    pub fn new(
        shared: Arc<Shared>,
        pingora: HttpProxy<Edge>,
        limit: Arc<limit::Limit>,
        shards: Arc<shards::Shards>,
    ) -> Self {
        Front {
            shared,
            shards,
            limit,
            stopping: tokio::sync::Notify::new(),
            pingora: Arc::new(pingora),
        }
    }

    /// The listeners closed (shutdown or hand-over): idle connections get their linger.
    pub fn stop(&self) {
        self.stopping.notify_waiters();
    }

    async fn hand_off(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let mut next = Some(stream);
        while let Some(stream) = next {
            next = self.pingora.process_new(stream, shutdown).await;
        }
    }

    /// Lets pingora's HTTP service close what it still holds (at the end of a shutdown).
    pub async fn cleanup(&self) {
        self.pingora.cleanup().await;
    }

    /// Takes an accepted connection: a task of its own serves it, after its TLS handshake
    /// (within `timeouts.request_head`) for a TLS listener.
    pub fn accepted(
        self: &Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        tls: Option<TlsAcceptor>,
        shutdown: ShutdownWatch,
        slot: limit::Slot,
    ) {
        let accepted = tokio::time::Instant::now();
        let _ = tcp.set_nodelay(true);
        let who = conn::Client {
            ip: Some(peer.ip()),
            tls: tls.is_some(),
        };
        let front = self.clone();
        match tls {
            None => {
                let client = ClientIo::Tcp(tcp);
                tokio::spawn(front.serve(client, who, accepted, shutdown, slot));
            }
            Some(acceptor) => {
                // The connection is served by a task of its own once the handshake is done: a
                // task's size is that of its largest state, and this one's holds the socket and
                // the acceptor beside the handshake.
                tokio::spawn(async move {
                    if let Some(client) = front.handshake(acceptor, tcp).await {
                        tokio::spawn(front.serve(client, who, accepted, shutdown, slot));
                    }
                });
            }
        }
    }

    /// Serves one connection to its end: HTTP/1.1 here, or HTTP/2 by pingora's service. (A
    /// plain function returning an `async move` block: an `async fn` would keep a second copy
    /// of its arguments in the connection's task.)
    #[allow(clippy::manual_async_fn)]
    fn serve(
        self: Arc<Self>,
        mut client: ClientIo,
        who: conn::Client,
        accepted: tokio::time::Instant,
        shutdown: ShutdownWatch,
        slot: limit::Slot,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        async move {
            let _slot = slot;
            // The process does not exit under an open connection: after a shutdown or
            // hand-over an idle one closes within its linger, and one that got a request first
            // answers it.
            let _open = crate::state::InFlight::new(self.shared.clone());
            if client.alpn() == Some(b"h2") {
                let Some(preface) = Box::pin(conn::h2_preface(&self, &mut client, accepted)).await
                else {
                    return;
                };
                let stream: Stream = Box::new(replay::Replay::new(client, preface));
                Box::pin(self.hand_off(stream, &shutdown)).await;
                return;
            }
            match conn::serve(&self, &mut client, &who, accepted, &shutdown).await {
                conn::Served::Closed => {}
                conn::Served::HandOff(first) => {
                    let stream: Stream = Box::new(replay::Replay::new(client, first));
                    Box::pin(self.hand_off(stream, &shutdown)).await;
                }
            }
        }
    }

    /// The TLS handshake, boxed (its state is only needed while it runs), counted when it
    /// fails or takes longer than `timeouts.request_head`.
    async fn handshake(&self, acceptor: TlsAcceptor, tcp: TcpStream) -> Option<ClientIo> {
        let limit = self.shared.runtime.load().config.timeouts.request_head;
        let metrics = &self.shared.metrics;
        match tokio::time::timeout(limit, Box::pin(acceptor.accept(tcp))).await {
            Ok(Ok(tls)) => Some(ClientIo::Tls(Box::new(tls))),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                metrics.tls_handshake_errors.inc();
                None
            }
            Err(_) => {
                metrics.timeouts.with_label_values(&["tls_handshake"]).inc();
                None
            }
        }
    }
}
