//! `[vrrp]` of the configuration: which virtual router this node speaks for, and how.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::vip::VipSettings;

/// keepalived compares only this many bytes of `auth_pass` (RFC 2338's 8-byte field).
pub const AUTH_LEN: usize = 8;

/// VRRP version on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "i64")]
pub enum Version {
    /// RFC 3768: keepalived's default, and what Kolla runs.
    V2,
    /// RFC 5798/9568.
    V3,
}

impl Version {
    /// The number in the advert's first nibble.
    pub fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

impl TryFrom<i64> for Version {
    type Error = String;

    fn try_from(n: i64) -> Result<Self, String> {
        match n {
            2 => Ok(Version::V2),
            3 => Ok(Version::V3),
            _ => Err(format!(
                "VRRP version {n} does not exist here: use 2 (RFC 3768, keepalived's default \
                 and Kolla's) or 3 (RFC 5798)"
            )),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// `[vrrp]`: the settings of one VRRP instance (keepalived's `vrrp_instance`). Defaults are
/// keepalived's, so a Kolla node and a scope-router agree unless told otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpSettings {
    /// keepalived's `virtual_router_id` (Kolla: 51).
    #[serde(deserialize_with = "nonzero_byte")]
    pub vrid: u8,
    /// 255 is the address owner, which takes over at once; 0 is reserved for resigning.
    #[serde(default = "default_priority", deserialize_with = "nonzero_byte")]
    pub priority: u8,
    #[serde(
        default = "default_advert_int",
        deserialize_with = "crate::config::duration"
    )]
    pub advert_int: Duration,
    #[serde(default = "default_version")]
    pub version: Version,
    /// v2 `auth_type PASS`; only the first [`AUTH_LEN`] bytes go on the wire.
    #[serde(default)]
    pub auth_pass: Option<String>,
    /// `false` is keepalived's `nopreempt`: a live master keeps the VIP even when this
    /// node has a higher priority.
    #[serde(default = "default_preempt")]
    pub preempt: bool,
    /// Unicast peers; empty sends to the VRRP multicast group.
    #[serde(default)]
    pub peers: Vec<Ipv4Addr>,
    /// The interface adverts go out of; `None` is the VIP's.
    #[serde(default)]
    pub interface: Option<String>,
    /// Consecutive failed health checks before this router gives up: Fault, a priority-0
    /// advert if it was master, no elections (Kolla's track script `fall`).
    #[serde(default = "default_track_fall")]
    pub track_fall: u32,
    /// Consecutive passing health checks before a router in Fault rejoins (Kolla's
    /// `rise`): the hysteresis that keeps a flapping check from flapping the VIP.
    #[serde(default = "default_track_rise")]
    pub track_rise: u32,
}

fn default_priority() -> u8 {
    100
}
fn default_advert_int() -> Duration {
    Duration::from_secs(1)
}
fn default_version() -> Version {
    Version::V2
}
fn default_preempt() -> bool {
    true
}
fn default_track_fall() -> u32 {
    2
}
fn default_track_rise() -> u32 {
    10
}

/// A byte in 1..=255: serde's own u8 error ("expected u8") would not say what to write.
fn nonzero_byte<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let n = i64::deserialize(d)?;
    match u8::try_from(n) {
        Ok(b) if b != 0 => Ok(b),
        _ => Err(serde::de::Error::custom(format!(
            "{n} is out of range: write a number from 1 to 255"
        ))),
    }
}

/// Why `[vrrp]` cannot be used; each message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VrrpSettingsError {
    #[error(
        "[vrrp] version 3 has no authentication: remove auth_pass, or set version = 2 as \
         Kolla's keepalived uses"
    )]
    AuthWithV3,
    #[error(
        "[vrrp] auth_pass is empty: keepalived refuses an empty password; remove auth_pass \
         for no authentication, or write the cluster's password"
    )]
    EmptyAuthPass,
    #[error(
        "[vrrp] advert_int {got:?} cannot be sent in VRRPv2, which carries whole seconds \
         from 1 to 255: write e.g. \"1s\", or set version = 3 for sub-second adverts"
    )]
    IntervalV2 { got: Duration },
    #[error(
        "[vrrp] advert_int {got:?} cannot be sent in VRRPv3, which carries centiseconds \
         from 10ms to 40.95s: write a multiple of 10ms in that range, e.g. \"1s\""
    )]
    IntervalV3 { got: Duration },
    #[error(
        "[vrrp] peers: {peer} is not a unicast address: list the other routers' own \
         addresses, or leave peers empty for multicast to 224.0.0.18"
    )]
    PeerNotUnicast { peer: Ipv4Addr },
    #[error("[vrrp] peers: {peer} is listed twice: list each router once")]
    PeerTwice { peer: Ipv4Addr },
    #[error(
        "[vrrp] interface is empty: name the interface adverts go out of, or remove the key \
         to use [vip] interface"
    )]
    EmptyInterface,
    #[error(
        "[vrrp] track_fall = 0 would give up the VIP before any health check failed: write 1 \
         or more (Kolla's track script uses fall 2)"
    )]
    TrackFallZero,
    #[error(
        "[vrrp] track_rise = 0 would rejoin before any health check passed: write 1 or more \
         (Kolla's track script uses rise 10)"
    )]
    TrackRiseZero,
}

