//! The VRRP socket on a real link: two namespaces joined by a veth exchange adverts through
//! `scope_router::vrrp::VrrpSocket` (multicast and unicast, v2 and v3), a real keepalived
//! in one namespace is heard and understood by the socket in the other, and an advert
//! that arrives with a TTL below 255 is refused.
//!
//! `cargo xtask test` runs this file as root with the other `privileged_*` suites; every
//! wait is bounded, and nothing asserts on how long anything took.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use scope_router::vrrp::{
    Advert, Auth, DropReason, Event, MULTICAST_GROUP, Machine, MachineConfig, Received, State,
    Version, VrrpSettings, VrrpSocket, interface_address,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use test_support::keepalived::Keepalived;
use test_support::netns::{self, Lab, Netns};

/// The bound on every wait for a packet. keepalived becomes master at once with `state
/// MASTER`, but a loaded machine may be slow to start it.
const PATIENCE: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Opens a VRRP socket inside `ns` (it keeps that namespace) registered with `rt`.
fn open(
    rt: &tokio::runtime::Runtime,
    ns: &Netns,
    interface: &str,
    source: Ipv4Addr,
    peers: &[Ipv4Addr],
) -> VrrpSocket {
    let handle = rt.handle().clone();
    ns.run(move || {
        let _runtime = handle.enter();
        VrrpSocket::open(interface, source, peers)
    })
    .unwrap_or_else(|e| panic!("opening the VRRP socket on {interface}: {e}"))
}

async fn next(socket: &VrrpSocket) -> Received {
    tokio::time::timeout(PATIENCE, socket.recv())
        .await
        .unwrap_or_else(|_| panic!("no packet within {PATIENCE:?}"))
        .expect("receiving")
}

fn kolla_advert(priority: u8) -> Advert {
    Advert {
        version: Version::V2,
        vrid: 51,
        priority,
        interval_cs: 100,
        auth: Auth::Password(*b"kollapas"),
        addresses: vec![Lab::VIP],
    }
}

#[test]
fn adverts_cross_a_veth_between_two_sockets() {
    const TEST: &str = "adverts_cross_a_veth_between_two_sockets";
    if !netns::privileged(TEST) {
        return;
    }
    let lab = Lab::new().expect("lab");
    let rt = runtime();

    let source = lab
        .router
        .run(|| interface_address("eth2", &[]))
        .expect("the router's address");
    assert_eq!(source, Lab::ROUTER);

    let v3 = Advert {
        version: Version::V3,
        vrid: 52,
        priority: 200,
        interval_cs: 50,
        auth: Auth::None,
        addresses: vec![Lab::VIP, Ipv4Addr::new(192, 0, 2, 101)],
    };
    {
        let sender = open(&rt, &lab.router, "eth2", Lab::ROUTER, &[]);
        let receiver = open(&rt, &lab.client, "eth0", Lab::CLIENT, &[]);
        rt.block_on(async {
            for advert in [kolla_advert(150), v3.clone()] {
                sender.send(&advert).await.expect("sending");
                assert_eq!(
                    next(&receiver).await,
                    Received::Advert {
                        source: Lab::ROUTER,
                        advert
                    },
                    "multicast"
                );
            }
        });
    }
    // Unicast: straight to the peer, and accepted from the configured peer only.
    let sender = open(&rt, &lab.router, "eth2", Lab::ROUTER, &[Lab::CLIENT]);
    let receiver = open(&rt, &lab.client, "eth0", Lab::CLIENT, &[Lab::ROUTER]);
    let stranger = open(
        &rt,
        &lab.client,
        "eth0",
        Lab::CLIENT,
        &[Ipv4Addr::new(192, 0, 2, 3)],
    );
    rt.block_on(async {
        sender.send(&v3).await.expect("sending");
        assert_eq!(
            next(&receiver).await,
            Received::Advert {
                source: Lab::ROUTER,
                advert: v3.clone()
            },
            "unicast"
        );
        assert_eq!(
            next(&stranger).await,
            Received::Dropped {
                source: Some(Lab::ROUTER),
                reason: DropReason::NotAPeer
            },
            "unicast from a router that is not a peer"
        );
    });
}

#[test]
fn the_advert_source_is_the_interfaces_own_address_not_the_vip() {
    const TEST: &str = "the_advert_source_is_the_interfaces_own_address_not_the_vip";
    if !netns::privileged(TEST) {
        return;
    }
    let lab = Lab::new().expect("lab");
    // The VIP first, so that skipping it is what finds the node's own address.
    lab.client
        .ip(&["addr", "flush", "dev", "eth0"])
        .expect("flush");
    lab.client
        .ip(&["addr", "add", "192.0.2.100/32", "dev", "eth0"])
        .expect("adding the VIP");
    lab.client
        .ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"])
        .expect("adding the node's address");
    let found = lab.client.run(|| {
        (
            interface_address("eth0", &[]),
            interface_address("eth0", &[Lab::VIP]),
            interface_address("eth0", &[Lab::VIP, Lab::CLIENT]).map_err(|e| e.to_string()),
            interface_address("eth9", &[]).map_err(|e| e.to_string()),
        )
    });
    assert_eq!(found.0.expect("first address"), Lab::VIP);
    assert_eq!(found.1.expect("own address"), Lab::CLIENT);
    let none = found.2.expect_err("every address excluded");
    assert!(none.contains("no IPv4 address of its own"), "{none}");
    let missing = found.3.expect_err("no such interface");
    assert!(missing.contains("\"eth9\" does not exist"), "{missing}");
}

