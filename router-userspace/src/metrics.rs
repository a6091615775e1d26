//! Prometheus metrics (docs/ARCHITECTURE.md §13): what the request path counts, and the
//! registry the admin listener's `/metrics` encodes.
//!
//! The request path never looks a label set up. Every backend of the routing table owns a
//! [`TrafficStats`] of plain atomics (and two histograms), reached through the request's
//! [`crate::decision::Plan`]; the access record adds one request's numbers to it when the
//! response body ends. A [`prometheus_client::collector::Collector`] walks the routing table
//! at scrape time and writes each backend's numbers under its labels. Connection gauges
//! live in [`ClientGauges`], shared by every client connection.
//!
//! With `[admin] metrics = false` the routing table holds no stats and nothing is counted
//! per request (the benchmark's "without metrics" run); scrape-time facts (health, eBPF,
//! VIP, build) are still served.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::health_state::{Placement, Role, ServerIndex};
use crate::proxy::connection_limit::ConnectionLimit;
use crate::proxy::upstream::pool::Pool;
use crate::routing::SharedRouter;
use crate::scope::ScopeSource;
use crate::server_slots::Slots;

/// Prefix of every metric name.
pub const PREFIX: &str = "scope_router";

/// Request duration buckets (seconds): API calls take milliseconds, image transfers
/// minutes; past a minute only "slow" matters.
const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0,
];

/// Upstream connect buckets (seconds): a loopback or LAN connect is sub-millisecond; the
/// default connect timeout is 10 s.
const CONNECT_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1, 1.0, 5.0,
];

/// The statuses the router itself answers with, counted as `errors_total{kind}`; any other
/// status of the router's own lands in `other`.
pub const ERROR_KINDS: [u16; 12] = [400, 404, 405, 408, 413, 431, 500, 501, 502, 503, 504, 508];

/// Index of a scope source in [`TrafficStats::scope_sources`]; the last slot is "no scope
/// read" (transparent requests and requests refused before routing).
fn source_index(source: Option<ScopeSource>) -> usize {
    match source {
        Some(ScopeSource::Defaults) => 0,
        Some(ScopeSource::XScope) => 1,
        Some(ScopeSource::AuthToken) => 2,
        Some(ScopeSource::SubjectToken) => 3,
        None => 4,
    }
}

/// Label values of [`source_index`]'s slots.
const SOURCE_LABELS: [&str; 5] = [
    "defaults",
    "x-scope",
    "x-auth-token",
    "x-subject-token",
    "none",
];

/// Label values of the status classes.
const CLASS_LABELS: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One request's numbers, as the access record has them when the response body ends.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub status: u16,
    /// The router answered itself (an error of its own), nothing came from a backend.
    pub from_router: bool,
    pub duration: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub scope_source: Option<ScopeSource>,
    /// Further servers tried after a connect failed.
    pub redispatches: u32,
    /// Requests re-sent on a fresh connection after a pooled one turned out closed.
    pub retries: u32,
}

/// Traffic of one backend (a target of the routing table, a listener's requests refused
/// before routing, or a passthrough), in atomics the request path only adds to.
#[derive(Debug)]
pub struct TrafficStats {
    responses: [AtomicU64; 5],
    /// Statuses the router produced itself, by [`ERROR_KINDS`] (last slot: other).
    errors: [AtomicU64; ERROR_KINDS.len() + 1],
    scope_sources: [AtomicU64; 5],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    redispatches: AtomicU64,
    retries: AtomicU64,
    /// Times this backend was skipped for the next alternative of an `A|B` scope.
    failovers: AtomicU64,
    duration: Histogram,
    connect: Histogram,
    /// Observations in `connect` (the histogram keeps its count to itself).
    connects: AtomicU64,
}

impl Default for TrafficStats {
    fn default() -> Self {
        TrafficStats {
            responses: Default::default(),
            errors: Default::default(),
            scope_sources: Default::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            redispatches: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            duration: Histogram::new(DURATION_BUCKETS),
            connect: Histogram::new(CONNECT_BUCKETS),
            connects: AtomicU64::new(0),
        }
    }
}

