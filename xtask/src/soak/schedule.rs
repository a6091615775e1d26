//! When the soak does what: the faults one after the other, each in its own slot with
//! time to recover before the next, and the reloads spread over the whole run. Pure, so
//! the timeline is unit-tested for every duration.
//!
//! The run is cut into six slots: (1) kill the second region's image backend, start it
//! again halfway; (2) blackhole the traffic between the regions, lift it halfway; (3)
//! hang (SIGSTOP) the first region's network backend, resume it halfway; (4) a
//! zero-downtime restart of the first region's router; (5) a VRRP failover: SIGKILL the
//! second region's master; (6) calm, to see that everything came back. Each router is
//! reloaded (SIGHUP through `scope-router reload`) N times, N = duration / 30 s within
//! 2..=10, never while it is being restarted or killed.

use std::time::Duration;

use anyhow::{Result, bail};

/// The shortest run whose slots still leave time to detect and recover from each fault
/// (health checks every 500 ms, fall and rise 2, 1 s timeout; a VRRP takeover in 3.6 s).
pub const MIN_DURATION: Duration = Duration::from_secs(60);

/// A router of the lab: its region and whether it is the `--ha` backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouterId {
    pub region: usize,
    pub backup: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    KillBackend {
        region: usize,
        port: u16,
    },
    StartBackend {
        region: usize,
        port: u16,
    },
    Partition {
        a: usize,
        b: usize,
    },
    Heal {
        a: usize,
        b: usize,
    },
    Hang {
        region: usize,
        port: u16,
    },
    Resume {
        region: usize,
        port: u16,
    },
    /// `scope-router restart` of the region's (first) router.
    Restart {
        region: usize,
    },
    /// SIGKILL the region's VRRP master.
    Failover {
        region: usize,
    },
    Reload(RouterId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub at: Duration,
    pub action: Action,
}

/// What the faults hit, chosen from the lab's catalog.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    /// (region, port) of the backend killed then started again.
    pub killed: (usize, u16),
    /// (region, port) of the backend hung then resumed.
    pub hung: (usize, u16),
    /// The region whose router gets the zero-downtime restart.
    pub restarted: usize,
    /// The region whose master is killed.
    pub failed_over: usize,
}

