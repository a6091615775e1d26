//! The VRRP speaker: one task runs one virtual router for one VIP — the state machine's
//! timers on tokio's clock, adverts through the raw socket, the router's health as
//! Kolla's track script does it — and says through a watch channel whether this node
//! should hold the VIP. Adding and removing the VIP is the caller's (the VIP manager's),
//! so the protocol runs, and is tested against keepalived, without it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::machine::{Action, Deadline, Event, Machine, MachineConfig, Note, Output, State, Timer};
use super::packet::{Advert, DecodeError};
use super::settings::{VrrpSettings, VrrpSettingsError};
use super::socket::{DropReason, Received, VrrpSocket, VrrpSocketError, interface_address};
use crate::error_chain::error_chain;

/// A refusal or a failing socket is logged once per reason and sender in this period:
/// a misconfigured peer advertises every second, and the log must stay readable.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// How long receiving pauses after the socket fails, so that a lasting failure (the
/// interface went away) does not spin; the timers keep running meanwhile.
const RECV_RETRY: Duration = Duration::from_millis(100);

/// What the speaker wants for the VIP right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Backup,
    Master,
}

/// How a speaker starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initial {
    /// As a router that just came up: Backup until Master_Down_Interval passes without a
    /// better master (at once Master as the address owner, priority 255).
    Fresh,
    /// A zero-downtime restart took over from a running master: start as Master at once,
    /// advertising immediately, no Master_Down wait.
    Master,
}

/// The speaker's state: the RFC's three, and Fault while the router's own health check
/// fails (keepalived's FAULT: no adverts, no elections, no VIP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpeakerState {
    Initialize,
    Backup,
    Master,
    Fault,
}

impl From<State> for SpeakerState {
    fn from(state: State) -> Self {
        match state {
            State::Initialize => SpeakerState::Initialize,
            State::Backup => SpeakerState::Backup,
            State::Master => SpeakerState::Master,
        }
    }
}

impl std::fmt::Display for SpeakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SpeakerState::Initialize => "initialize",
            SpeakerState::Backup => "backup",
            SpeakerState::Master => "master",
            SpeakerState::Fault => "fault",
        })
    }
}

/// Adverts refused, by reason. Each is also logged (at most once a minute per reason and
/// sender), naming the setting to compare.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Refusals {
    /// Another v2 auth type or password.
    pub password: u64,
    /// Another v2 advert interval (keepalived refuses those too).
    pub interval: u64,
    /// Another VRRP version.
    pub version: u64,
    /// Our VRID with other VIPs: another cluster on the link uses our VRID.
    pub addresses: u64,
    /// A TTL other than 255: forwarded by a router, or sent from another link.
    pub ttl: u64,
    /// A checksum that does not add up (also v3's without the pseudo-header).
    pub checksum: u64,
    /// Unicast mode: from an address not in `peers`.
    pub not_a_peer: u64,
    /// Unreadable as an advert (truncated, another type, an unknown auth type).
    pub malformed: u64,
}

/// One change of state, for `status` and the log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Transition {
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    pub from: SpeakerState,
    pub to: SpeakerState,
    pub reason: String,
}

/// A snapshot for `status`, `/status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SpeakerStatus {
    /// The VRRP version on the wire (2 or 3).
    pub version: u8,
    pub vrid: u8,
    pub vip: Ipv4Addr,
    pub interface: String,
    /// This router's own address on the interface: the adverts' source.
    pub address: Ipv4Addr,
    pub state: SpeakerState,
    /// `[vrrp] priority`.
    pub priority: u8,
    /// What this router competes with: `priority`, or 0 in Fault, where it does not.
    pub effective_priority: u8,
    /// The master as far as this router knows (itself when master).
    pub master: Option<Ipv4Addr>,
    pub master_priority: Option<u8>,
    /// The last advert for our VRID, accepted or refused.
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_advert_received: Option<SystemTime>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_advert_sent: Option<SystemTime>,
    pub transitions: u64,
    pub last_transition: Option<Transition>,
    pub adverts_sent: u64,
    /// Adverts for our VRID, accepted or refused.
    pub adverts_received: u64,
    pub refused: Refusals,
    /// Adverts for other VRIDs: not refusals, a shared link carries other clusters.
    pub other_vrid: u64,
    /// Times a second master for our VRID appeared while this router was master.
    pub split_brains: u64,
    /// The health tracker's verdict (false from `track_fall` failures to `track_rise`
    /// passes).
    pub healthy: bool,
}

