//! Human-readable output of `scope-router check` (routing table) and `scope-router explain`.

use crate::config::Config;
use crate::routing::Router;

/// Why `explain` could not build the hypothetical request.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("invalid method `{0}`")]
    Method(String),
    #[error(
        "invalid URL `{url}`: {reason}; give an absolute URL like http://192.168.142.244:8774/v2.1/servers"
    )]
    Url { url: String, reason: String },
    #[error("invalid header `{name}: {value}`; write headers as `Name: value`")]
    Header { name: String, value: String },
}

/// The routing table: every listener → service type/interface → backend per region → address,
/// then the passthrough listeners.
pub fn check(router: &Router, config: &Config) -> String {
    todo!("{router:?}{config:?}")
}

/// Explains how the router would handle `METHOD url` with `headers`.
pub fn explain(
    router: &Router,
    method: &str,
    url: &str,
    headers: &[(String, String)],
) -> Result<String, ExplainError> {
    todo!("{router:?}{method}{url}{headers:?}")
}
