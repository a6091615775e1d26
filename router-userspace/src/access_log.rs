//! Access log: one `tracing` event (target `access`) per request, emitted when
//! the response body is finished or abandoned, so the duration covers streaming.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;

use crate::scope::ScopeSource;

/// Everything the access line reports besides the response status.
#[derive(Debug)]
pub struct AccessRecord {
    pub started: Instant,
    pub listener: SocketAddr,
    pub peer: SocketAddr,
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub service_type: Option<Arc<str>>,
    pub region: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    /// `None` until a plan is made, and for the transparent fallback (no scope read).
    pub scope_source: Option<ScopeSource>,
    /// `A|B` alternatives that did not serve, and why (`None` when the first served).
    pub failover: Option<String>,
    /// Released with the record, i.e. when the response body is done.
    pub in_flight: Option<crate::proxy::idle::InFlightGuard>,
}

impl AccessRecord {
    pub fn new(
        started: Instant,
        listener: SocketAddr,
        peer: SocketAddr,
        method: &http::Method,
        uri: &http::Uri,
    ) -> Self {
        AccessRecord {
            started,
            listener,
            peer,
            method: method.clone(),
            // The query can carry secrets (signed URLs); log the path only.
            path: uri.path().to_owned(),
            status: 0,
            service_type: None,
            region: None,
            backend: None,
            scope_source: None,
            failover: None,
            in_flight: None,
        }
    }

    fn emit(&self, bytes: u64, outcome: &'static str) {
        let dash = "-";
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            status = self.status,
            duration_ms = %format_args!("{:.3}", self.started.elapsed().as_secs_f64() * 1000.0),
            service_type = %self.service_type.as_deref().unwrap_or(dash),
            region = %self.region.as_deref().unwrap_or(dash),
            backend = %self.backend.as_deref().unwrap_or(dash),
            scope = %self.scope_source.map_or("none", |s| s.as_str()),
            failover = %self.failover.as_deref().unwrap_or(dash),
            peer = %self.peer,
            listener = %self.listener,
            bytes,
            outcome = %outcome,
        );
    }
}

/// A response body that writes the access line once it ends or is dropped.
pub struct LoggedBody {
    inner: BoxBody<Bytes, BodyError>,
    record: Option<AccessRecord>,
    bytes: u64,
    complete: bool,
}

/// Errors surfaced while streaming a response body to the client.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl LoggedBody {
    /// A body that writes no access line: answers to other routers' health checks,
    /// which would otherwise drown the log (one per service every `inter`).
    pub fn unlogged(inner: BoxBody<Bytes, BodyError>) -> Self {
        LoggedBody {
            inner,
            record: None,
            bytes: 0,
            complete: false,
        }
    }

    pub fn new(inner: BoxBody<Bytes, BodyError>, record: AccessRecord) -> Self {
        LoggedBody {
            inner,
            record: Some(record),
            bytes: 0,
            complete: false,
        }
    }

    fn finish(&mut self) {
        if let Some(record) = self.record.take() {
            record.emit(
                self.bytes,
                if self.complete { "complete" } else { "aborted" },
            );
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                this.complete = true;
                this.finish();
            }
            Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // hyper drops a body it knows is empty without polling it to the end.
        if self.inner.is_end_stream() {
            self.complete = true;
        }
        self.finish();
    }
}

/// `[log]` of the configuration, with its defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
}

/// How every log line (access lines included) is written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `key=value` fields after the message, for a human reading journald.
    #[default]
    Text,
    /// One JSON object per line, fields at the top level, for log shippers.
    Json,
}

/// Installs the global subscriber in text format: `RUST_LOG` wins, else `info`.
pub fn init_subscriber() {
    init_subscriber_as(LogFormat::Text);
}

/// Installs the global subscriber writing `format` to stderr: `RUST_LOG` wins, else `info`.
/// A second call (tests, embedding) keeps the first subscriber.
pub fn init_subscriber_as(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // stderr: logs never mix with `check`/`explain` output on stdout.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            // Colour codes only for a human at a terminal, never in journald or files.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        // Fields at the top level: `{"timestamp":…,"level":"INFO","target":"access",
        // "method":"GET",…}`, what log shippers index without a nested path.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
