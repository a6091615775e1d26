//! Several namespaces on one Ethernet segment: a bridge in a namespace of its own and a
//! veth from each node into it. VRRP needs three routers that all hear each other's
//! multicast, which a veth pair, with its two ends, cannot give.
//!
//! ```no_run
//! use test_support::segment::Segment;
//! let segment = Segment::new("srt-vrrp", 3).unwrap(); // nodes[i]: eth0 = 10.55.0.(i+1)/24
//! let a = &segment.nodes[0];
//! assert_eq!(segment.address(0).to_string(), "10.55.0.1");
//! // every namespace and link is deleted when `segment` drops, also on panic
//! ```

use std::net::Ipv4Addr;

use crate::netns::{Error, Netns};

/// Nodes on one bridge. Addresses are 10.55.0.0/24 and exist only inside the nodes'
/// namespaces.
#[derive(Debug)]
pub struct Segment {
    /// Each node's namespace, with `eth0` = [`Segment::address`] on the segment. Declared
    /// first so the nodes go before the bridge: deleting a node deletes its veth too.
    pub nodes: Vec<Netns>,
    /// The namespace of the bridge `br0` and of the veths' bridge ends (`port<i>`).
    pub bridge: Netns,
}

impl Segment {
    /// Creates the bridge and `count` nodes (at most 99), links up, addressed.
    pub fn new(prefix: &str, count: u8) -> Result<Self, Error> {
        assert!(count < 100, "a segment holds at most 99 nodes");
        let bridge = Netns::create(&format!("{prefix}-br"))?;
        // Multicast snooping would make the bridge wait for IGMP reports before it
        // forwards a group; VRRP's group must flood from the first advert. STP is off by
        // default, so ports forward at once.
        bridge.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        bridge.ip(&["link", "set", "br0", "up"])?;
        let mut nodes = Vec::new();
        for i in 0..count {
            let node = Netns::create(&format!("{prefix}-{i}"))?;
            let port = format!("port{i}");
            bridge.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                node.name(),
            ])?;
            bridge.ip(&["link", "set", &port, "master", "br0", "up"])?;
            node.ip(&["link", "set", "eth0", "up"])?;
            node.ip(&[
                "addr",
                "add",
                &format!("{}/24", Self::address_of(i)),
                "dev",
                "eth0",
            ])?;
            nodes.push(node);
        }
        Ok(Self { nodes, bridge })
    }

    /// Node `i`'s address on `eth0`.
    pub fn address(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.nodes.len(), "no node {i} on this segment");
        Self::address_of(u8::try_from(i).unwrap_or(u8::MAX))
    }

    fn address_of(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 55, 0, i + 1)
    }
}
