//! The relay's I/O: threads of their own (media never waits behind HTTP work), each with a
//! single-threaded tokio runtime, a socket per public port (SO_REUSEPORT, so the kernel keeps a
//! client on one thread and its flow table), and an upstream socket per flow. Receives are
//! batched (recvmmsg, and GRO coalescing a client's burst); consecutive datagrams of a batch for
//! one destination are sent on as one GSO send when the kernel can (see `burst`), so a burst
//! costs about one trip through the kernel's UDP stack each way.

use super::burst::Burst;
use super::core::{Core, DropReason, FlowId, Limits, SourceCounts, Verdict};
use super::targets::ZoneTargets;
use crate::config::{Media, Zone};
use crate::state::Shared;
use prometheus::local::LocalIntCounter;
use prometheus::IntGauge;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// The largest datagram relayed (a GRO burst can be up to 64 KiB).
const MAX_BURST: usize = 64 * 1024;

/// Which way a datagram goes: client to target, or back.
#[derive(Clone, Copy)]
enum Direction {
    In,
    Out,
}

/// One zone's counters on one relay thread: local (no atomic per datagram, no cache line
/// shared between relay threads), flushed to the registry by the thread's timer loop.
struct ZoneMetrics {
    datagrams_in: LocalIntCounter,
    bytes_in: LocalIntCounter,
    datagrams_out: LocalIntCounter,
    bytes_out: LocalIntCounter,
    drops: HashMap<DropReason, LocalIntCounter>,
    /// Datagrams dropped because a socket's send buffer was full.
    send_full: LocalIntCounter,
    flows: IntGauge,
}

impl ZoneMetrics {
    fn new(shared: &Shared, zone: &str) -> Self {
        let m = &shared.metrics;
        ZoneMetrics {
            datagrams_in: m.media_datagrams.with_label_values(&[zone, "in"]).local(),
            bytes_in: m.media_bytes.with_label_values(&[zone, "in"]).local(),
            datagrams_out: m.media_datagrams.with_label_values(&[zone, "out"]).local(),
            bytes_out: m.media_bytes.with_label_values(&[zone, "out"]).local(),
            drops: DropReason::ALL
                .iter()
                .map(|&r| {
                    (
                        r,
                        m.media_drops.with_label_values(&[zone, r.label()]).local(),
                    )
                })
                .collect(),
            send_full: m
                .media_drops
                .with_label_values(&[zone, "send_buffer_full"])
                .local(),
            flows: m.media_flows.with_label_values(&[zone]),
        }
    }

    fn dropped(&self, reason: DropReason, datagrams: usize) {
        self.drops[&reason].inc_by(datagrams as u64);
    }

    /// Counts one send of `datagrams` (`bytes` in all): relayed, or dropped on a full buffer.
    fn sent(&self, direction: Direction, ok: bool, datagrams: usize, bytes: usize) {
        if !ok {
            self.send_full.inc_by(datagrams as u64);
            return;
        }
        let (d, b) = match direction {
            Direction::In => (&self.datagrams_in, &self.bytes_in),
            Direction::Out => (&self.datagrams_out, &self.bytes_out),
        };
        d.inc_by(datagrams as u64);
        b.inc_by(bytes as u64);
    }

    fn flush(&self) {
        for c in [
            &self.datagrams_in,
            &self.bytes_in,
            &self.datagrams_out,
            &self.bytes_out,
            &self.send_full,
        ]
        .into_iter()
        .chain(self.drops.values())
        {
            c.flush();
        }
    }
}

/// A UDP socket with its quinn-udp state (batched receive, GRO/GSO).
struct Socket {
    io: UdpSocket,
    state: UdpSocketState,
    /// The one peer of a flow's socket: connected, so the kernel keeps the route and drops
    /// datagrams from anyone else.
    peer: Option<SocketAddr>,
}

