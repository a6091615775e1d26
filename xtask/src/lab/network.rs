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

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::plan::{
    self, CLIENT_ADDR, CLIENT_GATEWAY, CLIENT_NET, PREFIX, RegionPlan, VIP_INTERFACE,
};
use crate::exec::{self, as_root};
use crate::interrupt;
use crate::netns::{self, Process, ip, nsenter};

/// How long a stopped process gets for its graceful shutdown before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The namespaces of lab processes that exist right now, found by name prefix.
pub fn existing_namespaces() -> Result<Vec<String>> {
    netns::list(&format!("{PREFIX}-"))
}

/// Everything the lab created, in creation order; dropping an armed Lab removes it.
pub struct Lab {
    namespaces: Vec<String>,
    children: Vec<Process>,
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

    fn add_namespace(&mut self, ns: &str) -> Result<()> {
        // Recorded first: should `lo` not come up, the namespace exists and must go too.
        self.namespaces.push(ns.to_owned());
        netns::add(ns)
    }

    /// Creates namespaces, links, addresses and routes for all regions.
    pub fn build_network(&mut self, regions: &[RegionPlan]) -> Result<()> {
        let core = plan::core_ns();
        let client = plan::client_ns();
        self.add_namespace(&core)?;
        netns::sysctl(&core, "net.ipv4.ip_forward=1")?;

        self.add_namespace(&client)?;
        netns::veth(&core, "client", &client, "eth0")?;
        netns::addr(&core, &format!("{CLIENT_GATEWAY}/24"), "client")?;
        netns::addr(&client, &format!("{CLIENT_ADDR}/24"), "eth0")?;

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
            self.add_namespace(&router_ns)?;
            self.add_namespace(&services_ns)?;

            ip(&core, &["link", "add", &bridge, "type", "bridge"])?;
            netns::addr(&core, &format!("{}/24", region.gateway), &bridge)?;
            ip(&core, &["link", "set", &bridge, "up"])?;

            netns::veth(&core, &rtr, &router_ns, VIP_INTERFACE)?;
            ip(&core, &["link", "set", &rtr, "master", &bridge])?;
            netns::addr(
                &router_ns,
                &format!("{}/24", region.router_addr),
                VIP_INTERFACE,
            )?;
            if !region.router_manages_vip {
                netns::addr(&router_ns, &format!("{}/32", region.vip), VIP_INTERFACE)?;
            }

            netns::veth(&core, &svc, &services_ns, "eth0")?;
            ip(&core, &["link", "set", &svc, "master", &bridge])?;
            netns::addr(&services_ns, &format!("{}/24", region.backend), "eth0")?;

            let via = region.gateway.to_string();
            for subnet in subnets.iter().filter(|s| **s != region.network()) {
                let dst = format!("{subnet}/24");
                netns::route(&router_ns, &dst, &via)?;
                netns::route(&services_ns, &dst, &via)?;
            }
        }
        let via = CLIENT_GATEWAY.to_string();
        for region in regions {
            netns::route(&client, &format!("{}/24", region.network()), &via)?;
        }
        Ok(())
    }

    /// `--ha`: each region's backup router namespace on the region's segment, addressed
    /// and routed as the first router's.
    pub fn add_backup_routers(&mut self, regions: &[RegionPlan]) -> Result<()> {
        let core = plan::core_ns();
        let mut subnets: Vec<Ipv4Addr> = regions.iter().map(RegionPlan::network).collect();
        subnets.push(CLIENT_NET);
        for region in regions {
            interrupt::check()?;
            let backup = region.backup()?;
            let link = format!("rtrb{}", region.index);
            self.add_namespace(&backup.ns)?;
            self.pin_paths.push(backup.pin_path.clone());
            netns::veth(&core, &link, &backup.ns, VIP_INTERFACE)?;
            ip(
                &core,
                &[
                    "link",
                    "set",
                    &link,
                    "master",
                    &format!("br{}", region.index),
                ],
            )?;
            netns::addr(&backup.ns, &format!("{}/24", backup.addr), VIP_INTERFACE)?;
            let via = region.gateway.to_string();
            for subnet in subnets.iter().filter(|s| **s != region.network()) {
                netns::route(&backup.ns, &format!("{subnet}/24"), &via)?;
            }
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
        let mut cmd = nsenter(ns);
        cmd.arg(program).args(args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // The output goes to a log file, where colour codes are noise.
        cmd.env("NO_COLOR", "1");
        cmd.process_group(0);
        self.children.push(Process::spawn(name, cmd, log)?);
        Ok(())
    }

    /// Stops the started process named `name` (to show what its absence does) and
    /// forgets it, so that [`Lab::check_alive`] does not count it as a crash.
    pub fn stop(&mut self, name: &str) -> Result<()> {
        let Some(i) = self.children.iter().position(|c| c.name == name) else {
            bail!("the lab started no process named {name}");
        };
        let mut child = self.children.remove(i);
        child
            .child
            .kill()
            .with_context(|| format!("stopping {name}"))?;
        let _ = child.child.wait();
        Ok(())
    }

    /// The pid of the started process named `name`.
    pub fn pid(&self, name: &str) -> Result<u32> {
        self.children
            .iter()
            .find(|c| c.name == name)
            .map(Process::pid)
            .with_context(|| format!("the lab runs no process named {name}"))
    }

    /// Hands the started process named `name` to the caller, which expects it to exit
    /// (a router replaced by a zero-downtime restart): [`Lab::check_alive`] no longer
    /// counts it, and teardown still stops it if it lingers in its namespace.
    pub fn release(&mut self, name: &str) -> Result<Process> {
        let Some(i) = self.children.iter().position(|c| c.name == name) else {
            bail!("the lab started no process named {name}");
        };
        Ok(self.children.remove(i))
    }

    /// The started processes that have exited since the last call, with their exit
    /// status and the end of their log; they are forgotten (each is reported once).
    pub fn exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.children.len() {
            let child = &mut self.children[i];
            match child.child.try_wait() {
                Ok(Some(status)) => {
                    let child = self.children.remove(i);
                    out.push(format!(
                        "{} exited ({status}); last lines of {}:\n{}",
                        child.name,
                        child.log.display(),
                        netns::tail(&child.log, 20)
                    ));
                }
                _ => i += 1,
            }
        }
        out
    }

    /// Err with the log's tail if a started process has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.children.iter_mut().try_for_each(Process::check_alive)
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
        let pids: Vec<u32> = group.iter().flat_map(|ns| netns::pids(ns)).collect();
        if let Err(err) = stop(&pids) {
            errors.push(format!("{err:#}"));
        }
    }
    for ns in namespaces.iter().rev() {
        if let Err(err) = netns::delete(ns) {
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
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the parenthesised command name, which may hold spaces.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s != "Z"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

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
}
