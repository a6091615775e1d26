//! Upstream HTTP/1.1 for scoped requests, done in the task serving the client:
//! lease a pooled connection (or connect), write the head, stream the body,
//! read the response head, and hand back a body that decodes itself off the
//! socket. No connection task, channel or wake-up sits between the two sides.

pub mod body;
pub mod io;
pub mod legacy;
pub mod pool;
pub mod wire;

use std::io as stdio;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Response};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use body::{ResponseBodyError, UpstreamBody};
pub use legacy::{UpstreamClient, client};

use super::error::{ErrorKind, ProxyError};
use super::headers::drop_forbidden_trailers;
use super::idle::IdleIo;
use crate::access_log::BodyError;
use crate::balance::Server;
use crate::config::Timeouts;
use crate::health::Health;
use crate::metrics::TrafficStats;
use crate::server_slots::{Picker, Slot};
use crate::tls::TlsHop;
use io::UpstreamIo;
use pool::{Lease, Pool};
use wire::{Parsed, RequestFraming};

/// Initial buffer for a response head (grows up to [`wire::MAX_RESPONSE_HEAD`]).
const HEAD_BUF: usize = 8 * 1024;

/// Every scoped request's upstream side: one pool of keep-alive connections.
#[derive(Debug)]
pub struct Upstreams {
    pool: Arc<Pool>,
}

/// What one [`Upstreams::send_to_any`] took, for the access log and `/metrics`.
#[derive(Debug, Default)]
pub struct SendReport<'a> {
    /// Where new connections' connect times are observed (`None`: not counted).
    pub stats: Option<&'a TrafficStats>,
    /// Further servers tried after a connect failed.
    pub redispatches: u32,
    /// Re-sends on a fresh connection after a pooled one was found closed.
    pub retries: u32,
    /// Request body bytes read from the client.
    pub body_bytes: u64,
    /// Time spent waiting for a `maxconn` slot.
    pub queued: Duration,
}

/// A failed attempt, and whether it may be repeated on a fresh connection.
struct Failure {
    error: ProxyError,
    /// The request cannot have been acted on (stale pooled connection).
    retry_on_fresh: bool,
}

impl Failure {
    fn fatal(error: ProxyError) -> Self {
        Failure {
            error,
            retry_on_fresh: false,
        }
    }
}

impl Upstreams {
    /// Starts the pool (and its sweeper task, on the current runtime).
    pub fn start() -> Self {
        Upstreams {
            pool: Pool::start(),
        }
    }

    /// The idle connection pool (read by `/metrics`).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Sends the rewritten request to `upstream` ("host:port"), an unlimited server. The
    /// request body streams as the client sends it; no deadline covers the whole
    /// exchange (a 6 h image upload is fine while bytes move), the
    /// connection's inactivity timeout (`timeouts.idle`) ends a silent backend.
    ///
    /// A pooled connection the backend closed meanwhile is retried once on a
    /// fresh one when that cannot repeat a side effect: the head could not be
    /// written, or an idempotent bodiless request got no byte of answer.
    pub async fn send<B>(
        &self,
        upstream: &Arc<str>,
        timeouts: &Timeouts,
        parts: http::request::Parts,
        body: B,
    ) -> Result<Response<UpstreamBody>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: Into<BodyError>,
    {
        let only = [Server::new(Health::new(upstream.to_string()))];
        let mut body = Some(body);
        let (resp, _) = self
            .send_to_any(
                Picker::new(only.iter(), false, timeouts.queue),
                0,
                timeouts,
                &parts,
                &mut body,
                |_, _| {},
                &mut SendReport::default(),
            )
            .await?;
        Ok(resp)
    }

