//! The edge's client side: pingora's listeners (TCP and TLS, accepting under
//! `limits.max_connections`) hand each connection here. HTTP/1.1 is served by this module's
//! own lean path (a connection holds no buffer while it waits, see [`io`]); HTTP/2 (by ALPN)
//! and the SFU's routes go to pingora's HTTP service, [`crate::proxy::Edge`].

mod conn;
mod exchange;
pub mod io;
pub mod limit;
mod replay;
pub mod shards;
pub mod tunnel;

use crate::proxy::Edge;
use crate::state::Shared;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use std::sync::Arc;

pub struct Front {
    pub shared: Arc<Shared>,
    pub shards: Arc<shards::Shards>,
    pub limit: Arc<limit::Limit>,
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
            pingora: Arc::new(pingora),
        }
    }

    async fn hand_off(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let mut next = Some(stream);
        while let Some(stream) = next {
            next = self.pingora.process_new(stream, shutdown).await;
        }
    }

    /// Serves one HTTP/1.1 connection to its end.
    async fn serve(
        self: Arc<Self>,
        mut stream: Stream,
        shutdown: ShutdownWatch,
        _slot: limit::Slot,
    ) {
        // The process does not exit under an open connection: after a shutdown or hand-over an
        // idle one closes within its linger, and one that got a request first answers it.
        let _open = crate::state::InFlight::new(self.shared.clone());
        let who = conn::Client {
            ip: stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip())),
            tls: stream.get_ssl_digest().is_some(),
        };
        match conn::serve(&self, &mut *stream, &who, &shutdown).await {
            conn::Served::Closed => {}
            conn::Served::HandOff(first) => {
                let stream: Stream = Box::new(replay::Replay::new(stream, first));
                Box::pin(self.hand_off(stream, &shutdown)).await;
            }
        }
    }
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let slot = self.limit.serving();
        if stream.selected_alpn_proto() == Some(ALPN::H2) {
            self.hand_off(stream, shutdown).await;
            return None;
        }
        // A task of its own: pingora's task for the connection (about 9 KB, its TLS handshake's
        // state included) ends here, and a waiting connection costs only what it needs.
        tokio::spawn(self.clone().serve(stream, shutdown.clone(), slot));
        None
    }

    async fn cleanup(&self) {
        self.pingora.cleanup().await;
    }
}
