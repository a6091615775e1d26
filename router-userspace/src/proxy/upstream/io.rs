//! The byte stream of one upstream connection: cleartext TCP, or TLS over it (a remote
//! `https://` region, a `backend_tls` server) ([`MaybeTls`]), and what the pool asks of it.

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::proxy::stream::MaybeTls;

/// A connection to a server.
pub type UpstreamIo = MaybeTls<TlsStream<TcpStream>>;

impl UpstreamIo {
    /// The TCP socket underneath (the pool asks it whether the peer closed or wrote).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamIo::Plain(tcp) => tcp,
            UpstreamIo::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Whether the connection may carry another exchange, seen from what it holds: a TLS
    /// session with decrypted bytes nobody asked for (the backend wrote past its
    /// response) or a close_notify already read must not be lent again. A cleartext
    /// connection holds nothing of its own (the pool asks the socket).
    pub fn reusable(&mut self) -> bool {
        match self {
            UpstreamIo::Plain(_) => true,
            UpstreamIo::Tls(tls) => tls.get_mut().1.process_new_packets().is_ok_and(|state| {
                state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed()
            }),
        }
    }
}
