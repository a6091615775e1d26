//! Network namespaces for `lab` and `bench`: creating and deleting them, veth pairs,
//! addresses, routes and sysctls inside them, commands and threads run in them, and the
//! processes started there with their output in a log file.
//!
//! Every `ip` and `nsenter` goes through [`exec`], so each is printed before it runs, and
//! through [`as_root`], so a lab started as a user needs sudo only for these commands.
//! Namespaces are entered with `nsenter --net=` (or `setns` for threads), never with `ip
//! netns exec`, which remounts /sys and so hides bpffs from the routers' eBPF pins.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};

use crate::exec::{self, as_root};

/// Where `ip netns add` puts a namespace's handle.
pub fn path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

/// `nsenter --net=/run/netns/NS -- …`: joins only the network namespace.
pub fn nsenter(ns: &str) -> Command {
    let mut cmd = as_root("nsenter");
    cmd.arg(format!("--net={}", path(ns).display())).arg("--");
    cmd
}

/// `ip -n NS …`.
pub fn ip(ns: &str, args: &[&str]) -> Result<()> {
    exec::exec(as_root("ip").args(["-n", ns]).args(args))
}

/// Creates `ns` with `lo` up.
pub fn add(ns: &str) -> Result<()> {
    exec::exec(as_root("ip").args(["netns", "add", ns]))?;
    ip(ns, &["link", "set", "lo", "up"])
}

/// Deletes `ns` if it exists; its interfaces (and their veth peers) go with it.
pub fn delete(ns: &str) -> Result<()> {
    if path(ns).exists() {
        exec::exec(as_root("ip").args(["netns", "del", ns]))?;
    }
    Ok(())
}

/// The namespaces that exist right now whose name starts with `prefix`.
pub fn list(prefix: &str) -> Result<Vec<String>> {
    let list = exec::query(Command::new("ip").args(["netns", "list"]))?;
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

/// The processes living in `ns` (none if it cannot be listed).
pub fn pids(ns: &str) -> Vec<u32> {
    exec::probe(as_root("ip").args(["netns", "pids", ns]))
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A veth pair `a_if` in `a` ↔ `b_if` in `b`, both ends up. It is created inside `a`, so
/// not even for an instant does an end exist in the host's namespace.
pub fn veth(a: &str, a_if: &str, b: &str, b_if: &str) -> Result<()> {
    ip(
        a,
        &[
            "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b,
        ],
    )?;
    ip(a, &["link", "set", a_if, "up"])?;
    ip(b, &["link", "set", b_if, "up"])
}

/// `ip -n NS addr add CIDR dev DEV`.
pub fn addr(ns: &str, cidr: &str, dev: &str) -> Result<()> {
    ip(ns, &["addr", "add", cidr, "dev", dev])
}

/// `ip -n NS route add DST via GATEWAY`.
pub fn route(ns: &str, dst: &str, via: &str) -> Result<()> {
    ip(ns, &["route", "add", dst, "via", via])
}

/// `sysctl -w SETTING` inside `ns` (the `net.` sysctls are per namespace).
pub fn sysctl(ns: &str, setting: &str) -> Result<()> {
    exec::exec(nsenter(ns).args(["sysctl", "-q", "-w", setting]))
}

/// Runs `f` on a thread that joined `ns`; sockets it opens live there for good.
pub fn run_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    spawn_in(ns, f)
        .join()
        .map_err(|_| anyhow!("a thread inside namespace {ns} panicked"))?
}

/// Starts `f` on a thread that joins `ns` first (for threads that outlive one call:
/// the soak's clients); the join handle carries `f`'s result.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = path(ns);
    std::thread::spawn(move || -> Result<T> {
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the fd is a valid namespace file for the whole call; setns only
        // changes this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot join network namespace {}", path.display()));
        }
        f()
    })
}

/// A process started with [`nsenter`], its stdout and stderr in a log file. Dropping it
/// neither kills nor waits for it: its owner decides whether it outlives xtask.
pub struct Process {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    /// Starts `cmd` with stdin closed and its output in a fresh `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Process> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("sharing {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        exec::announce(&cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: `{}`", exec::display(&cmd)))?;
        Ok(Process {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The program's own pid: `nsenter` (and `taskset`) exec it in place.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Err with the log's tail when the process has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self
            .child
            .try_wait()
            .with_context(|| format!("polling {}", self.name))?
        {
            bail!(
                "{} exited early ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 20)
            );
        }
        Ok(())
    }
}

/// The last `lines` lines of a log file, indented.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsenter_joins_only_the_network_namespace() {
        let mut cmd = nsenter("srlab-client");
        cmd.arg("true");
        let shown = exec::display(&cmd);
        assert!(
            shown.ends_with("nsenter --net=/run/netns/srlab-client -- true"),
            "{shown}"
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        std::fs::write(&log, "a\nb\nc\n").expect("write");
        assert_eq!(tail(&log, 2), "    b\n    c");
    }

    #[test]
    fn an_exited_process_is_reported_with_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo last words; exit 3"]);
        let mut process = Process::spawn("sh", cmd, dir.path().join("sh.log")).expect("spawn sh");
        process.child.wait().expect("reap sh");
        let err = process.check_alive().expect_err("sh has exited");
        let text = err.to_string();
        assert!(text.contains("sh exited early"), "{text}");
        assert!(text.contains("    last words"), "{text}");
    }
}
