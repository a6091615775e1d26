//! RAII network namespaces for privileged tests.
//!
//! ```no_run
//! use test_support::netns::{self, Lab};
//! if !netns::privileged("my_test") { return; }        // prints why, panics under CI=true
//! let lab = Lab::new().unwrap();                        // router ns (eth2) <-veth-> client ns (eth0)
//! lab.router.ip(&["addr", "add", "192.0.2.100/32", "dev", "eth2"]).unwrap();
//! let listener = lab.router.run(|| std::net::TcpListener::bind("127.0.0.1:0")).unwrap();
//! let stream = lab.client.run(|| std::net::TcpStream::connect("192.0.2.100:80"));
//! // everything (namespaces, veth) is deleted when `lab` drops, also on panic
//! ```
//!
//! Namespaces are created with `ip netns add` under a unique name, so `nsenter
//! --net=/run/netns/NAME` works for debugging and bpffs stays visible (unlike `ip netns
//! exec`, which remounts /sys). Code runs inside a namespace on a dedicated thread that
//! `setns(2)`s first; threads it spawns inherit the namespace. A process runs inside
//! one through [`Netns::command`].

use std::{
    ffi::OsStr,
    fs,
    io::{self, Write as _},
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

static NEXT: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` sets up the shared /run/netns mount on first use; concurrent first uses
/// can trip over each other, so creation is serialised within the test process.
static CREATE: Mutex<()> = Mutex::new(());

/// A unique suffix for names created by this process (`<pid>-<n>`).
fn unique_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Why privileged tests cannot run here, or `None` if they can (root, `ip`, netns).
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, veth, eBPF)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        _ => return Some("needs the `ip` command (iproute2)".into()),
    }
    if !Path::new("/proc/thread-self/ns/net").exists() {
        return Some("kernel without network namespaces".into());
    }
    None
}

/// Call first in every privileged test: returns `true` to run. Otherwise prints why the
/// test is skipped and returns `false` — except under `CI=true`, where a skip is a
/// failure (panics), so CI can never silently skip privileged coverage.
pub fn privileged(test: &str) -> bool {
    match skip_reason() {
        None => true,
        Some(reason) => skip(test, &reason),
    }
}

/// Skips `test` for `reason` (printed), or panics under `CI=true`. Returns `false` so it
/// can end a guard: `if cond { return netns::skip(..) }` style helpers.
pub fn skip(test: &str, reason: &str) -> bool {
    if crate::ci::enabled() {
        panic!("{test}: privileged test cannot run under CI: {reason}");
    }
    // Straight to the stderr handle: libtest captures eprintln!, and a skip must be seen.
    let _ = writeln!(io::stderr(), "SKIPPED {test}: {reason}");
    false
}

/// What setting up or changing a namespace ran into.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `ip` could not be started at all.
    #[error("could not run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    /// `ip` ran and failed; `stderr` says why.
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// Runs `ip <args…>` and returns its stdout, failing with ip's stderr.
fn run_ip<I, S>(args: I) -> Result<String, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = match cmd.output() {
        Ok(out) => out,
        Err(source) => {
            return Err(Error::Spawn {
                command: format!("{cmd:?}"),
                source,
            });
        }
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Failed {
            command: format!("{cmd:?}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix>-<pid>-<n>` with `lo` up.
    pub fn create(prefix: &str) -> Result<Self, Error> {
        let name = format!("{prefix}-{}", unique_suffix());
        {
            let _guard = CREATE
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            run_ip(["netns", "add", &name])?;
        }
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `nsenter --net=` or `setns`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <name> <args…>` and returns its stdout, failing with ip's stderr.
    pub fn ip(&self, args: &[&str]) -> Result<String, Error> {
        run_ip(
            ["-n", self.name.as_str()]
                .into_iter()
                .chain(args.iter().copied()),
        )
    }

    /// `nsenter --net=<path> <program>`: a process in this namespace only, which keeps
    /// bpffs visible. nsenter execs `program` in place, so the child's pid is its own.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg(program);
        cmd
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its result; a panic
    /// in `f` is re-raised here. Sockets created in `f` belong to this namespace for their
    /// whole life, so they can be returned and used from any thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|scope| {
            let handle = scope.spawn(move || {
                enter(&path).unwrap_or_else(|err| panic!("setns into {}: {err}", path.display()));
                f()
            });
            match handle.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Like [`Netns::run`] but detached: `f` keeps running in the namespace (e.g. a
    /// server loop) while the caller continues. Join the handle before the `Netns` drops.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path).unwrap_or_else(|err| panic!("setns into {}: {err}", path.display()));
            f()
        })
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &Path) -> io::Result<()> {
    let file = fs::File::open(path)?;
    // SAFETY: file is an open namespace fd; setns only affects the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its interfaces (and the veth peer with them).
        if let Err(err) = run_ip(["netns", "del", self.name.as_str()]) {
            eprintln!("warning: could not delete netns {}: {err}", self.name);
        }
    }
}

/// Two namespaces joined by a veth: `router` holds `eth2` = [`Lab::ROUTER`]/24, `client`
/// holds `eth0` = [`Lab::CLIENT`]/24 (the eBPF suite's client, the VIP suite's ARP
/// neighbour). Addresses are TEST-NET-1 and exist only inside these namespaces.
#[derive(Debug)]
pub struct Lab {
    /// The router's namespace (interface `eth2`).
    pub router: Netns,
    /// The client's namespace (interface `eth0`).
    pub client: Netns,
}

impl Lab {
    /// The router's own address on `eth2`.
    pub const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    /// The client's address on `eth0`.
    pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    /// A VIP address tests may add to the router's `eth2` (as a /32).
    pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

    /// Creates both namespaces and the veth, addresses up.
    pub fn new() -> Result<Self, Error> {
        let router = Netns::create("srt-router")?;
        let client = Netns::create("srt-client")?;
        veth_pair(&router, "eth2", &client, "eth0")?;
        router.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth2"])?;
        client.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"])?;
        Ok(Self { router, client })
    }

    /// Adds [`Lab::VIP`]/32 to the router's `eth2`, as the VIP manager would.
    pub fn add_vip(&self) -> Result<(), Error> {
        self.router
            .ip(&["addr", "add", "192.0.2.100/32", "dev", "eth2"])
            .map(drop)
    }
}

/// Creates a veth pair `a_if` (in `a`) ↔ `b_if` (in `b`) and brings both ends up.
fn veth_pair(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<(), Error> {
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

/// A unique directory on bpffs for one test's eBPF pins (`/sys/fs/bpf/<prefix>-<pid>-<n>`,
/// not created here: the loader creates it), removed recursively on drop.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// Picks a fresh path under `/sys/fs/bpf`.
    pub fn new(prefix: &str) -> Self {
        Self {
            path: PathBuf::from(format!("/sys/fs/bpf/{prefix}-{}", unique_suffix())),
        }
    }

    /// The pin path to put in the steering config.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        // Unpinning links detaches programs a panicking test left attached.
        match fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => eprintln!("warning: could not remove {}: {err}", self.path.display()),
        }
    }
}
