//! Active health checks and agent checks of a pool's shards (I/O on tokio). Each round checks
//! every shard's addresses at once; a round is good when any address passes. The decisions
//! (rise/fall counting, agent words) live in `Shard::record_health` and `agent::parse_agent`.

use super::agent::parse_agent;
use crate::config::{Agent, Health};
use crate::routing::{Pool, Shard};
use crate::state::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch::Receiver;
use tokio::task::JoinSet;
use tracing::{info, warn};

/// Runs `pool`'s active health checks until shutdown.
pub async fn run_health(
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    cfg: Health,
    mut shutdown: Receiver<bool>,
) {
    loop {
        let members = pool.members.load_full();
        let mut round = JoinSet::new();
        for shard in &members.shards {
            let (shard, cfg) = (shard.clone(), cfg.clone());
            round.spawn(async move {
                let addrs = shard.addrs().to_vec();
                let mut ok = false;
                for addr in addrs {
                    if check(addr, &cfg).await.is_ok() {
                        ok = true;
                        break;
                    }
                }
                (shard, ok)
            });
        }
        while let Some(Ok((shard, ok))) = round.join_next().await {
            let result = if ok { "ok" } else { "fail" };
            shared
                .metrics
                .health_checks
                .with_label_values(&[&pool.name, result])
                .inc();
            report(&pool, &shard, shard.record_health(ok, cfg.rise, cfg.fall));
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Logs a shard whose health flipped.
pub fn report(pool: &Pool, shard: &Shard, flip: Option<bool>) {
    match flip {
        Some(false) => {
            warn!(pool = %pool.name, shard = %shard.name, "health check failed: shard down")
        }
        Some(true) => {
            info!(pool = %pool.name, shard = %shard.name, "health check passes again: shard up")
        }
        None => {}
    }
}

/// One check of one address: a TCP connect, or an HTTP GET expecting `cfg.expect`.
async fn check(addr: SocketAddr, cfg: &Health) -> Result<(), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let Some(path) = &cfg.path else { return Ok(()) };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: shardgate-health-check\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let read = stream
                .read(&mut head[n..])
                .await
                .map_err(|e| e.to_string())?;
            if read == 0 {
                return Err("closed before a status line".to_owned());
            }
            n += read;
        }
        let status = std::str::from_utf8(&head[..n])
            .ok()
            .and_then(|line| line.strip_prefix("HTTP/1."))
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse::<u16>().ok());
        match status {
            Some(code) if code == cfg.expect => Ok(()),
            other => Err(format!("status {other:?}, expected {}", cfg.expect)),
        }
    };
    tokio::time::timeout(cfg.timeout, attempt)
        .await
        .map_err(|_| format!("no answer within {:?}", cfg.timeout))?
}

/// Runs `pool`'s agent checks until shutdown. An agent that does not answer changes nothing.
pub async fn run_agent(pool: Arc<Pool>, cfg: Agent, mut shutdown: Receiver<bool>) {
    loop {
        let members = pool.members.load_full();
        let mut round = JoinSet::new();
        for shard in &members.shards {
            let Some(ip) = shard.addrs().first().map(|a| a.ip()) else {
                continue;
            };
            let (shard, timeout, port) = (shard.clone(), cfg.timeout, cfg.port);
            round.spawn(async move {
                let reply = tokio::time::timeout(timeout, ask(SocketAddr::new(ip, port))).await;
                (shard, reply.ok().and_then(Result::ok))
            });
        }
        while let Some(Ok((shard, line))) = round.join_next().await {
            let Some(line) = line else { continue };
            let reply = parse_agent(&line);
            let before = (shard.agent_state(), shard.weight());
            shard.set_agent(reply.state, reply.percent);
            let after = (shard.agent_state(), shard.weight());
            if before != after {
                info!(pool = %pool.name, shard = %shard.name, agent = line.trim(), state = ?after.0, weight = after.1, "agent changed the shard");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Reads the agent's one line (at most 512 bytes).
async fn ask(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 128];
    while buf.len() < 512 && !buf.contains(&b'\n') {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.truncate(512);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
