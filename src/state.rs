//! What the proxy, the admin listener and background work share: the current runtime
//! snapshot, the metrics, and the process clock that shard state is measured on.

use crate::metrics::Metrics;
use crate::reload::ReloadStatus;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    /// Bumped at every swap of `runtime`, so background work can follow the pools.
    pub generation: tokio::sync::watch::Sender<u64>,
    /// Where the config comes from and how its last reload went (admin and reloads only).
    pub reload: Mutex<ReloadStatus>,
    /// Requests being served now, open tunnels included, and HTTP/1.1 client connections
    /// (see [`InFlight`]): the process exits after a shutdown once it is 0.
    pub in_flight: std::sync::atomic::AtomicI64,
    /// Set at SIGTERM: `/readyz` answers 503 from then on.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// TLS towards members, by pool name (pools without `tls` are absent).
    pub upstream_tls: ArcSwap<HashMap<String, Arc<crate::proxy::upstream_tls::Identity>>>,
    /// The TLS listeners' certificates, reloaded when their files change.
    pub certs: Mutex<Vec<Arc<crate::tls::CertStore>>>,
    /// The in-process SFU, when the process started with `[sfu]`.
    pub sfu: std::sync::OnceLock<crate::sfu::http::SfuService>,
    /// False from a start with `[peers]` until the first full sync from the reachable
    /// replicas arrived (or `peers.sync_wait` passed): `/readyz` answers 503 meanwhile.
    pub peers_synced: Arc<std::sync::atomic::AtomicBool>,
    /// The replication's state for `/admin/peers`, refreshed about once a second.
    pub peers_status: Arc<Mutex<Option<serde_json::Value>>>,
    /// Where the proxy's new placements and the admin's drains go to be replicated, when
    /// `[peers]` is set.
    pub peers:
        std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<crate::peers::driver::Update>>,
    /// This replica's name, in the drains made through its admin API (`peers.name`, else the
    /// host name: the pod's name in Kubernetes).
    pub replica_name: Arc<str>,
    epoch: Instant,
}

impl Shared {
    pub fn new(runtime: Runtime, status: ReloadStatus) -> Arc<Self> {
        let replica_name = runtime
            .config
            .peers
            .as_ref()
            .and_then(|p| p.name.as_deref())
            .map_or_else(host_name, Arc::from);
        Arc::new(Shared {
            replica_name,
            runtime: ArcSwap::from_pointee(runtime),
            metrics: Metrics::new(),
            generation: tokio::sync::watch::Sender::new(0),
            reload: Mutex::new(status),
            certs: Mutex::new(Vec::new()),
            sfu: std::sync::OnceLock::new(),
            peers: std::sync::OnceLock::new(),
            peers_synced: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            peers_status: Arc::default(),
            upstream_tls: ArcSwap::from_pointee(HashMap::new()),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            in_flight: std::sync::atomic::AtomicI64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Milliseconds since the process started: the clock of passive health.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// The host's name (`$HOSTNAME`, else the kernel's), or "shardgate".
fn host_name() -> Arc<str> {
    let name = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    Arc::from(name.as_deref().unwrap_or("shardgate"))
}

/// Counts one request in [`Shared::in_flight`] from its start until it is dropped, whatever way
/// it ends (a tunnel counts until it closes).
pub struct InFlight(Arc<Shared>);

impl InFlight {
    pub fn new(shared: Arc<Shared>) -> Self {
        shared
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
