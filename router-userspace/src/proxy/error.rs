//! Proxy-side failures, classified Pingora-style by which side caused them.

use std::error::Error as StdError;
use std::io;

use http::StatusCode;

use crate::error_chain::error_chain;
use crate::problem::{ConfigAt, Problem};
use crate::server_slots::QueueTimeout;
use crate::tls::HandshakeError;

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
    /// The TLS handshake with a TLS server failed: its certificate did not verify (another
    /// name, an unknown CA, expired), or no protocol version was shared, or it does not
    /// speak TLS. Nothing was sent, so another server of the target may take the request;
    /// an `A|B` scope does not move to its next alternative, though: this is a
    /// misconfiguration to fix, not a region that is down, and moving would hide it.
    TlsHandshake,
    /// Connecting to the upstream took longer than the connect timeout.
    ConnectTimeout,
    /// The upstream did not answer within the idle timeout.
    ResponseTimeout,
    /// The upstream broke the exchange (reset, malformed or truncated response).
    UpstreamProtocol,
    /// The client's request body failed while being forwarded.
    DownstreamBody,
    /// The client stopped sending its body for longer than `[timeouts] request_body`.
    RequestBodyTimeout,
    /// The outgoing request could not be built.
    BuildRequest,
    /// Every server the request could go to stayed at its `maxconn` for `[timeouts]
    /// queue`: it waited in the router's queue and was never sent.
    QueueTimeout,
}

