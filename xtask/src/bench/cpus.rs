//! What the bench's two CPUs did during a run, from `/proc/stat`: the time the hypervisor
//! took from either (a disturbed run measures the VM's neighbours, not the proxy), and how
//! busy the load CPU was (past saturation, wrk and nginx bound the run, not the proxy).
//!
//! Scenario k's p99 is where steal shows. On the bench VM, runs with at most 2 % steal put
//! scope-router's p99 at a median of 1.0 ms (HAProxy's at 1.7); runs with 12–26 % steal
//! put either proxy at 5–20 ms (`docs/performance.md`, *Fourth session*).
//!
//! The load CPU's share shows in a–c and j: with a proxy between them, wrk and nginx pay
//! the loopback or veth receive path of the proxy's sockets and cross-CPU wake-ups, so they
//! cost their CPU about twice per request what the direct ceiling costs it
//! (`docs/performance.md`, *Fifth session*).

use anyhow::{Context, Result, anyhow};

use super::netlab::{LOAD_CPU, PROXY_CPU};

/// Above this share of either CPU's time taken by the hypervisor, a run is disturbed.
pub const DISTURBED_ABOVE_PCT: f64 = 2.0;

/// One CPU's clock ticks at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ticks {
    total: u64,
    /// `idle` and `iowait`: the CPU had nothing to run.
    idle: u64,
    steal: u64,
}

/// The bench CPUs' ticks at one instant: the proxy's, then the load's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot([Ticks; 2]);

/// What the CPUs did between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// The larger share (%) of the two CPUs' time the hypervisor took.
    pub steal_pct: f64,
    /// The share (%) of the load CPU's time it was not idle, of the time it was not stolen.
    pub load_busy_pct: f64,
}

impl Snapshot {
    pub fn now() -> Result<Snapshot> {
        let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
        Snapshot::parse(&stat)
    }

    fn parse(stat: &str) -> Result<Snapshot> {
        let cpu = |n: &str| -> Result<Ticks> {
            let name = format!("cpu{n}");
            let fields: Vec<u64> = stat
                .lines()
                .find_map(|l| {
                    let mut words = l.split_whitespace();
                    (words.next() == Some(name.as_str())).then_some(words)
                })
                .ok_or_else(|| anyhow!("no `{name}` line in /proc/stat"))?
                .map(str::parse)
                .collect::<Result<_, _>>()
                .with_context(|| format!("unreadable `{name}` line in /proc/stat"))?;
            // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time
            // is already inside user and nice, so only the first eight make the total.
            let steal = *fields
                .get(7)
                .ok_or_else(|| anyhow!("`{name}` in /proc/stat has no steal field"))?;
            Ok(Ticks {
                total: fields.iter().take(8).sum(),
                idle: fields[3] + fields[4],
                steal,
            })
        };
        Ok(Snapshot([cpu(PROXY_CPU)?, cpu(LOAD_CPU)?]))
    }

    /// What the CPUs did from `self` to `later`.
    pub fn reading_to(&self, later: &Snapshot) -> Reading {
        let share = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                part as f64 * 100.0 / whole as f64
            }
        };
        let delta = |cpu: usize| {
            let (a, b) = (self.0[cpu], later.0[cpu]);
            Ticks {
                total: b.total.saturating_sub(a.total),
                idle: b.idle.saturating_sub(a.idle),
                steal: b.steal.saturating_sub(a.steal),
            }
        };
        let (proxy, load) = (delta(0), delta(1));
        let ran = load.total.saturating_sub(load.steal);
        Reading {
            steal_pct: share(proxy.steal, proxy.total).max(share(load.steal, load.total)),
            load_busy_pct: share(ran.saturating_sub(load.idle), ran),
        }
    }

    /// [`Snapshot::reading_to`] now.
    pub fn reading(&self) -> Result<Reading> {
        Ok(self.reading_to(&Snapshot::now()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(cpu0: &str, cpu1: &str) -> String {
        format!("cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 {cpu0}\ncpu1 {cpu1}\nintr 12345\nctxt 678\n")
    }

    #[test]
    fn steal_is_the_worse_cpus_share_of_its_own_time() {
        let before = Snapshot::parse(&stat("100 0 50 800 0 0 50 0 0 0", "10 0 10 80 0 0 0 0 0 0"))
            .expect("parses");
        // CPU 0: 200 ticks, 10 stolen (5 %); CPU 1: 100 ticks, 20 stolen (20 %). Guest
        // ticks (the last two fields) are part of user's and must not count twice.
        let after = Snapshot::parse(&stat(
            "200 0 100 830 0 0 60 10 50 0",
            "30 0 20 130 0 0 0 20 0 0",
        ))
        .expect("parses");
        assert!((before.reading_to(&after).steal_pct - 20.0).abs() < 1e-9);
        // Nothing elapsed: nothing stolen or busy, not a division by zero.
        assert_eq!(
            before.reading_to(&before),
            Reading {
                steal_pct: 0.0,
                load_busy_pct: 0.0
            }
        );
    }

    #[test]
    fn load_busy_is_the_load_cpus_share_of_the_time_it_ran() {
        let cases: &[(&str, &str, f64)] = &[
            // 100 ticks: 60 user and system, 30 softirq, 10 idle.
            ("saturated but for idle", "40 0 20 10 0 0 30 0 0 0", 90.0),
            // iowait is idle too: 50 busy of 100.
            ("iowait counts as idle", "30 0 20 40 10 0 0 0 0 0", 50.0),
            // 20 of 100 stolen: the CPU ran 80, busy for 60 of them.
            (
                "stolen time is not the load's",
                "40 0 20 20 0 0 0 20 0 0",
                75.0,
            ),
            // The proxy CPU's ticks change nothing.
            ("only the load CPU counts", "10 0 0 90 0 0 0 0 0 0", 10.0),
        ];
        let before =
            Snapshot::parse(&stat("0 0 0 0 0 0 0 0 0 0", "0 0 0 0 0 0 0 0 0 0")).expect("parses");
        for (name, load, busy) in cases {
            let after = Snapshot::parse(&stat("90 0 10 0 0 0 0 0 0 0", load)).expect("parses");
            let got = before.reading_to(&after).load_busy_pct;
            assert!(
                (got - busy).abs() < 1e-9,
                "{name}: {got} % busy, want {busy}"
            );
        }
    }

    #[test]
    fn a_missing_cpu_or_field_is_an_error_naming_it() {
        let err = Snapshot::parse("cpu0 1 2 3 4 5 6 7 8\n").expect_err("no cpu1");
        assert!(format!("{err:#}").contains("no `cpu1` line"), "{err:#}");
        let err = Snapshot::parse(&stat("1 2 3 4 5 6 7 8", "1 2 3 4 5 6 7")).expect_err("short");
        assert!(
            format!("{err:#}").contains("`cpu1` in /proc/stat has no steal"),
            "{err:#}"
        );
    }
}
