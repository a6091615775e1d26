//! Layout of the pinned state directory and its atomic creation: a first start pins into
//! a staging directory next to the final one and renames it into place only once every
//! program is attached (as tubular does), so a crash never leaves a half-built state
//! directory that a later start or `status` would trust.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

/// Pinned link of the sk_lookup program (netns attachment).
pub(crate) const LINK_SK_LOOKUP: &str = "link_sk_lookup";
/// Pinned link of the XDP program (interface attachment).
pub(crate) const LINK_XDP: &str = "link_xdp";

/// A staging directory that is removed again unless [`Staging::commit`] renamed it.
#[derive(Debug)]
pub(crate) struct Staging {
    path: PathBuf,
    committed: bool,
}

impl Staging {
    /// Creates `<root>/<name>-staging-<pid>-<nanos>` next to the final directory (bpffs
    /// rejects any name containing a dot, so no hidden `.tmp` names here).
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
        Ok(Self {
            path,
            committed: false,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the staging directory to `final_path`; fails if that already exists
    /// (another router won the race), leaving the staging directory to be cleaned up.
    pub(crate) fn commit(mut self, final_path: &Path) -> io::Result<()> {
        // rename(2) replaces an empty directory silently; refuse instead so two routers
        // never share a state directory by accident.
        if final_path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "another process created the state directory first",
            ));
        }
        fs::rename(&self.path, final_path)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            // Unpinning the maps and links frees them once our fds close.
            if let Err(err) = fs::remove_dir_all(&self.path) {
                tracing::warn!(path = %self.path.display(), "could not remove eBPF staging directory: {err}");
            }
        }
    }
}

/// Removes staging directories of starts that died before renaming (SIGKILL mid-start):
/// their pid is gone, so nothing will ever commit them.
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

/// Whether `dir` holds state from an earlier run (at least the counters map).
pub(crate) fn has_state(dir: &Path) -> bool {
    dir.join(router_common::COUNTERS_MAP).exists()
}
