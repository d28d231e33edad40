//! Assembles the pingora server from a validated config: the proxy service on every
//! listener (TLS by rustls with h2 and HTTP/1.1 by ALPN), the admin listener, and the
//! housekeeping task that keeps rooms with open tunnels in the stick tables.

use crate::admin::Admin;
use crate::config::Config;
use crate::discovery::health;
use crate::discovery::resolver::{self, Plan};
use crate::front::limit::Limit;
use crate::front::listen::{Endpoint, Listeners, LINGER};
use crate::front::shards::Shards;
use crate::front::Front;
use crate::proxy::Edge;
use crate::relay::targets::ZoneTargets;
use crate::reload::ReloadStatus;
use crate::routing::Pool;
use crate::runtime::Runtime;
use crate::state::Shared;
use crate::tls::{CertFiles, CertStore};
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// How the process comes up: binding its listeners, or taking them over from a running one.
pub struct Start {
    /// Take the listening sockets over from the process that gets SIGQUIT.
    pub upgrade: bool,
    pub upgrade_socket: std::path::PathBuf,
}

/// Builds and runs the server; returns when it shuts down.
pub fn run(config: Config, status: ReloadStatus, start: Start) -> Result<(), String> {
    let conf = ServerConf {
        upgrade_sock: start.upgrade_socket.to_string_lossy().into_owned(),
        threads: threads(),
        // After SIGTERM and the listeners closing, open tunnels are kept this long (the process
        // exits sooner when nothing is left in flight: see Signals).
        grace_period_seconds: Some(config.timeouts.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        ..Default::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade: start.upgrade,
        ..Default::default()
    };
    let listeners = config.listener.clone();
    let admin_addr = config.admin.as_ref().map(|a| a.addr);
    if !start.upgrade {
        // pingora waits and retries on an address in use (for upgrades); a fresh start should
        // instead say at once which address is taken.
        for addr in listeners.iter().map(|l| l.addr).chain(admin_addr) {
            std::net::TcpListener::bind(addr)
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        }
    }
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    if start.upgrade {
        info!(socket = %start.upgrade_socket.display(), "waiting for the listeners of the running shardgate (send it SIGQUIT)");
    }
    server.bootstrap();
    let shutdown_delay = config.timeouts.shutdown_delay;
    let h2_idle = config.timeouts.keepalive;
    let media = config.media.clone();
    let sfu_config = config.sfu.clone();
    let peers_config = config.peers.clone();
    for warning in crate::config::media::warnings(&media, crate::config::media::ephemeral_ports()) {
        tracing::warn!("{warning}");
    }
    let zone_targets: Vec<Arc<ZoneTargets>> = media
        .zone
        .iter()
        .map(|z| Arc::new(ZoneTargets::new(z)))
        .collect();
    let identities = crate::proxy::upstream_tls::build(&config, &std::collections::HashMap::new())?;
    let shared = Shared::new(Runtime::build(config), status);
    shared.upstream_tls.store(Arc::new(identities));
    crate::relay::driver::start(&media, shared.clone(), &zone_targets)?;
    if let Some(peers) = &peers_config {
        let tx = crate::peers::driver::start(peers, &shared)?;
        let _ = shared.peers.set(tx);
    }
    if let Some(sfu) = &sfu_config {
        let handle = crate::sfu::driver::start(sfu, shared.clone())?;
        let _ = shared.sfu.set(crate::sfu::http::SfuService::new(handle));
    }
    let signal_shared = shared.clone();

    let limit = Limit::new();
    let shards = Arc::new(Shards::default());
    let mut http = pingora::proxy::http_proxy(&server.configuration, Edge::new(shared.clone()));
    // An HTTP/2 connection with no stream open is closed after the keep-alive timeout, as an
    // idle HTTP/1.1 one is (pingora's default keeps it for ever). Set at start: a reload that
    // changes `timeouts.keepalive` applies to HTTP/2 after a restart.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(h2_idle);
    http.server_options = Some(options);
    let front = Front::new(shared.clone(), http, limit.clone(), shards.clone());
    let mut endpoints = Vec::new();
    for l in &listeners {
        let tls = match &l.tls {
            None => None,
            Some(tls) => {
                let files = |cert: &std::path::Path, key: &std::path::Path| CertFiles {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                };
                let sni: Vec<CertFiles> = tls.sni.iter().map(|p| files(&p.cert, &p.key)).collect();
                let store = Arc::new(CertStore::load(files(&tls.cert, &tls.key), &sni)?);
                shared
                    .certs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(store.clone());
                let config = crate::tls::server_config(store, tls.h2)
                    .map_err(|e| format!("TLS for {}: {e}", l.addr))?;
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
            }
        };
        endpoints.push(Endpoint { addr: l.addr, tls });
        info!(addr = %l.addr, tls = l.tls.is_some(), "listening");
    }
    server.add_service(Listeners::new(Arc::new(front), endpoints));

    if let Some(addr) = admin_addr {
        let mut admin = Service::new("shardgate admin".to_owned(), Admin::new(shared.clone()));
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
        info!(%addr, "admin listening");
    }
    server.add_service(background_service(
        "housekeeping",
        Housekeeping {
            shared: shared.clone(),
            shards,
            limit,
        },
    ));
    server.add_service(background_service(
        "discovery",
        Discovery {
            shared: shared.clone(),
        },
    ));
    server.add_service(background_service(
        "media targets",
        MediaTargets {
            shared: shared.clone(),
            zones: media.zone.iter().cloned().zip(zone_targets).collect(),
        },
    ));
    server.add_service(background_service("reloader", Reloader { shared }));
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(Signals {
            shared: signal_shared,
            delay: shutdown_delay,
            upgrade_socket: start.upgrade_socket,
        }),
    });
    Ok(())
}

