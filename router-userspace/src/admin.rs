//! The admin listener (docs/ARCHITECTURE.md §13): `/metrics`, `/status`, the status page
//! and `/healthz`, on `[admin] bind`, never on a VIP unless configured there.
//!
//! A small hyper HTTP/1 service beside the proxy, not on its request path. Every answer
//! is built when asked from live state: the routing table (listeners, backends, servers,
//! health, traffic), the pinned eBPF maps (read-only) and the VIP (netlink and its state
//! file), gathered by the same functions `scope-router status` uses (`crate::status`).

mod page;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::Config;
use crate::ebpf::{CounterRow, EbpfSettings, ProgramKind, ServiceKind, Status as KernelStatus};
use crate::listener::Inherited;
use crate::metrics::{self, Families, RouterCollector};
use crate::proxy::RouterHandle;
use crate::proxy::connection_limit::LimitView;
use crate::reload::{ConfigCollector, ConfigState, ReloadOutcome, SharedConfigState};
use crate::routing::{Router, SharedRouter};
use crate::shutdown::Signals;
use crate::status::{self, HEALTHY_HEADER, HealthSource, REGION_HEADER, RouterStatus, VipReport};
use crate::vip::{self, VipSettings};
use crate::vrrp::{SpeakerState, SpeakerStatus};

/// Where the admin listener is when `[admin] bind` is not given: loopback, the port of
/// Kolla's HAProxy Prometheus exporter, which this listener replaces.
pub const DEFAULT_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9101);

/// `[admin]` of the configuration, with its defaults.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Addresses the admin listener binds; empty: no admin listener.
    pub bind: Vec<SocketAddr>,
    /// Count every request for `/metrics` (request, byte, duration, error and scope-source
    /// series). `false` leaves only what is read at scrape time (health, eBPF, VIP).
    pub metrics: bool,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            bind: vec![DEFAULT_BIND],
            metrics: true,
        }
    }
}

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "cannot bind the admin listener on {addr}: {source}; change `[admin] bind` in the \
         config (another router or exporter may hold the port), or set `bind = []` to run \
         without it"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the admin listener shows of one running router: its live state, and the settings
/// it reads the kernel side and the VIP with.
#[derive(Debug)]
pub struct AdminView {
    router: SharedRouter,
    collector: RouterCollector,
    signals: Signals,
    config_path: PathBuf,
    state: SharedConfigState,
    ebpf: EbpfSettings,
    vip: Option<VipSettings>,
    vrrp: Option<tokio::sync::watch::Receiver<SpeakerStatus>>,
}

impl AdminView {
    /// Shows the VRRP speaker's state too (a router with `[vrrp]`).
    pub fn with_vrrp(mut self, status: tokio::sync::watch::Receiver<SpeakerStatus>) -> AdminView {
        self.vrrp = Some(status);
        self
    }

    /// The view of the router behind `handle`, started from `config`, which was loaded at
    /// `loaded_at`. Take it before [`RouterHandle::shutdown`] consumes the handle.
    pub fn new(config: &Config, handle: &RouterHandle, loaded_at: SystemTime) -> AdminView {
        Self::with_state(config, handle, ConfigState::shared(loaded_at))
    }

    /// [`AdminView::new`] following `state`, which the reloader updates.
    pub fn with_state(
        config: &Config,
        handle: &RouterHandle,
        state: SharedConfigState,
    ) -> AdminView {
        AdminView {
            router: handle.shared_router(),
            collector: handle.collector(),
            signals: handle.signals(),
            config_path: config.path.clone(),
            state,
            ebpf: config.ebpf.clone(),
            vip: config.vip.clone(),
            vrrp: None,
        }
    }
}

/// The running admin listener; [`AdminHandle::stop`] ends it.
#[derive(Debug)]
pub struct AdminHandle {
    local_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Second descriptors of the listening sockets, for a restart to hand over.
    fds: Vec<std::os::fd::OwnedFd>,
}

