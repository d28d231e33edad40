//! The SFU's I/O: a thread of its own (media never waits behind HTTP work) with a
//! single-threaded tokio runtime, the one UDP socket (batched receive with recvmmsg and GRO,
//! batched sends with sendmmsg), the core's deadline, and the commands signalling sends it.
//! Signalling talks to it through an [`SfuHandle`].

use super::core::{Core, Counters, JoinError, Output, Settings, SignalError};
use super::demux::PeerId;
use super::peer::Role;
use super::signal::ServerMessage;
use crate::config::Sfu;
use crate::metrics::SfuMetrics;
use crate::state::Shared;
use nix::errno::Errno;
use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use quinn_udp::{RecvMeta, UdpSocketState, BATCH_SIZE};
use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

/// Largest datagram read (a GRO burst of several equal datagrams).
const MAX_BURST: usize = 64 * 1024;
/// Socket buffers: a few hundred milliseconds of media for a few hundred peers.
const SOCKET_BUFFER: usize = 4 << 20;
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// Datagrams per sendmmsg.
const SEND_BATCH: usize = 64;

/// What the SFU tells a peer's signalling.
#[derive(Debug)]
pub enum Note {
    Message(ServerMessage),
    /// The peer's session ended on the SFU's side; close the signalling with this reason.
    Gone(String),
}

enum Command {
    Join {
        room: String,
        role: Role,
        name: Option<String>,
        offer: String,
        notes: Option<mpsc::UnboundedSender<Note>>,
        reply: oneshot::Sender<Result<(PeerId, String), JoinError>>,
    },
    Offer {
        peer: PeerId,
        sdp: String,
        reply: oneshot::Sender<Result<String, SignalError>>,
    },
    Answer {
        peer: PeerId,
        sdp: String,
        reply: oneshot::Sender<Result<(), SignalError>>,
    },
    Leave {
        peer: PeerId,
    },
}

/// The SFU thread is gone (it failed; the log says why).
#[derive(Debug, thiserror::Error)]
#[error("the SFU is not running")]
pub struct NotRunning;

/// Signalling's way to the SFU thread. Cheap to clone.
#[derive(Clone)]
pub struct SfuHandle {
    tx: mpsc::UnboundedSender<Command>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandleError<E> {
    #[error(transparent)]
    NotRunning(#[from] NotRunning),
    #[error(transparent)]
    Refused(E),
}

impl SfuHandle {
    /// Joins `room`; with `notes`, the peer's signalling messages (offers, peers coming and
    /// going, its end) arrive there.
    pub async fn join(
        &self,
        room: &str,
        role: Role,
        name: Option<String>,
        offer: String,
        notes: Option<mpsc::UnboundedSender<Note>>,
    ) -> Result<(PeerId, String), HandleError<JoinError>> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Join {
            room: room.to_owned(),
            role,
            name,
            offer,
            notes,
            reply,
        })?;
        rx.await
            .map_err(|_| NotRunning)?
            .map_err(HandleError::Refused)
    }

    pub async fn offer(
        &self,
        peer: PeerId,
        sdp: String,
    ) -> Result<String, HandleError<SignalError>> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Offer { peer, sdp, reply })?;
        rx.await
            .map_err(|_| NotRunning)?
            .map_err(HandleError::Refused)
    }

    pub async fn answer(&self, peer: PeerId, sdp: String) -> Result<(), HandleError<SignalError>> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Answer { peer, sdp, reply })?;
        rx.await
            .map_err(|_| NotRunning)?
            .map_err(HandleError::Refused)
    }

    pub fn leave(&self, peer: PeerId) {
        let _ = self.send(Command::Leave { peer });
    }

    fn send(&self, c: Command) -> Result<(), NotRunning> {
        self.tx.send(c).map_err(|_| NotRunning)
    }
}

/// Binds the SFU's socket (here, so a taken port fails the start) and starts its thread.
pub fn start(config: &Sfu, shared: Arc<Shared>) -> Result<SfuHandle, String> {
    let socket =
        bind(config.udp).map_err(|e| format!("sfu: cannot bind UDP {}: {e}", config.udp))?;
    let settings = Settings {
        advertised: config.advertised(),
        max_rooms: config.max_rooms,
        max_peers_per_room: config.max_peers_per_room,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    info!(udp = %config.udp, advertised = %settings.advertised, "SFU listening");
    std::thread::Builder::new()
        .name("sfu".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return error!(error = %e, "SFU: no runtime"),
            };
            if let Err(e) = rt.block_on(run(socket, rx, settings, shared)) {
                error!(error = %e, "the SFU stopped");
            }
        })
        .map_err(|e| format!("sfu: cannot start its thread: {e}"))?;
    Ok(SfuHandle { tx })
}

fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    s.set_nonblocking(true)?;
    // A binary upgrade's new process binds while the old one still holds the port.
    s.set_reuse_port(true)?;
    // Best effort: the kernel caps them at net.core.{r,w}mem_max.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.bind(&addr.into())?;
    Ok(s.into())
}

struct Driver {
    core: Core,
    io: UdpSocket,
    state: UdpSocketState,
    notes: HashMap<PeerId, mpsc::UnboundedSender<Note>>,
    metrics: Flushed,
    /// Datagrams the socket's send buffer had no room for.
    send_full: u64,
    /// Datagrams to send at the end of this turn, batched.
    outbox: Vec<(SockaddrStorage, Vec<u8>)>,
}

async fn run(
    socket: std::net::UdpSocket,
    mut commands: mpsc::UnboundedReceiver<Command>,
    settings: Settings,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    let state = UdpSocketState::new((&socket).into())?;
    let mut d = Driver {
        core: Core::new(settings),
        io: UdpSocket::from_std(socket)?,
        state,
        notes: HashMap::new(),
        metrics: Flushed::default(),
        send_full: 0,
        outbox: Vec::new(),
    };
    let mut buf = vec![0u8; MAX_BURST * BATCH_SIZE];
    let mut meta = vec![RecvMeta::default(); BATCH_SIZE];
    let mut next_metrics = Instant::now() + METRICS_EVERY;
    loop {
        let wake = d
            .core
            .next_timeout()
            .map_or(next_metrics, |t| t.min(next_metrics));
        tokio::select! {
            biased;
            ready = d.io.readable() => {
                ready?;
                d.receive(&mut buf, &mut meta)?;
            }
            command = commands.recv() => match command {
                Some(c) => d.command(c),
                None => return Ok(()),
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                d.core.handle_timeout(Instant::now());
            }
        }
        d.flush();
        if Instant::now() >= next_metrics {
            d.metrics.update(&d.core, d.send_full, &shared.metrics.sfu);
            next_metrics = Instant::now() + METRICS_EVERY;
        }
    }
}

impl Driver {
    /// Reads batches until the socket is empty (or a few batches were read: commands and
    /// timers get their turn), handing each datagram to the core.
    fn receive(&mut self, buf: &mut [u8], meta: &mut [RecvMeta]) -> std::io::Result<()> {
        for _ in 0..8 {
            let mut slices: Vec<IoSliceMut<'_>> =
                buf.chunks_mut(MAX_BURST).map(IoSliceMut::new).collect();
            let got = self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), &mut slices, meta)
            });
            let n = match got {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            let datagrams = meta[..n].iter().zip(&slices).flat_map(|(m, slice)| {
                slice[..m.len]
                    .chunks(m.stride.max(1))
                    .map(move |d| (m.addr, d))
            });
            self.core.handle_datagrams(datagrams, Instant::now());
            self.flush();
        }
        Ok(())
    }

    fn command(&mut self, c: Command) {
        let now = Instant::now();
        match c {
            Command::Join {
                room,
                role,
                name,
                offer,
                notes,
                reply,
            } => {
                let result = self.core.join(&room, role, name, &offer, now);
                if let (Ok((peer, _)), Some(notes)) = (&result, notes) {
                    self.notes.insert(*peer, notes);
                }
                if let Err(Ok((peer, _))) = reply.send(result) {
                    // The signalling went away while the SFU answered.
                    self.notes.remove(&peer);
                    self.core.leave(peer, now);
                }
            }
            Command::Offer { peer, sdp, reply } => {
                let _ = reply.send(self.core.offer(peer, &sdp, now));
            }
            Command::Answer { peer, sdp, reply } => {
                let _ = reply.send(self.core.answer(peer, &sdp, now));
            }
            Command::Leave { peer } => {
                self.notes.remove(&peer);
                self.core.leave(peer, now);
            }
        }
    }

    /// Sends what the core produced: datagrams (a full socket buffer drops them, as a router
    /// would) and signalling notes.
    fn flush(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Transmit {
                    destination,
                    contents,
                } => self
                    .outbox
                    .push((SockaddrStorage::from(destination), contents)),
                Output::Signal { peer, message } => {
                    if let Some(n) = self.notes.get(&peer) {
                        let _ = n.send(Note::Message(message));
                    }
                }
                Output::Gone { peer, reason } => {
                    if let Some(n) = self.notes.remove(&peer) {
                        let _ = n.send(Note::Gone(reason));
                    }
                }
            }
        }
        self.send_outbox();
    }

    /// Sends the datagrams collected by `flush`, up to [`SEND_BATCH`] per sendmmsg. What the
    /// socket buffer cannot take is dropped and counted.
    fn send_outbox(&mut self) {
        for chunk in self.outbox.chunks(SEND_BATCH) {
            let slices: Vec<[IoSlice<'_>; 1]> =
                chunk.iter().map(|(_, d)| [IoSlice::new(d)]).collect();
            let addrs: Vec<Option<SockaddrStorage>> = chunk.iter().map(|(a, _)| Some(*a)).collect();
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
            let sent = sendmmsg(
                self.io.as_raw_fd(),
                &mut headers,
                &slices,
                &addrs,
                [],
                MsgFlags::MSG_DONTWAIT,
            )
            .map(|r| r.count());
            match sent {
                Ok(n) => self.send_full += (chunk.len() - n) as u64,
                Err(Errno::EAGAIN) => self.send_full += chunk.len() as u64,
                Err(e) => {
                    warn!(error = %e, "SFU send failed");
                    self.send_full += chunk.len() as u64;
                }
            }
        }
        self.outbox.clear();
    }
}

