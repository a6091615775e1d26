//! The router's TOML configuration (docs/ARCHITECTURE.md §5): parsing, defaults, path resolution, validation.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::access_log::LogSettings;
use crate::admin::AdminSettings;
use crate::balance::Balance;
use crate::catalog::{Catalog, CatalogError};
use crate::ebpf::{DEFAULT_PIN_PATH, EbpfSettings};
use crate::health::CheckSettings;
use crate::process::ProcessSettings;
use crate::server_slots::MAXCONN_MAX;
use crate::tls::{CertificateFiles, TlsSettings};
use crate::vip::{DEFAULT_STATE_DIR, VipSettings};
use crate::vrrp::VrrpSettings;

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The config file itself.
    pub path: PathBuf,
    /// The current region.
    pub region: String,
    /// Catalog files, resolved relative to the config file.
    pub catalog: Vec<PathBuf>,
    /// Concrete local services, on the same port as the VIP listener.
    pub backend: Vec<ServerSpec<IpAddr>>,
    /// `[scope.defaults]`: service type → region, overriding "current region".
    pub scope_defaults: BTreeMap<String, String>,
    pub timeouts: Timeouts,
    pub ports: BTreeMap<u16, PortOverride>,
    pub proxy: ProxySettings,
    /// `[health]`: how every upstream server is checked.
    pub health: CheckSettings,
    /// `[vip]`: the address the router owns; `None` manages no address.
    pub vip: Option<VipSettings>,
    /// `[vrrp]`: share the VIP with other routers; `None` owns it alone.
    pub vrrp: Option<VrrpSettings>,
    pub ebpf: EbpfSettings,
    pub passthrough: Vec<Passthrough>,
    /// `[admin]`: the metrics/status listener.
    pub admin: AdminSettings,
    /// `[log]`: how log lines are written.
    pub log: LogSettings,
    /// `[tls]`, paths resolved: what `https://` listeners serve and what TLS hops trust.
    pub tls: TlsSettings,
    /// `[[redirect]]`: cleartext listeners answering 301 to their `https://` URL.
    pub redirect: Vec<Redirect>,
    /// `[process]`: the user the router runs as after its privileged setup.
    pub process: ProcessSettings,
}

/// Connection timeouts of one listener; `[timeouts]` sets them for every listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// Time allowed to receive a complete request head.
    #[serde(deserialize_with = "duration")]
    pub request_header: Duration,
    /// Time allowed to connect to the upstream.
    #[serde(deserialize_with = "duration")]
    pub connect: Duration,
    /// Inactivity allowed on an established exchange (either direction).
    #[serde(deserialize_with = "duration")]
    pub idle: Duration,
    /// Silence allowed from the end of the request until the backend's response head
    /// arrives (504 when it expires), whatever `idle` is: a hung backend or remote router
    /// costs the client this, not `idle` (6 h on Glance).
    #[serde(deserialize_with = "duration")]
    pub response_head: Duration,
    /// Silence allowed between reads of a request body (408 when it expires), whatever
    /// `idle` is: a client trickling its body cannot hold a backend connection for `idle`.
    #[serde(deserialize_with = "duration")]
    pub request_body: Duration,
    /// Longest a request waits for a slot when every server it may go to is at its
    /// `maxconn` (HAProxy's `timeout queue`; 503 when it expires). Unused without limits.
    #[serde(deserialize_with = "duration")]
    pub queue: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        // The seed HAProxy's values: `timeout http-request 10s`, `connect 10s`, `client/server 1m`.
        Timeouts {
            request_header: Duration::from_secs(10),
            connect: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            // The HAProxy this replaces gives every API a 1 min `timeout server` (Glance's
            // raised one aside): no call that works behind it waits longer for its head.
            // Per port (`[ports.N] response_head`) for a service known to be slower.
            response_head: Duration::from_secs(60),
            // Between reads, not for the whole body: a multi-GiB upload moving at any
            // speed never pauses a minute, while a stalled one frees its backend in one.
            request_body: Duration::from_secs(60),
            // Kolla's HAProxy `timeout queue 1m`.
            queue: Duration::from_secs(60),
        }
    }
}

/// `[ports.N]`: per-port overrides; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortOverride {
    #[serde(deserialize_with = "some_duration")]
    pub request_header: Option<Duration>,
    #[serde(deserialize_with = "some_duration")]
    pub connect: Option<Duration>,
    #[serde(deserialize_with = "some_duration")]
    pub idle: Option<Duration>,
    #[serde(deserialize_with = "some_duration")]
    pub response_head: Option<Duration>,
    #[serde(deserialize_with = "some_duration")]
    pub request_body: Option<Duration>,
    #[serde(deserialize_with = "some_duration")]
    pub queue: Option<Duration>,
    /// `maxconn` of this port's servers that set none (`[proxy] maxconn_per_server`
    /// otherwise); 0: no limit.
    #[serde(deserialize_with = "some_maxconn")]
    pub maxconn_per_server: Option<u32>,
    /// Local backend servers for this port instead of `backend`:N.
    pub backend: Option<Servers<SocketAddr>>,
    /// How requests spread over this port's servers (`[proxy] balance` otherwise).
    pub balance: Option<Balance>,
    /// HTTP check path for this port's local servers (`GET path`, healthy on 2xx/3xx),
    /// e.g. Kolla's `/healthcheck`, keystone's `/v3`; `[health] http_path` otherwise.
    pub health_path: Option<String>,
    /// The certificate this port serves when its catalog URL is `https://` (`[tls]
    /// certificate` otherwise); give `key` with it.
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Speak TLS to this port's local servers, verifying them (HAProxy's `ssl verify
    /// required`); the certificate must name the server's address.
    pub backend_tls: bool,
    /// CA certificates trusted for this port's local servers (`[tls] ca_file`, else the
    /// system store, otherwise); only with `backend_tls`.
    pub ca_file: Option<PathBuf>,
}

/// `[[redirect]]`: a cleartext listener answering every request with a `301` to the same
/// host and path over `https://` (Kolla's redirect mode), except paths under `exempt`,
/// which are relayed to `exempt_backend` (an ACME client answering HTTP-01 challenges).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// Where to listen, e.g. the VIP on port 80.
    pub bind: SocketAddr,
    /// The port of the `https://` URL (443 is left out of it).
    #[serde(default = "Redirect::default_https_port")]
    pub https_port: u16,
    /// Path prefixes not redirected, e.g. `"/.well-known/acme-challenge/"`.
    #[serde(default)]
    pub exempt: Vec<String>,
    /// Where exempt paths are relayed; required with `exempt`.
    #[serde(default)]
    pub exempt_backend: Option<SocketAddr>,
}

impl Redirect {
    fn default_https_port() -> u16 {
        443
    }
}

/// One server of a backend: its address, its share of the traffic, whether it only
/// serves when every other server is down, and how many requests it takes at once
/// (HAProxy's `weight`, `backup` and `maxconn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec<A> {
    pub address: A,
    pub weight: u32,
    pub backup: bool,
    /// Exchanges in progress at once, 0 for no limit; `None` as written when the table
    /// names none, so the section's `maxconn_per_server` applies ([`Config::port_backend`]
    /// and [`Passthrough::servers`] come with it resolved).
    pub maxconn: Option<u32>,
}

/// `backend` as written: one server (`"10.0.0.5"`, or a table `{ address = "10.0.0.5",
/// weight = 2, backup = true, maxconn = 64 }`) or a list of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers<A>(pub Vec<ServerSpec<A>>);

impl<'de, A> Deserialize<'de> for Servers<A>
where
    A: std::str::FromStr,
    A::Err: std::fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(d)?;
        let items = match value {
            toml::Value::Array(items) if items.is_empty() => {
                return Err(serde::de::Error::custom(
                    "an empty list serves nothing; name at least one server",
                ));
            }
            toml::Value::Array(items) => items,
            one => vec![one],
        };
        items
            .iter()
            .map(server_spec)
            .collect::<Result<_, _>>()
            .map(Servers)
            .map_err(serde::de::Error::custom)
    }
}

