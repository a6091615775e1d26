//! Per-request routing data: the request head the router reads, the plan it returns, and the
//! header/path rewrites the plan applies (DESIGN §3.4, §3.5).
//!
//! Decisions where DESIGN is silent:
//! - `X-Identity-Url` is an absolute URL, `scheme://host:port/path`, built from the
//!   `identity`/`admin` entry of `scope["identity"]` (public when a region lists no admin
//!   identity) with the catalog's own scheme: keystonemiddleware needs a URL it can call.
//!   Client-sent `X-Identity-*` headers are replaced (or removed) on scoped requests.
//! - Unscoped (transparent) requests keep every scope-related header as sent; they only
//!   get `X-Forwarded-For` and `Via`, which loop detection and backends rely on.
//! - Existing `X-Forwarded-For`/`Via` lines are folded into one comma-separated value with
//!   ours appended, so backends that read only the first line still see the whole chain.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use http::header::{HOST, HeaderName, VIA};

use crate::config::Timeouts;
use crate::proxy::headers::{append_list, peer_value};

pub(crate) static X_SCOPE: HeaderName = HeaderName::from_static("x-scope");
pub(crate) static X_AUTH_TOKEN: HeaderName = HeaderName::from_static("x-auth-token");
pub(crate) static X_SUBJECT_TOKEN: HeaderName = HeaderName::from_static("x-subject-token");
pub(crate) static X_IDENTITY_REGION: HeaderName = HeaderName::from_static("x-identity-region");
pub(crate) static X_IDENTITY_URL: HeaderName = HeaderName::from_static("x-identity-url");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The marker separating a token from the scope appended to it.
pub(crate) const SCOPE_MARKER: &[u8] = b"!SCOPE!";

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

impl ScopeSource {
    /// The header name, or `"defaults"`, for logs and `explain`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ScopeSource::None => "defaults",
            ScopeSource::XScope => "X-Scope",
            ScopeSource::AuthToken => "X-Auth-Token",
            ScopeSource::SubjectToken => "X-Subject-Token",
        }
    }
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

/// Rewrite instructions; header values are precomputed by the router so applying a plan
/// copies no strings except where a header really changes.
#[derive(Debug, Clone)]
pub(crate) struct Rewrite {
    /// Scoped request: strip the scope from `X-Subject-Token`, set `X-Identity-*`.
    pub(crate) scoped: bool,
    /// Target is `identity`: strip the scope from `X-Auth-Token` too.
    pub(crate) strip_auth_token: bool,
    /// Remote target: (matched local path prefix, target path prefix).
    pub(crate) path: Option<(Arc<str>, Arc<str>)>,
    /// Remote target: the new `Host`.
    pub(crate) host: Option<HeaderValue>,
    /// `X-Identity-Region`, `X-Identity-Url`.
    pub(crate) identity: Option<(HeaderValue, HeaderValue)>,
    /// `1.1 scope-router-<Region>`.
    pub(crate) via: HeaderValue,
}

impl Plan {
    /// Whether the request is forwarded to another region's frontend.
    pub fn is_remote(&self) -> bool {
        self.rewrite.host.is_some()
    }

    /// Applies every rewrite of DESIGN §3.4/§3.5 to the outgoing request head:
    /// path prefix, Host, token stripping, X-Identity-*, X-Forwarded-For, Via.
    /// Leaves hop-by-hop handling to the proxy.
    pub fn apply(&self, head: &RequestHead<'_>, parts: &mut http::request::Parts) {
        self.apply_to(head.peer, parts)
    }

    /// Like [`Plan::apply`] but needs only the client address, so the proxy can
    /// decide on `parts` and then rewrite the same `parts` without cloning headers.
    pub fn apply_to(&self, peer: SocketAddr, parts: &mut http::request::Parts) {
        let rw = &self.rewrite;
        if let Some((from, to)) = &rw.path
            && let Some(uri) = rewrite_path(&parts.uri, from, to)
        {
            parts.uri = uri;
        }
        let headers = &mut parts.headers;
        // hyper sizes the map to the parsed head exactly; growing it on the
        // first insert would rehash every field.
        headers.reserve(4);
        if let Some(host) = &rw.host {
            headers.insert(HOST, host.clone());
        }
        if rw.scoped {
            strip_scope(headers, &X_SUBJECT_TOKEN);
            if rw.strip_auth_token {
                strip_scope(headers, &X_AUTH_TOKEN);
            }
            match &rw.identity {
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
        append_list(headers, &X_FORWARDED_FOR, &peer_value(peer));
        append_list(headers, &VIA, &rw.via);
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

/// Cuts `!SCOPE!…` off every value of `name`.
fn strip_scope(headers: &mut http::HeaderMap, name: &HeaderName) {
    if let http::header::Entry::Occupied(mut entry) = headers.entry(name) {
        for value in entry.iter_mut() {
            let bytes = value.as_bytes();
            if let Some(i) = find(bytes, SCOPE_MARKER)
                && let Ok(stripped) = HeaderValue::from_bytes(&bytes[..i])
            {
                *value = stripped;
            }
        }
    }
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    // Tokens are ~200 bytes and the marker rarely starts with a common byte: jump from
    // one occurrence of the first byte to the next instead of comparing every window.
    let (&first, rest) = needle.split_first()?;
    let mut start = 0;
    while let Some(i) = haystack[start..].iter().position(|&b| b == first) {
        let at = start + i;
        if haystack[at + 1..].starts_with(rest) {
            return Some(at);
        }
        start = at + 1;
    }
    None
}
