//! The heads the edge sends on: a request to its shard (hop-by-hop headers dropped, the
//! forwarding headers set) and a response to its client (framing and connection headers as
//! this edge's connection needs them). Written straight into a byte buffer.

use super::request::Request;
use super::response::Response;
use super::tokens;
use httparse::Header;
use std::io::Write;
use std::net::IpAddr;

/// Headers that describe one connection, never passed on (RFC 9110 section 7.6.1), besides
/// those a Connection header names.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
];

fn is_hop_by_hop(name: &str, named: &[&[u8]]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || named
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
}

/// Header names a Connection header lists (besides the keywords).
fn connection_named<'b>(headers: &'b [Header<'b>]) -> Vec<&'b [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens::list(h.value))
        .filter(|t| {
            !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
                && !t.eq_ignore_ascii_case(b"upgrade")
        })
        .collect()
}

/// What the edge adds to a request on its way to a shard.
pub struct Forwarding<'a> {
    pub client: Option<IpAddr>,
    pub tls: bool,
    /// The path to send (a route that strips its prefix), else the request's own.
    pub path: Option<&'a str>,
}

/// Writes the request head for the shard: HTTP/1.1, origin form, Host, end-to-end headers,
/// X-Forwarded-For (the client appended to the hops already listed), -Proto and -Host.
/// `Expect: 100-continue` is answered by the edge itself, so it is not passed on.
pub fn request_head(req: &Request, fwd: &Forwarding, out: &mut Vec<u8>) {
    let named = connection_named(req.headers);
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(fwd.path.unwrap_or(req.path).as_bytes());
    if let Some(q) = req.query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = req.host {
        header(out, "Host", host.as_bytes());
    }
    let mut hops: Vec<&[u8]> = Vec::new();
    for h in req.headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            hops.extend(tokens::list(h.value));
        } else if name.eq_ignore_ascii_case("host")
            || (req.expect_continue && name.eq_ignore_ascii_case("expect"))
            || name.eq_ignore_ascii_case("x-forwarded-proto")
            || name.eq_ignore_ascii_case("x-forwarded-host")
            || is_hop_by_hop(name, &named)
        {
            continue;
        } else {
            header(out, name, h.value);
        }
    }
    if req.websocket {
        out.extend_from_slice(b"Connection: Upgrade\r\n");
        if let Some(u) = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
        {
            header(out, "Upgrade", u.value);
        }
    }
    if let Some(ip) = fwd.client {
        out.extend_from_slice(b"X-Forwarded-For: ");
        for hop in hops {
            out.extend_from_slice(hop);
            out.extend_from_slice(b", ");
        }
        let _ = write!(out, "{ip}\r\n");
    } else if !hops.is_empty() {
        header(out, "X-Forwarded-For", &hops.join(&b", "[..]));
    }
    let proto: &[u8] = if fwd.tls { b"https" } else { b"http" };
    header(out, "X-Forwarded-Proto", proto);
    if let Some(host) = req.host {
        header(out, "X-Forwarded-Host", host.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// How the client's side of a response is framed.
pub struct ToClient<'a> {
    /// The edge keeps the client's connection open after this response.
    pub keep_alive: bool,
    /// The client spoke HTTP/1.0 (keep-alive must be said).
    pub http10: bool,
    /// The body is sent without its chunked coding (an HTTP/1.0 client; the connection
    /// closes after it).
    pub dechunk: bool,
    /// An allowed cross-origin request's Origin, echoed.
    pub cors_origin: Option<&'a str>,
}

/// Writes a shard's response head (final or interim) for the client.
pub fn response_head(resp: &Response, to: &ToClient, out: &mut Vec<u8>) {
    let named = connection_named(resp.headers);
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", resp.status, resp.reason);
    for h in resp.headers {
        let name = h.name;
        let cors =
            to.cors_origin.is_some() && name.eq_ignore_ascii_case("access-control-allow-origin");
        let dechunked = to.dechunk && name.eq_ignore_ascii_case("transfer-encoding");
        if cors || dechunked || is_hop_by_hop(name, &named) {
            continue;
        }
        header(out, name, h.value);
    }
    if let Some(origin) = to.cors_origin {
        header(out, "Access-Control-Allow-Origin", origin.as_bytes());
        header(out, "Vary", b"Origin");
    }
    if resp.websocket {
        out.extend_from_slice(b"Connection: Upgrade\r\n");
        if let Some(u) = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
        {
            header(out, "Upgrade", u.value);
        }
    } else if resp.status >= 200 {
        if !to.keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if to.http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A response made at the edge: status, content type, extra headers and body; `close` says
/// the connection ends after it.
pub fn local_response(
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    close: bool,
    out: &mut Vec<u8>,
) {
    local_response_head(status, content_type, extra, body.len(), close, out);
    out.extend_from_slice(body);
}

/// The head of [`local_response`], for a body of `body_len` bytes written after it.
pub fn local_response_head(
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body_len: usize,
    close: bool,
    out: &mut Vec<u8>,
) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {body_len}\r\nCache-Control: no-store\r\n",
        reason(status),
    );
    for (k, v) in extra {
        header(out, k, v.as_bytes());
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Reason phrases of the statuses the edge makes itself.
pub fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::super::{request, response, MAX_HEADERS};
    use super::*;

    fn forward(raw: &str, client: Option<IpAddr>) -> String {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let req = request::parse(raw.as_bytes(), &mut storage, 1 << 16)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let fwd = Forwarding {
            client,
            tls: true,
            path: None,
        };
        request_head(&req, &fwd, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn requests_lose_hop_by_hop_headers_and_gain_forwarding() {
        let out = forward(
            "GET /a?room=r HTTP/1.1\r\nHost: meet\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 198.51.100.1\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: http\r\nAccept: */*\r\n\r\n",
            Some("127.0.0.9".parse().unwrap()),
        );
        assert_eq!(
            out,
            "GET /a?room=r HTTP/1.1\r\nHost: meet\r\nAccept: */*\r\nX-Forwarded-For: 198.51.100.1, 203.0.113.9, 127.0.0.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: meet\r\n\r\n"
        );
        let ws = forward("GET /ws HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", None);
        assert_eq!(ws, "GET /ws HTTP/1.1\r\nX-Forwarded-Proto: https\r\n\r\n");
    }

    #[test]
    fn websocket_handshakes_keep_their_upgrade() {
        let out = forward(
            "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            None,
        );
        assert!(
            out.contains("\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"),
            "{out}"
        );
        assert!(out.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
    }

    #[test]
    fn responses_are_framed_for_the_client() {
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\nAccess-Control-Allow-Origin: *\r\nX: y\r\n\r\n";
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let resp = response::parse(raw.as_bytes(), &mut storage, false)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let to = ToClient {
            keep_alive: false,
            http10: true,
            dechunk: true,
            cors_origin: Some("https://a"),
        };
        response_head(&resp, &to, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nX: y\r\nAccess-Control-Allow-Origin: https://a\r\nVary: Origin\r\nConnection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        let to = ToClient {
            keep_alive: true,
            http10: true,
            dechunk: false,
            cors_origin: None,
        };
        response_head(&resp, &to, &mut out);
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("Connection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn local_responses() {
        let mut out = Vec::new();
        local_response(408, "text/plain", &[], b"late\n", true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nCache-Control: no-store\r\nConnection: close\r\n\r\nlate\n"
        );
    }
}
