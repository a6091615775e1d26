//! End to end, as an operator runs it: the real `scope-router` binary started with
//! `nsenter --net=…` in a fresh router namespace (veth `eth2`), driven from a client
//! namespace, inspected with `scope-router status --json`, `ss` and `ip`, stopped with
//! SIGTERM/SIGINT/SIGKILL and restarted on the same pins; `auto` fallback, `required`
//! failures, a duplicate instance, the deny list, draining, and two regions forwarding.
//!
//! Lives in router-userspace (not the tests crate) so that cargo builds the binary under
//! test for this target and `CARGO_BIN_EXE_scope-router` always names a fresh one. The
//! namespace guard is test-support's, as in the tests crate's privileged suites.
//! `cargo xtask test` runs this file as root with the other `privileged_*` suites.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::netns::{self, Lab, Netns, PinDir};

const BIN: &str = env!("CARGO_BIN_EXE_scope-router");

/// Fixed ports are fine here: they only exist on a VIP inside this test's namespaces.
const IDENTITY: u16 = 5000;
const IDENTITY_ADMIN: u16 = 35357;
const COMPUTE: u16 = 8774;
const MARIADB: u16 = 3306;
/// A VIP port nothing serves: XDP must drop it.
const UNSERVED: u16 = 9999;

/// The bound on every wait for the router (start, readiness, exit).
const PATIENCE: Duration = Duration::from_secs(30);
/// A connection that should succeed: generous, so a loaded machine never fails it.
const CONNECT: Duration = Duration::from_secs(10);
/// How long a connection that XDP should drop is given before it counts as dropped (a
/// served or unfiltered port answers a SYN on a veth at once, with SYN-ACK or RST).
const DROP_PROBE: Duration = Duration::from_millis(1500);

// ---------------------------------------------------------------- backends

/// A thread serving a listener bound on 127.0.0.1:0 inside a namespace: `http` answers
/// every request with `backend: NAME` and its own head as the body (so the test sees
/// what the router forwarded), otherwise bytes are echoed back. Stopped and joined on
/// drop.
struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Requests whose path contains `/hold` wait here until released.
    hold: Arc<Hold>,
    thread: Option<JoinHandle<()>>,
}

/// A gate for in-flight requests: the test sees them arrive and decides when they end.
#[derive(Default)]
struct Hold {
    arrived: AtomicUsize,
    released: AtomicBool,
}

