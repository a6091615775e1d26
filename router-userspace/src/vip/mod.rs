//! The VIP (docs/ARCHITECTURE.md §7): owns `address/32` on the VIP interface over netlink, announces it
//! with gratuitous ARP, puts it back when something removes it, and drops it on a clean exit.
//!
//! Everything here runs in the network namespace of the thread that calls [`start`]: the
//! netlink and AF_PACKET sockets are opened there and keep that namespace for their life,
//! so tasks spawned later may run on any runtime thread.
//!
//! Wiring: `run` takes `[vip]` (a [`VipSettings`]) from the config, calls [`claim`] before it loads eBPF
//! or binds anything (so a second router on the same VIP fails before touching anything),
//! [`VipClaim::start`] once it serves, and [`VipHandle::shutdown`] after the listeners have
//! drained; `scope-router status` calls [`status`] with the same address, interface and
//! state directory.

mod arp;
mod lock;
mod netlink;
mod packet;
mod reset;
mod state;
mod watch;

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use arp::{ArpOp, ArpPacket, MacAddr};
pub use lock::lock_file_path;
pub use netlink::interface_up;
pub use reset::reset_connections;
pub use state::{VipStatus, state_file_path, status};

use lock::OwnerLock;
use netlink::{AddOutcome, Netlink};
use packet::PacketSocket;
use state::StateFile;
use watch::Watcher;

/// Where the small per-VIP JSON state files live unless the settings say otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/scope-router";

/// The VIP interface unless the settings say otherwise (the seed deployment's).
pub const DEFAULT_INTERFACE: &str = "eth2";

/// `[vip]` of the configuration, plus knobs that only tests set (probe timing). The
/// defaults are the `default_*` functions below, used by the config and [`VipSettings::new`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipSettings {
    #[serde(deserialize_with = "ipv4_address")]
    pub address: Ipv4Addr,
    #[serde(default = "default_interface")]
    pub interface: String,
    /// `false`: never add, remove or announce the address (keepalived owns it).
    #[serde(default = "default_manage")]
    pub manage: bool,
    /// Leave the address on the interface when the router exits cleanly.
    #[serde(default = "default_keep_on_exit")]
    pub keep_on_exit: bool,
    /// Gratuitous ARP announcements per burst (keepalived's default is 5).
    #[serde(default = "default_garp_count")]
    pub garp_count: u32,
    /// Delay before the second burst (keepalived's `garp_master_delay`, 5 s).
    #[serde(
        default = "default_garp_repeat_delay",
        deserialize_with = "crate::config::duration"
    )]
    pub garp_repeat_delay: Duration,
    /// Take the address even when another host answers the ARP probe for it.
    #[serde(default = "default_take_over")]
    pub take_over: bool,
    /// Directory of the state file read by `scope-router status` and of the owner lock
    /// that keeps a second router from managing the same address.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// ARP probes sent before taking the address (RFC 5227 PROBE_NUM is 3).
    #[serde(skip, default = "default_probe_count")]
    pub probe_count: u32,
    /// Time to listen for an answer after each probe.
    #[serde(skip, default = "default_probe_interval")]
    pub probe_interval: Duration,
}

