//! Requests of a room that a shard may hold (BOSH long-polls, an upgrade with a body), kept in
//! the room's registry so that, when the room moves to another shard, they are ended the way a
//! restart of their shard would end them: the client's connection is shut down, and the client
//! asks again, reaching the shard the room is on now.
//!
//! The socket is the client's HTTP/1.1 connection, which pingora keeps open until after the
//! request's `logging`; there the request is marked finished under the same lock that a close
//! takes, so a close never reaches a socket (or a number reused for another) after that.

use crate::routing::Closer;
use pingora::proxy::Session;
use std::os::unix::io::RawFd;
use std::sync::Mutex;

pub struct HeldRequest {
    fd: RawFd,
    finished: Mutex<bool>,
}

impl HeldRequest {
    /// The request `session` is serving, if its client's connection can be ended on its own
    /// (HTTP/1.1; an HTTP/2 connection carries other requests too).
    pub fn of(session: &Session) -> Option<HeldRequest> {
        let fd = session.as_ref().stream()?.id();
        Some(HeldRequest {
            fd,
            finished: Mutex::new(false),
        })
    }

    /// The request ended (its connection is still open): closes are ignored from now on.
    pub fn finish(&self) {
        *self.finished.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

impl Closer for HeldRequest {
    fn close(&self) {
        let finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        if !*finished {
            // Wakes pingora's loop, which sees the client gone and ends the request.
            let _ = nix::sys::socket::shutdown(self.fd, nix::sys::socket::Shutdown::Both);
        }
    }
}
