//! Judging each good request against the faults the soak caused. Pure: the records, the
//! request shapes and the fault windows in, one class per request out, so the rules the
//! verdict rests on are unit-tested.
//!
//! The rules (README "Soak it" states them for operators):
//! - served by one of the scope's regions, first try: fine (a later alternative too);
//! - the router's fast JSON 503 (`x-scope-router-health: down`) is allowed only when every
//!   region of the scope was dead for that request at that moment (a fault window, from
//!   shortly before it began until the routers could have seen it end);
//! - a router's JSON 504, or 502 for a connection the backend broke, is allowed only for
//!   a request sent at the onset of a fault that swallowed it (a hung backend, a
//!   blackholed region: sent before any router could know, nothing can answer it
//!   sooner); a 502 for a refused connection never is: the router knows nothing was
//!   sent, so it can say 503 at once (docs/ARCHITECTURE.md §3.8);
//! - retries by the client: a reused keep-alive connection closed before any byte of
//!   the answer, retried once, only around a zero-downtime restart or a failover (a
//!   draining router closes idle connections; a reload must not); connection failures
//!   retried until served, only for requests entering a region while its VIP fails over;
//!   a POST lost with the killed master's connections likewise;
//! - anything else (a reset or timeout seen by the client, a wrong backend, any other
//!   error) fails the soak.

use std::time::Duration;

use super::http::Transport;
use super::traffic::Spec;

/// What came back for one good request, after the client's retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The backend of this target region answered as expected.
    Served {
        region: usize,
    },
    /// A backend answered, but not one of the scope's (or not 200, or with the body cut).
    Misrouted {
        answered_by: String,
        status: u16,
    },
    /// A router answered with its JSON error.
    RouterError {
        status: u16,
        /// `x-scope-router-health: down`: nothing reached a service.
        down: bool,
        message: String,
    },
    /// Neither an echo nor a router's JSON.
    Other {
        status: u16,
        detail: String,
    },
    Transport(Transport),
}

/// One good request.
#[derive(Debug, Clone)]
pub struct Record {
    /// Index into the request shapes.
    pub spec: usize,
    /// When the first attempt was sent, from the start of the soak.
    pub sent: Duration,
    /// From the first attempt to the final answer.
    pub took: Duration,
    pub outcome: Outcome,
    /// Failed attempts before the final one: what failed, and whether on a reused
    /// keep-alive connection.
    pub failures: Vec<(Transport, bool)>,
}

/// What the soak did to the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// A region's local service stopped: killed (connections refused) or hung (SIGSTOP:
    /// connections accepted by the kernel, nothing answered).
    Backend {
        region: usize,
        service_types: Vec<String>,
        hung: bool,
    },
    /// Traffic between two regions dropped silently.
    Partition { a: usize, b: usize },
    /// A region's VRRP master killed (SIGKILL); the backup takes the VIP over.
    Failover { region: usize },
    /// A zero-downtime restart of a region's router.
    Restart { region: usize },
}

impl Fault {
    /// Whether a request entering `entry` for `service` in region `target` depends on
    /// what this fault broke.
    fn kills(&self, entry: usize, target: usize, service: &str) -> bool {
        match self {
            Fault::Backend {
                region,
                service_types,
                ..
            } => target == *region && service_types.iter().any(|s| s == service),
            Fault::Partition { a, b } => {
                (entry == *a && target == *b) || (entry == *b && target == *a)
            }
            // Seen from another region, the VIP is gone until the backup has it; a
            // request entering the region itself is the client's to retry.
            Fault::Failover { region } => target == *region && entry != *region,
            Fault::Restart { .. } => false,
        }
    }
}

/// One fault, from when the soak caused it to when it undid it (or, for a failover or
/// restart, to when the region served again).
#[derive(Debug, Clone)]
pub struct Window {
    pub fault: Fault,
    pub start: Duration,
    pub end: Duration,
    /// For the report: what was done, e.g. `kill RegionTwo:9292`.
    pub label: String,
}

