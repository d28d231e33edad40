//! The SFU's HTTP side, under a route with `sfu = true`: the meeting page, the signalling
//! WebSocket, and WHIP (RFC 9725) / WHEP endpoints for standard tools (OBS, GStreamer).
//!
//! ```text
//! GET    <prefix>/  and  <prefix>/<room>      the meeting page
//! GET    <prefix>/ws?room=<room>              signalling (WebSocket; see `signal`)
//! POST   <prefix>/whip/<room>                 publish: SDP offer in, 201 + answer + Location
//! POST   <prefix>/whep/<room>                 watch:   SDP offer in, 201 + answer + Location
//! DELETE <prefix>/whip/<room>/<id>  (or whep) end that session
//! ```

use super::driver::{HandleError, Note, SfuHandle};
use super::signal::valid_room;
use super::{JoinError, PeerId, Role};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

const PAGE: &str = include_str!("page.html");
/// An SDP offer is a few kilobytes.
const MAX_SDP: usize = 64 * 1024;

/// The running SFU as the HTTP side sees it: the handle to its thread and the WHIP/WHEP
/// sessions by resource id.
pub struct SfuService {
    pub handle: SfuHandle,
    resources: Arc<Mutex<HashMap<String, PeerId>>>,
}

impl SfuService {
    pub fn new(handle: SfuHandle) -> Self {
        SfuService {
            handle,
            resources: Arc::default(),
        }
    }
}

/// What a path under the route's prefix asks for.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Page,
    Signalling,
    /// WHIP (`Publisher`) or WHEP (`Viewer`) endpoint of a room.
    Endpoint(Role, &'a str),
    /// One WHIP/WHEP session.
    Resource(Role, &'a str, &'a str),
    NotFound,
}

fn target(rest: &str) -> Target<'_> {
    // A prefix match inside a segment (`/meeting` for the prefix `/meet`) is not this route's.
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Target::NotFound;
    }
    let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let role = |s: &str| match s {
        "whip" => Some(Role::Publisher),
        "whep" => Some(Role::Viewer),
        _ => None,
    };
    match segments.as_slice() {
        [""] => Target::Page,
        ["ws"] => Target::Signalling,
        [kind, room] if role(kind).is_some() => {
            Target::Endpoint(role(kind).unwrap_or(Role::Viewer), room)
        }
        [kind, room, id] if role(kind).is_some() => {
            Target::Resource(role(kind).unwrap_or(Role::Viewer), room, id)
        }
        [room] if valid_room(room) => Target::Page,
        _ => Target::NotFound,
    }
}

/// Serves one request for the SFU route whose prefix (without its trailing `/`) is `base`.
/// `sfu` is `None` when the process started without `[sfu]` (a reload cannot start it).
pub async fn serve(session: &mut Session, base: &str, sfu: Option<&SfuService>) -> Result<()> {
    let req = session.req_header();
    let path = req.uri.path().to_owned();
    let method = req.method.clone();
    let rest = path.strip_prefix(base).unwrap_or(&path);
    let Some(sfu) = sfu else {
        return text(
            session,
            503,
            "the SFU starts with the process: restart shardgate to enable [sfu]\n",
        )
        .await;
    };
    match (target(rest), method.as_str()) {
        (Target::Page, "GET" | "HEAD") => page(session, base).await,
        (Target::Signalling, "GET") => {
            let room = room_param(req.uri.query());
            let Some(room) = room.filter(|r| valid_room(r)) else {
                return text(
                    session,
                    400,
                    "expected ?room=<name> (1-64 of letters, digits, '-', '_', '.')\n",
                )
                .await;
            };
            match super::ws::accept_key(req) {
                Some(accept) => super::ws::serve(session, &sfu.handle, room, accept).await,
                None => text(session, 426, "expected a WebSocket upgrade (version 13)\n").await,
            }
        }
        (Target::Endpoint(role, room), "POST") => {
            let room = room.to_owned();
            endpoint(session, base, sfu, role, &room).await
        }
        (Target::Resource(_, _, id), "DELETE") => {
            let peer = lock(&sfu.resources).remove(id);
            match peer {
                Some(peer) => {
                    sfu.handle.leave(peer);
                    empty(session, 200).await
                }
                None => text(session, 404, "no such session\n").await,
            }
        }
        // No trickle ICE or ICE restarts: the SFU is ICE-lite with one candidate (RFC 9725 4.3.1).
        (Target::Resource(..), "PATCH") => allow(session, 405, "DELETE").await,
        (Target::Endpoint(..), "OPTIONS") => allow(session, 204, "POST, OPTIONS").await,
        (Target::Resource(..), "OPTIONS") => allow(session, 204, "DELETE, OPTIONS").await,
        (Target::Endpoint(..), _) => allow(session, 405, "POST, OPTIONS").await,
        (Target::Resource(..), _) => allow(session, 405, "DELETE, OPTIONS").await,
        (Target::Page | Target::Signalling, _) => allow(session, 405, "GET").await,
        (Target::NotFound, _) => text(session, 404, "not found\n").await,
    }
}

