//! `[sfu]`: the in-process SFU for small deployments (one UDP port for every peer, ICE-lite).

use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sfu {
    /// The one UDP address all media uses (every peer of every room on this port).
    #[serde(deserialize_with = "super::model::socket_addr")]
    pub udp: SocketAddr,
    /// The address browsers are told to send media to, when it is not `udp`'s: the public IP
    /// of a 1:1 NAT (a cloud VM's elastic IP), like sftd's external IP. Required when `udp`
    /// binds every address (`0.0.0.0`).
    pub public_ip: Option<IpAddr>,
    /// The public port, when the NAT maps another port to `udp`'s (default: `udp`'s port).
    pub public_port: Option<u16>,
    /// Rooms open at once; a join that would open another is refused.
    #[serde(default = "default_max_rooms")]
    pub max_rooms: usize,
    /// Peers (participants, WHIP publishers, WHEP viewers) in one room.
    #[serde(default = "default_max_peers_per_room")]
    pub max_peers_per_room: usize,
}

fn default_max_rooms() -> usize {
    100
}

fn default_max_peers_per_room() -> usize {
    16
}

impl Sfu {
    /// The address advertised in SDP answers (the ICE-lite host candidate).
    pub fn advertised(&self) -> SocketAddr {
        SocketAddr::new(
            self.public_ip.unwrap_or(self.udp.ip()),
            self.public_port.unwrap_or(self.udp.port()),
        )
    }
}

/// Rules serde cannot express, as (key path, message) pairs.
pub(crate) fn validate(sfu: &Sfu) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    match sfu.public_ip {
        None if sfu.udp.ip().is_unspecified() => errors.push((
            "sfu.public_ip".into(),
            format!(
                "udp = \"{}\" binds every address; expected public_ip = the address browsers reach this host on",
                sfu.udp
            ),
        )),
        Some(ip) if ip.is_unspecified() || ip.is_multicast() => errors.push((
            "sfu.public_ip".into(),
            format!("{ip} cannot receive media; expected this host's public address"),
        )),
        _ => {}
    }
    if sfu.udp.port() == 0 {
        errors.push((
            "sfu.udp".into(),
            "port 0; expected a fixed port browsers can be told (and a firewall opened for)".into(),
        ));
    }
    if sfu.public_port == Some(0) {
        errors.push(("sfu.public_port".into(), "must be a port, 1-65535".into()));
    }
    if sfu.max_rooms == 0 {
        errors.push(("sfu.max_rooms".into(), "must be at least 1".into()));
    }
    if sfu.max_peers_per_room < 2 {
        errors.push((
            "sfu.max_peers_per_room".into(),
            "must be at least 2 (a room of one sees no one)".into(),
        ));
    }
    errors
}
