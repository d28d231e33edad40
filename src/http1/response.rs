//! A shard's response head: parsed, checked, and its body's framing decided.

use super::{tokens, Body, MAX_HEADERS};
use httparse::{Header, Status};

/// Largest response head taken from a shard.
pub const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug)]
pub struct Response<'b> {
    pub status: u16,
    pub reason: &'b str,
    pub minor: u8,
    pub headers: &'b [Header<'b>],
    pub head_len: usize,
    pub body: Body,
    /// The shard keeps the connection open after this response.
    pub keep_alive: bool,
    /// A 101 that switches to WebSocket.
    pub websocket: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// Parses the head at the start of `buf`; `Ok(None)`: not complete yet. `head_request`: the
/// request was HEAD (no body follows whatever the headers say).
pub fn parse<'b>(
    buf: &'b [u8],
    storage: &'b mut [Header<'b>; MAX_HEADERS],
    head_request: bool,
) -> Result<Option<Response<'b>>, BadResponse> {
    let mut resp = httparse::Response::new(storage);
    let head_len = match resp.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(BadResponse("response head too large"))
        }
        Ok(Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse("malformed response head")),
    };
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err(BadResponse("malformed response head"));
    };
    let mut length = None;
    let mut lengths = 0;
    let mut codings = 0;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive = false;
    let mut upgrade_websocket = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = tokens::content_length(h.value) else {
                return Err(BadResponse("invalid Content-Length"));
            };
            if lengths > 0 && length != Some(n) {
                return Err(BadResponse("conflicting Content-Length"));
            }
            lengths += 1;
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let before = codings;
            for coding in tokens::list(h.value) {
                codings += 1;
                chunked = coding.eq_ignore_ascii_case(b"chunked");
            }
            if codings == before {
                // No coding named: not chunked, so the body runs to the close.
                codings += 1;
                chunked = false;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= tokens::has(h.value, "close");
            keep_alive |= tokens::has(h.value, "keep-alive");
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade_websocket |= tokens::has(h.value, "websocket");
        }
    }
    // RFC 9112 section 6.3: no body for HEAD, 1xx, 204 and 304; Transfer-Encoding overrides
    // Content-Length; a coding other than chunked last, or no length, runs to the close.
    let body = if head_request || status < 200 || status == 204 || status == 304 {
        Body::None
    } else if codings > 0 {
        if chunked {
            Body::Chunked
        } else {
            Body::Close
        }
    } else {
        match length {
            Some(0) => Body::None,
            Some(n) => Body::Length(n),
            None => Body::Close,
        }
    };
    Ok(Some(Response {
        status,
        reason: resp.reason.unwrap_or(""),
        minor,
        headers: resp.headers,
        head_len,
        body,
        keep_alive: body != Body::Close && !close && (minor == 1 || keep_alive),
        websocket: status == 101 && upgrade_websocket,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(raw: &str, head: bool) -> Result<(Body, bool), BadResponse> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        parse(raw.as_bytes(), &mut storage, head).map(|r| {
            let r = r.expect("complete");
            (r.body, r.keep_alive)
        })
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cl = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(framing(cl, false), Ok((Body::Length(5), true)));
        assert_eq!(framing(cl, true), Ok((Body::None, true)));
        let te = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(framing(te, false), Ok((Body::Chunked, true)));
        let gz = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(framing(gz, false), Ok((Body::Close, false)));
        let empty = "HTTP/1.1 200 OK\r\nTransfer-Encoding: ,\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(framing(empty, false), Ok((Body::Close, false)));
        let none = "HTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(framing(none, false), Ok((Body::Close, false)));
        for s in ["204 No Content", "304 Not Modified", "100 Continue"] {
            let raw = format!("HTTP/1.1 {s}\r\nContent-Length: 9\r\n\r\n");
            assert_eq!(framing(&raw, false).unwrap().0, Body::None, "{s}");
        }
        let old = "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(framing(old, false), Ok((Body::Length(1), false)));
        let closing = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n";
        assert_eq!(framing(closing, false), Ok((Body::Length(1), false)));
        let same = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(framing(same, false), Ok((Body::Length(1), true)));
        let two = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(framing(two, false).is_err());
        assert!(framing("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false).is_err());
    }
}