impl AdminHandle {
    /// The addresses it listens on (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// New descriptors of the listening sockets with their addresses, for a restart to
    /// hand over (the admin endpoints then answer from both routers until this one stops).
    pub fn listening_sockets(&self) -> std::io::Result<Vec<(SocketAddr, std::os::fd::OwnedFd)>> {
        self.local_addrs
            .iter()
            .zip(&self.fds)
            .map(|(addr, fd)| Ok((*addr, fd.try_clone()?)))
            .collect()
    }

    /// Stops accepting and cuts open admin connections (scrapes and page loads are short
    /// and retried by their clients).
    pub async fn stop(self) {
        // With the accept loops: a socket no successor holds closes now.
        drop(self.fds);
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Binds every `[admin] bind` address and serves the admin endpoints there until
/// [`AdminHandle::stop`]. With an empty `bind` nothing is bound.
pub async fn start(settings: &AdminSettings, view: AdminView) -> Result<AdminHandle, AdminError> {
    start_inheriting(settings, view, &mut Inherited::default()).await
}

/// [`start`], serving an address from the socket a predecessor handed over (a restart)
/// when `inherited` has one, so that `/healthz` never refuses a connection meanwhile.
pub async fn start_inheriting(
    settings: &AdminSettings,
    view: AdminView,
    inherited: &mut Inherited,
) -> Result<AdminHandle, AdminError> {
    let mut listeners = Vec::with_capacity(settings.bind.len());
    for &addr in &settings.bind {
        let listener = match inherited.take(addr) {
            Some(socket) => socket
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(socket)),
            None => TcpListener::bind(addr).await,
        }
        .map_err(|source| AdminError::Bind { addr, source })?;
        listeners.push(listener);
    }
    start_listening(settings, view, listeners)
}

/// Binds every `[admin] bind` address not in `inherited` (a restart's), without serving:
/// a new router does this before it accepts a single proxied connection, so that a bind
/// failure ends it while the running router still serves everything.
pub fn bind(settings: &AdminSettings, mut inherited: Inherited) -> Result<Inherited, AdminError> {
    let mut sockets = Vec::with_capacity(settings.bind.len());
    for &addr in &settings.bind {
        let socket = match inherited.take(addr) {
            Some(socket) => socket,
            None => std::net::TcpListener::bind(addr)
                .map_err(|source| AdminError::Bind { addr, source })?,
        };
        sockets.push(socket);
    }
    Ok(Inherited::new(sockets))
}

fn start_listening(
    settings: &AdminSettings,
    view: AdminView,
    listeners: Vec<TcpListener>,
) -> Result<AdminHandle, AdminError> {
    let AdminView {
        router,
        collector,
        signals,
        config_path,
        state,
        ebpf,
        vip,
        vrrp,
    } = view;
    let scrape = Arc::new(Mutex::new(Scrape::default()));
    let clients = collector.clients.clone();
    let mut registry = metrics::registry(collector);
    registry.register_collector(Box::new(ScrapeCollector(scrape.clone())));
    registry.register_collector(Box::new(ConfigCollector(state.clone())));
    let shared = Arc::new(Shared {
        router,
        clients,
        signals,
        config_path,
        state,
        ebpf,
        vip,
        vrrp,
        registry,
        scrape,
    });
    let (stop, stopped) = watch::channel(false);
    let mut local_addrs = Vec::new();
    let mut tasks = Vec::new();
    let mut fds = Vec::new();
    for listener in listeners {
        fds.push(
            std::os::fd::AsFd::as_fd(&listener)
                .try_clone_to_owned()
                .map_err(|source| AdminError::Bind {
                    addr: settings.bind[tasks.len()],
                    source,
                })?,
        );
        let addr = listener.local_addr().map_err(|source| AdminError::Bind {
            addr: settings.bind[tasks.len()],
            source,
        })?;
        tracing::info!(%addr, "admin listener: /metrics, /status, /healthz and the status page");
        local_addrs.push(addr);
        tasks.push(tokio::spawn(accept_loop(
            listener,
            shared.clone(),
            stopped.clone(),
        )));
    }
    Ok(AdminHandle {
        local_addrs,
        stop,
        tasks,
        fds,
    })
}

/// Everything the handlers read, shared by every admin connection.
#[derive(Debug)]
struct Shared {
    router: SharedRouter,
    /// Client connections and their limit.
    clients: Arc<metrics::ClientGauges>,
    signals: Signals,
    config_path: PathBuf,
    state: SharedConfigState,
    ebpf: EbpfSettings,
    vip: Option<VipSettings>,
    vrrp: Option<tokio::sync::watch::Receiver<SpeakerStatus>>,
    registry: Registry,
    scrape: Arc<Mutex<Scrape>>,
}

impl Shared {
    fn vrrp(&self) -> Option<SpeakerStatus> {
        self.vrrp.as_ref().map(|v| v.borrow().clone())
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // Dropped when the loop ends, which aborts every connection still open.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // The guard `wait_for` returns is not Send: drop it inside.
            () = async { let _ = stop.wait_for(|stopped| *stopped).await; } => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                        });
                        // A client that goes away mid-request is its own business.
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    // EMFILE and the like: do not spin while the fd table is full.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections so the set does not grow with every scrape.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

type Body = Full<Bytes>;

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    // Every answer is about now: a cached page or scrape would lie.
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "the admin listener only answers GET and HEAD\n".to_owned(),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let text_format = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "format=text"));
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            shared.metrics().await,
        ),
        "/healthz" => {
            let (status, why) = shared.healthz().await;
            reply(status, TEXT, why)
        }
        "/status" => {
            let status = shared.status().await;
            let (content_type, body) = if text_format {
                (TEXT, status.to_string())
            } else {
                match serde_json::to_string_pretty(&status) {
                    Ok(json) => ("application/json", json + "\n"),
                    Err(e) => {
                        return reply(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            TEXT,
                            format!("cannot encode the status: {e}\n"),
                        );
                    }
                }
            };
            let mut r = reply(StatusCode::OK, content_type, body);
            if let Ok(region) = HeaderValue::from_str(&status.report.region) {
                r.headers_mut().insert(REGION_HEADER, region);
            }
            r.headers_mut().insert(
                HEALTHY_HEADER,
                HeaderValue::from_static(if status.healthy { "true" } else { "false" }),
            );
            r
        }
        "/" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page::render(&shared.status().await),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; the admin listener serves / (status page), /status (JSON; \
             ?format=text), /metrics (Prometheus) and /healthz\n"
                .to_owned(),
        ),
    }
}

