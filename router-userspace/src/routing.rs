//! The routing table built once from config + catalog, and the per-request decision (DESIGN §3, §4).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderValue;
use http::header::{HOST, VIA};

use crate::catalog::{Catalog, Endpoint, split_host_port};
use crate::config::{Config, ConfigError, Timeouts};
use crate::decision::{
    Plan, RequestHead, Rewrite, SCOPE_MARKER, ScopeSource, X_AUTH_TOKEN, X_SCOPE, X_SUBJECT_TOKEN,
    find,
};
use crate::problem::Problem;

/// A scoped listener derived from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// VIP:port from the catalog.
    pub addr: SocketAddr,
    /// Where local-region requests go (`backend`:port or `[ports.N] backend`).
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

/// Where a matched service goes in one region.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) region: Arc<str>,
    pub(crate) backend_name: Arc<str>,
    pub(crate) upstream: Arc<str>,
    /// `None` for the current region: local backend, Host and path unchanged.
    pub(crate) remote: Option<Remote>,
}

#[derive(Debug)]
pub(crate) struct Remote {
    pub(crate) host: HeaderValue,
    pub(crate) path: Arc<str>,
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

/// Per-listener lookup data, parallel to `Router::listeners`.
#[derive(Debug)]
pub(crate) struct ListenerRoutes {
    /// Longest path first; equal lengths keep catalog order, so the first match wins.
    pub(crate) routes: Vec<Route>,
    pub(crate) transparent_name: Arc<str>,
    pub(crate) local_upstream: Arc<str>,
}

/// The immutable routing table, shared as `Arc<Router>`.
#[derive(Debug)]
pub struct Router {
    region: Arc<str>,
    via: HeaderValue,
    via_name: Arc<str>,
    catalog: Catalog,
    regions: Vec<Arc<str>>,
    listeners: Vec<ListenerSpec>,
    routes: Vec<ListenerRoutes>,
    /// `[scope.defaults]`; service types absent here default to the current region.
    defaults: HashMap<String, Arc<str>>,
    /// `X-Identity-Region`/`X-Identity-Url` per region with an identity endpoint.
    identity: Vec<(Arc<str>, HeaderValue, HeaderValue)>,
}

impl Router {
    /// Builds the table; validates the catalog-dependent config keys.
    pub fn new(config: &Config, catalog: Catalog) -> Result<Router, RoutingError> {
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

        let mut listeners: Vec<ListenerSpec> = Vec::new();
        let mut routes: Vec<ListenerRoutes> = Vec::new();
        for entry in catalog.entries().iter().filter(|e| e.region == region) {
            let ip = entry.url.ip().ok_or_else(|| RoutingError::NotIpLiteral {
                backend: entry.backend_name(),
                url: entry.url.to_string(),
                source_file: entry.source.to_path_buf(),
            })?;
            let addr = SocketAddr::new(ip.to_canonical(), entry.url.port());
            let index = match listeners.iter().position(|l| l.addr == addr) {
                Some(i) => i,
                None => {
                    let local_backend = config.port_backend(addr.port());
                    listeners.push(ListenerSpec {
                        addr,
                        local_backend,
                        timeouts: config.port_timeouts(addr.port()),
                    });
                    routes.push(ListenerRoutes {
                        routes: Vec::new(),
                        transparent_name: Arc::from(format!(
                            "{region}_transparent_{}",
                            addr.port()
                        )),
                        local_upstream: Arc::from(local_backend.to_string()),
                    });
                    listeners.len() - 1
                }
            };
            let local_upstream = Arc::clone(&routes[index].local_upstream);
            let targets = build_targets(&catalog, &regions, &region, entry, &local_upstream)?;
            routes[index].routes.push(Route {
                service_type: Arc::clone(&entry.service_type),
                interface: Arc::clone(&entry.interface),
                path: Arc::clone(&entry.url.path),
                targets,
            });
        }
        for l in &mut routes {
            // Stable sort: ties keep catalog order (DESIGN §3.1).
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

        Ok(Router {
            region,
            via,
            via_name,
            catalog,
            regions,
            listeners,
            routes,
            defaults,
            identity,
        })
    }

    /// Loads the catalog the config names and builds the table.
    pub fn from_config(config: &Config) -> Result<Router, RoutingError> {
        let catalog = config.load_catalog()?;
        Router::new(config, catalog)
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

    /// Every distinct `host:port` of the current region.
    pub fn listeners(&self) -> &[ListenerSpec] {
        &self.listeners
    }

    /// The listener for an accepted socket's local address.
    pub fn listener(&self, local: SocketAddr) -> Option<&ListenerSpec> {
        self.listener_index(local).map(|i| &self.listeners[i])
    }

    /// Routes of listener `i`, in match order (for `check`).
    pub(crate) fn listener_routes(&self, i: usize) -> &ListenerRoutes {
        &self.routes[i]
    }

    fn listener_index(&self, local: SocketAddr) -> Option<usize> {
        // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
        let local = SocketAddr::new(local.ip().to_canonical(), local.port());
        self.listeners.iter().position(|l| l.addr == local)
    }

    /// The default region of a service type (`[scope.defaults]`, else the current region).
    pub fn default_region(&self, service_type: &str) -> &Arc<str> {
        self.defaults.get(service_type).unwrap_or(&self.region)
    }

    /// Decides where a request goes (pure, no I/O).
    pub fn decide(&self, head: &RequestHead<'_>) -> Result<Plan, Problem> {
        if self.via_names_me(head.headers) {
            return Err(Problem::loop_detected(&self.via_name));
        }
        let path = head.uri.path();
        let local = self.listener_index(head.local);
        let matched = local
            .and_then(|i| self.match_route(i, path).map(|r| (i, r)))
            .or_else(|| {
                let i = self.host_listener(head.headers)?;
                self.match_route(i, path).map(|r| (i, r))
            });
        let Some((listener, route)) = matched else {
            return self.transparent(head, local);
        };

        let scope = Scope::read(head.headers)?;
        let region = scope
            .region_for(&route.service_type)
            .unwrap_or_else(|| self.default_region(&route.service_type));
        let target = route
            .targets
            .iter()
            .find(|t| *t.region == *region)
            .ok_or_else(|| self.missing_region(region, &route.service_type, &route.interface))?;

        let identity_region = scope
            .region_for("identity")
            .unwrap_or_else(|| self.default_region("identity"));
        let identity = match self
            .identity
            .iter()
            .find(|(r, _, _)| **r == *identity_region)
        {
            Some((_, r, u)) => Some((r.clone(), u.clone())),
            None if self.regions.iter().any(|r| **r == *identity_region) => None,
            None => {
                return Err(Problem::unknown_region(
                    identity_region,
                    "identity",
                    &self.regions,
                ));
            }
        };

        let (host, path_rewrite) = match &target.remote {
            Some(remote) => (
                Some(remote.host.clone()),
                Some((Arc::clone(&route.path), Arc::clone(&remote.path))),
            ),
            None => (None, None),
        };
        Ok(Plan {
            upstream: Arc::clone(&target.upstream),
            backend_name: Arc::clone(&target.backend_name),
            service_type: Some(Arc::clone(&route.service_type)),
            interface: Some(Arc::clone(&route.interface)),
            region: Arc::clone(&target.region),
            scope_source: scope.source,
            timeouts: self.listeners[listener].timeouts,
            rewrite: Rewrite {
                scoped: true,
                strip_auth_token: &*route.service_type == "identity",
                path: path_rewrite,
                host,
                identity,
                via: self.via.clone(),
            },
        })
    }

    fn transparent(&self, head: &RequestHead<'_>, local: Option<usize>) -> Result<Plan, Problem> {
        let Some(i) = local else {
            return Err(Problem::misdirected(head.local));
        };
        let l = &self.routes[i];
        Ok(Plan {
            upstream: Arc::clone(&l.local_upstream),
            backend_name: Arc::clone(&l.transparent_name),
            service_type: None,
            interface: None,
            region: Arc::clone(&self.region),
            scope_source: ScopeSource::None,
            timeouts: self.listeners[i].timeouts,
            rewrite: Rewrite {
                scoped: false,
                strip_auth_token: false,
                path: None,
                host: None,
                identity: None,
                via: self.via.clone(),
            },
        })
    }

    fn match_route(&self, listener: usize, path: &str) -> Option<&Route> {
        self.routes[listener]
            .routes
            .iter()
            .find(|r| prefix_matches(&r.path, path))
    }

    /// The listener named by the `Host` header (port 80 when absent).
    fn host_listener(&self, headers: &http::HeaderMap) -> Option<usize> {
        let host = headers.get(HOST)?.to_str().ok()?;
        let (host, port) = split_host_port(host.trim()).ok()?;
        let ip: IpAddr = host.parse().ok()?;
        self.listener_index(SocketAddr::new(ip, port.unwrap_or(80)))
    }

    fn via_names_me(&self, headers: &http::HeaderMap) -> bool {
        headers.get_all(VIA).iter().any(|v| {
            String::from_utf8_lossy(v.as_bytes()).split(',').any(|hop| {
                // `protocol received-by [comment]`
                hop.split_whitespace()
                    .nth(1)
                    .is_some_and(|by| by.eq_ignore_ascii_case(&self.via_name))
            })
        })
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
            Problem::region_lacks_service(region, service_type, interface, &offering)
        } else {
            Problem::unknown_region(region, service_type, &self.regions)
        }
    }
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

fn build_targets(
    catalog: &Catalog,
    regions: &[Arc<str>],
    current: &Arc<str>,
    entry: &Endpoint,
    local_upstream: &Arc<str>,
) -> Result<Vec<Target>, RoutingError> {
    let mut targets = Vec::with_capacity(regions.len());
    for region in regions {
        if region == current {
            targets.push(Target {
                region: Arc::clone(region),
                backend_name: Arc::from(entry.backend_name()),
                upstream: Arc::clone(local_upstream),
                remote: None,
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
        targets.push(Target {
            region: Arc::clone(region),
            backend_name: Arc::from(t.backend_name()),
            upstream: Arc::clone(&t.url.authority),
            remote: Some(Remote {
                host,
                path: Arc::clone(&t.url.path),
            }),
        });
    }
    Ok(targets)
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

/// The request scope: service type → region, as sent by the client.
struct Scope {
    source: ScopeSource,
    map: serde_json::Map<String, serde_json::Value>,
}

impl Scope {
    /// Reads the first header that carries a scope (DESIGN §3.2) and validates it.
    fn read(headers: &http::HeaderMap) -> Result<Scope, Problem> {
        let found = if let Some(v) = headers
            .get(&X_SCOPE)
            .filter(|v| !trim(v.as_bytes()).is_empty())
        {
            Some((ScopeSource::XScope, v.as_bytes()))
        } else {
            [
                (ScopeSource::AuthToken, &X_AUTH_TOKEN),
                (ScopeSource::SubjectToken, &X_SUBJECT_TOKEN),
            ]
            .into_iter()
            .find_map(|(source, name)| {
                let v = headers.get(name)?.as_bytes();
                let after = &v[find(v, SCOPE_MARKER)? + SCOPE_MARKER.len()..];
                (!trim(after).is_empty()).then_some((source, after))
            })
        };
        let Some((source, raw)) = found else {
            return Ok(Scope {
                source: ScopeSource::None,
                map: serde_json::Map::new(),
            });
        };
        let name = source.as_str();
        let text = std::str::from_utf8(trim(raw))
            .map_err(|_| Problem::malformed_scope(name, "not UTF-8"))?;
        let value = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) => v,
            Err(e) if !text.contains('%') => {
                return Err(Problem::malformed_scope(
                    name,
                    format_args!("not JSON: {e}"),
                ));
            }
            // Clients that URL-encode the scope (it travels inside a token) get one decode.
            Err(_) => {
                let decoded = percent_encoding::percent_decode_str(text)
                    .decode_utf8()
                    .map_err(|_| Problem::malformed_scope(name, "percent-decodes to non-UTF-8"))?;
                serde_json::from_str(&decoded).map_err(|e| {
                    Problem::malformed_scope(
                        name,
                        format_args!("not JSON even after percent-decoding: {e}"),
                    )
                })?
            }
        };
        let serde_json::Value::Object(map) = value else {
            return Err(Problem::malformed_scope(name, "not a JSON object"));
        };
        if let Some((k, _)) = map.iter().find(|(_, v)| !v.is_string()) {
            return Err(Problem::malformed_scope(
                name,
                format_args!("the value of \"{k}\" is not a string region name"),
            ));
        }
        Ok(Scope { source, map })
    }

    fn region_for(&self, service_type: &str) -> Option<&str> {
        self.map
            .get(service_type)
            .and_then(serde_json::Value::as_str)
    }
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}
