//! `limits.max_connections`: past it, the listeners stop accepting (new connections wait in
//! the kernel's backlog) until a served connection closes. A connection counts from the
//! moment it is accepted; one whose TLS handshake never completes stops counting after
//! pingora's handshake timeout.

use crate::state::Shared;
use async_trait::async_trait;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// pingora's fixed deadline for a TLS handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(61);

#[derive(Debug, Default)]
pub struct Limit {
    /// Connections being served.
    open: AtomicUsize,
    /// Accepted, not yet served (in their handshake): when each was accepted.
    starting: Mutex<VecDeque<Instant>>,
    freed: Notify,
}

impl Limit {
    pub fn new() -> Arc<Limit> {
        Arc::default()
    }

    /// Connections counted now (served and starting).
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Relaxed) + self.starting().len()
    }

    fn starting(&self) -> std::sync::MutexGuard<'_, VecDeque<Instant>> {
        let mut s = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        while s.front().is_some_and(|t| t.elapsed() > HANDSHAKE_LIMIT) {
            s.pop_front();
        }
        s
    }

    /// Counts a served connection until the guard drops (and ends one starting).
    pub fn serving(self: &Arc<Self>) -> Slot {
        self.starting().pop_front();
        self.open.fetch_add(1, Ordering::Relaxed);
        Slot(self.clone())
    }

    /// Waits until a connection may be accepted (the limit is read again each time: a
    /// reload may change it), and counts it as starting. Returns whether it had to wait.
    async fn admit(&self, max: impl Fn() -> usize) -> bool {
        let mut waited = false;
        loop {
            let freed = self.freed.notified();
            {
                let mut starting = self.starting();
                if self.open.load(Ordering::Relaxed) + starting.len() < max() {
                    starting.push_back(Instant::now());
                    return waited;
                }
            }
            waited = true;
            // Woken by a closing connection, or checks again (handshakes expire).
            let _ = tokio::time::timeout(Duration::from_secs(1), freed).await;
        }
    }
}

/// One served connection.
pub struct Slot(Arc<Limit>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.freed.notify_one();
    }
}

/// The listeners' filter: accepts once under the limit (waiting otherwise, which stops that
/// listener's accept loop).
pub struct Filter {
    pub limit: Arc<Limit>,
    pub shared: Arc<Shared>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("limit", &self.limit)
            .finish()
    }
}

#[async_trait]
impl pingora::listeners::ConnectionFilter for Filter {
    async fn should_accept(&self, _addr: Option<&SocketAddr>) -> bool {
        let max = || self.shared.runtime.load().config.limits.max_connections;
        if self.limit.admit(max).await {
            self.shared.metrics.connections_limited.inc();
        }
        true
    }
}
