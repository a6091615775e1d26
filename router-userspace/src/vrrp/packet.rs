//! VRRP adverts for IPv4 on the wire: v2 (RFC 3768) and v3 (RFC 5798/9568), byte for byte
//! as keepalived writes and checks them, and the IPv4 header around them.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::settings::{AUTH_LEN, Version};
use super::{IPPROTO_VRRP, TTL};

/// The fixed part of every advert, before the addresses.
const FIXED_LEN: usize = 8;
/// The advert type, the only one VRRP defines.
const TYPE_ADVERT: u8 = 1;
/// v2 auth types (RFC 3768 §5.3.6 keeps 1 for keepalived's `auth_type PASS`).
const AUTH_NONE: u8 = 0;
const AUTH_PASS: u8 = 1;
/// The IPv4 header we write; it has no options.
pub const IPV4_HEADER_LEN: usize = 20;
/// keepalived's TOS: precedence "internetwork control", so QoS setups keep adverts first.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

/// v2 authentication (v3 has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    /// keepalived's `auth_type PASS`: up to 8 bytes in clear, zero-padded.
    Password([u8; AUTH_LEN]),
}

/// One advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub version: Version,
    pub vrid: u8,
    /// 0: the master resigns; 255: the address owner.
    pub priority: u8,
    /// The (max) advert interval in centiseconds; v2 carries whole seconds, so a v2 advert
    /// holds a multiple of 100 here.
    pub interval_cs: u16,
    /// Always [`Auth::None`] in v3.
    pub auth: Auth,
    pub addresses: Vec<Ipv4Addr>,
}

