//! Wireshark's dissector, an implementation independent of ours and of keepalived, reads
//! the adverts scope-router sends: fields as meant and a checksum it calls good (v3's
//! with the IPv4 pseudo-header, the RFC's and keepalived's default). A corrupted copy
//! must be called bad, or the check would prove nothing.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use scope_router::vrrp::{Advert, Auth, MULTICAST_GROUP, Version, encode_ipv4};

const SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const VIP2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);

/// A classic pcap file of raw IPv4 packets (LINKTYPE_RAW), no Ethernet header needed.
fn write_pcap(path: &Path, packets: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend(0xa1b2_c3d4u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    out.extend(0i32.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(65_535u32.to_le_bytes());
    out.extend(101u32.to_le_bytes());
    for (i, packet) in packets.iter().enumerate() {
        let len = u32::try_from(packet.len()).expect("small packet");
        out.extend(u32::try_from(i).expect("few packets").to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(len.to_le_bytes());
        out.extend(len.to_le_bytes());
        out.extend(packet);
    }
    std::fs::write(path, out).expect("writing the pcap");
}

fn packet(advert: &Advert, destination: Ipv4Addr) -> Vec<u8> {
    let message = advert.encode(SOURCE, destination).expect("encoding");
    encode_ipv4(SOURCE, destination, &message)
}

#[test]
fn tshark_dissects_our_adverts_with_good_checksums() {
    const TEST: &str = "tshark_dissects_our_adverts_with_good_checksums";
    if !test_support::tool::installed(
        TEST,
        "tshark",
        "install Debian's tshark (apt-get install tshark; `cargo xtask setup` does)",
    ) {
        return;
    }
    let kolla = Advert {
        version: Version::V2,
        vrid: 51,
        priority: 150,
        interval_cs: 100,
        auth: Auth::Password(*b"kollapas"),
        addresses: vec![VIP],
    };
    let resign = Advert {
        priority: 0,
        auth: Auth::None,
        ..kolla.clone()
    };
    let v3 = Advert {
        version: Version::V3,
        vrid: 52,
        priority: 200,
        interval_cs: 50,
        auth: Auth::None,
        addresses: vec![VIP, VIP2],
    };
    let mut corrupt = packet(&v3, MULTICAST_GROUP);
    // The priority byte: the VRRP message starts after the 20-byte IPv4 header.
    corrupt[22] = 201;
    let packets = [
        packet(&kolla, MULTICAST_GROUP),
        packet(&resign, MULTICAST_GROUP),
        packet(&v3, MULTICAST_GROUP),
        // Unicast: another pseudo-header, so another checksum.
        packet(&v3, PEER),
        corrupt,
    ];
    let dir = tempfile::tempdir().expect("temporary directory");
    let pcap = dir.path().join("adverts.pcap");
    write_pcap(&pcap, &packets);

    let fields = [
        "ip.ttl",
        "ip.dst",
        "vrrp.version",
        "vrrp.virt_rtr_id",
        "vrrp.prio",
        "vrrp.addr_count",
        "vrrp.auth_type",
        "vrrp.adver_int",
        "vrrp.short_adver_int",
        "vrrp.auth_string",
        "vrrp.ip_addr",
        "vrrp.checksum.status",
    ];
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(&pcap)
        .args(["-o", "vrrp.v3_checksum_as_in_v2:FALSE", "-T", "fields"])
        .args(["-E", "separator=;"]);
    for field in fields {
        cmd.args(["-e", field]);
    }
    let (ok, printed) = test_support::tool::run_printed(&mut cmd);
    assert!(ok, "tshark failed: {printed}");
    let rows: Vec<&str> = printed
        .lines()
        .filter(|line| line.starts_with("255;"))
        .collect();
    // Checksum status: 1 good, 0 bad (Wireshark's PROTO_CHECKSUM_E_*).
    let want = [
        "255;224.0.0.18;2;51;150;1;1;1;;kollapas;192.0.2.100;1",
        "255;224.0.0.18;2;51;0;1;0;1;;;192.0.2.100;1",
        "255;224.0.0.18;3;52;200;2;;;50;;192.0.2.100,192.0.2.101;1",
        "255;192.0.2.2;3;52;200;2;;;50;;192.0.2.100,192.0.2.101;1",
        "255;224.0.0.18;3;52;201;2;;;50;;192.0.2.100,192.0.2.101;0",
    ];
    let mut report = String::new();
    for (i, line) in printed.lines().enumerate() {
        let _ = writeln!(report, "  {i}: {line}");
    }
    assert_eq!(rows, want, "tshark printed:\n{report}");
}