fn default_interface() -> String {
    DEFAULT_INTERFACE.to_owned()
}
fn default_manage() -> bool {
    true
}
fn default_keep_on_exit() -> bool {
    false
}
fn default_garp_count() -> u32 {
    5
}
fn default_garp_repeat_delay() -> Duration {
    Duration::from_secs(5)
}
fn default_take_over() -> bool {
    false
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_probe_count() -> u32 {
    3
}
fn default_probe_interval() -> Duration {
    Duration::from_millis(300)
}

/// The manager speaks ARP, so an IPv6 VIP is refused when the config is read.
fn ipv4_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Ipv4Addr, D::Error> {
    match <std::net::IpAddr as serde::Deserialize>::deserialize(d)? {
        std::net::IpAddr::V4(address) => Ok(address),
        std::net::IpAddr::V6(address) => Err(serde::de::Error::custom(format!(
            "VIP address {address} is IPv6; the VIP manager handles IPv4 only"
        ))),
    }
}

impl VipSettings {
    /// Settings with the documented defaults of `[vip]`.
    pub fn new(address: Ipv4Addr) -> Self {
        Self {
            address,
            interface: default_interface(),
            manage: default_manage(),
            keep_on_exit: default_keep_on_exit(),
            garp_count: default_garp_count(),
            garp_repeat_delay: default_garp_repeat_delay(),
            take_over: default_take_over(),
            state_dir: default_state_dir(),
            probe_count: default_probe_count(),
            probe_interval: default_probe_interval(),
        }
    }
}

/// Why the VIP could not be taken, kept or released. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error(
        "VIP interface {interface:?} does not exist in this network namespace: create it, \
         or set [vip] interface to the interface that carries the VIP's subnet"
    )]
    InterfaceMissing { interface: String },

    #[error(
        "VIP interface {interface:?} is down, so the VIP cannot be probed or announced: bring \
         it up (ip link set {interface} up) before starting scope-router"
    )]
    InterfaceDown { interface: String },

    #[error(
        "VIP interface {interface:?} has no Ethernet address, so neighbours cannot learn the \
         VIP by ARP: set [vip] interface to an Ethernet interface"
    )]
    NotEthernet { interface: String },

    #[error(
        "{operation} on {interface:?} was refused: managing the VIP needs CAP_NET_ADMIN and \
         sending ARP needs CAP_NET_RAW; run scope-router as root, grant both capabilities \
         (systemd: AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW), or set [vip] manage = false"
    )]
    PermissionDenied {
        operation: &'static str,
        interface: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "VIP {address} is in use: host {mac} answered the ARP probe on {interface:?}; stop the \
         other owner (keepalived, another scope-router) or set [vip] take_over = true to take \
         the address anyway"
    )]
    AddressInUse {
        address: Ipv4Addr,
        interface: String,
        mac: MacAddr,
    },

    #[error(
        "VIP {address} is already managed by another scope-router ({owner}, lock {}): stop \
         that router before starting this one (two managers would take the address from \
         each other), or set [vip] manage = false here to serve the address without \
         managing it",
        path.display(),
        owner = crate::lock::owner_text(*pid)
    )]
    AlreadyManaged {
        address: Ipv4Addr,
        /// `None` when `/proc/locks` does not show the owner.
        pid: Option<u32>,
        path: PathBuf,
    },

    #[error(
        "cannot open or lock the VIP lock file {}: make [vip] state_dir a writable \
         directory",
        path.display()
    )]
    LockFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("netlink: {operation} for VIP {address} on {interface:?} failed")]
    Netlink {
        operation: &'static str,
        address: Ipv4Addr,
        interface: String,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("{operation} on {interface:?} failed")]
    Socket {
        operation: &'static str,
        interface: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "cannot write the VIP state file {path}: make its directory writable or point the \
         state directory elsewhere"
    )]
    StateWrite {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot read the VIP state file {path}")]
    StateRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "the VIP state file {path} is not valid: delete it, the router rewrites it at its \
         next announcement"
    )]
    StateFormat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("the VIP watcher task of {address} stopped abnormally")]
    Task {
        address: Ipv4Addr,
        #[source]
        source: tokio::task::JoinError,
    },
}

pub(crate) use crate::error_chain::error_chain;

/// A running VIP manager. Call [`VipHandle::shutdown`] on a clean exit; dropping the
/// handle instead stops the watcher but leaves the address in place, as a crash would.
#[derive(Debug)]
pub struct VipHandle {
    settings: VipSettings,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Watcher>>,
    /// Dropped last, after the address is released and the final state written, so the
    /// next owner never races this one's cleanup.
    _lock: Option<OwnerLock>,
}

/// The right to manage a VIP: its owner lock, taken by [`claim`] (none when unmanaged).
#[derive(Debug)]
pub struct VipClaim {
    settings: VipSettings,
    lock: Option<OwnerLock>,
    /// Taken over from the router this one replaces, which leaves the address in place.
    handed_over: bool,
}

/// Takes the VIP's owner lock (`<state_dir>/vip-<address>.lock`) with `manage = true`;
/// fails with [`VipError::AlreadyManaged`], naming the owner's pid, while another router
/// manages the address. Blocking file I/O only: call it before anything else starts.
pub fn claim(settings: VipSettings) -> Result<VipClaim, VipError> {
    let lock = if settings.manage {
        Some(OwnerLock::acquire(&settings)?)
    } else {
        None
    };
    Ok(VipClaim {
        settings,
        lock,
        handed_over: false,
    })
}

