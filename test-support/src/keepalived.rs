//! Debian's keepalived in a test namespace, for the VRRP suites that check scope-router
//! against the real thing: started in the foreground with its log in a file, killed like
//! a crash (VRRP child first) or stopped cleanly (SIGTERM) when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// A running keepalived (VRRP only) with its files in one directory.
#[derive(Debug)]
pub struct Keepalived {
    child: Child,
    dir: PathBuf,
}

impl Keepalived {
    /// Writes `config` to `dir/keepalived.conf` and starts keepalived on it in `ns`.
    pub fn start(ns: &Netns, dir: &Path, config: &str) -> Keepalived {
        fs::create_dir_all(dir).expect("keepalived directory");
        let file = dir.join("keepalived.conf");
        fs::write(&file, config).expect("writing keepalived.conf");
        let log = fs::File::create(dir.join("keepalived.log")).expect("keepalived log");
        let child = ns
            .command("keepalived")
            // --dont-respawn: a killed VRRP child stays dead, as in a crash of the node.
            .args([
                "--dont-fork",
                "--dont-respawn",
                "--log-console",
                "--log-detail",
                "--vrrp",
            ])
            .arg("--use-file")
            .arg(&file)
            .arg("--pid")
            .arg(dir.join("keepalived.pid"))
            .arg("--vrrp_pid")
            .arg(dir.join("vrrp.pid"))
            .stdout(log.try_clone().expect("keepalived log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting keepalived");
        Keepalived {
            child,
            dir: dir.to_owned(),
        }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("keepalived.log")).unwrap_or_default()
    }

    /// Waits (bounded by `within`) until its log holds `needle`; how long that took.
    pub fn wait_log(&self, needle: &str, within: Duration) -> Duration {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < within,
                "keepalived did not log {needle:?} within {within:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    }

    /// A crash: SIGKILL to the VRRP child first (its parent would otherwise stop it
    /// cleanly, resigning with priority 0), then to the parent. Its VIP stays where it is.
    pub fn kill(&mut self) {
        let pid_file = self.dir.join("vrrp.pid");
        let start = Instant::now();
        let vrrp = loop {
            if let Some(pid) = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<libc::pid_t>().ok())
            {
                break pid;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "keepalived wrote no {}",
                pid_file.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // SAFETY: kill(2) on keepalived's VRRP child, alive while its parent (our child,
        // not yet reaped) does not respawn it.
        unsafe { libc::kill(vrrp, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
        // SAFETY: signal 0 only checks existence.
        while unsafe { libc::kill(vrrp, 0) } == 0 && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Keepalived {
    /// A clean stop: SIGTERM lets the parent stop its VRRP child (SIGKILL after 10 s).
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
