//! Proxy-side failures, classified Pingora-style by which side caused them.

use std::error::Error as StdError;
use std::io;

use http::StatusCode;

use crate::error_chain::error_chain;
use crate::problem::Problem;

/// Which party a failure is attributed to (logs, and whether the client is to blame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client: aborted upload, malformed body, went silent.
    Downstream,
    /// The backend or the remote region's router.
    Upstream,
    /// This router itself (a bug or an impossible request construction).
    Internal,
}

/// What went wrong, as far as the client's response is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No TCP connection to the upstream could be opened.
    ConnectRefused,
    /// Connecting to the upstream took longer than the connect timeout.
    ConnectTimeout,
    /// The upstream did not answer within the idle timeout.
    ResponseTimeout,
    /// The upstream broke the exchange (reset, malformed or truncated response).
    UpstreamProtocol,
    /// The client's request body failed while being forwarded.
    DownstreamBody,
    /// The outgoing request could not be built.
    BuildRequest,
}

#[derive(Debug, thiserror::Error)]
#[error("{summary}{} ({side:?} side, upstream {upstream})", suffix(.detail))]
pub struct ProxyError {
    pub side: ErrorSource,
    pub kind: ErrorKind,
    /// True when the request certainly never reached the upstream, so sending
    /// it again (elsewhere or later) cannot duplicate a side effect.
    pub retry_safe: bool,
    pub upstream: String,
    /// Safe to show the client: no addresses, no internals.
    summary: &'static str,
    /// The full cause chain, for the log only.
    detail: Option<String>,
    #[source]
    cause: Option<Box<dyn StdError + Send + Sync>>,
}

impl ProxyError {
    pub fn new(
        kind: ErrorKind,
        upstream: &str,
        cause: Option<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        let (side, retry_safe, what) = match kind {
            ErrorKind::ConnectRefused => {
                (ErrorSource::Upstream, true, "cannot connect to the backend")
            }
            ErrorKind::ConnectTimeout => (
                ErrorSource::Upstream,
                true,
                "timed out connecting to the backend",
            ),
            ErrorKind::ResponseTimeout => (
                ErrorSource::Upstream,
                false,
                "the backend did not answer in time",
            ),
            ErrorKind::UpstreamProtocol => (
                ErrorSource::Upstream,
                false,
                "the backend broke the connection",
            ),
            ErrorKind::DownstreamBody => (
                ErrorSource::Downstream,
                false,
                "the request body could not be read",
            ),
            ErrorKind::BuildRequest => (
                ErrorSource::Internal,
                false,
                "cannot build the upstream request",
            ),
        };
        ProxyError {
            side,
            kind,
            retry_safe,
            upstream: upstream.to_owned(),
            summary: what,
            detail: cause.as_ref().map(|c| error_chain(c.as_ref())),
            cause,
        }
    }

    /// What went wrong, in a few words safe for a log field or an access line.
    pub fn kind_text(&self) -> &'static str {
        self.summary
    }

    /// Classifies an error returned by the upstream client.
    pub fn from_client(err: hyper_util::client::legacy::Error, upstream: &str) -> Self {
        let timed_out = has_io_kind(&err, io::ErrorKind::TimedOut);
        let kind = if err.is_connect() {
            if timed_out {
                ErrorKind::ConnectTimeout
            } else {
                ErrorKind::ConnectRefused
            }
        } else if timed_out {
            ErrorKind::ResponseTimeout
        } else if find_hyper(&err).is_some_and(|h| h.is_user()) {
            ErrorKind::DownstreamBody
        } else {
            ErrorKind::UpstreamProtocol
        };
        ProxyError::new(kind, upstream, Some(Box::new(err)))
    }

    /// The response the client gets; names the backend by its catalog name,
    /// never by address, and leaves the cause chain to the log.
    pub fn to_problem(&self, backend: &str) -> Problem {
        let what = self.summary;
        match self.kind {
            ErrorKind::ConnectRefused => Problem::bad_gateway(
                backend,
                what,
                "the service is down or not listening; retry later or ask the operator to check it",
            ),
            ErrorKind::ConnectTimeout | ErrorKind::ResponseTimeout => Problem::gateway_timeout(
                backend,
                what,
                "the service is overloaded or unreachable; retry later",
            ),
            ErrorKind::UpstreamProtocol => Problem::bad_gateway(
                backend,
                what,
                "the service closed the connection mid-request; retry if the request is idempotent",
            ),
            ErrorKind::DownstreamBody => Problem::bad_request(format!(
                "{what} ({backend}): the request body ended early or was malformed; send it again"
            )),
            ErrorKind::BuildRequest => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                format!("{what} ({backend}): report this to the operator with the request details"),
            ),
        }
    }
}

fn suffix(detail: &Option<String>) -> String {
    detail
        .as_ref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

fn has_io_kind(err: &(dyn StdError + 'static), kind: io::ErrorKind) -> bool {
    let mut next: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_timeout())
            && kind == io::ErrorKind::TimedOut
        {
            return true;
        }
        next = e.source();
    }
    false
}

fn find_hyper<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a hyper::Error> {
    let mut next: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return Some(h);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failures_are_retry_safe_and_map_to_502_or_504() {
        let refused = ProxyError::new(
            ErrorKind::ConnectRefused,
            "127.0.0.1:1",
            Some(Box::new(io::Error::from(io::ErrorKind::ConnectionRefused))),
        );
        assert!(refused.retry_safe);
        assert_eq!(refused.side, ErrorSource::Upstream);
        let p = refused.to_problem("RegionOne_compute_public");
        assert_eq!(p.status, StatusCode::BAD_GATEWAY);
        assert!(
            p.message.contains("RegionOne_compute_public"),
            "{}",
            p.message
        );
        // Addresses and OS errors stay in the log.
        assert!(!p.message.contains("127.0.0.1"), "{}", p.message);
        assert!(refused.to_string().contains("127.0.0.1:1"), "{refused}");

        let timeout = ProxyError::new(ErrorKind::ResponseTimeout, "10.0.0.1:80", None);
        assert!(!timeout.retry_safe);
        assert_eq!(timeout.to_problem("b").status, StatusCode::GATEWAY_TIMEOUT);
    }

    #[test]
    fn io_kind_is_found_through_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] io::Error);
        let e = Outer(io::Error::from(io::ErrorKind::TimedOut));
        assert!(has_io_kind(&e, io::ErrorKind::TimedOut));
        assert!(!has_io_kind(&e, io::ErrorKind::ConnectionRefused));
    }
}
