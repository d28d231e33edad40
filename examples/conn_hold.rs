//! Backend and client for `tests/perf/memory_vs_haproxy.sh`: many connections held open
//! through a proxy in one state each, so the proxy's memory per connection can be measured.
//!
//!   conn_hold backend ADDR
//!       a shard: WebSocket upgrades echo each message; `/hold?ms=N` answers after N ms (a BOSH
//!       long-poll); anything else answers `ok` at once. HTTP/1.1, keep-alive.
//!   conn_hold clients ADDR STATE COUNT [tls]
//!       opens COUNT connections to ADDR (TLS with `tls`, any certificate accepted), each left
//!       in STATE, prints `ready N` once all are, then holds them until standard input closes:
//!         ws         a WebSocket (`/xmpp-websocket?room=r<i>`), idle after one message each way
//!         keepalive  an HTTP/1.1 connection, idle after one request (`/http-bind?room=r<i>`)
//!         held       a request the shard holds (`/hold?room=r<i>&ms=600000`), pending
//!         h2         an HTTP/2 connection (with `tls`, ALPN h2), idle after one request
//!                    (`/http-bind?room=r<i>`)
//!       A connection that fails or is closed early is reported on standard error and counted:
//!       `ready N failed M`.

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("backend") if args.len() == 2 => rt.block_on(backend(args[1].parse().expect("ADDR"))),
        Some("clients") if args.len() >= 4 => {
            let addr: SocketAddr = args[1].parse().expect("ADDR");
            let count: usize = args[3].parse().expect("COUNT");
            let tls = args.get(4).is_some_and(|t| t == "tls");
            rt.block_on(clients(addr, args[2].clone(), count, tls));
        }
        _ => {
            eprintln!("usage: conn_hold backend ADDR | conn_hold clients ADDR ws|keepalive|held|h2 COUNT [tls]");
            std::process::exit(2);
        }
    }
}

async fn backend(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(serve);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

async fn serve(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if let Some(key) = req.headers().get("sec-websocket-key").cloned() {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() || ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
        return Ok(Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
            .body(Full::new(Bytes::new()))
            .expect("response"));
    }
    if req.uri().path() == "/hold" {
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn clients(addr: SocketAddr, state: String, count: usize, tls: bool) {
    let connector = tls.then(|| tls_connector(state == "h2"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let mut held = Vec::with_capacity(count);
    // At most 200 connections being opened at once.
    let gate = Arc::new(tokio::sync::Semaphore::new(200));
    for i in 0..count {
        let (tx, gate, state, connector) =
            (tx.clone(), gate.clone(), state.clone(), connector.clone());
        held.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("gate");
            let io = match open(addr, connector).await {
                Ok(io) => io,
                Err(e) => {
                    eprintln!("connection {i}: {e}");
                    let _ = tx.send(false);
                    return;
                }
            };
            let kept = match state.as_str() {
                "ws" => websocket(io, i).await.map(|ws| KeptIo::Ws(Box::new(ws))),
                "keepalive" => request(io, &format!("/http-bind?room=r{i}"), true)
                    .await
                    .map(KeptIo::Raw),
                "held" => request(io, &format!("/hold?room=r{i}&ms=600000"), false)
                    .await
                    .map(KeptIo::Raw),
                "h2" => h2_request(io, &format!("/http-bind?room=r{i}")).await,
                other => Err(format!("unknown state {other}")),
            };
            drop(permit);
            match kept {
                Ok(kept) => {
                    let _ = tx.send(true);
                    // Held until the process ends; a close by the proxy ends this task.
                    kept.wait_closed().await;
                    eprintln!("connection {i} closed by the proxy");
                }
                Err(e) => {
                    eprintln!("connection {i}: {e}");
                    let _ = tx.send(false);
                }
            }
        }));
    }
    drop(tx);
    let (mut ok, mut failed) = (0, 0);
    while ok + failed < count {
        match rx.recv().await {
            Some(true) => ok += 1,
            Some(false) => failed += 1,
            None => break,
        }
    }
    if failed == 0 {
        println!("ready {ok}");
    } else {
        println!("ready {ok} failed {failed}");
    }
    // Until standard input closes.
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}

enum KeptIo {
    Ws(Box<WebSocketStream<Box<dyn Io>>>),
    Raw(Box<dyn Io>),
    /// The request sender (kept, so the connection stays open) and the connection's task.
    H2(
        hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<()>,
    ),
}

impl KeptIo {
    async fn wait_closed(self) {
        match self {
            KeptIo::Ws(mut ws) => while let Some(Ok(_)) = ws.next().await {},
            KeptIo::Raw(mut io) => {
                let mut buf = [0u8; 256];
                while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
            }
            KeptIo::H2(_sender, connection) => {
                let _ = connection.await;
            }
        }
    }
}

async fn open(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
) -> Result<Box<dyn Io>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => Ok(Box::new(tcp)),
        Some(c) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let stream = c.connect(name, tcp).await.map_err(|e| e.to_string())?;
            Ok(Box::new(stream))
        }
    }
}

async fn websocket(io: Box<dyn Io>, i: usize) -> Result<WebSocketStream<Box<dyn Io>>, String> {
    let url = format!("ws://localhost/xmpp-websocket?room=r{i}");
    let (mut ws, _) = tokio_tungstenite::client_async(url, io)
        .await
        .map_err(|e| e.to_string())?;
    ws.send("hello".into()).await.map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(_)) => Ok(ws),
        other => Err(format!("no echo: {other:?}")),
    }
}

/// Sends one GET; with `answered`, reads its whole answer (`ok\n`) and keeps the connection.
async fn request(mut io: Box<dyn Io>, path: &str, answered: bool) -> Result<Box<dyn Io>, String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    io.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    if !answered {
        return Ok(io);
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"ok\n") {
        let n = io.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the answer".into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(io)
}

/// One GET over HTTP/2 (the connection must have chosen h2 by ALPN), its whole answer read.
async fn h2_request(io: Box<dyn Io>, path: &str) -> Result<KeptIo, String> {
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(io),
    )
    .await
    .map_err(|e| e.to_string())?;
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let req = Request::get(format!("https://localhost{path}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let answer = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if !answer.status().is_success() {
        return Err(format!("answered {}", answer.status()));
    }
    let body = answer
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if body.to_bytes().as_ref() != b"ok\n" {
        return Err("unexpected answer".into());
    }
    Ok(KeptIo::H2(sender, connection))
}

/// A client accepting any certificate; offering only h2 by ALPN with `h2`.
fn tls_connector(h2: bool) -> tokio_rustls::TlsConnector {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    if h2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    tokio_rustls::TlsConnector::from(Arc::new(config))
}
