//! `cargo xtask lab [--keep|--down]`: two regions in network namespaces, each with a
//! scope-router on `eth2` owning the seed VIP and echo backends on the services address;
//! sends scoped requests from a client namespace and prints what went where.

pub mod network;
pub mod plan;
mod probes;
mod tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::exec;
use crate::netns::{self, nsenter};
use crate::progress::{banner, step};
use crate::setup::{self, Profile};
use crate::workspace;
use network::Lab;
use plan::RegionPlan;

/// Generous: a debug router loading eBPF on a busy 2-core machine is slow to listen,
/// yet a router that never listens must not hang the lab forever.
const READY_LIMIT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Leave the lab running and print how to enter it and tear it down.
    #[arg(long, conflicts_with = "down")]
    pub keep: bool,
    /// Tear down a lab left by `--keep` (or by an interrupted run).
    #[arg(long)]
    pub down: bool,
    /// Region configs to build the lab from (repeatable).
    /// Default: config/RegionOne.toml and config/RegionTwo.toml.
    #[arg(long = "config", value_name = "FILE")]
    pub configs: Vec<PathBuf>,
    /// eBPF mode written into the lab configs.
    #[arg(long, default_value = "auto", value_parser = ["auto", "required", "off"])]
    pub ebpf: String,
    /// Let the lab add the VIPs and set `vip.manage = false`, instead of the routers
    /// managing them (to try routing without the VIP management).
    #[arg(long)]
    pub unmanaged_vip: bool,
    /// Build the binaries in release mode.
    #[arg(long)]
    pub release: bool,
    /// Use this scope-router binary instead of building one.
    #[arg(long, value_name = "PATH")]
    pub router_bin: Option<PathBuf>,
    /// Use this echo-backend binary instead of building one.
    #[arg(long, value_name = "PATH")]
    pub echo_bin: Option<PathBuf>,
    /// Two routers per region sharing its VIP over VRRP; after the routing table, kill
    /// (SIGKILL) each region's master and show the backup serving in its place.
    #[arg(long, conflicts_with = "unmanaged_vip")]
    pub ha: bool,
    /// Serve every catalog URL over https:// with certificates from a lab CA, the routers
    /// verifying each other's; the probes use curl --cacert with that CA.
    #[arg(long)]
    pub tls: bool,
}

/// Configs, logs and generated files; fixed so `--down` and a later run find it.
fn state_dir() -> PathBuf {
    std::env::temp_dir().join("scope-router-lab")
}

impl Options {
    /// The lab these options describe.
    fn setup(&self) -> Setup {
        Setup {
            configs: self.configs.clone(),
            ebpf: self.ebpf.clone(),
            unmanaged_vip: self.unmanaged_vip,
            release: self.release,
            router_bin: self.router_bin.clone(),
            echo_bin: self.echo_bin.clone(),
            ha: self.ha,
            tls: self.tls,
            settings: toml::Table::new(),
            profile: Profile::Lab,
        }
    }
}

/// What [`start`] builds: the parts of `lab`'s options that shape the lab itself, and
/// what another command built on the lab (`soak`) changes.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Region configs; empty: config/RegionOne.toml and config/RegionTwo.toml.
    pub configs: Vec<PathBuf>,
    pub ebpf: String,
    pub unmanaged_vip: bool,
    pub release: bool,
    pub router_bin: Option<PathBuf>,
    pub echo_bin: Option<PathBuf>,
    /// Two routers per region sharing its VIP over VRRP.
    pub ha: bool,
    /// Catalogs over https:// and certificates from a lab CA.
    pub tls: bool,
    /// Config settings merged over the lab's own overrides in every region's config.
    pub settings: toml::Table,
    /// What `setup` installs first.
    pub profile: Profile,
}

/// A lab whose routers answer on their VIPs (and, with `ha`, whose cross-region health
/// checks are up). Dropping it tears everything down, as [`Lab`] does.
pub struct Running {
    pub lab: Lab,
    pub regions: Vec<RegionPlan>,
    /// Each region's (first) router config, in region order.
    pub config_paths: Vec<PathBuf>,
    /// `ha`: each region's backup router config, in region order.
    pub backup_paths: Vec<PathBuf>,
    pub router: PathBuf,
    pub echo: PathBuf,
    /// Configs and logs ([`state_dir`]).
    pub dir: PathBuf,
    /// `tls`: the lab CA clients trust.
    pub ca_file: Option<PathBuf>,
}

