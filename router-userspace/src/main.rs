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
use scope_router::{
    access_log, admin, handover, health_state, log_writer, notify, process, reload, report, status,
    vip, vrrp,
};

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
        /// Take over from the running router of this region without refusing or resetting
        /// a connection: its listening sockets, VIP and eBPF steering pass to this process,
        /// and it drains and exits. `restart` starts a router this way.
        #[arg(long)]
        takeover: bool,
    },
    /// Replace the running router of the config's region with a new process of this
    /// binary (a zero-downtime restart, e.g. after an upgrade): starts `run --takeover`,
    /// waits until it serves, and reports. A new router that fails to start changes
    /// nothing: the running one keeps serving.
    Restart {
        #[arg(long, short)]
        config: PathBuf,
        /// Worker threads of the new router (as `run --workers`).
        #[arg(long)]
        workers: Option<usize>,
        /// As `run --health-state-dir`: where the running router is found.
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

/// How often at most a worker hands freed memory back as it goes idle.
const RELEASE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Called by each runtime worker as it goes idle: at most every [`RELEASE_EVERY`], returns
/// the memory its heap has freed to the system. mimalloc returns emptied pages only a
/// moment after they empty (`purge_delay`), and only when the allocator is next entered
/// on the thread that owns them, which also takes in what other workers freed into its
/// pages; a router that goes idle after a burst never does, and kept the burst's memory:
/// 57.8 MiB over its baseline after 3000 stalled connections had closed, 0.4 MiB with
/// this (`cargo xtask bench --scenario heads`). A forced collection once a second costs
/// an idle worker microseconds, and a busy one, which does not park, nothing.
fn release_freed_memory() {
    use std::cell::Cell;
    use std::time::Instant;
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    if LAST
        .get()
        .is_some_and(|last| now.duration_since(last) < RELEASE_EVERY)
    {
        return;
    }
    LAST.set(Some(now));
    // SAFETY: mi_collect only walks the calling thread's own heap; callable at any time.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

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
    // A panic's message comes after the lines its thread held, as it happened.
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        log_writer::flush();
        report_panic(info);
    }));
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
            takeover,
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
            // Before the connection limit is derived from it (and before the privilege drop,
            // though raising the soft limit up to the hard one needs none).
            match scope_router::proxy::connection_limit::raise_open_file_limit() {
                Ok((before, after)) if after > before => {
                    tracing::info!(
                        "open-file limit raised from {before} to {after} (the hard limit)"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
            }
            let router = Arc::new(router(&config)?);
            let state_dir = health_state::state_dir(&config, health_state_dir.as_deref());
            let handover_path = handover::socket_path(&state_dir, router.region());
            // A restart: the running router hands its sockets and locks over first.
            let mut taken = if takeover {
                let (successor, received) = handover::take_over(&handover_path)
                    .context("cannot take over the running router")?;
                tracing::info!(
                    predecessor = received.predecessor,
                    version = %received.version,
                    "taking over from the running router"
                );
                Some((successor, received))
            } else {
                None
            };
            let setup = privileged_setup(&config, &router, taken.as_mut().map(|t| &mut t.1));
            let (vip, options, steering, steered_local) = match setup {
                Ok(done) => done,
                Err(e) => {
                    if let Some((successor, _)) = taken {
                        successor.abandon(&format!("{e:#}"));
                    }
                    return Err(e);
                }
            };
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
                .on_thread_park(|| {
                    release_freed_memory();
                    log_writer::park();
                })
                // Before the worker's thread-locals go, and whatever the order they go in.
                .on_thread_stop(log_writer::flush)
                .build()
                .context("cannot start the async runtime")?;
            let health_file = health_state::file_path(&state_dir, router.region());
            let (successor, admin_inherited, watchdog, vrrp_master) = match taken {
                Some((successor, mut received)) => (
                    Some(successor),
                    received.take_listeners(handover::Kind::Admin),
                    received.watchdog,
                    received.vrrp_master,
                ),
                None => (None, listener::Inherited::default(), None, false),
            };
            let outcome = rt.block_on(run(Start {
                config,
                loaded_at,
                router,
                options,
                steering,
                steered_local,
                vip,
                health_file,
                handover_path,
                successor,
                admin_inherited,
                watchdog,
                vrrp_master,
            }));
            // With one worker the main thread ran the runtime: its held lines go out
            // before anything main reports on the way out.
            log_writer::flush();
            outcome
        }
        Command::Restart {
            config: path,
            workers,
            health_state_dir,
        } => {
            let config = load(&path)?;
            let _ = router(&config)?;
            let dir = health_state::state_dir(&config, health_state_dir.as_deref());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(restart(
                &config,
                &path,
                workers,
                health_state_dir.as_deref(),
                &dir,
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

/// The privileged steps before the runtime, in order: the VIP claim, then eBPF. On a
/// restart `taken` holds what the running router handed over, used instead of new locks
/// and sockets. Returns the VIP claim, how the proxy gets its sockets, the steering and
/// the steered socket's address.
#[allow(clippy::type_complexity)] // one call site, destructured at once
fn privileged_setup(
    config: &Config,
    router: &Router,
    mut taken: Option<&mut handover::Received>,
) -> Result<(
    Option<vip::VipClaim>,
    StartOptions,
    Option<Steering>,
    Option<std::net::SocketAddr>,
)> {
    // First of all: a second router on a VIP another one manages must fail before it
    // loads eBPF or binds a port, and must never adopt (then remove) the VIP.
    let vip = match (&config.vip, taken.as_deref_mut()) {
        (None, _) => None,
        (Some(settings), None) => Some(vip::claim(settings.clone())),
        (Some(settings), Some(taken)) => Some(vip::claim_handed_over(
            settings.clone(),
            taken.take_lock(handover::Kind::VipLock),
        )),
    }
    .transpose()
    .context("cannot take the VIP")?;
    // Before the runtime: loading eBPF blocks, and sk_lookup attaches to the network
    // namespace of the calling thread.
    let (options, steering, steered_local) = steer(config, router, taken)?;
    Ok((vip, options, steering, steered_local))
}

/// Starts eBPF steering as `ebpf.mode` says and returns how the proxy gets its sockets, the
/// steering, and the steered socket's address. On a restart the running router's steered
/// socket and pin lock (in `taken`) are used, so steering never points anywhere else.
fn steer(
    config: &Config,
    router: &Router,
    mut taken: Option<&mut handover::Received>,
) -> Result<(StartOptions, Option<Steering>, Option<std::net::SocketAddr>)> {
    let plan = ebpf::plan(config, &router.listener_specs());
    for cidr in &plan.unenforced_deny {
        tracing::warn!("ebpf.deny {cidr}: IPv6 sources are not filtered by the XDP guard");
    }
    // One socket for every VIP:port; sk_lookup hands it each connection, and the
    // proxy reads the VIP:port the client dialled from `local_addr()`.
    let steered = match taken
        .as_deref_mut()
        .and_then(handover::Received::take_steered)
    {
        Some(socket) => socket,
        None => listener::bind_std(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .context("cannot create the steered listening socket")?,
    };
    let pin_lock = taken
        .as_deref_mut()
        .and_then(|t| t.take_lock(handover::Kind::PinLock));
    match ebpf::start_handed_over(&plan.steering, &steered, pin_lock)
        .context("cannot start eBPF steering")?
    {
        Startup::Steering(steering) => {
            tracing::info!(
                pin_path = %steering.pin_path().display(),
                interface = steering.interface(),
                xdp_mode = %steering.xdp_mode(),
                services = plan.steering.services.len(),
                "eBPF steering active: no socket is bound on the VIP ports"
            );
            let steered_local = steered.local_addr().ok();
            let mut options = StartOptions::steered(steered);
            let mut inherited = inherited_listeners(taken);
            // IPv6 or wildcard listeners cannot be steered: bind those directly.
            for addr in &plan.bind_directly {
                let socket = match inherited.take(*addr) {
                    Some(socket) => socket,
                    None => listener::bind_std(*addr)
                        .with_context(|| format!("cannot bind {addr} (not steerable by eBPF)"))?,
                };
                options.handed_in.push(socket);
            }
            options.inherited = inherited;
            Ok((options, Some(steering), steered_local))
        }
        // The steered socket a predecessor handed over closes here, unused.
        Startup::Fallback(_) | Startup::Off => Ok((
            StartOptions {
                inherited: inherited_listeners(taken),
                ..StartOptions::default()
            },
            None,
            None,
        )),
    }
}

fn inherited_listeners(taken: Option<&mut handover::Received>) -> listener::Inherited {
    taken
        .map(|t| t.take_listeners(handover::Kind::Listener))
        .unwrap_or_default()
}

/// A notification systemd missed is logged, never fatal: without systemd nothing is sent,
/// and under it a missed READY=1 ends in systemd's own start timeout, which names the unit.
fn warn_unsent(sent: Result<(), notify::NotifyError>) {
    if let Err(e) = sent {
        tracing::warn!("{e}");
    }
}

/// Everything `run` starts from, prepared before the runtime existed.
struct Start {
    config: Config,
    loaded_at: std::time::SystemTime,
    router: Arc<Router>,
    options: StartOptions,
    steering: Option<Steering>,
    /// The steered socket's address, to tell it apart when handing sockets over.
    steered_local: Option<std::net::SocketAddr>,
    vip: Option<vip::VipClaim>,
    health_file: std::path::PathBuf,
    handover_path: std::path::PathBuf,
    /// On a restart: the running router, waiting for this one to serve.
    successor: Option<handover::Successor>,
    /// On a restart: the admin listeners handed over.
    admin_inherited: listener::Inherited,
    /// On a restart: systemd's watchdog interval, passed on by the running router.
    watchdog: Option<std::time::Duration>,
    /// On a restart: the running router was the VRRP master, so this one carries on as
    /// master without an election (no failover for a planned restart).
    vrrp_master: bool,
}

/// How often a VRRP router reports its own health to its speaker (Kolla's track script
/// runs every 2 s).
const OWN_HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// The VRRP speaker of a router with `[vrrp]`, and the task that makes the VIP follow its
/// role.
struct Vrrp {
    speaker: vrrp::SpeakerHandle,
    follow: tokio::task::JoinHandle<()>,
    /// `[vrrp] advert_int`: how long a resigning master waits for the new one.
    advert_int: std::time::Duration,
}

impl Vrrp {
    /// Starts the speaker and has the claimed VIP follow its role.
    async fn start(
        settings: &vrrp::VrrpSettings,
        claim: vip::VipClaim,
        initial: vrrp::Initial,
    ) -> Result<(Vrrp, vip::VipHandle)> {
        let mut speaker_settings = settings.clone();
        speaker_settings.interface = Some(settings.interface(claim.settings()).to_owned());
        let speaker = vrrp::start(&speaker_settings, claim.settings().address, initial)
            .context("cannot start the VRRP speaker")?;
        let mut role = speaker.role();
        let (wanted_tx, wanted) =
            tokio::sync::watch::channel(*role.borrow_and_update() == vrrp::Role::Master);
        let follow = tokio::spawn(async move {
            while role.changed().await.is_ok() {
                let master = *role.borrow_and_update() == vrrp::Role::Master;
                if wanted_tx.send(master).is_err() {
                    break;
                }
            }
        });
        let vip = claim
            .start_following(wanted)
            .await
            .context("cannot take the VIP")?;
        Ok((
            Vrrp {
                speaker,
                follow,
                advert_int: settings.advert_int,
            },
            vip,
        ))
    }

    fn is_master(&self) -> bool {
        *self.speaker.role().borrow() == vrrp::Role::Master
    }

    /// A clean stop: resign (priority 0, so a backup takes over after its skew time, well
    /// under a second at the default interval) and give it one advert interval to do so
    /// before this router stops accepting. The VIP stays here until the drain is over.
    async fn resign(self) {
        self.follow.abort();
        let was_master = self.is_master();
        self.speaker.stop().await;
        if was_master {
            tracing::info!("VRRP: resigned; the backup takes the VIP over");
            tokio::time::sleep(self.advert_int).await;
        }
    }

    /// A restart: stop advertising without resigning; the next router advertises already.
    async fn hand_over(self) {
        self.follow.abort();
        let role = self.speaker.hand_over().await;
        tracing::info!(?role, "VRRP: adverts handed over to the new router");
    }
}

/// The router's own health for VRRP (Kolla's track script checks that its load balancer
/// answers): the VIP interface is up and, with eBPF steering, both programs are attached.
/// Backends are not part of it: all of them down everywhere must not flap the VIP.
fn own_health(interface: &str, steering: Option<&Steering>) -> bool {
    vip::interface_up(interface) && steering.is_none_or(Steering::attached)
}

/// How the serving loop ended.
enum Ending {
    /// SIGTERM/SIGINT: drain, release the VIP, detach eBPF, exit.
    Stop(&'static str),
    /// A restart took over (this pid): drain, leave the VIP and eBPF to it, exit.
    HandedOver(u32),
}

async fn run(start: Start) -> Result<()> {
    let Start {
        config,
        loaded_at,
        router,
        options,
        mut steering,
        steered_local,
        vip,
        health_file,
        handover_path,
        successor,
        admin_inherited,
        watchdog,
        vrrp_master,
    } = start;
    let mut termination =
        Termination::install().context("cannot install SIGTERM/SIGINT handlers")?;
    // From the start of the runtime: a start that wedges (a stuck VIP probe) misses pings
    // too. Dropped at the end of `run`, after the drain, so a long drain is not a miss.
    // A restarted router pings only once it is the service's main process.
    let mut _watchdog = match successor {
        None => notify::Watchdog::start(),
        Some(_) => None,
    };
    // Every socket before the first accept: a router that fails here (on a restart: while
    // the running one still serves) has accepted nothing it would drop.
    let mut admin_sockets =
        admin::bind(&config.admin, admin_inherited).context("cannot start the admin listener")?;
    let handle =
        server::start_with_router(&config, router, options).context("cannot start listening")?;
    // Published for `status` and `explain` while the router serves; removed after the drain
    // unless a restart handed the router over (then the file is the next router's).
    let (stop_health, stopped) = tokio::sync::oneshot::channel::<bool>();
    let health_writer =
        health_state::spawn_writer(handle.shared_router(), health_file, async move {
            stopped.await.unwrap_or(true)
        });
    // Listeners first (IP_FREEBIND lets them exist before the address), so the
    // router already accepts when the gratuitous ARP moves traffic to it.
    // With [vrrp] the speaker decides whether this node holds the VIP.
    let (mut vrrp, vip) = match (vip, &config.vrrp) {
        (Some(claim), Some(settings)) => {
            let initial = if vrrp_master {
                vrrp::Initial::Master
            } else {
                vrrp::Initial::Fresh
            };
            let (vrrp, vip) = Vrrp::start(settings, claim, initial).await?;
            (Some(vrrp), Some(vip))
        }
        (Some(claim), None) => (
            None,
            Some(claim.start().await.context("cannot take the VIP")?),
        ),
        (None, _) => (None, None),
    };
    let vrrp_interface = vip.as_ref().map(|v| v.settings().interface.clone());
    // Only polled with `[vrrp]` (the select below guards it).
    let mut health_tick = tokio::time::interval(OWN_HEALTH_INTERVAL);
    // Taken before `shutdown` consumes the handle; the admin listener outlives the drain
    // so that `/healthz` answers 503 while it lasts.
    let config_state = reload::ConfigState::shared(loaded_at);
    let mut view = admin::AdminView::with_state(&config, &handle, config_state.clone());
    if let Some(v) = &vrrp {
        view = view.with_vrrp(v.speaker.status_watch());
    }
    let admin = admin::start_inheriting(&config.admin, view, &mut admin_sockets)
        .await
        .context("cannot start the admin listener")?;
    if let Some(successor) = successor {
        // Serving: the running router may stop accepting now. Its answer comes once it
        // has, and has made this process systemd's main one.
        let predecessor = successor.predecessor();
        match tokio::task::spawn_blocking(move || successor.ready()).await {
            Ok(Ok(())) => tracing::info!(
                predecessor,
                "took over: the previous router drains and exits"
            ),
            // It is gone or going (it died, or stops anyway): this router has every socket
            // and lock, so it serves on.
            Ok(Err(e)) => tracing::warn!(
                predecessor,
                "the previous router did not confirm the handover, serving anyway: {}",
                error_chain(&e)
            ),
            Err(e) => tracing::warn!(predecessor, "the handover task failed, serving anyway: {e}"),
        }
        _watchdog = watchdog.and_then(notify::Watchdog::start_with);
    }
    // The next restart's way in. Without it this router can only be stopped, not
    // replaced, which is no reason to stop serving.
    let (takeover_tx, mut takeovers) = tokio::sync::mpsc::channel(1);
    match handover::listen(&handover_path) {
        Ok(listener) => {
            if let Err(e) = listener.spawn(takeover_tx) {
                tracing::error!(
                    "cannot start the handover thread; `scope-router restart` will not work: {e}"
                );
            }
        }
        Err(e) => tracing::error!("`scope-router restart` will not work: {}", error_chain(&e)),
    }
    // Type=notify: `systemctl start` returns, and ordered units start, only now.
    warn_unsent(notify::ready());
    warn_unsent(notify::status("serving"));
    let mut config = config;
    let ending = loop {
        tokio::select! {
            request = termination.recv() => match request {
                Request::Stop(signal) => break Ending::Stop(signal),
                Request::Reload => {
                    // RELOADING=1 … READY=1 brackets the reload, whatever its outcome.
                    warn_unsent(notify::reloading());
                    config = reload_config(&handle, config, &config_state, steering.as_mut());
                    warn_unsent(notify::ready());
                    let serving = format!("serving {}", config.path.display());
                    warn_unsent(notify::status(&serving));
                }
            },
            _ = health_tick.tick(), if vrrp.is_some() => {
                if let (Some(vrrp), Some(interface)) = (&vrrp, &vrrp_interface) {
                    vrrp.speaker.report_health(own_health(interface, steering.as_ref()));
                }
            }
            Some(takeover) = takeovers.recv() => match takeover {
                handover::Takeover::Offer { successor, reply } => {
                    warn_unsent(notify::status(&format!("handing over to pid {successor}")));
                    let offer = offer(&handle, &admin, vip.as_ref(), steering.as_ref(), steered_local)
                        .map(|mut o| {
                            o.vrrp_master = vrrp.as_ref().is_some_and(Vrrp::is_master);
                            o
                        });
                    if let Err(e) = &offer {
                        tracing::error!(successor, "cannot hand over: {e}");
                    }
                    let _ = reply.send(offer);
                }
                handover::Takeover::Ready { successor, reply } => {
                    warn_unsent(notify::main_pid(successor));
                    let _ = reply.send(());
                    break Ending::HandedOver(successor);
                }
            },
        }
    };
    if let Some(vrrp) = vrrp.take() {
        match ending {
            Ending::Stop(_) => vrrp.resign().await,
            Ending::HandedOver(_) => vrrp.hand_over().await,
        }
    }
    match ending {
        Ending::Stop(signal) => {
            warn_unsent(notify::stopping());
            warn_unsent(notify::status("draining: finishing in-flight requests"));
            tracing::info!(
                grace = %humantime::format_duration(config.proxy.shutdown_grace),
                "{signal} received: no new connections, finishing in-flight requests"
            );
        }
        // Not the main process anymore: systemd takes no notification from it.
        Ending::HandedOver(successor) => tracing::info!(
            successor,
            grace = %humantime::format_duration(config.proxy.shutdown_grace),
            "handed over: no new connections here, finishing in-flight requests"
        ),
    }
    match handle.shutdown().await {
        Drained::Clean => tracing::info!("all requests finished"),
        Drained::GraceExpired => {
            tracing::warn!("shutdown grace expired; remaining connections were cut")
        }
    }
    admin.stop().await;
    let handed_over = matches!(ending, Ending::HandedOver(_));
    let _ = stop_health.send(!handed_over);
    if let Err(e) = health_writer.await {
        tracing::warn!("the health state writer failed: {e}");
    }
    if handed_over {
        // The VIP stays; the programs stay attached through their pins (the next router
        // replaced them) and the maps stay theirs. Dropping ours releases nothing.
        if let Some(vip) = vip {
            vip.hand_over().await;
        }
        drop(steering);
        tracing::info!("exiting after the handover");
        return Ok(());
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

/// What a restart receives: new descriptors of every listening socket (proxy and admin)
/// and of the VIP and pin-directory locks. `Err` says why not; nothing is sent then.
fn offer(
    handle: &server::RouterHandle,
    admin: &admin::AdminHandle,
    vip: Option<&vip::VipHandle>,
    steering: Option<&Steering>,
    steered_local: Option<std::net::SocketAddr>,
) -> Result<handover::Offer, String> {
    use handover::{Item, Kind};
    let dup = |fd: std::os::fd::BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .map_err(|e| format!("cannot duplicate a lock descriptor: {e}"))
    };
    let mut items = Vec::new();
    for socket in handle.listening_sockets().map_err(|e| e.to_string())? {
        let kind = if Some(socket.local) == steered_local {
            Kind::Steered
        } else {
            Kind::Listener
        };
        items.push(Item {
            kind,
            local: Some(socket.local),
            fd: socket.fd,
        });
    }
    for (local, fd) in admin.listening_sockets().map_err(|e| e.to_string())? {
        items.push(Item {
            kind: Kind::Admin,
            local: Some(local),
            fd,
        });
    }
    if let Some(fd) = vip.and_then(vip::VipHandle::lock_fd) {
        items.push(Item {
            kind: Kind::VipLock,
            local: None,
            fd: dup(fd)?,
        });
    }
    if let Some(steering) = steering {
        items.push(Item {
            kind: Kind::PinLock,
            local: None,
            fd: dup(steering.lock_fd())?,
        });
    }
    Ok(handover::Offer {
        items,
        watchdog: notify::watchdog_interval(),
        vrrp_master: false,
    })
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

/// The pid of the router serving `config`'s region now: the one answering on its admin
/// listener, or, without one, the one named by its health state file in `dir`.
async fn serving_pid(config: &Config, dir: &std::path::Path) -> Option<u32> {
    if !config.admin.bind.is_empty() {
        return last_reload(config).await.map(|(pid, _, _)| pid);
    }
    health_state::read(dir, &config.region).ok().map(|f| f.pid)
}

/// `scope-router restart`: starts `run --takeover` as a new process of this binary (its
/// own session, output where this command's goes, in this command's cgroup), and waits,
/// bounded, until that process serves the region. Fails, changing nothing, when it exits first: the running router carries on.
async fn restart(
    config: &Config,
    path: &std::path::Path,
    workers: Option<usize>,
    health_state_dir: Option<&std::path::Path>,
    dir: &std::path::Path,
) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let socket = handover::socket_path(dir, &config.region);
    if !socket.exists() {
        bail!(
            "no running {} router to restart: {} does not exist; start one with `scope-router \
             run`, or give the same --health-state-dir as the running router",
            config.region,
            socket.display()
        );
    }
    let before = serving_pid(config, dir).await;
    let exe = std::env::current_exe().context("cannot find this binary to start the new router")?;
    let config_path = std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let mut command = std::process::Command::new(&exe);
    command
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .arg("--takeover")
        .stdin(std::process::Stdio::null());
    if let Some(workers) = workers {
        command.arg("--workers").arg(workers.to_string());
    }
    if let Some(dir) = health_state_dir {
        command.arg("--health-state-dir").arg(dir);
    }
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let pid = child.id();
    // Loading eBPF and adopting the VIP take a second or two; this bounds a wedged start.
    for _ in 0..900 {
        if let Some(status) = child.try_wait().context("cannot watch the new router")? {
            bail!(
                "the new router (pid {pid}) exited ({status}) before taking over; the running \
                 router keeps serving. The new router's log above says why"
            );
        }
        if serving_pid(config, dir).await == Some(pid) {
            match before {
                Some(old) => println!(
                    "restarted: pid {old} handed over to pid {pid}, which serves now; pid {old} drains and exits"
                ),
                None => println!("restarted: pid {pid} serves now"),
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    bail!(
        "the new router (pid {pid}) has not taken over within 90 s; it keeps trying in the \
         background: see its log, and stop it (kill {pid}) to abandon the restart"
    )
}
