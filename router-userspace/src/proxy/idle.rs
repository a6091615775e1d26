//! Inactivity timeout for a byte stream (HAProxy's `timeout client/server`).
//!
//! The timer is lazy: progress only records a timestamp, and the sleep is
//! re-armed when it fires early, so busy streams pay no timer cost per read.
//! It is allocated on the first wait that needs it, so a stream that never
//! waits unwatched (a parked client connection) holds none.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::{ClientGauges, OpenConnection};
use tokio::time::{Instant, Sleep};

/// Counts requests being served on a client connection. While one is, the
/// client owes us nothing (the backend is working), so silence on the read
/// side is not client inactivity; stalls are then caught on the upstream side.
///
/// Lives inside a per-connection allocation shared with the handler (see
/// [`super::park::ConnShared`]) rather than in an `Arc` of its own. It also keeps the
/// connection counted as open, and each request as active, in the router's gauges.
#[derive(Debug)]
pub struct InFlight {
    count: AtomicUsize,
    /// Whether any request has begun on the connection: a drain closes only those that
    /// served one, not a client whose first request may still be on the wire.
    started: std::sync::atomic::AtomicBool,
    /// The shutdown cut the connection at the end of its grace period: what the access
    /// line of a request dropped with it says.
    cut: std::sync::atomic::AtomicBool,
    open: OpenConnection,
}

/// Held from request head to the end of its response body.
pub struct InFlightGuard(Arc<dyn AsRef<InFlight> + Send + Sync>);

impl InFlight {
    /// No request yet on a connection counted by `open`.
    pub fn new(open: OpenConnection) -> Self {
        InFlight {
            count: AtomicUsize::new(0),
            started: std::sync::atomic::AtomicBool::new(false),
            cut: std::sync::atomic::AtomicBool::new(false),
            open,
        }
    }

    /// Counts one more request on the counter `owner` holds.
    pub fn enter<O>(owner: &Arc<O>) -> InFlightGuard
    where
        O: AsRef<InFlight> + Send + Sync + 'static,
    {
        let in_flight = (**owner).as_ref();
        in_flight.count.fetch_add(1, Ordering::Relaxed);
        in_flight.started.store(true, Ordering::Relaxed);
        ClientGauges::inc(&in_flight.open.gauges().active);
        InFlightGuard(owner.clone())
    }

    pub fn busy(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    /// Whether a request has ever begun on this connection.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Marks the connection as cut by the shutdown, before its requests are dropped.
    pub fn cut_by_shutdown(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    /// The router's client connection gauges.
    pub fn gauges(&self) -> &ClientGauges {
        self.open.gauges()
    }
}

impl InFlightGuard {
    /// Whether the shutdown cut this request's connection.
    pub fn cut_by_shutdown(&self) -> bool {
        (*self.0).as_ref().cut.load(Ordering::Relaxed)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let in_flight = (*self.0).as_ref();
        in_flight.count.fetch_sub(1, Ordering::Relaxed);
        ClientGauges::dec(&in_flight.open.gauges().active);
    }
}

impl std::fmt::Debug for InFlightGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("InFlightGuard")
            .field((*self.0).as_ref())
            .finish()
    }
}

/// What read-side silence means for the next [`IdleIo`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSilence {
    /// Counts as inactivity (the default).
    Timed,
    /// Does not count: a request is being served, silence is expected.
    Paused,
    /// Not watched here: the caller deals with a pending read itself (parks
    /// the connection), so no timer is armed for it.
    Unwatched,
    /// The peer owes the bytes (a request body being read): silence counts from when
    /// this read began waiting, not from the last byte, so time the router itself spent
    /// elsewhere (a backend slow to take the body) is never held against the peer.
    Owed,
}