impl TrafficStats {
    pub fn new() -> Arc<TrafficStats> {
        Arc::new(TrafficStats::default())
    }

    /// Adds one finished request.
    pub fn observe(&self, o: &Observation) {
        let class = usize::from(o.status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        if o.from_router {
            let kind = ERROR_KINDS
                .iter()
                .position(|k| *k == o.status)
                .unwrap_or(ERROR_KINDS.len());
            self.errors[kind].fetch_add(1, Ordering::Relaxed);
        }
        self.scope_sources[source_index(o.scope_source)].fetch_add(1, Ordering::Relaxed);
        if o.bytes_in > 0 {
            self.bytes_in.fetch_add(o.bytes_in, Ordering::Relaxed);
        }
        self.bytes_out.fetch_add(o.bytes_out, Ordering::Relaxed);
        if o.redispatches > 0 {
            self.redispatches
                .fetch_add(u64::from(o.redispatches), Ordering::Relaxed);
        }
        if o.retries > 0 {
            self.retries
                .fetch_add(u64::from(o.retries), Ordering::Relaxed);
        }
        self.duration.observe(o.duration.as_secs_f64());
    }

    /// A passthrough TCP connection ended after relaying these bytes.
    pub fn observe_stream(&self, from_client: u64, to_client: u64) {
        self.bytes_in.fetch_add(from_client, Ordering::Relaxed);
        self.bytes_out.fetch_add(to_client, Ordering::Relaxed);
    }

    /// A new upstream connection took `elapsed` to establish.
    pub fn observe_connect(&self, elapsed: Duration) {
        self.connect.observe(elapsed.as_secs_f64());
        self.connects.fetch_add(1, Ordering::Relaxed);
    }

    /// The backend was skipped for the next alternative of an `A|B` scope.
    pub fn failed_over(&self) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered, by status class (`1xx` … `5xx`).
    pub fn responses(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.responses[i].load(Ordering::Relaxed))
    }

    /// Every request answered.
    pub fn requests(&self) -> u64 {
        self.responses().iter().sum()
    }

    /// Response body bytes sent to clients.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    /// Request body bytes received from clients.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Errors the router answered itself, `(status, count)`; status 0 = other.
    pub fn errors(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        ERROR_KINDS
            .iter()
            .copied()
            .chain([0])
            .zip(&self.errors)
            .map(|(k, n)| (k, n.load(Ordering::Relaxed)))
    }
}

/// Client connection gauges shared by every connection of one router.
#[derive(Debug, Default)]
pub struct ClientGauges {
    /// Serving a request (head read, response body not yet finished).
    pub active: AtomicI64,
    /// Held outside hyper (see `proxy::park`): idle between requests, or stalled inside
    /// a request head.
    pub parked: AtomicI64,
    /// Heads hyper refused itself before the router saw a request: malformed (answered
    /// 400) and larger than its buffer (answered 431). Counted in `errors_total`.
    pub malformed_heads: AtomicU64,
    pub oversized_heads: AtomicU64,
    /// TLS handshakes on `https://` listeners that failed or did not finish within
    /// `request_header` (no request, no access line).
    pub tls_handshake_failures: AtomicU64,
    /// Accepted and not yet closed (`open()`), and `[proxy] max_connections` on them.
    pub limit: ConnectionLimit,
}