impl Shared {
    /// The kernel side and the VIP, read now. The kernel read is a handful of map lookups
    /// on bpffs, done off the async workers.
    async fn read_outside(
        &self,
    ) -> (
        Result<KernelStatus, String>,
        Option<Result<VipReport, String>>,
    ) {
        let ebpf = self.ebpf.clone();
        let kernel = tokio::task::spawn_blocking(move || status::kernel_report(&ebpf))
            .await
            .unwrap_or_else(|e| Err(format!("reading the pinned maps failed: {e}")));
        let vip = status::vip_status(self.vip.as_ref()).await;
        (kernel, vip)
    }

    async fn metrics(&self) -> String {
        let (kernel, vip) = self.read_outside().await;
        // Concurrent scrapes each store a whole snapshot; the last one encoded wins,
        // which is as current as either.
        *lock(&self.scrape) = Scrape {
            kernel: kernel.ok(),
            vip: vip.and_then(Result::ok),
            vrrp: self.vrrp(),
            draining: self.signals.is_draining(),
        };
        metrics::encode(&self.registry)
    }

    /// 200 while serving; 503 while draining or while the VIP is not on its interface,
    /// asked from netlink on every call so that a removal shows at once.
    async fn healthz(&self) -> (StatusCode, String) {
        if self.signals.is_draining() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "draining: the router is finishing in-flight requests and stops accepting\n"
                    .to_owned(),
            );
        }
        let vrrp = self.vrrp();
        if let Some(v) = &vrrp
            && v.state != SpeakerState::Master
        {
            // A backup holds no VIP by design; it serves as soon as it becomes master.
            return (StatusCode::OK, format!("serving (VRRP {})\n", v.state));
        }
        if let Some(v) = &self.vip {
            match vip::status(v.address, &v.interface, &v.state_dir).await {
                Ok(s) if s.present => {}
                Ok(s) => {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("VIP missing: {s}\n"),
                    );
                }
                Err(e) => {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("cannot tell whether the VIP is present: {e}\n"),
                    );
                }
            }
        }
        (StatusCode::OK, "serving\n".to_owned())
    }

    async fn status(&self) -> AdminStatus {
        let (kernel, vip) = self.read_outside().await;
        let router = self.router.load_full();
        let config_state = match self.state.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let report = RouterStatus {
            region: router.region().to_owned(),
            ebpf_mode: self.ebpf.mode.as_str(),
            kernel,
            vip,
            health: HealthSource::Live {
                pid: std::process::id(),
            },
            servers: status::live_servers(&router),
            not_in_router: Vec::new(),
            vrrp: self.vrrp(),
            certificates: status::certificates(&router, SystemTime::now()),
        };
        AdminStatus {
            healthy: report.healthy(),
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            config: self.config_path.clone(),
            loaded_at: humantime::format_rfc3339_seconds(config_state.loaded_at).to_string(),
            draining: self.signals.is_draining(),
            connections: self.clients.limit.view(),
            regions: router.regions().iter().map(|r| r.to_string()).collect(),
            listeners: listeners(&router),
            last_reload: config_state.last_reload,
            report,
        }
    }
}

