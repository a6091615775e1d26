//! HTTP/1.1 message framing shared by every reader of it: chunked bodies
//! (RFC 9112 §7.1) and `Content-Length` values (RFC 9112 §6.3).
//!
//! The request framing watch ([`super::framing`]) and the upstream client
//! ([`super::upstream::wire`] for response heads, [`super::upstream::body`]
//! for bodies) find message lengths and chunk boundaries with these functions
//! and keep only their own state machines. Heads themselves are found by
//! httparse directly (a request parse in the watch, a response parse in the
//! client), with no scanner of our own. Chunk-size lines are parsed by
//! `httparse::parse_chunk_size`, with the checks it lacks added here; chunk
//! data CRLFs and the trailer section's end are matched as they arrive, so a
//! reader never buffers chunk data.
//!
//! # Policy
//!
//! hyper's server decodes client request bodies itself, and the framing watch
//! must find the request boundaries hyper finds: if they disagreed, the
//! smuggling verdicts and idle-connection parking would fall out of step with
//! hyper's requests. So the policy is hyper's (1.12, `proto/h1/decode.rs`):
//! whatever framing hyper accepts, this finds the same boundaries in; whatever
//! it refuses, this refuses too. The few exceptions below refuse something
//! hyper accepts, the safe direction: the watch then switches itself off and
//! hyper's framing stands alone, and a backend response framed that way fails.
//!
//! - **Bare LF** (a line ended by LF without CR) is refused everywhere: after
//!   the chunk size, inside chunk extensions, after chunk data and in the
//!   trailer section. hyper refuses it in the first three. In trailers hyper
//!   keeps a bare LF as a field byte and only counts CRLF-ended lines; we
//!   refuse it there too (exception) rather than guess at its field count.
//!   `httparse::parse_chunk_size` alone would accept a bare LF inside an
//!   extension, and an empty or digit-less line as size 0; hyper refuses
//!   both, and so do we.
//! - **Size digits**: at most 16 hex digits (httparse's limit, enough for any
//!   `u64`). hyper takes any number of leading zeros (exception).
//! - **Line caps**: see [`MAX_CHUNK_SIZE_LINE`] and [`MAX_TRAILER_SECTION`].
//!   hyper does not cap whitespace after the size; a line padded past the
//!   cap is refused here (exception). hyper also bounds chunk extensions per
//!   body (16 KiB in all) and trailer fields (100); a body over those fails
//!   in hyper and ends its connection, so the watch need not count them, and
//!   the body decoder's field parser stops at 100 fields.

use httparse::Status;

/// Longest chunk-size line (size, extensions, CRLF) a reader accepts.
///
/// hyper has no cap on the line as such but allows at most 16 KiB of chunk
/// extensions in a body (`CHUNKED_EXTENSIONS_LIMIT`), so every line it accepts
/// carries under 16 KiB of them; the 64 bytes on top leave room for the size,
/// whitespace and CRLF. A line still unfinished past this is refused, which
/// also bounds what a reader buffers while waiting for the line's end.
pub const MAX_CHUNK_SIZE_LINE: usize = 16 * 1024 + 64;

/// A trailer section (its last CRLF included) must be shorter than this.
///
/// hyper refuses trailer sections of 16 KiB or more (`TRAILER_LIMIT`; the
/// server builder's `max_header_size` would replace it, and we do not set
/// it), so a reader accepting more would follow a body hyper has failed.
pub const MAX_TRAILER_SECTION: usize = 16 * 1024;

