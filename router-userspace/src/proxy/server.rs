//! Entry point: builds the routing table, opens listeners, accepts and
//! dispatches each connection by its original destination, and shuts down gracefully.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::time::Instant;

use super::client_io::ClientIo;
use super::connection_limit::MaxConnections;
use super::framing::{FramingVerdicts, FramingWatch};
use super::hyper_buf_size;
use super::idle::IdleIo;
use super::park::{ConnShared, PARK_GRACE, ParkingIo};
use super::scoped::{self, ScopedShared};
use super::upstream::Upstreams;
use crate::balance::Balancer;
use crate::config::{Config, PassthroughMode, Timeouts};
use crate::listener::{Accepted, Inherited, Listener, ListenerError};
use crate::metrics::{ClientGauges, OpenConnection, RouterCollector};
use crate::passthrough::{self, PassthroughRuntime};
use crate::redirect::{self, RedirectRuntime};
use crate::routing::{RedirectServers, Router, RoutingError, SharedRouter};
use crate::shutdown::{Drained, Guard, Shutdown, Signals};

/// Largest scoped connection task future that surely keeps tokio's task cell
/// at 512 bytes. The cell is this future plus 104 bytes (tokio 1.54: header,
/// stage tag, trailer) rounded up to 128; past 512 every idle keep-alive
/// client costs 128 bytes more (256 with mimalloc, whose 640-byte aligned
/// blocks are 768).
#[cfg(test)]
const PARKED_TASK_BUDGET: usize = 400;

/// Pause after an accept error such as EMFILE, so a full fd table does not
/// turn the accept loop into a busy spin while connections drain.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// While draining, how often a lent connection checks whether its request has begun.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the routing table: {0}")]
    Routing(#[from] RoutingError),
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error(
        "no listening socket: direct binding is off and no socket was handed in; enable \
         bind_scoped or pass the steered socket"
    )]
    NoListeners,
    #[error("internal error: a lock of the running router was poisoned by a panic; restart it")]
    Poisoned,
}

/// How listening sockets are obtained.
#[derive(Debug)]
pub struct StartOptions {
    /// Sockets already bound and listening, adopted as they are: the
    /// sk_lookup-steered socket (one socket, every VIP:port) or test sockets.
    pub handed_in: Vec<std::net::TcpListener>,
    /// Bind every scoped VIP:port directly (`IP_FREEBIND`): off when eBPF
    /// steers them to a handed-in socket, on as the fallback.
    pub bind_scoped: bool,
    /// Bind every `[[passthrough]]` and `[[redirect]]` address directly (eBPF never
    /// steers those).
    pub bind_passthrough: bool,
    /// Sockets the router being replaced handed over: an address to bind is served
    /// from the socket already listening there when there is one.
    pub inherited: Inherited,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            handed_in: Vec::new(),
            bind_scoped: true,
            bind_passthrough: true,
            inherited: Inherited::default(),
        }
    }
}

impl StartOptions {
    /// eBPF steering: `steered` receives every scoped VIP:port; passthrough
    /// addresses are still bound directly.
    pub fn steered(steered: std::net::TcpListener) -> Self {
        StartOptions {
            handed_in: vec![steered],
            bind_scoped: false,
            bind_passthrough: true,
            inherited: Inherited::default(),
        }
    }
}

/// A running router.
#[derive(Debug)]
pub struct RouterHandle {
    dispatch: Arc<Dispatch>,
    shutdown: Shutdown,
    grace: Duration,
    opts: BindPolicy,
    /// Every listener being served: those this router bound itself, by configured
    /// address, which a reload adds and removes, and the handed-in ones, which stay.
    bound: Mutex<Vec<Bound>>,
    /// Stops the current generation of health checkers (a reload starts the next).
    checkers: Mutex<watch::Sender<bool>>,
}

/// Which listeners the router binds itself ([`StartOptions`] without the sockets).
#[derive(Debug, Clone, Copy)]
struct BindPolicy {
    scoped: bool,
    passthrough: bool,
}

/// A listener being served: its configured address (`None`: handed in by the caller,
/// never removed by a reload), how to stop its accept loop, and a second descriptor of
/// the socket for a restart to hand over. That descriptor keeps the socket open: it is
/// dropped with this entry, when the accept loop is told to stop.
#[derive(Debug)]
struct Bound {
    addr: Option<SocketAddr>,
    local: SocketAddr,
    stop: watch::Sender<bool>,
    fd: Option<OwnedFd>,
}

