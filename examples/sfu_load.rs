//! Load for the SFU benchmark (`tests/perf/sfu_load.sh`): synthetic participants, each a str0m
//! client on its own UDP socket on loopback, joined through shardgate's WebSocket signalling
//! in rooms of four. Each sends audio (50 frames/s) and video (~500 kbit/s, 30 frames/s) and
//! counts the frames it receives from each room-mate.
//!
//! ```text
//! cargo run --release --example sfu_load -- --url ws://127.0.0.1:8080/ws --participants 40 --seconds 10 [--rooms NAME]
//! ```
//!
//! Prints one line: `participants=N sent=… expected=… received=… loss=…%` (frames, over the
//! measured window after a warm-up).

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

const ROOM_SIZE: usize = 4;
const VIDEO_FRAME: usize = 500_000 / 8 / 30;
const AUDIO_FRAME: usize = 100;

#[derive(Default)]
struct Totals {
    /// Frames sent while measuring.
    sent: AtomicU64,
    /// Frames received while measuring.
    received: AtomicU64,
    /// Participants whose media connection came up.
    connected: AtomicU64,
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn main() {
    let url = arg("--url", "ws://127.0.0.1:8080/ws");
    let participants: usize = arg("--participants", "8")
        .parse()
        .expect("--participants N");
    let seconds: u64 = arg("--seconds", "10").parse().expect("--seconds S");
    let threads: usize = arg("--threads", "1").parse().expect("--threads N");
    let rooms = arg("--rooms", "load");
    let warmup = Duration::from_secs(4);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let totals = Arc::new(Totals::default());
        let measuring = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let end = start + warmup + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for i in 0..participants {
            let room = format!("{rooms}-{}", i / ROOM_SIZE);
            let url = format!("{url}?room={room}");
            let totals = totals.clone();
            let measuring = measuring.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = participant(i, &url, totals, measuring, end).await {
                    eprintln!("participant {i}: {e}");
                }
            }));
            // Joins spread over the first second or so.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep_until((start + warmup).into()).await;
        measuring.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let sent = totals.sent.load(Ordering::Relaxed);
        let received = totals.received.load(Ordering::Relaxed);
        // Each frame goes to the other members of its room; a last, smaller room has fewer.
        let mut expected = 0u64;
        let rooms = participants.div_ceil(ROOM_SIZE);
        for r in 0..rooms {
            let members = (participants - r * ROOM_SIZE).min(ROOM_SIZE) as u64;
            expected += members * (members - 1);
        }
        let expected = sent * expected / (participants as u64).max(1);
        let loss = if expected == 0 {
            100.0
        } else {
            100.0 * (1.0 - received as f64 / expected as f64).max(0.0)
        };
        println!(
            "participants={participants} connected={} sent={sent} expected={expected} received={received} loss={loss:.3}%",
            totals.connected.load(Ordering::Relaxed)
        );
    });
}

