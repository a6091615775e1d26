//! The routing table built once from config + catalog, and the per-request decision
//! (docs/ARCHITECTURE.md §3, §4).
//!
//! Everything that does not depend on the request (listeners with their routes sorted for
//! prefix matching, targets per region, `Host`/`Via`/`X-Identity-*` header values) is
//! computed in [`Router::new`], so `decide` only compares strings and bumps reference
//! counts; it allocates only to parse a scope the client sent, and on a remote hop to pin
//! what it took from its defaults.
//!
//! Prefix matching respects path segments: `/identity` matches `/identity/v3` but not
//! `/identityfoo`; prefixes ending in `/` (URLs cut at a template) are plain prefixes.
//! A request that matches no entry on its listener nor via `Host` is forwarded unchanged
//! to the listener's local backend; on an address that is no listener it gets 421.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderValue;
use http::header::{HOST, VIA};

use crate::balance::{Balance, Balancer, Server};
use crate::catalog::{Catalog, Endpoint, split_host_port};
use crate::config::{Config, ConfigError, Redirect, ServerSpec, Timeouts};
use crate::decision::{Hop, Plan, PlanKind, RequestHead, Scoped};
use crate::health::{CheckSettings, Health, Probe};
use crate::metrics::{BackendLabels, TrafficStats};
use crate::problem::Problem;
use crate::scope::{Scope, ScopeSource};
use crate::server_slots::Slots;
use crate::tls::{TlsError, TlsHop, TlsTable};

/// A scoped listener derived from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// VIP:port from the catalog.
    pub addr: SocketAddr,
    /// Where local-region requests go (`backend`:port or `[ports.N] backend`): the first
    /// server, for display; [`Listener`] balances over all of them.
    pub local_backend: SocketAddr,
    pub timeouts: Timeouts,
}

/// Why a routing table cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "catalog entry {backend} ({url}, from {}) cannot be a listener: its host is not an IP \
         literal; put the VIP address in the catalog URL",
        source_file.display()
    )]
    NotIpLiteral {
        backend: String,
        url: String,
        source_file: std::path::PathBuf,
    },
    #[error("{what}: {source}")]
    Tls { what: String, source: TlsError },
    #[error(
        "catalog entry {backend} ({url}, from {}) cannot be routed: {reason}; fix the URL in the \
         catalog",
        source_file.display()
    )]
    BadEntry {
        backend: String,
        url: String,
        source_file: std::path::PathBuf,
        reason: String,
    },
}

/// The routing table in use, replaced whole on reload (docs/ARCHITECTURE.md §14): a
/// request loads it once and keeps that table to its end.
pub type SharedRouter = Arc<arc_swap::ArcSwap<Router>>;

/// What a routing table built on reload keeps from the one it replaces: each server's
/// health, found by address and probe (so a down server stays down, and a check result is
/// not thrown away), each backend's counters, found by listener and backend name (so
/// `/metrics` counters do not restart from zero), and each limited server's slots, found
/// by listener and address (so the exchanges in flight across the reload stay counted,
/// once).
struct Carry {
    metrics: bool,
    health: HashMap<(String, Probe), Arc<Health>>,
    stats: HashMap<(String, String), Arc<TrafficStats>>,
    slots: HashMap<(SocketAddr, String), Arc<Slots>>,
    /// What the new table changes in carried slots, applied when it is swapped in.
    changes: RefCell<LimitChanges>,
}

/// Limits a new table sets on slots it shares with the table in use: applied at the swap
/// ([`Router::apply_limits`]), never while building a table that may yet be refused.
#[derive(Debug, Default)]
struct LimitChanges {
    /// Carried slots and their new `maxconn`.
    set: Vec<(Arc<Slots>, u32)>,
    /// Carried slots of servers that are now unlimited.
    lifted: Vec<Arc<Slots>>,
}

impl Carry {
    fn new(metrics: bool, previous: Option<&Router>) -> Carry {
        let mut carry = Carry {
            metrics,
            health: HashMap::new(),
            stats: HashMap::new(),
            slots: HashMap::new(),
            changes: RefCell::default(),
        };
        let Some(previous) = previous else {
            return carry;
        };
        let limited = previous
            .listeners
            .iter()
            .map(|l| (l.spec.addr, &*l.local))
            .chain(previous.passthrough.iter().map(|p| (p.bind, &*p.balancer)));
        for (at, balancer) in limited {
            for server in balancer.servers() {
                if let Some(slots) = server.slots.as_ref().filter(|s| !s.lifted()) {
                    carry
                        .slots
                        .insert((at, server.health.addr().to_owned()), Arc::clone(slots));
                }
            }
        }
        for check in &previous.checks {
            carry.health.insert(
                (check.health.addr().to_owned(), check.probe.clone()),
                Arc::clone(&check.health),
            );
        }
        // Keyed as `/metrics` labels them: a backend is the same one when its listener
        // and name are.
        for (labels, stats) in previous.traffic() {
            carry.stats.insert(
                (labels.listener.to_owned(), labels.backend.to_owned()),
                Arc::clone(stats),
            );
        }
        carry
    }

    /// The server at `addr` of `spec`'s weight and kind, checked by `probe` with
    /// `settings` (its check is added to `checks`); its health is the previous table's
    /// when that had the same server and probe. `limited_at` is the listener (or
    /// passthrough bind) whose `maxconn` applies, `None` for a server that is never
    /// limited; its slots are the previous table's when that limited the same server there.
    fn server<A>(
        &self,
        checks: &mut Vec<HealthCheck>,
        (addr, probe): (String, Probe),
        settings: &CheckSettings,
        spec: &ServerSpec<A>,
        limited_at: Option<SocketAddr>,
        tls: Option<Arc<TlsHop>>,
    ) -> Server {
        let slots = limited_at.and_then(|at| self.slots(at, &addr, spec.maxconn.unwrap_or(0)));
        let key = (addr, probe);
        let health = match self.health.get(&key) {
            Some(health) => Arc::clone(health),
            None => Health::new(key.0.clone()),
        };
        checks.push(HealthCheck {
            health: Arc::clone(&health),
            probe: key.1,
            settings: settings.clone(),
            tls: tls.clone(),
        });
        Server {
            health,
            weight: spec.weight,
            backup: spec.backup,
            slots,
            tls,
        }
    }

    /// The slots of the server at `addr` limited to `maxconn` (0: none) at `at`.
    fn slots(&self, at: SocketAddr, addr: &str, maxconn: u32) -> Option<Arc<Slots>> {
        let carried = self.slots.get(&(at, addr.to_owned()));
        let mut changes = self.changes.borrow_mut();
        match (carried, maxconn) {
            (None, 0) => None,
            (None, max) => Some(Slots::new(max)),
            (Some(slots), 0) => {
                changes.lifted.push(Arc::clone(slots));
                None
            }
            (Some(slots), max) => {
                changes.set.push((Arc::clone(slots), max));
                Some(Arc::clone(slots))
            }
        }
    }

    fn stats(&self, listener: SocketAddr, backend: &str) -> Option<Arc<TrafficStats>> {
        if !self.metrics {
            return None;
        }
        Some(
            self.stats
                .get(&(listener.to_string(), backend.to_owned()))
                .cloned()
                .unwrap_or_else(TrafficStats::new),
        )
    }
}

/// Where a matched service goes in one region.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) region: Arc<str>,
    pub(crate) backend_name: Arc<str>,
    /// The first server, for display (`check`, `explain`, the HAProxy emitters).
    pub(crate) upstream: Arc<str>,
    /// Every server of the target and how to pick among them.
    pub(crate) balancer: Arc<Balancer>,
    /// `None` for the current region: local backend, Host and path unchanged.
    pub(crate) remote: Option<Remote>,
    /// Its traffic numbers; `None` with `[admin] metrics = false`.
    pub(crate) stats: Option<Arc<TrafficStats>>,
}

#[derive(Debug)]
pub(crate) struct Remote {
    pub(crate) host: HeaderValue,
    pub(crate) path: Arc<str>,
    /// Our `Via` entry with the decision as a comment, per [`ScopeSource`].
    via: [HeaderValue; 4],
}

/// One current-region catalog entry a listener can match.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) service_type: Arc<str>,
    pub(crate) interface: Arc<str>,
    /// The entry's path prefix (the part after `host:port`).
    pub(crate) path: Arc<str>,
    /// Every region offering this service type + interface (current region included).
    pub(crate) targets: Vec<Target>,
}

/// A scoped listener and the catalog entries it serves.
#[derive(Debug)]
pub struct Listener {
    pub spec: ListenerSpec,
    /// Longest path first; equal lengths keep catalog order, so the first match wins.
    routes: Vec<Route>,
    transparent_name: Arc<str>,
    local_upstream: Arc<str>,
    /// The local servers (shared by the local targets and the transparent fallback).
    local: Arc<Balancer>,
    /// `VIP:port`, the `listener` label of its metrics.
    label: Box<str>,
    /// Traffic of the transparent fallback, and of requests refused before a backend
    /// was chosen; `None` with `[admin] metrics = false`.
    transparent_stats: Option<Arc<TrafficStats>>,
    refused_stats: Option<Arc<TrafficStats>>,
    /// Set when the catalog URL is `https://`: the listener terminates TLS with this.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Listener {
    /// The routes in match order (read-only, for `check` and the HAProxy emitters).
    pub(crate) fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Backend name of the transparent fallback (`Region_transparent_PORT`).
    pub(crate) fn transparent_name(&self) -> &str {
        &self.transparent_name
    }

    /// `host:port` of the local backend.
    pub(crate) fn local_upstream(&self) -> &str {
        &self.local_upstream
    }

    fn match_route(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| prefix_matches(&r.path, path))
    }

    /// The local servers (read-only, for the HAProxy emitters' transparent fallback).
    pub(crate) fn local(&self) -> &Balancer {
        &self.local
    }

    /// What it terminates TLS with; `None` for a cleartext (`http://`) listener.
    pub fn tls(&self) -> Option<&Arc<rustls::ServerConfig>> {
        self.tls.as_ref()
    }
}

