//! Loads the programs, reuses or creates the pinned maps, syncs them with the config and
//! attaches sk_lookup (network namespace) and XDP (VIP interface) through pinned links.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    fmt, fs,
    net::SocketAddrV4,
    os::{
        fd::{AsFd as _, BorrowedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapInfo, PerCpuHashMap, SockMap},
    programs::{SkLookup, Xdp, XdpMode, links::FdLink, links::PinnedLink, xdp::XdpLink},
};
use ipnet::Ipv4Net;
use router_common::{
    COUNTERS_MAP, Counters, DENY_MAP, DROP_LOG_MAP, DenyAddr, DropLog, LISTENER_INDEX,
    MAX_COUNTERS, MAX_DENY, MAX_SERVICES, META_MAP, Meta, OTHER_PORT, SERVICE_STEER, SERVICES_MAP,
    SK_LOOKUP_PROGRAM, SOCKETS_MAP, VIPS_MAP, VipPort, XDP_MODE_DRV, XDP_MODE_SKB, XDP_PROGRAM,
};
use serde::Serialize;

use super::{
    SteeringConfig, Unavailable, bpffs,
    cidr::{deny_key, deny_net},
    kernel_log::KernelLog,
    object::{OBJECT, object_built},
    pins::{self, LINK_SK_LOOKUP, LINK_XDP, Staging},
};
use crate::lock::{LockError, OwnerLock};

/// How XDP ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// Native mode, run by the driver (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// Generic mode, run by the stack on an skb (`XDP_FLAGS_SKB_MODE`); slower.
    Generic,
}

impl XdpAttachMode {
    pub(crate) fn from_meta(value: u32) -> Option<Self> {
        match value {
            XDP_MODE_DRV => Some(Self::Native),
            XDP_MODE_SKB => Some(Self::Generic),
            _ => None,
        }
    }

    fn to_meta(self) -> u32 {
        match self {
            Self::Native => XDP_MODE_DRV,
            Self::Generic => XDP_MODE_SKB,
        }
    }
}

impl fmt::Display for XdpAttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native (driver)",
            Self::Generic => "generic (skb)",
        })
    }
}

/// Running eBPF steering; owns the pin directory's lock. Dropping it without
/// [`Steering::shutdown`] releases the lock but leaves the programs attached through their
/// pinned links (as after a crash): the next start replaces them.
pub struct Steering {
    // Forwards XDP drop lines into `tracing`; `None` when that could not start (warned).
    kernel_log: Option<KernelLog>,
    ebpf: Ebpf,
    pin_path: PathBuf,
    interface: String,
    xdp_mode: XdpAttachMode,
    // Our own fds on the links; the pins keep them attached beyond our lifetime.
    links: Vec<FdLink>,
    // Ownership of `pin_path`; declared last so it is released only after everything
    // above is closed.
    _lock: OwnerLock,
}

impl fmt::Debug for Steering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Steering")
            .field("pin_path", &self.pin_path)
            .field("interface", &self.interface)
            .field("xdp_mode", &self.xdp_mode)
            .finish_non_exhaustive()
    }
}

