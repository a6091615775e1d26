//! The eBPF maps and programs; every program is a thin wrapper over a `try_*` function
//! whose error path means "let the kernel handle it as if we were not here".

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, sk_action, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{map, sk_lookup, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, SockMap, lpm_trie::Key},
    programs::{SkLookupContext, XdpContext},
};
use aya_log_ebpf::debug;
use router_common::{
    Counters, DenyAddr, DropLog, LISTENER_INDEX, MAX_COUNTERS, MAX_DENY, MAX_SERVICES, Meta,
    OTHER_PORT, SERVICE_STEER, VipPort, XDP_LOG_TARGET,
};

// Map statics are named exactly as the router_common::*_MAP constants; userspace finds
// and pins them by these names. `pinned` = aya's by-name pinning, so a restart reuses them.
#[map]
static SERVICES: HashMap<VipPort, u32> = HashMap::pinned(MAX_SERVICES, 0);
#[map]
static VIPS: HashMap<u32, u32> = HashMap::pinned(MAX_SERVICES, 0);
#[map]
static DENY: LpmTrie<DenyAddr, u32> = LpmTrie::pinned(MAX_DENY, 0);
#[map]
static COUNTERS: PerCpuHashMap<VipPort, Counters> = PerCpuHashMap::pinned(MAX_COUNTERS, 0);
#[map]
static SOCKETS: SockMap = SockMap::pinned(1, 0);
#[map]
static META: Array<Meta> = Array::pinned(1, 0);
// Pinned like the counters, so `status` can report what the rate limit held back.
#[map]
static DROP_LOG: PerCpuArray<DropLog> = PerCpuArray::pinned(1, 0);

const AF_INET: u32 = 2;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_TCP_U32: u32 = 6;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

#[sk_lookup]
pub fn steer(ctx: SkLookupContext) -> u32 {
    // Any failure falls through to the kernel's normal socket lookup.
    try_steer(&ctx).unwrap_or(sk_action::SK_PASS)
}

fn try_steer(ctx: &SkLookupContext) -> Result<u32, u32> {
    // SAFETY: the kernel hands every sk_lookup program a valid bpf_sk_lookup context.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.family != AF_INET || lookup.protocol != IPPROTO_TCP_U32 {
        return Ok(sk_action::SK_PASS);
    }
    // local_ip4 is already network order; local_port is host order in this context.
    let key = VipPort {
        addr: lookup.local_ip4,
        port: (lookup.local_port as u16).to_be(),
        pad: 0,
    };
    // SAFETY: values are plain u32 flags; a concurrent update at worst yields the old flags.
    let flags = unsafe { SERVICES.get(key) }.copied().unwrap_or(0);
    if flags & SERVICE_STEER == 0 {
        return Ok(sk_action::SK_PASS);
    }
    // No listener in the SOCKMAP (router down) → pass, so the kernel answers as usual.
    let _ = SOCKETS.redirect_sk_lookup(ctx, LISTENER_INDEX, 0);
    Ok(sk_action::SK_PASS)
}

#[xdp]
pub fn guard(ctx: XdpContext) -> u32 {
    // Truncated or odd packets are the stack's business, not ours.
    try_guard(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// Reads a `T` at `offset` from the packet start after the bounds check the verifier
/// needs to allow the access.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(xdp_action::XDP_PASS);
    }
    // SAFETY: bounds checked just above; packet data has no alignment guarantee.
    Ok(unsafe { ((start + offset) as *const T).read_unaligned() })
}

fn try_guard(ctx: &XdpContext) -> Result<u32, u32> {
    let ether_type: u16 = read(ctx, 12)?;
    // ARP, IPv6, VLAN-tagged and everything non-IPv4 passes untouched.
    if ether_type != ETH_P_IP.to_be() {
        return Ok(xdp_action::XDP_PASS);
    }
    let version_ihl: u8 = read(ctx, ETH_HLEN)?;
    if version_ihl >> 4 != 4 {
        return Ok(xdp_action::XDP_PASS);
    }
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if ihl < 20 {
        return Ok(xdp_action::XDP_PASS);
    }
    let daddr: u32 = read(ctx, ETH_HLEN + 16)?;
    // SAFETY: values are plain u32 flags.
    if unsafe { VIPS.get(daddr) }.is_none() {
        return Ok(xdp_action::XDP_PASS);
    }
    let saddr: u32 = read(ctx, ETH_HLEN + 12)?;
    let protocol: u8 = read(ctx, ETH_HLEN + 9)?;
    let frag: u16 = read(ctx, ETH_HLEN + 6)?;
    // Only the first fragment carries the TCP header; later ones count as "other".
    let first_fragment = u16::from_be(frag) & 0x1fff == 0;
    let packet_len = (ctx.data_end() - ctx.data()) as u64;

    let mut key = VipPort {
        addr: daddr,
        port: OTHER_PORT,
        pad: 0,
    };
    let mut syn = false;
    let mut unserved = false;
    let mut dport = OTHER_PORT;
    if protocol == IPPROTO_TCP && first_fragment {
        let tcp = ETH_HLEN + ihl;
        dport = read(ctx, tcp + 2)?;
        let flags: u8 = read(ctx, tcp + 13)?;
        syn = flags & TCP_FLAG_SYN != 0 && flags & TCP_FLAG_ACK == 0;
        let served = VipPort {
            addr: daddr,
            port: dport,
            pad: 0,
        };
        // SAFETY: values are plain u32 flags.
        if unsafe { SERVICES.get(served) }.is_some() {
            key = served;
        } else {
            unserved = true;
        }
    }
    let denied = DENY.get(Key::new(32, saddr)).is_some();
    let drop = unserved || denied;
    count(&key, packet_len, syn, drop);
    if drop {
        let reason = if denied {
            "denied_source"
        } else {
            "unserved_port"
        };
        log_drop(ctx, reason, saddr, daddr, dport, protocol);
    }
    Ok(if drop {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    })
}

/// Logs one drop at debug level unless this CPU's [`DropLog`] bucket is empty; addresses
/// and the port are in network order, as read from the packet.
#[inline(always)]
fn log_drop(ctx: &XdpContext, reason: &str, source: u32, vip: u32, port: u16, protocol: u8) {
    let Some(budget) = DROP_LOG.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the helper only reads the clock.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU value, only this CPU writes it while we run.
    let Some(suppressed) = (unsafe { (*budget).admit(now) }) else {
        return;
    };
    debug!(
        ctx,
        target: XDP_LOG_TARGET,
        "drop reason={} src={:i} dst={:i}:{} proto={} suppressed={}",
        reason,
        source.to_ne_bytes(),
        vip.to_ne_bytes(),
        u16::from_be(port),
        protocol,
        suppressed
    );
}

fn count(key: &VipPort, bytes: u64, syn: bool, drop: bool) {
    let syns = u64::from(syn);
    let drops = u64::from(drop);
    match COUNTERS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        Some(counters) => unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes;
            (*counters).syns += syns;
            (*counters).drops += drops;
        },
        None => {
            // A full map only loses this sample; traffic handling is unaffected.
            let _ = COUNTERS.insert(
                key,
                Counters {
                    packets: 1,
                    bytes,
                    syns,
                    drops,
                },
                u64::from(BPF_NOEXIST),
            );
        }
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic; this only satisfies no_std.
    loop {}
}

// GPL-compatible so every helper (sk_assign, sk_release) is available.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
