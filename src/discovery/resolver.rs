//! The discovery driver: per discovered pool, a task that looks its names up (hickory-resolver
//! on tokio), applies the answer with [`super::apply`], and sleeps until the answer's TTL
//! (clamped to `resolver.min_ttl`..`max_ttl`) runs out. While lookups fail, the last good
//! answer is kept for `resolver.hold_valid`; after that its members leave DNS as if answered
//! empty (so they linger, draining, for the pool's `linger`). State changes are logged once.

use super::membership::{apply, MemberSpec};
use super::srv::{addrs_from_srv, host_key, members_from_addrs, members_from_srv, SrvRecord};
use crate::config::{host_port, MemberSource, Pool as PoolConfig, Resolver as ResolverConfig};
use crate::routing::Pool;
use crate::state::Shared;
use hickory_resolver::config::{NameServerConfig, ResolverConfig as HickoryConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// What a pool looks up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Every target of this SRV name is a member.
    PoolSrv(String),
    /// Every A/AAAA address of this name is a member (with this port).
    PoolDns(String, u16),
    /// Listed members, each with where its addresses come from.
    ShardList(Vec<(String, AddrSource)>),
}

/// Where a listed member's addresses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrSource {
    Static,
    Srv(String),
    Host(String, u16),
}

impl Plan {
    /// The plan of a pool, or `None` when it has nothing to look up.
    pub fn of(pool: &PoolConfig) -> Option<Plan> {
        let list = match pool.members() {
            MemberSource::Srv(srv) => return Some(Plan::PoolSrv(srv.to_owned())),
            MemberSource::Dns(hp) => {
                let (name, port) = host_port(hp)?;
                return Some(Plan::PoolDns(name.to_owned(), port));
            }
            MemberSource::List(list) => list,
        };
        let list: Vec<_> = list
            .iter()
            .map(|s| {
                let source = match (&s.srv, s.host.as_deref().and_then(host_port)) {
                    (Some(srv), _) => AddrSource::Srv(srv.clone()),
                    (None, Some((name, port))) => AddrSource::Host(name.to_owned(), port),
                    (None, None) => AddrSource::Static,
                };
                (s.name.clone(), source)
            })
            .collect();
        list.iter()
            .any(|(_, source)| *source != AddrSource::Static)
            .then_some(Plan::ShardList(list))
    }
}

/// Why a lookup gave no members.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The name exists in no form (NXDOMAIN or no records): an answer, not a failure.
    #[error("no records for {0}")]
    NoRecords(String),
    #[error("lookup of {name} failed: {source}")]
    Failed { name: String, source: NetError },
}

impl LookupError {
    fn of(name: &str, source: NetError) -> Self {
        if source.is_no_records_found() {
            LookupError::NoRecords(name.to_owned())
        } else {
            LookupError::Failed {
                name: name.to_owned(),
                source,
            }
        }
    }
}

