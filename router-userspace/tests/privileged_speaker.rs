//! The VRRP speaker (`scope_router::vrrp::start`) on a real segment: three namespaces on
//! one bridge (`test_support::segment`), 1 s adverts. Two speakers elect the higher
//! priority and fail over when the master dies (abruptly: its runtime is dropped, so no
//! priority 0 is sent, as with SIGKILL) or stops (priority 0: within the skew time);
//! preempt and nopreempt; interop with Debian's keepalived in both directions, v2 with
//! Kolla's `auth_type PASS` and v3, with the adverts on the wire recorded from the third
//! namespace to show that two masters never advertise together for longer than about an
//! advert interval; wrong passwords and intervals refused on both sides; a restart
//! handover that never fails over; the health tracker giving up and taking back the VIP.
//!
//! Every wait is bounded. Failover times are printed; the bounds asserted on them are
//! the (Master_Down_Interval, the skew time) with generous slack for a loaded
//! machine.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use scope_router::vrrp::{
    Advert, Initial, MULTICAST_GROUP, Role, SpeakerHandle, SpeakerState, SpeakerStatus, Version,
    VrrpSettings, decode_ipv4,
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use test_support::keepalived::Keepalived;
use test_support::netns::{self, Netns};
use test_support::segment::Segment;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 55, 0, 100);
/// Every advert in these tests: the Kolla setting.
const ADVERT_INT: Duration = Duration::from_secs(1);
/// The bound on waits that have no protocol bound (a process starting, an election).
const PATIENCE: Duration = Duration::from_secs(20);
/// Added to every protocol bound: scheduling on a loaded test machine, polling.
const SLACK: Duration = Duration::from_millis(1500);

/// Master_Down_Interval with 1 s adverts: 3 s plus the v2/v3 skew (equal at 1 s).
fn master_down(priority: u8) -> Duration {
    ADVERT_INT * 3 + skew(priority)
}

fn skew(priority: u8) -> Duration {
    ADVERT_INT * (256 - u32::from(priority)) / 256
}

fn settings(vrid: u8, priority: u8, version: Version) -> VrrpSettings {
    let mut s = VrrpSettings::new(vrid);
    s.priority = priority;
    s.version = version;
    s.interface = Some("eth0".into());
    if version == Version::V2 {
        s.auth_pass = Some("kollapassword".into());
    }
    s
}

/// A speaker on its own runtime, as a router process: killing it drops the runtime, so
/// the task ends between two adverts without resigning, as SIGKILL ends a process.
struct Speaker {
    name: &'static str,
    rt: tokio::runtime::Runtime,
    handle: SpeakerHandle,
}

impl Speaker {
    fn start(name: &'static str, ns: &Netns, settings: &VrrpSettings, initial: Initial) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let runtime = rt.handle();
        let handle = ns
            .run(|| {
                let _entered = runtime.enter();
                scope_router::vrrp::start(settings, VIP, initial)
            })
            .unwrap_or_else(|e| panic!("starting speaker {name}: {e}"));
        Self { name, rt, handle }
    }

    fn role(&self) -> Role {
        *self.handle.role().borrow()
    }

    fn status(&self) -> SpeakerStatus {
        self.handle.status()
    }

