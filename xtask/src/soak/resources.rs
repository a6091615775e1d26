//! Memory and file descriptors of the routers: sampled from /proc at the baseline (after
//! the warm-up, clients paused) and at the end (every client stopped, after a settle
//! period), and compared with a stated tolerance.
//!
//! The tolerance: resident memory may end up to `max(25 % of the baseline, 8 MiB)` above
//! it; open descriptors up to 16 above it. Why:
//! - mimalloc keeps freed pages of a size class for reuse rather than returning them at
//!   once, and tokio/hyper buffers grow to the largest head and the most connections seen
//!   at a time: after a hostile load a healthy router sits somewhat above its warm-up
//!   footprint. What the soak is after is growth with the amount of abuse: a leak per
//!   connection or per request. The soak's clients open tens of thousands of connections,
//!   so a leak of even 1 KiB each ends far beyond 8 MiB, while the allocator's retention
//!   stays in the few MiB measured on a healthy router;
//! - descriptors: listeners, eBPF maps and links, netlink and the admin listener do not
//!   change; what may differ between two quiet moments is the upstream pool (idle
//!   connections kept up to 4 s, per backend) and a health check in flight. 16 covers
//!   those; a descriptor leaked per connection or request would be thousands.

use std::path::Path;

use anyhow::{Context, Result};

/// One sample of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub rss_kib: u64,
    pub fds: u64,
}

/// The tolerance stated in the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Share of the baseline RSS the end may be above it.
    pub rss_share: f64,
    /// Growth always allowed, whatever the baseline.
    pub rss_floor_kib: u64,
    pub fd_slack: u64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            rss_share: 0.25,
            rss_floor_kib: 8 * 1024,
            fd_slack: 16,
        }
    }
}

impl Tolerance {
    /// The highest RSS still "back to baseline".
    pub fn rss_limit(&self, baseline: &Sample) -> u64 {
        let share = (baseline.rss_kib as f64 * self.rss_share) as u64;
        baseline.rss_kib + share.max(self.rss_floor_kib)
    }

    pub fn fd_limit(&self, baseline: &Sample) -> u64 {
        baseline.fds + self.fd_slack
    }

    /// Why `end` is not back to `baseline`; empty when it is.
    pub fn excess(&self, baseline: &Sample, end: &Sample) -> Vec<String> {
        let mut out = Vec::new();
        if end.rss_kib > self.rss_limit(baseline) {
            out.push(format!(
                "RSS {} KiB > {} KiB allowed (baseline {} KiB)",
                end.rss_kib,
                self.rss_limit(baseline),
                baseline.rss_kib
            ));
        }
        if end.fds > self.fd_limit(baseline) {
            out.push(format!(
                "{} open fds > {} allowed (baseline {})",
                end.fds,
                self.fd_limit(baseline),
                baseline.fds
            ));
        }
        out
    }
}

/// Reads `pid`'s resident memory and open descriptors (needs root for another user's).
pub fn sample(pid: u32) -> Result<Sample> {
    let proc = Path::new("/proc").join(pid.to_string());
    let status = std::fs::read_to_string(proc.join("status"))
        .with_context(|| format!("reading /proc/{pid}/status: is the process gone?"))?;
    let rss_kib = vm_rss(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    let fds = std::fs::read_dir(proc.join("fd"))
        .with_context(|| format!("listing /proc/{pid}/fd (as root?)"))?
        .count() as u64;
    Ok(Sample { rss_kib, fds })
}

/// `VmRSS:    12345 kB` → 12345.
fn vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tolerance_is_a_share_with_a_floor() {
        let t = Tolerance::default();
        let small = Sample {
            rss_kib: 10_000,
            fds: 40,
        };
        // 25 % of 10 MB is under the 8 MiB floor.
        assert_eq!(t.rss_limit(&small), 10_000 + 8192);
        let large = Sample {
            rss_kib: 100_000,
            fds: 40,
        };
        assert_eq!(t.rss_limit(&large), 125_000);
        assert!(
            t.excess(
                &small,
                &Sample {
                    rss_kib: 18_192,
                    fds: 56
                }
            )
            .is_empty()
        );
        let over = t.excess(
            &small,
            &Sample {
                rss_kib: 18_193,
                fds: 57,
            },
        );
        assert_eq!(over.len(), 2, "{over:?}");
        assert!(over[0].contains("RSS 18193 KiB > 18192 KiB"), "{over:?}");
        assert!(over[1].contains("57 open fds > 56"), "{over:?}");
    }

    #[test]
    fn samples_this_process() {
        assert_eq!(vm_rss("Name:\tx\nVmRSS:\t   2048 kB\n"), Some(2048));
        assert_eq!(vm_rss("Name:\tx\n"), None);
        let me = sample(std::process::id()).expect("own /proc entry");
        assert!(me.rss_kib > 0 && me.fds >= 3, "{me:?}");
        assert!(sample(u32::MAX).is_err());
    }
}
