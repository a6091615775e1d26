//! The lab's network: namespaces, veths, a bridge per region in a core namespace, and the
//! processes started inside them. [`Lab`] tears all of it down when dropped (error,
//! Ctrl-C) unless `--keep` disarms it; [`teardown`] is the same cleanup for `--down`.
//!
//! Topology (no link or route ever leads to the host's namespace):
//!
//! ```text
//! srlab-client eth0 198.18.0.2 ── client ─┐ srlab-core (ip_forward=1)
//!                                         ├ br1 192.168.142.1/24 ─ rtr1 ── eth2 srlab-RegionOne (.10 + VIP .244)
//!                                         │                       └ svc1 ── eth0 srlab-RegionOne-svc (.245)
//!                                         └ br2 192.168.144.1/24 ─ …        (same for RegionTwo)
//! ```

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::plan::{
    self, CLIENT_ADDR, CLIENT_GATEWAY, CLIENT_NET, PREFIX, RegionPlan, VIP_INTERFACE,
};
use crate::exec::{self, as_root};
use crate::interrupt;

/// How long a stopped process gets for its graceful shutdown before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// `nsenter --net=/run/netns/NS -- …`: joins only the network namespace, so bpffs
/// stays visible (`ip netns exec` remounts /sys and hides it).
pub fn nsenter(ns: &str) -> Command {
    let mut cmd = as_root("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}")).arg("--");
    cmd
}

fn ip(ns: &str, args: &[&str]) -> Result<()> {
    exec::exec(as_root("ip").args(["-n", ns]).args(args))
}

/// The namespaces of lab processes that exist right now, found by name prefix.
pub fn existing_namespaces() -> Result<Vec<String>> {
    let list = exec::query(Command::new("ip").args(["netns", "list"]))?;
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{PREFIX}-")))
        .map(str::to_owned)
        .collect())
}

struct Spawned {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Everything the lab created, in creation order; dropping an armed Lab removes it.
pub struct Lab {
    namespaces: Vec<String>,
    children: Vec<Spawned>,
    pin_paths: Vec<PathBuf>,
    armed: bool,
}

impl Lab {
    pub fn new(regions: &[RegionPlan]) -> Lab {
        Lab {
            namespaces: Vec::new(),
            children: Vec::new(),
            pin_paths: regions.iter().map(RegionPlan::pin_path).collect(),
            armed: true,
        }
    }

    fn add_namespace(&mut self, ns: String) -> Result<()> {
        exec::exec(as_root("ip").args(["netns", "add", &ns]))?;
        self.namespaces.push(ns.clone());
        ip(&ns, &["link", "set", "lo", "up"])
    }

    /// Creates namespaces, links, addresses and routes for all regions.
    pub fn build_network(&mut self, regions: &[RegionPlan]) -> Result<()> {
        let core = plan::core_ns();
        let client = plan::client_ns();
        self.add_namespace(core.clone())?;
        exec::exec(nsenter(&core).args(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]))?;

        self.add_namespace(client.clone())?;
        ip(
            &core,
            &[
                "link", "add", "client", "type", "veth", "peer", "name", "eth0", "netns", &client,
            ],
        )?;
        ip(
            &core,
            &[
                "addr",
                "add",
                &format!("{CLIENT_GATEWAY}/24"),
                "dev",
                "client",
            ],
        )?;
        ip(&core, &["link", "set", "client", "up"])?;
        ip(
            &client,
            &["addr", "add", &format!("{CLIENT_ADDR}/24"), "dev", "eth0"],
        )?;
        ip(&client, &["link", "set", "eth0", "up"])?;

        // Every lab subnet, each reached through the core; deliberately no default route.
        let mut subnets: Vec<Ipv4Addr> = regions.iter().map(RegionPlan::network).collect();
        subnets.push(CLIENT_NET);

        for region in regions {
            interrupt::check()?;
            let bridge = format!("br{}", region.index);
            let rtr = format!("rtr{}", region.index);
            let svc = format!("svc{}", region.index);
            let router_ns = region.router_ns();
            let services_ns = region.services_ns();
            self.add_namespace(router_ns.clone())?;
            self.add_namespace(services_ns.clone())?;

            ip(&core, &["link", "add", &bridge, "type", "bridge"])?;
            ip(
                &core,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", region.gateway),
                    "dev",
                    &bridge,
                ],
            )?;
            ip(&core, &["link", "set", &bridge, "up"])?;

            ip(
                &core,
                &[
                    "link",
                    "add",
                    &rtr,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    VIP_INTERFACE,
                    "netns",
                    &router_ns,
                ],
            )?;
            ip(&core, &["link", "set", &rtr, "master", &bridge, "up"])?;
            ip(
                &router_ns,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", region.router_addr),
                    "dev",
                    VIP_INTERFACE,
                ],
            )?;
            ip(&router_ns, &["link", "set", VIP_INTERFACE, "up"])?;
            if !region.router_manages_vip {
                ip(
                    &router_ns,
                    &[
                        "addr",
                        "add",
                        &format!("{}/32", region.vip),
                        "dev",
                        VIP_INTERFACE,
                    ],
                )?;
            }

