//! `[peers]`: stick-table replication between edge replicas.

use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peers {
    /// Where this replica accepts other replicas' connections.
    #[serde(deserialize_with = "super::model::socket_addr")]
    pub listen: SocketAddr,
    /// The replicas, by SRV name (`_peers._tcp.shardgate.edge.svc.cluster.local.`: a headless
    /// Service's named port) …
    pub srv: Option<String>,
    /// … or by a name whose A/AAAA records are the replicas, with the port (`host:port`) …
    pub dns: Option<String>,
    /// … or listed (`["10.0.0.1:7946", …]`). This replica's own address may be among them.
    #[serde(default)]
    pub list: Vec<String>,
    /// The shared secret every replica proves it knows (at least 16 bytes), e.g.
    /// `"${SHARDGATE_PEERS_SECRET}"`.
    pub secret: String,
    /// This replica's name in the drains made through its admin API, as the others show them
    /// (`draining (admin, via <name>)`); default the host name (a pod's name in Kubernetes).
    pub name: Option<String>,
    /// `/readyz` waits at most this long for the first full sync from the reachable replicas.
    #[serde(default = "ten_s", deserialize_with = "super::duration::deserialize")]
    pub sync_wait: Duration,
}

fn ten_s() -> Duration {
    Duration::from_secs(10)
}

/// Rules serde cannot express, as (key path, message) pairs: what `shardgate check` reports
/// and `run` refuses to start with.
pub(crate) fn validate(p: &Peers) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let sources = usize::from(p.srv.is_some())
        + usize::from(p.dns.is_some())
        + usize::from(!p.list.is_empty());
    if sources != 1 {
        errors.push((
            "peers".into(),
            "expected exactly one of srv = \"_peers._tcp.<headless service>.\", dns = \"<name>:<port>\" or list = [\"host:port\", …]".into(),
        ));
    }
    for (i, addr) in p.list.iter().enumerate() {
        if let Err(e) = addr.parse::<SocketAddr>() {
            errors.push((
                format!("peers.list[{i}]"),
                format!("{addr:?}: {e}; expected an address with its port (\"10.0.0.1:7946\", \"[fd00::1]:7946\")"),
            ));
        }
    }
    if let Some(dns) = &p.dns {
        if super::model::host_port(dns).is_none() {
            errors.push((
                "peers.dns".into(),
                format!("{dns:?}: expected <name>:<port>"),
            ));
        }
    }
    if p.secret.len() < 16 {
        errors.push((
            "peers.secret".into(),
            format!(
                "{} bytes; expected at least 16 (e.g. from `openssl rand -hex 16`)",
                p.secret.len()
            ),
        ));
    }
    if super::validate::is_placeholder(&p.secret) {
        errors.push((
            "peers.secret".into(),
            super::validate::PLACEHOLDER_ERROR.into(),
        ));
    }
    if p.listen.port() == 0 {
        errors.push((
            "peers.listen".into(),
            "port 0; expected the port the other replicas dial".into(),
        ));
    }
    if p.name
        .as_ref()
        .is_some_and(|n| n.is_empty() || n.len() > 255)
    {
        errors.push(("peers.name".into(), "expected 1 to 255 bytes".into()));
    }
    if p.sync_wait.is_zero() {
        errors.push(("peers.sync_wait".into(), "must be more than 0s".into()));
    }
    errors
}
