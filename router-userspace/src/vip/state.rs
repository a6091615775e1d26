//! The VIP's small JSON state file and the read-only status built from it and netlink,
//! for `scope-router status` running as a second process.

use std::fmt;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::lock::OwnerLock;
use super::netlink::Netlink;
use super::{VipError, VipSettings};

/// What the running router records about its VIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VipState {
    pub(crate) address: Ipv4Addr,
    pub(crate) interface: String,
    pub(crate) managed: bool,
    /// The address was already there at start and was taken over as is.
    pub(crate) adopted: bool,
    /// `false` once the router has shut down cleanly.
    pub(crate) running: bool,
    pub(crate) pid: u32,
    /// RFC 3339, UTC; `None` before the first successful announcement.
    pub(crate) last_announced: Option<String>,
    /// Bursts of gratuitous ARP sent since start.
    pub(crate) announcements: u64,
    /// Times the address was put back after something removed it.
    pub(crate) readded: u64,
}

impl VipState {
    pub(crate) fn managed(settings: &VipSettings, adopted: bool) -> Self {
        Self {
            address: settings.address,
            interface: settings.interface.clone(),
            managed: true,
            adopted,
            running: true,
            pid: std::process::id(),
            last_announced: None,
            announcements: 0,
            readded: 0,
        }
    }

    pub(crate) fn unmanaged(settings: &VipSettings) -> Self {
        Self {
            managed: false,
            ..Self::managed(settings, false)
        }
    }
}

/// Formats a time for the state file.
pub(crate) fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// `<state_dir>/vip-<address>.json`.
pub fn state_file_path(state_dir: &Path, address: Ipv4Addr) -> PathBuf {
    state_dir.join(format!("vip-{address}.json"))
}

/// Writes the state file atomically (temp file + rename) so a concurrent
/// `scope-router status` never reads half a file.
#[derive(Debug, Clone)]
pub(crate) struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub(crate) fn new(settings: &VipSettings) -> Self {
        Self {
            path: state_file_path(&settings.state_dir, settings.address),
        }
    }

    pub(crate) fn write(&self, state: &VipState) -> Result<(), VipError> {
        let fail = |source: io::Error| VipError::StateWrite {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(fail)?;
        }
        let text = serde_json::to_vec_pretty(state).map_err(|e| fail(io::Error::other(e)))?;
        let tmp = self
            .path
            .with_extension(format!("json.{}.tmp", std::process::id()));
        fs::write(&tmp, text).map_err(fail)?;
        fs::rename(&tmp, &self.path).map_err(fail)
    }
}

fn read_state(path: &Path) -> Result<Option<VipState>, VipError> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(VipError::StateRead {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| VipError::StateFormat {
            path: path.to_owned(),
            source,
        })
}

/// The VIP as `scope-router status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipStatus {
    pub address: Ipv4Addr,
    pub interface: String,
    /// The interface exists in this network namespace.
    pub interface_present: bool,
    /// The address is on the interface right now (asked from netlink, not the file).
    pub present: bool,
    /// From the state file; `None` when no router has written one.
    pub managed: Option<bool>,
    /// The router found the address already there and took it over.
    pub adopted: Option<bool>,
    pub running: Option<bool>,
    pub last_announced: Option<SystemTime>,
    pub announcements: u64,
    pub readded: u64,
    pub state_file: PathBuf,
    /// The router holding the VIP's ownership lock right now: `Some(pid)`
    /// (`Some(None)` in the instant before it writes its pid), `None` if nobody.
    pub lock_holder: Option<Option<u32>>,
}

