//! The VRRP state machine of RFC 5798 §6.4 (v2 timing from RFC 3768), as pure logic:
//! events and the current time go in, actions and the next timer deadline come out. Where
//! the RFC leaves a choice, it does what keepalived does, so mixed clusters agree.

use std::net::Ipv4Addr;
use std::num::NonZeroU8;
use std::time::{Duration, Instant};

use super::packet::{Advert, Auth};
use super::settings::{Version, VrrpSettings};

/// The priority that makes a router the address owner.
pub const OWNER_PRIORITY: u8 = 255;
/// The priority a master sends when it stops, so backups take over without waiting.
pub const RESIGN_PRIORITY: u8 = 0;

/// What the machine needs to know about this router's instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    pub advert_int: Duration,
    pub preempt: bool,
    pub auth: Auth,
    /// This router's own address on the VRRP interface: the adverts' source, and the
    /// tie-break between equal priorities.
    pub primary: Ipv4Addr,
    /// The VIPs the adverts carry; keepalived refuses adverts whose list differs.
    pub addresses: Vec<Ipv4Addr>,
}

impl MachineConfig {
    /// The instance `settings` describe (validated), on a router whose address is
    /// `primary`, for `addresses`.
    pub fn new(settings: &VrrpSettings, primary: Ipv4Addr, addresses: Vec<Ipv4Addr>) -> Self {
        Self {
            version: settings.version,
            vrid: settings.vrid,
            priority: settings.priority,
            advert_int: settings.advert_int,
            preempt: settings.preempt,
            auth: settings.auth_data().map_or(Auth::None, Auth::Password),
            primary,
            addresses,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Initialize,
    Backup,
    Master,
}

/// The timer that is running: a master has only the advert timer, a backup only the
/// master-down timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    MasterDown,
    Advert,
}

/// When the caller must deliver the timer's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    pub timer: Timer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    Startup,
    /// Startup of a router that replaces a running master in a zero-downtime restart (the
    /// predecessor stopped without resigning): master at once, advertising now. Waiting
    /// Master_Down_Interval as a fresh router would let a backup take over meanwhile.
    Resume,
    /// A decoded advert, from the source address of its IPv4 header.
    Advert {
        source: Ipv4Addr,
        advert: &'a Advert,
    },
    MasterDownTimer,
    AdvertTimer,
    Shutdown,
    /// This router's priority changed (its health); 0 is not a priority but a resignation,
    /// which is [`Event::Shutdown`].
    Priority(NonZeroU8),
}

/// What the caller must do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send [`Machine::advert`] with this priority to every destination.
    SendAdvert { priority: u8 },
    /// Becoming master: add the VIPs and announce them with gratuitous ARP.
    TakeVip,
    /// Becoming backup, or stopping as master: remove the VIPs.
    ReleaseVip,
}

/// Things worth a log line (and a metric): adverts refused as keepalived refuses them, and
/// signs of a second master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// v2 routers must share one interval; keepalived drops the advert too.
    IntervalMismatch {
        source: Ipv4Addr,
        theirs: Duration,
        ours: Duration,
    },
    /// Another auth type or password: the advert is dropped.
    AuthMismatch {
        source: Ipv4Addr,
    },
    VersionMismatch {
        source: Ipv4Addr,
        theirs: Version,
    },
    /// The advert's VIPs differ from ours: it is dropped, as keepalived drops it.
    AddressMismatch {
        source: Ipv4Addr,
        theirs: Vec<Ipv4Addr>,
    },
    /// A master with lower precedence than ours: two masters for a moment (split brain).
    /// We advertise at once so it steps down, as keepalived "forces a new election".
    OtherMaster {
        source: Ipv4Addr,
        priority: u8,
    },
}

/// The result of one event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    pub actions: Vec<Action>,
    pub notes: Vec<Note>,
    /// `(from, to)` when the state changed.
    pub transition: Option<(State, State)>,
}

