//! `[[redirect]]` listeners (docs/ARCHITECTURE.md §4): cleartext HTTP answered with a `301`
//! to the same host and path over `https://` (Kolla's redirect mode). Paths under `exempt`
//! (ACME HTTP-01 challenges) are relayed to `exempt_backend` by the HTTP passthrough relay.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderValue, LOCATION};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::access_log::{AccessRecord, LoggedBody};
use crate::config::{Config, Passthrough, PassthroughMode, Redirect, ServerSpec, Timeouts};
use crate::metrics::TrafficStats;
use crate::passthrough::{self, ConnCtx, PassthroughRuntime, bind_serves};
use crate::problem::Problem;
use crate::proxy::{RequestStart, ambiguous_framing_problem, check_head, problem_response};
use crate::routing::RedirectServers;

/// The access-log outcome of a request answered with the redirect.
pub const REDIRECTED: &str = "redirect";

/// One configured redirect listener.
#[derive(Debug)]
pub struct RedirectRuntime {
    pub spec: Redirect,
    /// The relay of exempt paths: an HTTP passthrough to `exempt_backend`.
    exempt: Option<Arc<PassthroughRuntime>>,
    /// Counts its own answers (`None` with `[admin] metrics = false`).
    stats: Option<Arc<TrafficStats>>,
    region: Arc<str>,
    /// `[timeouts]`: the client side of its connections.
    pub timeouts: Timeouts,
    max_header_bytes: usize,
}

impl RedirectRuntime {
    /// `servers`: the listener's counters and exempt server, from the routing table.
    pub fn new(spec: &Redirect, config: &Config, region: &str, servers: &RedirectServers) -> Self {
        let exempt = spec
            .exempt_backend
            .zip(servers.exempt.as_ref())
            .map(|(addr, balancer)| {
                let relay = Passthrough {
                    name: RedirectServers::EXEMPT.to_owned(),
                    bind: spec.bind,
                    backend: addr,
                    servers: vec![ServerSpec {
                        address: addr,
                        weight: 1,
                        backup: false,
                        maxconn: Some(0),
                    }],
                    balance: config.proxy.balance,
                    mode: PassthroughMode::Http,
                    timeouts: config.timeouts,
                };
                let stats = servers.exempt_stats.clone();
                Arc::new(PassthroughRuntime::new(
                    relay,
                    region,
                    &config.proxy,
                    (Arc::clone(balancer), stats),
                ))
            });
        RedirectRuntime {
            spec: spec.clone(),
            exempt,
            stats: servers.stats.clone(),
            region: Arc::from(region),
            timeouts: config.timeouts,
            max_header_bytes: config.proxy.max_header_bytes,
        }
    }

    /// Whether a connection accepted with local address `local` belongs here.
    pub fn serves(&self, local: std::net::SocketAddr) -> bool {
        bind_serves(self.spec.bind, local)
    }

    /// The relay for `path` when it is under an `exempt` prefix.
    fn exempt_for(&self, path: &str) -> Option<&Arc<PassthroughRuntime>> {
        let exempt = self
            .spec
            .exempt
            .iter()
            .any(|prefix| path.starts_with(prefix));
        self.exempt.as_ref().filter(|_| exempt)
    }
}