/// A descriptor of one listening socket, as a restart hands it to the next router.
#[derive(Debug)]
pub struct ListeningSocket {
    /// The address the configuration names (`None`: handed in, e.g. the steered socket).
    pub configured: Option<SocketAddr>,
    /// The address it is bound to.
    pub local: SocketAddr,
    pub fd: OwnedFd,
}

/// What a reload changed in the listening sockets.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListenerChanges {
    /// Addresses now bound that were not.
    pub added: Vec<SocketAddr>,
    /// Addresses no longer accepting (their open connections finish).
    pub removed: Vec<SocketAddr>,
}

impl RouterHandle {
    /// Addresses of every listening socket (as bound, not as steered to).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.bound
            .lock()
            .map(|b| b.iter().map(|b| b.local).collect())
            .unwrap_or_default()
    }

    /// New descriptors of every listening socket, for a restart to hand over; the
    /// sockets keep serving here until [`RouterHandle::shutdown`].
    pub fn listening_sockets(&self) -> std::io::Result<Vec<ListeningSocket>> {
        let bound = self
            .bound
            .lock()
            .map_err(|_| std::io::Error::other("listener table poisoned"))?;
        let mut sockets = Vec::with_capacity(bound.len());
        for b in bound.iter() {
            let Some(fd) = &b.fd else {
                return Err(std::io::Error::other(format!(
                    "no spare descriptor of the listener on {} (it could not be duplicated at start)",
                    b.local
                )));
            };
            sockets.push(ListeningSocket {
                configured: b.addr,
                local: b.local,
                fd: fd.try_clone()?,
            });
        }
        Ok(sockets)
    }

    /// The routing table in use now.
    pub fn router(&self) -> Arc<Router> {
        self.dispatch.scoped.router.load_full()
    }

    /// The swappable routing table, for readers that must follow reloads (`/status`,
    /// `/metrics`, the health state file).
    pub fn shared_router(&self) -> SharedRouter {
        self.dispatch.scoped.router.clone()
    }

    /// What `/metrics` reads of this router at scrape time.
    pub fn collector(&self) -> RouterCollector {
        RouterCollector {
            router: self.shared_router(),
            clients: self.dispatch.clients.clone(),
            pool: self.dispatch.scoped.upstreams.pool().clone(),
        }
    }

    /// Watches the drain (`is_draining`), e.g. for `/healthz`.
    pub fn signals(&self) -> Signals {
        self.shutdown.signals()
    }

    /// Serves `router` (built from `config`) from now on: binds the listeners it adds
    /// (nothing changes if one cannot be bound), swaps the routing table (requests in
    /// flight finish on the one they started with), stops accepting on listeners it no
    /// longer has (their open connections finish), and restarts the health checkers
    /// with the new settings (servers kept from the old table keep their state).
    pub fn replace(
        &self,
        config: &Config,
        router: Arc<Router>,
    ) -> Result<ListenerChanges, ServeError> {
        let wanted = wanted_binds(config, &router, self.opts);
        let mut bound = self.bound.lock().map_err(|_| ServeError::Poisoned)?;
        let mut fresh = Vec::new();
        for addr in &wanted {
            if !bound.iter().any(|b| b.addr == Some(*addr)) {
                // All or nothing: a bind failure drops the ones bound so far.
                fresh.push((*addr, Listener::bind(*addr)?));
            }
        }
        // Nothing can fail from here on: the new limits go onto the slots both tables share.
        router.apply_limits();
        self.dispatch.swap(config, router.clone());
        self.restart_checkers(&router);
        warn_about_keys(&router);
        let mut changes = ListenerChanges::default();
        for (addr, listener) in fresh {
            bound.push(self.serve(listener, Some(addr), router.region()));
            changes.added.push(addr);
        }
        bound.retain(|b| match b.addr {
            Some(addr) if !wanted.contains(&addr) => {
                let _ = b.stop.send(true);
                changes.removed.push(addr);
                false
            }
            _ => true,
        });
        Ok(changes)
    }

    /// Spawns the accept loop of `listener` (configured as `addr`).
    fn serve(&self, listener: Listener, addr: Option<SocketAddr>, region: &str) -> Bound {
        let (stop, stopped) = watch::channel(false);
        let local = listener.bound_addr();
        tracing::info!(addr = %local, origin = ?listener.origin(), region, "listening");
        // Only a restart needs it, so failing (EMFILE) costs that restart, not serving.
        let fd = listener
            .dup()
            .inspect_err(|e| tracing::warn!(addr = %local, "this listener cannot be handed over on a restart: {e}"))
            .ok();
        // `guard()` is only None after shutdown began: then nothing is served anymore.
        if let Some(guard) = self.shutdown.guard() {
            tokio::spawn(accept_loop(
                listener,
                self.dispatch.clone(),
                self.shutdown.signals(),
                stopped,
                guard,
            ));
        }
        Bound {
            addr,
            local,
            stop,
            fd,
        }
    }

    /// Stops the running health checkers and starts one per server of `router`; a
    /// server carried over from the previous table keeps its state.
    fn restart_checkers(&self, router: &Router) {
        let (stop, stopped) = watch::channel(false);
        if let Ok(mut current) = self.checkers.lock() {
            let _ = current.send(true);
            *current = stop;
        }
        for check in router.health_checks() {
            let mut signals = self.shutdown.signals();
            let mut stopped = stopped.clone();
            crate::health::spawn_checker(
                Arc::clone(&check.health),
                (check.probe.clone(), check.tls.clone()),
                check.settings.clone(),
                async move {
                    tokio::select! {
                        () = signals.draining() => {}
                        _ = stopped.wait_for(|stop| *stop) => {}
                    }
                },
            );
        }
    }

    /// Stops accepting, lets in-flight requests finish within
    /// `proxy.shutdown_grace`, then cuts what remains.
    pub async fn shutdown(self) -> Drained {
        // Our spare descriptors go first: a listening socket must close with its accept
        // loop (unless a successor holds one), or it would queue connections nobody takes.
        if let Ok(mut bound) = self.bound.lock() {
            bound.clear();
        }
        self.shutdown.run(self.grace).await
    }
}

