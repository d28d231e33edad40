//! TLS towards a pool's members: the CA bundle their certificates must chain to and the client
//! certificate presented to them (mTLS, e.g. a SPIFFE SVID that spiffe-helper rotates). The
//! files are re-read on every reload trigger; a rotation that does not load keeps the material
//! in use. Kept-alive connections are pooled by the material they were opened with, so
//! connections opened after a rotation present the new one and idle ones with the old one age
//! out.

use crate::config::{Config, UpstreamTls, Verify};
use arc_swap::ArcSwap;
use pingora::prelude::HttpPeer;
use pingora::protocols::tls::CaType;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use xxhash_rust::xxh3::xxh3_64;

/// What a pool's connections present and trust right now.
struct Material {
    ca: Option<Arc<CaType>>,
    client: Option<Arc<CertKey>>,
}

/// One pool's TLS settings and the material loaded from its files.
pub struct Identity {
    pub config: UpstreamTls,
    material: ArcSwap<Material>,
    /// Hash of the files' contents now in use, to skip reloads that change nothing.
    loaded: Mutex<u64>,
}

impl Identity {
    pub fn load(config: &UpstreamTls) -> Result<Self, String> {
        let (material, hash) = read(config)?;
        Ok(Identity {
            config: config.clone(),
            material: ArcSwap::from_pointee(material),
            loaded: Mutex::new(hash),
        })
    }

    /// Reads the files again: `Ok(true)` when new material is in use, `Ok(false)` when nothing
    /// changed; on error the old material stays.
    pub fn reload(&self) -> Result<bool, String> {
        let (material, hash) = read(&self.config)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if *loaded == hash {
            return Ok(false);
        }
        self.material.store(Arc::new(material));
        *loaded = hash;
        Ok(true)
    }

    /// Names the material in use: kept-alive connections are pooled under it, so those
    /// opened before a rotation are not used after it.
    pub fn material_hash(&self) -> u64 {
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The files to watch.
    pub fn files(&self) -> Vec<PathBuf> {
        let c = &self.config;
        [&c.ca, &c.client_cert, &c.client_key]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// A peer for `addr` that speaks TLS as configured.
    pub fn peer(&self, addr: std::net::SocketAddr) -> HttpPeer {
        let c = &self.config;
        let mut peer = HttpPeer::new(addr, true, c.server_name.clone().unwrap_or_default());
        peer.options.verify_cert = c.verify != Verify::None;
        peer.options.verify_hostname = c.verify == Verify::Full;
        let material = self.material.load();
        peer.options.ca = material.ca.clone();
        peer.client_cert_key = material.client.clone();
        peer
    }
}

fn read(config: &UpstreamTls) -> Result<(Material, u64), String> {
    let mut bytes = Vec::new();
    let ca = match &config.ca {
        Some(path) => {
            let certs = crate::tls::load_ca_bundle(path)?;
            certs.iter().for_each(|c| bytes.extend_from_slice(c));
            let wrapped: Vec<WrappedX509> = certs
                .into_iter()
                .map(|der| WrappedX509::new(der, parse_x509))
                .collect();
            Some(Arc::<CaType>::from(wrapped))
        }
        None => None,
    };
    let client = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            let (chain, key) = crate::tls::load_client_identity(cert, key)?;
            chain.iter().for_each(|c| bytes.extend_from_slice(c));
            bytes.extend_from_slice(&key);
            Some(Arc::new(CertKey::new(chain, key)))
        }
        _ => None,
    };
    Ok((Material { ca, client }, xxh3_64(&bytes)))
}

/// The identities of a config's TLS pools, by pool name. A pool whose TLS settings did not
/// change keeps its identity from `old` (and so its rotation state).
pub fn build(
    config: &Config,
    old: &HashMap<String, Arc<Identity>>,
) -> Result<HashMap<String, Arc<Identity>>, String> {
    let mut out = HashMap::new();
    for pool in &config.pool {
        let Some(tls) = &pool.tls else { continue };
        let identity = match old.get(&pool.name) {
            Some(o) if o.config == *tls => o.clone(),
            _ => {
                Arc::new(Identity::load(tls).map_err(|e| format!("pool {}: TLS: {e}", pool.name))?)
            }
        };
        out.insert(pool.name.clone(), identity);
    }
    Ok(out)
}
