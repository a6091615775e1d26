//! Privileged VIP suite (docs/ARCHITECTURE.md §7): a router namespace whose `eth2` is one end of a veth,
//! and a neighbour namespace on the other end that captures ARP and keeps a neighbour
//! table. Needs root; without it each test prints why it is skipped (a failure under
//! `CI=true`).

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use scope_router::vip::{self, VipError, VipSettings};
use test_support::netns::{self, Netns};

const VIP: Ipv4Addr = netns::Lab::VIP;
/// The router's only address on eth2 besides the VIP, as `ip -j addr` renders it.
const ROUTER_ADDR: &str = "192.0.2.1/24";
const NEIGHBOUR_IP: Ipv4Addr = netns::Lab::CLIENT;
const ROUTER_IP: Ipv4Addr = netns::Lab::ROUTER;
/// The neighbour's end of the veth (the shared lab's client interface).
const NEIGHBOUR_IF: &str = "eth0";
/// Upper bound for conditions that normally hold within milliseconds; it bounds the
/// wait and never asserts a speed.
const WAIT: Duration = Duration::from_secs(10);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .try_init();
}

/// The shared lab (router `eth2` ↔ neighbour `eth0`, TEST-NET-1 only inside these
/// namespaces) plus what the VIP tests compare against.
struct Lab {
    router: Netns,
    neighbour: Netns,
    router_mac: String,
    neighbour_mac: String,
    state_dir: tempfile::TempDir,
}

fn lab(test: &str) -> Option<Lab> {
    init_logs();
    if !netns::privileged(test) {
        return None;
    }
    let netns::Lab {
        router,
        client: neighbour,
    } = netns::Lab::new().expect("create namespaces and veth");
    let router_mac = link_mac(&router, "eth2");
    let neighbour_mac = link_mac(&neighbour, NEIGHBOUR_IF);
    Some(Lab {
        router,
        neighbour,
        router_mac,
        neighbour_mac,
        state_dir: tempfile::tempdir().expect("state dir"),
    })
}

impl Lab {
    fn settings(&self) -> VipSettings {
        let mut settings = VipSettings::new(VIP);
        settings.state_dir = self.state_dir.path().to_owned();
        settings.garp_count = 3;
        settings.garp_repeat_delay = Duration::from_millis(300);
        settings.probe_interval = Duration::from_millis(100);
        settings
    }

    /// IPv4 addresses of the router's eth2 as `addr/prefix`.
    fn router_addrs(&self) -> Vec<String> {
        let out = self
            .router
            .ip(&["-j", "-4", "addr", "show", "dev", "eth2"])
            .expect("ip addr show");
        let json: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
        let mut addrs = Vec::new();
        for link in json.as_array().into_iter().flatten() {
            for info in link["addr_info"].as_array().into_iter().flatten() {
                addrs.push(format!(
                    "{}/{}",
                    info["local"].as_str().unwrap_or("?"),
                    info["prefixlen"]
                ));
            }
        }
        addrs.sort();
        addrs
    }

    fn vip_present(&self) -> bool {
        self.router_addrs()
            .iter()
            .any(|a| a.starts_with(&format!("{VIP}/")))
    }

    fn router_routes(&self) -> String {
        self.router
            .ip(&["-4", "route", "show", "table", "all"])
            .expect("ip route show")
    }

    /// The neighbour's link-layer address for the VIP, if it has an entry.
    fn neighbour_entry(&self) -> Option<String> {
        let out = self
            .neighbour
            .ip(&["-j", "neigh", "show", &VIP.to_string(), "dev", NEIGHBOUR_IF])
            .expect("ip neigh show");
        let json: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
        json.as_array()?
            .iter()
            .find_map(|e| e["lladdr"].as_str().map(str::to_owned))
    }

    fn status(&self) -> vip::VipStatus {
        let state_dir = self.state_dir.path().to_owned();
        self.router
            .run(move || runtime().block_on(vip::status(VIP, "eth2", &state_dir)))
            .expect("status")
    }

