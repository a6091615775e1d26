//! Access log: one `tracing` event (target `access`) per request, emitted when
//! the response body is finished or abandoned, so the duration covers streaming. The same
//! moment adds the request to its backend's [`TrafficStats`] (`/metrics`). Both log
//! formats write access lines themselves ([`AccessFormat`]), byte for byte as
//! tracing-subscriber would, for what that saves per request.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::metrics::{Observation, TrafficStats};
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
    /// Which alternative of an `A|B` scope was chosen (1 = the first); 0 when the scope
    /// named one region.
    pub alternative: u8,
    /// The server that answered (`host:port`); `None` when none did.
    pub server: Option<Arc<str>>,
    /// Further servers tried after a connect failed, and re-sends after a pooled
    /// connection was found closed.
    pub redispatches: u32,
    pub retries: u32,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Time spent waiting for a server's `maxconn` slot (HAProxy's `Tw`).
    pub queued: Duration,
    /// What the router's own answer ended (instead of `complete` once it is sent), e.g.
    /// [`QUEUE_TIMEOUT`].
    pub outcome: Option<&'static str>,
    /// The backend's `X-Openstack-Request-Id`, to find the request in its logs.
    pub request_id: Option<http::HeaderValue>,
    /// The router answered itself (an error of its own): nothing came from a backend.
    pub from_router: bool,
    /// Where the request is counted; `None` with `[admin] metrics = false`.
    pub stats: Option<Arc<TrafficStats>>,
    /// Released with the record, i.e. when the response body is done.
    pub in_flight: Option<crate::proxy::idle::InFlightGuard>,
    /// The line was written; a record dropped before that was cut (see `Drop`).
    logged: bool,
}

/// The outcome of a request the end of `[proxy] shutdown_grace` cut.
pub const CUT_BY_SHUTDOWN: &str = "cut_by_shutdown";

/// The outcome of a request answered 503 because it waited `[timeouts] queue` for a
/// server's `maxconn` slot in vain.
pub const QUEUE_TIMEOUT: &str = "queue_timeout";

