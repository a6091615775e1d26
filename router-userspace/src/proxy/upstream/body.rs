//! The upstream response body, decoded straight off the upstream socket in the
//! task that relays it (no connection task, no channel). When the body ends
//! cleanly on a reusable connection, the connection goes back to its pool at
//! once, before the last frame is even handed on.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncReadExt;

use super::pool::Lease;
use super::wire::{MAX_RESPONSE_HEADERS, ResponseFraming, header_map};
use crate::proxy::h1::{self, ChunkError, TrailerScan};
use crate::proxy::headers::drop_forbidden_trailers;

/// Bytes asked of the socket per read while relaying a body.
const READ_CHUNK: usize = 64 * 1024;

/// Why a response body could not be relayed to the end.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    #[error("reading the response body from the backend failed")]
    Io(#[source] io::Error),
    #[error("the backend closed the connection {missing} bytes before the end of the body")]
    Truncated { missing: u64 },
    #[error("the backend closed the connection inside a chunked body")]
    TruncatedChunked,
    #[error("malformed chunked body from the backend: {0}")]
    BadChunk(#[from] ChunkError),
    #[error(
        "invalid trailer fields from the backend (bad names or values, or more than {MAX_RESPONSE_HEADERS})"
    )]
    BadTrailers,
}

/// Where the decoder is in a chunked body; the syntax itself is [`h1`]'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// In a chunk-size line, at the start of `buf`: its first `searched`
    /// bytes hold no LF.
    Size {
        searched: usize,
    },
    Data(u64),
    /// `matched` bytes of the CRLF after chunk data seen.
    DataEnd(u8),
    /// After the last chunk: the trailer section, at the start of `buf`, of
    /// which `scanned` bytes went through `scan`.
    Trailers {
        scan: TrailerScan,
        scanned: usize,
    },
}

impl Chunked {
    /// Before a chunk-size line.
    const START: Chunked = Chunked::Size { searched: 0 };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

/// A response body read from an upstream connection.
#[derive(Debug)]
pub struct UpstreamBody {
    decoder: Decoder,
    /// Bytes read but not yet handed on (starts with what followed the head).
    buf: BytesMut,
    /// The connection; `None` once the body ended (returned or closed).
    lease: Option<Lease>,
    keep_alive: bool,
}

impl UpstreamBody {
    pub(super) fn new(
        framing: ResponseFraming,
        buf: BytesMut,
        lease: Lease,
        keep_alive: bool,
    ) -> Self {
        let decoder = match framing {
            ResponseFraming::None => Decoder::Length(0),
            ResponseFraming::Length(n) => Decoder::Length(n),
            ResponseFraming::Chunked => Decoder::Chunked(Chunked::START),
            ResponseFraming::UntilClose => Decoder::UntilClose,
        };
        let mut body = UpstreamBody {
            decoder,
            buf,
            lease: Some(lease),
            keep_alive,
        };
        if body.decoder == Decoder::Length(0) {
            body.finish();
        }
        body
    }

    /// The body ended: the connection goes back to the pool if the backend
    /// allows it and sent nothing beyond the message, else it is closed.
    fn finish(&mut self) {
        self.decoder = Decoder::Done;
        if let Some(lease) = self.lease.take()
            && self.keep_alive
            && self.buf.is_empty()
        {
            lease.release();
        }
    }

    fn fail(
        &mut self,
        err: ResponseBodyError,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        self.decoder = Decoder::Done;
        self.lease = None;
        Poll::Ready(Some(Err(err)))
    }

    /// Reads more from the backend into `buf`; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(lease) = self.lease.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        // `read_buf` keeps no state between polls, so a fresh future per poll is exact.
        let read = lease.stream.read_buf(&mut self.buf);
        tokio::pin!(read);
        read.poll(cx)
    }

    /// Advances the chunked decoder over `buf`: a data frame, the end (with
    /// trailers if any), or `None` when more bytes are needed.
    fn decode_chunked(
        &mut self,
        mut state: Chunked,
    ) -> Result<Option<Option<Frame<Bytes>>>, ResponseBodyError> {
        loop {
            state = match state {
                Chunked::Data(left) => {
                    if self.buf.is_empty() {
                        break;
                    }
                    let take = (self.buf.len() as u64).min(left) as usize;
                    let data = self.buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.decoder = Decoder::Chunked(if left == 0 {
                        Chunked::DataEnd(0)
                    } else {
                        Chunked::Data(left)
                    });
                    return Ok(Some(Some(Frame::data(data))));
                }
                Chunked::Size { searched } => match h1::chunk_size_line(&self.buf, searched)? {
                    None => {
                        state = Chunked::Size {
                            searched: self.buf.len(),
                        };
                        break;
                    }
                    Some((len, size)) => {
                        self.buf.advance(len);
                        if size == 0 {
                            Chunked::Trailers {
                                scan: TrailerScan::default(),
                                scanned: 0,
                            }
                        } else {
                            Chunked::Data(size)
                        }
                    }
                },
                Chunked::DataEnd(matched) => {
                    let (used, matched) = h1::chunk_data_end(matched, &self.buf)?;
                    self.buf.advance(used);
                    if matched < 2 {
                        state = Chunked::DataEnd(matched);
                        break;
                    }
                    Chunked::START
                }
                Chunked::Trailers { mut scan, scanned } => {
                    let Some(used) = scan.feed(&self.buf[scanned..])? else {
                        state = Chunked::Trailers {
                            scan,
                            scanned: self.buf.len(),
                        };
                        break;
                    };
                    let len = scanned + used;
                    let trailers = trailer_fields(&self.buf[..len])?;
                    self.buf.advance(len);
                    self.finish();
                    return Ok(Some(trailers.map(Frame::trailers)));
                }
            };
        }
        self.decoder = Decoder::Chunked(state);
        Ok(None)
    }
}

