//! Privileged eBPF steering tests: each builds its own router/client namespaces with a
//! veth named `eth2` and its own bpffs pin directory. Without root they skip (printed);
//! under `CI=true` a skip fails.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use integration_tests::capture::Capture;
use ipnet::Ipv4Net;
use router_common::{DROP_LOG_BURST, DROP_LOG_INTERVAL_NS};
use scope_router::ebpf::{
    self, EbpfError, Mode, ServiceKind, Startup, Steering, SteeringConfig, Unavailable,
};
use test_support::netns::{self, Lab, PinDir};
use tracing_subscriber::util::SubscriberInitExt as _;

// Ports on a VIP that exists only inside this test's private namespace: nothing else can
// hold them, and nothing binds them at all (that is the point of steering).
const SERVED_PORT: u16 = 8774;
const UNSERVED_PORT: u16 = 9999;
// Long enough for a SYN to be answered on a veth many times over; a timeout here means
// the SYN was dropped, which is what the drop tests assert (never a duration).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn vip(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Lab::VIP, port)
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A lab with the VIP on eth2, or `None` when the test must skip.
fn lab(test: &str) -> Option<Lab> {
    init_logs();
    if !netns::privileged(test) {
        return None;
    }
    if !ebpf::object_built() {
        netns::skip(
            test,
            "binary built without the eBPF object (run `cargo xtask setup`)",
        );
        return None;
    }
    let lab = Lab::new().expect("create namespaces and veth");
    lab.add_vip().expect("add VIP");
    Some(lab)
}

fn config(pins: &PinDir, mode: Mode) -> SteeringConfig {
    SteeringConfig {
        pin_path: pins.path().to_path_buf(),
        interface: "eth2".into(),
        services: vec![vip(SERVED_PORT)],
        ..SteeringConfig::new(mode)
    }
}

/// Starts steering inside the router namespace with a fresh listener on 127.0.0.1:0.
fn start(lab: &Lab, config: &SteeringConfig) -> (Steering, TcpListener) {
    lab.router.run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind listener");
        match ebpf::start(config, &listener).expect("start steering") {
            Startup::Steering(steering) => (steering, listener),
            other => panic!("expected eBPF steering, got {other:?}"),
        }
    })
}

/// What a test's steering forwards into `tracing` (the XDP drop lines) and what aya logs
/// while loading it, formatted as the router's log lines.
/// The XDP drop lines of `capture`, each as the text after `drop reason=`.
fn drops(capture: &Capture) -> Vec<String> {
    capture
        .lines()
        .iter()
        .filter(|line| line.contains("scope_router::xdp"))
        .filter_map(|line| {
            line.split_once("drop reason=")
                .map(|(_, rest)| rest.to_owned())
        })
        .collect()
}

/// [`start`] with `capture` as the subscriber current while steering starts: the kernel
/// log forwarder adopts it, and aya's load-time warnings land in it too.
fn start_captured(
    lab: &Lab,
    config: &SteeringConfig,
    capture: &Capture,
) -> (Steering, TcpListener) {
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "scope_router::xdp=debug,aya=warn,aya_obj=warn",
        ))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    lab.router.run(|| {
        let _scope = subscriber.set_default();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind listener");
        match ebpf::start(config, &listener).expect("start steering") {
            Startup::Steering(steering) => (steering, listener),
            other => panic!("expected eBPF steering, got {other:?}"),
        }
    })
}

/// Starts steering again after this process's previous steering on the same pins went
/// away. Its lock goes with the last descriptor of the state directory, and a child that
/// another test thread is spawning holds a copy of every descriptor until it execs: for
/// that instant the pins still read as owned by this very process. Only that is waited out.
fn restart(lab: &Lab, config: &SteeringConfig) -> (Steering, TcpListener) {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let outcome = lab.router.run(|| {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind listener");
            ebpf::start(config, &listener).map(|startup| (startup, listener))
        });
        match outcome {
            Ok((Startup::Steering(steering), listener)) => return (steering, listener),
            Err(EbpfError::InUse(Unavailable::InUse { pid: Some(pid), .. }))
                if pid == std::process::id() && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok((other, _)) => panic!("expected eBPF steering, got {other:?}"),
            Err(err) => panic!("restart steering: {err}"),
        }
    }
}

