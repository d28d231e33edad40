//! Continuity of one forwarded stream across a simulcast layer switch (or a WHEP viewer's change
//! of publisher). Each layer has its own sequence numbers, RTP times and VP8 picture ids; a
//! subscriber's stream must not jump where the SFU switches, or its decoder takes the jump for
//! loss. At a switch the offsets are set so the stream goes on from its last packet. Pure.

use str0m::media::MediaTime;
use str0m::rtp::{SeqNo, Vp8Descriptor, Vp8Patch, Vp8PatchError};

const PICTURE_ID_SPACE: i32 = 1 << 15;

#[derive(Debug, Default, Clone)]
pub struct Rewrite {
    /// The next packet comes from another layer or source: the offsets are set on it.
    rebase: bool,
    seq_offset: i64,
    last_seq: Option<i64>,
    time_offset: i64,
    last_time: Option<i64>,
    picture_offset: i32,
    last_picture: Option<i32>,
    tl0_offset: i16,
    last_tl0: Option<i16>,
}

/// What one forwarded packet carries instead of its source's values.
#[derive(Debug, PartialEq, Eq)]
pub struct Rewritten {
    pub seq_no: SeqNo,
    pub time: u32,
    /// The VP8 picture id and TL0PICIDX, where they change.
    pub vp8_patch: Option<Vp8Patch>,
}

impl Rewrite {
    /// The next packet comes from another layer or source.
    pub fn switch(&mut self) {
        self.rebase = true;
    }

    /// The values to send a packet with (`vp8`: its payload, for a VP8 track). `None`: the
    /// packet is older than the switch (it would go out before the stream's start).
    pub fn packet(&mut self, seq: SeqNo, time: MediaTime, vp8: Option<&[u8]>) -> Option<Rewritten> {
        let seq_in = *seq as i64;
        let time_in = time.numer() as i64;
        let descriptor = vp8.and_then(|p| Vp8Descriptor::parse(p).ok());
        if self.last_seq.is_none() {
            // The subscriber's SRTP starts at rollover 0: the stream keeps the low 16 bits of
            // the source's number, whose extended count (a publisher sending for a while) may
            // be past 65,535.
            self.seq_offset = -(seq_in & !0xffff);
        }
        if std::mem::take(&mut self.rebase) {
            if let Some(last) = self.last_seq {
                self.seq_offset = last + 1 - seq_in;
            }
            if let Some(last) = self.last_time {
                // One frame (at 30/s) after the last one sent.
                let frame = i64::from(time.frequency().get()) / 30;
                self.time_offset = last + frame - time_in;
            }
            if let (Some(last), Some(id)) =
                (self.last_picture, descriptor.and_then(|d| d.picture_id()))
            {
                self.picture_offset = (last + 1 - i32::from(id)).rem_euclid(PICTURE_ID_SPACE);
            }
            if let (Some(last), Some(idx)) =
                (self.last_tl0, descriptor.and_then(|d| d.tl0_pic_idx()))
            {
                self.tl0_offset = (last + 1 - i16::from(idx)).rem_euclid(256);
            }
        }
        let seq_out = seq_in + self.seq_offset;
        let time_out = time_in + self.time_offset;
        if seq_out < 0 || time_out < 0 {
            return None;
        }
        self.last_seq = Some(self.last_seq.map_or(seq_out, |l| l.max(seq_out)));
        self.last_time = Some(self.last_time.map_or(time_out, |l| l.max(time_out)));
        let vp8_patch = descriptor.and_then(|d| self.vp8(d));
        Some(Rewritten {
            seq_no: SeqNo::from(seq_out as u64),
            time: time_out as u32,
            vp8_patch,
        })
    }

