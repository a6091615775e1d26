//! The pinned state directory: who owns it, and its atomic creation.
//!
//! The running router holds an exclusive lock on the directory itself for its whole life
//! ([`crate::lock`]); a second router on the same pin path is refused while the first
//! runs, and the kernel drops the lock when the owner exits or dies, so a restart (clean or
//! after a crash) takes the pins over. `scope-router status` only reads the maps and never
//! touches the lock.
//!
//! A first start pins into a staging directory next to the final one, locked from its
//! creation, and renames it into place only once every program is attached (as tubular
//! does): a crash never leaves a half-built state directory that a later start or `status`
//! would trust. The lock is on the directory's inode, so it moves with the rename.

use std::{
    ffi::CString,
    fs::{self, File},
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::lock::{LockError, OwnerLock};

/// Pinned link of the sk_lookup program (netns attachment).
pub(crate) const LINK_SK_LOOKUP: &str = "link_sk_lookup";
/// Pinned link of the XDP program (interface attachment).
pub(crate) const LINK_XDP: &str = "link_xdp";

/// Locks the existing state directory at `path`; `Ok(None)` when there is none yet.
pub(crate) fn lock_existing(path: &Path) -> Result<Option<OwnerLock>, LockError> {
    // Someone may remove and recreate the directory between our open and our lock (a
    // router that just won the first-start race never does, but an operator might):
    // only a lock on the directory the path names now counts.
    for _ in 0..3 {
        let dir = match File::open(path) {
            Ok(dir) => dir,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let lock = OwnerLock::try_acquire(dir)?;
        match lock.guards(path) {
            Ok(true) => return Ok(Some(lock)),
            Ok(false) => continue,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err.into()),
        }
    }
    Err(LockError::Io(io::Error::other(
        "the state directory keeps being replaced while it is locked",
    )))
}

/// A locked staging directory that is removed again unless [`Staging::commit`] renamed it.
#[derive(Debug)]
pub(crate) struct Staging {
    path: PathBuf,
    lock: Option<OwnerLock>,
}

impl Staging {
    /// Creates and locks `<root>/<name>-staging-<pid>-<nanos>` next to the final directory
    /// (bpffs rejects any name containing a dot, so no hidden `.tmp` names here).
    pub(crate) fn create(final_path: &Path) -> io::Result<Self> {
        let root = final_path
            .parent()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pin path has no parent"))?;
        let name = final_path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pin path has no name"))?;
        sweep_abandoned(root, &name.to_string_lossy());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = root.join(format!(
            "{}-staging-{}-{nanos}",
            name.to_string_lossy(),
            std::process::id()
        ));
        fs::create_dir(&path)?;
        let mut staging = Self { path, lock: None };
        // Nobody else knows the new name yet, so this cannot be contended.
        let dir = File::open(&staging.path)?;
        staging.lock = Some(OwnerLock::try_acquire(dir).map_err(|err| match err {
            LockError::Io(err) => err,
            held @ LockError::Held { .. } => io::Error::other(held),
        })?);
        Ok(staging)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the staging directory to `final_path` and hands over its lock. Fails with
    /// `AlreadyExists` if `final_path` exists (another router won the race): renaming
    /// over an empty directory would otherwise succeed silently.
    pub(crate) fn commit(mut self, final_path: &Path) -> io::Result<OwnerLock> {
        rename_noreplace(&self.path, final_path)?;
        self.path = final_path.to_path_buf();
        self.lock
            .take()
            .ok_or_else(|| io::Error::other("staging directory lost its lock"))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.lock.is_some() {
            // Unpinning the maps and links frees them once our fds close.
            if let Err(err) = fs::remove_dir_all(&self.path) {
                tracing::warn!(path = %self.path.display(), "could not remove eBPF staging directory: {err}");
            }
        }
    }
}

/// `renameat2(RENAME_NOREPLACE)`: the existence check and the rename in one step.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let from = CString::new(from.as_os_str().as_bytes())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    let to = CString::new(to.as_os_str().as_bytes())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    // SAFETY: both paths are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes staging directories of starts that died before renaming (SIGKILL mid-start):
/// their creator's pid (in the name) is gone, so nothing will ever commit them. Not the
/// lock: a live start's directory is unlocked for the instant between mkdir and flock.
fn sweep_abandoned(root: &Path, name: &str) {
    let prefix = format!("{name}-staging-");
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let Some(pid) = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            tracing::info!(dir = %entry.path().display(), "removing abandoned eBPF staging directory");
            let _ignored = fs::remove_dir_all(entry.path());
        }
    }
}