/// The immutable routing table, shared as `Arc<Router>`.
#[derive(Debug)]
pub struct Router {
    region: Arc<str>,
    via: HeaderValue,
    via_name: Arc<str>,
    catalog: Catalog,
    regions: Vec<Arc<str>>,
    listeners: Vec<Listener>,
    /// `[scope.defaults]`; service types absent here default to the current region.
    defaults: HashMap<String, Arc<str>>,
    /// `X-Identity-Region`/`X-Identity-Url` per region with an identity endpoint.
    identity: Vec<(Arc<str>, HeaderValue, HeaderValue)>,
    /// Every upstream server's health and how to check it, for the checker tasks.
    checks: Vec<HealthCheck>,
    /// The servers of each `[[passthrough]]`, in config order.
    passthrough: Vec<PassthroughServers>,
    /// Each `[[redirect]]` listener's counters and exempt server, in config order.
    redirect: Vec<RedirectServers>,
    /// `maxconn` changes to the previous table's slots, for [`Router::apply_limits`].
    limit_changes: LimitChanges,
    /// The certificates served and the hops' TLS configurations.
    tls: TlsTable,
}

/// The servers of one passthrough listener: checked and balanced like a scoped port's,
/// owned here so that every upstream of the router is in one table (`status` reads it).
#[derive(Debug)]
pub struct PassthroughServers {
    pub name: String,
    pub bind: SocketAddr,
    pub balancer: Arc<Balancer>,
    /// `None` with `[admin] metrics = false`.
    pub stats: Option<Arc<TrafficStats>>,
    /// `bind` as text, the `listener` label of its metrics.
    label: Box<str>,
}

/// What one `[[redirect]]` listener counts, and the server its exempt paths are relayed
/// to. That server is not health-checked: an ACME client listens only while it renews, so
/// a check would hold it down just when the challenge arrives.
#[derive(Debug)]
pub struct RedirectServers {
    pub spec: Redirect,
    /// `exempt_backend` as its one server; `None` without one.
    pub exempt: Option<Arc<Balancer>>,
    /// The listener's own answers (301s and refused requests); `None` with `[admin]
    /// metrics = false`, like `exempt_stats`.
    pub stats: Option<Arc<TrafficStats>>,
    /// Requests relayed to `exempt_backend`.
    pub exempt_stats: Option<Arc<TrafficStats>>,
    /// `bind` as text, the `listener` label of its metrics.
    label: Box<str>,
}

impl RedirectServers {
    /// The `backend` label (and access-log backend) of a redirect listener's own answers.
    pub const REDIRECT: &'static str = "redirect";
    /// The `backend` label of requests relayed to `exempt_backend`, named after the key.
    pub const EXEMPT: &'static str = "exempt_backend";

    /// `r`'s exempt server, unchecked, and nothing counted.
    pub fn new(r: &Redirect, balance: Balance) -> RedirectServers {
        RedirectServers {
            spec: r.clone(),
            exempt: r.exempt_backend.map(|addr| {
                let server = Server::new(Health::new(addr.to_string()));
                Arc::new(Balancer::new(vec![server], balance))
            }),
            stats: None,
            exempt_stats: None,
            label: r.bind.to_string().into(),
        }
    }

    /// 301s answered since the router started (`None` with `[admin] metrics = false`).
    pub fn redirects(&self) -> Option<u64> {
        // Only the 301s are 3xx among the listener's own answers.
        self.stats.as_ref().map(|s| s.responses()[2])
    }

    /// `bind` as the `listener` label has it.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// One server's health state and how its checker probes it.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub health: Arc<Health>,
    pub probe: Probe,
    pub settings: CheckSettings,
    /// The check speaks TLS, as requests to the server do.
    pub tls: Option<Arc<TlsHop>>,
}

impl Router {
    /// Builds the table; validates the catalog-dependent config keys.
    pub fn new(config: &Config, catalog: Catalog) -> Result<Router, RoutingError> {
        Router::build(config, catalog, &Carry::new(config.admin.metrics, None))
    }

    fn build(config: &Config, catalog: Catalog, carry: &Carry) -> Result<Router, RoutingError> {
        config.check_catalog(&catalog)?;
        let regions = catalog.regions();
        let region: Arc<str> = regions
            .iter()
            .find(|r| ***r == *config.region)
            .cloned()
            .unwrap_or_else(|| Arc::from(config.region.as_str()));
        let via_name: Arc<str> = Arc::from(format!("scope-router-{region}"));
        let via = header_value(&format!("1.1 {via_name}")).ok_or_else(|| ConfigError::Invalid {
            path: config.path.clone(),
            key: "region".to_owned(),
            message: "must be printable ASCII (it goes into the Via header)".to_owned(),
        })?;

        let mut listeners: Vec<Listener> = Vec::new();
        let mut checks: Vec<HealthCheck> = Vec::new();
        let mut tls = TlsTable::new(&config.tls);
        for entry in catalog.entries().iter().filter(|e| e.region == region) {
            let ip = entry.url.ip().ok_or_else(|| RoutingError::NotIpLiteral {
                backend: entry.backend_name(),
                url: entry.url.to_string(),
                source_file: entry.source.to_path_buf(),
            })?;
            let addr = SocketAddr::new(ip.to_canonical(), entry.url.port());
            let index = match listeners.iter().position(|l| l.spec.addr == addr) {
                Some(i) => {
                    if listeners[i].tls.is_some() != (entry.scheme == "https") {
                        return Err(bad_entry(
                            entry,
                            "another entry on the same address and port has the other scheme \
                             (http:// and https:// cannot share a listener); make them agree",
                        ));
                    }
                    i
                }
                None => {
                    let port = addr.port();
                    let served = match config.port_certificate(port) {
                        Some(files) if entry.scheme == "https" => {
                            Some(tls.server(&files).map_err(|source| RoutingError::Tls {
                                what: format!(
                                    "listener {addr} (https:// in the catalog) cannot serve \
                                     {}",
                                    files.certificate.display()
                                ),
                                source,
                            })?)
                        }
                        _ => None,
                    };
                    let backend_tls = config.port_backend_tls(port);
                    let servers = config.port_backend(port);
                    let settings = config.port_health(port);
                    let local_backend =
                        servers
                            .first()
                            .map(|s| s.address)
                            .ok_or_else(|| ConfigError::Invalid {
                                path: config.path.clone(),
                                key: format!("ports.{port}.backend"),
                                message: "names no server".to_owned(),
                            })?;
                    let local = servers
                        .iter()
                        .map(|s| {
                            let probe = match &settings.http_path {
                                Some(path) => Probe::Http {
                                    path: path.clone(),
                                    host: addr.to_string(),
                                },
                                None => Probe::Tcp,
                            };
                            let hop = backend_tls
                                .map(|ca_file| {
                                    tls.hop(ca_file, &s.address.ip().to_string()).map_err(
                                        |source| RoutingError::Tls {
                                            what: format!(
                                                "[ports.{port}] backend_tls to {}",
                                                s.address
                                            ),
                                            source,
                                        },
                                    )
                                })
                                .transpose()?;
                            Ok(carry.server(
                                &mut checks,
                                (s.address.to_string(), probe),
                                &settings,
                                s,
                                Some(addr),
                                hop,
                            ))
                        })
                        .collect::<Result<Vec<_>, RoutingError>>()?;
                    listeners.push(Listener {
                        spec: ListenerSpec {
                            addr,
                            local_backend,
                            timeouts: config.port_timeouts(port),
                        },
                        routes: Vec::new(),
                        transparent_name: Arc::from(format!("{region}_transparent_{port}")),
                        local_upstream: Arc::from(local_backend.to_string()),
                        local: Arc::new(Balancer::new(local, config.port_balance(port))),
                        label: addr.to_string().into(),
                        transparent_stats: carry
                            .stats(addr, &format!("{region}_transparent_{port}")),
                        refused_stats: carry.stats(addr, "-"),
                        tls: served,
                    });
                    listeners.len() - 1
                }
            };
            let listener = &mut listeners[index];
            let targets = build_targets(
                &catalog,
                &regions,
                &region,
                &via_name,
                entry,
                (&listener.local_upstream, &listener.local),
                &config.health,
                (&mut checks, &mut tls),
                (carry, addr),
            )?;
            listener.routes.push(Route {
                service_type: Arc::clone(&entry.service_type),
                interface: Arc::clone(&entry.interface),
                path: Arc::clone(&entry.url.path),
                targets,
            });
        }
        for l in &mut listeners {
            // Stable sort: ties keep catalog order (docs/ARCHITECTURE.md §3.1).
            l.routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        }

        let mut identity = Vec::new();
        for r in &regions {
            // keystonemiddleware talks to the admin endpoint; fall back to public for
            // catalogs that list no admin identity.
            let entry = catalog
                .find(r, "identity", "admin")
                .or_else(|| catalog.find(r, "identity", "public"));
            if let Some(e) = entry {
                let (Some(rv), Some(uv)) = (header_value(r), header_value(&e.absolute_url()))
                else {
                    return Err(bad_entry(e, "not representable in an HTTP header"));
                };
                identity.push((Arc::clone(r), rv, uv));
            }
        }

        let defaults = config
            .scope_defaults
            .iter()
            .map(|(st, r)| {
                let r = regions
                    .iter()
                    .find(|k| ***k == **r)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(r.as_str()));
                (st.clone(), r)
            })
            .collect();

        // Passthrough servers: a TCP connect is the one check every passthrough protocol
        // (MariaDB, RabbitMQ, noVNC…) answers; an HTTP path would not fit them all.
        let mut passthrough = Vec::with_capacity(config.passthrough.len());
        for p in &config.passthrough {
            let mut settings = config.health.clone();
            settings.http_path = None;
            let servers = p
                .servers
                .iter()
                .map(|s| {
                    carry.server(
                        &mut checks,
                        (s.address.to_string(), Probe::Tcp),
                        &settings,
                        s,
                        Some(p.bind),
                        None,
                    )
                })
                .collect();
            passthrough.push(PassthroughServers {
                name: p.name.clone(),
                bind: p.bind,
                balancer: Arc::new(Balancer::new(servers, p.balance)),
                stats: carry.stats(p.bind, &p.name),
                label: p.bind.to_string().into(),
            });
        }

        let redirect = config
            .redirect
            .iter()
            .map(|r| RedirectServers {
                stats: carry.stats(r.bind, RedirectServers::REDIRECT),
                exempt_stats: r
                    .exempt_backend
                    .and_then(|_| carry.stats(r.bind, RedirectServers::EXEMPT)),
                ..RedirectServers::new(r, config.proxy.balance)
            })
            .collect();

