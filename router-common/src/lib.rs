//! Map key/value types and map names shared by the kernel programs and the userspace loader.
//!
//! Every type is `#[repr(C)]` with explicit padding so the kernel and userspace agree on
//! the byte layout. Addresses and ports are stored in **network byte order** — the bytes
//! exactly as they appear on the wire — so the XDP program can use packet bytes as keys
//! without swapping. [`VipPort::new`] does the conversion from host values.
#![no_std]

/// Name of the hash map `VipPort -> u32` of service flags (see [`SERVICE_STEER`]).
pub const SERVICES_MAP: &str = "SERVICES";
/// Name of the hash map `u32 (IPv4, network order) -> u32` listing the VIP addresses.
pub const VIPS_MAP: &str = "VIPS";
/// Name of the LPM trie `Key<u32 (IPv4, network order)> -> u32` of denied sources.
pub const DENY_MAP: &str = "DENY";
/// Name of the per-CPU hash map `VipPort -> Counters`.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the SOCKMAP holding the proxy's single listening socket at [`LISTENER_INDEX`].
pub const SOCKETS_MAP: &str = "SOCKETS";
/// Name of the one-slot array map holding [`Meta`] (written by userspace only).
pub const META_MAP: &str = "META";
/// Name of the one-slot per-CPU array holding each CPU's [`DropLog`] rate limiter.
pub const DROP_LOG_MAP: &str = "DROP_LOG";

/// Name of the sk_lookup program in the object file.
pub const SK_LOOKUP_PROGRAM: &str = "steer";
/// Name of the XDP program in the object file.
pub const XDP_PROGRAM: &str = "guard";

/// Every map the object defines, in the order userspace reports them.
/// (aya-log's `AYA_LOGS` ring buffer is not listed: it belongs to the running process
/// and is never pinned.)
pub const ALL_MAPS: [&str; 7] = [
    SERVICES_MAP,
    VIPS_MAP,
    DENY_MAP,
    COUNTERS_MAP,
    SOCKETS_MAP,
    META_MAP,
    DROP_LOG_MAP,
];

/// Capacity of [`SERVICES_MAP`] and [`VIPS_MAP`].
pub const MAX_SERVICES: u32 = 1024;
/// Capacity of [`DENY_MAP`].
pub const MAX_DENY: u32 = 4096;
/// Capacity of [`COUNTERS_MAP`]: one entry per served VIP:port plus one catch-all per VIP.
pub const MAX_COUNTERS: u32 = 2048;

/// SOCKMAP slot of the proxy's listening socket.
pub const LISTENER_INDEX: u32 = 0;

/// Service flag: the sk_lookup program steers SYNs for this VIP:port to the listener.
/// A service without this flag is only let through by XDP (e.g. a passthrough port the
/// router binds itself).
pub const SERVICE_STEER: u32 = 1;

/// Counter key port for traffic to a VIP that matches no served port (unserved TCP
/// ports, ICMP, UDP). Keeping one bucket per VIP bounds the map size under a port scan.
pub const OTHER_PORT: u16 = 0;

/// `log` target of the XDP program's drop lines; the router forwards them into `tracing`
/// under the same target, so `RUST_LOG=scope_router::xdp=debug` shows them.
pub const XDP_LOG_TARGET: &str = "scope_router::xdp";
/// Drop lines each CPU may emit at once before the rate limit applies.
pub const DROP_LOG_BURST: u64 = 10;
/// Each CPU earns one more drop line per interval (1 s), up to [`DROP_LOG_BURST`].
pub const DROP_LOG_INTERVAL_NS: u64 = 1_000_000_000;

/// XDP attach mode recorded in [`Meta::xdp_mode`].
pub const XDP_MODE_NONE: u32 = 0;
/// Native (driver) XDP.
pub const XDP_MODE_DRV: u32 = 1;
/// Generic (skb) XDP.
pub const XDP_MODE_SKB: u32 = 2;

/// An IPv4 address and TCP port, both in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipPort {
    /// IPv4 address, network byte order (`u32::from_ne_bytes(octets)`).
    pub addr: u32,
    /// TCP port, network byte order (`port.to_be()`).
    pub port: u16,
    /// Explicit padding so no uninitialised byte ends up in a hash key.
    pub pad: u16,
}