/// One VRRP instance.
#[derive(Debug, Clone)]
pub struct Machine {
    config: MachineConfig,
    state: State,
    deadline: Option<Deadline>,
    /// v3: the interval the current master advertises (RFC 5798's Master_Adver_Interval);
    /// v2 has a single interval for everyone.
    master_adver_int: Duration,
    master: Option<Ipv4Addr>,
}

impl Machine {
    pub fn new(config: MachineConfig) -> Self {
        let master_adver_int = config.advert_int;
        Self {
            config,
            state: State::Initialize,
            deadline: None,
            master_adver_int,
            master: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The timer the caller must fire next; `None` in Initialize.
    pub fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }

    /// The current master's address as far as this router knows (its own when master).
    pub fn master(&self) -> Option<Ipv4Addr> {
        self.master
    }

    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// The advert [`Action::SendAdvert`] asks for.
    pub fn advert(&self, priority: u8) -> Advert {
        // Validated settings fit (at most 25 500 cs); anything else fails at encoding.
        let interval_cs =
            u16::try_from(self.config.advert_int.as_millis() / 10).unwrap_or(u16::MAX);
        Advert {
            version: self.config.version,
            vrid: self.config.vrid,
            priority,
            interval_cs,
            auth: self.config.auth,
            addresses: self.config.addresses.clone(),
        }
    }

    /// Skew_Time: lower priorities wait longer, so the best backup takes over first.
    pub fn skew_time(&self) -> Duration {
        let weight = 256 - u32::from(self.config.priority);
        match self.config.version {
            // RFC 3768: in seconds, whatever the interval.
            Version::V2 => Duration::from_secs(1) * weight / 256,
            // RFC 5798: scaled by the master's interval, so fast adverts fail over fast.
            Version::V3 => self.master_adver_int * weight / 256,
        }
    }

    /// Master_Down_Interval: three missed adverts and the skew.
    pub fn master_down_interval(&self) -> Duration {
        self.master_adver_int * 3 + self.skew_time()
    }

    /// Applies `event` at `now`.
    pub fn handle(&mut self, now: Instant, event: Event<'_>) -> Output {
        let mut out = Output::default();
        let before = self.state;
        match event {
            Event::Startup => self.startup(now, &mut out),
            Event::Resume => {
                if self.state == State::Initialize {
                    self.become_master(now, &mut out);
                }
            }
            Event::Advert { source, advert } => self.advert_received(now, source, advert, &mut out),
            Event::MasterDownTimer => {
                if self.state == State::Backup && self.due(now, Timer::MasterDown) {
                    self.become_master(now, &mut out);
                }
            }
            Event::AdvertTimer => {
                if self.state == State::Master && self.due(now, Timer::Advert) {
                    self.send_advert(now, &mut out);
                }
            }
            Event::Shutdown => self.shutdown(&mut out),
            Event::Priority(priority) => {
                self.config.priority = priority.get();
                // Backups learn the new priority now rather than an interval later; a
                // backup's new skew applies from its next timer reset.
                if self.state == State::Master {
                    self.send_advert(now, &mut out);
                }
            }
        }
        if self.state != before {
            out.transition = Some((before, self.state));
        }
        out
    }

    /// A timer event counts only for the running timer and once it is due: the caller's
    /// wake-up may race with an advert that reset or replaced it.
    fn due(&self, now: Instant, timer: Timer) -> bool {
        self.deadline
            .is_some_and(|d| d.timer == timer && d.at <= now)
    }

    fn startup(&mut self, now: Instant, out: &mut Output) {
        if self.state != State::Initialize {
            return;
        }
        if self.config.priority == OWNER_PRIORITY {
            self.become_master(now, out);
        } else {
            self.become_backup(now, out);
        }
    }

    fn shutdown(&mut self, out: &mut Output) {
        if self.state == State::Master {
            out.actions.push(Action::SendAdvert {
                priority: RESIGN_PRIORITY,
            });
            out.actions.push(Action::ReleaseVip);
        }
        self.state = State::Initialize;
        self.deadline = None;
        self.master = None;
    }

    fn become_master(&mut self, now: Instant, out: &mut Output) {
        self.state = State::Master;
        self.master = Some(self.config.primary);
        self.master_adver_int = self.config.advert_int;
        out.actions.push(Action::SendAdvert {
            priority: self.config.priority,
        });
        out.actions.push(Action::TakeVip);
        self.arm(now, Timer::Advert, self.config.advert_int);
    }

    /// From Initialize (startup) or Master (a better master appeared).
    fn become_backup(&mut self, now: Instant, out: &mut Output) {
        if self.state == State::Master {
            out.actions.push(Action::ReleaseVip);
        }
        self.state = State::Backup;
        self.arm(now, Timer::MasterDown, self.master_down_interval());
    }

    fn send_advert(&mut self, now: Instant, out: &mut Output) {
        out.actions.push(Action::SendAdvert {
            priority: self.config.priority,
        });
        self.arm(now, Timer::Advert, self.config.advert_int);
    }

    fn arm(&mut self, now: Instant, timer: Timer, after: Duration) {
        self.deadline = Some(Deadline {
            at: now + after,
            timer,
        });
    }

    fn advert_received(
        &mut self,
        now: Instant,
        source: Ipv4Addr,
        advert: &Advert,
        out: &mut Output,
    ) {
        // Other instances share the group; our own adverts are not looped back, but a
        // second socket on the host could show them.
        if advert.vrid != self.config.vrid
            || source == self.config.primary
            || self.state == State::Initialize
        {
            return;
        }
        if let Some(note) = self.refusal(source, advert) {
            out.notes.push(note);
            return;
        }
        let ours = self.config.priority;
        match self.state {
            State::Initialize => {}
            State::Backup => {
                if advert.priority == RESIGN_PRIORITY {
                    // The master resigned: take over after the skew alone, so the best
                    // backup wins without a collision.
                    let skew = self.skew_time();
                    self.master = None;
                    self.arm(now, Timer::MasterDown, skew);
                } else if !self.config.preempt || advert.priority >= ours {
                    self.master = Some(source);
                    if self.config.version == Version::V3 {
                        self.master_adver_int = advert.interval();
                    }
                    self.arm(now, Timer::MasterDown, self.master_down_interval());
                }
                // Else a lower-priority master and we preempt: let the timer run out.
            }
            State::Master => {
                let wins = advert.priority > ours
                    || (advert.priority == ours && source > self.config.primary);
                if advert.priority == RESIGN_PRIORITY {
                    self.send_advert(now, out);
                } else if wins {
                    self.master = Some(source);
                    if self.config.version == Version::V3 {
                        self.master_adver_int = advert.interval();
                    }
                    self.become_backup(now, out);
                } else {
                    out.notes.push(Note::OtherMaster {
                        source,
                        priority: advert.priority,
                    });
                    // Without resetting the advert timer: the regular cadence continues.
                    out.actions.push(Action::SendAdvert { priority: ours });
                }
            }
        }
    }

    /// Why an advert for our VRID must be dropped, keepalived's checks in its order.
    fn refusal(&self, source: Ipv4Addr, advert: &Advert) -> Option<Note> {
        if advert.version != self.config.version {
            return Some(Note::VersionMismatch {
                source,
                theirs: advert.version,
            });
        }
        if self.config.version == Version::V2 {
            if advert.auth != self.config.auth {
                return Some(Note::AuthMismatch { source });
            }
            if advert.interval() != self.config.advert_int {
                return Some(Note::IntervalMismatch {
                    source,
                    theirs: advert.interval(),
                    ours: self.config.advert_int,
                });
            }
        }
        let mut theirs = advert.addresses.clone();
        let mut ours = self.config.addresses.clone();
        theirs.sort_unstable();
        ours.sort_unstable();
        if theirs != ours {
            return Some(Note::AddressMismatch {
                source,
                theirs: advert.addresses.clone(),
            });
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    const ME: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 5);
    const LOWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const HIGHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
    const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

    fn config(edit: impl FnOnce(&mut MachineConfig)) -> MachineConfig {
        let mut c = MachineConfig::new(
            &{
                let mut s = VrrpSettings::new(51);
                s.auth_pass = Some("kollapassword".into());
                s
            },
            ME,
            vec![VIP],
        );
        edit(&mut c);
        c
    }

    /// What the router at `source` would send to match `config`, with `priority`.
    fn advert_like(config: &MachineConfig, priority: u8) -> Advert {
        let mut advert = Machine::new(config.clone()).advert(priority);
        advert.priority = priority;
        advert
    }

    #[derive(Clone)]
    enum In {
        Startup,
        Resume,
        /// A matching advert from `source` with `priority`.
        From(Ipv4Addr, u8),
        /// A matching advert changed by the closure.
        Edited(Ipv4Addr, u8, fn(&mut Advert)),
        Down,
        AdvertTimer,
        Shutdown,
        Priority(u8),
    }

    struct Step {
        /// Microseconds since the scenario's start.
        at_us: u64,
        event: In,
        actions: Vec<Action>,
        notes: Vec<Note>,
        state: State,
        /// The deadline after the step, in microseconds since the start.
        deadline: Option<(u64, Timer)>,
    }

    fn step(
        at_us: u64,
        event: In,
        actions: &[Action],
        state: State,
        deadline: Option<(u64, Timer)>,
    ) -> Step {
        Step {
            at_us,
            event,
            actions: actions.to_vec(),
            notes: Vec::new(),
            state,
            deadline,
        }
    }

    fn noting(mut step: Step, note: Note) -> Step {
        step.notes.push(note);
        step
    }

    use Action::{ReleaseVip, SendAdvert, TakeVip};
    use State::{Backup, Initialize, Master};
    use Timer::{Advert as AdvertDue, MasterDown};

    const S: u64 = 1_000_000;
    /// Master_Down_Interval at priority 100 with 1 s adverts: 3 s + 156/256 s.
    const MDI_100: u64 = 3 * S + 609_375;
    /// Skew_Time at priority 100: 156/256 s.
    const SKEW_100: u64 = 609_375;

    fn send(priority: u8) -> Action {
        SendAdvert { priority }
    }

    fn run(name: &str, config: MachineConfig, steps: Vec<Step>) {
        let start = Instant::now();
        let mut machine = Machine::new(config.clone());
        for (i, s) in steps.into_iter().enumerate() {
            let now = start + Duration::from_micros(s.at_us);
            let advert;
            let event = match s.event {
                In::Startup => Event::Startup,
                In::Resume => Event::Resume,
                In::From(source, priority) => {
                    advert = advert_like(&config, priority);
                    Event::Advert {
                        source,
                        advert: &advert,
                    }
                }
                In::Edited(source, priority, edit) => {
                    let mut a = advert_like(&config, priority);
                    edit(&mut a);
                    advert = a;
                    Event::Advert {
                        source,
                        advert: &advert,
                    }
                }
                In::Down => Event::MasterDownTimer,
                In::AdvertTimer => Event::AdvertTimer,
                In::Shutdown => Event::Shutdown,
                In::Priority(p) => Event::Priority(NonZeroU8::new(p).unwrap()),
            };
            let before = machine.state();
            let out = machine.handle(now, event);
            let at = format!("{name}, step {i} ({event:?})");
            assert_eq!(out.actions, s.actions, "{at}: actions");
            assert_eq!(out.notes, s.notes, "{at}: notes");
            assert_eq!(machine.state(), s.state, "{at}: state");
            let transition = (before != s.state).then_some((before, s.state));
            assert_eq!(out.transition, transition, "{at}: transition");
            let deadline = machine.deadline().map(|d| {
                let us = d.at.duration_since(start).as_micros();
                (u64::try_from(us).unwrap(), d.timer)
            });
            assert_eq!(deadline, s.deadline, "{at}: deadline");
        }
    }

    #[test]
    fn startup_and_takeover() {
        let scenarios: Vec<(&str, MachineConfig, Vec<Step>)> = vec![
            (
                "a backup with nobody else takes over after Master_Down_Interval",
                config(|_| {}),
                vec![
                    step(0, In::Startup, &[], Backup, Some((MDI_100, MasterDown))),
                    step(
                        MDI_100,
                        In::Down,
                        &[send(100), TakeVip],
                        Master,
                        Some((MDI_100 + S, AdvertDue)),
                    ),
                    step(
                        MDI_100 + S,
                        In::AdvertTimer,
                        &[send(100)],
                        Master,
                        Some((MDI_100 + 2 * S, AdvertDue)),
                    ),
                ],
            ),
            (
                "the address owner is master at once",
                config(|c| c.priority = 255),
                vec![step(
                    0,
                    In::Startup,
                    &[send(255), TakeVip],
                    Master,
                    Some((S, AdvertDue)),
                )],
            ),
            (
                "a master's adverts keep a lower backup waiting",
                config(|_| {}),
                vec![
                    step(0, In::Startup, &[], Backup, Some((MDI_100, MasterDown))),
                    step(
                        S,
                        In::From(HIGHER, 150),
                        &[],
                        Backup,
                        Some((S + MDI_100, MasterDown)),
                    ),
                    step(
                        2 * S,
                        In::From(LOWER, 150),
                        &[],
                        Backup,
                        Some((2 * S + MDI_100, MasterDown)),
                    ),
                ],
            ),
            (
                "priority 0 from the master: takeover after the skew alone",
                config(|_| {}),
                vec![
                    step(0, In::Startup, &[], Backup, Some((MDI_100, MasterDown))),
                    step(
                        S,
                        In::From(HIGHER, 150),
                        &[],
                        Backup,
                        Some((S + MDI_100, MasterDown)),
                    ),
                    step(
                        2 * S,
                        In::From(HIGHER, 0),
                        &[],
                        Backup,
                        Some((2 * S + SKEW_100, MasterDown)),
                    ),
                    step(
                        2 * S + SKEW_100,
                        In::Down,
                        &[send(100), TakeVip],
                        Master,
                        Some((3 * S + SKEW_100, AdvertDue)),
                    ),
                ],
            ),
            (
                "preempt: a lower master's adverts are ignored and the backup takes over",
                config(|_| {}),
                vec![
                    step(0, In::Startup, &[], Backup, Some((MDI_100, MasterDown))),
                    step(
                        S,
                        In::From(HIGHER, 50),
                        &[],
                        Backup,
                        Some((MDI_100, MasterDown)),
                    ),
                    step(
                        MDI_100,
                        In::Down,
                        &[send(100), TakeVip],
                        Master,
                        Some((MDI_100 + S, AdvertDue)),
                    ),
                ],
            ),
            (
                "nopreempt: a live lower master keeps the VIP",
                config(|c| c.preempt = false),
                vec![
                    step(0, In::Startup, &[], Backup, Some((MDI_100, MasterDown))),
                    step(
                        S,
                        In::From(HIGHER, 50),
                        &[],
                        Backup,
                        Some((S + MDI_100, MasterDown)),
                    ),
                    step(
                        2 * S,
                        In::From(HIGHER, 50),
                        &[],
                        Backup,
                        Some((2 * S + MDI_100, MasterDown)),
                    ),
                ],
            ),
            (
                "a backup with equal priority accepts the master, whatever its address",
                config(|_| {}),
                vec![
                    step(0, In::Startup, &[], Backup, Some((MDI_100, MasterDown))),
                    step(
                        S,
                        In::From(LOWER, 100),
                        &[],
                        Backup,
                        Some((S + MDI_100, MasterDown)),
                    ),
                ],
            ),
            (
                "a timer event that is not due, or not running, changes nothing",
                config(|_| {}),
                vec![
                    step(0, In::Startup, &[], Backup, Some((MDI_100, MasterDown))),
                    step(S, In::Down, &[], Backup, Some((MDI_100, MasterDown))),
                    step(
                        MDI_100,
                        In::AdvertTimer,
                        &[],
                        Backup,
                        Some((MDI_100, MasterDown)),
                    ),
                    step(
                        MDI_100,
                        In::Down,
                        &[send(100), TakeVip],
                        Master,
                        Some((MDI_100 + S, AdvertDue)),
                    ),
                    step(
                        MDI_100 + S,
                        In::Down,
                        &[],
                        Master,
                        Some((MDI_100 + S, AdvertDue)),
                    ),
                    step(
                        MDI_100 + S - 1,
                        In::AdvertTimer,
                        &[],
                        Master,
                        Some((MDI_100 + S, AdvertDue)),
                    ),
                ],
            ),
            (
                "a restart's successor resumes as master at once, whatever its priority",
                config(|_| {}),
                vec![
                    step(
                        0,
                        In::Resume,
                        &[send(100), TakeVip],
                        Master,
                        Some((S, AdvertDue)),
                    ),
                    step(S / 2, In::Resume, &[], Master, Some((S, AdvertDue))),
                    step(S / 2, In::Startup, &[], Master, Some((S, AdvertDue))),
                    step(
                        S,
                        In::AdvertTimer,
                        &[send(100)],
                        Master,
                        Some((2 * S, AdvertDue)),
                    ),
                ],
            ),
            (
                "a resume after startup changes nothing: only a new router resumes",
                config(|_| {}),
                vec![
                    step(0, In::Startup, &[], Backup, Some((MDI_100, MasterDown))),
                    step(S, In::Resume, &[], Backup, Some((MDI_100, MasterDown))),
                ],
            ),
            (
                "Initialize ignores adverts and timers; startup happens once",
                config(|_| {}),
                vec![
                    step(0, In::From(HIGHER, 150), &[], Initialize, None),
                    step(0, In::Down, &[], Initialize, None),
                    step(0, In::Startup, &[], Backup, Some((MDI_100, MasterDown))),
                    step(S, In::Startup, &[], Backup, Some((MDI_100, MasterDown))),
                ],
            ),
        ];
        for (name, config, steps) in scenarios {
            run(name, config, steps);
        }
    }

    /// An owner, so that it is master at 0 without waiting.
    fn master_at_0() -> Step {
        step(
            0,
            In::Startup,
            &[send(255), TakeVip],
            Master,
            Some((S, AdvertDue)),
        )
    }

    #[test]
    fn master_meets_other_routers() {
        let mdi_255 = 3 * S + S / 256;
        let scenarios: Vec<(&str, MachineConfig, Vec<Step>)> = vec![
            (
                "a higher priority takes over; the old master releases the VIP",
                config(|_| {}),
                vec![
                    step(0, In::Startup, &[], Backup, Some((MDI_100, MasterDown))),
                    step(
                        MDI_100,
                        In::Down,
                        &[send(100), TakeVip],
                        Master,
                        Some((MDI_100 + S, AdvertDue)),
                    ),
                    step(
                        4 * S,
                        In::From(LOWER, 101),
                        &[ReleaseVip],
                        Backup,
                        Some((4 * S + MDI_100, MasterDown)),
                    ),
                ],
            ),
            (
                "equal priority: the higher address wins",
                config(|c| c.priority = 255),
                vec![
                    master_at_0(),
                    step(
                        S / 2,
                        In::From(HIGHER, 255),
                        &[ReleaseVip],
                        Backup,
                        Some((S / 2 + mdi_255, MasterDown)),
                    ),
                ],
            ),
            (
                "equal priority from a lower address: we stay and advertise at once",
                config(|c| c.priority = 255),
                vec![
                    master_at_0(),
                    noting(
                        step(
                            S / 2,
                            In::From(LOWER, 255),
                            &[send(255)],
                            Master,
                            Some((S, AdvertDue)),
                        ),
                        Note::OtherMaster {
                            source: LOWER,
                            priority: 255,
                        },
                    ),
                ],
            ),
            (
                "a lower master is told at once (keepalived's forced election)",
                config(|c| c.priority = 255),
                vec![
                    master_at_0(),
                    noting(
                        step(
                            S / 2,
                            In::From(HIGHER, 100),
                            &[send(255)],
                            Master,
                            Some((S, AdvertDue)),
                        ),
                        Note::OtherMaster {
                            source: HIGHER,
                            priority: 100,
                        },
                    ),
                ],
            ),
            (
                "a resigning router's priority 0 is answered with an advert",
                config(|c| c.priority = 255),
                vec![
                    master_at_0(),
                    step(
                        S / 2,
                        In::From(HIGHER, 0),
                        &[send(255)],
                        Master,
                        Some((S / 2 + S, AdvertDue)),
                    ),
                ],
            ),
            (
                "a master that stops resigns with priority 0 and releases the VIP",
                config(|c| c.priority = 255),
                vec![
                    master_at_0(),
                    step(
                        S / 2,
                        In::Shutdown,
                        &[send(0), ReleaseVip],
                        Initialize,
                        None,
                    ),
                    step(S, In::AdvertTimer, &[], Initialize, None),
                ],
            ),
            (
                "a backup that stops sends nothing",
                config(|_| {}),
                vec![
                    step(0, In::Startup, &[], Backup, Some((MDI_100, MasterDown))),
                    step(S, In::Shutdown, &[], Initialize, None),
                ],
            ),
            (
                "a master's new priority is advertised at once and from then on",
                config(|c| c.priority = 255),
                vec![
                    master_at_0(),
                    step(
                        S / 2,
                        In::Priority(90),
                        &[send(90)],
                        Master,
                        Some((S / 2 + S, AdvertDue)),
                    ),
                    step(
                        S / 2 + S,
                        In::AdvertTimer,
                        &[send(90)],
                        Master,
                        Some((S / 2 + 2 * S, AdvertDue)),
                    ),
                    step(
                        2 * S,
                        In::From(LOWER, 100),
                        &[ReleaseVip],
                        Backup,
                        Some((2 * S + 3 * S + (256 - 90) * S / 256, MasterDown)),
                    ),
                ],
            ),
            (
                "a backup's new priority sets the skew of its next timer",
                config(|_| {}),
                vec![
                    step(0, In::Startup, &[], Backup, Some((MDI_100, MasterDown))),
                    step(
                        S / 2,
                        In::Priority(200),
                        &[],
                        Backup,
                        Some((MDI_100, MasterDown)),
                    ),
                    step(
                        S,
                        In::From(HIGHER, 250),
                        &[],
                        Backup,
                        Some((S + 3 * S + 56 * S / 256, MasterDown)),
                    ),
                ],
            ),
        ];
        for (name, config, steps) in scenarios {
            run(name, config, steps);
        }
    }

    #[test]
    fn refused_adverts_change_nothing_and_say_why() {
        let backup = || step(0, In::Startup, &[], Backup, Some((MDI_100, MasterDown)));
        let unchanged = |event| step(S, event, &[], Backup, Some((MDI_100, MasterDown)));
        let scenarios: Vec<(&str, MachineConfig, Vec<Step>)> = vec![
            (
                "v2: another interval (keepalived drops it)",
                config(|_| {}),
                vec![
                    backup(),
                    noting(
                        unchanged(In::Edited(HIGHER, 150, |a| a.interval_cs = 200)),
                        Note::IntervalMismatch {
                            source: HIGHER,
                            theirs: Duration::from_secs(2),
                            ours: Duration::from_secs(1),
                        },
                    ),
                ],
            ),
            (
                "v2: another password",
                config(|_| {}),
                vec![
                    backup(),
                    noting(
                        unchanged(In::Edited(HIGHER, 150, |a| {
                            a.auth = Auth::Password(*b"wrongpas")
                        })),
                        Note::AuthMismatch { source: HIGHER },
                    ),
                ],
            ),
            (
                "v2: no password where we have one",
                config(|_| {}),
                vec![
                    backup(),
                    noting(
                        unchanged(In::Edited(HIGHER, 150, |a| a.auth = Auth::None)),
                        Note::AuthMismatch { source: HIGHER },
                    ),
                ],
            ),
            (
                "v2: a password where we have none",
                config(|c| c.auth = Auth::None),
                vec![
                    backup(),
                    noting(
                        unchanged(In::Edited(HIGHER, 150, |a| {
                            a.auth = Auth::Password(*b"kollapas")
                        })),
                        Note::AuthMismatch { source: HIGHER },
                    ),
                ],
            ),
            (
                "another version",
                config(|_| {}),
                vec![
                    backup(),
                    noting(
                        unchanged(In::Edited(HIGHER, 150, |a| {
                            a.version = Version::V3;
                            a.auth = Auth::None;
                        })),
                        Note::VersionMismatch {
                            source: HIGHER,
                            theirs: Version::V3,
                        },
                    ),
                ],
            ),
            (
                "other VIPs",
                config(|_| {}),
                vec![
                    backup(),
                    noting(
                        unchanged(In::Edited(HIGHER, 150, |a| {
                            a.addresses.push(Ipv4Addr::new(192, 0, 2, 101))
                        })),
                        Note::AddressMismatch {
                            source: HIGHER,
                            theirs: vec![VIP, Ipv4Addr::new(192, 0, 2, 101)],
                        },
                    ),
                ],
            ),
            (
                "another VRID is someone else's business: silently ignored",
                config(|_| {}),
                vec![
                    backup(),
                    unchanged(In::Edited(HIGHER, 150, |a| a.vrid = 52)),
                ],
            ),
            (
                "our own advert looped back is ignored",
                config(|_| {}),
                vec![backup(), unchanged(In::From(ME, 150))],
            ),
        ];
        for (name, config, steps) in scenarios {
            run(name, config, steps);
        }
    }

    #[test]
    fn v3_timing_follows_the_masters_interval() {
        let v3 = |advert_int_ms: u64| {
            config(move |c| {
                c.version = Version::V3;
                c.auth = Auth::None;
                c.advert_int = Duration::from_millis(advert_int_ms);
            })
        };
        let ms = 1_000;
        let scenarios: Vec<(&str, MachineConfig, Vec<Step>)> = vec![
            (
                "v3 skew scales with the interval: 3 × 2 s + 156 × 2 s / 256",
                v3(2000),
                vec![step(
                    0,
                    In::Startup,
                    &[],
                    Backup,
                    Some((6 * S + 1_218_750, MasterDown)),
                )],
            ),
            (
                "v3 backup learns a master's 500 ms interval: 1.5 s + 156 × 0.5 s / 256",
                v3(1000),
                vec![
                    step(0, In::Startup, &[], Backup, Some((MDI_100, MasterDown))),
                    step(
                        S,
                        In::Edited(HIGHER, 150, |a| a.interval_cs = 50),
                        &[],
                        Backup,
                        Some((S + 1_500 * ms + 304_687, MasterDown)),
                    ),
                    step(
                        S + 100 * ms,
                        In::Edited(HIGHER, 0, |a| a.interval_cs = 50),
                        &[],
                        Backup,
                        Some((S + 100 * ms + 304_687, MasterDown)),
                    ),
                ],
            ),
            (
                "v3 master defeated by a 3 s master learns its interval",
                v3(1000),
                vec![
                    step(0, In::Startup, &[], Backup, Some((MDI_100, MasterDown))),
                    step(
                        MDI_100,
                        In::Down,
                        &[send(100), TakeVip],
                        Master,
                        Some((MDI_100 + S, AdvertDue)),
                    ),
                    step(
                        4 * S,
                        In::Edited(HIGHER, 200, |a| a.interval_cs = 300),
                        &[ReleaseVip],
                        Backup,
                        Some((4 * S + 9 * S + 1_828_125, MasterDown)),
                    ),
                ],
            ),
            (
                "v2 skew is in seconds whatever the interval (RFC 3768)",
                config(|c| c.advert_int = Duration::from_secs(2)),
                vec![step(
                    0,
                    In::Startup,
                    &[],
                    Backup,
                    Some((6 * S + SKEW_100, MasterDown)),
                )],
            ),
        ];
        for (name, config, steps) in scenarios {
            run(name, config, steps);
        }
    }

    #[test]
    fn adverts_carry_the_instance() {
        let machine = Machine::new(config(|_| {}));
        assert_eq!(
            machine.advert(0),
            Advert {
                version: Version::V2,
                vrid: 51,
                priority: 0,
                interval_cs: 100,
                auth: Auth::Password(*b"kollapas"),
                addresses: vec![VIP],
            }
        );
    }
}
