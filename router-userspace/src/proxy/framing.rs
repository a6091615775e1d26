//! Request framing watch: spots request heads carrying both `Content-Length`
//! and `Transfer-Encoding` (the request-smuggling shape), which hyper accepts
//! by silently preferring Transfer-Encoding. The handler answers those 400.
//!
//! It follows the client byte stream with a minimal HTTP/1.1 framing tracker
//! (heads, fixed-length and chunked bodies) and reports one verdict per head.
//! Anything it does not fully understand (upgrades, CONNECT, oversized or
//! unparsable heads, odd chunk syntax) switches it off for the connection: it
//! then reports nothing and hyper's own (safe) framing stands.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Headers parsed per head; more than this and the tracker gives up (hyper
/// itself refuses beyond its own limit of 100).
const MAX_HEADERS: usize = 128;

/// Verdicts waiting for their requests' handlers, in arrival order.
///
/// Nearly every verdict is "not ambiguous", and an ambiguous request closes
/// the connection; so a run of those is only counted, and the queue (which
/// allocates) is used only once an ambiguous verdict is waiting.
#[derive(Debug, Default)]
pub struct FramingVerdicts {
    /// Verdicts at the front of the queue that are all `false`.
    clear: usize,
    /// What follows them.
    rest: VecDeque<bool>,
}

impl FramingVerdicts {
    /// Whether the next request (in arrival order) had both Content-Length and
    /// Transfer-Encoding. `false` when unknown.
    pub fn next_is_ambiguous(&mut self) -> bool {
        if self.clear > 0 {
            self.clear -= 1;
            return false;
        }
        self.rest.pop_front().unwrap_or(false)
    }