    /// Makes the router's kernel ARP for the neighbour: once the capture sees that
    /// request, every frame the router sent before it has been delivered (veth is FIFO).
    fn barrier(&self, capture: &Capture) {
        self.router.run(|| {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("udp socket");
            // Port 9 (discard) in our own neighbour namespace; only the ARP matters.
            let _ = socket.send_to(b"barrier", (NEIGHBOUR_IP, 9));
        });
        wait_until("the barrier ARP request reaches the neighbour", || {
            capture
                .arps()
                .iter()
                .any(|a| a.op == 1 && a.spa == ROUTER_IP && a.tpa == NEIGHBOUR_IP)
        });
    }
}

fn link_mac(ns: &Netns, ifname: &str) -> String {
    let out = ns
        .ip(&["-j", "link", "show", "dev", ifname])
        .expect("ip link show");
    let json: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
    json[0]["address"]
        .as_str()
        .expect("link address")
        .to_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "gave up after {WAIT:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The VIP manager running on its own thread inside the router namespace, on a
/// current-thread runtime built there (as the real router runs it in its namespace).
struct RunningVip {
    stop: Option<tokio::sync::oneshot::Sender<bool>>,
    thread: Option<JoinHandle<Result<(), VipError>>>,
}

fn start_vip(ns: &Netns, settings: VipSettings) -> Result<RunningVip, VipError> {
    start_vip_with(ns, settings, || {})
}

/// Starts a manager after this process's previous one for the same VIP stopped. Its
/// lock goes with the last descriptor of its open file, and a child that another test
/// thread is spawning holds a copy of every descriptor until it execs: for that instant
/// the lock still reads as held by this very process. Only that is waited out.
fn restart_vip(ns: &Netns, settings: VipSettings) -> Result<RunningVip, VipError> {
    let deadline = Instant::now() + WAIT;
    loop {
        match start_vip(ns, settings.clone()) {
            // `None`: /proc/locks names no pid, as for a descriptor a forked child holds.
            Err(VipError::AlreadyManaged { pid, .. })
                if pid.is_none_or(|p| p == std::process::id()) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// `prepare` runs on the manager's thread first (e.g. to drop a capability there only).
fn start_vip_with(
    ns: &Netns,
    settings: VipSettings,
    prepare: impl FnOnce() + Send + 'static,
) -> Result<RunningVip, VipError> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), VipError>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<bool>();
    let thread = ns.spawn(move || {
        prepare();
        runtime().block_on(async move {
            let handle = match vip::start(settings).await {
                Ok(handle) => handle,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let _ = ready_tx.send(Ok(()));
            match stop_rx.await {
                Ok(true) => handle.shutdown().await,
                // A crash: the handle goes away without shutdown.
                _ => {
                    drop(handle);
                    Ok(())
                }
            }
        })
    });
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(RunningVip {
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(_) => panic!("VIP thread ended without reporting"),
        },
    }
}

impl RunningVip {
    fn stop(&mut self, clean: bool) -> Result<(), VipError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(clean);
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Ok(()),
        }
    }

    fn shutdown(mut self) -> Result<(), VipError> {
        self.stop(true)
    }

    fn crash(mut self) {
        self.stop(false).expect("crash stop");
    }
}

impl Drop for RunningVip {
    fn drop(&mut self) {
        if self.thread.is_some() && !std::thread::panicking() {
            let _ = self.stop(false);
        } else if let Some(stop) = self.stop.take() {
            let _ = stop.send(false);
        }
    }
}

/// An ARP packet as the test reads it off the wire (parsed here, independently of the
/// module under test).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Arp {
    eth_dst: String,
    eth_src: String,
    op: u16,
    sha: String,
    spa: Ipv4Addr,
    tha: String,
    tpa: Ipv4Addr,
}

