//! AF_PACKET raw sockets: sending ARP frames out of the VIP interface and listening for
//! answers to an RFC 5227 probe.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use super::arp::{ArpPacket, ETH_P_ARP, MacAddr};
use super::{VipError, VipSettings};

/// A raw packet socket. `protocol` 0 receives nothing, which suits a send-only socket
/// that lives as long as the router and must not queue every frame of the link.
#[derive(Debug)]
pub(crate) struct PacketSocket {
    fd: OwnedFd,
    interface: String,
}

impl PacketSocket {
    /// A send-only socket; the interface index is given per frame because it can change
    /// when the interface is recreated.
    pub(crate) fn sender(interface: &str) -> Result<Self, VipError> {
        Self::open(
            interface,
            0,
            "opening an AF_PACKET socket for gratuitous ARP",
        )
    }

    fn open(interface: &str, protocol: u16, operation: &'static str) -> Result<Self, VipError> {
        // SAFETY: plain socket(2) call; the result is checked before it is wrapped.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                i32::from(protocol.to_be()),
            )
        };
        if raw < 0 {
            return Err(socket_error(
                operation,
                interface,
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self {
            fd,
            interface: interface.to_owned(),
        })
    }

    /// Sends one Ethernet frame out of interface `index`.
    pub(crate) fn send(&self, index: u32, frame: &[u8]) -> Result<(), VipError> {
        let addr = link_addr(index, ETH_P_ARP, MacAddr::BROADCAST);
        // SAFETY: `frame` and `addr` are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                sockaddr_ll_len(),
            )
        };
        if sent < 0 {
            return Err(socket_error(
                "sending an ARP frame",
                &self.interface,
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn bind(&self, index: u32, protocol: u16) -> Result<(), VipError> {
        let addr = link_addr(index, protocol, MacAddr::ZERO);
        // SAFETY: `addr` is a valid sockaddr_ll for the length passed.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&raw const addr).cast(),
                sockaddr_ll_len(),
            )
        };
        if rc < 0 {
            return Err(socket_error(
                "binding the ARP probe socket",
                &self.interface,
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Reads one frame that arrived from the wire (frames we sent are skipped by the
    /// caller through `outgoing`). `Ok(None)` when nothing is queued.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, bool)>> {
        // SAFETY: zeroed sockaddr_ll is a valid value; recvfrom fills at most `len` bytes.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut len = sockaddr_ll_len();
        // SAFETY: `buf` and `addr` are valid for the lengths passed.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut addr).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(err),
            };
        }
        let outgoing = addr.sll_pkttype == libc::PACKET_OUTGOING;
        Ok(Some((n.unsigned_abs(), outgoing)))
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Sends `count` announcements, each as a gratuitous request and a gratuitous reply.
pub(crate) fn announce(
    socket: &PacketSocket,
    index: u32,
    mac: MacAddr,
    ip: Ipv4Addr,
    count: u32,
) -> Result<(), VipError> {
    let request = ArpPacket::announcement(mac, ip).to_frame();
    let reply = ArpPacket::gratuitous_reply(mac, ip).to_frame();
    for _ in 0..count {
        socket.send(index, &request)?;
        socket.send(index, &reply)?;
    }
    Ok(())
}

/// RFC 5227 probe for the VIP: returns the MAC of a host that claims it, if any answers
/// within `probe_count × probe_interval`.
pub(crate) async fn probe(
    settings: &VipSettings,
    index: u32,
    mac: MacAddr,
) -> Result<Option<MacAddr>, VipError> {
    let listener = PacketSocket::open(
        &settings.interface,
        ETH_P_ARP,
        "opening an AF_PACKET socket for the ARP probe",
    )?;
    listener.bind(index, ETH_P_ARP)?;
    let interface = listener.interface.clone();
    // SAFETY: the descriptor is owned by `listener`, which the AsyncFd owns from now on,
    // so it stays open and unchanged for the AsyncFd's whole life.
    let listener = unsafe { AsyncFd::register(listener) }.map_err(|e| VipError::Socket {
        operation: "registering the ARP probe socket with the runtime",
        interface: interface.clone(),
        source: e.into_parts().1,
    })?;
    let frame = ArpPacket::probe(mac, settings.address).to_frame();
    let mut buf = [0u8; 2048];
    for _ in 0..settings.probe_count.max(1) {
        listener.get_ref().send(index, &frame)?;
        let deadline = Instant::now() + settings.probe_interval;
        loop {
            let ready = tokio::time::timeout_at(deadline, listener.readable()).await;
            let Ok(ready) = ready else { break };
            let mut guard =
                ready.map_err(|source| socket_error("waiting for ARP", &interface, source))?;
            loop {
                match guard.get_inner().recv(&mut buf) {
                    Ok(Some((len, outgoing))) => {
                        if outgoing {
                            continue;
                        }
                        let claim = ArpPacket::parse(&buf[..len.min(buf.len())])
                            .filter(|pkt| pkt.claims(settings.address, mac));
                        if let Some(pkt) = claim {
                            tracing::warn!(
                                vip = %settings.address,
                                interface = %settings.interface,
                                owner = %pkt.sender_mac,
                                "ARP probe answered: another host uses the VIP"
                            );
                            return Ok(Some(pkt.sender_mac));
                        }
                    }
                    Ok(None) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(source) => return Err(socket_error("reading ARP", &interface, source)),
                }
            }
        }
    }
    tracing::debug!(vip = %settings.address, interface = %settings.interface, "ARP probe: no other owner");
    Ok(None)
}

fn link_addr(index: u32, protocol: u16, dst: MacAddr) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    // Interface indexes are positive i32 in the kernel; a larger value cannot name a link.
    addr.sll_ifindex = i32::try_from(index).unwrap_or(0);
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&dst.0);
    addr
}

fn sockaddr_ll_len() -> libc::socklen_t {
    // The struct is 20 bytes; the cast cannot truncate.
    mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t
}

fn socket_error(operation: &'static str, interface: &str, source: io::Error) -> VipError {
    match source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => VipError::PermissionDenied {
            operation,
            interface: interface.to_owned(),
            source,
        },
        Some(libc::ENODEV | libc::ENXIO) => VipError::InterfaceMissing {
            interface: interface.to_owned(),
        },
        Some(libc::ENETDOWN) => VipError::InterfaceDown {
            interface: interface.to_owned(),
        },
        _ => VipError::Socket {
            operation,
            interface: interface.to_owned(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eperm_becomes_a_capability_hint() {
        let err = socket_error("opening", "eth2", io::Error::from_raw_os_error(libc::EPERM));
        assert!(matches!(err, VipError::PermissionDenied { .. }), "{err:?}");
        let err = socket_error(
            "sending",
            "eth2",
            io::Error::from_raw_os_error(libc::ENODEV),
        );
        assert!(matches!(err, VipError::InterfaceMissing { .. }), "{err:?}");
        let err = socket_error(
            "sending",
            "eth2",
            io::Error::from_raw_os_error(libc::ENETDOWN),
        );
        assert!(matches!(err, VipError::InterfaceDown { .. }), "{err:?}");
        let err = socket_error(
            "sending",
            "eth2",
            io::Error::from_raw_os_error(libc::EMSGSIZE),
        );
        assert!(matches!(err, VipError::Socket { .. }), "{err:?}");
    }

    #[test]
    fn link_addr_is_in_network_order() {
        let addr = link_addr(7, ETH_P_ARP, MacAddr::BROADCAST);
        assert_eq!(addr.sll_ifindex, 7);
        assert_eq!(addr.sll_protocol, 0x0806u16.to_be());
        assert_eq!(&addr.sll_addr[..6], &[0xff; 6]);
    }
}
