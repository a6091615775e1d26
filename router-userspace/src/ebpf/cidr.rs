//! `ebpf.deny` entries: parsed from the config into [`IpNet`], and converted to and from
//! the DENY map's LPM trie keys (the only place that knows the key's byte order).

use std::net::{IpAddr, Ipv4Addr};

use aya::maps::lpm_trie::Key;
use ipnet::{IpNet, Ipv4Net};
use router_common::DenyAddr;
use serde::{Deserialize, Deserializer, de::Error as _};

/// Parses one deny entry: `addr/len`, or a bare address as a host route. Host bits must be
/// clear: `10.0.0.1/8` is more likely a typo for a host than a request to deny 10/8.
pub(crate) fn parse_net(text: &str) -> Result<IpNet, String> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a CIDR: `{addr}` is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(len) => len
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|len| *len <= max)
            .ok_or_else(|| format!("`{text}` is not a CIDR: prefix length must be 0..={max}"))?,
    };
    let net = IpNet::new(addr, len)
        .map_err(|_| format!("`{text}` is not a CIDR: prefix length must be 0..={max}"))?;
    if net.trunc() != net {
        return Err(format!(
            "`{text}` has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// `deny = [...]` of `[ebpf]`; an error names the entry, since toml only points at the list.
pub(crate) fn deny_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .enumerate()
        .map(|(i, text)| {
            parse_net(text).map_err(|e| D::Error::custom(format!("ebpf.deny[{i}]: {e}")))
        })
        .collect()
}

/// The DENY map key of `net`: the prefix length, then the address in network byte order
/// (the XDP program compares it with the packet's source as read from the header).
pub(crate) fn deny_key(net: Ipv4Net) -> Key<DenyAddr> {
    Key::new(
        u32::from(net.prefix_len()),
        u32::from_ne_bytes(net.network().octets()),
    )
}

/// The network a DENY map key stands for; `None` for a prefix length the kernel should
/// never have accepted.
pub(crate) fn deny_net(key: &Key<DenyAddr>) -> Option<Ipv4Net> {
    let len = u8::try_from(key.prefix_len()).ok()?;
    Ipv4Net::new(Ipv4Addr::from(key.data().to_ne_bytes()), len).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_config_entries() {
        let ok = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("::/0", "::/0"),
            ("fd00::/8", "fd00::/8"),
            ("fd00::1", "fd00::1/128"),
        ];
        for (text, shown) in ok {
            assert_eq!(parse_net(text).unwrap().to_string(), shown);
        }
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "x/8",
            "fd00::1/8",
            "::/129",
            "",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
        let err = parse_net("10.0.0.1/8").unwrap_err();
        assert!(err.contains("10.0.0.0/8"), "suggests the network: {err}");
        let err = parse_net("192.0.2.0/33").unwrap_err();
        assert!(err.contains("0..=32"), "{err}");
    }

    #[test]
    fn map_keys_round_trip_in_network_byte_order() {
        let net: Ipv4Net = "198.51.100.0/24".parse().unwrap();
        let key = deny_key(net);
        assert_eq!(key.prefix_len(), 24);
        // The first octet of the address is the first byte in memory.
        assert_eq!(key.data().to_ne_bytes(), [198, 51, 100, 0]);
        assert_eq!(deny_net(&key), Some(net));
        assert_eq!(deny_net(&Key::new(33, 0)), None);
    }
}
