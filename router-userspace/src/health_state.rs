//! The running router's health state, published for `status` and `explain`.
//!
//! `run` keeps one JSON file, `<state_dir>/health-<Region>.json` ([`file_path`]), up to date
//! with every server's [`HealthSnapshot`] and where that server sits in the routing table
//! ([`Placement`]). Other processes read it instead of probing the servers themselves, so
//! they show what the router itself sees. The file is replaced atomically (temporary file +
//! rename), written at most every [`MIN_INTERVAL`], only when a state changed, and at least
//! every [`HEARTBEAT`]; a reader calls it [`Unavailable::Stale`] after [`STALE_AFTER`] and
//! [`Unavailable::WriterGone`] when the writer's pid no longer exists.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::balance::Balance;
use crate::config::Config;
use crate::health::{CheckSettings, Health, HealthSnapshot};
use crate::routing::{Router, SharedRouter};
use crate::server_slots::Slots;

/// The format written by this version; readers refuse any other (see [`HealthStateError`]).
pub const FORMAT_VERSION: u32 = 1;

/// Shortest time between two writes: checks may run every few milliseconds, the file need not.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Longest time between two writes: counters and check timings are refreshed this often even
/// when no state changed, and it proves the writer alive.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// A file older than this was not refreshed by three heartbeats: its writer is hung, or its
/// clock is far off, and what it says can no longer be trusted.
pub const STALE_AFTER: Duration = Duration::from_secs(3 * HEARTBEAT.as_secs());

/// Why the health state file cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum HealthStateError {
    #[error("cannot read the health state {}: {source}; check its permissions", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the health state {} cannot be decoded ({source}); a running router rewrites it \
         within {}s, otherwise delete it",
        path.display(),
        HEARTBEAT.as_secs()
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "the health state {} has format version {found}, this scope-router reads version \
         {FORMAT_VERSION}; run `status` with the same scope-router binary as the router",
        path.display()
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "the health state {} is region {found}'s, not {expected}'s; give each region its own \
         state directory",
        path.display()
    )]
    Region {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "cannot write the health state {}: {source}; make the state directory writable \
         ([vip] state_dir, else {}, or --health-state-dir)",
        path.display(),
        crate::vip::DEFAULT_STATE_DIR
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Whether a server is one of this region's own backend servers or another region's frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A backend server of a scoped listener in the current region.
    Local,
    /// Another region's frontend (its router, or an HAProxy), for one service.
    Remote,
    /// A server of a `[[passthrough]]` listener.
    Passthrough,
}

/// Where a server sits in the routing table: enough to find it again in another process that
/// built the same table (`status`, `explain`), and to say what it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub role: Role,
    /// The scoped listener (`VIP:port`) whose requests may go to this server.
    pub listener: SocketAddr,
    /// The region the server is in: the current region for local servers.
    pub region: String,
    /// Every backend name that includes this server (`Region_type_interface`, and for local
    /// servers the listener's `Region_transparent_PORT`).
    pub backends: Vec<String>,
    /// `type/interface` of every service this server answers for on `listener`.
    pub services: Vec<String>,
    /// `host:port` as configured (or as the other region's catalog has it).
    pub addr: String,
    pub weight: u32,
    pub backup: bool,
    /// Its `maxconn`: exchanges in progress at once; `None` without a limit.
    #[serde(default)]
    pub maxconn: Option<u32>,
    /// `roundrobin` or `source`: how the server's backend picks among its servers.
    pub balance: String,
}

/// One server's placement and health, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    #[serde(flatten)]
    pub placement: Placement,
    pub up: bool,
    /// When the server entered its current state (the router's start for the first state).
    #[serde(with = "rfc3339")]
    pub since: SystemTime,
    /// `"ok in 1.2ms"` or the failure of the last check; `None` before the first check.
    pub last_result: Option<String>,
    /// The last failed connect of a real request; informational, it changes no state.
    pub last_connect_failure: Option<String>,
    pub checks: u64,
    pub failures: u64,
    /// Why the configured probe was replaced by a TCP connect (an HAProxy far side).
    pub degraded: Option<String>,
}