impl ClientGauges {
    pub fn inc(gauge: &AtomicI64) {
        gauge.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(gauge: &AtomicI64) {
        gauge.fetch_sub(1, Ordering::Relaxed);
    }

    fn get(gauge: &AtomicI64) -> i64 {
        gauge.load(Ordering::Relaxed)
    }

    /// A client's TLS handshake failed (or timed out).
    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A client connection ended with an error from hyper: counts the heads it refused.
    pub fn connection_error(&self, e: &hyper::Error) {
        if e.is_parse_too_large() {
            self.oversized_heads.fetch_add(1, Ordering::Relaxed);
        } else if e.is_parse() {
            self.malformed_heads.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Held by an open client connection: counts it in [`ClientGauges::open`] until dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<ClientGauges>);

impl OpenConnection {
    /// Counts a connection whatever the limit (tests).
    #[cfg(test)]
    pub fn new(gauges: &Arc<ClientGauges>) -> Self {
        gauges.limit.take();
        OpenConnection(gauges.clone())
    }

    /// Counts a new client connection if `[proxy] max_connections` has room for it.
    pub fn admit(gauges: &Arc<ClientGauges>) -> Option<Self> {
        gauges
            .limit
            .try_take()
            .then(|| OpenConnection(gauges.clone()))
    }

    /// Counts a new client connection once the limit has room for it.
    pub async fn admitted(gauges: &Arc<ClientGauges>) -> Self {
        loop {
            if let Some(open) = Self::admit(gauges) {
                return open;
            }
            gauges.limit.room().await;
        }
    }

    pub fn gauges(&self) -> &ClientGauges {
        &self.0
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.limit.release();
    }
}

/// Labels of one backend's series.
#[derive(Debug, Clone, Copy)]
pub struct BackendLabels<'a> {
    /// `VIP:port` (or the passthrough's bind address).
    pub listener: &'a str,
    /// `-` for transparent, refused and passthrough traffic.
    pub service_type: &'a str,
    pub region: &'a str,
    pub backend: &'a str,
}

impl<'a> BackendLabels<'a> {
    fn pairs(self) -> [(&'static str, &'a str); 4] {
        [
            ("listener", self.listener),
            ("service_type", self.service_type),
            ("region", self.region),
            ("backend", self.backend),
        ]
    }
}

/// Writes metric families with label sets built at scrape time. One family is started
/// with [`Families::family`] and then receives its samples; the encoder requires every
/// sample of a family to follow its descriptor.
pub struct Families<'a, 'e> {
    encoder: &'a mut DescriptorEncoder<'e>,
}

type Labels<'l> = Vec<(&'static str, &'l str)>;

impl<'a, 'e> Families<'a, 'e> {
    pub fn new(encoder: &'a mut DescriptorEncoder<'e>) -> Self {
        Families { encoder }
    }

    /// A counter family `name` (without the `_total` suffix the encoder appends).
    pub fn counters<'l>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels<'l>, u64)>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in samples {
            let sample = family.encode_family(&labels)?;
            ConstCounter::new(value).encode(sample)?;
        }
        Ok(())
    }

    /// A gauge family `name`.
    pub fn gauges<'l>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels<'l>, i64)>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in samples {
            let sample = family.encode_family(&labels)?;
            ConstGauge::new(value).encode(sample)?;
        }
        Ok(())
    }

    /// A histogram family `name`.
    fn histograms<'l>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels<'l>, &'l Histogram)>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, histogram) in samples {
            let sample = family.encode_family(&labels)?;
            histogram.encode(sample)?;
        }
        Ok(())
    }
}

