//! One managing router per VIP: an exclusive lock on `<state_dir>/vip-<address>.lock`,
//! held for the life of the VIP handle (the lock itself is [`crate::lock`]).
//!
//! Without it a second `scope-router run` on the same address (another unit, a forgotten
//! shell, `ebpf.mode = "off"` so nothing else collides) adopts the first one's VIP and
//! removes it when it exits. An unmanaged router only looks at the lock, so it sees a
//! managing one without ever competing for it.
//!
//! The lock file is separate from the state file on purpose: the state file is replaced
//! by rename at every write, which would leave a lock on it behind on the old inode. The
//! lock file is never renamed or deleted (deleting it would let two routers lock two
//! different inodes); it holds the owner's pid, for operators who look at it.

use std::fs::{self, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{VipError, VipSettings};
use crate::lock::{self, LockError};

/// `<state_dir>/vip-<address>.lock`.
pub fn lock_file_path(state_dir: &Path, address: Ipv4Addr) -> PathBuf {
    state_dir.join(format!("vip-{address}.lock"))
}

/// The held lock; dropping it (or dying) releases it.
#[derive(Debug)]
pub(crate) struct OwnerLock {
    // Kept only for the lock it carries.
    _lock: lock::OwnerLock,
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
        let held = match lock::OwnerLock::try_acquire(file) {
            Ok(held) => held,
            Err(LockError::Held { pid }) => {
                return Err(VipError::AlreadyManaged {
                    address: settings.address,
                    pid,
                    path,
                });
            }
            Err(LockError::Io(e)) => return Err(fail(e)),
        };
        Self::record(held, &path)
    }

    /// The lock a predecessor handed over on a restart (`crate::handover`), still held.
    pub(crate) fn adopt(settings: &VipSettings, file: fs::File) -> Result<OwnerLock, VipError> {
        let path = lock_file_path(&settings.state_dir, settings.address);
        match lock::OwnerLock::adopt(file, &path) {
            Ok(held) => Self::record(held, &path),
            Err(LockError::Held { pid }) => Err(VipError::AlreadyManaged {
                address: settings.address,
                pid,
                path,
            }),
            Err(LockError::Io(source)) => Err(VipError::LockFile { path, source }),
        }
    }

    /// Ours now: replace the previous owner's pid (a crashed run leaves it behind).
    fn record(held: lock::OwnerLock, path: &Path) -> Result<OwnerLock, VipError> {
        let fail = |source: io::Error| VipError::LockFile {
            path: path.to_owned(),
            source,
        };
        let pid = format!("{}\n", std::process::id());
        held.file().set_len(0).map_err(fail)?;
        held.file().write_all_at(pid.as_bytes(), 0).map_err(fail)?;
        Ok(OwnerLock { _lock: held })
    }

    /// The locked open file, for a restart to hand over.
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self._lock.file())
    }

    /// Whether another open file holds the lock for `settings.address` right now, and its
    /// owner's pid; never takes the lock. `None` also when the lock cannot be inspected.
    pub(crate) fn holder(settings: &VipSettings) -> Option<Option<u32>> {
        lock::holder(&lock_file_path(&settings.state_dir, settings.address))
    }
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
    fn a_lock_handed_over_stays_held_and_names_its_new_owner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = settings(dir.path());
        let first = OwnerLock::acquire(&settings).expect("first owner");
        let handed = fs::File::from(first.fd().try_clone_to_owned().expect("dup"));
        let second = OwnerLock::adopt(&settings, handed).expect("adopt");
        // The predecessor leaves; the lock stays, so no third router can take it.
        drop(first);
        let err = OwnerLock::acquire(&settings).expect_err("still held");
        assert!(matches!(err, VipError::AlreadyManaged { .. }), "{err:?}");
        drop(second);
        let _free = OwnerLock::acquire(&settings).expect("released with the last descriptor");

        // Any other file is refused, not adopted.
        let other = fs::File::create(dir.path().join("other")).expect("file");
        let err = OwnerLock::adopt(&settings, other).expect_err("not the lock file");
        assert!(matches!(err, VipError::LockFile { .. }), "{err:?}");
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
