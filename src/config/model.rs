//! The config file's shape (serde). Unknown keys are errors everywhere; durations are strings.
//! Defaults here are the documented defaults of the README's configuration reference.

use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A whole config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listener: Vec<Listener>,
    pub admin: Option<Admin>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub resolver: Resolver,
    #[serde(default)]
    pub pool: Vec<Pool>,
    #[serde(default)]
    pub route: Vec<Route>,
    /// The UDP media relay.
    #[serde(default)]
    pub media: super::Media,
    /// The in-process SFU.
    pub sfu: Option<super::Sfu>,
    /// Stick-table replication between edge replicas.
    pub peers: Option<super::Peers>,
}

/// Where clients connect: plain HTTP, or TLS with HTTP/2 and HTTP/1.1 by ALPN.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    #[serde(deserialize_with = "socket_addr")]
    pub addr: SocketAddr,
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Offer HTTP/2 by ALPN (HTTP/1.1 is always offered).
    #[serde(default = "yes")]
    pub h2: bool,
    /// More certificates, each presented to clients that ask (SNI) for one of the DNS names
    /// it carries; `cert`/`key` above is the default for every other name.
    #[serde(default)]
    pub sni: Vec<CertPair>,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The admin listener: `/healthz`, `/readyz`, `/metrics`, and `/admin/*` behind the token.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(deserialize_with = "socket_addr")]
    pub addr: SocketAddr,
    /// Bearer token for `/admin/*`. Without one, `/admin/*` answers 403.
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP connect to a shard.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub connect: Duration,
    /// Inactivity of an HTTP exchange (reading a body, waiting for a response). BOSH holds
    /// requests for about 60 s, so this must stay above that.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub idle: Duration,
    /// Inactivity of an upgraded (WebSocket) connection, either way.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub tunnel: Duration,
    /// How long a client connection may sit idle between two requests.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub keepalive: Duration,
    /// How long a client has to send a whole request head (from its connection, or from the
    /// first byte of a later request); later gets 408.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub request_head: Duration,
    /// After SIGTERM, open tunnels are kept this long.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub shutdown_grace: Duration,
    /// After SIGTERM, `/readyz` answers 503 at once and the listeners keep accepting this long,
    /// so load balancers notice before connections are refused.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub shutdown_delay: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            idle: Duration::from_secs(90),
            tunnel: Duration::from_secs(3600),
            keepalive: Duration::from_secs(60),
            request_head: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(7200),
            shutdown_delay: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request header block (request line + headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Client connections served at once (all listeners); past it, new connections wait in
    /// the listen backlog.
    pub max_connections: usize,
    /// Longest room key (bytes, after decoding); a longer room name gets 400.
    pub max_room_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 32 * 1024,
            max_connections: 20_000,
            max_room_bytes: 256,
        }
    }
}

/// How names are resolved for discovery.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resolver {
    /// `ip:port` of DNS servers; empty: those of /etc/resolv.conf.
    #[serde(deserialize_with = "socket_addrs")]
    pub nameservers: Vec<SocketAddr>,
    /// While lookups fail, the last good answer is kept this long.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub hold_valid: Duration,
    /// Answers are looked up again after their TTL, clamped to these bounds.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub min_ttl: Duration,
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub max_ttl: Duration,
    /// One query's timeout.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub timeout: Duration,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            nameservers: Vec::new(),
            hold_valid: Duration::from_secs(300),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Where a pool's members come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemberSource<'a> {
    /// Every target of this SRV name is a member.
    Srv(&'a str),
    /// Every address of this `name:port` is a member.
    Dns(&'a str),
    /// The listed members.
    List(&'a [ShardSpec]),
}

impl Pool {
    /// Where the members come from, whether they are shards or instances.
    pub fn members(&self) -> MemberSource<'_> {
        let (srv, dns, list) = match (&self.shards, &self.instances) {
            (Some(s), _) => (&s.srv, &s.dns, &s.list[..]),
            (None, Some(i)) => (&i.srv, &i.dns, &i.list[..]),
            (None, None) => return MemberSource::List(&[]),
        };
        match (srv, dns) {
            (Some(srv), _) => MemberSource::Srv(srv),
            (None, Some(dns)) => MemberSource::Dns(dns),
            (None, None) => MemberSource::List(list),
        }
    }
}

/// Splits `name:port` (port required).
pub fn host_port(text: &str) -> Option<(&str, u16)> {
    let (name, port) = text.rsplit_once(':')?;
    Some((name, port.parse().ok().filter(|p| *p > 0)?))
}

/// A named set of backends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub name: String,
    pub shards: Option<Shards>,
    /// Members addressed by name from a URL segment (JVBs, sftd pods) instead of by room.
    pub instances: Option<Instances>,
    #[serde(default)]
    pub sticky: Sticky,
    /// How long a shard that refused a connection stays out of rotation before it is tried again.
    #[serde(
        default = "default_passive_down",
        deserialize_with = "super::duration::deserialize"
    )]
    pub passive_down: Duration,
    /// Active health check of every shard address.
    pub health: Option<Health>,
    /// HAProxy-compatible agent check (`ready`, `drain`, `maint`, `up`, `down`, `N%`).
    pub agent: Option<Agent>,
    /// A shard that vanished from DNS keeps serving its stuck rooms (draining) this long.
    #[serde(
        default = "default_linger",
        deserialize_with = "super::duration::deserialize"
    )]
    pub linger: Duration,
    /// Connect to the members over TLS, optionally presenting a client certificate (mTLS).
    pub tls: Option<UpstreamTls>,
}