/// The counters already added to the registry (the core's are running totals).
#[derive(Default)]
struct Flushed {
    core: Counters,
    send_full: u64,
}

impl Flushed {
    fn update(&mut self, core: &Core, send_full: u64, m: &SfuMetrics) {
        let c = core.counters();
        let was = &self.core;
        let add = |counter: &prometheus::IntCounter, now: u64, before: u64| {
            counter.inc_by(now.saturating_sub(before))
        };
        add(
            &m.packets.with_label_values(&["in"]),
            c.rtp_in_packets,
            was.rtp_in_packets,
        );
        add(
            &m.packets.with_label_values(&["out"]),
            c.rtp_out_packets,
            was.rtp_out_packets,
        );
        add(
            &m.bytes.with_label_values(&["in"]),
            c.rtp_in_bytes,
            was.rtp_in_bytes,
        );
        add(
            &m.bytes.with_label_values(&["out"]),
            c.rtp_out_bytes,
            was.rtp_out_bytes,
        );
        add(
            &m.drops.with_label_values(&["unknown_session"]),
            c.dropped_unknown,
            was.dropped_unknown,
        );
        add(
            &m.drops.with_label_values(&["malformed"]),
            c.dropped_malformed,
            was.dropped_malformed,
        );
        add(
            &m.drops.with_label_values(&["send_buffer_full"]),
            send_full,
            self.send_full,
        );
        add(&m.nacks, c.nacks, was.nacks);
        add(
            &m.keyframe_requests,
            c.keyframe_requests,
            was.keyframe_requests,
        );
        add(&m.peer_faults, c.peer_panics, was.peer_panics);
        self.core = c.clone();
        self.send_full = send_full;

        m.rooms.set(core.rooms() as i64);
        for (role, n) in core.peers_by_role() {
            m.peers.with_label_values(&[role.label()]).set(n as i64);
        }
        let (tracks_in, tracks_out) = core.tracks();
        m.tracks.with_label_values(&["in"]).set(tracks_in as i64);
        m.tracks.with_label_values(&["out"]).set(tracks_out as i64);
        let mut estimates: Vec<u64> = core.estimates().collect();
        estimates.sort_unstable();
        let stat = |s: &str, v: Option<&u64>| {
            m.estimated_bitrate
                .with_label_values(&[s])
                .set(v.copied().unwrap_or(0) as i64)
        };
        stat("min", estimates.first());
        stat("median", estimates.get(estimates.len() / 2));
        stat("max", estimates.last());
    }
}
