//! HTTP/1.1 on the upstream wire: the request head we write, the response head
//! we parse, and how long each message body is (RFC 9112 §6).

use std::mem::MaybeUninit;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use crate::proxy::h1::ContentLength;
use crate::proxy::headers::connection_tokens;

/// Response header fields accepted per head (hyper's default limit too).
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// Largest response head accepted; a backend sending more is broken.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Why a response head was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    #[error("response head larger than {MAX_RESPONSE_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid header field `{0}` in the response")]
    BadField(String),
    #[error("conflicting or invalid Content-Length in the response")]
    BadContentLength,
    #[error("unsupported status {0} (the scoped path does not switch protocols)")]
    UnsupportedStatus(u16),
}

/// How the request body is framed towards the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body bytes follow the head.
    Empty,
    /// Exactly this many bytes (the client's own `Content-Length`, kept).
    Length(u64),
    /// Length unknown in advance: re-chunked (`Transfer-Encoding` is hop-by-hop).
    Chunked,
}

/// Writes the request head: origin-form target, the (already rewritten) fields, and our
/// own framing. `Host` is among the fields: `check_head` made sure of exactly one, so the
/// same head can go to whichever server of the target accepts it.
pub fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    framing: RequestFraming,
) {
    let fields: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    out.reserve(method.as_str().len() + target.len() + fields + 64);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_fields(out, headers);
    if framing == RequestFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `name: value\r\n` for every field (a head's or a trailer section's).
pub fn push_fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The parsed fields of a head or trailer section as a map, in order.
pub fn header_map(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, WireError> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let bad = || WireError::BadField(field.name.to_owned());
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| bad())?;
        map.append(name, value);
    }
    Ok(map)
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the backend closes; the connection cannot be reused.
    UntilClose,
}

/// A parsed final response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: ResponseFraming,
    /// The backend lets us send another request on this connection.
    pub keep_alive: bool,
}

/// What [`parse_response_head`] found at the start of `buf`.
#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// An interim (1xx) response of this length, to be skipped.
    Interim(usize),
    /// The final head and its length in bytes.
    Final(ResponseHead, usize),
}

/// Parses the response head at the start of `buf`, answering a `method` request.
pub fn parse_response_head(buf: &[u8], method: &Method) -> Result<Parsed, WireError> {
    // Uninitialised: zeroing 100 fields per response was measurable.
    let mut fields =
        [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
            return Err(WireError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(WireError::Malformed(e)),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| WireError::UnsupportedStatus(code))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(WireError::UnsupportedStatus(code));
    }
    if status.is_informational() {
        return Ok(Parsed::Interim(len));
    }
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let headers = header_map(resp.headers)?;
    let (framing, framing_allows_reuse) = response_framing(&headers, status, method)?;
    let keep_alive = framing_allows_reuse && wants_keep_alive(&headers, version);
    Ok(Parsed::Final(
        ResponseHead {
            status,
            version,
            headers,
            framing,
            keep_alive,
        },
        len,
    ))
}

/// RFC 9112 §6.3, in order. The flag is false when the framing itself rules
/// out reusing the connection (read-until-close, or both CL and TE sent).
fn response_framing(
    headers: &HeaderMap,
    status: StatusCode,
    method: &Method,
) -> Result<(ResponseFraming, bool), WireError> {
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((ResponseFraming::None, true));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        let chunked = last.is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        let with_length = headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (ResponseFraming::Chunked, !with_length)
        } else {
            (ResponseFraming::UntilClose, false)
        });
    }
    let mut length = ContentLength::default();
    for value in headers.get_all(header::CONTENT_LENGTH) {
        length
            .add(value.as_bytes())
            .map_err(|_| WireError::BadContentLength)?;
    }
    Ok(match length.get() {
        Some(0) => (ResponseFraming::None, true),
        Some(n) => (ResponseFraming::Length(n), true),
        None => (ResponseFraming::UntilClose, false),
    })
}

