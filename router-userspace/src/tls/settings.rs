//! `[tls]` of the configuration: the certificates served, the trust for hops, and the
//! protocol profile.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Which TLS versions are offered (Mozilla's profiles, as Kolla names them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// TLS 1.3 only: Kolla's default (`kolla_haproxy_ssl_settings: modern`).
    #[default]
    Modern,
    /// TLS 1.2 and 1.3, for clients that lack 1.3.
    Intermediate,
}

impl Profile {
    /// The protocol versions of this profile, newest first.
    pub fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static MODERN: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        static INTERMEDIATE: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        match self {
            Profile::Modern => &MODERN,
            Profile::Intermediate => &INTERMEDIATE,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Modern => "modern",
            Profile::Intermediate => "intermediate",
        }
    }
}

/// A certificate chain and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// The chain, leaf first (HAProxy's `crt` file may hold the key too: then give the
    /// same file as `key`).
    pub certificate: PathBuf,
    pub key: PathBuf,
}

impl CertificateFiles {
    /// A certificate and its key given as two optional keys (`[tls]`, `[ports.N]`): both
    /// or neither; one alone is an error naming the missing one.
    pub fn pair(
        certificate: Option<&PathBuf>,
        key: Option<&PathBuf>,
    ) -> Result<Option<CertificateFiles>, String> {
        match (certificate, key) {
            (Some(certificate), Some(key)) => Ok(Some(CertificateFiles {
                certificate: certificate.clone(),
                key: key.clone(),
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err("`certificate` is set without `key`: give both".to_owned()),
            (None, Some(_)) => Err("`key` is set without `certificate`: give both".to_owned()),
        }
    }

    /// Both paths resolved against `dir` (the config file's directory).
    pub fn resolved(&self, dir: &Path) -> CertificateFiles {
        CertificateFiles {
            certificate: dir.join(&self.certificate),
            key: dir.join(&self.key),
        }
    }
}

/// `[tls]`: what TLS listeners serve and what TLS hops trust.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate every TLS listener serves unless its port names its own, or a
    /// client asks (SNI) for a name of one in `sni`.
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) trusted on TLS hops: remote regions, TLS backends, their
    /// health checks. The system store when absent.
    pub ca_file: Option<PathBuf>,
    pub profile: Profile,
    /// More certificates, each served to a client that asks for one of its names.
    pub sni: Vec<CertificateFiles>,
}

impl TlsSettings {
    /// The default certificate, when both halves are given.
    pub fn default_files(&self) -> Option<CertificateFiles> {
        CertificateFiles::pair(self.certificate.as_ref(), self.key.as_ref())
            .ok()
            .flatten()
    }

    /// Every path resolved against `dir`; a certificate without its key (or the reverse)
    /// is an error naming the missing key.
    pub fn resolved(&self, dir: &Path) -> Result<TlsSettings, String> {
        CertificateFiles::pair(self.certificate.as_ref(), self.key.as_ref())?;
        Ok(TlsSettings {
            certificate: self.certificate.as_ref().map(|p| dir.join(p)),
            key: self.key.as_ref().map(|p| dir.join(p)),
            ca_file: self.ca_file.as_ref().map(|p| dir.join(p)),
            profile: self.profile,
            sni: self.sni.iter().map(|f| f.resolved(dir)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TlsSettings, String> {
        toml::from_str::<TlsSettings>(text)
            .map_err(|e| e.to_string())
            .and_then(|s| s.resolved(Path::new("/etc/scope-router")))
    }

    #[test]
    fn paths_resolve_against_the_config_directory() {
        let s = parse(
            r#"
            certificate = "tls/api.pem"
            key = "/secure/api.key"
            ca_file = "ca.pem"
            [[sni]]
            certificate = "tls/other.pem"
            key = "tls/other.key"
            "#,
        )
        .unwrap();
        assert_eq!(
            s.default_files(),
            Some(CertificateFiles {
                certificate: "/etc/scope-router/tls/api.pem".into(),
                key: "/secure/api.key".into(),
            })
        );
        assert_eq!(s.ca_file, Some("/etc/scope-router/ca.pem".into()));
        assert_eq!(
            s.sni[0].key,
            PathBuf::from("/etc/scope-router/tls/other.key")
        );
        assert_eq!(s.profile, Profile::Modern, "Kolla's default");
    }

    #[test]
    fn bad_settings_say_what_to_write() {
        let cases = [
            ("half a pair", "certificate = \"a.pem\"", "without `key`"),
            ("the other half", "key = \"a.key\"", "without `certificate`"),
            ("unknown profile", "profile = \"old\"", "modern"),
            ("unknown key", "cert = \"a.pem\"", "unknown field `cert`"),
        ];
        for (name, text, wanted) in cases {
            let err = parse(text).expect_err(name);
            assert!(err.contains(wanted), "{name}: {err}");
        }
    }

    #[test]
    fn profiles_offer_their_versions() {
        assert_eq!(Profile::Modern.versions().len(), 1);
        assert_eq!(
            Profile::Modern.versions()[0].version,
            rustls::ProtocolVersion::TLSv1_3
        );
        assert!(
            Profile::Intermediate
                .versions()
                .iter()
                .any(|v| v.version == rustls::ProtocolVersion::TLSv1_2)
        );
    }
}