/// One request on a redirect listener: relayed when its path is exempt, else `301` to its
/// `https://` URL (`400` when its `Host` names no host to send it to).
pub async fn handle(
    rt: Arc<RedirectRuntime>,
    ctx: ConnCtx,
    start: RequestStart,
    req: Request<Incoming>,
) -> Result<Response<LoggedBody>, Infallible> {
    if let Some(relay) = rt.exempt_for(req.uri().path()) {
        return passthrough::handle_http(Arc::clone(relay), ctx, start, req).await;
    }
    let mut record =
        AccessRecord::new(Instant::now(), ctx.local, ctx.peer, req.method(), req.uri());
    record.in_flight = Some(start.in_flight);
    record.backend = Some(Arc::from(RedirectServers::REDIRECT));
    record.region = Some(rt.region.clone());
    record.stats.clone_from(&rt.stats);
    let (mut parts, body) = req.into_parts();
    if start.ambiguous_framing {
        return Ok(problem_response(&ambiguous_framing_problem(), record, true));
    }
    // `check_head` gives an HTTP/1.0 request without Host the address it dialled; the
    // redirect needs the name the client called, which only Host carries.
    let sent_host = parts.headers.contains_key(HOST);
    if let Err(problem) = check_head(&mut parts, ctx.local, rt.max_header_bytes) {
        return Ok(problem_response(&problem, record, true));
    }
    // The body is never read: the connection cannot carry another request after it.
    let close = !body.is_end_stream();
    let host = parts.headers.get(HOST).filter(|_| sent_host);
    let location = match location(host, &parts.uri, rt.spec.https_port) {
        Ok(location) => location,
        Err(problem) => return Ok(problem_response(&problem, record, close)),
    };
    record.status = StatusCode::MOVED_PERMANENTLY.as_u16();
    record.outcome = Some(REDIRECTED);
    let empty = Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(LoggedBody::new(empty, record));
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    resp.headers_mut().insert(LOCATION, location);
    if close {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

/// `https://<host>[:https_port]<path and query>` for a request to `target` with `host`
/// (an absolute-form target's own authority wins, RFC 9112 §3.2.2); the port is left out
/// when it is 443.
fn location(
    host: Option<&HeaderValue>,
    target: &Uri,
    https_port: u16,
) -> Result<HeaderValue, Problem> {
    let authority = match target.authority() {
        Some(authority) => authority.clone(),
        None => {
            let host = host.ok_or_else(|| Problem::redirect_host("is missing"))?;
            let text = host
                .to_str()
                .map_err(|_| Problem::redirect_host("is not text"))?;
            text.parse::<Authority>()
                .ok()
                .filter(|a| !a.as_str().contains('@') && !a.host().is_empty())
                .ok_or_else(|| {
                    Problem::redirect_host(&format!("\"{text}\" is not a host[:port]"))
                })?
        }
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    // `OPTIONS *` has no path; its redirect goes to the root.
    let path = target
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let url = format!("https://{}{port}{path}", authority.host());
    // Every part came out of a parsed header or request target.
    HeaderValue::from_str(&url).map_err(|_| Problem::internal("redirect URL"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn loc(host: Option<&str>, target: &str, port: u16) -> Result<String, Problem> {
        let host = host.map(|h| HeaderValue::from_str(h).unwrap());
        let target: Uri = target.parse().unwrap();
        location(host.as_ref(), &target, port).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn the_location_keeps_host_path_and_query_and_drops_the_cleartext_port() {
        assert_eq!(
            loc(Some("api.example.com:80"), "/v3/auth?x=1&y=2", 443).unwrap(),
            "https://api.example.com/v3/auth?x=1&y=2"
        );
        assert_eq!(
            loc(Some("api.example.com"), "/", 8443).unwrap(),
            "https://api.example.com:8443/"
        );
        assert_eq!(
            loc(Some("[2001:db8::1]:80"), "/a", 443).unwrap(),
            "https://[2001:db8::1]/a"
        );
        assert_eq!(
            loc(Some("192.0.2.10"), "*", 443).unwrap(),
            "https://192.0.2.10/"
        );
        // An absolute-form target names the host itself.
        assert_eq!(
            loc(Some("other"), "http://api.example.com:80/x?q", 443).unwrap(),
            "https://api.example.com/x?q"
        );
    }

    #[test]
    fn a_missing_or_invalid_host_is_refused_saying_so() {
        for (host, says) in [
            (None, "is missing"),
            (Some("user@evil.example"), "is not a host[:port]"),
            (Some("a b"), "is not a host[:port]"),
            (Some(":80"), "is not a host[:port]"),
        ] {
            let p = loc(host, "/", 443).unwrap_err();
            assert_eq!(p.status, StatusCode::BAD_REQUEST, "{host:?}");
            assert!(p.message.contains(says), "{host:?}: {}", p.message);
        }
    }
}
