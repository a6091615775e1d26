//! OpenStack-shaped error responses (`{"error":{"code":N,"title":..,"message":..}}`) the client sees.

use std::fmt;

use bytes::Bytes;
use http::StatusCode;

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

    /// 508 when the `Via` chain already names this router.
    pub fn loop_detected(router: &str) -> Problem {
        Problem::new(
            StatusCode::LOOP_DETECTED,
            "Loop Detected",
            format!(
                "The request already went through {router} (see its Via header): the regions' \
                 scope defaults disagree. Give the service type an explicit region in the scope, \
                 or align [scope.defaults] in the routers' configurations."
            ),
        )
    }

    /// 502 when the backend cannot be reached or answers garbage.
    pub fn bad_gateway(backend: &str, detail: impl fmt::Display) -> Problem {
        Problem::new(
            StatusCode::BAD_GATEWAY,
            "Bad Gateway",
            format!(
                "Backend {backend} could not serve the request ({detail}). Check that the \
                 service is running and reachable from the router, then retry."
            ),
        )
    }

    /// 504 when the backend did not answer in time.
    pub fn gateway_timeout(backend: &str, after: std::time::Duration) -> Problem {
        Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Gateway Timeout",
            format!(
                "Backend {backend} did not answer within {}. Retry later, or raise the timeout \
                 for this port in the router's configuration.",
                humantime::format_duration(after)
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
    fn statuses() {
        let cases = [
            (Problem::loop_detected("scope-router-RegionOne"), 508),
            (
                Problem::bad_gateway("RegionOne_compute_public", "refused"),
                502,
            ),
            (
                Problem::gateway_timeout("b", std::time::Duration::from_secs(10)),
                504,
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