/// The summary of a backend answer that is not HTTP/1.1 (as opposed to a broken connection).
const INVALID_RESPONSE: &str = "the backend sent an invalid response";

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
    /// For an upstream that broke the exchange, what it did, also safe to show (the
    /// backend's protocol error or how it closed); `None` when nothing more is known.
    account: Option<String>,
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
        // A body that stalled is the client's timeout, not a malformed body.
        let kind = match kind {
            ErrorKind::DownstreamBody
                if cause
                    .as_deref()
                    .is_some_and(|c| has_io_kind(c, io::ErrorKind::TimedOut)) =>
            {
                ErrorKind::RequestBodyTimeout
            }
            kind => kind,
        };
        let (side, retry_safe, what) = match kind {
            ErrorKind::ConnectRefused => {
                (ErrorSource::Upstream, true, "cannot connect to the backend")
            }
            ErrorKind::ConnectTimeout => (
                ErrorSource::Upstream,
                true,
                "timed out connecting to the backend",
            ),
            ErrorKind::TlsHandshake => (
                ErrorSource::Upstream,
                true,
                "the TLS handshake with the backend failed",
            ),
            ErrorKind::ResponseTimeout => (
                ErrorSource::Upstream,
                false,
                "the backend did not answer in time",
            ),
            ErrorKind::UpstreamProtocol if cause.as_deref().is_some_and(is_invalid_response) => {
                (ErrorSource::Upstream, false, INVALID_RESPONSE)
            }
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
            ErrorKind::RequestBodyTimeout => {
                (ErrorSource::Downstream, false, "the request body stalled")
            }
            ErrorKind::BuildRequest => (
                ErrorSource::Internal,
                false,
                "cannot build the upstream request",
            ),
            ErrorKind::QueueTimeout => (
                ErrorSource::Upstream,
                true,
                "every server was busy at its maxconn",
            ),
        };
        ProxyError {
            side,
            kind,
            retry_safe,
            upstream: upstream.to_owned(),
            summary: what,
            account: match kind {
                ErrorKind::UpstreamProtocol => cause.as_deref().and_then(account),
                ErrorKind::TlsHandshake => cause
                    .as_deref()
                    .and_then(|c| c.downcast_ref::<HandshakeError>())
                    .map(|h| h.reason.clone()),
                ErrorKind::RequestBodyTimeout | ErrorKind::ResponseTimeout => {
                    cause.as_deref().and_then(timeout_account)
                }
                _ => None,
            },
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
    /// never by address, and leaves the cause chain to the log. `at` is where the
    /// operator changes the listener's settings, for the advice.
    pub fn to_problem(&self, backend: &str, at: ConfigAt<'_>) -> Problem {
        let what = self.summary;
        match self.kind {
            // Nothing was sent and no server would take it: unavailable, as when the
            // checks say so, not a gateway error (HAProxy answers 503 here too).
            ErrorKind::ConnectRefused => Problem::refused(backend),
            ErrorKind::ConnectTimeout | ErrorKind::ResponseTimeout => Problem::gateway_timeout(
                backend,
                &match &self.account {
                    Some(account) => format!("{what}: {account}"),
                    None => what.to_owned(),
                },
                "the service is overloaded or unreachable; retry later (the operator can \
                 raise [timeouts] response_head for a service known to be slow)",
            ),
            ErrorKind::UpstreamProtocol => {
                let what = match &self.account {
                    Some(account) => format!("{what}: {account}"),
                    None => what.to_owned(),
                };
                let advice = if self.summary == INVALID_RESPONSE {
                    "the service answered with something that is not HTTP/1.1; retrying will \
                     not help, report it to the operator"
                } else {
                    "the service failed mid-request; retry if the request is idempotent"
                };
                Problem::bad_gateway(backend, &what, advice)
            }
            // The client learns which check failed (the names are the catalog's, no
            // address); the operator reads the advice.
            ErrorKind::TlsHandshake => {
                let advice = self
                    .cause
                    .as_deref()
                    .and_then(|c| c.downcast_ref::<HandshakeError>())
                    .map_or("check the TLS settings of the service", |h| &h.advice);
                let what = match &self.account {
                    Some(reason) => format!("{what}: {reason}"),
                    None => what.to_owned(),
                };
                Problem::bad_gateway(backend, &what, advice)
            }
            ErrorKind::DownstreamBody => Problem::bad_request(format!(
                "{what} ({backend}): the request body ended early or was malformed; send it again"
            )),
            ErrorKind::RequestBodyTimeout => Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "Request Timeout",
                format!(
                    "{what} ({backend}: {}): send the body without long pauses, and send the \
                     request again; the operator can raise [timeouts] request_body",
                    self.account.as_deref().unwrap_or("no bytes in time")
                ),
            ),
            ErrorKind::BuildRequest => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                format!("{what} ({backend}): report this to the operator with the request details"),
            ),
            ErrorKind::QueueTimeout => {
                let queue = self
                    .cause
                    .as_deref()
                    .and_then(|c| c.downcast_ref::<QueueTimeout>())
                    .map(|q| q.queue)
                    .unwrap_or_default();
                Problem::queue_timeout(backend, at, queue)
            }
        }
    }
}