fn lock(scrape: &Mutex<Scrape>) -> std::sync::MutexGuard<'_, Scrape> {
    // A panic while holding it can only have left a whole older snapshot behind.
    scrape
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `/status`: `scope-router status`'s report built from the running router's live state,
/// plus what only the running router knows.
#[derive(Debug, Serialize)]
pub struct AdminStatus {
    #[serde(flatten)]
    pub report: RouterStatus,
    /// Every server up and the VIP present (what `status` exits 1 for when false).
    pub healthy: bool,
    pub version: &'static str,
    pub pid: u32,
    /// The configuration file the router runs.
    pub config: PathBuf,
    /// When it was loaded (RFC 3339).
    pub loaded_at: String,
    /// Shutting down: no new connections, in-flight requests finishing.
    pub draining: bool,
    /// Client connections open and `[proxy] max_connections`.
    pub connections: LimitView,
    /// Every region of the catalog.
    pub regions: Vec<String>,
    pub listeners: Vec<ListenerView>,
    /// The last reload (SIGHUP or `scope-router reload`), if any.
    #[serde(default)]
    pub last_reload: Option<ReloadOutcome>,
}

impl fmt::Display for AdminStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "running router: pid {}, version {}, config {} loaded at {}{}",
            self.pid,
            self.version,
            self.config.display(),
            self.loaded_at,
            if self.draining { ", DRAINING" } else { "" }
        )?;
        if let Some(r) = &self.last_reload {
            let result = if r.ok {
                "ok"
            } else {
                "FAILED, still serving the previous one"
            };
            writeln!(f, "last reload at {}: {result}: {}", r.at, r.message)?;
        }
        let c = &self.connections;
        writeln!(
            f,
            "client connections: {} open, limit {} ({}); reached {} times{}",
            c.open,
            c.max,
            if c.max_from == "config" {
                "[proxy] max_connections".to_owned()
            } else {
                format!(
                    "from the open-file limit {}",
                    c.open_files
                        .map_or_else(|| "?".to_owned(), |n| n.to_string())
                )
            },
            c.reached,
            if c.at_limit {
                ", AT THE LIMIT: new connections wait in the listen backlog"
            } else {
                ""
            }
        )?;
        write!(f, "{}", self.report)?;
        writeln!(f)?;
        let redirects: Vec<(&str, &RedirectView)> = self
            .listeners
            .iter()
            .filter_map(|l| Some((l.address.as_str(), l.redirect.as_ref()?)))
            .collect();
        if !redirects.is_empty() {
            writeln!(f, "redirect listeners:")?;
            for (address, r) in redirects {
                writeln!(f, "{address:<22} {}", r.summary())?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "{:<22} {:<14} {:<10} {:<36} {:>9} {:>9} {:>9} {:>12} {:>12}",
            "LISTENER",
            "SERVICE",
            "REGION",
            "BACKEND",
            "REQUESTS",
            "2XX",
            "5XX",
            "BYTES IN",
            "BYTES OUT"
        )?;
        for l in &self.listeners {
            for b in &l.backends {
                writeln!(
                    f,
                    "{:<22} {:<14} {:<10} {:<36} {:>9} {:>9} {:>9} {:>12} {:>12}",
                    l.address,
                    b.service_type,
                    b.region,
                    b.backend,
                    b.requests,
                    b.responses["2xx"],
                    b.responses["5xx"],
                    b.bytes_in,
                    b.bytes_out
                )?;
            }
        }
        Ok(())
    }
}

