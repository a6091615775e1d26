//! Two scope-routers sharing one VIP over VRRP, end to end as operators run them: the real
//! binary in two router namespaces and a client namespace on one bridge (`test_support::segment::Segment`), eBPF
//! steering required, 1 s adverts. Election, failover on SIGKILL (timed), preemption back,
//! resignation on a clean stop (timed), a zero-downtime restart of the master that never
//! fails over, and keep-alive clients reset by the old master's release.
//!
//! `cargo xtask test` runs this file as root with the other `privileged_*` suites.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use test_support::keepalived::Keepalived;
use test_support::netns::{self, Netns, PinDir};
use test_support::segment::Segment;

const BIN: &str = env!("CARGO_BIN_EXE_scope-router");
const VIP: Ipv4Addr = Ipv4Addr::new(10, 55, 0, 100);
const COMPUTE: u16 = 8774;
/// The bound on every wait.
const PATIENCE: Duration = Duration::from_secs(30);
/// Master_Down_Interval of the backup (priority 100, 1 s adverts, VRRPv2):
/// 3 × 1 s + (256 − 100) / 256 s.
const MASTER_DOWN: Duration = Duration::from_millis(3609);

/// A backend in a router namespace answering `backend: NAME` to every request.
struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Backend {
    fn start(ns: &Netns, name: &'static str) -> Backend {
        let listener = ns
            .run(|| TcpListener::bind("127.0.0.1:0"))
            .expect("bind the backend");
        let addr = listener.local_addr().expect("backend address");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        std::thread::spawn(move || {
                            let _ = answer(stream, name);
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        Backend { addr, stop }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(mut stream: TcpStream, name: &str) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        let body = format!("backend: {name}\n");
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        head.clear();
    }
}

/// `scope-router run` in a router namespace; killed on drop.
struct Router {
    child: Child,
    log: PathBuf,
}

impl Router {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&mut self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll") {
                return status;
            }
            assert!(Instant::now() < deadline, "still running:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Two router namespaces (A: 10.55.0.1, B: .2) and a client (.50) on one bridge.
struct Pair {
    backends: Vec<Backend>,
    pins: Vec<PinDir>,
    segment: Segment,
    dir: tempfile::TempDir,
}

impl Pair {
    fn new() -> Pair {
        let segment = Segment::new("srt-ha", 3).expect("bridge and namespaces");
        let backends = vec![
            Backend::start(&segment.nodes[0], "A"),
            Backend::start(&segment.nodes[1], "B"),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join("catalog.json"),
            format!(
                r#"[{{"Region": "RegionOne", "Service Type": "compute", "Interface": "public", "URL": "http://{VIP}:{COMPUTE}/v2.1"}}]"#
            ),
        )
        .expect("catalog");
        Pair {
            backends,
            pins: vec![PinDir::new("srt-ha-a"), PinDir::new("srt-ha-b")],
            segment,
            dir,
        }
    }

    fn ns(&self, router: usize) -> &Netns {
        &self.segment.nodes[router]
    }

    fn client(&self) -> &Netns {
        &self.segment.nodes[2]
    }

    /// Router `router`'s config with `[vrrp] priority`; returns its path.
    fn config(&self, router: usize, priority: u8) -> PathBuf {
        let name = ["a", "b"][router];
        let text = format!(
            r#"region = "RegionOne"
catalog = ["catalog.json"]
backend = "127.0.0.1"

[proxy]
shutdown_grace = "2s"

[ports.{COMPUTE}]
backend = "{backend}"

[vip]
address = "{VIP}"
interface = "eth0"
garp_count = 1
state_dir = "{state}"

[ebpf]
mode = "required"
pin_path = "{pins}"
interface = "eth0"

[vrrp]
vrid = 51
priority = {priority}
advert_int = "1s"
auth_pass = "kolla-vrrp-secret"
"#,
            backend = self.backends[router].addr,
            state = self.dir.path().join(format!("run-{name}")).display(),
            pins = self.pins[router].path().display(),
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        fs::write(&path, text).expect("config");
        path
    }

    fn start(&self, router: usize, config: &Path) -> Router {
        let log = self.dir.path().join(format!("{}.log", ["a", "b"][router]));
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let child = self
            .ns(router)
            .command(BIN)
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone"))
            .stderr(out)
            .spawn()
            .expect("spawn scope-router");
        Router { child, log }
    }

    fn holds_vip(&self, router: usize) -> bool {
        self.ns(router)
            .ip(&["-4", "addr", "show", "dev", "eth0"])
            .is_ok_and(|out| out.contains(&format!("inet {VIP}/32")))
    }

    /// Which backend answers a new connection to the VIP from the client ("A", "B"), or
    /// why none does.
    fn served_by(&self) -> Result<String, String> {
        let addr = SocketAddr::from((VIP, COMPUTE));
        self.client()
            .run(move || -> io::Result<String> {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"GET /v2.1/servers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut reply = String::new();
                s.read_to_string(&mut reply)?;
                Ok(reply)
            })
            .map_err(|e| e.to_string())
            .and_then(|reply| {
                reply
                    .split("backend: ")
                    .nth(1)
                    .map(|rest| rest.trim().to_owned())
                    .ok_or(reply)
            })
    }

    /// `path` on router `router`'s admin listener (on its own loopback): the response.
    fn get(&self, router: usize, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        self.ns(router)
            .run(move || -> io::Result<String> {
                let mut s = TcpStream::connect("127.0.0.1:9101")?;
                s.set_read_timeout(Some(PATIENCE))?;
                s.write_all(request.as_bytes())?;
                let mut reply = String::new();
                s.read_to_string(&mut reply)?;
                Ok(reply)
            })
            .unwrap_or_default()
    }

    /// `/status` of router `router`.
    fn status(&self, router: usize) -> serde_json::Value {
        let text = self.get(router, "/status");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
    }
}

fn until(what: &str, logs: &[&Router], mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{what}: not within {PATIENCE:?}\n{}",
            logs.iter()
                .map(|r| r.log())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn runnable(test: &str) -> bool {
    if !netns::privileged(test) {
        return false;
    }
    if !scope_router::ebpf::object_built() {
        return netns::skip(test, "scope-router built without its eBPF object");
    }
    true
}

#[test]
fn the_pair_elects_fails_over_on_sigkill_preempts_back_and_hands_over_on_a_clean_stop() {
    if !runnable("the_pair_elects_fails_over_on_sigkill") {
        return;
    }
    let pair = Pair::new();
    let (config_a, config_b) = (pair.config(0, 150), pair.config(1, 100));
    let mut b = pair.start(1, &config_b);
    let mut a = pair.start(0, &config_a);

    // The higher priority wins; only the master holds the VIP and serves it.
    until("A is master and serves the VIP", &[&a, &b], || {
        pair.holds_vip(0) && !pair.holds_vip(1) && pair.served_by().as_deref() == Ok("A")
    });
    let status = pair.status(1);
    assert_eq!(status["vrrp"]["state"], "backup", "{status:#}");
    assert_eq!(status["vrrp"]["master"], "10.55.0.1", "{status:#}");
    // A backup is healthy without the VIP, everywhere an operator or a check looks.
    assert_eq!(status["healthy"], true, "{status:#}");
    assert!(pair.get(1, "/healthz").starts_with("HTTP/1.1 200"));
    let metrics = pair.get(0, "/metrics");
    assert!(
        metrics.contains("scope_router_vrrp_state{vrid=\"51\",state=\"master\"} 1"),
        "{metrics}"
    );
    // With the VRRP families in it, the exposition still parses.
    let body = metrics.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    test_support::tool::assert_promtool_accepts(
        "the_pair_elects_fails_over_on_sigkill_preempts_back_and_hands_over_on_a_clean_stop",
        body,
    );
    let text = pair
        .ns(1)
        .command(BIN)
        .args(["status", "--config"])
        .arg(&config_b)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("vrrp: backup (priority 100)") && text.contains("master 10.55.0.1"),
        "{text}"
    );

    // A dies without a word: B takes over once A's adverts stop for Master_Down_Interval.
    a.signal(libc::SIGKILL);
    a.wait();
    let failover = until("B serves after A's SIGKILL", &[&b], || {
        pair.served_by().as_deref() == Ok("B")
    });
    eprintln!(
        "SIGKILL failover: B served {failover:?} after A died (Master_Down_Interval {MASTER_DOWN:?})"
    );
    assert!(
        failover < MASTER_DOWN + Duration::from_millis(1500),
        "failover took {failover:?}:\n{}",
        b.log()
    );
    assert!(pair.holds_vip(1));

    // A comes back (its crash left the VIP on its eth0: a backup removes it) and, with the
    // higher priority and preemption, takes the VIP back; B releases it.
    let mut a = pair.start(0, &config_a);
    until("A preempts B", &[&a, &b], || {
        pair.holds_vip(0) && !pair.holds_vip(1) && pair.served_by().as_deref() == Ok("A")
    });

    // A clean stop resigns (priority 0): B takes over after its skew time, not after a
    // Master_Down_Interval.
    let stopped = Instant::now();
    a.signal(libc::SIGTERM);
    until("B holds the VIP after A's resignation", &[&a, &b], || {
        pair.holds_vip(1)
    });
    let handover = stopped.elapsed();
    eprintln!("clean stop: B took the VIP {handover:?} after A's SIGTERM");
    assert!(
        handover < MASTER_DOWN,
        "a resignation must not wait for Master_Down_Interval: {handover:?}\n{}",
        b.log()
    );
    assert_eq!(a.wait().code(), Some(0), "{}", a.log());
    until("B serves after A's stop", &[&b], || {
        pair.served_by().as_deref() == Ok("B")
    });
    assert!(!pair.holds_vip(0), "A left the VIP behind:\n{}", a.log());
    b.signal(libc::SIGTERM);
    assert_eq!(b.wait().code(), Some(0), "{}", b.log());
}

#[test]
fn reloads_and_restarts_of_the_master_never_fail_over() {
    if !runnable("reloads_and_restarts_of_the_master_never_fail_over") {
        return;
    }
    let pair = Pair::new();
    let (config_a, config_b) = (pair.config(0, 150), pair.config(1, 100));
    let mut b = pair.start(1, &config_b);
    let mut a = pair.start(0, &config_a);
    until("A is master", &[&a, &b], || {
        pair.holds_vip(0) && !pair.holds_vip(1) && pair.served_by().as_deref() == Ok("A")
    });
    let before = pair.status(1)["vrrp"]["transitions"].clone();
    // Every address change on B's eth0 while A restarts three times.
    let monitor_log = pair.dir.path().join("b-monitor.log");
    let mut monitor = pair
        .ns(1)
        .command("ip")
        .args(["-o", "monitor", "address", "dev", "eth0"])
        .stdout(fs::File::create(&monitor_log).expect("monitor log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("ip monitor");
    // Reloads: the speaker keeps advertising through each.
    for _ in 0..3 {
        a.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(700));
    }
    until("A logged three reloads", &[&a, &b], || {
        a.log().matches("configuration reloaded").count() == 3
    });
    std::thread::sleep(MASTER_DOWN);
    assert!(pair.holds_vip(0) && !pair.holds_vip(1), "{}", b.log());
    let restart_log = pair.dir.path().join("a-restarts.log");
    for round in 0..3 {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&restart_log)
            .expect("log");
        let status = pair
            .ns(0)
            .command(BIN)
            .args(["restart", "--config"])
            .arg(&config_a)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone"))
            .stderr(out)
            .status()
            .expect("restart");
        let text = fs::read_to_string(&restart_log).unwrap_or_default();
        assert!(status.success(), "restart {round}:\n{text}");
        if round == 0 {
            assert_eq!(a.wait().code(), Some(0), "{}", a.log());
        }
        // Longer than Master_Down_Interval: a failover would have happened by now.
        std::thread::sleep(MASTER_DOWN + Duration::from_millis(500));
        assert!(
            pair.holds_vip(0),
            "A lost the VIP in restart {round}:\n{text}"
        );
        assert!(
            !pair.holds_vip(1),
            "B took the VIP in restart {round}:\n{}",
            b.log()
        );
        assert_eq!(pair.served_by().as_deref(), Ok("A"), "restart {round}");
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    let changes = fs::read_to_string(&monitor_log).unwrap_or_default();
    assert!(
        !changes.contains(&VIP.to_string()),
        "B's eth0 saw the VIP during the reloads and restarts:\n{changes}"
    );
    let status = pair.status(1);
    assert_eq!(status["vrrp"]["state"], "backup", "{status:#}");
    assert_eq!(
        status["vrrp"]["transitions"], before,
        "B changed state: {status:#}"
    );
    b.signal(libc::SIGTERM);
    assert_eq!(b.wait().code(), Some(0), "{}", b.log());
    // The last A is an orphan of its `restart`; the namespace goes with the test, and a
    // SIGTERM to whatever serves A's admin listener stops it cleanly.
    let pid = pair.status(0)["pid"].as_i64().expect("A's pid");
    // SAFETY: kill(2) on the router the test started (through `restart`).
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    until("the last A exits", &[], || {
        // SAFETY: signal 0 only checks existence; a zombie counts as gone here.
        let gone = unsafe { libc::kill(pid as libc::pid_t, 0) } != 0;
        gone || fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
    });
}

#[test]
fn a_keep_alive_client_of_the_old_master_is_reset_and_reconnects_to_the_new_one() {
    if !runnable("a_keep_alive_client_of_the_old_master_is_reset") {
        return;
    }
    let pair = Pair::new();
    let (config_a, config_b) = (pair.config(0, 150), pair.config(1, 100));
    // B alone: master.
    let b = pair.start(1, &config_b);
    until("B is master", &[&b], || {
        pair.holds_vip(1) && pair.served_by().as_deref() == Ok("B")
    });
    // A keep-alive connection to B, idle after one request, its reader waiting.
    let addr = SocketAddr::from((VIP, COMPUTE));
    let mut conn = pair
        .client()
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .expect("connect");
    conn.write_all(b"GET /v2.1/servers HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    conn.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf).expect("response");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("backend: B"));
    let reader = std::thread::spawn(move || {
        let outcome = conn.read(&mut buf);
        (Instant::now(), outcome.map_err(|e| e.kind()))
    });

    // A joins with a higher priority and preempts: B releases the VIP.
    let a = pair.start(0, &config_a);
    let mut moved = None;
    until("A takes the VIP", &[&a, &b], || {
        let now = Instant::now();
        let done = pair.holds_vip(0) && !pair.holds_vip(1);
        if done {
            moved = Some(now);
        }
        done
    });
    let (ended, outcome) = reader.join().expect("reader");
    let moved = moved.expect("moment of the move");
    let after = ended.saturating_duration_since(moved);
    eprintln!("keep-alive client of B: {outcome:?}, {after:?} after the VIP moved");
    assert_eq!(outcome, Err(io::ErrorKind::ConnectionReset), "{}", b.log());
    assert!(
        ended < moved + Duration::from_secs(1),
        "the reset came {after:?} after the move"
    );
    until("the client reconnects to A", &[&a, &b], || {
        pair.served_by().as_deref() == Ok("A")
    });
}

/// Every VRRP advert on the bridge, captured by tcpdump from start to [`Wire::masters`].
struct Wire {
    child: Child,
    out: PathBuf,
}

impl Wire {
    fn capture(segment: &Segment, dir: &Path) -> Wire {
        let out = dir.join("vrrp.pcap.txt");
        let child = segment
            .bridge
            .command("tcpdump")
            // The client's port: the bridge floods every advert out of it, once.
            .args([
                "-i",
                "port2",
                "-n",
                "-l",
                "--immediate-mode",
                "-tt",
                "ip",
                "proto",
                "112",
            ])
            .stdout(fs::File::create(&out).expect("capture file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump");
        // tcpdump needs a moment to open the interface; adverts before that are not needed.
        std::thread::sleep(Duration::from_millis(500));
        Wire { child, out }
    }

    /// Stops the capture; returns (time, source, priority) of every advert.
    fn adverts(mut self) -> Vec<(f64, String, u8)> {
        // SIGINT makes tcpdump flush what it has.
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let _ = self.child.wait();
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                // 1795913426.123456 IP 10.55.0.1 > 224.0.0.18: VRRPv2, Advertisement, vrid 51, prio 150, …
                let mut words = line.split_whitespace();
                let at = words.next()?.parse().ok()?;
                let source = words.nth(1)?.to_owned();
                let prio = line
                    .split("prio ")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .trim()
                    .parse()
                    .ok()?;
                Some((at, source, prio))
            })
            .collect()
    }
}

/// The longest time two sources both advertised as master (priority above 0, adverts no
/// more than 1.5 intervals apart): how long the link had two masters at once.
fn longest_double_master(adverts: &[(f64, String, u8)]) -> f64 {
    // Each source's spells of mastership, as (first advert, last advert).
    let mut spells: std::collections::BTreeMap<&str, Vec<(f64, f64)>> = Default::default();
    for (at, source, prio) in adverts {
        let runs = spells.entry(source.as_str()).or_default();
        match runs.last_mut() {
            Some(run) if *prio > 0 && at - run.1 <= 1.5 => run.1 = *at,
            _ if *prio > 0 => runs.push((*at, *at)),
            _ => {}
        }
    }
    let sources: Vec<_> = spells.values().collect();
    let mut longest: f64 = 0.0;
    for (i, a) in sources.iter().enumerate() {
        for b in &sources[i + 1..] {
            for x in a.iter() {
                for y in b.iter() {
                    longest = longest.max(x.1.min(y.1) - x.0.max(y.0));
                }
            }
        }
    }
    longest
}

/// Kolla's keepalived instance for the VIP (vrid 51, 1 s), at `priority`, VRRP `version`
/// (v2 with `auth_type PASS`).
fn kolla_keepalived(priority: u8, version: u8) -> String {
    let auth = if version == 2 {
        "    authentication {\n        auth_type PASS\n        auth_pass kolla-vrrp-secret\n    }\n"
    } else {
        ""
    };
    format!(
        "global_defs {{\n    router_id kolla-node-a\n    vrrp_version {version}\n}}\n\
         vrrp_instance kolla_internal_vip_51 {{\n    state BACKUP\n    interface eth0\n    \
         virtual_router_id 51\n    priority {priority}\n    advert_int 1\n{auth}    \
         virtual_ipaddress {{\n        {VIP}/32 dev eth0\n    }}\n}}\n"
    )
}

/// keepalived on node A and scope-router on node B share VRID 51 with VRRP `version`:
/// keepalived master and scope-router backup, then scope-router taking over when
/// keepalived dies; then the reverse.
fn keepalived_interop(test: &str, version: u8) {
    if !runnable(test)
        || !test_support::tool::installed(
            test,
            "keepalived",
            "install Debian's keepalived (`cargo xtask setup` does)",
        )
    {
        return;
    }
    let pair = Pair::new();
    let config_b = pair.config(1, 100);
    if version == 3 {
        let text = fs::read_to_string(&config_b).expect("config");
        let text = text.replace("auth_pass = \"kolla-vrrp-secret\"\n", "version = 3\n");
        fs::write(&config_b, text).expect("config");
    }
    let dir = pair.dir.path().join("keepalived");
    let wire = Wire::capture(&pair.segment, pair.dir.path());

    // keepalived (150) masters; scope-router (100) agrees and stays backup.
    let mut keepalived = Keepalived::start(pair.ns(0), &dir, &kolla_keepalived(150, version));
    let mut b = pair.start(1, &config_b);
    until(
        "keepalived is master and scope-router backup",
        &[&b],
        || {
            let s = pair.status(1);
            pair.holds_vip(0)
                && !pair.holds_vip(1)
                && s["vrrp"]["state"] == "backup"
                && s["vrrp"]["master"] == "10.55.0.1"
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        pair.holds_vip(0) && !pair.holds_vip(1),
        "they disagree:\n{}\n{}",
        keepalived.log(),
        b.log()
    );
    let refused = &pair.status(1)["vrrp"]["refused"];
    assert!(
        refused
            .as_object()
            .is_some_and(|r| r.values().all(|n| n == 0)),
        "keepalived's adverts were refused: {refused}"
    );

    // keepalived dies: scope-router takes over within Master_Down_Interval.
    keepalived.kill();
    let took = until("scope-router takes over from keepalived", &[&b], || {
        pair.served_by().as_deref() == Ok("B")
    });
    eprintln!("VRRPv{version}: scope-router served {took:?} after keepalived died");
    assert!(took < MASTER_DOWN + Duration::from_millis(1500), "{took:?}");
    // The crashed keepalived left its VIP behind, as a crash does.
    pair.ns(0)
        .ip(&["addr", "del", &format!("{VIP}/32"), "dev", "eth0"])
        .expect("remove keepalived's leftover VIP");

    // The reverse: keepalived (50) joins as backup and agrees; scope-router dies and
    // keepalived takes over.
    let keepalived = Keepalived::start(pair.ns(0), &dir, &kolla_keepalived(50, version));
    until("keepalived settles as backup", &[&b], || {
        keepalived.log().contains("Entering BACKUP STATE")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        pair.holds_vip(1) && !pair.holds_vip(0),
        "they disagree:\n{}\n{}",
        keepalived.log(),
        b.log()
    );
    b.signal(libc::SIGKILL);
    b.wait();
    let took = until("keepalived takes over from scope-router", &[], || {
        pair.holds_vip(0)
    });
    eprintln!("VRRPv{version}: keepalived took the VIP {took:?} after scope-router died");
    // keepalived's own Master_Down_Interval at priority 50: 3 s + 206/256 s.
    assert!(took < Duration::from_millis(3805 + 1500), "{took:?}");
    assert!(
        keepalived.log().contains("Entering MASTER STATE"),
        "{}",
        keepalived.log()
    );
    // On the wire: both spoke (each was master once), and never two masters at once for
    // longer than one advert interval.
    let adverts = wire.adverts();
    let sources: std::collections::BTreeSet<_> = adverts.iter().map(|a| a.1.as_str()).collect();
    assert!(
        sources.contains("10.55.0.1") && sources.contains("10.55.0.2"),
        "{adverts:?}"
    );
    let double = longest_double_master(&adverts);
    eprintln!(
        "VRRPv{version}: {} adverts captured; longest double master {double:.3} s",
        adverts.len()
    );
    assert!(double <= 1.0, "two masters for {double:.3} s: {adverts:?}");
}

#[test]
fn keepalived_v2_with_a_password_and_scope_router_take_over_from_each_other() {
    keepalived_interop("keepalived_v2_interop", 2);
}

#[test]
fn keepalived_v3_and_scope_router_take_over_from_each_other() {
    keepalived_interop("keepalived_v3_interop", 3);
}
