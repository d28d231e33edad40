//! Comma-separated header values (RFC 9110 section 5.6.1), case-insensitive tokens.

/// The list elements of a header value, trimmed, empty ones skipped.
pub fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|e| e.trim_ascii())
        .filter(|e| !e.is_empty())
}

/// Whether a comma-separated value has `token` (case-insensitive).
pub fn has(value: &[u8], token: &str) -> bool {
    list(value).any(|e| e.eq_ignore_ascii_case(token.as_bytes()))
}

/// A Content-Length value: digits only, at most 18 of them (no sign, no list, no spaces).
pub fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_lengths() {
        assert!(has(b"keep-alive, Upgrade", "upgrade"));
        assert!(!has(b"keep-alive, Upgraded", "upgrade"));
        assert_eq!(list(b" a ,, b").count(), 2);
        assert_eq!(content_length(b"42"), Some(42));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1 ",
            b"1,1",
            b"0x10",
            b"9999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }
}
