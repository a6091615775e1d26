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

/// Name of the sk_lookup program in the object file.
pub const SK_LOOKUP_PROGRAM: &str = "steer";
/// Name of the XDP program in the object file.
pub const XDP_PROGRAM: &str = "guard";

/// Every map the object defines, in the order userspace reports them.
pub const ALL_MAPS: [&str; 6] = [
    SERVICES_MAP,
    VIPS_MAP,
    DENY_MAP,
    COUNTERS_MAP,
    SOCKETS_MAP,
    META_MAP,
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
