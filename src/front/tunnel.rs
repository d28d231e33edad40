//! A WebSocket tunnel after the shard's 101: bytes copied both ways by one future that polls
//! both directions, reading through the worker's scratch buffer and writing at once, so an
//! idle tunnel holds no buffer; only bytes a peer did not take yet are kept. It ends when
//! either side closes, nothing moved for `timeouts.tunnel`, a side stopped taking bytes for
//! that long (whichever direction is stuck), or its room moved to another shard.

use super::io::poll_read_with;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// One side closed (or failed); the other is closed too.
    Closed,
    /// Nothing moved for the tunnel timeout.
    Quiet,
    /// A side took none of what was sent to it for the tunnel timeout.
    Stuck,
    /// Its room moved to another shard.
    Moved,
}

/// One direction: what was read and not yet written.
#[derive(Default)]
struct Half {
    pending: Vec<u8>,
    /// When the other side last took bytes of this direction (or when they were read).
    progress: Option<Instant>,
    eof: bool,
}

/// Moves what `src` has to `dst` until either would wait. `Ready(Ok(true))`: `src` ended
/// and everything was passed on; `Ready(Err)`: a side failed.
fn poll_half<A, B>(
    cx: &mut Context<'_>,
    src: &mut A,
    dst: &mut B,
    half: &mut Half,
    moved: &mut bool,
) -> Poll<io::Result<bool>>
where
    A: AsyncRead + Unpin + ?Sized,
    B: AsyncWrite + Unpin + ?Sized,
{
    loop {
        while !half.pending.is_empty() {
            match Pin::new(&mut *dst).poll_write(cx, &half.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    half.pending.drain(..n);
                    half.progress = Some(Instant::now());
                    *moved = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if half.pending.capacity() > 0 {
            half.pending = Vec::new();
        }
        if half.eof {
            return Poll::Ready(Ok(true));
        }
        let read = poll_read_with(src, cx, usize::MAX, |data, cx| {
            if data.is_empty() {
                return None;
            }
            // Write what the other side takes now; keep only the rest.
            let mut off = 0;
            while off < data.len() {
                match Pin::new(&mut *dst).poll_write(cx, &data[off..]) {
                    Poll::Ready(Ok(n)) if n > 0 => off += n,
                    Poll::Ready(Ok(_)) => return Some(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Err(e)) => return Some(Err(e)),
                    Poll::Pending => break,
                }
            }
            half.pending.extend_from_slice(&data[off..]);
            Some(Ok(()))
        });
        match read {
            Poll::Ready(Ok(None)) => half.eof = true,
            Poll::Ready(Ok(Some(Ok(())))) => {
                half.progress = Some(Instant::now());
                *moved = true;
            }
            Poll::Ready(Ok(Some(Err(e)))) | Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                // Bytes written through TLS may sit in the session until flushed.
                let _ = Pin::new(&mut *dst).poll_flush(cx);
                return Poll::Pending;
            }
        }
    }
}

/// Copies between `client` and `shard` (with bytes already read from either passed on first)
/// until the tunnel ends; says why.
pub async fn run<C, S>(
    client: &mut C,
    shard: &mut S,
    early: (Vec<u8>, Vec<u8>),
    quiet: Duration,
    close: &Notify,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let now = Instant::now();
    let mut up = Half {
        pending: early.0,
        progress: Some(now),
        eof: false,
    };
    let mut down = Half {
        pending: early.1,
        progress: Some(now),
        eof: false,
    };
    let mut last_moved = now;
    let timer = tokio::time::sleep(quiet);
    tokio::pin!(timer);
    let moved_away = close.notified();
    tokio::pin!(moved_away);
    poll_fn(|cx| {
        if moved_away.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Moved);
        }
        let mut moved = false;
        let a = poll_half(cx, client, shard, &mut up, &mut moved);
        let b = poll_half(cx, shard, client, &mut down, &mut moved);
        match (&a, &b) {
            (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => return Poll::Ready(End::Closed),
            // One side finished: a WebSocket closes as a whole.
            (Poll::Ready(Ok(true)), _) | (_, Poll::Ready(Ok(true))) => {
                return Poll::Ready(End::Closed)
            }
            _ => {}
        }
        let now = Instant::now();
        if moved {
            last_moved = now;
        }
        // The timer is set lazily: when it fires, the real deadline is worked out and, if it
        // is later, the timer is set again (no reset per message).
        if timer.as_mut().poll(cx).is_ready() {
            let stuck = [&up, &down]
                .into_iter()
                .filter(|h| !h.pending.is_empty())
                .filter_map(|h| h.progress)
                .min();
            let idle_until = last_moved + quiet;
            let stuck_until = stuck.map(|p| p + quiet);
            if stuck_until.is_some_and(|s| s <= now) {
                return Poll::Ready(End::Stuck);
            }
            if idle_until <= now {
                return Poll::Ready(End::Quiet);
            }
            let next = stuck_until.map_or(idle_until, |s| s.min(idle_until));
            timer.as_mut().reset(next);
            let _ = timer.as_mut().poll(cx);
        }
        Poll::Pending
    })
    .await
}

/// A tunnel's way to be ended from outside: its room moved to another shard.
#[derive(Default)]
pub struct Close(pub Notify);

impl crate::routing::Closer for Close {
    fn close(&self) {
        // A permit is kept if the tunnel is not waiting yet, so no close is lost.
        self.0.notify_one();
    }
}

impl Close {
    pub fn new() -> Arc<Close> {
        Arc::default()
    }
}
