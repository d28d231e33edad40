//! HTTP/1.1 as the edge speaks it, without I/O: request and response heads parsed (httparse)
//! and checked, message framing decided, chunked bodies scanned, and the heads sent on built.
//! The server's connection loop (`crate::front`) reads and writes; every decision is here, so
//! it is unit-tested and fuzzed (`fuzz/fuzz_targets/h1_request.rs`).

pub mod chunked;
pub mod forward;
pub mod request;
pub mod response;
mod tokens;

/// Headers per message: HAProxy's default is 101 (`tune.http.maxhdr`); more get 431.
pub const MAX_HEADERS: usize = 128;

/// How a message's body is delimited (RFC 9112 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the sender closes the connection (responses only).
    Close,
}

/// Why a request is refused at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    /// Metric label.
    pub reason: &'static str,
    /// Body sent to the client.
    pub message: &'static str,
}

impl Reject {
    pub const fn new(status: u16, reason: &'static str, message: &'static str) -> Self {
        Reject {
            status,
            reason,
            message,
        }
    }
}

pub const TOO_LARGE: Reject =
    Reject::new(431, "header_too_large", "request header fields too large\n");