    pub fn push(&mut self, ambiguous: bool) {
        if !ambiguous && self.rest.is_empty() {
            self.clear += 1;
        } else {
            self.rest.push_back(ambiguous);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `ext` once a `;` extension started.
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// Trailer section: `len` bytes on the current line so far.
    Trailer {
        len: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    Chunked(Chunk),
    Off,
}

/// Client stream wrapper reporting one verdict per request head it reads
/// (see [`FramingWatch::poll_read_framed`]).
#[derive(Debug)]
pub struct FramingWatch<T> {
    inner: T,
    state: State,
    head: Vec<u8>,
    max_head: usize,
}

impl<T> FramingWatch<T> {
    pub fn new(inner: T, max_head: usize) -> Self {
        FramingWatch {
            inner,
            state: State::Head,
            head: Vec::new(),
            max_head,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The head size beyond which the watch gives up.
    pub fn max_head(&self) -> usize {
        self.max_head
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Every byte read so far belongs to complete requests: nothing of a next
    /// head or body has arrived. `false` once the watch switched itself off.
    pub fn at_message_boundary(&self) -> bool {
        self.state == State::Head && self.head.is_empty()
    }

    fn feed(&mut self, mut bytes: &[u8], verdict: &mut impl FnMut(bool)) {
        while !bytes.is_empty() {
            let used = match self.state {
                State::Off => return,
                State::Head => self.feed_head(bytes, verdict),
                State::Fixed(n) => {
                    let take = (bytes.len() as u64).min(n);
                    self.state = if take == n {
                        State::Head
                    } else {
                        State::Fixed(n - take)
                    };
                    take as usize
                }
                State::Chunked(c) => {
                    let (used, next) = feed_chunked(c, bytes);
                    self.state = next;
                    used
                }
            };
            bytes = &bytes[used..];
        }
    }

    /// Consumes head bytes; returns how many were part of the head.
    fn feed_head(&mut self, bytes: &[u8], verdict: &mut impl FnMut(bool)) -> usize {
        let mut used = 0;
        // Empty lines before a request line are allowed (RFC 9112 §2.2).
        if self.head.is_empty() {
            used = bytes
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
        }
        let rest = &bytes[used..];
        // A head that arrived whole (the usual case) is parsed in place; one
        // split across reads is gathered until the parser finds its end.
        let buffered = !self.head.is_empty();
        if buffered {
            self.head.extend_from_slice(rest);
        }
        let parsed = judge(if buffered { &self.head } else { rest }, verdict);
        match parsed {
            Some((len, state)) => {
                self.state = state;
                if buffered {
                    let surplus = self.head.len() - len;
                    self.head = Vec::new();
                    bytes.len() - surplus
                } else {
                    used + len
                }
            }
            None => {
                if !buffered {
                    self.head.extend_from_slice(rest);
                }
                if self.head.len() > self.max_head {
                    self.state = State::Off;
                }
                bytes.len()
            }
        }
    }
}

/// The head at the start of `buf`: its length and the body state that follows
/// (`State::Off` for what the watch does not understand), or `None` while incomplete.
fn judge(buf: &[u8], verdict: &mut impl FnMut(bool)) -> Option<(usize, State)> {
    // Uninitialised: zeroing 128 slots per request was measurable.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some((buf.len(), State::Off)),
    };
    Some((len, judge_parsed(&req, verdict)))
}

/// Records the verdict for a parsed head and returns the body state.
fn judge_parsed(req: &httparse::Request<'_, '_>, verdict: &mut impl FnMut(bool)) -> State {
    let mut length: Option<u64> = None;
    let mut te_chunked: Option<bool> = None;
    let mut upgrade = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                Some(n) => length = Some(n),
                None => return State::Off,
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            te_chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    verdict(length.is_some() && te_chunked.is_some());
    if upgrade || req.method == Some("CONNECT") {
        // The bytes after this request may not be HTTP at all.
        return State::Off;
    }
    match (te_chunked, length) {
        (Some(true), _) => State::Chunked(Chunk::Size {
            size: 0,
            digits: 0,
            ext: false,
        }),
        (Some(false), _) => State::Off,
        (None, Some(0)) | (None, None) => State::Head,
        (None, Some(n)) => State::Fixed(n),
    }
}

/// Advances the chunked-body tracker over `bytes`; returns bytes used and the next state.
fn feed_chunked(mut c: Chunk, bytes: &[u8]) -> (usize, State) {
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        c = match c {
            Chunk::Data(n) => {
                let take = ((bytes.len() - i) as u64).min(n);
                i += take as usize;
                if take == n {
                    Chunk::DataCr
                } else {
                    Chunk::Data(n - take)
                }
            }
            Chunk::Size { size, digits, ext } => {
                i += 1;
                match b {
                    b'\r' if digits > 0 => Chunk::SizeLf { size },
                    b';' if digits > 0 => Chunk::Size {
                        size,
                        digits,
                        ext: true,
                    },
                    _ if ext => Chunk::Size { size, digits, ext },
                    b' ' | b'\t' if digits > 0 => Chunk::Size { size, digits, ext },
                    _ => match (b as char).to_digit(16) {
                        // 15 hex digits cannot overflow u64.
                        Some(v) if digits < 15 => Chunk::Size {
                            size: size * 16 + u64::from(v),
                            digits: digits + 1,
                            ext,
                        },
                        _ => return (i, State::Off),
                    },
                }
            }
            Chunk::SizeLf { size } => {
                i += 1;
                match (b, size) {
                    (b'\n', 0) => Chunk::Trailer { len: 0 },
                    (b'\n', n) => Chunk::Data(n),
                    _ => return (i, State::Off),
                }
            }
            Chunk::DataCr => {
                i += 1;
                if b != b'\r' {
                    return (i, State::Off);
                }
                Chunk::DataLf
            }
            Chunk::DataLf => {
                i += 1;
                if b != b'\n' {
                    return (i, State::Off);
                }
                Chunk::Size {
                    size: 0,
                    digits: 0,
                    ext: false,
                }
            }
            Chunk::Trailer { len } => {
                i += 1;
                match b {
                    b'\n' if len == 0 => return (i, State::Head),
                    b'\n' => Chunk::Trailer { len: 0 },
                    b'\r' => Chunk::Trailer { len },
                    _ => Chunk::Trailer { len: len + 1 },
                }
            }
        };
    }
    (i, State::Chunked(c))
}

impl<T: AsyncRead + Unpin> FramingWatch<T> {
    /// Reads like [`AsyncRead::poll_read`] and calls `verdict` for every
    /// request head completed by the bytes read, in arrival order: `true`
    /// when it had both Content-Length and Transfer-Encoding. The caller
    /// decides where verdicts go, so the stream holds no shared state.
    pub fn poll_read_framed(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        mut verdict: impl FnMut(bool),
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && self.state != State::Off
        {
            self.feed(&buf.filled()[before..], &mut verdict);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingWatch<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts_for(stream: &[u8], split_every: usize) -> (Vec<bool>, State) {
        let mut out = Vec::new();
        let mut w = FramingWatch::new((), 64 * 1024);
        for piece in stream.chunks(split_every) {
            w.feed(piece, &mut |v| out.push(v));
        }
        (out, w.state)
    }

    const PIPELINE: &[u8] = b"\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\n\
        POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
        POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhe\r\nl\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n\
        POST /d HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
        0\r\n\r\n\
        GET /e HTTP/1.1\r\nHost: h\r\n\r\n";

    #[test]
    fn one_verdict_per_request_whatever_the_read_sizes() {
        for split in [1, 2, 3, 7, 64, PIPELINE.len()] {
            let (verdicts, state) = verdicts_for(PIPELINE, split);
            assert_eq!(
                verdicts,
                [false, false, false, true, false],
                "split {split}"
            );
            assert_eq!(state, State::Head, "split {split}");
        }
    }

    #[test]
    fn body_bytes_that_look_like_a_head_are_not_a_head() {
        let inner = b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut stream = format!(
            "PUT /up HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
            inner.len()
        )
        .into_bytes();
        stream.extend_from_slice(inner);
        let (verdicts, state) = verdicts_for(&stream, 5);
        assert_eq!(verdicts, [false]);
        assert_eq!(state, State::Head);
    }

    #[test]
    fn upgrades_and_garbage_switch_the_watch_off() {
        let (v, s) = verdicts_for(
            b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nxx",
            4,
        );
        assert_eq!((v, s), (vec![false], State::Off));
        let (v, s) = verdicts_for(b"NOT HTTP\r\n\r\n", 4);
        assert_eq!((v, s), (vec![], State::Off));
        let (v, s) = verdicts_for(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            4,
        );
        assert_eq!((v, s), (vec![false], State::Off));
    }

    #[test]
    fn ambiguous_verdicts_are_consumed_in_order() {
        let mut v = FramingVerdicts::default();
        v.push(false);
        v.push(true);
        assert!(!v.next_is_ambiguous());
        assert!(v.next_is_ambiguous());
        assert!(!v.next_is_ambiguous(), "unknown is not ambiguous");
        for pushed in [false, false, true, false, true, true, false] {
            v.push(pushed);
        }
        v.push(false);
        let popped: Vec<bool> = (0..9).map(|_| v.next_is_ambiguous()).collect();
        assert_eq!(
            popped,
            [false, false, true, false, true, true, false, false, false]
        );
        assert!(v.rest.is_empty() && v.clear == 0);
        v.push(false);
        assert!(v.rest.is_empty(), "clear verdicts are only counted");
    }
}
