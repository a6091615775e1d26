//! Per-request routing data: the request head the router reads, the plan it returns, and the
//! header/path rewrites the plan applies (docs/ARCHITECTURE.md §3.4, §3.5).
//!
//! The plan says which hop the request takes, and each hop owns its rewrites:
//! - **local** (the current region's backend): the scope-removing rewrites happen here and
//!   only here: `!SCOPE!` cut off `X-Subject-Token` always and off `X-Auth-Token` when the
//!   service is `identity`;
//! - **remote** (another region's router): the scope travels as it arrived, tokens
//!   unstripped, plus an `X-Scope` pinning whatever this router took from its own defaults,
//!   so the next router decides the same; the path prefix and `Host` are the target's;
//! - **transparent** (no catalog entry matched): forwarded unchanged but for
//!   `X-Forwarded-For` and `Via`, which loop detection and backends rely on.
//!
//! Decisions (see docs/ARCHITECTURE.md §7):
//! - `X-Identity-Url` is an absolute URL, `scheme://host:port/path`, built from the
//!   `identity`/`admin` entry of `scope["identity"]` (public when a region lists no admin
//!   identity) with the catalog's own scheme: keystonemiddleware needs a URL it can call.
//!   Client-sent `X-Identity-*` headers are replaced (or removed) on scoped requests.
//! - Existing `X-Forwarded-For`/`Via` lines are folded into one comma-separated value with
//!   ours appended, so backends that read only the first line still see the whole chain.
//! - A remote hop's `Via` entry carries a comment naming the decision
//!   (`1.1 scope-router-RegionOne (image=RegionTwo from X-Scope)`), so a router that
//!   finds itself in the chain can say what every hop read.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use http::header::{HOST, HeaderName, VIA};

use crate::balance::Balancer;
use crate::config::Timeouts;
use crate::metrics::TrafficStats;
use crate::scope::{X_AUTH_TOKEN, X_SCOPE, X_SUBJECT_TOKEN, strip_scope};

use crate::proxy::headers::{append_list, peer_value};
pub use crate::scope::ScopeSource;

pub(crate) static X_IDENTITY_REGION: HeaderName = HeaderName::from_static("x-identity-region");
pub(crate) static X_IDENTITY_URL: HeaderName = HeaderName::from_static("x-identity-url");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

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

/// The routing decision for one request.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The target's servers, their health, and how to pick among them.
    pub balancer: Arc<Balancer>,
    /// Where the request's numbers are counted; `None` with `[admin] metrics = false`.
    pub stats: Option<Arc<TrafficStats>>,
    /// `Region_Type_Interface`, or `Region_transparent_PORT` for unscoped requests.
    pub backend_name: Arc<str>,
    pub region: Arc<str>,
    pub timeouts: Timeouts,
    /// Port of the listener whose settings apply (`[ports.N]`), for error advice.
    pub port: u16,
    /// Our `Via` entry (with the decision as a comment on remote hops).
    pub(crate) via: HeaderValue,
    pub kind: PlanKind,
    /// The next alternative of an `A|B` scope, tried when every server of this one is
    /// down or none accepts a connection (docs/ARCHITECTURE.md §3.9).
    pub fallback: Option<Box<Plan>>,
}

/// Whether a catalog entry matched, and so whether the scope decided anything.
#[derive(Debug, Clone)]
// Boxing `Scoped` would cost an allocation on every scoped request to save stack space
// on the rare transparent one.
#[allow(clippy::large_enum_variant)]
pub enum PlanKind {
    /// A catalog entry matched: the scope chose the region.
    Scoped(Scoped),
    /// No catalog entry matched: forwarded unchanged to the listener's local backend.
    Transparent,
}

/// What the scope decided for a matched catalog entry.
#[derive(Debug, Clone)]
pub struct Scoped {
    pub service_type: Arc<str>,
    pub interface: Arc<str>,
    /// Where the region of `service_type` came from.
    pub scope_source: ScopeSource,
    /// `X-Identity-Region`, `X-Identity-Url`; `None` when the identity region lists no
    /// identity endpoint (client-sent values are then removed).
    pub(crate) identity: Option<(HeaderValue, HeaderValue)>,
    pub(crate) hop: Hop,
}

