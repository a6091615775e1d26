//! Parking idle client connections outside hyper.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for the whole
//! life of an HTTP/1 connection, so each idle keep-alive client would cost
//! ~16 KiB. [`ParkingIo`] ends the hyper connection instead, as soon as the
//! client is idle: when hyper asks for more bytes, none are there, no request
//! is being served, nothing of a next request has been read and no write is
//! stuck, it reports end-of-stream. hyper, idle, takes that as a clean close
//! (no response, no error); the wrapper's `poll_shutdown` leaves the socket
//! open, and its `Drop` hands the stream back through a [`ParkSlot`] so the
//! server can wait for the next bytes holding only the socket and a few words
//! of state, then serve the next request with a fresh hyper connection.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::framing::FramingWatch;
use super::idle::InFlight;

/// Where a parked stream comes back to once hyper has let go of it.
pub type ParkSlot<T> = Arc<Mutex<Option<T>>>;

/// A client stream lent to one hyper connection until the client goes idle.
#[derive(Debug)]
pub struct ParkingIo<T> {
    /// Always `Some` until `Drop` moves it into the slot.
    inner: Option<FramingWatch<T>>,
    slot: ParkSlot<FramingWatch<T>>,
    in_flight: InFlight,
    /// End-of-stream was reported to hyper to release the connection.
    parked: bool,
    /// The last write or flush could not complete: hyper still holds bytes.
    write_blocked: bool,
}

impl<T> ParkingIo<T> {
    pub fn new(
        inner: FramingWatch<T>,
        slot: ParkSlot<FramingWatch<T>>,
        in_flight: InFlight,
    ) -> Self {
        ParkingIo {
            inner: Some(inner),
            slot,
            in_flight,
            parked: false,
            write_blocked: false,
        }
    }

    fn track_write<R>(&mut self, poll: Poll<R>) -> Poll<R> {
        self.write_blocked = poll.is_pending();
        poll
    }
}

impl<T> Drop for ParkingIo<T> {
    fn drop(&mut self) {
        if !self.parked {
            // Closed, failed or upgraded: the stream ends with this connection.
            return;
        }
        if let (Some(inner), Ok(mut slot)) = (self.inner.take(), self.slot.lock()) {
            *slot = Some(inner);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ParkingIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut().filter(|_| !this.parked) else {
            return Poll::Ready(Ok(()));
        };
        match Pin::new(&mut *inner).poll_read(cx, buf) {
            // Nothing to read, so hyper's read buffer holds only what the
            // framing watch has seen: at a message boundary that is nothing.
            Poll::Pending
                if !this.write_blocked && !this.in_flight.busy() && inner.at_message_boundary() =>
            {
                this.parked = true;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ParkingIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let poll = Pin::new(inner).poll_write(cx, buf);
        this.track_write(poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let poll = Pin::new(inner).poll_write_vectored(cx, bufs);
        this.track_write(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let poll = Pin::new(inner).poll_flush(cx);
        this.track_write(poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.inner.as_mut() {
            // Parked: hyper is done, the client is not; keep the socket open.
            Some(_) if this.parked => Poll::Ready(Ok(())),
            Some(inner) => Pin::new(inner).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::framing::FramingVerdicts;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn lend(
        stream: tokio::io::DuplexStream,
        in_flight: &InFlight,
    ) -> (
        ParkingIo<tokio::io::DuplexStream>,
        ParkSlot<FramingWatch<tokio::io::DuplexStream>>,
    ) {
        let slot = ParkSlot::default();
        let watch = FramingWatch::new(stream, 8192, FramingVerdicts::default());
        (ParkingIo::new(watch, slot.clone(), in_flight.clone()), slot)
    }

    /// Polls one read once; the duplex has no data, so only parking can make it ready.
    fn read_is_pending(io: &mut ParkingIo<tokio::io::DuplexStream>) -> bool {
        let mut buf = [0u8; 64];
        let mut read = ReadBuf::new(&mut buf);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(io).poll_read(&mut cx, &mut read).is_pending()
    }

    #[tokio::test]
    async fn idle_after_a_request_parks_and_returns_the_stream() {
        let (a, mut b) = tokio::io::duplex(1024);
        let in_flight = InFlight::default();
        let (mut io, slot) = lend(a, &in_flight);
        b.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(n, 27);
        // Nothing more arrived and no request is in flight: end-of-stream.
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        io.shutdown().await.unwrap();
        drop(io);
        let mut back = slot.lock().unwrap().take().expect("stream handed back");
        // The socket was not shut down: the client can still talk to it.
        b.write_all(b"x").await.unwrap();
        assert_eq!(back.read(&mut buf).await.unwrap(), 1);
        b.write_all(b"y").await.unwrap();
        back.write_all(b"z").await.unwrap();
    }

    #[tokio::test]
    async fn busy_or_mid_request_never_parks() {
        let (a, mut b) = tokio::io::duplex(1024);
        let in_flight = InFlight::default();
        let (mut io, slot) = lend(a, &in_flight);
        let mut buf = [0u8; 64];
        // Half a head: the rest may come later, so reads must wait for it.
        b.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 16);
        assert!(read_is_pending(&mut io), "mid-head read must stay pending");
        b.write_all(b"\r\n").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 2);
        // A request being served: silence is not idleness.
        let guard = in_flight.enter();
        assert!(read_is_pending(&mut io), "busy read must stay pending");
        drop(guard);
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        drop(io);
        assert!(slot.lock().unwrap().is_some());
    }

    #[tokio::test]
    async fn a_connection_that_ends_unparked_keeps_nothing() {
        let (a, _b) = tokio::io::duplex(64);
        let (io, slot) = lend(a, &InFlight::default());
        drop(io);
        assert!(slot.lock().unwrap().is_none());
    }
}