impl Advert {
    /// The advert interval as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.interval_cs) * 10)
    }

    /// The VRRP message (no IP header). `source` and `destination` are the IPv4 addresses
    /// the packet will carry: v3's checksum covers them.
    pub fn encode(&self, source: Ipv4Addr, destination: Ipv4Addr) -> Result<Vec<u8>, EncodeError> {
        let count =
            u8::try_from(self.addresses.len()).map_err(|_| EncodeError::TooManyAddresses {
                count: self.addresses.len(),
            })?;
        let mut out = Vec::with_capacity(FIXED_LEN + 4 * self.addresses.len() + AUTH_LEN);
        out.extend([
            self.version.number() << 4 | TYPE_ADVERT,
            self.vrid,
            self.priority,
            count,
        ]);
        match self.version {
            Version::V2 => {
                let seconds = self.interval_cs / 100;
                if !self.interval_cs.is_multiple_of(100) || !(1..=255).contains(&seconds) {
                    return Err(EncodeError::IntervalV2 {
                        interval_cs: self.interval_cs,
                    });
                }
                let auth_type = match self.auth {
                    Auth::None => AUTH_NONE,
                    Auth::Password(_) => AUTH_PASS,
                };
                // `seconds` is at most 255, checked above.
                out.extend([auth_type, seconds as u8, 0, 0]);
            }
            Version::V3 => {
                if self.auth != Auth::None {
                    return Err(EncodeError::AuthWithV3);
                }
                if self.interval_cs == 0 || self.interval_cs > 0x0fff {
                    return Err(EncodeError::IntervalV3 {
                        interval_cs: self.interval_cs,
                    });
                }
                out.extend(self.interval_cs.to_be_bytes());
                out.extend([0, 0]);
            }
        }
        for address in &self.addresses {
            out.extend(address.octets());
        }
        if self.version == Version::V2 {
            // v2 always carries the 8 bytes, zero without a password (RFC 3768 §5.3.10).
            let data = match self.auth {
                Auth::None => [0; AUTH_LEN],
                Auth::Password(data) => data,
            };
            out.extend(data);
        }
        let sum = checksum(self.version, &out, source, destination);
        out[6..8].copy_from_slice(&sum.to_be_bytes());
        Ok(out)
    }

    /// Parses and checks a VRRP message (no IP header) that arrived from `source` to
    /// `destination`.
    pub fn decode(
        message: &[u8],
        source: Ipv4Addr,
        destination: Ipv4Addr,
    ) -> Result<Advert, DecodeError> {
        if message.len() < FIXED_LEN {
            return Err(DecodeError::TooShort { len: message.len() });
        }
        let version = match message[0] >> 4 {
            2 => Version::V2,
            3 => Version::V3,
            other => return Err(DecodeError::UnknownVersion { version: other }),
        };
        let kind = message[0] & 0x0f;
        if kind != TYPE_ADVERT {
            return Err(DecodeError::NotAnAdvert { kind });
        }
        let count = message[3];
        let auth_len = match version {
            Version::V2 => AUTH_LEN,
            Version::V3 => 0,
        };
        let expected = FIXED_LEN + 4 * usize::from(count) + auth_len;
        if message.len() != expected {
            return Err(DecodeError::Length {
                count,
                expected,
                len: message.len(),
            });
        }
        if checksum(version, message, source, destination) != 0 {
            let found = u16::from_be_bytes([message[6], message[7]]);
            // keepalived's `v3_checksum_as_v2` leaves the pseudo-header out; say so
            // rather than report a corrupt packet.
            if version == Version::V3 && checksum(Version::V2, message, source, destination) == 0 {
                return Err(DecodeError::V3ChecksumAsV2 { found });
            }
            return Err(DecodeError::Checksum { found });
        }
        let addresses: Vec<Ipv4Addr> = message[FIXED_LEN..FIXED_LEN + 4 * usize::from(count)]
            .chunks_exact(4)
            .map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3]))
            .collect();
        let (interval_cs, auth) = match version {
            Version::V2 => {
                let auth = match message[4] {
                    AUTH_NONE => Auth::None,
                    AUTH_PASS => {
                        let mut data = [0; AUTH_LEN];
                        data.copy_from_slice(&message[expected - AUTH_LEN..]);
                        Auth::Password(data)
                    }
                    other => return Err(DecodeError::UnsupportedAuth { auth_type: other }),
                };
                (u16::from(message[5]) * 100, auth)
            }
            // The top 4 bits are reserved: ignored on receipt (RFC 5798 §5.2.6).
            Version::V3 => (
                u16::from_be_bytes([message[4], message[5]]) & 0x0fff,
                Auth::None,
            ),
        };
        Ok(Advert {
            version,
            vrid: message[1],
            priority: message[2],
            interval_cs,
            auth,
            addresses,
        })
    }
}

/// Why an advert cannot be written; only reachable with settings `validate` refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "VRRPv2 carries whole seconds from 1 to 255, not {interval_cs} centiseconds: set \
         [vrrp] advert_int to whole seconds or version = 3"
    )]
    IntervalV2 { interval_cs: u16 },
    #[error(
        "VRRPv3 carries 1 to 4095 centiseconds, not {interval_cs}: set [vrrp] advert_int \
         between 10ms and 40.95s"
    )]
    IntervalV3 { interval_cs: u16 },
    #[error("VRRPv3 has no authentication: remove [vrrp] auth_pass or set version = 2")]
    AuthWithV3,
    #[error("an advert holds at most 255 addresses, not {count}: split the VIPs")]
    TooManyAddresses { count: usize },
}

