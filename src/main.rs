//! The `shardgate` command: `run` the edge, `check` config files.

use anyhow::Context;
use clap::{Parser, Subcommand};
use shardgate::config::{self, ConfigErrors};
use std::path::PathBuf;
use std::process::ExitCode;

/// Proxying allocates and frees many small buffers per request; glibc's malloc spent about a
/// tenth of the CPU of a load test on that (perf, tests/perf/http_vs_haproxy.sh). jemalloc, with
/// its background thread on (the crate's `background_threads` feature), gives the pages of a
/// flood back within its 10 s decay even when no request follows; mimalloc, as fast here, kept
/// them until later allocations on the same thread purged them (README "Sizing").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "shardgate",
    version,
    about = "Edge proxy and load balancer for real-time conferencing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge (without --config: the embedded default, a page on 127.0.0.1:8080).
    Run {
        /// The TOML config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Take the listening sockets over from a running shardgate (send it SIGQUIT within
        /// 5 s) instead of binding them: a zero-downtime binary upgrade.
        #[arg(long)]
        upgrade: bool,
        /// The socket the listeners are handed over on; the old and new process must agree.
        #[arg(long, default_value = shardgate::upgrade::DEFAULT_SOCKET)]
        upgrade_socket: PathBuf,
    },
    /// Check config files: exit 0 when all are valid, else print every error and exit 1.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the per-pod UDP NodePort Services of a JVB StatefulSet (a JSON List for
    /// `kubectl apply -f -`): from --name/--namespace/--replicas/--base, or from the
    /// StatefulSet's JSON on stdin (`kubectl get sts shard-0-jvb -o json | shardgate nodeports -`).
    Nodeports {
        /// `-`: read the StatefulSet JSON from stdin.
        #[arg(conflicts_with_all = ["name", "replicas"])]
        stdin: Option<String>,
        /// The StatefulSet's name.
        #[arg(long, required_unless_present = "stdin")]
        name: Option<String>,
        #[arg(long, default_value = "default")]
        namespace: String,
        #[arg(long, required_unless_present = "stdin")]
        replicas: Option<u32>,
        /// The first pod's UDP port (pod i gets base + i); with stdin, overrides the
        /// shardgate.io/media-base-port annotation.
        #[arg(long)]
        base: Option<u16>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { files } => check(&files),
        Command::Nodeports {
            stdin,
            name,
            namespace,
            replicas,
            base,
        } => match nodeports(stdin, name, namespace, replicas, base) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shardgate nodeports: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config,
            upgrade,
            upgrade_socket,
        } => match run(
            config,
            shardgate::server::Start {
                upgrade,
                upgrade_socket,
            },
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shardgate: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn nodeports(
    stdin: Option<String>,
    name: Option<String>,
    namespace: String,
    replicas: Option<u32>,
    base: Option<u16>,
) -> Result<(), String> {
    use shardgate::relay::nodeports::JvbSet;
    let set = match stdin.as_deref() {
        Some("-") => {
            let sts: serde_json::Value = serde_json::from_reader(std::io::stdin().lock())
                .map_err(|e| format!("stdin is not a StatefulSet's JSON: {e}"))?;
            JvbSet::from_statefulset(&sts, base)?
        }
        Some(other) => return Err(format!("unexpected argument {other:?}; use - for stdin")),
        None => {
            let set = JvbSet {
                name: name.ok_or("--name is required")?,
                namespace,
                replicas: replicas.ok_or("--replicas is required")?,
                base: base.ok_or("--base is required (the first pod's UDP port)")?,
            };
            set.port(set.replicas.saturating_sub(1))?;
            set
        }
    };
    let list = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": set.services(&[])?,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&list).expect("JSON values serialize")
    );
    Ok(())
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        match config::load_file(file) {
            Ok(config) => {
                println!("{}: ok", file.display());
                let ephemeral = config::media::ephemeral_ports();
                for warning in config::media::warnings(&config.media, ephemeral) {
                    eprintln!("{}: warning: {warning}", file.display());
                }
            }
            Err(errors) => {
                ok = false;
                eprintln!("{errors}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(path: Option<PathBuf>, start: shardgate::server::Start) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,pingora_core=warn,pingora_proxy=warn".into()),
        )
        .init();
    // Memory that follows connections, not huge pages: where transparent huge pages are on
    // for every mapping (`always`, many kernels' default), the allocator's arenas were backed
    // by 2 MiB pages as they grew, and RSS with them (see README "Sizing").
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off");
    }
    // Every tunnel holds two sockets: raise the soft file limit to the hard one, as nginx's
    // worker_rlimit_nofile and HAProxy's automatic maxconn do.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(nofile = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    let (text, name) = match &path {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            config::DEFAULT_CONFIG.to_owned(),
            "<embedded default>".to_owned(),
        ),
    };
    let config = config::parse(&text, &name)
        .map_err(|e: ConfigErrors| anyhow::anyhow!("invalid config:\n{e}"))?;
    let status = shardgate::reload::ReloadStatus::new(path.clone(), &text);
    tracing::info!(
        config = %path.as_ref().map_or("<embedded default>".into(), |p| p.display().to_string()),
        "starting"
    );
    shardgate::server::run(config, status, start)
        .map_err(anyhow::Error::msg)
        .context("cannot start")
}
