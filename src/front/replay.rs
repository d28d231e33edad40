//! A client connection handed to pingora's HTTP service (HTTP/2, and the SFU's routes over
//! HTTP/1.1), with the bytes this edge already read from it put back in front, and what
//! pingora reads of a connection (addresses, TLS) told from the socket.

use super::client::ClientIo;
use async_trait::async_trait;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, UniqueID,
    UniqueIDType, ALPN,
};
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

#[derive(Debug)]
pub struct Replay {
    first: Vec<u8>,
    inner: ClientIo,
    socket: Arc<SocketDigest>,
    ssl: Option<Arc<SslDigest>>,
    alpn: Option<ALPN>,
}

impl Replay {
    pub fn new(inner: ClientIo, first: Vec<u8>) -> Self {
        let socket = Arc::new(SocketDigest::from_raw_fd(inner.tcp().as_raw_fd()));
        let (ssl, alpn) = match &inner {
            ClientIo::Tcp(_) => (None, None),
            ClientIo::Tls(s) => {
                let conn = s.get_ref().1;
                let cipher = conn
                    .negotiated_cipher_suite()
                    .and_then(|c| c.suite().as_str())
                    .unwrap_or("unknown");
                let version = conn
                    .protocol_version()
                    .and_then(|v| v.as_str())
                    .unwrap_or("unknown");
                let digest = SslDigest::new(cipher, version, None, None, Vec::new());
                (
                    Some(Arc::new(digest)),
                    match conn.alpn_protocol() {
                        Some(b"h2") => Some(ALPN::H2),
                        Some(b"http/1.1") => Some(ALPN::H1),
                        _ => None,
                    },
                )
            }
        };
        Replay {
            first,
            inner,
            socket,
            ssl,
            alpn,
        }
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.first.is_empty() {
            let n = this.first.len().min(buf.remaining());
            buf.put_slice(&this.first[..n]);
            this.first.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Replay {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(&mut self.inner).await;
    }
}

impl UniqueID for Replay {
    fn id(&self) -> UniqueIDType {
        self.inner.tcp().as_raw_fd()
    }
}

impl Ssl for Replay {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.ssl.clone()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

impl GetTimingDigest for Replay {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for Replay {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for Replay {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(self.socket.clone())
    }
}

#[async_trait]
impl Peek for Replay {}
