//! The router's TOML configuration (DESIGN §5): parsing, defaults, path resolution, validation.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::catalog::{Catalog, CatalogError};

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
    pub backend: IpAddr,
    /// `[scope.defaults]`: service type → region, overriding "current region".
    pub scope_defaults: BTreeMap<String, String>,
    pub timeouts: Timeouts,
    pub ports: BTreeMap<u16, PortOverride>,
    pub proxy: ProxySettings,
    pub vip: Option<VipConfig>,
    pub ebpf: EbpfConfig,
    pub passthrough: Vec<Passthrough>,
}

/// Connection timeouts of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Time allowed to receive a complete request head.
    pub request_header: Duration,
    /// Time allowed to connect to the upstream.
    pub connect: Duration,
    /// Inactivity allowed on an established exchange (either direction).
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        // The seed HAProxy's values: `timeout http-request 10s`, `connect 10s`, `client/server 1m`.
        Timeouts {
            request_header: Duration::from_secs(10),
            connect: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}

/// `[ports.N]`: per-port overrides; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortOverride {
    pub request_header: Option<Duration>,
    pub connect: Option<Duration>,
    pub idle: Option<Duration>,
    /// Local backend for this port instead of `backend:N`.
    pub backend: Option<SocketAddr>,
}

/// `[proxy]`: HTTP handling limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxySettings {
    /// Largest accepted request head, in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// How long in-flight requests may finish after a shutdown signal.
    pub shutdown_grace: Duration,
}

impl Default for ProxySettings {
    fn default() -> ProxySettings {
        ProxySettings {
            max_header_bytes: 16384,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// `[vip]`: the address the router owns on `interface`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipConfig {
    pub address: IpAddr,
    pub interface: String,
    /// Add/watch/remove the address; `false` only uses it.
    pub manage: bool,
    /// Leave the address in place on shutdown.
    pub keep_on_exit: bool,
    pub garp_count: u32,
    pub garp_repeat_delay: Duration,
    /// Take the address even if another interface already carries it.
    pub take_over: bool,
}

/// How the router uses eBPF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EbpfMode {
    /// Use eBPF when the kernel allows it, otherwise bind directly.
    Auto,
    /// Fail when eBPF cannot be used.
    Required,
    /// Never load eBPF.
    Off,
}

/// An IP network, `addr/prefix_len`, with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// `[ebpf]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfConfig {
    pub mode: EbpfMode,
    /// Directory on bpffs holding the pinned maps.
    pub pin_path: PathBuf,
    /// Interface the XDP program attaches to.
    pub interface: String,
    /// Sources dropped by XDP.
    pub deny: Vec<Cidr>,
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
    pub backend: SocketAddr,
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

const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/scope-router";
const DEFAULT_INTERFACE: &str = "eth2";

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

    /// Timeouts of the scoped listener on `port` (global values with `[ports.N]` applied).
    pub fn port_timeouts(&self, port: u16) -> Timeouts {
        let mut t = self.timeouts;
        if let Some(o) = self.ports.get(&port) {
            t.request_header = o.request_header.unwrap_or(t.request_header);
            t.connect = o.connect.unwrap_or(t.connect);
            t.idle = o.idle.unwrap_or(t.idle);
        }
        t
    }

    /// The local backend of the scoped listener on `port`.
    pub fn port_backend(&self, port: u16) -> SocketAddr {
        self.ports
            .get(&port)
            .and_then(|o| o.backend)
            .unwrap_or_else(|| SocketAddr::new(self.backend, port))
    }
}