/// Private keys other users may read: said at start and at each reload.
fn warn_about_keys(router: &Router) {
    for w in router.tls().warnings() {
        tracing::warn!("{w}");
    }
}

/// The addresses the router binds itself for `config`, per `opts`.
fn wanted_binds(config: &Config, router: &Router, opts: BindPolicy) -> Vec<SocketAddr> {
    let mut wanted = Vec::new();
    if opts.scoped {
        wanted.extend(router.listeners().iter().map(|l| l.spec.addr));
    }
    if opts.passthrough {
        wanted.extend(config.passthrough.iter().map(|p| p.bind));
        wanted.extend(config.redirect.iter().map(|r| r.bind));
    }
    wanted
}

/// The runtime of every `[[redirect]]` of `config`, on `router`'s counters.
fn redirect_runtimes(config: &Config, router: &Router) -> Vec<Arc<RedirectRuntime>> {
    config
        .redirect
        .iter()
        .map(|r| {
            let servers = router.redirect().iter().find(|s| s.spec.bind == r.bind);
            // The table is built from the same config: every bind is there.
            let fallback;
            let servers = match servers {
                Some(servers) => servers,
                None => {
                    fallback = RedirectServers::new(r, config.proxy.balance);
                    &fallback
                }
            };
            Arc::new(RedirectRuntime::new(r, config, router.region(), servers))
        })
        .collect()
}

/// The runtime of every `[[passthrough]]` of `config`, on `router`'s servers.
fn passthrough_runtimes(config: &Config, router: &Router) -> Vec<Arc<PassthroughRuntime>> {
    config
        .passthrough
        .iter()
        .map(|p| {
            let servers = router
                .passthrough()
                .iter()
                .find(|s| s.name == p.name)
                .map(|s| (Arc::clone(&s.balancer), s.stats.clone()))
                // The table is built from the same config: every name is there.
                .unwrap_or_else(|| (Arc::new(Balancer::new(Vec::new(), p.balance)), None));
            Arc::new(PassthroughRuntime::new(
                p.clone(),
                router.region(),
                &config.proxy,
                servers,
            ))
        })
        .collect()
}

/// Routes an accepted connection by its local address.
#[derive(Debug)]
struct Dispatch {
    scoped: Arc<ScopedShared>,
    /// Replaced whole on reload, like the routing table.
    passthrough: ArcSwap<Vec<Arc<PassthroughRuntime>>>,
    redirect: ArcSwap<Vec<Arc<RedirectRuntime>>>,
    max_header_bytes: usize,
    /// Open, active and parked client connections, for `/metrics`.
    clients: Arc<ClientGauges>,
}