/// One listener and the traffic of each backend behind it.
#[derive(Debug, Serialize)]
pub struct ListenerView {
    /// `VIP:port`, or a passthrough's or redirect's bind address.
    pub address: String,
    /// `scoped`, `passthrough` or `redirect`.
    pub kind: &'static str,
    /// The passthrough's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What a `redirect` listener does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectView>,
    /// Empty with `[admin] metrics = false` (nothing is counted).
    pub backends: Vec<BackendView>,
}

/// A `[[redirect]]` listener: where it sends clients and which paths it relays instead.
#[derive(Debug, Serialize)]
pub struct RedirectView {
    /// The port of the `https://` URL (left out of it when 443).
    pub https_port: u16,
    /// Path prefixes relayed to `exempt_backend` instead of redirected.
    pub exempt: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exempt_backend: Option<String>,
    /// 301s answered since the router started; absent with `[admin] metrics = false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirects: Option<u64>,
}

impl RedirectView {
    /// `-> https://<host>:8443, exempt /.well-known/acme-challenge/ -> 127.0.0.1:8402`.
    fn summary(&self) -> String {
        let port = if self.https_port == 443 {
            String::new()
        } else {
            format!(":{}", self.https_port)
        };
        let mut text = format!("301 to https://<host>{port}");
        if let Some(backend) = &self.exempt_backend {
            text.push_str(&format!(
                ", except {} relayed to {backend}",
                self.exempt.join(" ")
            ));
        }
        if let Some(n) = self.redirects {
            text.push_str(&format!("; {n} redirected"));
        }
        text
    }
}

