//! ARP over Ethernet frames: gratuitous announcements, RFC 5227 probes, and parsing.

use std::fmt;
use std::net::Ipv4Addr;

pub(crate) const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const HTYPE_ETHERNET: u16 = 1;
const ETH_HEADER_LEN: usize = 14;
const ARP_LEN: usize = 28;
/// Ethernet's minimum frame size without FCS; a raw socket sends exactly what it is given,
/// and some switches drop runts, so frames are padded here.
const MIN_FRAME_LEN: usize = 60;

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// The ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    Request,
    Reply,
    Other(u16),
}

impl ArpOp {
    fn code(self) -> u16 {
        match self {
            ArpOp::Request => 1,
            ArpOp::Reply => 2,
            ArpOp::Other(code) => code,
        }
    }

    fn from_code(code: u16) -> Self {
        match code {
            1 => ArpOp::Request,
            2 => ArpOp::Reply,
            other => ArpOp::Other(other),
        }
    }
}

/// An Ethernet/IPv4 ARP packet with the Ethernet addresses of its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket {
    pub eth_dst: MacAddr,
    pub eth_src: MacAddr,
    pub op: ArpOp,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl ArpPacket {
    /// Gratuitous ARP request (RFC 5227 "ARP Announcement"): Linux neighbours update an
    /// existing entry from it, and with `arp_accept` create one.
    pub fn announcement(mac: MacAddr, ip: Ipv4Addr) -> Self {
        Self {
            eth_dst: MacAddr::BROADCAST,
            eth_src: mac,
            op: ArpOp::Request,
            sender_mac: mac,
            sender_ip: ip,
            target_mac: MacAddr::ZERO,
            target_ip: ip,
        }
    }

    /// Gratuitous ARP reply, for equipment that only learns from replies. The target MAC
    /// equals the sender's: Linux only treats a reply as gratuitous in that shape.
    pub fn gratuitous_reply(mac: MacAddr, ip: Ipv4Addr) -> Self {
        Self {
            eth_dst: MacAddr::BROADCAST,
            eth_src: mac,
            op: ArpOp::Reply,
            sender_mac: mac,
            sender_ip: ip,
            target_mac: mac,
            target_ip: ip,
        }
    }

    /// RFC 5227 probe: sender IP 0.0.0.0 so that no neighbour cache is polluted by a
    /// claim the router may not be allowed to make.
    pub fn probe(mac: MacAddr, ip: Ipv4Addr) -> Self {
        Self {
            eth_dst: MacAddr::BROADCAST,
            eth_src: mac,
            op: ArpOp::Request,
            sender_mac: mac,
            sender_ip: Ipv4Addr::UNSPECIFIED,
            target_mac: MacAddr::ZERO,
            target_ip: ip,
        }
    }

    /// Whether this packet, not sent by `own`, shows another host using `ip`.
    pub fn claims(&self, ip: Ipv4Addr, own: MacAddr) -> bool {
        self.sender_ip == ip && self.sender_mac != own
    }

    /// The full Ethernet frame, padded to the minimum frame size.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(MIN_FRAME_LEN);
        frame.extend_from_slice(&self.eth_dst.0);
        frame.extend_from_slice(&self.eth_src.0);
        frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
        frame.extend_from_slice(&HTYPE_ETHERNET.to_be_bytes());
        frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
        frame.push(6);
        frame.push(4);
        frame.extend_from_slice(&self.op.code().to_be_bytes());
        frame.extend_from_slice(&self.sender_mac.0);
        frame.extend_from_slice(&self.sender_ip.octets());
        frame.extend_from_slice(&self.target_mac.0);
        frame.extend_from_slice(&self.target_ip.octets());
        frame.resize(MIN_FRAME_LEN, 0);
        frame
    }

    /// Parses an Ethernet frame; `None` for anything but Ethernet/IPv4 ARP.
    pub fn parse(frame: &[u8]) -> Option<Self> {
        let arp = frame.get(ETH_HEADER_LEN..ETH_HEADER_LEN + ARP_LEN)?;
        let u16_at = |buf: &[u8], at: usize| u16::from_be_bytes([buf[at], buf[at + 1]]);
        if u16_at(frame, 12) != ETH_P_ARP
            || u16_at(arp, 0) != HTYPE_ETHERNET
            || u16_at(arp, 2) != ETH_P_IP
            || arp[4] != 6
            || arp[5] != 4
        {
            return None;
        }
        let mac_at = |buf: &[u8], at: usize| {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&buf[at..at + 6]);
            MacAddr(mac)
        };
        let ip_at = |at: usize| Ipv4Addr::new(arp[at], arp[at + 1], arp[at + 2], arp[at + 3]);
        Some(Self {
            eth_dst: mac_at(frame, 0),
            eth_src: mac_at(frame, 6),
            op: ArpOp::from_code(u16_at(arp, 6)),
            sender_mac: mac_at(arp, 8),
            sender_ip: ip_at(14),
            target_mac: mac_at(arp, 18),
            target_ip: ip_at(24),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
    const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

    #[test]
    fn announcement_frame_has_the_wire_layout() {
        let frame = ArpPacket::announcement(MAC, VIP).to_frame();
        assert_eq!(frame.len(), 60);
        assert_eq!(&frame[0..6], &[0xff; 6]);
        assert_eq!(&frame[6..12], &MAC.0);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[14..22], &[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        assert_eq!(&frame[22..28], &MAC.0);
        assert_eq!(&frame[28..32], &[192, 0, 2, 10]);
        assert_eq!(&frame[32..38], &[0; 6]);
        assert_eq!(&frame[38..42], &[192, 0, 2, 10]);
        assert!(frame[42..].iter().all(|b| *b == 0));
    }

    #[test]
    fn gratuitous_reply_repeats_the_sender_as_target() {
        let pkt = ArpPacket::parse(&ArpPacket::gratuitous_reply(MAC, VIP).to_frame());
        let pkt = pkt.expect("parses");
        assert_eq!(pkt.op, ArpOp::Reply);
        assert_eq!(pkt.target_mac, MAC);
        assert_eq!(pkt.sender_ip, VIP);
        assert_eq!(pkt.target_ip, VIP);
        assert_eq!(pkt.eth_dst, MacAddr::BROADCAST);
    }

    #[test]
    fn probe_uses_the_unspecified_sender_address() {
        let pkt = ArpPacket::parse(&ArpPacket::probe(MAC, VIP).to_frame()).expect("parses");
        assert_eq!(pkt.op, ArpOp::Request);
        assert_eq!(pkt.sender_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(pkt.target_ip, VIP);
        assert_eq!(pkt.target_mac, MacAddr::ZERO);
        // Our own probe never counts as a claim, by address nor by MAC.
        assert!(!pkt.claims(VIP, MAC));
    }

    #[test]
    fn a_reply_from_another_host_is_a_claim() {
        let other = MacAddr([2, 0, 0, 0, 0, 9]);
        let reply = ArpPacket {
            eth_dst: MAC,
            eth_src: other,
            op: ArpOp::Reply,
            sender_mac: other,
            sender_ip: VIP,
            target_mac: MAC,
            target_ip: Ipv4Addr::UNSPECIFIED,
        };
        let parsed = ArpPacket::parse(&reply.to_frame()).expect("parses");
        assert_eq!(parsed, reply);
        assert!(parsed.claims(VIP, MAC));
        assert!(!parsed.claims(Ipv4Addr::new(192, 0, 2, 11), MAC));
        assert!(!ArpPacket::announcement(MAC, VIP).claims(VIP, MAC));
    }

    #[test]
    fn non_arp_and_short_frames_are_ignored() {
        let mut frame = ArpPacket::announcement(MAC, VIP).to_frame();
        assert!(ArpPacket::parse(&frame[..41]).is_none());
        frame[12] = 0x08;
        frame[13] = 0x00;
        assert!(ArpPacket::parse(&frame).is_none());
    }

    #[test]
    fn mac_renders_as_colon_hex() {
        assert_eq!(MAC.to_string(), "02:aa:bb:cc:dd:ee");
    }
}
