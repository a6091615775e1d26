//! One managing router per VIP: an exclusive lock on `<state_dir>/vip-<address>.lock`,
//! held for the life of the VIP handle.
//!
//! Without it a second `scope-router run` on the same address (another unit, a forgotten
//! shell, `ebpf.mode = "off"` so nothing else collides) adopts the first one's VIP and
//! removes it when it exits. The lock is an open-file-description lock (`F_OFD_SETLK`):
//! like `flock` it belongs to this open file, so two handles in one process conflict too
//! and the kernel drops it when the owner dies (a crashed run never blocks a restart);
//! unlike `flock` it can be tested without taking it (`F_OFD_GETLK`), which lets an
//! unmanaged router see a managing one without ever competing for the lock.
//!
//! The lock file is separate from the state file on purpose: the state file is replaced
//! by rename at every write, which would leave a lock on it behind on the old inode. The
//! lock file is never renamed or deleted (deleting it would let two routers lock two
//! different inodes); it holds only the owner's pid, for the error a second router prints.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{VipError, VipSettings};

/// `<state_dir>/vip-<address>.lock`.
pub fn lock_file_path(state_dir: &Path, address: Ipv4Addr) -> PathBuf {
    state_dir.join(format!("vip-{address}.lock"))
}

/// The held lock; dropping it (or dying) releases it.
#[derive(Debug)]
pub(crate) struct OwnerLock {
    // Kept open only for the lock it carries.
    _file: File,
}

impl OwnerLock {
    /// Takes the lock for `settings.address`, or fails naming the current owner's pid.
    pub(crate) fn acquire(settings: &VipSettings) -> Result<OwnerLock, VipError> {
        let path = lock_file_path(&settings.state_dir, settings.address);
        let fail = |source: io::Error| VipError::LockFile {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&settings.state_dir).map_err(fail)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(fail)?;
        if let Err(e) = ofd_lock(&file, libc::F_OFD_SETLK) {
            return Err(match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EACCES) => VipError::AlreadyManaged {
                    address: settings.address,
                    pid: recorded_pid(&file),
                    path,
                },
                _ => fail(e),
            });
        }
        // Ours now: replace the previous owner's pid (a crashed run leaves it behind).
        let pid = format!("{}\n", std::process::id());
        file.set_len(0).map_err(fail)?;
        file.write_all_at(pid.as_bytes(), 0).map_err(fail)?;
        Ok(OwnerLock { _file: file })
    }

    /// Whether another open file holds the lock for `settings.address` right now, and its
    /// recorded pid; never takes the lock. `None` also when the lock file cannot be read.
    pub(crate) fn holder(settings: &VipSettings) -> Option<Option<u32>> {
        let path = lock_file_path(&settings.state_dir, settings.address);
        let file = File::open(path).ok()?;
        match ofd_lock(&file, libc::F_OFD_GETLK) {
            Ok(true) => Some(recorded_pid(&file)),
            _ => None,
        }
    }
}

/// `F_OFD_SETLK`: `Ok(false)` once locked. `F_OFD_GETLK`: `Ok(true)` when another open
/// file holds a conflicting lock. Both cover the whole file.
fn ofd_lock(file: &File, command: libc::c_int) -> io::Result<bool> {
    // SAFETY: all-zero is a valid `struct flock` (l_start = l_len = 0: the whole file).
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = libc::F_WRLCK as libc::c_short;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: the fd is open for the call's duration and `request` outlives it.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), command, &raw mut request) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(command == libc::F_OFD_GETLK && request.l_type != libc::F_UNLCK as libc::c_short)
}

/// The pid the owner wrote; `None` in the instant between its lock and its write.
fn recorded_pid(file: &File) -> Option<u32> {
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> VipSettings {
        let mut settings = VipSettings::new(Ipv4Addr::new(192, 0, 2, 10));
        settings.state_dir = dir.join("state");
        settings
    }

    #[test]
    fn a_second_owner_is_refused_naming_the_first_and_a_release_frees_the_vip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = settings(dir.path());
        assert_eq!(OwnerLock::holder(&settings), None);

        let first = OwnerLock::acquire(&settings).expect("first owner");
        let path = lock_file_path(&settings.state_dir, settings.address);
        assert_eq!(
            fs::read_to_string(&path).expect("lock file"),
            format!("{}\n", std::process::id())
        );
        assert_eq!(OwnerLock::holder(&settings), Some(Some(std::process::id())));

        let err = OwnerLock::acquire(&settings).expect_err("second owner");
        let text = err.to_string();
        assert!(
            matches!(err, VipError::AlreadyManaged { pid: Some(p), .. } if p == std::process::id()),
            "{err:?}"
        );
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("manage = false"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");

        // Another address is another lock.
        let mut other = settings.clone();
        other.address = Ipv4Addr::new(192, 0, 2, 11);
        let _other = OwnerLock::acquire(&other).expect("another VIP");

        // The owner goes away (clean exit or crash alike: the file is closed).
        drop(first);
        assert_eq!(OwnerLock::holder(&settings), None);
        let _again = OwnerLock::acquire(&settings).expect("free again");
    }

    #[test]
    fn a_stale_pid_from_a_crashed_owner_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = settings(dir.path());
        fs::create_dir_all(&settings.state_dir).expect("state dir");
        let path = lock_file_path(&settings.state_dir, settings.address);
        fs::write(&path, "4194304999\n").expect("stale lock file");
        assert_eq!(OwnerLock::holder(&settings), None, "nobody holds it");
        let _lock = OwnerLock::acquire(&settings).expect("stale file is no owner");
        assert_eq!(
            fs::read_to_string(&path).expect("lock file"),
            format!("{}\n", std::process::id())
        );
    }

    #[test]
    fn an_unusable_state_dir_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("blocker");
        fs::write(&blocker, b"").expect("blocker file");
        let mut settings = settings(dir.path());
        settings.state_dir = blocker.join("state");
        let err = OwnerLock::acquire(&settings).expect_err("no directory");
        assert!(matches!(err, VipError::LockFile { .. }), "{err:?}");
        assert!(err.to_string().contains("state_dir"), "{err}");
    }
}
