//! The edge's listeners, as a pingora service (so that pingora's binary upgrade hands them
//! over, see [`super::inherit`]): each accepts under `limits.max_connections` and spawns one
//! task per connection, which does the TLS handshake within `timeouts.request_head` and then
//! serves the connection ([`Front::accepted`]). A connection costs its socket and that task,
//! nothing of pingora's per-connection machinery.

use super::inherit;
use super::Front;
use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownWatch};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

/// How long connections accepted just before the listeners closed have to send their
/// request before pingora's HTTP service (HTTP/2, the SFU's routes) is cleaned up.
pub const LINGER: Duration = Duration::from_secs(2);

/// One listening address; `tls` for a TLS listener.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub tls: Option<TlsAcceptor>,
}

pub struct Listeners {
    front: Arc<Front>,
    endpoints: Vec<Endpoint>,
}

impl Listeners {
    pub fn new(front: Arc<Front>, endpoints: Vec<Endpoint>) -> Self {
        Listeners { front, endpoints }
    }
}

#[async_trait]
impl pingora::services::Service for Listeners {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let mut loops = Vec::new();
        for ep in &self.endpoints {
            let listener = inherit::listener(fds.as_ref(), ep.addr).and_then(|l| {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            });
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    // An edge that silently lacks one of its listeners is worse than none.
                    error!(addr = %ep.addr, error = %e, "cannot listen; exiting");
                    std::process::exit(1);
                }
            };
            loops.push(tokio::spawn(accept_loop(
                self.front.clone(),
                listener,
                ep.tls.clone(),
                shutdown.clone(),
            )));
        }
        for l in loops {
            let _ = l.await;
        }
        self.front.stop();
        // Connections accepted a moment before the listeners closed get to send their request
        // before pingora's service drops those it holds.
        tokio::time::sleep(LINGER).await;
        self.front.cleanup().await;
    }

    fn name(&self) -> &str {
        "shardgate edge"
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.endpoints.iter().map(|e| e.addr.to_string()).collect())
    }
}

/// Accepts until the shutdown, one connection at a time under the connection limit.
async fn accept_loop(
    front: Arc<Front>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut shutdown: ShutdownWatch,
) {
    let addr = listener.local_addr().ok();
    let max = || front.shared.runtime.load().config.limits.max_connections;
    loop {
        let (slot, waited) = tokio::select! {
            admitted = front.limit.admit(max) => admitted,
            _ = stopped(&mut shutdown) => break,
        };
        if waited {
            front.shared.metrics.connections_limited.inc();
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut shutdown) => break,
        };
        match accepted {
            Ok((tcp, peer)) => front.accepted(tcp, peer, tls.clone(), shutdown.clone(), slot),
            Err(e) if e.raw_os_error() == Some(24) || e.raw_os_error() == Some(23) => {
                // Out of descriptors: accept() would fail again at once; let some close.
                warn!(error = %e, "cannot accept: out of file descriptors");
                front.shared.metrics.connections_limited.inc();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // The client gave up before it was accepted, and the like: nothing to serve.
            Err(e) => tracing::debug!(error = %e, "accept failed"),
        }
    }
    if let Some(addr) = addr {
        info!(%addr, "listener closed");
    }
}

/// Resolves once the shutdown has begun.
async fn stopped(shutdown: &mut ShutdownWatch) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