impl VrrpSettingsError {
    /// The config key the error is about, for `ConfigError::Invalid`.
    pub fn key(&self) -> &'static str {
        match self {
            VrrpSettingsError::AuthWithV3 | VrrpSettingsError::EmptyAuthPass => "vrrp.auth_pass",
            VrrpSettingsError::IntervalV2 { .. } | VrrpSettingsError::IntervalV3 { .. } => {
                "vrrp.advert_int"
            }
            VrrpSettingsError::PeerNotUnicast { .. } | VrrpSettingsError::PeerTwice { .. } => {
                "vrrp.peers"
            }
            VrrpSettingsError::EmptyInterface => "vrrp.interface",
            VrrpSettingsError::TrackFallZero => "vrrp.track_fall",
            VrrpSettingsError::TrackRiseZero => "vrrp.track_rise",
        }
    }
}

impl VrrpSettings {
    /// Settings with keepalived's defaults for virtual router `vrid`.
    pub fn new(vrid: u8) -> Self {
        Self {
            vrid,
            priority: default_priority(),
            advert_int: default_advert_int(),
            version: default_version(),
            auth_pass: None,
            preempt: default_preempt(),
            peers: Vec::new(),
            interface: None,
            track_fall: default_track_fall(),
            track_rise: default_track_rise(),
        }
    }

    /// Checks what serde cannot: combinations, and intervals the version can carry.
    pub fn validate(&self) -> Result<(), VrrpSettingsError> {
        match (&self.auth_pass, self.version) {
            (Some(_), Version::V3) => return Err(VrrpSettingsError::AuthWithV3),
            (Some(pass), Version::V2) if pass.is_empty() => {
                return Err(VrrpSettingsError::EmptyAuthPass);
            }
            _ => {}
        }
        let got = self.advert_int;
        match self.version {
            Version::V2 => {
                if got.subsec_nanos() != 0 || !(1..=255).contains(&got.as_secs()) {
                    return Err(VrrpSettingsError::IntervalV2 { got });
                }
            }
            Version::V3 => {
                let whole_centis = got.as_nanos().is_multiple_of(10_000_000);
                if !whole_centis || got < Duration::from_millis(10) || got > MAX_V3_INTERVAL {
                    return Err(VrrpSettingsError::IntervalV3 { got });
                }
            }
        }
        for (i, &peer) in self.peers.iter().enumerate() {
            if peer.is_unspecified()
                || peer.is_multicast()
                || peer.is_broadcast()
                || peer.is_loopback()
            {
                return Err(VrrpSettingsError::PeerNotUnicast { peer });
            }
            if self.peers[..i].contains(&peer) {
                return Err(VrrpSettingsError::PeerTwice { peer });
            }
        }
        if self.interface.as_deref() == Some("") {
            return Err(VrrpSettingsError::EmptyInterface);
        }
        if self.track_fall == 0 {
            return Err(VrrpSettingsError::TrackFallZero);
        }
        if self.track_rise == 0 {
            return Err(VrrpSettingsError::TrackRiseZero);
        }
        Ok(())
    }

    /// The 8 bytes of v2 authentication data, zero-padded as keepalived pads a short
    /// password; `None` without `auth_pass`.
    pub fn auth_data(&self) -> Option<[u8; AUTH_LEN]> {
        self.auth_pass.as_ref().map(|pass| {
            let mut data = [0; AUTH_LEN];
            let used = pass.len().min(AUTH_LEN);
            data[..used].copy_from_slice(&pass.as_bytes()[..used]);
            data
        })
    }

