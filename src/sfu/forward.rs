//! Forwarding between peers: new tracks offered to the room, RTP packets written to each
//! subscriber (one simulcast layer each, continuous across switches), keyframe requests sent to
//! publishers.

use super::core::{Core, Prop, KEYFRAME_THROTTLE};
use super::demux::PeerId;
use super::layers::{self, Verdict};
use super::peer::{OutState, Role, Sink, TrackOut};
use std::time::Instant;
use str0m::bwe::Bitrate;
use str0m::format::{
    detect_av1_keyframe, detect_h264_keyframe, detect_h265_keyframe, detect_vp8_keyframe,
    detect_vp9_keyframe, Codec, PayloadParams,
};
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};

impl Core {
    pub(super) fn apply(&mut self, prop: Prop, now: Instant) {
        match prop {
            Prop::TrackOpened(publisher, mid, kind) => self.track_opened(publisher, mid, kind),
            Prop::Rtp(publisher, mid, rid, packet) => {
                self.forward(publisher, mid, rid, &packet, now)
            }
            Prop::Keyframe(publisher, mid, rid) => self.request_keyframe(publisher, mid, rid, now),
            Prop::Rechoose(publisher, mid) => {
                let Some(room) = self.peers.get(&publisher).map(|p| p.room.clone()) else {
                    return;
                };
                for sub in self.rooms[&room].clone() {
                    let receives = self.peers[&sub]
                        .tracks_out
                        .iter()
                        .any(|t| t.source == Some((publisher, mid)));
                    if receives {
                        self.choose_layers(sub, now);
                    }
                }
            }
        }
    }

    fn track_opened(&mut self, publisher: PeerId, mid: Mid, kind: MediaKind) {
        let Some(room) = self.peers.get(&publisher).map(|p| p.room.clone()) else {
            return;
        };
        for other in self.rooms[&room].clone() {
            if other == publisher {
                continue;
            }
            let Some(o) = self.peers.get_mut(&other) else {
                continue;
            };
            if o.role == Role::Participant {
                o.tracks_out
                    .push(TrackOut::new(Some((publisher, mid)), kind));
                self.dirty.push(other);
            }
        }
        self.feed_viewers(&room);
    }

    /// Gives every WHEP viewer slot without a source the room's first published track of its
    /// kind (WHIP publishers first, then participants in join order).
    pub(super) fn feed_viewers(&mut self, room: &str) {
        let Some(members) = self.rooms.get(room).cloned() else {
            return;
        };
        let mut sources: Vec<(PeerId, Mid, MediaKind)> = Vec::new();
        for role in [Role::Publisher, Role::Participant] {
            for id in &members {
                let p = &self.peers[id];
                if p.role == role {
                    sources.extend(p.tracks_in.iter().map(|t| (p.id, t.mid, t.kind)));
                }
            }
        }
        for id in &members {
            let Some(v) = self.peers.get_mut(id) else {
                continue;
            };
            if v.role != Role::Viewer {
                continue;
            }
            for t in &mut v.tracks_out {
                if t.source.is_some() {
                    continue;
                }
                if let Some((p, mid, _)) = sources.iter().find(|(_, _, k)| *k == t.kind) {
                    t.source = Some((*p, *mid));
                    t.layer = Default::default();
                    t.rewrite.switch();
                    t.sink = None;
                    self.props.push_back(Prop::Keyframe(*p, *mid, None));
                }
            }
        }
    }

