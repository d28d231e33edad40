//! Checks on a request's header block before anything is proxied, and the forwarding headers
//! added on the way to a shard. Pure functions over the parsed header (and, for HTTP/1, the
//! raw bytes, because the parser already merged what smuggling checks need to see).

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::HeaderValue;
use pingora::http::RequestHeader;
use std::net::IpAddr;

/// Why a request is refused at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    /// Metric label.
    pub reason: &'static str,
    /// Body sent to the client.
    pub message: &'static str,
}

const TOO_LARGE: Reject = Reject {
    status: 431,
    reason: "header_too_large",
    message: "request header fields too large\n",
};

/// Refuses header blocks over `max_bytes` and the framing ambiguities request smuggling uses:
/// Content-Length with Transfer-Encoding, several Content-Length values, several Host headers,
/// and an HTTP/1.1 request without Host. `raw` is the HTTP/1 header block as received.
pub fn check_request(
    req: &RequestHeader,
    raw: Option<&[u8]>,
    max_bytes: usize,
) -> Result<(), Reject> {
    let size = match raw {
        Some(raw) => raw.len(),
        None => {
            req.headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>()
                + req.uri.to_string().len()
        }
    };
    if size > max_bytes {
        return Err(TOO_LARGE);
    }
    let mut lengths = req.headers.get_all(CONTENT_LENGTH).iter();
    let first = lengths.next();
    if lengths.next().is_some() || first.is_some_and(|v| v.as_bytes().contains(&b',')) {
        return Err(Reject {
            status: 400,
            reason: "duplicate_content_length",
            message: "more than one Content-Length\n",
        });
    }
    if req.headers.contains_key(TRANSFER_ENCODING)
        && (first.is_some() || raw.is_some_and(has_content_length_line))
    {
        return Err(Reject {
            status: 400,
            reason: "content_length_and_transfer_encoding",
            message: "both Content-Length and Transfer-Encoding\n",
        });
    }
    let mut hosts = req.headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Reject {
            status: 400,
            reason: "duplicate_host",
            message: "more than one Host header\n",
        });
    }
    if raw.is_some() && host.is_none() && req.version == http::Version::HTTP_11 {
        return Err(Reject {
            status: 400,
            reason: "missing_host",
            message: "HTTP/1.1 request without Host\n",
        });
    }
    Ok(())
}

/// Whether a raw HTTP/1 header block has a Content-Length line (the parser drops it when
/// Transfer-Encoding is present, so the parsed header cannot tell).
fn has_content_length_line(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        name.len() < line.len() && name.trim_ascii().eq_ignore_ascii_case(b"content-length")
    })
}

/// Sets X-Forwarded-For (client appended to any list already there), X-Forwarded-Proto and
/// X-Forwarded-Host on a request bound for a shard.
pub fn add_forwarding(req: &mut RequestHeader, client: Option<IpAddr>, tls: bool) {
    if let Some(ip) = client {
        // Several X-Forwarded-For lines are one comma-separated list (RFC 9110 5.3).
        let mut hops: Vec<&str> = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        let ip = ip.to_string();
        hops.push(&ip);
        if let Ok(v) = HeaderValue::from_str(&hops.join(", ")) {
            let _ = req.insert_header("x-forwarded-for", v);
        }
    }
    let _ = req.insert_header("x-forwarded-proto", if tls { "https" } else { "http" });
    let host = req.headers.get(HOST).cloned().or_else(|| {
        req.uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(host) = host {
        let _ = req.insert_header("x-forwarded-host", host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/http-bind?room=a", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn smuggling_forms_are_rejected() {
        let ok = req(&[("host", "a"), ("content-length", "3")]);
        assert_eq!(check_request(&ok, None, 32768), Ok(()));
        let dup = req(&[
            ("host", "a"),
            ("content-length", "3"),
            ("content-length", "3"),
        ]);
        assert_eq!(check_request(&dup, None, 32768).unwrap_err().status, 400);
        let list = req(&[("host", "a"), ("content-length", "3, 3")]);
        assert!(check_request(&list, None, 32768).is_err());
        let te = req(&[("host", "a"), ("transfer-encoding", "chunked")]);
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            check_request(&te, Some(raw), 32768).unwrap_err().reason,
            "content_length_and_transfer_encoding"
        );
        let raw_ok = b"POST / HTTP/1.1\r\nHost: a\r\nX-Content-Length-Note: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(check_request(&te, Some(raw_ok), 32768), Ok(()));
        let two_hosts = req(&[("host", "a"), ("host", "b")]);
        assert_eq!(
            check_request(&two_hosts, None, 32768).unwrap_err().reason,
            "duplicate_host"
        );
        let no_host = req(&[]);
        assert_eq!(
            check_request(&no_host, Some(b"GET / HTTP/1.1\r\n\r\n"), 32768)
                .unwrap_err()
                .reason,
            "missing_host"
        );
    }

    #[test]
    fn oversized_headers_get_431() {
        let big = "x".repeat(40_000);
        let r = req(&[("host", "a"), ("cookie", &big)]);
        assert_eq!(check_request(&r, None, 32768).unwrap_err().status, 431);
    }

    #[test]
    fn forwarding_headers() {
        let mut r = req(&[
            ("host", "meet.example.com"),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        add_forwarding(&mut r, Some("127.0.0.9".parse().unwrap()), true);
        assert_eq!(r.headers["x-forwarded-for"], "198.51.100.1, 127.0.0.9");
        let mut two = req(&[
            ("host", "a"),
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        add_forwarding(&mut two, Some("127.0.0.9".parse().unwrap()), false);
        assert_eq!(two.headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            two.headers["x-forwarded-for"],
            "198.51.100.1, 203.0.113.9, 127.0.0.9"
        );
        assert_eq!(r.headers["x-forwarded-proto"], "https");
        assert_eq!(r.headers["x-forwarded-host"], "meet.example.com");
    }
}