/// How far a fault reaches in time around its window.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Requests sent up to this long before a fault may still be in flight when it
    /// strikes.
    pub in_flight: Duration,
    /// From a fault's start until every router must have seen it (health checks on both
    /// hops of a remote request).
    pub detect: Duration,
    /// From a fault's end until every router must see the target up again.
    pub recover: Duration,
}

impl Window {
    /// The span in which requests may feel this fault.
    fn reach(&self, t: Duration, bounds: &Bounds) -> bool {
        t + bounds.in_flight >= self.start && t <= self.end + bounds.recover
    }

    /// The onset: sent before every router could know.
    fn onset(&self, t: Duration, bounds: &Bounds) -> bool {
        t + bounds.in_flight >= self.start && t <= self.start + bounds.detect
    }

    /// Whether the request `spec`, sent at `t`, was touched by this fault (for the
    /// per-fault table of the report).
    pub fn touches(&self, spec: &Spec, t: Duration, bounds: &Bounds) -> bool {
        if !self.reach(t, bounds) {
            return false;
        }
        match self.fault {
            Fault::Failover { region } | Fault::Restart { region } => {
                spec.entry == region || spec.targets.contains(&region)
            }
            _ => spec
                .targets
                .iter()
                .any(|t| self.fault.kills(spec.entry, *t, &spec.service_type)),
        }
    }
}

/// Why a good request failed the soak.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// A backend outside the scope answered, or the expected one answered wrongly.
    Misrouted,
    /// A fast 503 for a scope with a region no fault had killed.
    Spurious503,
    /// A router's JSON error no fault explains (status).
    RouterError(u16),
    /// An answer neither an echo nor a router's JSON (status).
    Other(u16),
    /// What the client saw on the wire, after its retries.
    Transport(Transport),
    /// Served, but only after retries no restart or failover explains.
    NeededRetry,
}

impl Failure {
    pub fn label(&self) -> String {
        match self {
            Failure::Misrouted => "wrong backend or wrong answer".into(),
            Failure::Spurious503 => "fast 503 while a scope region was alive".into(),
            Failure::RouterError(s) => format!("router error {s} outside a fault's onset"),
            Failure::Other(s) => format!("non-JSON answer {s}"),
            Failure::Transport(t) => t.label().into(),
            Failure::NeededRetry => "served only after a retry outside restart/failover".into(),
        }
    }
}

/// The verdict on one good request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Served,
    /// Served by a later region of an `A|B` scope.
    ServedByAlternative,
    /// The router's fast 503 while every region of the scope was dead (window index).
    DeadTarget503(usize),
    /// A router's 504 (or 502 for a broken connection) for a request sent at a fault's
    /// onset (window index).
    CaughtAtOnset(usize),
    /// Served after one retry of a keep-alive connection a draining or dying router
    /// closed (window index).
    RetriedStale(usize),
    /// Served after retrying connection failures while the region's VIP failed over.
    RetriedAcrossFailover(usize),
    /// A POST whose connection died with the killed master (not retried: not idempotent).
    LostWithMaster(usize),
    Failed(Failure),
}

impl Class {
    pub fn allowed(&self) -> bool {
        !matches!(self, Class::Failed(_))
    }

    pub fn label(&self) -> String {
        match self {
            Class::Served => "served".into(),
            Class::ServedByAlternative => "served by a later alternative".into(),
            Class::DeadTarget503(_) => "fast 503, every scope region dead (allowed)".into(),
            Class::CaughtAtOnset(_) => "caught at a fault's onset: router 504/502 (allowed)".into(),
            Class::RetriedStale(_) => "retried: stale keep-alive (allowed)".into(),
            Class::RetriedAcrossFailover(_) => "retried across failover (allowed)".into(),
            Class::LostWithMaster(_) => "POST lost with the killed master (allowed)".into(),
            Class::Failed(f) => format!("FAILED: {}", f.label()),
        }
    }
}

/// The message of the router's 502 for a connection every server refused (`proxy/error.rs`).
const REFUSED: &str = "cannot connect to the backend";

