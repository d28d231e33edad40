//! The peer protocol's frames, as bytes. Pure: `encode` appends a frame, `decode` takes one
//! from the front of a buffer (or says more bytes are needed), and rejects anything malformed
//! without reading past its bounds.
//!
//! ```text
//! frame   = length:u32 (big-endian, of kind + body) kind:u8 body
//! hello   = kind 1: version:u8 replica:u64 nonce:[u8; 16]
//! auth    = kind 2: mac:[u8; 32]     HMAC-SHA256(secret, "shardgate-peers" nonce-of-the-other replica-of-the-sender)
//! entries = kind 3: count:u16 { pool:str room:str shard:str placed_at_ms:u64 version:u32 }*
//! done    = kind 4: (empty)          the sender's whole table has been sent
//! ping    = kind 5: (empty)
//! members = kind 6: pool:str count:u16 { shard:str addrs:u8 { addr }* }*
//!                                    shards the sender found (DNS or config), before any
//!                                    entry that names them
//! drain   = kind 7: pool:str shard:str drained:u8 (0 or 1) at_ms:u64 by:str
//!                                    an admin's drain or undrain, made through replica `by`
//! str     = length:u8 UTF-8 bytes
//! addr    = 4:u8 ip:[u8; 4] port:u16 | 6:u8 ip:[u8; 16] port:u16
//! ```
//!
//! Version 2 added the entries' version (a room's generation), members and drain; a replica
//! of version 1 is refused at the handshake.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

pub const VERSION: u8 = 2;
/// Largest frame accepted (length field included): a few thousand entries.
pub const MAX_FRAME: usize = 1 << 20;
/// Entries per frame (a batch larger than this is sent as several frames).
pub const MAX_ENTRIES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u8,
        replica: u64,
        nonce: [u8; 16],
    },
    Auth {
        mac: [u8; 32],
    },
    Entries(Vec<Entry>),
    SyncDone,
    Ping,
    Members {
        pool: String,
        members: Vec<Member>,
    },
    Drain(Drain),
}

/// A shard the sender found itself, and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub shard: String,
    pub addrs: Vec<SocketAddr>,
}

/// An admin's drain (`drained`) or undrain of `shard`, made `at_ms` through replica `by`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    pub pool: String,
    pub shard: String,
    pub drained: bool,
    pub at_ms: u64,
    pub by: String,
}

/// One stick entry: `room` of `pool` lives on `shard` since `placed_at_ms` (Unix time), in
/// its generation `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub pool: String,
    pub room: String,
    pub shard: String,
    pub placed_at_ms: u64,
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    TooLarge(usize),
    UnknownKind(u8),
    /// The body ends before its fields do, or goes on after them.
    BadLength,
    NotUtf8,
    TooManyEntries(usize),
    /// A string longer than 255 bytes cannot be encoded.
    LongString(usize),
    /// More members or addresses than a count field holds.
    TooMany(usize),
    /// An address family other than 4 or 6, or a flag other than 0 or 1.
    BadValue(u8),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::TooLarge(n) => write!(f, "frame of {n} bytes; at most {MAX_FRAME}"),
            WireError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            WireError::BadLength => write!(f, "frame length does not match its fields"),
            WireError::NotUtf8 => write!(f, "string is not UTF-8"),
            WireError::TooManyEntries(n) => {
                write!(f, "{n} entries in a frame; at most {MAX_ENTRIES}")
            }
            WireError::LongString(n) => write!(f, "string of {n} bytes; at most 255"),
            WireError::TooMany(n) => write!(f, "{n} items for a count field too small"),
            WireError::BadValue(v) => write!(f, "unexpected value {v}"),
        }
    }
}

impl std::error::Error for WireError {}

const HELLO: u8 = 1;
const AUTH: u8 = 2;
const ENTRIES: u8 = 3;
const DONE: u8 = 4;
const PING: u8 = 5;
const MEMBERS: u8 = 6;
const DRAIN: u8 = 7;

