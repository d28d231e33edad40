//! The chunked transfer coding (RFC 9112 section 7.1), scanned as bytes pass: where a chunked
//! body ends, and which bytes are data. Strict: CRLF line ends only, hex sizes without
//! padding or signs, extensions and trailers bounded. The edge forwards a chunked body as
//! received (or, for an HTTP/1.0 client, its data only); refusing what is ambiguous here is
//! what keeps the edge and the shard agreeing on where a message ends.

use std::ops::Range;

/// Longest chunk-size line (size and extensions) and longest trailer section.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (`digits` so far).
    Size {
        digits: u8,
    },
    /// Inside chunk extensions, up to the CR.
    Ext,
    /// After the size line's CR.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    /// After the CR of the final empty line.
    EndLf,
    Done,
}

/// Where the scan of one chunked body stands.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    /// Size of the chunk being read, then what is left of it.
    remaining: u64,
    line: usize,
    trailers: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size { digits: 0 },
            remaining: 0,
            line: 0,
            trailers: 0,
        }
    }
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans `input`; returns how many bytes belong to the body (all of `input` unless the
    /// body ends inside it) and calls `data` with the ranges of chunk data among them.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(Range<usize>),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size { digits } => match hex(b) {
                    Some(v) => {
                        if digits >= 15 {
                            return Err(ChunkError("chunk size too large"));
                        }
                        self.remaining = self.remaining << 4 | v as u64;
                        self.state = State::Size { digits: digits + 1 };
                    }
                    None if digits == 0 => return Err(ChunkError("chunk size expected")),
                    None if b == b';' => {
                        self.line = 0;
                        self.state = State::Ext;
                    }
                    None if b == b'\r' => self.state = State::SizeLf,
                    None => return Err(ChunkError("invalid chunk size")),
                },
                State::Ext => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(ChunkError("chunk extensions too long"));
                    }
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                        _ => return Err(ChunkError("invalid chunk extension")),
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("CRLF expected after the chunk size"));
                    }
                    self.state = match self.remaining {
                        0 => State::TrailerStart,
                        _ => State::Data,
                    };
                }
                State::Data => {
                    let n = (input.len() - i).min(self.remaining.min(usize::MAX as u64) as usize);
                    data(i..i + n);
                    self.remaining -= n as u64;
                    i += n;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("CRLF expected after chunk data"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("CRLF expected after chunk data"));
                    }
                    self.state = State::Size { digits: 0 };
                }
                State::TrailerStart => {
                    if b == b'\r' {
                        self.state = State::EndLf;
                    } else {
                        self.state = State::TrailerLine;
                        continue;
                    }
                }
                State::TrailerLine => {
                    self.trailers += 1;
                    if self.trailers > MAX_TRAILERS {
                        return Err(ChunkError("trailers too long"));
                    }
                    match b {
                        b'\r' => self.state = State::TrailerLf,
                        b'\n' => return Err(ChunkError("bare LF in trailers")),
                        _ => {}
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("CRLF expected after a trailer"));
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("CRLF expected at the end of the body"));
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
                State::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `input` fed in pieces of `step` bytes; (body length, data) or the error.
    fn scan(input: &[u8], step: usize) -> Result<(usize, Vec<u8>, bool), ChunkError> {
        let mut c = Chunked::default();
        let mut data = Vec::new();
        let mut used = 0;
        for piece in input.chunks(step) {
            let n = c.feed(piece, |r| data.extend_from_slice(&piece[r]))?;
            used += n;
            if c.is_done() {
                break;
            }
        }
        Ok((used, data, c.is_done()))
    }

    #[test]
    fn bodies_end_where_they_end_whatever_the_pieces() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1";
        let end = body.len() - b"GET / HTTP/1.1".len();
        for step in [1, 2, 3, 7, 64] {
            let (used, data, done) = scan(body, step).unwrap();
            assert!(done);
            assert_eq!(used, end, "step {step}");
            assert_eq!(data, b"hello world");
        }
        assert!(!scan(b"5\r\nhel", 64).unwrap().2, "not done mid-chunk");
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"-5\r\n",
            b"fffffffffffffffff\r\n",
            b"5\r\nhelloX\r\n",
            b"0\r\nX: 1\n\r\n",
            b"\r\n",
            b"5;a\x00\r\n",
        ] {
            assert!(scan(bad, 64).is_err(), "{bad:?}");
        }
    }
}
