//! `scope-router status`: kernel counters, the VIP and server health, read-only.
//!
//! The running router's own answer comes first: `status` asks its admin listener
//! (`GET /status`, docs/ARCHITECTURE.md §13), which builds the same report from live
//! state with [`kernel_report`], [`vip_status`] and [`live_servers`]. When no router answers
//! there, this module reads the pinned maps and the state files itself.
//!
//! Server health is what the running router sees: its published state file
//! ([`crate::health_state`]), with each server's state, since when, the last check and the
//! counts, for local, passthrough and other regions' servers. When no router is running (no
//! file, its writer gone, or stale), every local and passthrough server gets one bare TCP
//! connect instead, and the output says so.
//!
//! Every probe here only reads: pinned maps are opened read-only, the VIP is looked up
//! over netlink without changing anything, the state file is only read, and backends get a
//! bare TCP connect that is closed at once. Safe to run at any time beside a running router.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::admin::AdminSettings;
use crate::config::Config;
use crate::ebpf::{self, EbpfSettings, Status as KernelStatus};
use crate::health_state::{self, Placement, Role, ServerIndex};
use crate::routing::Router;
use crate::server_slots::Slots;
use crate::vip::{self, VipSettings};

/// How long a backend may take to accept a TCP connection before it counts as down.
pub const HEALTH_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything `scope-router status` reports.
#[derive(Debug, Serialize)]
pub struct RouterStatus {
    pub region: String,
    pub ebpf_mode: &'static str,
    /// `Err` carries why the kernel side could not be read (e.g. never ran with eBPF).
    #[serde(serialize_with = "ser_result")]
    pub kernel: Result<KernelStatus, String>,
    /// `None` when the config has no `[vip]`.
    #[serde(serialize_with = "ser_opt_result")]
    pub vip: Option<Result<VipReport, String>>,
    /// Where `servers` comes from.
    pub health: HealthSource,
    /// Every server the router sends to: local servers, other regions' frontends and
    /// passthrough servers (no frontends when `health.source` is `probe`).
    pub servers: Vec<ServerStatus>,
    /// Servers of this configuration the running router does not have (it started from an
    /// older configuration); not counted as down.
    pub not_in_router: Vec<Placement>,
    /// The VRRP speaker of a running router with `[vrrp]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vrrp: Option<crate::vrrp::SpeakerStatus>,
    /// Every certificate the `https://` listeners serve, with its expiry.
    pub certificates: Vec<CertificateStatus>,
}

/// One certificate served, and when it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateStatus {
    /// Its PEM file (`[tls]`, `[ports.N]` or `[[tls.sni]]` `certificate`).
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// The names it is valid for (subjectAltName).
    pub names: Vec<String>,
    /// Its notAfter (RFC 3339).
    pub not_after: String,
    /// Whole days until then (negative once expired).
    pub days_left: i64,
}

/// The certificates `router`'s listeners serve, as of `now`.
pub fn certificates(router: &Router, now: SystemTime) -> Vec<CertificateStatus> {
    router
        .tls()
        .certificates()
        .into_iter()
        .map(|id| CertificateStatus {
            days_left: id.days_left(now),
            not_after: humantime::format_rfc3339_seconds(id.not_after).to_string(),
            names: id.names,
            certificate: id.files.certificate,
            key: id.files.key,
        })
        .collect()
}

/// Where the server health comes from.
#[derive(Debug, Serialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum HealthSource {
    /// The running router's own view, read from its state file.
    Router {
        file: PathBuf,
        pid: u32,
        written_at: String,
        /// How old the file was when read, in milliseconds.
        age_ms: u64,
    },
    /// No running router's view (`reason`): each local server got one TCP connect now.
    Probe { file: PathBuf, reason: String },
    /// The running router's in-memory state, read by its own admin listener (`/status`).
    Live { pid: u32 },
}