/// Two binds collide when they share a port and either the IPs match or one is a wildcard.
fn binds_collide(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a CIDR: `{addr}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => match l.trim().parse::<u8>() {
                Ok(l) if l <= max => l,
                _ => {
                    return Err(format!(
                        "`{s}` is not a CIDR: prefix length must be 0..={max}"
                    ));
                }
            },
        };
        let network = mask(addr, prefix_len);
        if network != addr {
            return Err(format!(
                "`{s}` has host bits set; did you mean {network}/{prefix_len}?"
            ));
        }
        Ok(Cidr { addr, prefix_len })
    }
}

impl Cidr {
    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix_len) == self.addr
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A duration written like `"10s"`, `"1m"`, `"6h"`.
#[derive(Debug, Clone, Copy)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
        let text = String::deserialize(d)?;
        match humantime::parse_duration(&text) {
            Ok(d) if d.is_zero() => Err(serde::de::Error::custom(format!(
                "duration \"{text}\" must be greater than zero"
            ))),
            Ok(d) => Ok(HumanDuration(d)),
            Err(e) => Err(serde::de::Error::custom(format!(
                "invalid duration \"{text}\" ({e}); write e.g. \"10s\", \"1m\" or \"6h\""
            ))),
        }
    }
}

fn dur(d: Option<HumanDuration>) -> Option<Duration> {
    d.map(|d| d.0)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    region: String,
    catalog: Vec<PathBuf>,
    backend: IpAddr,
    #[serde(default)]
    scope: RawScope,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    ports: BTreeMap<String, RawPort>,
    #[serde(default)]
    proxy: RawProxy,
    vip: Option<RawVip>,
    #[serde(default)]
    ebpf: RawEbpf,
    #[serde(default)]
    passthrough: Vec<RawPassthrough>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawScope {
    #[serde(default)]
    defaults: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    request_header: Option<HumanDuration>,
    connect: Option<HumanDuration>,
    idle: Option<HumanDuration>,
}

impl RawTimeouts {
    fn over(&self, base: Timeouts) -> Timeouts {
        Timeouts {
            request_header: dur(self.request_header).unwrap_or(base.request_header),
            connect: dur(self.connect).unwrap_or(base.connect),
            idle: dur(self.idle).unwrap_or(base.idle),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    request_header: Option<HumanDuration>,
    connect: Option<HumanDuration>,
    idle: Option<HumanDuration>,
    backend: Option<SocketAddr>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    max_header_bytes: Option<usize>,
    shutdown_grace: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    address: IpAddr,
    interface: Option<String>,
    manage: Option<bool>,
    keep_on_exit: Option<bool>,
    garp_count: Option<u32>,
    garp_repeat_delay: Option<HumanDuration>,
    take_over: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEbpf {
    mode: Option<EbpfMode>,
    pin_path: Option<PathBuf>,
    interface: Option<String>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPassthrough {
    name: String,
    bind: SocketAddr,
    backend: SocketAddr,
    mode: PassthroughMode,
    request_header: Option<HumanDuration>,
    connect: Option<HumanDuration>,
    idle: Option<HumanDuration>,
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

        let timeouts = self.timeouts.over(Timeouts::default());

        let mut ports = BTreeMap::new();
        for (key, raw) in self.ports {
            let port = match key.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => {
                    return Err(invalid(
                        &format!("ports.{key}"),
                        "section name must be a port number 1..=65535, e.g. [ports.9292]".into(),
                    ));
                }
            };
            ports.insert(
                port,
                PortOverride {
                    request_header: dur(raw.request_header),
                    connect: dur(raw.connect),
                    idle: dur(raw.idle),
                    backend: raw.backend,
                },
            );
        }

        let defaults = ProxySettings::default();
        let proxy = ProxySettings {
            max_header_bytes: self
                .proxy
                .max_header_bytes
                .unwrap_or(defaults.max_header_bytes),
            shutdown_grace: dur(self.proxy.shutdown_grace).unwrap_or(defaults.shutdown_grace),
        };
        // Below 1 KiB not even a token fits; refuse rather than answer 431 to everything.
        if proxy.max_header_bytes < 1024 {
            return Err(invalid(
                "proxy.max_header_bytes",
                format!(
                    "{} is too small; use at least 1024 (default 16384)",
                    proxy.max_header_bytes
                ),
            ));
        }

        let vip = match self.vip {
            None => None,
            Some(v) => {
                let interface = v.interface.unwrap_or_else(|| DEFAULT_INTERFACE.to_owned());
                if interface.is_empty() {
                    return Err(invalid(
                        "vip.interface",
                        "must name a network interface".into(),
                    ));
                }
                Some(VipConfig {
                    address: v.address,
                    interface,
                    manage: v.manage.unwrap_or(true),
                    keep_on_exit: v.keep_on_exit.unwrap_or(false),
                    garp_count: v.garp_count.unwrap_or(5),
                    garp_repeat_delay: dur(v.garp_repeat_delay).unwrap_or(Duration::from_secs(5)),
                    take_over: v.take_over.unwrap_or(false),
                })
            }
        };

        let pin_path = self
            .ebpf
            .pin_path
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_PATH));
        if !pin_path.is_absolute() {
            return Err(invalid(
                "ebpf.pin_path",
                format!(
                    "\"{}\" must be an absolute path on bpffs, e.g. \"{DEFAULT_PIN_PATH}\"",
                    pin_path.display()
                ),
            ));
        }
        let interface = match (self.ebpf.interface, &vip) {
            (Some(i), _) => i,
            (None, Some(v)) => v.interface.clone(),
            (None, None) => DEFAULT_INTERFACE.to_owned(),
        };
        if interface.is_empty() {
            return Err(invalid(
                "ebpf.interface",
                "must name a network interface".into(),
            ));
        }
        let mut deny = Vec::with_capacity(self.ebpf.deny.len());
        for (i, text) in self.ebpf.deny.iter().enumerate() {
            let cidr = text
                .parse::<Cidr>()
                .map_err(|e| invalid(&format!("ebpf.deny[{i}]"), e))?;
            deny.push(cidr);
        }
        let ebpf = EbpfConfig {
            mode: self.ebpf.mode.unwrap_or(EbpfMode::Auto),
            pin_path,
            interface,
            deny,
        };

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
            let timeouts = RawTimeouts {
                request_header: p.request_header,
                connect: p.connect,
                idle: p.idle,
            }
            .over(timeouts);
            passthrough.push(Passthrough {
                name: p.name,
                bind: p.bind,
                backend: p.backend,
                mode: p.mode,
                timeouts,
            });
        }

        Ok(Config {
            path: path.to_owned(),
            region: self.region,
            catalog,
            backend: self.backend,
            scope_defaults: self.scope.defaults,
            timeouts,
            ports,
            proxy,
            vip,
            ebpf,
            passthrough,
        })
    }
}