    /// Waits until the role is `role`; how long that took.
    fn wait_role(&self, role: Role, within: Duration) -> Duration {
        let start = Instant::now();
        while self.role() != role {
            assert!(
                start.elapsed() < within,
                "speaker {} not {role:?} within {within:?}: {:#?}",
                self.name,
                self.status()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        start.elapsed()
    }

    /// Asserts the role stays `role` for `during`.
    fn keeps_role(&self, role: Role, during: Duration) {
        let start = Instant::now();
        while start.elapsed() < during {
            assert_eq!(
                self.role(),
                role,
                "speaker {} changed role after {:?}: {:#?}",
                self.name,
                start.elapsed(),
                self.status()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(self) {
        self.rt.shutdown_background();
    }

    fn stop(self) {
        self.rt.block_on(self.handle.stop());
    }

    fn hand_over(self) -> Role {
        self.rt.block_on(self.handle.hand_over())
    }
}

/// One advert seen on the segment.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    source: Ipv4Addr,
    advert: Advert,
}

/// Records every advert on the segment from a node that takes no part (a raw socket in
/// its namespace, joined to the VRRP group), until dropped.
struct Wire {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Wire {
    fn record(ns: &Netns) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let socket = ns
            .run(|| -> std::io::Result<Socket> {
                let socket = Socket::new_raw(Domain::IPV4, Type::RAW, Some(Protocol::from(112)))?;
                socket.bind_device(Some(b"eth0"))?;
                let index = nix_if_index("eth0");
                socket.join_multicast_v4_n(
                    &MULTICAST_GROUP,
                    &InterfaceIndexOrAddress::Index(index),
                )?;
                socket.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(socket)
            })
            .expect("the recording socket");
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    // Timeouts end a read every 50 ms, so the stop flag is seen.
                    let Ok(len) = (&socket).read(&mut buf) else {
                        continue;
                    };
                    let at = Instant::now();
                    let Ok((header, message)) = decode_ipv4(&buf[..len]) else {
                        continue;
                    };
                    if let Ok(advert) = Advert::decode(message, header.source, header.destination) {
                        seen.lock().expect("recorder lock").push(Seen {
                            at,
                            source: header.source,
                            advert,
                        });
                    }
                }
            })
        };
        Self {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("recorder lock").clone()
    }

    /// The longest time two routers both advertised as master (priority above 0) for
    /// `vrid`: a router is a master from the first to the last advert of a run with gaps
    /// of at most 1.5 intervals.
    fn longest_two_masters(&self, vrid: u8) -> Duration {
        let mut runs: HashMap<Ipv4Addr, Vec<(Instant, Instant)>> = HashMap::new();
        for seen in self.seen() {
            if seen.advert.vrid != vrid || seen.advert.priority == 0 {
                continue;
            }
            let runs = runs.entry(seen.source).or_default();
            match runs.last_mut() {
                Some((_, end)) if seen.at.duration_since(*end) <= ADVERT_INT * 3 / 2 => {
                    *end = seen.at;
                }
                _ => runs.push((seen.at, seen.at)),
            }
        }
        let routers: Vec<_> = runs.values().collect();
        let mut longest = Duration::ZERO;
        for (i, a) in routers.iter().enumerate() {
            for b in &routers[i + 1..] {
                for &(a_start, a_end) in a.iter() {
                    for &(b_start, b_end) in b.iter() {
                        let (start, end) = (a_start.max(b_start), a_end.min(b_end));
                        if end > start {
                            longest = longest.max(end - start);
                        }
                    }
                }
            }
        }
        longest
    }

    /// Asserts that two masters never advertised together for longer than about one
    /// advert interval, and prints the longest overlap.
    fn assert_one_master(&self, test: &str, vrid: u8) {
        let longest = self.longest_two_masters(vrid);
        eprintln!("{test}: two masters advertised together for at most {longest:?}");
        assert!(
            longest <= ADVERT_INT + ADVERT_INT / 2,
            "{test}: two masters advertised together for {longest:?}; adverts: {:#?}",
            self.seen()
                .iter()
                .map(|s| (s.source, s.advert.priority))
                .collect::<Vec<_>>()
        );
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The index of `interface` in the calling thread's namespace.
fn nix_if_index(interface: &str) -> u32 {
    let name = std::ffi::CString::new(interface).expect("interface name");
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "no interface {interface}");
    index
}

/// Everything the speakers log, for the tests that check a refusal is logged. A global
/// subscriber: the speaker tasks run on their runtimes' threads.
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(logs))
            .finish();
        // Only fails when a subscriber is already set, which is then ours.
        let _ = tracing::subscriber::set_global_default(subscriber);
        logs
    })
}

struct LogWriter(&'static Mutex<Vec<u8>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The speakers' log lines that carry `needle`.
fn log_lines(needle: &str) -> Vec<String> {
    let logs = logs().lock().expect("log lock");
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// keepalived (VRRP only) in a namespace. [`Keepalived::kill`] SIGKILLs its VRRP child
/// and then itself, so nothing resigns; dropping it stops it with SIGTERM.
struct KeepalivedConf {
    name: &'static str,
    version: Version,
    vrid: u8,
    priority: u8,
    advert_int: u32,
    password: Option<&'static str>,
    state: &'static str,
    nopreempt: bool,
}

impl KeepalivedConf {
    /// Kolla's instance: v2, `auth_type PASS`, 1 s, `state BACKUP` and `nopreempt`.
    fn kolla(name: &'static str, priority: u8) -> Self {
        Self {
            name,
            version: Version::V2,
            vrid: 51,
            priority,
            advert_int: 1,
            password: Some("kollapassword"),
            state: "BACKUP",
            nopreempt: true,
        }
    }

    fn v3(name: &'static str, priority: u8) -> Self {
        Self {
            version: Version::V3,
            password: None,
            ..Self::kolla(name, priority)
        }
    }

    fn render(&self) -> String {
        let auth = self.password.map_or_else(String::new, |pass| {
            format!(
                "    authentication {{\n        auth_type PASS\n        auth_pass {pass}\n    }}\n"
            )
        });
        format!(
            "global_defs {{
    router_id {name}
    vrrp_version {version}
}}
vrrp_instance {name} {{
    state {state}
    interface eth0
    virtual_router_id {vrid}
    priority {priority}
    advert_int {advert_int}
{nopreempt}{auth}    virtual_ipaddress {{
        {VIP}/32
    }}
}}
",
            name = self.name,
            version = self.version,
            state = self.state,
            vrid = self.vrid,
            priority = self.priority,
            advert_int = self.advert_int,
            nopreempt = if self.nopreempt {
                "    nopreempt\n"
            } else {
                ""
            },
        )
    }
}

