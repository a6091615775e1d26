//! Kernel-side steering: loads the embedded eBPF programs, pins their state on bpffs,
//! syncs the SERVICES/VIPS/DENY maps with the config at start, and reads counters back
//! for `scope-router status`.
//!
//! Entry points: [`start`] (the router, once at startup), [`Steering::shutdown`] (clean
//! exit: detach programs, keep counters) and [`read_status`] (any process, read-only).
//! [`Steering::update`] and [`Steering::replace_listener`] change a running steering in
//! place; `run` calls neither today (a changed config takes a restart, which reuses the
//! pins and syncs the maps the same way).
//!
//! How `run` (main.rs) wires it, in this order:
//!
//! ```text
//! let vip = vip::claim(..)?;                                      // before eBPF: see vip
//! let plan = ebpf::plan(&config, router.listeners());
//! for net in &plan.unenforced_deny { warn!("ebpf.deny {net}: IPv6 is not filtered") }
//! let steered = bind("127.0.0.1:0")?;                             // IPv4, this netns
//! match ebpf::start(&plan.steering, &steered)? {   // blocking: before the async runtime
//!     Startup::Steering(s) => serve `steered` for every plan.steering.services address,
//!                             bind plan.bind_directly + passthrough directly; keep `s`,
//!     Startup::Fallback(_) | Startup::Off => drop `steered`; bind every listener directly
//!                             (IP_FREEBIND) as without eBPF,
//! }
//! // runtime: serve, take the VIP; on SIGTERM drain the listeners, release the VIP, then
//! // s.shutdown() last (in spawn_blocking), so steering outlives the last response.
//! ```
//!
//! XDP drop lines (debug level, target `scope_router::xdp`, rate-limited per CPU in the
//! kernel) are forwarded into `tracing` by a thread [`Steering`] owns; see `kernel_log`.
//!
//! Traffic note: XDP drops all TCP to a VIP whose port is neither served nor passthrough,
//! including replies to connections the host opened *from* the VIP address; upstream
//! connections must use the interface's primary address (the kernel's default when the
//! VIP is an extra /32).

mod bpffs;
mod cidr;
mod kernel_log;
mod loader;
mod object;
mod pins;
mod status;
mod wiring;

use std::{fmt, net::SocketAddrV4, os::fd::AsFd, path::PathBuf};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::vip::VipSettings;

pub use loader::{Steering, XdpAttachMode};
pub use object::{OBJECT_ORIGIN, object_built};
pub use status::{
    CounterRow, DropLogTotals, ProgramKind, ProgramStatus, ServiceKind, Status, StatusError,
    read_status,
};
pub use wiring::{SteeringPlan, plan};

/// Where the state is pinned unless `ebpf.pin_path` says otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/scope-router";

/// `ebpf.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Use eBPF when the kernel and privileges allow; otherwise fall back to direct binds.
    #[default]
    Auto,
    /// eBPF or nothing: any missing piece is a startup error.
    Required,
    /// Never touch eBPF.
    Off,
}

