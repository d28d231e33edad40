//! TLS towards a pool's members: the member's certificate is checked against the pool's CA
//! and name, the pool's client certificate is presented (mTLS), and a rotated client
//! certificate reaches new connections while a broken rotation keeps the old one.

mod common;

use common::*;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test mesh CA");
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `dns` names with common name `cn`: (cert PEM, key PEM).
    fn issue(&self, cn: &str, dns: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A TLS member that requires a client certificate from `client_ca` and answers
/// `<name> client=<the client certificate's common name>`.
async fn mtls_member(name: &str, cert: &(String, String), client_ca: &Ca) -> std::net::SocketAddr {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.0.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(client_ca.pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let name = name.to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, name) = (acceptor.clone(), name.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                let (_, parsed) = x509_parser::parse_x509_certificate(peer.as_ref()).unwrap();
                let cn = parsed
                    .subject()
                    .iter_common_name()
                    .next()
                    .and_then(|c| c.as_str().ok())
                    .unwrap_or("?")
                    .to_owned();
                let body = format!("{name} client={cn}\n");
                let svc = service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Replaces a file by writing a new one and renaming it over (as spiffe-helper does).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn pool(name: &str, addr: std::net::SocketAddr, tls: &str) -> String {
    format!(
        "[[pool]]\nname = \"{name}\"\nshards.list = [{{ name = \"{name}-0\", addrs = [\"{addr}\"] }}]\ntls = {{ {tls} }}\n\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_reached_over_mtls_and_the_client_certificate_rotates() {
    let ca = Ca::new();
    let member = mtls_member("shard-0", &ca.issue("shard-0", &["shard.test"]), &ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let (cert_a, key_a) = ca.issue("edge-a", &[]);
    let client_cert = write(dir.path(), "svid.pem", &cert_a);
    let client_key = write(dir.path(), "svid_key.pem", &key_a);
    let files = format!(
        "ca = \"{}\", client_cert = \"{}\", client_key = \"{}\"",
        ca_file.display(),
        client_cert.display(),
        client_key.display()
    );
    let (head, http, admin) = config_head("t");
    let config = format!(
        "{head}{}{}{}{}\
         [[route]]\npath_prefix = \"/nocert\"\npool = \"nocert\"\n\n\
         [[route]]\npath_prefix = \"/wrongname\"\npool = \"wrongname\"\n\n\
         [[route]]\npath_prefix = \"/chain\"\npool = \"chain\"\n\n\
         [[route]]\npath_prefix = \"/\"\npool = \"mesh\"\n",
        pool(
            "mesh",
            member,
            &format!("server_name = \"shard.test\", {files}")
        ),
        pool(
            "nocert",
            member,
            &format!(
                "server_name = \"shard.test\", ca = \"{}\"",
                ca_file.display()
            )
        ),
        pool(
            "wrongname",
            member,
            &format!("server_name = \"other.test\", {files}")
        ),
        pool(
            "chain",
            member,
            &format!("server_name = \"other.test\", verify = \"chain\", {files}")
        ),
    );
    let sg = Shardgate::start(&config, http, admin);
    let c = client();

    let (status, body) = get(&c, &sg.url("/x")).await;
    assert_eq!((status, body.as_str()), (200, "shard-0 client=edge-a\n"));
    // Without a client certificate the member refuses the handshake.
    // A failed handshake counts as a failed connection: the member is marked down, the retry
    // finds no other, and the client is told why.
    let (status, body) = get(&c, &sg.url("/nocert")).await;
    assert!(status == 502 || status == 503, "{status} {body}");
    println!("no client certificate: {status} {body}");
    // A certificate without the expected name is refused with verify = "full"...
    let (status, body) = get(&c, &sg.url("/wrongname")).await;
    assert!(status == 502 || status == 503, "{status} {body}");
    println!("wrong server name: {status} {body}");
    // ...and accepted with verify = "chain" (the CA still has to have signed it).
    let (status, body) = get(&c, &sg.url("/chain")).await;
    assert_eq!((status, body.as_str()), (200, "shard-0 client=edge-a\n"));

    // spiffe-helper rotates the SVID: key first, then certificate. New connections present it.
    let (cert_b, key_b) = ca.issue("edge-b", &[]);
    replace(&client_key, &key_b);
    replace(&client_cert, &cert_b);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(&c, &sg.url("/x")).await;
        assert_eq!(status, 200, "{body}");
        if body == "shard-0 client=edge-b\n" {
            break;
        }
        assert_eq!(body, "shard-0 client=edge-a\n");
        assert!(
            Instant::now() < deadline,
            "the new client certificate was never presented"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken rotation keeps the certificate in use.
    replace(
        &client_cert,
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = get(&c, &sg.url("/x")).await;
    assert_eq!((status, body.as_str()), (200, "shard-0 client=edge-b\n"));
    let metrics = get(&c, &sg.admin_url("/metrics")).await.1;
    assert!(
        metrics.contains("shardgate_tls_reloads_total{result=\"error\"}"),
        "{metrics}"
    );
}