    /// The patch giving a VP8 packet the stream's picture id and TL0PICIDX (none while the
    /// stream still runs on its first source's).
    fn vp8(&mut self, d: Vp8Descriptor) -> Option<Vp8Patch> {
        let picture = d
            .picture_id()
            .map(|id| (i32::from(id) + self.picture_offset) % PICTURE_ID_SPACE);
        let tl0 = d
            .tl0_pic_idx()
            .map(|idx| ((i16::from(idx) + self.tl0_offset) % 256) as u8);
        if let Some(p) = picture {
            self.last_picture = Some(p);
        }
        if let Some(t) = tl0 {
            self.last_tl0 = Some(i16::from(t));
        }
        if self.picture_offset == 0 && self.tl0_offset == 0 {
            return None;
        }
        let build = |picture: Option<i32>| {
            let mut b = d.patch();
            if let Some(p) = picture {
                b = b.picture_id(p as u16);
            }
            if let Some(t) = tl0 {
                b = b.tl0_pic_idx(t);
            }
            b.build()
        };
        match build(picture) {
            Ok(patch) => Some(patch),
            // A 7-bit picture id: the low bits of the 15-bit count.
            Err(Vp8PatchError::PictureIdTooLarge) => build(picture.map(|p| p & 0x7f)).ok(),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: u64) -> MediaTime {
        MediaTime::from_90khz(t)
    }

    /// A VP8 payload descriptor with a 15-bit picture id, a TL0PICIDX and a TID, then a byte.
    fn vp8(picture: u16, tl0: u8) -> Vec<u8> {
        vec![
            0x90,
            0xe0,
            0x80 | (picture >> 8) as u8,
            picture as u8,
            tl0,
            0x00,
            0x00,
        ]
    }

    #[test]
    fn a_stream_on_one_source_goes_out_unchanged() {
        let mut r = Rewrite::default();
        for i in 0..3u64 {
            let out = r
                .packet(
                    SeqNo::from(100 + i),
                    at(9000 + 3000 * i),
                    Some(&vp8(7 + i as u16, 3)),
                )
                .unwrap();
            assert_eq!(*out.seq_no, 100 + i);
            assert_eq!(u64::from(out.time), 9000 + 3000 * i);
            assert_eq!(out.vp8_patch, None);
        }
    }

    #[test]
    fn after_a_switch_the_stream_goes_on_from_its_last_packet() {
        let mut r = Rewrite::default();
        r.packet(SeqNo::from(500), at(90_000), Some(&vp8(40, 9)))
            .unwrap();
        r.packet(SeqNo::from(501), at(93_000), Some(&vp8(41, 9)))
            .unwrap();
        r.switch();
        // The other layer: its own numbers, far from the first's.
        let out = r
            .packet(SeqNo::from(20_000), at(5_000_000), Some(&vp8(30_000, 200)))
            .unwrap();
        assert_eq!(*out.seq_no, 502);
        assert_eq!(u64::from(out.time), 93_000 + 3000);
        assert!(out.vp8_patch.is_some());
        let next = r
            .packet(SeqNo::from(20_001), at(5_000_000), Some(&vp8(30_000, 200)))
            .unwrap();
        assert_eq!(*next.seq_no, 503);
        assert_eq!(next.time, out.time);
        assert_eq!(r.last_picture, Some(42));
        assert_eq!(r.last_tl0, Some(10));
    }

    #[test]
    fn a_stream_joined_late_starts_its_sequence_at_rollover_zero() {
        let mut r = Rewrite::default();
        let first = r
            .packet(SeqNo::from(3 * 65_536 + 100), at(0), None)
            .unwrap();
        assert_eq!((first.seq_no.roc(), first.seq_no.as_u16()), (0, 100));
        let next = r.packet(SeqNo::from(4 * 65_536 + 2), at(0), None).unwrap();
        assert_eq!((next.seq_no.roc(), next.seq_no.as_u16()), (1, 2));
    }

    #[test]
    fn a_packet_from_before_the_switch_is_not_sent() {
        let mut r = Rewrite::default();
        r.packet(SeqNo::from(10), at(1000), None).unwrap();
        r.switch();
        r.packet(SeqNo::from(5000), at(50_000), None).unwrap();
        // 5000 - 4989 = 11; a late packet of the new source 12 before it would be seq -1.
        assert_eq!(r.packet(SeqNo::from(4988), at(50_000), None), None);
        assert_eq!(
            *r.packet(SeqNo::from(5001), at(53_000), None)
                .unwrap()
                .seq_no,
            12
        );
    }

    #[test]
    fn picture_ids_wrap_in_their_15_bits() {
        let mut r = Rewrite::default();
        r.packet(SeqNo::from(1), at(0), Some(&vp8(32_767, 255)))
            .unwrap();
        r.switch();
        r.packet(SeqNo::from(900), at(0), Some(&vp8(5, 17)))
            .unwrap();
        assert_eq!(r.last_picture, Some(0));
        assert_eq!(r.last_tl0, Some(0));
    }
}