impl Socket {
    /// A socket on an ephemeral port, connected to `peer`.
    fn connected(peer: SocketAddr) -> std::io::Result<Socket> {
        let local = match peer.ip() {
            IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        let domain = socket2::Domain::for_address(local);
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        s.set_nonblocking(true)?;
        s.bind(&local.into())?;
        s.connect(&peer.into())?;
        let std: std::net::UdpSocket = s.into();
        let state = UdpSocketState::new((&std).into())?;
        Ok(Socket {
            io: UdpSocket::from_std(std)?,
            state,
            peer: Some(peer),
        })
    }

    /// Sends `data` (one datagram, or a GRO burst of `stride`-sized ones) to `to`: one GSO
    /// send when the kernel takes it, else one send per datagram. `false` when the socket's
    /// buffer is full (the datagrams are dropped, as a router would).
    fn send(&self, to: SocketAddr, data: &[u8], stride: usize) -> bool {
        if data.is_empty() {
            // An empty datagram is a datagram too (chunks of nothing would send nothing).
            return self.send_one(to, data);
        }
        let segments = data.len().div_ceil(stride.max(1));
        if segments > 1 && segments <= self.state.max_gso_segments() {
            let t = Transmit {
                destination: to,
                ecn: None,
                contents: data,
                segment_size: Some(stride),
                src_ip: None,
            };
            if self.try_send(&t) {
                return true;
            }
        }
        data.chunks(stride.max(1))
            .all(|chunk| self.send_one(to, chunk))
    }

    fn send_one(&self, to: SocketAddr, data: &[u8]) -> bool {
        if self.peer == Some(to) {
            return self.try_send_connected(data);
        }
        self.try_send(&Transmit {
            destination: to,
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: None,
        })
    }

    /// One non-blocking send to the connected peer (no route lookup per datagram).
    fn try_send_connected(&self, data: &[u8]) -> bool {
        match socket2::SockRef::from(&self.io).send(data) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => {
                debug!(error = %e, "relay send failed");
                false
            }
        }
    }