    fn forward(
        &mut self,
        publisher: PeerId,
        mid: Mid,
        rid: Option<Rid>,
        packet: &RtpPacket,
        now: Instant,
    ) {
        let Some(p) = self.peers.get_mut(&publisher) else {
            return;
        };
        let room = p.room.clone();
        let pt = packet.header.payload_type;
        let Some(params) = p
            .tracks_in
            .iter_mut()
            .find(|t| t.mid == mid)
            .and_then(|t| t.codec(pt, &p.rtc))
        else {
            return;
        };
        let codec = params.spec().codec;
        let keyframe = rid.is_some() && starts_keyframe(codec, &packet.payload);
        let vp8 = (codec == Codec::Vp8).then_some(&packet.payload[..]);
        // What the subscriber's player uses; str0m writes the transport's own (mid, TWCC).
        let ext = ExtensionValues {
            audio_level: packet.header.ext_vals.audio_level,
            voice_activity: packet.header.ext_vals.voice_activity,
            video_orientation: packet.header.ext_vals.video_orientation,
            ..Default::default()
        };
        let mut wanted_layers: Vec<Rid> = Vec::new();
        let mut faulted: Vec<PeerId> = Vec::new();
        // The member list is lent out for the loop (nothing below changes rooms) instead of
        // copied per packet.
        let members = self
            .rooms
            .get_mut(&room)
            .map(std::mem::take)
            .unwrap_or_default();
        for &other in &members {
            if other == publisher {
                continue;
            }
            let Some(sub) = self.peers.get_mut(&other).filter(|s| s.connected) else {
                continue;
            };
            let mut wrote = false;
            for t in &mut sub.tracks_out {
                let OutState::Open(out_mid) = t.state else {
                    continue;
                };
                if t.source != Some((publisher, mid)) {
                    continue;
                }
                if let Some(rid) = rid {
                    match t.layer.on_packet(rid, keyframe) {
                        Verdict::Forward => {}
                        Verdict::SwitchAndForward => t.rewrite.switch(),
                        Verdict::Skip => continue,
                        Verdict::SkipNeedKeyframe => {
                            if !wanted_layers.contains(&rid) {
                                wanted_layers.push(rid);
                            }
                            continue;
                        }
                    }
                }
                let sink = match t.sink {
                    Some(s) if s.source_pt == pt => s,
                    _ => match Sink::find(&mut sub.rtc, out_mid, params) {
                        Some(s) => *t.sink.insert(s),
                        // The subscriber's session has no such codec (or stream).
                        None => continue,
                    },
                };
                let Some(out) = t.rewrite.packet(packet.seq_no, packet.time, vp8) else {
                    continue;
                };
                let mut write = RtpWrite::new(
                    sink.pt,
                    out.seq_no,
                    out.time,
                    packet.timestamp,
                    packet.payload.clone(),
                )
                .marker(packet.header.marker)
                .ext_vals(ext.clone())
                .nackable(t.kind == MediaKind::Video);
                if let Some(patch) = out.vp8_patch {
                    write = write.vp8_patch(patch);
                }
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut api = sub.rtc.direct_api();
                    match api.stream_tx(&sink.ssrc) {
                        Some(tx) => {
                            tx.write_rtp(write);
                            true
                        }
                        None => false,
                    }
                }));
                match result {
                    Ok(true) => wrote = true,
                    // The stream changed (renegotiation): found again on the next packet.
                    Ok(false) => t.sink = None,
                    Err(_) => {
                        faulted.push(other);
                        break;
                    }
                }
            }
            if wrote {
                self.dirty.push(other);
            }
        }
        if let Some(slot) = self.rooms.get_mut(&room) {
            *slot = members;
        }
        for peer in faulted {
            self.fault(peer);
        }
        for rid in wanted_layers {
            self.request_keyframe(publisher, mid, Some(rid), now);
        }
    }

    fn request_keyframe(&mut self, publisher: PeerId, mid: Mid, rid: Option<Rid>, now: Instant) {
        let Some(p) = self.peers.get_mut(&publisher) else {
            return;
        };
        let Some(t) = p.track_in(mid) else {
            return;
        };
        if t.kind != MediaKind::Video
            || t.last_keyframe_request
                .is_some_and(|at| now.saturating_duration_since(at) < KEYFRAME_THROTTLE)
        {
            return;
        }
        t.last_keyframe_request = Some(now);
        let seen: Vec<Option<Rid>> = t
            .rates
            .ranked(now)
            .into_iter()
            .map(|(r, _)| Some(r))
            .collect();
        // The layer named when it is known; else every layer seen (a simulcast track), or the
        // track's one stream.
        let rids: Vec<Option<Rid>> = match rid {
            Some(r) if seen.contains(&Some(r)) => vec![Some(r)],
            _ if seen.is_empty() => vec![None],
            _ => seen,
        };
        let mut api = p.rtc.direct_api();
        for rid in rids {
            if let Some(stream) = api.stream_rx_by_mid(mid, rid) {
                stream.request_keyframe(KeyframeRequestKind::Pli);
            }
        }
        self.counters.keyframe_requests += 1;
        self.dirty.push(publisher);
    }

    /// Re-chooses the simulcast layer of each video track a subscriber receives, from its
    /// bandwidth estimate split evenly over those tracks, and tells its estimator what to probe
    /// for: the next layers up (minimum) and the best layers (desired).
    pub(super) fn choose_layers(&mut self, id: PeerId, now: Instant) {
        let Some(sub) = self.peers.get(&id) else {
            return;
        };
        let Some(estimate) = sub.estimate else {
            return;
        };
        let budget = estimate / sub.video_tracks_out().max(1) as u64;
        let (mut minimum, mut desired) = (0u64, 0u64);
        let mut choices: Vec<(usize, Rid)> = Vec::new();
        for (i, t) in sub.tracks_out.iter().enumerate() {
            let Some((p, mid)) = t.source.filter(|_| t.kind == MediaKind::Video) else {
                continue;
            };
            let Some(track) = self
                .peers
                .get(&p)
                .and_then(|p| p.tracks_in.iter().find(|x| x.mid == mid))
            else {
                continue;
            };
            let ranked = track.rates.ranked(now);
            let Some(choice) = layers::choose(&ranked, budget) else {
                continue;
            };
            choices.push((i, choice));
            let at = ranked.iter().position(|(r, _)| *r == choice).unwrap_or(0);
            minimum += ranked.get(at + 1).unwrap_or(&ranked[at]).1;
            desired += ranked.last().map_or(0, |(_, bps)| *bps);
        }
        let sub = self.peers.get_mut(&id).expect("checked above");
        for (i, choice) in choices {
            sub.tracks_out[i].layer.target = Some(choice);
        }
        if desired > 0 {
            let desired = desired + desired / 10;
            sub.rtc
                .bwe()
                .set_bitrate(Bitrate::bps(minimum.min(desired)), Bitrate::bps(desired));
        }
    }
}

/// Whether an RTP payload starts a keyframe of `codec` (a layer switch waits for one).
fn starts_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => detect_vp8_keyframe(payload),
        Codec::Vp9 => detect_vp9_keyframe(payload),
        Codec::H264 => detect_h264_keyframe(payload),
        Codec::H265 => detect_h265_keyframe(payload),
        Codec::Av1 => detect_av1_keyframe(payload),
        _ => false,
    }
}

impl Sink {
    /// Where packets of the publisher's codec `params` go in a subscriber's session for its
    /// track `mid`: the payload type it gave that codec and the stream's SSRC.
    fn find(rtc: &mut str0m::Rtc, mid: Mid, params: PayloadParams) -> Option<Sink> {
        let pt = rtc.codec_config().match_params(params)?.pt();
        let ssrc = rtc.direct_api().stream_tx_by_mid(mid, None)?.ssrc();
        Some(Sink {
            source_pt: params.pt(),
            pt,
            ssrc,
        })
    }
}