/// Starts serving `config` on the current tokio runtime and returns once every
/// listener is open.
pub async fn start(config: Config, opts: StartOptions) -> Result<RouterHandle, ServeError> {
    let router = Arc::new(Router::from_config(&config)?);
    start_with_router(&config, router, opts)
}

/// Like [`start`] with a routing table built by the caller (e.g. `check` then `run`).
pub fn start_with_router(
    config: &Config,
    router: Arc<Router>,
    opts: StartOptions,
) -> Result<RouterHandle, ServeError> {
    let policy = BindPolicy {
        scoped: opts.bind_scoped,
        passthrough: opts.bind_passthrough,
    };
    let mut handed_in = Vec::new();
    for std_listener in opts.handed_in {
        handed_in.push(Listener::from_std(std_listener)?);
    }
    let mut inherited = opts.inherited;
    let mut own = Vec::new();
    for addr in wanted_binds(config, &router, policy) {
        own.push((addr, Listener::bind_or_inherit(addr, &mut inherited)?));
    }
    for addr in inherited.unclaimed() {
        // Closed here: its queued connections are reset, as a reload removing it would.
        tracing::warn!(%addr, "a listener handed over is not in this configuration: closing it");
    }
    if handed_in.is_empty() && own.is_empty() {
        return Err(ServeError::NoListeners);
    }

    let dispatch = Arc::new(Dispatch::new(config, &router));
    let (checkers, _) = watch::channel(false);
    let handle = RouterHandle {
        dispatch,
        shutdown: Shutdown::new(),
        grace: config.proxy.shutdown_grace,
        opts: policy,
        bound: Mutex::new(Vec::new()),
        checkers: Mutex::new(checkers),
    };
    // Health checks run beside the request path, until the router drains or reloads.
    handle.restart_checkers(&router);
    warn_about_keys(&router);
    let shared = handle.shared_router();
    let mut signals = handle.shutdown.signals();
    tokio::spawn(crate::tls::watch_certificates(
        move || shared.load().tls().served().to_vec(),
        crate::tls::WATCH_INTERVAL,
        async move { signals.draining().await },
    ));
    let mut bound = Vec::new();
    for listener in handed_in {
        bound.push(handle.serve(listener, None, router.region()));
    }
    for (addr, listener) in own {
        bound.push(handle.serve(listener, Some(addr), router.region()));
    }
    if let Ok(mut b) = handle.bound.lock() {
        *b = bound;
    }
    Ok(handle)
}

async fn accept_loop(
    listener: Listener,
    dispatch: Arc<Dispatch>,
    mut signals: Signals,
    mut stopped: watch::Receiver<bool>,
    guard: Guard,
) {
    let clients = &dispatch.clients;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = signals.draining() => break,
            // A reload removed this listener (or its stop sender is gone: same).
            _ = stopped.wait_for(|stop| *stop) => break,
            // At `[proxy] max_connections`, connections wait in the listen backlog.
            a = async {
                clients.limit.room().await;
                listener.accept().await
            } => a,
        };
        match accepted {
            Ok(acc) => {
                // Another listener may have taken the last place since this one found
                // room: the connection waits here, accepted (one per listener at most),
                // and is served, even if a drain begins meanwhile.
                let open = OpenConnection::admitted(clients).await;
                dispatch.spawn_serve(acc, open, signals.clone(), guard.clone());
            }
            // The client gave up between SYN and accept: nothing to do.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => {
                tracing::warn!(addr = %listener.bound_addr(), "accept failed: {e}; retrying");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
    // Close before saying so: a client that reads this line and connects must be
    // refused, not left in the backlog of a socket about to be reset.
    let addr = listener.bound_addr();
    drop(listener);
    tracing::info!(%addr, "stopped accepting: listener closed");
}

impl Dispatch {
    fn new(config: &Config, router: &Arc<Router>) -> Dispatch {
        let max_header_bytes = config.proxy.max_header_bytes;
        let dispatch = Dispatch {
            scoped: Arc::new(ScopedShared {
                router: Arc::new(ArcSwap::new(router.clone())),
                upstreams: Upstreams::start(),
                max_header_bytes,
                retries: config.proxy.retries,
            }),
            passthrough: ArcSwap::from_pointee(passthrough_runtimes(config, router)),
            redirect: ArcSwap::from_pointee(redirect_runtimes(config, router)),
            max_header_bytes,
            clients: Arc::new(ClientGauges::default()),
        };
        dispatch.limit_connections(config);
        dispatch
    }