    /// One non-blocking send. Not through tokio's readiness (a new socket has none yet, and
    /// nothing waits for writability: a full buffer drops the datagram).
    fn try_send(&self, t: &Transmit<'_>) -> bool {
        match self.state.try_send((&self.io).into(), t) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => {
                debug!(error = %e, to = %t.destination, "relay send failed");
                false
            }
        }
    }

    /// Receives a batch into `scratch` without waiting; `Ok(n)`: `scratch.meta[..n]`.
    fn try_recv(&self, scratch: &mut Scratch) -> std::io::Result<usize> {
        let mut slices: Vec<IoSliceMut<'_>> = scratch
            .buf
            .chunks_mut(MAX_BURST)
            .map(IoSliceMut::new)
            .collect();
        self.io.try_io(Interest::READABLE, || {
            self.state
                .recv((&self.io).into(), &mut slices, &mut scratch.meta)
        })
    }

    /// Waits for datagrams, then hands batches of them to `handle` until the socket is empty
    /// (or a few batches were handled: other sockets get their turn). The receive buffer is
    /// the thread's, used only between two waits.
    async fn serve(&self, mut handle: impl FnMut(&[u8], &[RecvMeta])) -> std::io::Result<()> {
        loop {
            self.io.readable().await?;
            let drained = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                for _ in 0..8 {
                    match self.try_recv(&mut scratch) {
                        Ok(n) => handle(&scratch.buf, &scratch.meta[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
                        Err(e) => return Err(e),
                    }
                }
                Ok(false)
            })?;
            if !drained {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// A relay thread's receive buffer: a slot per datagram of a batch, each large enough for a
/// GRO burst.
struct Scratch {
    buf: Vec<u8>,
    meta: Vec<RecvMeta>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        buf: vec![0u8; MAX_BURST * BATCH_SIZE],
        meta: vec![RecvMeta::default(); BATCH_SIZE],
    });
}

/// How many datagrams a receive holds (a GRO burst is several of `stride` bytes).
fn segments(meta: &RecvMeta) -> usize {
    meta.len.div_ceil(meta.stride.max(1))
}

/// A flow's upstream socket and the task receiving the target's replies on it.
struct FlowSocket {
    socket: Rc<Socket>,
    task: JoinHandle<()>,
}

/// One zone on one relay thread.
struct ZoneWorker {
    first_port: u16,
    core: RefCell<Core>,
    public: Vec<Rc<Socket>>,
    flows: RefCell<HashMap<FlowId, FlowSocket>>,
    targets: Arc<ZoneTargets>,
    seen_targets: RefCell<Arc<Vec<Option<SocketAddr>>>>,
    metrics: ZoneMetrics,
    /// Datagrams of the batch being handled, gathered per flow towards its target …
    to_targets: RefCell<Burst<(FlowId, SocketAddr)>>,
    /// … and per client (public port, client address) on the way back.
    to_clients: RefCell<Burst<(u16, SocketAddr)>>,
}

impl ZoneWorker {
    /// Follows a change of the zone's resolved targets. Called per received batch: a guard,
    /// not a clone of the `Arc` (whose count the relay threads would contend for).
    fn refresh_targets(&self) {
        let now = self.targets.current.load();
        if !Arc::ptr_eq(&now, &self.seen_targets.borrow()) {
            self.core.borrow_mut().set_targets(&now);
            *self.seen_targets.borrow_mut() = arc_swap::Guard::into_inner(now);
            self.close_ended();
        }
    }

    fn close_ended(&self) {
        let mut core = self.core.borrow_mut();
        let mut flows = self.flows.borrow_mut();
        while let Some(closed) = core.poll_closed() {
            if let Some(f) = flows.remove(&closed.0) {
                f.task.abort();
                self.metrics.flows.dec();
            }
        }
    }

    /// Datagrams from clients on public port `port`.
    fn on_client_datagrams(self: &Rc<Self>, port: u16, buf: &[u8], meta: &[RecvMeta]) {
        let now = Instant::now();
        let mut burst = self.to_targets.borrow_mut();
        for (m, data) in meta.iter().zip(buf.chunks(MAX_BURST)) {
            let data = &data[..m.len];
            let verdict = self.core.borrow_mut().from_client(port, m.addr, now);
            match verdict {
                Verdict::ToTarget { flow, to, new } => {
                    if new && !self.open_flow(flow, to) {
                        continue;
                    }
                    if !burst.add((flow, to), data, m.stride) {
                        self.send_to_target(&mut burst);
                        burst.add((flow, to), data, m.stride);
                    }
                }
                Verdict::Drop(reason) => self.metrics.dropped(reason, segments(m)),
                Verdict::ToClient { .. } => unreachable!("client datagrams go to targets"),
            }
        }
        self.send_to_target(&mut burst);
    }

    /// Sends what `burst` gathered for one flow through the flow's socket, and empties it.
    fn send_to_target(&self, burst: &mut Burst<(FlowId, SocketAddr)>) {
        if let Some(((flow, to), data, stride, n)) = burst.gathered() {
            let socket = self.flows.borrow().get(&flow).map(|f| f.socket.clone());
            if let Some(socket) = socket {
                let sent = socket.send(to, data, stride);
                self.metrics.sent(Direction::In, sent, n, data.len());
            }
        }
        burst.clear();
    }

    /// Binds the upstream socket of a new flow and starts receiving the target's replies.
    fn open_flow(self: &Rc<Self>, flow: FlowId, to: SocketAddr) -> bool {
        let socket = match Socket::connected(to) {
            Ok(s) => Rc::new(s),
            Err(e) => {
                warn!(error = %e, "cannot open a relay flow socket");
                return false;
            }
        };
        let worker = self.clone();
        let s = socket.clone();
        let task = tokio::task::spawn_local(async move {
            if let Err(e) = s
                .serve(|buf, meta| worker.on_target_datagrams(flow, buf, meta))
                .await
            {
                debug!(error = %e, "relay flow socket failed");
            }
        });
        self.flows
            .borrow_mut()
            .insert(flow, FlowSocket { socket, task });
        self.metrics.flows.inc();
        true
    }

    /// Datagrams on the upstream socket of `flow`.
    fn on_target_datagrams(&self, flow: FlowId, buf: &[u8], meta: &[RecvMeta]) {
        let now = Instant::now();
        let mut burst = self.to_clients.borrow_mut();
        for (m, data) in meta.iter().zip(buf.chunks(MAX_BURST)) {
            let data = &data[..m.len];
            let verdict = self.core.borrow_mut().from_target(flow, m.addr, now);
            match verdict {
                Verdict::ToClient { port, to } => {
                    if !burst.add((port, to), data, m.stride) {
                        self.send_to_client(&mut burst);
                        burst.add((port, to), data, m.stride);
                    }
                }
                Verdict::Drop(reason) => self.metrics.dropped(reason, segments(m)),
                Verdict::ToTarget { .. } => unreachable!("replies go to clients"),
            }
        }
        self.send_to_client(&mut burst);
    }

    /// Sends what `burst` gathered for one client from its public port, and empties it.
    fn send_to_client(&self, burst: &mut Burst<(u16, SocketAddr)>) {
        if let Some(((port, to), data, stride, n)) = burst.gathered() {
            let socket = &self.public[usize::from(port - self.first_port)];
            let sent = socket.send(to, data, stride);
            self.metrics.sent(Direction::Out, sent, n, data.len());
        }
        burst.clear();
    }
}

/// Binds every zone's public ports on every relay thread and starts the threads. Errors (a
/// port taken) come back before anything runs.
pub fn start(
    media: &Media,
    shared: Arc<Shared>,
    targets: &[Arc<ZoneTargets>],
) -> Result<(), String> {
    if media.zone.is_empty() {
        return Ok(());
    }
    let threads = media
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Sockets are bound here, on the caller's thread, so that a taken port fails the start.
    let sources: Vec<Arc<SourceCounts>> = media.zone.iter().map(|_| Arc::default()).collect();
    let mut per_thread: Vec<Vec<(Zone, Vec<std::net::UdpSocket>)>> = Vec::new();
    for _ in 0..threads {
        let mut zones = Vec::new();
        for z in &media.zone {
            let mut sockets = Vec::with_capacity(z.ports.len());
            for port in z.ports.ports() {
                let addr = SocketAddr::new(z.bind, port);
                let s = bind_std(addr)
                    .map_err(|e| format!("media zone {}: cannot bind UDP {addr}: {e}", z.name))?;
                sockets.push(s);
            }
            zones.push((z.clone(), sockets));
        }
        per_thread.push(zones);
    }
    for (t, zones) in per_thread.into_iter().enumerate() {
        let shared = shared.clone();
        let targets = targets.to_vec();
        let sources = sources.clone();
        std::thread::Builder::new()
            .name(format!("relay-{t}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!(error = %e, "relay thread cannot start");
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, run_thread(zones, shared, targets, sources));
            })
            .map_err(|e| format!("cannot start a relay thread: {e}"))?;
    }
    for z in &media.zone {
        info!(zone = %z.name, ports = %z.ports, bind = %z.bind, threads, "media relay listening");
    }
    Ok(())
}