/// Writes every backend's [`TrafficStats`] as labelled families, plus the totals by error
/// kind and scope source.
pub fn encode_traffic<'l>(
    out: &mut Families<'_, '_>,
    backends: &[(BackendLabels<'l>, &'l Arc<TrafficStats>)],
    clients: &ClientGauges,
) -> Result<(), std::fmt::Error> {
    fn with<'l>(labels: &BackendLabels<'l>, extra: Option<(&'static str, &'l str)>) -> Labels<'l> {
        let mut v: Labels<'l> = labels.pairs().to_vec();
        v.extend(extra);
        v
    }
    out.counters(
        "requests",
        "Requests answered, by listener, service type, chosen region, backend and status class",
        backends.iter().flat_map(|(l, s)| {
            let counts = s.responses();
            CLASS_LABELS
                .iter()
                .zip(counts)
                .filter(|(_, n)| *n > 0)
                .map(move |(class, n)| (with(l, Some(("status_class", class))), n))
        }),
    )?;
    out.histograms(
        "request_duration_seconds",
        "Time from the request head to the end of the response body",
        // Only backends that served: dozens of empty 17-line histograms would bury the
        // series that matter (the request counters still list every backend that served).
        backends
            .iter()
            .filter(|(_, s)| s.requests() > 0)
            .map(|(l, s)| (with(l, None), &s.duration)),
    )?;
    out.histograms(
        "upstream_connect_duration_seconds",
        "Time to open a new connection to a server of the backend",
        backends
            .iter()
            .filter(|(_, s)| s.connects.load(Ordering::Relaxed) > 0)
            .map(|(l, s)| (with(l, None), &s.connect)),
    )?;
    out.counters(
        "received_bytes",
        "Request body bytes received from clients",
        backends.iter().map(|(l, s)| (with(l, None), s.bytes_in())),
    )?;
    out.counters(
        "sent_bytes",
        "Response body bytes sent to clients",
        backends.iter().map(|(l, s)| (with(l, None), s.bytes_out())),
    )?;
    let relaxed = |a: &AtomicU64| a.load(Ordering::Relaxed);
    out.counters(
        "redispatches",
        "Further servers tried after connecting to one failed (nothing was sent yet)",
        backends
            .iter()
            .map(|(l, s)| (with(l, None), relaxed(&s.redispatches))),
    )?;
    out.counters(
        "retries",
        "Requests re-sent on a new connection after a pooled one was found closed",
        backends
            .iter()
            .map(|(l, s)| (with(l, None), relaxed(&s.retries))),
    )?;
    out.counters(
        "failovers",
        "Times the backend was skipped for the next alternative of an A|B scope",
        backends
            .iter()
            .map(|(l, s)| (with(l, None), relaxed(&s.failovers))),
    )?;
    let mut sources = [0u64; 5];
    let mut errors = [0u64; ERROR_KINDS.len() + 1];
    for (_, s) in backends {
        for (total, n) in sources.iter_mut().zip(&s.scope_sources) {
            *total += relaxed(n);
        }
        for (total, (_, n)) in errors.iter_mut().zip(s.errors()) {
            *total += n;
        }
    }
    out.counters(
        "scope_source",
        "Requests by where their scope came from (none: no catalog entry matched, or \
         refused before routing)",
        SOURCE_LABELS
            .iter()
            .zip(sources)
            .map(|(source, n)| (vec![("source", *source)], n)),
    )?;
    // hyper's own answers to heads it could not parse: no backend, no access line.
    for (kind, n) in [
        (400, &clients.malformed_heads),
        (431, &clients.oversized_heads),
    ] {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            errors[i] += relaxed(n);
        }
    }
    let kinds: Vec<String> = ERROR_KINDS
        .iter()
        .map(u16::to_string)
        .chain(["other".to_owned()])
        .collect();
    out.counters(
        "errors",
        "Error responses the router produced itself, by status",
        kinds
            .iter()
            .zip(errors)
            .map(|(kind, n)| (vec![("kind", kind.as_str())], n)),
    )?;
    Ok(())
}

/// Writes the client connection gauges.
pub fn encode_clients(
    out: &mut Families<'_, '_>,
    gauges: &ClientGauges,
) -> Result<(), std::fmt::Error> {
    out.gauges(
        "client_connections",
        "Client connections by state: open (all), active (serving a request), parked (idle \
         between requests)",
        [
            ("open", gauges.limit.open()),
            ("active", ClientGauges::get(&gauges.active)),
            ("parked", ClientGauges::get(&gauges.parked)),
        ]
        .map(|(state, n)| (vec![("state", state)], n)),
    )?;
    out.gauges(
        "client_connections_max",
        "The most client connections held at once ([proxy] max_connections, or derived \
         from the open-file limit); at it, new ones wait in the listen backlog",
        [(
            vec![],
            i64::try_from(gauges.limit.max()).unwrap_or(i64::MAX),
        )],
    )?;
    out.counters(
        "client_connection_limit_reached",
        "Times the client connection limit was reached",
        [(vec![], gauges.limit.reached())],
    )?;
    out.counters(
        "tls_handshake_failures",
        "Client TLS handshakes on https:// listeners that failed or did not finish within \
         the request_header timeout",
        [(
            vec![],
            gauges.tls_handshake_failures.load(Ordering::Relaxed),
        )],
    )
}