/// The outcome of a request answered 502 because the TLS handshake with its server failed
/// (a certificate that did not verify, no shared protocol version, no TLS at all).
pub const TLS_HANDSHAKE_FAILED: &str = "tls_handshake_failed";

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
            alternative: 0,
            server: None,
            redispatches: 0,
            retries: 0,
            bytes_in: 0,
            queued: Duration::ZERO,
            outcome: None,
            request_id: None,
            from_router: false,
            stats: None,
            in_flight: None,
            logged: false,
        }
    }

    /// Whether the shutdown cut this request's connection at the end of the grace period.
    fn cut_by_shutdown(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|g| g.cut_by_shutdown())
    }

    fn emit(&mut self, bytes: u64, outcome: &'static str) {
        self.logged = true;
        let duration = self.started.elapsed();
        // Status 0: nothing was answered (cut by the shutdown); no response class to count.
        if let Some(stats) = self.stats.as_ref().filter(|_| self.status != 0) {
            stats.observe(&Observation {
                status: self.status,
                from_router: self.from_router,
                duration,
                bytes_in: self.bytes_in,
                bytes_out: bytes,
                scope_source: self.scope_source,
                redispatches: self.redispatches,
                retries: self.retries,
            });
        }
        let dash = "-";
        // The request id is the backend's; a value that is not text is logged as "-".
        let request_id = self
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or(dash);
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            status = self.status,
            duration_ms = %format_args!("{:.3}", duration.as_secs_f64() * 1000.0),
            service_type = %self.service_type.as_deref().unwrap_or(dash),
            scope = %self.scope_source.map_or("none", |s| s.as_str()),
            region = %self.region.as_deref().unwrap_or(dash),
            alternative = self.alternative,
            failover = %self.failover.as_deref().unwrap_or(dash),
            backend = %self.backend.as_deref().unwrap_or(dash),
            server = %self.server.as_deref().unwrap_or(dash),
            redispatches = self.redispatches,
            retries = self.retries,
            queue_ms = %format_args!("{:.3}", self.queued.as_secs_f64() * 1000.0),
            request_id = %request_id,
            peer = %self.peer,
            listener = %self.listener,
            bytes_in = self.bytes_in,
            bytes,
            outcome = %outcome,
        );
    }

    /// Takes what one upstream send took (successful or not).
    pub fn note_send(&mut self, report: &crate::proxy::upstream::SendReport<'_>) {
        self.redispatches += report.redispatches;
        self.retries += report.retries;
        self.bytes_in += report.body_bytes;
        self.queued += report.queued;
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
        if let Some(mut record) = self.record.take() {
            let outcome = if self.complete {
                record.outcome.unwrap_or("complete")
            } else if record.cut_by_shutdown() {
                CUT_BY_SHUTDOWN
            } else {
                "aborted"
            };
            record.emit(self.bytes, outcome);
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

impl Drop for AccessRecord {
    /// A request still waiting for its response when the shutdown grace ends is dropped
    /// with its connection before any body could log it: its line is written here, status
    /// 0 (nothing was sent). Other unlogged drops are deliberate (health answers) or the
    /// client leaving, and stay silent as before.
    fn drop(&mut self) {
        if !self.logged && self.cut_by_shutdown() {
            self.emit(0, CUT_BY_SHUTDOWN);
        }
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
    // Colour codes only for a human at a terminal, never in journald or files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let writer = crate::log_writer::LineWriter::stderr();
    let _ = tracing::subscriber::set_global_default(subscriber(format, filter, writer, ansi));
}

/// The subscriber writing `format` lines to `writer`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    subscriber_timed(format, filter, writer, ansi, SystemTime)
}

/// [`subscriber`] with the clock of the lines' timestamps given (tests fix it).
fn subscriber_timed<W, T>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    writer: W,
    ansi: bool,
    timer: T,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    T: FormatTime + Clone + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_timer(timer.clone());
    match format {
        LogFormat::Text => Box::new(
            builder
                .with_ansi(ansi)
                .event_format(AccessFormat::text(timer))
                .finish(),
        ),
        // `json()` for its span field format; the event format is `AccessFormat::json`'s.
        LogFormat::Json => Box::new(
            builder
                .json()
                .event_format(AccessFormat::json(timer))
                .finish(),
        ),
    }
}

/// The event format of both log formats: access lines written directly, byte for byte as
/// tracing-subscriber's own format `D` writes them, and every other event handed to `D`
/// (what [`AccessLine`] writes for each of the two).
struct AccessFormat<D, T> {
    default: D,
    timer: T,
}

type Full<T> = tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, T>;
type Json<T> = tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json, T>;

impl<T: FormatTime + Clone> AccessFormat<Full<T>, T> {
    /// tracing-subscriber's full format, access lines without its per-field styling.
    ///
    /// With the access log on, formatting the line took about 10 % of the router's CPU in
    /// (j) (`perf record`: the default field visitor's `record_debug`, `core::fmt::write`
    /// and `nu_ansi_term`'s painting of every field name, which is a no-op without a
    /// terminal but still runs), and the log cost 15–19 % of req/s (`docs/performance.md`,
    /// *The access log's cost*).
    fn text(timer: T) -> Self {
        AccessFormat {
            default: tracing_subscriber::fmt::format().with_timer(timer.clone()),
            timer,
        }
    }
}

impl<T: FormatTime + Clone> AccessFormat<Json<T>, T> {
    /// Fields at the top level (`{"timestamp":…,"level":"INFO","method":"GET",…,
    /// "target":"access"}`), what log shippers index without a nested path.
    ///
    /// With the access log on in JSON, the router served 14–16 % fewer req/s than with the
    /// text line (measured at once, loopback as in (j)); `perf record` put most of the
    /// difference in serde's path through tracing-subscriber's `fmt::Write`-to-`io::Write`
    /// adaptor: a UTF-8 check of every piece written back (`from_utf8` 2.3 % of the
    /// samples), the piece-by-piece writes (2.6 %), the timestamp formatted into a
    /// `String` of its own first (`docs/performance.md`, *Sixth session*).
    fn json(timer: T) -> Self {
        AccessFormat {
            default: tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_timer(timer.clone()),
            timer,
        }
    }
}

impl<S, N, D, T> FormatEvent<S, N> for AccessFormat<D, T>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    D: FormatEvent<S, N> + AccessLine,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        // Access events inside a span (there are none) keep the span's context: the
        // default format writes them.
        if event.metadata().target() == "access"
            && ctx.event_scope().is_none()
            && D::writes(&writer, event)
        {
            D::write(&self.timer, writer, event)
        } else {
            self.default.format_event(ctx, writer, event)
        }
    }
}