/// The fields of a complete trailer section (its final empty line included),
/// `None` if it has none.
pub(crate) fn trailer_fields(section: &[u8]) -> Result<Option<HeaderMap>, ResponseBodyError> {
    if section == b"\r\n" {
        return Ok(None);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => {
            let mut trailers = header_map(fields).map_err(|_| ResponseBodyError::BadTrailers)?;
            // A backend's trailers never reframe or redescribe the response already sent.
            Ok((!drop_forbidden_trailers(&mut trailers)).then_some(trailers))
        }
        // A section ending in an empty line is never partial.
        Ok(httparse::Status::Partial) | Err(_) => Err(ResponseBodyError::BadTrailers),
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let this = self.get_mut();
        loop {
            match this.decoder {
                Decoder::Done => return Poll::Ready(None),
                Decoder::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Decoder::Length(left) if !this.buf.is_empty() => {
                    let take = (this.buf.len() as u64).min(left) as usize;
                    let data = this.buf.split_to(take).freeze();
                    this.decoder = Decoder::Length(left - take as u64);
                    if this.decoder == Decoder::Length(0) {
                        // Back to the pool now: hyper may never poll an ended body again.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoder::UntilClose if !this.buf.is_empty() => {
                    let data = this.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoder::Chunked(state) => match this.decode_chunked(state) {
                    Ok(Some(frame)) => return Poll::Ready(frame.map(Ok)),
                    Ok(None) => {}
                    Err(e) => return this.fail(e),
                },
                Decoder::Length(_) | Decoder::UntilClose => {}
            }
            // Everything buffered is consumed: read more.
            match ready!(this.poll_fill(cx)) {
                Ok(0) => match this.decoder {
                    Decoder::UntilClose => {
                        this.decoder = Decoder::Done;
                        this.lease = None;
                        return Poll::Ready(None);
                    }
                    Decoder::Length(missing) => {
                        return this.fail(ResponseBodyError::Truncated { missing });
                    }
                    _ => return this.fail(ResponseBodyError::TruncatedChunked),
                },
                Ok(_) => {}
                Err(e) => return this.fail(ResponseBodyError::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decoder, Decoder::Done | Decoder::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the chunked decoder over `wire` fed in `step`-byte pieces.
    fn decode_all(
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), ResponseBodyError> {
        let mut body = UpstreamBody {
            decoder: Decoder::Chunked(Chunked::START),
            buf: BytesMut::new(),
            lease: None,
            keep_alive: false,
        };
        let mut data = Vec::new();
        let mut trailers = None;
        for piece in wire.chunks(step) {
            body.buf.extend_from_slice(piece);
            while let Decoder::Chunked(state) = body.decoder {
                match body.decode_chunked(state)? {
                    None => break,
                    Some(None) => {}
                    Some(Some(frame)) => match frame.into_data() {
                        Ok(d) => data.extend_from_slice(&d),
                        Err(frame) => trailers = frame.into_trailers().ok(),
                    },
                }
            }
        }
        assert_eq!(body.decoder, Decoder::Done, "body did not end");
        Ok((data, trailers))
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, trailers) = decode_all(wire, step).unwrap();
            assert_eq!(data, b"hello 0123456789", "step {step}");
            assert!(trailers.is_none());
        }
    }

    #[test]
    fn trailers_become_a_trailers_frame() {
        let wire = b"3\r\nabc\r\n0\r\nx-checksum: 42\r\nx-more: 1\r\n\r\n";
        for step in [1, 5, wire.len()] {
            let (data, trailers) = decode_all(wire, step).unwrap();
            assert_eq!(data, b"abc");
            let t = trailers.expect("trailers");
            assert_eq!(t["x-checksum"], "42");
            assert_eq!(t["x-more"], "1");
        }
    }

    #[test]
    fn fields_that_must_not_be_trailers_never_reach_the_client() {
        let wire = b"3\r\nabc\r\n0\r\ncontent-length: 99\r\nx-checksum: 42\r\n\
                     transfer-encoding: gzip\r\nhost: evil\r\n\r\n";
        let (_, trailers) = decode_all(wire, wire.len()).unwrap();
        let t = trailers.expect("trailers");
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t["x-checksum"], "42");
        // Nothing allowed left: no trailers frame at all.
        let (_, trailers) = decode_all(b"0\r\nhost: evil\r\n\r\n", 1).unwrap();
        assert!(trailers.is_none());
    }

    #[test]
    fn malformed_chunking_fails_the_body_with_the_reason() {
        // The syntax itself is tested in h1; here, that its verdict reaches the caller.
        let err = decode_all(b"3\r\nabc\n0\r\n\r\n", 1).unwrap_err();
        assert!(
            matches!(
                err,
                ResponseBodyError::BadChunk(ChunkError::MissingDataCrlf)
            ),
            "{err}"
        );
        let err = decode_all(b"0\r\nbad field\r\n\r\n", 4).unwrap_err();
        assert!(matches!(err, ResponseBodyError::BadTrailers), "{err}");
    }
}
