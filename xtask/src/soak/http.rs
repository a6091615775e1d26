//! A small blocking HTTP/1.1 client for the soak's clients: keep-alive connections,
//! every wait bounded by a deadline, and a failure named by what the client saw on the
//! wire (connect failed, closed before any byte, closed mid-response, timed out, not
//! HTTP) instead of one opaque error, because the soak's verdict depends on which.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Largest response head accepted; the router's and the echo's are far smaller.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body kept; the echo's JSON is a few KiB.
const MAX_BODY: usize = 1024 * 1024;

/// How an exchange failed, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// `connect()` failed (refused, unreachable, timed out): nothing was sent.
    Connect,
    /// The connection ended (FIN or reset) before any byte of the response.
    ClosedBeforeResponse,
    /// The connection ended after part of the response.
    ClosedMidResponse,
    /// No complete response before the client's deadline.
    Timeout,
    /// The answer is not HTTP/1.1 (unparseable head, broken framing, too large).
    Malformed,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Connect => "connect failed",
            Transport::ClosedBeforeResponse => "closed before any response byte",
            Transport::ClosedMidResponse => "closed mid-response",
            Transport::Timeout => "no answer in time (client timeout)",
            Transport::Malformed => "malformed response",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: Transport,
    pub detail: String,
}

impl Failure {
    fn new(kind: Transport, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the server will close the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }
}

/// One client connection.
pub struct Conn {
    stream: TcpStream,
    /// Bytes read past the previous response (none in this client's use: no pipelining).
    buf: Vec<u8>,
    /// Whether any byte of the response being read has arrived.
    got_any: bool,
    /// Exchanges completed on it; a failure on a used connection may be a stale one.
    pub exchanges: u32,
}

pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, Failure> {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| Failure::new(Transport::Connect, format!("{addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    Ok(Conn {
        stream,
        buf: Vec::new(),
        got_any: false,
        exchanges: 0,
    })
}

impl Conn {
    /// Whether the peer has closed (or reset) this idle connection, as an HTTP client's
    /// pool checks before reusing one: without it, a request would be written into a
    /// connection the server closed long ago and "fail" for nothing.
    pub fn closed_by_peer(&self) -> bool {
        if !self.buf.is_empty() || self.stream.set_nonblocking(true).is_err() {
            return true;
        }
        let mut byte = [0u8; 1];
        let closed = match self.stream.peek(&mut byte) {
            // Bytes nobody asked for, or the end of the stream.
            Ok(_) => true,
            Err(e) => e.kind() != ErrorKind::WouldBlock,
        };
        closed || self.stream.set_nonblocking(false).is_err()
    }

    /// Sends `request` (a whole request, head and body) and reads one response, all
    /// before `deadline`.
    pub fn exchange(&mut self, request: &[u8], deadline: Instant) -> Result<Response, Failure> {
        self.send(request, deadline)?;
        let response = self.read_response(deadline, false)?;
        self.exchanges += 1;
        Ok(response)
    }

    /// Writes raw bytes (a whole request, or a piece of one for the hostile clients).
    pub fn send(&mut self, bytes: &[u8], deadline: Instant) -> Result<(), Failure> {
        let left = remaining(deadline)?;
        let _ = self.stream.set_write_timeout(Some(left));
        self.stream.write_all(bytes).map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                Failure::new(Transport::Timeout, "request not sent in time")
            }
            _ => Failure::new(Transport::ClosedBeforeResponse, format!("sending: {e}")),
        })
    }

    /// Reads one response; `head_request`: the answer to a HEAD has no body.
    pub fn read_response(
        &mut self,
        deadline: Instant,
        head_request: bool,
    ) -> Result<Response, Failure> {
        self.got_any = !self.buf.is_empty();
        let (status, headers, head_len) = loop {
            if let Some(parsed) = parse_head(&self.buf)? {
                break parsed;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Failure::new(
                    Transport::Malformed,
                    "response head too large",
                ));
            }
            self.fill(deadline)?;
        };
        self.buf.drain(..head_len);
        let response = |body| Response {
            status,
            headers: headers.clone(),
            body,
        };
        if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok(response(Vec::new()));
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        if header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            let body = self.read_chunked(deadline)?;
            return Ok(response(body));
        }
        if let Some(length) = header("content-length") {
            let length: usize = length
                .trim()
                .parse()
                .map_err(|_| Failure::new(Transport::Malformed, "bad content-length"))?;
            if length > MAX_BODY {
                return Err(Failure::new(
                    Transport::Malformed,
                    "response body too large",
                ));
            }
            while self.buf.len() < length {
                self.fill(deadline)?;
            }
            let body: Vec<u8> = self.buf.drain(..length).collect();
            return Ok(response(body));
        }
        // Delimited by the close.
        loop {
            match self.fill(deadline) {
                Ok(()) if self.buf.len() <= MAX_BODY => {}
                Ok(()) => {
                    return Err(Failure::new(
                        Transport::Malformed,
                        "response body too large",
                    ));
                }
                Err(f) if f.kind == Transport::ClosedMidResponse => {
                    return Ok(response(std::mem::take(&mut self.buf)));
                }
                Err(f) => return Err(f),
            }
        }
    }

    fn read_chunked(&mut self, deadline: Instant) -> Result<Vec<u8>, Failure> {
        let mut body = Vec::new();
        loop {
            let line = self.line(deadline)?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| Failure::new(Transport::Malformed, "bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line(deadline)?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY {
                return Err(Failure::new(
                    Transport::Malformed,
                    "response body too large",
                ));
            }
            while self.buf.len() < size + 2 {
                self.fill(deadline)?;
            }
            body.extend(self.buf.drain(..size));
            if self.buf.drain(..2).as_slice() != b"\r\n" {
                return Err(Failure::new(
                    Transport::Malformed,
                    "chunk not followed by CRLF",
                ));
            }
        }
    }

    /// One CRLF-terminated line, without the CRLF.
    fn line(&mut self, deadline: Instant) -> Result<String, Failure> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Failure::new(Transport::Malformed, "framing line too long"));
            }
            self.fill(deadline)?;
        }
    }

    /// Reads more bytes into the buffer; the end of the stream is a failure whose kind
    /// says whether any of the response had arrived.
    fn fill(&mut self, deadline: Instant) -> Result<(), Failure> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let left = remaining(deadline)?;
            let _ = self.stream.set_read_timeout(Some(left));
            let closed = |detail: String, got_any: bool| {
                let kind = if got_any {
                    Transport::ClosedMidResponse
                } else {
                    Transport::ClosedBeforeResponse
                };
                Failure::new(kind, detail)
            };
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(closed("closed by the peer".into(), self.got_any)),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.got_any = true;
                    return Ok(());
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(closed(e.to_string(), self.got_any)),
            }
        }
    }
}

