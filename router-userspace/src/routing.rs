//! The routing table built once from config + catalog, and the per-request decision (DESIGN §3, §4).

use std::net::SocketAddr;

use crate::catalog::Catalog;
use crate::config::{Config, ConfigError, Timeouts};
use crate::decision::{Plan, RequestHead};
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
         literal; use the VIP address in the catalog URL",
        source_file.display()
    )]
    NotIpLiteral {
        backend: String,
        url: String,
        source_file: std::path::PathBuf,
    },
    #[error(
        "region {region} has no entry in the catalog, so there is nothing to listen on; \
         add its endpoint list to `catalog`"
    )]
    NoListeners { region: String },
}

/// The immutable routing table, shared as `Arc<Router>`.
#[derive(Debug)]
pub struct Router {
    region: std::sync::Arc<str>,
    listeners: Vec<ListenerSpec>,
}

impl Router {
    /// Builds the table; validates the catalog-dependent config keys.
    pub fn new(config: &Config, catalog: Catalog) -> Result<Router, RoutingError> {
        todo!("{config:?}{catalog:?}")
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

    /// Every distinct `host:port` of the current region.
    pub fn listeners(&self) -> &[ListenerSpec] {
        &self.listeners
    }

    /// The listener for an accepted socket's local address.
    pub fn listener(&self, local: SocketAddr) -> Option<&ListenerSpec> {
        self.listeners.iter().find(|l| l.addr == local)
    }

    /// Decides where a request goes (pure, no I/O).
    pub fn decide(&self, head: &RequestHead<'_>) -> Result<Plan, Problem> {
        todo!("{head:?}")
    }
}