fn kernel(
    operation: &'static str,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> Unavailable {
    move |source| Unavailable::Kernel { operation, source }
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(
    err: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(err)
}

impl Steering {
    /// `handed_over`: the locked pin directory a running router handed over on a restart
    /// (`crate::handover`); its programs stay attached until this start's replace them.
    pub(crate) fn start(
        config: &SteeringConfig,
        listener: BorrowedFd<'_>,
        handed_over: Option<fs::File>,
    ) -> Result<Self, Unavailable> {
        if !object_built() {
            return Err(Unavailable::ObjectNotBuilt);
        }
        let desired = Desired::from_config(config)?;
        bpffs::check_capabilities()?;
        let ifindex = interface_index(&config.interface)?;
        let root = bpffs::pin_root(&config.pin_path)?;
        bpffs::ensure_mounted(&root)?;
        raise_memlock_limit();

        let in_use = |pid| Unavailable::InUse {
            pid,
            path: config.pin_path.clone(),
        };
        let lock_failed = |source| Unavailable::Pin {
            operation: "locking the eBPF state directory",
            path: config.pin_path.clone(),
            source,
        };
        let existing = match handed_over {
            Some(dir) => match OwnerLock::adopt(dir, &config.pin_path) {
                Ok(lock) => Some((lock, true)),
                Err(LockError::Held { pid }) => return Err(in_use(pid)),
                Err(LockError::Io(source)) => return Err(lock_failed(source)),
            },
            None => match pins::lock_existing(&config.pin_path) {
                Ok(lock) => lock.map(|lock| (lock, false)),
                Err(LockError::Held { pid }) => return Err(in_use(pid)),
                Err(LockError::Io(source)) => return Err(lock_failed(source)),
            },
        };
        let (dir, state) = match existing {
            Some((lock, true)) => {
                tracing::info!(pin_path = %config.pin_path.display(), "eBPF state handed over by the router this one replaces: replacing its programs in place");
                drop_incompatible_pins(&config.pin_path);
                (config.pin_path.clone(), State::HandedOver(lock))
            }
            Some((lock, false)) => {
                tracing::info!(pin_path = %config.pin_path.display(), "reusing pinned eBPF maps; counters continue");
                // Ours alone now: whatever is attached was left by a router that is gone.
                detach_stale(&config.pin_path)?;
                drop_incompatible_pins(&config.pin_path);
                (config.pin_path.clone(), State::Reused(lock))
            }
            None => {
                let staging =
                    Staging::create(&config.pin_path).map_err(|source| Unavailable::Pin {
                        operation: "creating the eBPF staging directory",
                        path: root.clone(),
                        source,
                    })?;
                (staging.path().to_path_buf(), State::Staged(staging))
            }
        };

        let replace = matches!(state, State::HandedOver(_));
        let attached = attach_all(config, &desired, &dir, listener, ifindex, replace);
        let (mut ebpf, xdp_mode, links) = match attached {
            Ok(done) => done,
            Err(err) => {
                // A router that started at the same moment and won the rename owns the
                // interface now, which is why our attach failed: report it as such, so
                // `auto` does not fall back to direct binds beside it.
                if let (State::Staged(_), Some(pid)) =
                    (&state, crate::lock::holder(&config.pin_path))
                {
                    return Err(in_use(pid));
                }
                if matches!(state, State::Reused(_)) {
                    // Do not leave half of a new attachment steering to a listener the
                    // caller is about to abandon for direct binds.
                    remove_links(&dir);
                }
                return Err(err);
            }
        };

        let lock = match state {
            State::Reused(lock) | State::HandedOver(lock) => lock,
            State::Staged(staging) => match staging.commit(&config.pin_path) {
                Ok(lock) => lock,
                // Another router started at the same moment and renamed its state into
                // place first; dropping ours detaches what we attached.
                Err(err) if matches!(err.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
                    return Err(in_use(crate::lock::holder(&config.pin_path).flatten()));
                }
                Err(source) => {
                    return Err(Unavailable::Pin {
                        operation: "renaming the eBPF staging directory into place",
                        path: config.pin_path.clone(),
                        source,
                    });
                }
            },
        };
        let kernel_log = KernelLog::start(&mut ebpf)
            .inspect_err(|err| {
                tracing::warn!(
                    "XDP drop lines will not be logged (drops are still counted): {err}"
                );
            })
            .ok();
        tracing::info!(
            pin_path = %config.pin_path.display(),
            interface = %config.interface,
            services = desired.services.len(),
            object = super::OBJECT_ORIGIN,
            "eBPF steering active (sk_lookup + XDP {xdp_mode})"
        );
        Ok(Self {
            kernel_log,
            ebpf,
            pin_path: config.pin_path.clone(),
            interface: config.interface.clone(),
            xdp_mode,
            links,
            _lock: lock,
        })
    }

    /// The pinned state directory.
    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    /// Whether both programs are still attached through their pinned links (something
    /// removing a link pin detaches that program once its last descriptor closes).
    pub fn attached(&self) -> bool {
        [LINK_XDP, LINK_SK_LOOKUP]
            .iter()
            .all(|link| self.pin_path.join(link).exists())
    }

    /// The locked pin directory, for a restart to hand over.
    pub fn lock_fd(&self) -> BorrowedFd<'_> {
        self._lock.file().as_fd()
    }

    /// The interface XDP is attached to.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// How XDP is attached.
    pub fn xdp_mode(&self) -> XdpAttachMode {
        self.xdp_mode
    }

    /// Points steering at another listening socket, for a caller that re-creates its
    /// listener without restarting (`run` keeps one listener for its whole life).
    pub fn replace_listener(
        &mut self,
        listener: &impl std::os::fd::AsFd,
    ) -> Result<(), super::EbpfError> {
        set_listener(&mut self.ebpf, listener.as_fd()).map_err(|source| super::EbpfError::Update {
            pin_path: self.pin_path.clone(),
            source,
        })
    }

    /// Replaces the served, passthrough and denied sets in place, without detaching. There
    /// is no config reload yet (`run` never calls this; a restart syncs the maps at start);
    /// it is here for one. New entries are added before stale ones are removed, so traffic
    /// that stays served is never dropped in between.
    pub fn update(
        &mut self,
        services: &[SocketAddrV4],
        passthrough: &[SocketAddrV4],
        deny: &[Ipv4Net],
    ) -> Result<(), super::EbpfError> {
        let wrap = |source| super::EbpfError::Update {
            pin_path: self.pin_path.clone(),
            source,
        };
        let desired = Desired::new(services, passthrough, deny).map_err(wrap)?;
        sync_maps(&mut self.ebpf, &desired).map_err(|source| super::EbpfError::Update {
            pin_path: self.pin_path.clone(),
            source,
        })
    }

    /// Clean exit: detaches both programs (their pinned links are removed) and keeps the
    /// maps pinned so counters continue on the next start.
    pub fn shutdown(mut self) -> Result<(), super::EbpfError> {
        // Best effort: status shows "not attached" even if the unpin below fails.
        if let Err(err) = write_meta(&mut self.ebpf, Meta::default()) {
            tracing::warn!("could not clear eBPF attach metadata: {err}");
        }
        if let Some(map) = self.ebpf.map_mut(SOCKETS_MAP)
            && let Ok(mut sockets) = SockMap::try_from(map)
        {
            // The entry vanishes anyway once the listener closes; clearing it now stops
            // steering even if the proxy keeps the socket a little longer.
            let _ignored = sockets.clear_index(&LISTENER_INDEX);
        }
        for name in [LINK_XDP, LINK_SK_LOOKUP] {
            let path = self.pin_path.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(super::EbpfError::Shutdown {
                        pin_path: self.pin_path.clone(),
                        source,
                    });
                }
            }
        }
        // Closing our fds releases the now unpinned links, which detaches the programs.
        self.links.clear();
        // Detached: nothing new arrives, so forward what is left and stop the reader.
        drop(self.kernel_log.take());
        tracing::info!(pin_path = %self.pin_path.display(), "eBPF programs detached; counters kept");
        Ok(())
    }
}

