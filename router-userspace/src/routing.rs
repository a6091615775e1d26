//! The routing table built once from config + catalog, and the per-request decision (DESIGN §3, §4).
//!
//! Everything that does not depend on the request (listener lists sorted for prefix
//! matching, targets per region, `Host`/`Via`/`X-Identity-*` header values) is computed in
//! [`Router::new`], so `decide` only compares strings and bumps reference counts; it
//! allocates only to parse a scope the client sent.
//!
//! Prefix matching respects path segments: `/identity` matches `/identity/v3` but not
//! `/identityfoo`; prefixes ending in `/` (URLs cut at a template) are plain prefixes.
//! A request that matches no entry on its listener nor via `Host` is forwarded unchanged
//! to the listener's local backend; on an address that is no listener it gets 421.

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
        // A dual-stack socket reports an IPv4 local address as ::ffff:a.b.c.d.
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
            Problem::region_lacks_service(region, service_type, interface, &self.regions, &offering)
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
        let text = "region = \"RegionA\"\ncatalog = [\"a.json\"]\nbackend = \"10.0.0.5\"\n\
                    [ports.80]\nbackend = \"127.0.0.1:8080\"\n";
        let config = Config::from_str(text, Path::new("/etc/router.toml")).unwrap();
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
        let addrs: Vec<String> = r.listeners().iter().map(|l| l.addr.to_string()).collect();
        let ports = [5000, 35357, 9292, 8774, 9696, 8780];
        assert_eq!(addrs, ports.map(|p| format!("{VIP1}:{p}")));
        for (l, p) in r.listeners().iter().zip(ports) {
            assert_eq!(
                l.local_backend,
                format!("192.168.142.245:{p}").parse().unwrap()
            );
        }
        assert_eq!(r.region(), "RegionOne");
        let r2 = seed_router("RegionTwo", "192.168.144.245", "");
        assert!(
            r2.listeners()
                .iter()
                .all(|l| l.addr.ip().to_string() == "192.168.144.244")
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
        assert_eq!(&*plan.upstream, "127.0.0.1:18774");
        assert_eq!(plan.timeouts.idle, Duration::from_secs(60));
        // Transparent fallback uses the override too.
        let plan = decide(&r, &format!("{VIP1}:8774"), "/", &[]).unwrap();
        assert_eq!(&*plan.upstream, "127.0.0.1:18774");
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

    enum Want {
        /// region, backend name, upstream, scope source
        Ok(&'static str, &'static str, &'static str, ScopeSource),
        /// status, substrings of the message
        Err(u16, &'static [&'static str]),
    }

    /// DESIGN §3.1–3.3 and §3.6 over the seed catalog, as RegionOne.
    #[test]
    fn decision_table_seed() {
        use ScopeSource as S;
        use Want::{Err, Ok};
        let r = r1();
        let r_defaults = seed_router(
            "RegionOne",
            "192.168.142.245",
            "[scope.defaults]\ncompute = \"RegionTwo\"\nidentity = \"RegionTwo\"\n",
        );
        let nova = "192.168.142.244:8774";
        let keystone = "192.168.142.244:5000";
        let to2 = r#"{"compute": "RegionTwo"}"#;
        // (name, router, local address, path, headers, expectation)
        type Row<'a> = (
            &'a str,
            &'a Router,
            &'a str,
            &'a str,
            Vec<(&'a str, &'a str)>,
            Want,
        );
        let cases: Vec<Row<'_>> = vec![
            (
                "no scope: current region",
                &r,
                nova,
                "/v2.1/servers",
                vec![],
                Ok(
                    "RegionOne",
                    "RegionOne_compute_public",
                    "192.168.142.245:8774",
                    S::None,
                ),
            ),
            (
                "X-Scope to RegionTwo",
                &r,
                nova,
                "/v2.1/servers",
                vec![("X-Scope", to2)],
                Ok(
                    "RegionTwo",
                    "RegionTwo_compute_public",
                    "192.168.144.244:8774",
                    S::XScope,
                ),
            ),
            (
                "X-Scope naming the current region",
                &r,
                nova,
                "/v2.1/servers",
                vec![("X-Scope", r#"{"compute": "RegionOne"}"#)],
                Ok(
                    "RegionOne",
                    "RegionOne_compute_public",
                    "192.168.142.245:8774",
                    S::XScope,
                ),
            ),
            (
                "longer prefix /v2/ goes to compute_legacy",
                &r,
                nova,
                "/v2/abc/servers",
                vec![("X-Scope", r#"{"compute": "RegionTwo"}"#)],
                Ok(
                    "RegionOne",
                    "RegionOne_compute_legacy_public",
                    "192.168.142.245:8774",
                    S::XScope,
                ),
            ),
            (
                "compute_legacy absent from scope: default",
                &r,
                nova,
                "/v2/abc/servers",
                vec![("X-Scope", r#"{"compute_legacy": "RegionTwo"}"#)],
                Ok(
                    "RegionTwo",
                    "RegionTwo_compute_legacy_public",
                    "192.168.144.244:8774",
                    S::XScope,
                ),
            ),
            (
                "tie between public/internal/admin: first in catalog",
                &r,
                "192.168.142.244:9292",
                "/v2/images",
                vec![],
                Ok(
                    "RegionOne",
                    "RegionOne_image_public",
                    "192.168.142.245:9292",
                    S::None,
                ),
            ),
            (
                "admin port",
                &r,
                "192.168.142.244:35357",
                "/v3/users",
                vec![("X-Scope", r#"{"identity": "RegionTwo"}"#)],
                Ok(
                    "RegionTwo",
                    "RegionTwo_identity_admin",
                    "192.168.144.244:35357",
                    S::XScope,
                ),
            ),
            (
                "token scope",
                &r,
                nova,
                "/v2.1/servers",
                vec![("X-Auth-Token", "gAAAA!SCOPE!{\"compute\": \"RegionTwo\"}")],
                Ok(
                    "RegionTwo",
                    "RegionTwo_compute_public",
                    "192.168.144.244:8774",
                    S::AuthToken,
                ),
            ),
            (
                "X-Scope wins over the token",
                &r,
                nova,
                "/v2.1/servers",
                vec![
                    ("X-Scope", r#"{"compute": "RegionOne"}"#),
                    ("X-Auth-Token", "t!SCOPE!{\"compute\": \"RegionTwo\"}"),
                ],
                Ok(
                    "RegionOne",
                    "RegionOne_compute_public",
                    "192.168.142.245:8774",
                    S::XScope,
                ),
            ),
            (
                "empty X-Scope carries no scope",
                &r,
                nova,
                "/v2.1/servers",
                vec![
                    ("X-Scope", " "),
                    ("X-Auth-Token", "t!SCOPE!{\"compute\": \"RegionTwo\"}"),
                ],
                Ok(
                    "RegionTwo",
                    "RegionTwo_compute_public",
                    "192.168.144.244:8774",
                    S::AuthToken,
                ),
            ),
            (
                "auth token wins over subject token",
                &r,
                keystone,
                "/v3/auth/tokens",
                vec![
                    ("X-Auth-Token", "a!SCOPE!{\"identity\": \"RegionOne\"}"),
                    ("X-Subject-Token", "s!SCOPE!{\"identity\": \"RegionTwo\"}"),
                ],
                Ok(
                    "RegionOne",
                    "RegionOne_identity_public",
                    "192.168.142.245:5000",
                    S::AuthToken,
                ),
            ),
            (
                "subject token when the auth token has no scope",
                &r,
                keystone,
                "/v3/auth/tokens",
                vec![
                    ("X-Auth-Token", "plain"),
                    ("X-Subject-Token", "s!SCOPE!{\"identity\": \"RegionTwo\"}"),
                ],
                Ok(
                    "RegionTwo",
                    "RegionTwo_identity_public",
                    "192.168.144.244:5000",
                    S::SubjectToken,
                ),
            ),
            (
                "token without scope text",
                &r,
                nova,
                "/v2.1/servers",
                vec![("X-Auth-Token", "t!SCOPE!")],
                Ok(
                    "RegionOne",
                    "RegionOne_compute_public",
                    "192.168.142.245:8774",
                    S::None,
                ),
            ),
            (
                "percent-encoded scope",
                &r,
                nova,
                "/v2.1/servers",
                vec![("X-Scope", "%7B%22compute%22%3A%20%22RegionTwo%22%7D")],
                Ok(
                    "RegionTwo",
                    "RegionTwo_compute_public",
                    "192.168.144.244:8774",
                    S::XScope,
                ),
            ),
            (
                "percent-encoded scope in a token",
                &r,
                nova,
                "/v2.1/servers",
                vec![(
                    "X-Auth-Token",
                    "t!SCOPE!%7B%22compute%22%3A%22RegionTwo%22%7D",
                )],
                Ok(
                    "RegionTwo",
                    "RegionTwo_compute_public",
                    "192.168.144.244:8774",
                    S::AuthToken,
                ),
            ),
            (
                "[scope.defaults] moves compute",
                &r_defaults,
                nova,
                "/v2.1/servers",
                vec![],
                Ok(
                    "RegionTwo",
                    "RegionTwo_compute_public",
                    "192.168.144.244:8774",
                    S::None,
                ),
            ),
            (
                "request scope overrides [scope.defaults]",
                &r_defaults,
                nova,
                "/v2.1/servers",
                vec![("X-Scope", r#"{"compute": "RegionOne"}"#)],
                Ok(
                    "RegionOne",
                    "RegionOne_compute_public",
                    "192.168.142.245:8774",
                    S::XScope,
                ),
            ),
            (
                "[scope.defaults] keep other keys",
                &r_defaults,
                nova,
                "/v2.1/servers",
                vec![("X-Scope", r#"{"image": "RegionOne"}"#)],
                Ok(
                    "RegionTwo",
                    "RegionTwo_compute_public",
                    "192.168.144.244:8774",
                    S::XScope,
                ),
            ),
            (
                "transparent: version discovery",
                &r,
                nova,
                "/",
                vec![],
                Ok(
                    "RegionOne",
                    "RegionOne_transparent_8774",
                    "192.168.142.245:8774",
                    S::None,
                ),
            ),
            (
                "transparent: /v2.1 without slash is no prefix match",
                &r,
                nova,
                "/v2.1",
                vec![("X-Scope", to2)],
                Ok(
                    "RegionOne",
                    "RegionOne_transparent_8774",
                    "192.168.142.245:8774",
                    S::None,
                ),
            ),
            (
                "transparent ignores a malformed scope",
                &r,
                nova,
                "/",
                vec![("X-Scope", "garbage")],
                Ok(
                    "RegionOne",
                    "RegionOne_transparent_8774",
                    "192.168.142.245:8774",
                    S::None,
                ),
            ),
            (
                "query is not part of the match",
                &r,
                nova,
                "/?x=/v2.1/",
                vec![],
                Ok(
                    "RegionOne",
                    "RegionOne_transparent_8774",
                    "192.168.142.245:8774",
                    S::None,
                ),
            ),
            (
                "Host header when the local address is unknown",
                &r,
                "127.0.0.1:4000",
                "/v2.1/servers",
                vec![("Host", nova), ("X-Scope", to2)],
                Ok(
                    "RegionTwo",
                    "RegionTwo_compute_public",
                    "192.168.144.244:8774",
                    S::XScope,
                ),
            ),
            (
                "Host header local target uses that listener's backend",
                &r,
                "127.0.0.1:4000",
                "/v2.1/servers",
                vec![("Host", nova)],
                Ok(
                    "RegionOne",
                    "RegionOne_compute_public",
                    "192.168.142.245:8774",
                    S::None,
                ),
            ),
            (
                "unknown local address, no Host",
                &r,
                "127.0.0.1:4000",
                "/v2.1/servers",
                vec![],
                Err(421, &["127.0.0.1:4000"]),
            ),
            (
                "unknown local address, Host without port is :80",
                &r,
                "127.0.0.1:4000",
                "/v2.1/servers",
                vec![("Host", VIP1)],
                Err(421, &[]),
            ),
            (
                "not JSON",
                &r,
                nova,
                "/v2.1/servers",
                vec![("X-Scope", "compute=RegionTwo")],
                Err(400, &["X-Scope", "JSON"]),
            ),
            (
                "JSON but not an object",
                &r,
                nova,
                "/v2.1/servers",
                vec![("X-Scope", r#"["RegionTwo"]"#)],
                Err(400, &["not a JSON object"]),
            ),
            (
                "non-string value",
                &r,
                nova,
                "/v2.1/servers",
                vec![("X-Scope", r#"{"compute": 2}"#)],
                Err(400, &["\"compute\"", "not a string"]),
            ),
            (
                "null value",
                &r,
                nova,
                "/v2.1/servers",
                vec![("X-Scope", r#"{"image": null}"#)],
                Err(400, &["\"image\""]),
            ),
            (
                "malformed token scope names the header",
                &r,
                nova,
                "/v2.1/servers",
                vec![("X-Auth-Token", "t!SCOPE!{compute")],
                Err(400, &["X-Auth-Token"]),
            ),
            (
                "valid JSON is never percent-decoded",
                &r,
                nova,
                "/v2.1/servers",
                vec![("X-Scope", r#"{"compute": "Region%54wo"}"#)],
                Err(400, &["Region%54wo", "RegionOne, RegionTwo"]),
            ),
            (
                "percent-decoding happens once only",
                &r,
                nova,
                "/v2.1/servers",
                vec![(
                    "X-Scope",
                    "%257B%2522compute%2522%253A%2522RegionTwo%2522%257D",
                )],
                Err(400, &["X-Scope"]),
            ),
            (
                "unknown region",
                &r,
                nova,
                "/v2.1/servers",
                vec![("X-Scope", r#"{"compute": "RegionX"}"#)],
                Err(400, &["RegionX", "compute", "RegionOne, RegionTwo"]),
            ),
            (
                "unknown identity region",
                &r,
                nova,
                "/v2.1/servers",
                vec![("X-Scope", r#"{"identity": "RegionX"}"#)],
                Err(400, &["RegionX", "identity"]),
            ),
            (
                "loop",
                &r,
                nova,
                "/v2.1/servers",
                vec![("Via", "1.1 scope-router-RegionOne")],
                Err(508, &["scope-router-RegionOne"]),
            ),
            (
                "loop deeper in the chain",
                &r,
                nova,
                "/v2.1/servers",
                vec![("Via", "1.0 fred, 1.1 scope-router-RegionOne (x)")],
                Err(508, &[]),
            ),
            (
                "loop on a second Via line",
                &r,
                nova,
                "/",
                vec![("Via", "1.1 proxy"), ("Via", "1.1 scope-router-RegionOne")],
                Err(508, &[]),
            ),
            (
                "another router's Via is fine",
                &r,
                nova,
                "/v2.1/servers",
                vec![("Via", "1.1 scope-router-RegionTwo")],
                Ok(
                    "RegionOne",
                    "RegionOne_compute_public",
                    "192.168.142.245:8774",
                    S::None,
                ),
            ),
            (
                "a name that merely starts like ours is fine",
                &r,
                nova,
                "/v2.1/servers",
                vec![("Via", "1.1 scope-router-RegionOneB")],
                Ok(
                    "RegionOne",
                    "RegionOne_compute_public",
                    "192.168.142.245:8774",
                    S::None,
                ),
            ),
        ];
        for (name, router, local, path, headers, want) in cases {
            let got = decide(router, local, path, &headers);
            match (want, got) {
                (Want::Ok(region, backend, upstream, source), Result::Ok(plan)) => {
                    assert_eq!(
                        (
                            &*plan.region,
                            &*plan.backend_name,
                            &*plan.upstream,
                            plan.scope_source
                        ),
                        (region, backend, upstream, source),
                        "{name}"
                    );
                }
                (Want::Err(status, needles), Result::Err(p)) => {
                    assert_eq!(p.status.as_u16(), status, "{name}: {p}");
                    for n in needles {
                        assert!(p.message.contains(n), "{name}: {n} missing from {p}");
                    }
                }
                (Want::Ok(..), Result::Err(p)) => panic!("{name}: unexpected {p}"),
                (Want::Err(status, _), Result::Ok(plan)) => {
                    panic!("{name}: expected {status}, got {}", plan.backend_name)
                }
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
        let cases: Vec<(&str, &str, String, &str, &str, &str)> = vec![
            (
                "local keeps the path",
                "/compute/v2.1/servers?all=1",
                String::new(),
                "RegionA_compute_public",
                "127.0.0.1:8080",
                "/compute/v2.1/servers?all=1",
            ),
            (
                "remote replaces the prefix",
                "/compute/v2.1/p/servers?all=1",
                b("compute"),
                "RegionB_compute_public",
                "10.0.1.1:8774",
                "/v2.1/p/servers?all=1",
            ),
            (
                "prefix to empty path",
                "/identity/v3/auth/tokens",
                b("identity"),
                "RegionB_identity_public",
                "10.0.1.1:5000",
                "/v3/auth/tokens",
            ),
            (
                "bare prefix to empty path",
                "/identity",
                b("identity"),
                "RegionB_identity_public",
                "10.0.1.1:5000",
                "/",
            ),
            (
                "identity_admin is a longer, distinct prefix",
                "/identity_admin/v3/users",
                b("identity"),
                "RegionB_identity_admin",
                "10.0.1.1:35357",
                "/v3/users",
            ),
            (
                "segment boundary: /identityfoo is not /identity",
                "/identityfoo",
                b("identity"),
                "RegionA_dashboard_public",
                "127.0.0.1:8080",
                "/identityfoo",
            ),
            (
                "same prefix both sides",
                "/image/v2/images",
                b("image"),
                "RegionB_image_public",
                "10.0.1.1:9292",
                "/image/v2/images",
            ),
            (
                "tie: first in catalog order (image, not metric)",
                "/image/v2/images",
                b("metric"),
                "RegionA_image_public",
                "127.0.0.1:8080",
                "/image/v2/images",
            ),
            (
                "root entry catches the rest",
                "/auth/login/",
                b("image"),
                "RegionA_dashboard_public",
                "127.0.0.1:8080",
                "/auth/login/",
            ),
            (
                "https default port and IPv6 target",
                "/volume/v3/p/volumes",
                b("volumev3"),
                "RegionB_volumev3_public",
                "[fd00::2]:8776",
                "/v3/p/volumes",
            ),
        ];
        for (name, path, scope, backend, upstream, forwarded) in cases {
            let headers: Vec<(&str, &str)> = if scope.is_empty() {
                vec![]
            } else {
                vec![("X-Scope", scope.as_str())]
            };
            let local = if path.starts_with("/volume") {
                "10.0.0.1:443"
            } else {
                local
            };
            let (plan, parts) = forward(&r, local, path, &headers);
            assert_eq!(
                (&*plan.backend_name, &*plan.upstream),
                (backend, upstream),
                "{name}"
            );
            assert_eq!(parts.uri.to_string(), forwarded, "{name}");
            assert_eq!(plan.is_remote(), backend.starts_with("RegionB"), "{name}");
            if plan.is_remote() {
                assert_eq!(header(&parts, "host"), Some(upstream), "{name}");
            }
        }
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
        assert!(r.listener("10.0.0.1:443".parse().unwrap()).is_some());
    }

    /// DESIGN §3.4/§3.5 header rewrites.
    #[test]
    fn rewrites() {
        let r = r1();
        let nova = "192.168.142.244:8774";
        let scope2 = r#"{"compute": "RegionTwo", "identity": "RegionTwo"}"#;
        let auth = format!("gAAAAtok!SCOPE!{scope2}");
        let subject = "gAAAAsub!SCOPE!{\"identity\": \"RegionTwo\"}";

        // Remote compute: Host and path rewritten, auth token kept, subject token stripped.
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
        assert_eq!(header(&p, "x-subject-token"), Some("gAAAAsub"));
        assert_eq!(header(&p, "x-identity-region"), Some("RegionTwo"));
        assert_eq!(
            header(&p, "x-identity-url"),
            Some("http://192.168.144.244:35357")
        );
        assert_eq!(header(&p, "x-forwarded-for"), Some("1.2.3.4, 10.9.9.9"));
        assert_eq!(
            header(&p, "via"),
            Some("1.0 edge, 1.1 scope-router-RegionOne")
        );
        assert_eq!(p.headers.get_all("via").iter().count(), 1);

        // Identity target: the auth token loses its scope as well.
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
        assert_eq!(header(&p, "x-auth-token"), Some("gAAAAtok"));
        assert_eq!(header(&p, "x-subject-token"), Some("gAAAAsub"));
        assert_eq!(header(&p, "host"), Some("192.168.144.244:5000"));

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
        assert!(plan.service_type.is_none());
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