impl Mode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Required => "required",
            Mode::Off => "off",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[ebpf]` of the configuration, with its defaults.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EbpfSettings {
    pub mode: Mode,
    /// The state directory; its parent must be (or become) a bpffs.
    pub pin_path: PathBuf,
    /// Where XDP attaches; `None` follows the VIP (see [`EbpfSettings::interface`]).
    pub interface: Option<String>,
    /// Sources dropped by XDP when they talk to a VIP (IPv4 only; see [`plan`]).
    #[serde(deserialize_with = "cidr::deny_list")]
    pub deny: Vec<IpNet>,
}

impl Default for EbpfSettings {
    fn default() -> Self {
        Self {
            mode: Mode::Auto,
            pin_path: PathBuf::from(DEFAULT_PIN_PATH),
            interface: None,
            deny: Vec::new(),
        }
    }
}

impl EbpfSettings {
    /// The interface XDP attaches to: `ebpf.interface`, else the VIP's, else the VIP
    /// manager's default. XDP guards the VIP, so by default it sits where the VIP lives.
    pub fn interface<'a>(&'a self, vip: Option<&'a VipSettings>) -> &'a str {
        match (&self.interface, vip) {
            (Some(interface), _) => interface,
            (None, Some(vip)) => &vip.interface,
            (None, None) => crate::vip::DEFAULT_INTERFACE,
        }
    }
}

/// Everything the loader needs: `[ebpf]` with the interface resolved and the deny list
/// reduced to what XDP enforces, plus the VIP:ports derived from the routing table.
#[derive(Clone, Debug)]
pub struct SteeringConfig {
    /// `ebpf.mode`.
    pub mode: Mode,
    /// `ebpf.pin_path`.
    pub pin_path: PathBuf,
    /// Where XDP is attached (the VIP interface).
    pub interface: String,
    /// The IPv4 entries of `ebpf.deny`.
    pub deny: Vec<Ipv4Net>,
    /// VIP:ports the proxy serves: steered by sk_lookup to the single listener.
    pub services: Vec<SocketAddrV4>,
    /// VIP:ports bound directly by someone else (e.g. `[[passthrough]]`): XDP lets them
    /// through, sk_lookup leaves them alone.
    pub passthrough: Vec<SocketAddrV4>,
}

impl SteeringConfig {
    /// The `[ebpf]` defaults with `mode`, and nothing to serve yet.
    pub fn new(mode: Mode) -> Self {
        let defaults = EbpfSettings::default();
        Self {
            mode,
            interface: defaults.interface(None).to_owned(),
            pin_path: defaults.pin_path,
            deny: Vec::new(),
            services: Vec::new(),
            passthrough: Vec::new(),
        }
    }
}

/// What [`start`] decided.
#[derive(Debug)]
pub enum Startup {
    /// eBPF steers every `services` VIP:port to the listener passed to [`start`]; keep
    /// this value alive and call [`Steering::shutdown`] on a clean exit.
    Steering(Steering),
    /// `mode = auto` and eBPF is unavailable (already logged once): bind every VIP:port
    /// directly (IP_FREEBIND).
    Fallback(Unavailable),
    /// `mode = off`: bind every VIP:port directly.
    Off,
}

/// Why eBPF steering cannot run here. Each message names the missing piece and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// The binary was built without the kernel programs.
    #[error(
        "this scope-router binary was built without its eBPF object (nightly, rust-src or bpf-linker were missing at build time); run `cargo xtask setup` and rebuild"
    )]
    ObjectNotBuilt,
    /// A capability is missing.
    #[error("missing capability {capability} (needed for {needed_for}); run as root or grant it")]
    MissingCapability {
        /// The capability name, e.g. `CAP_BPF`.
        capability: &'static str,
        /// What it is needed for.
        needed_for: &'static str,
    },
    /// The pin directory cannot be used.
    #[error("bpffs not usable at {}: {reason}", path.display())]
    Bpffs {
        /// The directory concerned.
        path: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
    /// Another scope-router holds the lock on this pin path: it is still running.
    #[error(
        "eBPF state at {} is in use by scope-router {}, which is still running; stop it first or give this instance its own ebpf.pin_path",
        path.display(),
        crate::lock::owner_text(*pid)
    )]
    InUse {
        /// The running router, when `/proc/locks` shows it.
        pid: Option<u32>,
        /// The state directory.
        path: PathBuf,
    },
    /// The XDP interface does not exist.
    #[error(
        "interface {name} not found in this network namespace; set ebpf.interface to the VIP interface"
    )]
    InterfaceMissing {
        /// `ebpf.interface`.
        name: String,
    },
    /// The config cannot be expressed in the maps.
    #[error("invalid eBPF steering config: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A kernel operation failed; `operation` names the kernel feature involved.
    #[error("{operation} failed: {source}")]
    Kernel {
        /// The operation, naming the kernel feature (e.g. "attaching sk_lookup (Linux 5.9+)").
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Pinning state on bpffs failed.
    #[error("{operation} at {}: {source}", path.display())]
    Pin {
        /// What was being done.
        operation: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Errors the caller must act on.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// `ebpf.mode = "required"` and steering could not start.
    #[error("ebpf.mode = \"required\" but eBPF steering cannot start: {0}")]
    Required(#[source] Unavailable),
    /// A restart could not take over the running router's steering.
    #[error("cannot take over the running router's eBPF steering: {0}; that router keeps serving")]
    HandOver(#[source] Unavailable),
    /// Another scope-router runs on the same pin path (any mode but `off`).
    #[error("another scope-router is already running here: {0}")]
    InUse(#[source] Unavailable),
    /// Updating a running steering in place ([`Steering::update`],
    /// [`Steering::replace_listener`]) failed.
    #[error("updating the eBPF maps under {}: {source}", pin_path.display())]
    Update {
        /// The state directory.
        pin_path: PathBuf,
        /// The underlying failure.
        #[source]
        source: Unavailable,
    },
    /// Detaching at shutdown failed; the programs may still be attached.
    #[error("detaching eBPF programs pinned under {}: {source}; remove the link_* files there to detach", pin_path.display())]
    Shutdown {
        /// The state directory.
        pin_path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Starts eBPF steering according to `config.mode`.
///
/// `listener` is the proxy's single listening TCP socket (bound anywhere, e.g.
/// `127.0.0.1:0`, in this network namespace); it goes into the SOCKMAP and receives every
/// connection for `config.services`, with `local_addr()` = the VIP:port the client
/// dialled. Blocking (bpf syscalls, bpffs): call it before entering the async runtime or
/// from `spawn_blocking`. The sk_lookup program is attached to the calling thread's
/// network namespace.
pub fn start(config: &SteeringConfig, listener: &impl AsFd) -> Result<Startup, EbpfError> {
    start_handed_over(config, listener, None)
}

/// [`start`] on a restart (`crate::handover`): `pin_lock` is the locked pin directory the
/// running router handed over (`None` when it ran without eBPF). Its maps are reused and
/// its attached programs replaced in place, never detached in between.
pub fn start_handed_over(
    config: &SteeringConfig,
    listener: &impl AsFd,
    pin_lock: Option<std::os::fd::OwnedFd>,
) -> Result<Startup, EbpfError> {
    if config.mode == Mode::Off {
        tracing::info!("ebpf.mode = off: binding every VIP:port directly");
        return Ok(Startup::Off);
    }
    let handed_over = pin_lock.is_some();
    match Steering::start(config, listener.as_fd(), pin_lock.map(std::fs::File::from)) {
        Ok(steering) => Ok(Startup::Steering(steering)),
        // The running router's programs still steer to its socket: binding directly beside
        // them would split the traffic, so the restart fails and that router carries on.
        Err(reason) if handed_over => Err(EbpfError::HandOver(reason)),
        // Not a missing kernel feature but a duplicate instance: falling back to direct
        // binds would start a second router beside the one that owns the steering.
        Err(reason @ Unavailable::InUse { .. }) => Err(EbpfError::InUse(reason)),
        Err(reason) if config.mode == Mode::Auto => {
            tracing::warn!(
                "eBPF steering unavailable, binding every VIP:port directly (ebpf.mode = auto): {reason}"
            );
            Ok(Startup::Fallback(reason))
        }
        Err(reason) => Err(EbpfError::Required(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steering_can_move_into_the_runtime() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Steering>();
        assert_send_sync::<Unavailable>();
        assert_send_sync::<EbpfError>();
    }

    #[test]
    fn off_never_touches_the_pin_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SteeringConfig::new(Mode::Off);
        config.pin_path = dir.path().join("state");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(matches!(start(&config, &listener).unwrap(), Startup::Off));
        assert!(!config.pin_path.exists());
    }
}
