//! A throw-away certificate authority for TLS tests and the TLS lab: a CA, leaves it
//! signs for given names and lifetimes, written as PEM files (keys 0600) into a directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// A CA and the directory its files go to.
pub struct Ca {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM), what clients trust.
    pub cert_path: PathBuf,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_path", &self.cert_path)
            .finish()
    }
}

/// A leaf's two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    /// A new CA named `name`, its certificate written to `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().expect("generate the CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
        let cert = params.self_signed(&key).expect("self-sign the CA");
        let cert_path = dir.join(format!("{name}-ca.pem"));
        write(&cert_path, &cert.pem(), 0o644);
        Ca {
            dir: dir.to_owned(),
            issuer: Issuer::new(params, key),
            cert_path,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses) valid for `days` from
    /// now (negative: expired that many days ago), written to `<stem>.pem` and `<stem>.key`.
    pub fn leaf(&self, stem: &str, names: &[&str], days: i64) -> Leaf {
        let key = KeyPair::generate().expect("generate a leaf key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        if days >= 0 {
            params.not_before = now - Duration::hours(1);
            params.not_after = now + Duration::days(days);
        } else {
            params.not_before = now + Duration::days(days - 30);
            params.not_after = now + Duration::days(days);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("sign a leaf");
        let leaf = Leaf {
            certificate: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        write(&leaf.certificate, &cert.pem(), 0o644);
        write(&leaf.key, &key.serialize_pem(), 0o600);
        leaf
    }
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
