//! Read-only view of the pinned state for `scope-router status`: per VIP:port counters
//! summed over CPUs, which programs are attached and how, and which router owns them.
//! Opens pins, never writes, creates, mounts or locks anything, so it is safe against a
//! running router.

use std::{
    collections::BTreeMap,
    fmt::{self, Write as _},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap},
    programs::links::{FdLink, PinnedLink},
};
use router_common::{
    COUNTERS_MAP, Counters, DENY_MAP, DROP_LOG_MAP, DenyAddr, DropLog, META_MAP, Meta, OTHER_PORT,
    SERVICE_STEER, SERVICES_MAP, VipPort,
};
use serde::Serialize;

use super::{
    XdpAttachMode,
    cidr::deny_net,
    pins::{LINK_SK_LOOKUP, LINK_XDP},
};

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Nothing pinned at the path.
    #[error(
        "no eBPF state at {}: the router has not run with eBPF steering here (check ebpf.mode and ebpf.pin_path)",
        path.display()
    )]
    NotPinned {
        /// The state directory looked for.
        path: PathBuf,
    },
    /// A pinned map could not be opened or read.
    #[error("reading pinned map {} failed: {source} (reading needs root or CAP_BPF)", path.display())]
    Map {
        /// The pinned map.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: aya::maps::MapError,
    },
}

/// Which program a [`ProgramStatus`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgramKind {
    /// The socket-steering program, attached to a network namespace.
    SkLookup,
    /// The packet guard, attached to the VIP interface.
    Xdp,
}

/// One program's attachment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgramStatus {
    /// Which program.
    pub kind: ProgramKind,
    /// Whether its pinned link exists and the kernel still knows it.
    pub attached: bool,
    /// Kernel program id (as in `bpftool prog show id N`).
    pub program_id: Option<u32>,
    /// Kernel link id (as in `bpftool link show id N`).
    pub link_id: Option<u32>,
    /// XDP only: attach mode.
    pub mode: Option<XdpAttachMode>,
    /// XDP only: interface name (resolved in the reader's namespace) or index.
    pub interface: Option<String>,
    /// sk_lookup only: network namespace inode.
    pub netns_inode: Option<u64>,
}

/// What a counter row stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    /// Served by the proxy, steered by sk_lookup.
    Steered,
    /// Let through XDP, bound directly by someone else.
    Passthrough,
    /// Everything else to the VIP: unserved TCP ports (dropped), ICMP, UDP.
    Other,
    /// Counted in an earlier run but no longer configured.
    Unconfigured,
}

/// Counters for one VIP:port, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CounterRow {
    /// The VIP.
    pub vip: Ipv4Addr,
    /// The port; `None` for the per-VIP "other" bucket.
    pub port: Option<u16>,
    /// What the row stands for.
    pub kind: ServiceKind,
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen (from the Ethernet header).
    pub bytes: u64,
    /// Connection attempts (SYN without ACK).
    pub syns: u64,
    /// Packets dropped (unserved port or denied source).
    pub drops: u64,
}

/// What the XDP drop log did, summed over CPUs since the maps were first pinned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DropLogTotals {
    /// Drops the rate limit let through as lines.
    pub lines: u64,
    /// Drops not logged because the per-CPU rate limit was spent.
    pub suppressed: u64,
}

/// Everything `scope-router status` shows about the kernel side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The state directory read.
    pub pin_path: PathBuf,
    /// Both programs, attached or not.
    pub programs: Vec<ProgramStatus>,
    /// Process id of the router that attached them (0 after a clean shutdown).
    pub attached_by_pid: Option<u32>,
    /// A running router holds the state directory's lock (see `pins`); read from
    /// `/proc/locks`, never by taking the lock.
    pub owned: bool,
    /// That router's pid, when `/proc/locks` shows it.
    pub owner_pid: Option<u32>,
    /// Counter rows ordered by VIP then port, "other" last per VIP.
    pub counters: Vec<CounterRow>,
    /// Deny-list entries as CIDRs.
    pub deny: Vec<String>,
    /// The drop log's totals; `None` when the state predates the drop log (a router of
    /// this version creates the map at its next start).
    pub drop_log: Option<DropLogTotals>,
}

