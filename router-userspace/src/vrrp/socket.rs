//! The IO edge of VRRP: a raw IPv4 socket for protocol 112 on one interface, sending
//! adverts with TTL 255 and handing back the adverts that arrived with TTL 255.
//!
//! The socket belongs to the network namespace of the thread that opens it, for its whole
//! life, so it may be used from any runtime thread afterwards (as the VIP manager's).

use std::ffi::{CStr, CString};
use std::io::{self, Read as _};
use std::net::{Ipv4Addr, SocketAddrV4};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::packet::{Advert, DecodeError, EncodeError, decode_ipv4, encode_ipv4};
use super::{IPPROTO_VRRP, MULTICAST_GROUP, TTL};

/// Larger than any advert: 60 bytes of IPv4 header, 16 of VRRP, 255 addresses.
const RECV_BUF: usize = 2048;

/// Why the VRRP socket cannot be opened or used; each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum VrrpSocketError {
    #[error(
        "VRRP interface {interface:?} does not exist in this network namespace: set [vrrp] \
         interface (or [vip] interface) to the interface the other routers share"
    )]
    InterfaceMissing { interface: String },

    #[error(
        "VRRP interface {interface:?} has no IPv4 address of its own to send adverts from: \
         add this node's address (not the VIP) to it, as keepalived needs too"
    )]
    NoAddress { interface: String },

    #[error(
        "{operation} on {interface:?} was refused: VRRP needs CAP_NET_RAW for its raw \
         socket; run scope-router as root or grant it (systemd: \
         AmbientCapabilities=CAP_NET_RAW)"
    )]
    PermissionDenied {
        operation: &'static str,
        interface: String,
        #[source]
        source: io::Error,
    },

    #[error("{operation} on VRRP interface {interface:?} failed")]
    Io {
        operation: &'static str,
        interface: String,
        #[source]
        source: io::Error,
    },

    #[error("cannot write the advert")]
    Encode(#[from] EncodeError),
}

/// Why a received packet was not handed on as an advert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// Forwarded by a router, or crafted off-link (RFC 5798 §7.1 requires 255).
    Ttl(u8),
    /// Unicast mode accepts adverts from the configured peers only, as keepalived.
    NotAPeer,
    Malformed(DecodeError),
}

/// One packet read from the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Advert {
        source: Ipv4Addr,
        advert: Advert,
    },
    /// `source` is `None` when the IPv4 header itself was unreadable.
    Dropped {
        source: Option<Ipv4Addr>,
        reason: DropReason,
    },
}

/// A VRRP socket on one interface.
#[derive(Debug)]
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
    interface: String,
    source: Ipv4Addr,
    peers: Vec<Ipv4Addr>,
}

