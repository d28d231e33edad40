//! A real, authoritative DNS server on loopback, inside the test process, whose records a test
//! changes while it runs. shardgate (a separate process) is pointed at it with
//! `resolver.nameservers = ["127.0.0.1:<port>"]`.
//!
//! It answers over UDP and TCP on the same port. Semantics:
//! - names are case-insensitive; a trailing dot is optional in this API;
//! - a known name answers with its records, authoritatively (AA set);
//! - a name that exists with other record types only (or only has names below it) answers
//!   NOERROR with an empty answer section; any other name answers NXDOMAIN. Negative answers
//!   carry no SOA, so resolvers do not cache them (no negative TTL);
//! - SRV answers carry, in the additional section, the A/AAAA records this server has for the
//!   targets (as CoreDNS does for headless services);
//! - UDP answers larger than the client's payload size (512, or its EDNS size) are truncated
//!   (TC set), and the client retries over TCP.
//!
//! Changes take effect for the next query. Dropping the `DnsServer` stops it.
//! The server runs as tasks on the tokio runtime that called [`DnsServer::start`], so that
//! runtime must keep running (await, don't block the thread) while something queries it.

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, SRV};
use hickory_resolver::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// The EDNS payload size this server advertises in its answers.
const SERVER_EDNS_PAYLOAD: u16 = 1232;

/// A record set with its TTL.
#[derive(Clone, Debug)]
struct RrSet<T> {
    ttl: u32,
    items: Vec<T>,
}

/// Everything the server knows about one name.
#[derive(Clone, Debug, Default)]
struct Node {
    /// (priority, weight, port, normalized target)
    srv: Option<RrSet<(u16, u16, u16, String)>>,
    /// IPv4 and IPv6 addresses together; A and AAAA queries pick by family.
    addrs: Option<RrSet<IpAddr>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.srv.is_none() && self.addrs.is_none()
    }
}

#[derive(Default)]
struct State {
    /// Keyed by normalized name (lowercase, no trailing dot).
    names: HashMap<String, Node>,
    reversed: bool,
    paused: bool,
    /// Queries received per normalized name, whatever the type, paused or not.
    queries: HashMap<String, usize>,
}

impl State {
    /// The name exists if it has records or some name below it has (an empty non-terminal).
    fn exists(&self, key: &str) -> bool {
        if self.names.contains_key(key) {
            return true;
        }
        let suffix = format!(".{key}");
        self.names.keys().any(|k| k.ends_with(&suffix))
    }
}

/// A DNS server on `127.0.0.1:<port>` (UDP and TCP).
pub struct DnsServer {
    /// Where it listens, UDP and TCP.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds 127.0.0.1 on a free port, UDP and TCP on the same port, and starts serving on the
    /// current tokio runtime. It knows no names yet.
    pub async fn start() -> DnsServer {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("udp local_addr");
        let state = Arc::new(Mutex::new(State::default()));
        let tasks = vec![
            tokio::spawn(serve_udp(udp, state.clone())),
            tokio::spawn(serve_tcp(tcp, state.clone())),
        ];
        DnsServer { addr, state, tasks }
    }

    /// `host:port` for a shardgate config: `resolver.nameservers = ["<this>"]`.
    pub fn nameserver(&self) -> String {
        self.addr.to_string()
    }

    /// Sets the SRV records of `name`, replacing any. Each record is (priority, weight, port,
    /// target). An empty slice removes the SRV records.
    pub fn set_srv(&self, name: &str, ttl: u32, records: &[(u16, u16, u16, &str)]) {
        let key = normalize(name);
        let items: Vec<_> = records
            .iter()
            .map(|&(priority, weight, port, target)| (priority, weight, port, normalize(target)))
            .collect();
        let mut state = self.lock();
        let node = state.names.entry(key.clone()).or_default();
        node.srv = (!items.is_empty()).then_some(RrSet { ttl, items });
        if node.is_empty() {
            state.names.remove(&key);
        }
    }