impl ServerRecord {
    fn new(placement: Placement, snap: HealthSnapshot) -> ServerRecord {
        ServerRecord {
            placement,
            up: snap.up,
            since: snap.since,
            last_result: snap.last_result,
            last_connect_failure: snap.last_connect_failure,
            checks: snap.checks,
            failures: snap.failures,
            degraded: snap.degraded,
        }
    }

    /// What makes a new write worthwhile: the state and its reasons, not the counters or how
    /// fast the last successful check was (those ride along with the heartbeat).
    fn significant(&self) -> (bool, SystemTime, Option<&str>, Option<&str>, Option<&str>) {
        let last = self
            .last_result
            .as_deref()
            .map(|r| if r.starts_with("ok") { "ok" } else { r });
        (
            self.up,
            self.since,
            last,
            self.last_connect_failure.as_deref(),
            self.degraded.as_deref(),
        )
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthFile {
    /// [`FORMAT_VERSION`] of the writer.
    pub version: u32,
    pub region: String,
    /// The router that wrote it.
    pub pid: u32,
    #[serde(with = "rfc3339")]
    pub written_at: SystemTime,
    pub servers: Vec<ServerRecord>,
}

impl HealthFile {
    /// The record of the server at `placement`, if the running router has it (it does not
    /// when the configuration changed since it started).
    pub fn find(&self, placement: &Placement) -> Option<&ServerRecord> {
        self.servers.iter().find(|r| r.placement == *placement)
    }
}

/// `[vip] state_dir` when `[vip]` is set, else the VIP default; `explicit` (the
/// `--health-state-dir` option) overrides both.
pub fn state_dir(config: &Config, explicit: Option<&Path>) -> PathBuf {
    match (explicit, &config.vip) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(vip)) => vip.state_dir.clone(),
        (None, None) => PathBuf::from(crate::vip::DEFAULT_STATE_DIR),
    }
}

/// `<dir>/health-<Region>.json`; see [`file_name_safe`] for the region's characters.
pub fn file_path(dir: &Path, region: &str) -> PathBuf {
    dir.join(format!("health-{}.json", file_name_safe(region)))
}