fn rfc3339<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*at))
}

fn rfc3339_opt<S: serde::Serializer>(at: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => rfc3339(at, s),
        None => s.serialize_none(),
    }
}

/// Why a speaker cannot start; each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error(transparent)]
    Settings(#[from] VrrpSettingsError),
    #[error(
        "the VRRP speaker was given no interface: pass settings whose interface is set \
         (VrrpSettings::resolved(&vip) takes [vrrp] interface, else [vip] interface)"
    )]
    NoInterface,
    #[error(
        "the VRRP speaker must start inside a tokio runtime: call start from the runtime \
         thread, in the network namespace the VIP lives in"
    )]
    NoRuntime,
    #[error(transparent)]
    Socket(#[from] VrrpSocketError),
}

/// Kolla's track script hysteresis: `fall` consecutive failed checks make a healthy
/// router failing, `rise` consecutive passing checks make a failing router healthy
/// again; a check that agrees with the verdict restarts the count. Starts healthy, as
/// keepalived's scripts do without `init_fail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTracker {
    fall: u32,
    rise: u32,
    failing: bool,
    streak: u32,
}

/// A change of the health verdict, with the number of checks that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    Failed { checks: u32 },
    Recovered { checks: u32 },
}

impl HealthTracker {
    /// `fall` and `rise` below 1 count as 1 (the settings refuse 0).
    pub fn new(fall: u32, rise: u32) -> Self {
        Self {
            fall: fall.max(1),
            rise: rise.max(1),
            failing: false,
            streak: 0,
        }
    }

    pub fn healthy(&self) -> bool {
        !self.failing
    }

    /// Counts one check; returns the change it completes, if any.
    pub fn sample(&mut self, healthy: bool) -> Option<HealthChange> {
        if healthy != self.failing {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.failing { self.rise } else { self.fall };
        if self.streak < needed {
            return None;
        }
        self.failing = !self.failing;
        self.streak = 0;
        Some(if self.failing {
            HealthChange::Failed { checks: needed }
        } else {
            HealthChange::Recovered { checks: needed }
        })
    }
}

/// Decides which repeated warnings are logged: once per key per period, reporting how
/// many were held back since.
#[derive(Debug)]
struct LogLimiter {
    every: Duration,
    seen: HashMap<(&'static str, Option<Ipv4Addr>), (Instant, u64)>,
}

impl LogLimiter {
    fn new(every: Duration) -> Self {
        Self {
            every,
            seen: HashMap::new(),
        }
    }

    /// `Some(held back since the last line)` when this one is to be logged.
    fn allow(
        &mut self,
        reason: &'static str,
        source: Option<Ipv4Addr>,
        now: Instant,
    ) -> Option<u64> {
        match self.seen.get_mut(&(reason, source)) {
            Some((last, held)) if now.duration_since(*last) < self.every => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let before = *held;
                (*last, *held) = (now, 0);
                Some(before)
            }
            None => {
                self.seen.insert((reason, source), (now, 0));
                Some(0)
            }
        }
    }
}

#[derive(Debug)]
enum Command {
    Health(bool),
    Stop,
    HandOver,
}

/// A running speaker. [`SpeakerHandle::stop`] resigns, [`SpeakerHandle::hand_over`]
/// does not; dropping the handle ends the task without resigning, as a crash would.
#[derive(Debug)]
pub struct SpeakerHandle {
    commands: mpsc::UnboundedSender<Command>,
    role: watch::Receiver<Role>,
    status: watch::Receiver<SpeakerStatus>,
    task: JoinHandle<()>,
}

/// Opens the socket in the calling thread's network namespace (call from the runtime
/// thread), spawns the task. `settings.interface` must be set (see
/// [`VrrpSettings::resolved`]); the adverts leave from its first address that is not
/// `vip`.
pub fn start(
    settings: &VrrpSettings,
    vip: Ipv4Addr,
    initial: Initial,
) -> Result<SpeakerHandle, SpeakerError> {
    settings.validate()?;
    let interface = settings
        .interface
        .clone()
        .ok_or(SpeakerError::NoInterface)?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| SpeakerError::NoRuntime)?;
    let primary = interface_address(&interface, &[vip])?;
    let socket = VrrpSocket::open(&interface, primary, &settings.peers)?;
    let mut machine = Machine::new(MachineConfig::new(settings, primary, vec![vip]));

