//! The admin listener (docs/ARCHITECTURE.md §13): `/metrics`, `/status`, the status page
//! and `/healthz`, on `[admin] bind`, never on a VIP unless configured there.

use std::net::SocketAddr;

use serde::Deserialize;

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
