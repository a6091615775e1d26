//! The server side: the certificates a TLS listener serves (swapped in place when they are
//! reloaded, so only new handshakes see the new ones) and its rustls configuration.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{Identity, Profile, TlsError};

/// A listener's certificates: its default one and those chosen by SNI.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<Certs>,
}

#[derive(Debug)]
struct Certs {
    default: Identity,
    sni: Vec<Identity>,
}

impl CertStore {
    /// Serves `default` unless the client names (SNI) a name one of `sni` is valid for.
    pub fn new(default: Identity, sni: Vec<Identity>) -> Arc<CertStore> {
        Arc::new(CertStore {
            current: ArcSwap::from_pointee(Certs { default, sni }),
        })
    }

    /// Serves these from the next handshake on; connections already up keep theirs.
    pub fn replace(&self, default: Identity, sni: Vec<Identity>) {
        self.current.store(Arc::new(Certs { default, sni }));
    }

    /// Every certificate served, default first (for `status` and metrics).
    pub fn identities(&self) -> Vec<Identity> {
        let certs = self.current.load();
        std::iter::once(certs.default.clone())
            .chain(certs.sni.iter().cloned())
            .collect()
    }

    fn choose(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let certs = self.current.load();
        server_name
            .and_then(|name| certs.sni.iter().find(|id| id.serves(name)))
            .unwrap_or(&certs.default)
            .key
            .clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()))
    }
}

/// A TLS listener's configuration: `profile`'s versions, HTTP/1.1 by ALPN (what the
/// proxy speaks), certificates from `store`.
pub fn server_config(
    profile: Profile,
    store: Arc<CertStore>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(profile.versions())?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
