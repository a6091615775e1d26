//! Minimal RAII network namespaces for the VIP suite: unique names, veth pairs, closures
//! run on a dedicated thread that joined a namespace with setns(CLONE_NEWNET), and
//! cleanup on drop even when a test panics. (To be unified with the kernel suite's guard.)

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` sets up the shared /run/netns mount on first use; concurrent first uses
/// can trip over each other, so creation is serialised within the test process.
static CREATE: Mutex<()> = Mutex::new(());

/// Whether privileged tests can run here. Prints why not; under `CI=true` a skip is a
/// failure, because CI must not silently skip these suites.
pub fn privileged_or_skip(test: &str) -> bool {
    let reason = if unsafe_geteuid() != 0 {
        Some("not running as root (network namespaces and veth need CAP_SYS_ADMIN/CAP_NET_ADMIN)")
    } else if Command::new("ip").arg("-V").output().is_err() {
        Some("the `ip` command (iproute2) is not installed")
    } else {
        None
    };
    let Some(reason) = reason else { return true };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: cannot run privileged test under CI=true: {reason}");
    }
    // Written to the real stderr, not through eprintln!, so that libtest's output
    // capture cannot hide the skip reason of a passing test.
    let _ = writeln!(io::stderr(), "SKIPPED {test}: {reason}");
    false
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A named network namespace that is deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix>-<pid>-<n>` with its loopback up.
    pub fn new(prefix: &str) -> io::Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        {
            let _guard = CREATE
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            run_ip(&["netns", "add", &name])?;
        }
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <ns> <args>` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// Runs `f` on a new thread inside this namespace. The thread panics if it cannot
    /// enter the namespace, which surfaces through `join`.
    pub fn spawn<T, F>(&self, f: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path).unwrap_or_else(|e| panic!("cannot enter {}: {e}", path.display()));
            f()
        })
    }

    /// Runs `f` inside this namespace and waits for it; a panic in `f` is re-raised here.
    pub fn run<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        match self.spawn(f).join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also destroys the veth ends inside it.
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!("warning: could not delete netns {}: {e}", self.name);
        }
    }
}

/// Moves the calling thread into the namespace at `path`; only this thread changes.
fn enter(path: &PathBuf) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: `file` is an open namespace descriptor for the duration of the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a veth pair `a_if` (in `a`) ↔ `b_if` (in `b`) and brings both ends up.
pub fn veth_pair(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> io::Result<()> {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

fn run_ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