/// Why chunked framing was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error(
        "chunk-size line longer than {MAX_CHUNK_SIZE_LINE} bytes; send chunk extensions \
         shorter than that, or none"
    )]
    SizeLineTooLong,
    #[error("a chunk framing line ends in a bare LF; end every line with CRLF")]
    BareLf,
    #[error(
        "invalid chunk-size line; it must be 1 to 16 hex digits, optionally followed by \
         `;` extensions, then CRLF"
    )]
    InvalidSize,
    #[error("chunk data not followed by CRLF; the chunk size must equal the data length")]
    MissingDataCrlf,
    #[error("a trailer line ends in a bare LF or a CR without LF; end every line with CRLF")]
    BadTrailerLine,
    #[error("trailer section of {MAX_TRAILER_SECTION} bytes or more; send fewer trailer fields")]
    TrailersTooLong,
}

/// The chunk-size line at the start of `buf`: its length (CRLF included) and
/// the chunk size, or `None` until its LF has arrived.
///
/// `searched` is how many bytes of `buf` are already known to hold no LF (the
/// length of `buf` at the last `None`), so a line arriving a byte at a time
/// costs linear time, not quadratic.
pub fn chunk_size_line(buf: &[u8], searched: usize) -> Result<Option<(usize, u64)>, ChunkError> {
    let window = &buf[..buf.len().min(MAX_CHUNK_SIZE_LINE)];
    let lf = window
        .get(searched..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'));
    let Some(lf) = lf.map(|i| searched + i) else {
        return if buf.len() >= MAX_CHUNK_SIZE_LINE {
            Err(ChunkError::SizeLineTooLong)
        } else {
            Ok(None)
        };
    };
    // The first LF must end the line, after a CR: httparse would skip a bare
    // LF inside an extension, where hyper refuses it.
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(ChunkError::BareLf);
    }
    let line = &buf[..=lf];
    // httparse reads an empty line, or one starting with `;` or whitespace, as size 0.
    if !line[0].is_ascii_hexdigit() {
        return Err(ChunkError::InvalidSize);
    }
    match httparse::parse_chunk_size(line) {
        Ok(Status::Complete((len, size))) if len == line.len() => Ok(Some((len, size))),
        _ => Err(ChunkError::InvalidSize),
    }
}

/// Matches the CRLF after chunk data, which may arrive split: `matched` of
/// its two bytes were seen before `bytes`. Returns how many bytes of `bytes`
/// it used and how many of the CRLF are matched now (2: complete).
pub fn chunk_data_end(matched: u8, bytes: &[u8]) -> Result<(usize, u8), ChunkError> {
    let mut matched = matched;
    let mut used = 0;
    while let (Some(&want), Some(&b)) = (b"\r\n".get(usize::from(matched)), bytes.get(used)) {
        if b != want {
            return Err(ChunkError::MissingDataCrlf);
        }
        matched += 1;
        used += 1;
    }
    Ok((used, matched))
}

/// Finds the end of a trailer section (RFC 9112 §7.1.2) read in pieces,
/// starting right after the last-chunk line: the first empty line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrailerScan {
    /// Section bytes before the current piece. Below [`MAX_TRAILER_SECTION`],
    /// and a `u32` keeps the framing watch's state, which every parked client
    /// holds, as small as before.
    len: u32,
    /// The current line has bytes besides its CR.
    in_line: bool,
    /// The byte before was a CR.
    cr: bool,
}

impl TrailerScan {
    /// Advances over `bytes`: how many of them completed the section (its
    /// final CRLF included), or `None` when it goes on past them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, ChunkError> {
        let before = self.len as usize;
        if before + bytes.len() >= MAX_TRAILER_SECTION {
            // Refused only if the section does not end first.
            return match self.feed_within(&bytes[..MAX_TRAILER_SECTION - 1 - before]) {
                Ok(None) => Err(ChunkError::TrailersTooLong),
                done => done,
            };
        }
        self.feed_within(bytes)
    }

    /// [`TrailerScan::feed`] for pieces that fit within the cap.
    fn feed_within(&mut self, bytes: &[u8]) -> Result<Option<usize>, ChunkError> {
        for (i, &b) in bytes.iter().enumerate() {
            match (self.cr, b) {
                (true, b'\n') if !self.in_line => return Ok(Some(i + 1)),
                (true, b'\n') => {
                    self.cr = false;
                    self.in_line = false;
                }
                (true, _) | (false, b'\n') => return Err(ChunkError::BadTrailerLine),
                (false, b'\r') => self.cr = true,
                (false, _) => self.in_line = true,
            }
        }
        // The caller keeps the total below the cap, so it fits.
        self.len += u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        Ok(None)
    }
}