    /// Like [`Upstreams::send`] over several servers (HAProxy's `retries` with `option
    /// redispatch`): the first server `servers` gives (with a `maxconn` slot, waiting in
    /// the queue when every one is full) that accepts a connection gets the request;
    /// when connecting fails, nothing was sent, so the next one is tried, for any
    /// method, up to `retries` more servers. `refused` hears each failed server. A
    /// request that reached a server is never sent to another. Returns the response
    /// and the server that answered; the response body holds the server's slot until
    /// it ends. `body` stays in place when no server accepted a connection (or the queue
    /// timed out), so the caller may still send the request elsewhere. `report` says what
    /// it took (for the access log and `/metrics`), whatever the outcome.
    #[allow(clippy::too_many_arguments)] // the request, where it goes, and who hears failures
    pub async fn send_to_any<'s, I, B>(
        &self,
        mut servers: Picker<'s, I>,
        retries: u32,
        timeouts: &Timeouts,
        parts: &http::request::Parts,
        body: &mut Option<B>,
        mut refused: impl FnMut(&'s Server, &ProxyError),
        report: &mut SendReport<'_>,
    ) -> Result<(Response<UpstreamBody>, &'s Server), ProxyError>
    where
        I: Iterator<Item = &'s Server>,
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: Into<BodyError>,
    {
        let framing = match body {
            None => RequestFraming::Empty,
            Some(b) if http_body::Body::is_end_stream(b) => RequestFraming::Empty,
            Some(b) => match http_body::Body::size_hint(b).exact() {
                Some(n) => RequestFraming::Length(n),
                None => RequestFraming::Chunked,
            },
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut head = Vec::new();
        wire::encode_request_head(&mut head, &parts.method, target, &parts.headers, framing);
        // Connect to the first server that accepts; nothing is sent before that.
        let mut failed: Option<(&Arc<str>, ProxyError)> = None;
        let mut attempts = 0;
        let (server, mut slot, mut lease) = loop {
            let next = servers.next().await;
            report.queued = servers.waited();
            let (server, slot) = match next {
                Ok(Some(next)) => next,
                Ok(None) => {
                    return Err(failed.map_or_else(
                        || ProxyError::new(ErrorKind::ConnectRefused, "-", None),
                        |(_, e)| e,
                    ));
                }
                Err(timeout) => {
                    let upstream = failed.as_ref().map_or("-", |(u, _)| &**u);
                    return Err(ProxyError::new(
                        ErrorKind::QueueTimeout,
                        upstream,
                        Some(Box::new(timeout)),
                    ));
                }
            };
            let upstream = server.health.upstream();
            if let Some((previous, e)) = &failed {
                report.redispatches += 1;
                tracing::debug!(upstream = %previous, next = %upstream, "connect failed ({e}); redispatching");
            }
            attempts += 1;
            match self
                .lease(upstream, server.tls.as_ref(), timeouts, false, report)
                .await
            {
                Ok(lease) => break (server, slot, lease),
                Err(e) => {
                    // The slot goes back before waiting for the next server's.
                    drop(slot);
                    refused(server, &e);
                    if attempts > retries {
                        return Err(e);
                    }
                    failed = Some((upstream, e));
                }
            }
        };
        let upstream = server.health.upstream();
        loop {
            let reused = lease.reused;
            let sent = exchange(
                lease,
                upstream,
                &head,
                (&parts.method, framing),
                timeouts,
                (body, &mut slot),
                &mut report.body_bytes,
            )
            .await;
            match sent {
                Ok(resp) => return Ok((resp, server)),
                Err(f) if reused && f.retry_on_fresh => {
                    tracing::debug!(%upstream, "pooled connection was closed by the backend ({}); retrying on a new one", f.error);
                    report.retries += 1;
                }
                Err(f) => return Err(f.error),
            }
            // Same server, same slot.
            lease = self
                .lease(upstream, server.tls.as_ref(), timeouts, true, report)
                .await?;
        }
    }

    /// A connection to `upstream`: a pooled one unless `fresh_only`, else a new one
    /// (over TLS, verified, when `tls` is set).
    async fn lease(
        &self,
        upstream: &Arc<str>,
        tls: Option<&Arc<TlsHop>>,
        timeouts: &Timeouts,
        fresh_only: bool,
        report: &SendReport<'_>,
    ) -> Result<Lease, ProxyError> {
        let pooled = (!fresh_only)
            .then(|| self.pool.take(upstream, tls))
            .flatten();
        let (stream, reused) = match pooled {
            Some(mut stream) => {
                stream.restart(timeouts.idle);
                (stream, true)
            }
            None => {
                let started = std::time::Instant::now();
                let stream = connect(upstream, tls.map(|h| &**h), timeouts.connect)
                    .await
                    .inspect_err(|e| {
                        if e.kind == ErrorKind::TlsHandshake
                            && let Some(stats) = report.stats
                        {
                            stats.tls_handshake_failed();
                        }
                    })?;
                if let Some(stats) = report.stats {
                    stats.observe_connect(started.elapsed());
                }
                (IdleIo::new(stream, timeouts.idle), false)
            }
        };
        Ok(Lease::new(
            stream,
            reused,
            self.pool.clone(),
            (upstream.clone(), tls.cloned()),
        ))
    }
}

/// Opens a connection within `timeout` (name resolution included), and with `tls` its
/// TLS session within the same time: the handshake is part of connecting.
async fn connect(
    upstream: &str,
    tls: Option<&TlsHop>,
    timeout: Duration,
) -> Result<UpstreamIo, ProxyError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = match tokio::time::timeout_at(deadline, tcp_connect(upstream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Err(ProxyError::new(
                ErrorKind::ConnectRefused,
                upstream,
                Some(Box::new(e)),
            ));
        }
        Err(_) => return Err(connect_timeout(upstream, timeout, "no connection")),
    };
    // Heads and small bodies go out as written; latency beats coalescing here.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%upstream, "cannot set TCP_NODELAY: {e}");
    }
    match tls {
        None => Ok(UpstreamIo::Plain(stream)),
        // Boxed: a handshake's state is large, and inline it would grow every request's
        // future, cleartext ones included.
        Some(hop) => Box::pin(handshake(upstream, hop, stream, (deadline, timeout))).await,
    }
}

