//! OpenStack-shaped error responses (`{"error":{"code":N,"title":..,"message":..}}`) the client sees.

use std::fmt;

use bytes::Bytes;
use http::StatusCode;

/// The methods a 405 names in `Allow`: every method OpenStack APIs use.
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Where the operator changes a listener's settings, for the advice of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigAt<'a> {
    /// A scoped listener: `[ports.N]`.
    Port(u16),
    /// A `[[passthrough]]`, by name.
    Passthrough(&'a str),
}

/// An error answered to the client instead of forwarding the request.
///
/// `message` always says what the client (or operator) should change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    pub title: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(status: StatusCode, title: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            status,
            title,
            message: message.into(),
        }
    }

    /// 400 for a generic malformed request.
    pub fn bad_request(message: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "Bad Request", message)
    }

    /// 500 for a state the router should never reach: a bug to report.
    pub fn internal(what: &str) -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            format!("The router failed internally ({what}). Report this to the operator."),
        )
    }

    /// 400 for a scope that is not a JSON object of strings; `source` names the header.
    pub fn malformed_scope(source: &str, detail: impl fmt::Display) -> Problem {
        Problem::bad_request(format!(
            "The scope in {source} is malformed ({detail}). Send a JSON object mapping service \
             types to region names, e.g. {{\"compute\": \"RegionOne\", \"image\": \"RegionTwo\"}}."
        ))
    }

    /// 400 for a scope naming a region absent from the catalog.
    pub fn unknown_region(region: &str, service_type: &str, known: &[impl AsRef<str>]) -> Problem {
        Problem::bad_request(format!(
            "The scope sends service type '{service_type}' to region '{region}', which is not in \
             the catalog. Known regions: {}.",
            join(known)
        ))
    }

    /// 400 for a known region that has no entry for the service type and interface.
    pub fn region_lacks_service(
        region: &str,
        service_type: &str,
        interface: &str,
        known: &[impl AsRef<str>],
        offering: &[impl AsRef<str>],
    ) -> Problem {
        let offering = if offering.is_empty() {
            "none".to_owned()
        } else {
            join(offering)
        };
        Problem::bad_request(format!(
            "Region '{region}' has no '{service_type}' endpoint with interface '{interface}'. \
             Scope '{service_type}' to a region that offers it: {offering} (known regions: {}).",
            join(known)
        ))
    }

    /// 508 when the `Via` chain already names this router (`me`): says which routers the
    /// chain names with what each decided (`chain`, oldest first, as `Via` carries them)
    /// and what this router reads now (`here`, e.g. `identity=RegionOne from defaults`).
    pub fn loop_detected(me: &str, chain: &[impl AsRef<str>], here: Option<&str>) -> Problem {
        let chain = chain
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(" -> ");
        let here = match here {
            Some(here) => format!(" Here {me} reads {here} again."),
            None => String::new(),
        };
        Problem::new(
            StatusCode::LOOP_DETECTED,
            "Loop Detected",
            format!(
                "The request came back to {me}, so it would circle between routers and never \
                 reach a service. Its Via chain: {chain}.{here} Check that every router on the \
                 path has the same catalog for this service, and name its region in the scope \
                 (X-Scope or the token's !SCOPE!)."
            ),
        )
    }

    /// 502 when the upstream (`backend`, by catalog name) cannot serve the request:
    /// `what` happened, and the `advice` the client can act on.
    pub fn bad_gateway(backend: &str, what: &str, advice: &str) -> Problem {
        Problem::new(
            StatusCode::BAD_GATEWAY,
            "Bad Gateway",
            format!("{what} ({backend}): {advice}"),
        )
    }

    /// 504 when the upstream did not connect or answer in time; shaped like
    /// [`Problem::bad_gateway`].
    pub fn gateway_timeout(backend: &str, what: &str, advice: &str) -> Problem {
        Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Gateway Timeout",
            format!("{what} ({backend}): {advice}"),
        )
    }

    /// 503 when every server of the chosen target is down (by its health checks): said
    /// at once instead of after a connect timeout, naming the backend and the last check
    /// result.
    pub fn service_unavailable(backend: &str, last_check: Option<&str>) -> Problem {
        let last = match last_check {
            Some(reason) => format!(" (last check: {reason})"),
            None => String::new(),
        };
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            format!(
                "Every server of {backend} is down{last}. Retry later, or scope this service to \
                 another region that offers it."
            ),
        )
    }

    /// 503 when every server the request could go to stayed at its `maxconn` for the whole
    /// `[timeouts] queue` (`queue`): names the backend, says nothing was sent, and which
    /// settings of the listener (`at`) let more in at once or wait longer.
    pub fn queue_timeout(backend: &str, at: ConfigAt<'_>, queue: std::time::Duration) -> Problem {
        let (limits, longer) = match at {
            ConfigAt::Port(port) => (
                format!(
                    "`maxconn` on the server, or `maxconn_per_server` in [ports.{port}] or \
                     [proxy]"
                ),
                format!("`queue` in [ports.{port}] or [timeouts]"),
            ),
            ConfigAt::Passthrough(name) => (
                format!(
                    "`maxconn` on the server, or `maxconn_per_server` in the [[passthrough]] \
                     named \"{name}\""
                ),
                "`queue` in that [[passthrough]] or [timeouts]".to_owned(),
            ),
        };
        let listener = match at {
            ConfigAt::Port(port) => format!(" on port {port}"),
            ConfigAt::Passthrough(_) => String::new(),
        };
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            format!(
                "Every server of {backend}{listener} stayed busy at its maxconn limit for {} \
                 (queue timeout, [timeouts] queue): the request waited in the router's queue \
                 and was never sent. Retry later. The operator can let more requests in at \
                 once ({limits}) or let them wait longer ({longer}).",
                humantime::format_duration(queue)
            ),
        )
    }

    /// 503 when every server the router tried refused the connection: the target is down
    /// as surely as when its health checks say so (they have not caught up yet), and
    /// nothing was sent, so the client may retry or go elsewhere.
    pub fn refused(backend: &str) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            format!(
                "Every server of {backend} refused the connection: the service is down or not \
                 listening, nothing was sent. Retry later, or scope this service to another \
                 region that offers it."
            ),
        )
    }

    /// 431 when the request head exceeds `[proxy] max_header_bytes`.
    pub fn header_too_large(limit: usize) -> Problem {
        Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request Header Fields Too Large",
            format!(
                "The request headers exceed {limit} bytes. Send smaller headers (a shorter \
                 scope or token), or raise [proxy] max_header_bytes."
            ),
        )
    }

    /// 400 for a request with more than one `Host` (RFC 9112 §3.2): which one the backend
    /// believes is anyone's guess, so it is never forwarded.
    pub fn duplicate_host(count: usize) -> Problem {
        Problem::bad_request(format!(
            "The request has {count} Host header fields. Send exactly one, naming the endpoint \
             you are calling."
        ))
    }

    /// 400 for an HTTP/1.1 request without `Host` (RFC 9112 §3.2).
    pub fn missing_host() -> Problem {
        Problem::bad_request(
            "HTTP/1.1 requests must carry a Host header. Send Host with the address and port \
             of the endpoint you are calling, as in the catalog URL.",
        )
    }

    /// 400 from a `[[redirect]]` listener when the request's `Host` (`what` is wrong with
    /// it) names no host the `https://` URL could go to.
    pub fn redirect_host(what: &str) -> Problem {
        Problem::bad_request(format!(
            "The request's Host header {what}, so there is no https:// URL to redirect it to. \
             Send Host with the name you are calling (e.g. Host: api.example.com), or call \
             the https:// URL directly."
        ))
    }

    /// 501 for a request transfer coding other than `chunked` (RFC 9112 §6.1): the body is
    /// forwarded de-chunked, so any other coding would reach the backend lost.
    pub fn unsupported_transfer_coding(coding: &str) -> Problem {
        Problem::new(
            StatusCode::NOT_IMPLEMENTED,
            "Not Implemented",
            format!(
                "Transfer-Encoding '{coding}' is not supported: only 'chunked' is. Send the \
                 body with Transfer-Encoding: chunked alone, or compress it with \
                 Content-Encoding instead."
            ),
        )
    }

    /// 400 for `chunked` applied more than once (RFC 9112 §6.1 forbids it).
    pub fn chunked_twice() -> Problem {
        Problem::bad_request(
            "Transfer-Encoding lists 'chunked' more than once, so the body's framing is \
             ambiguous. Send Transfer-Encoding: chunked once.",
        )
    }

    /// 405 for a method the router never forwards (CONNECT).
    pub fn method_not_allowed(method: &http::Method) -> Problem {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
            format!(
                "{method} is not served here: the router forwards OpenStack API requests, not \
                 tunnels. Use one of {ALLOWED_METHODS} on an endpoint URL from the catalog."
            ),
        )
    }

    /// 421 when a connection reached an address:port the router has no listener for.
    pub fn misdirected(local: std::net::SocketAddr) -> Problem {
        Problem::new(
            StatusCode::MISDIRECTED_REQUEST,
            "Misdirected Request",
            format!(
                "No scoped listener serves {local} and the Host header names no catalog \
                 endpoint. Send the request to an endpoint URL from the catalog."
            ),
        )
    }

    /// The problem for a head hyper refuses before the router sees it (`status` is hyper's
    /// automatic answer: 400, 414 or 431); `None` for any other status.
    pub fn refused_head(status: u16) -> Option<Problem> {
        Some(match status {
            400 => Problem::bad_request(
                "The request head is malformed: its request line or a header field does not \
                 follow HTTP/1.1 (RFC 9112). Fix the client or proxy that built it; nothing \
                 was forwarded.",
            ),
            414 => Problem::new(
                StatusCode::URI_TOO_LONG,
                "URI Too Long",
                "The request target is too long to be read. Send a shorter URL (move long \
                 filters into the body or page through results).",
            ),
            431 => Problem::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request Header Fields Too Large",
                "The request head has more than 100 header fields or is larger than the \
                 router reads. Send fewer or smaller headers, or raise [proxy] \
                 max_header_bytes if the head is legitimately large.",
            ),
            _ => return None,
        })
    }

    /// A whole HTTP/1.1 response carrying this problem and closing the connection, for
    /// the places that answer below hyper (a refused head, when hyper's own empty answer
    /// is replaced).
    pub fn to_http1_close(&self) -> Bytes {
        let body = self.to_json();
        let mut out = Vec::with_capacity(body.len() + 128);
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n",
                self.status.as_u16(),
                self.status.canonical_reason().unwrap_or(self.title),
                body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(&body);
        Bytes::from(out)
    }

    /// The response body, as OpenStack services format their errors.
    pub fn to_json(&self) -> Bytes {
        let body = serde_json::json!({
            "error": {
                "code": self.status.as_u16(),
                "title": self.title,
                "message": self.message,
            }
        });
        Bytes::from(body.to_string())
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.title,
            self.message
        )
    }
}