    /// Serves `router` (and `config`'s passthrough listeners) from the next request on;
    /// the upstream pool, the connection gauges and their count carry on.
    fn swap(&self, config: &Config, router: Arc<Router>) {
        self.passthrough
            .store(Arc::new(passthrough_runtimes(config, &router)));
        self.redirect
            .store(Arc::new(redirect_runtimes(config, &router)));
        self.scoped.router.store(router);
        self.limit_connections(config);
    }

    /// Enforces `config`'s `[proxy] max_connections` on every listener from now on.
    fn limit_connections(&self, config: &Config) {
        let max = MaxConnections::resolve(config.proxy.max_connections);
        let from = if max.configured {
            "[proxy] max_connections".to_owned()
        } else {
            format!(
                "derived from the open-file limit {}",
                max.open_files.unwrap_or_default()
            )
        };
        tracing::info!(
            max_connections = max.max,
            "client connection limit: {} ({from})",
            max.max
        );
        if let Some(warning) = max.unreachable() {
            tracing::warn!("{warning}");
        }
        self.clients.limit.set(max);
    }

    /// Spawns the task serving one accepted connection, counted by `open`.
    fn spawn_serve(
        self: &Arc<Self>,
        acc: Accepted,
        open: OpenConnection,
        signals: Signals,
        guard: Guard,
    ) {
        let listener = self
            .scoped
            .router
            .load()
            .listener_at(acc.local)
            .map(|l| (l.spec.timeouts, l.tls().cloned()));
        match listener {
            None => {
                let d = self.clone();
                tokio::spawn(async move { d.serve_other(acc, open, signals, guard).await });
            }
            Some((timeouts, None)) => {
                let stream = ClientIo::Plain(acc.stream);
                tokio::spawn(self.scoped_task(
                    (stream, acc.local, acc.peer),
                    open,
                    timeouts,
                    signals,
                    guard,
                ));
            }
            Some((timeouts, Some(tls))) => {
                let d = self.clone();
                tokio::spawn(async move {
                    // The handshake counts against `request_header`, as the head it carries
                    // would: a client that stalls inside it is cut at the same deadline.
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    let handshake = acceptor.accept(acc.stream);
                    let stream = match tokio::time::timeout(timeouts.request_header, handshake)
                        .await
                    {
                        Ok(Ok(tls)) => ClientIo::Tls(Box::new(tls)),
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %acc.peer, local = %acc.local, "TLS handshake failed: {e}");
                            open.gauges().tls_handshake_failed();
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(peer = %acc.peer, local = %acc.local, "TLS handshake not done within request_header; closing");
                            open.gauges().tls_handshake_failed();
                            return;
                        }
                    };
                    // Boxed: a TLS client's task is this future, not the scoped one sized
                    // for parked cleartext clients.
                    Box::pin(d.scoped_task(
                        (stream, acc.local, acc.peer),
                        open,
                        timeouts,
                        signals,
                        guard,
                    ))
                    .await;
                });
            }
        }
    }

    /// The whole task of a scoped connection: exactly [`serve_http`], whose
    /// size is what every idle keep-alive client costs, so nothing else is
    /// carried along (its size is checked against `PARKED_TASK_BUDGET`).
    fn scoped_task(
        &self,
        (stream, local, peer): (ClientIo, SocketAddr, SocketAddr),
        open: OpenConnection,
        timeouts: Timeouts,
        signals: Signals,
        guard: Guard,
    ) -> impl Future<Output = ()> + Send + 'static {
        let scoped = self.scoped.clone();
        let conn = HttpConn::new(
            stream,
            timeouts,
            self.max_header_bytes,
            open,
            signals,
            guard,
        );
        let shared = conn.shared.clone();
        let svc =
            service_fn(move |req| scoped::handle(scoped.clone(), local, peer, shared.begin(), req));
        serve_http(conn, svc)
    }

    /// Passthrough and redirect listeners (and addresses nobody serves).
    async fn serve_other(
        &self,
        acc: Accepted,
        open: OpenConnection,
        signals: Signals,
        guard: Guard,
    ) {
        let Accepted {
            stream,
            local,
            peer,
        } = acc;
        let passthrough = self.passthrough.load();
        let redirect = self
            .redirect
            .load()
            .iter()
            .find(|r| r.serves(local))
            .cloned();
        if let Some(rt) = passthrough.iter().find(|p| p.serves(local)) {
            match rt.spec.mode {
                PassthroughMode::Tcp => {
                    let _open = open;
                    let mut abort = signals.clone();
                    // Boxed (like the HTTP branch below) so that scoped
                    // connections' tasks are not sized for passthrough state.
                    let relay = Box::pin(passthrough::serve_tcp(rt, stream, peer));
                    tokio::select! {
                        _ = relay => {}
                        _ = abort.aborting() => {}
                    }
                }
                PassthroughMode::Http => {
                    let timeouts = rt.spec.timeouts;
                    let rt = rt.clone();
                    let conn = (stream, local, peer);
                    let handle = move |ctx, start, req| {
                        passthrough::handle_http(rt.clone(), ctx, start, req)
                    };
                    self.serve_unscoped(conn, timeouts, open, (signals, guard.clone()), handle)
                        .await;
                }
            }
        } else if let Some(rt) = redirect {
            let timeouts = rt.timeouts;
            let handle = move |ctx, start, req| redirect::handle(rt.clone(), ctx, start, req);
            let conn = (stream, local, peer);
            self.serve_unscoped(conn, timeouts, open, (signals, guard.clone()), handle)
                .await;
        } else {
            tracing::warn!(%local, %peer, "connection for an address no listener serves; closing it");
        }
        drop(guard);
    }
}