/// `region` with every character other than ASCII letters, digits, `.`, `_` and `-` made
/// `_`, so that a region name in a file name cannot leave its directory.
pub fn file_name_safe(region: &str) -> String {
    region
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Every server of a routing table with its placement, in table order.
#[derive(Debug)]
pub struct ServerIndex {
    region: String,
    entries: Vec<(Placement, Arc<Health>)>,
    /// Each entry's `maxconn` slots (`None`: unlimited), in the same order.
    slots: Vec<Option<Arc<Slots>>>,
}

impl ServerIndex {
    /// Walks every listener's routes: local targets share the listener's servers (one entry
    /// each, collecting the backends and services they serve), each remote target has its own.
    pub fn new(router: &Router) -> ServerIndex {
        let mut entries: Vec<(Placement, Arc<Health>)> = Vec::new();
        let mut slots = Vec::new();
        for listener in router.listeners() {
            for route in listener.routes() {
                for target in &route.targets {
                    let service = format!("{}/{}", route.service_type, route.interface);
                    let balance = balance_name(target.balancer.balance());
                    for server in target.balancer.servers() {
                        if let Some((placement, _)) = entries
                            .iter_mut()
                            .find(|(_, h)| Arc::ptr_eq(h, &server.health))
                        {
                            push_unique(&mut placement.backends, &target.backend_name);
                            push_unique(&mut placement.services, &service);
                            continue;
                        }
                        let role = if target.remote.is_some() {
                            Role::Remote
                        } else {
                            Role::Local
                        };
                        let mut backends = vec![target.backend_name.to_string()];
                        if role == Role::Local {
                            backends.push(listener.transparent_name().to_owned());
                        }
                        entries.push((
                            Placement {
                                role,
                                listener: listener.spec.addr,
                                region: target.region.to_string(),
                                backends,
                                services: vec![service.clone()],
                                addr: server.health.addr().to_owned(),
                                weight: server.weight,
                                backup: server.backup,
                                maxconn: server.slots.as_ref().map(|s| s.max()),
                                balance: balance.to_owned(),
                            },
                            Arc::clone(&server.health),
                        ));
                        slots.push(server.slots.clone());
                    }
                }
            }
        }
        for p in router.passthrough() {
            let balance = balance_name(p.balancer.balance());
            for server in p.balancer.servers() {
                entries.push((
                    Placement {
                        role: Role::Passthrough,
                        listener: p.bind,
                        region: router.region().to_owned(),
                        backends: vec![p.name.clone()],
                        services: vec![format!("passthrough {}", p.name)],
                        addr: server.health.addr().to_owned(),
                        weight: server.weight,
                        backup: server.backup,
                        maxconn: server.slots.as_ref().map(|s| s.max()),
                        balance: balance.to_owned(),
                    },
                    Arc::clone(&server.health),
                ));
                slots.push(server.slots.clone());
            }
        }
        ServerIndex {
            region: router.region().to_owned(),
            entries,
            slots,
        }
    }

    /// Every server with its placement.
    pub fn entries(&self) -> &[(Placement, Arc<Health>)] {
        &self.entries
    }

    /// The `maxconn` slots of each of [`ServerIndex::entries`], in the same order
    /// (`None`: unlimited).
    pub fn slots(&self) -> &[Option<Arc<Slots>>] {
        &self.slots
    }

    /// The placement of one of this table's servers.
    pub fn placement(&self, health: &Arc<Health>) -> Option<&Placement> {
        self.entries
            .iter()
            .find(|(_, h)| Arc::ptr_eq(h, health))
            .map(|(p, _)| p)
    }

    /// The file content for the servers' current states.
    pub fn snapshot(&self, pid: u32, now: SystemTime) -> HealthFile {
        HealthFile {
            version: FORMAT_VERSION,
            region: self.region.clone(),
            pid,
            written_at: now,
            servers: self
                .entries
                .iter()
                .map(|(p, h)| ServerRecord::new(p.clone(), h.snapshot()))
                .collect(),
        }
    }

    /// Puts this table's (fresh, all up) servers into the states `file` records, so that the
    /// balancer's own pick shows what the running router would do; a server the file does not
    /// know goes down too, since the running router cannot pick it. Only this process's copy
    /// changes. Returns how many servers the file did not know.
    pub fn mirror(&self, file: &HealthFile) -> usize {
        // One failed check takes a server down; its `last_result` then reads like the file's.
        let settings = CheckSettings {
            fall: 1,
            ..CheckSettings::default()
        };
        let mut unknown = 0;
        for (placement, health) in &self.entries {
            match file.find(placement) {
                Some(r) if !r.up && health.is_up() => {
                    let reason = r.last_result.clone().unwrap_or_else(|| "down".to_owned());
                    health.record(Err(reason), &settings);
                }
                Some(_) => {}
                None => {
                    // The running router has no such server, so it never picks it.
                    unknown += 1;
                    health.record(
                        Err(
                            "not in the running router (it started from an older configuration)"
                                .to_owned(),
                        ),
                        &settings,
                    );
                }
            }
        }
        unknown
    }
}

fn push_unique(list: &mut Vec<String>, item: &str) {
    if !list.iter().any(|i| i == item) {
        list.push(item.to_owned());
    }
}

/// The config spelling of a balance algorithm.
pub fn balance_name(balance: Balance) -> &'static str {
    match balance {
        Balance::Roundrobin => "roundrobin",
        Balance::Source => "source",
    }
}

// ------------------------------------------------------------------------------- reading

/// Why no usable health state is available: a running router's view is unknown.
#[derive(Debug)]
pub enum Unavailable {
    /// No file: no router ran with this state directory since it was last cleaned, or the
    /// last one stopped cleanly (it removes its file).
    NoFile { path: PathBuf },
    /// The file names a pid that no longer exists: the router died without cleaning up.
    WriterGone { path: PathBuf, file: HealthFile },
    /// Not refreshed for longer than [`STALE_AFTER`].
    Stale {
        path: PathBuf,
        file: HealthFile,
        age: Duration,
    },
    /// Present but unusable.
    Invalid(HealthStateError),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::NoFile { path } => write!(
                f,
                "no router is running (no health state file {})",
                path.display()
            ),
            Unavailable::WriterGone { path, file } => write!(
                f,
                "no router is running (pid {} that wrote {} at {} is gone)",
                file.pid,
                path.display(),
                humantime::format_rfc3339_seconds(file.written_at)
            ),
            Unavailable::Stale { path, file, age } => write!(
                f,
                "stale: {} was last written {}s ago by pid {} (more than {}s): that router \
                 is hung or not refreshing it",
                path.display(),
                age.as_secs(),
                file.pid,
                STALE_AFTER.as_secs()
            ),
            // Callers say "unknown" themselves; the error names the file and the fix.
            Unavailable::Invalid(e) => write!(f, "{e}"),
        }
    }
}