/// Reads the VIP's status without changing anything. Call it from the router's network
/// namespace: presence is asked from the kernel of the calling thread.
pub async fn status(
    address: Ipv4Addr,
    interface: &str,
    state_dir: &Path,
) -> Result<VipStatus, VipError> {
    let mut settings = VipSettings::new(address);
    settings.interface = interface.to_owned();
    let (nl, _) = Netlink::connect(&settings, false)?;
    let interface_present = match nl.link(interface).await {
        Ok(_) => true,
        Err(VipError::InterfaceMissing { .. }) => false,
        Err(e) => return Err(e),
    };
    let present = interface_present && nl.is_present(interface).await?;
    settings.state_dir = state_dir.to_owned();
    let lock_holder = OwnerLock::holder(&settings);
    let state_file = state_file_path(state_dir, address);
    let state = read_state(&state_file)?;
    let last_announced = state
        .as_ref()
        .and_then(|s| s.last_announced.as_deref())
        .and_then(|text| humantime::parse_rfc3339(text).ok());
    Ok(VipStatus {
        address,
        interface: interface.to_owned(),
        interface_present,
        present,
        managed: state.as_ref().map(|s| s.managed),
        adopted: state.as_ref().map(|s| s.adopted),
        running: state.as_ref().map(|s| s.running),
        last_announced,
        announcements: state.as_ref().map_or(0, |s| s.announcements),
        readded: state.as_ref().map_or(0, |s| s.readded),
        state_file,
        lock_holder,
    })
}

impl fmt::Display for VipStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VIP {} on {}: ", self.address, self.interface)?;
        if !self.interface_present {
            write!(f, "interface missing")?;
        } else if self.present {
            write!(f, "present")?;
        } else {
            write!(f, "absent")?;
        }
        match self.managed {
            Some(true) if self.adopted == Some(true) => write!(f, ", managed (adopted at start)")?,
            Some(true) => write!(f, ", managed")?,
            Some(false) => write!(f, ", not managed (manage = false)")?,
            None => write!(f, ", no state file at {}", self.state_file.display())?,
        }
        match self.lock_holder {
            Some(Some(pid)) => write!(f, ", owned by pid {pid}")?,
            Some(None) => write!(f, ", owned by a router starting up")?,
            None if self.managed == Some(true) => write!(f, ", no router owns it")?,
            None => {}
        }
        if self.running == Some(false) {
            write!(f, ", router stopped")?;
        }
        match self.last_announced {
            Some(at) => write!(
                f,
                ", last announced {} ({} bursts",
                humantime::format_rfc3339_seconds(at),
                self.announcements
            )?,
            None => write!(f, ", never announced (0 bursts")?,
        }
        write!(f, ", re-added {} times)", self.readded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = VipSettings::new(Ipv4Addr::new(192, 0, 2, 10));
        settings.state_dir = dir.path().join("nested");
        let file = StateFile::new(&settings);
        let mut state = VipState::managed(&settings, true);
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_123);
        state.last_announced = Some(rfc3339(at));
        state.announcements = 2;
        file.write(&state).expect("write");

        let path = state_file_path(&settings.state_dir, settings.address);
        assert!(path.ends_with("nested/vip-192.0.2.10.json"));
        let back = read_state(&path).expect("read").expect("present");
        assert_eq!(back, state);
        let parsed = humantime::parse_rfc3339(back.last_announced.as_deref().expect("set"));
        assert_eq!(parsed.expect("parses"), at);
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(&settings.state_dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_missing_file_is_no_state_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vip-192.0.2.10.json");
        assert!(read_state(&path).expect("missing is fine").is_none());
        fs::write(&path, b"{not json").expect("write");
        let err = read_state(&path).expect_err("garbage");
        assert!(matches!(err, VipError::StateFormat { .. }));
        assert!(err.to_string().contains("delete it"));
    }

    #[test]
    fn status_line_tells_presence_and_last_announcement() {
        let status = VipStatus {
            address: Ipv4Addr::new(192, 0, 2, 10),
            interface: "eth2".into(),
            interface_present: true,
            present: true,
            managed: Some(true),
            adopted: Some(false),
            running: Some(true),
            last_announced: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000)),
            announcements: 3,
            readded: 1,
            state_file: PathBuf::from("/run/scope-router/vip-192.0.2.10.json"),
            lock_holder: Some(Some(4242)),
        };
        assert_eq!(
            status.to_string(),
            "VIP 192.0.2.10 on eth2: present, managed, owned by pid 4242, last announced \
             2025-11-24T16:00:00Z (3 bursts, re-added 1 times)"
        );
        let orphan = VipStatus {
            lock_holder: None,
            running: Some(false),
            ..status
        };
        assert!(
            orphan
                .to_string()
                .contains("managed, no router owns it, router stopped"),
            "{orphan}"
        );
    }
}
