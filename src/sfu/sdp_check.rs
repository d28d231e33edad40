//! Checks on a client's SDP before str0m sees it, for what str0m does not refuse cleanly.
//!
//! One payload type must name one codec configuration across the bundled m= sections (RFC 9143,
//! BUNDLE: they are one RTP session). str0m 0.25 asserts this while matching payload types and
//! panics on an offer that breaks it (an `a=rtpmap:100 VP9` in the audio section, another
//! `fmtp` for 100 in the video section); the core would catch the panic, but the client is
//! better served by saying what is wrong. A disabled section (port 0, not `bundle-only`) is left
//! out: it is not in the bundle, and Firefox keeps bare `rtpmap` lines there for payload types
//! its live sections describe in full.

use std::collections::HashMap;

/// `Err` names the payload type described differently in two m= sections.
pub fn payload_types_consistent(sdp: &str) -> Result<(), String> {
    // Per payload type: the first section that described it, and how.
    let mut seen: HashMap<&str, (usize, Described)> = HashMap::new();
    let mut section = 0;
    let mut current: HashMap<&str, Described> = HashMap::new();
    // The current section is disabled: port 0, and not `bundle-only`.
    let (mut port_zero, mut bundle_only) = (false, false);
    let lines = sdp.lines().chain(std::iter::once("m="));
    for line in lines {
        let line = line.trim_end_matches('\r');
        if line == "a=bundle-only" {
            bundle_only = true;
        } else if let Some(media) = line.strip_prefix("m=") {
            if port_zero && !bundle_only {
                current.clear();
            }
            port_zero = media.split_whitespace().nth(1) == Some("0");
            bundle_only = false;
            for (pt, described) in current.drain() {
                match seen.get(pt) {
                    Some((first, before)) if *before != described => {
                        return Err(format!(
                            "payload type {pt} is described differently in m= sections \
                             {first} and {section} (one payload type, one codec across a bundle)"
                        ));
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(pt, (section, described));
                    }
                }
            }
            section += 1;
        } else if let Some(rest) = line.strip_prefix("a=rtpmap:") {
            let (pt, codec) = split_pt(rest);
            current.entry(pt).or_default().rtpmap = Some(codec.to_ascii_lowercase());
        } else if let Some(rest) = line.strip_prefix("a=fmtp:") {
            let (pt, params) = split_pt(rest);
            let mut params: Vec<&str> = params
                .split(';')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect();
            params.sort_unstable();
            current.entry(pt).or_default().fmtp = Some(params.join(";"));
        }
    }
    Ok(())
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Described {
    rtpmap: Option<String>,
    fmtp: Option<String>,
}

fn split_pt(rest: &str) -> (&str, &str) {
    let (pt, value) = rest.split_once(' ').unwrap_or((rest, ""));
    (pt.trim(), value.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIDEO: &str = "m=video 9 UDP/TLS/RTP/SAVPF 100\r\n\
                         a=rtpmap:100 VP9/90000\r\n\
                         a=fmtp:100 profile-id=2\r\n";

    #[test]
    fn one_payload_type_one_codec_across_sections() {
        let same = format!(
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
             a=rtpmap:100 vp9/90000\r\na=fmtp:100 profile-id=2\r\n{VIDEO}"
        );
        assert_eq!(payload_types_consistent(&same), Ok(()));

        let other_fmtp =
            format!("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:100 VP9/90000\r\n{VIDEO}");
        let err = payload_types_consistent(&other_fmtp).unwrap_err();
        assert!(
            err.contains("payload type 100") && err.contains("1 and 2"),
            "{err}"
        );

        let other_codec = format!(
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 100\r\na=rtpmap:100 opus/48000/2\r\n{VIDEO}"
        );
        assert!(payload_types_consistent(&other_codec).is_err());
    }

    #[test]
    fn disabled_sections_are_left_out_unless_bundle_only() {
        let disabled =
            format!("m=video 0 UDP/TLS/RTP/SAVPF 100\r\na=rtpmap:100 VP9/90000\r\n{VIDEO}");
        assert_eq!(payload_types_consistent(&disabled), Ok(()));
        let bundled = format!(
            "m=video 0 UDP/TLS/RTP/SAVPF 100\r\na=bundle-only\r\na=rtpmap:100 VP9/90000\r\n{VIDEO}"
        );
        assert!(payload_types_consistent(&bundled).is_err());
        let last_disabled =
            format!("{VIDEO}m=video 0 UDP/TLS/RTP/SAVPF 100\r\na=rtpmap:100 VP9/90000\r\n");
        assert_eq!(payload_types_consistent(&last_disabled), Ok(()));
    }

    #[test]
    fn parameter_order_and_line_endings_do_not_matter() {
        let a = "m=video 9 X 96\na=rtpmap:96 H264/90000\na=fmtp:96 a=1; b=2\n\
                 m=video 9 X 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 b=2;a=1\r\n";
        assert_eq!(payload_types_consistent(a), Ok(()));
        assert_eq!(payload_types_consistent(""), Ok(()));
        assert_eq!(payload_types_consistent("a=rtpmap:\na=fmtp:"), Ok(()));
    }
}