/// The state directory a start works in.
enum State {
    /// The pin path existed: locked, and attached to in place.
    Reused(OwnerLock),
    /// First start: a locked staging directory, renamed to the pin path at the end.
    Staged(Staging),
    /// A restart: the running router's directory, its lock handed over; the attached
    /// programs are replaced without a moment of detachment.
    HandedOver(OwnerLock),
}

/// Loads, syncs and attaches; everything that can fail after the state directory is chosen.
fn attach_all(
    config: &SteeringConfig,
    desired: &Desired,
    dir: &Path,
    listener: BorrowedFd<'_>,
    ifindex: u32,
    replace: bool,
) -> Result<(Ebpf, XdpAttachMode, Vec<FdLink>), Unavailable> {
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(dir)
        .load(OBJECT)
        .map_err(|err| Unavailable::Kernel {
            operation: "loading the eBPF object (needs BPF hash, per-CPU hash, LPM trie and SOCKMAP maps)",
            source: boxed(err),
        })?;
    sync_maps(&mut ebpf, desired)?;
    set_listener(&mut ebpf, listener)?;

    let mut links = Vec::new();
    let previous = replace.then(|| read_meta(&mut ebpf)).flatten();
    let xdp_mode = match previous.and_then(|m| XdpAttachMode::from_meta(m.xdp_mode)) {
        Some(mode) if dir.join(LINK_XDP).exists() => {
            replace_xdp(&mut ebpf, dir, &mut links)?;
            mode
        }
        _ => attach_xdp(&mut ebpf, &config.interface, dir, &mut links)?,
    };
    let netns_inode = attach_sk_lookup(&mut ebpf, dir, &mut links, replace)?;
    write_meta(
        &mut ebpf,
        Meta {
            xdp_ifindex: ifindex,
            xdp_mode: xdp_mode.to_meta(),
            netns_inode,
            pid: std::process::id(),
            pad: 0,
            attached_at: unix_now(),
            ifname: ifname_bytes(&config.interface),
        },
    )?;
    Ok((ebpf, xdp_mode, links))
}

