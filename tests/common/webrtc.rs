//! A WebRTC client for tests: a str0m `Rtc` on a real UDP socket on loopback, with optional
//! WebSocket signalling to shardgate's SFU. Frames carry the sender's name (`name/kind/…`), so
//! a receiver knows whose media it got.

#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::{TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub name: String,
    pub rtc: Rtc,
    socket: UdpSocket,
    addr: SocketAddr,
    pub audio: Option<Mid>,
    pub video: Option<Mid>,
    pub connected: bool,
    pub ws: Option<Ws>,
    pub id: Option<String>,
    pending: Option<SdpPendingOffer>,
    /// (sender name, kind) -> frames received.
    pub received: HashMap<(String, MediaKind), u64>,
    pub keyframe_requests: u64,
    keyframe_due: bool,
    pub messages: Vec<Value>,
    pub closed: bool,
    ticks: u64,
}

impl Client {
    /// A client sending audio and/or video; returns it and its SDP offer.
    pub async fn new(
        name: &str,
        audio: bool,
        video: bool,
        direction: Direction,
    ) -> (Client, String) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut api = rtc.sdp_api();
        let stream = Some(name.to_owned());
        let a =
            audio.then(|| api.add_media(MediaKind::Audio, direction, stream.clone(), None, None));
        let v = video.then(|| api.add_media(MediaKind::Video, direction, stream, None, None));
        let (offer, pending) = api.apply().expect("an offer");
        let client = Client {
            name: name.into(),
            rtc,
            socket,
            addr,
            audio: a.filter(|_| direction.is_sending()),
            video: v.filter(|_| direction.is_sending()),
            connected: false,
            ws: None,
            id: None,
            pending: Some(pending),
            received: HashMap::new(),
            keyframe_requests: 0,
            keyframe_due: true,
            messages: Vec::new(),
            closed: false,
            ticks: 0,
        };
        (client, offer.to_sdp_string())
    }

    pub fn accept_answer(&mut self, sdp: &str) {
        let pending = self.pending.take().expect("an offer waits");
        self.rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(sdp).unwrap())
            .unwrap();
    }

    /// Joins over the signalling WebSocket at `url` (`ws://…/ws?room=…`).
    pub async fn join_ws(&mut self, url: &str, offer: String) {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("signalling connects");
        self.ws = Some(ws);
        self.send(json!({"type": "join", "sdp": offer, "name": self.name}))
            .await;
    }

    pub async fn send(&mut self, v: Value) {
        let ws = self.ws.as_mut().expect("signalling");
        ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// Runs media and signalling for `d`.
    pub async fn run(&mut self, d: Duration) {
        let end = Instant::now() + d;
        let mut buf = vec![0u8; 2000];
        let mut media = tokio::time::interval(Duration::from_millis(20));
        loop {
            let timeout = self.poll().min(end);
            if Instant::now() >= end {
                return;
            }
            let ws = self.ws.as_mut();
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let (n, source) = r.unwrap();
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: self.addr,
                        contents: buf[..n].try_into().unwrap(),
                    });
                    let _ = self.rtc.handle_input(input);
                }
                m = async { match ws { Some(ws) => ws.next().await, None => std::future::pending().await } } => {
                    match m {
                        Some(Ok(Message::Text(t))) => self.on_signal(serde_json::from_str(&t).unwrap()).await,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            self.closed = true;
                            self.ws = None;
                        }
                        _ => {}
                    }
                }
                _ = media.tick() => self.send_media(),
                _ = tokio::time::sleep_until(timeout.into()) => {
                    let _ = self.rtc.handle_input(Input::Timeout(Instant::now()));
                }
            }
        }
    }

    async fn on_signal(&mut self, m: Value) {
        match m["type"].as_str() {
            Some("joined") => self.id = m["id"].as_str().map(Into::into),
            Some("answer") => self.accept_answer(m["sdp"].as_str().unwrap()),
            Some("offer") => {
                let offer = SdpOffer::from_sdp_string(m["sdp"].as_str().unwrap()).unwrap();
                let answer = self.rtc.sdp_api().accept_offer(offer).unwrap();
                self.send(json!({"type": "answer", "sdp": answer.to_sdp_string()}))
                    .await;
            }
            _ => {}
        }
        self.messages.push(m);
    }

    /// Handles the `Rtc`'s output; returns when it next wants time.
    fn poll(&mut self) -> Instant {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => return t,
                Ok(Output::Transmit(t)) => {
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => self.connected = true,
                    Event::MediaData(d) => {
                        let name = String::from_utf8_lossy(&d.data[1..])
                            .split('/')
                            .next()
                            .unwrap_or("")
                            .to_owned();
                        let kind = if d.params.spec().codec.is_audio() {
                            MediaKind::Audio
                        } else {
                            MediaKind::Video
                        };
                        *self.received.entry((name, kind)).or_default() += 1;
                    }
                    Event::KeyframeRequest(_) => {
                        self.keyframe_requests += 1;
                        self.keyframe_due = true;
                    }
                    _ => {}
                },
                Err(_) => return Instant::now() + Duration::from_secs(1),
            }
        }
    }

    /// Audio every 20 ms, video every 40 ms.
    fn send_media(&mut self) {
        if !self.connected {
            return;
        }
        self.ticks += 1;
        let now = Instant::now();
        let ms = self.ticks * 20;
        if let Some(mid) = self.audio {
            let w = self.rtc.writer(mid).unwrap();
            let pt = w
                .payload_params()
                .find(|p| p.spec().codec.is_audio())
                .unwrap()
                .pt();
            let _ = w.write(
                pt,
                now,
                MediaTime::from_millis(ms),
                frame(&self.name, false, 80),
            );
        }
        if let Some(mid) = self.video.filter(|_| self.ticks.is_multiple_of(2)) {
            let key = std::mem::take(&mut self.keyframe_due);
            let w = self.rtc.writer(mid).unwrap();
            let pt = w
                .payload_params()
                .find(|p| p.spec().codec.is_video())
                .unwrap()
                .pt();
            let _ = w.write(
                pt,
                now,
                MediaTime::from_90khz(ms * 90),
                frame(&self.name, key, 1_000),
            );
        }
    }

    pub fn got(&self, from: &str, kind: MediaKind) -> u64 {
        self.received
            .get(&(from.to_owned(), kind))
            .copied()
            .unwrap_or(0)
    }
}

/// `name/` then padding; a VP8 keyframe's first byte is even.
fn frame(name: &str, key: bool, size: usize) -> Vec<u8> {
    let mut v = vec![if key { 0x10 } else { 0x11 }];
    v.extend(format!("{name}/").as_bytes());
    v.resize(size, 0xaa);
    v
}