    // The first event runs here, not in the task, so the role is right before the caller
    // first looks: a successor that read Backup for a moment would drop the VIP.
    let now = Instant::now();
    let (out, reason) = match initial {
        Initial::Fresh => {
            let out = machine.handle(now, Event::Startup);
            let reason = if machine.state() == State::Master {
                "started as the address owner (priority 255)".to_owned()
            } else {
                format!(
                    "started: waiting {:?} (Master_Down_Interval) for a master's adverts",
                    machine.master_down_interval()
                )
            };
            (out, reason)
        }
        Initial::Master => (
            machine.handle(now, Event::Resume),
            "restart: took over from the running master, advertising at once".to_owned(),
        ),
    };
    let role = if machine.state() == State::Master {
        Role::Master
    } else {
        Role::Backup
    };
    let status = SpeakerStatus {
        version: settings.version.number(),
        vrid: settings.vrid,
        vip,
        interface: interface.clone(),
        address: primary,
        state: SpeakerState::Initialize,
        priority: settings.priority,
        effective_priority: settings.priority,
        master: None,
        master_priority: None,
        last_advert_received: None,
        last_advert_sent: None,
        transitions: 0,
        last_transition: None,
        adverts_sent: 0,
        adverts_received: 0,
        refused: Refusals::default(),
        other_vrid: 0,
        split_brains: 0,
        healthy: true,
    };
    let (role_tx, role_rx) = watch::channel(role);
    let (status_tx, status_rx) = watch::channel(status.clone());
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let mut speaker = Speaker {
        machine,
        socket,
        vip,
        health: HealthTracker::new(settings.track_fall, settings.track_rise),
        fault: false,
        role: role_tx,
        status,
        status_tx,
        limiter: LogLimiter::new(LOG_EVERY),
        split_brain_until: None,
        resigned_by: None,
        preempting: None,
        master_priority: None,
        recv_paused_until: None,
    };
    speaker.record(&out, || reason);
    speaker.publish();
    let task = runtime.spawn(speaker.run(out.actions, commands_rx));
    Ok(SpeakerHandle {
        commands: commands_tx,
        role: role_rx,
        status: status_rx,
        task,
    })
}

impl SpeakerHandle {
    /// Role changes; the VIP owner takes the VIP when Master (and announces it),
    /// releases it when Backup.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// A snapshot for status, `/status` and metrics.
    pub fn status(&self) -> SpeakerStatus {
        self.status.borrow().clone()
    }

    /// The status as it changes, for readers that outlive a borrow of the handle (the
    /// admin listener).
    pub fn status_watch(&self) -> watch::Receiver<SpeakerStatus> {
        self.status.clone()
    }

    /// The router's own health, sampled by the caller (e.g. every 2 s like Kolla's track
    /// script): after `track_fall` consecutive unhealthy samples the speaker goes to
    /// Fault — if Master it sends one priority-0 advert (immediate takeover by a backup),
    /// becomes Backup, and stops advertising and electing; after `track_rise` consecutive
    /// healthy samples it re-enters Initialize.
    pub fn report_health(&self, healthy: bool) {
        // A send fails only once the task has ended, when health no longer matters.
        let _ = self.commands.send(Command::Health(healthy));
    }

    /// Clean stop: if Master, send priority 0 (backups take over after their skew time),
    /// then end. The role goes Backup.
    pub async fn stop(self) {
        let _ = self.commands.send(Command::Stop);
        self.join().await;
    }

    /// Restart handover: ends WITHOUT resigning (no priority 0) so that the successor,
    /// started with [`Initial::Master`], continues the adverts; returns whether we were
    /// Master. The role is left as it was, so the VIP stays.
    pub async fn hand_over(self) -> Role {
        let _ = self.commands.send(Command::HandOver);
        let role = self.role.clone();
        self.join().await;
        *role.borrow()
    }

