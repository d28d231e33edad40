//! Differential: the edge's HTTP/1.1 request path (`shardgate::http1`, on httparse) against a
//! reference written here from RFC 9112 and the edge's documented policy, line by line, without
//! httparse. Fails when one forwards what the other refuses, when they forward different bytes
//! to the shard, or when they disagree on where a body ends. Findings so far: the reference
//! took a bare CR inside a chunk line (the edge refuses it; the reference was fixed).

#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::http1::chunked::Chunked;
use shardgate::http1::forward::{request_head, Forwarding};
use shardgate::http1::{request, Body, MAX_HEADERS};

const MAX_HEAD: usize = 4096;

/// What a path makes of the input.
#[derive(Debug, PartialEq)]
enum Verdict {
    Partial,
    Refused(u16),
    /// The head sent to the shard and the body's length in the input (None: not all there).
    Forwarded(Vec<u8>, Option<usize>),
}

fn edge(data: &[u8]) -> Verdict {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match request::parse(data, &mut storage, MAX_HEAD) {
        Ok(None) => Verdict::Partial,
        Err(r) => Verdict::Refused(r.status),
        Ok(Some(req)) => {
            let mut out = Vec::new();
            let fwd = Forwarding {
                client: Some([127, 0, 0, 9].into()),
                tls: false,
                path: None,
            };
            request_head(&req, &fwd, &mut out);
            let rest = &data[req.head_len..];
            let body = match req.body {
                Body::None => Some(0),
                Body::Length(n) => (rest.len() as u64 >= n).then_some(n as usize),
                Body::Chunked => {
                    let mut c = Chunked::default();
                    match c.feed(rest, |_| {}) {
                        Ok(n) if c.is_done() => Some(n),
                        Ok(_) => None,
                        Err(_) => Some(usize::MAX),
                    }
                }
                Body::Close => unreachable!("requests are never close-delimited"),
            };
            Verdict::Forwarded(out, body)
        }
    }
}