/// How long a sibling test's fork may keep a copy of a released lock (see [`restart`]).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Whether the pins are owned, once a lock this process released is really gone.
fn owned_after_release(pins: &Path) -> bool {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let owned = ebpf::read_status(pins).expect("status").owned;
        if !owned || Instant::now() >= deadline {
            return owned;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn connect(lab: &Lab, port: u16) -> std::io::Result<TcpStream> {
    lab.client
        .run(move || TcpStream::connect_timeout(&SocketAddr::V4(vip(port)), CONNECT_TIMEOUT))
}

/// Connects from the client and checks the single listener got it, addressed to the VIP.
fn round_trip(lab: &Lab, listener: &TcpListener) {
    let mut client = connect(lab, SERVED_PORT).expect("connect to steered VIP:port");
    let (mut accepted, peer) = listener.accept().expect("accept steered connection");
    assert_eq!(
        accepted.local_addr().expect("local_addr"),
        SocketAddr::V4(vip(SERVED_PORT))
    );
    assert_eq!(peer.ip(), Lab::CLIENT);
    client.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"ping");
}

#[test]
fn privileged_steers_to_the_single_listener_without_binding_the_vip() {
    let Some(lab) = lab("privileged_steers_to_the_single_listener_without_binding_the_vip") else {
        return;
    };
    let pins = PinDir::new("srt-steer");
    let (steering, listener) = start(&lab, &config(&pins, Mode::Required));
    assert_eq!(steering.interface(), "eth2");

    round_trip(&lab, &listener);

    let status = ebpf::read_status(pins.path()).expect("status");
    let row = status
        .counters_for(Lab::VIP, Some(SERVED_PORT))
        .expect("row for VIP:port");
    assert_eq!(row.kind, ServiceKind::Steered);
    assert!(
        row.syns >= 1 && row.packets >= 2 && row.bytes > 0,
        "{row:?}"
    );
    assert_eq!(row.drops, 0, "{row:?}");
    assert!(status.programs.iter().all(|p| p.attached), "{status:#?}");
    let xdp = status
        .programs
        .iter()
        .find(|p| p.mode.is_some())
        .expect("xdp mode");
    assert_eq!(xdp.mode, Some(steering.xdp_mode()));
    eprintln!("{}", status.render_table());

    // A separate process (as `scope-router status` is) sees the same counters.
    let child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "status_reader_child_process",
            "--ignored",
            "--nocapture",
        ])
        .env(STATUS_PIN_ENV, pins.path())
        .output()
        .expect("run child status reader");
    let stdout = String::from_utf8_lossy(&child.stdout);
    let json = stdout
        .lines()
        .find_map(|line| line.strip_prefix("STATUS_JSON "))
        .unwrap_or_else(|| panic!("child printed no status: {stdout}"));
    let json: serde_json::Value = serde_json::from_str(json).expect("status JSON");
    let served = json["counters"]
        .as_array()
        .expect("counters")
        .iter()
        .find(|row| row["port"] == SERVED_PORT)
        .expect("served row in child's view");
    assert!(served["syns"].as_u64() >= Some(1), "{served}");
    assert_eq!(
        json["programs"][1]["mode"],
        serde_json::json!(steering.xdp_mode())
    );

    steering.shutdown().expect("shutdown");
    let after = ebpf::read_status(pins.path()).expect("status after shutdown");
    assert!(after.programs.iter().all(|p| !p.attached), "{after:#?}");
    // Detached for real: the kernel now refuses the VIP:port nobody bound.
    let refused = connect(&lab, SERVED_PORT).expect_err("no listener after shutdown");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");
}

const STATUS_PIN_ENV: &str = "SRT_STATUS_PIN";