/// A stream that fails with `TimedOut` after `timeout` without any progress
/// while someone is waiting on it.
#[derive(Debug)]
pub struct IdleIo<T> {
    inner: T,
    timeout: Duration,
    last_progress: Instant,
    /// Armed on the first wait that needs it and kept for the next ones;
    /// boxed because `Sleep` must not move once polled, while the stream does.
    sleep: Option<Pin<Box<Sleep>>>,
    read_silence: ReadSilence,
    /// A read is waiting (pending) since `last_progress` was last set for it (`Owed`).
    waiting: bool,
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        IdleIo {
            inner,
            timeout,
            last_progress: Instant::now(),
            sleep: None,
            read_silence: ReadSilence::Timed,
            waiting: false,
        }
    }

    /// How read-side silence counts from the next read on, until changed.
    pub fn set_read_silence(&mut self, silence: ReadSilence) {
        if silence != ReadSilence::Owed {
            self.waiting = false;
        }
        self.read_silence = silence;
    }

    /// The inactivity budget from now on (e.g. `response_head` while a response head is
    /// awaited, `idle` again once it arrived). Same timer: nothing is allocated.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The current inactivity budget.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Frees the timer (e.g. while the stream sits parked and a timer of the
    /// caller's own watches it); the next wait that needs one arms a new one.
    pub fn disarm(&mut self) {
        self.sleep = None;
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Watches a new spell from now with `timeout` (a pooled connection lent again),
    /// keeping the timer: it re-arms lazily, where a new one would be registered with the
    /// runtime and removed again for every request (callgrind, bench j).
    pub fn restart(&mut self, timeout: Duration) {
        self.timeout = timeout;
        self.last_progress = Instant::now();
        self.read_silence = ReadSilence::Timed;
        self.waiting = false;
    }

    /// The stream itself, without its timer.
    pub fn into_inner(self) -> T {
        self.inner
    }

    /// When the inactivity budget runs out if nothing moves before then.
    pub fn deadline(&self) -> Instant {
        self.last_progress + self.timeout
    }

    fn progressed(&mut self) {
        self.last_progress = Instant::now();
    }

    /// Called when the inner stream is pending: is the inactivity budget spent?
    ///
    /// A deadline later than the armed one (progress since) is taken up only when the
    /// armed one fires: re-arming on every wait would move the timer in the runtime's
    /// wheel once per request (callgrind, bench j). An earlier one (a shorter budget from
    /// [`Self::set_timeout`]) re-arms at once.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let deadline = self.deadline();
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if deadline < sleep.deadline() {
            sleep.as_mut().reset(deadline);
        }
        loop {
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= self.last_progress + self.timeout => {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no data for {}", humantime::format_duration(self.timeout)),
                    ));
                }
                // Progress happened while the sleep was armed: re-arm further out.
                Poll::Ready(()) => sleep.as_mut().reset(self.last_progress + self.timeout),
            }
        }
    }
}