impl Dispatch {
    /// A cleartext HTTP listener without scope work (passthrough `http`, redirect): the
    /// same parked connection as a scoped one, `handle` serving each request.
    async fn serve_unscoped<H, F>(
        &self,
        (stream, local, peer): (tokio::net::TcpStream, SocketAddr, SocketAddr),
        timeouts: Timeouts,
        open: OpenConnection,
        (signals, guard): (Signals, Guard),
        handle: H,
    ) where
        H: Fn(passthrough::ConnCtx, super::RequestStart, http::Request<hyper::body::Incoming>) -> F
            + Clone
            + Send
            + 'static,
        F: Future<
                Output = Result<
                    http::Response<crate::access_log::LoggedBody>,
                    std::convert::Infallible,
                >,
            > + Send
            + 'static,
    {
        let (g, s) = (guard.clone(), signals.clone());
        let conn = HttpConn::new(
            ClientIo::Plain(stream),
            timeouts,
            self.max_header_bytes,
            open,
            signals,
            guard,
        );
        let shared = conn.shared.clone();
        let svc = service_fn(move |req| {
            let ctx = passthrough::ConnCtx {
                local,
                peer,
                guard: g.clone(),
                signals: s.clone(),
            };
            handle(ctx, shared.begin(), req)
        });
        // Boxed so that scoped connections' tasks are not sized for this one's state.
        Box::pin(serve_http(conn, svc)).await;
    }
}

type Tcp = ClientIo;

/// Everything an HTTP/1.1 client connection keeps for its whole life besides
/// its service. Kept small, the stream in the shared park slot, because the
/// size of the task's future is what every idle keep-alive client costs.
struct HttpConn {
    /// Park slot, framing verdicts and in-flight count (one allocation).
    shared: Arc<ConnShared<Tcp>>,
    request_header: Duration,
    signals: Signals,
    _guard: Guard,
}

impl HttpConn {
    fn new(
        stream: Tcp,
        timeouts: Timeouts,
        max_header_bytes: usize,
        open: OpenConnection,
        signals: Signals,
        guard: Guard,
    ) -> Self {
        let buf_size = hyper_buf_size(max_header_bytes);
        let https = matches!(stream, ClientIo::Tls(_));
        let client = FramingWatch::new(IdleIo::new(stream, timeouts.idle), buf_size);
        HttpConn {
            shared: ConnShared::new(client, open, timeouts.request_body, https),
            request_header: timeouts.request_header,
            signals,
            _guard: guard,
        }
    }
}