/// The timeline of a run of `duration` over `regions` regions (two routers each).
pub fn plan(duration: Duration, regions: usize, targets: Targets) -> Result<Vec<Planned>> {
    if duration < MIN_DURATION {
        bail!(
            "--duration {}s is too short: the soak needs at least {}s to let every fault be \
             detected and recovered from before the next",
            duration.as_secs(),
            MIN_DURATION.as_secs()
        );
    }
    let slot = duration / 6;
    let lead = slot / 10;
    let fault = slot / 2;
    let at = |n: u32, offset: Duration| slot * n + offset;
    let (kr, kp) = targets.killed;
    let (hr, hp) = targets.hung;
    let mut out = vec![
        Planned {
            at: at(0, lead),
            action: Action::KillBackend {
                region: kr,
                port: kp,
            },
        },
        Planned {
            at: at(0, lead + fault),
            action: Action::StartBackend {
                region: kr,
                port: kp,
            },
        },
        Planned {
            at: at(1, lead),
            action: Action::Partition { a: 0, b: 1 },
        },
        Planned {
            at: at(1, lead + fault),
            action: Action::Heal { a: 0, b: 1 },
        },
        Planned {
            at: at(2, lead),
            action: Action::Hang {
                region: hr,
                port: hp,
            },
        },
        Planned {
            at: at(2, lead + fault),
            action: Action::Resume {
                region: hr,
                port: hp,
            },
        },
        Planned {
            at: at(3, lead * 2),
            action: Action::Restart {
                region: targets.restarted,
            },
        },
        Planned {
            at: at(4, lead * 2),
            action: Action::Failover {
                region: targets.failed_over,
            },
        },
    ];
    let restart_at = at(3, lead * 2);
    let failover_at = at(4, lead * 2);
    // Far enough from a restart or a kill that the reload meets one settled router.
    let clear = Duration::from_secs(6);
    let near = |a: Duration, b: Duration| a.abs_diff(b) < clear;
    let reloads = (duration.as_secs() / 30).clamp(2, 10) as u32;
    let routers =
        (0..regions).flat_map(|region| [false, true].map(|backup| RouterId { region, backup }));
    for (k, router) in routers.enumerate() {
        for j in 0..reloads {
            // Spread over the run, each router a little apart from the others.
            let mut t =
                duration * (2 * j + 1) / (2 * reloads) + Duration::from_millis(700) * k as u32;
            let region_restarts = router.region == targets.restarted && !router.backup;
            let region_fails = router.region == targets.failed_over;
            if (region_restarts && near(t, restart_at)) || (region_fails && near(t, failover_at)) {
                t += clear;
            }
            let killed =
                router.region == targets.failed_over && !router.backup && t + clear >= failover_at;
            if killed || t >= duration {
                continue;
            }
            out.push(Planned {
                at: t,
                action: Action::Reload(router),
            });
        }
    }
    out.sort_by_key(|p| p.at);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Targets {
        Targets {
            killed: (1, 9292),
            hung: (0, 9696),
            restarted: 0,
            failed_over: 1,
        }
    }

    #[test]
    fn faults_come_one_after_the_other_with_time_to_recover() {
        for secs in [60, 90, 300, 3600] {
            let d = Duration::from_secs(secs);
            let plan = plan(d, 2, targets()).expect("plan");
            let faults: Vec<&Planned> = plan
                .iter()
                .filter(|p| !matches!(p.action, Action::Reload(_)))
                .collect();
            assert_eq!(faults.len(), 8, "{secs}: {faults:?}");
            // Each fault is undone before the next begins, with at least as long again
            // to recover as it lasted... and everything happens inside the run.
            for pair in faults.windows(2) {
                assert!(pair[0].at < pair[1].at, "{secs}: {pair:?}");
            }
            let lifted = faults[1].at - faults[0].at;
            assert!(faults[2].at - faults[1].at >= lifted, "{secs}");
            assert!(
                faults.last().expect("failover").at < d * 5 / 6,
                "{secs}: a calm slot remains"
            );
            assert!(plan.iter().all(|p| p.at < d));
        }
    }

    #[test]
    fn every_router_reloads_but_never_beside_its_restart_or_after_its_death() {
        let d = Duration::from_secs(300);
        let plan = plan(d, 2, targets()).expect("plan");
        let at = |a: &Action| {
            plan.iter()
                .find(|p| &p.action == a)
                .map(|p| p.at)
                .expect("planned")
        };
        let restart = at(&Action::Restart { region: 0 });
        let failover = at(&Action::Failover { region: 1 });
        let reloads = |r: RouterId| -> Vec<Duration> {
            plan.iter()
                .filter(|p| p.action == Action::Reload(r))
                .map(|p| p.at)
                .collect()
        };
        for region in 0..2 {
            for backup in [false, true] {
                let r = RouterId { region, backup };
                assert!(reloads(r).len() >= 2, "{r:?}");
            }
        }
        assert_eq!(
            reloads(RouterId {
                region: 0,
                backup: false
            })
            .len(),
            10
        );
        assert!(
            reloads(RouterId {
                region: 0,
                backup: false
            })
            .iter()
            .all(|t| t.abs_diff(restart) >= Duration::from_secs(6))
        );
        assert!(
            reloads(RouterId {
                region: 1,
                backup: false
            })
            .iter()
            .all(|t| *t + Duration::from_secs(6) < failover)
        );
        assert!(
            reloads(RouterId {
                region: 1,
                backup: true
            })
            .iter()
            .any(|t| *t > failover),
            "the new master is reloaded too"
        );
    }

    #[test]
    fn too_short_a_run_is_refused() {
        let err = plan(Duration::from_secs(30), 2, targets()).expect_err("too short");
        assert!(err.to_string().contains("at least 60s"), "{err}");
    }
}