        Ok(Router {
            region,
            via,
            via_name,
            catalog,
            regions,
            listeners,
            defaults,
            identity,
            checks,
            passthrough,
            redirect,
            limit_changes: carry.changes.take(),
            tls,
        })
    }

    /// Puts this table's `maxconn` on the slots it shares with the table it replaces
    /// (docs/ARCHITECTURE.md §14.4): called once it is certain to be served, just before
    /// the swap. Slots are shared, so requests still on the old table see the new limit
    /// too; a server that lost its limit lets its waiting requests go.
    pub fn apply_limits(&self) {
        for (slots, max) in &self.limit_changes.set {
            slots.set_max(*max);
        }
        for slots in &self.limit_changes.lifted {
            slots.lift();
        }
    }

    /// The servers of each passthrough listener, in config order.
    pub fn passthrough(&self) -> &[PassthroughServers] {
        &self.passthrough
    }

    /// Each `[[redirect]]` listener's counters and exempt server, in config order.
    pub fn redirect(&self) -> &[RedirectServers] {
        &self.redirect
    }

    /// Every upstream server with its health state and check, for the checker tasks
    /// (`proxy::start` runs them; nothing on the request path does).
    pub fn health_checks(&self) -> &[HealthCheck] {
        &self.checks
    }

    /// Loads the catalog the config names and builds the table.
    pub fn from_config(config: &Config) -> Result<Router, RoutingError> {
        Router::from_config_after(config, None)
    }

    /// [`Router::from_config`] for a reload: servers and backends `previous` also has
    /// keep their health state and their counters (docs/ARCHITECTURE.md §14).
    pub fn from_config_after(
        config: &Config,
        previous: Option<&Router>,
    ) -> Result<Router, RoutingError> {
        let catalog = config.load_catalog()?;
        Router::build(config, catalog, &Carry::new(config.admin.metrics, previous))
    }

    /// The certificates its listeners serve and its hops' TLS configurations.
    pub fn tls(&self) -> &TlsTable {
        &self.tls
    }

    /// The current region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The catalog the table was built from.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Every region of the catalog, in order of first appearance.
    pub fn regions(&self) -> &[Arc<str>] {
        &self.regions
    }

    /// Every distinct `host:port` of the current region, with its routes.
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// Where a request on `local` that gets no backend (refused before routing) is
    /// counted; `None` with `[admin] metrics = false` or for an address no listener serves.
    pub fn refused_stats(&self, local: SocketAddr) -> Option<&Arc<TrafficStats>> {
        self.listener_at(local)?.refused_stats.as_ref()
    }

    /// Every backend's traffic numbers under its metric labels: each target, each
    /// listener's transparent fallback and refused requests, each passthrough.
    pub fn traffic(&self) -> Vec<(BackendLabels<'_>, &Arc<TrafficStats>)> {
        let mut out = Vec::new();
        for l in &self.listeners {
            for route in &l.routes {
                for t in &route.targets {
                    if let Some(stats) = &t.stats {
                        out.push((
                            BackendLabels {
                                listener: &l.label,
                                service_type: &route.service_type,
                                region: &t.region,
                                backend: &t.backend_name,
                            },
                            stats,
                        ));
                    }
                }
            }
            let unrouted = [
                (&l.transparent_stats, &*l.transparent_name),
                (&l.refused_stats, "-"),
            ];
            for (stats, backend) in unrouted {
                if let Some(stats) = stats {
                    out.push((
                        BackendLabels {
                            listener: &l.label,
                            service_type: "-",
                            region: &self.region,
                            backend,
                        },
                        stats,
                    ));
                }
            }
        }
        for p in &self.passthrough {
            if let Some(stats) = &p.stats {
                out.push((
                    BackendLabels {
                        listener: &p.label,
                        service_type: "-",
                        region: &self.region,
                        backend: &p.name,
                    },
                    stats,
                ));
            }
        }
        for r in &self.redirect {
            let counted = [
                (&r.stats, RedirectServers::REDIRECT),
                (&r.exempt_stats, RedirectServers::EXEMPT),
            ];
            for (stats, backend) in counted {
                if let Some(stats) = stats {
                    out.push((
                        BackendLabels {
                            listener: &r.label,
                            service_type: "-",
                            region: &self.region,
                            backend,
                        },
                        stats,
                    ));
                }
            }
        }
        out
    }

    /// The answer to another router's health check of one of our services
    /// (`GET /.scope-router/health?service=T&interface=I` on the listener at `local`):
    /// up when any server of our own backend for it is up. The status and a message.
    pub fn health_answer(&self, local: SocketAddr, query: Option<&str>) -> (u16, String) {
        let mut service = None;
        let mut interface = None;
        for pair in query.unwrap_or("").split('&') {
            match pair.split_once('=') {
                Some(("service", v)) => service = Some(v),
                Some(("interface", v)) => interface = Some(v),
                _ => {}
            }
        }
        let Some(service) = service else {
            return (
                400,
                "name the service: ?service=TYPE&interface=IFACE".to_owned(),
            );
        };
        let route = self.listener_at(local).and_then(|l| {
            l.routes.iter().find(|r| {
                *r.service_type == *service && interface.is_none_or(|i| *r.interface == *i)
            })
        });
        let Some(target) = route.and_then(|r| r.targets.iter().find(|t| t.remote.is_none())) else {
            return (404, format!("{} serves no {service} here", self.via_name));
        };
        if target
            .balancer
            .candidates(IpAddr::from([0, 0, 0, 0]))
            .next()
            .is_some()
        {
            (200, format!("{} is up", target.backend_name))
        } else {
            let last = target.balancer.last_failure().unwrap_or_default();
            (503, format!("{} is down: {last}", target.backend_name))
        }
    }

    /// The listener settings alone, for the layers that only bind or steer addresses.
    pub fn listener_specs(&self) -> Vec<ListenerSpec> {
        self.listeners.iter().map(|l| l.spec.clone()).collect()
    }

    /// The listener for an accepted socket's local address.
    pub fn listener(&self, local: SocketAddr) -> Option<&ListenerSpec> {
        self.listener_at(local).map(|l| &l.spec)
    }

    /// The listener serving `local`, TLS included.
    pub fn listener_at(&self, local: SocketAddr) -> Option<&Listener> {
        // A dual-stack socket reports an IPv4 local address as ::ffff:a.b.c.d.
        let local = SocketAddr::new(local.ip().to_canonical(), local.port());
        self.listeners.iter().find(|l| l.spec.addr == local)
    }

    /// The default region of a service type (`[scope.defaults]`, else the current region).
    pub fn default_region(&self, service_type: &str) -> &Arc<str> {
        self.defaults.get(service_type).unwrap_or(&self.region)
    }

    /// Decides where a request goes (pure, no I/O).
    pub fn decide(&self, head: &RequestHead<'_>) -> Result<Plan, Problem> {
        let path = head.uri.path();
        let local = self.listener_at(head.local);
        let matched = local
            .and_then(|l| l.match_route(path).map(|r| (l, r)))
            .or_else(|| {
                let l = self.host_listener(head.headers)?;
                l.match_route(path).map(|r| (l, r))
            });
        let Some((listener, route)) = matched else {
            if self.via_names_me(head.headers) {
                return Err(self.loop_detected(head.headers, None));
            }
            return self.transparent(head, local);
        };

        let scope = Scope::read(head.headers)?;
        let source = scope.source_for(&route.service_type);
        let value = scope
            .region_for(&route.service_type)
            .unwrap_or_else(|| self.default_region(&route.service_type));
        if self.via_names_me(head.headers) {
            let here = (&*route.service_type, value, source);
            return Err(self.loop_detected(head.headers, Some(here)));
        }
        let identity_value = scope
            .region_for("identity")
            .unwrap_or_else(|| self.default_region("identity"));
        // The identity headers follow the first identity alternative; for the identity
        // service itself they follow whichever alternative serves (`plan_for`).
        let mut first_identity = None;
        for region in alternatives(identity_value) {
            if !self.regions.iter().any(|r| **r == *region) {
                return Err(Problem::unknown_region(region, "identity", &self.regions));
            }
            first_identity.get_or_insert(region);
        }
        let identity = self.identity_headers(first_identity.unwrap_or(&self.region));
        let decided = Decided {
            listener,
            route,
            scope: &scope,
            source,
            identity_value,
            identity,
        };

        // The usual scope names one region: no chain, no allocation.
        if !value.contains('|') {
            let target = self.target_for(route, value.trim())?;
            return Ok(self.plan_for(&decided, target, &target.region, None));
        }
        // `A|B`: every alternative must be a region serving the service (400 otherwise),
        // checked before any is chosen so a typo never hides behind a healthy first one.
        let mut targets = Vec::new();
        for region in alternatives(value) {
            if targets.len() == MAX_ALTERNATIVES {
                return Err(Problem::malformed_scope(
                    source.as_str(),
                    format_args!(
                        "\"{}\" lists more than {MAX_ALTERNATIVES} alternatives",
                        route.service_type
                    ),
                ));
            }
            targets.push(self.target_for(route, region)?);
        }
        // Plans from the last alternative to the first, each falling back to the next.
        // The next router gets the alternatives from the chosen one on, without the
        // current region: it must never send the request back here.
        let mut plan = None;
        for (i, target) in targets.iter().enumerate().rev() {
            let onward = onward_value(&targets[i..], &self.region);
            plan = Some(self.plan_for(&decided, target, &onward, plan));
        }
        plan.ok_or_else(|| Problem::malformed_scope(source.as_str(), "no region named"))
    }

    /// The target of `route` in `region`, or the 400 naming what is wrong with it.
    fn target_for<'r>(&self, route: &'r Route, region: &str) -> Result<&'r Target, Problem> {
        route
            .targets
            .iter()
            .find(|t| *t.region == *region)
            .ok_or_else(|| self.missing_region(region, &route.service_type, &route.interface))
    }

    /// `X-Identity-Region`/`X-Identity-Url` for `region`; `None` when it lists no identity
    /// endpoint.
    fn identity_headers(&self, region: &str) -> Option<(HeaderValue, HeaderValue)> {
        self.identity
            .iter()
            .find(|(r, _, _)| **r == *region)
            .map(|(_, r, u)| (r.clone(), u.clone()))
    }

    /// The plan sending the request to `target`; `onward` is the scope value a remote
    /// router gets for the service type, `fallback` the next alternative's plan.
    fn plan_for(
        &self,
        d: &Decided<'_>,
        target: &Target,
        onward: &str,
        fallback: Option<Plan>,
    ) -> Plan {
        let identity = if &*d.route.service_type == "identity" {
            self.identity_headers(&target.region)
        } else {
            d.identity.clone()
        };
        let (hop, via) = match &target.remote {
            Some(remote) => (
                Hop::Remote {
                    host: remote.host.clone(),
                    from: Arc::clone(&d.route.path),
                    to: Arc::clone(&remote.path),
                    scope: d.scope.for_next_hop(&[
                        (&d.route.service_type, onward),
                        ("identity", d.identity_value),
                    ]),
                },
                remote.via[d.source.index()].clone(),
            ),
            None => (Hop::Local, self.via.clone()),
        };
        Plan {
            balancer: Arc::clone(&target.balancer),
            stats: target.stats.clone(),
            backend_name: Arc::clone(&target.backend_name),
            region: Arc::clone(&target.region),
            timeouts: d.listener.spec.timeouts,
            port: d.listener.spec.addr.port(),
            via,
            kind: PlanKind::Scoped(Scoped {
                service_type: Arc::clone(&d.route.service_type),
                interface: Arc::clone(&d.route.interface),
                scope_source: d.source,
                identity,
                hop,
            }),
            fallback: fallback.map(Box::new),
        }
    }

    fn transparent(
        &self,
        head: &RequestHead<'_>,
        local: Option<&Listener>,
    ) -> Result<Plan, Problem> {
        let Some(l) = local else {
            return Err(Problem::misdirected(head.local));
        };
        Ok(Plan {
            balancer: Arc::clone(&l.local),
            stats: l.transparent_stats.clone(),
            backend_name: Arc::clone(&l.transparent_name),
            region: Arc::clone(&self.region),
            timeouts: l.spec.timeouts,
            port: l.spec.addr.port(),
            via: self.via.clone(),
            kind: PlanKind::Transparent,
            fallback: None,
        })
    }

    /// The listener named by the `Host` header (port 80 when absent).
    fn host_listener(&self, headers: &http::HeaderMap) -> Option<&Listener> {
        let host = headers.get(HOST)?.to_str().ok()?;
        let (host, port) = split_host_port(host.trim()).ok()?;
        let ip: IpAddr = host.parse().ok()?;
        self.listener_at(SocketAddr::new(ip, port.unwrap_or(80)))
    }

    fn via_names_me(&self, headers: &http::HeaderMap) -> bool {
        via_hops(headers).any(|(by, _)| by.eq_ignore_ascii_case(&self.via_name))
    }

    /// 508 naming every router of the `Via` chain with what it decided, and what this
    /// router reads now (`here`: service type, region, source).
    fn loop_detected(
        &self,
        headers: &http::HeaderMap,
        here: Option<(&str, &str, ScopeSource)>,
    ) -> Problem {
        let chain: Vec<String> = via_hops(headers)
            .map(|(by, note)| match note {
                Some(note) => format!("{by} ({note})"),
                None => by.to_owned(),
            })
            .collect();
        let here =
            here.map(|(st, region, source)| format!("{st}={region} from {}", source.as_str()));
        Problem::loop_detected(&self.via_name, &chain, here.as_deref())
    }

    fn missing_region(&self, region: &str, service_type: &str, interface: &str) -> Problem {
        if self.regions.iter().any(|r| **r == *region) {
            let offering: Vec<&str> = self
                .catalog
                .entries()
                .iter()
                .filter(|e| *e.service_type == *service_type && *e.interface == *interface)
                .map(|e| &*e.region)
                .collect();
            Problem::region_lacks_service(region, service_type, interface, &self.regions, &offering)
        } else {
            Problem::unknown_region(region, service_type, &self.regions)
        }
    }
}

