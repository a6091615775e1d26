//! rtnetlink calls for the VIP: find the interface, look for, add and remove exactly the
//! VIP's address, and recognise address events about it.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use futures_util::stream::BoxStream;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::sys::SocketAddr;
use rtnetlink::{Handle, MulticastGroup};
use tokio::task::JoinHandle;

use super::arp::MacAddr;
use super::{VipError, VipSettings};

/// Address notifications from the kernel (RTNLGRP_IPV4_IFADDR).
/// Boxed so that the futures channel type need not be named (no extra crate features).
pub(crate) type Events = BoxStream<'static, (NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// The VIP's interface as netlink last described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) index: u32,
    pub(crate) mac: Option<MacAddr>,
}

/// What an add did: the kernel answers EEXIST when someone else was faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddOutcome {
    Added,
    AlreadyPresent,
}

/// An address event about the VIP on its interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VipEvent {
    Added,
    Removed,
}

/// One rtnetlink connection, bound to the namespace it was opened in.
#[derive(Debug)]
pub(crate) struct Netlink {
    handle: Handle,
    connection: JoinHandle<()>,
    address: Ipv4Addr,
    interface: String,
}

impl Netlink {
    /// Opens the connection; with `watch` it also joins the IPv4 address group so that
    /// removals of the VIP are reported through the returned stream. The stream is kept
    /// apart from `Netlink` because it is `Send` but not `Sync`.
    pub(crate) fn connect(
        settings: &VipSettings,
        watch: bool,
    ) -> Result<(Self, Option<Events>), VipError> {
        let opened = if watch {
            rtnetlink::new_multicast_connection(&[MulticastGroup::Ipv4Ifaddr])
        } else {
            rtnetlink::new_connection()
        };
        let (connection, handle, events) = opened.map_err(|source| VipError::Socket {
            operation: "opening the rtnetlink socket",
            interface: settings.interface.clone(),
            source,
        })?;
        let connection = tokio::spawn(connection);
        let nl = Self {
            handle,
            connection,
            address: settings.address,
            interface: settings.interface.clone(),
        };
        Ok((nl, watch.then(|| Box::pin(events) as Events)))
    }

    /// Looks the interface up by name (its index changes if it is recreated).
    pub(crate) async fn link(&self, name: &str) -> Result<Link, VipError> {
        let mut links = self.handle.link().get().match_name(name).execute();
        let found = links
            .try_next()
            .await
            .map_err(|e| self.error("looking up the interface", e))?;
        let Some(msg) = found else {
            return Err(VipError::InterfaceMissing {
                interface: name.to_owned(),
            });
        };
        let mac = msg.attributes.iter().find_map(|attr| match attr {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        });
        Ok(Link {
            index: msg.header.index,
            // Interfaces without link-layer addresses (lo, tun) report none or all zeros.
            mac: mac.filter(|m| *m != [0; 6]).map(MacAddr),
        })
    }

    /// The VIP's address entry on interface `index`, whatever its prefix length.
    pub(crate) async fn find_address(
        &self,
        index: u32,
    ) -> Result<Option<AddressMessage>, VipError> {
        let mut found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = found
            .try_next()
            .await
            .map_err(|e| self.error("listing the interface's addresses", e))?
        {
            if local_address(&msg) == Some(self.address) {
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }

    /// Whether the VIP is on the named interface now; `false` if the interface is missing.
    pub(crate) async fn is_present(&self, interface: &str) -> Result<bool, VipError> {
        match self.link(interface).await {
            Ok(link) => Ok(self.find_address(link.index).await?.is_some()),
            Err(VipError::InterfaceMissing { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds `VIP/32`; a /32 adds no subnet route, so nothing else of the interface changes.
    pub(crate) async fn add_address(&self, index: u32) -> Result<AddOutcome, VipError> {
        let added = self
            .handle
            .address()
            .add(index, IpAddr::V4(self.address), 32)
            .execute()
            .await;
        match added {
            Ok(()) => Ok(AddOutcome::Added),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(AddOutcome::AlreadyPresent),
            Err(e) => Err(self.error("adding the VIP", e)),
        }
    }

    /// Removes exactly the given entry (as listed by [`Netlink::find_address`]).
    pub(crate) async fn del_address(&self, entry: AddressMessage) -> Result<(), VipError> {
        match self.handle.address().del(entry).execute().await {
            Ok(()) => Ok(()),
            // Already gone: the goal of a removal is reached.
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
            Err(e) => Err(self.error("removing the VIP", e)),
        }
    }

    /// Warns when the VIP also sits on another interface of this namespace: the kernel
    /// would answer ARP for it there too, which is rarely what the operator wants.
    pub(crate) async fn warn_if_elsewhere(&self, index: u32) {
        let listed: Result<Vec<AddressMessage>, _> =
            self.handle.address().get().execute().try_collect().await;
        let Ok(listed) = listed else { return };
        for msg in listed {
            if msg.header.index != index && local_address(&msg) == Some(self.address) {
                tracing::warn!(
                    vip = %self.address,
                    interface = %self.interface,
                    other_index = msg.header.index,
                    "the VIP is also configured on another interface of this namespace"
                );
            }
        }
    }

    fn error(&self, operation: &'static str, source: rtnetlink::Error) -> VipError {
        match errno(&source) {
            Some(libc::EPERM | libc::EACCES) => VipError::PermissionDenied {
                operation,
                interface: self.interface.clone(),
                source: io::Error::from_raw_os_error(libc::EPERM),
            },
            Some(libc::ENODEV) => VipError::InterfaceMissing {
                interface: self.interface.clone(),
            },
            _ => VipError::Netlink {
                operation,
                address: self.address,
                interface: self.interface.clone(),
                source,
            },
        }
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // The connection task would otherwise outlive every handle on some runtimes.
        self.connection.abort();
    }
}

/// The positive errno of a netlink NACK.
fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// IFA_LOCAL is the interface's own address; IFA_ADDRESS differs from it only on
/// point-to-point links, so it is the fallback.
fn local_address(msg: &AddressMessage) -> Option<Ipv4Addr> {
    let v4 = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    };
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => v4(ip),
        _ => None,
    });
    local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => v4(ip),
            _ => None,
        })
    })
}