/// Why a received packet is not a usable advert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet of {len} bytes is too short for an IPv4 VRRP packet")]
    TooShort { len: usize },
    #[error("not an IPv4 packet (version {version})")]
    NotIpv4 { version: u8 },
    #[error(
        "IPv4 header length {header_len} or total length {total_len} does not fit the {len} bytes received"
    )]
    BadIpv4Length {
        header_len: usize,
        total_len: usize,
        len: usize,
    },
    #[error("IP protocol {protocol} is not VRRP (112)")]
    NotVrrp { protocol: u8 },
    #[error("VRRP version {version} is neither 2 nor 3")]
    UnknownVersion { version: u8 },
    #[error("VRRP packet type {kind} is not an advertisement (1)")]
    NotAnAdvert { kind: u8 },
    #[error("advert announces {count} addresses, which takes {expected} bytes, but has {len}")]
    Length {
        count: u8,
        expected: usize,
        len: usize,
    },
    #[error("advert checksum {found:#06x} is wrong: the packet is corrupt")]
    Checksum { found: u16 },
    #[error(
        "VRRPv3 checksum {found:#06x} leaves out the IPv4 pseudo-header: the sender uses \
         keepalived's v3_checksum_as_v2; remove that option there (RFC 5798 includes it)"
    )]
    V3ChecksumAsV2 { found: u16 },
    #[error(
        "VRRPv2 auth type {auth_type} is not supported (0: none, 1: PASS; 2, IP AH, was \
         removed by RFC 3768): configure the sender with auth_type PASS or none"
    )]
    UnsupportedAuth { auth_type: u8 },
}

/// The fields of an IPv4 header VRRP needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub ttl: u8,
}