fn mac_text(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_arp(frame: &[u8]) -> Option<Arp> {
    if frame.len() < 42 || frame[12..14] != [0x08, 0x06] || frame[14..20] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let ip = |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
    Some(Arp {
        eth_dst: mac_text(&frame[0..6]),
        eth_src: mac_text(&frame[6..12]),
        op: u16::from_be_bytes([frame[20], frame[21]]),
        sha: mac_text(&frame[22..28]),
        spa: ip(28),
        tha: mac_text(&frame[32..38]),
        tpa: ip(38),
    })
}

/// Captures every ARP frame on an interface of a namespace, from an AF_PACKET socket.
struct Capture {
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn capture(ns: &Netns, ifname: &'static str) -> Capture {
    let frames = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = {
        let frames = Arc::clone(&frames);
        let stop = Arc::clone(&stop);
        ns.spawn(move || {
            let fd = open_capture_socket(ifname);
            ready_tx.send(()).expect("ready");
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: `buf` is valid for its length; `fd` is open.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if let Ok(n) = usize::try_from(n) {
                    frames.lock().expect("frames").push(buf[..n].to_vec());
                }
            }
            // SAFETY: `fd` is ours and closed once.
            unsafe { libc::close(fd) };
        })
    };
    ready_rx.recv().expect("capture socket ready");
    Capture {
        frames,
        stop,
        thread: Some(thread),
    }
}

fn open_capture_socket(ifname: &str) -> libc::c_int {
    let proto = 0x0806u16.to_be();
    // SAFETY: plain socket(2); checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    assert!(
        fd >= 0,
        "capture socket: {}",
        std::io::Error::last_os_error()
    );
    let name = std::ffi::CString::new(ifname).expect("ifname");
    // SAFETY: `name` is a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index > 0, "no interface {ifname} in the capture namespace");
    // SAFETY: zeroed sockaddr_ll is valid; the fields set below make it a bind address.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = i32::try_from(index).expect("ifindex");
    // SAFETY: `addr` is valid for the length passed.
    let rc = unsafe {
        libc::bind(
            fd,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "capture bind: {}", std::io::Error::last_os_error());
    // A receive timeout lets the thread notice `stop`.
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: `timeout` is valid for the length passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    fd
}

impl Capture {
    fn arps(&self) -> Vec<Arp> {
        self.frames
            .lock()
            .expect("frames")
            .iter()
            .filter_map(|f| parse_arp(f))
            .collect()
    }

    /// Gratuitous ARP for the VIP from `mac`: (requests, replies).
    fn garps(&self, mac: &str) -> (Vec<Arp>, Vec<Arp>) {
        let garps: Vec<Arp> = self
            .arps()
            .into_iter()
            .filter(|a| a.eth_src == mac && a.spa == VIP && a.tpa == VIP)
            .collect();
        garps.into_iter().partition(|a| a.op == 1)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn gratuitous_arp_reaches_the_neighbour_and_repoints_its_entry() {
    let Some(lab) = lab("gratuitous_arp_reaches_the_neighbour_and_repoints_its_entry") else {
        return;
    };
    // The neighbour still believes the previous owner (say, a keepalived peer) has the VIP.
    lab.neighbour
        .ip(&[
            "neigh",
            "replace",
            &VIP.to_string(),
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            NEIGHBOUR_IF,
            "nud",
            "stale",
        ])
        .expect("stale neighbour entry");
    let capture = capture(&lab.neighbour, NEIGHBOUR_IF);

    let settings = lab.settings();
    let running = start_vip(&lab.router, settings.clone()).expect("start");
    assert!(
        lab.router_addrs().contains(&format!("{VIP}/32")),
        "{:?}",
        lab.router_addrs()
    );

    // Both bursts: garp_count now and garp_count after garp_repeat_delay, each as a
    // gratuitous request and a gratuitous reply.
    let per_kind = 2 * settings.garp_count as usize;
    wait_until("both bursts of gratuitous ARP reach the neighbour", || {
        let (requests, replies) = capture.garps(&lab.router_mac);
        requests.len() >= per_kind && replies.len() >= per_kind
    });
    // Exactly two bursts: nothing more comes after the second (wait as long again).
    std::thread::sleep(2 * settings.garp_repeat_delay);
    let (requests, replies) = capture.garps(&lab.router_mac);
    assert_eq!(requests.len(), per_kind, "{requests:?}");
    assert_eq!(replies.len(), per_kind, "{replies:?}");
    for arp in requests.iter().chain(&replies) {
        assert_eq!(arp.eth_dst, "ff:ff:ff:ff:ff:ff", "{arp:?}");
        assert_eq!(arp.sha, lab.router_mac, "{arp:?}");
    }
    for reply in &replies {
        assert_eq!(reply.op, 2);
        assert_eq!(
            reply.tha, lab.router_mac,
            "a gratuitous reply names the sender as target"
        );
    }

    wait_until(
        "the neighbour's entry for the VIP points at the router",
        || lab.neighbour_entry().as_deref() == Some(lab.router_mac.as_str()),
    );

    // A burst is recorded only once it has been sent, so the state file may still lag
    // the frames the capture already holds: wait for it to count the second burst.
    wait_until("the status counts both bursts", || {
        lab.status().announcements >= 2
    });
    let status = lab.status();
    assert_eq!(status.announcements, 2, "{status}");
    assert!(status.present && status.interface_present, "{status}");
    assert_eq!(status.managed, Some(true));
    assert_eq!(status.adopted, Some(false));
    assert!(status.last_announced.is_some(), "{status}");

    running.shutdown().expect("shutdown");
    assert!(!lab.vip_present(), "{:?}", lab.router_addrs());
    assert_eq!(lab.router_addrs(), vec![ROUTER_ADDR.to_owned()]);
    let status = lab.status();
    assert!(!status.present);
    assert_eq!(status.running, Some(false));
}

#[test]
fn removed_vip_is_put_back_and_announced_again() {
    let Some(lab) = lab("removed_vip_is_put_back_and_announced_again") else {
        return;
    };
    let capture = capture(&lab.neighbour, NEIGHBOUR_IF);
    let mut settings = lab.settings();
    settings.garp_count = 2;
    // Far enough away that any burst after the first comes from the re-add.
    settings.garp_repeat_delay = Duration::from_secs(600);
    let running = start_vip(&lab.router, settings).expect("start");
    wait_until("the first burst arrives", || {
        capture.garps(&lab.router_mac).0.len() >= 2
    });

    lab.router
        .ip(&["addr", "del", &format!("{VIP}/32"), "dev", "eth2"])
        .expect("ip addr del");
    wait_until("the VIP is back on eth2 and announced again", || {
        lab.vip_present() && capture.garps(&lab.router_mac).0.len() >= 4
    });
    // One burst per re-add, of exactly garp_count (the repeat is 10 min away).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(capture.garps(&lab.router_mac).0.len(), 4);
    assert!(lab.router_addrs().contains(&ROUTER_ADDR.to_owned()));
    // No wait here on purpose: the watcher records a re-add before it announces it, so
    // once the re-announcement has reached the neighbour the status must show it.
    let status = lab.status();
    assert_eq!(status.readded, 1, "{status}");
    // The start's burst and the re-add's; recorded after each is sent.
    wait_until("two announcements recorded", || {
        lab.status().announcements >= 2
    });
    assert_eq!(lab.status().announcements, 2);

    // Again, to show the watcher keeps watching after a re-add.
    lab.router
        .ip(&["addr", "del", &format!("{VIP}/32"), "dev", "eth2"])
        .expect("ip addr del");
    wait_until("the VIP is back a second time", || {
        lab.vip_present() && capture.garps(&lab.router_mac).0.len() >= 6
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(capture.garps(&lab.router_mac).0.len(), 6);
    let status = lab.status();
    assert_eq!(status.readded, 2, "{status}");
    wait_until("three announcements recorded", || {
        lab.status().announcements >= 3
    });
    assert_eq!(lab.status().announcements, 3);

    running.shutdown().expect("shutdown");
    assert_eq!(lab.router_addrs(), vec![ROUTER_ADDR.to_owned()]);
}

#[test]
fn shutdown_removes_the_vip_and_nothing_else() {
    let Some(lab) = lab("shutdown_removes_the_vip_and_nothing_else") else {
        return;
    };
    lab.router
        .ip(&["addr", "add", "192.0.2.20/32", "dev", "eth2"])
        .expect("second address");
    lab.router
        .ip(&[
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            "192.0.2.2",
            "dev",
            "eth2",
        ])
        .expect("extra route");
    let addrs_before = lab.router_addrs();
    let routes_before = lab.router_routes();

    let running = start_vip(&lab.router, lab.settings()).expect("start");
    assert!(lab.vip_present());
    running.shutdown().expect("shutdown");

    assert_eq!(lab.router_addrs(), addrs_before);
    assert_eq!(lab.router_routes(), routes_before);
}

#[test]
fn vip_already_present_is_adopted() {
    let Some(lab) = lab("vip_already_present_is_adopted") else {
        return;
    };
    // Left by keepalived.
    lab.router
        .ip(&["addr", "add", &format!("{VIP}/32"), "dev", "eth2"])
        .expect("pre-existing VIP");
    let running = start_vip(&lab.router, lab.settings()).expect("start adopts");
    assert!(lab.vip_present());
    assert_eq!(lab.status().adopted, Some(true));
    running.shutdown().expect("shutdown");
    assert!(
        !lab.vip_present(),
        "an adopted VIP is released like an added one"
    );

    // Left by a crashed run: the next run adopts it.
    let running = restart_vip(&lab.router, lab.settings()).expect("start");
    assert_eq!(lab.status().adopted, Some(false));
    running.crash();
    assert!(lab.vip_present(), "a crash leaves the VIP in place");
    let running = restart_vip(&lab.router, lab.settings()).expect("restart adopts");
    assert_eq!(lab.status().adopted, Some(true));
    running.shutdown().expect("shutdown");
    assert_eq!(lab.router_addrs(), vec![ROUTER_ADDR.to_owned()]);
}

#[test]
fn a_second_manager_is_refused_and_the_vip_stays_with_the_first() {
    let Some(lab) = lab("a_second_manager_is_refused_and_the_vip_stays_with_the_first") else {
        return;
    };
    let first = start_vip(&lab.router, lab.settings()).expect("first manager");
    assert_eq!(lab.status().adopted, Some(false));

    // Same address and state directory: refused before it looks at the interface, so it
    // neither adopts the VIP nor rewrites the first one's state.
    let err = start_vip(&lab.router, lab.settings())
        .err()
        .expect("a second manager is refused");
    match &err {
        VipError::AlreadyManaged { address, pid, .. } => {
            assert_eq!(*address, VIP);
            assert_eq!(*pid, Some(std::process::id()));
        }
        other => panic!("expected AlreadyManaged, got {other:?}"),
    }
    assert!(err.to_string().contains("manage = false"), "{err}");
    assert!(lab.vip_present(), "the refused manager took the VIP away");
    let status = lab.status();
    assert_eq!(
        (status.managed, status.adopted, status.running),
        (Some(true), Some(false), Some(true)),
        "{status}"
    );

    // A crash of the owner frees the lock (the kernel closes its file): the restart
    // adopts the VIP the crash left behind.
    first.crash();
    assert!(lab.vip_present());
    let second = restart_vip(&lab.router, lab.settings()).expect("restart after a crash");
    assert_eq!(lab.status().adopted, Some(true));
    second.shutdown().expect("shutdown");
    assert!(!lab.vip_present());
}

#[test]
fn unmanaged_vip_leaves_the_interface_untouched() {
    let Some(lab) = lab("unmanaged_vip_leaves_the_interface_untouched") else {
        return;
    };
    let capture = capture(&lab.neighbour, NEIGHBOUR_IF);
    let mut settings = lab.settings();
    settings.manage = false;

    // Absent VIP: nothing is added.
    let before = lab.router_addrs();
    let running = start_vip(&lab.router, settings.clone()).expect("start unmanaged");
    assert_eq!(lab.router_addrs(), before);
    assert_eq!(lab.status().managed, Some(false));
    running.shutdown().expect("shutdown");
    assert_eq!(lab.router_addrs(), before);
    assert_eq!(lab.status().running, Some(false));

    // Present VIP (keepalived's): it is not removed on exit.
    lab.router
        .ip(&["addr", "add", &format!("{VIP}/32"), "dev", "eth2"])
        .expect("keepalived's VIP");
    let before = lab.router_addrs();
    let running = start_vip(&lab.router, settings).expect("start unmanaged");
    running.shutdown().expect("shutdown");
    assert_eq!(lab.router_addrs(), before);

    // Nothing was announced or probed: every router frame sent so far has arrived once
    // the barrier has.
    lab.barrier(&capture);
    let from_router: Vec<Arp> = capture
        .arps()
        .into_iter()
        .filter(|a| a.eth_src == lab.router_mac && (a.spa == VIP || a.tpa == VIP))
        .collect();
    assert!(
        from_router.is_empty(),
        "unmanaged VIP sent ARP: {from_router:?}"
    );
}

#[test]
fn probe_detects_a_neighbour_owning_the_vip() {
    let Some(lab) = lab("probe_detects_a_neighbour_owning_the_vip") else {
        return;
    };
    lab.neighbour
        .ip(&["addr", "add", &format!("{VIP}/32"), "dev", NEIGHBOUR_IF])
        .expect("neighbour owns the VIP");

    let err = start_vip(&lab.router, lab.settings())
        .err()
        .expect("refused");
    match &err {
        VipError::AddressInUse { address, mac, .. } => {
            assert_eq!(*address, VIP);
            assert_eq!(mac.to_string(), lab.neighbour_mac);
        }
        other => panic!("expected AddressInUse, got {other:?}"),
    }
    assert!(err.to_string().contains("take_over = true"), "{err}");
    assert!(!lab.vip_present(), "a refused VIP is not added");

    let mut settings = lab.settings();
    settings.take_over = true;
    // The refused manager's lock may still be held for an instant by a child another
    // test thread is forking: wait that out as a restart does.
    let running = restart_vip(&lab.router, settings).expect("take over");
    assert!(lab.vip_present());
    running.shutdown().expect("shutdown");
    assert!(!lab.vip_present());
}

#[test]
fn missing_interface_is_named() {
    let Some(lab) = lab("missing_interface_is_named") else {
        return;
    };
    let mut settings = lab.settings();
    settings.interface = "nosuch0".into();
    let err = start_vip(&lab.router, settings).err().expect("refused");
    assert!(matches!(err, VipError::InterfaceMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("\"nosuch0\""), "{err}");
}

/// Drops CAP_NET_ADMIN from the calling thread only (capabilities are per thread).
fn drop_cap_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut header = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and a two-element data array are what capget/capset expect for v3.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_NET_ADMIN);
    data[0].permitted &= !(1 << CAP_NET_ADMIN);
    // SAFETY: as above.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

#[test]
fn missing_cap_net_admin_is_reported() {
    let Some(lab) = lab("missing_cap_net_admin_is_reported") else {
        return;
    };
    let err = start_vip_with(&lab.router, lab.settings(), drop_cap_net_admin)
        .err()
        .expect("refused");
    assert!(matches!(err, VipError::PermissionDenied { .. }), "{err:?}");
    assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
    assert!(!lab.vip_present());
}

#[test]
fn keep_on_exit_leaves_the_vip_after_shutdown() {
    let Some(lab) = lab("keep_on_exit_leaves_the_vip_after_shutdown") else {
        return;
    };
    let mut settings = lab.settings();
    settings.keep_on_exit = true;
    let running = start_vip(&lab.router, settings).expect("start");
    running.shutdown().expect("shutdown");
    assert!(lab.vip_present(), "{:?}", lab.router_addrs());
    assert_eq!(lab.status().running, Some(false));
}

#[test]
fn interface_down_is_reported() {
    let Some(lab) = lab("interface_down_is_reported") else {
        return;
    };
    lab.router
        .ip(&["link", "set", "eth2", "down"])
        .expect("eth2 down");
    let err = start_vip(&lab.router, lab.settings())
        .err()
        .expect("refused");
    assert!(matches!(err, VipError::InterfaceDown { .. }), "{err:?}");
    assert!(err.to_string().contains("ip link set eth2 up"), "{err}");
    assert!(!lab.vip_present());
}

#[test]
fn under_vrrp_the_vip_follows_the_role_and_a_release_resets_its_connections() {
    use std::io::{Read, Write};
    let Some(lab) = lab("under_vrrp_the_vip_follows_the_role") else {
        return;
    };
    let capture = capture(&lab.neighbour, NEIGHBOUR_IF);
    // A leftover VIP (a crashed run): a backup must not hold it.
    lab.router
        .ip(&["addr", "add", &format!("{VIP}/32"), "dev", "eth2"])
        .expect("ip addr add");
    let (master, wanted) = tokio::sync::watch::channel(false);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let settings = lab.settings();
    let thread = lab.router.spawn(move || {
        runtime().block_on(async move {
            let handle = vip::claim(settings)
                .expect("claim")
                .start_following(wanted)
                .await
                .expect("start following");
            ready_tx.send(()).expect("ready");
            let _ = stop_rx.await;
            handle.shutdown().await
        })
    });
    ready_rx.recv().expect("manager started");
    assert!(!lab.vip_present(), "a backup holds the VIP");

    master.send(true).expect("become master");
    wait_until("the master takes the VIP and announces it", || {
        lab.vip_present() && !capture.garps(&lab.router_mac).0.is_empty()
    });

    // A client connection to the VIP, accepted in the router namespace.
    let listener = lab
        .router
        .run(|| std::net::TcpListener::bind((VIP, 8080)))
        .expect("listen on the VIP");
    let mut client = lab
        .neighbour
        .run(|| std::net::TcpStream::connect_timeout(&(VIP, 8080).into(), WAIT))
        .expect("connect to the VIP");
    let (mut accepted, _) = listener.accept().expect("accept");
    client.write_all(b"x").expect("write");
    let mut byte = [0u8; 1];
    accepted.read_exact(&mut byte).expect("read");

    master.send(false).expect("become backup");
    wait_until("the backup releases the VIP", || !lab.vip_present());
    // Reset by the release: the client learns at once, not when TCP gives up.
    client.set_read_timeout(Some(WAIT)).expect("timeout");
    let err = client.read(&mut byte).expect_err("the connection is reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    // The VIP stays away: a backup does not put it back.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!lab.vip_present(), "the backup re-added the VIP");

    let _ = stop_tx.send(());
    thread.join().expect("manager thread").expect("shutdown");
}

/// A removal whose notification is lost (the netlink socket overran while the manager was
/// busy) is still repaired: by the overrun's re-check or the 1 s reconcile tick.
#[test]
fn a_removal_lost_in_a_netlink_overrun_is_still_repaired() {
    let Some(lab) = lab("a_removal_lost_in_a_netlink_overrun_is_still_repaired") else {
        return;
    };
    let settings = lab.settings();
    let (handle_tx, handle_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = lab.router.spawn(move || {
        let rt = runtime();
        let handle = rt.block_on(vip::start(settings)).expect("start");
        handle_tx.send(rt.handle().clone()).expect("handle");
        rt.block_on(async move {
            let _ = stop_rx.await;
            handle.shutdown().await
        })
    });
    let runtime_handle = handle_rx.recv().expect("manager started");
    assert!(lab.vip_present());

    // Hold the manager's only thread, so notifications pile up unread.
    let (paused_tx, paused) = mpsc::channel();
    let (resume, resume_rx) = mpsc::channel::<()>();
    runtime_handle.spawn(async move {
        paused_tx.send(()).expect("paused");
        // Blocking on purpose: nothing else on this runtime may run until resumed.
        let _ = resume_rx.recv();
    });
    paused.recv().expect("paused");
    // Far more address notifications than a netlink socket buffers (~200 KiB at about
    // 100 bytes each), then the removal, whose own notification is lost with them.
    let batch = lab.state_dir.path().join("flood.batch");
    let mut lines = String::new();
    for i in 0..4000u32 {
        lines.push_str(&format!(
            "addr add 198.51.{}.{}/32 dev lo\n",
            i / 250,
            i % 250 + 1
        ));
    }
    std::fs::write(&batch, lines).expect("batch file");
    lab.router
        .ip(&["-batch", &batch.display().to_string()])
        .expect("address flood");
    lab.router
        .ip(&["addr", "del", &format!("{VIP}/32"), "dev", "eth2"])
        .expect("ip addr del");
    assert!(!lab.vip_present());

    let resumed = Instant::now();
    resume.send(()).expect("resume");
    wait_until("the VIP is back after the overrun", || lab.vip_present());
    eprintln!("VIP back {:?} after the manager resumed", resumed.elapsed());
    wait_until("the re-add is counted", || lab.status().readded >= 1);
    assert_eq!(lab.status().readded, 1);

    let _ = stop_tx.send(());
    thread.join().expect("thread").expect("shutdown");
    assert!(!lab.vip_present());
}