/// Reads `<dir>/health-<region>.json`; `Ok` only when its writer is alive and it is fresh.
pub fn read(dir: &Path, region: &str) -> Result<HealthFile, Unavailable> {
    let path = file_path(dir, region);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Unavailable::NoFile { path });
        }
        Err(source) => {
            return Err(Unavailable::Invalid(HealthStateError::Read {
                path,
                source,
            }));
        }
    };
    let file = parse(&path, &text, region).map_err(Unavailable::Invalid)?;
    judge(path, file, SystemTime::now(), pid_alive)
}

/// Decodes a file's text and checks that it is this format and region.
fn parse(path: &Path, text: &[u8], region: &str) -> Result<HealthFile, HealthStateError> {
    // The version first, so a future format is reported as such rather than as bad JSON.
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let parse_err = |source| HealthStateError::Parse {
        path: path.to_path_buf(),
        source,
    };
    let Versioned { version } = serde_json::from_slice(text).map_err(parse_err)?;
    if version != FORMAT_VERSION {
        return Err(HealthStateError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let file: HealthFile = serde_json::from_slice(text).map_err(parse_err)?;
    if file.region != region {
        return Err(HealthStateError::Region {
            path: path.to_path_buf(),
            found: file.region,
            expected: region.to_owned(),
        });
    }
    Ok(file)
}

/// The staleness rules: a gone writer first (the surest sign), then the age. A file from the
/// future (the clock stepped back) counts as fresh: its writer is alive, which is what matters.
fn judge(
    path: PathBuf,
    file: HealthFile,
    now: SystemTime,
    alive: impl Fn(u32) -> bool,
) -> Result<HealthFile, Unavailable> {
    if !alive(file.pid) {
        return Err(Unavailable::WriterGone { path, file });
    }
    let age = now.duration_since(file.written_at).unwrap_or_default();
    if age > STALE_AFTER {
        return Err(Unavailable::Stale { path, file, age });
    }
    Ok(file)
}

/// Whether a process `pid` exists. Looks at `/proc` rather than sending signal 0: reading
/// cannot disturb anything, and no pid value can turn it into a signal to a process group.
fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new("/proc").join(pid.to_string()).exists()
}

// ------------------------------------------------------------------------------- writing

/// Publishes `router`'s health state to `path` until `stop` resolves, then removes the file
/// (if it is still this process's) so that readers see no router running, unless `stop`
/// says `false`: after a restart the file is the next router's.
pub fn spawn_writer(
    router: SharedRouter,
    path: PathBuf,
    stop: impl Future<Output = bool> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut writer = Writer::new(router, path);
        let remove = tokio::select! {
            remove = stop => remove,
            () = writer.run() => true,
        };
        if remove {
            writer.remove().await;
        }
    })
}

struct Writer {
    /// The table in use; the index is rebuilt when a reload swaps it.
    router: SharedRouter,
    indexed: Arc<Router>,
    index: ServerIndex,
    path: PathBuf,
    pid: u32,
    /// The last file written, to tell whether anything changed.
    last: Option<HealthFile>,
    /// The last write error logged, so a persistent one is logged once, not every second.
    last_error: Option<String>,
}

impl Writer {
    fn new(router: SharedRouter, path: PathBuf) -> Writer {
        let indexed = router.load_full();
        Writer {
            index: ServerIndex::new(&indexed),
            indexed,
            router,
            path,
            pid: std::process::id(),
            last: None,
            last_error: None,
        }
    }

