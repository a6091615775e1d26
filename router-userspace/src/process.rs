//! Least privilege (docs/ARCHITECTURE.md §14.5): once the eBPF programs are loaded and
//! attached and the VIP is claimed, and before any thread that serves requests exists,
//! the router becomes `[process] user`, keeping only the capabilities its remaining work
//! needs ([`KEPT`]).

use std::ffi::CString;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use serde::Deserialize;

/// `[process]` of the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessSettings {
    /// The user the router runs as after its privileged setup; `None`: it stays as it
    /// was started (root under the unit, whatever a test or operator chose otherwise).
    pub user: Option<String>,
}

/// The capabilities kept after the drop, and the work that needs each.
pub const KEPT: [(Capability, &str); 3] = [
    (
        Capability::CAP_NET_ADMIN,
        "re-add the VIP over netlink when something removes it; detach XDP and sk_lookup \
         at exit",
    ),
    (
        Capability::CAP_NET_RAW,
        "send gratuitous ARP on a packet socket when the VIP is (re-)added",
    ),
    (
        Capability::CAP_NET_BIND_SERVICE,
        "bind a listener below 1024 that a reload adds (Horizon's passthrough on 80)",
    ),
];

/// Why the router could not become its `[process] user`.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "[process] user \"{0}\" does not exist; create it (`useradd --system --no-create-home \
         {0}`, which `cargo xtask install` does) or remove the key to keep running as root"
    )]
    NoSuchUser(String),
    #[error("[process] user \"{user}\": cannot look it up: {source}")]
    Lookup {
        user: String,
        source: std::io::Error,
    },
    #[error(
        "[process] user \"{0}\" needs the router started as root (it sets up eBPF and the VIP \
         first, then becomes that user); start it as root or remove the key"
    )]
    NotRoot(String),
    #[error("cannot give {} to the router's user: {source}", path.display())]
    Chown {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot become user \"{user}\" ({step}): {source}")]
    Switch {
        user: String,
        step: &'static str,
        source: std::io::Error,
    },
    #[error("cannot keep the capabilities the router needs: {0}")]
    Caps(#[from] caps::errors::CapsError),
}

/// A user's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Looks `user` up in the system's user database.
pub fn lookup(user: &str) -> Result<Ids, PrivilegeError> {
    let name = CString::new(user).map_err(|_| PrivilegeError::NoSuchUser(user.to_owned()))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for getpwnam_r to fill in.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, `buf` outlives it, and the strings it
    // points into are not read after `buf` goes.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(PrivilegeError::Lookup {
            user: user.to_owned(),
            source: std::io::Error::from_raw_os_error(rc),
        });
    }
    if result.is_null() {
        return Err(PrivilegeError::NoSuchUser(user.to_owned()));
    }
    Ok(Ids {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

/// Becomes `user`, keeping [`KEPT`]: the directories in `writable` (state, pins) are given
/// to it first. Call on the main thread before the async runtime starts its workers: the
/// threads created afterwards inherit exactly these credentials, and any thread that
/// already exists loses every capability with the switch (glibc applies `setuid` to all
/// threads; the capabilities are kept only by the calling one).
pub fn drop_to(user: &str, writable: &[&Path]) -> Result<Ids, PrivilegeError> {
    let ids = lookup(user)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(PrivilegeError::NotRoot(user.to_owned()));
    }
    for dir in writable {
        std::os::unix::fs::chown(dir, Some(ids.uid), Some(ids.gid)).map_err(|source| {
            PrivilegeError::Chown {
                path: dir.to_path_buf(),
                source,
            }
        })?;
    }
    let switch = |step: &'static str, rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(PrivilegeError::Switch {
                user: user.to_owned(),
                step,
                source: std::io::Error::last_os_error(),
            })
        }
    };
    // SAFETY: plain integer arguments; the calls change only this process's credentials.
    unsafe {
        // Without it, setuid away from root empties the permitted set.
        switch(
            "prctl(PR_SET_KEEPCAPS)",
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0),
        )?;
        switch("setgroups", libc::setgroups(0, std::ptr::null()))?;
        switch("setgid", libc::setgid(ids.gid))?;
        switch("setuid", libc::setuid(ids.uid))?;
        switch(
            "prctl(PR_SET_KEEPCAPS, 0)",
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0),
        )?;
    }
    let kept: CapsHashSet = KEPT.iter().map(|(c, _)| *c).collect();
    caps::set(None, CapSet::Permitted, &kept)?;
    caps::set(None, CapSet::Effective, &kept)?;
    caps::clear(None, CapSet::Inheritable)?;
    Ok(ids)
}

/// `CapEff` as `/proc/<pid>/status` shows it, for [`KEPT`].
pub fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |m, (c, _)| m | c.bitmask())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_root_and_names_a_missing_user() {
        assert_eq!(lookup("root").ok(), Some(Ids { uid: 0, gid: 0 }));
        let err = lookup("no-such-user-scope-router").unwrap_err().to_string();
        assert!(err.contains("useradd"), "{err}");
    }

    #[test]
    fn the_kept_mask_is_the_three_network_capabilities() {
        // CAP_NET_BIND_SERVICE = 10, CAP_NET_ADMIN = 12, CAP_NET_RAW = 13.
        assert_eq!(kept_mask(), (1 << 10) | (1 << 12) | (1 << 13));
    }
}
