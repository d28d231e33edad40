//! The signalling WebSocket (`<prefix>/ws?room=`), served on the proxy's own connection:
//! pingora reads and writes the bytes, tungstenite does the framing over an in-memory pipe.
//! The protocol is in [`super::signal`].

use super::driver::{HandleError, Note, SfuHandle};
use super::signal::{clean_name, ClientMessage, ServerMessage};
use super::{PeerId, Role};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::debug;
use tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// A quiet connection is pinged this often (browsers answer by themselves), …
const PING_EVERY: Duration = Duration::from_secs(20);
/// … and closed when nothing at all came for this long.
const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// SDP is a few kilobytes; nothing the protocol sends comes near this.
const MAX_MESSAGE: usize = 256 * 1024;

/// Bytes read from the client wait here for tungstenite; frames it writes collect here for
/// pingora.
#[derive(Default)]
struct Pipe {
    incoming: VecDeque<u8>,
    outgoing: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.incoming.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        self.incoming.read(buf)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.outgoing.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether the request is a WebSocket handshake this server can accept; the
/// `Sec-WebSocket-Accept` value if so.
pub fn accept_key(req: &RequestHeader) -> Option<String> {
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    let upgrade = header("upgrade")?.eq_ignore_ascii_case("websocket");
    let version = header("sec-websocket-version")? == "13";
    let key = header("sec-websocket-key")?;
    (upgrade && version).then(|| tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// Answers the handshake and runs the signalling session until either side ends it.
pub async fn serve(
    session: &mut Session,
    sfu: &SfuHandle,
    room: String,
    accept: String,
) -> Result<()> {
    let mut resp = ResponseHeader::build(101, Some(3))?;
    resp.insert_header("upgrade", "websocket")?;
    resp.insert_header("connection", "upgrade")?;
    resp.insert_header("sec-websocket-accept", accept)?;
    session.write_response_header(Box::new(resp), false).await?;
    session.set_read_timeout(None);

    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let mut signalling = Signalling {
        ws: WebSocket::from_raw_socket(
            Pipe::default(),
            tungstenite::protocol::Role::Server,
            Some(config),
        ),
        sfu: sfu.clone(),
        room,
        peer: None,
        closing: false,
    };
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let mut notes_tx = Some(notes_tx);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let silence = tokio::time::sleep(SILENCE_LIMIT);
    tokio::pin!(silence);
    loop {
        tokio::select! {
            read = session.read_request_body() => match read {
                Ok(Some(bytes)) => {
                    silence.as_mut().reset(tokio::time::Instant::now() + SILENCE_LIMIT);
                    signalling.ws.get_mut().incoming.extend(bytes.iter());
                    signalling.read_messages(&mut notes_tx).await;
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "signalling connection ended");
                    break;
                }
            },
            note = notes.recv(), if signalling.peer.is_some() => match note {
                Some(Note::Message(m)) => signalling.send(&m),
                Some(Note::Gone(reason)) => signalling.fail(CloseCode::Away, &reason),
                None => signalling.fail(CloseCode::Away, "the SFU ended this session"),
            },
            _ = ping.tick() => {
                let _ = signalling.ws.write(Message::Ping(Bytes::new()));
            }
            _ = &mut silence => {
                signalling.fail(CloseCode::Policy, "no traffic for 60 s");
            }
        }
        let _ = signalling.ws.flush();
        let out = std::mem::take(&mut signalling.ws.get_mut().outgoing);
        if !out.is_empty() {
            if let Err(e) = session
                .write_response_body(Some(Bytes::from(out)), false)
                .await
            {
                // The client went away; its peer leaves below like any other.
                debug!(error = %e, "signalling connection ended");
                break;
            }
        }
        if signalling.closing {
            break;
        }
    }
    if let Some(peer) = signalling.peer {
        sfu.leave(peer);
    }
    Ok(())
}

struct Signalling {
    ws: WebSocket<Pipe>,
    sfu: SfuHandle,
    room: String,
    peer: Option<PeerId>,
    /// A close was sent (or the client's acknowledged): end after flushing.
    closing: bool,
}

impl Signalling {
    /// Handles every complete message the pipe holds.
    async fn read_messages(&mut self, notes: &mut Option<mpsc::UnboundedSender<Note>>) {
        while !self.closing {
            let message = match self.ws.read() {
                Ok(m) => m,
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return
                }
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => {
                    self.closing = true;
                    return;
                }
                Err(e) => {
                    self.fail(CloseCode::Protocol, &format!("bad WebSocket data: {e}"));
                    return;
                }
            };
            match message {
                Message::Text(text) => match serde_json::from_str::<ClientMessage>(&text) {
                    Ok(m) => self.handle(m, notes).await,
                    Err(e) => self.fail(
                        CloseCode::Invalid,
                        &format!("not a signalling message: {e}"),
                    ),
                },
                Message::Binary(_) => self.fail(CloseCode::Unsupported, "signalling is JSON text"),
                Message::Close(_) => {
                    // tungstenite queued the reply; it goes out with the next flush.
                    self.closing = true;
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    async fn handle(&mut self, m: ClientMessage, notes: &mut Option<mpsc::UnboundedSender<Note>>) {
        match (m, self.peer) {
            (ClientMessage::Join { sdp, name }, None) => {
                let joined = self
                    .sfu
                    .join(
                        &self.room,
                        Role::Participant,
                        clean_name(name.as_deref()),
                        sdp,
                        notes.take(),
                    )
                    .await;
                match joined {
                    Ok((peer, answer)) => {
                        self.peer = Some(peer);
                        self.send(&ServerMessage::Joined {
                            id: peer.to_string(),
                        });
                        self.send(&ServerMessage::Answer { sdp: answer });
                    }
                    Err(e) => self.refused(e),
                }
            }
            (ClientMessage::Offer { sdp }, Some(peer)) => match self.sfu.offer(peer, sdp).await {
                Ok(answer) => self.send(&ServerMessage::Answer { sdp: answer }),
                Err(e) => self.refused(e),
            },
            (ClientMessage::Answer { sdp }, Some(peer)) => {
                if let Err(e) = self.sfu.answer(peer, sdp).await {
                    self.refused(e);
                }
            }
            (ClientMessage::Leave, _) => {
                let _ = self.ws.close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "left".into(),
                }));
                self.closing = true;
            }
            (ClientMessage::Join { .. }, Some(_)) => self.fail(CloseCode::Policy, "already joined"),
            (_, None) => self.fail(CloseCode::Policy, "expected {\"type\":\"join\",…} first"),
        }
    }

    fn refused<E: std::fmt::Display>(&mut self, e: HandleError<E>) {
        let code = match e {
            HandleError::NotRunning(_) => CloseCode::Error,
            HandleError::Refused(_) => CloseCode::Policy,
        };
        self.fail(code, &e.to_string());
    }

    fn send(&mut self, m: &ServerMessage) {
        let text = serde_json::to_string(m).expect("server messages serialize");
        let _ = self.ws.write(Message::text(text));
    }

    /// Tells the client why, then closes.
    fn fail(&mut self, code: CloseCode, reason: &str) {
        debug!(room = %self.room, reason, "signalling closed");
        self.send(&ServerMessage::Error {
            message: reason.to_owned(),
        });
        // A close reason must fit a control frame (123 bytes).
        let mut short = reason.to_owned();
        while short.len() > 120 {
            short.pop();
        }
        let _ = self.ws.close(Some(CloseFrame {
            code,
            reason: short.into(),
        }));
        self.closing = true;
    }
}