    async fn join(self) {
        let vip = self.status.borrow().vip;
        if let Err(e) = self.task.await {
            tracing::error!(%vip, error = %error_chain(&e), "the VRRP speaker task ended abnormally");
        }
    }
}

/// The task's state.
struct Speaker {
    machine: Machine,
    socket: VrrpSocket,
    vip: Ipv4Addr,
    health: HealthTracker,
    fault: bool,
    role: watch::Sender<Role>,
    /// Kept here and published whole after every wake-up.
    status: SpeakerStatus,
    status_tx: watch::Sender<SpeakerStatus>,
    limiter: LogLimiter,
    /// While a split brain lasts: its end if no other master is heard until then.
    split_brain_until: Option<Instant>,
    /// A backup heard the master resign: the takeover's reason.
    resigned_by: Option<Ipv4Addr>,
    /// A backup that preempts is ignoring this lower master: the takeover's reason.
    preempting: Option<(Ipv4Addr, u8)>,
    /// The accepted master's advertised priority.
    master_priority: Option<u8>,
    recv_paused_until: Option<Instant>,
}

/// What woke the task.
enum Wake {
    Command(Option<Command>),
    Timer(Deadline),
    Received(Result<Received, VrrpSocketError>),
}

impl Speaker {
    async fn run(mut self, first: Vec<Action>, mut commands: mpsc::UnboundedReceiver<Command>) {
        self.perform(first).await;
        self.publish();
        loop {
            let timer = if self.fault {
                None
            } else {
                self.machine.deadline()
            };
            // A pause applies to the next wait only: it just keeps a failing socket from
            // spinning.
            let paused = self.recv_paused_until.take();
            let socket = &self.socket;
            let wake = tokio::select! {
                biased;
                command = commands.recv() => Wake::Command(command),
                deadline = fire(timer) => Wake::Timer(deadline),
                received = async {
                    if let Some(until) = paused {
                        tokio::time::sleep_until(until.into()).await;
                    }
                    socket.recv().await
                } => Wake::Received(received),
            };
            match wake {
                Wake::Command(Some(Command::Health(healthy))) => self.on_health(healthy).await,
                Wake::Command(Some(Command::Stop)) => {
                    self.on_stop().await;
                    break;
                }
                Wake::Command(Some(Command::HandOver)) => {
                    tracing::info!(
                        vrid = self.status.vrid,
                        vip = %self.vip,
                        role = ?*self.role.borrow(),
                        "VRRP speaker handed over: ending without resigning, the new router continues the adverts"
                    );
                    break;
                }
                // The handle was dropped: end as a crash would, without resigning.
                Wake::Command(None) => break,
                Wake::Timer(deadline) => self.on_timer(deadline).await,
                Wake::Received(Ok(received)) => self.on_received(received).await,
                Wake::Received(Err(e)) => self.on_recv_error(&e),
            }
            self.publish();
        }
        self.publish();
    }

    fn publish(&mut self) {
        let state = if self.fault {
            SpeakerState::Fault
        } else {
            self.machine.state().into()
        };
        let s = &mut self.status;
        s.state = state;
        s.effective_priority = if self.fault { 0 } else { s.priority };
        s.healthy = self.health.healthy();
        match state {
            SpeakerState::Master => {
                s.master = Some(s.address);
                s.master_priority = Some(s.priority);
            }
            SpeakerState::Backup => {
                s.master = self.machine.master();
                s.master_priority = s.master.and(self.master_priority);
            }
            SpeakerState::Initialize | SpeakerState::Fault => {
                s.master = None;
                s.master_priority = None;
            }
        }
        self.status_tx.send_replace(self.status.clone());
    }

    async fn on_timer(&mut self, deadline: Deadline) {
        // tokio wakes at the deadline or after; never let a wake-up a hair early be
        // mistaken for "not due", which would spin until it is.
        let now = Instant::now().max(deadline.at);
        let event = match deadline.timer {
            Timer::MasterDown => Event::MasterDownTimer,
            Timer::Advert => Event::AdvertTimer,
        };
        let out = self.machine.handle(now, event);
        let (resigned_by, preempting) = (self.resigned_by, self.preempting);
        let skew = self.machine.skew_time();
        let mdi = self.machine.master_down_interval();
        self.record(&out, || match (resigned_by, preempting) {
            (Some(source), _) => {
                format!(
                    "resigned (priority 0) from {source}: took over after the skew time {skew:?}"
                )
            }
            (None, Some((source, priority))) => format!(
                "preempting the lower-priority master {source} (priority {priority}): \
                 master down timer expired"
            ),
            (None, None) => format!("master down timer expired: no advert for {mdi:?}"),
        });
        self.perform(out.actions).await;
    }