/// Whether the VIP is on `eth0` in `ns`: keepalived's view of who is master.
fn has_vip(ns: &Netns) -> bool {
    ns.ip(&["-4", "addr", "show", "dev", "eth0"])
        .expect("ip addr")
        .contains(&format!("{VIP}/32"))
}

/// Waits until `has_vip(ns) == present`; how long that took.
fn wait_vip(ns: &Netns, present: bool, within: Duration, keepalived: &Keepalived) -> Duration {
    let start = Instant::now();
    while has_vip(ns) != present {
        assert!(
            start.elapsed() < within,
            "keepalived's VIP not {} within {within:?}; its log:\n{}",
            if present { "added" } else { "removed" },
            keepalived.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

fn ready(test: &str, keepalived: bool) -> bool {
    netns::privileged(test)
        && (!keepalived
            || test_support::tool::installed(
                test,
                "keepalived",
                "install Debian's keepalived (apt-get install keepalived; `cargo xtask setup` does)",
            ))
}

fn report(test: &str, what: &str, took: Duration, bound: Duration) {
    eprintln!("{test}: {what} took {took:?} (bound {bound:?})");
    let _ = std::io::stderr().flush();
}

#[test]
fn the_higher_priority_is_master_and_the_backup_takes_over_when_it_dies_or_stops() {
    const TEST: &str =
        "the_higher_priority_is_master_and_the_backup_takes_over_when_it_dies_or_stops";
    if !ready(TEST, false) {
        return;
    }
    let segment = Segment::new("srt-sp1", 3).expect("segment");
    let (a, b) = (&segment.nodes[0], &segment.nodes[1]);
    let wire = Wire::record(&segment.nodes[2]);
    let high = settings(51, 150, Version::V2);
    let low = settings(51, 100, Version::V2);

    // A first: its Master_Down_Interval is shorter, so it ends first and A's adverts keep
    // B Backup from then on.
    let speaker_a = Speaker::start("A", a, &high, Initial::Fresh);
    let speaker_b = Speaker::start("B", b, &low, Initial::Fresh);
    speaker_a.wait_role(Role::Master, PATIENCE);
    speaker_b.keeps_role(Role::Backup, master_down(100) + ADVERT_INT);
    let status = speaker_b.status();
    assert_eq!(status.state, SpeakerState::Backup);
    assert_eq!(status.master, Some(segment.address(0)), "{status:#?}");
    assert_eq!(status.master_priority, Some(150), "{status:#?}");

    let killed = Instant::now();
    speaker_a.kill();
    speaker_b.wait_role(Role::Master, PATIENCE);
    let took = killed.elapsed();
    report(
        TEST,
        "failover after the master died",
        took,
        master_down(100) + SLACK,
    );
    assert!(took <= master_down(100) + SLACK);
    let reason = speaker_b
        .status()
        .last_transition
        .expect("a transition")
        .reason;
    assert!(reason.contains("master down timer expired"), "{reason}");

    // A comes back, preempts, and stops cleanly: priority 0, B takes over after its skew.
    let speaker_a = Speaker::start("A", a, &high, Initial::Fresh);
    speaker_a.wait_role(Role::Master, PATIENCE);
    speaker_b.wait_role(Role::Backup, SLACK);
    let stopped = Instant::now();
    speaker_a.stop();
    speaker_b.wait_role(Role::Master, PATIENCE);
    let took = stopped.elapsed();
    report(TEST, "takeover after a clean stop", took, skew(100) + SLACK);
    // Without the priority 0, B would wait out Master_Down_Interval from A's last advert:
    // at least 2.6 s after the stop.
    assert!(took <= skew(100) + SLACK);
    let reason = speaker_b
        .status()
        .last_transition
        .expect("a transition")
        .reason;
    assert!(
        reason.contains("resigned (priority 0) from 10.55.0.1"),
        "{reason}"
    );
    wire.assert_one_master(TEST, 51);
    speaker_b.stop();
}

#[test]
fn preempt_takes_over_from_a_lower_master_and_nopreempt_does_not() {
    const TEST: &str = "preempt_takes_over_from_a_lower_master_and_nopreempt_does_not";
    if !ready(TEST, false) {
        return;
    }
    let segment = Segment::new("srt-sp2", 3).expect("segment");
    let (a, b) = (&segment.nodes[0], &segment.nodes[1]);
    let wire = Wire::record(&segment.nodes[2]);
    let low = settings(51, 100, Version::V3);
    let mut high = settings(51, 150, Version::V3);

    let speaker_b = Speaker::start("B", b, &low, Initial::Fresh);
    speaker_b.wait_role(Role::Master, PATIENCE);
    let speaker_a = Speaker::start("A (preempt)", a, &high, Initial::Fresh);
    let took = speaker_a.wait_role(Role::Master, PATIENCE);
    report(
        TEST,
        "preemption by a higher priority",
        took,
        master_down(150) + SLACK,
    );
    speaker_b.wait_role(Role::Backup, SLACK);
    let reason = speaker_a
        .status()
        .last_transition
        .expect("a transition")
        .reason;
    assert!(
        reason.contains("preempting the lower-priority master 10.55.0.2"),
        "{reason}"
    );

    speaker_a.stop();
    speaker_b.wait_role(Role::Master, PATIENCE);
    high.preempt = false;
    let speaker_a = Speaker::start("A (nopreempt)", a, &high, Initial::Fresh);
    // Two Master_Down_Intervals: A would have taken over in one.
    speaker_a.keeps_role(Role::Backup, master_down(150) * 2);
    assert_eq!(speaker_b.role(), Role::Master);
    let status = speaker_a.status();
    assert_eq!(status.master, Some(segment.address(1)), "{status:#?}");
    assert_eq!(status.master_priority, Some(100), "{status:#?}");
    wire.assert_one_master(TEST, 51);
    speaker_a.stop();
    speaker_b.stop();
}

/// keepalived master, speaker backup: the speaker follows it, then takes over when it
/// dies.
fn keepalived_master_speaker_backup(test: &str, version: Version) {
    let segment = Segment::new("srt-ka1", 3).expect("segment");
    let (a, b) = (&segment.nodes[0], &segment.nodes[1]);
    let wire = Wire::record(&segment.nodes[2]);
    let dir = tempfile::tempdir().expect("temporary directory");
    let conf = match version {
        Version::V2 => KeepalivedConf::kolla("kolla", 150),
        Version::V3 => KeepalivedConf::v3("kolla", 150),
    };
    let mut keepalived = Keepalived::start(a, dir.path(), &conf.render());
    wait_vip(a, true, PATIENCE, &keepalived);
    keepalived.wait_log("Entering MASTER STATE", PATIENCE);

    let mut ours = settings(51, 100, version);
    ours.preempt = false;
    let speaker = Speaker::start("speaker", b, &ours, Initial::Fresh);
    speaker.keeps_role(Role::Backup, master_down(100) + ADVERT_INT);
    let status = speaker.status();
    assert_eq!(status.master, Some(segment.address(0)), "{status:#?}");
    assert_eq!(status.master_priority, Some(150), "{status:#?}");
    assert_eq!(status.refused, Default::default(), "{status:#?}");
    assert!(has_vip(a), "keepalived lost the VIP:\n{}", keepalived.log());

    let killed = Instant::now();
    keepalived.kill();
    speaker.wait_role(Role::Master, PATIENCE);
    let took = killed.elapsed();
    report(
        test,
        "speaker takeover after keepalived's SIGKILL",
        took,
        master_down(100) + SLACK,
    );
    assert!(took <= master_down(100) + SLACK);
    wire.assert_one_master(test, 51);
    speaker.stop();
}

/// Speaker master, keepalived backup (Kolla's `state BACKUP` + `nopreempt`): keepalived
/// follows it, takes over at its clean stop (priority 0) and when it dies, and yields to
/// it when it comes back with the higher priority.
fn speaker_master_keepalived_backup(test: &str, version: Version) {
    let segment = Segment::new("srt-ka2", 3).expect("segment");
    let (a, b) = (&segment.nodes[0], &segment.nodes[1]);
    let wire = Wire::record(&segment.nodes[2]);
    let dir = tempfile::tempdir().expect("temporary directory");
    let ours = settings(51, 150, version);
    let speaker = Speaker::start("speaker", a, &ours, Initial::Fresh);
    speaker.wait_role(Role::Master, PATIENCE);

    let conf = match version {
        Version::V2 => KeepalivedConf::kolla("kolla", 100),
        Version::V3 => KeepalivedConf::v3("kolla", 100),
    };
    let keepalived = Keepalived::start(b, dir.path(), &conf.render());
    keepalived.wait_log("Entering BACKUP STATE", PATIENCE);
    // Longer than keepalived's Master_Down_Interval: it must have heard us all along.
    std::thread::sleep(master_down(100) + ADVERT_INT);
    assert!(
        !has_vip(b),
        "keepalived took the VIP beside our master:\n{}",
        keepalived.log()
    );
    assert!(
        !keepalived.log().contains("Entering MASTER STATE"),
        "{}",
        keepalived.log()
    );
    assert_eq!(speaker.role(), Role::Master);

    let stopped = Instant::now();
    speaker.stop();
    wait_vip(b, true, PATIENCE, &keepalived);
    let took = stopped.elapsed();
    report(
        test,
        "keepalived takeover after our clean stop",
        took,
        skew(100) + SLACK,
    );
    assert!(took <= skew(100) + SLACK);

    // Back with the higher priority: keepalived's nopreempt holds only for a backup, so
    // the master it now is yields to us.
    let speaker = Speaker::start("speaker", a, &ours, Initial::Fresh);
    speaker.wait_role(Role::Master, PATIENCE);
    let took = wait_vip(b, false, PATIENCE, &keepalived);
    report(
        test,
        "keepalived releasing the VIP after we took over",
        took,
        SLACK,
    );
    assert!(took <= SLACK);

    let killed = Instant::now();
    speaker.kill();
    wait_vip(b, true, PATIENCE, &keepalived);
    let took = killed.elapsed();
    report(
        test,
        "keepalived takeover after our abrupt end",
        took,
        master_down(100) + SLACK,
    );
    assert!(took <= master_down(100) + SLACK);
    wire.assert_one_master(test, 51);
    drop(keepalived);
}

#[test]
fn keepalived_v2_master_and_speaker_backup() {
    const TEST: &str = "keepalived_v2_master_and_speaker_backup";
    if ready(TEST, true) {
        keepalived_master_speaker_backup(TEST, Version::V2);
    }
}

#[test]
fn keepalived_v3_master_and_speaker_backup() {
    const TEST: &str = "keepalived_v3_master_and_speaker_backup";
    if ready(TEST, true) {
        keepalived_master_speaker_backup(TEST, Version::V3);
    }
}

#[test]
fn speaker_master_and_keepalived_v2_backup() {
    const TEST: &str = "speaker_master_and_keepalived_v2_backup";
    if ready(TEST, true) {
        speaker_master_keepalived_backup(TEST, Version::V2);
    }
}

#[test]
fn speaker_master_and_keepalived_v3_backup() {
    const TEST: &str = "speaker_master_and_keepalived_v3_backup";
    if ready(TEST, true) {
        speaker_master_keepalived_backup(TEST, Version::V3);
    }
}

#[test]
fn wrong_passwords_and_intervals_are_refused_by_both_sides() {
    const TEST: &str = "wrong_passwords_and_intervals_are_refused_by_both_sides";
    if !ready(TEST, true) {
        return;
    }
    logs();
    // Each case has its VRID, so its log lines are told apart from the other tests'.
    let cases: [(&str, u8, KeepalivedConf, &str); 2] = [
        (
            "password",
            61,
            KeepalivedConf {
                vrid: 61,
                password: Some("otherpassword"),
                state: "MASTER",
                ..KeepalivedConf::kolla("wrongpass", 150)
            },
            "received an invalid passwd",
        ),
        (
            "interval",
            62,
            KeepalivedConf {
                vrid: 62,
                advert_int: 2,
                state: "MASTER",
                ..KeepalivedConf::kolla("wrongint", 150)
            },
            "advertisement interval mismatch",
        ),
    ];
    for (name, vrid, conf, keepalived_says) in cases {
        let segment = Segment::new("srt-ka3", 2).expect("segment");
        let dir = tempfile::tempdir().expect("temporary directory");
        let keepalived = Keepalived::start(&segment.nodes[0], dir.path(), &conf.render());
        wait_vip(&segment.nodes[0], true, PATIENCE, &keepalived);
        let speaker = Speaker::start(
            "speaker",
            &segment.nodes[1],
            &settings(vrid, 100, Version::V2),
            Initial::Fresh,
        );
        // Refusing keepalived's adverts, the speaker hears no master and takes over (as
        // keepalived would): then keepalived refuses ours.
        speaker.wait_role(Role::Master, PATIENCE);
        keepalived.wait_log(keepalived_says, PATIENCE);
        let status = speaker.status();
        let count = match name {
            "password" => status.refused.password,
            _ => status.refused.interval,
        };
        assert!(count >= 1, "{name}: nothing refused: {status:#?}");
        assert_eq!(status.master, Some(segment.address(1)), "{status:#?}");
        let lines = log_lines(&format!("vrid={vrid}"));
        let refused: Vec<_> = lines
            .iter()
            .filter(|l| l.contains("VRRP advert refused"))
            .collect();
        assert_eq!(refused.len(), 1, "{name}: one line a minute: {lines:#?}");
        assert!(refused[0].contains("WARN"), "{}", refused[0]);
        assert!(refused[0].contains("source=10.55.0.1"), "{}", refused[0]);
        let fix = match name {
            "password" => "auth_pass",
            _ => "advert_int",
        };
        assert!(refused[0].contains(fix), "{name}: {}", refused[0]);
        speaker.stop();
    }
}

#[test]
fn speakers_with_different_passwords_refuse_each_other_and_both_advertise() {
    const TEST: &str = "speakers_with_different_passwords_refuse_each_other_and_both_advertise";
    if !ready(TEST, false) {
        return;
    }
    let segment = Segment::new("srt-sp4", 3).expect("segment");
    let wire = Wire::record(&segment.nodes[2]);
    let ours = settings(51, 150, Version::V2);
    let mut theirs = settings(51, 100, Version::V2);
    theirs.auth_pass = Some("otherpassword".into());
    let speaker_a = Speaker::start("A", &segment.nodes[0], &ours, Initial::Fresh);
    let speaker_b = Speaker::start("B", &segment.nodes[1], &theirs, Initial::Fresh);
    speaker_a.wait_role(Role::Master, PATIENCE);
    speaker_b.wait_role(Role::Master, PATIENCE);
    std::thread::sleep(ADVERT_INT * 4);
    for speaker in [&speaker_a, &speaker_b] {
        let status = speaker.status();
        assert!(status.refused.password >= 2, "{status:#?}");
        assert_eq!(status.state, SpeakerState::Master, "{status:#?}");
    }
    // Both are masters, as keepalived nodes with different passwords are: the two-master
    // check the other tests rely on must see it.
    let both = wire.longest_two_masters(51);
    eprintln!("{TEST}: two masters for {both:?}");
    assert!(
        both >= ADVERT_INT * 2,
        "the wire check missed two masters: {both:?}"
    );
    speaker_a.stop();
    speaker_b.stop();
}

#[test]
fn a_handed_over_master_never_fails_over() {
    const TEST: &str = "a_handed_over_master_never_fails_over";
    if !ready(TEST, false) {
        return;
    }
    let segment = Segment::new("srt-sp5", 3).expect("segment");
    let (a, b) = (&segment.nodes[0], &segment.nodes[1]);
    let wire = Wire::record(&segment.nodes[2]);
    let high = settings(51, 150, Version::V2);
    let old = Speaker::start("A (old)", a, &high, Initial::Fresh);
    let speaker_b = Speaker::start("B", b, &settings(51, 100, Version::V2), Initial::Fresh);
    old.wait_role(Role::Master, PATIENCE);
    speaker_b.wait_role(Role::Backup, SLACK);
    let transitions = speaker_b.status().transitions;

    assert_eq!(old.hand_over(), Role::Master);
    // The time a restart takes between the old router's last advert and the new one's
    // first: long enough that a successor starting Fresh (or a resigning predecessor)
    // would let B take over.
    std::thread::sleep(ADVERT_INT);
    let new = Speaker::start("A (new)", a, &high, Initial::Master);
    assert_eq!(
        new.role(),
        Role::Master,
        "the successor must hold the VIP from its start"
    );
    speaker_b.keeps_role(Role::Backup, master_down(100) * 2);
    new.keeps_role(Role::Master, Duration::ZERO);
    let status = speaker_b.status();
    assert_eq!(status.transitions, transitions, "B moved: {status:#?}");
    assert_eq!(status.master, Some(segment.address(0)), "{status:#?}");
    let from_b = wire
        .seen()
        .iter()
        .filter(|s| s.source == segment.address(1))
        .count();
    assert_eq!(from_b, 0, "B advertised during the handover");
    wire.assert_one_master(TEST, 51);
    new.stop();
    speaker_b.stop();
}

#[test]
fn failing_health_gives_up_the_vip_and_recovery_takes_it_back() {
    const TEST: &str = "failing_health_gives_up_the_vip_and_recovery_takes_it_back";
    if !ready(TEST, false) {
        return;
    }
    let segment = Segment::new("srt-sp6", 3).expect("segment");
    let (a, b) = (&segment.nodes[0], &segment.nodes[1]);
    let wire = Wire::record(&segment.nodes[2]);
    let speaker_a = Speaker::start("A", a, &settings(51, 150, Version::V2), Initial::Fresh);
    let speaker_b = Speaker::start("B", b, &settings(51, 100, Version::V2), Initial::Fresh);
    speaker_a.wait_role(Role::Master, PATIENCE);
    speaker_b.wait_role(Role::Backup, SLACK);

    // Kolla's fall 2: one failure is not enough.
    speaker_a.handle.report_health(false);
    speaker_a.keeps_role(Role::Master, ADVERT_INT * 2);
    speaker_a.handle.report_health(false);
    let failed = Instant::now();
    speaker_a.wait_role(Role::Backup, SLACK);
    speaker_b.wait_role(Role::Master, PATIENCE);
    let took = failed.elapsed();
    report(
        TEST,
        "takeover after the master's health failed",
        took,
        skew(100) + SLACK,
    );
    assert!(took <= skew(100) + SLACK);
    let status = speaker_a.status();
    assert_eq!(status.state, SpeakerState::Fault, "{status:#?}");
    assert_eq!(status.effective_priority, 0, "{status:#?}");
    let reason = status.last_transition.expect("a transition").reason;
    assert!(reason.contains("health: 2 failed checks"), "{reason}");
    // In Fault, A neither advertises nor elects: B stays master.
    let sent = status.adverts_sent;
    speaker_a.keeps_role(Role::Backup, master_down(150) + ADVERT_INT);
    assert_eq!(
        speaker_a.status().adverts_sent,
        sent,
        "adverts sent in Fault"
    );

    // Kolla's rise 10: nine passes are not enough.
    for _ in 0..9 {
        speaker_a.handle.report_health(true);
    }
    std::thread::sleep(ADVERT_INT);
    assert_eq!(speaker_a.status().state, SpeakerState::Fault);
    speaker_a.handle.report_health(true);
    let recovered = Instant::now();
    // Preempt and the higher priority: A takes the VIP back after its
    // Master_Down_Interval, ignoring B's lower adverts.
    speaker_a.wait_role(Role::Master, PATIENCE);
    speaker_b.wait_role(Role::Backup, SLACK);
    let took = recovered.elapsed();
    report(
        TEST,
        "taking back the VIP after recovering",
        took,
        master_down(150) + SLACK,
    );
    assert!(took <= master_down(150) + SLACK);
    wire.assert_one_master(TEST, 51);
    speaker_a.stop();
    speaker_b.stop();
}

/// Sends `advert` from node 0 (10.55.0.1) to the VRRP group through a plain raw socket
/// that lets the kernel write the IPv4 header with multicast TTL `ttl`; `corrupt` flips a
/// bit of the checksum.
fn send_raw(ns: &Netns, advert: &Advert, ttl: u32, corrupt: bool) {
    let source = Ipv4Addr::new(10, 55, 0, 1);
    let mut message = advert.encode(source, MULTICAST_GROUP).expect("encoding");
    if corrupt {
        message[7] ^= 1;
    }
    ns.run(|| -> std::io::Result<usize> {
        let socket = Socket::new_raw(Domain::IPV4, Type::RAW, Some(Protocol::from(112)))?;
        socket.bind_device(Some(b"eth0"))?;
        socket.set_multicast_if_v4(&source)?;
        socket.set_multicast_ttl_v4(ttl)?;
        socket.send_to(
            &message,
            &std::net::SocketAddrV4::new(MULTICAST_GROUP, 0).into(),
        )
    })
    .expect("sending with a plain raw socket");
}

#[test]
fn every_refusal_is_counted_by_reason() {
    const TEST: &str = "every_refusal_is_counted_by_reason";
    if !ready(TEST, false) {
        return;
    }
    let segment = Segment::new("srt-sp7", 2).expect("segment");
    let ours = settings(71, 100, Version::V2);
    let speaker = Speaker::start("speaker", &segment.nodes[1], &ours, Initial::Fresh);
    let good = Advert {
        version: Version::V2,
        vrid: 71,
        priority: 150,
        interval_cs: 100,
        auth: scope_router::vrrp::Auth::Password(*b"kollapas"),
        addresses: vec![VIP],
    };
    let node = &segment.nodes[0];
    send_raw(node, &good, 64, false);
    send_raw(node, &good, 255, true);
    send_raw(
        node,
        &Advert {
            interval_cs: 200,
            ..good.clone()
        },
        255,
        false,
    );
    send_raw(
        node,
        &Advert {
            auth: scope_router::vrrp::Auth::Password(*b"otherpas"),
            ..good.clone()
        },
        255,
        false,
    );
    send_raw(
        node,
        &Advert {
            version: Version::V3,
            auth: scope_router::vrrp::Auth::None,
            ..good.clone()
        },
        255,
        false,
    );
    send_raw(
        node,
        &Advert {
            addresses: vec![Ipv4Addr::new(10, 55, 0, 101)],
            ..good.clone()
        },
        255,
        false,
    );
    send_raw(
        node,
        &Advert {
            vrid: 72,
            ..good.clone()
        },
        255,
        false,
    );
    // Last, and accepted: once it counts, everything before it has been read.
    send_raw(node, &good, 255, false);
    let start = Instant::now();
    while speaker.status().master_priority != Some(150) {
        assert!(
            start.elapsed() < PATIENCE,
            "the good advert was not accepted: {:#?}",
            speaker.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = speaker.status();
    assert_eq!(
        status.refused,
        scope_router::vrrp::Refusals {
            password: 1,
            interval: 1,
            version: 1,
            addresses: 1,
            ttl: 1,
            checksum: 1,
            not_a_peer: 0,
            malformed: 0,
        },
        "{status:#?}"
    );
    assert_eq!(status.other_vrid, 1, "{status:#?}");
    // Refused or not, every advert for our VRID that could be read was seen.
    assert_eq!(status.adverts_received, 5, "{status:#?}");
    assert_eq!(status.master, Some(segment.address(0)), "{status:#?}");
    speaker.stop();
}

#[test]
fn a_second_master_is_a_split_brain_counted_and_logged_once_per_episode() {
    const TEST: &str = "a_second_master_is_a_split_brain_counted_and_logged_once_per_episode";
    if !ready(TEST, false) {
        return;
    }
    logs();
    let segment = Segment::new("srt-sp8", 2).expect("segment");
    let ours = settings(73, 150, Version::V2);
    // Initial::Master: master at once, no election to wait for.
    let speaker = Speaker::start("speaker", &segment.nodes[1], &ours, Initial::Master);
    // A master that does not hear us: valid adverts of a lower priority, whatever we send.
    let rogue = Advert {
        version: Version::V2,
        vrid: 73,
        priority: 100,
        interval_cs: 100,
        auth: scope_router::vrrp::Auth::Password(*b"kollapas"),
        addresses: vec![VIP],
    };
    let node = &segment.nodes[0];
    let wait_received = |n: u64| {
        let start = Instant::now();
        while speaker.status().adverts_received < n {
            assert!(start.elapsed() < PATIENCE, "{:#?}", speaker.status());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    for n in 1..=3 {
        send_raw(node, &rogue, 255, false);
        wait_received(n);
        std::thread::sleep(Duration::from_millis(300));
    }
    let status = speaker.status();
    assert_eq!(status.split_brains, 1, "one episode: {status:#?}");
    assert_eq!(status.state, SpeakerState::Master, "{status:#?}");
    // Quiet for longer than Master_Down_Interval: the next one is a new episode.
    std::thread::sleep(master_down(150) + ADVERT_INT / 2);
    send_raw(node, &rogue, 255, false);
    wait_received(4);
    let status = speaker.status();
    assert_eq!(status.split_brains, 2, "a second episode: {status:#?}");
    let warned: Vec<_> = log_lines("vrid=73")
        .into_iter()
        .filter(|l| l.contains("split brain"))
        .collect();
    assert_eq!(warned.len(), 2, "a warning per episode: {warned:#?}");
    assert!(
        warned
            .iter()
            .all(|l| l.contains("WARN") && l.contains("other=10.55.0.1")),
        "{warned:#?}"
    );
    speaker.stop();
}