impl VipPort {
    /// Builds a key from host values: `octets` as written (`[192, 0, 2, 1]`) and `port`
    /// as a number.
    pub const fn new(octets: [u8; 4], port: u16) -> Self {
        Self {
            addr: u32::from_ne_bytes(octets),
            port: port.to_be(),
            pad: 0,
        }
    }

    /// The address octets, as written.
    pub const fn octets(&self) -> [u8; 4] {
        self.addr.to_ne_bytes()
    }

    /// The port as a host number.
    pub const fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Per-CPU traffic counters for one VIP:port, as seen by XDP on the VIP interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets seen (passed and dropped).
    pub packets: u64,
    /// Bytes seen, measured from the Ethernet header.
    pub bytes: u64,
    /// TCP SYNs (connection attempts) seen.
    pub syns: u64,
    /// Packets dropped (unserved port or denied source).
    pub drops: u64,
}

impl Counters {
    /// Adds `other` into `self`; used to sum the per-CPU values.
    pub const fn add(&mut self, other: &Counters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.syns = self.syns.wrapping_add(other.syns);
        self.drops = self.drops.wrapping_add(other.drops);
    }
}

/// Attachment facts the loader records for `status`, which runs in another process and
/// cannot see the loader's memory. bpffs holds no plain files, hence a map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Interface index XDP is attached to (0: not attached).
    pub xdp_ifindex: u32,
    /// One of `XDP_MODE_*`.
    pub xdp_mode: u32,
    /// Network namespace inode sk_lookup is attached to (0: not attached).
    pub netns_inode: u64,
    /// Process id of the router that last attached the programs.
    pub pid: u32,
    /// Explicit padding to keep the layout identical on both sides.
    pub pad: u32,
    /// Unix time (seconds) of the last attach.
    pub attached_at: u64,
    /// Name of the XDP interface, NUL-padded: the reader may sit in another network
    /// namespace where the index means a different device.
    pub ifname: [u8; 16],
}

/// One CPU's token bucket for the XDP drop log, and what it held back. A flood of dropped
/// packets must not become a flood of log lines (every line is a ring-buffer record the
/// router has to read and format), so each CPU logs at most [`DROP_LOG_BURST`] drops at
/// once and then one per [`DROP_LOG_INTERVAL_NS`]. Written by XDP only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropLog {
    /// Lines this CPU may emit right now.
    pub tokens: u64,
    /// `bpf_ktime_get_ns()` up to which tokens have been granted (0: never; the first
    /// drop finds the bucket full).
    pub refilled_ns: u64,
    /// Drops not logged since this CPU's previous line; the next line reports and resets it.
    pub pending: u64,
    /// Drops the bucket let through as lines (a full ring buffer would still lose one;
    /// at this rate it never fills).
    pub lines: u64,
    /// Drops never logged because the bucket was empty.
    pub suppressed: u64,
}

impl DropLog {
    /// Decides about one drop seen at `now_ns` (`bpf_ktime_get_ns()`): `Some(pending)`
    /// means log it, reporting `pending` earlier drops that were not logged; `None` means
    /// it was counted as suppressed. Shared with the host so the bucket is unit-tested.
    #[inline(always)]
    pub fn admit(&mut self, now_ns: u64) -> Option<u64> {
        let elapsed = now_ns.wrapping_sub(self.refilled_ns);
        if self.refilled_ns == 0 {
            // A fresh (zeroed) bucket starts full, however long the host has been up.
            self.tokens = DROP_LOG_BURST;
            self.refilled_ns = now_ns;
        } else if elapsed >= DROP_LOG_INTERVAL_NS {
            let earned = elapsed / DROP_LOG_INTERVAL_NS;
            if self.tokens.saturating_add(earned) >= DROP_LOG_BURST {
                // Full: time spent full earns nothing, so restart the clock.
                self.tokens = DROP_LOG_BURST;
                self.refilled_ns = now_ns;
            } else {
                // Keep the fraction of an interval already elapsed.
                self.tokens += earned;
                self.refilled_ns = self
                    .refilled_ns
                    .wrapping_add(earned.wrapping_mul(DROP_LOG_INTERVAL_NS));
            }
        }
        if self.tokens == 0 {
            self.pending = self.pending.wrapping_add(1);
            self.suppressed = self.suppressed.wrapping_add(1);
            return None;
        }
        self.tokens -= 1;
        self.lines = self.lines.wrapping_add(1);
        let pending = self.pending;
        self.pending = 0;
        Some(pending)
    }