/// Unpins our links after a failed start so no half-attached steering stays behind.
fn remove_links(dir: &Path) {
    for name in [LINK_XDP, LINK_SK_LOOKUP] {
        let path = dir.join(name);
        if let Err(err) = fs::remove_file(&path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(link = %path.display(), "could not remove pinned link: {err}");
        }
    }
}

/// The map contents a config asks for.
struct Desired {
    services: BTreeMap<VipPort, u32>,
    vips: BTreeSet<u32>,
    deny: BTreeSet<Ipv4Net>,
}

impl Desired {
    fn from_config(config: &SteeringConfig) -> Result<Self, Unavailable> {
        Self::new(&config.services, &config.passthrough, &config.deny)
    }

    fn new(
        services: &[SocketAddrV4],
        passthrough: &[SocketAddrV4],
        deny: &[Ipv4Net],
    ) -> Result<Self, Unavailable> {
        let mut map = BTreeMap::new();
        // Passthrough first: a VIP:port listed in both is served by the proxy.
        for (addrs, flags) in [(passthrough, 0), (services, SERVICE_STEER)] {
            for addr in addrs {
                if addr.ip().is_unspecified() || addr.port() == 0 {
                    return Err(Unavailable::Config {
                        reason: format!(
                            "{addr} cannot be steered: eBPF needs a concrete VIP address and port"
                        ),
                    });
                }
                map.insert(VipPort::new(addr.ip().octets(), addr.port()), flags);
            }
        }
        if map.len() > MAX_SERVICES as usize {
            return Err(Unavailable::Config {
                reason: format!(
                    "{} VIP:ports exceed the map capacity of {MAX_SERVICES}",
                    map.len()
                ),
            });
        }
        if deny.len() > MAX_DENY as usize {
            return Err(Unavailable::Config {
                reason: format!(
                    "{} deny entries exceed the map capacity of {MAX_DENY}",
                    deny.len()
                ),
            });
        }
        Ok(Self {
            vips: map.keys().map(|key| key.addr).collect(),
            services: map,
            deny: deny.iter().map(Ipv4Net::trunc).collect(),
        })
    }
}

fn map_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::maps::Map, Unavailable> {
    ebpf.map_mut(name).ok_or_else(|| Unavailable::Kernel {
        operation: "finding a map in the eBPF object",
        source: format!("map {name} missing; the embedded object is out of date, rebuild").into(),
    })
}

