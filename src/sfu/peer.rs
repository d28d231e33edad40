//! One peer of the SFU: its str0m `Rtc` and what it publishes and receives.

use super::demux::PeerId;
use super::layers::{LayerRates, Selection};
use super::rewrite::Rewrite;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;
use str0m::change::SdpPendingOffer;
use str0m::format::PayloadParams;
use str0m::media::{MediaKind, Mid, Pt, Rid};
use str0m::rtp::Ssrc;
use str0m::Rtc;

/// How a peer joined, which decides what it sends, receives and renegotiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The meeting page (WebSocket signalling): sends its tracks, receives everyone's, and
    /// is offered new tracks as they come.
    Participant,
    /// WHIP: sends only. No renegotiation.
    Publisher,
    /// WHEP: receives one audio and one video track (those its offer asked for), fed from the
    /// room's first publisher of each kind. No renegotiation.
    Viewer,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Participant => "participant",
            Role::Publisher => "whip",
            Role::Viewer => "whep",
        }
    }
}

/// A track the peer publishes.
#[derive(Debug)]
pub struct TrackIn {
    pub mid: Mid,
    pub kind: MediaKind,
    pub rates: LayerRates,
    pub last_keyframe_request: Option<Instant>,
    /// The codec of the payload type its packets last came with (looked up once per type, not
    /// per packet).
    codec: Option<PayloadParams>,
}

impl TrackIn {
    pub fn new(mid: Mid, kind: MediaKind) -> Self {
        TrackIn {
            mid,
            kind,
            rates: LayerRates::default(),
            last_keyframe_request: None,
            codec: None,
        }
    }

    /// The codec the publisher's session `rtc` gave payload type `pt`.
    pub fn codec(&mut self, pt: Pt, rtc: &Rtc) -> Option<PayloadParams> {
        match self.codec {
            Some(c) if c.pt() == pt => Some(c),
            _ => {
                self.codec = rtc.codec_config().find(|c| c.pt() == pt).copied();
                self.codec
            }
        }
    }
}

/// A track the peer receives: another peer's `TrackIn`.
#[derive(Debug)]
pub struct TrackOut {
    /// The publisher and its mid; `None` for a viewer's slot nobody feeds yet.
    pub source: Option<(PeerId, Mid)>,
    pub kind: MediaKind,
    pub state: OutState,
    pub layer: Selection,
    /// Sequence numbers, times and VP8 picture ids continuous across layer switches.
    pub rewrite: Rewrite,
    /// Where its packets go in the subscriber's session (looked up once, not per packet).
    pub sink: Option<Sink>,
}

/// A `TrackOut`'s payload type and stream in its subscriber's session, for packets of one
/// payload type of its source.
#[derive(Debug, Clone, Copy)]
pub struct Sink {
    pub source_pt: Pt,
    pub pt: Pt,
    pub ssrc: Ssrc,
}

/// A `TrackOut`'s place in the SDP negotiation with its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutState {
    /// Waiting for the next offer to add it.
    ToOpen,
    /// In an offer the peer has not answered.
    Negotiating(Mid),
    Open(Mid),
    /// Its source is gone; the next offer stops it.
    ToStop(Mid),
    /// Stopped in an offer the peer has not answered.
    Stopping(Mid),
}

impl OutState {
    pub fn mid(self) -> Option<Mid> {
        match self {
            OutState::ToOpen => None,
            OutState::Negotiating(m)
            | OutState::Open(m)
            | OutState::ToStop(m)
            | OutState::Stopping(m) => Some(m),
        }
    }
}

pub struct Peer {
    pub id: PeerId,
    pub room: std::sync::Arc<str>,
    pub role: Role,
    pub name: Option<String>,
    pub rtc: Rtc,
    /// The ufrag the SFU uses with this peer (its STUN requests carry it).
    pub ufrag: String,
    /// Source addresses ICE validated (the demux routes them here).
    pub addrs: Vec<SocketAddr>,
    /// DTLS done: media can flow.
    pub connected: bool,
    pub tracks_in: Vec<TrackIn>,
    pub tracks_out: Vec<TrackOut>,
    /// The SFU's offer waiting for this peer's answer.
    pub pending: Option<SdpPendingOffer>,
    /// The instant the peer's `Rtc` asked to be woken at.
    pub deadline: Option<Instant>,
    /// The peer's downlink as its bandwidth estimator measured it (bits per second).
    pub estimate: Option<u64>,
    /// NACK totals per outgoing stream at the last stats event (to count new ones).
    pub nacks_seen: HashMap<(Mid, Option<Rid>), u64>,
    /// Tests: the next poll of this peer's `Rtc` panics.
    #[cfg(test)]
    pub panic_on_poll: bool,
}

impl Peer {
    pub fn track_in(&mut self, mid: Mid) -> Option<&mut TrackIn> {
        self.tracks_in.iter_mut().find(|t| t.mid == mid)
    }

    /// The `TrackOut` whose negotiated mid is `mid`.
    pub fn track_out_by_mid(&self, mid: Mid) -> Option<&TrackOut> {
        self.tracks_out.iter().find(|t| t.state.mid() == Some(mid))
    }

    pub fn video_tracks_out(&self) -> usize {
        self.tracks_out
            .iter()
            .filter(|t| t.kind == MediaKind::Video && t.source.is_some())
            .count()
    }
}