impl Running {
    /// The lab's name for a region's router process (the one `ha` adds: `backup`).
    pub fn router_name(region: &RegionPlan, backup: bool) -> String {
        if backup {
            format!("scope-router {} (backup)", region.name)
        } else {
            format!("scope-router {}", region.name)
        }
    }

    /// The lab's name for the echo backend serving `port` in `region`.
    pub fn backend_name(region: &RegionPlan, port: u16) -> String {
        format!("echo-backend {}", region.backend_name(port))
    }

    /// Starts the echo backend of `region` for `port` (again, after a stop).
    pub fn spawn_backend(&mut self, region: &RegionPlan, port: u16) -> Result<()> {
        spawn_backend(&mut self.lab, &self.echo, &self.dir, region, port)
    }
}

fn spawn_backend(
    lab: &mut Lab,
    echo: &Path,
    dir: &Path,
    region: &RegionPlan,
    port: u16,
) -> Result<()> {
    let args = vec![
        "--listen".to_owned(),
        format!("{}:{port}", region.backend),
        "--name".to_owned(),
        region.backend_name(port),
    ];
    let log = dir.join(format!("echo-{}-{port}.log", region.name));
    lab.spawn(
        &region.services_ns(),
        &Running::backend_name(region, port),
        echo,
        &args,
        log,
    )
}

