//! The benchmark's network: three namespaces (client → router with `eth2` carrying the
//! VIPs → backend), processes pinned to CPUs inside them (or in xtask's own namespace, on
//! loopback), and their CPU/memory counters.
//!
//! Everything lives in namespaces this module creates; nothing touches the host's
//! interfaces. Dropping the [`NetLab`] kills what it started and deletes the namespaces.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::netns::{self, Process, nsenter};

pub const CLIENT: &str = "srb-client";
pub const ROUTER: &str = "srb-router";
pub const BACKEND: &str = "srb-backend";

/// RegionOne's VIP and RegionTwo's (both on the router namespace's `eth2`).
pub const VIP1: &str = "10.77.1.100";
pub const VIP2: &str = "10.77.1.101";
/// A second RegionOne and RegionTwo frontend, for the proxy set that runs beside the
/// first one when the bench measures two targets at once (`e2e::paired`).
pub const TWIN_VIP1: &str = "10.77.1.102";
pub const TWIN_VIP2: &str = "10.77.1.103";
/// The concrete services (nginx, the upload sink) in the backend namespace.
pub const BACKEND_IP: &str = "10.77.2.2";

/// The CPU proxies are pinned to; load generator and backend get the other one.
pub const PROXY_CPU: &str = "0";
pub const LOAD_CPU: &str = "1";

/// The loopback scenario's addresses, in xtask's own namespace (all of 127/8 is local
/// there, so nothing is configured): RegionOne's frontend where the proxy listens,
/// RegionTwo's frontend (nginx: the remote region every request goes to), and RegionOne's
/// backend (nginx too; only its health checks reach it). Not 127.0.0.1, which other
/// software on the host is likeliest to have bound.
pub const LOOP_VIP1: &str = "127.0.77.1";
pub const LOOP_VIP2: &str = "127.0.77.2";
pub const LOOP_BACKEND: &str = "127.0.77.3";
/// A second RegionOne frontend on loopback, for the proxy that runs beside the first one
/// in scenario j's paired runs (`e2e::paired`).
pub const LOOP_TWIN_VIP1: &str = "127.0.77.4";

/// The namespaces; deleted on drop.
pub struct NetLab {
    _private: (),
}

impl NetLab {
    /// Builds client ↔ router (eth2: 10.77.1.1/24 + the VIPs /32) ↔ backend (10.77.2.2).
    pub fn up() -> Result<NetLab> {
        if !crate::exec::is_root() {
            bail!(
                "the end-to-end benchmarks create network namespaces: run as root (sudo -E cargo xtask bench)"
            );
        }
        // A run killed before its Drop leaves the fixed names behind.
        remove_namespaces();
        let lab = NetLab { _private: () };
        for ns in [CLIENT, ROUTER, BACKEND] {
            netns::add(ns)?;
        }
        netns::veth(CLIENT, "srbc0", ROUTER, "eth2")?;
        netns::veth(ROUTER, "srbr0", BACKEND, "srbb0")?;
        netns::addr(CLIENT, "10.77.1.2/24", "srbc0")?;
        netns::addr(ROUTER, "10.77.1.1/24", "eth2")?;
        netns::addr(ROUTER, &format!("{VIP1}/32"), "eth2")?;
        netns::addr(ROUTER, &format!("{VIP2}/32"), "eth2")?;
        netns::addr(ROUTER, &format!("{TWIN_VIP1}/32"), "eth2")?;
        netns::addr(ROUTER, &format!("{TWIN_VIP2}/32"), "eth2")?;
        netns::addr(ROUTER, "10.77.2.1/24", "srbr0")?;
        netns::addr(BACKEND, &format!("{BACKEND_IP}/24"), "srbb0")?;
        // The ceiling run goes client → backend through the router namespace's kernel.
        netns::route(CLIENT, "10.77.2.0/24", "10.77.1.1")?;
        netns::route(BACKEND, "default", "10.77.2.1")?;
        netns::sysctl(ROUTER, "net.ipv4.ip_forward=1")?;
        for ns in [CLIENT, ROUTER, BACKEND] {
            netns::sysctl(ns, "net.core.somaxconn=65535")?;
            netns::sysctl(ns, "net.ipv4.tcp_max_syn_backlog=65535")?;
            netns::sysctl(ns, "net.ipv4.ip_local_port_range=1024 65000")?;
            // Connection-rate runs recycle ports quickly.
            netns::sysctl(ns, "net.ipv4.tcp_tw_reuse=1")?;
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
        if let Err(err) = netns::delete(ns) {
            eprintln!("warning: {err:#}");
        }
    }
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

/// `taskset -c CPU …` inside namespace `ns`, or in xtask's own when `ns` is `None` (the
/// loopback scenario); the caller appends the program and its arguments.
pub fn pinned(ns: Option<&str>, cpu: &str) -> Command {
    let mut cmd = match ns {
        Some(ns) => {
            let mut cmd = nsenter(ns);
            cmd.arg("taskset");
            cmd
        }
        None => Command::new("taskset"),
    };
    cmd.args(["-c", cpu]);
    cmd
}

/// A process started in a namespace (`None`: xtask's own), pinned to a CPU; killed when
/// dropped.
pub struct Proc(Process);

impl Proc {
    pub fn spawn(
        name: &str,
        ns: Option<&str>,
        cpu: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Result<Proc> {
        // `taskset` execs the program in place, so the pid stays the program's own.
        let mut cmd = pinned(ns, cpu);
        cmd.arg(program).args(args);
        cmd.envs(env.iter().copied());
        Process::spawn(name, cmd, log).map(Proc)
    }

    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Err with the log's tail when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.0.check_alive()
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
        memory_kib(self.pid())
    }
}

/// `VmRSS` and `VmHWM` (peak) of process `pid`, in KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
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

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

/// Polls until `addr` accepts TCP connections from namespace `from` (`None`: xtask's
/// own), or `procs` died, or 15 s passed: something is wrong then, and the log says what.
pub fn wait_listening(from: Option<&str>, addr: &str, procs: &mut [&mut Proc]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        let target: std::net::SocketAddr = addr.parse()?;
        let connect = move || {
            Ok(std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok())
        };
        let ok = match from {
            Some(ns) => netns::run_in(ns, connect)?,
            None => connect()?,
        };
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| format!("{}:\n{}", p.0.name, netns::tail(&p.0.log, 10)))
                .collect();
            bail!("{addr} never started listening; logs:\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_commands_run_in_the_namespace_given_or_in_ours() {
        let mut cmd = pinned(Some(CLIENT), LOAD_CPU);
        cmd.arg("wrk");
        let shown = crate::exec::display(&cmd);
        assert!(
            shown.ends_with("nsenter --net=/run/netns/srb-client -- taskset -c 1 wrk"),
            "{shown}"
        );
        let mut cmd = pinned(None, PROXY_CPU);
        cmd.arg("haproxy");
        assert_eq!(crate::exec::display(&cmd), "taskset -c 0 haproxy");
    }
}
