//! The client side: what a TLS hop (a remote region, a TLS backend, a health check of
//! either) trusts, and its rustls configuration. The server name checked, and sent as
//! SNI, is the host of the catalog URL.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use super::{Profile, TlsError};

/// Trust anchors: a `ca_file`, or the system store.
#[derive(Debug, Clone)]
pub struct Trust {
    pub roots: Arc<RootCertStore>,
    /// Where they came from, for `check` and errors: the file, or "the system store".
    pub source: String,
}

impl Trust {
    /// The CA certificates of `ca_file`, or the system's when `None`.
    pub fn load(ca_file: Option<&Path>) -> Result<Trust, TlsError> {
        let mut roots = RootCertStore::empty();
        let source = match ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| TlsError::Read {
                    what: "CA file",
                    path: path.to_owned(),
                    source,
                })?;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| TlsError::Pem {
                        path: path.to_owned(),
                        message: e.to_string(),
                    })?;
                if certs.is_empty() {
                    return Err(TlsError::NoTrust {
                        path: path.to_owned(),
                    });
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| TlsError::BadAnchor {
                        path: path.to_owned(),
                        message: e.to_string(),
                    })?;
                }
                path.display().to_string()
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                // Unparsable entries in the store are skipped, as every TLS client does.
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let message = found
                        .errors
                        .first()
                        .map_or_else(|| "it is empty".to_owned(), ToString::to_string);
                    return Err(TlsError::NoSystemTrust { message });
                }
                "the system store".to_owned()
            }
        };
        Ok(Trust {
            roots: Arc::new(roots),
            source,
        })
    }
}

/// A hop's configuration: `profile`'s versions, HTTP/1.1 by ALPN, certificates verified
/// against `trust` (chain, dates, and the name the connection is made for).
pub fn client_config(profile: Profile, trust: &Trust) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(profile.versions())?
        .with_root_certificates(trust.roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