/// Worker threads: `SHARDGATE_THREADS`, else one per CPU.
fn threads() -> usize {
    std::env::var("SHARDGATE_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Refreshes the stick entries of rooms with open tunnels, a few times per stick TTL; closes
/// kept-alive shard connections that expired; keeps the connection gauge current.
struct Housekeeping {
    shared: Arc<Shared>,
    shards: Arc<Shards>,
    limit: Arc<Limit>,
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Serving: tell systemd (Type=notify), naming this process as the main one, which is
        // how it follows a hand-over to a successor (see `crate::upgrade`).
        crate::upgrade::notify_systemd(&format!("READY=1\nMAINPID={}", std::process::id()));
        loop {
            let runtime = self.shared.runtime.load_full();
            let min_ttl = runtime
                .pools
                .iter()
                .map(|p| p.stick_ttl())
                .min()
                .unwrap_or(Duration::from_secs(60));
            let tick = (min_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => return,
            }
            for p in &runtime.pools {
                p.refresh_open_rooms();
            }
            self.shards.sweep();
            self.shared
                .metrics
                .connections_open
                .set(self.limit.count() as i64);
        }
    }
}

/// Runs, per pool, its DNS discovery loop, its health checks and its agent checks; after a
/// reload, starts them for new pools and stops those of pools that left (a pool carried over
/// unchanged keeps its tasks).
struct Discovery {
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for Discovery {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut generation = self.shared.generation.subscribe();
        let cfg = self.shared.runtime.load().config.resolver.clone();
        let mut resolver = None;
        // Pool (by address) -> its tasks.
        let mut running: Vec<(Arc<Pool>, Vec<tokio::task::JoinHandle<()>>)> = Vec::new();
        loop {
            let runtime = self.shared.runtime.load_full();
            running.retain(|(pool, tasks)| {
                let keep = runtime.pools.iter().any(|p| Arc::ptr_eq(p, pool));
                if !keep {
                    tasks.iter().for_each(|t| t.abort());
                }
                keep
            });
            for (c, pool) in runtime.config.pool.iter().zip(&runtime.pools) {
                if running.iter().any(|(p, _)| Arc::ptr_eq(p, pool)) {
                    continue;
                }
                let mut tasks = Vec::new();
                if let Some(h) = &c.health {
                    let task = health::run_health(
                        self.shared.clone(),
                        pool.clone(),
                        h.clone(),
                        shutdown.clone(),
                    );
                    tasks.push(tokio::spawn(task));
                }
                if let Some(a) = &c.agent {
                    tasks.push(tokio::spawn(health::run_agent(
                        pool.clone(),
                        a.clone(),
                        shutdown.clone(),
                    )));
                }
                if let Some(plan) = Plan::of(c) {
                    if resolver.is_none() {
                        match resolver::build(&cfg) {
                            Ok(r) => resolver = Some(r),
                            Err(e) => {
                                tracing::error!(error = %e, "discovery disabled: pools that use DNS stay empty")
                            }
                        }
                    }
                    if let Some(r) = &resolver {
                        info!(pool = %pool.name, ?plan, "discovering");
                        tasks.push(tokio::spawn(resolver::run_pool(
                            self.shared.clone(),
                            pool.clone(),
                            plan,
                            r.clone(),
                            cfg.clone(),
                            shutdown.clone(),
                        )));
                    }
                }
                running.push((pool.clone(), tasks));
            }
            drop(runtime);
            tokio::select! {
                changed = generation.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Reloads the config when its file changes (including a Kubernetes ConfigMap's `..data`
/// symlink swap and editors that write a new file and rename it) and on SIGHUP.
struct Reloader {
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let path = self
            .shared
            .reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .path
            .clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        // Watch the directories: files may be replaced rather than written. A reload can name
        // other upstream TLS files: the watch follows.
        let mut files = self.watched_files(path.as_deref());
        let mut _watchers = crate::reload::watch(&files, tx.clone());
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        loop {
            tokio::select! {
                Some(()) = rx.recv() => {
                    // Debounce: editors and ConfigMap updates come as bursts of events.
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    while rx.try_recv().is_ok() {}
                }
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    info!("SIGHUP: reloading the config");
                }
                _ = shutdown.changed() => return,
            }
            let _ = crate::reload::reload(&self.shared);
            crate::reload::reload_certs(&self.shared);
            let now = self.watched_files(path.as_deref());
            if now != files {
                files = now;
                _watchers = crate::reload::watch(&files, tx.clone());
            }
        }
    }
}

impl Reloader {
    /// The config file, the listeners' certificates and the pools' upstream TLS files.
    fn watched_files(&self, config: Option<&std::path::Path>) -> Vec<std::path::PathBuf> {
        let mut files: Vec<std::path::PathBuf> = config.into_iter().map(|p| p.to_owned()).collect();
        for store in self
            .shared
            .certs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            for f in &store.files {
                files.push(f.cert.clone());
                files.push(f.key.clone());
            }
        }
        for identity in self.shared.upstream_tls.load().values() {
            files.extend(identity.files());
        }
        files.sort();
        files.dedup();
        files
    }
}

/// Keeps the media relay's targets resolved (see `crate::relay::targets`).
struct MediaTargets {
    shared: Arc<Shared>,
    zones: Vec<(crate::config::Zone, Arc<ZoneTargets>)>,
}

#[async_trait]
impl BackgroundService for MediaTargets {
    async fn start(&self, shutdown: ShutdownWatch) {
        if self.zones.is_empty() {
            return;
        }
        let cfg = self.shared.runtime.load().config.resolver.clone();
        let resolver = match resolver::build(&cfg) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "no DNS resolver: relay targets by name stay unresolved");
                return;
            }
        };
        let tasks: Vec<_> = self
            .zones
            .iter()
            .map(|(zone, targets)| {
                tokio::spawn(crate::relay::targets::run(
                    zone.clone(),
                    targets.clone(),
                    resolver.clone(),
                    cfg.clone(),
                    self.shared.clone(),
                    shutdown.clone(),
                ))
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// How the process ends. SIGTERM: `/readyz` turns 503 at once, the listeners keep accepting for
/// `shutdown_delay` (load balancers notice), then pingora stops accepting, lets requests finish
/// and keeps open tunnels up to `shutdown_grace`. SIGINT: exit at once. SIGQUIT: hand the
/// listeners to a new process started with `--upgrade` (pingora's graceful upgrade); ignored,
/// with an error, when none is waiting, since pingora would stop serving anyway. SIGUSR2: start
/// that new process from the binary on disk, then hand over (see `crate::upgrade`).
struct Signals {
    shared: Arc<Shared>,
    delay: Duration,
    upgrade_socket: std::path::PathBuf,
}

impl Signals {
    /// After the hand-over pingora keeps accepting for [`HANDOVER_ACCEPT`], then stops; from
    /// then on this process exits once nothing is in flight.
    fn handing_over(&self) -> ShutdownSignal {
        exit_when_idle(self.shared.clone(), HANDOVER_ACCEPT);
        ShutdownSignal::GracefulUpgrade
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit), Ok(mut usr2)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
            signal(SignalKind::user_defined2()),
        ) else {
            tracing::error!("cannot listen for signals; stopping");
            return ShutdownSignal::FastShutdown;
        };
        let socket = &self.upgrade_socket;
        loop {
            tokio::select! {
                _ = term.recv() => {
                    self.shared.shutting_down.store(true, std::sync::atomic::Ordering::Relaxed);
                    info!(delay = ?self.delay, "SIGTERM: /readyz answers 503; listeners close after the delay");
                    return tokio::select! {
                        _ = tokio::time::sleep(self.delay) => {
                            exit_when_idle(self.shared.clone(), Duration::ZERO);
                            ShutdownSignal::GracefulTerminate
                        }
                        _ = int.recv() => ShutdownSignal::FastShutdown,
                    };
                }
                _ = int.recv() => return ShutdownSignal::FastShutdown,
                _ = quit.recv() => {
                    if crate::upgrade::successor_waiting(socket) {
                        info!(socket = %socket.display(), "SIGQUIT: handing the listeners to the new process");
                        return self.handing_over();
                    }
                    tracing::error!(socket = %socket.display(), "SIGQUIT: no new process is waiting on the upgrade socket (start `shardgate run --upgrade` first); still serving");
                }
                _ = usr2.recv() => {
                    info!("SIGUSR2: starting the binary on disk to take over");
                    match crate::upgrade::start_successor(socket).await {
                        Ok(pid) => {
                            info!(pid, "new process waiting; handing the listeners over");
                            return self.handing_over();
                        }
                        Err(e) => tracing::error!(error = %e, "upgrade abandoned; still serving"),
                    }
                }
            }
        }
    }
}

/// How long pingora keeps accepting after handing its listeners to a new process.
const HANDOVER_ACCEPT: Duration = Duration::from_secs(5);

/// Once the listeners have closed (`after` from now) and connections accepted before had their
/// [`LINGER`], exits as soon as no request or tunnel is in flight, rather than sitting out the
/// whole `shutdown_grace` (pingora's grace period is a fixed wait).
fn exit_when_idle(shared: Arc<Shared>, after: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(after + LINGER + Duration::from_millis(200));
        loop {
            if shared.in_flight.load(std::sync::atomic::Ordering::Relaxed) <= 0 {
                info!("nothing in flight: exiting");
                std::process::exit(0);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}