    /// What `check` should tell the operator about settings that load but may surprise.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(pass) = &self.auth_pass
            && pass.len() > AUTH_LEN
        {
            // The password itself never goes to the output: `check` output gets pasted.
            notes.push(format!(
                "[vrrp] auth_pass is {} bytes; only its first {AUTH_LEN} are sent and compared, \
                 as keepalived does, so passwords that differ after byte {AUTH_LEN} match",
                pass.len()
            ));
        }
        if self.priority == 255 {
            notes.push(
                "[vrrp] priority 255 makes this node the address owner: it becomes master at \
                 start without waiting, whatever preempt says"
                    .to_owned(),
            );
        }
        notes
    }

    /// The interface adverts use: `[vrrp] interface`, else the VIP's.
    pub fn interface<'a>(&'a self, vip: &'a VipSettings) -> &'a str {
        self.interface.as_deref().unwrap_or(&vip.interface)
    }

    /// These settings with the interface resolved against `[vip]`: what the speaker
    /// (`vrrp::start`) takes, since it knows the VIP's address but not its settings.
    pub fn resolved(&self, vip: &VipSettings) -> Self {
        Self {
            interface: Some(self.interface(vip).to_owned()),
            ..self.clone()
        }
    }

    /// Where adverts go: the peers, or the VRRP multicast group.
    pub fn destinations(&self) -> Vec<Ipv4Addr> {
        if self.peers.is_empty() {
            vec![super::MULTICAST_GROUP]
        } else {
            self.peers.clone()
        }
    }
}