/// WHIP/WHEP: an SDP offer in, the answer and the session's URL out.
async fn endpoint(
    session: &mut Session,
    base: &str,
    sfu: &SfuService,
    role: Role,
    room: &str,
) -> Result<()> {
    let content_type = session
        .req_header()
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/sdp")
    {
        return text(session, 415, "expected Content-Type: application/sdp\n").await;
    }
    let Some(offer) = read_body(session).await? else {
        return text(session, 413, "SDP offer too large\n").await;
    };
    let Ok(offer) = String::from_utf8(offer) else {
        return text(session, 400, "the SDP offer is not UTF-8\n").await;
    };
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let (peer, answer) = match sfu
        .handle
        .join(room, role, None, offer, Some(notes_tx))
        .await
    {
        Ok(joined) => joined,
        Err(HandleError::Refused(e @ (JoinError::BadOffer(_) | JoinError::BadRoom(_)))) => {
            return text(session, 400, &format!("{e}\n")).await
        }
        Err(e) => return text(session, 503, &format!("{e}\n")).await,
    };
    let id = resource_id();
    lock(&sfu.resources).insert(id.clone(), peer);
    // The session's resource goes when the SFU ends the peer (media lost) or it is deleted.
    let resources = sfu.resources.clone();
    let forget = id.clone();
    tokio::spawn(async move {
        while let Some(note) = notes.recv().await {
            if matches!(note, Note::Gone(_)) {
                break;
            }
        }
        lock(&resources).remove(&forget);
    });
    let kind = if role == Role::Publisher {
        "whip"
    } else {
        "whep"
    };
    let location = format!("{base}/{kind}/{room}/{id}");
    let mut resp = ResponseHeader::build(201, Some(4))?;
    resp.insert_header("content-type", "application/sdp")?;
    resp.insert_header("location", location)?;
    resp.insert_header("content-length", answer.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(answer)), true)
        .await?;
    Ok(())
}

async fn page(session: &mut Session, base: &str) -> Result<()> {
    let prefix = serde_json::to_string(base).expect("a string serializes");
    let body = PAGE.replace("__SG_PREFIX__", &prefix);
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header("content-type", "text/html; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-cache")?;
    resp.insert_header("x-content-type-options", "nosniff")?;
    let head = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(resp), head).await?;
    if !head {
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
    }
    Ok(())
}

/// The request body, or `None` when it exceeds [`MAX_SDP`].
async fn read_body(session: &mut Session) -> Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > MAX_SDP {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

fn room_param(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let value = pair.strip_prefix("room=")?;
        percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .ok()
            .map(|v| v.into_owned())
    })
}

/// 128 random bits, hex: a WHIP/WHEP session's URL is its only credential.
fn resource_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn text(session: &mut Session, status: u16, body: &str) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body.to_owned())), true)
        .await?;
    Ok(())
}

async fn empty(session: &mut Session, status: u16) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(1))?;
    resp.insert_header("content-length", "0")?;
    session.write_response_header(Box::new(resp), true).await?;
    Ok(())
}

async fn allow(session: &mut Session, status: u16, methods: &str) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(2))?;
    resp.insert_header("allow", methods)?;
    resp.insert_header("content-length", "0")?;
    session.write_response_header(Box::new(resp), true).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_the_prefix() {
        assert_eq!(target(""), Target::Page);
        assert_eq!(target("/"), Target::Page);
        assert_eq!(target("/standup"), Target::Page);
        assert_eq!(target("/ws"), Target::Signalling);
        assert_eq!(target("/whip/r1"), Target::Endpoint(Role::Publisher, "r1"));
        assert_eq!(
            target("/whep/r1/abc"),
            Target::Resource(Role::Viewer, "r1", "abc")
        );
        assert_eq!(target("/bad room"), Target::NotFound);
        assert_eq!(target("/a/b"), Target::NotFound);
        assert_eq!(
            target("ing"),
            Target::NotFound,
            "/meeting under the prefix /meet"
        );
    }

    #[test]
    fn room_from_the_query() {
        assert_eq!(
            room_param(Some("x=1&room=st%2Dandup")),
            Some("st-andup".into())
        );
        assert_eq!(room_param(Some("x=1")), None);
        assert_eq!(room_param(None), None);
        assert_eq!(resource_id().len(), 32);
        assert_ne!(resource_id(), resource_id());
    }
}
