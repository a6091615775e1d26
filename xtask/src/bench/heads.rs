//! `cargo xtask bench --scenario heads`: what clients that stall inside a request head
//! cost the router in memory. Starts scope-router on loopback, opens N connections that
//! each send part of a request line and stop, and reads the router's `VmRSS` before,
//! while all N are held, and after they are all closed (docs/ARCHITECTURE.md §9, §12).
//!
//! Memory is not skewed by other CPU load, so this runs on a busy machine too; it needs
//! no root and no namespaces (only loopback).

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::netlab;
use super::report::{self, Layout, Run};
use crate::netns::Process;

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Connections held at once, each stalled inside its request line.
    #[arg(long, default_value_t = 3000)]
    pub connections: usize,
    /// Rounds, each with a fresh router (the report gives medians).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// The router's `--workers` (default: as many as CPUs, like a deployment).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Measure this scope-router binary instead of building the workspace's (e.g. an
    /// older build, to compare).
    #[arg(long, value_name = "PATH")]
    pub router: Option<PathBuf>,
}

/// What every held connection sends before it stalls: half a request line.
const PARTIAL_LINE: &[u8] = b"GET /v2.1/servers/detail?limit=1";

/// Time before each reading: for the router to take in what the clients sent (or their
/// closes), and for its idle workers to hand freed memory back, which they do at most
/// once a second as they park (and health checks wake them every `inter`, 2 s).
const SETTLE: Duration = Duration::from_secs(3);

const LAYOUT: Layout = Layout {
    scenario: "heads",
    title: "Clients stalled inside a request line",
    columns: &[
        ("kib_per_conn", "KiB per held connection", 2),
        ("rss_before_mib", "RSS before MiB", 1),
        ("rss_held_mib", "RSS held MiB", 1),
        ("rss_after_mib", "RSS after close MiB", 1),
        ("kept_after_mib", "kept after close MiB", 1),
    ],
    ratio_on: None,
};