/// Receive buffer asked for on public sockets, to ride out bursts (the kernel caps it at
/// `net.core.rmem_max`). Not more: under overload a deeper queue only adds delay, which real-time
/// media cannot use (about 25 ms at 200,000 datagrams/s of 200 bytes).
const PUBLIC_RECV_BUFFER: usize = 1 << 20;

fn bind_std(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    s.set_reuse_port(true)?;
    if let Err(e) = s.set_recv_buffer_size(PUBLIC_RECV_BUFFER) {
        debug!(error = %e, "cannot enlarge a relay socket's receive buffer");
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

async fn run_thread(
    zones: Vec<(Zone, Vec<std::net::UdpSocket>)>,
    shared: Arc<Shared>,
    targets: Vec<Arc<ZoneTargets>>,
    sources: Vec<Arc<SourceCounts>>,
) {
    let mut timers = Vec::new();
    for (i, (zone, sockets)) in zones.into_iter().enumerate() {
        let public: Vec<Rc<Socket>> = match sockets
            .into_iter()
            .map(|s| {
                let state = UdpSocketState::new((&s).into())?;
                Ok(Rc::new(Socket {
                    io: UdpSocket::from_std(s)?,
                    state,
                    peer: None,
                }))
            })
            .collect::<std::io::Result<_>>()
        {
            Ok(p) => p,
            Err(e) => {
                warn!(zone = %zone.name, error = %e, "relay sockets unusable");
                continue;
            }
        };
        let limits = Limits {
            idle: zone.idle,
            max_flows_per_source: zone.max_flows_per_source,
            max_flows: zone.max_flows as usize,
        };
        let gso = public.first().map_or(1, |s| s.state.max_gso_segments());
        let worker = Rc::new(ZoneWorker {
            first_port: zone.ports.first,
            core: RefCell::new(Core::new(zone.ports, limits, sources[i].clone())),
            public,
            flows: RefCell::new(HashMap::new()),
            seen_targets: RefCell::new(Arc::new(Vec::new())),
            targets: targets[i].clone(),
            metrics: ZoneMetrics::new(&shared, &zone.name),
            to_targets: RefCell::new(Burst::new(gso)),
            to_clients: RefCell::new(Burst::new(gso)),
        });
        worker.refresh_targets();
        for (k, socket) in worker.public.iter().enumerate() {
            let port = zone.ports.first + k as u16;
            let (w, s) = (worker.clone(), socket.clone());
            tokio::task::spawn_local(async move {
                loop {
                    let served = s
                        .serve(|buf, meta| {
                            w.refresh_targets();
                            w.on_client_datagrams(port, buf, meta);
                        })
                        .await;
                    if let Err(e) = served {
                        warn!(port, error = %e, "relay public socket failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            });
        }
        timers.push(worker);
    }
    // Expiry and target changes, for all zones of this thread.
    loop {
        let now = Instant::now();
        let mut next = now + Duration::from_secs(1);
        for w in &timers {
            w.metrics.flush();
            w.refresh_targets();
            w.core.borrow_mut().handle_timeout(now);
            w.close_ended();
            if let Some(at) = w.core.borrow().poll_timeout() {
                next = next.min(at);
            }
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            next.max(now + Duration::from_millis(10)),
        ))
        .await;
    }
}
