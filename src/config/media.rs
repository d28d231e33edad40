//! `[[media.zone]]`: the UDP relay's public port ranges and where each port's datagrams go.

use serde::{Deserialize, Deserializer};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Media {
    #[serde(default)]
    pub zone: Vec<Zone>,
    /// Relay threads, each with its own socket per public port (SO_REUSEPORT); default: one
    /// per CPU.
    pub threads: Option<usize>,
}

/// A public UDP port range whose every port relays to one target (a JVB pod, a node's NodePort).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub name: String,
    /// The address the public ports are bound on.
    #[serde(default = "any_v4")]
    pub bind: IpAddr,
    /// `"30300-30399"`: the public ports, both ends included.
    pub ports: PortRange,
    /// Where port `p` goes: `host:port` with `{index}` (p - the range's first port) and `{port}`
    /// (p) substituted, e.g. `shard-0-jvb-{index}.shard-0-jvb.jitsi.svc.cluster.local.:{port}`
    /// or `10.0.0.7:{port}` (a node's NodePort).
    pub target: Option<String>,
    /// Or one `host:port` per port of the range, in order.
    #[serde(default)]
    pub targets: Vec<String>,
    /// A flow (one client on one public port) with no datagram either way this long is closed.
    #[serde(default = "sixty_s", deserialize_with = "super::duration::deserialize")]
    pub idle: Duration,
    /// Flows one source IP may hold open; datagrams that would open more are dropped.
    #[serde(default = "default_flows_per_source")]
    pub max_flows_per_source: u32,
    /// Flows the zone holds at most (per relay thread).
    #[serde(default = "default_max_flows")]
    pub max_flows: u32,
}

fn any_v4() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

fn sixty_s() -> Duration {
    Duration::from_secs(60)
}

fn default_flows_per_source() -> u32 {
    64
}

fn default_max_flows() -> u32 {
    100_000
}

/// An inclusive range of UDP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

pub fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let bad =
        || format!("{s:?} is not a port range; expected \"first-last\", e.g. \"30300-30399\"");
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let first: u16 = a.trim().parse().map_err(|_| bad())?;
    let last: u16 = b.trim().parse().map_err(|_| bad())?;
    if first == 0 || first > last {
        return Err(bad());
    }
    Ok(PortRange { first, last })
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_port_range(&s).map_err(serde::de::Error::custom)
    }
}

/// `{index}` and `{port}` substituted in a target template.
pub fn expand_target(template: &str, index: usize, port: u16) -> String {
    template
        .replace("{index}", &index.to_string())
        .replace("{port}", &port.to_string())
}

/// Splits `host:port` (`[v6]:port` for IPv6) into host and port.
pub fn split_target(target: &str) -> Result<(&str, u16), String> {
    let bad = || format!("{target:?} is not host:port");
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(['{', '}', '/', ' ']) {
        return Err(bad());
    }
    Ok((host, port))
}

impl Zone {
    /// The target of every port of the range, as configured (host names not resolved).
    pub fn targets(&self) -> Vec<String> {
        match &self.target {
            Some(t) => self
                .ports
                .ports()
                .enumerate()
                .map(|(i, p)| expand_target(t, i, p))
                .collect(),
            None => self.targets.clone(),
        }
    }

    /// Whether the targets are NodePorts: a node address with the public port itself.
    pub fn targets_node_ports(&self) -> bool {
        self.target.as_deref().is_some_and(|t| {
            t.rsplit_once(':').is_some_and(|(host, port)| {
                port == "{port}"
                    && host
                        .trim_matches(|c| c == '[' || c == ']')
                        .parse::<IpAddr>()
                        .is_ok()
            })
        })
    }
}

/// The kernel's ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`), if readable.
pub fn ephemeral_ports() -> Option<PortRange> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut parts = text.split_whitespace().map(|p| p.parse::<u16>());
    let (Some(Ok(first)), Some(Ok(last))) = (parts.next(), parts.next()) else {
        return None;
    };
    Some(PortRange { first, last })
}

/// Kubernetes' default NodePort range.
pub const NODE_PORTS: PortRange = PortRange {
    first: 30000,
    last: 32767,
};

/// Advice that does not make the config invalid: a zone overlapping the kernel's ephemeral
/// ports (outgoing connections may take them), or NodePort targets outside the NodePort range.
pub fn warnings(media: &Media, ephemeral: Option<PortRange>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, z) in media.zone.iter().enumerate() {
        if let Some(e) = ephemeral.filter(|e| e.overlaps(&z.ports)) {
            out.push(format!(
                "media.zone[{i}] ({}): ports {} overlap the kernel's ephemeral ports {e} \
                 (net.ipv4.ip_local_port_range); outgoing connections may take them",
                z.name, z.ports
            ));
        }
        if z.targets_node_ports()
            && !(NODE_PORTS.contains(z.ports.first) && NODE_PORTS.contains(z.ports.last))
        {
            out.push(format!(
                "media.zone[{i}] ({}): the targets are NodePorts but {} leaves the NodePort \
                 range {NODE_PORTS}",
                z.name, z.ports
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_compare() {
        let r = parse_port_range("30300-30399").unwrap();
        assert_eq!((r.first, r.last, r.len()), (30300, 30399, 100));
        assert_eq!(parse_port_range("10000").unwrap().len(), 1);
        for bad in ["", "0-10", "20-10", "a-b", "1-70000", "30300-"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
        let s1 = parse_port_range("30400-30499").unwrap();
        assert!(!r.overlaps(&s1));
        assert!(r.overlaps(&parse_port_range("30399-30400").unwrap()));
    }

    #[test]
    fn templates_expand_per_port() {
        let t = "shard-0-jvb-{index}.shard-0-jvb.jitsi.svc.cluster.local.:{port}";
        assert_eq!(
            expand_target(t, 3, 30303),
            "shard-0-jvb-3.shard-0-jvb.jitsi.svc.cluster.local.:30303"
        );
        assert_eq!(split_target("[::1]:10000").unwrap(), ("::1", 10000));
        assert_eq!(
            split_target("jvb-0.jvb:10000").unwrap(),
            ("jvb-0.jvb", 10000)
        );
        assert!(split_target("jvb-0.jvb").is_err());
        assert!(split_target("jvb-{index}:1").is_err());
    }

    #[test]
    fn warnings_name_ephemeral_overlap_and_node_port_range() {
        let zone = |ports: &str, target: &str| Zone {
            name: "z".into(),
            bind: any_v4(),
            ports: parse_port_range(ports).unwrap(),
            target: Some(target.into()),
            targets: vec![],
            idle: sixty_s(),
            max_flows_per_source: 64,
            max_flows: 1000,
        };
        let media = |z: Zone| Media {
            zone: vec![z],
            threads: None,
        };
        let eph = parse_port_range("32768-60999").ok();
        assert!(warnings(&media(zone("30300-30399", "10.0.0.7:{port}")), eph).is_empty());
        let w = warnings(&media(zone("40000-40099", "10.0.0.7:{port}")), eph);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("ephemeral") && w[1].contains("NodePort"),
            "{w:?}"
        );
        // A pod name target is not a NodePort: only the ephemeral overlap is reported.
        let w = warnings(&media(zone("40000-40099", "jvb-{index}.jvb:10000")), eph);
        assert_eq!(w.len(), 1, "{w:?}");
    }
}