pub fn classify(spec: &Spec, record: &Record, windows: &[Window], bounds: &Bounds) -> Class {
    let t = record.sent;
    let first = |pred: &dyn Fn(&Window) -> bool| windows.iter().position(pred);
    let entry_event = |w: &Window, failover_only: bool| match w.fault {
        Fault::Failover { region } => region == spec.entry,
        Fault::Restart { region } => !failover_only && region == spec.entry,
        _ => false,
    };
    match &record.outcome {
        Outcome::Served { region } => {
            if !record.failures.is_empty() {
                let stale = matches!(
                    record.failures.as_slice(),
                    [(Transport::ClosedBeforeResponse, true)]
                );
                if stale && let Some(w) = first(&|w| entry_event(w, false) && w.reach(t, bounds)) {
                    return Class::RetriedStale(w);
                }
                if let Some(w) = first(&|w| entry_event(w, true) && w.reach(t, bounds)) {
                    return Class::RetriedAcrossFailover(w);
                }
                return Class::Failed(Failure::NeededRetry);
            }
            if spec.targets.first() == Some(region) {
                Class::Served
            } else {
                Class::ServedByAlternative
            }
        }
        Outcome::Misrouted { .. } => Class::Failed(Failure::Misrouted),
        Outcome::RouterError {
            status: 503,
            down: true,
            ..
        } => {
            let dead = |target: usize| {
                first(&|w| {
                    w.fault.kills(spec.entry, target, &spec.service_type) && w.reach(t, bounds)
                })
            };
            let windows: Vec<Option<usize>> = spec.targets.iter().map(|t| dead(*t)).collect();
            match windows.as_slice() {
                [Some(w), rest @ ..] if rest.iter().all(Option::is_some) => {
                    Class::DeadTarget503(*w)
                }
                _ => Class::Failed(Failure::Spurious503),
            }
        }
        Outcome::RouterError {
            status, message, ..
        } => {
            let swallowed = *status == 504 || (*status == 502 && !message.starts_with(REFUSED));
            let onset = first(&|w| {
                w.onset(t, bounds)
                    && spec
                        .targets
                        .iter()
                        .any(|target| w.fault.kills(spec.entry, *target, &spec.service_type))
            });
            match onset {
                Some(w) if swallowed => Class::CaughtAtOnset(w),
                _ => Class::Failed(Failure::RouterError(*status)),
            }
        }
        Outcome::Other { status, .. } => Class::Failed(Failure::Other(*status)),
        Outcome::Transport(kind) => {
            let lost = spec.post
                && matches!(
                    kind,
                    Transport::ClosedBeforeResponse | Transport::ClosedMidResponse
                );
            match first(&|w| entry_event(w, true) && w.reach(t, bounds)) {
                Some(w) if lost => Class::LostWithMaster(w),
                _ => Class::Failed(Failure::Transport(*kind)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;
    use crate::soak::traffic::{ScopeKind, Source};

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn bounds() -> Bounds {
        Bounds {
            in_flight: S(2),
            detect: S(8),
            recover: S(8),
        }
    }

    fn spec(entry: usize, targets: &[usize], service: &str, post: bool) -> Spec {
        Spec {
            entry,
            addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9292),
            service_type: service.into(),
            kind: ScopeKind::Remote,
            source: Source::XScope,
            targets: targets.to_vec(),
            names: Vec::new(),
            post,
            request: Vec::new(),
        }
    }

    fn record(sent: u64, outcome: Outcome) -> Record {
        Record {
            spec: 0,
            sent: S(sent),
            took: Duration::from_millis(3),
            outcome,
            failures: Vec::new(),
        }
    }

    fn window(fault: Fault, start: u64, end: u64) -> Window {
        Window {
            fault,
            start: S(start),
            end: S(end),
            label: String::new(),
        }
    }

    fn image_killed() -> Window {
        window(
            Fault::Backend {
                region: 1,
                service_types: vec!["image".into()],
                hung: false,
            },
            100,
            110,
        )
    }

    fn fast_503() -> Outcome {
        Outcome::RouterError {
            status: 503,
            down: true,
            message: "Every server of RegionTwo_image_public is down.".into(),
        }
    }

    fn error(status: u16, message: &str) -> Outcome {
        Outcome::RouterError {
            status,
            down: false,
            message: message.into(),
        }
    }

    #[test]
    fn fast_503_is_allowed_only_while_every_scope_region_is_dead() {
        let w = [image_killed()];
        let b = bounds();
        let plain = spec(0, &[1], "image", false);
        assert_eq!(
            classify(&plain, &record(105, fast_503()), &w, &b),
            Class::DeadTarget503(0)
        );
        // Until the routers can have seen the backend back, not after.
        assert_eq!(
            classify(&plain, &record(117, fast_503()), &w, &b),
            Class::DeadTarget503(0)
        );
        assert_eq!(
            classify(&plain, &record(119, fast_503()), &w, &b),
            Class::Failed(Failure::Spurious503)
        );
        assert_eq!(
            classify(&plain, &record(50, fast_503()), &w, &b),
            Class::Failed(Failure::Spurious503)
        );
        // Another service of the region was never dead.
        assert_eq!(
            classify(
                &spec(0, &[1], "compute", false),
                &record(105, fast_503()),
                &w,
                &b
            ),
            Class::Failed(Failure::Spurious503)
        );
        // With a live alternative the request must be served.
        let either = spec(0, &[1, 0], "image", false);
        assert_eq!(
            classify(&either, &record(105, fast_503()), &w, &b),
            Class::Failed(Failure::Spurious503)
        );
        assert_eq!(
            classify(&either, &record(105, Outcome::Served { region: 0 }), &w, &b),
            Class::ServedByAlternative
        );
        // A 503 without the router's marker is not the fast one.
        assert_eq!(
            classify(&plain, &record(105, error(503, "x")), &w, &b),
            Class::Failed(Failure::RouterError(503))
        );
    }

    #[test]
    fn a_partition_kills_each_region_for_the_other_only() {
        let w = [window(Fault::Partition { a: 0, b: 1 }, 100, 110)];
        let b = bounds();
        assert_eq!(
            classify(
                &spec(0, &[1], "image", false),
                &record(104, fast_503()),
                &w,
                &b
            ),
            Class::DeadTarget503(0)
        );
        assert_eq!(
            classify(
                &spec(1, &[0], "identity", true),
                &record(104, fast_503()),
                &w,
                &b
            ),
            Class::DeadTarget503(0)
        );
        // Entering the region itself, its own services are alive.
        assert_eq!(
            classify(
                &spec(1, &[1], "image", false),
                &record(104, fast_503()),
                &w,
                &b
            ),
            Class::Failed(Failure::Spurious503)
        );
    }

    #[test]
    fn timeouts_are_allowed_only_at_a_faults_onset_and_refusals_never() {
        let w = [window(
            Fault::Backend {
                region: 0,
                service_types: vec!["network".into()],
                hung: true,
            },
            100,
            110,
        )];
        let b = bounds();
        let either = spec(1, &[0, 1], "network", false);
        let timeout = error(504, "the backend did not answer in time");
        assert_eq!(
            classify(&either, &record(99, timeout.clone()), &w, &b),
            Class::CaughtAtOnset(0),
            "in flight when it hung"
        );
        assert_eq!(
            classify(&either, &record(107, timeout.clone()), &w, &b),
            Class::CaughtAtOnset(0)
        );
        assert_eq!(
            classify(&either, &record(109, timeout.clone()), &w, &b),
            Class::Failed(Failure::RouterError(504)),
            "every router knows by then"
        );
        assert_eq!(
            classify(
                &spec(1, &[1], "network", false),
                &record(101, timeout),
                &w,
                &b
            ),
            Class::Failed(Failure::RouterError(504)),
            "not aimed at the hung backend"
        );
        let broke = error(
            502,
            "the backend broke the connection: it reset the connection (RegionOne_network_public): …",
        );
        assert_eq!(
            classify(&either, &record(101, broke), &w, &b),
            Class::CaughtAtOnset(0)
        );
        let refused = error(
            502,
            "cannot connect to the backend (RegionOne_network_public): the service is down",
        );
        assert_eq!(
            classify(&either, &record(101, refused), &w, &b),
            Class::Failed(Failure::RouterError(502))
        );
    }

    #[test]
    fn retries_are_allowed_only_around_a_restart_or_a_failover_of_the_entry_region() {
        let restart = window(Fault::Restart { region: 0 }, 100, 101);
        let failover = window(Fault::Failover { region: 1 }, 200, 204);
        let w = [restart, failover];
        let b = bounds();
        let get = spec(0, &[0], "image", false);
        let stale = |sent| Record {
            failures: vec![(Transport::ClosedBeforeResponse, true)],
            ..record(sent, Outcome::Served { region: 0 })
        };
        assert_eq!(classify(&get, &stale(102), &w, &b), Class::RetriedStale(0));
        assert_eq!(
            classify(&get, &stale(150), &w, &b),
            Class::Failed(Failure::NeededRetry),
            "a reload or nothing at all must not close keep-alive connections"
        );
        // Connection failures retried: only while the entry region's VIP fails over.
        let into_two = spec(1, &[1], "image", false);
        let retried = |sent, region| Record {
            failures: vec![
                (Transport::ClosedMidResponse, false),
                (Transport::Connect, false),
            ],
            ..record(sent, Outcome::Served { region })
        };
        assert_eq!(
            classify(&into_two, &retried(202, 1), &w, &b),
            Class::RetriedAcrossFailover(1)
        );
        assert_eq!(
            classify(&get, &retried(202, 0), &w, &b),
            Class::Failed(Failure::NeededRetry)
        );
        assert_eq!(
            classify(&get, &retried(102, 0), &w, &b),
            Class::Failed(Failure::NeededRetry),
            "a zero-downtime restart refuses no connection"
        );
        // A POST lost with the master's connection; the same loss elsewhere fails.
        let post = spec(1, &[0], "identity", true);
        let lost = record(201, Outcome::Transport(Transport::ClosedBeforeResponse));
        assert_eq!(classify(&post, &lost, &w, &b), Class::LostWithMaster(1));
        assert_eq!(
            classify(&spec(0, &[0], "identity", true), &lost, &w, &b),
            Class::Failed(Failure::Transport(Transport::ClosedBeforeResponse))
        );
        // A GET gave up retrying: the backup never served.
        assert_eq!(
            classify(
                &into_two,
                &record(201, Outcome::Transport(Transport::Connect)),
                &w,
                &b
            ),
            Class::Failed(Failure::Transport(Transport::Connect))
        );
        // Seen from the other region, the failing-over region is dead: fast 503 allowed.
        assert_eq!(
            classify(
                &spec(0, &[1], "image", false),
                &record(203, fast_503()),
                &w,
                &b
            ),
            Class::DeadTarget503(1)
        );
    }

    #[test]
    fn wrong_answers_always_fail() {
        let w = [image_killed()];
        let b = bounds();
        let plain = spec(0, &[1], "image", false);
        let wrong = Outcome::Misrouted {
            answered_by: "RegionOne:9292".into(),
            status: 200,
        };
        assert_eq!(
            classify(&plain, &record(105, wrong), &w, &b),
            Class::Failed(Failure::Misrouted)
        );
        let html = Outcome::Other {
            status: 502,
            detail: "<html>".into(),
        };
        assert_eq!(
            classify(&plain, &record(101, html), &w, &b),
            Class::Failed(Failure::Other(502))
        );
        assert_eq!(
            classify(
                &plain,
                &record(101, Outcome::Transport(Transport::Timeout)),
                &w,
                &b
            ),
            Class::Failed(Failure::Transport(Transport::Timeout))
        );
    }

    #[test]
    fn touches_selects_the_requests_a_fault_reached() {
        let b = bounds();
        let killed = image_killed();
        assert!(killed.touches(&spec(0, &[1, 0], "image", false), S(105), &b));
        assert!(!killed.touches(&spec(0, &[0], "image", false), S(105), &b));
        assert!(!killed.touches(&spec(0, &[1], "image", false), S(130), &b));
        let failover = window(Fault::Failover { region: 1 }, 200, 204);
        assert!(failover.touches(&spec(1, &[0], "image", false), S(203), &b));
        assert!(failover.touches(&spec(0, &[1], "image", false), S(203), &b));
        assert!(!failover.touches(&spec(0, &[0], "image", false), S(203), &b));
    }
}