/// The scrape-time view of one running router: its routing table (traffic, servers and
/// their health), its client connections and its upstream pool.
#[derive(Debug)]
pub struct RouterCollector {
    /// Follows reloads: each scrape reads the table in use.
    pub router: SharedRouter,
    pub clients: Arc<ClientGauges>,
    pub pool: Arc<Pool>,
}

impl Collector for RouterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut out = Families::new(&mut encoder);
        let router = self.router.load_full();
        let traffic = router.traffic();
        if !traffic.is_empty() {
            encode_traffic(&mut out, &traffic, &self.clients)?;
        }
        encode_clients(&mut out, &self.clients)?;
        let redirects: Vec<(&str, u64)> = router
            .redirect()
            .iter()
            .filter_map(|r| Some((r.label(), r.redirects()?)))
            .collect();
        if !redirects.is_empty() {
            out.counters(
                "redirects",
                "Requests a [[redirect]] listener answered with 301 to their https:// URL",
                redirects
                    .into_iter()
                    .map(|(listener, n)| (vec![("listener", listener)], n)),
            )?;
        }
        encode_certificates(&mut out, &router.tls().certificates())?;
        let pool = self.pool.idle_counts();
        out.gauges(
            "upstream_pool_idle_connections",
            "Idle keep-alive connections to each server, kept for reuse",
            pool.iter()
                .map(|(server, n)| (vec![("server", &**server)], *n as i64)),
        )?;
        encode_servers(&mut out, &ServerIndex::new(&router))
    }
}

/// When each certificate served expires, as a Unix time (the Prometheus convention for
/// dates), so that alerts compute what they need, e.g. days left.
fn encode_certificates(
    out: &mut Families<'_, '_>,
    certificates: &[crate::tls::Identity],
) -> Result<(), std::fmt::Error> {
    if certificates.is_empty() {
        return Ok(());
    }
    let labels: Vec<(String, String, i64)> = certificates
        .iter()
        .map(|c| {
            let not_after = match c.not_after.duration_since(std::time::UNIX_EPOCH) {
                Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
            };
            (
                c.files.certificate.display().to_string(),
                c.names.join(","),
                not_after,
            )
        })
        .collect();
    out.gauges(
        "tls_certificate_expiry_timestamp_seconds",
        "When a certificate an https:// listener serves expires (its notAfter, Unix time); \
         days left: (this - time()) / 86400",
        labels.iter().map(|(file, names, at)| {
            (
                vec![("certificate", file.as_str()), ("names", names.as_str())],
                *at,
            )
        }),
    )
}