/// The TLS handshake over `stream`, by `deadline` (the rest of the connect `timeout`).
async fn handshake(
    upstream: &str,
    hop: &TlsHop,
    stream: TcpStream,
    (deadline, timeout): (tokio::time::Instant, Duration),
) -> Result<UpstreamIo, ProxyError> {
    match tokio::time::timeout_at(deadline, hop.connect(stream)).await {
        Ok(Ok(tls)) => Ok(UpstreamIo::Tls(Box::new(tls))),
        Ok(Err(e)) => Err(ProxyError::new(
            ErrorKind::TlsHandshake,
            upstream,
            Some(Box::new(e)),
        )),
        Err(_) => Err(connect_timeout(upstream, timeout, "no TLS handshake")),
    }
}

/// `what` ("no connection") did not happen within the connect `timeout`.
fn connect_timeout(upstream: &str, timeout: Duration, what: &str) -> ProxyError {
    let e = stdio::Error::new(
        stdio::ErrorKind::TimedOut,
        format!("{what} within {}", humantime::format_duration(timeout)),
    );
    ProxyError::new(ErrorKind::ConnectTimeout, upstream, Some(Box::new(e)))
}

/// A TCP connection to `upstream`, its name resolved if it is not an address.
async fn tcp_connect(upstream: &str) -> stdio::Result<TcpStream> {
    if let Ok(addr) = upstream.parse::<SocketAddr>() {
        return TcpStream::connect(addr).await;
    }
    let mut last = stdio::Error::new(stdio::ErrorKind::NotFound, "the name has no address");
    for addr in tokio::net::lookup_host(upstream).await? {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The upstream-side cause of a failed read or write.
fn upstream_io(e: stdio::Error, upstream: &str) -> ProxyError {
    let kind = if e.kind() == stdio::ErrorKind::TimedOut {
        ErrorKind::ResponseTimeout
    } else {
        ErrorKind::UpstreamProtocol
    };
    ProxyError::new(kind, upstream, Some(Box::new(e)))
}

/// Why streaming the request body stopped.
enum BodySend {
    /// The client's body failed (aborted upload, bad chunking).
    Downstream(BodyError),
    /// Writing to the backend failed.
    Upstream(stdio::Error),
}

/// One attempt on one connection. `slot` moves into the response body when there is one
/// to relay, and stays with the caller otherwise (for a retry on the same server).
async fn exchange<B>(
    mut lease: Lease,
    upstream: &str,
    head: &[u8],
    (method, framing): (&http::Method, RequestFraming),
    timeouts: &Timeouts,
    (body, slot): (&mut Option<B>, &mut Option<Slot>),
    body_bytes: &mut u64,
) -> Result<Response<UpstreamBody>, Failure>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    // A TLS stream keeps what the socket did not take in its own buffer until flushed
    // (a cleartext one has nothing to flush): flushed before waiting on anyone.
    let sent_head = async {
        lease.stream.write_all(head).await?;
        lease.stream.flush().await
    };
    if let Err(e) = sent_head.await {
        // At most part of the head arrived: nothing the backend can act on,
        // and the body (if any) is still unread, so it can be sent again.
        return Err(Failure {
            error: upstream_io(e, upstream),
            retry_on_fresh: true,
        });
    }
    let mut send_failed = None;
    if framing != RequestFraming::Empty
        && let Some(b) = body.take()
    {
        match send_body(&mut lease.stream, b, framing, body_bytes).await {
            Ok(()) => {}
            Err(BodySend::Downstream(e)) => {
                return Err(Failure::fatal(ProxyError::new(
                    ErrorKind::DownstreamBody,
                    upstream,
                    Some(e),
                )));
            }
            // The backend may have answered early (413, 401…) and stopped
            // reading: relay that answer if there is one.
            Err(BodySend::Upstream(e)) => send_failed = Some(e),
        }
    }
    let retry_on_fresh = framing == RequestFraming::Empty && method.is_idempotent();
    // The request is sent: the backend owes its head, and `response_head` (not `idle`,
    // 6 h on Glance) bounds its silence. Same timer as `idle`, only its budget changes.
    lease.stream.set_timeout(timeouts.response_head);
    let mut buf = BytesMut::with_capacity(HEAD_BUF);
    let mut answered = false;
    loop {
        match wire::parse_response_head(&buf, method) {
            Ok(Parsed::Final(head, len)) => {
                buf.advance(len);
                // The body streams under `idle` again.
                lease.stream.set_timeout(timeouts.idle);
                lease.slot = slot.take();
                let keep_alive = head.keep_alive && send_failed.is_none();
                let body = UpstreamBody::new(head.framing, buf, lease, keep_alive);
                let mut resp = Response::new(body);
                *resp.status_mut() = head.status;
                *resp.version_mut() = head.version;
                *resp.headers_mut() = head.headers;
                return Ok(resp);
            }
            Ok(Parsed::Interim(len)) => {
                buf.advance(len);
                continue;
            }
            Ok(Parsed::Partial) => {}
            Err(e) => {
                return Err(Failure::fatal(ProxyError::new(
                    ErrorKind::UpstreamProtocol,
                    upstream,
                    Some(Box::new(e)),
                )));
            }
        }
        if buf.capacity() - buf.len() < HEAD_BUF / 2 {
            // Without spare room `read_buf` would grow the buffer 64 bytes a time.
            buf.reserve(HEAD_BUF);
        }
        let read = lease.stream.read_buf(&mut buf).await;
        // After a failed body write with nothing to relay, the write error
        // is the real story.
        let error = match read {
            Ok(n) if n > 0 => {
                answered = true;
                continue;
            }
            Ok(_) => send_failed.take().unwrap_or_else(|| {
                stdio::Error::new(
                    stdio::ErrorKind::UnexpectedEof,
                    if answered {
                        "the backend closed the connection inside the response head"
                    } else {
                        "the backend closed the connection without answering"
                    },
                )
            }),
            Err(e) if e.kind() == stdio::ErrorKind::TimedOut && send_failed.is_none() => {
                stdio::Error::new(
                    stdio::ErrorKind::TimedOut,
                    format!(
                        "no response head within {} ([timeouts] response_head)",
                        humantime::format_duration(timeouts.response_head)
                    ),
                )
            }
            Err(e) => send_failed.take().unwrap_or(e),
        };
        return Err(Failure {
            retry_on_fresh: retry_on_fresh
                && !answered
                && error.kind() != stdio::ErrorKind::TimedOut,
            error: upstream_io(error, upstream),
        });
    }
}

/// Streams the client's body to the backend in the chosen framing.
async fn send_body<B>(
    stream: &mut IdleIo<UpstreamIo>,
    mut body: B,
    framing: RequestFraming,
    sent: &mut u64,
) -> Result<(), BodySend>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    let chunked = framing == RequestFraming::Chunked;
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodySend::Downstream(e.into()))?;
        if let Some(data) = frame.data_ref() {
            // Counted as read from the client: what it sent, written or not.
            *sent += data.len() as u64;
        }
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) if chunked => {
                let size = format!("{:x}\r\n", data.len());
                let mut chunk = Bytes::from(size).chain(data).chain(&b"\r\n"[..]);
                stream
                    .write_all_buf(&mut chunk)
                    .await
                    .map_err(BodySend::Upstream)?;
                // Out before the next frame is awaited (see `exchange`).
                stream.flush().await.map_err(BodySend::Upstream)?;
            }
            Ok(mut data) => {
                stream
                    .write_all_buf(&mut data)
                    .await
                    .map_err(BodySend::Upstream)?;
                stream.flush().await.map_err(BodySend::Upstream)?;
            }
            Err(frame) => {
                // Framing, routing and scope fields were checked on the head only.
                trailers = frame
                    .into_trailers()
                    .ok()
                    .and_then(|mut t| (!drop_forbidden_trailers(&mut t)).then_some(t));
            }
        }
    }
    if chunked {
        let mut end = b"0\r\n".to_vec();
        if let Some(trailers) = &trailers {
            wire::push_fields(&mut end, trailers);
        }
        end.extend_from_slice(b"\r\n");
        stream.write_all(&end).await.map_err(BodySend::Upstream)?;
        stream.flush().await.map_err(BodySend::Upstream)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body::Frame;
    use http_body_util::{Empty, Full, StreamBody};
    use tokio::net::TcpListener;

    use super::*;
    use crate::problem::ConfigAt;
    use crate::tls::testing::Pki;
    use crate::tls::{CertStore, Profile, TlsSettings, TlsTable, load_identity, server_config};

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// A scripted backend on 127.0.0.1: `answer(i)` is what the i-th request
    /// of a connection gets (`None`: the connection is closed unanswered).
    struct Backend {
        addr: Arc<str>,
        connections: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<String>>>,
        /// Per request, whether it came over TLS.
        over_tls: Arc<Mutex<Vec<bool>>>,
    }

    async fn backend(answer: fn(usize) -> Option<&'static str>) -> Backend {
        backend_on(answer, None).await
    }

    /// [`backend`], also speaking TLS with `tls` to a client whose first byte is a TLS
    /// handshake record (the same port serves both, so the pool's keys are what keep
    /// them apart).
    async fn backend_on(
        answer: fn(usize) -> Option<&'static str>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: Arc<str> = Arc::from(listener.local_addr().unwrap().to_string());
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let over_tls = Arc::new(Mutex::new(Vec::new()));
        let (conns, reqs, kinds) = (connections.clone(), requests.clone(), over_tls.clone());
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                conns.fetch_add(1, Ordering::SeqCst);
                let (reqs, kinds, tls) = (reqs.clone(), kinds.clone(), tls.clone());
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    let handshake =
                        s.peek(&mut first).await.is_ok_and(|n| n == 1) && first[0] == 0x16;
                    match tls.filter(|_| handshake) {
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            if let Ok(s) = acceptor.accept(s).await {
                                serve_requests(s, answer, (&reqs, &kinds), true).await;
                            }
                        }
                        None => serve_requests(s, answer, (&reqs, &kinds), false).await,
                    }
                });
            }
        });
        Backend {
            addr,
            connections,
            requests,
            over_tls,
        }
    }

    async fn serve_requests<S>(
        mut s: S,
        answer: fn(usize) -> Option<&'static str>,
        (reqs, kinds): (&Mutex<Vec<String>>, &Mutex<Vec<bool>>),
        tls: bool,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut buf = Vec::new();
        for i in 0.. {
            let Some(req) = read_request(&mut s, &mut buf).await else {
                return;
            };
            reqs.lock().unwrap().push(req);
            kinds.lock().unwrap().push(tls);
            let Some(resp) = answer(i) else { return };
            s.write_all(resp.as_bytes()).await.unwrap();
            s.flush().await.unwrap();
        }
    }

    /// One request (head plus a Content-Length or chunked body) as text.
    async fn read_request<S>(s: &mut S, buf: &mut Vec<u8>) -> Option<String>
    where
        S: tokio::io::AsyncRead + Unpin,
    {
        let complete = |b: &[u8]| {
            let text = String::from_utf8_lossy(b);
            let end = text.find("\r\n\r\n")? + 4;
            let head = text[..end].to_ascii_lowercase();
            if head.contains("transfer-encoding: chunked") {
                // The last chunk, then its trailer section up to the empty line.
                let last = end - 2 + text[end - 2..].find("\r\n0\r\n")? + 3;
                return text[last..].find("\r\n\r\n").map(|i| last + i + 4);
            }
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            (b.len() >= end + len).then_some(end + len)
        };
        loop {
            if let Some(len) = complete(buf) {
                let req = String::from_utf8_lossy(&buf[..len]).into_owned();
                buf.drain(..len);
                return Some(req);
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn get(path: &str) -> http::request::Parts {
        http::Request::get(path)
            .header(http::header::HOST, "vip:8774")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(5),
            idle: Duration::from_secs(5),
            ..Timeouts::default()
        }
    }

    async fn fetch<B>(
        ups: &Upstreams,
        to: &Arc<str>,
        parts: http::request::Parts,
        body: B,
    ) -> Result<(u16, String), ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: Into<BodyError>,
    {
        let resp = ups.send(to, &timeouts(), parts, body).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    #[tokio::test]
    async fn keep_alive_connections_are_reused_across_framings() {
        let b = backend(|i| {
            Some(match i {
                0 => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                1 => "HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\nnope",
                _ => "HTTP/1.1 204 No Content\r\n\r\n",
            })
        })
        .await;
        let ups = Upstreams::start();
        let first = fetch(&ups, &b.addr, get("/a?x=1"), Empty::<Bytes>::new())
            .await
            .unwrap();
        assert_eq!(first, (200, "hello".to_owned()));
        let second = fetch(&ups, &b.addr, get("/b"), Empty::<Bytes>::new())
            .await
            .unwrap();
        assert_eq!(second, (404, "nope".to_owned()));
        let third = fetch(&ups, &b.addr, get("/c"), Empty::<Bytes>::new())
            .await
            .unwrap();
        assert_eq!(third, (204, String::new()));
        assert_eq!(b.connections.load(Ordering::SeqCst), 1);
        let reqs = b.requests.lock().unwrap();
        assert!(
            reqs[0].starts_with("GET /a?x=1 HTTP/1.1\r\n"),
            "{}",
            reqs[0]
        );
        // Host travels as the proxy set it (`check_head` guarantees one).
        assert!(reqs[0].contains("host: vip:8774\r\n"), "{}", reqs[0]);
    }

    /// A port nothing listens on (bound, noted, closed).
    async fn dead_addr() -> Arc<str> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Arc::from(l.local_addr().unwrap().to_string())
    }

    /// Sends over `servers` with `retries`; the response (or error) and who was refused.
    async fn redispatch<B>(
        servers: &[Arc<str>],
        retries: u32,
        parts: http::request::Parts,
        body: B,
    ) -> (Result<(u16, Arc<str>), ProxyError>, Vec<Arc<str>>)
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: Into<BodyError>,
    {
        let ups = Upstreams::start();
        let servers: Vec<Server> = servers
            .iter()
            .map(|a| Server::new(Health::new(a.to_string())))
            .collect();
        let mut refused = Vec::new();
        let mut body = Some(body);
        let sent = ups
            .send_to_any(
                Picker::new(servers.iter(), false, timeouts().queue),
                retries,
                &timeouts(),
                &parts,
                &mut body,
                |s, _| refused.push(s.health.upstream().clone()),
                &mut SendReport::default(),
            )
            .await
            .map(|(resp, s)| (resp.status().as_u16(), s.health.upstream().clone()));
        (sent, refused)
    }

    #[tokio::test]
    async fn a_refused_connection_is_redispatched_for_any_method() {
        let live = backend(|_| Some(OK)).await;
        let dead = dead_addr().await;
        let mut post = get("/servers");
        post.method = http::Method::POST;
        let (sent, refused) = redispatch(
            &[dead.clone(), live.addr.clone()],
            3,
            post,
            Full::new(Bytes::from_static(b"{}")),
        )
        .await;
        assert_eq!(sent.unwrap(), (200, live.addr.clone()));
        assert_eq!(refused, std::slice::from_ref(&dead));
        assert_eq!(live.requests.lock().unwrap().len(), 1);

        // `retries` bounds the servers tried: with none, the first refusal is final.
        let (sent, refused) = redispatch(
            &[dead.clone(), live.addr.clone()],
            0,
            get("/"),
            Empty::<Bytes>::new(),
        )
        .await;
        assert_eq!(sent.unwrap_err().kind, ErrorKind::ConnectRefused);
        assert_eq!(refused, [dead]);
        assert_eq!(live.requests.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_response_body_holds_the_slot_and_a_refused_server_gets_its_back() {
        let live = backend(|_| Some(OK)).await;
        let dead = dead_addr().await;
        let limited = |addr: &Arc<str>| Server {
            slots: Some(crate::server_slots::Slots::new(1)),
            ..Server::new(Health::new(addr.to_string()))
        };
        let servers = [limited(&dead), limited(&live.addr)];
        let in_use = |i: usize| servers[i].slots.as_ref().unwrap().in_use();
        let ups = Upstreams::start();
        let mut body = Some(Empty::<Bytes>::new());
        let mut report = SendReport::default();
        let (resp, server) = ups
            .send_to_any(
                Picker::new(servers.iter(), false, timeouts().queue),
                3,
                &timeouts(),
                &get("/"),
                &mut body,
                |_, _| {},
                &mut report,
            )
            .await
            .unwrap();
        assert_eq!(server.health.addr(), &*live.addr);
        assert_eq!(report.redispatches, 1);
        assert_eq!(
            (in_use(0), in_use(1)),
            (0, 1),
            "slots while the body is unread"
        );
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"ok");
        assert_eq!(in_use(1), 0, "the ended body gave its slot back");
        assert_eq!(ups.pool.idle_count(&live.addr), 1);
    }

    #[tokio::test]
    async fn a_request_that_reached_a_server_is_never_sent_to_another() {
        // The first server reads the POST and closes without answering.
        let swallow = backend(|_| None).await;
        let other = backend(|_| Some(OK)).await;
        let mut post = get("/servers");
        post.method = http::Method::POST;
        let (sent, refused) = redispatch(
            &[swallow.addr.clone(), other.addr.clone()],
            3,
            post,
            Full::new(Bytes::from_static(b"{}")),
        )
        .await;
        assert_eq!(sent.unwrap_err().kind, ErrorKind::UpstreamProtocol);
        assert!(refused.is_empty());
        assert_eq!(swallow.requests.lock().unwrap().len(), 1);
        assert_eq!(other.connections.load(Ordering::SeqCst), 0, "sent twice");
    }

    #[tokio::test]
    async fn response_heads_larger_than_the_first_read_are_reassembled() {
        let b = backend(|_| {
            let big = "t".repeat(20_000);
            let resp =
                format!("HTTP/1.1 200 OK\r\nx-subject-token: {big}\r\ncontent-length: 2\r\n\r\nok");
            Some(Box::leak(resp.into_boxed_str()))
        })
        .await;
        let ups = Upstreams::start();
        let resp = ups
            .send(&b.addr, &timeouts(), get("/"), Empty::<Bytes>::new())
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-subject-token"].len(), 20_000);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_unanswered_is_retried_for_idempotent_requests() {
        let b = backend(|i| (i == 0).then_some(OK)).await;
        let ups = Upstreams::start();
        for _ in 0..3 {
            let got = fetch(&ups, &b.addr, get("/"), Empty::<Bytes>::new())
                .await
                .unwrap();
            assert_eq!(got, (200, "ok".to_owned()));
        }
        // Each connection served one request; the second on each was retried.
        assert_eq!(b.connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_post_the_backend_may_have_seen_is_not_sent_twice() {
        let b = backend(|i| (i == 0).then_some(OK)).await;
        let ups = Upstreams::start();
        let post = || {
            http::Request::post("/servers")
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let got = fetch(&ups, &b.addr, post(), Full::new(Bytes::from("{}")))
            .await
            .unwrap();
        assert_eq!(got.0, 200);
        let err = fetch(&ups, &b.addr, post(), Full::new(Bytes::from("{}")))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamProtocol);
        assert_eq!(b.connections.load(Ordering::SeqCst), 1);
        assert_eq!(b.requests.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn connection_close_answers_are_not_pooled() {
        let b = backend(|_| {
            Some("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
        })
        .await;
        let ups = Upstreams::start();
        for _ in 0..2 {
            fetch(&ups, &b.addr, get("/"), Empty::<Bytes>::new())
                .await
                .unwrap();
        }
        assert_eq!(b.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_sent_chunked() {
        let b = backend(|_| Some(OK)).await;
        let ups = Upstreams::start();
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from("abc"))),
            Ok(Frame::data(Bytes::from("0123456789abcdef"))),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let put = http::Request::put("/v2/images/x/file")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        fetch(&ups, &b.addr, put, body).await.unwrap();
        let req = b.requests.lock().unwrap()[0].clone();
        assert!(
            req.ends_with(
                "transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"
            ),
            "{req}"
        );
    }

    #[tokio::test]
    async fn request_trailers_that_must_not_be_trailers_are_not_forwarded() {
        let b = backend(|_| Some(OK)).await;
        let ups = Upstreams::start();
        let mut trailers = HeaderMap::new();
        for (n, v) in [
            ("x-checksum", "42"),
            ("host", "evil"),
            ("content-length", "99"),
            ("transfer-encoding", "gzip"),
            ("x-scope", r#"{"compute": "RegionTwo"}"#),
        ] {
            trailers.insert(
                http::HeaderName::from_static(n),
                http::HeaderValue::from_static(v),
            );
        }
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from("abc"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let put = http::Request::put("/v2/images/x/file")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        fetch(&ups, &b.addr, put, body).await.unwrap();
        let req = b.requests.lock().unwrap()[0].clone();
        assert!(
            req.ends_with("3\r\nabc\r\n0\r\nx-checksum: 42\r\n\r\n"),
            "{req}"
        );
    }

    #[tokio::test]
    async fn a_truncated_body_fails_instead_of_looking_complete() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: Arc<str> = Arc::from(listener.local_addr().unwrap().to_string());
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_request(&mut s, &mut Vec::new()).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                .await
                .unwrap();
            // Dropped here: the backend dies 7 bytes short.
        });
        let ups = Upstreams::start();
        let resp = ups
            .send(&addr, &timeouts(), get("/"), Empty::<Bytes>::new())
            .await
            .unwrap();
        let err = resp.into_body().collect().await.unwrap_err();
        assert!(err.to_string().contains("7 bytes before the end"), "{err}");
        assert_eq!(ups.pool.idle_count(&addr), 0);
    }

    #[tokio::test]
    async fn unreachable_and_garbled_backends_are_classified() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: Arc<str> = Arc::from(closed.local_addr().unwrap().to_string());
        drop(closed);
        let ups = Upstreams::start();
        let err = fetch(&ups, &addr, get("/"), Empty::<Bytes>::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ConnectRefused);
        assert!(err.retry_safe);

        let b = backend(|_| Some("SSH-2.0-OpenSSH_9.2\r\n\r\n")).await;
        let err = fetch(&ups, &b.addr, get("/"), Empty::<Bytes>::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamProtocol);
    }

    /// A server configuration presenting a leaf of `pki` for `names`.
    fn served(pki: &Pki, stem: &str, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let leaf = pki.leaf(stem, names, 30);
        let (identity, _) = load_identity(&leaf, std::time::SystemTime::now()).unwrap();
        server_config(Profile::Modern, CertStore::new(identity, vec![])).unwrap()
    }

    /// A server at `addr`, reached over TLS when `hop` is set.
    fn server_at(addr: &Arc<str>, hop: Option<&Arc<TlsHop>>) -> Server {
        Server {
            tls: hop.cloned(),
            ..Server::new(Health::new(addr.to_string()))
        }
    }

    /// `GET /` sent to the first of `servers` that takes it (`retries` more tried).
    async fn fetch_from(
        ups: &Upstreams,
        servers: &[Server],
        retries: u32,
    ) -> Result<(u16, String, Arc<str>), ProxyError> {
        let mut body = Some(Empty::<Bytes>::new());
        let (resp, server) = ups
            .send_to_any(
                Picker::new(servers.iter(), false, timeouts().queue),
                retries,
                &timeouts(),
                &get("/"),
                &mut body,
                |_, _| {},
                &mut SendReport::default(),
            )
            .await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok((status, text, server.health.upstream().clone()))
    }

    #[tokio::test]
    async fn a_tls_server_is_verified_and_its_connection_kept_alive() {
        let pki = Pki::new("unit");
        let b = backend_on(
            |_| Some(OK),
            Some(served(&pki, "two", &["region2.example"])),
        )
        .await;
        let mut table = TlsTable::new(&TlsSettings::default());
        let hop = table
            .hop(Some(&pki.ca.cert_path), "region2.example")
            .unwrap();
        let servers = [server_at(&b.addr, Some(&hop))];
        let ups = Upstreams::start();
        for _ in 0..3 {
            let (status, body, _) = fetch_from(&ups, &servers, 0).await.unwrap();
            assert_eq!((status, body.as_str()), (200, "ok"));
        }
        assert_eq!(*b.over_tls.lock().unwrap(), [true; 3]);
        assert_eq!(
            b.connections.load(Ordering::SeqCst),
            1,
            "one TLS connection, reused"
        );
        assert_eq!(ups.pool.idle_count(&b.addr), 1);
    }

    #[tokio::test]
    async fn the_pool_never_lends_a_connection_to_another_kind_or_hop() {
        let pki = Pki::new("unit");
        // One port speaking both cleartext and TLS, with a certificate for both names.
        let b = backend_on(
            |_| Some(OK),
            Some(served(&pki, "both", &["a.example", "b.example"])),
        )
        .await;
        let mut table = TlsTable::new(&TlsSettings::default());
        let ca = Some(pki.ca.cert_path.as_path());
        let (a, b_hop) = (
            table.hop(ca, "a.example").unwrap(),
            table.hop(ca, "b.example").unwrap(),
        );
        let kinds = [
            server_at(&b.addr, None),
            server_at(&b.addr, Some(&a)),
            server_at(&b.addr, Some(&b_hop)),
        ];
        let ups = Upstreams::start();
        for round in 0..2 {
            for server in &kinds {
                let got = fetch_from(&ups, std::slice::from_ref(server), 0).await;
                assert_eq!(got.unwrap().0, 200, "round {round}");
            }
        }
        assert_eq!(
            *b.over_tls.lock().unwrap(),
            [false, true, true, false, true, true],
            "each request went the way its server is reached"
        );
        assert_eq!(
            b.connections.load(Ordering::SeqCst),
            3,
            "one connection per kind and hop, each reused once"
        );
    }

    #[tokio::test]
    async fn a_failed_verification_is_a_502_naming_it_and_redispatches_within_the_target() {
        let pki = Pki::new("unit");
        let stranger = Pki::new("stranger");
        let trust = pki.ca.cert_path.display().to_string();
        let cases = [
            (
                "another name",
                served(&pki, "other", &["other.example"]),
                vec![
                    "TLS handshake with the backend failed",
                    "its certificate is not valid for the name region2.example (it is valid \
                     for other.example)",
                    "check the host of the catalog URL",
                ],
            ),
            (
                "unknown CA",
                served(&stranger, "two", &["region2.example"]),
                vec![
                    "its certificate is signed by a CA not in",
                    trust.as_str(),
                    "`ca_file` in [tls]",
                ],
            ),
        ];
        let mut table = TlsTable::new(&TlsSettings::default());
        let hop = table
            .hop(Some(&pki.ca.cert_path), "region2.example")
            .unwrap();
        let good = backend_on(
            |_| Some(OK),
            Some(served(&pki, "good", &["region2.example"])),
        )
        .await;
        for (case, config, needles) in cases {
            let bad = backend_on(|_| Some(OK), Some(config)).await;
            let ups = Upstreams::start();
            let err = fetch_from(&ups, &[server_at(&bad.addr, Some(&hop))], 0)
                .await
                .expect_err(case);
            assert_eq!(err.kind, ErrorKind::TlsHandshake, "{case}: {err}");
            assert!(err.retry_safe, "{case}: nothing was sent");
            let p = err.to_problem("RegionTwo_compute_public", ConfigAt::Port(8774));
            assert_eq!(p.status, http::StatusCode::BAD_GATEWAY, "{case}");
            for needle in &needles {
                assert!(
                    p.message.contains(needle),
                    "{case}: {needle}: {}",
                    p.message
                );
            }
            assert!(!p.message.contains(&*bad.addr), "{case}: {}", p.message);
            assert!(bad.requests.lock().unwrap().is_empty(), "{case}");
            // Another server of the same target may still take it: nothing was sent.
            let servers = [
                server_at(&bad.addr, Some(&hop)),
                server_at(&good.addr, Some(&hop)),
            ];
            let (status, _, by) = fetch_from(&ups, &servers, 1).await.unwrap();
            assert_eq!((status, &*by), (200, &*good.addr), "{case}");
        }
    }

    #[tokio::test]
    async fn a_cleartext_server_at_a_tls_target_fails_the_handshake_cleanly() {
        let pki = Pki::new("unit");
        // What an HTTP server answers to bytes that are not HTTP, then it closes.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: Arc<str> = Arc::from(listener.local_addr().unwrap().to_string());
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut hello = [0u8; 512];
            let _ = s.read(&mut hello).await;
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let mut table = TlsTable::new(&TlsSettings::default());
        let hop = table
            .hop(Some(&pki.ca.cert_path), "region2.example")
            .unwrap();
        let ups = Upstreams::start();
        let err = fetch_from(&ups, &[server_at(&addr, Some(&hop))], 0)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::TlsHandshake, "{err}");
        let p = err.to_problem("RegionTwo_compute_public", ConfigAt::Port(8774));
        assert_eq!(p.status, http::StatusCode::BAD_GATEWAY);
        for needle in ["does not speak TLS", "scheme of the catalog URL"] {
            assert!(p.message.contains(needle), "{needle}: {}", p.message);
        }
    }
}