/// Builds the lab: refuses when one is up, installs what is missing, builds the
/// binaries, writes the configs, creates the namespaces, starts the echo backends and
/// the routers, and waits until every router answers on its VIP.
pub fn start(setup: &Setup) -> Result<Running> {
    let existing = network::existing_namespaces()?;
    if !existing.is_empty() {
        bail!(
            "a lab is already up (namespaces: {}); tear it down with `cargo xtask lab --down`",
            existing.join(" ")
        );
    }
    if !exec::is_root() {
        eprintln!(
            "note: not root: every namespace command runs through sudo (run `sudo -v` first)"
        );
    }
    let configs = if setup.configs.is_empty() {
        let dir = workspace::root().join("config");
        vec![dir.join("RegionOne.toml"), dir.join("RegionTwo.toml")]
    } else {
        setup.configs.clone()
    };
    let overrides = plan::Overrides {
        ebpf_mode: setup.ebpf.clone(),
        unmanaged_vip: setup.unmanaged_vip,
        settings: setup.settings.clone(),
    };
    let mut regions = plan::plan(&configs, &overrides)?;
    setup::ensure(setup.profile)?;
    let (router, echo) = binaries(setup)?;

    let dir = state_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_file = if setup.tls {
        let s = step("lab CA, a certificate per region VIP, https:// catalogs");
        let ca = tls::apply(&mut regions, &dir)?;
        s.done();
        Some(ca)
    } else {
        None
    };
    let mut config_paths = Vec::new();
    // `--ha`: each region's backup router's config (the first router's is the one above).
    let mut backup_paths = Vec::new();
    for region in &regions {
        let path = dir.join(format!("{}.toml", region.name));
        let text = if setup.ha {
            let [first, backup] = region.ha_configs(&dir)?;
            let backup_path = dir.join(format!("{}-b.toml", region.name));
            std::fs::write(&backup_path, backup)
                .with_context(|| format!("writing {}", backup_path.display()))?;
            backup_paths.push(backup_path);
            first
        } else {
            region.config.clone()
        };
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        config_paths.push(path);
    }

    // Pins left by a crashed lab would carry old counters into this one.
    let backup_pins = if setup.ha {
        regions
            .iter()
            .map(|r| r.backup().map(|b| b.pin_path))
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    for pin in regions
        .iter()
        .map(RegionPlan::pin_path)
        .chain(backup_pins)
        .filter(|p| p.exists())
    {
        exec::exec(exec::as_root("rm").arg("-rf").arg(&pin))?;
    }

    let mut lab = Lab::new(&regions);
    let s = step("lab network: client, core, router and services namespaces");
    lab.build_network(&regions)?;
    if setup.ha {
        lab.add_backup_routers(&regions)?;
    }
    s.done();

    let s = step("echo backends on the services addresses");
    for region in &regions {
        for port in &region.ports {
            spawn_backend(&mut lab, &echo, &dir, region, *port)?;
        }
    }
    lab.wait_until("echo backends", READY_LIMIT, || {
        regions.iter().all(|r| {
            r.ports
                .iter()
                .all(|p| http_answers(&r.router_ns(), &format!("http://{}:{p}/", r.backend), &[]))
        })
    })?;
    s.done();

    let s = step(format!(
        "scope-router in each region (ebpf mode {})",
        setup.ebpf
    ));
    for (region, config) in regions.iter().zip(&config_paths) {
        let args = vec![
            "run".to_owned(),
            "--config".to_owned(),
            config.to_string_lossy().into_owned(),
        ];
        let log = dir.join(format!("{}.log", region.name));
        lab.spawn(
            &region.router_ns(),
            &Running::router_name(region, false),
            &router,
            &args,
            log,
        )?;
    }
    for (region, config) in regions.iter().zip(&backup_paths) {
        let args = vec![
            "run".to_owned(),
            "--config".to_owned(),
            config.to_string_lossy().into_owned(),
        ];
        let log = dir.join(format!("{}-b.log", region.name));
        lab.spawn(
            &region.backup()?.ns,
            &Running::router_name(region, true),
            &router,
            &args,
            log,
        )?;
    }
    lab.wait_until("routers answering on their VIPs", READY_LIMIT, || {
        regions.iter().all(|r| {
            r.ports
                .iter()
                .all(|p| http_answers(&plan::client_ns(), &r.url(*p, "/"), &r.curl_trust()))
        })
    })
    .map_err(|err| anyhow!("{err:#}\n{}", router_diagnosis(&regions, &dir)))?;
    if setup.ha {
        // No VIP answers until the election (Master_Down_Interval) is over, so each
        // router's checks of the other region's frontend start down: wait for them.
        wait_for_regions(&mut lab, &regions)?;
    }
    s.done();
    Ok(Running {
        lab,
        regions,
        config_paths,
        backup_paths,
        router,
        echo,
        dir,
        ca_file,
    })
}

pub fn run(opts: Options) -> Result<()> {
    if opts.down {
        return down();
    }
    let Running {
        mut lab,
        regions,
        config_paths,
        backup_paths,
        router,
        dir,
        ca_file,
        ..
    } = start(&opts.setup())?;

    let s = step("scoped requests from the client namespace");
    let mut results: Vec<(probes::Probe, probes::Outcome)> = probes::probes(&regions)
        .into_iter()
        .map(|p| {
            let out = probes::send(&p);
            (p, out)
        })
        .collect();
    s.done();

    // `--ha`: each region's master dies; its backup takes the VIP over and serves the
    // same requests.
    let mut ha_lines = Vec::new();
    if opts.ha {
        let s = step("VRRP failover: SIGKILL each region's master router");
        for region in &regions {
            lab.stop(&Running::router_name(region, false))?;
        }
        let killed = std::time::Instant::now();
        lab.wait_until("backup routers answering on the VIPs", READY_LIMIT, || {
            regions.iter().all(|r| {
                r.ports
                    .iter()
                    .all(|p| http_answers(&plan::client_ns(), &r.url(*p, "/"), &r.curl_trust()))
            })
        })?;
        let took = killed.elapsed();
        // The other region's VIP moved at the same moment: its checks recover first.
        wait_for_regions(&mut lab, &regions)?;
        s.done();
        for region in &regions {
            ha_lines.push(format!(
                "{}: master router (priority {}) killed; the backup (priority {}, {}) serves {} {:.1} s later (Master_Down_Interval 3.6 s)",
                region.name,
                plan::HA_PRIORITIES[0],
                plan::HA_PRIORITIES[1],
                region.backup()?.addr,
                region.vip,
                took.as_secs_f64()
            ));
        }
        for p in probes::probes(&regions) {
            let out = probes::send(&p);
            let mut p = p;
            p.title = format!("{} [backup routers]", p.title);
            results.push((p, out));
        }
    }

    // Failover: the second region's image service dies; the first region's router learns
    // it from the second's (health checks) and serves `B|A` itself, `B` gets a fast 503.
    if let Some(failover) = probes::Failover::plan(&regions) {
        let s = step(format!(
            "failover: stop {}'s image backend, wait for the health checks",
            failover.dead_region
        ));
        lab.stop(&failover.backend_process)?;
        // The second router notices first (its own check) and answers 503 itself; the
        // first router fails over once its check of the second's image service agrees.
        let either = failover.either_probe();
        lab.wait_until(
            "the first region to see the image service down",
            FAILOVER_LIMIT,
            || probes::send(&either).ok,
        )?;
        s.done();
        for p in failover.probes() {
            let out = probes::send(&p);
            results.push((p, out));
        }
    }
    // The routers serving now: after an `--ha` failover, the backups.
    let (serving, serving_configs) = if opts.ha {
        let plans = regions
            .iter()
            .map(RegionPlan::as_backup)
            .collect::<Result<Vec<_>>>()?;
        (plans, backup_paths.clone())
    } else {
        (regions.clone(), config_paths.clone())
    };
    let statuses: Vec<(String, String)> = serving
        .iter()
        .zip(&serving_configs)
        .map(|(r, c)| (r.name.clone(), probes::status_output(r, &router, c)))
        .collect();

    // Each router's admin listener, from the client namespace, before any teardown.
    let s = step("admin listeners: /healthz and /metrics from the client namespace");
    let admin: Vec<AdminCheck> = serving.iter().map(admin_check).collect();
    s.done();

    let mismatches = results.iter().filter(|(_, o)| !o.ok).count();
    if opts.keep {
        lab.keep();
    } else {
        let s = step("tear the lab down");
        lab.teardown()?;
        s.done();
    }

    banner("==> what went where");
    println!("{}", probes::table(&results));
    if !ha_lines.is_empty() {
        banner("==> VRRP failover (--ha)");
        for line in &ha_lines {
            println!("{line}");
        }
    }
    for (name, status) in &statuses {
        banner(&format!("==> scope-router status ({name})"));
        println!("{}", status.trim_end());
    }
    banner("==> admin listeners (status page, /status, /metrics, /healthz)");
    for check in &admin {
        println!("{check}");
    }
    if let Some(ca) = &ca_file {
        banner("==> TLS (--tls)");
        println!(
            "Every catalog URL is https://; each router serves a certificate for its VIP from \
             the lab CA and verifies the other region's with it.\nLab CA: {}{}",
            ca.display(),
            if opts.keep {
                ""
            } else {
                " (removed with the lab; use --keep to curl it yourself)"
            }
        );
    }
    if opts.keep {
        print_keep_help(&regions, &config_paths, &router, &results);
    } else if mismatches == 0 {
        // Logs are only interesting when something went wrong.
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Some(failed) = admin.iter().find(|c| !c.ok()) {
        bail!(
            "{}'s admin listener did not answer as expected: {failed}; router logs in {}",
            failed.region,
            dir.display()
        );
    }
    if mismatches > 0 {
        bail!(
            "{mismatches} of {} requests did not reach the expected backend; router logs in {}",
            results.len(),
            dir.display()
        );
    }
    Ok(())
}

/// What one region's admin listener answered from the client namespace.
struct AdminCheck {
    region: String,
    url: String,
    /// `/healthz`'s status code (`None`: no answer).
    healthz: Option<String>,
    /// Whether `/metrics` carried the request counters.
    metrics: bool,
}

impl AdminCheck {
    fn ok(&self) -> bool {
        self.healthz.as_deref() == Some("200") && self.metrics
    }
}

impl std::fmt::Display for AdminCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: status page {url}/  metrics {url}/metrics  status {url}/status  \
             (/healthz {}, /metrics {}; from the client: nsenter --net=/run/netns/{} \
             curl -s {url}/metrics)",
            self.region,
            self.healthz.as_deref().unwrap_or("no answer"),
            if self.metrics {
                "has the request counters"
            } else {
                "WITHOUT the request counters"
            },
            plan::client_ns(),
            url = self.url
        )
    }
}