impl Status {
    /// The row for `vip:port` (`port = None`: the "other" bucket).
    pub fn counters_for(&self, vip: Ipv4Addr, port: Option<u16>) -> Option<&CounterRow> {
        self.counters
            .iter()
            .find(|row| row.vip == vip && row.port == port)
    }

    /// A human-readable table (what `scope-router status` prints).
    pub fn render_table(&self) -> String {
        self.to_string()
    }
}

/// Reads the pinned state under `pin_path`. Never modifies anything.
pub fn read_status(pin_path: &Path) -> Result<Status, StatusError> {
    let counters_path = pin_path.join(COUNTERS_MAP);
    if !counters_path.exists() {
        return Err(StatusError::NotPinned {
            path: pin_path.to_path_buf(),
        });
    }
    let open = |name: &str| -> Result<Map, StatusError> {
        let path = pin_path.join(name);
        MapData::from_pin(&path)
            .and_then(Map::from_map_data)
            .map_err(|source| StatusError::Map { path, source })
    };
    let map_err = |name: &str| {
        let path = pin_path.join(name);
        move |source| StatusError::Map { path, source }
    };

    let services: HashMap<MapData, VipPort, u32> =
        HashMap::try_from(open(SERVICES_MAP)?).map_err(map_err(SERVICES_MAP))?;
    let mut kinds: BTreeMap<VipPort, ServiceKind> = BTreeMap::new();
    for entry in services.iter() {
        let (key, flags) = entry.map_err(map_err(SERVICES_MAP))?;
        let kind = if flags & SERVICE_STEER != 0 {
            ServiceKind::Steered
        } else {
            ServiceKind::Passthrough
        };
        kinds.insert(key, kind);
        kinds
            .entry(VipPort::new(key.octets(), OTHER_PORT))
            .or_insert(ServiceKind::Other);
    }

    let counters: PerCpuHashMap<MapData, VipPort, Counters> =
        PerCpuHashMap::try_from(open(COUNTERS_MAP)?).map_err(map_err(COUNTERS_MAP))?;
    let mut sums: BTreeMap<VipPort, Counters> = BTreeMap::new();
    for entry in counters.iter() {
        let (key, per_cpu) = entry.map_err(map_err(COUNTERS_MAP))?;
        let sum = sums.entry(key).or_default();
        for value in per_cpu.iter() {
            sum.add(value);
        }
    }
    // Configured services show up even before their first packet.
    for key in kinds.keys() {
        sums.entry(*key).or_default();
    }
    let mut rows: Vec<CounterRow> = sums
        .into_iter()
        .map(|(key, sum)| {
            let port = (key.port() != OTHER_PORT).then(|| key.port());
            let kind = match (port, kinds.get(&key)) {
                (None, _) => ServiceKind::Other,
                (Some(_), Some(kind)) => *kind,
                (Some(_), None) => ServiceKind::Unconfigured,
            };
            CounterRow {
                vip: Ipv4Addr::from(key.octets()),
                port,
                kind,
                packets: sum.packets,
                bytes: sum.bytes,
                syns: sum.syns,
                drops: sum.drops,
            }
        })
        .collect();
    // "other" (port None) sorts last within a VIP.
    rows.sort_by_key(|row| (row.vip, row.port.is_none(), row.port));

    let deny_trie: LpmTrie<MapData, DenyAddr, u32> =
        LpmTrie::try_from(open(DENY_MAP)?).map_err(map_err(DENY_MAP))?;
    let mut deny = Vec::new();
    for key in deny_trie.keys() {
        let key = key.map_err(map_err(DENY_MAP))?;
        match deny_net(&key) {
            Some(net) => deny.push(net.to_string()),
            None => deny.push(format!("(invalid key, prefix length {})", key.prefix_len())),
        }
    }
    deny.sort();

    let meta_array: Array<MapData, Meta> =
        Array::try_from(open(META_MAP)?).map_err(map_err(META_MAP))?;
    let meta = meta_array.get(&0, 0).map_err(map_err(META_MAP))?;

    let drop_log = if pin_path.join(DROP_LOG_MAP).exists() {
        let per_cpu: PerCpuArray<MapData, DropLog> =
            PerCpuArray::try_from(open(DROP_LOG_MAP)?).map_err(map_err(DROP_LOG_MAP))?;
        let mut sum = DropLog::default();
        for value in per_cpu.get(&0, 0).map_err(map_err(DROP_LOG_MAP))?.iter() {
            sum.add_totals(value);
        }
        Some(DropLogTotals {
            lines: sum.lines,
            suppressed: sum.suppressed,
        })
    } else {
        None
    };

    let (sk_link, sk_prog) = link_ids(&pin_path.join(LINK_SK_LOOKUP));
    let (xdp_link, xdp_prog) = link_ids(&pin_path.join(LINK_XDP));
    let programs = vec![
        ProgramStatus {
            kind: ProgramKind::SkLookup,
            attached: sk_link.is_some(),
            program_id: sk_prog,
            link_id: sk_link,
            mode: None,
            interface: None,
            netns_inode: (meta.netns_inode != 0).then_some(meta.netns_inode),
        },
        ProgramStatus {
            kind: ProgramKind::Xdp,
            attached: xdp_link.is_some(),
            program_id: xdp_prog,
            link_id: xdp_link,
            mode: XdpAttachMode::from_meta(meta.xdp_mode),
            interface: (meta.xdp_ifindex != 0).then(|| interface_label(&meta)),
            netns_inode: None,
        },
    ];

    let owner = crate::lock::holder(pin_path);
    Ok(Status {
        pin_path: pin_path.to_path_buf(),
        programs,
        attached_by_pid: (meta.pid != 0).then_some(meta.pid),
        owned: owner.is_some(),
        owner_pid: owner.flatten(),
        counters: rows,
        deny,
        drop_log,
    })
}

