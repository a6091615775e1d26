//! `scope-router status`: kernel counters, the VIP and backend health, read-only.
//!
//! Every probe here only reads: pinned maps are opened read-only, the VIP is looked up
//! over netlink without changing anything, and backends get a bare TCP connect that is
//! closed at once. Safe to run at any time beside a running router.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::Config;
use crate::ebpf::{self, Status as KernelStatus};
use crate::routing::Router;
use crate::vip;

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
    pub backends: Vec<BackendHealth>,
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

/// One local backend and whether it accepts connections.
#[derive(Debug, Serialize)]
pub struct BackendHealth {
    /// `VIP:port` or passthrough name the backend serves.
    pub listener: String,
    pub backend: SocketAddr,
    pub up: bool,
    /// Why it is down, or the connect time when up.
    pub detail: String,
}

/// Collects the status for `config`. Never changes any state.
pub async fn collect(config: &Config, router: &Router) -> RouterStatus {
    let kernel = if config.ebpf.mode == ebpf::Mode::Off {
        Err("ebpf.mode = off: the kernel side is not used".to_owned())
    } else {
        ebpf::read_status(&config.ebpf.pin_path).map_err(|e| e.to_string())
    };
    let vip = match &config.vip {
        None => None,
        Some(v) => Some(vip_report(v.address, &v.interface, &v.state_dir).await),
    };
    let mut targets: Vec<(String, SocketAddr)> = router
        .listeners()
        .iter()
        .map(|l| (l.spec.addr.to_string(), l.spec.local_backend))
        .collect();
    targets.extend(
        config
            .passthrough
            .iter()
            .map(|p| (format!("{} ({})", p.name, p.bind), p.backend)),
    );
    let probes = targets.into_iter().map(|(listener, backend)| async move {
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(
            HEALTH_CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(backend),
        )
        .await;
        let (up, detail) = match outcome {
            Ok(Ok(_)) => (true, format!("connected in {:?}", started.elapsed())),
            Ok(Err(e)) => (false, e.to_string()),
            Err(_) => (
                false,
                format!("no answer within {HEALTH_CONNECT_TIMEOUT:?}"),
            ),
        };
        BackendHealth {
            listener,
            backend,
            up,
            detail,
        }
    });
    let backends = futures_util::future::join_all(probes).await;
    RouterStatus {
        region: router.region().to_owned(),
        ebpf_mode: config.ebpf.mode.as_str(),
        kernel,
        vip,
        backends,
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
    /// True when every backend answers and, where configured, the VIP is present.
    pub fn healthy(&self) -> bool {
        self.backends.iter().all(|b| b.up) && !matches!(&self.vip, Some(Ok(v)) if !v.present)
    }
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
        writeln!(f)?;
        writeln!(
            f,
            "{:<32} {:<24} {:<5} DETAIL",
            "LISTENER", "BACKEND", "STATE"
        )?;
        for b in &self.backends {
            writeln!(
                f,
                "{:<32} {:<24} {:<5} {}",
                b.listener,
                b.backend.to_string(),
                if b.up { "up" } else { "DOWN" },
                b.detail
            )?;
        }
        Ok(())
    }
}
