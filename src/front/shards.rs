//! Connections to shards: opened (plain TCP, or TLS through pingora's connector for pools
//! with `tls`), and kept alive between requests in a small pool per shard address.

use super::io::is_quiet;
use super::maybe_tls::MaybeTls;
use pingora::upstreams::peer::HttpPeer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Idle connections kept per shard address.
const IDLE_PER_SHARD: usize = 128;

/// One connection to a shard.
pub type ShardConn = MaybeTls<pingora::protocols::Stream>;

/// Where a connection goes: the address, and for TLS the pool whose identity it uses and
/// the hash of that identity's material (a rotated certificate is not mixed with the old).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Key {
    pub addr: SocketAddr,
    pub tls: Option<(Arc<str>, u64)>,
}

struct Idle {
    conn: ShardConn,
    until: Instant,
}

pub struct Shards {
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
    tls: pingora::connectors::TransportConnector,
}

impl Default for Shards {
    fn default() -> Self {
        Shards {
            idle: Mutex::default(),
            tls: pingora::connectors::TransportConnector::new(None),
        }
    }
}

impl Shards {
    /// A kept-alive connection to `key`, still open and quiet, if there is one.
    pub fn take(&self, key: &Key) -> Option<ShardConn> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        while let Some(mut c) = list.pop() {
            if c.until > now && is_quiet(&mut c.conn) {
                return Some(c.conn);
            }
        }
        None
    }

    /// Keeps a connection whose exchange ended cleanly for the next request, `keepalive` long.
    pub fn give(&self, key: Key, conn: ShardConn, keepalive: Duration) {
        let until = Instant::now() + keepalive;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() >= IDLE_PER_SHARD {
            list.remove(0);
        }
        list.push(Idle { conn, until });
    }

    /// Closes idle connections that expired or that their shard closed.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain_mut(|c| c.until > now && is_quiet(&mut c.conn));
            !list.is_empty()
        });
    }

    /// Idle connections kept now.
    pub fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.values().map(Vec::len).sum()
    }

    /// A new connection: plain TCP, or TLS as `peer` says, within `limit`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        peer: Option<HttpPeer>,
        limit: Duration,
    ) -> Result<ShardConn, String> {
        match peer {
            None => match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(ShardConn::Tcp(s))
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("connect timed out after {limit:?}")),
            },
            Some(mut peer) => {
                peer.options.connection_timeout = Some(limit);
                peer.options.total_connection_timeout = Some(limit * 2);
                // Boxed: its state (about 10 KB) only lives while it connects.
                Box::pin(self.tls.new_stream(&peer))
                    .await
                    .map(ShardConn::Tls)
                    .map_err(|e| e.to_string())
            }
        }
    }
}
