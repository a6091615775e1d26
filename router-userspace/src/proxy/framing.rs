//! Request framing watch: follows the client byte stream with a minimal
//! HTTP/1.1 framing tracker (heads, fixed-length and chunked bodies) and
//! serves two roles.
//!
//! - **Smuggling check.** It reports one verdict per request head: whether
//!   the head carries both `Content-Length` and `Transfer-Encoding` (the
//!   request-smuggling shape), which hyper accepts by silently preferring
//!   Transfer-Encoding. The handler answers those 400.
//! - **Idle-connection parking.** [`FramingWatch::at_message_boundary`] says
//!   whether every byte read so far belongs to complete requests. Only then
//!   can hyper's read buffer hold nothing of a next request, so only then may
//!   [`super::park::ParkingIo`] end the hyper connection of an idle client
//!   and keep just the socket: parking reports end-of-stream to hyper, which
//!   would cut off a request it is still reading.
//!
//! - **Holding a stalled head.** A client that stops inside a request head
//!   would keep hyper's buffers (≈ 16 KiB) until `request_header` expires. Once
//!   it has been silent for a moment, [`super::park::ParkingIo`] ends the hyper
//!   connection and the watch keeps the head's bytes ([`FramingWatch::hold`]),
//!   in the buffer it gathers split heads in anyway, so the connection costs
//!   what the client sent. The parked connection then follows the rest of the
//!   head ([`FramingWatch::feed_held`]); once complete (or refused), the next
//!   hyper connection reads it all again first ([`FramingWatch::poll_read_framed`]).
//!
//! Both roles need the request boundaries hyper itself finds: a boundary
//! hyper does not see would shift verdicts onto the wrong requests, or park a
//! connection under a half-read request. So chunked bodies are followed with
//! the chunk syntax of [`super::h1`], whose policy matches hyper's decoder. Anything the watch does not fully understand
//! (upgrades, CONNECT, oversized or unparsable heads, chunk syntax [`super::h1`]
//! refuses) switches it off for the connection: it then reports nothing, the
//! connection is never parked, and hyper's own (safe) framing stands.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h1;
use crate::problem::Problem;

/// Checks a request's transfer codings before it is forwarded (RFC 9112 §6.1): only
/// `chunked`, once, is understood. The body goes upstream de-chunked and re-framed, so a
/// coding before `chunked` (`gzip, chunked`) would be silently lost: 501. hyper already
/// refuses a coding list that does not end in `chunked`. Costs one header lookup; a
/// request with Transfer-Encoding scans its value in place, without allocating.
pub(crate) fn check_transfer_codings(headers: &http::HeaderMap) -> Result<(), Problem> {
    let mut chunked = 0;
    for value in headers.get_all(http::header::TRANSFER_ENCODING) {
        for coding in value.as_bytes().split(|b| *b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                // RFC 9110 §5.6.1: empty list elements are ignored.
                continue;
            }
            if !coding.eq_ignore_ascii_case(b"chunked") {
                return Err(Problem::unsupported_transfer_coding(
                    &String::from_utf8_lossy(coding),
                ));
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        return Err(Problem::chunked_twice());
    }
    Ok(())
}

/// Headers parsed per head; more than this and the tracker gives up. Exactly hyper's
/// own limit (100, which the router does not change): a head hyper refuses must never
/// look complete to the watch, or the refusal passes as hyper's bare 431 instead of the
/// JSON one (`park.rs` replaces hyper's answer only mid-head).
const MAX_HEADERS: usize = 100;

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

/// Where the watch is in a chunked body; the syntax itself is [`h1`]'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In a chunk-size line; any part of it from earlier reads is in `pending`.
    Size,
    Data(u64),
    /// `matched` bytes of the CRLF after chunk data seen.
    DataEnd(u8),
    Trailers(h1::TrailerScan),
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
    /// The start of a request head or chunk-size line split across reads
    /// (empty otherwise, and then unallocated).
    pending: Vec<u8>,
    max_head: usize,
    /// `pending` is a held head ([`FramingWatch::hold`]): no reader has its bytes.
    held: bool,
    /// Bytes read from the stream and followed, not yet given to the reader: a held
    /// head once complete, and whatever arrived after it. Boxed: every parked connection
    /// carries the field, and it keeps the per-connection allocation in its size class.
    replay: Option<Box<Replay>>,
}

/// What [`FramingWatch::poll_read_framed`] gives the reader before reading the stream.
#[derive(Debug)]
struct Replay {
    bytes: Vec<u8>,
    /// How many of them the reader has had.
    given: usize,
}

impl<T> FramingWatch<T> {
    pub fn new(inner: T, max_head: usize) -> Self {
        FramingWatch {
            inner,
            state: State::Head,
            pending: Vec::new(),
            max_head,
            held: false,
            replay: None,
        }
    }