impl VrrpSocket {
    /// Opens the socket on `interface` in the calling thread's network namespace: joined
    /// to 224.0.0.18 when `peers` is empty, otherwise sending to and accepting only the
    /// peers. Adverts leave from `source` (see [`interface_address`]). Must run inside a
    /// tokio runtime.
    pub fn open(
        interface: &str,
        source: Ipv4Addr,
        peers: &[Ipv4Addr],
    ) -> Result<Self, VrrpSocketError> {
        let io_err = |operation: &'static str| {
            let interface = interface.to_owned();
            move |source: io::Error| match source.kind() {
                io::ErrorKind::PermissionDenied => VrrpSocketError::PermissionDenied {
                    operation,
                    interface,
                    source,
                },
                _ => VrrpSocketError::Io {
                    operation,
                    interface,
                    source,
                },
            }
        };
        let index = interface_index(interface)?;
        let socket = Socket::new_raw(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(IPPROTO_VRRP))),
        )
        .map_err(io_err("opening a raw socket for VRRP"))?;
        // Only this link's adverts: another interface may carry another cluster.
        socket
            .bind_device(Some(interface.as_bytes()))
            .map_err(io_err("binding the VRRP socket to its interface"))?;
        // We write the IPv4 header: the v3 checksum covers the source address, so the
        // kernel must not pick another one; and TTL 255 goes in as keepalived sends it.
        socket
            .set_header_included_v4(true)
            .map_err(io_err("setting IP_HDRINCL on the VRRP socket"))?;
        if peers.is_empty() {
            socket
                .join_multicast_v4_n(&MULTICAST_GROUP, &InterfaceIndexOrAddress::Index(index))
                .map_err(io_err("joining 224.0.0.18"))?;
            socket
                .set_multicast_if_v4(&source)
                .map_err(io_err("choosing the multicast interface"))?;
            // Our own adverts would come back as another router's.
            socket
                .set_multicast_loop_v4(false)
                .map_err(io_err("disabling multicast loopback"))?;
        }
        socket
            .set_nonblocking(true)
            .map_err(io_err("making the VRRP socket non-blocking"))?;
        // SAFETY: the descriptor is owned by `socket`, which the AsyncFd owns from now on,
        // so it stays open and unchanged for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(socket) }.map_err(|e| {
            io_err("registering the VRRP socket with the runtime")(e.into_parts().1)
        })?;
        Ok(Self {
            fd,
            interface: interface.to_owned(),
            source,
            peers: peers.to_vec(),
        })
    }

    /// The address adverts leave from.
    pub fn source(&self) -> Ipv4Addr {
        self.source
    }

    /// Sends `advert` to the group, or to every peer.
    pub async fn send(&self, advert: &Advert) -> Result<(), VrrpSocketError> {
        let destinations = if self.peers.is_empty() {
            vec![MULTICAST_GROUP]
        } else {
            self.peers.clone()
        };
        // One unreachable peer must not silence the others: send to all, report the first.
        let mut first_error = None;
        for destination in destinations {
            if let Err(err) = self.send_to(advert, destination).await {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn send_to(&self, advert: &Advert, destination: Ipv4Addr) -> Result<(), VrrpSocketError> {
        let message = advert.encode(self.source, destination)?;
        let packet = encode_ipv4(self.source, destination, &message);
        let to = SockAddr::from(SocketAddrV4::new(destination, 0));
        loop {
            let mut guard = self
                .fd
                .writable()
                .await
                .map_err(|e| self.io("waiting to send", e))?;
            if let Ok(result) = guard.try_io(|fd| fd.get_ref().send_to(&packet, &to)) {
                return result
                    .map(drop)
                    .map_err(|e| self.io("sending an advert", e));
            }
        }
    }

    /// Waits for the next packet and says what it is.
    pub async fn recv(&self) -> Result<Received, VrrpSocketError> {
        let mut buf = [0u8; RECV_BUF];
        let len = loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|e| self.io("waiting for adverts", e))?;
            match guard.try_io(|fd| fd.get_ref().read(&mut buf)) {
                Ok(result) => break result.map_err(|e| self.io("receiving adverts", e))?,
                Err(_would_block) => continue,
            }
        };
        Ok(self.check(&buf[..len]))
    }

    /// Waits for the next acceptable advert; dropped packets are logged at debug level.
    pub async fn recv_advert(&self) -> Result<(Ipv4Addr, Advert), VrrpSocketError> {
        loop {
            match self.recv().await? {
                Received::Advert { source, advert } => return Ok((source, advert)),
                Received::Dropped { source, reason } => {
                    tracing::debug!(interface = %self.interface, ?source, ?reason, "VRRP packet dropped");
                }
            }
        }
    }

    fn check(&self, packet: &[u8]) -> Received {
        let (header, message) = match decode_ipv4(packet) {
            Ok(parts) => parts,
            Err(err) => {
                return Received::Dropped {
                    source: None,
                    reason: DropReason::Malformed(err),
                };
            }
        };
        let dropped = |reason| Received::Dropped {
            source: Some(header.source),
            reason,
        };
        if header.ttl != TTL {
            return dropped(DropReason::Ttl(header.ttl));
        }
        if !self.peers.is_empty() && !self.peers.contains(&header.source) {
            return dropped(DropReason::NotAPeer);
        }
        match Advert::decode(message, header.source, header.destination) {
            Ok(advert) => Received::Advert {
                source: header.source,
                advert,
            },
            Err(err) => dropped(DropReason::Malformed(err)),
        }
    }

    fn io(&self, operation: &'static str, source: io::Error) -> VrrpSocketError {
        VrrpSocketError::Io {
            operation,
            interface: self.interface.clone(),
            source,
        }
    }
}

fn interface_index(interface: &str) -> Result<u32, VrrpSocketError> {
    let missing = || VrrpSocketError::InterfaceMissing {
        interface: interface.to_owned(),
    };
    let name = CString::new(interface).map_err(|_| missing())?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(missing()),
        index => Ok(index),
    }
}

/// The first IPv4 address on `interface` that is not in `exclude` (the VIPs), in the
/// calling thread's network namespace: the address adverts leave from and the tie-break
/// between equal priorities, as keepalived picks it.
pub fn interface_address(
    interface: &str,
    exclude: &[Ipv4Addr],
) -> Result<Ipv4Addr, VrrpSocketError> {
    interface_index(interface)?;
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(VrrpSocketError::Io {
            operation: "listing interface addresses",
            interface: interface.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    let mut found = None;
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null and points at a sockaddr of the family it says.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if name.to_bytes() != interface.as_bytes() || family != libc::AF_INET {
            continue;
        }
        // SAFETY: the family is AF_INET, so the sockaddr is a sockaddr_in.
        let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
        let address = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if !exclude.contains(&address) {
            found = Some(address);
            break;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once; nothing borrowed outlives it.
    unsafe { libc::freeifaddrs(list) };
    found.ok_or_else(|| VrrpSocketError::NoAddress {
        interface: interface.to_owned(),
    })
}
