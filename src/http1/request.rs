//! A request head: parsed, checked for what request smuggling and abuse use, and reduced to
//! what the edge needs to route and frame it.

use super::{tokens, Body, Reject, MAX_HEADERS, TOO_LARGE};
use httparse::{Header, Status};

/// A parsed, accepted request head, borrowing the connection's buffer.
#[derive(Debug)]
pub struct Request<'b> {
    pub method: &'b str,
    /// The path of the target (origin form, or taken from an absolute-form target).
    pub path: &'b str,
    pub query: Option<&'b str>,
    /// The Host header, or the authority of an absolute-form target.
    pub host: Option<&'b str>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: &'b [Header<'b>],
    /// Bytes of the head, request line to the empty line included.
    pub head_len: usize,
    pub body: Body,
    /// The client allows the connection to carry another request after this one.
    pub keep_alive: bool,
    /// A WebSocket handshake (checked: GET, HTTP/1.1, key and version 13).
    pub websocket: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

impl Request<'_> {
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// The first value of a header, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    }
}

fn bad(reason: &'static str, message: &'static str) -> Reject {
    Reject::new(400, reason, message)
}

/// Parses the head at the start of `buf`. `Ok(None)`: not complete yet (and not over
/// `max_bytes`, which is checked on every call, so an endless head is refused as it grows).
pub fn parse<'b>(
    buf: &'b [u8],
    storage: &'b mut [Header<'b>; MAX_HEADERS],
    max_bytes: usize,
) -> Result<Option<Request<'b>>, Reject> {
    let mut req = httparse::Request::new(storage);
    let head_len = match req.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) if buf.len() > max_bytes => return Err(TOO_LARGE),
        Ok(Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_LARGE),
        Err(_) if buf.len() > max_bytes => return Err(TOO_LARGE),
        Err(_) => return Err(bad("malformed", "malformed request\n")),
    };
    if head_len > max_bytes {
        return Err(TOO_LARGE);
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(bad("malformed", "malformed request\n"));
    };
    check(method, target, minor, req.headers, head_len)
}