    /// The bytes read so far end inside a request head the watch follows: the client
    /// began a head and has not finished it. `false` once the watch switched itself off.
    pub fn mid_head(&self) -> bool {
        self.state == State::Head && !self.pending.is_empty() && self.replay.is_none()
    }

    /// Takes over the head in progress ([`FramingWatch::mid_head`]) from a reader that
    /// is about to drop what it read of it: its bytes, already in `pending`, are owed to
    /// the next reader. Returns whether a head is held.
    pub fn hold(&mut self) -> bool {
        if self.mid_head() {
            self.held = true;
        }
        self.held
    }

    /// A head is held: more of it is awaited ([`FramingWatch::feed_held`]).
    pub fn holds_head(&self) -> bool {
        self.held
    }

    /// Follows `bytes`, read from the stream for the held head, reporting verdicts like
    /// [`FramingWatch::poll_read_framed`]; they are owed to the next reader too. Returns
    /// whether the head is still held: `false` once it is complete, or past `max_head`
    /// or unparsable (hyper then refuses it as it would have), and the next reader gets
    /// every byte.
    pub fn feed_held(&mut self, bytes: &[u8], mut verdict: impl FnMut(bool)) -> bool {
        self.feed(bytes, &mut verdict);
        self.held
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
        self.state == State::Head && self.pending.is_empty() && self.replay.is_none()
    }

    /// The bytes read so far end inside a request body: the client owes the rest (the
    /// `[timeouts] request_body` wait). `false` once the watch switched itself off.
    pub fn in_body(&self) -> bool {
        matches!(self.state, State::Fixed(_) | State::Chunked(_))
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
                    let (used, next) = self.feed_chunked(c, bytes);
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
        if self.pending.is_empty() {
            used = bytes
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
        }
        let rest = &bytes[used..];
        // A head that arrived whole (the usual case) is parsed in place; one
        // split across reads is gathered until the parser finds its end.
        let buffered = !self.pending.is_empty();
        if buffered {
            self.pending.extend_from_slice(rest);
        }
        let parsed = judge(if buffered { &self.pending } else { rest }, verdict);
        match parsed {
            Some((len, state)) => {
                self.state = state;
                if buffered {
                    let surplus = self.pending.len() - len;
                    self.release_pending();
                    bytes.len() - surplus
                } else {
                    used + len
                }
            }
            None => {
                if !buffered {
                    self.pending.extend_from_slice(rest);
                }
                if self.pending.len() > self.max_head {
                    self.state = State::Off;
                    if self.held {
                        self.release_pending();
                    }
                }
                bytes.len()
            }
        }
    }

    /// Done with the gathered head: a held one (with every byte gathered after it) goes
    /// to the next reader, moved rather than copied.
    fn release_pending(&mut self) {
        let gathered = std::mem::take(&mut self.pending);
        if std::mem::take(&mut self.held) {
            self.replay = Some(Box::new(Replay {
                bytes: gathered,
                given: 0,
            }));
        }
    }

    /// Advances over chunked-body bytes; returns bytes used and the next state.
    fn feed_chunked(&mut self, c: Chunk, bytes: &[u8]) -> (usize, State) {
        match c {
            Chunk::Size => self.feed_size_line(bytes),
            Chunk::Data(n) => {
                let take = (bytes.len() as u64).min(n);
                let next = if take == n {
                    Chunk::DataEnd(0)
                } else {
                    Chunk::Data(n - take)
                };
                (take as usize, State::Chunked(next))
            }
            Chunk::DataEnd(matched) => match h1::chunk_data_end(matched, bytes) {
                Ok((used, 2)) => (used, State::Chunked(Chunk::Size)),
                Ok((used, matched)) => (used, State::Chunked(Chunk::DataEnd(matched))),
                Err(_) => (bytes.len(), State::Off),
            },
            Chunk::Trailers(mut scan) => match scan.feed(bytes) {
                Ok(Some(used)) => (used, State::Head),
                Ok(None) => (bytes.len(), State::Chunked(Chunk::Trailers(scan))),
                Err(_) => (bytes.len(), State::Off),
            },
        }
    }