/// The hop a scoped request takes, with the rewrites that belong to it.
#[derive(Debug, Clone)]
pub(crate) enum Hop {
    /// The current region's backend: the scope is cut off the tokens here.
    Local,
    /// Another region's router: the scope travels on.
    Remote {
        host: HeaderValue,
        /// (matched local path prefix, target path prefix).
        from: Arc<str>,
        to: Arc<str>,
        /// `X-Scope` pinning what this router took from its defaults, when it took any.
        scope: Option<HeaderValue>,
    },
}

impl Plan {
    /// The first server's `host:port`, for display; the proxy picks among `balancer`.
    pub fn upstream(&self) -> &str {
        self.balancer
            .servers()
            .first()
            .map_or("-", |s| s.health.addr())
    }

    /// Whether the request is forwarded to another region's frontend.
    pub fn is_remote(&self) -> bool {
        matches!(
            &self.kind,
            PlanKind::Scoped(Scoped {
                hop: Hop::Remote { .. },
                ..
            })
        )
    }

    /// The matched service type; `None` for the transparent fallback.
    pub fn service_type(&self) -> Option<&Arc<str>> {
        match &self.kind {
            PlanKind::Scoped(s) => Some(&s.service_type),
            PlanKind::Transparent => None,
        }
    }

    /// Where the region came from; `None` for the transparent fallback (no scope read).
    pub fn scope_source(&self) -> Option<ScopeSource> {
        match &self.kind {
            PlanKind::Scoped(s) => Some(s.scope_source),
            PlanKind::Transparent => None,
        }
    }

    /// Applies every rewrite of the plan's hop to the outgoing request head:
    /// path prefix, Host, scope, token stripping, X-Identity-*, X-Forwarded-For, Via.
    /// Leaves hop-by-hop handling to the proxy.
    pub fn apply(&self, head: &RequestHead<'_>, parts: &mut http::request::Parts) {
        self.apply_to(head.peer, parts)
    }

    /// Like [`Plan::apply`] but needs only the client address, so the proxy can
    /// decide on `parts` and then rewrite the same `parts` without cloning headers.
    pub fn apply_to(&self, peer: SocketAddr, parts: &mut http::request::Parts) {
        let headers = &mut parts.headers;
        // hyper sizes the map to the parsed head exactly; growing it on the
        // first insert would rehash every field.
        headers.reserve(4);
        if let PlanKind::Scoped(scoped) = &self.kind {
            match &scoped.hop {
                Hop::Local => {
                    strip_scope(headers, &X_SUBJECT_TOKEN);
                    if &*scoped.service_type == "identity" {
                        strip_scope(headers, &X_AUTH_TOKEN);
                    }
                }
                Hop::Remote {
                    host,
                    from,
                    to,
                    scope,
                } => {
                    headers.insert(HOST, host.clone());
                    if let Some(scope) = scope {
                        headers.insert(X_SCOPE.clone(), scope.clone());
                    }
                    if let Some(uri) = rewrite_path(&parts.uri, from, to) {
                        parts.uri = uri;
                    }
                }
            }
            let headers = &mut parts.headers;
            match &scoped.identity {
                Some((region, url)) => {
                    headers.insert(X_IDENTITY_REGION.clone(), region.clone());
                    headers.insert(X_IDENTITY_URL.clone(), url.clone());
                }
                // Never let a client-supplied value pose as the router's.
                None => {
                    headers.remove(&X_IDENTITY_REGION);
                    headers.remove(&X_IDENTITY_URL);
                }
            }
        }
        let headers = &mut parts.headers;
        append_list(headers, &X_FORWARDED_FOR, &peer_value(peer));
        append_list(headers, &VIA, &self.via);
    }
}

/// Replaces the `from` prefix of the path by `to`, keeping the query; origin-form result.
fn rewrite_path(uri: &http::Uri, from: &str, to: &str) -> Option<http::Uri> {
    let path = uri.path();
    let rest = path.strip_prefix(from)?;
    let mut out =
        String::with_capacity(to.len() + rest.len() + 2 + uri.query().map_or(0, str::len));
    join_path(&mut out, to, rest);
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(q);
    }
    http::Uri::try_from(out).ok()
}

/// `to` + `rest` with exactly one `/` between them and a leading `/`.
pub(crate) fn join_path(out: &mut String, to: &str, rest: &str) {
    out.push_str(to);
    match (to.ends_with('/'), rest.starts_with('/')) {
        (true, true) => out.push_str(&rest[1..]),
        (false, false) if !rest.is_empty() || to.is_empty() => {
            out.push('/');
            out.push_str(rest);
        }
        _ => out.push_str(rest),
    }
}
