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

/// The certificate a TLS listener presents, reloadable from its files.
#[derive(Debug)]
pub struct CertStore {
    pub cert: PathBuf,
    pub key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// Hash of the files' contents now in use, to skip reloads that change nothing.
    loaded: Mutex<u64>,
}

impl CertStore {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let (ck, hash) = Self::read(cert, key)?;
        Ok(CertStore {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::new(ck),
            loaded: Mutex::new(hash),
        })
    }

    fn read(cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, u64), String> {
        let ck = load_certified_key(cert, key)?;
        let mut bytes = read_pem(cert, "certificate")?;
        bytes.extend(read_pem(key, "private key")?);
        Ok((ck, xxh3_64(&bytes)))
    }

    /// Reads the files again; `Ok(true)` when a new certificate is now presented, `Ok(false)`
    /// when they did not change. On error the old certificate stays.
    pub fn reload(&self) -> Result<bool, String> {
        let (ck, hash) = Self::read(&self.cert, &self.key)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if *loaded == hash {
            return Ok(false);
        }
        self.current.store(ck);
        *loaded = hash;
        Ok(true)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
