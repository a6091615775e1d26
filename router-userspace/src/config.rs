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
        todo!("{text}{}", path.display())
    }

    /// Loads the catalog files named by the config.
    pub fn load_catalog(&self) -> Result<Catalog, ConfigError> {
        Catalog::load(&self.catalog).map_err(|source| ConfigError::Catalog {
            path: self.path.clone(),
            source,
        })
    }

    /// Checks the keys that depend on the catalog: `region`, `[scope.defaults]`, and
    /// passthrough binds against the scoped listeners.
    pub fn check_catalog(&self, catalog: &Catalog) -> Result<(), ConfigError> {
        todo!("{catalog:?}")
    }

    /// Timeouts of the scoped listener on `port` (global values with `[ports.N]` applied).
    pub fn port_timeouts(&self, port: u16) -> Timeouts {
        todo!("{port}")
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        todo!("{s}")
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}
