//! Loading TLS certificates and keys (PEM) into rustls, with errors that name the file.

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;

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