/// What one request's decision shares between its alternatives.
struct Decided<'a> {
    listener: &'a Listener,
    route: &'a Route,
    scope: &'a Scope,
    source: ScopeSource,
    /// The scope's identity value as the client (or our defaults) gave it.
    identity_value: &'a str,
    /// The identity headers for a service other than identity.
    identity: Option<(HeaderValue, HeaderValue)>,
}

/// The most regions one scope value may list (`A|B|…`): a bound on the work one request
/// can ask for.
const MAX_ALTERNATIVES: usize = 8;

/// The regions of a scope value, in order (`"RegionTwo|RegionOne"`).
fn alternatives(value: &str) -> impl Iterator<Item = &str> {
    value.split('|').map(str::trim)
}

/// The scope value the next router gets: `targets` (the chosen one first) without
/// `current`, joined by `|`.
fn onward_value(targets: &[&Target], current: &str) -> String {
    let mut out = String::new();
    for t in targets {
        if *t.region == *current {
            continue;
        }
        if !out.is_empty() {
            out.push('|');
        }
        out.push_str(&t.region);
    }
    out
}

/// Every hop of the `Via` chain as (received-by, comment), across all `Via` lines.
fn via_hops(headers: &http::HeaderMap) -> impl Iterator<Item = (&str, Option<&str>)> {
    headers
        .get_all(VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| {
            // `protocol received-by [(comment)]`
            let mut words = hop.trim().splitn(3, char::is_whitespace);
            let _protocol = words.next()?;
            let by = words.next()?;
            let note = words
                .next()
                .map(str::trim)
                .and_then(|c| c.strip_prefix('('))
                .and_then(|c| c.strip_suffix(')'));
            Some((by, note))
        })
}

/// Prefix match on path-segment boundaries: `/identity` matches `/identity/v3` but not
/// `/identityfoo`; prefixes ending in `/` (template cuts) match as plain prefixes.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.is_empty()
            || prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

#[allow(clippy::too_many_arguments)] // one call site, in `Router::new`
fn build_targets(
    catalog: &Catalog,
    regions: &[Arc<str>],
    current: &Arc<str>,
    via_name: &str,
    entry: &Endpoint,
    (local_upstream, local): (&Arc<str>, &Arc<Balancer>),
    settings: &CheckSettings,
    (checks, tls): (&mut Vec<HealthCheck>, &mut TlsTable),
    (carry, listener): (&Carry, SocketAddr),
) -> Result<Vec<Target>, RoutingError> {
    let mut targets = Vec::with_capacity(regions.len());
    for region in regions {
        if region == current {
            targets.push(Target {
                region: Arc::clone(region),
                backend_name: Arc::from(entry.backend_name()),
                upstream: Arc::clone(local_upstream),
                balancer: Arc::clone(local),
                remote: None,
                stats: carry.stats(listener, &entry.backend_name()),
            });
            continue;
        }
        let Some(t) = catalog.find(region, &entry.service_type, &entry.interface) else {
            continue;
        };
        let host = header_value(&t.url.authority).ok_or_else(|| bad_entry(t, "invalid host"))?;
        if !t.url.path.is_empty() && http::uri::PathAndQuery::try_from(&*t.url.path).is_err() {
            return Err(bad_entry(t, "the path is not a valid URI path"));
        }
        let via = ScopeSource::ALL
            .map(|source| remote_via(via_name, &entry.service_type, region, source));
        // A remote region is up for this service only when its service is: its router
        // answers the check from its own health state (docs/ARCHITECTURE.md §3.8).
        let probe = Probe::ScopeRouter {
            service_type: entry.service_type.to_string(),
            interface: entry.interface.to_string(),
            host: t.url.authority.to_string(),
        };
        let mut remote_settings = settings.clone();
        remote_settings.http_path = None;
        let frontend = ServerSpec {
            address: (),
            weight: 1,
            backup: false,
            maxconn: None,
        };
        // An `https://` frontend is reached over TLS, verified for the URL's host.
        let hop = (t.scheme == "https")
            .then(|| {
                tls.hop(None, t.url.host())
                    .map_err(|source| RoutingError::Tls {
                        what: format!("the TLS hop to {} ({})", t.backend_name(), t.absolute_url()),
                        source,
                    })
            })
            .transpose()?;
        // Another region's router is never limited here: it queues in front of its own
        // servers, and a cap on the hop would hold back every cross-region upload.
        let server = carry.server(
            checks,
            (t.url.authority.to_string(), probe),
            &remote_settings,
            &frontend,
            None,
            hop,
        );
        let balancer = Arc::new(Balancer::new(
            vec![server],
            crate::balance::Balance::Roundrobin,
        ));
        targets.push(Target {
            region: Arc::clone(region),
            backend_name: Arc::from(t.backend_name()),
            upstream: Arc::clone(&t.url.authority),
            balancer,
            remote: Some(Remote {
                host,
                path: Arc::clone(&t.url.path),
                via,
            }),
            stats: carry.stats(listener, &t.backend_name()),
        });
    }
    Ok(targets)
}

/// `1.1 scope-router-R (st=region from source)`: the decision rides in the `Via` comment
/// so that a router finding a loop can say what each hop read. Names that would break
/// the comment's syntax (parentheses, commas, backslashes) leave it out.
fn remote_via(
    via_name: &str,
    service_type: &str,
    region: &str,
    source: ScopeSource,
) -> HeaderValue {
    let plain = || {
        header_value(&format!("1.1 {via_name}"))
            .unwrap_or(HeaderValue::from_static("1.1 scope-router"))
    };
    let unsafe_in_comment = |s: &str| s.contains(['(', ')', ',', '\\']);
    if unsafe_in_comment(service_type) || unsafe_in_comment(region) {
        return plain();
    }
    header_value(&format!(
        "1.1 {via_name} ({service_type}={region} from {})",
        source.as_str()
    ))
    .unwrap_or_else(plain)
}

fn bad_entry(e: &Endpoint, reason: &str) -> RoutingError {
    RoutingError::BadEntry {
        backend: e.backend_name(),
        url: e.url.to_string(),
        source_file: e.source.to_path_buf(),
        reason: reason.to_owned(),
    }
}