    /// Consumes (part of) a chunk-size line. Like a head, a line that arrived
    /// whole is parsed in place; a split one is gathered in `pending`, but
    /// only up to its LF, so no chunk data is copied.
    fn feed_size_line(&mut self, bytes: &[u8]) -> (usize, State) {
        // `taken`: how much of `bytes` went into `pending` (`None`: parsed in place).
        let (parsed, taken) = if self.pending.is_empty() {
            (h1::chunk_size_line(bytes, 0), None)
        } else {
            // `pending` is shorter than the cap, or it would have been refused.
            let searched = self.pending.len();
            let room = &bytes[..bytes.len().min(h1::MAX_CHUNK_SIZE_LINE - searched)];
            let take = room
                .iter()
                .position(|&b| b == b'\n')
                .map_or(room.len(), |i| i + 1);
            self.pending.extend_from_slice(&bytes[..take]);
            (h1::chunk_size_line(&self.pending, searched), Some(take))
        };
        match parsed {
            Ok(Some((len, size))) => {
                self.pending = Vec::new();
                let next = if size == 0 {
                    Chunk::Trailers(h1::TrailerScan::default())
                } else {
                    Chunk::Data(size)
                };
                (taken.unwrap_or(len), State::Chunked(next))
            }
            Ok(None) => {
                if taken.is_none() {
                    self.pending.extend_from_slice(bytes);
                }
                (taken.unwrap_or(bytes.len()), State::Chunked(Chunk::Size))
            }
            Err(_) => {
                self.pending = Vec::new();
                (bytes.len(), State::Off)
            }
        }
    }
}