impl std::error::Error for Problem {}

fn join(items: &[impl AsRef<str>]) -> String {
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn json_has_openstack_shape() {
        let p = Problem::unknown_region("RegionX", "compute", &["RegionOne", "RegionTwo"]);
        let v: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(v["error"]["code"], 400);
        assert_eq!(v["error"]["title"], "Bad Request");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("RegionX"), "{msg}");
        assert!(msg.contains("RegionOne, RegionTwo"), "{msg}");
    }

    #[test]
    fn loop_message_names_the_chain_and_the_reading_here() {
        let p = Problem::loop_detected(
            "scope-router-RegionOne",
            &[
                "scope-router-RegionOne (identity=RegionTwo from X-Auth-Token)",
                "scope-router-RegionTwo (identity=RegionOne from defaults)",
            ],
            Some("identity=RegionTwo from X-Auth-Token"),
        );
        assert_eq!(p.status.as_u16(), 508);
        for part in [
            "scope-router-RegionOne (identity=RegionTwo from X-Auth-Token) -> \
             scope-router-RegionTwo (identity=RegionOne from defaults)",
            "Here scope-router-RegionOne reads identity=RegionTwo from X-Auth-Token again",
        ] {
            assert!(
                p.message.contains(part),
                "{part} missing from: {}",
                p.message
            );
        }
        assert!(!p.message.contains("defaults disagree"), "{}", p.message);
    }

    #[test]
    fn statuses() {
        let cases = [
            (
                Problem::loop_detected("scope-router-RegionOne", &["scope-router-RegionOne"], None),
                508,
            ),
            (Problem::header_too_large(16384), 431),
            (Problem::malformed_scope("X-Scope", "not JSON"), 400),
            (
                Problem::region_lacks_service(
                    "RegionTwo",
                    "dns",
                    "public",
                    &["RegionOne", "RegionTwo"],
                    &["RegionOne"],
                ),
                400,
            ),
        ];
        for (p, code) in cases {
            assert_eq!(p.status.as_u16(), code, "{p}");
            let v: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
            assert_eq!(v["error"]["code"], code);
        }
    }
}
