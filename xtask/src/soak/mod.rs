//! `cargo xtask soak [--duration D]`: the two-region lab with two routers per region
//! sharing its VIP over VRRP, under steady good traffic on every listener and scope,
//! hostile clients, backend faults and lifecycle events at once. It then asserts that no
//! good request failed beyond what the faults allow (`classify`), that every router's
//! memory and descriptors came back to their baseline (`resources`), that no router
//! crashed and that every lifecycle event worked, and writes `target/soak/report.md` and
//! `report.json`. README "Soak it" describes it for operators.

mod classify;
mod hostile;
mod http;
mod report;
mod resources;
mod schedule;
mod traffic;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::exec;
use crate::interrupt;
use crate::lab::network::running;
use crate::lab::plan::{self, RegionPlan};
use crate::lab::{self, Running, Setup};
use crate::netns::{self, Process, nsenter};
use crate::progress::{banner, elapsed, step};
use crate::setup::Profile;
use crate::workspace;
use classify::{Bounds, Fault, Record, Window};
use hostile::{HostileRecord, Limits};
use resources::{Sample, Tolerance};
use schedule::{Action, RouterId};
use traffic::{Control, Spec};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// How long traffic, faults and lifecycle events run, after a warm-up (at least 60s;
    /// `cargo xtask test` runs 90s).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Build the binaries in release mode.
    #[arg(long)]
    pub release: bool,
    /// Build the router in release mode and optimize it with BOLT, as `install` does
    /// (what `cargo xtask test` soaks).
    #[arg(long)]
    pub bolt: bool,
    /// eBPF mode written into the lab configs.
    #[arg(long, default_value = "auto", value_parser = ["auto", "required", "off"])]
    pub ebpf: String,
    /// Use this scope-router binary instead of building one.
    #[arg(long, value_name = "PATH")]
    pub router_bin: Option<PathBuf>,
    /// Use this echo-backend binary instead of building one.
    #[arg(long, value_name = "PATH")]
    pub echo_bin: Option<PathBuf>,
}

/// The short soak `cargo xtask test` runs: every fault and lifecycle event once, in about
/// three minutes with the lab's bring-up.
pub const CI_DURATION: Duration = Duration::from_secs(90);

/// Good traffic before the baseline is taken: pools, buffers and metric series filled.
const WARMUP: Duration = Duration::from_secs(10);
/// Quiet time before a resource sample: the upstream pool closes a connection idle for
/// 4 s on a sweep every 4 s, so after 10 s none is left from the traffic.
const SETTLE: Duration = Duration::from_secs(10);
/// Longest wait at the end for memory and descriptors to come back.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// Good-traffic client threads and the pause between two of one thread's requests:
/// a few hundred requests a second at most, which two shared cores carry beside the
/// hostile clients and the four debug routers.
const CLIENTS: usize = 6;
const PACE: Duration = Duration::from_millis(10);
/// Longest wait for a backup to serve the VIP after its master is killed.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);
/// Longest wait for one `scope-router reload` or `restart` command.
const COMMAND_LIMIT: Duration = Duration::from_secs(90);
/// Requests sent up to this long before a fault may still be in flight when it strikes.
const IN_FLIGHT: Duration = Duration::from_secs(2);
/// The nftables table of the region blackhole, in the core namespace.
const BLACKHOLE_TABLE: &str = "soak_blackhole";

/// What the soak changes in the lab's configs, and why:
/// - timeouts short enough that a request caught by a fault ends within the run
///   (connect 2 s, response head 5 s instead of 10 s and 1 min) and that a stalled body
///   gets its 408 within it (request body 5 s instead of 1 min);
/// - HTTP health checks: a hung backend still accepts connections (the kernel
///   completes the handshake), so a TCP check would never see it.
const SOAK_SETTINGS: &str = r#"
[timeouts]
connect = "2s"
response_head = "5s"
request_body = "5s"

[health]
http_path = "/healthcheck"
"#;

pub fn run(opts: Options) -> Result<()> {
    soak(&opts)
}

/// The soak of `cargo xtask test`: [`CI_DURATION`], on the router operators install (the
/// BOLT-optimized release build), so the one binary the suites do not run is soaked.
pub fn ci() -> Result<()> {
    soak(&Options {
        duration: CI_DURATION,
        release: false,
        bolt: true,
        ebpf: "auto".into(),
        router_bin: None,
        echo_bin: None,
    })
}