async fn participant(
    i: usize,
    url: &str,
    totals: Arc<Totals>,
    measuring: Arc<AtomicBool>,
    end: Instant,
) -> Result<(), String> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = socket.local_addr().map_err(|e| e.to_string())?;
    let mut rtc = Rtc::builder().build(Instant::now());
    rtc.add_local_candidate(Candidate::host(addr, "udp").map_err(|e| e.to_string())?);
    let mut api = rtc.sdp_api();
    let stream = Some(format!("p{i}"));
    let audio = api.add_media(
        MediaKind::Audio,
        Direction::SendOnly,
        stream.clone(),
        None,
        None,
    );
    let video = api.add_media(MediaKind::Video, Direction::SendOnly, stream, None, None);
    let (offer, pending) = api.apply().ok_or("no offer")?;
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("signalling: {e}"))?;
    let join = json!({"type": "join", "sdp": offer.to_sdp_string()});
    ws.send(Message::text(join.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    let mut pending = Some(pending);
    let mut client = Client {
        rtc,
        socket,
        addr,
        audio,
        video,
        connected: false,
        audio_frames: 0,
        video_frames: 0,
        keyframe_due: true,
        totals,
        measuring,
    };
    let mut buf = vec![0u8; 2000];
    let mut audio_tick = tokio::time::interval(Duration::from_millis(20));
    let mut video_tick = tokio::time::interval(Duration::from_millis(33));
    loop {
        let timeout = client.poll().min(end);
        if Instant::now() >= end {
            let _ = ws
                .send(Message::text(json!({"type": "leave"}).to_string()))
                .await;
            return Ok(());
        }
        tokio::select! {
            r = client.socket.recv_from(&mut buf) => {
                let (n, source) = r.map_err(|e| e.to_string())?;
                let Ok(contents) = buf[..n].try_into() else { continue };
                let input = Input::Receive(Instant::now(), Receive {
                    proto: Protocol::Udp,
                    source,
                    destination: client.addr,
                    contents,
                });
                let _ = client.rtc.handle_input(input);
            }
            m = ws.next() => {
                let text = match m {
                    Some(Ok(Message::Text(text))) => text,
                    // The server's keepalive (the pong goes out with the next read).
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => return Err(format!("signalling closed: {m:?}")),
                };
                let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                match v["type"].as_str() {
                    Some("answer") => {
                        let answer = SdpAnswer::from_sdp_string(v["sdp"].as_str().unwrap_or(""))
                            .map_err(|e| e.to_string())?;
                        if let Some(p) = pending.take() {
                            client.rtc.sdp_api().accept_answer(p, answer).map_err(|e| e.to_string())?;
                        }
                    }
                    Some("offer") => {
                        let offer = SdpOffer::from_sdp_string(v["sdp"].as_str().unwrap_or(""))
                            .map_err(|e| e.to_string())?;
                        let answer = client.rtc.sdp_api().accept_offer(offer).map_err(|e| e.to_string())?;
                        let reply = json!({"type": "answer", "sdp": answer.to_sdp_string()});
                        ws.send(Message::text(reply.to_string())).await.map_err(|e| e.to_string())?;
                    }
                    Some("error") => return Err(format!("refused: {}", v["message"])),
                    _ => {}
                }
            }
            _ = audio_tick.tick() => client.send(MediaKind::Audio),
            _ = video_tick.tick() => client.send(MediaKind::Video),
            _ = tokio::time::sleep_until(timeout.into()) => {
                let _ = client.rtc.handle_input(Input::Timeout(Instant::now()));
            }
        }
    }
}

struct Client {
    rtc: Rtc,
    socket: UdpSocket,
    addr: SocketAddr,
    audio: Mid,
    video: Mid,
    connected: bool,
    audio_frames: u64,
    video_frames: u64,
    keyframe_due: bool,
    totals: Arc<Totals>,
    measuring: Arc<AtomicBool>,
}

impl Client {
    fn poll(&mut self) -> Instant {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => return t,
                Ok(Output::Transmit(t)) => {
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        self.connected = true;
                        self.totals.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::MediaData(_) if self.measuring.load(Ordering::Relaxed) => {
                        self.totals.received.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::KeyframeRequest(_) => self.keyframe_due = true,
                    _ => {}
                },
                Err(_) => return Instant::now() + Duration::from_millis(50),
            }
        }
    }

    fn send(&mut self, kind: MediaKind) {
        if !self.connected {
            return;
        }
        let now = Instant::now();
        let (mid, size, key, time) = match kind {
            MediaKind::Audio => {
                self.audio_frames += 1;
                let t = MediaTime::from_millis(self.audio_frames * 20);
                (self.audio, AUDIO_FRAME, false, t)
            }
            MediaKind::Video => {
                self.video_frames += 1;
                let t = MediaTime::from_90khz(self.video_frames * 3_000);
                (
                    self.video,
                    VIDEO_FRAME,
                    std::mem::take(&mut self.keyframe_due),
                    t,
                )
            }
        };
        let Some(w) = self.rtc.writer(mid) else {
            return;
        };
        let audio = kind == MediaKind::Audio;
        let Some(pt) = w
            .payload_params()
            .find(|p| p.spec().codec.is_audio() == audio)
            .map(|p| p.pt())
        else {
            return;
        };
        let mut data = vec![0xaau8; size];
        data[0] = if key { 0x10 } else { 0x11 };
        if w.write(pt, now, time, data).is_ok() && self.measuring.load(Ordering::Relaxed) {
            self.totals.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}