/// One server and its health.
#[derive(Debug, Serialize)]
pub struct ServerStatus {
    #[serde(flatten)]
    pub placement: Placement,
    pub up: bool,
    /// When the server entered its state (RFC 3339); `None` for a one-off probe.
    pub since: Option<String>,
    /// The router's last check, or this command's probe (`health.source = probe`).
    pub last_result: Option<String>,
    /// The last failed connect of a real request; informational.
    pub last_connect_failure: Option<String>,
    /// Checks counted by the router; `None` for a one-off probe.
    pub checks: Option<u64>,
    pub failures: Option<u64>,
    /// Why the router checks this server by TCP connect only (an HAProxy far side).
    pub degraded: Option<String>,
    /// Requests the server answered; only the live view (`health.source = live`) has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Its `maxconn` slots now; only the live view has them, for a limited server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots: Option<SlotsStatus>,
}

/// A limited server's slots as the running router counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SlotsStatus {
    /// The `maxconn` in force.
    pub maxconn: u32,
    /// Exchanges in progress.
    pub in_use: u32,
    /// Requests waiting for a slot now whose balanced pick this server was.
    pub queued: u32,
    /// Requests that waited `[timeouts] queue` in vain (503), counted on their pick.
    pub queue_timeouts: u64,
}

impl SlotsStatus {
    pub fn of(slots: &Slots) -> SlotsStatus {
        SlotsStatus {
            maxconn: slots.max(),
            in_use: slots.in_use(),
            queued: slots.queued(),
            queue_timeouts: slots.queue_timeouts(),
        }
    }
}

/// The VIP as seen right now.
#[derive(Debug, Serialize)]
pub struct VipReport {
    pub address: Ipv4Addr,
    pub interface: String,
    pub interface_present: bool,
    pub present: bool,
    pub managed: Option<bool>,
    pub last_announced: Option<String>,
    pub announcements: u64,
    pub readded: u64,
    /// Pid of the router holding the VIP's ownership lock, if any.
    pub owner_pid: Option<u32>,
    /// Some router holds the lock (its pid may not be written yet).
    pub owned: bool,
    #[serde(skip)]
    pub summary: String,
}

/// The pinned kernel state, or why there is none (`ebpf.mode = off`, never ran with eBPF).
/// Read-only: safe beside the router that owns the pins.
pub fn kernel_report(ebpf: &EbpfSettings) -> Result<KernelStatus, String> {
    if ebpf.mode == ebpf::Mode::Off {
        Err("ebpf.mode = off: the kernel side is not used".to_owned())
    } else {
        ebpf::read_status(&ebpf.pin_path).map_err(|e| e.to_string())
    }
}

/// The VIP as netlink and its state file show it now; `None` without `[vip]`. Ask from the
/// router's network namespace.
pub async fn vip_status(vip: Option<&VipSettings>) -> Option<Result<VipReport, String>> {
    match vip {
        None => None,
        Some(v) => Some(vip_report(v.address, &v.interface, &v.state_dir).await),
    }
}

/// Every server of `router` as its checkers see it right now, with the requests each
/// answered (the running router's own view, for `/status`).
pub fn live_servers(router: &Router) -> Vec<ServerStatus> {
    let index = ServerIndex::new(router);
    index
        .entries()
        .iter()
        .zip(index.slots())
        .map(|((placement, health), slots)| {
            let snap = health.snapshot();
            ServerStatus {
                placement: placement.clone(),
                up: snap.up,
                since: Some(rfc3339(snap.since)),
                last_result: snap.last_result,
                last_connect_failure: snap.last_connect_failure,
                checks: Some(snap.checks),
                failures: Some(snap.failures),
                degraded: snap.degraded,
                requests: Some(health.requests()),
                slots: slots.as_deref().map(SlotsStatus::of),
            }
        })
        .collect()
}

