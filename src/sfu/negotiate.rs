//! SDP negotiation with participants: their own offers (the client changed its tracks), their
//! answers to the SFU's offers, and the SFU's offers when others' tracks come or go.

use super::core::{Core, Output, Prop, SignalError};
use super::demux::PeerId;
use super::peer::{OutState, Role};
use super::sdp_check::payload_types_consistent;
use super::signal::ServerMessage;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;
use str0m::change::{SdpAnswer, SdpOffer};

impl Core {
    /// A participant's own offer (it changed its tracks); returns the answer.
    pub fn offer(&mut self, id: PeerId, sdp: &str, now: Instant) -> Result<String, SignalError> {
        let peer = self.peers.get_mut(&id).ok_or(SignalError::NoPeer)?;
        if peer.role != Role::Participant {
            return Err(SignalError::NotRenegotiable(peer.role.label()));
        }
        payload_types_consistent(sdp).map_err(SignalError::Sdp)?;
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| SignalError::Sdp(e.to_string()))?;
        // Glare: the client's offer wins; ours is dropped and made again after this one.
        peer.pending = None;
        for t in &mut peer.tracks_out {
            t.state = match t.state {
                OutState::Negotiating(_) => OutState::ToOpen,
                OutState::Stopping(m) => OutState::ToStop(m),
                s => s,
            };
        }
        let result = catch_unwind(AssertUnwindSafe(|| peer.rtc.sdp_api().accept_offer(offer)));
        let answer = match result {
            Ok(Ok(a)) => a.to_sdp_string(),
            Ok(Err(e)) => return Err(SignalError::Sdp(e.to_string())),
            Err(_) => {
                self.fault(id);
                self.settle(now);
                return Err(SignalError::NoPeer);
            }
        };
        self.dirty.push(id);
        self.settle(now);
        Ok(answer)
    }

    /// A participant's answer to the SFU's last offer.
    pub fn answer(&mut self, id: PeerId, sdp: &str, now: Instant) -> Result<(), SignalError> {
        let peer = self.peers.get_mut(&id).ok_or(SignalError::NoPeer)?;
        payload_types_consistent(sdp).map_err(SignalError::Sdp)?;
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| SignalError::Sdp(e.to_string()))?;
        let pending = peer.pending.take().ok_or(SignalError::NoPendingOffer)?;
        let result = catch_unwind(AssertUnwindSafe(|| {
            peer.rtc.sdp_api().accept_answer(pending, answer)
        }));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(SignalError::Sdp(e.to_string())),
            Err(_) => {
                self.fault(id);
                self.settle(now);
                return Err(SignalError::NoPeer);
            }
        }
        let connected = peer.connected;
        let mut wanted = Vec::new();
        peer.tracks_out.retain_mut(|t| match t.state {
            OutState::Negotiating(m) => {
                if t.source.is_none() {
                    t.state = OutState::ToStop(m);
                } else {
                    t.state = OutState::Open(m);
                    wanted.extend(t.source.filter(|_| connected));
                }
                true
            }
            OutState::Stopping(_) => false,
            _ => true,
        });
        for (publisher, mid) in wanted {
            self.props.push_back(Prop::Keyframe(publisher, mid, None));
        }
        self.dirty.push(id);
        self.settle(now);
        Ok(())
    }

    /// Offers a participant the tracks that came or went since its last negotiation.
    pub(super) fn negotiate(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.role != Role::Participant || peer.pending.is_some() {
            return;
        }
        let mut api = peer.rtc.sdp_api();
        for t in &mut peer.tracks_out {
            match (t.state, t.source) {
                (OutState::ToOpen, Some((publisher, mid))) => {
                    let stream = publisher.to_string();
                    let track = format!("{publisher}-{mid}");
                    let new = api.add_media(
                        t.kind,
                        str0m::media::Direction::SendOnly,
                        Some(stream),
                        Some(track),
                        None,
                    );
                    t.state = OutState::Negotiating(new);
                }
                (OutState::ToStop(m), _) => {
                    api.stop_media(m);
                    t.state = OutState::Stopping(m);
                }
                _ => {}
            }
        }
        if !api.has_changes() {
            return;
        }
        if let Some((offer, pending)) = api.apply() {
            peer.pending = Some(pending);
            self.out.push_back(Output::Signal {
                peer: id,
                message: ServerMessage::Offer {
                    sdp: offer.to_sdp_string(),
                },
            });
        }
    }
}