impl IdleIo<super::client_io::ClientIo> {
    /// Reads what is there now without waiting ([`super::client_io::ClientIo::try_read`]);
    /// bytes count as progress.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.try_read(buf)?;
        self.progressed();
        Ok(n)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.waiting = false;
                this.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => match this.read_silence {
                ReadSilence::Timed => this.poll_expired(cx).map(Err),
                ReadSilence::Owed => {
                    if !std::mem::replace(&mut this.waiting, true) {
                        this.progressed();
                    }
                    let timeout = this.timeout;
                    this.poll_expired(cx).map(|_| {
                        Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "no request body bytes for {} ([timeouts] request_body)",
                                humantime::format_duration(timeout)
                            ),
                        ))
                    })
                }
                ReadSilence::Paused => {
                    this.progressed();
                    Poll::Pending
                }
                ReadSilence::Unwatched => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_expired(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_expired(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// A flush that waits (TLS bytes the peer does not take) is inactivity like a write.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => this.poll_expired(cx).map(Err),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let (a, _b) = tokio::io::duplex(64);
        let mut idle = IdleIo::new(a, Duration::from_secs(60));
        let mut buf = [0u8; 8];
        let err = idle.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_postpones_the_timeout() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut idle = IdleIo::new(a, Duration::from_secs(60));
        let writer = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(40)).await;
                b.write_all(b"x").await.unwrap();
            }
            b
        });
        let mut buf = [0u8; 1];
        // 5 bytes spaced 40s apart: 200s total, never 60s of silence.
        for _ in 0..5 {
            idle.read_exact(&mut buf).await.unwrap();
        }
        let _b = writer.await.unwrap();
        let err = idle.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_leaves_the_armed_timer_alone() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut idle = IdleIo::new(a, Duration::from_secs(60));
        let mut buf = [0u8; 1];
        let waited = tokio::time::timeout(Duration::from_secs(1), idle.read(&mut buf)).await;
        assert!(waited.is_err(), "read must still be pending");
        let armed = idle.sleep.as_ref().unwrap().deadline();
        // A byte, then another wait: the deadline moved out, the armed timer did not.
        tokio::time::advance(Duration::from_secs(10)).await;
        b.write_all(b"x").await.unwrap();
        idle.read_exact(&mut buf).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(1), idle.read(&mut buf)).await;
        assert!(waited.is_err(), "read must still be pending");
        assert_eq!(idle.sleep.as_ref().unwrap().deadline(), armed);
        assert!(idle.deadline() > armed);
        // When the armed timer fires early it re-arms: the timeout still counts from the
        // last byte, not from the first wait.
        let start = Instant::now();
        let err = idle.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_fired_at(idle.deadline());
        assert!(Instant::now() > start + Duration::from_secs(48));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_budget_fires_at_its_own_deadline() {
        let (a, _b) = tokio::io::duplex(64);
        let mut idle = IdleIo::new(a, Duration::from_secs(60));
        let start = Instant::now();
        let mut buf = [0u8; 1];
        let waited = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
        assert!(waited.is_err(), "read must still be pending");
        // Armed for 60 s; the budget drops to 20 s (a response head awaited).
        idle.set_timeout(Duration::from_secs(20));
        let err = idle.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_fired_at(start + Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_stream_counts_its_budget_from_the_restart() {
        for (name, pooled_for, timeout) in [
            // The armed timer (60 s from the start) is later than the new deadline.
            ("shorter", Duration::from_secs(30), Duration::from_secs(10)),
            // It is earlier: it fires first, then re-arms to the new deadline.
            ("longer", Duration::from_secs(50), Duration::from_secs(60)),
        ] {
            let (a, _b) = tokio::io::duplex(64);
            let mut idle = IdleIo::new(a, Duration::from_secs(60));
            let mut buf = [0u8; 1];
            let waited = tokio::time::timeout(Duration::from_secs(1), idle.read(&mut buf)).await;
            assert!(waited.is_err(), "{name}: read must still be pending");
            tokio::time::advance(pooled_for).await;
            idle.restart(timeout);
            let restarted = Instant::now();
            let err = idle.read(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{name}");
            assert_fired_at(restarted + timeout);
        }
    }

    /// Now is `deadline`, to the timer wheel's millisecond (also the head timer's tests).
    pub(crate) fn assert_fired_at(deadline: Instant) {
        let now = Instant::now();
        assert!(
            now >= deadline && now - deadline <= Duration::from_millis(2),
            "fired {:?} after the deadline (negative: before)",
            now.checked_duration_since(deadline)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reads_do_not_expire_while_a_request_is_in_flight() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut idle = IdleIo::new(a, Duration::from_secs(60));
        idle.set_read_silence(ReadSilence::Paused);
        let mut buf = [0u8; 1];
        // Silence far beyond the timeout while busy: still pending, no error.
        let waited = tokio::time::timeout(Duration::from_secs(600), idle.read(&mut buf)).await;
        assert!(waited.is_err(), "read must still be pending");
        idle.set_read_silence(ReadSilence::Timed);
        b.write_all(b"y").await.unwrap();
        idle.read_exact(&mut buf).await.unwrap();
        let err = idle.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn unwatched_reads_arm_no_timer() {
        let (a, _b) = tokio::io::duplex(64);
        let mut idle = IdleIo::new(a, Duration::from_secs(60));
        idle.set_read_silence(ReadSilence::Unwatched);
        let mut buf = [0u8; 1];
        let waited = tokio::time::timeout(Duration::from_secs(600), idle.read(&mut buf)).await;
        assert!(waited.is_err(), "read must still be pending");
        assert!(idle.sleep.is_none());
        // Unwatched silence is not progress either: the budget is long spent.
        assert!(idle.deadline() <= Instant::now());
        idle.set_read_silence(ReadSilence::Timed);
        let err = idle.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