/// Collects the status for `config` without a running router's help; the health state is
/// looked for in `state_dir`. Never changes any state.
pub async fn collect(config: &Config, router: &Router, state_dir: &Path) -> RouterStatus {
    let kernel = kernel_report(&config.ebpf);
    let vip = vip_status(config.vip.as_ref()).await;
    let index = ServerIndex::new(router);
    let file = health_state::file_path(state_dir, router.region());
    let (health, servers, not_in_router) = match health_state::read(state_dir, router.region()) {
        Ok(state) => {
            let now = SystemTime::now();
            let age = now.duration_since(state.written_at).unwrap_or_default();
            let not_in_router = index
                .entries()
                .iter()
                .map(|(p, _)| p)
                .filter(|p| state.find(p).is_none())
                .cloned()
                .collect();
            let servers = state
                .servers
                .iter()
                .map(|r| ServerStatus {
                    placement: r.placement.clone(),
                    up: r.up,
                    since: Some(humantime::format_rfc3339_seconds(r.since).to_string()),
                    last_result: r.last_result.clone(),
                    last_connect_failure: r.last_connect_failure.clone(),
                    checks: Some(r.checks),
                    failures: Some(r.failures),
                    degraded: r.degraded.clone(),
                    requests: None,
                    slots: None,
                })
                .collect();
            let source = HealthSource::Router {
                file,
                pid: state.pid,
                written_at: humantime::format_rfc3339_millis(state.written_at).to_string(),
                age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            };
            (source, servers, not_in_router)
        }
        Err(why) => {
            // Only our own servers: other regions' frontends are the far routers' business,
            // and a one-off connect says little about a whole region.
            let probes = index
                .entries()
                .iter()
                .filter(|(p, _)| p.role != Role::Remote)
                .map(|(p, _)| async move {
                    let (up, detail) = probe(&p.addr).await;
                    ServerStatus {
                        placement: p.clone(),
                        up,
                        since: None,
                        last_result: Some(detail),
                        last_connect_failure: None,
                        checks: None,
                        failures: None,
                        degraded: None,
                        requests: None,
                        slots: None,
                    }
                });
            let servers = futures_util::future::join_all(probes).await;
            let source = HealthSource::Probe {
                file,
                reason: why.to_string(),
            };
            (source, servers, Vec::new())
        }
    };
    RouterStatus {
        region: router.region().to_owned(),
        ebpf_mode: config.ebpf.mode.as_str(),
        kernel,
        vip,
        health,
        servers,
        not_in_router,
        vrrp: None,
        certificates: certificates(router, SystemTime::now()),
    }
}

/// How long `status` waits for a running router's admin listener to accept.
pub const ADMIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the whole `/status` exchange may take once connected: the router reads its
/// pinned maps and asks netlink about the VIP, which takes milliseconds.
const ADMIN_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the running router's `/status` could not be used; `status` then reads the pinned
/// maps and state files itself and prints this as the reason.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("[admin] bind is empty, so no router answers /status")]
    NoAdmin,
    #[error("nothing answered at {url} within {ADMIN_CONNECT_TIMEOUT:?}")]
    ConnectTimeout { url: String },
    #[error("nothing answered at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url} did not answer within {ADMIN_ANSWER_TIMEOUT:?}")]
    AnswerTimeout { url: String },
    #[error("{url} broke off: {source}")]
    Http {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{url} answered HTTP {status}, not a scope-router status")]
    Status { url: String, status: u16 },
    #[error("{url} answered with something other than a scope-router status: {reason}")]
    Invalid { url: String, reason: String },
    #[error(
        "{url} is the router of region {answered}, not of {wanted} (another router's \
         [admin] bind?); set a distinct [admin] bind per router"
    )]
    OtherRegion {
        url: String,
        answered: String,
        wanted: String,
    },
}

/// What a running router's `/status` answered.
#[derive(Debug)]
pub struct Fetched {
    /// `http://addr/status`, as `status` names its source.
    pub url: String,
    /// The JSON document, or the text report (`/status?format=text`).
    pub body: String,
    /// Every server up and the VIP present, as the router judged it.
    pub healthy: bool,
}

