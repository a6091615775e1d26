//! VRRP (RFCs 3768, 5798, 9568) as keepalived speaks it, so a scope-router can share a VIP
//! with keepalived nodes and other scope-routers: settings, the wire format, the state
//! machine, the raw socket, and the speaker that runs them for one VIP.
//!
//! The protocol logic is sans-IO: `packet` turns bytes into adverts and back, `machine`
//! turns adverts and timer expiries into actions, and only `socket` touches the network.
//! That keeps every rule testable without namespaces or clocks.

mod machine;
mod packet;
mod settings;
mod socket;
pub mod speaker;

use std::net::Ipv4Addr;

pub use machine::{
    Action, Deadline, Event, Machine, MachineConfig, Note, OWNER_PRIORITY, Output, RESIGN_PRIORITY,
    State, Timer,
};
pub use packet::{
    Advert, Auth, DecodeError, EncodeError, IPV4_HEADER_LEN, Ipv4Header, decode_ipv4, encode_ipv4,
};
pub use settings::{AUTH_LEN, MAX_V3_INTERVAL, Version, VrrpSettings, VrrpSettingsError};
pub use socket::{DropReason, Received, VrrpSocket, VrrpSocketError, interface_address};
pub use speaker::{
    HealthChange, HealthTracker, Initial, Refusals, Role, SpeakerError, SpeakerHandle,
    SpeakerState, SpeakerStatus, Transition, start,
};

/// IANA's protocol number for VRRP.
pub const IPPROTO_VRRP: u8 = 112;

/// The group adverts go to unless unicast peers are configured.
pub const MULTICAST_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);

/// Adverts are sent with this TTL and any other is refused: a router can then trust that
/// an advert was not forwarded from another link (RFC 5798 §5.1.1.3).
pub const TTL: u8 = 255;
