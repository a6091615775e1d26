//! The HTTP side: hyper server per accepted connection, scoped request
//! handling in phases, and the pooled upstream client.

pub mod error;
pub mod framing;
pub mod h1;
pub mod headers;
pub mod idle;
pub mod park;
pub mod scoped;
pub mod server;
pub mod upstream;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

pub use error::{ErrorKind, ErrorSource, ProxyError};
pub use server::{RouterHandle, ServeError, StartOptions, start, start_with_router};

use crate::access_log::{AccessRecord, BodyError, LoggedBody};
use crate::problem::Problem;
use upstream::UpstreamClient;

/// What the connection knows about a request as the handler starts it.
#[derive(Debug)]
pub struct RequestStart {
    /// Held until the response body ends (pauses client-read inactivity).
    pub in_flight: idle::InFlightGuard,
    /// The head carried both Content-Length and Transfer-Encoding.
    pub ambiguous_framing: bool,
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

/// Rejects a request head beyond `[proxy] max_header_bytes`.
pub(crate) fn check_head(
    parts: &http::request::Parts,
    max_header_bytes: usize,
) -> Result<(), Problem> {
    if headers::head_size(&parts.method, &parts.uri, &parts.headers) > max_header_bytes {
        return Err(Problem::header_too_large(max_header_bytes));
    }
    Ok(())
}

/// The JSON error response; `close` when the connection cannot safely carry
/// another request (unread body, ambiguous framing).
pub(crate) fn problem_response(
    problem: &Problem,
    mut record: AccessRecord,
    close: bool,
) -> Response<LoggedBody> {
    record.status = problem.status.as_u16();
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
    parts.version = http::Version::HTTP_11;
    if !parts.headers.contains_key(header::HOST) {
        // HTTP/1.0 clients may omit Host; HTTP/1.1 backends require one.
        let host = HeaderValue::from_str(upstream)
            .map_err(|e| ProxyError::new(ErrorKind::BuildRequest, upstream, Some(Box::new(e))))?;
        parts.headers.insert(header::HOST, host);
    }
    let req = Request::from_parts(parts, body);
    client
        .request(req)
        .await
        .map_err(|e| ProxyError::from_client(e, upstream))
}
