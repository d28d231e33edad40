//! The peer protocol's frames, as bytes. Pure: `encode` appends a frame, `decode` takes one
//! from the front of a buffer (or says more bytes are needed), and rejects anything malformed
//! without reading past its bounds.
//!
//! ```text
//! frame   = length:u32 (big-endian, of kind + body) kind:u8 body
//! hello   = kind 1: version:u8 replica:u64 nonce:[u8; 16]
//! auth    = kind 2: mac:[u8; 32]     HMAC-SHA256(secret, "shardgate-peers" nonce-of-the-other replica-of-the-sender)
//! entries = kind 3: count:u16 { pool:str room:str shard:str placed_at_ms:u64 }*
//! done    = kind 4: (empty)          the sender's whole table has been sent
//! ping    = kind 5: (empty)
//! str     = length:u8 UTF-8 bytes
//! ```

use std::fmt;

pub const VERSION: u8 = 1;
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
}

/// One stick entry: `room` of `pool` lives on `shard` since `placed_at_ms` (Unix time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub pool: String,
    pub room: String,
    pub shard: String,
    pub placed_at_ms: u64,
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
        }
    }
}

impl std::error::Error for WireError {}

const HELLO: u8 = 1;
const AUTH: u8 = 2;
const ENTRIES: u8 = 3;
const DONE: u8 = 4;
const PING: u8 = 5;

/// Appends `frame` to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend([0u8; 4]);
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
                out.truncate(start);
                return Err(WireError::TooManyEntries(entries.len()));
            }
            out.push(ENTRIES);
            out.extend((entries.len() as u16).to_be_bytes());
            for e in entries {
                for s in [&e.pool, &e.room, &e.shard] {
                    if s.len() > 255 {
                        out.truncate(start);
                        return Err(WireError::LongString(s.len()));
                    }
                    out.push(s.len() as u8);
                    out.extend(s.as_bytes());
                }
                out.extend(e.placed_at_ms.to_be_bytes());
            }
        }
        Frame::SyncDone => out.push(DONE),
        Frame::Ping => out.push(PING),
    }
    let len = out.len() - start - 4;
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
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
                });
            }
            Frame::Entries(entries)
        }
        DONE => Frame::SyncDone,
        PING => Frame::Ping,
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