            ip(
                &core,
                &[
                    "link",
                    "add",
                    &svc,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    &services_ns,
                ],
            )?;
            ip(&core, &["link", "set", &svc, "master", &bridge, "up"])?;
            ip(
                &services_ns,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", region.backend),
                    "dev",
                    "eth0",
                ],
            )?;
            ip(&services_ns, &["link", "set", "eth0", "up"])?;

            for subnet in subnets.iter().filter(|s| **s != region.network()) {
                let via = region.gateway.to_string();
                let dst = format!("{subnet}/24");
                ip(&router_ns, &["route", "add", &dst, "via", &via])?;
                ip(&services_ns, &["route", "add", &dst, "via", &via])?;
            }
        }
        for region in regions {
            let dst = format!("{}/24", region.network());
            ip(
                &client,
                &["route", "add", &dst, "via", &CLIENT_GATEWAY.to_string()],
            )?;
        }
        Ok(())
    }

    /// Starts `program args` in `ns`, output to `log`. Its own process group keeps
    /// Ctrl-C away from it (the lab stops it in order) and lets `--keep` outlive us.
    pub fn spawn(
        &mut self,
        ns: &str,
        name: &str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<()> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("sharing {}", log.display()))?;
        let mut cmd = nsenter(ns);
        cmd.arg(program).args(args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // The output goes to a log file, where colour codes are noise.
        cmd.env("NO_COLOR", "1");
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        exec::announce(&cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", exec::display(&cmd)))?;
        self.children.push(Spawned {
            name: name.to_owned(),
            child,
            log,
        });
        Ok(())
    }

    /// Err with the log's tail if a started process has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for spawned in &mut self.children {
            if let Some(status) = spawned.child.try_wait().context("polling a lab process")? {
                bail!(
                    "{} exited early ({status}); last lines of {}:\n{}",
                    spawned.name,
                    spawned.log.display(),
                    tail(&spawned.log, 20)
                );
            }
        }
        Ok(())
    }

    /// Polls `ready` until it holds, failing if a lab process dies, the user interrupts,
    /// or `limit` passes (a router that never listens must not hang the lab).
    pub fn wait_until(
        &mut self,
        what: &str,
        limit: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<()> {
        let started = Instant::now();
        let mut next_note = Duration::from_secs(5);
        loop {
            interrupt::check()?;
            self.check_alive()?;
            if ready() {
                return Ok(());
            }
            // A silent minute looks like a hang; say what we wait for.
            if started.elapsed() >= next_note {
                eprintln!(
                    "    still waiting for {what} ({})",
                    crate::progress::elapsed(started.elapsed())
                );
                next_note += Duration::from_secs(5);
            }
            if started.elapsed() > limit {
                let dir = self.children.first().and_then(|s| s.log.parent());
                let logs = dir.map(|d| format!(" (logs in {})", d.display()));
                bail!(
                    "{what}: not ready after {limit:?}{}",
                    logs.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Leaves everything running (for `--keep`).
    pub fn keep(mut self) {
        self.armed = false;
        // Dropping a std Child neither kills nor waits for it: the processes live on.
        self.children.clear();
    }

    /// Removes everything now, reporting failures (Drop can only print them).
    pub fn teardown(mut self) -> Result<()> {
        self.armed = false;
        let result = teardown(&self.namespaces, &self.pin_paths);
        // The processes were killed by pid; reap them so none lingers as a zombie.
        for spawned in &mut self.children {
            let _ = spawned.child.try_wait();
        }
        result
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.armed {
            eprintln!("tearing the lab down");
            if let Err(err) = teardown(&self.namespaces, &self.pin_paths) {
                eprintln!("lab teardown incomplete: {err:#}; finish with `cargo xtask lab --down`");
            }
            for spawned in &mut self.children {
                let _ = spawned.child.try_wait();
            }
        }
    }
}

/// Stops every process inside the given lab namespaces (routers first, so they can
/// remove their VIP and unpin cleanly while backends still answer), deletes the
/// namespaces and the lab's bpffs pins. Only lab processes live in lab namespaces.
pub fn teardown(namespaces: &[String], pin_paths: &[PathBuf]) -> Result<()> {
    let mut errors = Vec::new();
    let (services, others): (Vec<&String>, Vec<&String>) =
        namespaces.iter().partition(|ns| ns.ends_with("-svc"));
    for group in [others, services] {
        let pids: Vec<u32> = group.iter().flat_map(|ns| namespace_pids(ns)).collect();
        if let Err(err) = stop(&pids) {
            errors.push(format!("{err:#}"));
        }
    }
    for ns in namespaces.iter().rev() {
        if Path::new("/run/netns").join(ns).exists()
            && let Err(err) = exec::exec(as_root("ip").args(["netns", "del", ns]))
        {
            errors.push(format!("{err:#}"));
        }
    }
    for pin in pin_paths.iter().filter(|p| p.exists()) {
        if let Err(err) = exec::exec(as_root("rm").arg("-rf").arg(pin)) {
            errors.push(format!("{err:#}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}

fn namespace_pids(ns: &str) -> Vec<u32> {
    exec::probe(as_root("ip").args(["netns", "pids", ns]))
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL whatever is left.
fn stop(pids: &[u32]) -> Result<()> {
    if pids.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    // A process may exit between listing and signalling; that is not an error.
    let _ = exec::exec(as_root("kill").arg("-TERM").args(&list));
    let started = Instant::now();
    while started.elapsed() < STOP_GRACE && pids.iter().any(|p| running(*p)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<String> = pids
        .iter()
        .filter(|p| running(**p))
        .map(u32::to_string)
        .collect();
    if !left.is_empty() {
        eprintln!(
            "still running after {STOP_GRACE:?}: {}; killing",
            left.join(" ")
        );
        let _ = exec::exec(as_root("kill").arg("-KILL").args(&left));
    }
    Ok(())
}

/// Alive and not a zombie (an exited child we have not reaped yet counts as gone).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the parenthesised command name, which may hold spaces.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s != "Z"))
        })
        .unwrap_or(false)
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
    fn running_sees_live_and_reaped_processes() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        assert!(running(child.id()));
        child.kill().expect("kill sleep");
        child.wait().expect("reap sleep");
        assert!(!running(child.id()));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        std::fs::write(&log, "a\nb\nc\n").expect("write");
        assert_eq!(tail(&log, 2), "    b\n    c");
    }
}
