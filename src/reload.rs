//! Reloading the config: parse -> validate -> build the new runtime from the old one (pools
//! carry their state over) -> swap. A bad file changes nothing: the error is logged with its
//! positions, counted, and shown on `/admin/config`. Settings that cannot change while running
//! (listener and admin addresses, TLS files, the resolver, the shutdown timings, the UDP
//! relay, the SFU, the peers) are reported as needing a restart;
//! the rest of the change is applied. Triggers: the file watcher, SIGHUP, `POST /admin/reload`.

use crate::config::{self, Config};
use crate::runtime::Runtime;
use crate::state::Shared;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::{error, info, warn};
use xxhash_rust::xxh3::xxh3_64;

/// What `/admin/config` shows.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    /// The file the config comes from; `None` for the embedded default.
    pub path: Option<PathBuf>,
    /// xxh3 of the active config's text, hex.
    pub active_hash: String,
    pub loaded_at: SystemTime,
    /// The last failed reload: when, and why.
    pub last_error: Option<(SystemTime, String)>,
    /// Changes of the active file that wait for a restart.
    pub needs_restart: Vec<String>,
}

impl ReloadStatus {
    pub fn new(path: Option<PathBuf>, text: &str) -> Self {
        ReloadStatus {
            path,
            active_hash: hash(text),
            loaded_at: SystemTime::now(),
            last_error: None,
            needs_restart: Vec::new(),
        }
    }
}

pub fn hash(text: &str) -> String {
    format!("{:016x}", xxh3_64(text.as_bytes()))
}

/// How a reload went.
#[derive(Debug)]
pub enum Outcome {
    Applied {
        took: Duration,
        needs_restart: Vec<String>,
    },
    Unchanged,
}

/// Reloads the config file now.
pub fn reload(shared: &Shared) -> Result<Outcome, String> {
    let started = Instant::now();
    let path = {
        let status = shared.reload.lock().unwrap_or_else(|e| e.into_inner());
        status.path.clone()
    };
    let Some(path) = path else {
        return Err("running on the embedded default config: there is no file to reload".into());
    };
    let result = load(&path);
    let m = &shared.metrics;
    let mut status = shared.reload.lock().unwrap_or_else(|e| e.into_inner());
    match result {
        Err(why) => {
            m.config_reloads.with_label_values(&["error"]).inc();
            error!(file = %path.display(), "config rejected, the running config stays:\n{why}");
            status.last_error = Some((SystemTime::now(), why.clone()));
            Err(why)
        }
        Ok((_, text_hash)) if text_hash == status.active_hash => Ok(Outcome::Unchanged),
        Ok((config, text_hash)) => {
            let old = shared.runtime.load_full();
            let needs_restart = fixed_changes(&old.config, &config);
            for what in &needs_restart {
                warn!(change = %what, "this change needs a restart; the rest is applied");
            }
            let identities = match crate::proxy::upstream_tls::build(
                &config,
                &shared.upstream_tls.load(),
            ) {
                Ok(identities) => identities,
                Err(why) => {
                    m.config_reloads.with_label_values(&["error"]).inc();
                    error!(file = %path.display(), "config rejected, the running config stays: {why}");
                    status.last_error = Some((SystemTime::now(), why.clone()));
                    return Err(why);
                }
            };
            let runtime = Runtime::build_from(config, Some(&old));
            shared.upstream_tls.store(Arc::new(identities));
            shared.runtime.store(Arc::new(runtime));
            shared.generation.send_modify(|g| *g += 1);
            let took = started.elapsed();
            m.config_reloads.with_label_values(&["ok"]).inc();
            info!(file = %path.display(), hash = %text_hash, ?took, "config reloaded");
            status.active_hash = text_hash;
            status.loaded_at = SystemTime::now();
            status.needs_restart = needs_restart.clone();
            Ok(Outcome::Applied {
                took,
                needs_restart,
            })
        }
    }
}

fn load(path: &Path) -> Result<(Config, String), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the file: {e}", path.display()))?;
    let config = config::parse(&text, &path.display().to_string()).map_err(|e| e.to_string())?;
    Ok((config, hash(&text)))
}