/// Classifies a notification: is it the VIP appearing on or leaving interface `index`?
pub(crate) fn vip_event(
    msg: &NetlinkMessage<RouteNetlinkMessage>,
    index: u32,
    address: Ipv4Addr,
) -> Option<VipEvent> {
    let NetlinkPayload::InnerMessage(inner) = &msg.payload else {
        return None;
    };
    let (entry, event) = match inner {
        RouteNetlinkMessage::NewAddress(entry) => (entry, VipEvent::Added),
        RouteNetlinkMessage::DelAddress(entry) => (entry, VipEvent::Removed),
        _ => return None,
    };
    (entry.header.index == index && local_address(entry) == Some(address)).then_some(event)
}

/// Whether `interface` exists in the calling thread's network namespace and is up with a
/// carrier (`IFF_UP` and `IFF_RUNNING`). An ioctl on a throwaway socket, which belongs to
/// the namespace it is created in: `/sys/class/net` shows the namespace sysfs was mounted
/// in, which under `nsenter --net` is not the router's.
pub fn interface_up(interface: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(interface) else {
        return false;
    };
    if name.as_bytes_with_nul().len() > libc::IFNAMSIZ {
        return false;
    }
    // SAFETY: a plain socket(2); closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `ifreq` is plain data; the name fits (checked above) and is NUL-terminated.
    let flags = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in req.ifr_name.iter_mut().zip(name.as_bytes_with_nul()) {
            *slot = *byte as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        libc::close(fd);
        if rc < 0 {
            return false;
        }
        req.ifr_ifru.ifru_flags
    };
    let want = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    flags & want == want
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::AddressMessageBuilder;

    const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

    fn entry(index: u32, ip: Ipv4Addr, prefix: u8) -> AddressMessage {
        AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(ip, prefix)
            .build()
    }

    #[test]
    fn removal_of_the_vip_on_its_interface_is_recognised() {
        let msg = NetlinkMessage::from(RouteNetlinkMessage::DelAddress(entry(4, VIP, 32)));
        assert_eq!(vip_event(&msg, 4, VIP), Some(VipEvent::Removed));
        let msg = NetlinkMessage::from(RouteNetlinkMessage::NewAddress(entry(4, VIP, 24)));
        assert_eq!(vip_event(&msg, 4, VIP), Some(VipEvent::Added));
    }

    #[test]
    fn other_addresses_and_interfaces_are_not_the_vip() {
        let other = Ipv4Addr::new(192, 0, 2, 1);
        let msg = NetlinkMessage::from(RouteNetlinkMessage::DelAddress(entry(4, other, 24)));
        assert_eq!(vip_event(&msg, 4, VIP), None);
        let msg = NetlinkMessage::from(RouteNetlinkMessage::DelAddress(entry(5, VIP, 32)));
        assert_eq!(vip_event(&msg, 4, VIP), None);
    }

    #[test]
    fn local_beats_peer_address() {
        let mut msg = entry(4, Ipv4Addr::new(10, 0, 0, 2), 32);
        msg.attributes
            .retain(|a| !matches!(a, AddressAttribute::Local(_)));
        msg.attributes
            .insert(0, AddressAttribute::Local(VIP.into()));
        assert_eq!(local_address(&msg), Some(VIP));
    }
}