/// A `Content-Length` value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid Content-Length; send one decimal length (repeats, as lines or in a \
     comma-separated list, must all be equal)"
)]
pub struct BadContentLength;

/// The message length from its `Content-Length` field lines, added one value at
/// a time: each a run of decimal digits or a comma-separated list of them, and
/// all equal (RFC 9110 §8.6), or the length is unknowable.
///
/// This is hyper's client rule. hyper's server is stricter (one number per
/// line, no lists) and refuses a request, closing its connection, where this
/// still finds a length; everything it accepts gets the same length here, so
/// the framing watch follows the same bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContentLength(Option<u64>);

impl ContentLength {
    /// Adds one field line's value.
    pub fn add(&mut self, value: &[u8]) -> Result<(), BadContentLength> {
        for member in value.split(|&b| b == b',') {
            let digits = member.trim_ascii();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(BadContentLength);
            }
            let n = digits.iter().try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
            match (n, self.0) {
                (None, _) => return Err(BadContentLength),
                (Some(n), Some(prev)) if prev != n => return Err(BadContentLength),
                (Some(n), _) => self.0 = Some(n),
            }
        }
        Ok(())
    }

    /// The length, if any value was added.
    pub fn get(self) -> Option<u64> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunked body as one stream of framing events, to compare readings
    /// of the same bytes fed in different pieces.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Outcome {
        /// Chunk sizes in order, then how many bytes the body took.
        Body {
            sizes: Vec<u64>,
            len: usize,
        },
        Refused(ChunkError),
        /// The bytes ended inside the body.
        Unfinished,
    }

    #[derive(Debug, Clone, Copy)]
    enum At {
        Size { searched: usize },
        Data(u64),
        DataEnd(u8),
        Trailers(TrailerScan),
    }

    /// Reads a chunked body from `wire` fed in pieces cut at `cuts`, the way
    /// both users do: size lines buffered until complete, the rest streamed.
    fn read(wire: &[u8], cuts: &[usize]) -> Outcome {
        let mut sizes = Vec::new();
        let mut at = At::Size { searched: 0 };
        let mut line: Vec<u8> = Vec::new();
        let mut taken = 0;
        let mut bounds: Vec<usize> = cuts.to_vec();
        bounds.push(wire.len());
        let mut start = 0;
        for end in bounds {
            let mut piece = &wire[start..end];
            start = end;
            while !piece.is_empty() {
                let used = match at {
                    At::Size { searched } => {
                        line.extend_from_slice(piece);
                        match chunk_size_line(&line, searched) {
                            Err(e) => return Outcome::Refused(e),
                            Ok(None) => {
                                at = At::Size {
                                    searched: line.len(),
                                };
                                piece.len()
                            }
                            Ok(Some((len, size))) => {
                                let used = piece.len() - (line.len() - len);
                                line.clear();
                                sizes.push(size);
                                at = if size == 0 {
                                    At::Trailers(TrailerScan::default())
                                } else {
                                    At::Data(size)
                                };
                                used
                            }
                        }
                    }
                    At::Data(left) => {
                        let take = left.min(piece.len() as u64);
                        at = if take == left {
                            At::DataEnd(0)
                        } else {
                            At::Data(left - take)
                        };
                        take as usize
                    }
                    At::DataEnd(matched) => match chunk_data_end(matched, piece) {
                        Err(e) => return Outcome::Refused(e),
                        Ok((used, 2)) => {
                            at = At::Size { searched: 0 };
                            used
                        }
                        Ok((used, matched)) => {
                            at = At::DataEnd(matched);
                            used
                        }
                    },
                    At::Trailers(mut scan) => match scan.feed(piece) {
                        Err(e) => return Outcome::Refused(e),
                        Ok(Some(used)) => {
                            return Outcome::Body {
                                sizes,
                                len: taken + used,
                            };
                        }
                        Ok(None) => {
                            at = At::Trailers(scan);
                            piece.len()
                        }
                    },
                };
                taken += used;
                piece = &piece[used..];
            }
        }
        Outcome::Unfinished
    }

    fn body(sizes: &[u64], len: usize) -> Outcome {
        Outcome::Body {
            sizes: sizes.to_vec(),
            len,
        }
    }

    /// Stands for "the whole wire" as an expected body length.
    const WHOLE: usize = usize::MAX;

    #[test]
    fn one_policy_whatever_the_read_boundaries() {
        use ChunkError::*;
        use Outcome::{Refused, Unfinished};
        let long_ext = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(16 * 1024));
        let too_long_ext = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_SIZE_LINE));
        // A trailer section of `n` bytes: "x-big: ", the value, CRLF, CRLF.
        let trailer_of = |n: usize| format!("0\r\nx-big: {}\r\n\r\n", "t".repeat(n - 11));
        let largest_trailer = trailer_of(MAX_TRAILER_SECTION - 1);
        let too_large_trailer = trailer_of(MAX_TRAILER_SECTION);
        let cases: &[(&str, &[u8], Outcome)] = &[
            ("valid", b"5\r\nhello\r\n0\r\n\r\n", body(&[5, 0], WHOLE)),
            (
                "stops at the body's end",
                b"1\r\nx\r\n0\r\n\r\nGET /",
                body(&[1, 0], 11),
            ),
            (
                "hex sizes",
                b"A\r\n0123456789\r\n0\r\n\r\n",
                body(&[10, 0], WHOLE),
            ),
            (
                "extensions",
                b"3;a=1;b=\"x\"\r\nabc\r\n0;z\r\n\r\n",
                body(&[3, 0], WHOLE),
            ),
            (
                "whitespace before `;`",
                b"3 \t;a\r\nabc\r\n0\r\n\r\n",
                body(&[3, 0], WHOLE),
            ),
            (
                "trailers",
                b"2\r\nab\r\n0\r\nx-a: 1\r\nx-b: 2\r\n\r\n",
                body(&[2, 0], WHOLE),
            ),
            (
                "16 hex digits",
                b"000000000000000A\r\n0123456789\r\n0\r\n\r\n",
                body(&[10, 0], WHOLE),
            ),
            // hyper accepts any number of leading zeros; the watch goes off instead.
            (
                "17 hex digits",
                b"00000000000000001\r\nx\r\n",
                Refused(InvalidSize),
            ),
            ("overflow", b"10000000000000000\r\n", Refused(InvalidSize)),
            (
                "bare LF after the size",
                b"5\nhello\r\n0\r\n\r\n",
                Refused(BareLf),
            ),
            (
                "bare LF in an extension",
                b"5;a\nb\r\nhello\r\n",
                Refused(BareLf),
            ),
            (
                "bare LF after data",
                b"5\r\nhello\n0\r\n\r\n",
                Refused(MissingDataCrlf),
            ),
            (
                "bare LF in trailers",
                b"0\r\nx-a: 1\n\r\n",
                Refused(BadTrailerLine),
            ),
            (
                "bare LF ending the body",
                b"0\r\n\n",
                Refused(BadTrailerLine),
            ),
            (
                "CR without LF in trailers",
                b"0\r\nx-a: 1\rx\r\n\r\n",
                Refused(BadTrailerLine),
            ),
            (
                "CR without LF in the size line",
                b"5\rx\r\n",
                Refused(InvalidSize),
            ),
            ("empty size line", b"\r\n", Refused(InvalidSize)),
            ("extension without a size", b";a\r\n", Refused(InvalidSize)),
            (
                "leading whitespace",
                b" 5\r\nhello\r\n",
                Refused(InvalidSize),
            ),
            ("not hex", b"zz\r\n", Refused(InvalidSize)),
            ("digits after whitespace", b"5 5\r\n", Refused(InvalidSize)),
            (
                "data longer than its size",
                b"3\r\nabcX\r\n",
                Refused(MissingDataCrlf),
            ),
            (
                "16 KiB of extensions",
                long_ext.as_bytes(),
                body(&[1, 0], WHOLE),
            ),
            (
                "overlong size line",
                too_long_ext.as_bytes(),
                Refused(SizeLineTooLong),
            ),
            (
                "largest trailers",
                largest_trailer.as_bytes(),
                body(&[0], WHOLE),
            ),
            (
                "overlong trailers",
                too_large_trailer.as_bytes(),
                Refused(TrailersTooLong),
            ),
            ("unfinished", b"5\r\nhel", Unfinished),
        ];
        for (name, wire, want) in cases {
            let want = match want {
                Outcome::Body { sizes, len: WHOLE } => body(sizes, wire.len()),
                other => other.clone(),
            };
            assert_eq!(read(wire, &[]), want, "{name}, in one piece");
            // Split once at every byte boundary (the first and last 200 of
            // long cases), then into single bytes.
            let cuts =
                (1..wire.len().min(200)).chain(wire.len().saturating_sub(200).max(200)..wire.len());
            for cut in cuts {
                assert_eq!(read(wire, &[cut]), want, "{name}, cut at {cut}");
            }
            if wire.len() < 200 {
                let every: Vec<usize> = (1..wire.len()).collect();
                assert_eq!(read(wire, &every), want, "{name}, byte by byte");
            }
        }
    }

    #[test]
    fn content_length_is_one_length_however_it_is_sent() {
        type Length = Result<Option<u64>, BadContentLength>;
        let cases: &[(&str, &[&str], Length)] = &[
            ("absent", &[], Ok(None)),
            ("one value", &["42"], Ok(Some(42))),
            ("zero", &["0"], Ok(Some(0))),
            ("whitespace around it", &[" 7 "], Ok(Some(7))),
            ("equal list", &["7, 7"], Ok(Some(7))),
            ("equal lines", &["7", "7"], Ok(Some(7))),
            ("largest", &["18446744073709551615"], Ok(Some(u64::MAX))),
            ("different list members", &["7, 8"], Err(BadContentLength)),
            ("different lines", &["7", "8"], Err(BadContentLength)),
            ("overflow", &["18446744073709551616"], Err(BadContentLength)),
            ("sign", &["+7"], Err(BadContentLength)),
            ("negative", &["-1"], Err(BadContentLength)),
            ("hex", &["0x10"], Err(BadContentLength)),
            ("empty", &[""], Err(BadContentLength)),
            ("empty list member", &["7,"], Err(BadContentLength)),
            (
                "digits with a space inside",
                &["1 0"],
                Err(BadContentLength),
            ),
        ];
        for (name, lines, want) in cases {
            let mut length = ContentLength::default();
            let got = lines
                .iter()
                .try_for_each(|l| length.add(l.as_bytes()))
                .map(|()| length.get());
            assert_eq!(got, *want, "{name}");
        }
    }

    #[test]
    fn an_overlong_size_line_is_refused_before_its_end_arrives() {
        let line = vec![b'1'; MAX_CHUNK_SIZE_LINE];
        assert_eq!(
            chunk_size_line(&line[..MAX_CHUNK_SIZE_LINE - 1], 0),
            Ok(None)
        );
        assert_eq!(
            chunk_size_line(&line, MAX_CHUNK_SIZE_LINE - 1),
            Err(ChunkError::SizeLineTooLong)
        );
    }
}
