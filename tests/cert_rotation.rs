//! Certificate rotation while serving: after the files are replaced (as cert-manager does), new
//! TLS handshakes get the new certificate while a connection opened before keeps working; a
//! broken rotation keeps the certificate in use. Several certificates on one listener, chosen by
//! the name the client asks for (SNI), rotate the same way.

mod common;

use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Accepts any certificate: the test only looks at which one was presented.
#[derive(Debug)]
struct AnyCert;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection; returns it with the DER of the certificate the server presented.
fn connect(addr: SocketAddr) -> (Tls, Vec<u8>) {
    connect_as(addr, "localhost")
}

/// As [`connect`], asking for `server_name` (SNI).
fn connect_as(addr: SocketAddr, server_name: &str) -> (Tls, Vec<u8>) {
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert))
            .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let conn = ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    let presented = tls.conn.peer_certificates().unwrap()[0].to_vec();
    (tls, presented)
}

/// One keep-alive request on `tls`; returns the body.
fn request(tls: &mut Tls) -> String {
    tls.write_all(b"GET /http-bind?room=r HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&buf).contains("shard-0\n") {
        let n = tls.read(&mut chunk).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// `head` (from `config_head`) with `tls` (TOML) added to the listener on `http`.
fn with_tls(head: &str, http: SocketAddr, tls: &str) -> String {
    head.replacen(
        &format!("addr = \"{http}\"\n"),
        &format!("addr = \"{http}\"\n{tls}"),
        1,
    )
}

fn new_cert() -> (String, String, Vec<u8>) {
    cert_for(&["localhost"])
}

fn cert_for(names: &[&str]) -> (String, String, Vec<u8>) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    (
        ck.cert.pem(),
        ck.signing_key.serialize_pem(),
        ck.cert.der().to_vec(),
    )
}

/// Replaces a file by writing a new one and renaming it over (as cert-manager's atomic writes).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_reaches_new_handshakes_and_old_connections_stay() {
    let backend = Backend::start("shard-0").await;
    let (cert_a, key_a, der_a) = new_cert();
    let (cert_b, key_b, der_b) = new_cert();
    let certs = tempfile::tempdir().unwrap();
    let (crt, key) = (certs.path().join("tls.crt"), certs.path().join("tls.key"));
    std::fs::write(&crt, &cert_a).unwrap();
    std::fs::write(&key, &key_a).unwrap();
    let (head, http, admin) = config_head("t");
    let head = with_tls(
        &head,
        http,
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\", h2 = false }}\n",
            crt.display(),
            key.display()
        ),
    );
    let sg = Shardgate::start(
        &format!(
            "{head}{}[[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"p\" }}\n",
            shard_pool("p", &[&backend])
        ),
        http,
        admin,
    );

    let (mut old, presented) = connect(http);
    assert_eq!(presented, der_a);
    assert!(request(&mut old).starts_with("HTTP/1.1 200"));

    // Key first, then certificate, as a careless rotation might: a mismatched pair in between
    // must not be served.
    replace(&key, &key_b);
    replace(&crt, &cert_b);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, presented) = connect(http);
        if presented == der_b {
            break;
        }
        assert_eq!(presented, der_a, "neither the old nor the new certificate");
        assert!(
            Instant::now() < deadline,
            "the new certificate was never presented"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        request(&mut old).starts_with("HTTP/1.1 200"),
        "the connection from before the rotation broke"
    );

    // A broken rotation: the certificate in use stays.
    replace(
        &crt,
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(connect(http).1, der_b);
    let metrics = get(&client(), &sg.admin_url("/metrics")).await.1;
    assert!(
        metrics.contains("shardgate_tls_reloads_total{result=\"error\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shardgate_tls_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_chosen_by_sni_and_each_rotates_on_its_own() {
    let backend = Backend::start("shard-0").await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, (cert, key, der): (String, String, Vec<u8>)| {
        let (c, k) = (
            dir.path().join(format!("{name}.crt")),
            dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k, der)
    };
    let (dc, dk, default) = write("default", cert_for(&["localhost"]));
    let (mc, mk, meet) = write("meet", cert_for(&["meet.example.com"]));
    let (wc, wk, wild) = write("wild", cert_for(&["*.example.org", "example.org"]));
    let (head, http, admin) = config_head("t");
    let head = with_tls(
        &head,
        http,
        &format!(
            "[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\nsni = [\n  \
             {{ cert = \"{}\", key = \"{}\" }},\n  {{ cert = \"{}\", key = \"{}\" }},\n]\n",
            dc.display(),
            dk.display(),
            mc.display(),
            mk.display(),
            wc.display(),
            wk.display()
        ),
    );
    let sg = Shardgate::start(
        &format!(
            "{head}{}[[route]]\npath_prefix = \"/\"\nshard = {{ pool = \"p\" }}\n",
            shard_pool("p", &[&backend])
        ),
        http,
        admin,
    );
    assert_eq!(connect_as(http, "meet.example.com").1, meet);
    assert_eq!(connect_as(http, "MEET.example.com").1, meet);
    assert_eq!(connect_as(http, "a.example.org").1, wild);
    assert_eq!(connect_as(http, "example.org").1, wild);
    assert_eq!(connect_as(http, "a.b.example.org").1, default);
    assert_eq!(connect_as(http, "localhost").1, default);
    assert_eq!(connect_as(http, "other.test").1, default);
    let (mut tls, _) = connect_as(http, "meet.example.com");
    assert!(request(&mut tls).starts_with("HTTP/1.1 200"));

    // Rotating one certificate changes only the names it covers.
    let (cert, key, meet2) = cert_for(&["meet.example.com"]);
    replace(&mk, &key);
    replace(&mc, &cert);
    let deadline = Instant::now() + Duration::from_secs(10);
    while connect_as(http, "meet.example.com").1 != meet2 {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never presented"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(connect_as(http, "a.example.org").1, wild);
    assert_eq!(connect_as(http, "localhost").1, default);
    drop(sg);
}
