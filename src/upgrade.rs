//! Zero-downtime binary upgrade by pingora's listener hand-over, and the systemd notifications
//! that let a service manager follow it.
//!
//! By hand: start the new binary with `shardgate run --upgrade …` (it waits up to 5 s on the
//! upgrade socket), then send SIGQUIT to the old process; the old one passes its listening
//! sockets over the socket, keeps accepting for 5 s, then stops accepting and finishes what it
//! has in flight. No connection is refused in between: both processes hold the same sockets.
//!
//! Under systemd (config/shardgate.service): SIGUSR2 asks the running process to do both steps
//! itself, as nginx's USR2 does: it starts the binary now on disk with its own arguments plus
//! `--upgrade`, waits until that process listens on the upgrade socket, then hands over. The
//! successor runs inside the service's cgroup and tells systemd it is the new main process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the upgrade socket is by default (`--upgrade-socket` changes it; the old and the new
/// process must agree).
pub const DEFAULT_SOCKET: &str = "/tmp/shardgate-upgrade.sock";

/// How long a successor may take to start listening on the upgrade socket.
const SUCCESSOR_START: Duration = Duration::from_secs(10);

/// Whether a new process waits for the listeners: pingora's `--upgrade` creates the socket and
/// removes it once the hand-over is done or has timed out.
pub fn successor_waiting(socket: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket())
}

/// The binary now on disk at the path this process was started from (after a package upgrade
/// replaced it, `/proc/self/exe` names the old, deleted file).
fn binary_on_disk() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// Starts the binary on disk with this process's arguments plus `--upgrade`, and waits until
/// it listens on `socket`. Returns its process id; `Err` (the successor killed, if it still
/// runs) when it exits first or does not get there in time, and then nothing was handed over.
pub async fn start_successor(socket: &Path) -> Result<u32, String> {
    let binary = binary_on_disk()?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if !args.iter().any(|a| a == "--upgrade") {
        args.push("--upgrade".into());
    }
    // A socket left by a successor that died would look like a waiting one.
    if successor_waiting(socket) {
        let _ = std::fs::remove_file(socket);
    }
    let mut child = tokio::process::Command::new(&binary)
        .args(&args)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let pid = child.id().unwrap_or(0);
    let deadline = Instant::now() + SUCCESSOR_START;
    loop {
        if successor_waiting(socket) {
            // Reaps the successor if it ever exits while this process still runs.
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the new process ({}) exited with {status} before taking over",
                binary.display()
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            return Err(format!(
                "the new process ({}) did not listen on {} within {SUCCESSOR_START:?}",
                binary.display(),
                socket.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `state` (e.g. `READY=1`) to systemd when it started us with `Type=notify`; does
/// nothing otherwise. Failures are logged, never fatal.
pub fn notify_systemd(state: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = notify(&path, state) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// Sends `state` to the notification socket at `path` (`@name`: the abstract namespace).
fn notify(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    match path.as_encoded_bytes().strip_prefix(b"@") {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            socket.send_to(state.as_bytes(), path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_socket_counts_as_a_waiting_successor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        assert!(!successor_waiting(&path));
        std::fs::write(&path, "").unwrap();
        assert!(!successor_waiting(&path), "a plain file is not a socket");
        std::fs::remove_file(&path).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(successor_waiting(&path));
    }

    #[test]
    fn systemd_gets_the_state_on_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        notify(path.as_os_str(), "READY=1\nMAINPID=42").unwrap();
        let mut buf = [0u8; 64];
        let n = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=42");
    }
}