/// Builds the resolver: `nameservers` when given, else /etc/resolv.conf. Answers are not
/// cached by hickory (discovery re-asks after the TTL itself).
pub fn build(cfg: &ResolverConfig) -> Result<TokioResolver, String> {
    let mut builder = if cfg.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("cannot read /etc/resolv.conf: {e}"))?
    } else {
        let servers = cfg
            .nameservers
            .iter()
            .map(|addr| {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(
            HickoryConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    opts.timeout = cfg.timeout;
    opts.attempts = 2;
    opts.cache_size = 0;
    builder
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

/// SRV records of `name` and the addresses of their targets, with how long the answer holds.
pub async fn lookup_srv(
    resolver: &TokioResolver,
    name: &str,
) -> Result<(Vec<SrvRecord>, HashMap<String, Vec<IpAddr>>, Duration), LookupError> {
    let lookup = resolver
        .lookup(name, RecordType::SRV)
        .await
        .map_err(|e| LookupError::of(name, e))?;
    let valid_for = lookup
        .valid_until()
        .saturating_duration_since(Instant::now());
    let records: Vec<SrvRecord> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(SrvRecord {
                priority: srv.priority,
                weight: srv.weight,
                port: srv.port,
                target: srv.target.to_ascii(),
            }),
            _ => None,
        })
        .collect();
    let mut addrs: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for r in lookup.additionals() {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        addrs
            .entry(host_key(&r.name.to_ascii()))
            .or_default()
            .push(ip);
    }
    for r in &records {
        let key = host_key(&r.target);
        if key.is_empty() || addrs.contains_key(&key) {
            continue;
        }
        // Not in the additional section: resolve the target. One that does not resolve is
        // left out of this answer.
        if let Ok(ips) = resolver.lookup_ip(r.target.as_str()).await {
            addrs.insert(key, ips.iter().collect());
        }
    }
    Ok((records, addrs, valid_for))
}

/// The A/AAAA addresses of `name` with `port`, with how long the answer holds.
pub async fn lookup_host(
    resolver: &TokioResolver,
    name: &str,
    port: u16,
) -> Result<(Vec<SocketAddr>, Duration), LookupError> {
    let lookup = resolver
        .lookup_ip(name)
        .await
        .map_err(|e| LookupError::of(name, e))?;
    let valid_for = lookup
        .valid_until()
        .saturating_duration_since(Instant::now());
    let mut addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
    addrs.sort();
    addrs.dedup();
    Ok((addrs, valid_for))
}

/// One pool's discovery loop; returns when `shutdown` fires.
pub async fn run_pool(
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    plan: Plan,
    resolver: TokioResolver,
    cfg: ResolverConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_ok: Option<Instant> = None;
    let mut failing = false;
    let started = Instant::now();
    loop {
        let (answer, wait) = match &plan {
            Plan::PoolSrv(name) => match lookup_srv(&resolver, name).await {
                Ok((records, addrs, ttl)) => (Ok(members_from_srv(&records, &addrs)), ttl),
                Err(e) => (Err(e), cfg.min_ttl),
            },
            Plan::PoolDns(name, port) => match lookup_host(&resolver, name, *port).await {
                Ok((addrs, ttl)) => (Ok(members_from_addrs(&addrs)), ttl),
                Err(e) => (Err(e), cfg.min_ttl),
            },
            Plan::ShardList(list) => shard_list_answer(&resolver, &pool, list).await,
        };
        let result = match &answer {
            Ok(_) => "ok",
            Err(LookupError::NoRecords(_)) => "no_records",
            Err(LookupError::Failed { .. }) => "error",
        };
        shared
            .metrics
            .dns_lookups
            .with_label_values(&[&pool.name, result])
            .inc();
        let now_ms = shared.now_ms();
        let held = |since: Option<Instant>| since.unwrap_or(started).elapsed() < cfg.hold_valid;
        let fresh: Option<Vec<MemberSpec>> = match answer {
            Ok(members) => {
                if failing {
                    info!(pool = %pool.name, members = members.len(), "DNS answers again");
                    failing = false;
                }
                last_ok = Some(Instant::now());
                Some(members)
            }
            Err(LookupError::NoRecords(name)) => {
                if !failing {
                    warn!(pool = %pool.name, %name, "no DNS records: members leave (lingering)");
                    failing = true;
                }
                last_ok = Some(Instant::now());
                Some(Vec::new())
            }
            Err(e @ LookupError::Failed { .. }) => {
                if !failing {
                    warn!(pool = %pool.name, error = %e, hold = ?cfg.hold_valid, "DNS lookup failing: keeping the last good members");
                    failing = true;
                }
                if held(last_ok) {
                    None
                } else {
                    Some(Vec::new())
                }
            }
        };
        pool.update_members(|members| {
            let (next, changed) = apply(
                members,
                fresh.as_deref(),
                now_ms,
                pool.linger.as_millis() as u64,
            );
            if changed {
                info!(pool = %pool.name, members = ?next.shards.iter().map(|s| &*s.name).collect::<Vec<_>>(), "members changed");
            }
            changed.then_some(next)
        });
        let wait = wait.clamp(cfg.min_ttl, cfg.max_ttl);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Listed shards with names of their own: each keeps its last good addresses while its lookup
/// fails (no shard leaves: the list is the config's).
async fn shard_list_answer(
    resolver: &TokioResolver,
    pool: &Pool,
    list: &[(String, AddrSource)],
) -> (Result<Vec<MemberSpec>, LookupError>, Duration) {
    let members = pool.members.load();
    let mut specs = Vec::with_capacity(list.len());
    let mut wait = Duration::MAX;
    let mut first_error = None;
    for (name, source) in list {
        let Some(shard) = members.get(name) else {
            continue;
        };
        let looked_up = match source {
            AddrSource::Static => Ok((shard.addrs().to_vec(), Duration::MAX)),
            AddrSource::Srv(srv) => lookup_srv(resolver, srv)
                .await
                .map(|(records, ips, ttl)| (addrs_from_srv(&records, &ips), ttl)),
            AddrSource::Host(host, port) => lookup_host(resolver, host, *port).await,
        };
        let addrs = match looked_up {
            Ok((addrs, ttl)) => {
                wait = wait.min(ttl);
                addrs
            }
            Err(LookupError::NoRecords(_)) => Vec::new(),
            Err(e) => {
                wait = Duration::ZERO;
                first_error.get_or_insert(e);
                shard.addrs().to_vec()
            }
        };
        specs.push(MemberSpec {
            name: name.clone(),
            weight: shard.base_weight(),
            addrs,
        });
    }
    match first_error {
        // Keep every shard (with its last addresses): the list itself never changes.
        Some(e) if specs.is_empty() => (Err(e), Duration::ZERO),
        _ => (Ok(specs), wait),
    }
}