/// Where `status` asks the running router: the first `[admin] bind`, with a wildcard
/// address replaced by loopback (a wildcard bind listens there too).
pub fn admin_address(admin: &AdminSettings) -> Option<std::net::SocketAddr> {
    let mut addr = *admin.bind.first()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Some(addr)
}

/// Asks the running router of `region` for its status at its admin listener: the JSON
/// document, or with `text` the report as `status` prints it. Fails when nothing answers,
/// or when what answers is not that region's router.
pub async fn fetch_running(
    admin: &AdminSettings,
    region: &str,
    text: bool,
) -> Result<Fetched, FetchError> {
    let addr = admin_address(admin).ok_or(FetchError::NoAdmin)?;
    let path = if text {
        "/status?format=text"
    } else {
        "/status"
    };
    let url = format!("http://{addr}/status");
    let stream =
        match tokio::time::timeout(ADMIN_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
        {
            Err(_) => return Err(FetchError::ConnectTimeout { url }),
            Ok(Err(source)) => return Err(FetchError::Connect { url, source }),
            Ok(Ok(stream)) => stream,
        };
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| FetchError::Invalid {
            url: url.clone(),
            reason: format!("cannot build the request: {e}"),
        })?;
    let exchange = async {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let driver = tokio::spawn(conn);
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (answered_region, healthy) = (header(REGION_HEADER), header(HEALTHY_HEADER));
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await?
            .to_bytes();
        driver.abort();
        Ok::<_, hyper::Error>((status, answered_region, healthy, body))
    };
    let (status, answered, healthy, body) =
        match tokio::time::timeout(ADMIN_ANSWER_TIMEOUT, exchange).await {
            Err(_) => return Err(FetchError::AnswerTimeout { url }),
            Ok(Err(source)) => return Err(FetchError::Http { url, source }),
            Ok(Ok(answer)) => answer,
        };
    if status != 200 {
        return Err(FetchError::Status { url, status });
    }
    let (Some(answered), Some(healthy)) = (answered, healthy) else {
        return Err(FetchError::Invalid {
            url,
            reason: format!("no {REGION_HEADER} or {HEALTHY_HEADER} header"),
        });
    };
    if answered != region {
        return Err(FetchError::OtherRegion {
            url,
            answered,
            wanted: region.to_owned(),
        });
    }
    let body = String::from_utf8(body.to_vec()).map_err(|e| FetchError::Invalid {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    Ok(Fetched {
        url,
        body,
        healthy: healthy == "true",
    })
}

/// Response header of `/status` naming the router's region, so `status` never reports
/// another router that happens to listen at the address.
pub const REGION_HEADER: &str = "x-scope-router-region";
/// Response header of `/status`: `true` when every server is up and the VIP present.
pub const HEALTHY_HEADER: &str = "x-scope-router-healthy";

/// One bare TCP connect, closed at once: whether `addr` accepts, and the time or the error.
async fn probe(addr: &str) -> (bool, String) {
    let started = std::time::Instant::now();
    let outcome =
        tokio::time::timeout(HEALTH_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await;
    match outcome {
        Ok(Ok(_)) => (true, format!("connected in {:?}", started.elapsed())),
        Ok(Err(e)) => (false, format!("connect: {e}")),
        Err(_) => (
            false,
            format!("no answer within {HEALTH_CONNECT_TIMEOUT:?}"),
        ),
    }
}

async fn vip_report(
    address: Ipv4Addr,
    interface: &str,
    state_dir: &Path,
) -> Result<VipReport, String> {
    let status = vip::status(address, interface, state_dir)
        .await
        .map_err(|e| e.to_string())?;
    Ok(VipReport {
        address,
        interface: status.interface.clone(),
        interface_present: status.interface_present,
        present: status.present,
        managed: status.managed,
        last_announced: status.last_announced.map(rfc3339),
        announcements: status.announcements,
        readded: status.readded,
        owner_pid: status.lock_holder.flatten(),
        owned: status.lock_holder.is_some(),
        summary: status.to_string(),
    })
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

fn ser_result<S: serde::Serializer, T: Serialize>(
    value: &Result<T, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Ok(v) => v.serialize(s),
        Err(e) => serde_json::json!({ "error": e }).serialize(s),
    }
}

fn ser_opt_result<S: serde::Serializer, T: Serialize>(
    value: &Option<Result<T, String>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        None => s.serialize_none(),
        Some(r) => ser_result(r, s),
    }
}

impl RouterStatus {
    /// True when every server is up and, where configured, the VIP is present (under
    /// VRRP only on the master: a backup holds no VIP by design).
    pub fn healthy(&self) -> bool {
        let vip_expected = self
            .vrrp
            .as_ref()
            .is_none_or(|v| v.state == crate::vrrp::SpeakerState::Master);
        self.servers.iter().all(|s| s.up)
            && !(vip_expected && matches!(&self.vip, Some(Ok(v)) if !v.present))
    }
}

/// `local`, `local, backup, weight 2`, or `RegionTwo frontend`.
fn role_text(p: &Placement) -> String {
    match p.role {
        Role::Remote => format!("{} frontend", p.region),
        Role::Local | Role::Passthrough => {
            let mut text = match p.role {
                Role::Passthrough => format!("passthrough {}", p.backends.join(",")),
                _ => "local".to_owned(),
            };
            if p.backup {
                text.push_str(", backup");
            }
            if p.weight != 1 {
                text.push_str(&format!(", weight {}", p.weight));
            }
            if let Some(max) = p.maxconn {
                text.push_str(&format!(", maxconn {max}"));
            }
            text
        }
    }
}

/// A short age: `412ms` under a second, whole seconds (`3m 5s`) above.
pub(crate) fn short_age(age: Duration) -> String {
    let age = if age < Duration::from_secs(1) {
        Duration::from_millis(u64::try_from(age.as_millis()).unwrap_or(0))
    } else {
        Duration::from_secs(age.as_secs())
    };
    humantime::format_duration(age).to_string()
}

impl RouterStatus {
    /// The running router's server table (from its state file or live).
    fn fmt_servers(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let live = matches!(self.health, HealthSource::Live { .. });
        let requests = if live { "REQUESTS  " } else { "" };
        writeln!(
            f,
            "{:<22} {:<22} {:<18} {:<5} {:<30} {:>7} {:>7}  {requests}LAST CHECK",
            "LISTENER", "SERVER", "FOR", "STATE", "SINCE", "CHECKS", "FAILED"
        )?;
        let now = SystemTime::now();
        for s in &self.servers {
            let since = s.since.as_deref().unwrap_or("-");
            let age = humantime::parse_rfc3339(since)
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| format!(" (for {})", short_age(d)))
                .unwrap_or_default();
            let requests = match s.requests {
                Some(n) if live => format!("{n:>8}  "),
                _ => String::new(),
            };
            writeln!(
                f,
                "{:<22} {:<22} {:<18} {:<5} {:<30} {:>7} {:>7}  {requests}{}",
                s.placement.listener.to_string(),
                s.placement.addr,
                role_text(&s.placement),
                if s.up { "up" } else { "DOWN" },
                format!("{since}{age}"),
                s.checks.unwrap_or(0),
                s.failures.unwrap_or(0),
                s.last_result.as_deref().unwrap_or("(no check yet)")
            )?;
            if let Some(why) = &s.degraded {
                writeln!(f, "    degraded: {why}")?;
            }
            if let Some(why) = &s.last_connect_failure {
                writeln!(f, "    last failed request connect: {why}")?;
            }
            if let Some(slots) = &s.slots {
                writeln!(
                    f,
                    "    slots: {} of {} in use, {} queued, {} queue timeouts",
                    slots.in_use, slots.maxconn, slots.queued, slots.queue_timeouts
                )?;
            }
        }
        for p in &self.not_in_router {
            writeln!(
                f,
                "{:<22} {:<22} {:<18} not in the running router (it started from an \
                 older configuration; restart it to use this server)",
                p.listener.to_string(),
                p.addr,
                role_text(p)
            )?;
        }
        Ok(())
    }
}

/// `vrrp: backup (priority 100), VRRPv2 vrid 51 on eth2, master 192.0.2.1 (priority 150),
/// last advert …, 3 transitions (last: …), refused 0, split brains 0`.
fn vrrp_line(v: &crate::vrrp::SpeakerStatus) -> String {
    let master = match (v.master, v.master_priority) {
        (Some(m), Some(p)) => format!("master {m} (priority {p})"),
        (Some(m), None) => format!("master {m}"),
        _ => "no master known".to_owned(),
    };
    let last = v
        .last_advert_received
        .map(|t| format!("last advert heard {}", humantime::format_rfc3339_seconds(t)))
        .unwrap_or_else(|| "no advert heard".to_owned());
    let transition = v
        .last_transition
        .as_ref()
        .map(|t| format!(" (last: {} → {}, {})", t.from, t.to, t.reason))
        .unwrap_or_default();
    let r = &v.refused;
    let refused = r.password
        + r.interval
        + r.version
        + r.addresses
        + r.ttl
        + r.checksum
        + r.not_a_peer
        + r.malformed;
    format!(
        "vrrp: {} (priority {}{}), VRRPv{} vrid {} on {} from {}, {master}, {last}, {} transitions{transition}, {refused} adverts refused, {} split brains",
        v.state,
        v.priority,
        if v.healthy {
            ""
        } else {
            ", own health failing"
        },
        v.version,
        v.vrid,
        v.interface,
        v.address,
        v.transitions,
        v.split_brains,
    )
}

impl fmt::Display for RouterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scope-router {} (ebpf.mode = {})",
            self.region, self.ebpf_mode
        )?;
        writeln!(f)?;
        match &self.kernel {
            Ok(kernel) => write!(f, "{}", kernel.render_table())?,
            Err(why) => writeln!(f, "kernel side: {why}")?,
        }
        writeln!(f)?;
        match &self.vip {
            None => writeln!(f, "VIP: none configured ([vip] absent)")?,
            Some(Ok(v)) => writeln!(f, "{}", v.summary)?,
            Some(Err(why)) => writeln!(f, "VIP: cannot read: {why}")?,
        }
        if let Some(v) = &self.vrrp {
            writeln!(f, "{}", vrrp_line(v))?;
        }
        writeln!(f)?;
        if !self.certificates.is_empty() {
            writeln!(f, "certificates served:")?;
            writeln!(
                f,
                "{:<9} {:<20} {:<30} CERTIFICATE",
                "DAYS LEFT", "NOT AFTER", "NAMES"
            )?;
            for c in &self.certificates {
                let days = if c.days_left < 0 {
                    "EXPIRED".to_owned()
                } else {
                    c.days_left.to_string()
                };
                writeln!(
                    f,
                    "{days:<9} {:<20} {:<30} {}",
                    c.not_after,
                    c.names.join(","),
                    c.certificate.display()
                )?;
            }
            writeln!(f)?;
        }
        match &self.health {
            HealthSource::Router {
                file,
                pid,
                written_at,
                age_ms,
            } => {
                writeln!(
                    f,
                    "health as the running router (pid {pid}) sees it, from {} written at \
                     {written_at} ({} ago):",
                    file.display(),
                    short_age(Duration::from_millis(*age_ms))
                )?;
                self.fmt_servers(f)?;
            }
            HealthSource::Live { pid } => {
                writeln!(f, "health as the running router (pid {pid}) sees it now:")?;
                self.fmt_servers(f)?;
            }
            HealthSource::Probe { reason, .. } => {
                writeln!(
                    f,
                    "health: {reason}; probed each local server once with a TCP connect \
                     instead (other regions' frontends are not probed):"
                )?;
                writeln!(
                    f,
                    "{:<22} {:<22} {:<18} {:<5} DETAIL",
                    "LISTENER", "SERVER", "FOR", "STATE"
                )?;
                for s in &self.servers {
                    writeln!(
                        f,
                        "{:<22} {:<22} {:<18} {:<5} {}",
                        s.placement.listener.to_string(),
                        s.placement.addr,
                        role_text(&s.placement),
                        if s.up { "up" } else { "DOWN" },
                        s.last_result.as_deref().unwrap_or("")
                    )?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn server(role: Role, addr: &str, up: bool, degraded: Option<&str>) -> ServerStatus {
        ServerStatus {
            placement: Placement {
                role,
                listener: SocketAddr::from(([192, 168, 142, 244], 8774)),
                region: match role {
                    Role::Local | Role::Passthrough => "RegionOne",
                    Role::Remote => "RegionTwo",
                }
                .to_owned(),
                backends: vec!["RegionOne_compute_public".to_owned()],
                services: vec!["compute/public".to_owned()],
                addr: addr.to_owned(),
                weight: 1,
                backup: false,
                maxconn: None,
                balance: "roundrobin".to_owned(),
            },
            up,
            since: Some("2026-11-28T20:00:00Z".to_owned()),
            last_result: Some(
                if up {
                    "ok in 0.2ms"
                } else {
                    "connect: refused"
                }
                .to_owned(),
            ),
            last_connect_failure: None,
            checks: Some(7),
            failures: Some(if up { 0 } else { 7 }),
            degraded: degraded.map(str::to_owned),
            requests: None,
            slots: None,
        }
    }

    fn status(servers: Vec<ServerStatus>) -> RouterStatus {
        RouterStatus {
            region: "RegionOne".to_owned(),
            ebpf_mode: "off",
            kernel: Err("ebpf.mode = off".to_owned()),
            vip: None,
            health: HealthSource::Router {
                file: PathBuf::from("/run/scope-router/health-RegionOne.json"),
                pid: 4242,
                written_at: "2026-11-28T20:00:05.000Z".to_owned(),
                age_ms: 412,
            },
            servers,
            not_in_router: Vec::new(),
            vrrp: None,
            certificates: Vec::new(),
        }
    }

    #[test]
    fn healthy_only_when_every_server_is_up() {
        let degraded = Some("not a scope-router, so only TCP connect is checked");
        let cases = [
            ("all up, one degraded", vec![true, true], true),
            ("a local server down", vec![false, true], false),
            ("the other region's frontend down", vec![true, false], false),
        ];
        for (name, ups, want) in cases {
            let s = status(vec![
                server(Role::Local, "192.168.142.245:8774", ups[0], None),
                server(Role::Remote, "192.168.144.244:8774", ups[1], degraded),
            ]);
            assert_eq!(s.healthy(), want, "{name}");
        }
    }

    #[test]
    fn text_shows_the_routers_view_with_reasons() {
        let s = status(vec![
            server(Role::Local, "192.168.142.245:8774", false, None),
            server(
                Role::Remote,
                "192.168.144.244:8774",
                true,
                Some("not a scope-router, so only TCP connect is checked"),
            ),
        ]);
        let text = s.to_string();
        for want in [
            "health as the running router (pid 4242) sees it, from \
             /run/scope-router/health-RegionOne.json written at 2026-11-28T20:00:05.000Z \
             (412ms ago):",
            "192.168.142.245:8774   local              DOWN  2026-11-28T20:00:00Z",
            "connect: refused\n",
            "192.168.144.244:8774   RegionTwo frontend up",
            "    degraded: not a scope-router, so only TCP connect is checked\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        let json = serde_json::to_value(&s).expect("serializes");
        assert_eq!(json["health"]["source"], "router");
        assert_eq!(json["servers"][0]["up"], false);
        assert_eq!(json["servers"][1]["role"], "remote");
    }
}