/// Helper, not a test of its own: the steering test re-runs this binary with this filter
/// so the status is read by another process, as `scope-router status` does.
#[test]
#[ignore = "helper run in a child process by the steering test"]
fn status_reader_child_process() {
    let Ok(pin) = std::env::var(STATUS_PIN_ENV) else {
        return;
    };
    let status = ebpf::read_status(Path::new(&pin)).expect("status from another process");
    println!("STATUS_JSON {}", serde_json::to_string(&status).unwrap());
}

#[test]
fn privileged_unserved_port_is_dropped_and_counted() {
    let Some(lab) = lab("privileged_unserved_port_is_dropped_and_counted") else {
        return;
    };
    let pins = PinDir::new("srt-unserved");
    let capture = Capture::default();
    let (steering, _listener) = start_captured(&lab, &config(&pins, Mode::Required), &capture);

    // Without XDP the kernel would answer RST (ConnectionRefused); a drop is a timeout.
    let err = connect(&lab, UNSERVED_PORT).expect_err("unserved port must not connect");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");

    let status = ebpf::read_status(pins.path()).expect("status");
    let other = status.counters_for(Lab::VIP, None).expect("other bucket");
    assert_eq!(other.kind, ServiceKind::Other);
    assert!(other.drops >= 1 && other.syns >= 1, "{other:?}");
    // Shutdown forwards what is left in the ring buffer before it returns.
    steering.shutdown().expect("shutdown");
    let drops = drops(&capture);
    let expected = format!(
        "unserved_port src={} dst={}:{UNSERVED_PORT} proto=6 suppressed=0",
        Lab::CLIENT,
        Lab::VIP
    );
    assert!(drops.contains(&expected), "{expected} not in {drops:#?}");
}

#[test]
fn privileged_denied_source_is_dropped_and_counted_and_update_lifts_it() {
    let Some(lab) = lab("privileged_denied_source_is_dropped_and_counted_and_update_lifts_it")
    else {
        return;
    };
    let pins = PinDir::new("srt-deny");
    let mut cfg = config(&pins, Mode::Required);
    cfg.deny = vec!["192.0.2.0/30".parse::<Ipv4Net>().unwrap()];
    let (mut steering, listener) = start(&lab, &cfg);

    let err = connect(&lab, SERVED_PORT).expect_err("denied source must not connect");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    let status = ebpf::read_status(pins.path()).expect("status");
    let row = status
        .counters_for(Lab::VIP, Some(SERVED_PORT))
        .expect("row");
    assert!(row.drops >= 1, "{row:?}");
    assert_eq!(status.deny, vec!["192.0.2.0/30".to_owned()]);

    // In-place update (config reload) removes the entry; the same client now connects.
    steering
        .update(&cfg.services, &[], &[])
        .expect("update maps in place");
    round_trip(&lab, &listener);
    assert!(ebpf::read_status(pins.path()).unwrap().deny.is_empty());

    // The proxy may re-create its listener; steering follows without a restart.
    let replacement = lab
        .router
        .run(|| TcpListener::bind("127.0.0.1:0").expect("bind replacement"));
    steering
        .replace_listener(&replacement)
        .expect("replace listener");
    drop(listener);
    round_trip(&lab, &replacement);
    steering.shutdown().expect("shutdown");
}

