//! Loading TLS certificates and keys (PEM) into rustls, with errors that name the file, and a
//! certificate store that can be swapped while serving (rotation by cert-manager or
//! spiffe-helper rewriting the files): new handshakes get the new certificate, open
//! connections keep theirs, and a broken rotation keeps the old one.

use arc_swap::ArcSwap;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use xxhash_rust::xxh3::xxh3_64;

/// PEM files larger than this are refused (a chain is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Reads a PEM certificate chain and its private key into a signing key for rustls.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let cert_pem = read_pem(cert, "certificate")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key_pem = read_pem(key, "private key")?;
    let der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let signing = any_supported_type(&der)
        .map_err(|e| format!("unsupported private key in {}: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        format!(
            "{} does not belong to {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(ck))
}

/// Reads a PEM bundle of CA certificates: the DER of each, every one a parseable X.509
/// certificate.
pub fn load_ca_bundle(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let pem = read_pem(path, "CA bundle")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in CA bundle {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in CA bundle {}", path.display()));
    }
    for c in &certs {
        x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|e| format!("a certificate in {} does not parse: {e}", path.display()))?;
    }
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

/// A client certificate chain and its key for mTLS, as DER: checked like a listener's pair
/// (the key must belong to the certificate).
pub fn load_client_identity(cert: &Path, key: &Path) -> Result<(Vec<Vec<u8>>, Vec<u8>), String> {
    let ck = load_certified_key(cert, key)?;
    for c in &ck.cert {
        x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|e| format!("a certificate in {} does not parse: {e}", cert.display()))?;
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read_pem(key, "private key")?)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?
        .secret_der()
        .to_vec();
    Ok((ck.cert.iter().map(|c| c.to_vec()).collect(), key_der))
}

/// Reads a regular file of at most [`MAX_PEM_BYTES`] (not a device or a pipe that never ends).
fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{what} {} is not a regular file", path.display()));
    }
    if meta.len() > MAX_PEM_BYTES {
        return Err(format!("{what} {} is larger than 1 MiB", path.display()));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// A certificate and its key, as named in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The DNS names a certificate is for: its subjectAltName DNS entries, or, when it has none,
/// its subject's common name. Lower-cased; wildcards (`*.example.com`) kept as written.
pub fn names_of(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(|cn| cn.to_ascii_lowercase()),
        );
    }
    Ok(names)
}

/// The certificates of one listener, indexed by the names they are for.
#[derive(Debug)]
struct CertSet {
    /// Presented when the client sends no server name or one no certificate is for.
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored under `example.com`; it covers exactly one more label.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSet {
    /// `keys[0]` is the default; every certificate is also chosen by its own names, the first
    /// listed winning when two claim one name.
    fn new(keys: Vec<(Arc<CertifiedKey>, Vec<String>)>) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (key, names) in &keys {
            for name in names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()),
                    None => exact.entry(name.clone()),
                }
                .or_insert_with(|| key.clone());
            }
        }
        CertSet {
            default: keys[0].0.clone(),
            exact,
            wildcard,
        }
    }

    fn choose(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return &self.default;
        };
        if let Some(key) = self.exact.get(&name) {
            return key;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

/// The certificates a TLS listener presents: a default one and any number chosen by the
/// client's server name (SNI), all reloadable from their files.
#[derive(Debug)]
pub struct CertStore {
    /// `files[0]` is the default certificate.
    pub files: Vec<CertFiles>,
    current: ArcSwap<CertSet>,
    /// Hash of the files' contents now in use, to skip reloads that change nothing.
    loaded: Mutex<u64>,
}

impl CertStore {
    /// Loads the default certificate and the SNI ones; any unreadable file is an error.
    pub fn load(default: CertFiles, sni: &[CertFiles]) -> Result<Self, String> {
        let mut files = vec![default];
        files.extend(sni.iter().cloned());
        let (set, hash) = Self::read(&files)?;
        Ok(CertStore {
            files,
            current: ArcSwap::from_pointee(set),
            loaded: Mutex::new(hash),
        })
    }

    fn read(files: &[CertFiles]) -> Result<(CertSet, u64), String> {
        let mut keys = Vec::with_capacity(files.len());
        let mut bytes = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let ck = load_certified_key(&f.cert, &f.key)?;
            let names = names_of(&ck.cert[0]).map_err(|e| format!("{}: {e}", f.cert.display()))?;
            if i > 0 && names.is_empty() {
                return Err(format!(
                    "{} names no DNS host (no subjectAltName, no common name), so no client \
                     could select it by SNI",
                    f.cert.display()
                ));
            }
            keys.push((ck, names));
            bytes.extend(read_pem(&f.cert, "certificate")?);
            bytes.extend(read_pem(&f.key, "private key")?);
        }
        Ok((CertSet::new(keys), xxh3_64(&bytes)))
    }

    /// Reads the files again; `Ok(true)` when new certificates are now presented, `Ok(false)`
    /// when nothing changed. On any error every old certificate stays.
    pub fn reload(&self) -> Result<bool, String> {
        let (set, hash) = Self::read(&self.files)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if *loaded == hash {
            return Ok(false);
        }
        self.current.store(Arc::new(set));
        *loaded = hash;
        Ok(true)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().choose(hello.server_name()).clone())
    }
}

/// The listeners' rustls settings: TLS 1.2 and 1.3 (as pingora's), certificates from `store`
/// (chosen by SNI), ALPN `h2` first when `h2`, else HTTP/1.1 only.
pub fn server_config(
    store: Arc<CertStore>,
    h2: bool,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(names: &[&str]) -> (Arc<CertifiedKey>, Vec<String>) {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let der = PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let signing = any_supported_type(&der).unwrap();
        let leaf = CertificateDer::from(ck.cert.der().to_vec());
        let names = names_of(&leaf).unwrap();
        (Arc::new(CertifiedKey::new(vec![leaf], signing)), names)
    }

    #[test]
    fn names_come_from_the_subject_alt_names() {
        let (_, names) = key(&["Meet.Example.com", "*.example.org"]);
        assert_eq!(names, ["meet.example.com", "*.example.org"]);
    }

    #[test]
    fn the_server_name_chooses_exact_then_wildcard_then_default() {
        let default = key(&["default.test"]);
        let meet = key(&["meet.example.com"]);
        let wild = key(&["*.example.com"]);
        let set = CertSet::new(vec![default.clone(), meet.clone(), wild.clone()]);
        let is = |name: Option<&str>, want: &(Arc<CertifiedKey>, Vec<String>)| {
            assert!(Arc::ptr_eq(set.choose(name), &want.0), "{name:?}");
        };
        is(Some("meet.example.com"), &meet);
        is(Some("MEET.example.com."), &meet);
        is(Some("other.example.com"), &wild);
        is(Some("a.b.example.com"), &default);
        is(Some("example.com"), &default);
        is(Some("default.test"), &default);
        is(Some("unknown.test"), &default);
        is(None, &default);
    }

    #[test]
    fn the_first_listed_wins_a_shared_name() {
        let a = key(&["meet.example.com"]);
        let b = key(&["meet.example.com"]);
        let set = CertSet::new(vec![key(&["x.test"]), a.clone(), b]);
        assert!(Arc::ptr_eq(set.choose(Some("meet.example.com")), &a.0));
    }
}