/// The claim of a restart (`crate::handover`): the owner lock the running router handed
/// over (`None` when it managed no VIP: then the lock is taken as [`claim`] does). The
/// address stays on the interface throughout; the new router adopts it.
pub fn claim_handed_over(
    settings: VipSettings,
    lock: Option<std::os::fd::OwnedFd>,
) -> Result<VipClaim, VipError> {
    match lock {
        Some(fd) if settings.manage => Ok(VipClaim {
            lock: Some(OwnerLock::adopt(&settings, std::fs::File::from(fd))?),
            settings,
            handed_over: true,
        }),
        // Dropping an unneeded handed-over lock releases nothing the predecessor holds.
        _ => claim(settings),
    }
}

impl VipClaim {
    pub fn settings(&self) -> &VipSettings {
        &self.settings
    }

    /// Takes the claimed VIP; see [`start`].
    pub async fn start(self) -> Result<VipHandle, VipError> {
        let VipClaim {
            settings,
            lock,
            handed_over,
        } = self;
        match lock {
            Some(lock) => start_managed(settings, lock, handed_over, None).await,
            None => start_unmanaged(settings).await,
        }
    }

    /// Under VRRP: holds the claimed VIP only while `wanted` is true (this node is master),
    /// taking it with gratuitous ARP when it becomes so and releasing it (and resetting the
    /// connections bound to it) when it stops being so. No ARP probe: the election decides
    /// who owns the address, and the other master answers ARP for it by design.
    pub async fn start_following(
        self,
        wanted: tokio::sync::watch::Receiver<bool>,
    ) -> Result<VipHandle, VipError> {
        let VipClaim {
            settings,
            lock,
            handed_over,
        } = self;
        match lock {
            Some(lock) => start_managed(settings, lock, handed_over, Some(wanted)).await,
            None => start_unmanaged(settings).await,
        }
    }
}

/// Takes the VIP described by `settings` (see the module docs for the namespace rule):
/// [`claim`], then [`VipClaim::start`].
///
/// With `manage = true`: refuses a VIP another router manages, an interface that is missing or not Ethernet, adopts the
/// address if it is already there, otherwise probes for a conflicting owner, adds
/// `address/32`, announces it and starts watching. With `manage = false` it only records
/// the state for `scope-router status` and never touches the interface.
pub async fn start(settings: VipSettings) -> Result<VipHandle, VipError> {
    claim(settings)?.start().await
}