/// How a format writes an access event (outside any span) itself.
trait AccessLine {
    /// Whether it writes this one itself; otherwise the default format does.
    fn writes(writer: &Writer<'_>, event: &tracing::Event<'_>) -> bool;

    fn write(
        timer: &impl FormatTime,
        writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result;
}

impl<T> AccessLine for Full<T> {
    /// Not with colours (a terminal), nor with a message (there is none).
    fn writes(writer: &Writer<'_>, event: &tracing::Event<'_>) -> bool {
        !writer.has_ansi_escapes() && event.metadata().fields().field("message").is_none()
    }

    fn write(
        timer: &impl FormatTime,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        // As `Format<Full, _>` writes them without ANSI escapes.
        if timer.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(match *event.metadata().level() {
            tracing::Level::TRACE => " TRACE access: ",
            tracing::Level::DEBUG => " DEBUG access: ",
            tracing::Level::INFO => "  INFO access: ",
            tracing::Level::WARN => "  WARN access: ",
            tracing::Level::ERROR => " ERROR access: ",
        })?;
        let mut fields = AccessFields {
            writer: writer.by_ref(),
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writeln!(writer)
    }
}

impl<T> AccessLine for Json<T> {
    fn writes(_: &Writer<'_>, _: &tracing::Event<'_>) -> bool {
        true
    }

    fn write(
        timer: &impl FormatTime,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        writer.write_str("{\"timestamp\":\"")?;
        timer.format_time(&mut Writer::new(&mut JsonEscaped(&mut writer)))?;
        writer.write_str(match *event.metadata().level() {
            tracing::Level::TRACE => "\",\"level\":\"TRACE\"",
            tracing::Level::DEBUG => "\",\"level\":\"DEBUG\"",
            tracing::Level::INFO => "\",\"level\":\"INFO\"",
            tracing::Level::WARN => "\",\"level\":\"WARN\"",
            tracing::Level::ERROR => "\",\"level\":\"ERROR\"",
        })?;
        let mut fields = JsonFields {
            writer: writer.by_ref(),
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":\"access\"}\n")
    }
}

/// Writes an access line's fields as the default visitor does without a terminal:
/// `name=value`, one space between. The access event has no `message` field and only
/// `Display` and integer values, which the default visitor writes as `{:?}` of them.
struct AccessFields<'a> {
    writer: Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl AccessFields<'_> {
    fn name(&mut self, field: &tracing::field::Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        self.writer.write_str(field.name())?;
        self.writer.write_char('=')
    }
}

impl tracing::field::Visit for AccessFields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = self
                .name(field)
                .and_then(|()| write!(self.writer, "{value:?}"));
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if self.result.is_ok() {
            self.result = self
                .name(field)
                .and_then(|()| self.writer.write_str(itoa::Buffer::new().format(value)));
        }
    }
}

/// Writes an access event's fields as `,"name":value`, as serde writes a map's entries:
/// strings (and `Debug` values, as strings) escaped, integers and booleans bare.
struct JsonFields<'a> {
    writer: Writer<'a>,
    result: fmt::Result,
}

impl JsonFields<'_> {
    fn entry(
        &mut self,
        field: &tracing::field::Field,
        value: impl FnOnce(&mut Writer<'_>) -> fmt::Result,
    ) {
        if self.result.is_ok() {
            self.result = (|| {
                self.writer.write_str(",\"")?;
                JsonEscaped(&mut self.writer).write_str(field.name())?;
                self.writer.write_str("\":")?;
                value(&mut self.writer)
            })();
        }
    }

    fn string(&mut self, field: &tracing::field::Field, value: fmt::Arguments<'_>) {
        self.entry(field, |w| {
            w.write_char('"')?;
            JsonEscaped(w).write_fmt(value)?;
            w.write_char('"')
        });
    }
}

