//! Simulcast: which layer (rid) each subscriber gets. Layers are ranked by the bitrate each
//! actually carries (measured, not trusted from names); a subscriber gets the best layer that
//! fits its share of the bandwidth its estimator measured, and switches only on a keyframe of
//! the new layer.

use std::time::{Duration, Instant};
use str0m::media::Rid;

/// Bytes per rid over a sliding window of two one-second buckets.
#[derive(Debug, Default)]
pub struct LayerRates {
    layers: Vec<Meter>,
}

#[derive(Debug)]
struct Meter {
    rid: Rid,
    bucket_start: Instant,
    current: u64,
    previous: u64,
}

const BUCKET: Duration = Duration::from_secs(1);

impl LayerRates {
    /// Counts a packet's payload; `true` when a new one-second bucket began (time to re-choose
    /// layers).
    pub fn record(&mut self, rid: Rid, bytes: usize, now: Instant) -> bool {
        let m = match self.layers.iter_mut().position(|m| m.rid == rid) {
            Some(i) => &mut self.layers[i],
            None => {
                self.layers.push(Meter {
                    rid,
                    bucket_start: now,
                    current: 0,
                    previous: 0,
                });
                self.layers.last_mut().expect("just pushed")
            }
        };
        let elapsed = now.saturating_duration_since(m.bucket_start);
        let rolled = elapsed >= BUCKET;
        if elapsed >= BUCKET * 2 {
            m.previous = 0;
            m.current = 0;
            m.bucket_start = now;
        } else if rolled {
            m.previous = m.current;
            m.current = 0;
            m.bucket_start += BUCKET;
        }
        m.current += bytes as u64;
        rolled
    }

    /// (rid, bits per second) of each layer seen, lowest rate first. A layer silent for two
    /// seconds reads 0 (a publisher that stopped sending it).
    pub fn ranked(&self, now: Instant) -> Vec<(Rid, u64)> {
        let mut out: Vec<(Rid, u64)> = self
            .layers
            .iter()
            .map(|m| {
                let elapsed = now.saturating_duration_since(m.bucket_start);
                let bytes = if elapsed >= BUCKET * 2 {
                    0
                } else if elapsed >= BUCKET {
                    m.current
                } else {
                    m.previous.max(m.current)
                };
                (m.rid, bytes * 8)
            })
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| (*a.0).cmp(&*b.0)));
        out
    }
}

/// The layer to send: the highest whose rate fits `budget_bps`, else the lowest that carries
/// anything. `None` when no layer has been seen.
pub fn choose(ranked: &[(Rid, u64)], budget_bps: u64) -> Option<Rid> {
    let live: Vec<&(Rid, u64)> = ranked.iter().filter(|(_, bps)| *bps > 0).collect();
    live.iter()
        .rev()
        .find(|(_, bps)| *bps <= budget_bps)
        .or(live.first())
        .or(ranked.first().as_ref())
        .map(|(rid, _)| *rid)
}

/// One subscriber's layer state for one simulcast track.
#[derive(Debug, Default, Clone, Copy)]
pub struct Selection {
    /// The layer being forwarded.
    pub current: Option<Rid>,
    /// The layer wanted; becomes current at its next keyframe.
    pub target: Option<Rid>,
}

/// What to do with one RTP packet of layer `rid`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// Forward, and the subscriber now receives this layer.
    SwitchAndForward,
    /// Not this subscriber's layer.
    Skip,
    /// Not forwarded; the target layer needs a keyframe before it can start.
    SkipNeedKeyframe,
}

impl Selection {
    /// `keyframe`: the packet starts a keyframe (a switch happens there, never mid-frame).
    pub fn on_packet(&mut self, rid: Rid, keyframe: bool) -> Verdict {
        let target = *self.target.get_or_insert(rid);
        if rid == target && self.current != Some(target) {
            if keyframe {
                self.current = Some(target);
                return Verdict::SwitchAndForward;
            }
            return Verdict::SkipNeedKeyframe;
        }
        if Some(rid) == self.current {
            Verdict::Forward
        } else {
            Verdict::Skip
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(s: &str) -> Rid {
        Rid::from(s)
    }

    #[test]
    fn rates_rank_layers_and_forget_silent_ones() {
        let t0 = Instant::now();
        let mut r = LayerRates::default();
        for i in 0..30u32 {
            let now = t0 + Duration::from_millis(u64::from(i) * 33);
            r.record(rid("h"), 5_000, now);
            r.record(rid("l"), 500, now);
            r.record(rid("m"), 1_500, now);
        }
        let ranked = r.ranked(t0 + Duration::from_millis(1_100));
        let order: Vec<Rid> = ranked.iter().map(|(r, _)| *r).collect();
        assert_eq!(order, vec![rid("l"), rid("m"), rid("h")]);
        assert!(ranked[2].1 > 1_000_000, "{ranked:?}");
        let later = r.ranked(t0 + Duration::from_secs(5));
        assert!(later.iter().all(|(_, bps)| *bps == 0), "{later:?}");
    }

    #[test]
    fn choose_fits_the_budget() {
        let ranked = [
            (rid("l"), 150_000),
            (rid("m"), 500_000),
            (rid("h"), 1_500_000),
        ];
        assert_eq!(choose(&ranked, 2_000_000), Some(rid("h")));
        assert_eq!(choose(&ranked, 600_000), Some(rid("m")));
        assert_eq!(choose(&ranked, 10_000), Some(rid("l")));
        assert_eq!(choose(&[], 10_000), None);
        let stopped = [(rid("h"), 0), (rid("l"), 100_000)];
        assert_eq!(choose(&stopped, 50_000), Some(rid("l")));
    }

    #[test]
    fn switches_only_on_a_keyframe_of_the_target() {
        let mut s = Selection::default();
        assert_eq!(s.on_packet(rid("h"), false), Verdict::SkipNeedKeyframe);
        assert_eq!(s.on_packet(rid("l"), true), Verdict::Skip);
        assert_eq!(s.on_packet(rid("h"), true), Verdict::SwitchAndForward);
        assert_eq!(s.on_packet(rid("h"), false), Verdict::Forward);
        s.target = Some(rid("l"));
        assert_eq!(s.on_packet(rid("l"), false), Verdict::SkipNeedKeyframe);
        assert_eq!(
            s.on_packet(rid("h"), false),
            Verdict::Forward,
            "old layer until the switch"
        );
        assert_eq!(s.on_packet(rid("l"), true), Verdict::SwitchAndForward);
        assert_eq!(s.on_packet(rid("h"), true), Verdict::Skip);
        assert_eq!(s.current, Some(rid("l")));
    }
}