    /// Sets the addresses of `name`, replacing any: IPv4 ones answer A queries, IPv6 ones AAAA
    /// queries, all with this TTL. An empty slice removes the addresses.
    pub fn set_a(&self, name: &str, ttl: u32, ips: &[IpAddr]) {
        let key = normalize(name);
        let mut state = self.lock();
        let node = state.names.entry(key.clone()).or_default();
        node.addrs = (!ips.is_empty()).then(|| RrSet {
            ttl,
            items: ips.to_vec(),
        });
        if node.is_empty() {
            state.names.remove(&key);
        }
    }

    /// Removes every record of `name` (it answers NXDOMAIN unless names below it exist).
    pub fn remove(&self, name: &str) {
        self.lock().names.remove(&normalize(name));
    }

    /// Answer records (and additional records) in reverse order of how they were set.
    pub fn set_answer_order_reversed(&self, reversed: bool) {
        self.lock().reversed = reversed;
    }

    /// From now on, drop every query silently, UDP and TCP (a dead server). Queries are still
    /// counted by [`DnsServer::queries`].
    pub fn pause(&self) {
        self.lock().paused = true;
    }

    /// Answer queries again.
    pub fn resume(&self) {
        self.lock().paused = false;
    }

    /// How many queries for `name` (any type, UDP or TCP, answered or dropped while paused)
    /// this server has received.
    pub fn queries(&self, name: &str) -> usize {
        self.lock()
            .queries
            .get(&normalize(name))
            .copied()
            .unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Lowercase, no trailing dot; panics on a name that is not a valid DNS name.
fn normalize(name: &str) -> String {
    let key = name.trim_end_matches('.').to_ascii_lowercase();
    assert!(!key.is_empty(), "DnsServer: empty name {name:?}");
    Name::from_ascii(&key).unwrap_or_else(|e| panic!("DnsServer: bad name {name:?}: {e}"));
    key
}

fn name_key(name: &Name) -> String {
    name.to_lowercase()
        .to_ascii()
        .trim_end_matches('.')
        .to_string()
}

fn fqdn(key: &str) -> Name {
    let mut name = Name::from_ascii(key).expect("normalized names parse");
    name.set_fqdn(true);
    name
}

/// A UDP socket and a TCP listener on the same free loopback port.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = udp.local_addr().expect("udp local_addr");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("DnsServer: no loopback port free for both UDP and TCP");
}

async fn serve_udp(socket: UdpSocket, state: Arc<Mutex<State>>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => continue,
        };
        if let Some(reply) = handle(&state, &buf[..n], true) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<Mutex<State>>) {
    // Connection tasks live in this set: aborting this task drops the set, which aborts them.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    conns.spawn(serve_tcp_conn(stream, state.clone()));
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_tcp_conn(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    loop {
        let len = match stream.read_u16().await {
            Ok(len) => usize::from(len),
            Err(_) => return,
        };
        let mut msg = vec![0u8; len];
        if stream.read_exact(&mut msg).await.is_err() {
            return;
        }
        let Some(reply) = handle(&state, &msg, false) else {
            continue;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            continue;
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&reply_len.to_be_bytes());
        out.extend_from_slice(&reply);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// One query in, the encoded reply out (None: no reply, because paused or unparseable).
fn handle(state: &Mutex<State>, packet: &[u8], udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    if request.message_type != MessageType::Query {
        return None;
    }
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    for q in &request.queries {
        *state.queries.entry(name_key(q.name())).or_default() += 1;
    }
    if state.paused {
        return None;
    }
    let response = respond(&state, &request);
    drop(state);

    let bytes = response.to_vec().ok()?;
    if udp && bytes.len() > usize::from(request.max_payload()) {
        // Too big for the client's UDP buffer: header, question and OPT only, TC set.
        let mut truncated = Message::response(request.id, request.op_code);
        truncated.metadata = response.metadata;
        truncated.metadata.truncation = true;
        truncated.add_queries(request.queries.iter().cloned());
        truncated.edns = response.edns.clone();
        return truncated.to_vec().ok();
    }
    Some(bytes)
}

fn respond(state: &State, request: &Message) -> Message {
    let mut response = Message::response(request.id, request.op_code);
    response.metadata.recursion_desired = request.recursion_desired;
    response.metadata.checking_disabled = request.checking_disabled;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(SERVER_EDNS_PAYLOAD);
        response.set_edns(edns);
    }

    if request.op_code != OpCode::Query {
        response.metadata.response_code = ResponseCode::NotImp;
        return response;
    }
    let [query] = request.queries.as_slice() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    response.metadata.authoritative = true;
    if query.query_class() != DNSClass::IN {
        response.metadata.response_code = ResponseCode::Refused;
        return response;
    }

    let key = name_key(query.name());
    if !state.exists(&key) {
        response.metadata.response_code = ResponseCode::NXDomain;
        return response;
    }
    let Some(node) = state.names.get(&key) else {
        return response; // an empty non-terminal: NOERROR, no data
    };

    let qtype = query.query_type();
    // Answer records carry the name exactly as asked (case included).
    let owner = query.name().clone();
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    if matches!(qtype, RecordType::SRV | RecordType::ANY) {
        if let Some(srv) = &node.srv {
            let mut targets: Vec<&str> = Vec::new();
            for (priority, weight, port, target) in &srv.items {
                let rdata = SRV::new(*priority, *weight, *port, fqdn(target));
                answers.push(Record::from_rdata(
                    owner.clone(),
                    srv.ttl,
                    RData::SRV(rdata),
                ));
                if !targets.contains(&target.as_str()) {
                    targets.push(target);
                }
            }
            for target in targets {
                if let Some(addrs) = state.names.get(target).and_then(|n| n.addrs.as_ref()) {
                    let target = fqdn(target);
                    additionals.extend(address_records(&target, addrs, true, true));
                }
            }
        }
    }
    if let Some(addrs) = &node.addrs {
        let want_v4 = matches!(qtype, RecordType::A | RecordType::ANY);
        let want_v6 = matches!(qtype, RecordType::AAAA | RecordType::ANY);
        answers.extend(address_records(&owner, addrs, want_v4, want_v6));
    }
    if state.reversed {
        answers.reverse();
        additionals.reverse();
    }
    response.add_answers(answers);
    response.add_additionals(additionals);
    response
}

fn address_records(owner: &Name, addrs: &RrSet<IpAddr>, v4: bool, v6: bool) -> Vec<Record> {
    addrs
        .items
        .iter()
        .filter_map(|ip| {
            let rdata = match *ip {
                IpAddr::V4(ip) if v4 => RData::A(A(ip)),
                IpAddr::V6(ip) if v6 => RData::AAAA(AAAA(ip)),
                _ => return None,
            };
            Some(Record::from_rdata(owner.clone(), addrs.ttl, rdata))
        })
        .collect()
}

/// The SRV name the shard tests publish under, with one `<name>.web.jitsi.test.` target each.
pub const SHARDS_SRV: &str = "_http._tcp.web.jitsi.test.";

/// Publishes `backends` (each on 127.0.0.1) as the SRV targets of [`SHARDS_SRV`].
pub fn publish_shards(dns: &DnsServer, ttl: u32, backends: &[&super::Backend]) {
    let records: Vec<(u16, u16, u16, String)> = backends
        .iter()
        .map(|b| (10, 50, b.addr.port(), format!("{}.web.jitsi.test.", b.name)))
        .collect();
    let refs: Vec<(u16, u16, u16, &str)> = records
        .iter()
        .map(|(p, w, port, t)| (*p, *w, *port, t.as_str()))
        .collect();
    dns.set_srv(SHARDS_SRV, ttl, &refs);
    for b in backends {
        dns.set_a(
            &format!("{}.web.jitsi.test.", b.name),
            ttl,
            &["127.0.0.1".parse::<IpAddr>().unwrap()],
        );
    }
}