fn soak(opts: &Options) -> Result<()> {
    if !exec::is_root() {
        bail!(
            "the soak signals the routers and reads their /proc entries: run it as root (in a \
             root shell; `cargo xtask test` runs it through `sudo -E` on binaries built as you)"
        );
    }
    if opts.duration < schedule::MIN_DURATION {
        bail!(
            "--duration {}s is too short: the soak needs at least {}s",
            opts.duration.as_secs(),
            schedule::MIN_DURATION.as_secs()
        );
    }
    let router_bin = match &opts.router_bin {
        None if opts.bolt => Some(crate::bolt::release_router(true)?),
        given => given.clone(),
    };
    let setup = Setup {
        configs: Vec::new(),
        ebpf: opts.ebpf.clone(),
        unmanaged_vip: false,
        release: opts.release,
        router_bin,
        echo_bin: opts.echo_bin.clone(),
        ha: true,
        tls: false,
        settings: SOAK_SETTINGS
            .parse()
            .context("the soak's config settings")?,
        profile: Profile::Soak,
    };
    let started_wall = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let running = lab::start(&setup)?;
    let mut driver = Driver::new(running, opts)?;
    let outcome = driver.drive();
    // The lab goes whatever happened; an error above is reported after the teardown.
    let s = step("tear the lab down");
    let Driver {
        running,
        mut report,
        ..
    } = driver;
    let dir = running.dir.clone();
    running.lab.teardown()?;
    s.done();
    outcome?;
    report.started = started_wall;
    let out = workspace::root().join("target").join("soak");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let md = out.join("report.md");
    std::fs::write(&md, report.markdown()).with_context(|| format!("writing {}", md.display()))?;
    let json = out.join("report.json");
    std::fs::write(&json, report.json()).with_context(|| format!("writing {}", json.display()))?;
    give_back(&[&out, &md, &json]);
    banner("==> soak summary");
    println!("{}", report.summary());
    println!("report: {} (and report.json)", md.display());
    let reasons = report.verdict();
    if reasons.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    } else {
        bail!(
            "the soak failed:\n  - {}\nrouter and backend logs in {}; the report in {}",
            reasons.join("\n  - "),
            dir.display(),
            md.display()
        )
    }
}

/// A role the report follows across restarts and failovers: a region's serving router
/// or its standby. Its baseline is the process that held it at the baseline.
struct Role {
    label: String,
    baseline_pid: u32,
    baseline: Option<Sample>,
    /// The process holding the role now (`None`: the standby became the master).
    pid: Option<u32>,
    note: String,
    peak_kib: u64,
}

/// One lab router.
#[derive(Clone)]
struct RouterProc {
    pid: u32,
    ns: String,
    config: PathBuf,
    admin: String,
    /// Started by the lab (its exit is seen by `Lab::exited`), not by a restart.
    child: bool,
    /// Stopped on purpose (killed for the failover) or found dead.
    gone: bool,
}

struct Driver {
    running: Running,
    specs: Arc<Vec<Spec>>,
    limits: Limits,
    duration: Duration,
    routers: BTreeMap<RouterId, RouterProc>,
    roles: Vec<Role>,
    /// Routers replaced by a restart: (region, process, when it was released).
    replaced: Vec<(String, Process, Instant)>,
    /// Windows still open, by the action that opened them.
    open: BTreeMap<&'static str, usize>,
    t0: Instant,
    report: report::Report,
}

impl Driver {
    fn new(running: Running, opts: &Options) -> Result<Driver> {
        let regions = running.regions.clone();
        if regions.len() != 2 {
            bail!("the soak runs on the two example regions");
        }
        let specs = traffic::specs(&regions)?;
        let limits = limits(&regions[0])?;
        let bounds = bounds(&regions[0])?;
        let mut routers = BTreeMap::new();
        for (index, region) in regions.iter().enumerate() {
            for backup in [false, true] {
                let name = Running::router_name(region, backup);
                let plan = if backup {
                    region.as_backup()?
                } else {
                    region.clone()
                };
                routers.insert(
                    RouterId {
                        region: index,
                        backup,
                    },
                    RouterProc {
                        pid: running.lab.pid(&name)?,
                        ns: plan.router_ns(),
                        config: if backup {
                            running.backup_paths[index].clone()
                        } else {
                            running.config_paths[index].clone()
                        },
                        admin: plan.admin_url(),
                        child: true,
                        gone: false,
                    },
                );
            }
        }
        let roles = routers
            .iter()
            .map(|(id, r)| Role {
                label: format!(
                    "{} {}",
                    regions[id.region].name,
                    if id.backup { "backup" } else { "master" }
                ),
                baseline_pid: r.pid,
                baseline: None,
                pid: Some(r.pid),
                note: String::new(),
                peak_kib: 0,
            })
            .collect();
        let report = report::Report::new(
            report::Settings {
                duration: opts.duration,
                warmup: WARMUP,
                settle: SETTLE,
                clients: CLIENTS,
                pace: PACE,
                build: if opts.bolt {
                    "release + BOLT"
                } else if opts.release {
                    "release"
                } else {
                    "debug"
                }
                .into(),
                ebpf: opts.ebpf.clone(),
                regions: regions.iter().map(|r| r.name.clone()).collect(),
                limits,
                bounds,
                tolerance: Tolerance::default(),
                soak_settings: SOAK_SETTINGS.trim().to_owned(),
            },
            specs.clone(),
        );
        Ok(Driver {
            running,
            specs: Arc::new(specs),
            limits,
            duration: opts.duration,
            routers,
            roles,
            replaced: Vec::new(),
            open: BTreeMap::new(),
            t0: Instant::now(),
            report,
        })
    }