    /// Adds `other`'s totals ([`DropLog::lines`], [`DropLog::suppressed`]) into `self`; the
    /// bucket fields are per CPU and meaningless as a sum.
    pub const fn add_totals(&mut self, other: &DropLog) {
        self.lines = self.lines.wrapping_add(other.lines);
        self.suppressed = self.suppressed.wrapping_add(other.suppressed);
    }
}

/// The deny list's LPM key data: an IPv4 address in network byte order. The full key is
/// `{ prefix_len: u32, data: DenyAddr }` (aya's `lpm_trie::Key`).
pub type DenyAddr = u32;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data: repr(C), only integer fields, explicit padding, no
    // invalid bit patterns.
    unsafe impl aya::Pod for super::VipPort {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Meta {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DropLog {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_port_is_wire_order() {
        let key = VipPort::new([192, 0, 2, 10], 8774);
        // SAFETY-free check of the raw layout: bytes must equal the packet bytes.
        assert_eq!(key.addr.to_ne_bytes(), [192, 0, 2, 10]);
        assert_eq!(key.port.to_ne_bytes(), 8774u16.to_be_bytes());
        assert_eq!(key.port(), 8774);
        assert_eq!(key.octets(), [192, 0, 2, 10]);
        assert_eq!(core::mem::size_of::<VipPort>(), 8);
        assert_eq!(core::mem::size_of::<Counters>(), 32);
        assert_eq!(core::mem::size_of::<Meta>(), 48);
        assert_eq!(core::mem::size_of::<DropLog>(), 40);
    }

    #[test]
    fn drop_log_allows_a_burst_then_one_line_per_interval() {
        let mut log = DropLog::default();
        // Arbitrary boot time: the zeroed bucket must start full, whatever the clock says.
        let start = 5 * DROP_LOG_INTERVAL_NS + 123;
        for _ in 0..DROP_LOG_BURST {
            assert_eq!(log.admit(start), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(log.admit(start + 1), None);
        }
        assert_eq!(log.suppressed, 1000);
        // Just short of an interval: still nothing.
        assert_eq!(log.admit(start + DROP_LOG_INTERVAL_NS - 1), None);
        // One interval later one line, carrying what was held back since the last line.
        assert_eq!(log.admit(start + DROP_LOG_INTERVAL_NS), Some(1001));
        assert_eq!(log.admit(start + DROP_LOG_INTERVAL_NS), None);
        assert_eq!(log.pending, 1);
        assert_eq!(log.lines, DROP_LOG_BURST + 1);
        assert_eq!(log.suppressed, 1002);
    }

    #[test]
    fn drop_log_refills_at_most_a_burst_and_keeps_partial_intervals() {
        let mut log = DropLog::default();
        let start = DROP_LOG_INTERVAL_NS;
        while log.admit(start).is_some() {}
        // 2.5 intervals earn two lines; the half interval counts towards the third.
        let later = start + 5 * DROP_LOG_INTERVAL_NS / 2;
        assert!(log.admit(later).is_some());
        assert!(log.admit(later).is_some());
        assert!(log.admit(later).is_none());
        assert!(log.admit(start + 3 * DROP_LOG_INTERVAL_NS).is_some());
        // A long quiet spell refills to the burst, not beyond.
        let quiet = start + 1000 * DROP_LOG_INTERVAL_NS;
        let lines = core::iter::repeat_n((), 100)
            .filter(|()| log.admit(quiet).is_some())
            .count();
        assert_eq!(lines as u64, DROP_LOG_BURST);
    }

    #[test]
    fn drop_log_totals_sum_lines_and_suppressed_only() {
        let mut total = DropLog::default();
        let cpu = DropLog {
            tokens: 3,
            refilled_ns: 9,
            pending: 2,
            lines: 4,
            suppressed: 5,
        };
        total.add_totals(&cpu);
        total.add_totals(&cpu);
        assert_eq!((total.lines, total.suppressed, total.tokens), (8, 10, 0));
    }

    #[test]
    fn counters_add_sums_fields() {
        let mut total = Counters::default();
        total.add(&Counters {
            packets: 1,
            bytes: 60,
            syns: 1,
            drops: 0,
        });
        total.add(&Counters {
            packets: 2,
            bytes: 100,
            syns: 0,
            drops: 2,
        });
        assert_eq!(
            total,
            Counters {
                packets: 3,
                bytes: 160,
                syns: 1,
                drops: 2
            }
        );
    }
}