/// HTTP/1.1 is persistent unless `Connection: close`; 1.0 only with `keep-alive`.
fn wants_keep_alive(headers: &HeaderMap, version: Version) -> bool {
    let mut close = false;
    let mut keep = false;
    for token in connection_tokens(headers) {
        close |= token.eq_ignore_ascii_case("close");
        keep |= token.eq_ignore_ascii_case("keep-alive");
    }
    if version == Version::HTTP_10 {
        keep && !close
    } else {
        !close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn final_head(raw: &str, method: &Method) -> (ResponseHead, usize) {
        match parse_response_head(raw.as_bytes(), method).unwrap() {
            Parsed::Final(head, len) => (head, len),
            other => panic!("not a final head: {other:?}"),
        }
    }

    #[test]
    fn request_head_is_origin_form_with_our_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("vip:8774"));
        headers.insert("x-auth-token", HeaderValue::from_static("abc"));
        let mut out = Vec::new();
        encode_request_head(
            &mut out,
            &Method::POST,
            "/v2.1/servers?x=1",
            &headers,
            RequestFraming::Chunked,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v2.1/servers?x=1 HTTP/1.1\r\nhost: vip:8774\r\nx-auth-token: abc\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_request_head(&mut out, &Method::GET, "/", &headers, RequestFraming::Empty);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("host:").count(), 1, "{text}");
        assert!(!text.contains("transfer-encoding"), "{text}");
    }

    #[test]
    fn partial_heads_ask_for_more_and_oversized_ones_fail() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n";
        assert!(matches!(
            parse_response_head(raw, &Method::GET),
            Ok(Parsed::Partial)
        ));
        let mut big = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        big.resize(MAX_RESPONSE_HEAD + 10, b'a');
        assert_eq!(
            parse_response_head(&big, &Method::GET).unwrap_err(),
            WireError::HeadTooLarge
        );
        assert!(matches!(
            parse_response_head(b"SMTP ready\r\n\r\n", &Method::GET),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn interim_responses_are_skipped_and_101_refused() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert!(matches!(
            parse_response_head(raw, &Method::PUT),
            Ok(Parsed::Interim(25))
        ));
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";
        assert_eq!(
            parse_response_head(raw, &Method::GET).unwrap_err(),
            WireError::UnsupportedStatus(101)
        );
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        let (h, len) = final_head(
            "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\nhello",
            &Method::GET,
        );
        assert_eq!(
            (h.framing, h.keep_alive, len),
            (ResponseFraming::Length(12), true, 39)
        );
        // HEAD answers and 204/304 carry no body whatever they announce.
        let (h, _) = final_head(
            "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(h.framing, ResponseFraming::None);
        let (h, _) = final_head("HTTP/1.1 304 Not Modified\r\n\r\n", &Method::GET);
        assert_eq!((h.framing, h.keep_alive), (ResponseFraming::None, true));
        // Transfer-Encoding wins over Content-Length, and such a connection is not reused.
        let (h, _) = final_head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n",
            &Method::GET,
        );
        assert_eq!((h.framing, h.keep_alive), (ResponseFraming::Chunked, false));
        let (h, _) = final_head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(
            (h.framing, h.keep_alive),
            (ResponseFraming::UntilClose, false)
        );
        let (h, _) = final_head("HTTP/1.1 200 OK\r\n\r\n", &Method::GET);
        assert_eq!(
            (h.framing, h.keep_alive),
            (ResponseFraming::UntilClose, false)
        );
        let (h, _) = final_head(
            "HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(h.framing, ResponseFraming::Length(7));
        // The value syntax is h1's (tested there); a bad one fails the head.
        assert_eq!(
            parse_response_head(
                b"HTTP/1.1 200 OK\r\ncontent-length: 7, 8\r\n\r\n",
                &Method::GET
            )
            .unwrap_err(),
            WireError::BadContentLength
        );
    }

    #[test]
    fn keep_alive_depends_on_version_and_connection() {
        let cases = [
            ("HTTP/1.1", "", true),
            ("HTTP/1.1", "connection: close\r\n", false),
            ("HTTP/1.1", "connection: Keep-Alive, Close\r\n", false),
            ("HTTP/1.0", "", false),
            ("HTTP/1.0", "connection: keep-alive\r\n", true),
        ];
        for (version, field, keep) in cases {
            let raw = format!("{version} 200 OK\r\ncontent-length: 0\r\n{field}\r\n");
            let (h, _) = final_head(&raw, &Method::GET);
            assert_eq!(h.keep_alive, keep, "{version} {field:?}");
        }
    }

    #[test]
    fn header_fields_keep_their_order_and_repeats() {
        let (h, _) = final_head(
            "HTTP/1.1 201 Created\r\nSet-Cookie: a=1\r\nx-openstack-request-id: req-1\r\n\
             Set-Cookie: b=2\r\ncontent-length: 0\r\n\r\n",
            &Method::POST,
        );
        assert_eq!(h.status, StatusCode::CREATED);
        let cookies: Vec<_> = h.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(h.headers["x-openstack-request-id"], "req-1");
    }
}