/// Done-when of the drop log: a flood from a denied source yields a bounded number of
/// lines, and every drop is either logged or counted as suppressed.
#[test]
fn privileged_denied_flood_logs_a_bounded_number_of_lines() {
    let Some(lab) = lab("privileged_denied_flood_logs_a_bounded_number_of_lines") else {
        return;
    };
    // SAFETY: sysconf has no preconditions.
    let cpus = u64::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }).unwrap();
    // Far more than the limit lets through in any likely window, on any CPU count.
    let flood = (20 * cpus * (DROP_LOG_BURST + 2)).max(20_000);
    let pins = PinDir::new("srt-droplog");
    let mut cfg = config(&pins, Mode::Required);
    cfg.deny = vec![Ipv4Net::new(Lab::CLIENT, 32).unwrap()];
    let capture = Capture::default();
    let began = Instant::now();
    let (steering, _listener) = start_captured(&lab, &cfg, &capture);

    // UDP: no handshake to wait for, so the flood is as fast as the veth takes it. Sends
    // the veth drops never reach XDP; the counters below say how many did.
    let target = vip(SERVED_PORT);
    lab.client.run(move || {
        let socket = UdpSocket::bind(SocketAddrV4::new(Lab::CLIENT, 0)).expect("bind client");
        for _ in 0..flood {
            let _ = socket.send_to(b"flood", target);
        }
    });
    // Shutdown detaches XDP, then forwards every line left in the ring buffer: after it
    // the counters, the totals and the captured lines no longer move, and the window in
    // which the kernel could earn tokens is closed.
    steering.shutdown().expect("shutdown");
    let window = began.elapsed();
    let status = ebpf::read_status(pins.path()).expect("status");

    let other = status.counters_for(Lab::VIP, None).expect("other bucket");
    assert_eq!(
        other.drops, other.packets,
        "every packet from a denied source drops: {other:?}"
    );
    let log = status.drop_log.expect("drop log totals");
    let drops = drops(&capture);
    let lines = drops.len() as u64;
    let from_client = format!(
        "denied_source src={} dst={}:0 proto=17 ",
        Lab::CLIENT,
        Lab::VIP
    );
    assert!(
        drops.iter().all(|line| line.starts_with(&from_client)),
        "{drops:#?}"
    );
    // Each CPU: a burst, then one line per interval of the window.
    let intervals = window.as_nanos() as u64 / DROP_LOG_INTERVAL_NS + 1;
    let bound = cpus * (DROP_LOG_BURST + intervals);
    assert!(
        (1..=bound).contains(&lines),
        "{lines} lines for {} drops; bound {bound} ({cpus} CPUs, {window:?})",
        other.drops
    );
    // No line lost between kernel and `tracing`, and no drop unaccounted for.
    assert_eq!(lines, log.lines, "{log:?}");
    assert_eq!(log.lines + log.suppressed, other.drops, "{log:?} {other:?}");

    // The control: the flood that got through was far more than the limit lets through,
    // so a missing or broken limit would have shown above.
    assert!(
        other.drops >= 10 * bound,
        "flood too small to test the limit: {} drops, bound {bound}",
        other.drops
    );
    eprintln!(
        "drop log: {lines} lines, {} suppressed, {} drops; bound {bound} ({cpus} CPUs, {window:?})",
        log.suppressed, other.drops
    );
    // Lines after a suppressed stretch say how much was held back, never more than was.
    let reported: u64 = drops
        .iter()
        .filter_map(|line| {
            line.rsplit_once("suppressed=")?
                .1
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(reported <= log.suppressed, "{reported} > {log:?}");

    // aya-log-ebpf's `MaybeUninit<u8>` union needs bpf-linker 0.10.2+, which sanitises
    // union names; otherwise the kernel rejects the object's BTF and aya warns.
    let warnings: Vec<_> = capture
        .lines()
        .into_iter()
        .filter(|line| line.contains("BTF"))
        .collect();
    assert!(
        warnings.is_empty(),
        "loading warned about BTF: {warnings:#?}"
    );
}

#[test]
fn privileged_restart_reuses_pins_and_counters_continue() {
    let Some(lab) = lab("privileged_restart_reuses_pins_and_counters_continue") else {
        return;
    };
    let pins = PinDir::new("srt-restart");
    let cfg = config(&pins, Mode::Required);
    let counters_pin = pins.path().join(router_common::COUNTERS_MAP);
    // Left by a start that was SIGKILLed before renaming (no such pid is running).
    let abandoned = pins.path().with_file_name(format!(
        "{}-staging-999999999-1",
        pins.path().file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir(&abandoned).unwrap();

    let (steering, listener) = start(&lab, &cfg);
    let swept = !abandoned.exists();
    let _ = std::fs::remove_dir_all(&abandoned);
    assert!(swept, "abandoned staging directory must be swept");
    round_trip(&lab, &listener);
    let first = ebpf::read_status(pins.path()).unwrap();
    let first_packets = first
        .counters_for(Lab::VIP, Some(SERVED_PORT))
        .unwrap()
        .packets;
    let first_inode = std::fs::metadata(&counters_pin).unwrap().ino();
    let drop_log_pin = pins.path().join(router_common::DROP_LOG_MAP);
    let drop_log_inode = std::fs::metadata(&drop_log_pin).unwrap().ino();
    steering.shutdown().expect("shutdown");
    drop(listener);

    // Clean restart: same pinned map object, counters carry on.
    let (steering, listener) = restart(&lab, &cfg);
    assert_eq!(std::fs::metadata(&counters_pin).unwrap().ino(), first_inode);
    // The drop log's totals carry on too; its ring buffer is the new process's own.
    assert_eq!(
        std::fs::metadata(&drop_log_pin).unwrap().ino(),
        drop_log_inode
    );
    assert!(!pins.path().join("AYA_LOGS").exists());
    round_trip(&lab, &listener);
    let second = ebpf::read_status(pins.path()).unwrap();
    let second_packets = second
        .counters_for(Lab::VIP, Some(SERVED_PORT))
        .unwrap()
        .packets;
    assert!(
        second_packets > first_packets,
        "{first_packets} -> {second_packets}"
    );

    // Crash (no shutdown): the pinned links stay attached; the next start replaces them.
    drop(steering);
    drop(listener);
    assert!(
        ebpf::read_status(pins.path())
            .unwrap()
            .programs
            .iter()
            .all(|p| p.attached)
    );
    let (steering, listener) = restart(&lab, &cfg);
    round_trip(&lab, &listener);
    let third = ebpf::read_status(pins.path()).unwrap();
    let third_packets = third
        .counters_for(Lab::VIP, Some(SERVED_PORT))
        .unwrap()
        .packets;
    assert!(
        third_packets > second_packets,
        "{second_packets} -> {third_packets}"
    );
    assert_eq!(std::fs::metadata(&counters_pin).unwrap().ino(), first_inode);

    // A reload that stops serving the port prunes its counters; the VIP bucket stays.
    let mut steering = steering;
    steering
        .update(&[vip(SERVED_PORT + 1)], &[], &[])
        .expect("update");
    let moved = ebpf::read_status(pins.path()).unwrap();
    assert!(
        moved.counters_for(Lab::VIP, Some(SERVED_PORT)).is_none(),
        "{moved:#?}"
    );
    assert!(
        moved
            .counters_for(Lab::VIP, Some(SERVED_PORT + 1))
            .is_some()
    );
    assert!(moved.counters_for(Lab::VIP, None).is_some());
    drop(listener);
    steering.shutdown().expect("shutdown");
}

#[test]
fn privileged_auto_falls_back_and_required_names_the_problem() {
    let Some(lab) = lab("privileged_auto_falls_back_and_required_names_the_problem") else {
        return;
    };
    let pins = PinDir::new("srt-fallback");

    // A missing interface: eBPF cannot attach, so auto falls back and leaves no state.
    let mut cfg = config(&pins, Mode::Auto);
    cfg.interface = "nosuch0".into();
    let outcome = lab.router.run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        ebpf::start(&cfg, &listener).expect("auto never errors")
    });
    match outcome {
        Startup::Fallback(Unavailable::InterfaceMissing { name }) => assert_eq!(name, "nosuch0"),
        other => panic!("expected fallback for the missing interface, got {other:?}"),
    }
    assert!(
        !pins.path().exists(),
        "fallback must not leave pinned state"
    );

    cfg.mode = Mode::Required;
    let err = lab
        .router
        .run(|| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            ebpf::start(&cfg, &listener)
        })
        .expect_err("required must fail");
    assert!(matches!(err, EbpfError::Required(_)), "{err:?}");
    assert!(err.to_string().contains("nosuch0"), "{err}");

    // A pin path whose parent is neither bpffs nor empty: the loader must not mount over
    // it, so eBPF cannot load and auto falls back.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep-me"), b"x").unwrap();
    let mut cfg = config(&pins, Mode::Auto);
    cfg.pin_path = dir.path().join("scope-router");
    let outcome = lab.router.run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        ebpf::start(&cfg, &listener).expect("auto never errors")
    });
    assert!(
        matches!(outcome, Startup::Fallback(Unavailable::Bpffs { .. })),
        "{outcome:?}"
    );
    assert!(dir.path().join("keep-me").exists());
    assert!(!cfg.pin_path.exists());

    // Off never touches anything.
    cfg.mode = Mode::Off;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(matches!(
        ebpf::start(&cfg, &listener).unwrap(),
        Startup::Off
    ));
    assert!(!Path::new(&cfg.pin_path).exists());
}