/// Differences between two configs that only a restart applies.
pub fn fixed_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let addrs = |c: &Config| {
        c.listener
            .iter()
            .map(|l| (l.addr, l.tls.clone()))
            .collect::<Vec<_>>()
    };
    if addrs(old) != addrs(new) {
        out.push("[[listener]] addresses or TLS files".to_owned());
    }
    if old.admin.as_ref().map(|a| a.addr) != new.admin.as_ref().map(|a| a.addr) {
        out.push("admin.addr".to_owned());
    }
    if old.resolver != new.resolver {
        out.push("[resolver]".to_owned());
    }
    if old.timeouts.shutdown_grace != new.timeouts.shutdown_grace {
        out.push("timeouts.shutdown_grace".to_owned());
    }
    if old.timeouts.shutdown_delay != new.timeouts.shutdown_delay {
        out.push("timeouts.shutdown_delay".to_owned());
    }
    if old.media != new.media {
        out.push("media".to_owned());
    }
    if old.sfu != new.sfu {
        out.push("[sfu]".to_owned());
    }
    if old.peers != new.peers {
        out.push("[peers]".to_owned());
    }
    out
}

/// Reloads every TLS listener's certificates and every pool's upstream TLS material whose files
/// changed; a broken one keeps the old.
pub fn reload_certs(shared: &Shared) {
    for (pool, identity) in shared.upstream_tls.load().iter() {
        let what = format!("upstream TLS material of pool {pool}");
        count_tls_reload(
            shared,
            identity.reload(),
            &what,
            "new connections to the pool",
        );
    }
    let stores = shared
        .certs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for store in stores {
        let what = format!("TLS certificates of {}", store.files[0].cert.display());
        count_tls_reload(shared, store.reload(), &what, "new handshakes");
    }
}

/// Counts and logs one reload of TLS files: `Ok(true)` new material, `Ok(false)` unchanged.
fn count_tls_reload(shared: &Shared, result: Result<bool, String>, what: &str, used_by: &str) {
    match result {
        Ok(true) => {
            shared.metrics.tls_reloads.with_label_values(&["ok"]).inc();
            info!("new {what}: used by {used_by}");
        }
        Ok(false) => {}
        Err(e) => {
            shared
                .metrics
                .tls_reloads
                .with_label_values(&["error"])
                .inc();
            error!(error = %e, "{what} rejected, the old ones stay");
        }
    }
}

/// Watches the directories of `files` and sends on `tx` when anything there may have changed
/// one of them: its own events, a rename onto it, or a ConfigMap/Secret `..data` swap. Returns
/// the watchers (dropping them stops watching); a directory that cannot be watched is logged,
/// and SIGHUP and `POST /admin/reload` still work.
pub fn watch(
    files: &[PathBuf],
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> Vec<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let mut dirs: Vec<(PathBuf, Vec<std::ffi::OsString>)> = Vec::new();
    for f in files {
        let dir = f
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        let Some(name) = f.file_name() else { continue };
        match dirs.iter_mut().find(|(d, _)| *d == dir) {
            Some((_, names)) => names.push(name.to_owned()),
            None => dirs.push((dir, vec![name.to_owned()])),
        }
    }
    let mut watchers = Vec::new();
    for (dir, names) in dirs {
        let tx = tx.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            let ours = event.paths.iter().any(|p| {
                p.file_name()
                    .is_some_and(|f| f == "..data" || names.iter().any(|n| n == f))
            });
            if ours && !matches!(event.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot watch files; reload with SIGHUP");
                continue;
            }
        };
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                info!(dir = %dir.display(), "watching for config and certificate changes");
                watchers.push(watcher);
            }
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot watch this directory; reload with SIGHUP")
            }
        }
    }
    watchers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_only_settings_are_reported() {
        let text = "[[listener]]\naddr = \"127.0.0.1:8080\"\n";
        let old = config::parse(text, "a").unwrap();
        let mut new = old.clone();
        assert!(fixed_changes(&old, &new).is_empty());
        new.timeouts.shutdown_delay = Duration::from_secs(1);
        new.timeouts.idle = Duration::from_secs(1);
        assert_eq!(fixed_changes(&old, &new), ["timeouts.shutdown_delay"]);
        let peers =
            "[peers]\nlisten = \"127.0.0.1:7946\"\nlist = [\"127.0.0.1:7947\"]\nsecret = \"0123456789abcdef\"\n";
        let with_peers = config::parse(&format!("{text}{peers}"), "b").unwrap();
        assert_eq!(fixed_changes(&old, &with_peers), ["[peers]"]);
    }
}
