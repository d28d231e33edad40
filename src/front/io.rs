//! Reads through the worker thread's scratch buffer, so that a connection waiting for bytes
//! holds no buffer of its own: only bytes that arrived and could not be passed on yet are
//! kept, in a buffer sized to them. Writes and reads under deadlines.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Size of each worker thread's scratch buffer: the most one read takes.
pub const SCRATCH: usize = 32 * 1024;

thread_local! {
    static BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Runs `f` (given the context again) on what one read of `src` returned now (`Ready(Ok(&[]))`: end of stream), using
/// the thread's scratch buffer, at most `max` bytes.
pub fn poll_read_with<S, T>(
    src: &mut S,
    cx: &mut Context<'_>,
    max: usize,
    f: impl FnOnce(&[u8], &mut Context<'_>) -> T,
) -> Poll<io::Result<T>>
where
    S: AsyncRead + Unpin + ?Sized,
{
    BUF.with_borrow_mut(|scratch| {
        let len = max.clamp(1, scratch.len());
        let mut rb = ReadBuf::new(&mut scratch[..len]);
        match Pin::new(src).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(f(rb.filled(), cx))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}

/// Appends what `src` has to `buf` (at most `max` bytes); 0 at the end of the stream.
pub async fn read_some<S>(src: &mut S, buf: &mut Vec<u8>, max: usize) -> io::Result<usize>
where
    S: AsyncRead + Unpin + ?Sized,
{
    poll_fn(|cx| {
        poll_read_with(src, cx, max, |data, _| {
            buf.extend_from_slice(data);
            data.len()
        })
    })
    .await
}

/// [`read_some`] that fails with `TimedOut` after `limit`.
pub async fn read_some_within<S>(
    src: &mut S,
    buf: &mut Vec<u8>,
    max: usize,
    limit: Duration,
) -> io::Result<usize>
where
    S: AsyncRead + Unpin + ?Sized,
{
    tokio::time::timeout(limit, read_some(src, buf, max))
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// Writes all of `data`, failing with `TimedOut` when the peer takes none of it for `limit`
/// (a peer that stops reading is let go, not waited for).
pub async fn write_within<S>(dst: &mut S, data: &[u8], limit: Duration) -> io::Result<()>
where
    S: AsyncWrite + Unpin + ?Sized,
{
    let mut rest = data;
    while !rest.is_empty() {
        let n = tokio::time::timeout(limit, dst.write(rest))
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        rest = &rest[n..];
    }
    tokio::time::timeout(limit, dst.flush())
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// Whether an idle connection is still open and silent: a read now would wait. (A shard that
/// closed a kept-alive connection, or sent bytes nobody asked for, makes it unusable.)
pub fn is_quiet<S: AsyncRead + Unpin + ?Sized>(conn: &mut S) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut byte = [0u8; 1];
    let mut rb = ReadBuf::new(&mut byte);
    matches!(Pin::new(conn).poll_read(&mut cx, &mut rb), Poll::Pending)
}
