//! The SFU's sans-IO core: rooms, peers (a str0m `Rtc` each) and the forwarding between them.
//!
//! Inputs carry the time (`join`, `handle_datagram`, `handle_timeout`, …); outputs are polled
//! (`poll_output`: datagrams to send, signalling messages, peers gone) and the next wake-up is
//! `next_timeout`, the top of a deadline heap with one entry per peer deadline (stale entries
//! are skipped when they come up), not a tick of every peer. A panic inside one peer's `Rtc`
//! ends that peer only.

use super::demux::{self, Demux, PeerId};
use super::peer::{OutState, Peer, Role, TrackOut};
use super::sdp_check::payload_types_consistent;
use super::signal::{valid_room, PeerEvent, ServerMessage};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::media::{MediaKind, Mid, Rid};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::RtpPacket;
use str0m::{Candidate, Event, IceConnectionState, Input, Output as RtcOutput, RtcConfig};

/// Limits and the address the SFU advertises.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The ICE-lite host candidate in every answer; datagrams are handed to peers as addressed
    /// to it (1:1 NAT: the socket's own address may differ).
    pub advertised: SocketAddr,
    pub max_rooms: usize,
    pub max_peers_per_room: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    Transmit {
        destination: SocketAddr,
        contents: Vec<u8>,
    },
    /// A signalling message for a participant's WebSocket.
    Signal {
        peer: PeerId,
        message: ServerMessage,
    },
    /// The peer is gone (media connection lost, a fault); its signalling should close.
    Gone { peer: PeerId, reason: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    #[error("{0:?} is not a room name; expected 1-64 of letters, digits, '-', '_', '.'")]
    BadRoom(String),
    #[error("the SFU has {0} rooms open, its limit; try again later")]
    TooManyRooms(usize),
    #[error("room {room} is full ({limit} peers)")]
    RoomFull { room: String, limit: usize },
    #[error("the offer was not accepted: {0}")]
    BadOffer(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignalError {
    #[error("no such peer (it left or its session ended)")]
    NoPeer,
    #[error("an answer, but no offer of the SFU's is waiting for one")]
    NoPendingOffer,
    #[error("{0} peers do not renegotiate")]
    NotRenegotiable(&'static str),
    #[error("SDP not accepted: {0}")]
    Sdp(String),
}

/// Running totals, read by the driver's metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    pub rtp_in_packets: u64,
    pub rtp_in_bytes: u64,
    /// RTP sent to subscribers (forwarded media, retransmissions included).
    pub rtp_out_packets: u64,
    pub rtp_out_bytes: u64,
    /// Datagrams no peer claims (unknown ufrag, unvalidated address) or that do not parse.
    pub dropped_unknown: u64,
    pub dropped_malformed: u64,
    /// PLI/FIR the SFU sent to publishers.
    pub keyframe_requests: u64,
    /// NACKs subscribers sent (from str0m's egress stats).
    pub nacks: u64,
    pub peer_panics: u64,
}

/// What one peer's events ask of the others, applied after the peer has been drained.
pub(super) enum Prop {
    TrackOpened(PeerId, Mid, MediaKind),
    /// An RTP packet of the publisher's track `mid` (simulcast layer `rid`).
    Rtp(PeerId, Mid, Option<Rid>, Box<RtpPacket>),
    Keyframe(PeerId, Mid, Option<Rid>),
    /// A simulcast track's layer rates changed: its subscribers re-choose.
    Rechoose(PeerId, Mid),
}

/// How long after one keyframe request to the same track another is sent.
pub(super) const KEYFRAME_THROTTLE: Duration = Duration::from_millis(300);
/// Stats from each peer's `Rtc` this often (NACK counts).
const STATS_INTERVAL: Duration = Duration::from_secs(2);
/// Deadlines at most this far ahead are handled as due at once while a peer is drained, at most
/// this many times per drain (the driver's timer would wake for them at its next tick, up to a
/// millisecond later, one packet per peer per tick).
const IMMEDIATE_SLACK: Duration = Duration::from_micros(50);
const IMMEDIATE_TIMEOUTS: usize = 64;
/// A DTLS-looking probe: does the peer's ICE accept non-STUN traffic from an address?
const DTLS_PROBE: [u8; 13] = [22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

pub struct Core {
    settings: Settings,
    crypto: Arc<CryptoProvider>,
    cert: DtlsCert,
    pub(super) rooms: HashMap<Arc<str>, Vec<PeerId>>,
    pub(super) peers: HashMap<PeerId, Peer>,
    demux: Demux,
    timers: BinaryHeap<Reverse<(Instant, PeerId)>>,
    pub(super) out: VecDeque<Output>,
    pub(super) props: VecDeque<Prop>,
    pub(super) dirty: Vec<PeerId>,
    next_id: PeerId,
    pub(super) counters: Counters,
}

impl Core {
    pub fn new(settings: Settings) -> Self {
        let crypto = Arc::new(str0m::crypto::from_feature_flags());
        let cert = crypto
            .dtls_provider
            .generate_certificate()
            .expect("the crypto provider generates a DTLS certificate");
        Core {
            settings,
            crypto,
            cert,
            rooms: HashMap::new(),
            peers: HashMap::new(),
            demux: Demux::default(),
            timers: BinaryHeap::new(),
            out: VecDeque::new(),
            props: VecDeque::new(),
            dirty: Vec::new(),
            next_id: 1,
            counters: Counters::default(),
        }
    }

    /// Adds a peer to `room` (opened if new) with the client's SDP offer; returns its id and
    /// the SDP answer.
    pub fn join(
        &mut self,
        room: &str,
        role: Role,
        name: Option<String>,
        offer: &str,
        now: Instant,
    ) -> Result<(PeerId, String), JoinError> {
        if !valid_room(room) {
            return Err(JoinError::BadRoom(room.to_owned()));
        }
        match self.rooms.get(room) {
            None if self.rooms.len() >= self.settings.max_rooms => {
                return Err(JoinError::TooManyRooms(self.rooms.len()))
            }
            Some(members) if members.len() >= self.settings.max_peers_per_room => {
                return Err(JoinError::RoomFull {
                    room: room.to_owned(),
                    limit: self.settings.max_peers_per_room,
                })
            }
            _ => {}
        }
        payload_types_consistent(offer).map_err(JoinError::BadOffer)?;
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| JoinError::BadOffer(e.to_string()))?;
        // RTP mode: packets are forwarded as they come (rewritten per subscriber where a layer
        // switch needs it), not depacketized into frames and packetized again.
        let mut config = RtcConfig::new()
            .set_rtp_mode(true)
            .set_ice_lite(true)
            .set_crypto_provider(self.crypto.clone())
            .set_dtls_cert(self.cert.clone())
            .set_stats_interval(Some(STATS_INTERVAL));
        if role != Role::Publisher {
            config = config.enable_bwe(Some(Bitrate::kbps(1_000)));
        }
        let mut rtc = config.build(now);
        let candidate = Candidate::host(self.settings.advertised, "udp")
            .map_err(|e| JoinError::BadOffer(format!("advertised address: {e}")))?;
        rtc.add_local_candidate(candidate);
        let answer = match catch_unwind(AssertUnwindSafe(|| rtc.sdp_api().accept_offer(offer))) {
            Ok(answer) => answer.map_err(|e| JoinError::BadOffer(e.to_string()))?,
            Err(_) => {
                self.counters.peer_panics += 1;
                tracing::error!(
                    room,
                    "the WebRTC stack panicked on a joining client's offer; refused"
                );
                return Err(JoinError::BadOffer(
                    "the offer could not be processed".into(),
                ));
            }
        };
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;

        let id = self.next_id;
        self.next_id += 1;
        let room: Arc<str> = Arc::from(room);
        let members = self.rooms.entry(room.clone()).or_default();
        let others = members.clone();
        members.push(id);
        self.demux.add_peer(&ufrag, id);
        let mut peer = Peer {
            id,
            room,
            role,
            name: name.clone(),
            rtc,
            ufrag,
            addrs: Vec::new(),
            connected: false,
            tracks_in: Vec::new(),
            tracks_out: Vec::new(),
            pending: None,
            deadline: None,
            estimate: None,
            nacks_seen: HashMap::new(),
            #[cfg(test)]
            panic_on_poll: false,
        };
        for other in &others {
            let o = &self.peers[other];
            if role == Role::Participant {
                for t in &o.tracks_in {
                    peer.tracks_out
                        .push(TrackOut::new(Some((o.id, t.mid)), t.kind));
                }
                self.out.push_back(Output::Signal {
                    peer: id,
                    message: ServerMessage::Peer {
                        id: o.id.to_string(),
                        event: PeerEvent::Joined,
                        name: o.name.clone(),
                    },
                });
            }
        }
        self.peers.insert(id, peer);
        self.tell_participants(&others, id, PeerEvent::Joined, name);
        self.dirty.push(id);
        self.settle(now);
        Ok((id, answer.to_sdp_string()))
    }

    /// The peer left (its WebSocket closed, a WHIP/WHEP DELETE).
    pub fn leave(&mut self, peer: PeerId, now: Instant) {
        if self.peers.contains_key(&peer) {
            self.remove(peer, None);
            self.settle(now);
        }
    }

    /// A datagram that arrived on the SFU's port. `false`: dropped (no peer claims it, or it
    /// does not parse), and counted.
    pub fn handle_datagram(&mut self, source: SocketAddr, data: &[u8], now: Instant) -> bool {
        let handled = self.receive(source, data, now);
        self.settle(now);
        handled
    }

    /// Datagrams that arrived together (one receive batch): each is handed to its peer and
    /// what it carries written to the subscribers at once, but each subscriber is polled only
    /// once, after the batch (its packets then leave together). Returns how many were dropped.
    pub fn handle_datagrams<'a>(
        &mut self,
        datagrams: impl IntoIterator<Item = (SocketAddr, &'a [u8])>,
        now: Instant,
    ) -> usize {
        let dropped = datagrams
            .into_iter()
            .filter(|(source, data)| !self.receive(*source, data, now))
            .count();
        self.settle(now);
        dropped
    }

    /// One datagram to its peer; the peer is drained and what it asks of others applied, but
    /// the others are left to the next `settle`.
    fn receive(&mut self, source: SocketAddr, data: &[u8], now: Instant) -> bool {
        let Some(id) = self.demux.route(source, data) else {
            self.counters.dropped_unknown += 1;
            return false;
        };
        let Ok(contents) = DatagramRecv::try_from(data) else {
            self.counters.dropped_malformed += 1;
            return false;
        };
        let kind = demux::kind(data);
        if kind == demux::Kind::Rtp && !is_rtcp(data) {
            self.counters.rtp_in_packets += 1;
            self.counters.rtp_in_bytes += data.len() as u64;
        }
        let destination = self.settings.advertised;
        let input = udp_input(now, source, destination, contents);
        let Some(peer) = self.peers.get_mut(&id) else {
            return false;
        };
        match catch_unwind(AssertUnwindSafe(|| peer.rtc.handle_input(input))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(peer = id, error = %e, "datagram not accepted");
            }
            Err(_) => {
                self.fault(id);
                return false;
            }
        }
        if kind == demux::Kind::Stun
            && !peer.addrs.contains(&source)
            && validated(peer, source, destination, now)
        {
            peer.addrs.push(source);
            if let Some(previous) = self.demux.learn(source, id) {
                if let Some(p) = self.peers.get_mut(&previous) {
                    p.addrs.retain(|a| *a != source);
                }
            }
        }
        self.drain(id, now);
        while let Some(p) = self.props.pop_front() {
            self.apply(p, now);
        }
        true
    }

    /// Wakes every peer whose deadline has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            if peer.deadline != Some(at) {
                continue;
            }
            peer.deadline = None;
            match catch_unwind(AssertUnwindSafe(|| {
                peer.rtc.handle_input(Input::Timeout(now))
            })) {
                Ok(_) => self.dirty.push(id),
                Err(_) => self.fault(id),
            }
        }
        self.settle(now);
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `handle_timeout` should next be called (possibly early: stale heap entries).
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Peers by role: (participants, WHIP publishers, WHEP viewers).
    pub fn peers_by_role(&self) -> [(Role, usize); 3] {
        let mut n = [0usize; 3];
        for p in self.peers.values() {
            n[p.role as usize] += 1;
        }
        [
            (Role::Participant, n[0]),
            (Role::Publisher, n[1]),
            (Role::Viewer, n[2]),
        ]
    }

    /// Tracks published and tracks being received.
    pub fn tracks(&self) -> (usize, usize) {
        self.peers.values().fold((0, 0), |(i, o), p| {
            (
                i + p.tracks_in.len(),
                o + p
                    .tracks_out
                    .iter()
                    .filter(|t| matches!(t.state, OutState::Open(_)))
                    .count(),
            )
        })
    }

    /// Downlink estimates of the peers that have one (bits per second).
    pub fn estimates(&self) -> impl Iterator<Item = u64> + '_ {
        self.peers.values().filter_map(|p| p.estimate)
    }

    pub fn has_peer(&self, id: PeerId) -> bool {
        self.peers.contains_key(&id)
    }

    /// Applies what drained peers asked of others, offers what changed, and drains every peer
    /// touched, until nothing is left to do.
    pub(super) fn settle(&mut self, now: Instant) {
        loop {
            while let Some(p) = self.props.pop_front() {
                self.apply(p, now);
            }
            if self.dirty.is_empty() {
                break;
            }
            let mut dirty = std::mem::take(&mut self.dirty);
            dirty.sort_unstable();
            dirty.dedup();
            for id in dirty {
                self.negotiate(id);
                self.drain(id, now);
            }
        }
    }

    /// Polls one peer's `Rtc` until it names its next deadline. A deadline due at once (str0m's
    /// pacer asks for one a microsecond after each packet it releases) is handled here, up to
    /// [`IMMEDIATE_TIMEOUTS`] times, instead of by a turn of the driver's timer, so a peer's
    /// queued packets leave together.
    fn drain(&mut self, id: PeerId, now: Instant) {
        let mut immediate = 0;
        loop {
            let Some(peer) = self.peers.get_mut(&id) else {
                return;
            };
            let output = match catch_unwind(AssertUnwindSafe(|| {
                #[cfg(test)]
                if peer.panic_on_poll {
                    panic!("injected fault (test)");
                }
                peer.rtc.poll_output()
            })) {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    tracing::info!(peer = id, error = %e, "peer's WebRTC session failed");
                    self.remove(id, Some(format!("WebRTC session failed: {e}")));
                    return;
                }
                Err(_) => {
                    self.fault(id);
                    return;
                }
            };
            match output {
                RtcOutput::Timeout(at)
                    if immediate < IMMEDIATE_TIMEOUTS && at <= now + IMMEDIATE_SLACK =>
                {
                    immediate += 1;
                    let at = at.max(now);
                    if catch_unwind(AssertUnwindSafe(|| {
                        peer.rtc.handle_input(Input::Timeout(at))
                    }))
                    .is_err()
                    {
                        self.fault(id);
                        return;
                    }
                }
                RtcOutput::Timeout(at) => {
                    if peer.deadline != Some(at) {
                        peer.deadline = Some(at);
                        self.timers.push(Reverse((at, id)));
                    }
                    return;
                }
                RtcOutput::Transmit(t) => {
                    let contents: Vec<u8> = t.contents.into();
                    if demux::kind(&contents) == demux::Kind::Rtp && !is_rtcp(&contents) {
                        self.counters.rtp_out_packets += 1;
                        self.counters.rtp_out_bytes += contents.len() as u64;
                    }
                    self.out.push_back(Output::Transmit {
                        destination: t.destination,
                        contents,
                    });
                }
                RtcOutput::Event(e) => self.on_event(id, e, now),
            }
        }
    }

    fn on_event(&mut self, id: PeerId, event: Event, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        match event {
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.remove(id, Some("media connection lost (ICE)".into()));
            }
            Event::Connected => {
                peer.connected = true;
                for t in &peer.tracks_out {
                    if let (Some((p, mid)), OutState::Open(_)) = (t.source, t.state) {
                        self.props.push_back(Prop::Keyframe(p, mid, None));
                    }
                }
            }
            Event::MediaAdded(m) => {
                if m.direction.is_receiving() {
                    peer.tracks_in
                        .push(super::peer::TrackIn::new(m.mid, m.kind));
                    self.props.push_back(Prop::TrackOpened(id, m.mid, m.kind));
                } else if m.direction.is_sending() && peer.role == Role::Viewer {
                    let mut t = TrackOut::new(None, m.kind);
                    t.state = OutState::Open(m.mid);
                    peer.tracks_out.push(t);
                    let room = peer.room.clone();
                    self.feed_viewers(&room);
                }
            }
            Event::RtpPacket(packet) => {
                let ssrc = packet.header.ssrc;
                let Some((mid, rid)) = peer
                    .rtc
                    .direct_api()
                    .stream_rx(&ssrc)
                    .map(|s| (s.mid(), s.rid()))
                else {
                    return;
                };
                if let (Some(t), Some(rid)) = (peer.track_in(mid), rid) {
                    if t.rates.record(rid, packet.payload.len(), now) {
                        self.props.push_back(Prop::Rechoose(id, mid));
                    }
                }
                self.props
                    .push_back(Prop::Rtp(id, mid, rid, Box::new(packet)));
            }
            Event::KeyframeRequest(req) => {
                if let Some(t) = peer.track_out_by_mid(req.mid) {
                    if let Some((p, mid)) = t.source {
                        self.props
                            .push_back(Prop::Keyframe(p, mid, t.layer.current));
                    }
                }
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                peer.estimate = Some(estimate.as_u64());
                self.choose_layers(id, now);
            }
            Event::MediaEgressStats(s) => {
                let seen = peer.nacks_seen.entry((s.mid, s.rid)).or_default();
                self.counters.nacks += s.nacks.saturating_sub(*seen);
                *seen = s.nacks;
            }
            Event::Closed => self.remove(id, Some("WebRTC session closed".into())),
            _ => {}
        }
    }

    /// Removes a peer, tells its room, and (with a reason) its own signalling.
    fn remove(&mut self, id: PeerId, reason: Option<String>) {
        let Some(peer) = self.peers.remove(&id) else {
            return;
        };
        self.demux.remove_peer(&peer.ufrag, &peer.addrs);
        let members = self
            .rooms
            .get_mut(&peer.room)
            .expect("a peer's room exists");
        members.retain(|p| *p != id);
        let others = members.clone();
        if others.is_empty() {
            self.rooms.remove(&peer.room);
        }
        for other in &others {
            let Some(o) = self.peers.get_mut(other) else {
                continue;
            };
            let mut changed = false;
            o.tracks_out.retain_mut(|t| {
                if t.source.map(|(p, _)| p) != Some(id) {
                    return true;
                }
                changed = true;
                t.source = None;
                match (o.role, t.state) {
                    (Role::Viewer, _) => true,
                    (_, OutState::ToOpen) => false,
                    (_, OutState::Open(m)) => {
                        t.state = OutState::ToStop(m);
                        true
                    }
                    _ => true,
                }
            });
            if changed {
                self.dirty.push(*other);
            }
        }
        self.tell_participants(&others, id, PeerEvent::Left, peer.name.clone());
        self.feed_viewers(&peer.room);
        if let Some(reason) = reason {
            self.out.push_back(Output::Gone { peer: id, reason });
        }
    }

    /// A panic inside the peer's session: that peer ends, everyone else goes on.
    pub(super) fn fault(&mut self, id: PeerId) {
        self.counters.peer_panics += 1;
        tracing::error!(
            peer = id,
            "a peer's WebRTC session panicked; ending that peer"
        );
        self.remove(id, Some("internal error in this peer's session".into()));
    }

    fn tell_participants(
        &mut self,
        to: &[PeerId],
        about: PeerId,
        event: PeerEvent,
        name: Option<String>,
    ) {
        for p in to {
            if self
                .peers
                .get(p)
                .is_some_and(|p| p.role == Role::Participant)
            {
                self.out.push_back(Output::Signal {
                    peer: *p,
                    message: ServerMessage::Peer {
                        id: about.to_string(),
                        event,
                        name: name.clone(),
                    },
                });
            }
        }
    }
}