fn sync_maps(ebpf: &mut Ebpf, desired: &Desired) -> Result<(), Unavailable> {
    let map_error = kernel("updating the eBPF maps");
    let mut services: HashMap<&mut MapData, VipPort, u32> =
        HashMap::try_from(map_mut(ebpf, SERVICES_MAP)?)
            .map_err(|e| kernel("opening SERVICES")(boxed(e)))?;
    let result = (|| {
        for (key, flags) in &desired.services {
            services.insert(key, flags, 0)?;
        }
        let stale: Vec<VipPort> = services
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !desired.services.contains_key(key))
            .collect();
        for key in stale {
            services.remove(&key)?;
        }
        Ok::<(), aya::maps::MapError>(())
    })();
    result.map_err(|e| map_error(boxed(e)))?;

    let mut vips: HashMap<&mut MapData, u32, u32> = HashMap::try_from(map_mut(ebpf, VIPS_MAP)?)
        .map_err(|e| kernel("opening VIPS")(boxed(e)))?;
    let result = (|| {
        for addr in &desired.vips {
            vips.insert(addr, 1, 0)?;
        }
        let stale: Vec<u32> = vips
            .keys()
            .filter_map(Result::ok)
            .filter(|addr| !desired.vips.contains(addr))
            .collect();
        for addr in stale {
            vips.remove(&addr)?;
        }
        Ok::<(), aya::maps::MapError>(())
    })();
    result.map_err(|e| kernel("updating VIPS")(boxed(e)))?;

    // Counters of VIP:ports no longer configured would otherwise pile up across restarts
    // with changed configs until the map is full; configured ones are kept, so their
    // counts continue.
    let mut counters: PerCpuHashMap<&mut MapData, VipPort, Counters> =
        PerCpuHashMap::try_from(map_mut(ebpf, COUNTERS_MAP)?)
            .map_err(|e| kernel("opening COUNTERS")(boxed(e)))?;
    let stale: Vec<VipPort> = counters
        .keys()
        .filter_map(Result::ok)
        .filter(|key| {
            let other = key.port == OTHER_PORT && desired.vips.contains(&key.addr);
            !other && !desired.services.contains_key(key)
        })
        .collect();
    for key in stale {
        counters
            .remove(&key)
            .map_err(|e| kernel("pruning COUNTERS")(boxed(e)))?;
    }

    let mut deny: LpmTrie<&mut MapData, DenyAddr, u32> =
        LpmTrie::try_from(map_mut(ebpf, DENY_MAP)?)
            .map_err(|e| kernel("opening DENY")(boxed(e)))?;
    let result = (|| {
        for net in &desired.deny {
            deny.insert(&deny_key(*net), 1, 0)?;
        }
        // A key that is no network at all cannot be wanted either: remove it too.
        let stale: Vec<_> = deny
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !deny_net(key).is_some_and(|net| desired.deny.contains(&net)))
            .collect();
        for key in stale {
            deny.remove(&key)?;
        }
        Ok::<(), aya::maps::MapError>(())
    })();
    result.map_err(|e| kernel("updating DENY")(boxed(e)))
}

fn set_listener(ebpf: &mut Ebpf, listener: BorrowedFd<'_>) -> Result<(), Unavailable> {
    let mut sockets = SockMap::try_from(map_mut(ebpf, SOCKETS_MAP)?)
        .map_err(|e| kernel("opening SOCKETS")(boxed(e)))?;
    sockets.set(LISTENER_INDEX, &listener, 0).map_err(|e| {
        kernel("putting the listening socket into the SOCKMAP (must be a listening TCP socket)")(
            boxed(e),
        )
    })
}

/// What the previous router recorded, if it is readable.
fn read_meta(ebpf: &mut Ebpf) -> Option<Meta> {
    let array: Array<&mut MapData, Meta> = Array::try_from(map_mut(ebpf, META_MAP).ok()?).ok()?;
    array.get(&0, 0).ok()
}

fn write_meta(ebpf: &mut Ebpf, meta: Meta) -> Result<(), Unavailable> {
    let mut array: Array<&mut MapData, Meta> =
        Array::try_from(map_mut(ebpf, META_MAP)?).map_err(|e| kernel("opening META")(boxed(e)))?;
    array
        .set(0, meta, 0)
        .map_err(|e| kernel("writing META")(boxed(e)))
}

/// Removes links a previous run left pinned (crash, or `kill -9`), so the new programs
/// can take over. The maps stay: that is what keeps the counters.
fn detach_stale(dir: &Path) -> Result<(), Unavailable> {
    for name in [LINK_XDP, LINK_SK_LOOKUP] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        tracing::warn!(link = %path.display(), "replacing an eBPF attachment left by a previous run");
        // The kernel releases the link once neither the pin nor an fd references it.
        fs::remove_file(&path).map_err(|source| Unavailable::Pin {
            operation: "removing a stale pinned link",
            path,
            source,
        })?;
    }
    Ok(())
}