/// Per-server health, checks and traffic, labelled like `status` shows them.
fn encode_servers(out: &mut Families<'_, '_>, index: &ServerIndex) -> Result<(), std::fmt::Error> {
    let entries = index.entries();
    let labels: Vec<(String, &Placement)> = entries
        .iter()
        .map(|(p, _)| (p.listener.to_string(), p))
        .collect();
    let server = |i: usize| -> Labels<'_> {
        let (listener, p) = &labels[i];
        let mut l = vec![
            ("role", role_label(p.role)),
            ("listener", listener.as_str()),
            ("region", p.region.as_str()),
            ("server", p.addr.as_str()),
        ];
        // A region's frontend is checked once per service it serves on a listener (its
        // router answers per service): the backend tells those series apart.
        if p.role == Role::Remote
            && let Some(backend) = p.backends.first()
        {
            l.push(("backend", backend.as_str()));
        }
        l
    };
    let snapshots: Vec<_> = entries.iter().map(|(_, h)| h.snapshot()).collect();
    out.gauges(
        "server_up",
        "1 while the server is up by its health checks, 0 while it is down",
        (0..entries.len()).map(|i| (server(i), i64::from(snapshots[i].up))),
    )?;
    out.counters(
        "server_checks",
        "Health checks of the server, by result",
        (0..entries.len()).flat_map(|i| {
            let s = &snapshots[i];
            [("ok", s.checks - s.failures), ("failed", s.failures)].map(|(result, n)| {
                let mut l = server(i);
                l.push(("result", result));
                (l, n)
            })
        }),
    )?;
    out.counters(
        "server_requests",
        "Requests the server answered",
        (0..entries.len()).map(|i| (server(i), entries[i].1.requests())),
    )?;
    // Only servers with a `maxconn`: an unlimited one counts nothing.
    let limited: Vec<(usize, &Slots)> = index
        .slots()
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, s.as_deref()?)))
        .collect();
    let gauge = |read: fn(&Slots) -> u32| {
        limited
            .iter()
            .map(move |&(i, s)| (server(i), i64::from(read(s))))
    };
    out.gauges(
        "server_slots_limit",
        "The server's maxconn: exchanges it may have in progress at once",
        gauge(Slots::max),
    )?;
    out.gauges(
        "server_slots_in_use",
        "Exchanges in progress on the server (each holds one of its maxconn slots)",
        gauge(Slots::in_use),
    )?;
    out.gauges(
        "server_queued_requests",
        "Requests waiting for a slot now, counted on the server the balancer picked for them",
        gauge(Slots::queued),
    )?;
    out.counters(
        "server_queue_timeouts",
        "Requests answered 503 after waiting [timeouts] queue for a slot, counted on the \
         server the balancer picked for them",
        limited
            .iter()
            .map(|&(i, s)| (server(i), s.queue_timeouts())),
    )
}

fn role_label(role: Role) -> &'static str {
    match role {
        Role::Local => "local",
        Role::Remote => "remote",
        Role::Passthrough => "passthrough",
    }
}

/// A registry for one running router: every series of [`RouterCollector`] plus the build
/// information. The admin listener adds its scrape-time collectors (VIP, eBPF) to it.
pub fn registry(collector: RouterCollector) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register(
        "build",
        "The running router's version and whether its eBPF object was built in",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION")),
            (
                "ebpf_object",
                if crate::ebpf::object_built() {
                    "built"
                } else {
                    "missing"
                },
            ),
        ]),
    );
    registry.register_collector(Box::new(collector));
    registry
}

/// The Prometheus text exposition (format 0.0.4) of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail; a collector's error would be a bug, and the
    // scrape shows what was written up to it.
    if let Err(e) = prometheus_text::encode(&mut text, registry) {
        tracing::error!("metrics encoding stopped early: {e}");
    }
    text
}

/// `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn observation(status: u16, from_router: bool) -> Observation {
        Observation {
            status,
            from_router,
            duration: Duration::from_millis(3),
            bytes_in: 10,
            bytes_out: 100,
            scope_source: Some(ScopeSource::XScope),
            redispatches: 1,
            retries: 0,
        }
    }

    #[test]
    fn observe_counts_class_error_kind_bytes_and_source() {
        let stats = TrafficStats::default();
        stats.observe(&observation(200, false));
        stats.observe(&observation(503, true));
        stats.observe(&observation(599, true));
        assert_eq!(stats.responses(), [0, 1, 0, 0, 2]);
        assert_eq!(stats.requests(), 3);
        assert_eq!(stats.bytes_in(), 30);
        assert_eq!(stats.bytes_out(), 300);
        let errors: Vec<_> = stats.errors().filter(|(_, n)| *n > 0).collect();
        assert_eq!(errors, vec![(503, 1), (0, 1)]);
        assert_eq!(stats.scope_sources[1].load(Ordering::Relaxed), 3);
        assert_eq!(stats.redispatches.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn open_connection_counts_until_dropped() {
        let gauges = Arc::new(ClientGauges::default());
        let a = OpenConnection::new(&gauges);
        let b = OpenConnection::new(&gauges);
        assert_eq!(gauges.limit.open(), 2);
        drop(a);
        assert_eq!(b.gauges().limit.open(), 1);
    }
}