/// Runs one HTTP/1.1 connection until it ends, finishing the in-flight request
/// on drain and cutting it when the grace period is over.
///
/// Between requests the connection is parked (see [`super::park`]): hyper and
/// its buffers exist only while a request is arriving or being answered.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice in the future"
)]
fn serve_http<S>(mut conn: HttpConn, svc: S) -> impl Future<Output = ()> + use<S>
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<crate::access_log::LoggedBody>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    // An `async move` block rather than an `async fn`: the fn's arguments
    // would be stored twice in the future (once as arguments, once as
    // locals), and this future is what a parked client costs.
    async move {
        // The parked wait's timer, inline in the task for the connection's life:
        // a parked client costs no timer allocation (the stream drops its own
        // while parked). Nothing is registered with the runtime until polled.
        let timer = tokio::time::sleep_until(Instant::now() + conn.request_header);
        tokio::pin!(timer);
        // A client that came back within PARK_GRACE of being parked is busy:
        // its next idle spell waits PARK_GRACE before parking, so back-to-back
        // requests keep one hyper connection. New or slow clients park at once.
        let mut returning = false;
        // hyper starts its request-header timer as soon as it waits for a
        // head, idle or not; waiting here counts against the same budget.
        let mut header_deadline = Instant::now() + conn.request_header;
        loop {
            // A held head keeps the deadline it began with: sending it a byte at a
            // time cannot renew it.
            let holding = conn.shared.with_parked(|client, _| client.holds_head());
            if holding != Some(true) {
                header_deadline = Instant::now() + conn.request_header;
            }
            // Polled by hand with the socket and the timer, so the parked task
            // holds no other future.
            let readable = {
                let drain = conn.signals.draining();
                tokio::pin!(drain);
                std::future::poll_fn(|cx| {
                    // A drain closes connections idle between requests, not one just
                    // accepted: its first request may be on the wire already (a restart
                    // hands the listener over at any instant), and closing would reset
                    // it. That request is served (with `Connection: close`), or the
                    // header timeout or the grace ends the wait. Nor one whose head is
                    // on its way.
                    if holding != Some(true)
                        && (*conn.shared).as_ref().started()
                        && drain.as_mut().poll(cx).is_ready()
                    {
                        return Poll::Ready(false);
                    }
                    let parked = conn.shared.with_parked(|client, verdicts| {
                        poll_parked(client, verdicts, cx)
                            .map_continue(|()| header_deadline.min(client.get_ref().deadline()))
                    });
                    let deadline = match parked {
                        Some(ControlFlow::Continue(deadline)) => deadline,
                        Some(ControlFlow::Break(readable)) => return Poll::Ready(readable),
                        None => return Poll::Ready(false),
                    };
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                    timer.as_mut().poll(cx).map(|()| false)
                })
                .await
            };
            // Not readable: drain, idle or header timeout, a socket error, or a client
            // that gave up inside its head; close quietly, as hyper does for an idle
            // connection (and for a head that ends with the connection, or times out).
            let client = match conn.shared.take() {
                Some(client) if readable => client,
                _ => return,
            };
            let parked_for = conn
                .request_header
                .saturating_sub(header_deadline.saturating_duration_since(Instant::now()));
            let grace = if returning && parked_for < PARK_GRACE {
                PARK_GRACE
            } else {
                Duration::ZERO
            };
            returning = true;
            if let Err(e) = lend(&conn, client, header_deadline, grace, svc.clone()).await {
                // Parked holding a stalled head: hyper saw its end-of-stream.
                if conn.shared.with_parked(|client, _| client.holds_head()) == Some(true) {
                    continue;
                }
                // Client-side trouble (timeouts, garbage, resets) is routine at an edge.
                tracing::debug!("connection ended: {e}");
                (*conn.shared).as_ref().gauges().connection_error(&e);
            }
        }
    }
}

/// Reads of a held head per poll of the parked wait before it lets other tasks run.
const HELD_READS_PER_POLL: usize = 16;

