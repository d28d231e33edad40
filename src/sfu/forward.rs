//! Forwarding between peers: new tracks offered to the room, media frames written to each
//! subscriber (one simulcast layer each), keyframe requests sent to publishers.

use super::core::{Core, Prop, KEYFRAME_THROTTLE};
use super::demux::PeerId;
use super::layers::{self, Verdict};
use super::peer::{OutState, Role, TrackOut};
use std::time::Instant;
use str0m::bwe::Bitrate;
use str0m::media::{KeyframeRequestKind, MediaData, MediaKind, MediaTime, Mid, Rid};

impl Core {
    pub(super) fn apply(&mut self, prop: Prop, now: Instant) {
        match prop {
            Prop::TrackOpened(publisher, mid, kind) => self.track_opened(publisher, mid, kind),
            Prop::Media(publisher, data) => self.forward(publisher, &data, now),
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
                    t.last_time = None;
                    self.props.push_back(Prop::Keyframe(*p, *mid, None));
                }
            }
        }
    }

    fn forward(&mut self, publisher: PeerId, data: &MediaData, now: Instant) {
        let Some(room) = self.peers.get(&publisher).map(|p| p.room.clone()) else {
            return;
        };
        let keyframe = data.rid.is_some() && data.is_keyframe();
        let mut wanted_layers: Vec<Rid> = Vec::new();
        let mut faulted: Vec<PeerId> = Vec::new();
        // The member list is lent out for the loop (nothing below changes rooms) instead of
        // copied per frame.
        let members = self
            .rooms
            .get_mut(&room)
            .map(std::mem::take)
            .unwrap_or_default();
        for &other in &members {
            if other == publisher {
                continue;
            }
            let Some(sub) = self.peers.get_mut(&other) else {
                continue;
            };
            let mut wrote = false;
            for t in &mut sub.tracks_out {
                let OutState::Open(mid) = t.state else {
                    continue;
                };
                if t.source != Some((publisher, data.mid)) {
                    continue;
                }
                let switched = match data.rid {
                    None => false,
                    Some(rid) => match t.layer.on_frame(rid, keyframe) {
                        Verdict::Forward => false,
                        Verdict::SwitchAndForward => true,
                        Verdict::Skip => continue,
                        Verdict::SkipNeedKeyframe => {
                            if !wanted_layers.contains(&rid) {
                                wanted_layers.push(rid);
                            }
                            continue;
                        }
                    },
                };
                let time = t.continue_time(data.time, switched);
                let Some(writer) = sub.rtc.writer(mid) else {
                    continue;
                };
                let Some(pt) = writer.match_params(data.params) else {
                    continue;
                };
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    writer.write(pt, data.network_time, time, data.data.clone())
                }));
                match result {
                    Ok(Ok(())) => wrote = true,
                    Ok(Err(e)) => tracing::debug!(peer = other, error = %e, "frame not written"),
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
            self.request_keyframe(publisher, data.mid, Some(rid), now);
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
        let Some(mut writer) = p.rtc.writer(mid) else {
            return;
        };
        // A rid the publisher does not send (or none for a simulcast track) fails: ask for the
        // whole track then.
        if writer
            .request_keyframe(rid, KeyframeRequestKind::Pli)
            .is_err()
            && rid.is_some()
        {
            let _ = writer.request_keyframe(None, KeyframeRequestKind::Pli);
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

impl TrackOut {
    /// The media time to write: the source's, shifted so a layer switch continues the
    /// subscriber's timeline one frame after the last frame written.
    fn continue_time(&mut self, time: MediaTime, switched: bool) -> MediaTime {
        let raw = time.numer() as i64;
        if switched {
            if let Some(last) = self.last_time {
                let frame = i64::from(time.frequency().get()) / 30;
                self.time_offset = last as i64 + frame - raw;
            }
        }
        let shifted = (raw + self.time_offset).max(0) as u64;
        self.last_time = Some(shifted);
        MediaTime::new(shifted, time.frequency())
    }
}