/// TLS towards a pool's members. The files are watched and reloaded like listener certificates
/// (spiffe-helper rotating an SVID): new connections use the new ones.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Sent as SNI and, with `verify = "full"`, the name the member's certificate must carry.
    pub server_name: Option<String>,
    #[serde(default)]
    pub verify: Verify,
    /// PEM bundle of the CAs a member's certificate must chain to (default: the system's).
    pub ca: Option<PathBuf>,
    /// PEM certificate chain presented to the members (mTLS); needs `client_key`.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// How a member's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    /// Chain to a trusted CA and carry `server_name`.
    #[default]
    Full,
    /// Chain to a trusted CA, any name (SPIFFE SVIDs carry URI names, not DNS ones).
    Chain,
    /// No check at all: only for tests and trusted networks.
    None,
}

fn default_passive_down() -> Duration {
    Duration::from_secs(10)
}

fn default_linger() -> Duration {
    Duration::from_secs(600)
}

/// Active health check: an HTTP GET of `path` (expecting `expect`), or a TCP connect when no
/// path is given. A shard is down after `fall` failed rounds in a row and up again after
/// `rise` good ones; a round is good when any of the shard's addresses passes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub path: Option<String>,
    #[serde(default = "ok")]
    pub expect: u16,
    #[serde(default = "two_s", deserialize_with = "super::duration::deserialize")]
    pub interval: Duration,
    #[serde(default = "one_s", deserialize_with = "super::duration::deserialize")]
    pub timeout: Duration,
    #[serde(default = "two")]
    pub rise: u32,
    #[serde(default = "three")]
    pub fall: u32,
}

/// Agent check: connect to each shard address's IP on `port` and read one line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub port: u16,
    #[serde(default = "two_s", deserialize_with = "super::duration::deserialize")]
    pub interval: Duration,
    #[serde(default = "one_s", deserialize_with = "super::duration::deserialize")]
    pub timeout: Duration,
}

fn two_s() -> Duration {
    Duration::from_secs(2)
}
fn one_s() -> Duration {
    Duration::from_secs(1)
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}

/// Instance members: found like shards (`srv` or `list`), routed to by an id in the URL.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instances {
    #[serde(default)]
    pub list: Vec<ShardSpec>,
    pub srv: Option<String>,
    /// `name:port`: every A/AAAA address of the name is one member, named by its address.
    pub dns: Option<String>,
    /// How a URL segment names a member.
    #[serde(default)]
    pub id: InstanceId,
}