/// (link id, program id) of a pinned link, or `(None, None)` when it is not pinned.
fn link_ids(path: &Path) -> (Option<u32>, Option<u32>) {
    let Ok(link) = PinnedLink::from_pin(path) else {
        return (None, None);
    };
    // Converting drops nothing: the pin stays, only our fd closes at scope end.
    let link = FdLink::from(link);
    match link.info() {
        Ok(info) => (Some(info.id()), Some(info.program_id())),
        Err(_) => (None, None),
    }
}

/// "eth2 (ifindex 5)" from what the loader recorded; the reader's own namespace may map
/// the index to another device, so the index is never resolved here.
fn interface_label(meta: &Meta) -> String {
    let len = meta
        .ifname
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(meta.ifname.len());
    let name = String::from_utf8_lossy(&meta.ifname[..len]);
    if name.is_empty() {
        format!("ifindex {}", meta.xdp_ifindex)
    } else {
        format!("{name} (ifindex {})", meta.xdp_ifindex)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "eBPF state: {}", self.pin_path.display())?;
        if self.owned {
            let owner = crate::lock::owner_text(self.owner_pid);
            writeln!(f, "in use by a running scope-router ({owner})")?;
        } else {
            writeln!(f, "no scope-router is running on it")?;
        }
        if let Some(pid) = self.attached_by_pid {
            writeln!(f, "attached by pid {pid}")?;
        }
        for program in &self.programs {
            let mut line = String::new();
            let name = match program.kind {
                ProgramKind::SkLookup => "sk_lookup",
                ProgramKind::Xdp => "xdp",
            };
            let _ = write!(line, "  {name:<10}");
            if program.attached {
                let _ = write!(line, "attached");
                if let Some(id) = program.program_id {
                    let _ = write!(line, "  prog {id}");
                }
                if let Some(id) = program.link_id {
                    let _ = write!(line, "  link {id}");
                }
                if let Some(interface) = &program.interface {
                    let _ = write!(line, "  on {interface}");
                }
                if let Some(mode) = program.mode {
                    let _ = write!(line, "  {mode}");
                }
                if let Some(inode) = program.netns_inode {
                    let _ = write!(line, "  netns {inode}");
                }
            } else {
                let _ = write!(line, "not attached");
            }
            writeln!(f, "{line}")?;
        }
        writeln!(
            f,
            "{:<22} {:<13} {:>12} {:>14} {:>10} {:>10}",
            "VIP:PORT", "KIND", "PACKETS", "BYTES", "SYNS", "DROPS"
        )?;
        for row in &self.counters {
            let target = match row.port {
                Some(port) => format!("{}:{port}", row.vip),
                None => format!("{}:*", row.vip),
            };
            let kind = match row.kind {
                ServiceKind::Steered => "steered",
                ServiceKind::Passthrough => "passthrough",
                ServiceKind::Other => "other",
                ServiceKind::Unconfigured => "unconfigured",
            };
            writeln!(
                f,
                "{target:<22} {kind:<13} {:>12} {:>14} {:>10} {:>10}",
                row.packets, row.bytes, row.syns, row.drops
            )?;
        }
        if self.deny.is_empty() {
            writeln!(f, "deny: (none)")?;
        } else {
            writeln!(f, "deny: {}", self.deny.join(", "))?;
        }
        if let Some(log) = self.drop_log {
            writeln!(
                f,
                "drop log: {} lines, {} drops not logged (rate limit)",
                log.lines, log.suppressed
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_state_names_the_path_and_the_config_keys() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_status(&dir.path().join("nothing")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("nothing") && text.contains("ebpf.pin_path"),
            "{text}"
        );
    }

    #[test]
    fn table_and_json_show_every_row() {
        let status = Status {
            pin_path: PathBuf::from("/sys/fs/bpf/scope-router"),
            programs: vec![ProgramStatus {
                kind: ProgramKind::Xdp,
                attached: true,
                program_id: Some(7),
                link_id: Some(3),
                mode: Some(XdpAttachMode::Native),
                interface: Some("eth2".into()),
                netns_inode: None,
            }],
            attached_by_pid: Some(42),
            owned: true,
            owner_pid: Some(42),
            counters: vec![
                CounterRow {
                    vip: Ipv4Addr::new(192, 0, 2, 10),
                    port: Some(8774),
                    kind: ServiceKind::Steered,
                    packets: 10,
                    bytes: 1000,
                    syns: 2,
                    drops: 0,
                },
                CounterRow {
                    vip: Ipv4Addr::new(192, 0, 2, 10),
                    port: None,
                    kind: ServiceKind::Other,
                    packets: 3,
                    bytes: 180,
                    syns: 3,
                    drops: 3,
                },
            ],
            deny: vec!["198.51.100.0/24".into()],
            drop_log: Some(DropLogTotals {
                lines: 12,
                suppressed: 3400,
            }),
        };
        let table = status.render_table();
        assert!(table.contains("192.0.2.10:8774"), "{table}");
        assert!(table.contains("192.0.2.10:*"), "{table}");
        assert!(table.contains("native (driver)"), "{table}");
        assert!(table.contains("198.51.100.0/24"), "{table}");
        assert!(table.contains("running scope-router (pid 42)"), "{table}");
        assert!(
            table.contains("drop log: 12 lines, 3400 drops not logged"),
            "{table}"
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["counters"][0]["port"], 8774);
        assert_eq!(json["counters"][1]["kind"], "other");
        assert_eq!(json["programs"][0]["mode"], "native");
        assert_eq!(json["drop_log"]["suppressed"], 3400);
    }
}
