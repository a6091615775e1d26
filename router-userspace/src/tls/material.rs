//! Loading one certificate chain and its key from PEM files, with the checks an operator
//! needs before a client sees them: the key matches, the dates are valid, the key file is
//! not open to every user.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use super::{CertificateFiles, TlsError};

/// A loaded certificate: what rustls serves, and what `status` shows about it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub files: CertificateFiles,
    pub key: Arc<CertifiedKey>,
    /// The leaf's DNS names and IP addresses (subjectAltName), lower case.
    pub names: Vec<String>,
    pub not_after: SystemTime,
}

impl Identity {
    /// Whole days until the leaf expires (negative once it has).
    pub fn days_left(&self, now: SystemTime) -> i64 {
        let secs = match self.not_after.duration_since(now) {
            Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
        };
        secs.div_euclid(86_400)
    }

    /// Whether the leaf is valid for `name` (a client's SNI): exactly, or through a
    /// `*.` wildcard standing for one leftmost label.
    pub fn serves(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.names
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => name
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == name,
            })
    }
}

/// The key file may be read by every user of the machine: worth a warning, not a refusal
/// (some deployments rely on group or ACL permissions this check cannot see).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyWarning {
    pub path: std::path::PathBuf,
    pub mode: u32,
}

impl std::fmt::Display for KeyWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "private key {} is open to every user (mode {:04o}); `chmod o-rwx` it",
            self.path.display(),
            self.mode & 0o7777
        )
    }
}

/// Loads `files` and checks them at `now`: refuses an unreadable or mismatched key and an
/// expired (or not yet valid) leaf; warns about a key file every user may read.
pub fn load_identity(
    files: &CertificateFiles,
    now: SystemTime,
) -> Result<(Identity, Option<KeyWarning>), TlsError> {
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read("certificate", &files.certificate)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: files.certificate.clone(),
            message: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: files.certificate.clone(),
        });
    };
    let (names, not_before, not_after) =
        leaf_facts(leaf).map_err(|message| TlsError::Certificate {
            path: files.certificate.clone(),
            message,
        })?;
    if not_after < now {
        return Err(TlsError::Expired {
            path: files.certificate.clone(),
            not_after: humantime::format_rfc3339_seconds(not_after).to_string(),
        });
    }
    if not_before > now {
        return Err(TlsError::NotYetValid {
            path: files.certificate.clone(),
            not_before: humantime::format_rfc3339_seconds(not_before).to_string(),
        });
    }

    let key_pem = read("private key", &files.key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: files.key.clone(),
        },
        other => TlsError::Pem {
            path: files.key.clone(),
            message: other.to_string(),
        },
    })?;
    let signer = super::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::UnusableKey {
            path: files.key.clone(),
            message: e.to_string(),
        })?;
    let key = CertifiedKey::new(chain, signer);
    match key.keys_match() {
        // `Unknown`: the key cannot tell its public half; rustls serves it anyway.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(TlsError::KeyMismatch {
                certificate: files.certificate.clone(),
                key: files.key.clone(),
            });
        }
    }
    let warning = key_warning(&files.key);
    Ok((
        Identity {
            files: files.clone(),
            key: Arc::new(key),
            names,
            not_after,
        },
        warning,
    ))
}

/// The leaf's names and validity period.
fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, SystemTime, SystemTime), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let time = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        match u64::try_from(secs) {
            Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
            Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
        }
    };
    let validity = cert.validity();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).map(std::net::IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .map(std::net::IpAddr::from)
                            .ok(),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok((names, time(validity.not_before), time(validity.not_after)))
}

fn key_warning(path: &Path) -> Option<KeyWarning> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o007 != 0).then(|| KeyWarning {
        path: path.to_owned(),
        mode,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::testing::Pki;
    use super::*;

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn a_good_pair_loads_with_its_names_and_days_left() {
        let pki = Pki::new("unit");
        let files = pki.leaf(
            "api",
            &["api.example.com", "*.svc.example.com", "10.0.0.1"],
            30,
        );
        let (id, warning) = load_identity(&files, now()).unwrap();
        assert_eq!(warning, None, "written 0600");
        assert_eq!(
            id.names,
            ["api.example.com", "*.svc.example.com", "10.0.0.1"]
        );
        assert!(
            (29..=30).contains(&id.days_left(now())),
            "{}",
            id.days_left(now())
        );
        let cases = [
            ("exact", "api.example.com", true),
            ("case and trailing dot", "API.Example.com.", true),
            ("wildcard, one label", "image.svc.example.com", true),
            ("wildcard, two labels", "a.image.svc.example.com", false),
            ("wildcard parent itself", "svc.example.com", false),
            ("another name", "evil.example.com", false),
        ];
        for (case, name, served) in cases {
            assert_eq!(id.serves(name), served, "{case}: {name}");
        }
    }

    #[test]
    fn each_bad_input_is_refused_naming_what_to_fix() {
        let pki = Pki::new("unit");
        let good = pki.leaf("good", &["a.example"], 30);
        let other = pki.leaf("other", &["b.example"], 30);
        let expired = pki.leaf("expired", &["a.example"], -2);
        let empty = pki.write("empty.pem", "");
        let missing = pki.dir.path().join("missing.key");
        let cases: [(&str, CertificateFiles, &str); 5] = [
            (
                "unreadable key",
                CertificateFiles {
                    key: missing.clone(),
                    ..good.clone()
                },
                "cannot read private key",
            ),
            (
                "key of another certificate",
                CertificateFiles {
                    key: other.key.clone(),
                    ..good.clone()
                },
                "does not match the certificate",
            ),
            ("expired", expired, "expired on"),
            (
                "no certificate in the file",
                CertificateFiles {
                    certificate: empty.clone(),
                    ..good.clone()
                },
                "holds no PEM certificate",
            ),
            (
                "no key in the file",
                CertificateFiles {
                    key: empty,
                    ..good.clone()
                },
                "holds no private key",
            ),
        ];
        for (case, files, wanted) in cases {
            let err = load_identity(&files, now()).expect_err(case).to_string();
            assert!(err.contains(wanted), "{case}: {err}");
        }
    }

    #[test]
    fn a_key_every_user_may_read_loads_with_a_warning() {
        let pki = Pki::new("unit");
        let files = pki.leaf("api", &["api.example.com"], 30);
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_, warning) = load_identity(&files, now()).unwrap();
        let warning = warning.expect("a warning").to_string();
        assert!(
            warning.contains("mode 0644") && warning.contains("chmod"),
            "{warning}"
        );
    }

    #[test]
    fn days_left_counts_whole_days_both_ways() {
        let pki = Pki::new("unit");
        let (id, _) = load_identity(&pki.leaf("api", &["a"], 10), now()).unwrap();
        let later = now() + Duration::from_secs(12 * 86_400);
        assert!(
            (-3..=-2).contains(&id.days_left(later)),
            "{}",
            id.days_left(later)
        );
    }
}
