//! The byte stream of one upstream connection: cleartext TCP, or TLS over it (a remote
//! `https://` region, a `backend_tls` server). One type for both, so the exchange, the
//! response body and the pool are written once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connection to a server. The TLS state is boxed: it is large (rustls's buffers and
/// keys), and a cleartext connection must not pay for it in every future holding one.
#[derive(Debug)]
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

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

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            UpstreamIo::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            UpstreamIo::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(tls) => Pin::new(&mut **tls).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(tcp) => tcp.is_write_vectored(),
            UpstreamIo::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            UpstreamIo::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            UpstreamIo::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }
}