/// Runs the rounds and writes `out_dir/report.{md,json}`.
pub fn run(scope_router: &Path, out_dir: &Path, opts: &Options) -> Result<()> {
    if opts.rounds == 0 || opts.connections == 0 {
        bail!("--rounds and --connections must be at least 1");
    }
    let nofile = netlab::raise_nofile()?;
    // This process holds one descriptor per connection, and so does the router.
    if opts.connections as u64 + 200 > nofile {
        bail!(
            "the open-file limit ({nofile}) is too low for {} connections: raise `ulimit -Hn` \
             or pass a smaller --connections",
            opts.connections
        );
    }
    let work = out_dir.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let mut runs = Vec::new();
    for round in 1..=opts.rounds {
        crate::interrupt::check()?;
        let run = one_round(scope_router, &work, opts, round)?;
        let get = |k: &str| run.metrics.get(k).copied().unwrap_or(f64::NAN);
        eprintln!(
            "    round {round}: {:.2} KiB per held connection; RSS {:.1} → {:.1} MiB held, \
             {:.1} MiB after close",
            get("kib_per_conn"),
            get("rss_before_mib"),
            get("rss_held_mib"),
            get("rss_after_mib"),
        );
        runs.push(run);
    }
    let mut md = String::from("# scope-router benchmark report: stalled request heads\n\n");
    md.push_str(&format!(
        "{} connections, each sending `{}` and nothing more; RSS read {} s after a warm-up \
         request, {} s after the last connection sent its line and {} s after the last one \
         closed; {} rounds (medians), router workers: {}.\n\n",
        opts.connections,
        String::from_utf8_lossy(PARTIAL_LINE),
        SETTLE.as_secs(),
        SETTLE.as_secs(),
        SETTLE.as_secs(),
        opts.rounds,
        opts.workers
            .map_or_else(|| "one per CPU".to_owned(), |w| w.to_string()),
    ));
    md.push_str(&report::markdown_table(&runs, &LAYOUT));
    let settings = json!({
        "connections": opts.connections,
        "rounds": opts.rounds,
        "workers": opts.workers,
        "partial_line": String::from_utf8_lossy(PARTIAL_LINE),
        "settle_ms": SETTLE.as_millis() as u64,
    });
    let machine =
        json!({ "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim() });
    let json = report::json_report(&runs, &[LAYOUT], &machine, &settings);
    report::write(&out_dir.join("report.md"), &md)?;
    report::write(
        &out_dir.join("report.json"),
        &serde_json::to_string_pretty(&json)?,
    )?;
    println!("\n{md}");
    eprintln!(
        "==> heads: {} and {}",
        out_dir.join("report.md").display(),
        out_dir.join("report.json").display()
    );
    Ok(())
}

/// The router of one round; killed when dropped.
struct Router(Process);

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

fn one_round(scope_router: &Path, work: &Path, opts: &Options, round: u32) -> Result<Run> {
    let addr = write_config(work)?;
    let mut cmd = Command::new(scope_router);
    cmd.args(["run", "--config"])
        .arg(work.join("router.toml"))
        // Without [vip] the health state would go to /run/scope-router.
        .arg("--health-state-dir")
        .arg(work)
        .env("RUST_LOG", "warn");
    if let Some(w) = opts.workers {
        cmd.args(["--workers", &w.to_string()]);
    }
    let log = work.join(format!("router-{round}.log"));
    let mut router = Router(Process::spawn("scope-router", cmd, log)?);
    wait_listening(addr, &mut router.0)?;
    let pid = router.0.pid();
    // A refused head first (no backend answers: the router replies itself), so state
    // built on first use is in the baseline.
    warm_up(addr)?;
    std::thread::sleep(SETTLE);
    let before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(opts.connections);
    for i in 0..opts.connections {
        let mut s = TcpStream::connect(addr).with_context(|| format!("connection {i}"))?;
        s.write_all(PARTIAL_LINE)
            .with_context(|| format!("connection {i}: sending the partial line"))?;
        held.push(s);
    }
    std::thread::sleep(SETTLE);
    router.0.check_alive()?;
    let during = rss_kib(pid)?;
    drop(held);
    std::thread::sleep(SETTLE);
    router.0.check_alive()?;
    let after = rss_kib(pid)?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(Run {
        scenario: LAYOUT.scenario.to_owned(),
        target: "scope-router".to_owned(),
        round,
        metrics: [
            (
                "kib_per_conn",
                (during as f64 - before as f64) / opts.connections as f64,
            ),
            ("rss_before_mib", mib(before)),
            ("rss_held_mib", mib(during)),
            ("rss_after_mib", mib(after)),
            ("kept_after_mib", mib(after) - mib(before)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    })
}

/// One scoped listener on a free loopback port, its backend a closed port, no admin
/// listener, and a request-header timeout far beyond the run.
fn write_config(work: &Path) -> Result<SocketAddr> {
    let free = || -> Result<u16> { Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
    let port = free()?;
    let dead = free()?;
    report::write(
        &work.join("catalog.json"),
        &format!(
            r#"[{{"Region": "RegionOne", "Service Type": "compute", "Interface": "public", "URL": "http://127.0.0.1:{port}/v2.1/%(tenant_id)s"}}]"#
        ),
    )?;
    report::write(
        &work.join("router.toml"),
        &format!(
            "# Generated by cargo xtask bench --scenario heads.\nregion = \"RegionOne\"\n\
             catalog = [\"catalog.json\"]\nbackend = \"127.0.0.1\"\n\n[ebpf]\nmode = \"off\"\n\n\
             [admin]\nbind = []\n\n[timeouts]\nrequest_header = \"10m\"\n\n\
             [ports.{port}]\nbackend = \"127.0.0.1:{dead}\"\n"
        ),
    )?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Polls until the router accepts (bounded: 15 s, or its exit).
fn wait_listening(addr: SocketAddr, router: &mut Process) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        router.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the router never listened on {addr}; its log:\n{}",
                crate::netns::tail(&router.log, 10)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One complete request the router answers itself (an unknown scope: 400).
fn warm_up(addr: SocketAddr) -> Result<()> {
    use std::io::Read as _;
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(
        b"GET /v2.1/servers HTTP/1.1\r\nHost: h\r\nX-Scope: {\r\nConnection: close\r\n\r\n",
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).context("warm-up request")?;
    if !out.starts_with(b"HTTP/1.1 ") {
        bail!(
            "the warm-up request got no HTTP answer: {}",
            String::from_utf8_lossy(&out)
        );
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    Ok(netlab::memory_kib(pid)?.0)
}

/// Where the scenario writes: `target/bench/heads`.
pub fn out_dir(root: &Path) -> PathBuf {
    root.join("target/bench/heads")
}