/// One backend's traffic since the router started.
#[derive(Debug, Serialize)]
pub struct BackendView {
    /// `-` for the transparent fallback, refused requests and passthrough.
    pub service_type: String,
    pub region: String,
    /// The catalog name; `-` for requests refused before a backend was chosen.
    pub backend: String,
    pub requests: u64,
    /// By status class, `1xx` … `5xx`.
    pub responses: BTreeMap<&'static str, u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn listeners(router: &Router) -> Vec<ListenerView> {
    let mut out: Vec<ListenerView> = router
        .listeners()
        .iter()
        .map(|l| ListenerView {
            address: l.spec.addr.to_string(),
            kind: "scoped",
            name: None,
            redirect: None,
            backends: Vec::new(),
        })
        .chain(router.passthrough().iter().map(|p| ListenerView {
            address: p.bind.to_string(),
            kind: "passthrough",
            name: Some(p.name.clone()),
            redirect: None,
            backends: Vec::new(),
        }))
        .chain(router.redirect().iter().map(|r| ListenerView {
            address: r.label().to_owned(),
            kind: "redirect",
            name: None,
            redirect: Some(RedirectView {
                https_port: r.spec.https_port,
                exempt: r.spec.exempt.clone(),
                exempt_backend: r.spec.exempt_backend.map(|a| a.to_string()),
                redirects: r.redirects(),
            }),
            backends: Vec::new(),
        }))
        .collect();
    for (labels, stats) in router.traffic() {
        let Some(listener) = out.iter_mut().find(|l| l.address == labels.listener) else {
            continue;
        };
        listener.backends.push(BackendView {
            service_type: labels.service_type.to_owned(),
            region: labels.region.to_owned(),
            backend: labels.backend.to_owned(),
            requests: stats.requests(),
            responses: CLASSES.into_iter().zip(stats.responses()).collect(),
            bytes_in: stats.bytes_in(),
            bytes_out: stats.bytes_out(),
        });
    }
    out
}

/// What `/metrics` reads outside the process at scrape time (the pinned eBPF maps, the
/// VIP), stored by the `/metrics` handler just before it encodes: a
/// [`Collector`] cannot wait for netlink.
#[derive(Debug, Default)]
struct Scrape {
    kernel: Option<KernelStatus>,
    vip: Option<VipReport>,
    vrrp: Option<SpeakerStatus>,
    draining: bool,
}

#[derive(Debug)]
struct ScrapeCollector(Arc<Mutex<Scrape>>);

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let scrape = lock(&self.0);
        let mut out = Families::new(&mut encoder);
        encode_kernel(&mut out, scrape.kernel.as_ref())?;
        if let Some(v) = &scrape.vip {
            let address = v.address.to_string();
            let labels = || {
                vec![
                    ("vip", address.as_str()),
                    ("interface", v.interface.as_str()),
                ]
            };
            out.gauges(
                "vip_present",
                "1 while the VIP is on its interface (asked from netlink at scrape time).",
                [(labels(), i64::from(v.present))],
            )?;
            out.counters(
                "vip_readds",
                "Times the router put the VIP back after something removed it.",
                [(labels(), v.readded)],
            )?;
            out.counters(
                "vip_announcements",
                "Gratuitous ARP bursts sent for the VIP.",
                [(labels(), v.announcements)],
            )?;
        }
        if let Some(v) = &scrape.vrrp {
            encode_vrrp(&mut out, v)?;
        }
        out.gauges(
            "draining",
            "1 while the router drains for a shutdown (no new connections).",
            [(Vec::new(), i64::from(scrape.draining))],
        )
    }
}