/// 4095 centiseconds: the most v3's 12-bit interval field holds.
pub const MAX_V3_INTERVAL: Duration = Duration::from_millis(40_950);

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn settings(edit: impl FnOnce(&mut VrrpSettings)) -> VrrpSettings {
        let mut s = VrrpSettings::new(51);
        edit(&mut s);
        s
    }

    #[test]
    fn validate_table() {
        struct Case {
            name: &'static str,
            settings: VrrpSettings,
            want: Result<(), VrrpSettingsError>,
        }
        let ms = Duration::from_millis;
        let cases = [
            Case {
                name: "defaults are keepalived's and valid",
                settings: settings(|_| {}),
                want: Ok(()),
            },
            Case {
                name: "Kolla: v2 with a password",
                settings: settings(|s| s.auth_pass = Some("kollapassword".into())),
                want: Ok(()),
            },
            Case {
                name: "v3 refuses a password",
                settings: settings(|s| {
                    s.version = Version::V3;
                    s.auth_pass = Some("x".into());
                }),
                want: Err(VrrpSettingsError::AuthWithV3),
            },
            Case {
                name: "empty password",
                settings: settings(|s| s.auth_pass = Some(String::new())),
                want: Err(VrrpSettingsError::EmptyAuthPass),
            },
            Case {
                name: "v2 sub-second interval",
                settings: settings(|s| s.advert_int = ms(1500)),
                want: Err(VrrpSettingsError::IntervalV2 { got: ms(1500) }),
            },
            Case {
                name: "v2 interval above 255 s",
                settings: settings(|s| s.advert_int = Duration::from_secs(256)),
                want: Err(VrrpSettingsError::IntervalV2 {
                    got: Duration::from_secs(256),
                }),
            },
            Case {
                name: "v2 interval 255 s",
                settings: settings(|s| s.advert_int = Duration::from_secs(255)),
                want: Ok(()),
            },
            Case {
                name: "v3 10 ms",
                settings: settings(|s| {
                    s.version = Version::V3;
                    s.advert_int = ms(10);
                }),
                want: Ok(()),
            },
            Case {
                name: "v3 40.95 s",
                settings: settings(|s| {
                    s.version = Version::V3;
                    s.advert_int = MAX_V3_INTERVAL;
                }),
                want: Ok(()),
            },
            Case {
                name: "v3 above 40.95 s",
                settings: settings(|s| {
                    s.version = Version::V3;
                    s.advert_int = ms(40_960);
                }),
                want: Err(VrrpSettingsError::IntervalV3 { got: ms(40_960) }),
            },
            Case {
                name: "v3 not whole centiseconds",
                settings: settings(|s| {
                    s.version = Version::V3;
                    s.advert_int = ms(15);
                }),
                want: Err(VrrpSettingsError::IntervalV3 { got: ms(15) }),
            },
            Case {
                name: "v3 below 10 ms",
                settings: settings(|s| {
                    s.version = Version::V3;
                    s.advert_int = ms(5);
                }),
                want: Err(VrrpSettingsError::IntervalV3 { got: ms(5) }),
            },
            Case {
                name: "multicast peer",
                settings: settings(|s| s.peers = vec![Ipv4Addr::new(224, 0, 0, 18)]),
                want: Err(VrrpSettingsError::PeerNotUnicast {
                    peer: Ipv4Addr::new(224, 0, 0, 18),
                }),
            },
            Case {
                name: "unspecified peer",
                settings: settings(|s| s.peers = vec![Ipv4Addr::UNSPECIFIED]),
                want: Err(VrrpSettingsError::PeerNotUnicast {
                    peer: Ipv4Addr::UNSPECIFIED,
                }),
            },
            Case {
                name: "duplicate peer",
                settings: settings(|s| {
                    s.peers = vec![Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 2)];
                }),
                want: Err(VrrpSettingsError::PeerTwice {
                    peer: Ipv4Addr::new(192, 0, 2, 2),
                }),
            },
            Case {
                name: "empty interface",
                settings: settings(|s| s.interface = Some(String::new())),
                want: Err(VrrpSettingsError::EmptyInterface),
            },
            Case {
                name: "Kolla's track script: fall 2, rise 10 by default",
                settings: settings(|s| assert_eq!((s.track_fall, s.track_rise), (2, 10))),
                want: Ok(()),
            },
            Case {
                name: "fall 1, rise 1: the least hysteresis there is",
                settings: settings(|s| (s.track_fall, s.track_rise) = (1, 1)),
                want: Ok(()),
            },
            Case {
                name: "fall 0",
                settings: settings(|s| s.track_fall = 0),
                want: Err(VrrpSettingsError::TrackFallZero),
            },
            Case {
                name: "rise 0",
                settings: settings(|s| s.track_rise = 0),
                want: Err(VrrpSettingsError::TrackRiseZero),
            },
        ];
        for case in cases {
            assert_eq!(case.settings.validate(), case.want, "{}", case.name);
        }
    }

    #[test]
    fn auth_data_uses_the_first_eight_bytes_zero_padded() {
        type Case = (&'static str, Option<&'static str>, Option<[u8; 8]>);
        let cases: [Case; 4] = [
            ("none", None, None),
            (
                "Kolla's long password",
                Some("kollapassword"),
                Some(*b"kollapas"),
            ),
            ("exactly eight", Some("12345678"), Some(*b"12345678")),
            ("short is zero-padded", Some("ab"), Some(*b"ab\0\0\0\0\0\0")),
        ];
        for (name, pass, want) in cases {
            let s = settings(|s| s.auth_pass = pass.map(String::from));
            assert_eq!(s.auth_data(), want, "{name}");
        }
    }

    #[test]
    fn notes_say_the_password_is_cut_without_printing_it() {
        let long = settings(|s| s.auth_pass = Some("kollapassword".into()));
        let notes = long.notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("13 bytes"), "{notes:?}");
        assert!(!notes[0].contains("kolla"), "password leaked: {notes:?}");
        assert!(
            settings(|s| s.auth_pass = Some("short".into()))
                .notes()
                .is_empty()
        );
        assert!(settings(|s| s.priority = 255).notes()[0].contains("owner"));
    }

    #[test]
    fn interface_defaults_to_the_vips() {
        let vip = VipSettings::new(Ipv4Addr::new(192, 0, 2, 100));
        assert_eq!(settings(|_| {}).interface(&vip), vip.interface);
        assert_eq!(
            settings(|s| s.interface = Some("bond0".into())).interface(&vip),
            "bond0"
        );
        assert_eq!(
            settings(|_| {}).resolved(&vip).interface.as_deref(),
            Some(vip.interface.as_str())
        );
        assert_eq!(
            settings(|s| s.interface = Some("bond0".into()))
                .resolved(&vip)
                .interface
                .as_deref(),
            Some("bond0")
        );
    }

    #[test]
    fn destinations_are_peers_or_the_group() {
        assert_eq!(
            settings(|_| {}).destinations(),
            [super::super::MULTICAST_GROUP]
        );
        let peers = vec![Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 3)];
        assert_eq!(settings(|s| s.peers = peers.clone()).destinations(), peers);
    }
}
