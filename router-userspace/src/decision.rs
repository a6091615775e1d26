//! Per-request routing data: the request head the router reads and the plan it returns (DESIGN §3).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Timeouts;

/// What the router needs to know about an incoming request.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The accepted socket's local address (the VIP:port the client connected to).
    pub local: SocketAddr,
    /// The client address (for `X-Forwarded-For`).
    pub peer: SocketAddr,
    pub method: &'a http::Method,
    /// Origin-form `path?query` as received.
    pub uri: &'a http::Uri,
    pub headers: &'a http::HeaderMap,
}

/// Where the scope of a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeSource {
    /// No header carried a scope: defaults only (or the request is not scoped).
    None,
    XScope,
    AuthToken,
    SubjectToken,
}

/// The routing decision for one request.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `host:port` to connect to.
    pub upstream: Arc<str>,
    /// `Region_Type_Interface`, or `Region_transparent_PORT` for unscoped requests.
    pub backend_name: Arc<str>,
    pub service_type: Option<Arc<str>>,
    pub interface: Option<Arc<str>>,
    pub region: Arc<str>,
    pub scope_source: ScopeSource,
    pub timeouts: Timeouts,
    pub(crate) rewrite: Rewrite,
}

/// Private rewrite instructions, precomputed by the router.
#[derive(Debug, Clone)]
pub(crate) struct Rewrite {}

impl Plan {
    /// Applies every rewrite of DESIGN §3.4/§3.5 to the outgoing request head:
    /// path prefix, Host, token stripping, X-Identity-*, X-Forwarded-For, Via.
    /// Leaves hop-by-hop handling to the proxy.
    pub fn apply(&self, head: &RequestHead<'_>, parts: &mut http::request::Parts) {
        self.apply_to(head.peer, parts)
    }

    /// Like [`Plan::apply`] but needs only the client address, so the proxy can
    /// decide on `parts` and then rewrite the same `parts` without cloning headers.
    pub fn apply_to(&self, peer: SocketAddr, parts: &mut http::request::Parts) {
        todo!("{peer}{parts:?}")
    }
}
