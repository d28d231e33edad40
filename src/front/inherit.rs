//! Listening sockets shared with pingora's upgrade table ([`pingora::server::ListenFds`]): the
//! table maps each listen address to a descriptor number, which a binary upgrade sends to the
//! next process. A listener found there (handed over by the previous process) is taken over;
//! otherwise it is bound, and entered for the next upgrade.

use pingora::server::ListenFds;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// The kernel's queue of accepted-but-not-yet-taken connections (pingora's value).
const BACKLOG: i32 = 65535;

/// The listener for `addr`: the one in `fds` if the previous process handed it over, else a
/// new one (entered in `fds`, when there is a table, for the next upgrade).
pub fn listener(fds: Option<&ListenFds>, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let key = addr.to_string();
    let Some(fds) = fds else {
        return bind(addr);
    };
    let mut table = fds.lock();
    let listener = match table.get(&key).copied() {
        Some(fd) => {
            let listener = std::net::TcpListener::from(take(fd)?);
            if listener.local_addr()? != addr {
                return Err(io::Error::other(format!(
                    "the socket handed over for {addr} listens on {}",
                    listener.local_addr()?
                )));
            }
            // The table's number now names this listener (its own copy was closed by `take`).
            listener
        }
        None => bind(addr)?,
    };
    table.add(key, listener.as_raw_fd());
    Ok(listener)
}

fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Owns the descriptor number `fd` from the upgrade table: a copy of it is made by passing it
/// to this process over a socket pair (SCM_RIGHTS, allowed everywhere, unlike `pidfd_getfd`
/// under container seccomp profiles), which yields an owned descriptor without `unsafe`; the
/// number itself is then closed.
fn take(fd: RawFd) -> io::Result<OwnedFd> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let (tx, rx) = std::os::unix::net::UnixDatagram::pair()?;
    sendmsg::<()>(
        tx.as_raw_fd(),
        &[io::IoSlice::new(&[0])],
        &[ControlMessage::ScmRights(&[fd])],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| io::Error::other(format!("handed-over descriptor {fd}: {e}")))?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    rustix::net::recvmsg(
        &rx,
        &mut [io::IoSliceMut::new(&mut byte)],
        &mut control,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )?;
    let owned = control
        .drain()
        .find_map(|m| match m {
            rustix::net::RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
            _ => None,
        })
        .ok_or_else(|| io::Error::other(format!("descriptor {fd} did not come through")))?;
    // The number from the table is not owned by anything else in this process: close it, so
    // that the listener closes when `owned` does.
    nix::unistd::close(fd).map_err(io::Error::from)?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn new_table() -> ListenFds {
        Arc::new(pingora::server::Fds::new().into())
    }

    #[test]
    fn binds_and_enters_the_listener_then_a_successor_takes_it_over() {
        let table = new_table();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let first = listener(Some(&table), addr).unwrap();
        let bound = first.local_addr().unwrap();
        assert_eq!(table.lock().get("127.0.0.1:0"), Some(&first.as_raw_fd()));

        // What a successor finds: the bound address entered with a copy of the descriptor.
        let successor = new_table();
        let copy = first.try_clone().unwrap();
        let copy_fd = copy.as_raw_fd();
        // The table owns the number from here on (as after pingora's receive).
        let raw = std::os::fd::IntoRawFd::into_raw_fd(copy);
        successor.lock().add(bound.to_string(), raw);
        let taken = listener(Some(&successor), bound).unwrap();
        assert_eq!(taken.local_addr().unwrap(), bound);
        assert_eq!(
            successor.lock().get(&bound.to_string()),
            Some(&taken.as_raw_fd())
        );
        assert_ne!(
            taken.as_raw_fd(),
            copy_fd,
            "the table's number was replaced"
        );

        // Both accept on the same socket.
        drop(first);
        let client = std::net::TcpStream::connect(bound).unwrap();
        let (served, _) = taken.accept().unwrap();
        assert_eq!(served.peer_addr().unwrap(), client.local_addr().unwrap());
    }

    #[test]
    fn a_bad_number_in_the_table_is_an_error() {
        let table = new_table();
        table.lock().add("127.0.0.1:9".to_owned(), 1_000_000);
        let err = listener(Some(&table), "127.0.0.1:9".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("1000000"), "{err}");
    }
}