/// `--ha`: until every routing probe gets its expected answer (the cross-region health
/// checks are up again).
fn wait_for_regions(lab: &mut Lab, regions: &[RegionPlan]) -> Result<()> {
    lab.wait_until("cross-region health checks up", READY_LIMIT, || {
        probes::probes(regions).iter().all(|p| probes::send(p).ok)
    })
}

fn admin_check(region: &RegionPlan) -> AdminCheck {
    let url = region.admin_url();
    let curl = |args: &[&str]| {
        exec::probe(
            nsenter(&plan::client_ns())
                .args(["curl", "-s", "--max-time", "5"])
                .args(args),
        )
    };
    let healthz = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{url}/healthz"),
    ]);
    let metrics = curl(&[&format!("{url}/metrics")])
        .is_some_and(|m| m.contains("scope_router_requests_total{"));
    AdminCheck {
        region: region.name.clone(),
        url,
        healthz,
        metrics,
    }
}

/// Why routers may not answer: whether each VIP is on eth2, and the router's last log
/// lines (the echo backends' logs are rarely the story).
fn router_diagnosis(regions: &[RegionPlan], dir: &Path) -> String {
    let mut out = Vec::new();
    for region in regions {
        let addrs = exec::probe(exec::as_root("ip").args([
            "-n",
            &region.router_ns(),
            "-brief",
            "addr",
            "show",
            plan::VIP_INTERFACE,
        ]))
        .unwrap_or_default();
        let has_vip = addrs.contains(&format!("{}/32", region.vip));
        out.push(format!(
            "{}: VIP {} {} on {}{}; last lines of its log:\n{}",
            region.name,
            region.vip,
            if has_vip { "is" } else { "is NOT" },
            plan::VIP_INTERFACE,
            if has_vip || !region.router_manages_vip {
                ""
            } else {
                " (the router should have added it: try `--unmanaged-vip` to let the lab add it)"
            },
            netns::tail(&dir.join(format!("{}.log", region.name)), 10)
        ));
    }
    out.join("\n")
}

