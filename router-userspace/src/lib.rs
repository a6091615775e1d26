//! scope-router: an OpenStackoïd scope-interpreting edge router.

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod catalog;
pub mod config;
pub mod decision;
pub mod ebpf;
pub mod error_chain;
// Entry points for the cargo-fuzz targets in `fuzz/` only (see the module).
#[doc(hidden)]
pub mod fuzzing;
pub mod handover;
pub mod haproxy;
pub mod health;
pub mod health_state;
pub mod listener;
mod lock;
pub mod log_writer;
pub mod metrics;
pub mod notify;
pub mod passthrough;
pub mod problem;
pub mod process;
pub mod proxy;
pub mod redirect;
pub mod reload;
pub mod report;
pub mod routing;
pub mod scope;
pub mod server_slots;
pub mod shutdown;
pub mod status;
pub mod tls;
pub mod vip;
pub mod vrrp;