/// How a URL segment names an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceId {
    /// The member's host name (SRV target or list name), or its first label (`jvb-0` of
    /// `jvb-0.jvb.jitsi.svc`): StatefulSet pod names.
    #[default]
    Host,
    /// One of the member's IP addresses (docker-jitsi-meet's default `JVB_WS_SERVER_ID`).
    Ip,
    /// `jvb-<o2>-<o3>-<o4>` for a member at `<o1>.<o2>.<o3>.<o4>` (Jitsi's production form).
    JitsiOctets,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shards {
    /// Shards listed by name, each with static addresses or its own SRV name.
    #[serde(default)]
    pub list: Vec<ShardSpec>,
    /// An SRV name whose every target is one shard, named by its target host.
    pub srv: Option<String>,
    /// `name:port`: every A/AAAA address of the name is one shard, named by its address.
    pub dns: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardSpec {
    /// Stable identity: the room hash is keyed by this name, so replicas agree.
    pub name: String,
    /// `ip:port` of the shard's web servers; requests are spread over them.
    #[serde(default, deserialize_with = "socket_addrs")]
    pub addrs: Vec<SocketAddr>,
    /// Or an SRV name listing the shard's web servers (several pods of one shard).
    pub srv: Option<String>,
    /// Or `name:port`: the shard's web servers are the name's A/AAAA addresses.
    pub host: Option<String>,
    /// Rendezvous weight; a shard of weight 2 gets about twice the new rooms of weight 1.
    #[serde(default = "one")]
    pub weight: u32,
    /// Take no new rooms; keep the rooms already stuck here.
    #[serde(default)]
    pub drain: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sticky {
    /// A room's entry is forgotten after this long without traffic.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub ttl: Duration,
    /// Most rooms remembered; the least useful entries are evicted past it.
    pub capacity: u64,
}

impl Default for Sticky {
    fn default() -> Self {
        Sticky {
            ttl: Duration::from_secs(600),
            capacity: 1_000_000,
        }
    }
}

/// Routes are tried in file order; the first whose host and path match takes the request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Label in metrics and logs (default: the host and path prefix).
    pub name: Option<String>,
    /// Match requests whose path starts with this (default `/`).
    #[serde(default = "slash")]
    pub path_prefix: String,
    /// Match only this Host (without port, case-insensitive).
    pub host: Option<String>,
    /// Room-sticky over a shard pool.
    pub shard: Option<ShardAction>,
    /// Plain balancing over a pool's shards (round robin over those up).
    pub pool: Option<String>,
    /// To the instance a URL segment names, only if it is a current member.
    pub instance: Option<InstanceAction>,
    /// A fixed answer from the edge.
    pub respond: Option<Respond>,
    /// The in-process SFU (`[sfu]`): its meeting page, WebSocket signalling and WHIP/WHEP
    /// under `path_prefix`.
    #[serde(default)]
    pub sfu: bool,
    /// Remove `path_prefix` from the path before forwarding (`/sftd/x` -> `/x`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Cross-origin requests: preflights answered at the edge, WebSocket upgrades from other
    /// origins refused.
    pub cors: Option<Cors>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceAction {
    pub pool: String,
    /// Which path segment is the id, counting from 1 (`/colibri-ws/<id>/…`: 2).
    pub segment: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins allowed (`https://meet.example.com`), or `"*"` for any.
    pub allow_origin: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardAction {
    pub pool: String,
    #[serde(default)]
    pub key: RoomKeySource,
}

/// Where the room key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKeySource {
    /// `?room=` with the tenant from `/<tenant>/http-bind` and similar (Jitsi).
    #[default]
    RoomParam,
    /// The last path segment (`/<room>`).
    LastSegment,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default = "text_plain")]
    pub content_type: String,
}

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn ok() -> u16 {
    200
}
fn slash() -> String {
    "/".to_owned()
}
fn text_plain() -> String {
    "text/plain; charset=utf-8".to_owned()
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("\"{text}\" is not an ip:port; expected e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"")
    })
}

pub(crate) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parse_addr(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn socket_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|a| parse_addr(a))
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

/// Stand-ins for parts of a file that failed to deserialize, so the rest can still be
/// validated. Never served: a file with any error is rejected as a whole.
impl Config {
    pub(crate) fn placeholder() -> Self {
        Config {
            listener: Vec::new(),
            admin: None,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            resolver: Resolver::default(),
            pool: Vec::new(),
            route: Vec::new(),
            media: super::Media::default(),
            sfu: None,
            peers: None,
        }
    }

    /// Moves the section `key` of `part` (a config holding only that section) into `self`.
    pub(crate) fn take_section(&mut self, key: &str, part: Config) {
        match key {
            "listener" => self.listener = part.listener,
            "admin" => self.admin = part.admin,
            "timeouts" => self.timeouts = part.timeouts,
            "limits" => self.limits = part.limits,
            "resolver" => self.resolver = part.resolver,
            "pool" => self.pool = part.pool,
            "route" => self.route = part.route,
            "media" => self.media = part.media,
            "sfu" => self.sfu = part.sfu,
            "peers" => self.peers = part.peers,
            _ => {}
        }
    }
}

impl Listener {
    pub(crate) fn placeholder() -> Self {
        Listener {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            tls: None,
        }
    }
}

impl Pool {
    pub(crate) fn placeholder(name: String) -> Self {
        Pool {
            name,
            shards: None,
            instances: None,
            sticky: Sticky::default(),
            passive_down: default_passive_down(),
            health: None,
            agent: None,
            linger: default_linger(),
            tls: None,
        }
    }
}

impl Route {
    pub(crate) fn placeholder() -> Self {
        Route {
            name: None,
            path_prefix: slash(),
            host: None,
            shard: None,
            pool: None,
            instance: None,
            strip_prefix: false,
            cors: None,
            sfu: false,
            respond: Some(Respond {
                status: ok(),
                body: String::new(),
                content_type: text_plain(),
            }),
        }
    }
}
