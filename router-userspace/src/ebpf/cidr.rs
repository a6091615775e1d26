//! IPv4 CIDR prefixes for the deny list, parsed from config strings like `"198.51.100.0/24"`.

use std::{fmt, net::Ipv4Addr, str::FromStr};

/// An IPv4 prefix; host bits are cleared on construction so equal prefixes compare equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

/// Why a deny-list entry is not a valid IPv4 CIDR.
#[derive(Debug, thiserror::Error)]
pub enum CidrError {
    /// The part before `/` is not an IPv4 address.
    #[error("`{text}` is not an IPv4 CIDR: bad address (write e.g. \"198.51.100.0/24\")")]
    Address {
        /// The rejected text.
        text: String,
    },
    /// The prefix length is missing, not a number or above 32.
    #[error("`{text}` is not an IPv4 CIDR: prefix length must be 0..=32")]
    PrefixLen {
        /// The rejected text.
        text: String,
    },
}

impl Ipv4Cidr {
    /// Builds a prefix, clearing host bits; `None` if `prefix_len > 32`.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        if prefix_len > 32 {
            return None;
        }
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0);
        Some(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix_len,
        })
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` falls inside this prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        Self::new(ip, self.prefix_len).is_some_and(|net| net.addr == self.addr)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    /// Accepts `a.b.c.d/len`, and a bare address as `/32`.
    fn from_str(text: &str) -> Result<Self, CidrError> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: Ipv4Addr = addr.trim().parse().map_err(|_| CidrError::Address {
            text: text.to_owned(),
        })?;
        let len = match len {
            Some(len) => len.trim().parse::<u8>().map_err(|_| CidrError::PrefixLen {
                text: text.to_owned(),
            })?,
            None => 32,
        };
        Self::new(addr, len).ok_or_else(|| CidrError::PrefixLen {
            text: text.to_owned(),
        })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_masks_host_bits() {
        let cidr: Ipv4Cidr = "198.51.100.77/24".parse().unwrap();
        assert_eq!(cidr.to_string(), "198.51.100.0/24");
        assert!(cidr.contains(Ipv4Addr::new(198, 51, 100, 1)));
        assert!(!cidr.contains(Ipv4Addr::new(198, 51, 101, 1)));
    }

    #[test]
    fn bare_address_is_host_route_and_zero_is_everything() {
        assert_eq!("192.0.2.1".parse::<Ipv4Cidr>().unwrap().prefix_len(), 32);
        let all: Ipv4Cidr = "10.1.2.3/0".parse().unwrap();
        assert_eq!(all.to_string(), "0.0.0.0/0");
        assert!(all.contains(Ipv4Addr::new(203, 0, 113, 9)));
    }

    #[test]
    fn rejects_bad_entries_with_a_hint() {
        let err = "192.0.2.0/33".parse::<Ipv4Cidr>().unwrap_err();
        assert!(err.to_string().contains("0..=32"), "{err}");
        let err = "2001:db8::/32".parse::<Ipv4Cidr>().unwrap_err();
        assert!(err.to_string().contains("bad address"), "{err}");
    }
}