fn header_value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");
    const PEER: &str = "10.9.9.9:55555";

    /// A RegionOne (or other region) router over the seed fixtures, with extra config.
    fn seed_router(region: &str, backend: &str, extra: &str) -> Router {
        let text = format!(
            "region = \"{region}\"\ncatalog = [\"endpoint-list-RegionOne.json\", \
             \"endpoint-list-RegionTwo.json\"]\nbackend = \"{backend}\"\n{extra}"
        );
        let config = Config::from_str(&text, &Path::new(FIXTURES).join("router.toml")).unwrap();
        Router::from_config(&config).unwrap()
    }

    fn r1() -> Router {
        seed_router("RegionOne", "192.168.142.245", "")
    }

    /// A hand-made two-region catalog with path-prefixed endpoints (devstack style).
    fn prefixed_router() -> Router {
        let rows = [
            ("RegionA", "identity", "public", "http://10.0.0.1/identity"),
            (
                "RegionA",
                "identity",
                "admin",
                "http://10.0.0.1/identity_admin",
            ),
            (
                "RegionA",
                "compute",
                "public",
                "http://10.0.0.1/compute/v2.1/%(tenant_id)s",
            ),
            ("RegionA", "image", "public", "http://10.0.0.1/image"),
            ("RegionA", "metric", "public", "http://10.0.0.1/image"),
            (
                "RegionA",
                "placement",
                "public",
                "http://10.0.0.1/placement",
            ),
            ("RegionA", "dashboard", "public", "http://10.0.0.1"),
            (
                "RegionA",
                "volumev3",
                "public",
                "https://10.0.0.1/volume/v3/$(project_id)s",
            ),
            ("RegionB", "identity", "public", "http://10.0.1.1:5000"),
            ("RegionB", "identity", "admin", "http://10.0.1.1:35357/"),
            (
                "RegionB",
                "compute",
                "public",
                "http://10.0.1.1:8774/v2.1/%(tenant_id)s",
            ),
            ("RegionB", "image", "public", "http://10.0.1.1:9292/image"),
            (
                "RegionB",
                "volumev3",
                "public",
                "http://[fd00::2]:8776/v3/$(project_id)s",
            ),
        ];
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|(r, s, i, u)| {
                serde_json::json!({"Region": r, "Service Type": s, "Interface": i, "URL": u})
            })
            .collect();
        let mut catalog = Catalog::default();
        catalog
            .add_json(
                &serde_json::Value::from(json).to_string(),
                Path::new("a.json"),
            )
            .unwrap();
        // The https:// entry is a TLS listener: it needs a certificate to be built.
        let pki = crate::tls::testing::Pki::new("prefixed");
        let cert = pki.leaf("vip", &["10.0.0.1"], 30);
        let text = format!(
            "region = \"RegionA\"\ncatalog = [\"a.json\"]\nbackend = \"10.0.0.5\"\n\
             [ports.80]\nbackend = \"127.0.0.1:8080\"\n\
             [tls]\ncertificate = {:?}\nkey = {:?}\n",
            cert.certificate, cert.key
        );
        let config = Config::from_str(&text, Path::new("/etc/router.toml")).unwrap();
        Router::new(&config, catalog).unwrap()
    }

    fn request(path: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method("GET").uri(path);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn decide(
        router: &Router,
        local: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Plan, Problem> {
        let parts = request(path, headers);
        let head = RequestHead {
            local: local.parse().unwrap(),
            peer: PEER.parse().unwrap(),
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        };
        router.decide(&head)
    }

    /// Decides and applies, as the proxy does; returns the plan and the outgoing head.
    fn forward(
        router: &Router,
        local: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (Plan, http::request::Parts) {
        let mut parts = request(path, headers);
        let plan = {
            let head = RequestHead {
                local: local.parse().unwrap(),
                peer: PEER.parse().unwrap(),
                method: &parts.method,
                uri: &parts.uri,
                headers: &parts.headers,
            };
            router
                .decide(&head)
                .unwrap_or_else(|p| panic!("{path}: {p}"))
        };
        plan.apply_to(PEER.parse().unwrap(), &mut parts);
        (plan, parts)
    }

    fn header<'a>(parts: &'a http::request::Parts, name: &str) -> Option<&'a str> {
        parts.headers.get(name).map(|v| v.to_str().unwrap())
    }

    const VIP1: &str = "192.168.142.244";

    #[test]
    fn listeners_are_the_current_regions_distinct_addresses() {
        let r = r1();
        let addrs: Vec<String> = r
            .listeners()
            .iter()
            .map(|l| l.spec.addr.to_string())
            .collect();
        let ports = [5000, 35357, 9292, 8774, 9696, 8780];
        assert_eq!(addrs, ports.map(|p| format!("{VIP1}:{p}")));
        for (l, p) in r.listeners().iter().zip(ports) {
            assert_eq!(
                l.spec.local_backend,
                format!("192.168.142.245:{p}").parse().unwrap()
            );
        }
        assert_eq!(r.region(), "RegionOne");
        let r2 = seed_router("RegionTwo", "192.168.144.245", "");
        assert!(
            r2.listeners()
                .iter()
                .all(|l| l.spec.addr.ip().to_string() == "192.168.144.244")
        );
        assert!(
            r.listener(format!("{VIP1}:8774").parse().unwrap())
                .is_some()
        );
        assert!(
            r.listener("192.168.144.244:8774".parse().unwrap())
                .is_none()
        );
        // A dual-stack socket reports the VIP as an IPv4-mapped address.
        assert!(
            r.listener(format!("[::ffff:{VIP1}]:8774").parse().unwrap())
                .is_some()
        );
    }

    #[test]
    fn per_port_settings_reach_listeners_and_plans() {
        let r = seed_router(
            "RegionOne",
            "192.168.142.245",
            "[ports.9292]\nidle = \"6h\"\n[ports.8774]\nbackend = \"127.0.0.1:18774\"\n",
        );
        let glance = r.listener(format!("{VIP1}:9292").parse().unwrap()).unwrap();
        assert_eq!(glance.timeouts.idle, Duration::from_secs(6 * 3600));
        let plan = decide(&r, &format!("{VIP1}:9292"), "/v2/images", &[]).unwrap();
        assert_eq!(plan.timeouts.idle, Duration::from_secs(6 * 3600));
        let plan = decide(&r, &format!("{VIP1}:8774"), "/v2.1/servers", &[]).unwrap();
        assert_eq!(plan.upstream(), "127.0.0.1:18774");
        assert_eq!(plan.timeouts.idle, Duration::from_secs(60));
        // Transparent fallback uses the override too.
        let plan = decide(&r, &format!("{VIP1}:8774"), "/", &[]).unwrap();
        assert_eq!(plan.upstream(), "127.0.0.1:18774");
    }

    #[test]
    fn listener_hosts_must_be_ip_literals() {
        let mut catalog = Catalog::default();
        let text = r#"[{"Region": "R", "Service Type": "identity", "Interface": "public", "URL": "http://keystone.example:5000"}]"#;
        catalog.add_json(text, Path::new("hosts.json")).unwrap();
        let config = Config::from_str(
            "region = \"R\"\ncatalog = [\"hosts.json\"]\nbackend = \"10.0.0.5\"\n",
            Path::new("/r.toml"),
        )
        .unwrap();
        let err = Router::new(&config, catalog).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RoutingError::NotIpLiteral { .. }), "{msg}");
        for n in ["R_identity_public", "keystone.example:5000", "hosts.json"] {
            assert!(msg.contains(n), "{n} missing from: {msg}");
        }
    }

    #[test]
    fn router_new_validates_config_against_catalog() {
        let mut catalog = Catalog::default();
        let text = r#"[{"Region": "R", "Service Type": "identity", "Interface": "public", "URL": "http://10.0.0.1:5000"}]"#;
        catalog.add_json(text, Path::new("c.json")).unwrap();
        let config = Config::from_str(
            "region = \"S\"\ncatalog = [\"c.json\"]\nbackend = \"10.0.0.5\"\n",
            Path::new("/r.toml"),
        )
        .unwrap();
        let msg = Router::new(&config, catalog).unwrap_err().to_string();
        assert!(msg.contains("`region`") && msg.contains("/r.toml"), "{msg}");
    }

    /// What a row of a decision table expects.
    enum Want {
        /// Forwarded: the region, backend name and upstream chosen, and where the region
        /// came from.
        Routed {
            region: &'static str,
            backend: &'static str,
            upstream: &'static str,
            /// `None` for the transparent fallback, which reads no scope.
            source: Option<ScopeSource>,
        },
        /// Answered by the router: the status, and text the message must contain.
        Refused {
            status: u16,
            needles: &'static [&'static str],
        },
    }

    /// One request of a decision table.
    struct Case<'a> {
        name: &'a str,
        router: &'a Router,
        /// The address the client connected to.
        local: &'a str,
        path: &'a str,
        headers: Vec<(&'a str, &'a str)>,
        want: Want,
    }

    /// Runs every case and reports every failing one at once, not just the first.
    fn check_cases(cases: Vec<Case<'_>>) {
        let mut failures = Vec::new();
        for c in cases {
            let got = decide(c.router, c.local, c.path, &c.headers);
            let name = c.name;
            match (c.want, got) {
                (
                    Want::Routed {
                        region,
                        backend,
                        upstream,
                        source,
                    },
                    Result::Ok(plan),
                ) => {
                    let got = (
                        &*plan.region,
                        &*plan.backend_name,
                        plan.upstream(),
                        plan.scope_source(),
                    );
                    let want = (region, backend, upstream, source);
                    if got != want {
                        failures.push(format!("{name}: got {got:?}, want {want:?}"));
                    }
                }
                (Want::Refused { status, needles }, Result::Err(p)) => {
                    if p.status.as_u16() != status {
                        failures.push(format!("{name}: got {p}, want status {status}"));
                    }
                    for n in needles {
                        if !p.message.contains(n) {
                            failures.push(format!("{name}: {n:?} missing from {p}"));
                        }
                    }
                }
                (Want::Routed { backend, .. }, Result::Err(p)) => {
                    failures.push(format!("{name}: want {backend}, got {p}"));
                }
                (Want::Refused { status, .. }, Result::Ok(plan)) => {
                    failures.push(format!("{name}: want {status}, got {}", plan.backend_name));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} failing case(s):\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    /// docs/ARCHITECTURE.md §3.1–3.3 and §3.6 over the seed catalog, as RegionOne.
    #[test]
    fn decision_table_seed() {
        use ScopeSource as S;
        use Want::{Refused, Routed};
        let r = r1();
        let r_defaults = seed_router(
            "RegionOne",
            "192.168.142.245",
            "[scope.defaults]\ncompute = \"RegionTwo\"\nidentity = \"RegionTwo\"\n",
        );
        let nova = "192.168.142.244:8774";
        let keystone = "192.168.142.244:5000";
        let to2 = r#"{"compute": "RegionTwo"}"#;
        let cases: Vec<Case<'_>> = vec![
            Case {
                name: "no scope: current region",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![],
                want: Routed {
                    region: "RegionOne",
                    backend: "RegionOne_compute_public",
                    upstream: "192.168.142.245:8774",
                    source: Some(S::Defaults),
                },
            },
            Case {
                name: "X-Scope to RegionTwo",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("X-Scope", to2)],
                want: Routed {
                    region: "RegionTwo",
                    backend: "RegionTwo_compute_public",
                    upstream: "192.168.144.244:8774",
                    source: Some(S::XScope),
                },
            },
            Case {
                name: "X-Scope naming the current region",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("X-Scope", r#"{"compute": "RegionOne"}"#)],
                want: Routed {
                    region: "RegionOne",
                    backend: "RegionOne_compute_public",
                    upstream: "192.168.142.245:8774",
                    source: Some(S::XScope),
                },
            },
            Case {
                name: "longer prefix /v2/ goes to compute_legacy",
                router: &r,
                local: nova,
                path: "/v2/abc/servers",
                headers: vec![("X-Scope", r#"{"compute": "RegionTwo"}"#)],
                want: Routed {
                    region: "RegionOne",
                    backend: "RegionOne_compute_legacy_public",
                    upstream: "192.168.142.245:8774",
                    source: Some(S::Defaults),
                },
            },
            Case {
                name: "compute_legacy absent from scope: default",
                router: &r,
                local: nova,
                path: "/v2/abc/servers",
                headers: vec![("X-Scope", r#"{"compute_legacy": "RegionTwo"}"#)],
                want: Routed {
                    region: "RegionTwo",
                    backend: "RegionTwo_compute_legacy_public",
                    upstream: "192.168.144.244:8774",
                    source: Some(S::XScope),
                },
            },
            Case {
                name: "tie between public/internal/admin: first in catalog",
                router: &r,
                local: "192.168.142.244:9292",
                path: "/v2/images",
                headers: vec![],
                want: Routed {
                    region: "RegionOne",
                    backend: "RegionOne_image_public",
                    upstream: "192.168.142.245:9292",
                    source: Some(S::Defaults),
                },
            },
            Case {
                name: "admin port",
                router: &r,
                local: "192.168.142.244:35357",
                path: "/v3/users",
                headers: vec![("X-Scope", r#"{"identity": "RegionTwo"}"#)],
                want: Routed {
                    region: "RegionTwo",
                    backend: "RegionTwo_identity_admin",
                    upstream: "192.168.144.244:35357",
                    source: Some(S::XScope),
                },
            },
            Case {
                name: "token scope",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("X-Auth-Token", "gAAAA!SCOPE!{\"compute\": \"RegionTwo\"}")],
                want: Routed {
                    region: "RegionTwo",
                    backend: "RegionTwo_compute_public",
                    upstream: "192.168.144.244:8774",
                    source: Some(S::AuthToken),
                },
            },
            Case {
                name: "X-Scope wins over the token",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![
                    ("X-Scope", r#"{"compute": "RegionOne"}"#),
                    ("X-Auth-Token", "t!SCOPE!{\"compute\": \"RegionTwo\"}"),
                ],
                want: Routed {
                    region: "RegionOne",
                    backend: "RegionOne_compute_public",
                    upstream: "192.168.142.245:8774",
                    source: Some(S::XScope),
                },
            },
            Case {
                name: "empty X-Scope carries no scope",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![
                    ("X-Scope", " "),
                    ("X-Auth-Token", "t!SCOPE!{\"compute\": \"RegionTwo\"}"),
                ],
                want: Routed {
                    region: "RegionTwo",
                    backend: "RegionTwo_compute_public",
                    upstream: "192.168.144.244:8774",
                    source: Some(S::AuthToken),
                },
            },
            Case {
                name: "auth token wins over subject token",
                router: &r,
                local: keystone,
                path: "/v3/auth/tokens",
                headers: vec![
                    ("X-Auth-Token", "a!SCOPE!{\"identity\": \"RegionOne\"}"),
                    ("X-Subject-Token", "s!SCOPE!{\"identity\": \"RegionTwo\"}"),
                ],
                want: Routed {
                    region: "RegionOne",
                    backend: "RegionOne_identity_public",
                    upstream: "192.168.142.245:5000",
                    source: Some(S::AuthToken),
                },
            },
            Case {
                name: "subject token when the auth token has no scope",
                router: &r,
                local: keystone,
                path: "/v3/auth/tokens",
                headers: vec![
                    ("X-Auth-Token", "plain"),
                    ("X-Subject-Token", "s!SCOPE!{\"identity\": \"RegionTwo\"}"),
                ],
                want: Routed {
                    region: "RegionTwo",
                    backend: "RegionTwo_identity_public",
                    upstream: "192.168.144.244:5000",
                    source: Some(S::SubjectToken),
                },
            },
            Case {
                name: "token without scope text",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("X-Auth-Token", "t!SCOPE!")],
                want: Routed {
                    region: "RegionOne",
                    backend: "RegionOne_compute_public",
                    upstream: "192.168.142.245:8774",
                    source: Some(S::Defaults),
                },
            },
            Case {
                name: "percent-encoded scope",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("X-Scope", "%7B%22compute%22%3A%20%22RegionTwo%22%7D")],
                want: Routed {
                    region: "RegionTwo",
                    backend: "RegionTwo_compute_public",
                    upstream: "192.168.144.244:8774",
                    source: Some(S::XScope),
                },
            },
            Case {
                name: "percent-encoded scope in a token",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![(
                    "X-Auth-Token",
                    "t!SCOPE!%7B%22compute%22%3A%22RegionTwo%22%7D",
                )],
                want: Routed {
                    region: "RegionTwo",
                    backend: "RegionTwo_compute_public",
                    upstream: "192.168.144.244:8774",
                    source: Some(S::AuthToken),
                },
            },
            Case {
                name: "[scope.defaults] moves compute",
                router: &r_defaults,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![],
                want: Routed {
                    region: "RegionTwo",
                    backend: "RegionTwo_compute_public",
                    upstream: "192.168.144.244:8774",
                    source: Some(S::Defaults),
                },
            },
            Case {
                name: "request scope overrides [scope.defaults]",
                router: &r_defaults,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("X-Scope", r#"{"compute": "RegionOne"}"#)],
                want: Routed {
                    region: "RegionOne",
                    backend: "RegionOne_compute_public",
                    upstream: "192.168.142.245:8774",
                    source: Some(S::XScope),
                },
            },
            Case {
                name: "[scope.defaults] keep other keys",
                router: &r_defaults,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("X-Scope", r#"{"image": "RegionOne"}"#)],
                want: Routed {
                    region: "RegionTwo",
                    backend: "RegionTwo_compute_public",
                    upstream: "192.168.144.244:8774",
                    source: Some(S::Defaults),
                },
            },
            Case {
                name: "transparent: version discovery",
                router: &r,
                local: nova,
                path: "/",
                headers: vec![],
                want: Routed {
                    region: "RegionOne",
                    backend: "RegionOne_transparent_8774",
                    upstream: "192.168.142.245:8774",
                    source: None,
                },
            },
            Case {
                name: "transparent: /v2.1 without slash is no prefix match",
                router: &r,
                local: nova,
                path: "/v2.1",
                headers: vec![("X-Scope", to2)],
                want: Routed {
                    region: "RegionOne",
                    backend: "RegionOne_transparent_8774",
                    upstream: "192.168.142.245:8774",
                    source: None,
                },
            },
            Case {
                name: "transparent ignores a malformed scope",
                router: &r,
                local: nova,
                path: "/",
                headers: vec![("X-Scope", "garbage")],
                want: Routed {
                    region: "RegionOne",
                    backend: "RegionOne_transparent_8774",
                    upstream: "192.168.142.245:8774",
                    source: None,
                },
            },
            Case {
                name: "query is not part of the match",
                router: &r,
                local: nova,
                path: "/?x=/v2.1/",
                headers: vec![],
                want: Routed {
                    region: "RegionOne",
                    backend: "RegionOne_transparent_8774",
                    upstream: "192.168.142.245:8774",
                    source: None,
                },
            },
            Case {
                name: "Host header when the local address is unknown",
                router: &r,
                local: "127.0.0.1:4000",
                path: "/v2.1/servers",
                headers: vec![("Host", nova), ("X-Scope", to2)],
                want: Routed {
                    region: "RegionTwo",
                    backend: "RegionTwo_compute_public",
                    upstream: "192.168.144.244:8774",
                    source: Some(S::XScope),
                },
            },
            Case {
                name: "Host header local target uses that listener's backend",
                router: &r,
                local: "127.0.0.1:4000",
                path: "/v2.1/servers",
                headers: vec![("Host", nova)],
                want: Routed {
                    region: "RegionOne",
                    backend: "RegionOne_compute_public",
                    upstream: "192.168.142.245:8774",
                    source: Some(S::Defaults),
                },
            },
            Case {
                name: "unknown local address, no Host",
                router: &r,
                local: "127.0.0.1:4000",
                path: "/v2.1/servers",
                headers: vec![],
                want: Refused {
                    status: 421,
                    needles: &["127.0.0.1:4000"],
                },
            },
            Case {
                name: "unknown local address, Host without port is :80",
                router: &r,
                local: "127.0.0.1:4000",
                path: "/v2.1/servers",
                headers: vec![("Host", VIP1)],
                want: Refused {
                    status: 421,
                    needles: &[],
                },
            },
            Case {
                name: "not JSON",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("X-Scope", "compute=RegionTwo")],
                want: Refused {
                    status: 400,
                    needles: &["X-Scope", "JSON"],
                },
            },
            Case {
                name: "JSON but not an object",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("X-Scope", r#"["RegionTwo"]"#)],
                want: Refused {
                    status: 400,
                    needles: &["not a JSON object"],
                },
            },
            Case {
                name: "non-string value",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("X-Scope", r#"{"compute": 2}"#)],
                want: Refused {
                    status: 400,
                    needles: &["\"compute\"", "not a string"],
                },
            },
            Case {
                name: "null value",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("X-Scope", r#"{"image": null}"#)],
                want: Refused {
                    status: 400,
                    needles: &["\"image\""],
                },
            },
            Case {
                name: "two X-Scope headers are ambiguous, even when each is valid",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![
                    ("X-Scope", r#"{"compute": "RegionOne"}"#),
                    ("X-Scope", r#"{"compute": "RegionTwo"}"#),
                ],
                want: Refused {
                    status: 400,
                    needles: &["2 X-Scope", "ambiguous", "exactly one"],
                },
            },
            Case {
                name: "malformed token scope names the header",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("X-Auth-Token", "t!SCOPE!{compute")],
                want: Refused {
                    status: 400,
                    needles: &["X-Auth-Token"],
                },
            },
            Case {
                name: "valid JSON is never percent-decoded",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("X-Scope", r#"{"compute": "Region%54wo"}"#)],
                want: Refused {
                    status: 400,
                    needles: &["Region%54wo", "RegionOne, RegionTwo"],
                },
            },
            Case {
                name: "percent-decoding happens once only",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![(
                    "X-Scope",
                    "%257B%2522compute%2522%253A%2522RegionTwo%2522%257D",
                )],
                want: Refused {
                    status: 400,
                    needles: &["X-Scope"],
                },
            },
            Case {
                name: "unknown region",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("X-Scope", r#"{"compute": "RegionX"}"#)],
                want: Refused {
                    status: 400,
                    needles: &["RegionX", "compute", "RegionOne, RegionTwo"],
                },
            },
            Case {
                name: "unknown identity region",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("X-Scope", r#"{"identity": "RegionX"}"#)],
                want: Refused {
                    status: 400,
                    needles: &["RegionX", "identity"],
                },
            },
            Case {
                name: "loop",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("Via", "1.1 scope-router-RegionOne")],
                want: Refused {
                    status: 508,
                    needles: &["scope-router-RegionOne"],
                },
            },
            Case {
                name: "loop: the message names every hop and what each read",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![
                    (
                        "Via",
                        "1.1 scope-router-RegionOne (compute=RegionTwo from X-Scope), \
                         1.1 scope-router-RegionTwo (compute=RegionOne from defaults)",
                    ),
                    ("X-Scope", to2),
                ],
                want: Refused {
                    status: 508,
                    needles: &[
                        "scope-router-RegionOne (compute=RegionTwo from X-Scope) -> \
                         scope-router-RegionTwo (compute=RegionOne from defaults)",
                        "Here scope-router-RegionOne reads compute=RegionTwo from X-Scope again",
                    ],
                },
            },
            Case {
                name: "loop deeper in the chain",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("Via", "1.0 fred, 1.1 scope-router-RegionOne (x)")],
                want: Refused {
                    status: 508,
                    needles: &[],
                },
            },
            Case {
                name: "loop on a second Via line",
                router: &r,
                local: nova,
                path: "/",
                headers: vec![("Via", "1.1 proxy"), ("Via", "1.1 scope-router-RegionOne")],
                want: Refused {
                    status: 508,
                    needles: &[],
                },
            },
            Case {
                name: "another router's Via is fine",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("Via", "1.1 scope-router-RegionTwo")],
                want: Routed {
                    region: "RegionOne",
                    backend: "RegionOne_compute_public",
                    upstream: "192.168.142.245:8774",
                    source: Some(S::Defaults),
                },
            },
            Case {
                name: "a name that merely starts like ours is fine",
                router: &r,
                local: nova,
                path: "/v2.1/servers",
                headers: vec![("Via", "1.1 scope-router-RegionOneB")],
                want: Routed {
                    region: "RegionOne",
                    backend: "RegionOne_compute_public",
                    upstream: "192.168.142.245:8774",
                    source: Some(S::Defaults),
                },
            },
        ];
        check_cases(cases);
    }

    /// `A|B` scopes: the chain of alternatives, what the next router is told, and the
    /// 400s for alternatives that cannot serve.
    #[test]
    fn scope_alternatives_chain_and_errors() {
        let r = r1();
        let glance = "192.168.142.244:9292";
        let chain = |plan: &Plan| {
            let mut out = vec![plan.backend_name.to_string()];
            let mut next = plan.fallback.as_deref();
            while let Some(p) = next {
                out.push(p.backend_name.to_string());
                next = p.fallback.as_deref();
            }
            out
        };
        let plan = decide(
            &r,
            glance,
            "/v2/images",
            &[("X-Scope", r#"{"image": "RegionTwo|RegionOne"}"#)],
        )
        .unwrap();
        assert_eq!(
            chain(&plan),
            ["RegionTwo_image_public", "RegionOne_image_public"]
        );
        // RegionTwo is told only what is left without sending it back here.
        let (_, parts) = forward(
            &r,
            glance,
            "/v2/images",
            &[(
                "X-Scope",
                r#"{"image": "RegionTwo|RegionOne", "identity": "RegionOne"}"#,
            )],
        );
        assert_eq!(
            header(&parts, "x-scope"),
            Some(r#"{"identity":"RegionOne","image":"RegionTwo"}"#)
        );
        // A single region stays exactly as sent.
        let sent = r#"{"image": "RegionTwo", "identity": "RegionOne"}"#;
        let (_, parts) = forward(&r, glance, "/v2/images", &[("X-Scope", sent)]);
        assert_eq!(header(&parts, "x-scope"), Some(sent));
        let plan = decide(
            &r,
            glance,
            "/v2/images",
            &[("X-Scope", r#"{"image": "RegionOne | RegionTwo"}"#)],
        )
        .unwrap();
        assert_eq!(
            chain(&plan),
            ["RegionOne_image_public", "RegionTwo_image_public"]
        );

        for (scope, needles) in [
            (r#"{"image": "RegionTwo|"}"#, &["empty alternative"][..]),
            (r#"{"image": "|RegionOne"}"#, &["empty alternative"][..]),
            (
                r#"{"image": "RegionOne|RegionNine"}"#,
                &["RegionNine", "Known regions: RegionOne, RegionTwo"][..],
            ),
            (
                r#"{"image": "RegionOne", "identity": "RegionOne|Nowhere"}"#,
                &["Nowhere", "identity"][..],
            ),
        ] {
            let p = decide(&r, glance, "/v2/images", &[("X-Scope", scope)]).unwrap_err();
            assert_eq!(p.status.as_u16(), 400, "{scope}: {p}");
            for n in needles {
                assert!(p.message.contains(n), "{scope}: {n} missing from {p}");
            }
        }
    }

    /// Longest prefix, segment boundaries, path rewriting and missing services over a
    /// path-prefixed catalog.
    #[test]
    fn decision_table_prefixed() {
        let r = prefixed_router();
        let local = "10.0.0.1:80";
        let b = |st: &str| format!(r#"{{"{st}": "RegionB"}}"#);
        // (name, path, scope, backend, upstream, forwarded path-and-query)
        /// One request over the prefixed catalog.
        struct Row {
            name: &'static str,
            path: &'static str,
            /// The X-Scope sent; empty for none.
            scope: String,
            backend: &'static str,
            upstream: &'static str,
            /// The path and query the upstream receives.
            forwarded: &'static str,
        }
        let cases: Vec<Row> = vec![
            Row {
                name: "local keeps the path",
                path: "/compute/v2.1/servers?all=1",
                scope: String::new(),
                backend: "RegionA_compute_public",
                upstream: "127.0.0.1:8080",
                forwarded: "/compute/v2.1/servers?all=1",
            },
            Row {
                name: "remote replaces the prefix",
                path: "/compute/v2.1/p/servers?all=1",
                scope: b("compute"),
                backend: "RegionB_compute_public",
                upstream: "10.0.1.1:8774",
                forwarded: "/v2.1/p/servers?all=1",
            },
            Row {
                name: "prefix to empty path",
                path: "/identity/v3/auth/tokens",
                scope: b("identity"),
                backend: "RegionB_identity_public",
                upstream: "10.0.1.1:5000",
                forwarded: "/v3/auth/tokens",
            },
            Row {
                name: "bare prefix to empty path",
                path: "/identity",
                scope: b("identity"),
                backend: "RegionB_identity_public",
                upstream: "10.0.1.1:5000",
                forwarded: "/",
            },
            Row {
                name: "identity_admin is a longer, distinct prefix",
                path: "/identity_admin/v3/users",
                scope: b("identity"),
                backend: "RegionB_identity_admin",
                upstream: "10.0.1.1:35357",
                forwarded: "/v3/users",
            },
            Row {
                name: "segment boundary: /identityfoo is not /identity",
                path: "/identityfoo",
                scope: b("identity"),
                backend: "RegionA_dashboard_public",
                upstream: "127.0.0.1:8080",
                forwarded: "/identityfoo",
            },
            Row {
                name: "same prefix both sides",
                path: "/image/v2/images",
                scope: b("image"),
                backend: "RegionB_image_public",
                upstream: "10.0.1.1:9292",
                forwarded: "/image/v2/images",
            },
            Row {
                name: "tie: first in catalog order (image, not metric)",
                path: "/image/v2/images",
                scope: b("metric"),
                backend: "RegionA_image_public",
                upstream: "127.0.0.1:8080",
                forwarded: "/image/v2/images",
            },
            Row {
                name: "root entry catches the rest",
                path: "/auth/login/",
                scope: b("image"),
                backend: "RegionA_dashboard_public",
                upstream: "127.0.0.1:8080",
                forwarded: "/auth/login/",
            },
            Row {
                name: "https default port and IPv6 target",
                path: "/volume/v3/p/volumes",
                scope: b("volumev3"),
                backend: "RegionB_volumev3_public",
                upstream: "[fd00::2]:8776",
                forwarded: "/v3/p/volumes",
            },
        ];
        let mut failures = Vec::new();
        for c in cases {
            let headers: Vec<(&str, &str)> = if c.scope.is_empty() {
                vec![]
            } else {
                vec![("X-Scope", c.scope.as_str())]
            };
            let local = if c.path.starts_with("/volume") {
                "10.0.0.1:443"
            } else {
                local
            };
            let (plan, parts) = forward(&r, local, c.path, &headers);
            let got = (
                &*plan.backend_name,
                plan.upstream(),
                parts.uri.to_string(),
                plan.is_remote(),
                header(&parts, "host").filter(|_| plan.is_remote()),
            );
            let remote = c.backend.starts_with("RegionB");
            let want = (
                c.backend,
                c.upstream,
                c.forwarded.to_owned(),
                remote,
                remote.then_some(c.upstream),
            );
            if got != want {
                failures.push(format!("{}: got {got:?}, want {want:?}", c.name));
            }
        }
        assert!(
            failures.is_empty(),
            "{} failing case(s):\n{}",
            failures.len(),
            failures.join("\n")
        );
        // RegionB has no placement: 400 naming the region and who offers it.
        let p = decide(
            &r,
            local,
            "/placement/allocations",
            &[("X-Scope", &b("placement"))],
        )
        .unwrap_err();
        assert_eq!(p.status.as_u16(), 400);
        for n in [
            "RegionB",
            "placement",
            "public",
            "offers it: RegionA",
            "known regions: RegionA, RegionB",
        ] {
            assert!(p.message.contains(n), "{n} missing from {p}");
        }
        let volume = r.listener_at("10.0.0.1:443".parse().unwrap()).unwrap();
        assert!(volume.tls().is_some(), "https:// terminates TLS");
        let plain = r.listener_at(local.parse().unwrap()).unwrap();
        assert!(plain.tls().is_none(), "http:// stays cleartext");
    }

    /// docs/ARCHITECTURE.md §3.4/§3.5 header rewrites.
    #[test]
    fn rewrites() {
        let r = r1();
        let nova = "192.168.142.244:8774";
        let scope2 = r#"{"compute": "RegionTwo", "identity": "RegionTwo"}"#;
        let auth = format!("gAAAAtok!SCOPE!{scope2}");
        let subject = "gAAAAsub!SCOPE!{\"identity\": \"RegionTwo\"}";

        // Remote compute: Host and path rewritten; the scope travels on, so both tokens
        // arrive at the next router exactly as the client sent them.
        let (_, p) = forward(
            &r,
            nova,
            "/v2.1/servers/detail?limit=1",
            &[
                ("Host", nova),
                ("X-Auth-Token", &auth),
                ("X-Subject-Token", subject),
                ("X-Forwarded-For", "1.2.3.4"),
                ("Via", "1.0 edge"),
                ("X-Identity-Region", "Spoofed"),
            ],
        );
        assert_eq!(header(&p, "host"), Some("192.168.144.244:8774"));
        assert_eq!(p.uri.to_string(), "/v2.1/servers/detail?limit=1");
        assert_eq!(header(&p, "x-auth-token"), Some(auth.as_str()));
        assert_eq!(header(&p, "x-subject-token"), Some(subject));
        // The token's scope names both decisions: no X-Scope needs adding.
        assert_eq!(header(&p, "x-scope"), None);
        assert_eq!(header(&p, "x-identity-region"), Some("RegionTwo"));
        assert_eq!(
            header(&p, "x-identity-url"),
            Some("http://192.168.144.244:35357")
        );
        assert_eq!(header(&p, "x-forwarded-for"), Some("1.2.3.4, 10.9.9.9"));
        assert_eq!(
            header(&p, "via"),
            Some("1.0 edge, 1.1 scope-router-RegionOne (compute=RegionTwo from X-Auth-Token)")
        );
        assert_eq!(p.headers.get_all("via").iter().count(), 1);

        // Remote identity: still nothing stripped; that is the last router's job.
        let (plan, p) = forward(
            &r,
            "192.168.142.244:5000",
            "/v3/auth/tokens",
            &[
                ("Host", "192.168.142.244:5000"),
                ("X-Auth-Token", &auth),
                ("X-Subject-Token", subject),
            ],
        );
        assert_eq!(&*plan.backend_name, "RegionTwo_identity_public");
        assert_eq!(header(&p, "x-auth-token"), Some(auth.as_str()));
        assert_eq!(header(&p, "x-subject-token"), Some(subject));
        assert_eq!(header(&p, "host"), Some("192.168.144.244:5000"));

        // Remote by a partial scope: what this router took from its defaults (identity)
        // is pinned in X-Scope, so the next router cannot fall back to its own.
        let (_, p) = forward(
            &r,
            nova,
            "/v2.1/servers",
            &[("X-Scope", r#"{"compute": "RegionTwo"}"#)],
        );
        assert_eq!(
            header(&p, "x-scope"),
            Some(r#"{"compute":"RegionTwo","identity":"RegionOne"}"#)
        );
        assert_eq!(header(&p, "x-identity-region"), Some("RegionOne"));

        // Local identity: the scope is cut off both tokens.
        let (plan, p) = forward(
            &r,
            "192.168.142.244:5000",
            "/v3/auth/tokens",
            &[
                (
                    "X-Auth-Token",
                    "gAAAAtok!SCOPE!{\"identity\": \"RegionOne\"}",
                ),
                (
                    "X-Subject-Token",
                    "gAAAAsub!SCOPE!{\"identity\": \"RegionTwo\"}",
                ),
            ],
        );
        assert!(!plan.is_remote());
        assert_eq!(header(&p, "x-auth-token"), Some("gAAAAtok"));
        assert_eq!(header(&p, "x-subject-token"), Some("gAAAAsub"));

        // Local target: Host and path untouched; identity defaults to the current region.
        let (plan, p) = forward(
            &r,
            nova,
            "/v2.1/servers",
            &[("Host", "nova.example:8774"), ("X-Subject-Token", subject)],
        );
        assert!(!plan.is_remote());
        assert_eq!(header(&p, "host"), Some("nova.example:8774"));
        assert_eq!(p.uri.to_string(), "/v2.1/servers");
        assert_eq!(header(&p, "x-subject-token"), Some("gAAAAsub"));
        // The subject token's scope is the request scope here: identity goes to RegionTwo.
        assert_eq!(header(&p, "x-identity-region"), Some("RegionTwo"));
        let (_, p) = forward(&r, nova, "/v2.1/servers", &[]);
        assert_eq!(header(&p, "x-identity-region"), Some("RegionOne"));
        assert_eq!(
            header(&p, "x-identity-url"),
            Some("http://192.168.142.244:35357")
        );
        assert_eq!(header(&p, "x-forwarded-for"), Some("10.9.9.9"));
        assert_eq!(header(&p, "via"), Some("1.1 scope-router-RegionOne"));

        // Identity region from [scope.defaults] when the request does not say.
        let rd = seed_router(
            "RegionOne",
            "192.168.142.245",
            "[scope.defaults]\nidentity = \"RegionTwo\"\n",
        );
        let (_, p) = forward(&rd, nova, "/v2.1/servers", &[]);
        assert_eq!(header(&p, "x-identity-region"), Some("RegionTwo"));

        // Transparent: nothing scope-related changes, but Via/XFF are still added.
        let (plan, p) = forward(
            &r,
            nova,
            "/",
            &[
                ("X-Subject-Token", subject),
                ("X-Auth-Token", &auth),
                ("X-Identity-Region", "Mine"),
            ],
        );
        assert!(plan.service_type().is_none());
        assert_eq!(header(&p, "x-subject-token"), Some(subject));
        assert_eq!(header(&p, "x-auth-token"), Some(auth.as_str()));
        assert_eq!(header(&p, "x-identity-region"), Some("Mine"));
        assert_eq!(header(&p, "via"), Some("1.1 scope-router-RegionOne"));
        assert_eq!(header(&p, "x-forwarded-for"), Some("10.9.9.9"));
    }

    #[test]
    fn apply_uses_the_head_peer_and_maps_ipv4_in_ipv6() {
        let r = r1();
        let mut parts = request("/v2.1/servers", &[]);
        let plan = {
            let head = RequestHead {
                local: "192.168.142.244:8774".parse().unwrap(),
                peer: "[::ffff:10.1.2.3]:4444".parse().unwrap(),
                method: &parts.method,
                uri: &parts.uri,
                headers: &parts.headers,
            };
            r.decide(&head).unwrap()
        };
        let head_headers = parts.headers.clone();
        let uri = parts.uri.clone();
        let method = parts.method.clone();
        let head = RequestHead {
            local: "192.168.142.244:8774".parse().unwrap(),
            peer: "[::ffff:10.1.2.3]:4444".parse().unwrap(),
            method: &method,
            uri: &uri,
            headers: &head_headers,
        };
        plan.apply(&head, &mut parts);
        assert_eq!(header(&parts, "x-forwarded-for"), Some("10.1.2.3"));
    }

    #[test]
    fn non_utf8_scope_is_a_bad_request() {
        let r = r1();
        let mut parts = request("/v2.1/servers", &[]);
        parts.headers.insert(
            "x-scope",
            HeaderValue::from_bytes(b"{\"compute\": \"\xff\"}").unwrap(),
        );
        let head = RequestHead {
            local: "192.168.142.244:8774".parse().unwrap(),
            peer: PEER.parse().unwrap(),
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        };
        let p = r.decide(&head).unwrap_err();
        assert_eq!(p.status.as_u16(), 400);
        assert!(p.message.contains("UTF-8"), "{p}");
    }

    #[test]
    fn join_path_has_one_slash() {
        let cases = [
            ("", "", "/"),
            ("", "v3", "/v3"),
            ("", "/v3", "/v3"),
            ("/identity", "", "/identity"),
            ("/identity", "/v3", "/identity/v3"),
            ("/identity", "v3", "/identity/v3"),
            ("/v2.1/", "servers", "/v2.1/servers"),
            ("/v2.1/", "/servers", "/v2.1/servers"),
        ];
        for (to, rest, want) in cases {
            let mut out = String::new();
            crate::decision::join_path(&mut out, to, rest);
            assert_eq!(out, want, "{to:?} + {rest:?}");
        }
    }

    #[test]
    fn prefix_matching() {
        let cases = [
            ("", "/anything", true),
            ("/v2.1/", "/v2.1/servers", true),
            ("/v2.1/", "/v2.1", false),
            ("/identity", "/identity", true),
            ("/identity", "/identity/v3", true),
            ("/identity", "/identityfoo", false),
            ("/v2/", "/v2.1/x", false),
        ];
        for (prefix, path, want) in cases {
            assert_eq!(prefix_matches(prefix, path), want, "{prefix:?} vs {path:?}");
        }
    }
}