#[test]
fn privileged_mounts_bpffs_on_an_empty_pin_root() {
    let Some(lab) = lab("privileged_mounts_bpffs_on_an_empty_pin_root") else {
        return;
    };
    // An empty, unmounted directory stands for a host without /sys/fs/bpf mounted.
    let root = tempfile::tempdir().unwrap();
    let pins = PinDir::new("srt-unused");
    let mut cfg = config(&pins, Mode::Required);
    cfg.pin_path = root.path().join("scope-router");
    let (steering, listener) = start(&lab, &cfg);
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|line| line.contains(&*root.path().to_string_lossy()) && line.contains(" - bpf "));
    round_trip(&lab, &listener);
    steering.shutdown().expect("shutdown");
    std::fs::remove_dir_all(&cfg.pin_path).unwrap();
    let target = std::ffi::CString::new(root.path().as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: target is a valid NUL-terminated path.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    assert!(mounted, "bpffs was not mounted on the empty pin root");
    assert_eq!(rc, 0, "unmount: {}", std::io::Error::last_os_error());
}

#[test]
fn privileged_second_start_is_refused_while_the_first_runs_and_a_restart_continues() {
    let Some(lab) =
        lab("privileged_second_start_is_refused_while_the_first_runs_and_a_restart_continues")
    else {
        return;
    };
    let pins = PinDir::new("srt-lock");
    // `auto`: a second router must be refused, not fall back to direct binds beside the first.
    let cfg = config(&pins, Mode::Auto);
    let counters_pin = pins.path().join(router_common::COUNTERS_MAP);
    let (first, listener) = start(&lab, &cfg);
    let me = std::process::id();

    let second = lab.router.run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind listener");
        ebpf::start(&cfg, &listener)
    });
    match &second {
        Err(EbpfError::InUse(Unavailable::InUse { pid, path })) => {
            assert_eq!(*pid, Some(me));
            assert_eq!(path, pins.path());
        }
        other => panic!("second start on the same pins: {other:?}"),
    }
    let text = second.expect_err("refused").to_string();
    assert!(
        text.contains(&format!("pid {me}")) && text.contains("still running"),
        "{text}"
    );

    // `status` sees the owner without taking the lock: the first keeps steering and a
    // second start is still refused after it.
    let status = ebpf::read_status(pins.path()).expect("status");
    assert!(status.owned, "{status:#?}");
    assert_eq!(status.owner_pid, Some(me), "{status:#?}");
    round_trip(&lab, &listener);
    let again = lab.router.run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind listener");
        ebpf::start(&cfg, &listener)
    });
    assert!(
        matches!(again, Err(EbpfError::InUse(_))),
        "reading the status freed the lock: {again:?}"
    );
    let before = ebpf::read_status(pins.path())
        .unwrap()
        .counters_for(Lab::VIP, Some(SERVED_PORT))
        .expect("row")
        .packets;
    let inode = std::fs::metadata(&counters_pin).unwrap().ino();

    // The owner goes away without a clean shutdown (as in a crash): its lock goes with it.
    drop(first);
    drop(listener);
    assert!(
        !owned_after_release(pins.path()),
        "the lock outlived its owner"
    );
    let orphaned = ebpf::read_status(pins.path()).expect("status");
    assert!(
        orphaned.programs.iter().all(|p| p.attached),
        "{orphaned:#?}"
    );

    // The restart reuses the pins: same map, counters continue.
    let (restarted, listener) = restart(&lab, &cfg);
    assert_eq!(std::fs::metadata(&counters_pin).unwrap().ino(), inode);
    round_trip(&lab, &listener);
    let after = ebpf::read_status(pins.path()).unwrap();
    assert!(after.owned && after.owner_pid == Some(me), "{after:#?}");
    let packets = after
        .counters_for(Lab::VIP, Some(SERVED_PORT))
        .expect("row")
        .packets;
    assert!(packets > before, "{before} -> {packets}");

    // A clean shutdown releases the lock too.
    restarted.shutdown().expect("shutdown");
    assert!(!owned_after_release(pins.path()), "shutdown kept the lock");
}

