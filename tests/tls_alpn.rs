//! TLS listeners: HTTP/2 and HTTP/1.1 by ALPN with a self-signed certificate for localhost,
//! `h2 = false`, the forwarding headers behind TLS, and `check` refusing key files that do not
//! fit.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A self-signed certificate for "localhost": (cert PEM, key PEM).
fn self_signed() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

/// Writes cert.pem and key.pem into `dir`; returns their paths.
fn write_pems(dir: &Path, cert: &str, key: &str) -> (PathBuf, PathBuf) {
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

/// A config with one TLS listener (`tls_extra` goes inside the tls table) over `backend`.
fn tls_config(
    http: SocketAddr,
    admin: SocketAddr,
    cert: &Path,
    key: &Path,
    tls_extra: &str,
    backend: Option<&Backend>,
) -> String {
    let mut text = format!(
        "[[listener]]\naddr = \"{http}\"\ntls = {{ cert = \"{}\", key = \"{}\"{tls_extra} }}\n\n[admin]\naddr = \"{admin}\"\n\n",
        cert.display(),
        key.display()
    );
    if let Some(b) = backend {
        text += &shard_pool("shards", &[b]);
        text += "[[route]]\npath_prefix = \"/\"\nshard = { pool = \"shards\" }\n";
    }
    text
}

fn fresh_addrs() -> (SocketAddr, SocketAddr) {
    (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    )
}

/// Starts shardgate with a TLS listener; returns it and the certificate to trust.
fn start_tls(tls_extra: &str, backend: &Backend) -> (Shardgate, String) {
    start_tls_with(tls_extra, backend, "")
}

/// [`start_tls`] with more of the config (`sections`, appended).
fn start_tls_with(tls_extra: &str, backend: &Backend, sections: &str) -> (Shardgate, String) {
    let (cert, key) = self_signed();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = write_pems(dir.path(), &cert, &key);
    let (http, admin) = fresh_addrs();
    let mut config = tls_config(http, admin, &cert_path, &key_path, tls_extra, Some(backend));
    config += sections;
    let path = dir.path().join("shardgate.toml");
    std::fs::write(&path, config).unwrap();
    (Shardgate::start_file(path, dir, http, admin), cert)
}

/// A client trusting only `cert` that sends "localhost" to `addr`.
fn tls_client(cert: &str, addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(20));
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

async fn get_version(c: &reqwest::Client, url: &str) -> (reqwest::Version, u16, String) {
    let r = c
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    let v = r.version();
    let s = r.status().as_u16();
    (v, s, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_gives_h2_by_default_and_http1_when_asked() {
    let backend = Backend::start("shard-0").await;
    let (sg, cert) = start_tls("", &backend);
    let url = format!("https://localhost:{}/http-bind?room=tls", sg.http.port());

    let h2 = tls_client(&cert, sg.http, false);
    let (version, status, body) = get_version(&h2, &url).await;
    assert_eq!(version, reqwest::Version::HTTP_2);
    assert_eq!((status, body.as_str()), (200, "shard-0\n"));
    // An HTTP/1.1 shard needs Host, taken from h2's :authority.
    let authority = format!("localhost:{}", sg.http.port());
    backend
        .seen
        .assert_forwarded("127.0.0.1", "https", &authority);
    // Several streams on the one h2 connection, all forwarded.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (c, url) = (h2.clone(), format!("{url}{i}"));
        tasks.push(tokio::spawn(async move { get_version(&c, &url).await }));
    }
    for t in tasks {
        let (v, s, b) = t.await.unwrap();
        assert_eq!(
            (v, s, b.as_str()),
            (reqwest::Version::HTTP_2, 200, "shard-0\n")
        );
    }
    assert_eq!(backend.requests(), 21);

    let h1 = tls_client(&cert, sg.http, true);
    let (version, status, body) = get_version(&h1, &url).await;
    assert_eq!(version, reqwest::Version::HTTP_11);
    assert_eq!((status, body.as_str()), (200, "shard-0\n"));
    backend
        .seen
        .assert_forwarded("127.0.0.1", "https", &authority);
    assert_eq!(backend.requests(), 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_false_offers_only_http1() {
    let backend = Backend::start("shard-0").await;
    let (sg, cert) = start_tls(", h2 = false", &backend);
    let url = format!("https://localhost:{}/http-bind?room=tls", sg.http.port());
    // The client offers h2 and http/1.1; the edge picks http/1.1.
    let c = tls_client(&cert, sg.http, false);
    let (version, status, body) = get_version(&c, &url).await;
    assert_eq!(version, reqwest::Version::HTTP_11);
    assert_eq!((status, body.as_str()), (200, "shard-0\n"));
    assert_eq!(backend.seen.header("x-forwarded-proto"), vec!["https"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_is_refused_by_the_client() {
    // The edge really presents the configured certificate: a client trusting another one fails.
    let backend = Backend::start("shard-0").await;
    let (sg, _cert) = start_tls("", &backend);
    let (other, _) = self_signed();
    let c = tls_client(&other, sg.http, false);
    let url = format!("https://localhost:{}/", sg.http.port());
    let err = c.get(&url).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(backend.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_garbled_tls_handshakes_are_closed_and_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start("shard-0").await;
    let (sg, cert) = start_tls_with("", &backend, "[timeouts]\nrequest_head = \"1s\"\n");
    let http = sg.http;

    let start = std::time::Instant::now();
    let mut stalled = Vec::new();
    for i in 0..20 {
        stalled.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
            if i % 2 == 1 {
                // The start of a ClientHello record announcing 512 bytes, never finished.
                s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                    .await
                    .unwrap();
            }
            let mut buf = [0u8; 64];
            // Closed by the edge: end of stream or a reset, within the deadline.
            let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            matches!(read, Ok(Ok(0)) | Ok(Err(_)))
        }));
    }
    // Plain HTTP to the TLS port is not a handshake.
    let mut garbled = tokio::net::TcpStream::connect(http).await.unwrap();
    garbled
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_secs(5), garbled.read(&mut buf)).await;

    // A real client is served meanwhile.
    let c = tls_client(&cert, sg.http, true);
    let url = format!("https://localhost:{}/http-bind?room=tls", sg.http.port());
    assert_eq!(get_version(&c, &url).await.1, 200);
    for t in stalled {
        assert!(t.await.unwrap(), "a stalled handshake was closed");
    }
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    let metrics = get(&client(), &sg.admin_url("/metrics")).await.1;
    let timeouts = metric(&metrics, "shardgate_timeouts_total{kind=\"tls_handshake\"}");
    assert_eq!(timeouts, Some(20), "{metrics}");
    let errors = metric(&metrics, "shardgate_tls_handshake_errors_total").unwrap_or(0);
    assert!(errors >= 1, "{metrics}");
}

/// Runs `shardgate check` on a config whose TLS files are `cert`/`key`.
fn check_tls(dir: &Path, cert: &Path, key: &Path) -> (i32, String, String) {
    let (http, admin) = fresh_addrs();
    let path = dir.join("check.toml");
    std::fs::write(&path, tls_config(http, admin, cert, key, "", None)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_refuses_a_key_that_does_not_match_or_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed();
    let (cert_path, key_path) = write_pems(dir.path(), &cert, &key);
    let file = dir.path().join("check.toml");

    // The matching pair is fine.
    let (code, stdout, stderr) = check_tls(dir.path(), &cert_path, &key_path);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, format!("{}: ok\n", file.display()));

    // Another key: line 3 is the `tls = {…}` line, column 7 its value.
    let (_, other_key) = self_signed();
    let other_path = dir.path().join("other-key.pem");
    std::fs::write(&other_path, other_key).unwrap();
    let (code, stdout, stderr) = check_tls(dir.path(), &cert_path, &other_path);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(stdout, "");
    let want = format!("{}:3:7: listener[0].tls: ", file.display());
    assert!(stderr.starts_with(&want), "{stderr}");
    assert!(
        stderr.contains(&format!("{} does not belong to", other_path.display())),
        "{stderr}"
    );

    // No key file at all.
    let missing = dir.path().join("missing-key.pem");
    let (code, _, stderr) = check_tls(dir.path(), &cert_path, &missing);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.starts_with(&want), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");

    // A certificate file that is a key, not a certificate.
    let (code, _, stderr) = check_tls(dir.path(), &key_path, &key_path);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.starts_with(&want), "{stderr}");
    assert!(
        stderr.contains(&format!("no certificate in {}", key_path.display())),
        "{stderr}"
    );

    // `run` refuses the mismatched pair too, before listening.
    let (http, admin) = fresh_addrs();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        tls_config(http, admin, &cert_path, &other_path, "", None),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("listener[0].tls"), "{stderr}");
    assert!(std::net::TcpStream::connect(http).is_err());
}

/// A TLS connection to `addr` that chose h2 by ALPN, trusting only `cert`.
async fn h2_tls(
    cert: &str,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_http2_connections_are_closed() {
    use tokio::io::AsyncReadExt;
    let backend = Backend::start("shard-0").await;
    let timeouts = "[timeouts]\nrequest_head = \"1s\"\nkeepalive = \"1s\"\n";
    let (sg, cert) = start_tls_with("", &backend, timeouts);

    // h2 chosen, then no preface: closed at the request head deadline and counted.
    let start = std::time::Instant::now();
    let mut silent = h2_tls(&cert, sg.http).await;
    // (pingora's h2 handshake would send its settings at once and wait for ever.)
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 64];
        while matches!(silent.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(closed.is_ok(), "a silent h2 connection was kept past 5 s");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    let metrics = get(&client(), &sg.admin_url("/metrics")).await.1;
    let late = metric(&metrics, "shardgate_timeouts_total{kind=\"request_head\"}");
    assert_eq!(late, Some(1), "{metrics}");

    // One request, then idle: closed after the keep-alive timeout.
    let io = hyper_util::rt::TokioIo::new(h2_tls(&cert, sg.http).await);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let req = hyper::Request::get("https://localhost/http-bind?room=h2")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let answer = sender.send_request(req).await.unwrap();
    assert_eq!(answer.status(), 200);
    drop(answer);
    let idle = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(ended.is_ok(), "an idle h2 connection was kept past 10 s");
    let after = idle.elapsed();
    assert!(
        after >= Duration::from_millis(500),
        "closed at once: {after:?}"
    );
}
