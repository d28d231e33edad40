//! Consecutive datagrams for one destination gathered into one buffer, so the driver hands
//! them to the kernel as a single GSO send: one trip through the UDP/IP stack for the burst
//! instead of one per datagram. A video frame leaves a sender as a burst of equal-sized RTP
//! packets and a shorter last one, which is exactly what GSO carries: every segment `stride`
//! bytes but the last, which may be shorter. Pure.

/// Most segments in one GSO send (the kernel's UDP_MAX_SEGMENTS).
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send (an IP datagram's 64 KiB, less headers, with room to spare).
pub const MAX_BYTES: usize = 64_000;

/// The datagrams gathered for one destination `K`.
#[derive(Debug)]
pub struct Burst<K> {
    key: Option<K>,
    buf: Vec<u8>,
    stride: usize,
    segments: usize,
    /// The last segment was shorter than `stride`: nothing may follow it.
    closed: bool,
    max_segments: usize,
}

impl<K: PartialEq + Copy> Burst<K> {
    /// An empty burst of at most `max_segments` segments (1 gathers nothing: each datagram is
    /// a burst of its own).
    pub fn new(max_segments: usize) -> Self {
        Burst {
            key: None,
            buf: Vec::with_capacity(MAX_BYTES),
            stride: 0,
            segments: 0,
            closed: false,
            max_segments: max_segments.clamp(1, MAX_SEGMENTS),
        }
    }

    /// Adds `data` for `key`: one datagram, or a received GRO burst of `stride`-sized segments
    /// (the last may be shorter). `false` when it cannot join what is gathered (another key,
    /// another size, after a short segment, or too much): send this burst, `clear` it, and add
    /// again, which then always succeeds.
    pub fn add(&mut self, key: K, data: &[u8], stride: usize) -> bool {
        // A received GRO burst has segments of its stride; a plain datagram is one segment.
        let gro = (stride > 0 && stride < data.len()).then_some(stride);
        let segments = gro.map_or(1, |s| data.len().div_ceil(s));
        if self.key.is_some() {
            let fits = self.key == Some(key)
                && !self.closed
                && !data.is_empty()
                && match gro {
                    Some(s) => s == self.stride,
                    None => data.len() <= self.stride,
                }
                && self.segments + segments <= self.max_segments
                && self.buf.len() + data.len() <= MAX_BYTES;
            if !fits {
                return false;
            }
        } else {
            self.key = Some(key);
            self.stride = gro.unwrap_or(data.len());
        }
        self.buf.extend_from_slice(data);
        self.segments += segments;
        // A shorter segment ends the burst; so does an empty datagram (GSO cannot carry it).
        self.closed = data.is_empty() || !data.len().is_multiple_of(self.stride);
        true
    }

    /// What is gathered: (key, bytes, stride, segments), or `None` when empty.
    pub fn gathered(&self) -> Option<(K, &[u8], usize, usize)> {
        self.key
            .map(|k| (k, self.buf.as_slice(), self.stride, self.segments))
    }

    /// Empties the burst (keeping its buffer).
    pub fn clear(&mut self) {
        self.key = None;
        self.buf.clear();
        self.stride = 0;
        self.segments = 0;
        self.closed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn equal_datagrams_and_a_shorter_last_one_make_one_burst() {
        let mut b = Burst::new(64);
        assert!(b.gathered().is_none());
        assert!(b.add(1, &[1; 100], 0));
        assert!(b.add(1, &[2; 100], 0));
        assert!(b.add(1, &[3; 40], 0));
        // Nothing after the short one, nor for another key, nor of another size.
        assert!(!b.add(1, &[4; 40], 0));
        let (k, bytes, stride, n) = b.gathered().unwrap();
        assert_eq!((k, bytes.len(), stride, n), (1, 240, 100, 3));
        b.clear();
        assert!(b.add(1, &[1; 100], 0));
        assert!(!b.add(2, &[1; 100], 0));
        assert!(!b.add(1, &[1; 120], 0));
    }

    #[test]
    fn limits_hold() {
        let mut b = Burst::new(3);
        for _ in 0..3 {
            assert!(b.add((), &[0; 10], 0));
        }
        assert!(!b.add((), &[0; 10], 0));
        let mut b = Burst::new(64);
        assert!(b.add((), &vec![0; 40_000], 0));
        assert!(!b.add((), &vec![0; 40_000], 0));
        // One segment per burst when the socket cannot do GSO.
        let mut b = Burst::new(1);
        assert!(b.add((), &[0; 10], 0));
        assert!(!b.add((), &[0; 10], 0));
    }

    #[test]
    fn a_received_gro_burst_joins_with_its_stride() {
        let mut b = Burst::new(64);
        assert!(b.add(7, &[0; 300], 100));
        assert!(b.add(7, &[0; 250], 100)); // 100, 100, 50
        assert!(!b.add(7, &[0; 100], 100));
        assert_eq!(b.gathered().unwrap().3, 6);
    }

    proptest! {
        /// Whatever arrives, every datagram is sent exactly once, in order, to its key, and
        /// each send is a valid GSO send: segments of `stride` bytes, the last possibly shorter.
        #[test]
        fn every_datagram_is_sent_once_in_order(
            input in proptest::collection::vec((0u8..3, 0usize..300), 0..200),
            max in 1usize..70,
        ) {
            let mut b = Burst::new(max);
            let mut sent: Vec<(u8, Vec<u8>)> = Vec::new();
            let flush = |b: &mut Burst<u8>, sent: &mut Vec<(u8, Vec<u8>)>| {
                if let Some((k, bytes, stride, n)) = b.gathered() {
                    assert!(n <= max.clamp(1, MAX_SEGMENTS) && bytes.len() <= MAX_BYTES);
                    if bytes.is_empty() {
                        assert_eq!((stride, n), (0, 1));
                        sent.push((k, Vec::new()));
                    } else {
                        assert_eq!(bytes.len().div_ceil(stride), n);
                        for seg in bytes.chunks(stride) {
                            sent.push((k, seg.to_vec()));
                        }
                    }
                }
                b.clear();
            };
            let datagrams: Vec<(u8, Vec<u8>)> = input
                .iter()
                .enumerate()
                .map(|(i, &(k, len))| (k, vec![i as u8; len]))
                .collect();
            for (k, d) in &datagrams {
                if !b.add(*k, d, 0) {
                    flush(&mut b, &mut sent);
                    prop_assert!(b.add(*k, d, 0));
                }
            }
            flush(&mut b, &mut sent);
            prop_assert_eq!(sent, datagrams);
        }
    }
}