impl Backend {
    /// `name` (HTTP only) is the body's first line, `backend: NAME`.
    fn start(ns: &Netns, http: Option<&'static str>) -> Backend {
        let listener = ns
            .run(|| TcpListener::bind("127.0.0.1:0"))
            .expect("bind the backend in the router namespace");
        let addr = listener.local_addr().expect("backend address");
        listener.set_nonblocking(true).expect("nonblocking backend");
        let stop = Arc::new(AtomicBool::new(false));
        let hold = Arc::new(Hold::default());
        let flag = stop.clone();
        let gate = hold.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let gate = gate.clone();
                        std::thread::spawn(move || {
                            let _ = match http {
                                Some(name) => answer_with_head(stream, name, &gate),
                                None => echo(stream),
                            };
                        });
                    }
                    // Polling keeps shutdown simple: the flag is seen within a tick.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => break,
                }
            }
        });
        Backend {
            addr,
            stop,
            hold,
            thread: Some(thread),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.hold.released.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer_with_head(mut stream: TcpStream, name: &str, hold: &Hold) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    if request_line.windows(5).any(|w| w == b"/hold") {
        hold.arrived.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + PATIENCE;
        while !hold.released.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let first = format!("backend: {name}\r\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{first}",
        first.len() + head.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.write_all(&head)
}

fn echo(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

// ---------------------------------------------------------------- the router process

/// `scope-router run` inside the router namespace; killed (SIGKILL) and reaped on drop
/// unless it was stopped cleanly first.
struct RouterProcess {
    child: Child,
    log: PathBuf,
}

impl RouterProcess {
    fn start(ns: &Netns, config: &Path, log: PathBuf) -> RouterProcess {
        let out = fs::File::create(&log).expect("create the router log");
        let err = out.try_clone().expect("clone the log handle");
        let child = ns
            .command(BIN)
            .args(["run", "--config"])
            .arg(config)
            // As the README tells operators, to see the kernel's drop lines.
            .env("RUST_LOG", "info,scope_router::xdp=debug")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn nsenter scope-router run");
        RouterProcess { child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the router has already exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll the router") {
            panic!("scope-router exited early ({status}):\n{}", self.log());
        }
    }

    /// Waits (bounded) for the process to exit on its own.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the router") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "scope-router still running after {PATIENCE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits (bounded) for the exit.
    fn terminate(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal`, then waits (bounded) for the exit.
    fn stop_with(&mut self, signal: libc::c_int) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid (nsenter exec'd scope-router in place).
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "send signal {signal}"
        );
        self.wait()
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------- one test's world

/// Namespaces, backends, pins, config and VIP state directory of one test. Field order is
/// drop order: backends stop, then pins go (detaching anything a panic left attached),
/// then the namespaces, then the files.
struct World {
    http: Backend,
    tcp: Backend,
    pins: PinDir,
    lab: Lab,
    vip: Ipv4Addr,
    dir: tempfile::TempDir,
}

/// One router's config.
struct RegionToml<'a> {
    region: &'a str,
    vip: Ipv4Addr,
    /// `[vip] interface`.
    interface: &'a str,
    /// The local backend of every scoped port.
    backend: SocketAddr,
    /// A `tcp` passthrough on VIP:3306 to this backend.
    passthrough: Option<SocketAddr>,
    pins: &'a Path,
    /// `[vip] state_dir`: the VIP's state file and owner lock.
    state_dir: &'a Path,
    ebpf: Ebpf<'a>,
}

/// The `[ebpf]` table of a test's config.
struct Ebpf<'a> {
    mode: &'a str,
    interface: &'a str,
    /// `deny` CIDRs.
    deny: &'a [&'a str],
}

impl World {
    /// RegionTwo's VIP (only the two-region test gives it a router).
    const VIP_TWO: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);

    /// Every test may use the same VIP: each has its own namespaces and its own
    /// `[vip] state_dir`, where the VIP's state file and owner lock live.
    fn new() -> World {
        let lab = Lab::new().expect("create router and client namespaces");
        World {
            http: Backend::start(&lab.router, Some("RegionOne")),
            tcp: Backend::start(&lab.router, None),
            pins: PinDir::new("srt-e2e"),
            lab,
            vip: Lab::VIP,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// RegionOne's `[vip] state_dir` (created by the router).
    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.vip, port))
    }

    /// Writes the catalog (fixture shape) and RegionOne's config; returns its path.
    fn write_config(&self, ebpf: Ebpf<'_>) -> PathBuf {
        self.write_catalog();
        self.write_region(&RegionToml {
            region: "RegionOne",
            vip: self.vip,
            interface: "eth2",
            backend: self.http.addr,
            passthrough: Some(self.tcp.addr),
            pins: self.pins.path(),
            state_dir: &self.state_dir(),
            ebpf,
        })
    }

    /// Both regions' endpoint lists. RegionTwo's frontend is [`World::VIP_TWO`]: only
    /// the two-region test runs a router there.
    fn write_catalog(&self) {
        let entry = |region: &str, service: &str, interface: &str, url: String| serde_json::json!({"Region": region, "Service Type": service, "Interface": interface, "URL": url});
        for (region, vip) in [("RegionOne", self.vip), ("RegionTwo", World::VIP_TWO)] {
            let mut entries = Vec::new();
            for interface in ["public", "internal"] {
                entries.push(entry(
                    region,
                    "identity",
                    interface,
                    format!("http://{vip}:{IDENTITY}"),
                ));
            }
            entries.push(entry(
                region,
                "identity",
                "admin",
                format!("http://{vip}:{IDENTITY_ADMIN}"),
            ));
            for interface in ["public", "internal", "admin"] {
                entries.push(entry(
                    region,
                    "compute",
                    interface,
                    format!("http://{vip}:{COMPUTE}/v2.1/%(tenant_id)s"),
                ));
            }
            fs::write(
                self.dir.path().join(format!("endpoint-list-{region}.json")),
                serde_json::to_string_pretty(&entries).expect("catalog JSON"),
            )
            .expect("write catalog");
        }
    }

    /// Writes `<region>.toml` next to the catalog; returns its path.
    fn write_region(&self, r: &RegionToml<'_>) -> PathBuf {
        self.write_region_as(r, &format!("{}.toml", r.region))
    }

    /// Writes `r` to `file` next to the catalog; returns its path.
    fn write_region_as(&self, r: &RegionToml<'_>, file: &str) -> PathBuf {
        let passthrough = r.passthrough.map_or(String::new(), |tcp| {
            format!(
                "\n[[passthrough]]\nname = \"mariadb\"\nbind = \"{}:{MARIADB}\"\nbackend = \"{tcp}\"\nmode = \"tcp\"\n",
                r.vip
            )
        });
        let toml = format!(
            r#"region = "{region}"
catalog = ["endpoint-list-RegionOne.json", "endpoint-list-RegionTwo.json"]
backend = "127.0.0.1"

[proxy]
shutdown_grace = "5s"

[ports.{IDENTITY}]
backend = "{backend}"

[ports.{IDENTITY_ADMIN}]
backend = "{backend}"

[ports.{COMPUTE}]
backend = "{backend}"

[vip]
address = "{vip}"
interface = "{vip_interface}"
garp_count = 1
state_dir = "{state_dir}"

[ebpf]
mode = "{mode}"
pin_path = "{pins}"
interface = "{interface}"
deny = {deny:?}
{passthrough}"#,
            region = r.region,
            backend = r.backend,
            vip = r.vip,
            vip_interface = r.interface,
            mode = r.ebpf.mode,
            interface = r.ebpf.interface,
            deny = r.ebpf.deny,
            pins = r.pins.display(),
            state_dir = r.state_dir.display(),
        );
        let path = self.dir.path().join(file);
        fs::write(&path, toml).expect("write config");
        path
    }

    fn start(&self, config: &Path, log_name: &str) -> RouterProcess {
        RouterProcess::start(&self.lab.router, config, self.dir.path().join(log_name))
    }

    /// A request from the client namespace; the whole response as text.
    fn request(&self, port: u16, path: &str, headers: &[(&str, &str)]) -> io::Result<String> {
        self.request_from(&self.lab.client, port, path, headers)
    }

    /// A request to `addr` from namespace `ns`.
    fn request_to(
        &self,
        ns: &Netns,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<String> {
        let mut text = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        ns.run(move || {
            let mut stream = TcpStream::connect_timeout(&addr, CONNECT)?;
            stream.set_read_timeout(Some(PATIENCE))?;
            stream.write_all(text.as_bytes())?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })
    }

    /// A request to the VIP from namespace `ns`.
    fn request_from(
        &self,
        ns: &Netns,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<String> {
        self.request_to(ns, self.addr(port), path, headers)
    }

    /// Polls (bounded) until a compute request goes through the router.
    fn wait_ready(&self, router: &mut RouterProcess) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            router.assert_running();
            if let Ok(response) = self.request(COMPUTE, "/v2.1/servers", &[])
                && response.starts_with("HTTP/1.1 200")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "scope-router not serving {} after {PATIENCE:?}:\n{}",
                self.addr(COMPUTE),
                router.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `scope-router status --config … --json`, a separate process in the router netns.
    fn status(&self, config: &Path) -> Value {
        let out = self.in_router_ns(BIN, &["status", "--json", "--config"], Some(config));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json printed no JSON ({e}); stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    fn in_router_ns(&self, program: &str, args: &[&str], path: Option<&Path>) -> Output {
        let mut cmd = self.lab.router.command(program);
        cmd.args(args);
        if let Some(path) = path {
            cmd.arg(path);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("nsenter {program}: {e}"))
    }

    /// Local addresses of listening TCP sockets in the router namespace (`ss -Hltn`).
    fn listening(&self) -> Vec<String> {
        let out = self.in_router_ns("ss", &["-Hltn"], None);
        assert!(out.status.success(), "ss failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().nth(3).map(str::to_owned))
            .collect()
    }

    fn ip_router(&self, args: &[&str]) -> String {
        self.lab
            .router
            .ip(args)
            .expect("ip in the router namespace")
    }

    fn vip_on_eth2(&self) -> bool {
        let shown = self.ip_router(&["-4", "addr", "show", "dev", "eth2"]);
        shown.contains(&format!("inet {}/32", self.vip))
    }

    fn xdp_on_eth2(&self) -> bool {
        self.ip_router(&["link", "show", "dev", "eth2"])
            .contains("xdp")
    }

    /// A connection attempt to VIP:`port` from the client namespace that XDP is
    /// expected to drop (bounded by [`DROP_PROBE`]).
    fn probe(&self, port: u16) -> io::Result<TcpStream> {
        let addr = self.addr(port);
        self.lab
            .client
            .run(move || TcpStream::connect_timeout(&addr, DROP_PROBE))
    }
}

/// Polls `check` until it holds; panics naming `what` (and the router log) after
/// [`PATIENCE`].
fn eventually(what: &str, router: &mut RouterProcess, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        router.assert_running();
        if check() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}:\n{}",
            router.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------- status JSON

/// (packets, syns, drops) of the counter row for `vip:port` (`None`: "other").
fn counters(status: &Value, vip: Ipv4Addr, port: Option<u16>) -> (u64, u64, u64) {
    let rows = status["kernel"]["counters"]
        .as_array()
        .unwrap_or_else(|| panic!("no kernel counters in status: {status:#}"));
    let want_port = port.map_or(Value::Null, Value::from);
    let row = rows
        .iter()
        .find(|r| r["vip"] == vip.to_string().as_str() && r["port"] == want_port)
        .unwrap_or_else(|| panic!("no counter row for {vip}:{port:?} in {status:#}"));
    let n = |k: &str| row[k].as_u64().unwrap_or_else(|| panic!("{k} in {row}"));
    (n("packets"), n("syns"), n("drops"))
}

fn row_kind(status: &Value, vip: Ipv4Addr, port: u16) -> String {
    status["kernel"]["counters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["vip"] == vip.to_string().as_str() && r["port"] == port)
        .map(|r| r["kind"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// `attached` of both programs, in the order (sk_lookup, xdp).
fn attached(status: &Value) -> (bool, bool) {
    let programs = status["kernel"]["programs"]
        .as_array()
        .unwrap_or_else(|| panic!("no programs in status: {status:#}"));
    let of = |kind: &str| {
        programs
            .iter()
            .find(|p| p["kind"] == kind)
            .and_then(|p| p["attached"].as_bool())
            .unwrap_or_else(|| panic!("no {kind} program in {status:#}"))
    };
    (of("sk_lookup"), of("xdp"))
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    // The body is the head the backend received; headers are matched case-insensitively.
    let body = response.split_once("\r\n\r\n")?.1;
    body.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

// ---------------------------------------------------------------- tests

/// Root and namespaces (the shared guard), and a binary with its eBPF object: every test
/// here depends on which eBPF piece is missing, so one built without it cannot run them.
/// Prints why and returns `false`; fails instead under `CI=true`.
fn runnable(test: &str) -> bool {
    if !netns::privileged(test) {
        return false;
    }
    if !scope_router::ebpf::object_built() {
        return netns::skip(
            test,
            "scope-router built without its eBPF object (run `cargo xtask setup`)",
        );
    }
    true
}

#[test]
fn required_mode_steers_counts_stops_cleanly_and_restarts_on_the_same_pins() {
    if !runnable("required_mode_steers_counts_stops_cleanly_and_restarts") {
        return;
    }
    let world = World::new();
    let vip = world.vip;
    let config = world.write_config(Ebpf {
        mode: "required",
        interface: "eth2",
        deny: &[],
    });
    let mut router = world.start(&config, "run-1.log");
    world.wait_ready(&mut router);

    // A scoped request: tokens cleaned, identity headers and Via/X-Forwarded-For added.
    let scope = r#"{"identity": "RegionOne"}"#;
    let auth = format!("admin-token!SCOPE!{scope}");
    let subject = format!("user-token!SCOPE!{scope}");
    let response = world
        .request(
            IDENTITY,
            "/v3/auth/tokens",
            &[("X-Auth-Token", &auth), ("X-Subject-Token", &subject)],
        )
        .expect("scoped identity request");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(header(&response, "x-auth-token"), Some("admin-token"));
    assert_eq!(header(&response, "x-subject-token"), Some("user-token"));
    assert_eq!(header(&response, "x-identity-region"), Some("RegionOne"));
    let admin_url = format!("http://{vip}:{IDENTITY_ADMIN}");
    assert_eq!(
        header(&response, "x-identity-url"),
        Some(admin_url.as_str())
    );
    let via = header(&response, "via").unwrap_or_default();
    assert!(via.contains("scope-router-RegionOne"), "{response}");
    let xff = header(&response, "x-forwarded-for").unwrap_or_default();
    assert!(xff.contains(&Lab::CLIENT.to_string()), "{response}");

    // Passthrough TCP on the same VIP.
    let mariadb = world.addr(MARIADB);
    let echoed = world.lab.client.run(move || -> io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect_timeout(&mariadb, CONNECT)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        stream.write_all(b"ping over passthrough")?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut back = Vec::new();
        stream.read_to_end(&mut back)?;
        Ok(back)
    });
    assert_eq!(echoed.expect("passthrough echo"), b"ping over passthrough");

    // An unserved VIP port is dropped by XDP: no RST, the connect times out.
    let err = world
        .probe(UNSERVED)
        .expect_err("nothing may accept an unserved VIP port");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");

    // No socket is bound on a steered VIP port; the passthrough one is bound directly.
    let listening = world.listening();
    for port in [IDENTITY, IDENTITY_ADMIN, COMPUTE] {
        assert!(
            !listening.iter().any(|l| l.ends_with(&format!(":{port}"))),
            "a socket is bound on steered port {port}: {listening:?}"
        );
    }
    assert!(
        listening.contains(&format!("{vip}:{MARIADB}")),
        "passthrough not bound: {listening:?}"
    );

    // status, a separate process: VIP present, programs attached, counters increasing.
    let before = world.status(&config);
    assert_eq!(attached(&before), (true, true), "{before:#}");
    assert_eq!(before["vip"]["present"], true, "{before:#}");
    assert_eq!(row_kind(&before, vip, COMPUTE), "steered", "{before:#}");
    assert_eq!(row_kind(&before, vip, MARIADB), "passthrough", "{before:#}");
    let (compute_packets, compute_syns, _) = counters(&before, vip, Some(COMPUTE));
    assert!(compute_syns >= 1, "{before:#}");
    let (_, _, other_drops) = counters(&before, vip, None);
    assert!(
        other_drops >= 1,
        "the dropped SYN is not counted: {before:#}"
    );
    assert!(world.xdp_on_eth2());
    for _ in 0..3 {
        let response = world
            .request(
                COMPUTE,
                "/v2.1/servers",
                &[("X-Scope", r#"{"compute": "RegionOne"}"#)],
            )
            .expect("compute request");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    let after = world.status(&config);
    let (packets, syns, _) = counters(&after, vip, Some(COMPUTE));
    assert!(
        packets > compute_packets && syns >= compute_syns + 3,
        "counters did not follow the traffic: {before:#} then {after:#}"
    );

    // Something removes the VIP (keepalived did): the router puts it back.
    world.ip_router(&["addr", "del", &format!("{vip}/32"), "dev", "eth2"]);
    eventually("VIP re-added on eth2", &mut router, || world.vip_on_eth2());
    eventually("status counts the re-add", &mut router, || {
        world.status(&config)["vip"]["readded"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    });

    // SIGTERM: exit 0, VIP gone, programs detached, counters still readable.
    let exit = router.terminate();
    assert_eq!(exit.code(), Some(0), "{}", router.log());
    assert!(!world.vip_on_eth2(), "VIP left on eth2");
    assert!(!world.xdp_on_eth2(), "XDP left on eth2");
    let stopped = world.status(&config);
    assert_eq!(attached(&stopped), (false, false), "{stopped:#}");
    assert_eq!(stopped["vip"]["present"], false, "{stopped:#}");
    let identity_at_stop = counters(&stopped, vip, Some(IDENTITY));
    let compute_at_stop = counters(&stopped, vip, Some(COMPUTE));
    assert!(compute_at_stop.0 >= packets, "{stopped:#}");

    // Restart on the same pins: counters continue. Nothing is sent to the identity port
    // any more, so its row must read exactly what it read at the stop.
    let mut router = world.start(&config, "run-2.log");
    world.wait_ready(&mut router);
    let restarted = world.status(&config);
    assert_eq!(attached(&restarted), (true, true), "{restarted:#}");
    assert_eq!(
        counters(&restarted, vip, Some(IDENTITY)),
        identity_at_stop,
        "identity counters were reset: {restarted:#}"
    );
    let compute_now = counters(&restarted, vip, Some(COMPUTE));
    assert!(
        compute_now.0 > compute_at_stop.0 && compute_now.1 > compute_at_stop.1,
        "compute counters did not continue: {stopped:#} then {restarted:#}"
    );
    let exit = router.terminate();
    assert_eq!(exit.code(), Some(0), "{}", router.log());
}

#[test]
fn auto_mode_falls_back_to_direct_binds_when_ebpf_cannot_load() {
    if !runnable("auto_mode_falls_back_to_direct_binds") {
        return;
    }
    let world = World::new();
    let vip = world.vip;
    let config = world.write_config(Ebpf {
        mode: "auto",
        interface: "nope0",
        deny: &[],
    });
    let mut router = world.start(&config, "run.log");
    world.wait_ready(&mut router);

    let response = world
        .request(
            COMPUTE,
            "/v2.1/servers",
            &[("X-Scope", r#"{"compute": "RegionOne"}"#)],
        )
        .expect("compute request");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        header(&response, "via").is_some_and(|v| v.contains("scope-router-RegionOne")),
        "{response}"
    );

    // Exactly one line mentions eBPF at all, and it says why, naming the interface.
    let log = router.log();
    let why: Vec<&str> = log
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("ebpf"))
        .collect();
    assert_eq!(why.len(), 1, "{log}");
    assert!(
        why[0].contains("unavailable") && why[0].contains("nope0"),
        "{log}"
    );

    // Direct binds on the VIP ports, nothing attached.
    let listening = world.listening();
    for port in [IDENTITY, IDENTITY_ADMIN, COMPUTE, MARIADB] {
        assert!(
            listening.contains(&format!("{vip}:{port}")),
            "{vip}:{port} not bound directly: {listening:?}"
        );
    }
    assert!(!world.xdp_on_eth2());
    assert!(!world.pins.path().exists(), "fallback left eBPF state");
    let status = world.status(&config);
    let why = status["kernel"]["error"].as_str().unwrap_or_default();
    assert!(why.contains("no eBPF state"), "{status:#}");
    assert_eq!(status["vip"]["present"], true, "{status:#}");

    // Ctrl-C in a terminal is as clean as SIGTERM from systemd.
    let exit = router.stop_with(libc::SIGINT);
    assert_eq!(exit.code(), Some(0), "{}", router.log());
    assert!(!world.vip_on_eth2(), "VIP left on eth2");
}

#[test]
fn required_mode_without_its_interface_exits_naming_it() {
    if !runnable("required_mode_without_its_interface_exits_naming_it") {
        return;
    }
    let world = World::new();
    let config = world.write_config(Ebpf {
        mode: "required",
        interface: "nope0",
        deny: &[],
    });
    let mut router = world.start(&config, "run.log");
    let exit = router.wait();
    let log = router.log();
    assert!(!exit.success(), "{log}");
    assert!(log.contains("nope0") && log.contains("required"), "{log}");
    assert!(!world.vip_on_eth2(), "VIP taken although the router failed");
    assert!(
        !world.pins.path().exists(),
        "a failed start left eBPF state"
    );
    assert!(!world.xdp_on_eth2());
    assert!(
        world.request(COMPUTE, "/", &[]).is_err(),
        "something serves the VIP"
    );
}

#[test]
fn deny_list_drops_a_client_source_and_status_counts_it() {
    if !runnable("deny_list_drops_a_client_source_and_status_counts_it") {
        return;
    }
    let world = World::new();
    let vip = world.vip;
    let client = format!("{}/32", Lab::CLIENT);
    let config = world.write_config(Ebpf {
        mode: "required",
        interface: "eth2",
        deny: &[&client],
    });
    let mut router = world.start(&config, "run.log");
    // The client is denied, so readiness is judged from the router's own namespace:
    // loopback traffic to the VIP is steered by sk_lookup but never crosses XDP on eth2.
    eventually("router serving inside its namespace", &mut router, || {
        world
            .request_from(&world.lab.router, COMPUTE, "/v2.1/servers", &[])
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    });
    eventually("VIP on eth2", &mut router, || world.vip_on_eth2());

    let err = world
        .probe(COMPUTE)
        .expect_err("a denied source must not reach the router");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");

    let status = world.status(&config);
    let deny = status["kernel"]["deny"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(deny.contains(&Value::from(client.as_str())), "{status:#}");
    let (_, syns, drops) = counters(&status, vip, Some(COMPUTE));
    assert!(
        syns >= 1 && drops >= 1,
        "denied SYN not counted: {status:#}"
    );
    // The same kernel counters on the admin listener (its default address, in the
    // router's namespace): in /metrics, and on the status page with the XDP program.
    let admin = SocketAddr::from(([127, 0, 0, 1], 9101));
    let metrics = world
        .request_to(&world.lab.router, admin, "/metrics", &[])
        .expect("GET /metrics");
    let series = format!(
        "scope_router_xdp_drops_total{{vip=\"{vip}\",port=\"{COMPUTE}\",kind=\"steered\"}} "
    );
    let scraped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{series}` in:\n{metrics}"));
    assert!(scraped >= drops, "{scraped} < {drops}:\n{metrics}");
    assert!(
        metrics.contains("scope_router_ebpf_attached{program=\"xdp\"} 1"),
        "{metrics}"
    );
    // With the XDP and VIP families in it, the exposition still parses.
    let body = metrics.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    test_support::tool::assert_promtool_accepts(
        "deny_list_drops_a_client_source_and_status_counts_it",
        body,
    );
    let page = world
        .request_to(&world.lab.router, admin, "/", &[])
        .expect("GET /");
    for needle in [
        "<td>XDP (guard)</td><td class=\"up\">attached</td>".to_owned(),
        "<table id=\"counters\">".to_owned(),
        format!("<tr><td>{vip}:{COMPUTE}</td><td>steered</td>"),
    ] {
        assert!(page.contains(&needle), "no `{needle}` on the page:\n{page}");
    }

    let exit = router.terminate();
    let log = router.log();
    assert_eq!(exit.code(), Some(0), "{log}");
    // The binary's own subscriber gets the kernel's drop line, and the object's BTF loaded.
    let line = format!(
        "scope_router::xdp: drop reason=denied_source src={} ",
        Lab::CLIENT
    );
    assert!(log.contains(&line), "no `{line}` in:\n{log}");
    assert!(!log.contains("BTF couldn't be loaded"), "{log}");
}

#[test]
fn restart_after_a_crash_takes_over_pins_and_vip() {
    if !runnable("restart_after_a_crash_takes_over_pins_and_vip") {
        return;
    }
    let world = World::new();
    let vip = world.vip;
    let config = world.write_config(Ebpf {
        mode: "required",
        interface: "eth2",
        deny: &[],
    });
    let mut router = world.start(&config, "run-1.log");
    world.wait_ready(&mut router);
    let first_pid = router.child.id();

    // SIGKILL: no cleanup at all. The pinned links keep both programs attached and the
    // VIP stays on eth2.
    router.child.kill().expect("SIGKILL the router");
    router.child.wait().expect("reap the router");
    let crashed = world.status(&config);
    assert_eq!(attached(&crashed), (true, true), "{crashed:#}");
    assert!(world.vip_on_eth2());
    let at_crash = counters(&crashed, vip, Some(COMPUTE));

    let mut router = world.start(&config, "run-2.log");
    world.wait_ready(&mut router);
    let restarted = world.status(&config);
    assert_eq!(attached(&restarted), (true, true), "{restarted:#}");
    let pid = restarted["kernel"]["attached_by_pid"].as_u64();
    assert!(
        pid.is_some_and(|p| p != u64::from(first_pid)),
        "pins still name the crashed router: {restarted:#}"
    );
    let now = counters(&restarted, vip, Some(COMPUTE));
    assert!(now.0 > at_crash.0, "{crashed:#} then {restarted:#}");
    let response = world
        .request(IDENTITY, "/v3", &[])
        .expect("identity after the restart");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let exit = router.terminate();
    assert_eq!(exit.code(), Some(0), "{}", router.log());
    assert!(!world.vip_on_eth2(), "VIP left on eth2");
    assert!(!world.xdp_on_eth2(), "XDP left on eth2");
}

#[test]
fn two_regions_forward_a_scoped_request_between_real_routers() {
    if !runnable("two_regions_forward_a_scoped_request_between_real_routers") {
        return;
    }
    let world = World::new();
    let one = world.write_config(Ebpf {
        mode: "required",
        interface: "eth2",
        deny: &[],
    });
    // RegionTwo's router runs in the client namespace (its own `eth0` holds VIP_TWO):
    // RegionOne reaches it over the veth like another region's frontend.
    let two_backend = Backend::start(&world.lab.client, Some("RegionTwo"));
    let two_pins = PinDir::new("srt-e2e-two");
    let two = world.write_region(&RegionToml {
        region: "RegionTwo",
        vip: World::VIP_TWO,
        interface: "eth0",
        backend: two_backend.addr,
        passthrough: None,
        pins: two_pins.path(),
        state_dir: &world.dir.path().join("run-two"),
        ebpf: Ebpf {
            mode: "required",
            interface: "eth0",
            deny: &[],
        },
    });
    let mut router_two =
        RouterProcess::start(&world.lab.client, &two, world.dir.path().join("two.log"));
    let mut router_one = world.start(&one, "one.log");
    world.wait_ready(&mut router_one);
    let compute_two = SocketAddr::from((World::VIP_TWO, COMPUTE));
    eventually("RegionTwo serving", &mut router_two, || {
        world
            .request_to(&world.lab.router, compute_two, "/v2.1/servers", &[])
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    });

    let response = world
        .request(
            COMPUTE,
            "/v2.1/servers/detail?limit=1",
            &[("X-Scope", r#"{"compute": "RegionTwo"}"#)],
        )
        .expect("compute in RegionTwo through RegionOne");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(
        header(&response, "backend"),
        Some("RegionTwo"),
        "{response}"
    );
    assert_eq!(
        header(&response, "host"),
        Some(compute_two.to_string().as_str()),
        "{response}"
    );
    let via = header(&response, "via").unwrap_or_default();
    assert!(
        via.contains("scope-router-RegionOne") && via.contains("scope-router-RegionTwo"),
        "{response}"
    );
    let line = response
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| body.lines().nth(1))
        .unwrap_or_default();
    assert_eq!(
        line, "GET /v2.1/servers/detail?limit=1 HTTP/1.1",
        "{response}"
    );

    // A Via chain that already names RegionOne is a loop: 508 in OpenStack shape.
    let looped = world
        .request(
            COMPUTE,
            "/v2.1/servers",
            &[("Via", "1.1 scope-router-RegionOne")],
        )
        .expect("looped request answered");
    assert!(looped.starts_with("HTTP/1.1 508"), "{looped}");
    assert!(
        looped.contains(r#""code": 508"#) || looped.contains(r#""code":508"#),
        "{looped}"
    );

    for (name, router) in [
        ("RegionOne", &mut router_one),
        ("RegionTwo", &mut router_two),
    ] {
        let exit = router.terminate();
        assert_eq!(exit.code(), Some(0), "{name}:\n{}", router.log());
    }
}

#[test]
fn a_second_router_on_the_same_pins_refuses_and_leaves_the_first_serving() {
    if !runnable("a_second_router_on_the_same_pins_refuses_and_leaves_the_first_serving") {
        return;
    }
    let world = World::new();
    let config = world.write_config(Ebpf {
        mode: "required",
        interface: "eth2",
        deny: &[],
    });
    let mut first = world.start(&config, "first.log");
    world.wait_ready(&mut first);
    let first_pid = first.child.id();

    // An operator starts the same config again (a second unit, a forgotten shell), in
    // either mode: `auto` must not fall back to a competing router with direct binds.
    // Its own `[vip] state_dir` keeps the VIP lock from refusing it first (see
    // a_second_router_managing_the_same_vip_…): the pins alone must stop it.
    let other_state = world.dir.path().join("run-second");
    for mode in ["required", "auto"] {
        let again = world.write_region_as(
            &RegionToml {
                region: "RegionOne",
                vip: world.vip,
                interface: "eth2",
                backend: world.http.addr,
                passthrough: Some(world.tcp.addr),
                pins: world.pins.path(),
                state_dir: &other_state,
                ebpf: Ebpf {
                    mode,
                    interface: "eth2",
                    deny: &[],
                },
            },
            &format!("second-{mode}.toml"),
        );
        let mut second = world.start(&again, &format!("second-{mode}.log"));
        let exit = second.wait();
        let log = second.log();
        assert!(!exit.success(), "{mode}: a second router started:\n{log}");
        assert!(
            log.contains(&format!("pid {first_pid}")) && log.contains("still running"),
            "{mode}: the error must name the running router:\n{log}"
        );
        assert!(
            !log.contains("binding every VIP:port directly"),
            "{mode}: fell back beside a running router:\n{log}"
        );
    }

    // The first router still owns steering and the VIP.
    let status = world.status(&config);
    assert_eq!(attached(&status), (true, true), "{status:#}");
    assert_eq!(
        status["kernel"]["attached_by_pid"].as_u64(),
        Some(u64::from(first_pid)),
        "{status:#}"
    );
    // `status` names the lock's holder, and reading it left the lock where it was.
    assert_eq!(status["kernel"]["owned"], true, "{status:#}");
    assert_eq!(status["kernel"]["owner_pid"], first_pid, "{status:#}");
    world.wait_ready(&mut first);
    assert!(world.vip_on_eth2());
    let exit = first.terminate();
    assert_eq!(exit.code(), Some(0), "{}", first.log());
    let stopped = world.status(&config);
    assert_eq!(stopped["kernel"]["owned"], false, "{stopped:#}");
    assert_eq!(stopped["kernel"]["owner_pid"], Value::Null, "{stopped:#}");
}

#[test]
fn a_second_router_managing_the_same_vip_refuses_and_leaves_it_to_the_first() {
    if !runnable("a_second_router_managing_the_same_vip_refuses_and_leaves_it_to_the_first") {
        return;
    }
    let world = World::new();
    // The second router shares only the VIP (and its state_dir) with the first: no eBPF,
    // its own pins, no passthrough port. Nothing but the VIP lock can stop it, and
    // without it the second adopts the first one's VIP and removes it when it exits.
    let second_pins = PinDir::new("srt-e2e-second");
    let second_config = world.write_region_as(
        &RegionToml {
            region: "RegionOne",
            vip: world.vip,
            interface: "eth2",
            backend: world.http.addr,
            passthrough: None,
            pins: second_pins.path(),
            state_dir: &world.state_dir(),
            ebpf: Ebpf {
                mode: "off",
                interface: "eth2",
                deny: &[],
            },
        },
        "second.toml",
    );
    let config = world.write_config(Ebpf {
        mode: "required",
        interface: "eth2",
        deny: &[],
    });
    let mut first = world.start(&config, "first.log");
    world.wait_ready(&mut first);
    let first_pid = first.child.id();
    let lock = world.state_dir().join(format!("vip-{}.lock", world.vip));
    assert_eq!(
        fs::read_to_string(&lock).expect("the VIP lock file").trim(),
        first_pid.to_string()
    );

    let mut second = world.start(&second_config, "second.log");
    let exit = second.wait();
    let log = second.log();
    assert!(
        !exit.success(),
        "a second manager of the VIP started:\n{log}"
    );
    assert!(
        log.contains(&format!("pid {first_pid}")) && log.contains("already managed"),
        "the error must name the router that manages the VIP:\n{log}"
    );
    // It failed before binding: nothing but the first's passthrough is on the VIP.
    let listening = world.listening();
    let on_vip: Vec<&String> = listening
        .iter()
        .filter(|l| l.starts_with(&format!("{}:", world.vip)))
        .collect();
    assert_eq!(
        on_vip,
        [&format!("{}:{MARIADB}", world.vip)],
        "{listening:?}"
    );

    // The first still owns and serves the VIP, and `status` reads its state from the
    // configured state_dir.
    assert!(world.vip_on_eth2(), "the VIP went with the refused router");
    world.wait_ready(&mut first);
    let status = world.status(&config);
    assert_eq!(status["vip"]["present"], true, "{status:#}");
    assert_eq!(status["vip"]["managed"], true, "{status:#}");
    // The operator sees which process owns the VIP.
    assert_eq!(status["vip"]["owned"], true, "{status:#}");
    assert_eq!(status["vip"]["owner_pid"], first_pid, "{status:#}");
    assert!(
        status["vip"]["announcements"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{status:#}"
    );
    assert!(
        world
            .state_dir()
            .join(format!("vip-{}.json", world.vip))
            .exists()
    );
    let exit = first.terminate();
    assert_eq!(exit.code(), Some(0), "{}", first.log());
    assert!(!world.vip_on_eth2(), "VIP left on eth2");
    let status = world.status(&config);
    assert_eq!(status["vip"]["owned"], false, "{status:#}");
    assert_eq!(status["vip"]["owner_pid"], Value::Null, "{status:#}");

    // A clean exit frees the VIP: the other router may take it now.
    let mut second = world.start(&second_config, "second-again.log");
    world.wait_ready(&mut second);
    assert!(world.vip_on_eth2());
    let second_pid = second.child.id();
    assert_eq!(
        fs::read_to_string(&lock).expect("the VIP lock file").trim(),
        second_pid.to_string()
    );
    let exit = second.terminate();
    assert_eq!(exit.code(), Some(0), "{}", second.log());
    assert!(!world.vip_on_eth2(), "VIP left on eth2");
}

#[test]
fn sigterm_finishes_the_request_in_flight_before_releasing_the_vip() {
    if !runnable("sigterm_finishes_the_request_in_flight_before_releasing_the_vip") {
        return;
    }
    let world = World::new();
    let config = world.write_config(Ebpf {
        mode: "required",
        interface: "eth2",
        deny: &[],
    });
    let mut router = world.start(&config, "run.log");
    world.wait_ready(&mut router);

    std::thread::scope(|scope| {
        let in_flight = scope.spawn(|| world.request(COMPUTE, "/v2.1/hold", &[]));
        eventually("request reached the backend", &mut router, || {
            world.http.hold.arrived.load(Ordering::SeqCst) >= 1
        });
        let admin = SocketAddr::from(([127, 0, 0, 1], 9101));
        let healthz = world
            .request_to(&world.lab.router, admin, "/healthz", &[])
            .expect("GET /healthz while serving");
        assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
        let pid = libc::pid_t::try_from(router.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        eventually("router acknowledges SIGTERM", &mut router, || {
            router_log_has(&world, "received: no new connections")
        });
        // The listener is closed only once the accept loop has seen the drain signal:
        // probing before that line would race a SYN into the closing socket's backlog.
        eventually("router closes its listener", &mut router, || {
            router_log_has(&world, "stopped accepting: listener closed")
        });
        // Draining: still running, the VIP and the programs still in place.
        router.assert_running();
        // New connections are refused at once (the steered listener is closed), so
        // clients fail over instead of hanging in a backlog nobody accepts.
        let refused = world
            .probe(COMPUTE)
            .expect_err("a new connection while draining");
        assert_eq!(
            refused.kind(),
            io::ErrorKind::ConnectionRefused,
            "{refused}"
        );
        assert!(world.vip_on_eth2(), "VIP released before the last response");
        assert!(world.xdp_on_eth2(), "XDP detached before the last response");
        // The admin listener outlives the drain, and /healthz tells a health check or a
        // keepalived track script that this node is going away.
        let healthz = world
            .request_to(&world.lab.router, admin, "/healthz", &[])
            .expect("GET /healthz while draining");
        assert!(
            healthz.starts_with("HTTP/1.1 503") && healthz.contains("draining"),
            "{healthz}"
        );

        world.http.hold.released.store(true, Ordering::SeqCst);
        let response = in_flight
            .join()
            .expect("client thread")
            .expect("the in-flight request completes");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    });
    let exit = router.wait();
    assert_eq!(exit.code(), Some(0), "{}", router.log());
    assert!(!world.vip_on_eth2(), "VIP left on eth2");
    assert!(!world.xdp_on_eth2(), "XDP left on eth2");
}

fn router_log_has(world: &World, text: &str) -> bool {
    fs::read_to_string(world.dir.path().join("run.log")).is_ok_and(|log| log.contains(text))
}

/// `Name:\tvalue…` of a `/proc/<pid>[/task/<tid>]/status` file.
fn proc_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

#[test]
fn with_a_process_user_the_router_serves_unprivileged_and_still_re_adds_the_vip() {
    if !runnable("with_a_process_user_the_router_serves_unprivileged") {
        return;
    }
    let world = World::new();
    let config = world.write_config(Ebpf {
        mode: "required",
        interface: "eth2",
        deny: &[],
    });
    let mut text = fs::read_to_string(&config).expect("read the config");
    text.push_str("\n[process]\nuser = \"nobody\"\n");
    fs::write(&config, text).expect("write the config");
    let nobody = scope_router::process::lookup("nobody").expect("Debian has nobody");
    let mut router = world.start(&config, "run-unprivileged.log");
    world.wait_ready(&mut router);

    let pid = router.child.id();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let uid = proc_field(&status, "Uid");
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>(),
        vec![nobody.uid.to_string(); 4],
        "real, effective, saved and fs uid: {status}"
    );
    let kept = format!("{:016x}", scope_router::process::kept_mask());
    assert_eq!(proc_field(&status, "CapEff"), kept, "{status}");
    assert_eq!(proc_field(&status, "CapPrm"), kept, "{status}");
    // Every thread: none is root, none has more than the kept set.
    let mut threads = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let task = task.expect("task").path();
        let status = fs::read_to_string(task.join("status")).expect("task status");
        threads += 1;
        assert!(
            !proc_field(&status, "Uid")
                .split_whitespace()
                .any(|u| u == "0"),
            "a root thread: {status}"
        );
        let eff = u64::from_str_radix(&proc_field(&status, "CapEff"), 16).expect("hex");
        assert_eq!(eff & !scope_router::process::kept_mask(), 0, "{status}");
    }
    assert!(threads >= 1);

    // It serves, and what it still must do as root it can: put the VIP back.
    let response = world
        .request(
            COMPUTE,
            "/v2.1/servers",
            &[("X-Scope", r#"{"compute": "RegionOne"}"#)],
        )
        .expect("compute request");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let vip = world.vip;
    world.ip_router(&["addr", "del", &format!("{vip}/32"), "dev", "eth2"]);
    eventually(
        "VIP re-added on eth2 by the unprivileged router",
        &mut router,
        || world.vip_on_eth2(),
    );

    // A clean exit still releases the VIP and detaches the programs.
    let exit = router.terminate();
    assert_eq!(exit.code(), Some(0), "{}", router.log());
    assert!(!world.vip_on_eth2(), "VIP left on eth2: {}", router.log());
    assert!(!world.xdp_on_eth2(), "XDP left on eth2: {}", router.log());
    assert!(
        router.log().contains("running unprivileged"),
        "{}",
        router.log()
    );
}

/// Requests (one connection each, so every one is steered anew) counted by the client.
#[derive(Debug, Default)]
struct LoadCount {
    ok: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    last_failure: std::sync::Mutex<Option<String>>,
}

impl LoadCount {
    /// One client in the client namespace: `GET /v2.1/servers` on a new connection each
    /// time, written `pause` after connecting, until `stop` (or two minutes: bounded).
    fn drive(&self, world: &World, stop: &AtomicBool, pause: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let compute = world.addr(COMPUTE);
        world.lab.client.run(|| {
            let started = Instant::now();
            while !stop.load(Relaxed) && started.elapsed() < Duration::from_secs(120) {
                let outcome = (|| -> io::Result<String> {
                    let mut s = TcpStream::connect_timeout(&compute, CONNECT)?;
                    std::thread::sleep(pause);
                    s.set_read_timeout(Some(PATIENCE))?;
                    s.write_all(
                        b"GET /v2.1/servers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    )?;
                    let mut reply = String::new();
                    s.read_to_string(&mut reply)?;
                    Ok(reply)
                })();
                match outcome {
                    Ok(reply) if reply.starts_with("HTTP/1.1 200") => {
                        self.ok.fetch_add(1, Relaxed);
                    }
                    other => {
                        self.failed.fetch_add(1, Relaxed);
                        *self.last_failure.lock().expect("lock") = Some(format!(
                            "{other:?} (pause {pause:?}, at {:?})",
                            std::time::SystemTime::now()
                        ));
                    }
                }
            }
        });
    }
}

#[test]
fn reloads_under_load_fail_no_request_and_steer_added_and_removed_listeners() {
    if !runnable("reloads_under_load_fail_no_request") {
        return;
    }
    use std::sync::atomic::Ordering::Relaxed;
    const IMAGE: u16 = 9292;
    let world = World::new();
    let config = world.write_config(Ebpf {
        mode: "required",
        interface: "eth2",
        deny: &[],
    });
    let catalog = world.dir.path().join("endpoint-list-RegionOne.json");
    let base = fs::read_to_string(&catalog).expect("catalog");
    let mut entries: Vec<Value> = serde_json::from_str(&base).expect("catalog JSON");
    entries.push(
        serde_json::json!({"Region": "RegionOne", "Service Type": "image",
        "Interface": "public", "URL": format!("http://{}:{IMAGE}", world.vip)}),
    );
    let with_image = serde_json::to_string_pretty(&entries).expect("JSON");
    let good_config = fs::read_to_string(&config).expect("config");
    let mut router = world.start(&config, "run-reloads.log");
    world.wait_ready(&mut router);

    let count = LoadCount::default();
    let stop = AtomicBool::new(false);
    let log_path = router.log.clone();
    let reloads_seen = || {
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        log.matches("configuration reloaded").count() + log.matches("reload failed").count()
    };
    std::thread::scope(|scope| {
        // Steady load from the client namespace until told to stop (bounded anyway).
        scope.spawn(|| count.drive(&world, &stop, Duration::ZERO));
        let hup = |router: &mut RouterProcess, seen_before: usize| {
            let pid = libc::pid_t::try_from(router.child.id()).expect("pid");
            // SAFETY: kill(2) on our own child.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
            eventually("the reload is logged", router, || {
                reloads_seen() > seen_before
            });
        };
        for round in 0..10 {
            let seen = reloads_seen();
            if round == 5 {
                // An invalid config: nothing changes, the load goes on.
                fs::write(&config, "region = \"\"\n").expect("write");
                hup(&mut router, seen);
                assert!(router.log().contains("reload failed"), "{}", router.log());
                fs::write(&config, &good_config).expect("write");
                continue;
            }
            let add = round % 2 == 0;
            fs::write(&catalog, if add { &with_image } else { &base }).expect("write catalog");
            hup(&mut router, seen);
            assert!(
                world.vip_on_eth2(),
                "the VIP left eth2 during reload {round}"
            );
            if add {
                // The new listener is steered: the router answers (503: nothing serves
                // image behind it here), no timeout.
                let reply = world
                    .request(IMAGE, "/v2/images", &[])
                    .expect("image steered");
                assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
            } else {
                let err = world
                    .probe(IMAGE)
                    .expect_err("a removed listener is dropped");
                assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
            }
        }
        stop.store(true, Relaxed);
    });
    let ok = count.ok.load(Relaxed);
    let failed = count.failed.load(Relaxed);
    assert_eq!(
        failed,
        0,
        "{failed} failed of {}: last {:?}\n{}",
        ok + failed,
        count.last_failure.lock().expect("lock"),
        router.log()
    );
    eprintln!("{ok} requests through 10 reloads, none failed");
    assert!(ok >= 10, "too little load to mean anything: {ok}");
    assert!(world.vip_on_eth2());
    let exit = router.terminate();
    assert_eq!(exit.code(), Some(0), "{}", router.log());
}

/// Waits (bounded) for `pid`, a router that is not our child but an orphan re-parented
/// to this process (a child subreaper), to exit; returns its exit status.
fn reap(pid: libc::pid_t) -> libc::c_int {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) on a pid re-parented to us, with a valid status pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(rc >= 0, "waitpid {pid}: {}", io::Error::last_os_error());
        if rc == pid {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "router {pid} still running {PATIENCE:?} after its handover"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `scope-router restart` in the router namespace; returns the new router's pid.
fn restart(world: &World, config: &Path, log: &Path) -> libc::pid_t {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the restart log");
    // The new router inherits these: its log lands in the same file.
    let status = world
        .lab
        .router
        .command(BIN)
        .args(["restart", "--config"])
        .arg(config)
        .env("RUST_LOG", "info,scope_router::proxy=debug")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .status()
        .expect("run scope-router restart");
    let text = fs::read_to_string(log).unwrap_or_default();
    assert!(status.success(), "restart failed ({status}):\n{text}");
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with("restarted: "))
        .unwrap_or_else(|| panic!("no `restarted:` line:\n{text}"));
    line.split("handed over to pid ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in `{line}`"))
}

#[test]
fn restarts_under_load_refuse_no_connection_keep_the_vip_and_drain_the_old_router() {
    if !runnable("restarts_under_load_refuse_no_connection") {
        return;
    }
    use std::sync::atomic::Ordering::Relaxed;
    // Orphaned old routers (their parent, `restart`, exits first) come back to us.
    // SAFETY: prctl with plain integer arguments.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let world = World::new();
    let config = world.write_config(Ebpf {
        mode: "required",
        interface: "eth2",
        deny: &[],
    });
    let mut first = world.start(&config, "run-restarts.log");
    world.wait_ready(&mut first);
    let restart_log = world.dir.path().join("restarts.log");

    // Every change of eth2's addresses, from before the first restart to after the last.
    let monitor_log = world.dir.path().join("ip-monitor.log");
    let mut monitor = world
        .lab
        .router
        .command("ip")
        .args(["-o", "monitor", "address", "dev", "eth2"])
        .stdout(fs::File::create(&monitor_log).expect("monitor log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("ip monitor");

    // A request the first router is serving when the restart comes: it must finish.
    let in_flight = {
        let addr = world.addr(COMPUTE);
        world.lab.client.spawn(move || -> io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, CONNECT)?;
            s.set_read_timeout(Some(PATIENCE))?;
            s.write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok(reply)
        })
    };
    let deadline = Instant::now() + PATIENCE;
    while world.http.hold.arrived.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the held request never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }

    let count = LoadCount::default();
    let stop = AtomicBool::new(false);
    let mut pids = vec![libc::pid_t::try_from(first.child.id()).expect("pid")];
    std::thread::scope(|scope| {
        // Two clients, so that connections arrive while others are being accepted; the
        // second writes its request 20 ms after connecting, so that the old router has
        // accepted connections whose request is not there yet when it stops accepting.
        for pause in [Duration::ZERO, Duration::from_millis(20)] {
            let (count, stop, world) = (&count, &stop, &world);
            scope.spawn(move || count.drive(world, stop, pause));
        }
        for round in 0..4 {
            // Load flows through the router about to be replaced (round 3: the last one).
            let before = count.ok.load(Relaxed);
            let deadline = Instant::now() + PATIENCE;
            while count.ok.load(Relaxed) < before + 300 {
                assert!(Instant::now() < deadline, "no load before restart {round}");
                std::thread::sleep(Duration::from_millis(10));
            }
            if round == 3 {
                break;
            }
            let new = restart(&world, &config, &restart_log);
            assert_ne!(
                Some(&new),
                pids.last(),
                "restart {round} kept the same process"
            );
            if round == 0 {
                // The held request still runs in the first router, which drains it.
                world.http.hold.released.store(true, Ordering::SeqCst);
                let exit = first.wait();
                assert_eq!(exit.code(), Some(0), "{}", first.log());
            } else {
                let status = reap(*pids.last().expect("an old pid"));
                assert!(
                    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                    "old router {} exited with status {status}",
                    pids.last().expect("pid")
                );
            }
            pids.push(new);
            assert!(world.vip_on_eth2(), "VIP gone after restart {round}");
            assert!(world.xdp_on_eth2(), "XDP detached after restart {round}");
        }
        stop.store(true, Relaxed);
    });
    let reply = in_flight
        .join()
        .expect("in-flight thread")
        .expect("the request in flight at the first restart completes");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    let ok = count.ok.load(Relaxed);
    let failed = count.failed.load(Relaxed);
    let restarts = fs::read_to_string(&restart_log).unwrap_or_default();
    assert_eq!(
        failed,
        0,
        "{failed} failed of {}: last {:?}\n{}\n{restarts}",
        ok + failed,
        count.last_failure.lock().expect("lock"),
        first.log()
    );
    eprintln!("{ok} requests through 3 restarts, none failed");

    // The VIP was never removed, not even for an instant.
    let _ = monitor.kill();
    let _ = monitor.wait();
    let changes = fs::read_to_string(&monitor_log).unwrap_or_default();
    assert!(
        !changes.lines().any(|l| l.starts_with("Deleted")),
        "an address left eth2 during the restarts:\n{changes}"
    );

    // The last router owns everything: the VIP lock names it, and a stop releases all.
    let last = *pids.last().expect("last pid");
    let status = world.status(&config);
    assert_eq!(status["vip"]["owner_pid"], Value::from(last), "{status:#}");
    assert_eq!(status["pid"], Value::from(last), "{status:#}");
    assert_eq!(attached(&status), (true, true), "{status:#}");
    // SAFETY: kill(2) on the router re-parented to us.
    assert_eq!(unsafe { libc::kill(last, libc::SIGTERM) }, 0);
    let exit = reap(last);
    assert!(
        libc::WIFEXITED(exit) && libc::WEXITSTATUS(exit) == 0,
        "last router exit status {exit}:\n{restarts}"
    );
    assert!(!world.vip_on_eth2(), "VIP left on eth2:\n{restarts}");
    assert!(!world.xdp_on_eth2(), "XDP left on eth2:\n{restarts}");
}