async fn start_managed(
    settings: VipSettings,
    lock: OwnerLock,
    handed_over: bool,
    wanted: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<VipHandle, VipError> {
    let state = StateFile::new(&settings);
    // Subscribe before looking so that a removal racing with the start is not missed.
    let (nl, events) = Netlink::connect(&settings, true)?;
    let link = nl.link(&settings.interface).await?;
    let mac = link.mac.ok_or_else(|| VipError::NotEthernet {
        interface: settings.interface.clone(),
    })?;
    let sender = PacketSocket::sender(&settings.interface)?;

    if let Some(wanted) = wanted {
        return start_following(settings, lock, nl, events, sender, state, link, wanted).await;
    }
    let adopted = match nl.find_address(link.index).await? {
        Some(_) if handed_over => {
            tracing::info!(
                vip = %settings.address,
                interface = %settings.interface,
                "VIP kept in place from the router this one replaces"
            );
            false
        }
        Some(existing) => {
            tracing::info!(
                vip = %settings.address,
                interface = %settings.interface,
                prefix_len = existing.header.prefix_len,
                "VIP already on the interface (left by a crashed run or by keepalived): adopting it"
            );
            true
        }
        None => {
            probe_for_owner(&settings, link.index, mac).await?;
            match nl.add_address(link.index).await? {
                AddOutcome::Added => {
                    tracing::info!(vip = %settings.address, interface = %settings.interface, "VIP added");
                    false
                }
                AddOutcome::AlreadyPresent => {
                    tracing::info!(
                        vip = %settings.address,
                        interface = %settings.interface,
                        "VIP appeared while it was being added: adopting it"
                    );
                    true
                }
            }
        }
    };
    nl.warn_if_elsewhere(link.index).await;

    let mut watcher = Watcher::new(settings.clone(), nl, events, sender, state, link, adopted);
    watcher.announce_now();
    watcher.record_state(true);

    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(watcher.run(stop_rx));
    Ok(VipHandle {
        settings,
        stop: Some(stop_tx),
        task: Some(task),
        _lock: Some(lock),
    })
}

/// The VRRP side of [`start_managed`]: the address follows `wanted` from the start.
#[allow(clippy::too_many_arguments)] // the pieces start_managed already opened
async fn start_following(
    settings: VipSettings,
    lock: OwnerLock,
    nl: Netlink,
    events: Option<netlink::Events>,
    sender: PacketSocket,
    state: StateFile,
    link: netlink::Link,
    wanted: tokio::sync::watch::Receiver<bool>,
) -> Result<VipHandle, VipError> {
    let master = *wanted.borrow();
    let present = nl.find_address(link.index).await?.is_some();
    let mut watcher = Watcher::new(settings.clone(), nl, events, sender, state, link, false);
    watcher.follow(wanted);
    if master {
        if !present {
            watcher.add_now().await?;
        }
        tracing::info!(vip = %settings.address, interface = %settings.interface, "VIP held (VRRP master)");
        watcher.announce_now();
    } else {
        if present {
            // A crashed run's leftover, or keepalived's before this node took over: a
            // backup holds no VIP (keepalived removes it the same way at start).
            watcher.remove().await?;
        }
        tracing::info!(vip = %settings.address, interface = %settings.interface, "VIP not held until this node is VRRP master");
    }
    watcher.record_state(true);
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(watcher.run(stop_rx));
    Ok(VipHandle {
        settings,
        stop: Some(stop_tx),
        task: Some(task),
        _lock: Some(lock),
    })
}

async fn start_unmanaged(settings: VipSettings) -> Result<VipHandle, VipError> {
    let state = StateFile::new(&settings);
    // Only a look: an unmanaged VIP may legitimately be absent until keepalived adds it.
    let present = match Netlink::connect(&settings, false) {
        Ok((nl, _)) => nl.is_present(&settings.interface).await.unwrap_or(false),
        Err(_) => false,
    };
    tracing::info!(
        vip = %settings.address,
        interface = %settings.interface,
        present,
        "VIP not managed ([vip] manage = false): the address is served but never added, removed or announced"
    );
    write_unmanaged_state(&settings, &state, true);
    Ok(VipHandle {
        settings,
        stop: None,
        task: None,
        _lock: None,
    })
}

/// An unmanaged router may run without privileges, so a state directory it cannot write
/// costs only the details of `scope-router status`: warn, do not fail. The state file is
/// the managing router's while one holds the lock: overwriting it would make `status`
/// report the VIP as unmanaged (or stopped) beside a router that manages it.
fn write_unmanaged_state(settings: &VipSettings, state: &StateFile, running: bool) {
    if let Some(pid) = OwnerLock::holder(settings) {
        tracing::info!(
            vip = %settings.address,
            owner = %crate::lock::owner_text(pid),
            "VIP managed by another scope-router: its state file is left to it"
        );
        return;
    }
    let mut record = state::VipState::unmanaged(settings);
    record.running = running;
    if let Err(e) = state.write(&record) {
        tracing::warn!(vip = %settings.address, error = %error_chain(&e), "VIP state not recorded");
    }
}

/// RFC 5227 probe: refuse (or, with `take_over`, warn) when another host claims the VIP.
async fn probe_for_owner(settings: &VipSettings, index: u32, mac: MacAddr) -> Result<(), VipError> {
    let Some(owner) = packet::probe(settings, index, mac).await? else {
        return Ok(());
    };
    if settings.take_over {
        tracing::warn!(
            vip = %settings.address,
            interface = %settings.interface,
            owner = %owner,
            "another host answers for the VIP; taking it over because [vip] take_over = true"
        );
        Ok(())
    } else {
        Err(VipError::AddressInUse {
            address: settings.address,
            interface: settings.interface.clone(),
            mac: owner,
        })
    }
}

impl VipHandle {
    pub fn settings(&self) -> &VipSettings {
        &self.settings
    }

    /// Clean shutdown: stops watching, then removes the address unless `keep_on_exit`
    /// (or `manage = false`). Only the VIP itself is ever removed.
    /// The locked owner-lock file, for a restart to hand over (`None`: unmanaged).
    pub fn lock_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self._lock.as_ref().map(OwnerLock::fd)
    }

    /// After a restart handed the VIP over: stops watching and leaves the address and the
    /// state file to the new router (whose copy of the lock keeps it held).
    pub async fn hand_over(mut self) {
        if let (Some(stop), Some(task)) = (self.stop.take(), self.task.take()) {
            let _ = stop.send(());
            let _ = task.await;
        }
        tracing::info!(vip = %self.settings.address, "VIP left in place for the new router");
    }

    pub async fn shutdown(mut self) -> Result<(), VipError> {
        let (Some(stop), Some(task)) = (self.stop.take(), self.task.take()) else {
            write_unmanaged_state(&self.settings, &StateFile::new(&self.settings), false);
            return Ok(());
        };
        // The watcher may already have ended; its result is what matters, not the send.
        let _ = stop.send(());
        let watcher = task.await.map_err(|source| VipError::Task {
            address: self.settings.address,
            source,
        })?;
        watcher.release().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_vip_section_of_the_api() {
        let s = VipSettings::new(Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(s.interface, "eth2");
        assert!(s.manage);
        assert!(!s.keep_on_exit);
        assert_eq!(s.garp_count, 5);
        assert_eq!(s.garp_repeat_delay, Duration::from_secs(5));
        assert!(!s.take_over);
        assert_eq!(s.state_dir, PathBuf::from("/run/scope-router"));
    }

    #[test]
    fn errors_say_what_to_fix() {
        let missing = VipError::InterfaceMissing {
            interface: "eth9".into(),
        };
        assert!(missing.to_string().contains("eth9"));
        assert!(missing.to_string().contains("[vip] interface"));

        let eperm = VipError::PermissionDenied {
            operation: "adding the VIP",
            interface: "eth2".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(eperm.to_string().contains("CAP_NET_ADMIN"));

        let in_use = VipError::AddressInUse {
            address: Ipv4Addr::new(192, 0, 2, 10),
            interface: "eth2".into(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
        };
        let text = in_use.to_string();
        assert!(text.contains("02:00:00:00:00:01"), "{text}");
        assert!(text.contains("take_over = true"), "{text}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unmanaged_start_survives_an_unwritable_state_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A regular file where the directory should be: no user can create it.
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, b"").expect("blocker file");
        let mut settings = VipSettings::new(Ipv4Addr::new(192, 0, 2, 10));
        settings.manage = false;
        settings.interface = "nosuch-vip0".into();
        settings.state_dir = blocker.join("state");
        let handle = start(settings)
            .await
            .expect("unmanaged start never fails on state");
        handle.shutdown().await.expect("unmanaged shutdown");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unmanaged_state_is_recorded_for_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = VipSettings::new(Ipv4Addr::new(192, 0, 2, 10));
        settings.manage = false;
        settings.interface = "nosuch-vip0".into();
        settings.state_dir = dir.path().to_owned();
        let handle = start(settings.clone()).await.expect("start");
        let st = status(settings.address, &settings.interface, dir.path())
            .await
            .expect("status");
        assert_eq!(st.managed, Some(false));
        assert_eq!(st.running, Some(true));
        assert!(!st.interface_present && !st.present, "{st}");
        assert!(st.last_announced.is_none());
        handle.shutdown().await.expect("shutdown");
        let st = status(settings.address, &settings.interface, dir.path())
            .await
            .expect("status");
        assert_eq!(st.running, Some(false));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_managing_claim_per_vip_and_unmanaged_ones_leave_its_state_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = VipSettings::new(Ipv4Addr::new(192, 0, 2, 10));
        settings.interface = "nosuch-vip0".into();
        settings.state_dir = dir.path().to_owned();
        let owner = claim(settings.clone()).expect("first claim");
        let err = claim(settings.clone()).expect_err("second managing claim");
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        // A second router that fails never touches the VIP (its start would reach
        // netlink here and fail on the missing interface instead).
        let err = start(settings.clone()).await.expect_err("second start");
        assert!(matches!(err, VipError::AlreadyManaged { .. }), "{err:?}");

        let mut unmanaged = settings.clone();
        unmanaged.manage = false;
        let handle = start(unmanaged.clone()).await.expect("unmanaged start");
        handle.shutdown().await.expect("unmanaged shutdown");
        let state = state_file_path(dir.path(), settings.address);
        assert!(
            !state.exists(),
            "an unmanaged router overwrote the managing router's state file"
        );

        drop(owner);
        let handle = start(unmanaged).await.expect("unmanaged start");
        assert!(state.exists(), "no managing router: the state is recorded");
        handle.shutdown().await.expect("unmanaged shutdown");
        let _owner = claim(settings).expect("claim after the owner left");
    }

    #[test]
    fn error_chain_includes_the_cause() {
        let err = VipError::Socket {
            operation: "sending ARP",
            interface: "eth2".into(),
            source: io::Error::from_raw_os_error(libc::ENETDOWN),
        };
        let chain = error_chain(&err);
        assert!(
            chain.starts_with("sending ARP on \"eth2\" failed: "),
            "{chain}"
        );
        assert!(chain.len() > "sending ARP on \"eth2\" failed: ".len());
    }
}