fn binaries(opts: &Setup) -> Result<(PathBuf, PathBuf)> {
    let mut wanted = Vec::new();
    if opts.router_bin.is_none() {
        wanted.push(("router-userspace", "scope-router"));
    }
    if opts.echo_bin.is_none() {
        wanted.push(("integration-tests", "echo-backend"));
    }
    let built = if wanted.is_empty() {
        Default::default()
    } else {
        let s = step(format!(
            "build {} ({})",
            wanted
                .iter()
                .map(|(_, b)| *b)
                .collect::<Vec<_>>()
                .join(" and "),
            if opts.release { "release" } else { "debug" }
        ));
        let built = workspace::build_bins(opts.release, &wanted)?;
        s.done();
        built
    };
    let pick = |given: &Option<PathBuf>, name: &str| -> Result<PathBuf> {
        let path = match given {
            Some(p) => p.clone(),
            None => built
                .get(name)
                .cloned()
                .with_context(|| format!("cargo did not build {name}"))?,
        };
        // Absolute: the processes start from nsenter, whose PATH may differ under sudo.
        path.canonicalize()
            .with_context(|| format!("{name} binary {} not found", path.display()))
    };
    Ok((
        pick(&opts.router_bin, "scope-router")?,
        pick(&opts.echo_bin, "echo-backend")?,
    ))
}

/// Any HTTP answer at all (even an error status) means the listener is up.
/// How long the failover step may wait for the checks (lab checks: every 500 ms, down
/// after 2 failures, on both routers).
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

fn http_answers(ns: &str, url: &str, curl_args: &[String]) -> bool {
    exec::probe(
        nsenter(ns)
            .args(["curl", "-s", "-o", "/dev/null", "--max-time", "2"])
            .args(curl_args)
            .arg(url),
    )
    .is_some()
}

fn print_keep_help(
    regions: &[RegionPlan],
    configs: &[PathBuf],
    router: &Path,
    results: &[(probes::Probe, probes::Outcome)],
) {
    let client = plan::client_ns();
    println!();
    println!(
        "The lab is up. Enter a namespace (nsenter keeps bpffs visible, `ip netns exec` does not):"
    );
    println!("  nsenter --net=/run/netns/{client} bash            # the client");
    for region in regions {
        println!(
            "  nsenter --net=/run/netns/{} bash     # {} router: eth2 {} + VIP {}",
            region.router_ns(),
            region.name,
            region.router_addr,
            region.vip
        );
        println!(
            "  nsenter --net=/run/netns/{} bash # {} services on {}",
            region.services_ns(),
            region.name,
            region.backend
        );
    }
    println!();
    println!("Requests from the client, for example:");
    for (probe, _) in results.iter().take(3) {
        println!("  {}", probe.shell_example());
    }
    println!();
    for (region, config) in regions.iter().zip(configs) {
        println!("{}:", region.name);
        println!("  config: {}", config.display());
        println!(
            "  log:    {}",
            state_dir().join(format!("{}.log", region.name)).display()
        );
        println!(
            "  status: nsenter --net=/run/netns/{} {} status --config {}",
            region.router_ns(),
            router.display(),
            config.display()
        );
        println!(
            "  admin:  {url}/ (status page), {url}/metrics, {url}/status, {url}/healthz \
             (from the client namespace; 127.0.0.1:{} inside the router's)",
            plan::ADMIN_PORT,
            url = region.admin_url()
        );
    }
    println!();
    println!("Tear it down with: cargo xtask lab --down");
}

fn down() -> Result<()> {
    let namespaces = network::existing_namespaces()?;
    let pins: Vec<PathBuf> = std::fs::read_dir("/sys/fs/bpf")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().is_some_and(|n| {
                        n.to_string_lossy()
                            .starts_with(&format!("{}-", plan::PREFIX))
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let dir = state_dir();
    if namespaces.is_empty() && pins.is_empty() && !dir.exists() {
        eprintln!("no lab is up");
        return Ok(());
    }
    let s = step("tear the lab down");
    network::teardown(&namespaces, &pins)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    s.done();
    Ok(())
}