/// The VRRP speaker's state and counters, labelled by VRID.
fn encode_vrrp(out: &mut Families<'_, '_>, v: &SpeakerStatus) -> Result<(), fmt::Error> {
    let vrid = v.vrid.to_string();
    let labels = || vec![("vrid", vrid.as_str())];
    let states = [
        SpeakerState::Initialize,
        SpeakerState::Backup,
        SpeakerState::Master,
        SpeakerState::Fault,
    ];
    let names: Vec<String> = states.iter().map(ToString::to_string).collect();
    out.gauges(
        "vrrp_state",
        "1 for the VRRP state this router is in (initialize, backup, master, fault).",
        states.iter().zip(&names).map(|(s, name)| {
            (
                vec![("vrid", vrid.as_str()), ("state", name.as_str())],
                i64::from(*s == v.state),
            )
        }),
    )?;
    out.gauges(
        "vrrp_priority",
        "The priority this router competes with (0 while its own health fails).",
        [(labels(), i64::from(v.effective_priority))],
    )?;
    out.gauges(
        "vrrp_master_priority",
        "The current master's priority as last advertised (0 when none is known).",
        [(labels(), i64::from(v.master_priority.unwrap_or(0)))],
    )?;
    out.counters(
        "vrrp_transitions",
        "VRRP state changes of this router.",
        [(labels(), v.transitions)],
    )?;
    out.counters(
        "vrrp_adverts_sent",
        "VRRP adverts this router sent.",
        [(labels(), v.adverts_sent)],
    )?;
    out.counters(
        "vrrp_adverts_received",
        "VRRP adverts received for this VRID, accepted or refused.",
        [(labels(), v.adverts_received)],
    )?;
    let r = &v.refused;
    out.counters(
        "vrrp_adverts_refused",
        "VRRP adverts refused, by reason (as keepalived refuses them).",
        [
            ("password", r.password),
            ("interval", r.interval),
            ("version", r.version),
            ("addresses", r.addresses),
            ("ttl", r.ttl),
            ("checksum", r.checksum),
            ("not_a_peer", r.not_a_peer),
            ("malformed", r.malformed),
        ]
        .map(|(reason, n)| (vec![("vrid", vrid.as_str()), ("reason", reason)], n)),
    )?;
    out.counters(
        "vrrp_split_brains",
        "Times a second master appeared for this VRID while this router was master.",
        [(labels(), v.split_brains)],
    )
}

/// One XDP counter family: name, help, and which counter of a row it shows.
type XdpFamily = (&'static str, &'static str, fn(&CounterRow) -> u64);

/// The XDP counters per VIP:port and whether each program is attached (0 for both when
/// the kernel side is not in use or cannot be read).
fn encode_kernel(
    out: &mut Families<'_, '_>,
    kernel: Option<&KernelStatus>,
) -> Result<(), fmt::Error> {
    let attached = |kind: ProgramKind| {
        kernel.is_some_and(|k| k.programs.iter().any(|p| p.kind == kind && p.attached))
    };
    out.gauges(
        "ebpf_attached",
        "1 while the program's pinned link is attached (sk_lookup steering, XDP guard).",
        [
            (
                vec![("program", "sk_lookup")],
                i64::from(attached(ProgramKind::SkLookup)),
            ),
            (
                vec![("program", "xdp")],
                i64::from(attached(ProgramKind::Xdp)),
            ),
        ],
    )?;
    let Some(kernel) = kernel else {
        return Ok(());
    };
    let rows: Vec<(String, String, &'static str, &CounterRow)> = kernel
        .counters
        .iter()
        .map(|r| {
            let port = r.port.map_or_else(|| "other".to_owned(), |p| p.to_string());
            let kind = match r.kind {
                ServiceKind::Steered => "steered",
                ServiceKind::Passthrough => "passthrough",
                ServiceKind::Other => "other",
                ServiceKind::Unconfigured => "unconfigured",
            };
            (r.vip.to_string(), port, kind, r)
        })
        .collect();
    fn labels<'r>(
        (vip, port, kind, _): &'r (String, String, &'static str, &CounterRow),
    ) -> Vec<(&'static str, &'r str)> {
        vec![
            ("vip", vip.as_str()),
            ("port", port.as_str()),
            ("kind", *kind),
        ]
    }
    let families: [XdpFamily; 4] = [
        (
            "xdp_packets",
            "Packets to the VIP:port seen by the XDP guard.",
            |r| r.packets,
        ),
        (
            "xdp_bytes",
            "Bytes (from the Ethernet header) to the VIP:port seen by the XDP guard.",
            |r| r.bytes,
        ),
        (
            "xdp_syns",
            "Connection attempts (SYN without ACK) to the VIP:port.",
            |r| r.syns,
        ),
        (
            "xdp_drops",
            "Packets to the VIP:port the XDP guard dropped (unserved port, denied source).",
            |r| r.drops,
        ),
    ];
    for (name, help, value) in families {
        out.counters(
            name,
            help,
            rows.iter().map(|row| (labels(row), value(row.3))),
        )?;
    }
    Ok(())
}