    async fn on_received(&mut self, received: Received) {
        let now = Instant::now();
        let (source, advert) = match received {
            Received::Advert { source, advert } => (source, advert),
            Received::Dropped { source, reason } => {
                self.refused_on_socket(source, &reason, now);
                return;
            }
        };
        if advert.vrid != self.status.vrid {
            self.status.other_vrid += 1;
            return;
        }
        self.status.adverts_received += 1;
        self.status.last_advert_received = Some(SystemTime::now());
        if self.fault {
            return;
        }
        let ours = self.machine.config().priority;
        let out = self.machine.handle(
            now,
            Event::Advert {
                source,
                advert: &advert,
            },
        );
        let refused = out
            .notes
            .iter()
            .any(|n| !matches!(n, Note::OtherMaster { .. }));
        for note in &out.notes {
            self.note(note, now);
        }
        if !refused && self.machine.state() == State::Backup {
            self.learn_master(source, &advert, ours);
        }
        self.record(&out, || {
            if advert.priority > ours {
                format!(
                    "higher priority advert from {source} (priority {}, ours {ours})",
                    advert.priority
                )
            } else {
                format!(
                    "equal priority advert from {source} (priority {}), whose address is higher \
                     than ours",
                    advert.priority
                )
            }
        });
        self.perform(out.actions).await;
    }

    /// What an accepted advert says about the master, for status and the next
    /// transition's reason.
    fn learn_master(&mut self, source: Ipv4Addr, advert: &Advert, ours: u8) {
        if advert.priority == 0 {
            self.resigned_by = Some(source);
            self.preempting = None;
            self.master_priority = None;
        } else if self.machine.master() == Some(source) {
            self.resigned_by = None;
            self.preempting = None;
            self.master_priority = Some(advert.priority);
        } else if advert.priority < ours {
            self.preempting = Some((source, advert.priority));
        }
    }

    async fn on_health(&mut self, healthy: bool) {
        let now = Instant::now();
        match self.health.sample(healthy) {
            None => {
                if !healthy && !self.fault {
                    tracing::info!(
                        vrid = self.status.vrid,
                        vip = %self.vip,
                        "VRRP health check failed; the router gives up the VIP after {} in a row",
                        self.health.fall
                    );
                }
            }
            Some(HealthChange::Failed { checks }) => {
                let from = self.machine.state().into();
                // The machine resigns (priority 0 if master) and rests in Initialize;
                // Fault is the speaker's: no timers, no elections, until it recovers.
                let out = self.machine.handle(now, Event::Shutdown);
                self.fault = true;
                self.transition(
                    from,
                    SpeakerState::Fault,
                    format!("health: {checks} failed checks"),
                );
                self.resigned_by = None;
                self.preempting = None;
                self.perform(out.actions).await;
                self.set_role(Role::Backup);
            }
            Some(HealthChange::Recovered { checks }) => {
                self.fault = false;
                let out = self.machine.handle(now, Event::Startup);
                let to = self.machine.state().into();
                self.transition(
                    SpeakerState::Fault,
                    to,
                    format!("health: {checks} passing checks, rejoining the election"),
                );
                self.perform(out.actions).await;
            }
        }
    }

    async fn on_stop(&mut self) {
        let from = if self.fault {
            SpeakerState::Fault
        } else {
            self.machine.state().into()
        };
        let out = self.machine.handle(Instant::now(), Event::Shutdown);
        let reason = if from == SpeakerState::Master {
            "stopped: resigned with priority 0"
        } else {
            "stopped"
        };
        self.fault = false;
        self.transition(from, SpeakerState::Initialize, reason.to_owned());
        self.perform(out.actions).await;
        self.set_role(Role::Backup);
    }

