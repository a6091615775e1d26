//! Reload (docs/ARCHITECTURE.md §14): re-read the configuration and catalogs, validate
//! them as `check` does, and swap the routing table in the running router; a config
//! that fails validation changes nothing. What was loaded when, and how the last reload
//! went, for `status`, `/status` and `/metrics`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use serde::Serialize;

use crate::config::Config;
use crate::metrics::Families;
use crate::proxy::{ListenerChanges, RouterHandle, ServeError};
use crate::routing::{Router, RoutingError};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid configuration {}: {source}", path.display())]
    Config {
        path: std::path::PathBuf,
        source: crate::config::ConfigError,
    },
    #[error("cannot build the routing table from {}: {source}", path.display())]
    Routing {
        path: std::path::PathBuf,
        source: RoutingError,
    },
    #[error("cannot serve the new configuration: {0}")]
    Serve(#[from] ServeError),
}

/// The configuration in use and the reloads so far.
#[derive(Debug, Clone)]
pub struct ConfigState {
    /// When the configuration in use was loaded (start or last successful reload).
    pub loaded_at: SystemTime,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// The last reload attempt, if any.
    pub last_reload: Option<ReloadOutcome>,
}

/// How one reload went.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReloadOutcome {
    /// RFC 3339.
    pub at: String,
    pub ok: bool,
    /// Why it changed nothing (the error `check` prints), or what it changed.
    pub message: String,
}

/// [`ConfigState`] shared by the reloader and its readers.
pub type SharedConfigState = Arc<Mutex<ConfigState>>;

impl ConfigState {
    /// A configuration loaded at `loaded_at`, never reloaded.
    pub fn shared(loaded_at: SystemTime) -> SharedConfigState {
        Arc::new(Mutex::new(ConfigState {
            loaded_at,
            reloads_ok: 0,
            reloads_failed: 0,
            last_reload: None,
        }))
    }
}

/// What a successful reload did.
#[derive(Debug)]
pub struct Reloaded {
    pub config: Config,
    pub listeners: ListenerChanges,
    /// Settings that changed but only take effect at the next start.
    pub restart_needed: Vec<&'static str>,
}

/// Re-reads `path` and serves it from `handle` when it is valid; `current` is the
/// configuration in use (for what a reload cannot change). Records the outcome in
/// `state` either way.
pub fn reload(
    handle: &RouterHandle,
    path: &Path,
    current: &Config,
    state: &SharedConfigState,
) -> Result<Reloaded, ReloadError> {
    let outcome = try_reload(handle, path, current);
    if let Ok(mut state) = state.lock() {
        let at = SystemTime::now();
        let message = match &outcome {
            Ok(r) => {
                state.reloads_ok += 1;
                state.loaded_at = at;
                summary(r)
            }
            Err(e) => {
                state.reloads_failed += 1;
                e.to_string()
            }
        };
        state.last_reload = Some(ReloadOutcome {
            at: humantime::format_rfc3339_seconds(at).to_string(),
            ok: outcome.is_ok(),
            message,
        });
    }
    outcome
}

fn try_reload(
    handle: &RouterHandle,
    path: &Path,
    current: &Config,
) -> Result<Reloaded, ReloadError> {
    let config = Config::load(path).map_err(|source| ReloadError::Config {
        path: path.to_owned(),
        source,
    })?;
    let previous = handle.router();
    let router = Router::from_config_after(&config, Some(&previous)).map_err(|source| {
        ReloadError::Routing {
            path: path.to_owned(),
            source,
        }
    })?;
    let listeners = handle.replace(&config, Arc::new(router))?;
    let restart_needed = restart_only_changes(current, &config);
    Ok(Reloaded {
        config,
        listeners,
        restart_needed,
    })
}

/// The sections a reload does not apply: the VIP, VRRP, the kernel side's place, the admin
/// listener, the log format and the proxy's connection-level limits are set up once.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.vip != new.vip {
        changed.push("[vip]");
    }
    if old.ebpf.mode != new.ebpf.mode
        || old.ebpf.pin_path != new.ebpf.pin_path
        || old.ebpf.interface != new.ebpf.interface
    {
        changed.push("[ebpf] mode, pin_path, interface");
    }
    if old.vrrp != new.vrrp {
        // The speaker keeps advertising through a reload; `scope-router restart` applies
        // a new [vrrp] without a failover.
        changed.push("[vrrp]");
    }
    if old.admin.bind != new.admin.bind {
        changed.push("[admin] bind");
    }
    if old.log != new.log {
        changed.push("[log]");
    }
    if old.proxy.max_header_bytes != new.proxy.max_header_bytes
        || old.proxy.retries != new.proxy.retries
        || old.proxy.shutdown_grace != new.proxy.shutdown_grace
    {
        changed.push("[proxy] max_header_bytes, retries, shutdown_grace");
    }
    changed
}

fn summary(r: &Reloaded) -> String {
    let mut text = String::from("reloaded");
    let addrs = |v: &[std::net::SocketAddr]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !r.listeners.added.is_empty() {
        text.push_str(&format!("; listening on {}", addrs(&r.listeners.added)));
    }
    if !r.listeners.removed.is_empty() {
        text.push_str(&format!(
            "; stopped accepting on {}",
            addrs(&r.listeners.removed)
        ));
    }
    if !r.restart_needed.is_empty() {
        text.push_str(&format!(
            "; changed but applied only at the next start: {}",
            r.restart_needed.join(", ")
        ));
    }
    text
}

/// `/metrics` series of the configuration state (Prometheus' own names for the same).
#[derive(Debug)]
pub struct ConfigCollector(pub SharedConfigState);

impl Collector for ConfigCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = match self.0.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        };
        let mut out = Families::new(&mut encoder);
        out.gauges(
            "config_last_reload_successful",
            "1 when the last reload (or the start) applied the configuration, 0 when it \
             failed and the previous one is still in use",
            [(
                Vec::new(),
                i64::from(state.last_reload.as_ref().is_none_or(|r| r.ok)),
            )],
        )?;
        out.gauges(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration in use was loaded (Unix time)",
            [(Vec::new(), secs(state.loaded_at))],
        )?;
        out.counters(
            "config_reloads",
            "Reloads by result",
            [
                (vec![("result", "ok")], state.reloads_ok),
                (vec![("result", "failed")], state.reloads_failed),
            ],
        )
    }
}
