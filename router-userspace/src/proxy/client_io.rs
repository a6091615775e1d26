//! The client side of a connection as the HTTP server sees it: a TCP stream, or TLS over
//! one on an `https://` listener ([`MaybeTls`]), and the readiness the parked wait needs
//! of it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::stream::MaybeTls;

pub type ClientIo = MaybeTls<TlsStream<TcpStream>>;

impl ClientIo {
    /// Ready when a read may return bytes (or the end) without waiting: the socket is
    /// readable, or TLS already holds decrypted bytes (or the peer's `close_notify`),
    /// which a socket readiness check would miss.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ClientIo::Plain(tcp) => tcp.poll_read_ready(cx),
            ClientIo::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                // After the handshake rustls wants the socket read exactly when it has
                // nothing decrypted (and no close) to hand out.
                if !session.wants_read() {
                    return Poll::Ready(Ok(()));
                }
                tcp.poll_read_ready(cx)
            }
        }
    }

    /// Reads what is there now without waiting; `WouldBlock` when nothing is. A TLS
    /// record not yet complete, or one carrying no application data, is `WouldBlock`
    /// too; the socket's readiness was consumed, so the next [`Self::poll_read_ready`]
    /// waits for more.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientIo::Plain(tcp) => tcp.try_read(buf),
            ClientIo::Tls(tls) => {
                let mut cx = Context::from_waker(Waker::noop());
                let mut read = ReadBuf::new(buf);
                match Pin::new(&mut **tls).poll_read(&mut cx, &mut read) {
                    Poll::Ready(Ok(())) => Ok(read.filled().len()),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    /// The TCP stream underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ClientIo::Plain(tcp) => tcp,
            ClientIo::Tls(tls) => tls.get_ref().0,
        }
    }
}
