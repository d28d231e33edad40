//! A client connection as accepted: plain TCP, or TLS (rustls) over it. The TLS state is
//! boxed, so a plain connection costs only its socket.

use super::maybe_tls::MaybeTls;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub type ClientIo = MaybeTls<Box<TlsStream<TcpStream>>>;

impl MaybeTls<Box<TlsStream<TcpStream>>> {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Tcp(s) => s,
            MaybeTls::Tls(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }

    /// The protocol chosen by ALPN in the TLS handshake.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            MaybeTls::Tcp(_) => None,
            MaybeTls::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}
