//! The signalling protocol: JSON text messages on the WebSocket at `<prefix>/ws?room=<room>`.
//!
//! ```text
//! client → {"type":"join","sdp":"<offer>","name":"Ada"}      first message
//! server ← {"type":"joined","id":"7"}  {"type":"answer","sdp":"…"}
//! server ← {"type":"offer","sdp":"…"}  when others' tracks come or go
//! client → {"type":"answer","sdp":"…"}
//! client → {"type":"offer","sdp":"…"}  when the client changes its own tracks
//! server ← {"type":"answer","sdp":"…"}
//! server ← {"type":"peer","id":"8","event":"joined","name":"Bob"}   (or "left")
//! server ← {"type":"error","message":"…"}   then the server closes
//! client → {"type":"leave"}
//! ```
//!
//! Each remote track arrives in a MediaStream whose id is the publishing peer's id.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    Join {
        sdp: String,
        #[serde(default)]
        name: Option<String>,
    },
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Leave,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Joined {
        id: String,
    },
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Peer {
        id: String,
        event: PeerEvent,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerEvent {
    Joined,
    Left,
}

/// Longest display name kept (longer ones are cut at a character boundary).
pub const MAX_NAME_CHARS: usize = 64;

/// A display name as shown to others: control characters removed, cut to
/// [`MAX_NAME_CHARS`], `None` when nothing is left.
pub fn clean_name(name: Option<&str>) -> Option<String> {
    let cleaned: String = name?
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    let trimmed = cleaned.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// Room names: 1-64 of letters, digits, `-`, `_`, `.` (what the meeting page accepts).
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= 64
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_documented() {
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"join","sdp":"v=0","name":"Ada"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Join {
                sdp: "v=0".into(),
                name: Some("Ada".into())
            }
        );
        let m: ClientMessage = serde_json::from_str(r#"{"type":"leave"}"#).unwrap();
        assert_eq!(m, ClientMessage::Leave);
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"dance"}"#).is_err());
        let out = serde_json::to_string(&ServerMessage::Peer {
            id: "8".into(),
            event: PeerEvent::Left,
            name: None,
        })
        .unwrap();
        assert_eq!(out, r#"{"type":"peer","id":"8","event":"left"}"#);
    }

    #[test]
    fn names_and_rooms() {
        assert_eq!(clean_name(Some(" Ada\u{7}  ")), Some("Ada".into()));
        assert_eq!(clean_name(Some("\n")), None);
        assert_eq!(clean_name(Some(&"x".repeat(100))).unwrap().len(), 64);
        assert!(valid_room("standup-2.b_c"));
        assert!(!valid_room(""));
        assert!(!valid_room("a/b"));
        assert!(!valid_room(&"a".repeat(65)));
    }
}