    async fn run(&mut self) {
        let mut ticks = tokio::time::interval(MIN_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let current = self.router.load_full();
            if !Arc::ptr_eq(&current, &self.indexed) {
                self.index = ServerIndex::new(&current);
                self.indexed = current;
            }
            let now = SystemTime::now();
            let file = self.index.snapshot(self.pid, now);
            if !due(self.last.as_ref(), &file) {
                continue;
            }
            let path = self.path.clone();
            let written = {
                let file = file.clone();
                // Small, but still file I/O: off the runtime's worker threads.
                tokio::task::spawn_blocking(move || write_atomically(&path, &file))
                    .await
                    .unwrap_or_else(|e| {
                        Err(HealthStateError::Write {
                            path: self.path.clone(),
                            source: std::io::Error::other(e.to_string()),
                        })
                    })
            };
            match written {
                Ok(()) => {
                    if self.last_error.take().is_some() {
                        tracing::info!(path = %self.path.display(), "health state written again");
                    }
                    self.last = Some(file);
                }
                Err(e) => {
                    let text = e.to_string();
                    if self.last_error.as_deref() != Some(&text) {
                        tracing::warn!(
                            "{text}; status and explain cannot see this router's health until it is fixed"
                        );
                        self.last_error = Some(text);
                    }
                    // Retried at the next tick: `last` still holds the last successful write.
                }
            }
        }
    }

    async fn remove(&self) {
        let path = self.path.clone();
        let pid = self.pid;
        let removed = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            // Another router may have taken the file over (a restart while this one drained).
            let ours = std::fs::read(&path)
                .ok()
                .and_then(|t| serde_json::from_slice::<HealthFile>(&t).ok())
                .is_some_and(|f| f.pid == pid);
            if ours {
                std::fs::remove_file(&path)?;
            }
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(path = %self.path.display(), "cannot remove the health state: {e}");
        }
    }
}

/// Whether `next` should be written: first write, a significant change, or a heartbeat due.
fn due(last: Option<&HealthFile>, next: &HealthFile) -> bool {
    let Some(last) = last else {
        return true;
    };
    let since_last = next
        .written_at
        .duration_since(last.written_at)
        .unwrap_or(HEARTBEAT);
    since_last >= HEARTBEAT
        || last.servers.len() != next.servers.len()
        || last
            .servers
            .iter()
            .zip(&next.servers)
            .any(|(a, b)| a.significant() != b.significant())
}

/// Writes `file` to a temporary file beside `path` and renames it over `path`, so a reader
/// sees the old file or the new one, never half of one. Creates the directory if missing.
/// No fsync: the state describes this boot's running router and is worthless after a crash
/// of the machine, while readers only need the rename's atomicity.
pub fn write_atomically(path: &Path, file: &HealthFile) -> Result<(), HealthStateError> {
    let fail = |source| HealthStateError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut text = serde_json::to_vec_pretty(file).map_err(|e| fail(e.into()))?;
    text.push(b'\n');
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &text).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}

