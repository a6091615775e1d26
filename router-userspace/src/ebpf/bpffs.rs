//! bpffs and privilege checks done before touching the kernel, so failures name the
//! missing piece instead of surfacing as a bare EPERM from deep inside the loader.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use super::Unavailable;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Whether `path` is on a bpf filesystem.
pub(crate) fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: c_path is a valid NUL-terminated string and stat points to writable memory.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs succeeded, so the struct is initialised.
    let stat = unsafe { stat.assume_init() };
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between libcs"
    )]
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
}

/// The directory the state directory lives in; bpffs must be mounted there.
pub(crate) fn pin_root(pin_path: &Path) -> Result<PathBuf, Unavailable> {
    match pin_path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() && pin_path.file_name().is_some() => {
            Ok(parent.to_path_buf())
        }
        _ => Err(Unavailable::Bpffs {
            path: pin_path.to_path_buf(),
            reason: "ebpf.pin_path must be a directory below a bpffs mount, e.g. /sys/fs/bpf/scope-router".into(),
        }),
    }
}

/// Makes sure the pin root is a bpffs, mounting one on it when it is an empty, unmounted
/// directory (the usual state of `/sys/fs/bpf` on hosts without systemd's mount). Anything
/// else is refused: mounting over a populated directory would hide its contents.
pub(crate) fn ensure_mounted(root: &Path) -> Result<(), Unavailable> {
    // Two starts racing (parallel tests) must not stack two mounts on the same directory.
    static MOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = MOUNTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let fail = |reason: String| Unavailable::Bpffs {
        path: root.to_path_buf(),
        reason,
    };
    match is_bpffs(root) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(err) => return Err(fail(format!("cannot inspect it: {err}"))),
    }
    let mut entries = fs::read_dir(root).map_err(|err| fail(format!("cannot list it: {err}")))?;
    if entries.next().is_some() {
        return Err(fail(
            "it is not a bpffs and not an empty directory to mount one on; mount bpffs there (`mount -t bpf bpffs DIR`) or choose another ebpf.pin_path".into(),
        ));
    }
    let target = CString::new(root.as_os_str().as_bytes())
        .map_err(|err| fail(format!("invalid path: {err}")))?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"bpffs".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EPERM) {
            return Err(Unavailable::MissingCapability {
                capability: "CAP_SYS_ADMIN",
                needed_for: "mounting bpffs",
            });
        }
        return Err(fail(format!("mounting bpffs failed: {err}")));
    }
    tracing::info!(path = %root.display(), "mounted bpffs");
    Ok(())
}

/// Checks the effective capabilities the loader needs, naming the first one missing.
pub(crate) fn check_capabilities() -> Result<(), Unavailable> {
    let Some(effective) = effective_capabilities() else {
        // No /proc: let the kernel decide and report its own error later.
        return Ok(());
    };
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        return Err(Unavailable::MissingCapability {
            capability: "CAP_BPF",
            needed_for: "loading eBPF programs and maps",
        });
    }
    if !has(CAP_NET_ADMIN) {
        return Err(Unavailable::MissingCapability {
            capability: "CAP_NET_ADMIN",
            needed_for: "attaching XDP and sk_lookup",
        });
    }
    Ok(())
}

fn effective_capabilities() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_root_is_the_parent() {
        let root = pin_root(Path::new("/sys/fs/bpf/scope-router")).unwrap();
        assert_eq!(root, Path::new("/sys/fs/bpf"));
        assert!(pin_root(Path::new("/")).is_err());
        assert!(pin_root(Path::new("scope-router")).is_err());
    }

    #[test]
    fn refuses_to_mount_over_a_populated_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("keep-me"), b"x").unwrap();
        let err = ensure_mounted(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not an empty directory"), "{err}");
        assert!(dir.path().join("keep-me").exists());
    }

    #[test]
    fn a_tmpfs_directory_is_not_bpffs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_bpffs(dir.path()).unwrap());
    }
}