fn server_spec<A>(value: &toml::Value) -> Result<ServerSpec<A>, String>
where
    A: std::str::FromStr,
    A::Err: std::fmt::Display,
{
    let address = |text: &str| {
        text.parse::<A>()
            .map_err(|e| format!("\"{text}\" is not a server address ({e})"))
    };
    match value {
        toml::Value::String(text) => Ok(ServerSpec {
            address: address(text)?,
            weight: 1,
            backup: false,
            maxconn: None,
        }),
        toml::Value::Table(table) => {
            if let Some(key) = table
                .keys()
                .find(|k| !["address", "weight", "backup", "maxconn"].contains(&k.as_str()))
            {
                return Err(format!(
                    "unknown server key `{key}`; a server has `address`, `weight`, `backup` \
                     and `maxconn`"
                ));
            }
            let Some(toml::Value::String(text)) = table.get("address") else {
                return Err("a server table needs `address = \"…\"`".to_owned());
            };
            let weight = match table.get("weight") {
                None => 1,
                Some(toml::Value::Integer(w)) if (0..=256).contains(w) => *w as u32,
                Some(other) => {
                    return Err(format!(
                        "weight {other} must be a whole number from 0 to 256 (0: only used \
                         when every weighted server is down)"
                    ));
                }
            };
            let backup = match table.get("backup") {
                None => false,
                Some(toml::Value::Boolean(b)) => *b,
                Some(other) => return Err(format!("backup {other} must be true or false")),
            };
            let maxconn = match table.get("maxconn") {
                None => None,
                Some(toml::Value::Integer(n)) => Some(maxconn_value(*n)?),
                Some(other) => return Err(maxconn_message(other)),
            };
            Ok(ServerSpec {
                address: address(text)?,
                weight,
                backup,
                maxconn,
            })
        }
        other => Err(format!(
            "{other} is not a server; write \"address\", {{ address = \"…\", weight = 2, \
             backup = true, maxconn = 64 }}, or a list of them"
        )),
    }
}

/// A `maxconn` as written: 0 (no limit) or 1 to [`MAXCONN_MAX`].
fn maxconn_value(n: i64) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(n) if n <= MAXCONN_MAX => Ok(n),
        _ => Err(maxconn_message(n)),
    }
}

fn maxconn_message(value: impl std::fmt::Display) -> String {
    format!(
        "maxconn {value} must be a whole number from 1 to {MAXCONN_MAX} (requests the server \
         handles at once; more wait in the queue up to [timeouts] queue), or 0 for no limit"
    )
}

/// Deserializes a `maxconn` ([`maxconn_value`]).
fn maxconn<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::Integer(n) => maxconn_value(n),
        other => Err(maxconn_message(other)),
    }
    .map_err(serde::de::Error::custom)
}

/// [`maxconn`] for an optional key.
fn some_maxconn<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    maxconn(d).map(Some)
}

/// `[proxy]`: HTTP handling limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxySettings {
    /// Largest accepted request head, in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// How long in-flight requests may finish after a shutdown signal.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Further servers tried when connecting to one fails (HAProxy's `retries` with
    /// `option redispatch`): nothing was sent yet, so every method may be redispatched.
    pub retries: u32,
    /// How requests spread over a backend's servers, unless `[ports.N] balance` says
    /// otherwise.
    pub balance: Balance,
    /// `maxconn` of every scoped listener's local server that sets none (HAProxy's
    /// `default-server maxconn`), unless `[ports.N] maxconn_per_server` says otherwise;
    /// 0: no limit. Not for passthrough listeners, whose long-lived connections (database
    /// pools, consoles) only their own `maxconn` may limit.
    #[serde(deserialize_with = "maxconn")]
    pub maxconn_per_server: u32,
    /// The most client connections held at once across every listener (HAProxy's global
    /// `maxconn`); beyond, new ones wait in the listen backlog. `None`: what the open-file
    /// limit allows, two descriptors per connection (see `proxy::connection_limit`).
    pub max_connections: Option<usize>,
}

impl Default for ProxySettings {
    fn default() -> ProxySettings {
        ProxySettings {
            max_header_bytes: 16384,
            shutdown_grace: Duration::from_secs(30),
            // Kolla's HAProxy defaults: `retries 3`, `balance roundrobin`.
            retries: 3,
            balance: Balance::Roundrobin,
            // Kolla sets no server maxconn: the right number is the service's worker
            // count, and a guess too low turns long uploads into everyone's 503s.
            maxconn_per_server: 0,
            max_connections: None,
        }
    }
}

/// What a passthrough listener does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PassthroughMode {
    /// Copy bytes both ways.
    Tcp,
    /// Proxy HTTP (including upgrades) to one backend.
    Http,
}

/// `[[passthrough]]`: a listener doing no scope work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passthrough {
    pub name: String,
    pub bind: SocketAddr,
    /// The first server, for display; `servers` holds them all.
    pub backend: SocketAddr,
    /// Every server of `backend`, checked and balanced like a scoped port's, with its
    /// `maxconn` resolved (the server's own, else the passthrough's `maxconn_per_server`,
    /// else no limit).
    pub servers: Vec<ServerSpec<SocketAddr>>,
    pub balance: Balance,
    pub mode: PassthroughMode,
    pub timeouts: Timeouts,
}

/// Why a configuration is unusable. Every variant names the file; most name the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("config file {}: key `{key}`: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("config file {}: key `catalog`: {source}", path.display())]
    Catalog { path: PathBuf, source: CatalogError },
}