/// Unpins maps whose layout differs from this build's (an upgrade changed a type), so the
/// loader recreates them instead of writing mis-sized values into the old ones. Only the
/// affected map starts from zero; compatible counters carry on.
fn drop_incompatible_pins(dir: &Path) {
    use std::mem::size_of;
    let expected: [(&str, usize, usize, u32); 6] = [
        (
            SERVICES_MAP,
            size_of::<VipPort>(),
            size_of::<u32>(),
            MAX_SERVICES,
        ),
        (VIPS_MAP, size_of::<u32>(), size_of::<u32>(), MAX_SERVICES),
        (
            DENY_MAP,
            size_of::<u32>() + size_of::<DenyAddr>(),
            size_of::<u32>(),
            MAX_DENY,
        ),
        (
            COUNTERS_MAP,
            size_of::<VipPort>(),
            size_of::<Counters>(),
            MAX_COUNTERS,
        ),
        (META_MAP, size_of::<u32>(), size_of::<Meta>(), 1),
        (DROP_LOG_MAP, size_of::<u32>(), size_of::<DropLog>(), 1),
    ];
    for (name, key, value, max_entries) in expected {
        let path = dir.join(name);
        let Ok(info) = MapInfo::from_pin(&path) else {
            continue;
        };
        let fits = info.key_size() as usize == key
            && info.value_size() as usize == value
            && info.max_entries() == max_entries;
        if !fits {
            tracing::warn!(
                map = %path.display(),
                "pinned map has another layout than this build; recreating it (its contents restart from zero)"
            );
            if let Err(err) = fs::remove_file(&path) {
                tracing::warn!(map = %path.display(), "could not unpin incompatible map: {err}");
            }
        }
    }
}

/// The object's XDP program, loaded (verified) into the kernel.
fn load_xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp, Unavailable> {
    let program: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or_else(|| {
            kernel("finding the XDP program")(
                format!("{XDP_PROGRAM} missing from the object").into(),
            )
        })?
        .try_into()
        .map_err(|e| kernel("finding the XDP program")(boxed(e)))?;
    program
        .load()
        .map_err(|e| kernel("loading the XDP program (verifier)")(boxed(e)))?;
    Ok(program)
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    interface: &str,
    dir: &Path,
    links: &mut Vec<FdLink>,
) -> Result<XdpAttachMode, Unavailable> {
    let program = load_xdp(ebpf)?;
    // Native first; generic only as an explicit, logged second choice.
    let (link_id, mode) = match program.attach(interface, XdpMode::Driver) {
        Ok(id) => (id, XdpAttachMode::Native),
        Err(native_err) => {
            let id = program.attach(interface, XdpMode::Skb).map_err(|e| {
                kernel("attaching XDP to the VIP interface (native and generic both failed)")(
                    format!("native: {native_err}; generic: {e}").into(),
                )
            })?;
            tracing::warn!(
                %interface,
                "native XDP unavailable ({native_err}); attached in generic (skb) mode"
            );
            (id, XdpAttachMode::Generic)
        }
    };
    tracing::info!(%interface, "XDP attached in {mode} mode");
    let link = program
        .take_link(link_id)
        .map_err(|e| kernel("taking the XDP link")(boxed(e)))?;
    let link = FdLink::try_from(link).map_err(|e| {
        kernel("pinning the XDP link (needs bpf_link XDP attachment, Linux 5.9+)")(boxed(e))
    })?;
    links.push(pin(link, &dir.join(LINK_XDP))?);
    Ok(mode)
}