    fn on_recv_error(&mut self, e: &VrrpSocketError) {
        let now = Instant::now();
        self.recv_paused_until = Some(now + RECV_RETRY);
        if let Some(held) = self.limiter.allow("receive", None, now) {
            tracing::warn!(
                vrid = self.status.vrid,
                vip = %self.vip,
                error = %error_chain(e),
                held_back = held,
                "VRRP adverts cannot be received: other routers are not heard, so this one \
                 may take the VIP beside a live master"
            );
        }
    }

    /// Sends, and records, one advert; a failure is logged and the cadence goes on.
    async fn send(&mut self, priority: u8) {
        let advert = self.machine.advert(priority);
        match self.socket.send(&advert).await {
            Ok(()) => {
                self.status.adverts_sent += 1;
                self.status.last_advert_sent = Some(SystemTime::now());
            }
            Err(e) => {
                if let Some(held) = self.limiter.allow("send", None, Instant::now()) {
                    tracing::warn!(
                        vrid = self.status.vrid,
                        vip = %self.vip,
                        priority,
                        error = %error_chain(&e),
                        held_back = held,
                        "VRRP advert not sent: the other routers may take the VIP beside this one"
                    );
                }
            }
        }
    }

    async fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::SendAdvert { priority } => self.send(priority).await,
                Action::TakeVip => self.set_role(Role::Master),
                Action::ReleaseVip => self.set_role(Role::Backup),
            }
        }
    }

    fn set_role(&self, role: Role) {
        self.role.send_if_modified(|current| {
            let changed = *current != role;
            *current = role;
            changed
        });
    }

    /// Records the machine's transition, if `out` has one, with the reason `reason` gives.
    fn record(&mut self, out: &Output, reason: impl FnOnce() -> String) {
        if let Some((from, to)) = out.transition {
            self.resigned_by = None;
            self.preempting = None;
            self.transition(from.into(), to.into(), reason());
        }
    }

    fn transition(&mut self, from: SpeakerState, to: SpeakerState, reason: String) {
        tracing::info!(
            vrid = self.status.vrid,
            vip = %self.vip,
            %from,
            %to,
            reason = %reason,
            "VRRP state changed"
        );
        self.status.transitions += 1;
        self.status.last_transition = Some(Transition {
            at: SystemTime::now(),
            from,
            to,
            reason,
        });
    }

    /// Counts and logs a note of the machine: a refusal, or a second master.
    fn note(&mut self, note: &Note, now: Instant) {
        let vrid = self.status.vrid;
        let vip = self.vip;
        let refused = &mut self.status.refused;
        let (key, source, message) = match note {
            Note::AuthMismatch { source } => {
                refused.password += 1;
                (
                    "password",
                    *source,
                    "another auth type or password: [vrrp] auth_pass must be the other \
                     routers' auth_pass (the first 8 bytes count)"
                        .to_owned(),
                )
            }
            Note::IntervalMismatch {
                source,
                theirs,
                ours,
            } => {
                refused.interval += 1;
                (
                    "interval",
                    *source,
                    format!(
                        "it advertises every {theirs:?}, this router every {ours:?}: VRRPv2 \
                         routers must share [vrrp] advert_int (keepalived's advert_int)"
                    ),
                )
            }
            Note::VersionMismatch { source, theirs } => {
                refused.version += 1;
                (
                    "version",
                    *source,
                    format!(
                        "it speaks VRRPv{theirs}, this router v{}: set [vrrp] version as \
                         the other routers' vrrp_version",
                        self.status.version
                    ),
                )
            }
            Note::AddressMismatch { source, theirs } => {
                refused.addresses += 1;
                (
                    "addresses",
                    *source,
                    format!(
                        "it carries VIPs {theirs:?}, this router {vip}: another cluster uses \
                         VRID {vrid} on this link (give each its own vrid), or the VIP lists \
                         differ"
                    ),
                )
            }
            Note::OtherMaster { source, priority } => {
                self.split_brain(*source, *priority, now);
                return;
            }
        };
        if let Some(held) = self.limiter.allow(key, Some(source), now) {
            tracing::warn!(
                vrid,
                %vip,
                %source,
                held_back = held,
                "VRRP advert refused: {message}"
            );
        }
    }

    /// Another master with lower precedence advertises while we are master. The machine
    /// has already answered with an advert so it steps down; a split brain counts once
    /// until a Master_Down_Interval passes without it.
    fn split_brain(&mut self, source: Ipv4Addr, priority: u8, now: Instant) {
        let ongoing = self.split_brain_until.is_some_and(|until| now < until);
        self.split_brain_until = Some(now + self.machine.master_down_interval());
        if ongoing {
            return;
        }
        self.status.split_brains += 1;
        tracing::warn!(
            vrid = self.status.vrid,
            vip = %self.vip,
            other = %source,
            other_priority = priority,
            our_priority = self.machine.config().priority,
            "VRRP split brain: another master advertises for our VRID; advertising at once so \
             that it steps down. If it persists, the routers do not hear each other (check \
             multicast or [vrrp] peers and firewalls for IP protocol 112)"
        );
    }

    /// Counts and logs a packet the socket refused.
    fn refused_on_socket(&mut self, source: Option<Ipv4Addr>, reason: &DropReason, now: Instant) {
        let refused = &mut self.status.refused;
        let (key, message) = match reason {
            DropReason::Ttl(ttl) => {
                refused.ttl += 1;
                (
                    "ttl",
                    format!(
                        "TTL {ttl}, not 255: it was forwarded by a router or sent from another \
                         link, which VRRP never accepts"
                    ),
                )
            }
            DropReason::NotAPeer => {
                refused.not_a_peer += 1;
                (
                    "not_a_peer",
                    "its sender is not in [vrrp] peers: add it there, or remove it from the \
                     cluster"
                        .to_owned(),
                )
            }
            DropReason::Malformed(e) => {
                let key = match e {
                    DecodeError::Checksum { .. } | DecodeError::V3ChecksumAsV2 { .. } => {
                        refused.checksum += 1;
                        "checksum"
                    }
                    DecodeError::UnknownVersion { .. } => {
                        refused.version += 1;
                        "version"
                    }
                    DecodeError::UnsupportedAuth { .. } => {
                        refused.password += 1;
                        "password"
                    }
                    _ => {
                        refused.malformed += 1;
                        "malformed"
                    }
                };
                (key, e.to_string())
            }
        };
        if let Some(held) = self.limiter.allow(key, source, now) {
            let from = source.map_or_else(|| "?".to_owned(), |s| s.to_string());
            tracing::warn!(
                vrid = self.status.vrid,
                vip = %self.vip,
                source = %from,
                held_back = held,
                "VRRP packet refused: {message}"
            );
        }
    }
}

