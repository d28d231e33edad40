//! The address each public port relays to: IP literals as they are, names (StatefulSet pod
//! names) looked up by DNS and again after their TTL, so a restarted pod's new IP is picked up.
//! A name with no records leaves its port without a target (its datagrams are dropped and
//! counted); a failing lookup keeps the last good address for `resolver.hold_valid`.

use crate::config::media::split_target;
use crate::config::{Resolver as ResolverConfig, Zone};
use crate::discovery::resolver::{lookup_host, LookupError};
use crate::state::Shared;
use arc_swap::ArcSwap;
use hickory_resolver::TokioResolver;
use pingora::server::ShutdownWatch;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// The current target of each port of a zone, by index in its range.
pub struct ZoneTargets {
    pub current: ArcSwap<Vec<Option<SocketAddr>>>,
}

impl ZoneTargets {
    /// IP literal targets filled in, names empty until looked up.
    pub fn new(zone: &Zone) -> Self {
        let literal = zone
            .targets()
            .iter()
            .map(|t| {
                let (host, port) = split_target(t).ok()?;
                Some(SocketAddr::new(host.parse::<IpAddr>().ok()?, port))
            })
            .collect();
        ZoneTargets {
            current: ArcSwap::from_pointee(literal),
        }
    }
}

struct Entry {
    index: usize,
    host: String,
    port: u16,
    addr: Option<SocketAddr>,
    due: Instant,
    last_good: Option<Instant>,
}

/// Keeps `targets` of `zone` current until `shutdown`.
pub async fn run(
    zone: Zone,
    targets: Arc<ZoneTargets>,
    resolver: TokioResolver,
    cfg: ResolverConfig,
    shared: Arc<Shared>,
    mut shutdown: ShutdownWatch,
) {
    let now = Instant::now();
    let mut entries: Vec<Entry> = zone
        .targets()
        .iter()
        .enumerate()
        .filter_map(|(index, t)| {
            let (host, port) = split_target(t).ok()?;
            (host.parse::<IpAddr>().is_err()).then(|| Entry {
                index,
                host: host.to_owned(),
                port,
                addr: None,
                due: now,
                last_good: None,
            })
        })
        .collect();
    if entries.is_empty() {
        return;
    }
    let counter = |result: &str| {
        shared
            .metrics
            .media_lookups
            .with_label_values(&[&zone.name, result])
    };
    loop {
        let now = Instant::now();
        let mut changed = false;
        for e in entries.iter_mut().filter(|e| e.due <= now) {
            let (addr, valid_for) = match lookup_host(&resolver, &e.host, e.port).await {
                Ok((addrs, valid_for)) => {
                    counter("ok").inc();
                    e.last_good = Some(now);
                    (addrs.first().copied(), valid_for)
                }
                Err(LookupError::NoRecords(_)) => {
                    counter("no_records").inc();
                    (None, cfg.min_ttl)
                }
                Err(err) => {
                    counter("error").inc();
                    let held = e.last_good.is_some_and(|t| now - t < cfg.hold_valid);
                    if !held && e.addr.is_some() {
                        warn!(zone = %zone.name, error = %err, "relay target lookups keep failing; port without target");
                    }
                    (if held { e.addr } else { None }, cfg.min_ttl)
                }
            };
            e.due = now + valid_for.clamp(cfg.min_ttl, cfg.max_ttl);
            if addr != e.addr {
                info!(zone = %zone.name, target = %e.host, from = ?e.addr, to = ?addr, "relay target address changed");
                e.addr = addr;
                changed = true;
            }
        }
        if changed {
            let mut next = (**targets.current.load()).clone();
            for e in &entries {
                next[e.index] = e.addr;
            }
            targets.current.store(Arc::new(next));
        }
        let wake = entries
            .iter()
            .map(|e| e.due)
            .min()
            .unwrap_or(now + Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.changed() => return,
        }
    }
}