/// The parked wait's step: `Break(true)` when the client has a request for hyper (bytes
/// at a message boundary, or a held head now complete, or refused), `Break(false)` when
/// the connection is done (error, or end-of-stream inside a held head), `Continue` until
/// one of those. A held head is read here, into a buffer that grows with it, not hyper's.
fn poll_parked(
    client: &mut FramingWatch<IdleIo<Tcp>>,
    verdicts: &mut FramingVerdicts,
    cx: &mut std::task::Context<'_>,
) -> ControlFlow<bool> {
    for _ in 0..HELD_READS_PER_POLL {
        match client.get_ref().get_ref().poll_read_ready(cx) {
            Poll::Pending => return ControlFlow::Continue(()),
            Poll::Ready(Err(_)) => return ControlFlow::Break(false),
            Poll::Ready(Ok(())) if !client.holds_head() => return ControlFlow::Break(true),
            Poll::Ready(Ok(())) => {}
        }
        let mut chunk = [0u8; 4096];
        match client.get_mut().try_read(&mut chunk) {
            Ok(0) => return ControlFlow::Break(false),
            Ok(n) => {
                if !client.feed_held(&chunk[..n], |ambiguous| verdicts.push(ambiguous)) {
                    return ControlFlow::Break(true);
                }
            }
            // Readiness was stale: the next `poll_read_ready` registers the wakeup.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return ControlFlow::Break(false),
        }
    }
    // Still more to read: come back once other tasks have had their turn.
    cx.waker().wake_by_ref();
    ControlFlow::Continue(())
}

/// One hyper connection over the lent client stream, until it parks or ends.
/// Boxed, and built outside `serve_http`, so the task stays small while
/// parked: hyper's state lives only as long as this future.
fn lend<S>(
    conn: &HttpConn,
    client: FramingWatch<IdleIo<Tcp>>,
    header_deadline: Instant,
    grace: Duration,
    svc: S,
) -> std::pin::Pin<Box<impl Future<Output = Result<(), hyper::Error>> + use<S>>>
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<crate::access_log::LoggedBody>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    // The watch gives up on heads as large as hyper's buffer (the same size).
    let buf_size = client.max_head();
    let io = ParkingIo::new(client, conn.shared.clone(), grace);
    let header_timeout = header_deadline.saturating_duration_since(Instant::now());
    Box::pin(run_hyper(
        io,
        conn.shared.clone(),
        header_timeout,
        buf_size,
        svc,
        conn.signals.clone(),
    ))
}

/// One hyper connection over a lent client stream, until it parks or ends.
async fn run_hyper<S>(
    io: ParkingIo<Tcp>,
    shared: Arc<ConnShared<Tcp>>,
    header_timeout: Duration,
    buf_size: usize,
    svc: S,
    mut signals: Signals,
) -> Result<(), hyper::Error>
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<crate::access_log::LoggedBody>,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(super::head_timer::HeadTimer::default())
        .header_read_timeout(header_timeout)
        .max_buf_size(buf_size)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        // At once when lent while draining already.
        _ = signals.draining() => {}
    }
    // Graceful shutdown only once a request has begun: hyper's closes a connection whose
    // request is still unparsed in its buffer as if it were idle, resetting a request
    // that reached us (a client that connected just before a restart). One that never
    // begins ends the lend by parking, and the parked wait closes it. Polled: this runs
    // only while draining.
    let mut abort = signals.clone();
    let mut tick = tokio::time::interval(DRAIN_POLL);
    while !(*shared).as_ref().busy() {
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = abort.aborting() => return Ok(()),
            _ = tick.tick() => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        r = conn.as_mut() => r,
        _ = abort.aborting() => {
            // Dropping `conn` drops the request being served: its access line says why.
            (*shared).as_ref().cut_by_shutdown();
            Ok(())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::path::Path;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");

    #[tokio::test]
    async fn a_scoped_connection_task_fits_the_parked_budget() {
        let text = "region = \"RegionOne\"\ncatalog = [\"endpoint-list-RegionOne.json\", \
                    \"endpoint-list-RegionTwo.json\"]\nbackend = \"192.168.142.245\"\n";
        let config = Config::from_str(text, &Path::new(FIXTURES).join("router.toml")).unwrap();
        let router = Arc::new(Router::from_config(&config).unwrap());
        let dispatch = Dispatch::new(&config, &router);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let stream = tokio::net::TcpStream::connect(local).await.unwrap();
        let peer = stream.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let open = OpenConnection::admit(&dispatch.clients).unwrap();
        let task = dispatch.scoped_task(
            (ClientIo::Plain(stream), local, peer),
            open,
            config.timeouts,
            shutdown.signals(),
            shutdown.guard().unwrap(),
        );
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= PARKED_TASK_BUDGET,
            "the scoped connection task is {size} bytes, over {PARKED_TASK_BUDGET}: \
             every idle keep-alive client would cost a larger tokio task"
        );
    }
}