/// Waits for `deadline` and returns it; never returns without one (Initialize, Fault).
async fn fire(deadline: Option<Deadline>) -> Deadline {
    match deadline {
        Some(d) => {
            tokio::time::sleep_until(d.at.into()).await;
            d
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `samples` ('+' healthy, '-' not) and writes where the verdict changed.
    fn trace(fall: u32, rise: u32, samples: &str) -> String {
        let mut tracker = HealthTracker::new(fall, rise);
        samples
            .chars()
            .map(|c| match tracker.sample(c == '+') {
                Some(HealthChange::Failed { .. }) => 'F',
                Some(HealthChange::Recovered { .. }) => 'R',
                None => '.',
            })
            .collect()
    }

    #[test]
    fn health_hysteresis_is_kollas_track_script() {
        let cases = [
            ("starts healthy: passes change nothing", 2, 10, "+++", "..."),
            ("fall 2: the second failure in a row", 2, 10, "+--", "..F"),
            (
                "a pass between failures restarts the count",
                2,
                10,
                "-+-+-",
                ".....",
            ),
            (
                "rise 3 passes in a row to recover, a failure restarts it",
                2,
                3,
                "--++-+++",
                ".F.....R",
            ),
            (
                "failures while failing change nothing",
                2,
                3,
                "----",
                ".F..",
            ),
            (
                "fall 1, rise 1: every change counts at once",
                1,
                1,
                "-+-+",
                "FRFR",
            ),
            (
                "after recovering, fall counts afresh",
                2,
                1,
                "--+-+--",
                ".FR...F",
            ),
            ("zero is taken as one", 0, 0, "-+", "FR"),
        ];
        for (name, fall, rise, samples, want) in cases {
            assert_eq!(trace(fall, rise, samples), want, "{name}");
        }
    }

    #[test]
    fn health_changes_say_how_many_checks() {
        let mut tracker = HealthTracker::new(2, 10);
        assert_eq!(tracker.sample(false), None);
        assert_eq!(
            tracker.sample(false),
            Some(HealthChange::Failed { checks: 2 })
        );
        assert!(!tracker.healthy());
        for _ in 0..9 {
            assert_eq!(tracker.sample(true), None);
        }
        assert_eq!(
            tracker.sample(true),
            Some(HealthChange::Recovered { checks: 10 })
        );
        assert!(tracker.healthy());
    }

    #[test]
    fn repeated_warnings_are_logged_once_a_period_per_reason_and_sender() {
        let mut limiter = LogLimiter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let a = Some(Ipv4Addr::new(10, 0, 0, 1));
        let b = Some(Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(limiter.allow("password", a, t0), Some(0));
        assert_eq!(
            limiter.allow("password", a, t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            limiter.allow("password", a, t0 + Duration::from_secs(2)),
            None
        );
        assert_eq!(
            limiter.allow("interval", a, t0 + Duration::from_secs(2)),
            Some(0)
        );
        assert_eq!(
            limiter.allow("password", b, t0 + Duration::from_secs(2)),
            Some(0)
        );
        assert_eq!(
            limiter.allow("password", a, t0 + Duration::from_secs(60)),
            Some(2),
            "a minute later, with the count of the lines held back"
        );
        assert_eq!(
            limiter.allow("password", a, t0 + Duration::from_secs(61)),
            None
        );
    }

    #[test]
    fn start_refuses_what_it_cannot_run_with_and_says_what_to_fix() {
        let vip = Ipv4Addr::new(192, 0, 2, 100);
        let mut settings = VrrpSettings::new(51);
        let Err(e) = start(&settings, vip, Initial::Fresh) else {
            panic!("started without an interface");
        };
        assert!(matches!(e, SpeakerError::NoInterface), "{e:?}");
        assert!(e.to_string().contains("VrrpSettings::resolved"), "{e}");

        settings.interface = Some("nosuch-vrrp0".into());
        settings.track_rise = 0;
        let Err(e) = start(&settings, vip, Initial::Fresh) else {
            panic!("started with invalid settings");
        };
        assert!(e.to_string().contains("track_rise"), "{e}");

        settings.track_rise = 10;
        let Err(e) = start(&settings, vip, Initial::Fresh) else {
            panic!("started outside a runtime");
        };
        assert!(matches!(e, SpeakerError::NoRuntime), "{e:?}");

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _entered = rt.enter();
        let Err(e) = start(&settings, vip, Initial::Master) else {
            panic!("started on a missing interface");
        };
        assert!(
            e.to_string().contains("\"nosuch-vrrp0\" does not exist"),
            "{e}"
        );
    }

    #[test]
    fn status_serializes_for_the_status_page() {
        let status = SpeakerStatus {
            version: 2,
            vrid: 51,
            vip: Ipv4Addr::new(10, 51, 0, 100),
            interface: "eth0".into(),
            address: Ipv4Addr::new(10, 51, 0, 1),
            state: SpeakerState::Fault,
            priority: 150,
            effective_priority: 0,
            master: None,
            master_priority: None,
            last_advert_received: Some(
                SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_123),
            ),
            last_advert_sent: None,
            transitions: 1,
            last_transition: Some(Transition {
                at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000),
                from: SpeakerState::Master,
                to: SpeakerState::Fault,
                reason: "health: 2 failed checks".into(),
            }),
            adverts_sent: 3,
            adverts_received: 4,
            refused: Refusals {
                password: 1,
                ..Refusals::default()
            },
            other_vrid: 0,
            split_brains: 0,
            healthy: false,
        };
        let json = serde_json::to_value(&status).expect("serializes");
        assert_eq!(json["state"], "fault");
        assert_eq!(json["last_transition"]["from"], "master");
        assert_eq!(json["last_advert_received"], "2025-11-24T16:00:00.123Z");
        assert_eq!(json["last_advert_sent"], serde_json::Value::Null);
        assert_eq!(json["refused"]["password"], 1);
        assert_eq!(serde_json::to_value(Role::Master).expect("role"), "master");
    }
}