/// Splits a received IPv4 packet carrying VRRP into its header and the VRRP message.
pub fn decode_ipv4(packet: &[u8]) -> Result<(Ipv4Header, &[u8]), DecodeError> {
    if packet.len() < IPV4_HEADER_LEN {
        return Err(DecodeError::TooShort { len: packet.len() });
    }
    let version = packet[0] >> 4;
    if version != 4 {
        return Err(DecodeError::NotIpv4 { version });
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    // Trailing bytes past the total length (link padding) are not part of the packet.
    if header_len < IPV4_HEADER_LEN || total_len < header_len || total_len > packet.len() {
        return Err(DecodeError::BadIpv4Length {
            header_len,
            total_len,
            len: packet.len(),
        });
    }
    if packet[9] != IPPROTO_VRRP {
        return Err(DecodeError::NotVrrp {
            protocol: packet[9],
        });
    }
    let header = Ipv4Header {
        source: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
        destination: Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
        ttl: packet[8],
    };
    Ok((header, &packet[header_len..total_len]))
}

/// An IPv4 packet around `message`, as keepalived writes it: TTL 255, TOS 0xc0, no
/// options. The identification is left 0 for the kernel to fill.
pub fn encode_ipv4(source: Ipv4Addr, destination: Ipv4Addr, message: &[u8]) -> Vec<u8> {
    let total = IPV4_HEADER_LEN + message.len();
    let mut out = Vec::with_capacity(total);
    out.extend([0x45, TOS_INTERNETWORK_CONTROL]);
    // An advert is at most 8 + 4 × 255 + 8 bytes, far below 64 KiB.
    out.extend((total as u16).to_be_bytes());
    out.extend([0, 0, 0, 0, TTL, IPPROTO_VRRP, 0, 0]);
    out.extend(source.octets());
    out.extend(destination.octets());
    let sum = !fold(sum_words(&out, 0));
    out[10..12].copy_from_slice(&sum.to_be_bytes());
    out.extend(message);
    out
}

/// The Internet checksum (RFC 1071) of `message`, with v3's IPv4 pseudo-header. Over a
/// message with its checksum field filled in it is 0 when the checksum is right.
fn checksum(version: Version, message: &[u8], source: Ipv4Addr, destination: Ipv4Addr) -> u16 {
    let mut sum = match version {
        Version::V2 => 0,
        Version::V3 => {
            let mut pseudo = [0u8; 12];
            pseudo[..4].copy_from_slice(&source.octets());
            pseudo[4..8].copy_from_slice(&destination.octets());
            pseudo[9] = IPPROTO_VRRP;
            // Length checked by the callers: an advert is far below 64 KiB.
            pseudo[10..].copy_from_slice(&(message.len() as u16).to_be_bytes());
            sum_words(&pseudo, 0)
        }
    };
    sum = sum_words(message, sum);
    !fold(sum)
}

fn sum_words(bytes: &[u8], mut sum: u32) -> u32 {
    let mut words = bytes.chunks_exact(2);
    for word in &mut words {
        sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    /// Real keepalived 2.2.7 adverts (Debian 12 package), whole IPv4 packets.
    ///
    /// Captured once with two namespaces joined by a veth (192.0.2.1/24 ↔ 192.0.2.2/24):
    /// `keepalived -n -l -D -P -f v2.conf` in the first, `tcpdump -i eth2 -w v2.pcap 'ip
    /// proto 112'` in the second, bytes read with `tshark -r v2.pcap -x` (Ethernet header
    /// dropped). tshark 4.0.17 dissected each with "Checksum Status: Good". v2.conf:
    ///
    /// ```text
    /// vrrp_instance kolla {
    ///     state BACKUP
    ///     nopreempt
    ///     interface eth2
    ///     virtual_router_id 51
    ///     priority 150
    ///     advert_int 1
    ///     authentication { auth_type PASS  auth_pass kollapassword }
    ///     virtual_ipaddress { 192.0.2.100/32 }
    /// }
    /// ```
    ///
    /// The first is a master's advert; the second was sent when keepalived stopped.
    const KEEPALIVED_V2: &str = "45c0 0028 0001 0000 ff70 1891 c000 0201 e000 0012 \
                                 2133 9601 0101 eaa5 c000 0264 6b6f 6c6c 6170 6173";
    const KEEPALIVED_V2_RESIGN: &str = "45c0 0028 0004 0000 ff70 188e c000 0201 e000 0012 \
                                        2133 0001 0101 80a6 c000 0264 6b6f 6c6c 6170 6173";
    /// The same capture with `global_defs { vrrp_version 3 }` and an instance `state
    /// MASTER`, `virtual_router_id 52`, `priority 200`, `advert_int 0.5`, no
    /// authentication, `virtual_ipaddress { 192.0.2.101/32 192.0.2.102/32 }`. Its checksum
    /// includes the IPv4 pseudo-header (keepalived's default, tshark: Good).
    const KEEPALIVED_V3: &str = "45c0 0024 0001 0000 ff70 1895 c000 0201 e000 0012 \
                                 3134 c802 0032 df35 c000 0265 c000 0266";

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const GROUP: Ipv4Addr = super::super::MULTICAST_GROUP;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks_exact(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn kolla(priority: u8) -> Advert {
        Advert {
            version: Version::V2,
            vrid: 51,
            priority,
            interval_cs: 100,
            auth: Auth::Password(*b"kollapas"),
            addresses: vec![Ipv4Addr::new(192, 0, 2, 100)],
        }
    }

    fn v3_fixture() -> Advert {
        Advert {
            version: Version::V3,
            vrid: 52,
            priority: 200,
            interval_cs: 50,
            auth: Auth::None,
            addresses: vec![Ipv4Addr::new(192, 0, 2, 101), Ipv4Addr::new(192, 0, 2, 102)],
        }
    }

    /// keepalived's packets decode to what its config says, and encoding that advert gives
    /// back keepalived's exact bytes (checksums included).
    #[test]
    fn keepalived_captures_decode_and_reencode_byte_for_byte() {
        let cases = [
            ("v2 PASS master", KEEPALIVED_V2, kolla(150)),
            ("v2 PASS resign", KEEPALIVED_V2_RESIGN, kolla(0)),
            ("v3 two addresses", KEEPALIVED_V3, v3_fixture()),
        ];
        for (name, packet, want) in cases {
            let packet = hex(packet);
            let (header, message) = decode_ipv4(&packet).unwrap();
            assert_eq!(
                header,
                Ipv4Header {
                    source: SRC,
                    destination: GROUP,
                    ttl: 255
                },
                "{name}"
            );
            let advert = Advert::decode(message, header.source, header.destination)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(advert, want, "{name}");
            assert_eq!(
                advert.encode(SRC, GROUP).unwrap(),
                message,
                "{name}: our encoding differs from keepalived's"
            );
        }
        assert_eq!(v3_fixture().interval(), Duration::from_millis(500));
    }

    #[test]
    fn round_trips() {
        let other = Ipv4Addr::new(192, 0, 2, 7);
        let cases = [
            ("v2 no auth", {
                let mut a = kolla(100);
                a.auth = Auth::None;
                a
            }),
            ("v2 owner, 255 s", {
                let mut a = kolla(255);
                a.interval_cs = 25_500;
                a
            }),
            ("v3 max interval, no address", {
                let mut a = v3_fixture();
                a.interval_cs = 4095;
                a.addresses.clear();
                a
            }),
            ("v3 unicast", v3_fixture()),
        ];
        for (name, advert) in cases {
            let bytes = advert.encode(SRC, other).unwrap();
            assert_eq!(Advert::decode(&bytes, SRC, other), Ok(advert), "{name}");
        }
    }

    #[test]
    fn encode_refuses_what_the_version_cannot_carry() {
        let cases = [
            (
                "v2 half second",
                {
                    let mut a = kolla(1);
                    a.interval_cs = 50;
                    a
                },
                EncodeError::IntervalV2 { interval_cs: 50 },
            ),
            (
                "v2 256 s",
                {
                    let mut a = kolla(1);
                    a.interval_cs = 25_600;
                    a
                },
                EncodeError::IntervalV2 {
                    interval_cs: 25_600,
                },
            ),
            (
                "v2 zero",
                {
                    let mut a = kolla(1);
                    a.interval_cs = 0;
                    a
                },
                EncodeError::IntervalV2 { interval_cs: 0 },
            ),
            (
                "v3 4096 cs",
                {
                    let mut a = v3_fixture();
                    a.interval_cs = 4096;
                    a
                },
                EncodeError::IntervalV3 { interval_cs: 4096 },
            ),
            (
                "v3 password",
                {
                    let mut a = v3_fixture();
                    a.auth = Auth::Password([1; 8]);
                    a
                },
                EncodeError::AuthWithV3,
            ),
            (
                "256 addresses",
                {
                    let mut a = v3_fixture();
                    a.addresses = vec![SRC; 256];
                    a
                },
                EncodeError::TooManyAddresses { count: 256 },
            ),
        ];
        for (name, advert, want) in cases {
            assert_eq!(advert.encode(SRC, GROUP), Err(want), "{name}");
        }
    }

    #[test]
    fn decode_refuses_malformed_adverts() {
        let v2 = hex(KEEPALIVED_V2)[IPV4_HEADER_LEN..].to_vec();
        let v3 = hex(KEEPALIVED_V3)[IPV4_HEADER_LEN..].to_vec();
        let edit = |base: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = base.to_vec();
            f(&mut bytes);
            bytes
        };
        // keepalived's v3 advert with the checksum it writes under `v3_checksum_as_v2`.
        let v3_as_v2 = {
            let mut bytes = v3.clone();
            bytes[6..8].fill(0);
            let sum = checksum(Version::V2, &bytes, SRC, GROUP);
            bytes[6..8].copy_from_slice(&sum.to_be_bytes());
            bytes
        };
        let cases: Vec<(&str, Vec<u8>, DecodeError)> = vec![
            ("empty", vec![], DecodeError::TooShort { len: 0 }),
            (
                "7 bytes",
                v2[..7].to_vec(),
                DecodeError::TooShort { len: 7 },
            ),
            (
                "version 4",
                edit(&v2, &|b| b[0] = 0x41),
                DecodeError::UnknownVersion { version: 4 },
            ),
            (
                "type 2",
                edit(&v2, &|b| b[0] = 0x22),
                DecodeError::NotAnAdvert { kind: 2 },
            ),
            (
                "count says 2, one address",
                edit(&v2, &|b| b[3] = 2),
                DecodeError::Length {
                    count: 2,
                    expected: 24,
                    len: 20,
                },
            ),
            (
                "v2 without auth data",
                v2[..12].to_vec(),
                DecodeError::Length {
                    count: 1,
                    expected: 20,
                    len: 12,
                },
            ),
            (
                "trailing byte",
                edit(&v3, &|b| b.push(0)),
                DecodeError::Length {
                    count: 2,
                    expected: 16,
                    len: 17,
                },
            ),
            (
                "v2 priority flipped",
                edit(&v2, &|b| b[2] = 151),
                DecodeError::Checksum { found: 0xeaa5 },
            ),
            (
                "v3 address byte flipped",
                edit(&v3, &|b| b[15] = 0x67),
                DecodeError::Checksum { found: 0xdf35 },
            ),
            (
                "v3 checksum as v2",
                v3_as_v2.clone(),
                DecodeError::V3ChecksumAsV2 {
                    found: u16::from_be_bytes([v3_as_v2[6], v3_as_v2[7]]),
                },
            ),
            (
                "v2 auth type 2 (AH)",
                {
                    let mut a = kolla(1).encode(SRC, GROUP).unwrap();
                    a[4] = 2;
                    a[6..8].fill(0);
                    let sum = checksum(Version::V2, &a, SRC, GROUP);
                    a[6..8].copy_from_slice(&sum.to_be_bytes());
                    a
                },
                DecodeError::UnsupportedAuth { auth_type: 2 },
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(Advert::decode(&bytes, SRC, GROUP), Err(want), "{name}");
        }
        // v3's checksum binds the addresses: the same bytes from elsewhere are refused.
        assert!(matches!(
            Advert::decode(&v3, Ipv4Addr::new(192, 0, 2, 9), GROUP),
            Err(DecodeError::Checksum { .. })
        ));
        // v2's does not.
        assert!(Advert::decode(&v2, Ipv4Addr::new(192, 0, 2, 9), GROUP).is_ok());
    }

    #[test]
    fn ipv4_headers() {
        let packet = hex(KEEPALIVED_V2);
        let cases: Vec<(&str, Vec<u8>, Result<usize, DecodeError>)> = vec![
            ("keepalived's", packet.clone(), Ok(20)),
            (
                "link padding is cut",
                [packet.clone(), vec![0; 6]].concat(),
                Ok(20),
            ),
            (
                "short",
                packet[..19].to_vec(),
                Err(DecodeError::TooShort { len: 19 }),
            ),
            (
                "IPv6",
                {
                    let mut p = packet.clone();
                    p[0] = 0x65;
                    p
                },
                Err(DecodeError::NotIpv4 { version: 6 }),
            ),
            (
                "truncated",
                packet[..30].to_vec(),
                Err(DecodeError::BadIpv4Length {
                    header_len: 20,
                    total_len: 40,
                    len: 30,
                }),
            ),
            (
                "TCP",
                {
                    let mut p = packet.clone();
                    p[9] = 6;
                    p
                },
                Err(DecodeError::NotVrrp { protocol: 6 }),
            ),
        ];
        for (name, bytes, want) in cases {
            let got = decode_ipv4(&bytes).map(|(_, message)| message.len());
            assert_eq!(got, want, "{name}");
        }
    }

    /// Our IPv4 header is keepalived's but for the identification the kernel fills.
    #[test]
    fn ipv4_header_matches_keepalived() {
        let captured = hex(KEEPALIVED_V2);
        let ours = encode_ipv4(SRC, GROUP, &captured[IPV4_HEADER_LEN..]);
        let mut theirs = captured.clone();
        theirs[4..6].fill(0);
        // keepalived's identification was 1; ours is 0, so its header sum is one more.
        theirs[10..12].copy_from_slice(&0x1892u16.to_be_bytes());
        assert_eq!(ours, theirs);
        assert_eq!(fold(sum_words(&ours[..IPV4_HEADER_LEN], 0)), 0xffff);
    }
}