/// The head at the start of `buf`: its length and the body state that follows
/// (`State::Off` for what the watch does not understand), or `None` while incomplete.
fn judge(buf: &[u8], verdict: &mut impl FnMut(bool)) -> Option<(usize, State)> {
    // Uninitialised: zeroing 100 slots per request was measurable.
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
    let mut length = h1::ContentLength::default();
    let mut length_sent = false;
    let mut length_readable = true;
    let mut te_chunked: Option<bool> = None;
    let mut upgrade = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length_sent = true;
            length_readable &= length.add(h.value).is_ok();
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            te_chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    // Ambiguous even when the length is unreadable: hyper ignores a
    // Content-Length that follows Transfer-Encoding, whatever its value.
    verdict(length_sent && te_chunked.is_some());
    if !length_readable {
        // Unless hyper ignored it, it refuses the request and closes.
        return State::Off;
    }
    if upgrade || req.method == Some("CONNECT") {
        // The bytes after this request may not be HTTP at all.
        return State::Off;
    }
    let length = length.get();
    match (te_chunked, length) {
        (Some(true), _) => State::Chunked(Chunk::Size),
        (Some(false), _) => State::Off,
        (None, Some(0)) | (None, None) => State::Head,
        (None, Some(n)) => State::Fixed(n),
    }
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
        if let Some(replay) = &mut self.replay {
            // Followed already (and its verdicts reported) when it was read.
            let rest = &replay.bytes[replay.given..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            replay.given += n;
            if replay.given == replay.bytes.len() {
                self.replay = None;
            }
            return Poll::Ready(Ok(()));
        }
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

    #[test]
    fn only_chunked_once_is_an_understood_transfer_coding() {
        let cases: [(&[&str], Option<u16>); 7] = [
            (&[], None),
            (&["chunked"], None),
            (&["Chunked , "], None),
            (&["gzip, chunked"], Some(501)),
            (&["gzip", "chunked"], Some(501)),
            (&["chunked, chunked"], Some(400)),
            (&["chunked", "chunked"], Some(400)),
        ];
        for (values, want) in cases {
            let mut headers = http::HeaderMap::new();
            for v in values {
                headers.append(
                    http::header::TRANSFER_ENCODING,
                    http::HeaderValue::from_static(v),
                );
            }
            let got = check_transfer_codings(&headers)
                .err()
                .map(|p| p.status.as_u16());
            assert_eq!(got, want, "{values:?}");
        }
        let p = check_transfer_codings(&{
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::TRANSFER_ENCODING,
                http::HeaderValue::from_static("gzip, chunked"),
            );
            h
        })
        .unwrap_err();
        assert!(p.message.contains("'gzip'"), "{}", p.message);
    }

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
    fn the_boundary_is_seen_exactly_where_each_request_ends() {
        // The ends of the five requests of PIPELINE, as hyper frames them.
        let mut ends = Vec::new();
        let mut rest = PIPELINE;
        for marker in [
            &b"\r\n\r\n"[..],
            b"hello",
            b"0\r\nX-Trailer: 1\r\n\r\n",
            b"0\r\n\r\n",
            b"\r\n\r\n",
        ] {
            let at = rest
                .windows(marker.len())
                .position(|w| w == marker)
                .unwrap()
                + marker.len();
            ends.push(PIPELINE.len() - rest.len() + at);
            rest = &rest[at..];
        }
        // Fed a byte at a time, the watch may park only at those ends (and
        // before the first request: the leading empty line is no request).
        let mut w = FramingWatch::new((), 64 * 1024);
        let mut parkable = Vec::new();
        for (i, b) in PIPELINE.iter().enumerate() {
            w.feed(std::slice::from_ref(b), &mut |_| {});
            if w.at_message_boundary() {
                parkable.push(i + 1);
            }
        }
        assert_eq!(parkable, [[1, 2].as_slice(), &ends].concat());
    }

    /// Reads once through the watch as hyper would, collecting verdicts.
    async fn read_framed(
        w: &mut FramingWatch<tokio::io::DuplexStream>,
        verdicts: &mut Vec<bool>,
    ) -> Vec<u8> {
        let mut storage = [0u8; 256];
        let mut buf = ReadBuf::new(&mut storage);
        std::future::poll_fn(|cx| w.poll_read_framed(cx, &mut buf, |v| verdicts.push(v)))
            .await
            .unwrap();
        buf.filled().to_vec()
    }

    #[tokio::test]
    async fn a_held_head_is_replayed_whole_with_what_followed_it() {
        use tokio::io::AsyncWriteExt;
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = FramingWatch::new(a, 1024);
        let mut verdicts = Vec::new();
        b.write_all(b"POST /a HTTP/1.1\r\nHo").await.unwrap();
        assert_eq!(
            read_framed(&mut w, &mut verdicts).await,
            b"POST /a HTTP/1.1\r\nHo"
        );
        assert!(w.mid_head() && !w.holds_head());
        // The reader drops what it read; the watch keeps it.
        assert!(w.hold());
        let rest: &[u8] = b"st: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n\
            0\r\n\r\nGET /b HTT";
        let (head_end, tail) = rest.split_at(9);
        assert!(
            w.feed_held(head_end, |v| verdicts.push(v)),
            "not complete yet"
        );
        assert!(verdicts.is_empty());
        assert!(!w.feed_held(tail, |v| verdicts.push(v)), "complete");
        assert_eq!(verdicts, [true], "the held head was judged once");
        assert!(
            !w.at_message_boundary(),
            "the reader has not had the bytes yet"
        );
        // The next reader gets every byte since the head began, without judging again.
        let mut replayed = Vec::new();
        while replayed.len() < b"POST /a HTTP/1.1\r\nHo".len() + rest.len() {
            replayed.extend(read_framed(&mut w, &mut verdicts).await);
        }
        assert_eq!(
            replayed,
            [b"POST /a HTTP/1.1\r\nHo".as_slice(), rest].concat()
        );
        assert_eq!(verdicts, [true]);
        // Then the stream itself, followed from where the replay left off.
        assert!(w.mid_head());
        b.write_all(b"P/1.1\r\nHost: h\r\n\r\n").await.unwrap();
        read_framed(&mut w, &mut verdicts).await;
        assert_eq!(verdicts, [true, false]);
        assert!(w.at_message_boundary());
    }

    #[test]
    fn a_held_head_past_the_cap_goes_to_hyper_to_refuse() {
        let mut w = FramingWatch::new((), 32);
        let mut verdicts = Vec::new();
        w.feed(b"GET /a HTTP/1.1\r\n", &mut |v| verdicts.push(v));
        assert!(w.hold());
        assert!(w.feed_held(b"X: 1\r\n", |v| verdicts.push(v)));
        assert!(!w.feed_held(b"Y: 0123456789abcdef\r\n", |v| verdicts.push(v)));
        assert_eq!(w.state, State::Off);
        assert_eq!(
            w.replay
                .as_ref()
                .map(|r| r.bytes.as_slice())
                .unwrap_or_default(),
            b"GET /a HTTP/1.1\r\nX: 1\r\nY: 0123456789abcdef\r\n",
            "every byte, for hyper's own 431"
        );
        assert!(w.pending.is_empty() && !w.holds_head());
    }

    #[test]
    fn only_a_head_in_progress_is_held() {
        let mut w = FramingWatch::new((), 1024);
        assert!(!w.hold(), "nothing read");
        w.feed(b"\r\n", &mut |_| {});
        assert!(!w.hold(), "empty lines before a request are no head");
        w.feed(
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab",
            &mut |_| {},
        );
        assert!(!w.hold(), "inside a body");
        w.feed(b"cd\x01\x02 garbage\r\n\r\n", &mut |_| {});
        assert_eq!(w.state, State::Off);
        assert!(!w.hold(), "a head the watch gave up on");
    }

    #[test]
    fn chunk_syntax_hyper_refuses_switches_the_watch_off() {
        // A bare LF after the chunk size: hyper fails the request, so the watch
        // must neither park nor judge anything after it.
        let (v, s) = verdicts_for(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n\
              GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            3,
        );
        assert_eq!((v, s), (vec![false], State::Off));
    }

    #[test]
    fn both_framings_are_ambiguous_even_with_an_unreadable_length() {
        let (v, s) = verdicts_for(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4x\r\n\r\n",
            7,
        );
        assert_eq!((v, s), (vec![true], State::Off));
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