/// RFC 3339 with milliseconds, UTC (`2026-11-28T21:00:01.123Z`), as the snapshots print.
mod rfc3339 {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*at))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");

    fn router(extra: &str) -> Router {
        let text = format!(
            "region = \"RegionOne\"\ncatalog = [\"endpoint-list-RegionOne.json\", \
             \"endpoint-list-RegionTwo.json\"]\nbackend = \"192.168.142.245\"\n{extra}"
        );
        let config = Config::from_str(&text, &Path::new(FIXTURES).join("router.toml")).unwrap();
        Router::from_config(&config).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        // Whole milliseconds: the file keeps milliseconds.
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn sample(pid: u32, written: SystemTime) -> HealthFile {
        let r = router("");
        let mut file = ServerIndex::new(&r).snapshot(pid, written);
        for s in &mut file.servers {
            s.since = at(0);
        }
        file
    }

    #[test]
    fn index_covers_every_checked_server_once() {
        let r = router(
            "[ports.8774]\nbackend = [\"10.0.0.1:8774\", { address = \"10.0.0.2:8774\", backup = true }]\n\
             [[passthrough]]\nname = \"mariadb\"\nbind = \"192.168.142.244:3306\"\n\
             backend = [\"10.0.0.7:3306\", \"10.0.0.8:3306\"]\nmode = \"tcp\"\n",
        );
        let index = ServerIndex::new(&r);
        // Passthrough servers are checked by the router and named in the index too.
        let passthrough: Vec<(&str, String, Vec<String>)> = index
            .entries()
            .iter()
            .filter(|(p, _)| p.role == Role::Passthrough)
            .map(|(p, _)| (p.addr.as_str(), p.listener.to_string(), p.backends.clone()))
            .collect();
        assert_eq!(
            passthrough,
            [
                (
                    "10.0.0.7:3306",
                    "192.168.142.244:3306".to_owned(),
                    vec!["mariadb".to_owned()]
                ),
                (
                    "10.0.0.8:3306",
                    "192.168.142.244:3306".to_owned(),
                    vec!["mariadb".to_owned()]
                ),
            ]
        );
        let index = ServerIndex::new(&r);
        assert_eq!(index.entries().len(), r.health_checks().len());
        for check in r.health_checks() {
            assert!(index.placement(&check.health).is_some(), "{check:?}");
        }
        let backup = index
            .entries()
            .iter()
            .find(|(p, _)| p.addr == "10.0.0.2:8774")
            .map(|(p, _)| p)
            .unwrap();
        assert_eq!(backup.role, Role::Local);
        assert!(backup.backup);
        assert_eq!(backup.region, "RegionOne");
        assert!(
            backup
                .backends
                .contains(&"RegionOne_transparent_8774".to_owned()),
            "{backup:?}"
        );
        assert!(
            backup.services.contains(&"compute/public".to_owned()),
            "{backup:?}"
        );
        let remote = index
            .entries()
            .iter()
            .find(|(p, _)| p.role == Role::Remote && p.region == "RegionTwo")
            .map(|(p, _)| p)
            .unwrap();
        assert_eq!(remote.backends.len(), 1, "{remote:?}");
    }

    #[test]
    fn file_round_trips_through_json() {
        let r = router("");
        let index = ServerIndex::new(&r);
        let (_, first) = &index.entries()[0];
        first.record(
            Err("connect: refused".to_owned()),
            &CheckSettings {
                fall: 1,
                ..CheckSettings::default()
            },
        );
        let mut file = index.snapshot(4242, at(5));
        for s in &mut file.servers {
            // The file keeps milliseconds: compare at that precision.
            s.since = at(1) + Duration::from_millis(250);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = file_path(dir.path(), "RegionOne");
        write_atomically(&path, &file).unwrap();
        let text = std::fs::read(&path).unwrap();
        let back = parse(&path, &text, "RegionOne").unwrap();
        assert_eq!(back, file);
        assert!(!back.servers[0].up);
        assert_eq!(
            back.servers[0].last_result.as_deref(),
            Some("connect: refused")
        );
        let json: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(json["version"], FORMAT_VERSION);
        assert_eq!(json["servers"][0]["role"], "local");
        assert!(
            json["written_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{json}"
        );
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("health-RegionOne.json")]);
    }

    #[test]
    fn parse_refuses_other_versions_regions_and_garbage() {
        let path = PathBuf::from("/x/health-RegionOne.json");
        let good = serde_json::to_value(sample(1, at(0))).unwrap();
        let with = |key: &str, value: serde_json::Value| {
            let mut v = good.clone();
            v[key] = value;
            serde_json::to_vec(&v).unwrap()
        };
        let cases: [(&str, Vec<u8>, &str); 4] = [
            (
                "future version",
                with("version", 2.into()),
                "format version 2",
            ),
            (
                "other region",
                with("region", "RegionTwo".into()),
                "region RegionTwo's",
            ),
            ("not JSON", b"{".to_vec(), "cannot be decoded"),
            (
                "bad time",
                with("written_at", "yesterday".into()),
                "cannot be decoded",
            ),
        ];
        for (name, text, want) in cases {
            let err = parse(&path, &text, "RegionOne").unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn staleness_rules() {
        struct Case {
            name: &'static str,
            written: SystemTime,
            now: SystemTime,
            alive: bool,
            want: &'static str,
        }
        let cases = [
            Case {
                name: "fresh file of a live writer",
                written: at(100),
                now: at(101),
                alive: true,
                want: "live",
            },
            Case {
                name: "exactly three heartbeats old is still fresh",
                written: at(100),
                now: at(100) + STALE_AFTER,
                alive: true,
                want: "live",
            },
            Case {
                name: "older than three heartbeats is stale",
                written: at(100),
                now: at(101) + STALE_AFTER,
                alive: true,
                want: "stale",
            },
            Case {
                name: "a gone writer wins over a fresh time",
                written: at(100),
                now: at(100),
                alive: false,
                want: "gone",
            },
            Case {
                name: "a gone writer wins over a stale time",
                written: at(100),
                now: at(1000),
                alive: false,
                want: "gone",
            },
            Case {
                name: "written in the future (clock stepped back) is fresh",
                written: at(200),
                now: at(100),
                alive: true,
                want: "live",
            },
        ];
        for case in cases {
            let file = sample(77, case.written);
            let path = PathBuf::from("/x/health-RegionOne.json");
            let got = match judge(path, file, case.now, |pid| {
                assert_eq!(pid, 77);
                case.alive
            }) {
                Ok(_) => "live",
                Err(Unavailable::Stale { .. }) => "stale",
                Err(Unavailable::WriterGone { .. }) => "gone",
                Err(other) => panic!("{}: {other}", case.name),
            };
            assert_eq!(got, case.want, "{}", case.name);
        }
    }

    #[test]
    fn read_reports_a_missing_file_and_a_gone_writer() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(dir.path(), "RegionOne").unwrap_err();
        assert!(matches!(err, Unavailable::NoFile { .. }), "{err}");
        assert!(err.to_string().starts_with("no router is running"), "{err}");

        // Our own pid is alive; u32::MAX never is (pid_max is at most 2^22).
        let path = file_path(dir.path(), "RegionOne");
        write_atomically(&path, &sample(std::process::id(), SystemTime::now())).unwrap();
        assert!(read(dir.path(), "RegionOne").is_ok());
        write_atomically(&path, &sample(u32::MAX, SystemTime::now())).unwrap();
        let err = read(dir.path(), "RegionOne").unwrap_err();
        assert!(matches!(err, Unavailable::WriterGone { .. }), "{err}");
        assert!(err.to_string().contains("is gone"), "{err}");
    }

    #[test]
    fn writes_only_on_change_or_heartbeat() {
        let base = sample(1, at(0));
        let later = |secs: u64| {
            let mut f = base.clone();
            f.written_at = at(secs);
            f
        };
        let mut counted = later(1);
        counted.servers[0].checks += 1;
        counted.servers[0].last_result = Some("ok in 0.3ms".to_owned());
        let mut timed = base.clone();
        timed.servers[0].last_result = Some("ok in 0.1ms".to_owned());
        let timed = {
            let mut t = timed;
            t.written_at = at(0);
            t
        };
        let mut flipped = later(1);
        flipped.servers[0].up = false;
        flipped.servers[0].last_result = Some("connect: refused".to_owned());
        let cases: [(&str, Option<&HealthFile>, &HealthFile, bool); 5] = [
            ("first write", None, &base, true),
            ("nothing changed", Some(&base), &later(1), false),
            ("only counters and timings", Some(&timed), &counted, false),
            ("a state flipped", Some(&base), &flipped, true),
            ("heartbeat", Some(&base), &later(HEARTBEAT.as_secs()), true),
        ];
        for (name, last, next, want) in cases {
            assert_eq!(due(last, next), want, "{name}");
        }
    }

    #[test]
    fn file_path_keeps_the_region_inside_the_directory() {
        assert_eq!(
            file_path(Path::new("/run/sr"), "RegionOne"),
            PathBuf::from("/run/sr/health-RegionOne.json")
        );
        assert_eq!(
            file_path(Path::new("/run/sr"), "../etc/x y"),
            PathBuf::from("/run/sr/health-.._etc_x_y.json")
        );
    }

    #[test]
    fn mirror_takes_recorded_down_servers_down() {
        let r = router("[ports.8774]\nbackend = [\"10.0.0.1:8774\", \"10.0.0.2:8774\"]\n");
        let index = ServerIndex::new(&r);
        let mut file = index.snapshot(1, at(0));
        let down = file
            .servers
            .iter_mut()
            .find(|s| s.placement.addr == "10.0.0.1:8774")
            .unwrap();
        down.up = false;
        down.last_result = Some("connect: refused".to_owned());
        // A server the running router does not know (config changed since it started).
        file.servers.retain(|s| s.placement.addr != "10.0.0.2:8774");
        assert_eq!(index.mirror(&file), 1);
        for (p, h) in index.entries() {
            let down = ["10.0.0.1:8774", "10.0.0.2:8774"].contains(&p.addr.as_str());
            assert_eq!(h.is_up(), !down, "{p:?}");
        }
    }
}