/// One ICMP echo to `to` from the calling thread's namespace (a raw socket: no `ping`
/// binary needed); whether the reply came within 2 s.
fn icmp_echo(to: std::net::Ipv4Addr) -> bool {
    // SAFETY: plain socket calls on a descriptor owned by this function.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        // Echo request: type 8, code 0, checksum, id 0x5352, seq 1, payload.
        let mut packet = [8u8, 0, 0, 0, 0x53, 0x52, 0, 1, b's', b'r', b't', b'!'];
        let sum = packet
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum::<u32>();
        let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_addr.s_addr = u32::from_ne_bytes(to.octets());
        let sent = libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert!(sent > 0, "send: {}", std::io::Error::last_os_error());
        let mut buf = [0u8; 256];
        let mut answered = false;
        // Raw sockets see every ICMP packet; look for our echo reply (IP header first).
        for _ in 0..10 {
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n <= 0 {
                break;
            }
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            if buf[ihl] == 0 && buf[ihl + 4..ihl + 6] == [0x53, 0x52] {
                answered = true;
                break;
            }
        }
        libc::close(fd);
        answered
    }
}

/// The guard judges IPv4 TCP to the VIPs only: ICMP to a VIP and IPv6 on the same
/// interface pass untouched and are not counted.
#[test]
fn privileged_icmp_and_ipv6_pass_the_guard_untouched() {
    let Some(lab) = lab("privileged_icmp_and_ipv6_pass_the_guard_untouched") else {
        return;
    };
    let pins = PinDir::new("srt-icmp");
    let (steering, _listener) = start(&lab, &config(&pins, Mode::Required));
    let before = ebpf::read_status(pins.path()).expect("status");
    assert!(
        lab.client.run(|| icmp_echo(Lab::VIP)),
        "ICMP echo to the VIP was not answered"
    );
    // The probe itself can tell: an address nobody holds gets no reply.
    assert!(
        !lab.client
            .run(|| icmp_echo(std::net::Ipv4Addr::new(192, 0, 2, 77)))
    );

    // IPv6 beside it (ULA addresses only inside these namespaces): a TCP round trip.
    lab.router
        .ip(&["-6", "addr", "add", "fd00:55::1/64", "dev", "eth2", "nodad"])
        .expect("router v6");
    lab.client
        .ip(&["-6", "addr", "add", "fd00:55::2/64", "dev", "eth0", "nodad"])
        .expect("client v6");
    let v6 = lab
        .router
        .run(|| TcpListener::bind("[fd00:55::1]:0"))
        .expect("v6 listener");
    let addr = v6.local_addr().expect("v6 address");
    let client = lab
        .client
        .run(move || TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)));
    assert!(client.is_ok(), "IPv6 did not pass the guard: {client:?}");
    v6.accept().expect("v6 accept");

    let after = ebpf::read_status(pins.path()).expect("status");
    let drops = |s: &ebpf::Status| s.counters.iter().map(|c| c.drops).sum::<u64>();
    assert_eq!(drops(&after), drops(&before), "{after:?}");
    steering.shutdown().expect("shutdown");
}
