//! The unit tests' certificates: test-support's CA in a temporary directory, its files as
//! [`CertificateFiles`].

use std::path::PathBuf;

use test_support::pki::Ca;

use super::CertificateFiles;

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
}

impl Pki {
    /// A CA named `name` (CAs of different names are strangers to each other).
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new(dir.path(), name);
        Pki { dir, ca }
    }

    /// A leaf for `names`, valid `days` from now (negative: expired).
    pub fn leaf(&self, stem: &str, names: &[&str], days: i64) -> CertificateFiles {
        let leaf = self.ca.leaf(stem, names, days);
        CertificateFiles {
            certificate: leaf.certificate,
            key: leaf.key,
        }
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    }
}
