//! The benchmark's network: three namespaces (client → router with `eth2` carrying the
//! VIPs → backend), processes pinned to CPUs inside them, and their CPU/memory counters.
//!
//! Everything lives in namespaces this module creates; nothing touches the host's
//! interfaces. Dropping the [`NetLab`] kills what it started and deletes the namespaces.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

pub const CLIENT: &str = "srb-client";
pub const ROUTER: &str = "srb-router";
pub const BACKEND: &str = "srb-backend";

/// RegionOne's VIP and RegionTwo's (both on the router namespace's `eth2`).
pub const VIP1: &str = "10.77.1.100";
pub const VIP2: &str = "10.77.1.101";
/// The concrete services (nginx, the upload sink) in the backend namespace.
pub const BACKEND_IP: &str = "10.77.2.2";

/// The CPU proxies are pinned to; load generator and backend get the other one.
pub const PROXY_CPU: &str = "0";
pub const LOAD_CPU: &str = "1";

/// The namespaces; deleted on drop.
pub struct NetLab {
    _private: (),
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &str) -> Result<()> {
    run(Command::new("ip").args(args.split_whitespace()))
}

/// `nsenter --net=/run/netns/NS -- …` (keeps /sys and bpffs, unlike `ip netns exec`).
pub fn nsenter(ns: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}")).arg("--");
    cmd
}

fn sysctl(ns: &str, setting: &str) -> Result<()> {
    run(nsenter(ns).args(["sysctl", "-q", "-w", setting]))
}

impl NetLab {
    /// Builds client ↔ router (eth2: 10.77.1.1/24 + both VIPs /32) ↔ backend (10.77.2.2).
    pub fn up() -> Result<NetLab> {
        if unsafe_euid() != 0 {
            bail!(
                "the end-to-end benchmarks create network namespaces: run as root (sudo -E cargo xtask bench)"
            );
        }
        remove_namespaces();
        let lab = NetLab { _private: () };
        for ns in [CLIENT, ROUTER, BACKEND] {
            ip(&format!("netns add {ns}"))?;
            ip(&format!("-n {ns} link set lo up"))?;
        }
        ip(&format!(
            "link add srbc0 netns {CLIENT} type veth peer name eth2 netns {ROUTER}"
        ))?;
        ip(&format!(
            "link add srbr0 netns {ROUTER} type veth peer name srbb0 netns {BACKEND}"
        ))?;
        ip(&format!("-n {CLIENT} addr add 10.77.1.2/24 dev srbc0"))?;
        ip(&format!("-n {ROUTER} addr add 10.77.1.1/24 dev eth2"))?;
        ip(&format!("-n {ROUTER} addr add {VIP1}/32 dev eth2"))?;
        ip(&format!("-n {ROUTER} addr add {VIP2}/32 dev eth2"))?;
        ip(&format!("-n {ROUTER} addr add 10.77.2.1/24 dev srbr0"))?;
        ip(&format!("-n {BACKEND} addr add {BACKEND_IP}/24 dev srbb0"))?;
        ip(&format!("-n {CLIENT} link set srbc0 up"))?;
        ip(&format!("-n {ROUTER} link set eth2 up"))?;
        ip(&format!("-n {ROUTER} link set srbr0 up"))?;
        ip(&format!("-n {BACKEND} link set srbb0 up"))?;
        // The ceiling run goes client → backend through the router namespace's kernel.
        ip(&format!("-n {CLIENT} route add 10.77.2.0/24 via 10.77.1.1"))?;
        ip(&format!("-n {BACKEND} route add default via 10.77.2.1"))?;
        sysctl(ROUTER, "net.ipv4.ip_forward=1")?;
        for ns in [CLIENT, ROUTER, BACKEND] {
            sysctl(ns, "net.core.somaxconn=65535")?;
            sysctl(ns, "net.ipv4.tcp_max_syn_backlog=65535")?;
            sysctl(ns, "net.ipv4.ip_local_port_range=1024 65000")?;
            // Connection-rate runs recycle ports quickly.
            sysctl(ns, "net.ipv4.tcp_tw_reuse=1")?;
        }
        Ok(lab)
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        remove_namespaces();
    }
}

fn remove_namespaces() {
    for ns in [CLIENT, ROUTER, BACKEND] {
        if Path::new("/run/netns").join(ns).exists() {
            // Deleting the namespace removes its veth ends too.
            let _ = ip(&format!("netns del {ns}"));
        }
    }
}

fn unsafe_euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Raises the soft open-file limit to the hard one (inherited by every process we
/// start) and returns it: 10 000 idle client connections need ~20 000 descriptors in a
/// proxy that also holds a server connection per client. Containers often cap the hard
/// limit, which only CAP_SYS_RESOURCE could lift; the caller sizes scenario e to it.
pub fn raise_nofile() -> Result<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: rl is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot read RLIMIT_NOFILE");
    }
    rl.rlim_cur = rl.rlim_max;
    // SAFETY: rl is a valid, initialised rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot raise RLIMIT_NOFILE");
    }
    Ok(rl.rlim_max)
}

/// Runs `f` on a thread that joined network namespace `ns` (sockets it opens live there).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
        // SAFETY: the fd is a valid namespace file for the whole call; setns only
        // changes this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot join network namespace {path}"));
        }
        f()
    })
    .join()
    .map_err(|_| anyhow!("a thread inside namespace {ns} panicked"))?
}

/// A process started in a namespace, pinned to a CPU; killed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// `nsenter` and `taskset` both exec, so the child's pid is the program's own.
    pub fn spawn(
        name: &str,
        ns: &str,
        cpu: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Result<Proc> {
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = nsenter(ns);
        cmd.args(["taskset", "-c", cpu]).arg(program).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Err with the log's tail when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 15)
            );
        }
        Ok(())
    }

    /// User + system CPU seconds consumed so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the parenthesised command name; utime and stime are 14th/15th.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow!("unexpected /proc/pid/stat format"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields
            .get(11..13)
            .ok_or_else(|| anyhow!("short /proc/pid/stat"))?
            .iter()
            .map(|f| f.parse::<f64>().unwrap_or(0.0))
            .sum();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok(ticks / hz.max(1.0))
    }

    /// `VmRSS` and `VmHWM` (peak) in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until `addr` accepts TCP connections from the client namespace (or `procs`
/// died, or 15 s passed: something is wrong then, and the log says what).
pub fn wait_listening(addr: &str, procs: &mut [&mut Proc]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        let target: std::net::SocketAddr = addr.parse()?;
        let ok = in_netns(CLIENT, move || {
            Ok(std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok())
        })?;
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| format!("{}:\n{}", p.name, tail(&p.log, 10)))
                .collect();
            bail!("{addr} never started listening; logs:\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
