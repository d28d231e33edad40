//! The SFU core with several str0m clients in one process over a simulated network: no sockets,
//! time passed in. Every frame a client sends carries its name and layer, so a receiver knows
//! whose media it got.

use shardgate::sfu::signal::{PeerEvent, ServerMessage};
use shardgate::sfu::{Core, Output, PeerId, Role, Settings};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind, MediaTime, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output as RtcOutput, Rtc, RtcConfig};

const SFU: &str = "127.0.0.1:10000";
const TICK: Duration = Duration::from_millis(5);
const LATENCY: Duration = Duration::from_millis(2);

/// What a client sends: one audio track, one video track (optionally simulcast l/m/h).
#[derive(Clone, Copy)]
struct Sends {
    audio: bool,
    video: bool,
    simulcast: bool,
}

const AV: Sends = Sends {
    audio: true,
    video: true,
    simulcast: false,
};

struct Client {
    name: String,
    addr: SocketAddr,
    rtc: Rtc,
    id: Option<PeerId>,
    sends: Sends,
    audio: Option<Mid>,
    video: Option<Mid>,
    connected: bool,
    frames: u64,
    /// The next video frame (per layer) is a keyframe.
    keyframe_due: bool,
    /// (sender name, kind, layer) -> frames received.
    received: HashMap<(String, MediaKind, String), u64>,
    keyframes_received: HashMap<String, u64>,
    keyframe_requests: u64,
    peer_events: Vec<(String, PeerEvent)>,
    offers: u64,
    gone: Option<String>,
    /// Bits per second the SFU→client link carries (None: unlimited).
    downlink: Option<u64>,
    downlink_free_at: Instant,
    /// The longest a video frame sent a second or more into the run took to arrive whole.
    worst_video_delay: Duration,
}

/// A datagram on the wire: (deliver at, sequence, to client index or the SFU (None), from,
/// bytes).
type InFlight = (Instant, u64, Option<usize>, SocketAddr, Vec<u8>);

struct Sim {
    core: Core,
    clients: Vec<Client>,
    now: Instant,
    start: Instant,
    sfu: SocketAddr,
    wire: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    dropped_on_links: u64,
}

impl Sim {
    fn new() -> Self {
        let sfu: SocketAddr = SFU.parse().unwrap();
        let now = Instant::now();
        Sim {
            core: Core::new(Settings {
                advertised: sfu,
                max_rooms: 4,
                max_peers_per_room: 4,
            }),
            clients: Vec::new(),
            now,
            start: now,
            sfu,
            wire: BinaryHeap::new(),
            seq: 0,
            dropped_on_links: 0,
        }
    }