// ---- the reference ------------------------------------------------------------------------

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn vchar_or_obs(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// Splits the head into lines (CRLF or LF), skipping empty lines before the request line.
/// None: no empty line ends the head yet.
fn lines(data: &[u8]) -> Option<(Vec<&[u8]>, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut started = false;
    loop {
        let nl = data[i..].iter().position(|&b| b == b'\n')? + i;
        let mut line = &data[i..nl];
        let had_cr = line.last() == Some(&b'\r');
        if had_cr {
            line = &line[..line.len() - 1];
        }
        i = nl + 1;
        if line.is_empty() {
            if started {
                return Some((out, i));
            }
            continue;
        }
        started = true;
        out.push(line);
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

fn list(v: &[u8]) -> Vec<Vec<u8>> {
    v.split(|&b| b == b',')
        .map(|e| trim(e).to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .collect()
}

fn reference(data: &[u8]) -> Verdict {
    let Some((lines, head_len)) = lines(data) else {
        // A head that cannot end within the limit is refused once past it.
        return if data.len() > MAX_HEAD {
            Verdict::Refused(431)
        } else {
            Verdict::Partial
        };
    };
    if head_len > MAX_HEAD {
        return Verdict::Refused(431);
    }
    if lines.len() - 1 > MAX_HEADERS {
        return Verdict::Refused(431);
    }
    let bad = Verdict::Refused(400);
    // Request line: method SP target SP version.
    let parts: Vec<&[u8]> = lines[0].split(|&b| b == b' ').collect();
    if parts.len() != 3 || parts[0].is_empty() || !parts[0].iter().all(|&b| tchar(b)) {
        return bad;
    }
    let (method, target, version) = (parts[0], parts[1], parts[2]);
    if target.is_empty()
        || !target.iter().all(|&b| vchar_or_obs(b))
        || std::str::from_utf8(target).is_err()
    {
        return bad;
    }
    let minor = match version {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        _ => return bad,
    };
    let mut headers: Vec<(&[u8], &[u8])> = Vec::new();
    for line in &lines[1..] {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return bad;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
            return bad;
        }
        if !value
            .iter()
            .all(|&b| b == b'\t' || b == b' ' || vchar_or_obs(b))
        {
            return bad;
        }
        headers.push((name, value));
    }
    if method == b"CONNECT" {
        return Verdict::Refused(405);
    }
    let target = std::str::from_utf8(target).unwrap();
    // Target forms.
    let (authority, rest) = if target.starts_with('/') {
        (None, target)
    } else if method == b"OPTIONS" && target == "*" {
        (None, "*")
    } else {
        let lower = target.to_ascii_lowercase();
        let after = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return bad;
        };
        let end = after.find(|c| c == '/' || c == '?').unwrap_or(after.len());
        let authority = &after[..end];
        if authority.is_empty() || authority.contains('@') || !host_ok(authority.as_bytes()) {
            return bad;
        }
        (
            Some(authority),
            if end == after.len() {
                "/"
            } else {
                &after[end..]
            },
        )
    };
    if rest.contains('#') {
        return bad;
    }
    let (path, query) = match rest.find('?') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    let named = |n: &'static str| named(&headers, n);
    let lengths: Vec<&[u8]> = named("content-length").collect();
    for l in &lengths {
        let digits = !l.is_empty() && l.len() <= 18 && l.iter().all(u8::is_ascii_digit);
        if !digits {
            return bad;
        }
    }
    if lengths.len() > 1 {
        return bad;
    }
    let codings: Vec<Vec<u8>> = named("transfer-encoding")
        .flat_map(|v| {
            let l = list(v);
            if l.is_empty() {
                vec![Vec::new()]
            } else {
                l
            }
        })
        .collect();
    if !codings.is_empty() && !lengths.is_empty() {
        return bad;
    }
    if !codings.is_empty() && (codings != [b"chunked".to_vec()] || minor == 0) {
        return bad;
    }
    let hosts: Vec<&[u8]> = named("host").collect();
    if hosts.len() > 1 || (hosts.is_empty() && minor == 1) {
        return bad;
    }
    if let Some(h) = hosts.first() {
        if std::str::from_utf8(h).is_err() || !host_ok(h) {
            return bad;
        }
    }
    let connection: Vec<Vec<u8>> = named("connection").flat_map(list).collect();
    let has = |t: &[u8]| connection.iter().any(|c| c == t);
    let websocket = has(b"upgrade") && named("upgrade").flat_map(list).any(|u| u == b"websocket");
    if websocket {
        let key_ok = named("sec-websocket-key").last().is_some_and(|k| {
            k.len() == 24
                && k.ends_with(b"==")
                && k[..22]
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        });
        let version_ok = named("sec-websocket-version").last() == Some(&b"13"[..]);
        if method != b"GET" || minor == 0 || !key_ok || !version_ok {
            return bad;
        }
    }
    let length: Option<u64> = lengths
        .first()
        .map(|l| std::str::from_utf8(l).unwrap().parse().unwrap());
    let chunked = !codings.is_empty();
    if websocket && (chunked || length.is_some_and(|n| n > 0)) {
        return bad;
    }
    let expect = named("expect")
        .last()
        .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    // What goes to the shard.
    let host: Option<&[u8]> = authority.map(str::as_bytes).or(hosts.first().copied());
    let mut out = Vec::new();
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(h) = host {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    let dropped: Vec<Vec<u8>> = connection
        .iter()
        .filter(|t| !matches!(t.as_slice(), b"close" | b"keep-alive" | b"upgrade"))
        .cloned()
        .collect();
    let mut hops = Vec::new();
    for (name, value) in &headers {
        let lower = name.to_ascii_lowercase();
        match lower.as_slice() {
            b"x-forwarded-for" => hops.extend(list_raw(value)),
            b"host" | b"x-forwarded-proto" | b"x-forwarded-host" | b"connection"
            | b"keep-alive" | b"proxy-connection" | b"te" | b"trailer" | b"upgrade"
            | b"http2-settings" => {}
            b"expect" if expect => {}
            _ if dropped.contains(&lower) => {}
            _ => {
                out.extend_from_slice(name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    if websocket {
        out.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: ");
        out.extend_from_slice(named("upgrade").next().unwrap());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    for h in hops {
        out.extend_from_slice(h);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(b"127.0.0.9\r\nX-Forwarded-Proto: http\r\n");
    if let Some(h) = host {
        out.extend_from_slice(b"X-Forwarded-Host: ");
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let rest = &data[head_len..];
    let body = if chunked {
        chunked_end(rest)
    } else {
        match length {
            None | Some(0) => Some(0),
            Some(n) => (rest.len() as u64 >= n).then_some(n as usize),
        }
    };
    Verdict::Forwarded(out, body)
}

fn named<'a>(
    headers: &'a [(&'a [u8], &'a [u8])],
    n: &'static str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |(k, _)| k.eq_ignore_ascii_case(n.as_bytes()))
        .map(|(_, v)| *v)
}

fn list_raw(v: &[u8]) -> Vec<&[u8]> {
    v.split(|&b| b == b',')
        .map(trim)
        .filter(|e| !e.is_empty())
        .collect()
}

fn host_ok(h: &[u8]) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:[]%!$&'()*+,;=".contains(b))
}

/// Where a chunked body ends (Some(usize::MAX): malformed), by whole lines.
fn chunked_end(data: &[u8]) -> Option<usize> {
    let mut i = 0;
    let line = |i: usize| -> Option<Result<(&[u8], usize), ()>> {
        let nl = data[i..].iter().position(|&b| b == b'\n')? + i;
        // CRLF ends a line; a CR anywhere else is malformed.
        if nl == i || data[nl - 1] != b'\r' || data[i..nl - 1].contains(&b'\r') {
            return Some(Err(()));
        }
        Some(Ok((&data[i..nl - 1], nl + 1)))
    };
    loop {
        let (size_line, next) = match line(i)? {
            Ok(l) => l,
            Err(()) => return Some(usize::MAX),
        };
        let (size, ext) = match size_line.iter().position(|&b| b == b';') {
            Some(p) => (&size_line[..p], Some(&size_line[p + 1..])),
            None => (size_line, None),
        };
        if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Some(usize::MAX);
        }
        if ext.is_some_and(|e| {
            e.len() + 1 > 4096
                || !e
                    .iter()
                    .all(|&b| b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80)
        }) {
            return Some(usize::MAX);
        }
        let n = u64::from_str_radix(std::str::from_utf8(size).unwrap(), 16).unwrap();
        i = next;
        if n == 0 {
            // Trailers, then the empty line.
            let mut total = 0;
            loop {
                let (t, next) = match line(i)? {
                    Ok(l) => l,
                    Err(()) => return Some(usize::MAX),
                };
                i = next;
                if t.is_empty() {
                    return Some(i);
                }
                total += t.len() + 1;
                if total > 16 * 1024 {
                    return Some(usize::MAX);
                }
            }
        }
        if (data.len() - i) as u64 <= n + 1 {
            return None;
        }
        let end = i + n as usize;
        if &data[end..end + 2] != b"\r\n" {
            return Some(usize::MAX);
        }
        i = end + 2;
    }
}

fuzz_target!(|data: &[u8]| {
    let ours = edge(data);
    let theirs = reference(data);
    match (&ours, &theirs) {
        // The edge may refuse an unfinished head early (a broken line already there, or one
        // past the limit); the reference waits for its end.
        (Verdict::Refused(_), Verdict::Partial) => {}
        // Which status a refusal gets (400 or 431 for a head both malformed and too big) is
        // not what this target checks: that both refuse is.
        (Verdict::Refused(_), Verdict::Refused(_)) => {}
        (Verdict::Forwarded(a, x), Verdict::Forwarded(b, y)) => {
            assert_eq!(
                a,
                b,
                "different heads for {:?}",
                String::from_utf8_lossy(data)
            );
            // The edge scans a chunked body byte by byte and may see a bad byte before the
            // line it is on ends.
            if !(*x == Some(usize::MAX) && y.is_none()) {
                assert_eq!(
                    x,
                    y,
                    "bodies end apart in {:?}",
                    String::from_utf8_lossy(data)
                );
            }
        }
        _ => assert_eq!(ours, theirs, "input: {:?}", String::from_utf8_lossy(data)),
    }
});
