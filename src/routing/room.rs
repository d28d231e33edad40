//! The room key of a request: which room a request belongs to, so that all its participants
//! reach one shard.
//!
//! Jitsi carries the room in `?room=` on its signalling paths (`/http-bind`, `/xmpp-websocket`,
//! `/conference-request/v1`, `/config.js`), with an optional tenant as the path segment before
//! them (`/<tenant>/http-bind?room=`). Keys are percent-decoded once and lower-cased, so
//! `MyRoom`, `myroom` and `my%52oom` are one room (HAProxy setups without `,lower` split them).

use crate::config::RoomKeySource;
use percent_encoding::percent_decode_str;

/// Path segments after which Jitsi puts signalling endpoints; the segment before one of these
/// is the tenant.
const JITSI_ENDPOINTS: [&str; 4] = [
    "http-bind",
    "xmpp-websocket",
    "conference-request",
    "config.js",
];

/// The normalised room key of a request, or `None` when it names no room.
/// `path` is the path without the query; `query` is what follows `?`, if anything.
pub fn room_key(path: &str, query: Option<&str>, source: RoomKeySource) -> Option<String> {
    match source {
        RoomKeySource::RoomParam => {
            let room = query_param(query?, "room")?;
            let room = normalise(room)?;
            match tenant(path).and_then(normalise) {
                Some(t) => Some(format!("{t}/{room}")),
                None => Some(room),
            }
        }
        RoomKeySource::LastSegment => normalise(path.rsplit('/').find(|s| !s.is_empty())?),
    }
}

/// The first value of `name` in a query string, undecoded.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The tenant segment: the one right before a Jitsi endpoint segment, if there is one.
fn tenant(path: &str) -> Option<&str> {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let first = segments.next()?;
    let second = segments.next()?;
    JITSI_ENDPOINTS.contains(&second).then_some(first)
}

/// Percent-decodes once and lower-cases (the room key form); empty results are no key.
pub fn normalise(raw: &str) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    let decoded = percent_decode_str(raw).decode_utf8_lossy();
    let key = if decoded.bytes().any(|b| b.is_ascii_uppercase() || b >= 0x80) {
        decoded.to_lowercase()
    } else {
        decoded.into_owned()
    };
    (!key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn param(path: &str, query: &str) -> Option<String> {
        room_key(path, Some(query), RoomKeySource::RoomParam)
    }

    #[test]
    fn jitsi_signalling_paths() {
        assert_eq!(
            param("/http-bind", "room=MyRoom").as_deref(),
            Some("myroom")
        );
        assert_eq!(
            param("/xmpp-websocket", "room=myroom&previd=abc").as_deref(),
            Some("myroom")
        );
        assert_eq!(
            param("/conference-request/v1", "room=a").as_deref(),
            Some("a")
        );
        assert_eq!(param("/config.js", "x=1&room=Big").as_deref(), Some("big"));
        assert_eq!(param("/http-bind", "previd=abc"), None);
        assert_eq!(param("/http-bind", "room="), None);
        assert_eq!(room_key("/http-bind", None, RoomKeySource::RoomParam), None);
    }

    #[test]
    fn tenants() {
        assert_eq!(
            param("/Acme/http-bind", "room=Standup").as_deref(),
            Some("acme/standup")
        );
        assert_eq!(
            param("/acme/xmpp-websocket", "room=standup").as_deref(),
            Some("acme/standup")
        );
        // A first segment that is not followed by a Jitsi endpoint is no tenant.
        assert_eq!(param("/static/app.js", "room=x").as_deref(), Some("x"));
    }

    #[test]
    fn percent_decoded_once() {
        assert_eq!(
            param("/http-bind", "room=my%52oom").as_deref(),
            Some("myroom")
        );
        assert_eq!(param("/http-bind", "room=100%25").as_deref(), Some("100%"));
        assert_eq!(param("/http-bind", "room=a%2525").as_deref(), Some("a%25"));
        assert_eq!(
            param("/http-bind", "room=%C3%84rger").as_deref(),
            Some("ärger")
        );
    }

    #[test]
    fn last_segment() {
        let k = |p| room_key(p, None, RoomKeySource::LastSegment);
        assert_eq!(k("/MyRoom").as_deref(), Some("myroom"));
        assert_eq!(k("/tenant/Room/").as_deref(), Some("room"));
        assert_eq!(k("/"), None);
    }

    proptest! {
        #[test]
        fn case_and_encoding_never_split_a_room(room in "[a-zA-Z0-9]{1,24}") {
            let lower = param("/http-bind", &format!("room={}", room.to_lowercase()));
            let upper = param("/xmpp-websocket", &format!("room={}", room.to_uppercase()));
            let encoded: String = room.bytes().map(|b| format!("%{b:02X}")).collect();
            let enc = param("/http-bind", &format!("room={encoded}"));
            prop_assert_eq!(&lower, &upper);
            prop_assert_eq!(&lower, &enc);
        }

        #[test]
        fn never_panics(path in "\\PC*", query in "\\PC*") {
            let _ = room_key(&path, Some(&query), RoomKeySource::RoomParam);
            let _ = room_key(&path, Some(&query), RoomKeySource::LastSegment);
        }
    }
}