fn check<'b>(
    method: &'b str,
    target: &'b str,
    minor: u8,
    headers: &'b [Header<'b>],
    head_len: usize,
) -> Result<Option<Request<'b>>, Reject> {
    if method == "CONNECT" {
        return Err(Reject::new(
            405,
            "method_not_allowed",
            "CONNECT is not served here\n",
        ));
    }
    let (path, query, target_host) = split_target(method, target)?;
    let mut host = None;
    let mut hosts = 0;
    let mut length = None;
    let mut lengths = 0;
    let mut chunked = false;
    let mut codings = 0;
    let mut close = false;
    let mut keep_alive = false;
    let mut connection_upgrade = false;
    let mut upgrade_websocket = false;
    let mut ws_key_ok = false;
    let mut ws_version_ok = false;
    let mut expect_continue = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = std::str::from_utf8(h.value).ok();
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            length = tokens::content_length(h.value);
            if length.is_none() {
                return Err(if h.value.contains(&b',') {
                    duplicate_length()
                } else {
                    bad("bad_content_length", "invalid Content-Length\n")
                });
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let before = codings;
            for coding in tokens::list(h.value) {
                codings += 1;
                chunked = coding.eq_ignore_ascii_case(b"chunked") && codings == 1;
            }
            if codings == before {
                // An empty list (`Transfer-Encoding: ,`) is no coding the edge understands; let
                // through, a shard might read it otherwise (found by fuzz/h1_request).
                codings += 1;
                chunked = false;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            close |= tokens::has(h.value, "close");
            keep_alive |= tokens::has(h.value, "keep-alive");
            connection_upgrade |= tokens::has(h.value, "upgrade");
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_websocket |= tokens::has(h.value, "websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            ws_key_ok = websocket_key_ok(h.value);
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            ws_version_ok = h.value.trim_ascii() == b"13";
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    if lengths > 1 {
        return Err(duplicate_length());
    }
    if codings > 0 && lengths > 0 {
        return Err(bad(
            "content_length_and_transfer_encoding",
            "both Content-Length and Transfer-Encoding\n",
        ));
    }
    if codings > 0 && (!chunked || minor == 0) {
        // Only `chunked` alone is understood; anything else cannot be framed safely.
        return Err(bad(
            "bad_transfer_encoding",
            "unsupported Transfer-Encoding\n",
        ));
    }
    if hosts > 1 {
        return Err(bad("duplicate_host", "more than one Host header\n"));
    }
    if hosts == 0 && minor == 1 {
        return Err(bad("missing_host", "HTTP/1.1 request without Host\n"));
    }
    if host.is_some_and(|h| !host_ok(h)) || (hosts == 1 && host.is_none()) {
        return Err(bad("bad_host", "invalid Host header\n"));
    }
    let websocket = connection_upgrade && upgrade_websocket;
    if websocket && (method != "GET" || minor == 0 || !ws_key_ok || !ws_version_ok) {
        return Err(bad(
            "bad_websocket_handshake",
            "WebSocket upgrade needs GET, HTTP/1.1, a Sec-WebSocket-Key and version 13\n",
        ));
    }
    let body = match (chunked, length) {
        (true, _) => Body::Chunked,
        (false, Some(0)) | (false, None) => Body::None,
        (false, Some(n)) => Body::Length(n),
    };
    if websocket && body != Body::None {
        return Err(bad(
            "bad_websocket_handshake",
            "a WebSocket handshake carries no body\n",
        ));
    }
    Ok(Some(Request {
        method,
        path,
        query,
        // An absolute-form target's authority takes precedence (RFC 9112 section 3.2.2).
        host: target_host.or(host),
        minor,
        headers,
        head_len,
        body,
        keep_alive: !close && (minor == 1 || keep_alive),
        websocket,
        expect_continue,
    }))
}

fn duplicate_length() -> Reject {
    bad("duplicate_content_length", "more than one Content-Length\n")
}

/// Path, query and (absolute form) host of a request target.
fn split_target<'b>(
    method: &str,
    target: &'b str,
) -> Result<(&'b str, Option<&'b str>, Option<&'b str>), Reject> {
    let (authority, rest) = if target.starts_with('/') {
        (None, target)
    } else if method == "OPTIONS" && target == "*" {
        return Ok(("*", None, None));
    } else {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        let after = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return Err(bad("bad_target", "invalid request target\n"));
        };
        let end = after.find(['/', '?']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(end);
        if authority.is_empty() || authority.contains('@') || !host_ok(authority) {
            return Err(bad("bad_target", "invalid request target\n"));
        }
        (Some(authority), if rest.is_empty() { "/" } else { rest })
    };
    if rest.contains('#') {
        return Err(bad("bad_target", "invalid request target\n"));
    }
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    Ok((if path.is_empty() { "/" } else { path }, query, authority))
}

/// A Host value: a reg-name, IPv4 or bracketed IPv6 literal, with an optional port.
fn host_ok(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:[]%!$&'()*+,;=".contains(&b))
}

/// A Sec-WebSocket-Key: base64 of 16 bytes (24 characters, the last two `==`).
fn websocket_key_ok(value: &[u8]) -> bool {
    let v = value.trim_ascii();
    v.len() == 24
        && v.ends_with(b"==")
        && v[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(raw: &str) -> Result<Option<(String, Body, bool, bool)>, Reject> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        parse(raw.as_bytes(), &mut storage, 8192)
            .map(|r| r.map(|r| (r.path.to_owned(), r.body, r.keep_alive, r.websocket)))
    }

    fn reason(raw: &str) -> &'static str {
        parse_str(raw).unwrap_err().reason
    }

    #[test]
    fn ordinary_requests() {
        let (path, body, ka, ws) = parse_str("GET /http-bind?room=a HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (path.as_str(), body, ka, ws),
            ("/http-bind", Body::None, true, false)
        );
        let r = parse_str("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(r.unwrap().1, Body::Length(5));
        let r = parse_str("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(r.unwrap().unwrap().1, Body::Chunked);
        assert!(!parse_str("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().2);
        assert!(
            parse_str("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .2
        );
        assert!(
            !parse_str("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap()
                .2
        );
        assert_eq!(
            parse_str("GET / HTTP/1.1\r\nHost: x\r\n").unwrap(),
            None,
            "partial"
        );
    }

    #[test]
    fn absolute_form_routes_by_its_authority() {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let raw = b"GET http://meet.example.com/x?room=r HTTP/1.1\r\nHost: other\r\n\r\n";
        let r = parse(raw, &mut storage, 8192).unwrap().unwrap();
        assert_eq!(
            (r.host, r.path, r.query),
            (Some("meet.example.com"), "/x", Some("room=r"))
        );
        assert_eq!(
            reason("GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n"),
            "bad_target"
        );
        assert_eq!(
            reason("GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n"),
            "bad_target"
        );
    }

    #[test]
    fn smuggling_forms_are_refused() {
        for (raw, why) in [
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", "duplicate_content_length"),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", "duplicate_content_length"),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", "bad_content_length"),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "content_length_and_transfer_encoding"),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "bad_transfer_encoding"),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "bad_transfer_encoding"),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "bad_transfer_encoding"),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", "bad_transfer_encoding"),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n", "bad_transfer_encoding"),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", "bad_transfer_encoding"),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "bad_transfer_encoding"),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "duplicate_host"),
            ("GET / HTTP/1.1\r\n\r\n", "missing_host"),
            ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "bad_host"),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n", "malformed"),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", "malformed"),
            ("GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", "malformed"),
            ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", "malformed"),
            ("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", "method_not_allowed"),
            ("GET /#x HTTP/1.1\r\nHost: a\r\n\r\n", "bad_target"),
        ] {
            assert_eq!(reason(raw), why, "{raw:?}");
        }
    }

    #[test]
    fn websocket_handshakes_are_checked() {
        let ok = "GET /xmpp-websocket HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert!(parse_str(ok).unwrap().unwrap().3);
        let no_key = ok.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
        assert_eq!(reason(&no_key), "bad_websocket_handshake");
        let short_key = ok.replace("dGhlIHNhbXBsZSBub25jZQ==", "abc");
        assert_eq!(reason(&short_key), "bad_websocket_handshake");
        let v8 = ok.replace("Version: 13", "Version: 8");
        assert_eq!(reason(&v8), "bad_websocket_handshake");
        let post = ok.replacen("GET", "POST", 1);
        assert_eq!(reason(&post), "bad_websocket_handshake");
        // Another protocol's upgrade is an ordinary request (the edge drops the Upgrade).
        let h2c = "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
        assert!(!parse_str(h2c).unwrap().unwrap().3);
    }

    #[test]
    fn heads_over_the_limit_are_refused_while_they_grow() {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let endless = format!("GET / HTTP/1.1\r\nHost: a\r\nCookie: {}", "x".repeat(9000));
        assert_eq!(
            parse(endless.as_bytes(), &mut storage, 8192).unwrap_err(),
            TOO_LARGE
        );
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(
            parse(raw.as_bytes(), &mut storage, 1 << 20).unwrap_err(),
            TOO_LARGE
        );
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let hundred: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{hundred}\r\n");
        assert!(parse(raw.as_bytes(), &mut storage, 1 << 20)
            .unwrap()
            .is_some());
    }
}