    fn regions(&self) -> &[RegionPlan] {
        &self.running.regions
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn drive(&mut self) -> Result<()> {
        let s = step("every request shape answered once (health checks up)");
        self.wait_all_served()?;
        s.done();

        let good = Clients::good(&self.specs, self.t0);
        let s = step(format!("warm-up: {} s of good traffic", WARMUP.as_secs()));
        self.idle_for(WARMUP)?;
        s.done();

        let s = step("baseline: clients paused, memory and fds of every router");
        good.control.paused.store(true, Ordering::Relaxed);
        self.idle_for(SETTLE)?;
        for role in &mut self.roles {
            role.baseline = Some(resources::sample(role.baseline_pid)?);
        }
        good.control.paused.store(false, Ordering::Relaxed);
        s.done();

        let plan = schedule::plan(self.duration, 2, self.targets()?)?;
        let hostile = Clients::hostile(self.hostile_targets(), self.limits, self.t0);
        let main_start = self.now();
        self.report.main_start = main_start;
        let s = step(format!(
            "soak: {} of good and hostile traffic, {} faults and lifecycle events",
            elapsed(self.duration),
            plan.len()
        ));
        let end = main_start + self.duration;
        let mut next = 0;
        let mut last_sample = Instant::now();
        while self.now() < end || next < plan.len() {
            interrupt::check()?;
            self.watch();
            if last_sample.elapsed() >= Duration::from_secs(1) {
                self.sample_peaks();
                last_sample = Instant::now();
            }
            if let Some(planned) = plan.get(next)
                && self.now() >= main_start + planned.at
            {
                self.act(&planned.action)?;
                next += 1;
                continue;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        s.done();

        let s = step("stop the clients");
        let hostile_records = hostile.finish()?;
        let good_records = good.finish()?;
        s.done();

        let s = step("settle: every router's memory and fds back to baseline");
        self.settle()?;
        s.done();

        self.check_replaced();
        self.watch();
        self.scrape_counters();

        let mut records: Vec<Record> = good_records.into_iter().flatten().collect();
        records.sort_by_key(|r| r.sent);
        let mut hostile_records: Vec<HostileRecord> =
            hostile_records.into_iter().flatten().collect();
        hostile_records.sort_by_key(|r| r.at);
        self.report.records = records;
        self.report.hostile = hostile_records;
        self.report.resources = self
            .roles
            .iter()
            .map(|r| report::RoleResources {
                label: r.label.clone(),
                baseline_pid: r.baseline_pid,
                baseline: r.baseline,
                pid: r.pid,
                end: r.pid.and_then(|p| resources::sample(p).ok()),
                peak_kib: r.peak_kib,
                note: r.note.clone(),
            })
            .collect();
        Ok(())
    }

    /// Sleeps `d`, still watching for crashes and Ctrl-C.
    fn idle_for(&mut self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            interrupt::check()?;
            self.watch();
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Until every request shape has been served once: the routers' health checks of
    /// each other (with `--ha`, after the election) are up.
    fn wait_all_served(&mut self) -> Result<()> {
        let specs = self.specs.clone();
        let t0 = self.t0;
        netns::run_in(&plan::client_ns(), move || {
            let limit = Instant::now() + Duration::from_secs(60);
            for (i, spec) in specs.iter().enumerate() {
                loop {
                    let mut conns = Default::default();
                    let record = traffic::send(i, spec, &mut conns, t0);
                    if matches!(record.outcome, classify::Outcome::Served { .. }) {
                        break;
                    }
                    if Instant::now() > limit {
                        bail!(
                            "{} never served before the soak: {:?}",
                            String::from_utf8_lossy(&spec.request)
                                .lines()
                                .next()
                                .unwrap_or(""),
                            record.outcome
                        );
                    }
                    interrupt::check()?;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Ok(())
        })
    }

    /// What the faults hit: the second region's image backend (killed) and the first's
    /// network backend (hung), else their first and last ports.
    fn targets(&self) -> Result<schedule::Targets> {
        let regions = self.regions();
        let port = |r: &RegionPlan, service: &str, fallback: Option<&u16>| {
            r.port_of(service)
                .or(fallback.copied())
                .with_context(|| format!("{} serves no port", r.name))
        };
        Ok(schedule::Targets {
            killed: (1, port(&regions[1], "image", regions[1].ports.first())?),
            hung: (0, port(&regions[0], "network", regions[0].ports.last())?),
            restarted: 0,
            failed_over: 1,
        })
    }

    fn hostile_targets(&self) -> Vec<hostile::Target> {
        self.regions()
            .iter()
            .enumerate()
            .flat_map(|(entry, r)| {
                r.ports.iter().filter_map(move |p| {
                    let service = r.services.iter().find(|s| s.port == *p)?;
                    Some(hostile::Target {
                        entry,
                        addr: SocketAddr::from((r.vip, *p)),
                        path: traffic::request_path(&service.path, "soak-hostile"),
                    })
                })
            })
            .collect()
    }

    /// Unexpected exits of lab processes, and of routers started by a restart.
    fn watch(&mut self) {
        for crash in self.running.lab.exited() {
            let at = self.now();
            self.report
                .crashes
                .push(format!("{}: {crash}", elapsed(at)));
        }
        let at = self.now();
        for (id, r) in &mut self.routers {
            if !r.gone && !running(r.pid) {
                r.gone = true;
                let name = &self.running.regions[id.region].name;
                // Lab children are reported above with their log; this catches the
                // routers a restart started, which are not our children.
                if self
                    .report
                    .crashes
                    .iter()
                    .all(|c| !c.contains(&format!("scope-router {name}")))
                {
                    self.report.crashes.push(format!(
                        "{}: router pid {} of {name} is gone",
                        elapsed(at),
                        r.pid
                    ));
                }
            }
        }
    }

    fn sample_peaks(&mut self) {
        for role in &mut self.roles {
            if let Some(sample) = role.pid.and_then(|p| resources::sample(p).ok()) {
                role.peak_kib = role.peak_kib.max(sample.rss_kib);
            }
        }
    }

    fn event(&mut self, at: Duration, what: String, result: Result<String>) {
        let (ok, detail) = match result {
            Ok(detail) => (true, detail),
            Err(err) => (false, format!("{err:#}")),
        };
        eprintln!(
            "    [{}] {what}: {}{detail}",
            elapsed(at.saturating_sub(self.report.main_start)),
            if ok { "" } else { "FAILED: " }
        );
        self.report.events.push(report::Event {
            at,
            what,
            ok,
            detail,
        });
    }

    fn open_window(&mut self, key: &'static str, fault: Fault, label: String, start: Duration) {
        self.report.windows.push(Window {
            fault,
            start,
            end: start,
            label,
        });
        self.open.insert(key, self.report.windows.len() - 1);
    }

    fn close_window(&mut self, key: &'static str, end: Duration) {
        if let Some(i) = self.open.remove(key) {
            self.report.windows[i].end = end;
        }
    }

    fn act(&mut self, action: &Action) -> Result<()> {
        let regions = self.running.regions.clone();
        let at = self.now();
        match *action {
            Action::KillBackend { region, port } => {
                let r = &regions[region];
                let label = format!("kill {}'s backend {}", r.name, r.backend_name(port));
                self.open_window(
                    "backend-killed",
                    Fault::Backend {
                        region,
                        service_types: services_on(r, port),
                        hung: false,
                    },
                    label.clone(),
                    at,
                );
                let result = self.running.lab.stop(&Running::backend_name(r, port));
                self.event(at, label, result.map(|()| "SIGKILL".into()));
            }
            Action::StartBackend { region, port } => {
                let r = &regions[region];
                let result = self.running.spawn_backend(r, port);
                let end = self.now();
                self.close_window("backend-killed", end);
                self.event(
                    at,
                    format!("start {}'s backend {} again", r.name, r.backend_name(port)),
                    result.map(|()| String::new()),
                );
            }
            Action::Partition { a, b } => {
                let label = format!(
                    "blackhole between {} and {}",
                    regions[a].name, regions[b].name
                );
                self.open_window("partition", Fault::Partition { a, b }, label.clone(), at);
                let result = blackhole(&regions[a], &regions[b]);
                self.event(
                    at,
                    label,
                    result.map(|()| "nftables drop in the core namespace".into()),
                );
            }
            Action::Heal { .. } => {
                let result = exec::exec(nsenter(&plan::core_ns()).args([
                    "nft",
                    "delete",
                    "table",
                    "inet",
                    BLACKHOLE_TABLE,
                ]));
                let end = self.now();
                self.close_window("partition", end);
                self.event(
                    at,
                    "lift the blackhole".into(),
                    result.map(|()| String::new()),
                );
            }
            Action::Hang { region, port } => {
                let r = &regions[region];
                let label = format!("hang {}'s backend {}", r.name, r.backend_name(port));
                self.open_window(
                    "backend-hung",
                    Fault::Backend {
                        region,
                        service_types: services_on(r, port),
                        hung: true,
                    },
                    label.clone(),
                    at,
                );
                let result = self
                    .running
                    .lab
                    .pid(&Running::backend_name(r, port))
                    .and_then(|pid| signal(pid, libc::SIGSTOP));
                self.event(at, label, result.map(|()| "SIGSTOP".into()));
            }
            Action::Resume { region, port } => {
                let r = &regions[region];
                let result = self
                    .running
                    .lab
                    .pid(&Running::backend_name(r, port))
                    .and_then(|pid| signal(pid, libc::SIGCONT));
                let end = self.now();
                self.close_window("backend-hung", end);
                self.event(
                    at,
                    format!("resume {}'s backend {}", r.name, r.backend_name(port)),
                    result.map(|()| "SIGCONT".into()),
                );
            }
            Action::Restart { region } => {
                let label = format!("zero-downtime restart of {}'s master", regions[region].name);
                self.open_window("restart", Fault::Restart { region }, label.clone(), at);
                let result = self.restart(region);
                let end = self.now();
                self.close_window("restart", end);
                self.event(at, label, result);
            }
            Action::Failover { region } => {
                let label = format!("VRRP failover: SIGKILL {}'s master", regions[region].name);
                self.open_window("failover", Fault::Failover { region }, label.clone(), at);
                let result = self.failover(region);
                let end = self.now();
                self.close_window("failover", end);
                self.event(at, label, result);
            }
            Action::Reload(id) => {
                let name = format!(
                    "reload {}'s {}",
                    regions[id.region].name,
                    if id.backup { "backup" } else { "master" }
                );
                let result = self.reload(id);
                self.event(at, name, result);
            }
        }
        Ok(())
    }

    /// `scope-router restart` in the master's namespace: the old process is released
    /// (expected to drain and exit 0), the new one followed by pid.
    fn restart(&mut self, region: usize) -> Result<String> {
        let id = RouterId {
            region,
            backup: false,
        };
        let r = self.routers[&id].clone();
        let name = Running::router_name(&self.running.regions[region], false);
        let log = self.running.dir.join(format!(
            "{}-restarted.log",
            self.running.regions[region].name
        ));
        let mut cmd = nsenter(&r.ns);
        cmd.arg(&self.running.router)
            .arg("restart")
            .arg("--config")
            .arg(&r.config);
        let (ok, output) = run_bounded(cmd, &log, COMMAND_LIMIT)?;
        if !ok {
            bail!("`scope-router restart` failed: {}", output.trim());
        }
        let new_pid = handed_over_to(&output).with_context(|| {
            format!(
                "`scope-router restart` did not name the new router: {}",
                output.trim()
            )
        })?;
        let old = self.running.lab.release(&name)?;
        self.replaced.push((
            self.running.regions[region].name.clone(),
            old,
            Instant::now(),
        ));
        if let Some(r) = self.routers.get_mut(&id) {
            r.pid = new_pid;
            r.child = false;
        }
        for role in &mut self.roles {
            if role.pid == Some(r.pid) {
                role.pid = Some(new_pid);
                role.note = format!("restarted: pid {} → {new_pid}", r.pid);
            }
        }
        Ok(format!("pid {} handed over to pid {new_pid}", r.pid))
    }

    /// SIGKILL the region's master; the backup must serve the VIP.
    fn failover(&mut self, region: usize) -> Result<String> {
        let master = RouterId {
            region,
            backup: false,
        };
        let backup = RouterId {
            region,
            backup: true,
        };
        let r = self.running.regions[region].clone();
        self.scrape_one(master);
        self.running.lab.stop(&Running::router_name(&r, false))?;
        let killed = Instant::now();
        let killed_pid = self.routers[&master].pid;
        if let Some(m) = self.routers.get_mut(&master) {
            m.gone = true;
        }
        let vip = SocketAddr::from((r.vip, r.ports[0]));
        let served = netns::run_in(&plan::client_ns(), move || {
            while killed.elapsed() < FAILOVER_LIMIT {
                if let Ok(mut conn) = http::connect(vip, Duration::from_secs(1)) {
                    let request =
                        format!("GET / HTTP/1.1\r\nHost: {vip}\r\nConnection: close\r\n\r\n");
                    if conn
                        .exchange(request.as_bytes(), Instant::now() + Duration::from_secs(2))
                        .is_ok()
                    {
                        return Ok(Some(killed.elapsed()));
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(None)
        })?;
        let backup_pid = self.routers[&backup].pid;
        for role in &mut self.roles {
            if role.pid == Some(killed_pid) {
                role.pid = Some(backup_pid);
                role.note =
                    format!("failed over: pid {killed_pid} killed, pid {backup_pid} took the VIP");
            } else if role.pid == Some(backup_pid) {
                role.pid = None;
                role.note = format!("pid {backup_pid} became the master");
            }
        }
        match served {
            Some(took) => Ok(format!(
                "pid {killed_pid} killed; the backup (pid {backup_pid}) serves {} {:.1} s later",
                r.vip,
                took.as_secs_f64()
            )),
            None => bail!(
                "the backup (pid {backup_pid}) did not serve {} within {}s",
                r.vip,
                FAILOVER_LIMIT.as_secs()
            ),
        }
    }

    fn reload(&mut self, id: RouterId) -> Result<String> {
        let r = self.routers[&id].clone();
        if r.gone {
            bail!("pid {} is gone", r.pid);
        }
        let log = self.running.dir.join(format!(
            "reload-{}{}.log",
            self.running.regions[id.region].name,
            if id.backup { "-b" } else { "" }
        ));
        let mut cmd = nsenter(&r.ns);
        cmd.arg(&self.running.router)
            .arg("reload")
            .arg("--config")
            .arg(&r.config);
        let (ok, output) = run_bounded(cmd, &log, COMMAND_LIMIT)?;
        let line = output
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_owned();
        if ok {
            Ok(line)
        } else {
            bail!("`scope-router reload` failed: {}", output.trim())
        }
    }

    /// Waits for every router to be quiet, then samples them: at least [`SETTLE`], then
    /// until within tolerance or [`SETTLE_LIMIT`].
    fn settle(&mut self) -> Result<()> {
        let tolerance = Tolerance::default();
        let started = Instant::now();
        self.idle_for(SETTLE)?;
        loop {
            let within = self.roles.iter().all(|role| {
                match (
                    role.baseline,
                    role.pid.and_then(|p| resources::sample(p).ok()),
                ) {
                    (Some(base), Some(end)) => tolerance.excess(&base, &end).is_empty(),
                    _ => true,
                }
            });
            if within || started.elapsed() >= SETTLE_LIMIT {
                self.report.settled_after = started.elapsed();
                return Ok(());
            }
            self.idle_for(Duration::from_secs(1))?;
        }
    }

    /// Routers replaced by the restart must have drained and exited 0.
    fn check_replaced(&mut self) {
        for (region, process, _) in &mut self.replaced {
            let pid = process.pid();
            match process.child.try_wait() {
                Ok(Some(status)) if status.success() => self.report.exits.push(format!(
                    "{region}: the router replaced by the restart (pid {pid}) drained and exited ({status})"
                )),
                Ok(Some(status)) => self.report.crashes.push(format!(
                    "{region}: the router replaced by the restart (pid {pid}) exited with {status}; last lines of {}:\n{}",
                    process.log.display(),
                    netns::tail(&process.log, 20)
                )),
                _ => self.report.crashes.push(format!(
                    "{region}: the router replaced by the restart (pid {pid}) is still running at the end \
                     (it must drain within shutdown_grace)"
                )),
            }
        }
    }

    /// Every live router's counters from its admin listener's /metrics.
    fn scrape_counters(&mut self) {
        let ids: Vec<RouterId> = self.routers.keys().copied().collect();
        for id in ids {
            if !self.routers[&id].gone {
                self.scrape_one(id);
            }
        }
    }

    fn scrape_one(&mut self, id: RouterId) {
        let r = self.routers[&id].clone();
        let name = format!(
            "{} {}",
            self.running.regions[id.region].name,
            if id.backup { "backup" } else { "master" }
        );
        let url = r.admin.clone();
        let text = netns::run_in(&plan::client_ns(), move || {
            let addr: SocketAddr = url
                .trim_start_matches("http://")
                .parse()
                .context("admin address")?;
            let mut conn = http::connect(addr, Duration::from_secs(2))
                .map_err(|f| anyhow::anyhow!("{}", f.detail))?;
            let request =
                format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            let response = conn
                .exchange(request.as_bytes(), Instant::now() + Duration::from_secs(5))
                .map_err(|f| anyhow::anyhow!("{}", f.detail))?;
            Ok(String::from_utf8_lossy(&response.body).into_owned())
        });
        let counters = match text {
            Ok(text) => report::Counters::parse(&text),
            Err(err) => report::Counters {
                error: Some(format!("{err:#}")),
                ..Default::default()
            },
        };
        self.report
            .counters
            .push((format!("{name} (pid {})", r.pid), counters));
    }
}

/// The service types a region serves on `port`.
fn services_on(region: &RegionPlan, port: u16) -> Vec<String> {
    let mut out: Vec<String> = region
        .services
        .iter()
        .filter(|s| s.port == port)
        .map(|s| s.service_type.clone())
        .collect();
    out.dedup();
    out
}

/// Drops every packet between the two regions' segments in the core namespace: each
/// router's connections to the other region get no answer at all.
fn blackhole(a: &RegionPlan, b: &RegionPlan) -> Result<()> {
    let core = plan::core_ns();
    let nft = |args: &[&str]| exec::exec(nsenter(&core).arg("nft").args(args));
    nft(&["add", "table", "inet", BLACKHOLE_TABLE])?;
    nft(&[
        "add",
        "chain",
        "inet",
        BLACKHOLE_TABLE,
        "forward",
        "{ type filter hook forward priority 0 ; }",
    ])?;
    for (from, to) in [(a, b), (b, a)] {
        nft(&[
            "add",
            "rule",
            "inet",
            BLACKHOLE_TABLE,
            "forward",
            "ip",
            "saddr",
            &format!("{}/24", from.network()),
            "ip",
            "daddr",
            &format!("{}/24", to.network()),
            "drop",
        ])?;
    }
    Ok(())
}

fn signal(pid: u32, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) has no memory effects; the pid is a process the lab started.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("signalling pid {pid}"));
    }
    Ok(())
}

/// Runs `cmd` with its output in `log`, killing it after `limit`; (success, output).
fn run_bounded(mut cmd: Command, log: &Path, limit: Duration) -> Result<(bool, String)> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone().context("sharing the log")?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    exec::announce(&cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{}`", exec::display(&cmd)))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(log).unwrap_or_default();
    match status {
        Some(status) => Ok((status.success(), output)),
        None => bail!(
            "`{}` did not finish within {}s: {}",
            exec::display(&cmd),
            limit.as_secs(),
            output.trim()
        ),
    }
}

/// Under `sudo` (`cargo xtask test` as a user), hands the report back to that user, so
/// target/ holds no root-owned file a later run could not replace.
fn give_back(paths: &[&Path]) {
    let id = |var: &str| std::env::var(var).ok().and_then(|v| v.parse::<u32>().ok());
    let (Some(uid), Some(gid)) = (id("SUDO_UID"), id("SUDO_GID")) else {
        return;
    };
    for path in paths {
        let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
    }
}

/// The new pid from `restarted: pid A handed over to pid B, which serves now`.
fn handed_over_to(output: &str) -> Option<u32> {
    output.lines().find_map(|l| {
        let rest = l.split("handed over to pid ").nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

/// A duration setting of the generated config (`section.key`), else the router's default.
fn duration_setting(
    table: &toml::Table,
    section: &str,
    key: &str,
    default: Duration,
) -> Result<Duration> {
    match table
        .get(section)
        .and_then(|s| s.get(key))
        .and_then(toml::Value::as_str)
    {
        Some(text) => humantime::parse_duration(text)
            .with_context(|| format!("[{section}] {key} = {text:?} in the lab config")),
        None => Ok(default),
    }
}

/// The limits the hostile clients are judged by, from the lab config.
fn limits(region: &RegionPlan) -> Result<Limits> {
    let table: toml::Table = region.config.parse().context("re-reading the lab config")?;
    Ok(Limits {
        request_header: duration_setting(
            &table,
            "timeouts",
            "request_header",
            Duration::from_secs(10),
        )?,
        request_body: duration_setting(
            &table,
            "timeouts",
            "request_body",
            Duration::from_secs(60),
        )?,
        max_header_bytes: table
            .get("proxy")
            .and_then(|p| p.get("max_header_bytes"))
            .and_then(toml::Value::as_integer)
            .map_or(16384, |n| n as usize),
    })
}

/// How far each fault reaches, from the lab's health checks: a check fails or passes
/// within `inter + timeout`, `fall` (`rise`) in a row flip a server, and a remote request
/// waits for two routers in turn (the far router about its backend, then this router
/// about the far one); plus a second of slack.
fn bounds(region: &RegionPlan) -> Result<Bounds> {
    let table: toml::Table = region.config.parse().context("re-reading the lab config")?;
    let inter = duration_setting(&table, "health", "inter", Duration::from_secs(2))?;
    let timeout = duration_setting(&table, "health", "timeout", Duration::from_secs(2))?;
    let count = |key: &str, default: i64| {
        table
            .get("health")
            .and_then(|h| h.get(key))
            .and_then(toml::Value::as_integer)
            .unwrap_or(default) as u32
    };
    let flip = |n: u32| 2 * ((inter + timeout) * n + inter) + Duration::from_secs(1);
    Ok(Bounds {
        in_flight: IN_FLIGHT,
        detect: flip(count("fall", 5)),
        recover: flip(count("rise", 2)),
    })
}

/// Client threads in the client namespace, stopped (and joined) when dropped, so no
/// thread outlives the lab on an error path.
struct Clients<T: Send + 'static> {
    control: Arc<Control>,
    handles: Vec<JoinHandle<Result<T>>>,
}

impl Clients<Vec<Record>> {
    fn good(specs: &Arc<Vec<Spec>>, t0: Instant) -> Self {
        let control = Arc::new(Control::default());
        let handles = (0..CLIENTS)
            .map(|i| {
                let (control, specs) = (control.clone(), specs.clone());
                let first = i * specs.len() / CLIENTS;
                netns::spawn_in(&plan::client_ns(), move || {
                    Ok(traffic::client(control, specs, first, PACE, t0))
                })
            })
            .collect();
        Clients { control, handles }
    }
}

impl Clients<Vec<HostileRecord>> {
    fn hostile(targets: Vec<hostile::Target>, limits: Limits, t0: Instant) -> Self {
        let control = Arc::new(Control::default());
        let handles = hostile::Kind::ALL
            .iter()
            .map(|kind| {
                let (control, targets, kind) = (control.clone(), targets.clone(), *kind);
                netns::spawn_in(&plan::client_ns(), move || {
                    Ok(hostile::client(kind, targets, limits, control, t0))
                })
            })
            .collect();
        Clients { control, handles }
    }
}

impl<T: Send + 'static> Clients<T> {
    /// Stops the threads and collects what each recorded.
    fn finish(mut self) -> Result<Vec<T>> {
        self.control.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut self.handles)
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a soak client thread panicked"))?
            })
            .collect()
    }
}

impl<T: Send + 'static> Drop for Clients<T> {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_router_is_read_from_restarts_output() {
        assert_eq!(
            handed_over_to(
                "restarted: pid 100 handed over to pid 2345, which serves now; pid 100 drains and exits\n"
            ),
            Some(2345)
        );
        assert_eq!(handed_over_to("restarted: pid 77 serves now"), None);
    }

    #[test]
    fn fault_reach_follows_the_health_settings() {
        let region = traffic::tests::region(
            "RegionOne",
            142,
            "[health]\ninter = \"500ms\"\nfall = 2\nrise = 3\ntimeout = \"1s\"\n[timeouts]\nrequest_body = \"5s\"\n",
        );
        let b = bounds(&region).expect("bounds");
        assert_eq!(b.detect, Duration::from_secs(8));
        assert_eq!(b.recover, Duration::from_millis(11_000));
        let l = limits(&region).expect("limits");
        assert_eq!(l.request_body, Duration::from_secs(5));
        assert_eq!(
            l.request_header,
            Duration::from_secs(10),
            "the router's default"
        );
        assert_eq!(l.max_header_bytes, 16384);
        let soak: toml::Table = SOAK_SETTINGS.parse().expect("the soak settings are TOML");
        assert!(soak["health"].get("http_path").is_some());
    }
}