    /// A client joins `room` as a participant; returns its index.
    fn join(&mut self, name: &str, room: &str, sends: Sends) -> usize {
        let i = self.clients.len();
        let addr: SocketAddr = format!("127.0.0.{}:{}", 10 + i, 40_000 + i)
            .parse()
            .unwrap();
        let mut rtc = RtcConfig::new()
            .enable_bwe(Some(Bitrate::kbps(500)))
            .build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut api = rtc.sdp_api();
        let stream = Some(name.to_owned());
        let audio = sends.audio.then(|| {
            api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                stream.clone(),
                None,
                None,
            )
        });
        let simulcast = sends.simulcast.then(|| {
            let mut s = Simulcast::new();
            for rid in ["l", "m", "h"] {
                s.add_send_layer(SimulcastLayer::new(rid));
            }
            s
        });
        let video = sends.video.then(|| {
            api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                stream,
                None,
                simulcast,
            )
        });
        let (offer, pending) = api.apply().expect("an offer with media");
        let (id, answer) = self
            .core
            .join(
                room,
                Role::Participant,
                Some(name.into()),
                &offer.to_sdp_string(),
                self.now,
            )
            .expect("join");
        rtc.sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        self.clients.push(Client {
            name: name.into(),
            addr,
            rtc,
            id: Some(id),
            sends,
            audio,
            video,
            connected: false,
            frames: 0,
            keyframe_due: true,
            received: HashMap::new(),
            keyframes_received: HashMap::new(),
            keyframe_requests: 0,
            peer_events: Vec::new(),
            offers: 0,
            gone: None,
            downlink: None,
            downlink_free_at: self.now,
            worst_video_delay: Duration::ZERO,
        });
        i
    }

    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += TICK;
            self.send_media();
            self.exchange();
        }
    }

    /// Each connected client sends audio every 20 ms and video at ~30 fps (per layer).
    fn send_media(&mut self) {
        let now = self.now;
        let sent_ms = (now - self.start).as_millis() as u64;
        for c in &mut self.clients {
            if !c.connected {
                continue;
            }
            c.frames += 1;
            let ms = c.frames * TICK.as_millis() as u64;
            if let Some(mid) = c.audio.filter(|_| ms.is_multiple_of(20)) {
                let w = c.rtc.writer(mid).unwrap();
                let pt = w
                    .payload_params()
                    .find(|p| p.spec().codec.is_audio())
                    .unwrap()
                    .pt();
                let data = frame(&c.name, "a", false, 60, sent_ms);
                w.write(pt, now, MediaTime::from_millis(ms), data).unwrap();
            }
            if let Some(mid) = c.video.filter(|_| ms.is_multiple_of(35)) {
                let key = std::mem::take(&mut c.keyframe_due);
                let layers: &[(&str, usize)] = if c.sends.simulcast {
                    &[("l", 150), ("m", 1_400), ("h", 3_500)]
                } else {
                    &[("-", 1_200)]
                };
                for (layer, size) in layers {
                    let mut w = c.rtc.writer(mid).unwrap();
                    let pt = w
                        .payload_params()
                        .find(|p| p.spec().codec.is_video())
                        .unwrap()
                        .pt();
                    if *layer != "-" {
                        w = w.rid(Rid::from(*layer));
                    }
                    let data = frame(&c.name, layer, key, *size, sent_ms);
                    w.write(pt, now, MediaTime::from_90khz(ms * 90), data)
                        .unwrap();
                }
            }
        }
    }

    /// Moves datagrams and signalling until nothing is due before the current tick ends.
    fn exchange(&mut self) {
        let now = self.now;
        loop {
            let mut progress = false;
            for i in 0..self.clients.len() {
                let _ = self.clients[i].rtc.handle_input(Input::Timeout(now));
                progress |= self.poll_client(i);
            }
            if self.core.next_timeout().is_some_and(|t| t <= now) {
                self.core.handle_timeout(now);
            }
            progress |= self.poll_core();
            while let Some(Reverse((at, _, _, _, _))) = self.wire.peek() {
                if *at > now {
                    break;
                }
                let Reverse((_, _, to, from, bytes)) = self.wire.pop().unwrap();
                progress = true;
                match to {
                    None => {
                        self.core.handle_datagram(from, &bytes, now);
                    }
                    Some(i) => {
                        let c = &mut self.clients[i];
                        let input = Input::Receive(
                            now,
                            Receive {
                                proto: Protocol::Udp,
                                source: from,
                                destination: c.addr,
                                contents: bytes.as_slice().try_into().unwrap(),
                            },
                        );
                        let _ = c.rtc.handle_input(input);
                    }
                }
            }
            if !progress {
                break;
            }
        }
    }

    fn poll_client(&mut self, i: usize) -> bool {
        let mut progress = false;
        loop {
            let c = &mut self.clients[i];
            let out = match c.rtc.poll_output() {
                Ok(o) => o,
                Err(_) => return progress,
            };
            match out {
                RtcOutput::Timeout(_) => return progress,
                RtcOutput::Transmit(t) => {
                    progress = true;
                    let from = c.addr;
                    self.put_on_wire(None, from, t.contents.into());
                }
                RtcOutput::Event(e) => {
                    progress = true;
                    match e {
                        Event::Connected => c.connected = true,
                        Event::MediaData(d) => {
                            let (name, layer, key, sent_ms) = parse_frame(&d.data);
                            let kind = if d.params.spec().codec.is_audio() {
                                MediaKind::Audio
                            } else {
                                MediaKind::Video
                            };
                            if kind == MediaKind::Video && sent_ms >= 1_000 {
                                let delay = self.now - self.start - Duration::from_millis(sent_ms);
                                c.worst_video_delay = c.worst_video_delay.max(delay);
                            }
                            *c.received.entry((name.clone(), kind, layer)).or_default() += 1;
                            if key {
                                *c.keyframes_received.entry(name).or_default() += 1;
                            }
                        }
                        Event::KeyframeRequest(_) => {
                            c.keyframe_requests += 1;
                            c.keyframe_due = true;
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn poll_core(&mut self) -> bool {
        let mut progress = false;
        while let Some(out) = self.core.poll_output() {
            progress = true;
            match out {
                Output::Transmit {
                    destination,
                    contents,
                } => {
                    let to = self.clients.iter().position(|c| c.addr == destination);
                    assert!(
                        to.is_some(),
                        "the SFU sent to {destination}, no client there"
                    );
                    self.put_on_wire(to, self.sfu, contents);
                }
                Output::Signal { peer, message } => {
                    let i = self.index(peer);
                    match message {
                        ServerMessage::Offer { sdp } => {
                            let c = &mut self.clients[i];
                            c.offers += 1;
                            let offer = SdpOffer::from_sdp_string(&sdp).unwrap();
                            let answer = c.rtc.sdp_api().accept_offer(offer).unwrap();
                            self.core
                                .answer(peer, &answer.to_sdp_string(), self.now)
                                .unwrap();
                        }
                        ServerMessage::Peer { id, event, .. } => {
                            let name = self
                                .clients
                                .iter()
                                .find(|c| c.id.map(|x| x.to_string()) == Some(id.clone()))
                                .map(|c| c.name.clone())
                                .unwrap_or(id);
                            self.clients[i].peer_events.push((name, event));
                        }
                        other => panic!("unexpected signal {other:?}"),
                    }
                }
                Output::Gone { peer, reason } => {
                    let i = self.index(peer);
                    self.clients[i].gone = Some(reason);
                }
            }
        }
        progress
    }

    fn put_on_wire(&mut self, to: Option<usize>, from: SocketAddr, bytes: Vec<u8>) {
        let mut at = self.now + LATENCY;
        if let Some(c) = to.map(|i| &mut self.clients[i]) {
            if let Some(bps) = c.downlink {
                let start = c.downlink_free_at.max(self.now);
                if start > self.now + Duration::from_millis(100) {
                    self.dropped_on_links += 1;
                    return;
                }
                let serialize = Duration::from_secs_f64(bytes.len() as f64 * 8.0 / bps as f64);
                c.downlink_free_at = start + serialize;
                at = c.downlink_free_at + LATENCY;
            }
        }
        self.seq += 1;
        self.wire.push(Reverse((at, self.seq, to, from, bytes)));
    }

    fn index(&self, peer: PeerId) -> usize {
        self.clients
            .iter()
            .position(|c| c.id == Some(peer))
            .unwrap()
    }

    fn leave(&mut self, i: usize) {
        let id = self.clients[i].id.take().unwrap();
        self.clients[i].connected = false;
        self.core.leave(id, self.now);
    }

    fn got(&self, receiver: usize, sender: &str, kind: MediaKind) -> u64 {
        self.clients[receiver]
            .received
            .iter()
            .filter(|((n, k, _), _)| n == sender && *k == kind)
            .map(|(_, v)| v)
            .sum()
    }
}

/// A frame: `name/layer/sent/` (sent: ms since the client joined) then padding; a VP8 keyframe
/// starts with an even byte.
fn frame(name: &str, layer: &str, key: bool, size: usize, sent_ms: u64) -> Vec<u8> {
    let mut v = vec![if key { 0x10 } else { 0x11 }];
    v.extend(format!("{name}/{layer}/{sent_ms}/").as_bytes());
    v.resize(size.max(v.len()), 0xaa);
    v
}

fn parse_frame(d: &[u8]) -> (String, String, bool, u64) {
    let text = String::from_utf8_lossy(&d[1..]);
    let mut parts = text.split('/');
    let name = parts.next().unwrap_or("").to_owned();
    let layer = parts.next().unwrap_or("").to_owned();
    let sent_ms = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
    (name, layer, d[0] & 1 == 0, sent_ms)
}

#[test]
fn three_people_see_and_hear_each_other() {
    let mut sim = Sim::new();
    let a = sim.join("ada", "standup", AV);
    let b = sim.join("bob", "standup", AV);
    let c = sim.join("cy", "standup", AV);
    sim.run(Duration::from_secs(3));
    for (rx, others) in [(a, ["bob", "cy"]), (b, ["ada", "cy"]), (c, ["ada", "bob"])] {
        for o in others {
            let audio = sim.got(rx, o, MediaKind::Audio);
            let video = sim.got(rx, o, MediaKind::Video);
            assert!(
                audio > 50 && video > 30,
                "{} got {audio} audio / {video} video frames from {o}",
                sim.clients[rx].name
            );
        }
        let me = sim.clients[rx].name.clone();
        assert_eq!(
            sim.got(rx, &me, MediaKind::Video),
            0,
            "no echo of one's own media"
        );
    }
    assert_eq!(sim.core.rooms(), 1);
    assert_eq!(sim.core.tracks(), (6, 12));
    let counters = sim.core.counters().clone();
    assert!(
        counters.rtp_out_packets > counters.rtp_in_packets,
        "{counters:?}"
    );
    assert_eq!(counters.peer_panics, 0);
}

/// A frame the SFU writes to a subscriber leaves in one go: the packets str0m's pacer releases
/// at once are not each held for a turn of the SFU's timer. Frames take 2 packets; the wire adds
/// 2 ms each way and the simulation moves in 5 ms ticks, so a frame arrives whole two ticks
/// after it was sent (three or more when the SFU sends a packet per tick).
#[test]
fn a_frame_crosses_the_sfu_in_one_go() {
    let mut sim = Sim::new();
    let a = sim.join("ada", "standup", AV);
    let b = sim.join("bob", "standup", AV);
    sim.run(Duration::from_secs(3));
    for rx in [a, b] {
        let c = &sim.clients[rx];
        assert!(sim.got(rx, if rx == a { "bob" } else { "ada" }, MediaKind::Video) > 50);
        assert!(
            c.worst_video_delay <= 2 * TICK,
            "{}: a video frame took {:?}",
            c.name,
            c.worst_video_delay
        );
    }
}

#[test]
fn joins_and_leaves_renegotiate() {
    let mut sim = Sim::new();
    let a = sim.join("ada", "r", AV);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.clients[a].offers, 0, "alone: nothing to offer");
    let b = sim.join("bob", "r", AV);
    sim.run(Duration::from_secs(2));
    assert!(sim.clients[a].offers >= 1, "ada is offered bob's tracks");
    assert!(sim.clients[b].offers >= 1, "bob is offered ada's tracks");
    assert!(sim.got(a, "bob", MediaKind::Video) > 0);
    assert_eq!(
        sim.clients[a].peer_events,
        vec![("bob".to_string(), PeerEvent::Joined)]
    );
    assert_eq!(
        sim.clients[b].peer_events,
        vec![("ada".to_string(), PeerEvent::Joined)]
    );

    let offers_before = sim.clients[a].offers;
    sim.leave(b);
    sim.run(Duration::from_secs(1));
    assert_eq!(
        sim.clients[a].offers,
        offers_before + 1,
        "bob's tracks are stopped by an offer"
    );
    assert_eq!(
        sim.clients[a].peer_events.last().unwrap().1,
        PeerEvent::Left
    );
    assert_eq!(sim.core.tracks(), (2, 0));
    let seen = sim.got(a, "bob", MediaKind::Video);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.got(a, "bob", MediaKind::Video), seen);

    // The last one out closes the room.
    sim.leave(a);
    assert_eq!(sim.core.rooms(), 0);
    assert_eq!(sim.core.peers_by_role()[0].1, 0);
}

#[test]
fn a_late_joiner_gets_a_keyframe_at_once() {
    let mut sim = Sim::new();
    let a = sim.join("ada", "r", AV);
    let _b = sim.join("bob", "r", AV);
    sim.run(Duration::from_secs(2));
    // Ada's encoder only sends keyframes when asked.
    let requests = sim.clients[a].keyframe_requests;
    let c = sim.join("cy", "r", AV);
    sim.run(Duration::from_millis(800));
    assert!(
        sim.clients[a].keyframe_requests > requests,
        "the SFU asked ada for a keyframe when cy subscribed"
    );
    assert!(
        sim.clients[c]
            .keyframes_received
            .get("ada")
            .copied()
            .unwrap_or(0)
            >= 1,
        "cy got one of ada's keyframes: {:?}",
        sim.clients[c].keyframes_received
    );
    assert!(sim.got(c, "ada", MediaKind::Video) > 5);
}

#[test]
fn rooms_are_apart() {
    let mut sim = Sim::new();
    let a = sim.join("ada", "one", AV);
    let b = sim.join("bob", "one", AV);
    let c = sim.join("cy", "two", AV);
    sim.run(Duration::from_secs(2));
    assert!(sim.got(a, "bob", MediaKind::Audio) > 0);
    assert!(
        sim.clients[c].received.is_empty(),
        "{:?}",
        sim.clients[c].received
    );
    assert_eq!(
        sim.got(a, "cy", MediaKind::Audio) + sim.got(b, "cy", MediaKind::Audio),
        0
    );
    assert_eq!(sim.core.rooms(), 2);
}

#[test]
fn simulcast_layer_follows_the_subscribers_bandwidth() {
    let mut sim = Sim::new();
    let _a = sim.join(
        "ada",
        "r",
        Sends {
            audio: false,
            video: true,
            simulcast: true,
        },
    );
    let b = sim.join(
        "bob",
        "r",
        Sends {
            audio: true,
            video: false,
            simulcast: false,
        },
    );
    let layer_counts = |sim: &Sim| -> HashMap<String, u64> {
        sim.clients[b]
            .received
            .iter()
            .map(|((_, _, l), n)| (l.clone(), *n))
            .collect()
    };
    // Bob's estimate climbs from the initial 1 Mbit/s guess as probes and padding are acked; how
    // fast depends on the probes' luck (4-8 s in these runs), so up to 20 s are given.
    let mut before = layer_counts(&sim);
    for _ in 0..20 {
        if before.get("h").copied().unwrap_or(0) > 30 {
            break;
        }
        sim.run(Duration::from_secs(1));
        before = layer_counts(&sim);
    }
    assert!(
        before.get("h").copied().unwrap_or(0) > 30,
        "bob gets the high layer: {before:?}"
    );

    // Bob's downlink drops to 100 kbit/s: only the low layer (~35 kbit/s; the middle one is
    // ~320 kbit/s, the high one ~800 kbit/s) fits.
    sim.clients[b].downlink = Some(100_000);
    sim.run(Duration::from_secs(10));
    let mid = layer_counts(&sim);
    sim.run(Duration::from_secs(2));
    let after = layer_counts(&sim);
    let grew = |l: &str| after.get(l).copied().unwrap_or(0) - mid.get(l).copied().unwrap_or(0);
    assert!(
        grew("l") > 30,
        "bob moved to the low layer: {mid:?} -> {after:?}"
    );
    assert_eq!(
        grew("h"),
        0,
        "and no longer gets the high one: {mid:?} -> {after:?}"
    );
}

#[test]
fn datagrams_for_unknown_sessions_are_dropped_and_counted() {
    let mut sim = Sim::new();
    let a = sim.join("ada", "r", AV);
    let _b = sim.join("bob", "r", AV);
    sim.run(Duration::from_secs(1));
    let before = sim.core.counters().clone();
    let stranger: SocketAddr = "127.0.0.99:5000".parse().unwrap();
    let rtp = [0x80u8, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 1, 2, 3];
    assert!(!sim.core.handle_datagram(stranger, &rtp, sim.now));
    assert!(!sim
        .core
        .handle_datagram(stranger, &[22, 254, 253, 0], sim.now));
    assert!(!sim.core.handle_datagram(stranger, &[], sim.now));
    // A STUN request for a ufrag nobody has.
    let mut stun = vec![0, 1, 0, 12, 0x21, 0x12, 0xa4, 0x42];
    stun.extend([1u8; 12]);
    stun.extend([0, 6, 0, 8]);
    stun.extend(b"nope:you");
    assert!(!sim.core.handle_datagram(stranger, &stun, sim.now));
    let after = sim.core.counters();
    assert_eq!(after.dropped_unknown - before.dropped_unknown, 4);
    assert_eq!(
        after.rtp_out_packets, before.rtp_out_packets,
        "nothing sent for them"
    );
    // A client's own address cannot be borrowed by a stranger's STUN either; media still flows.
    let seen = sim.got(a, "bob", MediaKind::Audio);
    sim.run(Duration::from_secs(1));
    assert!(sim.got(a, "bob", MediaKind::Audio) > seen);
}

#[test]
fn limits_refuse_joins() {
    let mut sim = Sim::new();
    for i in 0..4 {
        sim.join(&format!("p{i}"), "full", AV);
    }
    let err = sim
        .core
        .join("full", Role::Participant, None, "v=0\r\n", sim.now)
        .unwrap_err();
    assert!(err.to_string().contains("room full is full"), "{err}");
    let err = sim
        .core
        .join("bad room", Role::Participant, None, "v=0\r\n", sim.now)
        .unwrap_err();
    assert!(err.to_string().contains("not a room name"), "{err}");
    let err = sim
        .core
        .join("other", Role::Participant, None, "garbage", sim.now)
        .unwrap_err();
    assert!(err.to_string().contains("offer was not accepted"), "{err}");
    assert_eq!(sim.core.rooms(), 1, "a refused join opens no room");
}
