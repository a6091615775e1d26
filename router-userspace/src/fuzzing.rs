//! Entry points for the cargo-fuzz targets in `fuzz/`, a crate of its own that sees only
//! `pub` items. The scope reader and the trailer-section parser are crate-private because
//! nothing outside the router should call them; the fuzz targets must, so this module
//! forwards to them unchanged. Not an API: hidden from the docs and never used by the
//! router itself. Everything else the targets exercise (catalog, config, framing watch,
//! response heads) is public already and is called directly.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::problem::Problem;
use crate::proxy::upstream::ResponseBodyError;
use crate::scope::Scope;
pub use crate::scope::ScopeSource;

/// The marker between a token and the scope appended to it.
pub const SCOPE_MARKER: &[u8] = crate::scope::SCOPE_MARKER;

/// A scope as [`Scope::read`] accepted it.
#[derive(Debug)]
pub struct ReadScope {
    pub source: ScopeSource,
    /// Service type → value, in the scope's own order.
    pub entries: Vec<(String, Value)>,
    /// What [`Scope::source_for`] says for each of `entries`' service types.
    pub sources: Vec<ScopeSource>,
    scope: Scope,
}

impl ReadScope {
    /// [`Scope::for_next_hop`] of the scope read.
    pub fn for_next_hop(&self, decided: &[(&str, &str)]) -> Option<HeaderValue> {
        self.scope.for_next_hop(decided)
    }

    /// [`Scope::region_for`] of the scope read.
    pub fn region_for(&self, service_type: &str) -> Option<&str> {
        self.scope.region_for(service_type)
    }
}

/// [`Scope::read`]: the scope a request's headers carry.
pub fn read_scope(headers: &HeaderMap) -> Result<ReadScope, Problem> {
    let scope = Scope::read(headers)?;
    let entries: Vec<(String, Value)> = scope
        .entries()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect();
    let sources = entries.iter().map(|(k, _)| scope.source_for(k)).collect();
    Ok(ReadScope {
        source: scope.source(),
        entries,
        sources,
        scope,
    })
}

/// [`crate::scope::strip_scope`]: cuts `!SCOPE!…` off every value of `name`.
pub fn strip_scope(headers: &mut HeaderMap, name: &HeaderName) {
    crate::scope::strip_scope(headers, name);
}

/// The upstream body decoder's parser of a complete trailer section.
pub fn trailer_fields(section: &[u8]) -> Result<Option<HeaderMap>, ResponseBodyError> {
    crate::proxy::upstream::body::trailer_fields(section)
}