impl Config {
    /// Reads and validates `path` (catalog-independent checks only; see [`Config::check_catalog`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_str(&text, path)
    }

    /// Parses `text` as if read from `path` (relative paths resolve against its directory).
    #[allow(clippy::should_implement_trait)] // needs the path, so it cannot be `FromStr`
    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        raw.resolve(path)
    }

    /// Loads the catalog files named by the config.
    pub fn load_catalog(&self) -> Result<Catalog, ConfigError> {
        Catalog::load(&self.catalog).map_err(|source| ConfigError::Catalog {
            path: self.path.clone(),
            source,
        })
    }

    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// Checks the keys that depend on the catalog: `region`, `[scope.defaults]`, `[ports.N]`,
    /// and passthrough binds against the scoped listeners.
    pub fn check_catalog(&self, catalog: &Catalog) -> Result<(), ConfigError> {
        let regions = catalog.regions();
        let known = || regions.iter().map(|r| &**r).collect::<Vec<_>>().join(", ");
        if !catalog.has_region(&self.region) {
            return Err(self.invalid(
                "region",
                format!(
                    "region \"{}\" is not in the catalog; known regions: {}",
                    self.region,
                    known()
                ),
            ));
        }
        for (service_type, region) in &self.scope_defaults {
            if !catalog.has_region(region) {
                return Err(self.invalid(
                    format!("scope.defaults.{service_type}"),
                    format!(
                        "region \"{region}\" is not in the catalog; known regions: {}",
                        known()
                    ),
                ));
            }
        }
        let scoped: Vec<SocketAddr> = catalog
            .entries()
            .iter()
            .filter(|e| *e.region == *self.region)
            .filter_map(|e| e.url.ip().map(|ip| SocketAddr::new(ip, e.url.port())))
            .collect();
        for port in self.ports.keys() {
            if !scoped.iter().any(|a| a.port() == *port) {
                return Err(self.invalid(
                    format!("ports.{port}"),
                    format!(
                        "no {} catalog endpoint listens on port {port}; remove the section or \
                         fix the port number",
                        self.region
                    ),
                ));
            }
        }
        for e in catalog.entries() {
            if *e.region != *self.region || e.scheme != "https" || e.url.ip().is_none() {
                continue;
            }
            let port = e.url.port();
            if self.port_certificate(port).is_none() {
                return Err(self.invalid(
                    "tls.certificate",
                    format!(
                        "the catalog URL {} is https://, so port {port} terminates TLS, but no \
                         certificate is set: set [tls] certificate and key, or [ports.{port}] \
                         certificate and key",
                        e.absolute_url()
                    ),
                ));
            }
        }
        for (i, r) in self.redirect.iter().enumerate() {
            let clash = scoped
                .iter()
                .copied()
                .chain(self.passthrough.iter().map(|p| p.bind))
                .find(|a| binds_collide(*a, r.bind));
            if let Some(clash) = clash {
                return Err(self.invalid(
                    format!("redirect[{i}].bind"),
                    format!(
                        "{} collides with the listener {clash}; redirect from another port \
                         (usually 80)",
                        r.bind
                    ),
                ));
            }
        }
        for (i, p) in self.passthrough.iter().enumerate() {
            if let Some(clash) = scoped.iter().find(|a| binds_collide(**a, p.bind)) {
                return Err(self.invalid(
                    format!("passthrough[{i}].bind"),
                    format!(
                        "passthrough \"{}\" binds {}, which collides with the scoped listener \
                         {clash} from the catalog; pick another address or port",
                        p.name, p.bind
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The certificate a TLS listener on `port` serves by default: `[ports.N]`'s, else
    /// `[tls]`'s; `None` when neither is set.
    pub fn port_certificate(&self, port: u16) -> Option<CertificateFiles> {
        let own = self.ports.get(&port).and_then(|o| {
            CertificateFiles::pair(o.certificate.as_ref(), o.key.as_ref())
                .ok()
                .flatten()
        });
        own.or_else(|| self.tls.default_files())
    }

    /// Whether `port`'s local servers are reached over TLS, and then the CA file trusted
    /// for them (`None` inside: the system store).
    pub fn port_backend_tls(&self, port: u16) -> Option<Option<&Path>> {
        let o = self.ports.get(&port).filter(|o| o.backend_tls)?;
        Some(o.ca_file.as_deref().or(self.tls.ca_file.as_deref()))
    }

    /// Timeouts of the scoped listener on `port` (global values with `[ports.N]` applied).
    pub fn port_timeouts(&self, port: u16) -> Timeouts {
        let mut t = self.timeouts;
        if let Some(o) = self.ports.get(&port) {
            t.request_header = o.request_header.unwrap_or(t.request_header);
            t.connect = o.connect.unwrap_or(t.connect);
            t.idle = o.idle.unwrap_or(t.idle);
            t.response_head = o.response_head.unwrap_or(t.response_head);
            t.request_body = o.request_body.unwrap_or(t.request_body);
            t.queue = o.queue.unwrap_or(t.queue);
        }
        t
    }

    /// The local backend servers of the scoped listener on `port`, each with its
    /// `maxconn` resolved: its own, else `[ports.N]`'s `maxconn_per_server`, else
    /// `[proxy]`'s.
    pub fn port_backend(&self, port: u16) -> Vec<ServerSpec<SocketAddr>> {
        let o = self.ports.get(&port);
        let default = o
            .and_then(|o| o.maxconn_per_server)
            .unwrap_or(self.proxy.maxconn_per_server);
        let servers = match o.and_then(|o| o.backend.as_ref()) {
            Some(servers) => servers.0.clone(),
            None => self
                .backend
                .iter()
                .map(|s| ServerSpec {
                    address: SocketAddr::new(s.address, port),
                    weight: s.weight,
                    backup: s.backup,
                    maxconn: s.maxconn,
                })
                .collect(),
        };
        servers
            .into_iter()
            .map(|s| ServerSpec {
                maxconn: Some(s.maxconn.unwrap_or(default)),
                ..s
            })
            .collect()
    }

    /// How requests spread over the servers of the scoped listener on `port`.
    pub fn port_balance(&self, port: u16) -> Balance {
        self.ports
            .get(&port)
            .and_then(|o| o.balance)
            .unwrap_or(self.proxy.balance)
    }

    /// How the local servers of the scoped listener on `port` are checked.
    pub fn port_health(&self, port: u16) -> CheckSettings {
        let mut check = self.health.clone();
        if let Some(path) = self.ports.get(&port).and_then(|o| o.health_path.clone()) {
            check.http_path = Some(path);
        }
        check
    }
}

/// Two binds collide when they share a port and either the IPs match or one is a wildcard.
fn binds_collide(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Deserializes a duration written like `"10s"`, `"1m"`, `"6h"`; zero is refused.
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    match humantime::parse_duration(&text) {
        Ok(d) if d.is_zero() => Err(serde::de::Error::custom(format!(
            "duration \"{text}\" must be greater than zero"
        ))),
        Ok(d) => Ok(d),
        Err(e) => Err(serde::de::Error::custom(format!(
            "invalid duration \"{text}\" ({e}); write e.g. \"10s\", \"1m\" or \"6h\""
        ))),
    }
}

/// [`duration`] for an optional key (absent keys are `None` through `#[serde(default)]`).
fn some_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// The file as written; sections deserialize straight into their owners' types.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    region: String,
    catalog: Vec<PathBuf>,
    backend: Servers<IpAddr>,
    #[serde(default)]
    scope: RawScope,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    ports: BTreeMap<String, PortOverride>,
    #[serde(default)]
    proxy: ProxySettings,
    #[serde(default)]
    health: CheckSettings,
    vip: Option<VipSettings>,
    vrrp: Option<VrrpSettings>,
    #[serde(default)]
    ebpf: EbpfSettings,
    #[serde(default)]
    passthrough: Vec<RawPassthrough>,
    #[serde(default)]
    admin: AdminSettings,
    #[serde(default)]
    log: LogSettings,
    #[serde(default)]
    process: ProcessSettings,
    #[serde(default)]
    tls: TlsSettings,
    #[serde(default)]
    redirect: Vec<Redirect>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawScope {
    #[serde(default)]
    defaults: BTreeMap<String, String>,
}

/// `[[passthrough]]` before its timeouts are laid over `[timeouts]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPassthrough {
    name: String,
    bind: SocketAddr,
    backend: Servers<SocketAddr>,
    balance: Option<Balance>,
    mode: PassthroughMode,
    #[serde(default, deserialize_with = "some_duration")]
    request_header: Option<Duration>,
    #[serde(default, deserialize_with = "some_duration")]
    connect: Option<Duration>,
    #[serde(default, deserialize_with = "some_duration")]
    idle: Option<Duration>,
    #[serde(default, deserialize_with = "some_duration")]
    response_head: Option<Duration>,
    #[serde(default, deserialize_with = "some_duration")]
    request_body: Option<Duration>,
    #[serde(default, deserialize_with = "some_duration")]
    queue: Option<Duration>,
    /// `maxconn` of its servers that set none; no limit when absent (`[proxy]`'s does not
    /// apply here).
    #[serde(default, deserialize_with = "some_maxconn")]
    maxconn_per_server: Option<u32>,
}

impl RawConfig {
    fn resolve(self, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        if self.region.trim().is_empty() {
            return Err(invalid(
                "region",
                "must name the current region, e.g. \"RegionOne\"".into(),
            ));
        }
        if self.catalog.is_empty() {
            return Err(invalid(
                "catalog",
                "list at least one endpoint-list JSON file".into(),
            ));
        }
        let dir = path.parent().unwrap_or(Path::new(""));
        let catalog = self.catalog.iter().map(|p| dir.join(p)).collect();

        for (service_type, region) in &self.scope.defaults {
            if region.trim().is_empty() {
                return Err(invalid(
                    &format!("scope.defaults.{service_type}"),
                    "must name a region".into(),
                ));
            }
        }

        let timeouts = self.timeouts;

        let mut ports = BTreeMap::new();
        for (key, port_override) in self.ports {
            let port = match key.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => {
                    return Err(invalid(
                        &format!("ports.{key}"),
                        "section name must be a port number 1..=65535, e.g. [ports.9292]".into(),
                    ));
                }
            };
            if let Some(path) = &port_override.health_path
                && !path.starts_with('/')
            {
                return Err(invalid(
                    &format!("ports.{key}.health_path"),
                    format!("\"{path}\" must be an absolute path, e.g. \"/healthcheck\""),
                ));
            }
            let mut port_override = port_override;
            let files = CertificateFiles::pair(
                port_override.certificate.as_ref(),
                port_override.key.as_ref(),
            )
            .map_err(|message| invalid(&format!("ports.{key}"), message))?
            .map(|f| f.resolved(dir));
            port_override.certificate = files.as_ref().map(|f| f.certificate.clone());
            port_override.key = files.map(|f| f.key);
            if port_override.ca_file.is_some() && !port_override.backend_tls {
                return Err(invalid(
                    &format!("ports.{key}.ca_file"),
                    "trusts the port's local servers over TLS, which needs backend_tls = true; \
                     set it, or remove ca_file"
                        .into(),
                ));
            }
            port_override.ca_file = port_override.ca_file.map(|p| dir.join(p));
            ports.insert(port, port_override);
        }

        let tls = self
            .tls
            .resolved(dir)
            .map_err(|message| invalid("tls", message))?;
        let mut redirect: Vec<Redirect> = Vec::with_capacity(self.redirect.len());
        for (i, r) in self.redirect.into_iter().enumerate() {
            if let Some(prefix) = r.exempt.iter().find(|p| !p.starts_with('/')) {
                return Err(invalid(
                    &format!("redirect[{i}].exempt"),
                    format!(
                        "\"{prefix}\" must be an absolute path prefix, e.g. \
                         \"/.well-known/acme-challenge/\""
                    ),
                ));
            }
            if !r.exempt.is_empty() && r.exempt_backend.is_none() {
                return Err(invalid(
                    &format!("redirect[{i}].exempt_backend"),
                    "exempt paths are relayed, not redirected: name where they go, e.g. \
                     \"127.0.0.1:8080\" for an ACME client, or remove exempt"
                        .into(),
                ));
            }
            if r.https_port == 0 {
                return Err(invalid(
                    &format!("redirect[{i}].https_port"),
                    "must be a port number 1..=65535 (443 by default)".into(),
                ));
            }
            if let Some(other) = redirect.iter().find(|o| binds_collide(o.bind, r.bind)) {
                return Err(invalid(
                    &format!("redirect[{i}].bind"),
                    format!(
                        "{} collides with another redirect listener ({}); binds must be unique",
                        r.bind, other.bind
                    ),
                ));
            }
            redirect.push(r);
        }

        let proxy = self.proxy;
        // Below 1 KiB not even a token fits; refuse rather than answer 431 to everything.
        if proxy.max_header_bytes < 1024 {
            return Err(invalid(
                "proxy.max_header_bytes",
                format!(
                    "{} is too small; use at least 1024 (default {})",
                    proxy.max_header_bytes,
                    ProxySettings::default().max_header_bytes
                ),
            ));
        }
        if proxy.max_connections == Some(0) {
            return Err(invalid(
                "proxy.max_connections",
                "0 would serve nobody; use at least 1, or remove the key to derive the limit \
                 from the open-file limit"
                    .into(),
            ));
        }

        if let Some(vip) = &self.vip {
            if vip.interface.is_empty() {
                return Err(invalid(
                    "vip.interface",
                    "must name a network interface".into(),
                ));
            }
            // `run` and `status` may start from different working directories; a
            // relative path would make them look in different places.
            if !vip.state_dir.is_absolute() {
                return Err(invalid(
                    "vip.state_dir",
                    format!(
                        "\"{}\" must be an absolute directory, e.g. \"{DEFAULT_STATE_DIR}\"",
                        vip.state_dir.display(),
                    ),
                ));
            }
        }

        if let Some(vrrp) = &self.vrrp {
            // VRRP decides who holds the VIP, so it needs a VIP this router may move.
            match &self.vip {
                None => {
                    return Err(invalid(
                        "vrrp",
                        "[vrrp] moves the VIP between routers but there is no [vip]: add [vip] \
                         address, or remove [vrrp] if keepalived still owns the address"
                            .into(),
                    ));
                }
                Some(vip) if !vip.manage => {
                    return Err(invalid(
                        "vrrp",
                        "[vrrp] needs to add and remove the VIP but [vip] manage = false: set \
                         manage = true, or remove [vrrp] while keepalived owns the address"
                            .into(),
                    ));
                }
                Some(_) => {}
            }
            vrrp.validate()
                .map_err(|err| invalid(err.key(), err.to_string()))?;
        }

        let ebpf = self.ebpf;
        if !ebpf.pin_path.is_absolute() {
            return Err(invalid(
                "ebpf.pin_path",
                format!(
                    "\"{}\" must be an absolute path on bpffs, e.g. \"{DEFAULT_PIN_PATH}\"",
                    ebpf.pin_path.display()
                ),
            ));
        }
        if ebpf.interface.as_deref() == Some("") {
            return Err(invalid(
                "ebpf.interface",
                "must name a network interface".into(),
            ));
        }

        let mut passthrough: Vec<Passthrough> = Vec::with_capacity(self.passthrough.len());
        for (i, p) in self.passthrough.into_iter().enumerate() {
            if p.name.trim().is_empty() {
                return Err(invalid(
                    &format!("passthrough[{i}].name"),
                    "must not be empty".into(),
                ));
            }
            if let Some(other) = passthrough.iter().find(|o| o.name == p.name) {
                return Err(invalid(
                    &format!("passthrough[{i}].name"),
                    format!(
                        "\"{}\" is already used by another passthrough (bind {}); names must be unique",
                        other.name, other.bind
                    ),
                ));
            }
            if let Some(other) = passthrough.iter().find(|o| binds_collide(o.bind, p.bind)) {
                return Err(invalid(
                    &format!("passthrough[{i}].bind"),
                    format!(
                        "{} collides with passthrough \"{}\" (bind {}); binds must be unique",
                        p.bind, other.name, other.bind
                    ),
                ));
            }
            let timeouts = Timeouts {
                request_header: p.request_header.unwrap_or(timeouts.request_header),
                connect: p.connect.unwrap_or(timeouts.connect),
                idle: p.idle.unwrap_or(timeouts.idle),
                response_head: p.response_head.unwrap_or(timeouts.response_head),
                request_body: p.request_body.unwrap_or(timeouts.request_body),
                queue: p.queue.unwrap_or(timeouts.queue),
            };
            let Some(first) = p.backend.0.first().map(|s| s.address) else {
                return Err(invalid(
                    &format!("passthrough[{i}].backend"),
                    "names no server".into(),
                ));
            };
            let default = p.maxconn_per_server.unwrap_or(0);
            let servers = p
                .backend
                .0
                .into_iter()
                .map(|s| ServerSpec {
                    maxconn: Some(s.maxconn.unwrap_or(default)),
                    ..s
                })
                .collect();
            passthrough.push(Passthrough {
                name: p.name,
                bind: p.bind,
                backend: first,
                servers,
                balance: p.balance.unwrap_or(proxy.balance),
                mode: p.mode,
                timeouts,
            });
        }

        Ok(Config {
            path: path.to_owned(),
            region: self.region,
            catalog,
            backend: self.backend.0,
            scope_defaults: self.scope.defaults,
            timeouts,
            ports,
            proxy,
            health: self.health,
            vip: self.vip,
            vrrp: self.vrrp,
            ebpf,
            passthrough,
            admin: self.admin,
            log: self.log,
            tls,
            redirect,
            process: self.process,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::ebpf::Mode;

    const MINIMAL: &str = r#"
region = "RegionOne"
catalog = ["endpoint-list-RegionOne.json", "/abs/endpoint-list-RegionTwo.json"]
backend = "192.168.142.245"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(text, Path::new("/etc/scope-router/router.toml"))
    }

    fn fixture_catalog() -> Catalog {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config"));
        Catalog::load(&[
            dir.join("endpoint-list-RegionOne.json"),
            dir.join("endpoint-list-RegionTwo.json"),
        ])
        .unwrap()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.region, "RegionOne");
        assert_eq!(
            c.catalog,
            [
                PathBuf::from("/etc/scope-router/endpoint-list-RegionOne.json"),
                PathBuf::from("/abs/endpoint-list-RegionTwo.json")
            ]
        );
        assert_eq!(
            c.backend,
            [server("192.168.142.245".parse::<IpAddr>().unwrap())]
        );
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.timeouts.idle, Duration::from_secs(60));
        assert_eq!(
            c.proxy,
            ProxySettings {
                max_header_bytes: 16384,
                shutdown_grace: Duration::from_secs(30),
                retries: 3,
                balance: Balance::Roundrobin,
                maxconn_per_server: 0,
                max_connections: None,
            }
        );
        assert_eq!(c.vip, None);
        assert_eq!(c.ebpf.mode, Mode::Auto);
        assert_eq!(c.ebpf.pin_path, PathBuf::from("/sys/fs/bpf/scope-router"));
        assert_eq!(c.ebpf.interface(c.vip.as_ref()), "eth2");
        assert!(c.ebpf.deny.is_empty() && c.passthrough.is_empty() && c.ports.is_empty());
        assert!(c.scope_defaults.is_empty());
    }

    #[test]
    fn admin_and_log_sections() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(
            c.admin.bind,
            ["127.0.0.1:9101".parse::<SocketAddr>().unwrap()]
        );
        assert!(c.admin.metrics);
        assert_eq!(c.log.format, crate::access_log::LogFormat::Text);
        let c = parse(&format!(
            "{MINIMAL}[admin]\nbind = [\"127.0.0.1:9101\", \"[::1]:9101\"]\nmetrics = false\n\
             [log]\nformat = \"json\"\n"
        ))
        .unwrap();
        assert_eq!(c.admin.bind.len(), 2);
        assert!(!c.admin.metrics);
        assert_eq!(c.log.format, crate::access_log::LogFormat::Json);
        let off = parse(&format!("{MINIMAL}[admin]\nbind = []\n")).unwrap();
        assert!(off.admin.bind.is_empty() && off.admin.metrics);
        let err = parse(&format!("{MINIMAL}[log]\nformat = \"xml\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("xml") && err.contains("json"), "{err}");
        let err = parse(&format!("{MINIMAL}[admin]\nbind = \"127.0.0.1\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bind"), "{err}");
    }

    /// A default server as written (no `maxconn` of its own).
    fn server<A>(address: A) -> ServerSpec<A> {
        ServerSpec {
            address,
            weight: 1,
            backup: false,
            maxconn: None,
        }
    }

    /// A default server as a listener resolves it: no limit.
    fn unlimited<A>(address: A) -> ServerSpec<A> {
        ServerSpec {
            maxconn: Some(0),
            ..server(address)
        }
    }

    /// `maxconn` on servers, `maxconn_per_server` for a port or every port, `queue` like
    /// the other timeouts; passthroughs only by their own settings.
    #[test]
    fn maxconn_and_queue_resolve_per_server_port_and_passthrough() {
        let c = parse(
            r#"
region = "RegionOne"
catalog = ["c.json"]
backend = [{ address = "10.0.0.1", maxconn = 8 }, { address = "10.0.0.2", maxconn = 0 }, "10.0.0.3"]
[timeouts]
queue = "30s"
[proxy]
maxconn_per_server = 64
[ports.9292]
maxconn_per_server = 4
queue = "10s"
[ports.8774]
backend = [{ address = "10.1.1.1:1", maxconn = 2 }, "10.1.1.2:1"]
[[passthrough]]
name = "mariadb"
bind = "10.0.0.9:3306"
backend = "10.0.0.1:3306"
mode = "tcp"
[[passthrough]]
name = "horizon"
bind = "10.0.0.9:80"
backend = [{ address = "10.0.0.1:80", maxconn = 1 }, "10.0.0.2:80"]
mode = "http"
maxconn_per_server = 3
queue = "5s"
"#,
        )
        .unwrap();
        let maxconns = |servers: Vec<ServerSpec<SocketAddr>>| {
            servers.iter().map(|s| s.maxconn).collect::<Vec<_>>()
        };
        // Own maxconn first (0 included: no limit), then the port's, then [proxy]'s.
        assert_eq!(maxconns(c.port_backend(5000)), [Some(8), Some(0), Some(64)]);
        assert_eq!(maxconns(c.port_backend(9292)), [Some(8), Some(0), Some(4)]);
        assert_eq!(maxconns(c.port_backend(8774)), [Some(2), Some(64)]);
        assert_eq!(c.port_timeouts(5000).queue, Duration::from_secs(30));
        assert_eq!(c.port_timeouts(9292).queue, Duration::from_secs(10));
        // [proxy] maxconn_per_server does not reach a passthrough's long-lived connections.
        assert_eq!(maxconns(c.passthrough[0].servers.clone()), [Some(0)]);
        assert_eq!(
            maxconns(c.passthrough[1].servers.clone()),
            [Some(1), Some(3)]
        );
        assert_eq!(c.passthrough[0].timeouts.queue, Duration::from_secs(30));
        assert_eq!(c.passthrough[1].timeouts.queue, Duration::from_secs(5));
        // Nothing set: no limit anywhere, Kolla's one-minute queue.
        let d = parse(MINIMAL).unwrap();
        assert_eq!(maxconns(d.port_backend(5000)), [Some(0)]);
        assert_eq!(d.timeouts.queue, Duration::from_secs(60));
    }

    /// Every wrong limit is refused naming the key and saying what to write.
    #[test]
    fn wrong_limits_say_what_to_write() {
        let pt = |extra: &str| {
            format!(
                "{MINIMAL}[[passthrough]]\nname = \"a\"\nbind = \"10.0.0.1:1\"\nbackend = \"10.0.0.2:1\"\nmode = \"tcp\"\n{extra}"
            )
        };
        const RANGE: &str = "from 1 to 1000000";
        let cases: Vec<(String, &[&str])> = vec![
            (
                MINIMAL.replace(
                    "\"192.168.142.245\"",
                    "{ address = \"192.168.142.245\", maxconn = -1 }",
                ),
                &["backend", "maxconn -1", RANGE, "0 for no limit"],
            ),
            (
                MINIMAL.replace(
                    "\"192.168.142.245\"",
                    "{ address = \"192.168.142.245\", maxconn = 1000001 }",
                ),
                &["maxconn 1000001", RANGE],
            ),
            (
                MINIMAL.replace(
                    "\"192.168.142.245\"",
                    "{ address = \"192.168.142.245\", maxconn = \"64\" }",
                ),
                &["maxconn \"64\"", RANGE],
            ),
            (
                MINIMAL.replace(
                    "\"192.168.142.245\"",
                    "{ address = \"192.168.142.245\", max_conn = 6 }",
                ),
                &["unknown server key `max_conn`", "`maxconn`"],
            ),
            (
                format!("{MINIMAL}[proxy]\nmaxconn_per_server = -5\n"),
                &["maxconn_per_server", "maxconn -5", RANGE],
            ),
            (
                format!("{MINIMAL}[proxy]\nmaxconn_per_server = 2.5\n"),
                &["maxconn_per_server", "maxconn 2.5", RANGE],
            ),
            (
                format!("{MINIMAL}[proxy]\nmaxconn = 64\n"),
                &["unknown field `maxconn`", "maxconn_per_server"],
            ),
            (
                format!("{MINIMAL}[ports.9292]\nmaxconn = 3\n"),
                &["unknown field `maxconn`", "maxconn_per_server"],
            ),
            (
                format!("{MINIMAL}[ports.9292]\nmaxconn_per_server = 2000000\n"),
                &["maxconn_per_server", RANGE],
            ),
            (
                format!("{MINIMAL}[timeouts]\nqueue = \"0s\"\n"),
                &["queue", "greater than zero"],
            ),
            (
                format!("{MINIMAL}[ports.9292]\nqueue = \"1 minute-ish\"\n"),
                &["queue", "write e.g."],
            ),
            (
                pt("maxconn = 4\n"),
                &["unknown field `maxconn`", "maxconn_per_server"],
            ),
            (
                pt("maxconn_per_server = -1\n"),
                &["maxconn_per_server", RANGE],
            ),
        ];
        for (text, needles) in cases {
            let msg = match parse(&text) {
                Ok(_) => panic!("loaded: {text}"),
                Err(e) => e.to_string(),
            };
            assert!(msg.contains("/etc/scope-router/router.toml"), "{msg}");
            for n in needles {
                assert!(msg.contains(n), "{n:?} missing from: {msg}");
            }
        }
    }

    /// `backend` as one address, a table, or a list; with the errors that say what to fix.
    #[test]
    fn backends_take_lists_weights_and_backups() {
        let with = |backend: &str, port: &str| {
            let text = format!(
                "region = \"RegionOne\"\ncatalog = [\"c.json\"]\nbackend = {backend}\n{port}"
            );
            Config::from_str(&text, Path::new("/r.toml"))
        };
        let c = with(
            r#"["10.0.0.1", { address = "10.0.0.2", weight = 3 }, { address = "10.0.0.3", backup = true }]"#,
            "[ports.9292]\nbalance = \"source\"\nhealth_path = \"/healthcheck\"\n",
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            c.backend,
            [
                server(ip("10.0.0.1")),
                ServerSpec {
                    address: ip("10.0.0.2"),
                    weight: 3,
                    backup: false,
                    maxconn: None,
                },
                ServerSpec {
                    address: ip("10.0.0.3"),
                    weight: 1,
                    backup: true,
                    maxconn: None,
                },
            ]
        );
        let on_9292: Vec<String> = c
            .port_backend(9292)
            .iter()
            .map(|s| s.address.to_string())
            .collect();
        assert_eq!(on_9292, ["10.0.0.1:9292", "10.0.0.2:9292", "10.0.0.3:9292"]);
        assert_eq!(c.port_balance(9292), Balance::Source);
        assert_eq!(c.port_balance(5000), Balance::Roundrobin);
        assert_eq!(
            c.port_health(9292).http_path.as_deref(),
            Some("/healthcheck")
        );
        assert_eq!(c.port_health(5000).http_path, None);
        let c = with(
            "\"10.0.0.1\"",
            "[ports.8774]\nbackend = [\"10.1.1.1:1\", \"10.1.1.2:2\"]\n",
        )
        .unwrap();
        assert_eq!(c.port_backend(8774).len(), 2);

        for (backend, port, needle) in [
            ("[]", "", "empty list"),
            (r#""not-an-ip""#, "", "not a server address"),
            (
                r#"{ address = "10.0.0.1", wieght = 2 }"#,
                "",
                "unknown server key `wieght`",
            ),
            (
                r#"{ address = "10.0.0.1", weight = 300 }"#,
                "",
                "from 0 to 256",
            ),
            (r#"{ weight = 2 }"#, "", "needs `address"),
            ("3", "", "is not a server"),
            (
                r#""10.0.0.1""#,
                "[ports.9292]\nbackend = \"10.0.0.1\"\n",
                "not a server address",
            ),
            (
                r#""10.0.0.1""#,
                "[ports.9292]\nbalance = \"random\"\n",
                "random",
            ),
            (
                r#""10.0.0.1""#,
                "[ports.9292]\nhealth_path = \"healthcheck\"\n",
                "absolute path",
            ),
        ] {
            let err = with(backend, port).unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "{backend} {port}: {needle:?} missing from {err}"
            );
        }
    }

    #[test]
    fn sections_are_parsed() {
        let text = format!(
            r#"{MINIMAL}
[scope.defaults]
identity = "RegionTwo"
[timeouts]
request_header = "5s"
idle = "2m"
response_head = "90s"
[ports.9292]
idle = "6h"
request_body = "5m"
[ports.8774]
backend = "10.1.1.1:18774"
connect = "3s"
[proxy]
max_header_bytes = 32768
shutdown_grace = "1m"
max_connections = 40000
[vip]
address = "192.168.142.244"
interface = "ens3"
garp_count = 2
[ebpf]
mode = "required"
deny = ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7"]
[[passthrough]]
name = "mariadb"
bind = "192.168.142.244:3306"
backend = "192.168.142.245:3306"
mode = "tcp"
idle = "1h"
[[passthrough]]
name = "horizon"
bind = "192.168.142.244:80"
backend = "192.168.142.245:80"
mode = "http"
"#
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.scope_defaults.get("identity").map(String::as_str),
            Some("RegionTwo")
        );
        assert_eq!(c.timeouts.request_header, Duration::from_secs(5));
        assert_eq!(c.timeouts.connect, Duration::from_secs(10));
        assert_eq!(c.timeouts.idle, Duration::from_secs(120));
        assert_eq!(c.port_timeouts(9292).idle, Duration::from_secs(6 * 3600));
        assert_eq!(c.port_timeouts(9292).request_header, Duration::from_secs(5));
        assert_eq!(c.timeouts.response_head, Duration::from_secs(90));
        assert_eq!(c.timeouts.request_body, Duration::from_secs(60));
        assert_eq!(c.port_timeouts(9292).response_head, Duration::from_secs(90));
        assert_eq!(c.port_timeouts(9292).request_body, Duration::from_secs(300));
        assert_eq!(c.port_timeouts(8774).connect, Duration::from_secs(3));
        assert_eq!(c.port_timeouts(5000), c.timeouts);
        assert_eq!(
            c.port_backend(8774),
            [unlimited("10.1.1.1:18774".parse::<SocketAddr>().unwrap())]
        );
        assert_eq!(
            c.port_backend(5000),
            [unlimited(
                "192.168.142.245:5000".parse::<SocketAddr>().unwrap()
            )]
        );
        assert_eq!(c.proxy.max_header_bytes, 32768);
        assert_eq!(c.proxy.shutdown_grace, Duration::from_secs(60));
        assert_eq!(c.proxy.max_connections, Some(40000));
        let vip = c.vip.as_ref().unwrap();
        assert_eq!(vip.address, "192.168.142.244".parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            (vip.interface.as_str(), vip.manage, vip.keep_on_exit),
            ("ens3", true, false)
        );
        assert_eq!(
            (vip.garp_count, vip.garp_repeat_delay, vip.take_over),
            (2, Duration::from_secs(5), false)
        );
        assert_eq!(vip.state_dir, PathBuf::from("/run/scope-router"));
        // ebpf.interface follows the VIP's when not given.
        assert_eq!(c.ebpf.interface(c.vip.as_ref()), "ens3");
        assert_eq!(c.ebpf.mode, Mode::Required);
        let deny: Vec<String> = c.ebpf.deny.iter().map(ToString::to_string).collect();
        assert_eq!(deny, ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7/32"]);
        assert_eq!(c.passthrough.len(), 2);
        assert_eq!(c.passthrough[0].mode, PassthroughMode::Tcp);
        assert_eq!(c.passthrough[0].timeouts.idle, Duration::from_secs(3600));
        assert_eq!(
            c.passthrough[0].timeouts.request_header,
            Duration::from_secs(5)
        );
        assert_eq!(c.passthrough[1].mode, PassthroughMode::Http);
        assert_eq!(c.passthrough[1].timeouts, c.timeouts);
        c.check_catalog(&fixture_catalog()).unwrap();
    }

    /// Every wrong key is an error naming the key (or showing its line) and the file.
    #[test]
    fn wrong_keys_are_errors_naming_key_and_file() {
        let pt = |extra: &str| {
            format!(
                "{MINIMAL}[[passthrough]]\nname = \"a\"\nbind = \"10.0.0.1:1\"\nbackend = \"10.0.0.2:1\"\nmode = \"tcp\"\n{extra}"
            )
        };
        let cases: Vec<(String, &str)> = vec![
            (format!("{MINIMAL}regoin = \"x\"\n"), "regoin"),
            (MINIMAL.replace("region = \"RegionOne\"", ""), "region"),
            (MINIMAL.replace("region = \"RegionOne\"", "region = \"\""), "region"),
            (MINIMAL.replace("\"192.168.142.245\"", "\"not-an-ip\""), "backend"),
            (MINIMAL.replace("catalog = [\"endpoint-list-RegionOne.json\", \"/abs/endpoint-list-RegionTwo.json\"]", "catalog = []"), "catalog"),
            (format!("{MINIMAL}[timeouts]\nidle = \"6x\"\n"), "idle"),
            (format!("{MINIMAL}[timeouts]\nconnect = \"0s\"\n"), "connect"),
            (format!("{MINIMAL}[timeouts]\nidel = \"1m\"\n"), "idel"),
            (format!("{MINIMAL}[ports.glance]\nidle = \"6h\"\n"), "ports.glance"),
            (format!("{MINIMAL}[ports.0]\nidle = \"6h\"\n"), "ports.0"),
            (format!("{MINIMAL}[ports.9292]\nidl = \"6h\"\n"), "idl"),
            (format!("{MINIMAL}[ports.9292]\nbackend = \"10.0.0.1\"\n"), "backend"),
            (format!("{MINIMAL}[proxy]\nmax_header_bytes = 10\n"), "proxy.max_header_bytes"),
            (format!("{MINIMAL}[proxy]\nmax_headers = 10\n"), "max_headers"),
            (format!("{MINIMAL}[proxy]\nmax_connections = 0\n"), "proxy.max_connections"),
            (format!("{MINIMAL}[proxy]\nmax_connections = -1\n"), "max_connections"),
            (format!("{MINIMAL}[proxy]\nmaxconn = 100\n"), "maxconn"),
            (format!("{MINIMAL}[vip]\ninterface = \"eth2\"\n"), "address"),
            (format!("{MINIMAL}[vip]\naddress = \"192.168.142.244\"\nadress = \"x\"\n"), "adress"),
            (format!("{MINIMAL}[vip]\naddress = \"192.168.142.244\"\ninterface = \"\"\n"), "vip.interface"),
            (format!("{MINIMAL}[vip]\naddress = \"192.168.142.244\"\nstate_dir = \"run/sr\"\n"), "vip.state_dir"),
            (format!("{MINIMAL}[ebpf]\nmode = \"sometimes\"\n"), "sometimes"),
            (format!("{MINIMAL}[ebpf]\npin_path = \"bpf/here\"\n"), "ebpf.pin_path"),
            (format!("{MINIMAL}[ebpf]\ndeny = [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n"), "ebpf.deny[1]"),
            (format!("{MINIMAL}[ebpf]\ndeny = [\"300.0.0.0/8\"]\n"), "ebpf.deny[0]"),
            (format!("{MINIMAL}[ebpf]\ndeny = [\"10.0.0.0/33\"]\n"), "ebpf.deny[0]"),
            (format!("{MINIMAL}[ebpf]\nallow = []\n"), "allow"),
            (format!("{MINIMAL}[scope]\ndefault = {{}}\n"), "default"),
            (format!("{MINIMAL}[scope.defaults]\nidentity = \"\"\n"), "scope.defaults.identity"),
            (pt("[[passthrough]]\nname = \"a\"\nbind = \"10.0.0.1:2\"\nbackend = \"10.0.0.2:2\"\nmode = \"tcp\"\n"), "passthrough[1].name"),
            (pt("[[passthrough]]\nname = \"b\"\nbind = \"10.0.0.1:1\"\nbackend = \"10.0.0.2:2\"\nmode = \"tcp\"\n"), "passthrough[1].bind"),
            (pt("[[passthrough]]\nname = \"b\"\nbind = \"0.0.0.0:1\"\nbackend = \"10.0.0.2:2\"\nmode = \"tcp\"\n"), "passthrough[1].bind"),
            (pt("[[passthrough]]\nname = \"\"\nbind = \"10.0.0.1:3\"\nbackend = \"10.0.0.2:2\"\nmode = \"tcp\"\n"), "passthrough[1].name"),
            (pt("[[passthrough]]\nname = \"c\"\nbind = \"10.0.0.1:3\"\nbackend = \"10.0.0.2:2\"\nmode = \"udp\"\n"), "udp"),
            (pt("[[passthrough]]\nname = \"c\"\nbind = \"10.0.0.1:3\"\nbackend = \"10.0.0.2:2\"\n"), "mode"),
            (pt("[[passthrough]]\nname = \"c\"\nbind = \"10.0.0.1\"\nbackend = \"10.0.0.2:2\"\nmode = \"tcp\"\n"), "bind"),
            (pt("timeout = \"1s\"\n"), "timeout"),
        ];
        for (text, key) in cases {
            let err = parse(&text).expect_err(key);
            let msg = err.to_string();
            assert!(
                msg.contains("/etc/scope-router/router.toml"),
                "file missing from: {msg}"
            );
            assert!(msg.contains(key), "key {key} missing from: {msg}");
        }
    }

    #[test]
    fn vip_state_dir_is_configurable() {
        let c = parse(&format!(
            "{MINIMAL}[vip]\naddress = \"192.168.142.244\"\nstate_dir = \"/var/lib/sr-one\"\n"
        ))
        .unwrap();
        assert_eq!(c.vip.unwrap().state_dir, PathBuf::from("/var/lib/sr-one"));
    }

    const VIP: &str = "[vip]\naddress = \"192.0.2.10\"\n";

    /// `[vrrp]` as operators write it: named cases, each with the settings it must give.
    #[test]
    fn vrrp_sections_load() {
        use crate::vrrp::Version;
        let kolla = {
            let mut s = VrrpSettings::new(51);
            s.auth_pass = Some("kollapassword".into());
            s.preempt = false;
            s.priority = 2;
            s
        };
        let cases: Vec<(&str, String, Option<VrrpSettings>)> = vec![
            (
                "absent: single-node ownership",
                format!("{MINIMAL}{VIP}"),
                None,
            ),
            (
                "only vrid: keepalived's defaults",
                format!("{MINIMAL}{VIP}[vrrp]\nvrid = 51\n"),
                Some(VrrpSettings::new(51)),
            ),
            (
                "Kolla's keepalived",
                format!(
                    "{MINIMAL}{VIP}[vrrp]\nvrid = 51\npriority = 2\nauth_pass = \"kollapassword\"\npreempt = false\n"
                ),
                Some(kolla),
            ),
            (
                "v3, sub-second, unicast, own interface",
                format!(
                    "{MINIMAL}{VIP}[vrrp]\nvrid = 7\nversion = 3\nadvert_int = \"500ms\"\npeers = [\"192.0.2.2\", \"192.0.2.3\"]\ninterface = \"bond0\"\npriority = 255\ntrack_fall = 3\ntrack_rise = 5\n"
                ),
                Some(VrrpSettings {
                    vrid: 7,
                    priority: 255,
                    advert_int: Duration::from_millis(500),
                    version: Version::V3,
                    auth_pass: None,
                    preempt: true,
                    peers: vec![Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 3)],
                    interface: Some("bond0".into()),
                    track_fall: 3,
                    track_rise: 5,
                }),
            ),
        ];
        for (name, text, want) in cases {
            let c = parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.vrrp, want, "{name}");
        }
    }

    /// Every wrong `[vrrp]` is refused at load, naming the file, the key and the fix.
    #[test]
    fn vrrp_errors_name_key_and_fix() {
        let vrrp = |body: &str| format!("{MINIMAL}{VIP}[vrrp]\n{body}");
        let cases: Vec<(&str, String, &[&str])> = vec![
            ("vrid missing", vrrp("priority = 100\n"), &["vrid"]),
            ("vrid 0", vrrp("vrid = 0\n"), &["vrid", "1 to 255"]),
            ("vrid 256", vrrp("vrid = 256\n"), &["vrid", "1 to 255"]),
            (
                "priority 0",
                vrrp("vrid = 1\npriority = 0\n"),
                &["priority", "1 to 255"],
            ),
            (
                "version 4",
                vrrp("vrid = 1\nversion = 4\n"),
                &["version", "use 2"],
            ),
            (
                "v3 with a password",
                vrrp("vrid = 1\nversion = 3\nauth_pass = \"x\"\n"),
                &[
                    "vrrp.auth_pass",
                    "version 3 has no authentication",
                    "version = 2",
                ],
            ),
            (
                "v2 sub-second",
                vrrp("vrid = 1\nadvert_int = \"200ms\"\n"),
                &["vrrp.advert_int", "whole seconds", "version = 3"],
            ),
            (
                "v3 too long",
                vrrp("vrid = 1\nversion = 3\nadvert_int = \"1m\"\n"),
                &["vrrp.advert_int", "40.95s"],
            ),
            (
                "zero interval",
                vrrp("vrid = 1\nadvert_int = \"0s\"\n"),
                &["advert_int", "greater than zero"],
            ),
            (
                "track_fall 0",
                vrrp("vrid = 1\ntrack_fall = 0\n"),
                &["vrrp.track_fall", "write 1 or more", "fall 2"],
            ),
            (
                "track_rise 0",
                vrrp("vrid = 1\ntrack_rise = 0\n"),
                &["vrrp.track_rise", "write 1 or more", "rise 10"],
            ),
            (
                "multicast peer",
                vrrp("vrid = 1\npeers = [\"224.0.0.18\"]\n"),
                &["vrrp.peers", "224.0.0.18", "not a unicast"],
            ),
            (
                "peer not an address",
                vrrp("vrid = 1\npeers = [\"x\"]\n"),
                &["peers"],
            ),
            (
                "unknown key",
                vrrp("vrid = 1\nnopreempt = true\n"),
                &["nopreempt"],
            ),
            (
                "empty interface",
                vrrp("vrid = 1\ninterface = \"\"\n"),
                &["vrrp.interface"],
            ),
            (
                "no [vip]",
                format!("{MINIMAL}[vrrp]\nvrid = 1\n"),
                &["`vrrp`", "add [vip]"],
            ),
            (
                "[vip] not managed",
                format!("{MINIMAL}{VIP}manage = false\n[vrrp]\nvrid = 1\n"),
                &["`vrrp`", "manage = true"],
            ),
        ];
        for (name, text, needles) in cases {
            let msg = match parse(&text) {
                Ok(_) => panic!("{name}: loaded"),
                Err(e) => e.to_string(),
            };
            assert!(
                msg.contains("/etc/scope-router/router.toml"),
                "{name}: {msg}"
            );
            for n in needles {
                assert!(msg.contains(n), "{name}: {n:?} missing from: {msg}");
            }
        }
    }

    #[test]
    fn catalog_dependent_checks() {
        let catalog = fixture_catalog();
        let pt = |bind: &str| {
            format!(
                "{MINIMAL}[[passthrough]]\nname = \"x\"\nbind = \"{bind}\"\nbackend = \"10.0.0.2:1\"\nmode = \"tcp\"\n"
            )
        };
        let cases: Vec<(String, &[&str])> = vec![
            (
                MINIMAL.replace("RegionOne\"\n", "RegionThree\"\n"),
                &["`region`", "RegionThree", "RegionOne, RegionTwo"],
            ),
            (
                format!("{MINIMAL}[scope.defaults]\nimage = \"RegionX\"\n"),
                &["scope.defaults.image", "RegionX"],
            ),
            (
                format!("{MINIMAL}[ports.1234]\nidle = \"1s\"\n"),
                &["ports.1234"],
            ),
            (
                pt("192.168.142.244:8774"),
                &["passthrough[0].bind", "192.168.142.244:8774"],
            ),
            (
                pt("0.0.0.0:5000"),
                &["passthrough[0].bind", "192.168.142.244:5000"],
            ),
        ];
        for (text, needles) in cases {
            let c = parse(&text).unwrap();
            let msg = c.check_catalog(&catalog).unwrap_err().to_string();
            assert!(msg.contains("/etc/scope-router/router.toml"), "{msg}");
            for n in needles {
                assert!(msg.contains(n), "{n} missing from: {msg}");
            }
        }
        // RegionTwo's VIP:8774 is no listener here, and 3306 is on no scoped port.
        parse(&pt("192.168.144.244:8774"))
            .unwrap()
            .check_catalog(&catalog)
            .unwrap();
        parse(&pt("192.168.142.244:3306"))
            .unwrap()
            .check_catalog(&catalog)
            .unwrap();
    }

    #[test]
    fn tls_and_redirect_keys_resolve_and_say_what_to_fix() {
        let c = parse(&format!(
            "{MINIMAL}[tls]\ncertificate = \"tls/vip.pem\"\nkey = \"tls/vip.key\"\n\
             ca_file = \"/etc/ssl/ca.pem\"\nprofile = \"intermediate\"\n\
             [ports.9292]\ncertificate = \"glance.pem\"\nkey = \"glance.key\"\n\
             backend_tls = true\nca_file = \"backends.pem\"\n\
             [ports.8774]\nbackend_tls = true\n\
             [[redirect]]\nbind = \"192.168.142.244:80\"\n\
             exempt = [\"/.well-known/acme-challenge/\"]\nexempt_backend = \"127.0.0.1:8402\"\n"
        ))
        .unwrap();
        let dir = Path::new("/etc/scope-router");
        assert_eq!(c.tls.profile, crate::tls::Profile::Intermediate);
        let default = c.port_certificate(5000).unwrap();
        assert_eq!(default.certificate, dir.join("tls/vip.pem"));
        assert_eq!(default.key, dir.join("tls/vip.key"));
        let own = c.port_certificate(9292).unwrap();
        assert_eq!(own.certificate, dir.join("glance.pem"));
        assert_eq!(
            c.port_backend_tls(9292),
            Some(Some(dir.join("backends.pem").as_path()))
        );
        // Without its own: [tls] ca_file.
        assert_eq!(
            c.port_backend_tls(8774),
            Some(Some(Path::new("/etc/ssl/ca.pem")))
        );
        assert_eq!(c.port_backend_tls(5000), None);
        assert_eq!(c.redirect[0].https_port, 443);
        // No certificate anywhere: none for any port.
        assert_eq!(parse(MINIMAL).unwrap().port_certificate(5000), None);

        let cases: Vec<(String, &[&str])> = vec![
            (
                format!("{MINIMAL}[tls]\ncertificate = \"a.pem\"\n"),
                &["`tls`", "without `key`"],
            ),
            (
                format!("{MINIMAL}[ports.5000]\nkey = \"a.key\"\n"),
                &["ports.5000", "without `certificate`"],
            ),
            (
                format!("{MINIMAL}[ports.5000]\nca_file = \"ca.pem\"\n"),
                &["ports.5000.ca_file", "backend_tls = true"],
            ),
            (
                format!("{MINIMAL}[tls]\nprofile = \"old\"\n"),
                &["modern", "intermediate"],
            ),
            (
                format!("{MINIMAL}[[redirect]]\nbind = \"10.0.0.1:80\"\nexempt = [\"/a/\"]\n"),
                &["redirect[0].exempt_backend", "ACME"],
            ),
            (
                format!(
                    "{MINIMAL}[[redirect]]\nbind = \"10.0.0.1:80\"\nexempt = [\"a/\"]\n\
                     exempt_backend = \"127.0.0.1:1\"\n"
                ),
                &["redirect[0].exempt", "absolute path prefix"],
            ),
            (
                format!(
                    "{MINIMAL}[[redirect]]\nbind = \"10.0.0.1:80\"\n\
                     [[redirect]]\nbind = \"0.0.0.0:80\"\n"
                ),
                &["redirect[1].bind", "collides"],
            ),
        ];
        for (text, needles) in cases {
            let msg = parse(&text).unwrap_err().to_string();
            for n in needles {
                assert!(msg.contains(n), "{n} missing from: {msg}");
            }
        }
    }

    #[test]
    fn https_listeners_need_a_certificate_and_redirects_a_port_of_their_own() {
        let catalog = {
            let mut c = Catalog::default();
            let json = serde_json::json!([
                {"Region": "RegionOne", "Service Type": "identity", "Interface": "public",
                 "URL": "https://192.168.142.244:5000"},
            ]);
            c.add_json(&json.to_string(), Path::new("tls.json"))
                .unwrap();
            c
        };
        let msg = parse(MINIMAL)
            .unwrap()
            .check_catalog(&catalog)
            .unwrap_err()
            .to_string();
        for n in [
            "https://192.168.142.244:5000",
            "[tls] certificate",
            "[ports.5000]",
        ] {
            assert!(msg.contains(n), "{n} missing from: {msg}");
        }
        let with_cert = format!("{MINIMAL}[tls]\ncertificate = \"a.pem\"\nkey = \"a.key\"\n");
        parse(&with_cert).unwrap().check_catalog(&catalog).unwrap();
        let msg = parse(&format!(
            "{with_cert}[[redirect]]\nbind = \"192.168.142.244:5000\"\n"
        ))
        .unwrap()
        .check_catalog(&catalog)
        .unwrap_err()
        .to_string();
        assert!(msg.contains("redirect[0].bind"), "{msg}");
    }

    /// `[vip]` and `[ebpf]` take their defaults from their own types, nowhere else.
    #[test]
    fn sections_default_to_their_subsystems_defaults() {
        let c = parse(&format!("{MINIMAL}[vip]\naddress = \"192.0.2.10\"\n")).unwrap();
        assert_eq!(c.vip, Some(VipSettings::new(Ipv4Addr::new(192, 0, 2, 10))));
        assert_eq!(c.ebpf, EbpfSettings::default());
        assert_eq!(
            c.ebpf.interface(c.vip.as_ref()),
            crate::vip::DEFAULT_INTERFACE
        );
        assert_eq!(c.proxy, ProxySettings::default());
        assert_eq!(c.timeouts, Timeouts::default());
    }

    #[test]
    fn vip_must_be_ipv4_and_test_knobs_are_no_keys() {
        let err = parse(&format!("{MINIMAL}[vip]\naddress = \"2001:db8::1\"\n")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("IPv4 only") && msg.contains("address"),
            "{msg}"
        );
        let err = parse(&format!(
            "{MINIMAL}[vip]\naddress = \"192.0.2.10\"\nprobe_count = 1\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("probe_count"), "{err}");
        let err = parse(&format!("{MINIMAL}[ebpf]\ninterface = \"\"\n")).unwrap_err();
        assert!(err.to_string().contains("ebpf.interface"), "{err}");
    }

    #[test]
    fn load_reports_missing_file() {
        let err = Config::load(Path::new("/nonexistent/router.toml")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/router.toml"),
            "{err}"
        );
    }

    #[test]
    fn load_resolves_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("router.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.path, path);
        assert_eq!(
            c.catalog[0],
            dir.path().join("endpoint-list-RegionOne.json")
        );
        // The catalog is read relative to the file too: missing here, and the error says which.
        let msg = c.load_catalog().unwrap_err().to_string();
        assert!(
            msg.contains(
                &*dir
                    .path()
                    .join("endpoint-list-RegionOne.json")
                    .to_string_lossy()
            ),
            "{msg}"
        );
    }

    /// The shipped examples are the configuration reference: they must stay valid.
    #[test]
    fn example_configs_load() {
        for (region, vip, backend) in [
            ("RegionOne", "192.168.142.244", "192.168.142.245"),
            ("RegionTwo", "192.168.144.244", "192.168.144.245"),
        ] {
            let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config"))
                .join(format!("{region}.toml"));
            let c = Config::load(&path).unwrap();
            assert_eq!(c.region, region);
            assert_eq!(c.backend, [server(backend.parse::<IpAddr>().unwrap())]);
            let v = c.vip.as_ref().unwrap();
            assert_eq!(
                (v.address, v.interface.as_str()),
                (vip.parse().unwrap(), "eth2")
            );
            assert_eq!(c.ebpf.mode, Mode::Auto);
            assert_eq!(c.ebpf.interface(c.vip.as_ref()), "eth2");
            assert_eq!(c.port_timeouts(9292).idle, Duration::from_secs(6 * 3600));
            assert_eq!(c.port_timeouts(8774).idle, Duration::from_secs(60));
            let names: Vec<&str> = c.passthrough.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(
                names,
                [
                    "mariadb",
                    "horizon",
                    "rabbitmq_management",
                    "nova_metadata",
                    "nova_novncproxy",
                    "glance_registry"
                ]
            );
            for (p, port, mode) in c
                .passthrough
                .iter()
                .zip([3306, 80, 15672, 8775, 6080, 9191])
                .zip([
                    PassthroughMode::Tcp,
                    PassthroughMode::Http,
                    PassthroughMode::Http,
                    PassthroughMode::Http,
                    PassthroughMode::Http,
                    PassthroughMode::Http,
                ])
                .map(|((p, port), m)| (p, port, m))
            {
                assert_eq!(
                    p.bind,
                    SocketAddr::new(vip.parse().unwrap(), port),
                    "{}",
                    p.name
                );
                assert_eq!(
                    p.backend,
                    SocketAddr::new(backend.parse().unwrap(), port),
                    "{}",
                    p.name
                );
                assert_eq!(p.mode, mode, "{}", p.name);
            }
            let catalog = c.load_catalog().unwrap();
            assert_eq!(catalog.entries().len(), 36);
            c.check_catalog(&catalog).unwrap();
        }
    }
}
