//! The `scope-router` command line: run the router, check a config, explain a request,
//! show the status of a running router.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use scope_router::config::Config;
use scope_router::ebpf::{self, Startup, Steering};
use scope_router::error_chain::error_chain;
use scope_router::haproxy::{self, HaproxyMode};
use scope_router::listener;
use scope_router::proxy::{StartOptions, server};
use scope_router::routing::Router;
use scope_router::shutdown::{Drained, Request, Termination};
use scope_router::{access_log, admin, health_state, notify, process, reload, report, status, vip};

#[derive(Debug, Parser)]
#[command(
    name = "scope-router",
    version,
    about = "Scope-interpreting edge router for multi-region OpenStack"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve every scoped and passthrough listener until SIGTERM/SIGINT.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Worker threads of the async runtime (default: one per CPU; 1 runs
        /// everything on the main thread).
        #[arg(long)]
        workers: Option<usize>,
        /// Directory of the health state file `health-<Region>.json` (default: `[vip]
        /// state_dir`, else /run/scope-router); give run, status and explain the same.
        #[arg(long, value_name = "DIR")]
        health_state_dir: Option<PathBuf>,
    },
    /// Check the configuration as `check` does, then have the running router of its
    /// region re-read it (SIGHUP) and report how that went. An invalid configuration is
    /// not sent: the router keeps serving the one it has.
    Reload {
        #[arg(long, short)]
        config: PathBuf,
        /// Directory of the health state file `health-<Region>.json`, where the running
        /// router's pid is found when its admin listener does not answer.
        #[arg(long, value_name = "DIR")]
        health_state_dir: Option<PathBuf>,
    },
    /// Validate the configuration and catalog, print the routing table, exit.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show how a request would be routed, without sending it.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        /// A request header, `Name: value` (repeatable).
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// HTTP method, e.g. GET.
        method: String,
        /// Absolute URL the client would use, e.g. http://192.168.142.244:8774/v2.1/servers.
        url: String,
        /// Directory of the health state file `health-<Region>.json` (default: `[vip]
        /// state_dir`, else /run/scope-router); give run, status and explain the same.
        #[arg(long, value_name = "DIR")]
        health_state_dir: Option<PathBuf>,
    },
    /// Show kernel counters, the VIP and each server's health as the running router sees it
    /// (a one-off TCP connect when no router runs); changes nothing, safe beside a running
    /// router. Exits 1 when a server is down or the VIP is missing.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Directory of the health state file `health-<Region>.json` (default: `[vip]
        /// state_dir`, else /run/scope-router); give run, status and explain the same.
        #[arg(long, value_name = "DIR")]
        health_state_dir: Option<PathBuf>,
    },
    /// Emit the equivalent HAProxy 2.6 configuration: a Lua scope interpreter (default,
    /// written with --out) or, with --native, json_query rules with fewer semantics.
    HaproxyConfig {
        #[arg(long, short)]
        config: PathBuf,
        /// No Lua: read the scope with json_query (no 400 for a malformed scope, no
        /// percent-decoding, no Host fallback).
        #[arg(long)]
        native: bool,
        /// Write haproxy.cfg (and scope-router.lua) into this directory; without it the
        /// native configuration is printed.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// mimalloc: the proxy allocates and frees per request (heads, header maps,
/// per-connection buffers); glibc malloc spent ≈ 10 % of a saturated core there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    // mimalloc's arenas get transparent huge pages: then every touched 4 KiB of
    // per-connection state pins a 2 MiB page, and thousands of idle clients
    // cost several times their real size in RSS. The TLB gain is nil for a
    // heap this small. (What mimalloc does itself with MIMALLOC_ALLOW_THP=0;
    // an environment variable would be read too early to set from here.)
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        // Old kernels: huge pages stay; only memory accounting is coarser.
        eprintln!(
            "note: cannot disable transparent huge pages: {}",
            std::io::Error::last_os_error()
        );
    }
    let cli = Cli::parse();
    // `run` logs in its configured format, once the configuration is read; every other
    // command (and an invalid configuration) logs as text.
    if !matches!(cli.command, Command::Run { .. }) {
        access_log::init_subscriber();
    }
    match cli.command {
        Command::Run {
            config,
            workers,
            health_state_dir,
        } => {
            let config = match Config::load(&config) {
                Ok(config) => config,
                Err(e) => {
                    access_log::init_subscriber();
                    return Err(e)
                        .with_context(|| format!("invalid configuration {}", config.display()));
                }
            };
            let loaded_at = std::time::SystemTime::now();
            access_log::init_subscriber_as(config.log.format);
            let router = Arc::new(router(&config)?);
            // First of all: a second router on a VIP another one manages must fail before
            // it loads eBPF or binds a port, and must never adopt (then remove) the VIP.
            let vip = config
                .vip
                .clone()
                .map(vip::claim)
                .transpose()
                .context("cannot take the VIP")?;
            // Before the runtime: loading eBPF blocks, and sk_lookup attaches to the
            // network namespace of the calling thread.
            let (options, steering) = steer(&config, &router)?;
            let state_dir = health_state::state_dir(&config, health_state_dir.as_deref());
            // Last privileged step, before any thread that serves requests exists: the
            // runtime's workers inherit the unprivileged user and the kept capabilities.
            if let Some(user) = &config.process.user {
                std::fs::create_dir_all(&state_dir).with_context(|| {
                    format!("cannot create the state directory {}", state_dir.display())
                })?;
                let mut writable = vec![state_dir.as_path()];
                if let Some(v) = &config.vip {
                    writable.push(v.state_dir.as_path());
                }
                if let Some(s) = &steering {
                    writable.push(s.pin_path());
                }
                writable.dedup();
                let ids = process::drop_to(user, &writable)
                    .context("cannot drop the router's privileges")?;
                tracing::info!(
                    user = user.as_str(),
                    uid = ids.uid,
                    capabilities = ?process::KEPT.iter().map(|(c, _)| c.to_string()).collect::<Vec<_>>(),
                    "running unprivileged from here on"
                );
            }
            let mut rt = match workers {
                Some(0) => bail!("--workers must be at least 1"),
                // One worker: the single-threaded scheduler does the same job
                // without cross-thread wake-ups and work-stealing bookkeeping.
                Some(1) => tokio::runtime::Builder::new_current_thread(),
                Some(n) => {
                    let mut rt = tokio::runtime::Builder::new_multi_thread();
                    rt.worker_threads(n);
                    rt
                }
                None => tokio::runtime::Builder::new_multi_thread(),
            };
            let rt = rt
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let health_file = health_state::file_path(&state_dir, router.region());
            rt.block_on(run(
                config,
                loaded_at,
                router,
                options,
                steering,
                vip,
                health_file,
            ))
        }
        Command::Status {
            config,
            json,
            health_state_dir,
        } => {
            let config = load(&config)?;
            let router = router(&config)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            // The running router's own view first; the files and maps when none answers.
            let healthy =
                match rt.block_on(status::fetch_running(&config.admin, router.region(), !json)) {
                    Ok(fetched) => {
                        let source = format!("running router's /status at {}", fetched.url);
                        if json {
                            let mut doc: serde_json::Value = serde_json::from_str(&fetched.body)
                                .with_context(|| {
                                    format!("{} answered invalid JSON", fetched.url)
                                })?;
                            doc["source"] =
                                serde_json::json!({ "kind": "admin", "detail": source });
                            println!("{}", serde_json::to_string_pretty(&doc)?);
                        } else {
                            println!("source: {source}\n");
                            print!("{}", fetched.body);
                        }
                        fetched.healthy
                    }
                    Err(why) => {
                        let dir = health_state::state_dir(&config, health_state_dir.as_deref());
                        let report = rt.block_on(status::collect(&config, &router, &dir));
                        let source = format!(
                            "pinned maps and state files (no running router's /status: {why})"
                        );
                        if json {
                            let mut doc = serde_json::to_value(&report)
                                .context("cannot encode the status")?;
                            doc["source"] =
                                serde_json::json!({ "kind": "files", "detail": source });
                            println!("{}", serde_json::to_string_pretty(&doc)?);
                        } else {
                            println!("source: {source}\n");
                            print!("{report}");
                        }
                        report.healthy()
                    }
                };
            if !healthy {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Reload {
            config,
            health_state_dir,
        } => {
            let config = load(&config)?;
            let _ = router(&config)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let dir = health_state::state_dir(&config, health_state_dir.as_deref());
            if !rt.block_on(signal_reload(&config, &dir))? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Check { config } => {
            let config = load(&config)?;
            let router = router(&config)?;
            print!("{}", report::check(&router, &config));
            Ok(())
        }
        Command::Explain {
            config,
            headers,
            method,
            url,
            health_state_dir,
        } => {
            let config = load(&config)?;
            let router = router(&config)?;
            let dir = health_state::state_dir(&config, health_state_dir.as_deref());
            let health = health_state::read(&dir, router.region());
            let headers = headers
                .iter()
                .map(|h| parse_header(h))
                .collect::<Result<Vec<_>>>()?;
            let text = report::explain(&router, &method, &url, &headers, &health)
                .context("cannot explain this request")?;
            print!("{text}");
            Ok(())
        }
        Command::HaproxyConfig {
            config,
            native,
            out,
        } => {
            let config = load(&config)?;
            let mode = if native {
                HaproxyMode::Native
            } else {
                HaproxyMode::Lua
            };
            let text = haproxy::emit(&config, mode, out.as_deref())
                .context("cannot generate the HAProxy configuration")?;
            print!("{text}");
            Ok(())
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config> {
    Config::load(path).with_context(|| format!("invalid configuration {}", path.display()))
}

fn router(config: &Config) -> Result<Router> {
    Router::from_config(config).with_context(|| {
        format!(
            "cannot build the routing table from {}",
            config.path.display()
        )
    })
}

fn parse_header(text: &str) -> Result<(String, String)> {
    match text.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => bail!("invalid --header `{text}`; write it as `Name: value`"),
    }
}

/// Starts eBPF steering as `ebpf.mode` says and returns how the proxy gets its sockets.
fn steer(config: &Config, router: &Router) -> Result<(StartOptions, Option<Steering>)> {
    let plan = ebpf::plan(config, &router.listener_specs());
    for cidr in &plan.unenforced_deny {
        tracing::warn!("ebpf.deny {cidr}: IPv6 sources are not filtered by the XDP guard");
    }
    // One socket for every VIP:port; sk_lookup hands it each connection, and the
    // proxy reads the VIP:port the client dialled from `local_addr()`.
    let steered = listener::bind_std(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .context("cannot create the steered listening socket")?;
    match ebpf::start(&plan.steering, &steered).context("cannot start eBPF steering")? {
        Startup::Steering(steering) => {
            tracing::info!(
                pin_path = %steering.pin_path().display(),
                interface = steering.interface(),
                xdp_mode = %steering.xdp_mode(),
                services = plan.steering.services.len(),
                "eBPF steering active: no socket is bound on the VIP ports"
            );
            let mut options = StartOptions::steered(steered);
            // IPv6 or wildcard listeners cannot be steered: bind those directly.
            for addr in &plan.bind_directly {
                options.handed_in.push(
                    listener::bind_std(*addr)
                        .with_context(|| format!("cannot bind {addr} (not steerable by eBPF)"))?,
                );
            }
            Ok((options, Some(steering)))
        }
        Startup::Fallback(_) | Startup::Off => Ok((StartOptions::default(), None)),
    }
}

/// A notification systemd missed is logged, never fatal: without systemd nothing is sent,
/// and under it a missed READY=1 ends in systemd's own start timeout, which names the unit.
fn warn_unsent(sent: Result<(), notify::NotifyError>) {
    if let Err(e) = sent {
        tracing::warn!("{e}");
    }
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn run(
    config: Config,
    loaded_at: std::time::SystemTime,
    router: Arc<Router>,
    options: StartOptions,
    mut steering: Option<Steering>,
    vip: Option<vip::VipClaim>,
    health_file: std::path::PathBuf,
) -> Result<()> {
    let mut termination =
        Termination::install().context("cannot install SIGTERM/SIGINT handlers")?;
    // From the start of the runtime: a start that wedges (a stuck VIP probe) misses pings
    // too. Dropped at the end of `run`, after the drain, so a long drain is not a miss.
    let _watchdog = notify::Watchdog::start();
    let handle =
        server::start_with_router(&config, router, options).context("cannot start listening")?;
    // Published for `status` and `explain` while the router serves; removed after the drain.
    let (stop_health, stopped) = tokio::sync::oneshot::channel::<()>();
    let health_writer =
        health_state::spawn_writer(handle.shared_router(), health_file, async move {
            let _ = stopped.await;
        });
    // Listeners first (IP_FREEBIND lets them exist before the address), so the
    // router already accepts when the gratuitous ARP moves traffic to it.
    let vip = match vip {
        Some(claim) => Some(claim.start().await.context("cannot take the VIP")?),
        None => None,
    };
    // Taken before `shutdown` consumes the handle; the admin listener outlives the drain
    // so that `/healthz` answers 503 while it lasts.
    let config_state = reload::ConfigState::shared(loaded_at);
    let admin = admin::start(
        &config.admin,
        admin::AdminView::with_state(&config, &handle, config_state.clone()),
    )
    .await
    .context("cannot start the admin listener")?;
    // Type=notify: `systemctl start` returns, and ordered units start, only now.
    warn_unsent(notify::ready());
    warn_unsent(notify::status("serving"));
    let mut config = config;
    let signal = loop {
        match termination.recv().await {
            Request::Stop(signal) => break signal,
            Request::Reload => {
                // RELOADING=1 … READY=1 brackets the reload, whatever its outcome.
                warn_unsent(notify::reloading());
                config = reload_config(&handle, config, &config_state, steering.as_mut());
                warn_unsent(notify::ready());
                let serving = format!("serving {}", config.path.display());
                warn_unsent(notify::status(&serving));
            }
        }
    };
    warn_unsent(notify::stopping());
    warn_unsent(notify::status("draining: finishing in-flight requests"));
    tracing::info!(
        grace = %humantime::format_duration(config.proxy.shutdown_grace),
        "{signal} received: no new connections, finishing in-flight requests"
    );
    match handle.shutdown().await {
        Drained::Clean => tracing::info!("all requests finished"),
        Drained::GraceExpired => {
            tracing::warn!("shutdown grace expired; remaining connections were cut")
        }
    }
    admin.stop().await;
    let _ = stop_health.send(());
    if let Err(e) = health_writer.await {
        tracing::warn!("the health state writer failed: {e}");
    }
    // The address goes only after the last response, so in-flight clients keep a route.
    if let Some(vip) = vip {
        vip.shutdown().await.context("cannot release the VIP")?;
    }
    // Detach last: the pinned counters stay for `status` and the next start.
    if let Some(steering) = steering {
        tokio::task::spawn_blocking(move || steering.shutdown())
            .await
            .context("eBPF detach task failed")?
            .context("cannot detach the eBPF programs")?;
    }
    tracing::info!("exiting");
    Ok(())
}

/// SIGHUP: re-reads the config file `current` came from and serves it when valid (the
/// routing table, listeners, eBPF services and deny list); otherwise logs why, as `check`
/// would, and keeps serving `current`. Returns the configuration in use afterwards.
fn reload_config(
    handle: &server::RouterHandle,
    current: Config,
    state: &reload::SharedConfigState,
    steering: Option<&mut Steering>,
) -> Config {
    let path = current.path.clone();
    tracing::info!(config = %path.display(), "SIGHUP received: reloading the configuration");
    match reload::reload(handle, &path, &current, state) {
        Ok(done) => {
            if let Some(steering) = steering {
                let plan = ebpf::plan(&done.config, &handle.router().listener_specs());
                let s = &plan.steering;
                if let Err(e) = steering.update(&s.services, &s.passthrough, &s.deny) {
                    tracing::error!(
                        "reloaded, but the eBPF maps still steer the previous listeners: {}",
                        error_chain(&e)
                    );
                }
            }
            for section in &done.restart_needed {
                tracing::warn!("{section} changed: it takes effect at the next start");
            }
            tracing::info!(
                added = ?done.listeners.added,
                removed = ?done.listeners.removed,
                "configuration reloaded"
            );
            done.config
        }
        Err(e) => {
            tracing::error!(
                "reload failed, still serving the previous configuration: {}",
                error_chain(&e)
            );
            current
        }
    }
}

/// What `/status` says about the last reload, to tell when the next one is done.
async fn last_reload(config: &Config) -> Option<(u32, String, serde_json::Value)> {
    let fetched = status::fetch_running(&config.admin, &config.region, false)
        .await
        .ok()?;
    let doc: serde_json::Value = serde_json::from_str(&fetched.body).ok()?;
    let pid = u32::try_from(doc["pid"].as_u64()?).ok()?;
    let path = doc["config"].as_str().unwrap_or_default().to_owned();
    Some((pid, path, doc["last_reload"].clone()))
}

/// `scope-router reload`: SIGHUP to the running router of `config`'s region, found at its
/// admin listener or through its health state file in `dir`; then waits (bounded) for the
/// outcome when the admin listener answers. `Ok(false)`: the router refused the config.
async fn signal_reload(config: &Config, dir: &std::path::Path) -> Result<bool> {
    let before = last_reload(config).await;
    let pid = match &before {
        Some((pid, path, _)) => {
            if std::path::Path::new(path) != config.path.as_path() {
                eprintln!(
                    "note: the running router reloads its own config file {path}, not {}",
                    config.path.display()
                );
            }
            *pid
        }
        None => health_state::read(dir, &config.region)
            .map(|f| f.pid)
            .map_err(|e| {
                anyhow::anyhow!(
                    "no running {} router found: its admin listener does not answer and {e};                      start it with `scope-router run`",
                    config.region
                )
            })?,
    };
    let pid_t = libc::pid_t::try_from(pid).context("the router's pid is out of range")?;
    // SAFETY: kill(2) with a plain pid and signal number; no memory is shared.
    if unsafe { libc::kill(pid_t, libc::SIGHUP) } != 0 {
        bail!(
            "cannot signal the router (pid {pid}): {}; run `reload` as the router's user or root",
            std::io::Error::last_os_error()
        );
    }
    let Some((_, _, was)) = before else {
        println!("SIGHUP sent to pid {pid}; its log says how the reload went");
        return Ok(true);
    };
    // Bounded: a router reloads in milliseconds; past this, say what is known.
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let Some((_, _, now)) = last_reload(config).await else {
            continue;
        };
        if now != was && !now.is_null() {
            let message = now["message"].as_str().unwrap_or_default();
            if now["ok"].as_bool() == Some(true) {
                println!("pid {pid}: {message}");
                return Ok(true);
            }
            eprintln!(
                "pid {pid}: reload FAILED, still serving the previous configuration: {message}"
            );
            return Ok(false);
        }
    }
    println!("SIGHUP sent to pid {pid}; no outcome on its /status within 10 s: see its log");
    Ok(true)
}