fn remaining(deadline: Instant) -> Result<Duration, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(Failure::new(Transport::Timeout, "deadline passed"))
    } else {
        Ok(left)
    }
}

type Head = (u16, Vec<(String, String)>, usize);

/// The status, fields and head length once the head is complete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Failure> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut fields);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let status = response
                .code
                .ok_or_else(|| Failure::new(Transport::Malformed, "no status code"))?;
            let headers = response
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            Ok(Some((status, headers, len)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(Failure::new(
            Transport::Malformed,
            format!("response head: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A one-connection server on loopback writing `answer` after reading a request head.
    fn serve(answer: &'static [u8], then_close: bool) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            s.write_all(answer).expect("answer");
            if !then_close {
                // Hold the connection until the client is done with it.
                let _ = s.read(&mut byte);
            }
        });
        (addr, handle)
    }

    fn get(addr: SocketAddr) -> Result<Response, Failure> {
        let mut conn = connect(addr, Duration::from_secs(2))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        conn.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", deadline)
    }

    #[test]
    fn bodies_are_read_by_length_chunks_or_close() {
        let (addr, h) = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
            false,
        );
        let r = get(addr).expect("a response");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(r.header("x-a"), Some("b"));
        drop(h);
        let (addr, _h) = serve(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nhel\r\n2\r\nlo\r\n0\r\nT: 1\r\n\r\n",
            false,
        );
        assert_eq!(get(addr).expect("chunked").body, b"hello");
        let (addr, _h) = serve(b"HTTP/1.1 503 No\r\nConnection: close\r\n\r\nbye", true);
        let r = get(addr).expect("close-delimited");
        assert_eq!((r.status, r.body.as_slice()), (503, &b"bye"[..]));
        assert!(r.closes());
    }

    #[test]
    fn failures_say_how_far_the_answer_got() {
        let (addr, _h) = serve(b"", true);
        assert_eq!(
            get(addr).expect_err("no answer").kind,
            Transport::ClosedBeforeResponse
        );
        let (addr, _h) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhal", true);
        assert_eq!(
            get(addr).expect_err("cut").kind,
            Transport::ClosedMidResponse
        );
        let (addr, _h) = serve(b"SSH-2.0-OpenSSH\r\n\r\n", true);
        assert_eq!(get(addr).expect_err("not HTTP").kind, Transport::Malformed);
        let closed = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        // Nothing listens there once the listener is dropped.
        assert_eq!(get(closed).expect_err("refused").kind, Transport::Connect);
        let (addr, _h) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", false);
        let mut conn = connect(addr, Duration::from_secs(2)).expect("connect");
        let soon = Instant::now() + Duration::from_millis(300);
        let err = conn
            .exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", soon)
            .expect_err("the body never comes");
        assert_eq!(err.kind, Transport::Timeout);
    }

    #[test]
    fn a_connection_the_server_closed_is_not_reused() {
        let (addr, h) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true);
        let mut conn = connect(addr, Duration::from_secs(2)).expect("connect");
        conn.exchange(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            Instant::now() + Duration::from_secs(5),
        )
        .expect("a response");
        h.join().expect("server done");
        // The server's FIN may take a moment to arrive.
        let limit = Instant::now() + Duration::from_secs(5);
        while !conn.closed_by_peer() {
            assert!(Instant::now() < limit, "the close was never seen");
            std::thread::sleep(Duration::from_millis(10));
        }
        let (addr, _h) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        let mut open = connect(addr, Duration::from_secs(2)).expect("connect");
        open.exchange(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            Instant::now() + Duration::from_secs(5),
        )
        .expect("a response");
        assert!(
            !open.closed_by_peer(),
            "an open idle connection is reusable"
        );
        // And it still works as a blocking connection afterwards.
        open.send(b"x", Instant::now() + Duration::from_secs(1))
            .expect("send");
    }
}