/// RTCP shares RTP's first-byte range; its packet types 192-223 sit where RTP's marker bit and
/// payload type would be (RFC 5761).
fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.get(1).is_some_and(|b| (192..=223).contains(b))
}

/// Whether the peer's ICE now accepts non-STUN traffic from `source` (a validated pair).
fn validated(peer: &Peer, source: SocketAddr, destination: SocketAddr, now: Instant) -> bool {
    let Ok(contents) = DatagramRecv::try_from(&DTLS_PROBE[..]) else {
        return false;
    };
    peer.rtc
        .accepts(&udp_input(now, source, destination, contents))
}

/// A datagram from `source` to the SFU's advertised address, as str0m input.
fn udp_input<'a>(
    now: Instant,
    source: SocketAddr,
    destination: SocketAddr,
    contents: DatagramRecv<'a>,
) -> Input<'a> {
    Input::Receive(
        now,
        Receive {
            proto: Protocol::Udp,
            source,
            destination,
            contents,
        },
    )
}

impl TrackOut {
    pub(super) fn new(source: Option<(PeerId, Mid)>, kind: MediaKind) -> Self {
        TrackOut {
            source,
            kind,
            state: OutState::ToOpen,
            layer: Default::default(),
            rewrite: Default::default(),
            sink: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::media::{Direction, MediaKind};

    /// A client's SDP offer with one audio track.
    fn offer() -> String {
        let mut rtc = str0m::Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host("127.0.0.1:5000".parse().unwrap(), "udp").unwrap());
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        api.apply().unwrap().0.to_sdp_string()
    }

    #[test]
    fn an_offer_reusing_a_payload_type_for_another_codec_is_refused_with_the_reason() {
        let mut rtc = str0m::Rtc::builder().build(Instant::now());
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        api.add_media(MediaKind::Video, Direction::SendRecv, None, None, None);
        let offer = api.apply().unwrap().0.to_sdp_string();
        assert!(offer.contains("a=fmtp:100 profile-id=2"));
        // PT 100 again in the audio section, without the video section's fmtp: str0m 0.25
        // panics on this ("Pt locked multiple times").
        let clash = offer.replacen(
            "a=rtpmap:111 opus",
            "a=rtpmap:100 VP9/90000\r\na=rtpmap:111 opus",
            1,
        );
        let mut core = Core::new(Settings {
            advertised: "127.0.0.1:10000".parse().unwrap(),
            max_rooms: 2,
            max_peers_per_room: 4,
        });
        let now = Instant::now();
        assert!(matches!(
            core.join("r", Role::Participant, None, &clash, now),
            Err(JoinError::BadOffer(e)) if e.contains("payload type 100")
        ));
        assert_eq!(core.rooms(), 0);
        assert!(core.join("r", Role::Participant, None, &offer, now).is_ok());
    }

    #[test]
    fn a_panic_in_one_peer_ends_that_peer_only() {
        let now = Instant::now();
        let mut core = Core::new(Settings {
            advertised: "127.0.0.1:10000".parse().unwrap(),
            max_rooms: 2,
            max_peers_per_room: 4,
        });
        let (a, _) = core
            .join("r", Role::Participant, None, &offer(), now)
            .unwrap();
        let (b, _) = core
            .join("r", Role::Participant, None, &offer(), now)
            .unwrap();
        while core.poll_output().is_some() {}

        core.peers.get_mut(&a).unwrap().panic_on_poll = true;
        core.handle_timeout(now + Duration::from_secs(1));
        core.dirty.push(a);
        core.settle(now + Duration::from_secs(1));

        assert!(!core.has_peer(a) && core.has_peer(b));
        assert_eq!(core.counters().peer_panics, 1);
        let outputs: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
        assert!(outputs
            .iter()
            .any(|o| matches!(o, Output::Gone { peer, .. } if *peer == a)));
        assert!(outputs.iter().any(|o| matches!(
            o,
            Output::Signal { peer, message: ServerMessage::Peer { event: PeerEvent::Left, .. } } if *peer == b
        )));
        // The SFU goes on: the room still has b, and new peers join.
        assert_eq!(core.rooms(), 1);
        assert!(core
            .join("r", Role::Participant, None, &offer(), now)
            .is_ok());
    }
}