/// Whether the cause is the backend's answer breaking HTTP/1.1 (a garbage head).
fn is_invalid_response(err: &(dyn StdError + Send + Sync + 'static)) -> bool {
    err.is::<super::upstream::wire::WireError>()
}

/// What the backend did, in words for the client: the protocol error itself (its text
/// names fields and limits, never addresses), or how the connection ended. The full
/// chain, with OS errors and addresses, stays in the log.
fn account(err: &(dyn StdError + Send + Sync + 'static)) -> Option<String> {
    if let Some(wire) = err.downcast_ref::<super::upstream::wire::WireError>() {
        return Some(wire.to_string());
    }
    let io = err.downcast_ref::<io::Error>()?;
    Some(match io.kind() {
        // The router's own words for an early close (see `upstream::exchange`).
        io::ErrorKind::UnexpectedEof => io
            .get_ref()
            .map_or_else(|| "it closed the connection".to_owned(), |e| e.to_string()),
        io::ErrorKind::ConnectionReset => "it reset the connection".to_owned(),
        io::ErrorKind::BrokenPipe => {
            "it closed the connection while the request was being sent".to_owned()
        }
        _ => return None,
    })
}

/// The router's own words for a timeout (the `IdleIo` message, which names the setting).
fn timeout_account(err: &(dyn StdError + Send + Sync + 'static)) -> Option<String> {
    let mut next: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::TimedOut
        {
            return io.get_ref().map(|inner| inner.to_string());
        }
        next = e.source();
    }
    None
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
    fn connect_failures_are_retry_safe_and_map_to_503_or_504() {
        let refused = ProxyError::new(
            ErrorKind::ConnectRefused,
            "127.0.0.1:1",
            Some(Box::new(io::Error::from(io::ErrorKind::ConnectionRefused))),
        );
        assert!(refused.retry_safe);
        assert_eq!(refused.side, ErrorSource::Upstream);
        let p = refused.to_problem("RegionOne_compute_public", ConfigAt::Port(8774));
        assert_eq!(p.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            p.message.contains("refused the connection"),
            "{}",
            p.message
        );
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
        assert_eq!(
            timeout.to_problem("b", ConfigAt::Port(8774)).status,
            StatusCode::GATEWAY_TIMEOUT
        );
    }

    #[test]
    fn a_garbage_response_is_named_as_such_not_as_a_close() {
        let garbage = ProxyError::new(
            ErrorKind::UpstreamProtocol,
            "10.0.0.1:80",
            Some(Box::new(
                crate::proxy::upstream::wire::WireError::Malformed(httparse::Error::Version),
            )),
        );
        let p = garbage.to_problem("RegionOne_compute_public", ConfigAt::Port(8774));
        assert_eq!(p.status, StatusCode::BAD_GATEWAY);
        for needle in [
            "invalid response",
            "malformed response head",
            "not HTTP/1.1",
        ] {
            assert!(p.message.contains(needle), "{needle}: {}", p.message);
        }
        assert!(
            !p.message.contains("closed the connection"),
            "{}",
            p.message
        );
        assert!(!p.message.contains("10.0.0.1"), "{}", p.message);

        let silent = ProxyError::new(
            ErrorKind::UpstreamProtocol,
            "10.0.0.1:80",
            Some(Box::new(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backend closed the connection without answering",
            ))),
        );
        let p = silent.to_problem("b", ConfigAt::Port(8774));
        assert!(
            p.message
                .contains("closed the connection without answering"),
            "{}",
            p.message
        );
        assert!(
            p.message.contains("retry if the request is idempotent"),
            "{}",
            p.message
        );
        let reset = ProxyError::new(
            ErrorKind::UpstreamProtocol,
            "10.0.0.1:80",
            Some(Box::new(io::Error::from(io::ErrorKind::ConnectionReset))),
        );
        assert!(
            reset
                .to_problem("b", ConfigAt::Port(8774))
                .message
                .contains("reset the connection")
        );
    }

    #[test]
    fn a_queue_timeout_is_a_retry_safe_503_naming_what_to_change() {
        let timeout = ProxyError::new(
            ErrorKind::QueueTimeout,
            "10.0.0.1:9292",
            Some(Box::new(QueueTimeout {
                queue: std::time::Duration::from_secs(60),
                servers: 2,
            })),
        );
        assert!(timeout.retry_safe, "nothing was sent");
        assert_eq!(timeout.side, ErrorSource::Upstream);
        let p = timeout.to_problem("RegionOne_image_public", ConfigAt::Port(9292));
        assert_eq!(p.status, StatusCode::SERVICE_UNAVAILABLE);
        for needle in [
            "RegionOne_image_public on port 9292",
            "for 1m (queue timeout, [timeouts] queue)",
            "never sent",
            "`maxconn_per_server` in [ports.9292] or [proxy]",
            "`queue` in [ports.9292] or [timeouts]",
        ] {
            assert!(p.message.contains(needle), "{needle}: {}", p.message);
        }
        assert!(!p.message.contains("10.0.0.1"), "{}", p.message);
        let p = timeout.to_problem("horizon", ConfigAt::Passthrough("horizon"));
        assert!(
            p.message
                .contains("`maxconn_per_server` in the [[passthrough]] named \"horizon\""),
            "{}",
            p.message
        );
        assert!(!p.message.contains("[proxy]"), "{}", p.message);
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
