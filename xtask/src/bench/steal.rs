//! Time the hypervisor took from the bench's two CPUs during a run (`steal` in
//! `/proc/stat`): a run it disturbed measures the VM's neighbours, not the proxy.
//!
//! Scenario k's p99 is where this shows. On the bench VM, runs with at most 2 % steal put
//! scope-router's p99 at a median of 1.0 ms (HAProxy's at 1.7); runs with 12–26 % steal
//! put either proxy at 5–20 ms (`docs/performance.md`, *Fourth session*).

use anyhow::{Context, Result, anyhow};

use super::netlab::{LOAD_CPU, PROXY_CPU};

/// Above this share of either CPU's time taken by the hypervisor, a run is disturbed.
pub const DISTURBED_ABOVE_PCT: f64 = 2.0;

/// The bench CPUs' (total, steal) clock ticks at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot([(u64, u64); 2]);

impl Snapshot {
    pub fn now() -> Result<Snapshot> {
        let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
        Snapshot::parse(&stat)
    }

    fn parse(stat: &str) -> Result<Snapshot> {
        let cpu = |n: &str| -> Result<(u64, u64)> {
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
            Ok((fields.iter().take(8).sum(), steal))
        };
        Ok(Snapshot([cpu(PROXY_CPU)?, cpu(LOAD_CPU)?]))
    }

    /// The larger share (%) of the two CPUs' time the hypervisor took since `self`.
    pub fn steal_pct_to(&self, later: &Snapshot) -> f64 {
        self.0
            .iter()
            .zip(later.0.iter())
            .map(|((t0, s0), (t1, s1))| {
                let total = t1.saturating_sub(*t0);
                if total == 0 {
                    0.0
                } else {
                    s1.saturating_sub(*s0) as f64 * 100.0 / total as f64
                }
            })
            .fold(0.0, f64::max)
    }

    /// [`Snapshot::steal_pct_to`] now.
    pub fn steal_pct(&self) -> Result<f64> {
        Ok(self.steal_pct_to(&Snapshot::now()?))
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
        assert!((before.steal_pct_to(&after) - 20.0).abs() < 1e-9);
        // Nothing elapsed: nothing stolen, not a division by zero.
        assert_eq!(before.steal_pct_to(&before), 0.0);
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
