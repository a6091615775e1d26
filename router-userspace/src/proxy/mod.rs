//! The HTTP side: hyper server per accepted connection, scoped request
//! handling in phases, and the pooled upstream client.

pub mod client_io;
pub mod connection_limit;
pub mod error;
pub mod framing;
pub mod h1;
pub mod head_timer;
pub mod headers;
pub mod idle;
pub mod park;
pub mod scoped;
pub mod server;
pub mod stream;
pub mod upstream;

use std::net::SocketAddr;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

pub use error::{ErrorKind, ErrorSource, ProxyError};
pub use server::{
    ListenerChanges, ListeningSocket, RouterHandle, ServeError, StartOptions, start,
    start_with_router,
};

use crate::access_log::{AccessRecord, BodyError, LoggedBody};
use crate::problem::{self, Problem};
use upstream::UpstreamClient;

/// Set by OpenStack services on every response; the access log carries it so an operator
/// can find the request in the service's own logs.
static X_OPENSTACK_REQUEST_ID: header::HeaderName =
    header::HeaderName::from_static("x-openstack-request-id");

/// What the connection knows about a request as the handler starts it.
#[derive(Debug)]
pub struct RequestStart {
    /// Held until the response body ends (pauses client-read inactivity).
    pub in_flight: idle::InFlightGuard,
    /// The head carried both Content-Length and Transfer-Encoding.
    pub ambiguous_framing: bool,
    /// It came over TLS (an `https://` listener).
    pub https: bool,
}

/// 400 for a head with both Content-Length and Transfer-Encoding (RFC 9112
/// §6.3): the two framings disagree, a classic request-smuggling vector.
pub(crate) fn ambiguous_framing_problem() -> Problem {
    Problem::bad_request(
        "The request has both Content-Length and Transfer-Encoding, so its length is \
         ambiguous. Send exactly one of them.",
    )
}

/// hyper's own read buffer must hold at least this much (it asserts otherwise).
const HYPER_MIN_BUF: usize = 8192;

/// hyper's read-buffer cap for a given `max_header_bytes`: comfortably above
/// the limit so oversized heads reach [`check_head`] and get a JSON 431, while
/// absurd ones are still cut off by hyper itself (plain 431).
pub(crate) fn hyper_buf_size(max_header_bytes: usize) -> usize {
    (max_header_bytes.saturating_mul(4))
        .max(64 * 1024)
        .max(HYPER_MIN_BUF)
}

/// The checks every HTTP listener makes on a request head before routing it: its size
/// (`[proxy] max_header_bytes`), its method, its transfer codings, and its `Host`. Fills in `Host` for an
/// HTTP/1.0 request that has none with the address the client dialled (`local`), so
/// backends never see an internal address in version-discovery links. An error leaves
/// the body unread: answer it with the connection closed.
pub(crate) fn check_head(
    parts: &mut http::request::Parts,
    local: SocketAddr,
    max_header_bytes: usize,
) -> Result<(), Problem> {
    if headers::head_size(&parts.method, &parts.uri, &parts.headers) > max_header_bytes {
        return Err(Problem::header_too_large(max_header_bytes));
    }
    // A tunnel has no place behind an API router, and forwarding it would hand the
    // client a raw connection to whatever the backend reaches.
    if parts.method == http::Method::CONNECT {
        return Err(Problem::method_not_allowed(&parts.method));
    }
    framing::check_transfer_codings(&parts.headers)?;
    match parts.headers.get_all(header::HOST).iter().count() {
        1 => Ok(()),
        0 if parts.version == http::Version::HTTP_11 => Err(Problem::missing_host()),
        0 => {
            let dialled = SocketAddr::new(local.ip().to_canonical(), local.port());
            if let Ok(host) = HeaderValue::from_str(&dialled.to_string()) {
                parts.headers.insert(header::HOST, host);
            }
            Ok(())
        }
        n => Err(Problem::duplicate_host(n)),
    }
}

/// The JSON error response; `close` when the connection cannot safely carry
/// another request (unread body, ambiguous framing).
pub(crate) fn problem_response(
    problem: &Problem,
    mut record: AccessRecord,
    close: bool,
) -> Response<LoggedBody> {
    record.status = problem.status.as_u16();
    record.from_router = true;
    let body = Full::new(problem.to_json())
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(LoggedBody::new(body, record));
    *resp.status_mut() = problem.status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if close {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if problem.status == StatusCode::METHOD_NOT_ALLOWED {
        // RFC 9110 §15.5.6: a 405 lists the methods the target supports.
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static(problem::ALLOWED_METHODS),
        );
    }
    resp
}

/// The answer to a health check from another router (`Router::health_answer`): the
/// status, the `x-scope-router-health` header that marks it authoritative, and the
/// message as the body.
pub(crate) fn health_response((status, message): (u16, String)) -> Response<LoggedBody> {
    let up = status == 200;
    let body = Full::new(bytes::Bytes::from(message))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(LoggedBody::unlogged(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        crate::health::HEALTH_HEADER,
        HeaderValue::from_static(if up { "up" } else { "down" }),
    );
    resp
}

/// Wraps the upstream response for the client: hop-by-hop headers removed,
/// body streamed through and access-logged when it ends.
pub(crate) fn relay_response<B>(
    resp: Response<B>,
    mut record: AccessRecord,
    keep_upgrade: bool,
) -> Response<LoggedBody>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<BodyError>,
{
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(
        &mut parts.headers,
        keep_upgrade && parts.status == StatusCode::SWITCHING_PROTOCOLS,
    );
    record.status = parts.status.as_u16();
    record.request_id = parts.headers.get(&X_OPENSTACK_REQUEST_ID).cloned();
    let body = body.map_err(Into::into).boxed();
    Response::from_parts(parts, LoggedBody::new(body, record))
}

/// Passthrough HTTP: sends the request to `upstream` ("host:port") with
/// hyper-util's client (scoped requests use [`upstream::Upstreams::send`]).
/// The request body streams as hyper reads it. No deadline covers the whole exchange: a 6 h
/// image upload is fine as long as bytes move. The upstream connection's
/// inactivity timeout (see [`upstream::legacy::IdleConnector`]) ends a silent backend.
pub(crate) async fn forward(
    client: &UpstreamClient,
    upstream: &str,
    mut parts: http::request::Parts,
    body: Incoming,
) -> Result<Response<Incoming>, ProxyError> {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = Uri::try_from(format!("http://{upstream}{path}"))
        .map_err(|e| ProxyError::new(ErrorKind::BuildRequest, upstream, Some(Box::new(e))))?;
    // `check_head` made sure of exactly one Host (filled in for HTTP/1.0).
    parts.version = http::Version::HTTP_11;
    let req = Request::from_parts(parts, body);
    client
        .request(req)
        .await
        .map_err(|e| ProxyError::from_client(e, upstream))
}