/// Appends `frame` to `out` (nothing, if it cannot be encoded).
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend([0u8; 4]);
    if let Err(e) = encode_body(frame, out) {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start - 4;
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

fn encode_body(frame: &Frame, out: &mut Vec<u8>) -> Result<(), WireError> {
    match frame {
        Frame::Hello {
            version,
            replica,
            nonce,
        } => {
            out.push(HELLO);
            out.push(*version);
            out.extend(replica.to_be_bytes());
            out.extend(nonce);
        }
        Frame::Auth { mac } => {
            out.push(AUTH);
            out.extend(mac);
        }
        Frame::Entries(entries) => {
            if entries.len() > MAX_ENTRIES {
                return Err(WireError::TooManyEntries(entries.len()));
            }
            out.push(ENTRIES);
            out.extend((entries.len() as u16).to_be_bytes());
            for e in entries {
                for s in [&e.pool, &e.room, &e.shard] {
                    put_str(out, s)?;
                }
                out.extend(e.placed_at_ms.to_be_bytes());
                out.extend(e.version.to_be_bytes());
            }
        }
        Frame::SyncDone => out.push(DONE),
        Frame::Ping => out.push(PING),
        Frame::Members { pool, members } => {
            out.push(MEMBERS);
            put_str(out, pool)?;
            let count =
                u16::try_from(members.len()).map_err(|_| WireError::TooMany(members.len()))?;
            out.extend(count.to_be_bytes());
            for m in members {
                put_str(out, &m.shard)?;
                let n =
                    u8::try_from(m.addrs.len()).map_err(|_| WireError::TooMany(m.addrs.len()))?;
                out.push(n);
                for addr in &m.addrs {
                    match addr.ip() {
                        IpAddr::V4(ip) => {
                            out.push(4);
                            out.extend(ip.octets());
                        }
                        IpAddr::V6(ip) => {
                            out.push(6);
                            out.extend(ip.octets());
                        }
                    }
                    out.extend(addr.port().to_be_bytes());
                }
            }
        }
        Frame::Drain(d) => {
            out.push(DRAIN);
            put_str(out, &d.pool)?;
            put_str(out, &d.shard)?;
            out.push(u8::from(d.drained));
            out.extend(d.at_ms.to_be_bytes());
            put_str(out, &d.by)?;
        }
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), WireError> {
    let n = u8::try_from(s.len()).map_err(|_| WireError::LongString(s.len()))?;
    out.push(n);
    out.extend(s.as_bytes());
    Ok(())
}

/// Takes one frame from the front of `buf`: `Ok(Some((frame, bytes used)))`, or `Ok(None)`
/// when `buf` holds only part of one.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(head.try_into().expect("4 bytes")) as usize;
    if len + 4 > MAX_FRAME {
        return Err(WireError::TooLarge(len + 4));
    }
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let mut r = Reader(body);
    let kind = r.u8()?;
    let frame = match kind {
        HELLO => Frame::Hello {
            version: r.u8()?,
            replica: r.u64()?,
            nonce: r.array()?,
        },
        AUTH => Frame::Auth { mac: r.array()? },
        ENTRIES => {
            let count = usize::from(u16::from_be_bytes(r.array()?));
            if count > MAX_ENTRIES {
                return Err(WireError::TooManyEntries(count));
            }
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                entries.push(Entry {
                    pool: r.string()?,
                    room: r.string()?,
                    shard: r.string()?,
                    placed_at_ms: r.u64()?,
                    version: u32::from_be_bytes(r.array()?),
                });
            }
            Frame::Entries(entries)
        }
        DONE => Frame::SyncDone,
        PING => Frame::Ping,
        MEMBERS => {
            let pool = r.string()?;
            let count = usize::from(u16::from_be_bytes(r.array()?));
            let mut members = Vec::with_capacity(count.min(256));
            for _ in 0..count {
                let shard = r.string()?;
                let n = usize::from(r.u8()?);
                let mut addrs = Vec::with_capacity(n);
                for _ in 0..n {
                    let ip = match r.u8()? {
                        4 => IpAddr::from(r.array::<4>()?),
                        6 => IpAddr::from(r.array::<16>()?),
                        other => return Err(WireError::BadValue(other)),
                    };
                    addrs.push(SocketAddr::new(ip, u16::from_be_bytes(r.array()?)));
                }
                members.push(Member { shard, addrs });
            }
            Frame::Members { pool, members }
        }
        DRAIN => Frame::Drain(Drain {
            pool: r.string()?,
            shard: r.string()?,
            drained: match r.u8()? {
                0 => false,
                1 => true,
                other => return Err(WireError::BadValue(other)),
            },
            at_ms: r.u64()?,
            by: r.string()?,
        }),
        other => return Err(WireError::UnknownKind(other)),
    };
    if !r.0.is_empty() {
        return Err(WireError::BadLength);
    }
    Ok(Some((frame, 4 + len)))
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::BadLength);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn string(&mut self) -> Result<String, WireError> {
        let n = usize::from(self.u8()?);
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| WireError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(room: &str) -> Entry {
        Entry {
            pool: "shards".into(),
            room: room.into(),
            shard: "shard-1".into(),
            placed_at_ms: 1_763_700_000_123,
            version: 3,
        }
    }

    #[test]
    fn frames_round_trip_and_stream() {
        let frames = vec![
            Frame::Hello {
                version: VERSION,
                replica: 42,
                nonce: [7; 16],
            },
            Frame::Auth { mac: [9; 32] },
            Frame::Entries(vec![entry("a"), entry("tenant/ünïcode")]),
            Frame::Entries(Vec::new()),
            Frame::SyncDone,
            Frame::Ping,
            Frame::Members {
                pool: "shards".into(),
                members: vec![
                    Member {
                        shard: "shard-2.web".into(),
                        addrs: vec![
                            "10.0.0.7:80".parse().unwrap(),
                            "[fd00::7]:8080".parse().unwrap(),
                        ],
                    },
                    Member {
                        shard: "shard-3.web".into(),
                        addrs: Vec::new(),
                    },
                ],
            },
            Frame::Drain(Drain {
                pool: "shards".into(),
                shard: "shard-2.web".into(),
                drained: true,
                at_ms: 1_763_700_000_999,
                by: "edge-0".into(),
            }),
        ];
        let mut buf = Vec::new();
        for f in &frames {
            encode(f, &mut buf).unwrap();
        }
        // Fed one byte at a time, every frame comes out once it is whole.
        let mut got = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for b in buf {
            pending.push(b);
            while let Some((f, used)) = decode(&pending).unwrap() {
                got.push(f);
                pending.drain(..used);
            }
        }
        assert_eq!(got, frames);
        assert!(pending.is_empty());
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert_eq!(decode(&[0, 0, 0, 1, 99]), Err(WireError::UnknownKind(99)));
        assert_eq!(decode(&[0, 0, 0, 2, PING, 0]), Err(WireError::BadLength));
        assert_eq!(decode(&[0, 0, 0, 3, AUTH, 1, 2]), Err(WireError::BadLength));
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(WireError::TooLarge(0xffff_ffff + 4))
        );
        assert_eq!(
            decode(&[0, 0, 0, 4, ENTRIES, 0xff, 0xff, 0]),
            Err(WireError::TooManyEntries(65535))
        );
        assert_eq!(
            decode(&[0, 0, 0, 6, ENTRIES, 0, 1, 2, 0xc3, 0x28]),
            Err(WireError::NotUtf8)
        );
        assert_eq!(decode(&[0, 0, 0]), Ok(None));
        // An address family that is neither 4 nor 6; a drain flag that is not 0 or 1.
        assert_eq!(
            decode(&[0, 0, 0, 8, MEMBERS, 1, b'p', 0, 1, 1, b's', 1]),
            Err(WireError::BadLength)
        );
        assert_eq!(
            decode(&[0, 0, 0, 9, MEMBERS, 1, b'p', 0, 1, 1, b's', 1, 5]),
            Err(WireError::BadValue(5))
        );
        assert_eq!(
            decode(&[0, 0, 0, 6, DRAIN, 1, b'p', 1, b's', 2]),
            Err(WireError::BadValue(2))
        );
        let long = Entry {
            room: "x".repeat(256),
            ..entry("a")
        };
        let mut out = vec![1, 2, 3];
        assert_eq!(
            encode(&Frame::Entries(vec![long]), &mut out),
            Err(WireError::LongString(256))
        );
        assert_eq!(out, [1, 2, 3], "nothing half-written");
    }

    #[test]
    fn the_fuzz_seeds_are_frames_of_this_version() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/peer_wire");
        for name in ["session", "entries", "members", "drain"] {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let (frame, used) = decode(rest).unwrap().unwrap_or_else(|| panic!("{name}"));
                if let Frame::Hello { version, .. } = frame {
                    assert_eq!(version, VERSION, "{name}");
                }
                rest = &rest[used..];
            }
        }
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some((frame, used))) = decode(&bytes) {
                prop_assert!(used <= bytes.len());
                let mut again = Vec::new();
                encode(&frame, &mut again).unwrap();
                prop_assert_eq!(&again[..], &bytes[..used]);
            }
        }
    }
}