/// Sends `advert` as the router namespace's kernel would for an ordinary raw socket: its
/// own IPv4 header, with multicast TTL `ttl`.
fn send_with_ttl(ns: &Netns, advert: &Advert, ttl: u32) {
    let message = advert
        .encode(Lab::ROUTER, MULTICAST_GROUP)
        .expect("encoding");
    ns.run(|| {
        let socket = Socket::new_raw(Domain::IPV4, Type::RAW, Some(Protocol::from(112)))?;
        socket.bind_device(Some(b"eth2"))?;
        socket.set_multicast_if_v4(&Lab::ROUTER)?;
        socket.set_multicast_ttl_v4(ttl)?;
        socket.send_to(
            &message,
            &SockAddr::from(SocketAddrV4::new(MULTICAST_GROUP, 0)),
        )
    })
    .expect("sending with a plain raw socket");
}

#[test]
fn adverts_below_ttl_255_are_ignored() {
    const TEST: &str = "adverts_below_ttl_255_are_ignored";
    if !netns::privileged(TEST) {
        return;
    }
    let lab = Lab::new().expect("lab");
    let rt = runtime();
    let sender = open(&rt, &lab.router, "eth2", Lab::ROUTER, &[]);
    let receiver = open(&rt, &lab.client, "eth0", Lab::CLIENT, &[]);
    rt.block_on(async {
        // Priorities tell the two apart: 7 went through a router (TTL 64), 8 did not.
        send_with_ttl(&lab.router, &kolla_advert(7), 64);
        sender.send(&kolla_advert(8)).await.expect("sending");
        assert_eq!(
            next(&receiver).await,
            Received::Dropped {
                source: Some(Lab::ROUTER),
                reason: DropReason::Ttl(64)
            }
        );
        assert_eq!(
            next(&receiver).await,
            Received::Advert {
                source: Lab::ROUTER,
                advert: kolla_advert(8)
            }
        );
        // What a speaker reads skips the refused one. The second comes from the same
        // plain socket as the refused ones: the refusal is about the TTL, not the sender.
        send_with_ttl(&lab.router, &kolla_advert(9), 254);
        send_with_ttl(&lab.router, &kolla_advert(10), 255);
        let (source, advert) = tokio::time::timeout(PATIENCE, receiver.recv_advert())
            .await
            .expect("an advert in time")
            .expect("receiving");
        assert_eq!((source, advert), (Lab::ROUTER, kolla_advert(10)));
    });
}

#[test]
fn keepalived_adverts_are_heard_and_understood() {
    const TEST: &str = "keepalived_adverts_are_heard_and_understood";
    if !netns::privileged(TEST)
        || !test_support::tool::installed(
            TEST,
            "keepalived",
            "install Debian's keepalived (apt-get install keepalived; `cargo xtask setup` does)",
        )
    {
        return;
    }
    let lab = Lab::new().expect("lab");
    let dir = tempfile::tempdir().expect("temporary directory");
    // Kolla's instance (VRRPv2, vrid 51, 1 s, PASS with a password longer than 8 bytes),
    // but `state MASTER` so that adverts start at once.
    let config = format!(
        "global_defs {{
    router_id {TEST}
    vrrp_version 2
}}
vrrp_instance kolla {{
    state MASTER
    interface eth2
    virtual_router_id 51
    priority 150
    advert_int 1
    authentication {{
        auth_type PASS
        auth_pass kollapassword
    }}
    virtual_ipaddress {{
        {}/32
    }}
}}
",
        Lab::VIP
    );
    let rt = runtime();
    let receiver = open(&rt, &lab.client, "eth0", Lab::CLIENT, &[]);
    let keepalived = Keepalived::start(&lab.router, dir.path(), &config);
    let (source, advert) = rt.block_on(async {
        tokio::time::timeout(PATIENCE, receiver.recv_advert())
            .await
            .unwrap_or_else(|_| {
                let log = fs::read_to_string(dir.path().join("keepalived.log")).unwrap_or_default();
                panic!("no advert from keepalived within {PATIENCE:?}; its log:\n{log}")
            })
            .expect("receiving")
    });
    drop(keepalived);
    assert_eq!(source, Lab::ROUTER);
    assert_eq!(advert, kolla_advert(150));

    // And a scope-router configured as Kolla's backup accepts it as its master.
    let mut settings = VrrpSettings::new(51);
    settings.auth_pass = Some("kollapassword".into());
    settings.preempt = false;
    settings.priority = 100;
    let mut machine = Machine::new(MachineConfig::new(&settings, Lab::CLIENT, vec![Lab::VIP]));
    let now = Instant::now();
    machine.handle(now, Event::Startup);
    let out = machine.handle(
        now,
        Event::Advert {
            source,
            advert: &advert,
        },
    );
    assert!(out.notes.is_empty(), "refused keepalived's advert: {out:?}");
    assert_eq!(machine.state(), State::Backup);
    assert_eq!(machine.master(), Some(Lab::ROUTER));
}
