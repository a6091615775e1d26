//! The request framing watch (`proxy/framing.rs`, with the chunk and length rules of
//! `proxy/h1.rs`): request heads, fixed-length and chunked bodies, trailers, pipelined.
//!
//! Input: 4 bytes seeding the read sizes, then the client's byte stream. The stream is
//! fed in one read and again in pieces of those sizes. Checked: no panic; the verdicts
//! (one per request head) and whether the stream ends at a message boundary do not
//! depend on how the bytes were split into reads (the watch must find hyper's request
//! boundaries whatever the reads); the first head's verdict is "ambiguous" exactly when
//! it carries both Content-Length and Transfer-Encoding, so two framings never pass as
//! one; and a Content-Length the watch accepts is one length, however it was repeated.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use scope_router::proxy::framing::FramingWatch;
use scope_router::proxy::h1::ContentLength;
use tokio::io::{AsyncRead, ReadBuf};

/// Hands out the stream one piece per read.
struct Pieces<'a> {
    rest: &'a [u8],
    sizes: std::vec::IntoIter<usize>,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let want = self.sizes.next().unwrap_or(usize::MAX);
        let n = want.min(self.rest.len()).min(buf.remaining());
        let (piece, rest) = self.rest.split_at(n);
        buf.put_slice(piece);
        self.rest = rest;
        Poll::Ready(Ok(()))
    }
}

/// Verdicts and the final boundary state after feeding `stream` in reads of `sizes`.
fn watch(stream: &[u8], sizes: Vec<usize>, max_head: usize) -> (Vec<bool>, bool) {
    let reads = sizes.len().max(1);
    let mut w = FramingWatch::new(
        Pieces {
            rest: stream,
            sizes: sizes.into_iter(),
        },
        max_head,
    );
    let mut verdicts = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    let mut storage = vec![0u8; stream.len().max(1)];
    for _ in 0..reads {
        if w.get_ref().rest.is_empty() {
            break;
        }
        let mut buf = ReadBuf::new(&mut storage);
        let polled = w.poll_read_framed(&mut cx, &mut buf, |v| verdicts.push(v));
        assert!(matches!(polled, Poll::Ready(Ok(()))));
    }
    assert!(w.get_ref().rest.is_empty(), "every byte was read");
    (verdicts, w.at_message_boundary())
}

/// Read sizes from a small xorshift: mostly short, sometimes long.
fn sizes(seed: u32, total: usize) -> Vec<usize> {
    let mut x = seed | 1;
    let mut out = Vec::new();
    let mut sum = 0;
    while sum < total {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = if x % 8 == 0 {
            (x as usize >> 3) % 4096 + 1
        } else {
            (x as usize >> 3) % 16 + 1
        };
        out.push(n);
        sum += n;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (seed, stream) = data.split_at(4);
    let seed = u32::from_le_bytes([seed[0], seed[1], seed[2], seed[3]]);
    // A head cap the stream cannot reach, so both feedings see the same heads.
    let max_head = stream.len() + 1;
    let whole = watch(stream, vec![stream.len()], max_head);
    let split = watch(stream, sizes(seed, stream.len()), max_head);
    assert_eq!(whole, split, "the read boundaries changed the framing");
    // A small cap only switches the watch off sooner: never a panic.
    let _ = watch(stream, sizes(seed.rotate_left(7), stream.len()), 64);
    first_head(stream, whole.0.first().copied());
});

/// The first head's verdict against an independent reading of the head.
fn first_head(stream: &[u8], verdict: Option<bool>) {
    let start = stream
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    // The watch's capacity (hyper's limit): a head with more fields is not judged.
    let mut fields = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(_)) = req.parse(&stream[start..]) else {
        return;
    };
    let has = |name: &str| {
        req.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name))
    };
    let both = has("content-length") && has("transfer-encoding");
    assert_eq!(verdict, Some(both), "the first head's verdict");
    let mut length = ContentLength::default();
    let lines = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"));
    if lines.clone().all(|h| length.add(h.value).is_ok())
        && let Some(n) = length.get()
    {
        for member in lines.flat_map(|h| h.value.split(|b| *b == b',')) {
            let text = std::str::from_utf8(member.trim_ascii()).expect("digits");
            assert_eq!(
                text.parse::<u64>().ok(),
                Some(n),
                "two lengths accepted as one"
            );
        }
    }
}
