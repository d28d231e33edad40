//! What the proxy, the admin listener and background work share: the current runtime
//! snapshot, the metrics, and the process clock that shard state is measured on.

use crate::metrics::Metrics;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Instant;

pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    epoch: Instant,
}

impl Shared {
    pub fn new(runtime: Runtime) -> Arc<Self> {
        Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            metrics: Metrics::new(),
            epoch: Instant::now(),
        })
    }

    /// Milliseconds since the process started: the clock of passive health.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}
