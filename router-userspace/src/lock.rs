//! Ownership locks: one running router owns a VIP (`vip::lock`) or an eBPF state
//! directory (`ebpf::pins`) by holding an exclusive `flock(2)` on a file or directory.
//!
//! `flock` because it is the one lock the kernel offers on a directory, and bpffs holds
//! nothing else (no regular files; tubular locks its bpffs state directory the same way).
//! The lock belongs to the open file description, so two opens in one process conflict
//! too, and the kernel drops it when the owner dies: a crashed run never blocks a restart.
//!
//! Who holds a lock is read from `/proc/locks` without taking it, so `status` and a
//! refused second router can name the owner's pid while never competing for the lock: a
//! reader that took even a shared lock could make a router starting at that moment fail.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A held exclusive lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub(crate) struct OwnerLock {
    file: File,
}

/// Why [`OwnerLock::try_acquire`] did not get the lock.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    /// Another open file holds it; `pid` is its owner when `/proc/locks` shows one.
    #[error("held by {}", owner_text(*pid))]
    Held { pid: Option<u32> },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// "pid N", or why there is no pid to show.
pub(crate) fn owner_text(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "a process whose pid /proc/locks does not show".to_owned(),
    }
}

impl OwnerLock {
    /// Takes an exclusive lock on `file` (a regular file or a directory) without waiting.
    pub(crate) fn try_acquire(file: File) -> Result<OwnerLock, LockError> {
        // SAFETY: the fd is open for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(OwnerLock { file });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let pid = fd_holder(&file.metadata()?).flatten();
            return Err(LockError::Held { pid });
        }
        Err(LockError::Io(err))
    }

    /// Takes over a lock a predecessor handed over on a restart (`crate::handover`):
    /// `file` must be the locked open file of `path`, which still holds the lock. The lock
    /// is re-taken so that `/proc/locks` names this process as its owner: shared, then
    /// exclusive again, on the same open file, which no other router can win meanwhile
    /// (each only tries an exclusive lock, refused while the shared one is held).
    pub(crate) fn adopt(file: File, path: &Path) -> Result<OwnerLock, LockError> {
        let lock = OwnerLock { file };
        if !lock.guards(path)? {
            return Err(LockError::Io(io::Error::other(format!(
                "the descriptor handed over is not the lock on {}",
                path.display()
            ))));
        }
        for op in [libc::LOCK_SH, libc::LOCK_EX] {
            // SAFETY: the fd is open for the duration of the call.
            if unsafe { libc::flock(lock.file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    let pid = fd_holder(&lock.file.metadata()?).flatten();
                    return Err(LockError::Held { pid });
                }
                return Err(LockError::Io(err));
            }
        }
        Ok(lock)
    }

    /// The locked file, e.g. to record something in it.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Whether the lock is on what `path` names now: a directory removed and recreated
    /// (or a file replaced) between opening and locking leaves the lock on a dead inode.
    pub(crate) fn guards(&self, path: &Path) -> io::Result<bool> {
        let held = self.file.metadata()?;
        let named = fs::metadata(path)?;
        Ok(held.dev() == named.dev() && held.ino() == named.ino())
    }
}

/// Whether some open file holds an exclusive lock on `path`, and its owner's pid when
/// known; never takes the lock. `None` also when `path` or `/proc/locks` cannot be read.
pub(crate) fn holder(path: &Path) -> Option<Option<u32>> {
    fd_holder(&fs::metadata(path).ok()?)
}

fn fd_holder(meta: &fs::Metadata) -> Option<Option<u32>> {
    let locks = fs::read_to_string("/proc/locks").ok()?;
    let dev = meta.dev();
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    locks.lines().find_map(|line| flock_owner(line, &id))
}

/// The owner in a `/proc/locks` line like `3: FLOCK  ADVISORY  WRITE 4711 00:2e:1234 0 EOF`
/// when it is a granted exclusive flock on `id` (`major:minor:inode`). Waiters (`->`) and
/// other lock kinds do not count. A pid of 0 is a process outside our pid namespace.
fn flock_owner(line: &str, id: &str) -> Option<Option<u32>> {
    let mut fields = line.split_whitespace().skip(1);
    let (kind, _, access, pid, file) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if kind != "FLOCK" || access != "WRITE" || file != id {
        return None;
    }
    Some(pid.parse().ok().filter(|pid| *pid != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_is_refused_naming_this_process_and_a_drop_frees_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory, as on bpffs: the lock must work without a regular file.
        assert_eq!(holder(dir.path()), None);
        let first =
            OwnerLock::try_acquire(File::open(dir.path()).expect("open dir")).expect("first lock");
        assert!(first.guards(dir.path()).expect("stat"));
        assert_eq!(holder(dir.path()), Some(Some(std::process::id())));
        match OwnerLock::try_acquire(File::open(dir.path()).expect("open dir")) {
            Err(LockError::Held { pid }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("second lock: {other:?}"),
        }
        drop(first);
        assert_eq!(holder(dir.path()), None);
        let _again =
            OwnerLock::try_acquire(File::open(dir.path()).expect("open dir")).expect("free again");
    }

    #[test]
    fn a_recreated_directory_is_not_guarded_by_the_old_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        fs::create_dir(&state).expect("mkdir");
        let lock = OwnerLock::try_acquire(File::open(&state).expect("open")).expect("lock");
        fs::remove_dir(&state).expect("rmdir");
        fs::create_dir(&state).expect("mkdir again");
        assert!(!lock.guards(&state).expect("stat"));
        assert_eq!(holder(&state), None, "the new directory is not locked");
    }

    #[test]
    fn proc_locks_lines() {
        let id = "00:2e:1234";
        let line = |text: &str| flock_owner(text, id);
        assert_eq!(
            line("3: FLOCK  ADVISORY  WRITE 4711 00:2e:1234 0 EOF"),
            Some(Some(4711))
        );
        assert_eq!(
            line("3: FLOCK  ADVISORY  WRITE 0 00:2e:1234 0 EOF"),
            Some(None)
        );
        assert_eq!(
            line("3: FLOCK  ADVISORY  WRITE 4711 00:2e:12345 0 EOF"),
            None
        );
        assert_eq!(line("3: FLOCK  ADVISORY  READ 4711 00:2e:1234 0 EOF"), None);
        assert_eq!(
            line("3: POSIX  ADVISORY  WRITE 4711 00:2e:1234 0 EOF"),
            None
        );
        assert_eq!(
            line("3: -> FLOCK  ADVISORY  WRITE 4712 00:2e:1234 0 EOF"),
            None
        );
    }
}