/// A restart: swaps this build's XDP program into the pinned link the running router
/// attached (`BPF_LINK_UPDATE`, atomic: every packet meets one program or the other).
fn replace_xdp(ebpf: &mut Ebpf, dir: &Path, links: &mut Vec<FdLink>) -> Result<(), Unavailable> {
    let program = load_xdp(ebpf)?;
    let path = dir.join(LINK_XDP);
    let pinned = PinnedLink::from_pin(&path).map_err(|e| Unavailable::Pin {
        operation: "opening the pinned XDP link",
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    let link = XdpLink::try_from(FdLink::from(pinned))
        .map_err(|e| kernel("opening the pinned XDP link")(boxed(e)))?;
    let link_id = program
        .attach_to_link(link)
        .map_err(|e| kernel("replacing the XDP program in its link (Linux 5.9+)")(boxed(e)))?;
    let link = program
        .take_link(link_id)
        .map_err(|e| kernel("taking the XDP link")(boxed(e)))?;
    links.push(FdLink::try_from(link).map_err(|e| kernel("taking the XDP link")(boxed(e)))?);
    tracing::info!("XDP program replaced in place");
    Ok(())
}

/// Attaches sk_lookup. On a restart (`replace`) the running router's program stays
/// attached beside this one until it exits (both steer to the same socket through the same
/// map), and the pin moves to the new link by rename, so the netns is never without one.
fn attach_sk_lookup(
    ebpf: &mut Ebpf,
    dir: &Path,
    links: &mut Vec<FdLink>,
    replace: bool,
) -> Result<u64, Unavailable> {
    let program: &mut SkLookup = ebpf
        .program_mut(SK_LOOKUP_PROGRAM)
        .ok_or_else(|| {
            kernel("finding the sk_lookup program")(
                format!("{SK_LOOKUP_PROGRAM} missing from the object").into(),
            )
        })?
        .try_into()
        .map_err(|e| kernel("finding the sk_lookup program")(boxed(e)))?;
    program.load().map_err(|e| {
        kernel("loading the sk_lookup program (BPF_PROG_TYPE_SK_LOOKUP, Linux 5.9+)")(boxed(e))
    })?;
    // thread-self, not self: the calling thread may have setns()'d (tests do), and
    // /proc/self names the main thread's namespace.
    let netns_path = "/proc/thread-self/ns/net";
    let netns = fs::File::open(netns_path).map_err(|source| Unavailable::Pin {
        operation: "opening the network namespace",
        path: PathBuf::from(netns_path),
        source,
    })?;
    let netns_inode = netns.metadata().map(|m| m.ino()).unwrap_or(0);
    let link_id = program.attach(netns.as_fd()).map_err(|e| {
        kernel("attaching sk_lookup to the network namespace (Linux 5.9+)")(boxed(e))
    })?;
    let link = program
        .take_link(link_id)
        .map_err(|e| kernel("taking the sk_lookup link")(boxed(e)))?;
    let target = dir.join(LINK_SK_LOOKUP);
    if !replace {
        links.push(pin(FdLink::from(link), &target)?);
        return Ok(netns_inode);
    }
    // bpffs takes no dots in names, hence no hidden temporary name.
    let staged = dir.join(format!("{LINK_SK_LOOKUP}_next"));
    let _ignored = fs::remove_file(&staged);
    links.push(pin(FdLink::from(link), &staged)?);
    fs::rename(&staged, &target).map_err(|source| {
        let _ignored = fs::remove_file(&staged);
        Unavailable::Pin {
            operation: "moving the sk_lookup link pin into place",
            path: target.clone(),
            source,
        }
    })?;
    Ok(netns_inode)
}

/// Pins `link` and keeps our fd to it, so shutdown can release it after unpinning.
fn pin(link: FdLink, path: &Path) -> Result<FdLink, Unavailable> {
    let pinned: PinnedLink = link.pin(path).map_err(|e| Unavailable::Pin {
        operation: "pinning a link",
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    Ok(FdLink::from(pinned))
}

fn interface_index(name: &str) -> Result<u32, Unavailable> {
    let missing = || Unavailable::InterfaceMissing {
        name: name.to_owned(),
    };
    let c_name = CString::new(name).map_err(|_| missing())?;
    // SAFETY: c_name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        Err(missing())
    } else {
        Ok(index)
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lifting it is harmless later.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: limit is a valid rlimit for the duration of the call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) };
    if rc != 0 {
        tracing::debug!(
            "could not lift RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn ifname_bytes(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    // Interface names are at most 15 bytes; the kernel already rejected longer ones.
    for (slot, byte) in out.iter_mut().zip(name.bytes().take(15)) {
        *slot = byte;
    }
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_merges_services_over_passthrough() {
        let vip = SocketAddrV4::new([192, 0, 2, 10].into(), 8774);
        let other = SocketAddrV4::new([192, 0, 2, 11].into(), 3306);
        let desired = Desired::new(&[vip], &[vip, other], &[]).unwrap();
        assert_eq!(
            desired.services[&VipPort::new([192, 0, 2, 10], 8774)],
            SERVICE_STEER
        );
        assert_eq!(desired.services[&VipPort::new([192, 0, 2, 11], 3306)], 0);
        assert_eq!(desired.vips.len(), 2);
    }

    #[test]
    fn desired_rejects_wildcards() {
        let any = SocketAddrV4::new([0, 0, 0, 0].into(), 80);
        let err = Desired::new(&[any], &[], &[]).err().unwrap();
        assert!(err.to_string().contains("concrete VIP"), "{err}");
    }
}