impl tracing::field::Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.string(field, format_args!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.string(field, format_args!("{value}"));
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.entry(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.entry(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.entry(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        // Rare (no access field is a float): serde's own rendering, `null` for NaN.
        self.entry(field, |w| {
            w.write_str(&serde_json::to_string(&value).map_err(|_| fmt::Error)?)
        });
    }
}

/// Escapes what is written through it as serde_json escapes a string's contents: `"`,
/// `\\` and control characters; everything else, non-ASCII included, as is.
struct JsonEscaped<'w, 'a>(&'w mut Writer<'a>);

impl fmt::Write for JsonEscaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, byte) in s.bytes().enumerate() {
            let escaped = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            if escaped.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.0.write_str("\\u00")?;
                self.0.write_char(char::from(HEX[usize::from(byte >> 4)]))?;
                self.0
                    .write_char(char::from(HEX[usize::from(byte & 0xf)]))?;
            } else {
                self.0.write_str(escaped)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::sync::Mutex;

    use http_body_util::{BodyExt, Empty};

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A clock that always reads the same, so two formatters' lines can be compared.
    #[derive(Clone, Copy)]
    struct Fixed;

    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2026-11-29T22:00:00.123456Z")
        }
    }

    /// A completed request's record as `emit` gets it, from the case's setter.
    fn logged(set: impl FnOnce(&mut AccessRecord)) {
        let uri: http::Uri = "/v2.1/servers?token=secret".parse().unwrap();
        let mut record = AccessRecord::new(
            Instant::now(),
            "127.0.0.1:8774".parse().unwrap(),
            "127.0.0.9:40000".parse().unwrap(),
            &http::Method::GET,
            &uri,
        );
        set(&mut record);
        let body = Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed();
        drop(LoggedBody::new(body, record));
    }

    /// What `emit` logs through the `format` subscriber: access lines, `Fixed` clock.
    fn captured(format: LogFormat, emit: impl FnOnce()) -> String {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = subscriber_timed(
            format,
            tracing_subscriber::EnvFilter::new("access=info"),
            move || writer.clone(),
            false,
            Fixed,
        );
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(capture.0.lock().unwrap().clone()).unwrap()
    }

    /// The events each fast format is compared with its default on.
    fn cases() -> Vec<(&'static str, fn())> {
        vec![
            ("nothing decided", || logged(|_| {})),
            ("every field set", || {
                logged(|r| {
                    r.status = 503;
                    r.service_type = Some(Arc::from("image"));
                    r.region = Some(Arc::from("RegionTwo"));
                    r.backend = Some(Arc::from("RegionTwo_image_public"));
                    r.scope_source = Some(ScopeSource::AuthToken);
                    r.failover = Some("RegionOne: connect refused (3 servers)".to_owned());
                    r.alternative = 2;
                    r.server = Some(Arc::from("[fd00::2]:9292"));
                    r.redispatches = 3;
                    r.retries = 1;
                    r.bytes_in = u64::MAX;
                    r.queued = Duration::from_micros(1500);
                    r.outcome = Some(QUEUE_TIMEOUT);
                    r.request_id = Some(http::HeaderValue::from_static("req-5 \"q\""));
                    r.peer = "[2001:db8::9]:40000".parse().unwrap();
                    r.from_router = true;
                })
            }),
            ("values to escape", || {
                logged(|r| {
                    r.failover = Some(
                        "a \"b\" c\\d\ne\rf\tg\u{8}h\u{c}i\u{1}j\u{1f}k\u{7f}l é €".to_owned(),
                    );
                    r.region = Some(Arc::from("/path\\"));
                })
            }),
            // The shape of `passthrough`'s access line: a `&str` value is quoted.
            ("passthrough line", || {
                tracing::info!(
                    target: "access",
                    passthrough = %"mysql",
                    mode = "tcp",
                    peer = %"127.0.0.9:40000",
                    bytes_up = 17u64,
                    bytes_down = 0u64,
                    error = %"",
                );
            }),
            ("other value types", || {
                tracing::info!(
                    target: "access",
                    ok = true,
                    no = false,
                    delta = -3i64,
                    ratio = 0.25f64,
                    nan = f64::NAN,
                    big = 1u128 << 100,
                    error = &std::io::Error::other("disk \"full\"") as &dyn std::error::Error,
                    debug = ?Some("x"),
                );
            }),
            ("other events", || {
                tracing::info!(addr = %"127.0.0.1:8774", n = 3, "listening");
                tracing::warn!(target: "access", "an access event with a message");
            }),
            ("inside a span", || {
                let _span = tracing::info_span!("conn", peer = 7).entered();
                logged(|r| r.status = 200);
            }),
        ]
    }

    /// Sends every case through `both` (the default format writing to the first capture,
    /// ours to the second) and compares the bytes.
    fn assert_same_lines(
        both: impl Fn(Capture, Capture) -> Box<dyn tracing::Subscriber + Send + Sync>,
    ) {
        for (name, emit) in cases() {
            let (default, ours) = (Capture::default(), Capture::default());
            tracing::subscriber::with_default(both(default.clone(), ours.clone()), emit);
            let default = String::from_utf8(default.0.lock().unwrap().clone()).unwrap();
            let ours = String::from_utf8(ours.0.lock().unwrap().clone()).unwrap();
            assert!(!default.is_empty(), "{name}: nothing logged");
            assert_eq!(ours, default, "{name}");
        }
    }

    #[test]
    fn text_lines_are_the_default_formats_byte_for_byte() {
        use tracing_subscriber::layer::SubscriberExt;

        assert_same_lines(|default, ours| {
            Box::new(
                tracing_subscriber::registry()
                    .with(
                        tracing_subscriber::fmt::layer()
                            .with_ansi(false)
                            .with_timer(Fixed)
                            .with_writer(move || default.clone()),
                    )
                    .with(
                        tracing_subscriber::fmt::layer()
                            .with_ansi(false)
                            .event_format(AccessFormat::text(Fixed))
                            .with_writer(move || ours.clone()),
                    ),
            )
        });
    }

    #[test]
    fn json_lines_are_the_default_formats_byte_for_byte() {
        use tracing_subscriber::layer::SubscriberExt;

        assert_same_lines(|default, ours| {
            Box::new(
                tracing_subscriber::registry()
                    .with(
                        tracing_subscriber::fmt::layer()
                            .json()
                            .flatten_event(true)
                            .with_current_span(false)
                            .with_timer(Fixed)
                            .with_writer(move || default.clone()),
                    )
                    .with(
                        tracing_subscriber::fmt::layer()
                            .json()
                            .flatten_event(true)
                            .with_current_span(false)
                            .event_format(AccessFormat::json(Fixed))
                            .with_writer(move || ours.clone()),
                    ),
            )
        });
    }

    #[test]
    fn the_text_subscriber_writes_access_lines_in_the_documented_shape() {
        let text = captured(LogFormat::Text, || logged(|r| r.status = 200));
        let rest = text
            .strip_prefix("2026-11-29T22:00:00.123456Z  INFO access: method=GET path=/v2.1/servers status=200 duration_ms=")
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            rest.ends_with(
                " service_type=- scope=none region=- alternative=0 failover=- backend=- \
                 server=- redispatches=0 retries=0 queue_ms=0.000 request_id=- \
                 peer=127.0.0.9:40000 listener=127.0.0.1:8774 bytes_in=0 bytes=0 \
                 outcome=complete\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn json_format_writes_one_object_per_request_with_top_level_fields() {
        let stats = TrafficStats::new();
        let text = captured(LogFormat::Json, || {
            logged(|record| {
                record.method = http::Method::POST;
                record.status = 201;
                record.service_type = Some(Arc::from("compute"));
                record.region = Some(Arc::from("RegionTwo"));
                record.backend = Some(Arc::from("RegionTwo_compute_public"));
                record.scope_source = Some(ScopeSource::AuthToken);
                record.alternative = 2;
                record.server = Some(Arc::from("127.0.0.2:8774"));
                record.redispatches = 1;
                record.bytes_in = 42;
                record.request_id = Some(http::HeaderValue::from_static("req-1234"));
                record.stats = Some(stats.clone());
            })
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        for (field, want) in [
            ("target", serde_json::json!("access")),
            ("method", serde_json::json!("POST")),
            ("path", serde_json::json!("/v2.1/servers")),
            ("status", serde_json::json!(201)),
            ("service_type", serde_json::json!("compute")),
            ("scope", serde_json::json!("X-Auth-Token")),
            ("region", serde_json::json!("RegionTwo")),
            ("alternative", serde_json::json!(2)),
            ("backend", serde_json::json!("RegionTwo_compute_public")),
            ("server", serde_json::json!("127.0.0.2:8774")),
            ("redispatches", serde_json::json!(1)),
            ("retries", serde_json::json!(0)),
            ("request_id", serde_json::json!("req-1234")),
            ("bytes_in", serde_json::json!(42)),
            ("bytes", serde_json::json!(0)),
            ("outcome", serde_json::json!("complete")),
        ] {
            assert_eq!(line[field], want, "field {field} in {line}");
        }
        assert!(line["duration_ms"].is_string(), "{line}");
        assert!(
            !text.contains("secret"),
            "query strings are not logged: {text}"
        );
        // The same moment counted the request for /metrics.
        assert_eq!(stats.responses(), [0, 1, 0, 0, 0]);
        assert_eq!(stats.bytes_in(), 42);
    }
}
