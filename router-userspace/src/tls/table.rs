//! The TLS side of one routing table: what its `https://` listeners serve and how its TLS
//! hops connect, each certificate and trust file loaded once per table (a reload builds a
//! new table, so it re-reads them all).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{
    CertStore, CertificateFiles, Identity, KeyWarning, Profile, TlsError, TlsSettings, Trust,
    client_config, load_identity, server_config,
};

/// Certificates served by one or more listeners: the default one and `[tls] sni`.
#[derive(Debug)]
pub struct Served {
    /// The default certificate's files (`[ports.N]`'s or `[tls]`'s).
    pub files: CertificateFiles,
    /// `[tls] sni`'s.
    pub sni: Vec<CertificateFiles>,
    pub store: Arc<CertStore>,
    pub config: Arc<ServerConfig>,
    /// What each file was when last loaded (or last found unusable), to see it change.
    stamps: Mutex<Vec<(PathBuf, Option<Stamp>)>>,
}

/// What identifies a version of a file: replaced in place, renamed over, or re-pointed
/// by a symlink (certbot's `live/`), one of these changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            modified: m.modified().ok(),
            len: m.len(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// What [`Served::reload_if_changed`] did.
#[derive(Debug)]
pub enum Refresh {
    /// No file changed since the last look.
    Unchanged,
    /// The new certificates are served from the next handshake on.
    Reloaded { warnings: Vec<KeyWarning> },
    /// A file changed but the set cannot be served (e.g. the certificate was written and
    /// its key not yet): the previous certificates stay; reported once per change.
    Refused(TlsError),
}

impl Served {
    fn paths(files: &CertificateFiles, sni: &[CertificateFiles]) -> Vec<PathBuf> {
        std::iter::once(files)
            .chain(sni)
            .flat_map(|f| [f.certificate.clone(), f.key.clone()])
            .collect()
    }

    fn stamp_all(paths: Vec<PathBuf>) -> Vec<(PathBuf, Option<Stamp>)> {
        paths
            .into_iter()
            .map(|p| {
                let stamp = Stamp::of(&p);
                (p, stamp)
            })
            .collect()
    }

    /// Reads the files again when one of them changed since they were loaded, and serves
    /// them from the next handshake on; connections already up keep theirs.
    pub fn reload_if_changed(&self) -> Refresh {
        let Ok(mut stamps) = self.stamps.lock() else {
            return Refresh::Unchanged;
        };
        if stamps.iter().all(|(p, s)| Stamp::of(p) == *s) {
            return Refresh::Unchanged;
        }
        // Stamped before reading: a write landing meanwhile shows as a change next time.
        *stamps = Served::stamp_all(Served::paths(&self.files, &self.sni));
        match load_set(&self.files, &self.sni, SystemTime::now()) {
            Ok((default, sni, warnings)) => {
                self.store.replace(default, sni);
                Refresh::Reloaded { warnings }
            }
            Err(e) => Refresh::Refused(e),
        }
    }
}

/// Loads a default certificate and the SNI ones, with the key warnings they raise.
fn load_set(
    files: &CertificateFiles,
    sni: &[CertificateFiles],
    now: SystemTime,
) -> Result<(Identity, Vec<Identity>, Vec<KeyWarning>), TlsError> {
    let mut warnings = Vec::new();
    let mut load = |files: &CertificateFiles| {
        let (identity, warning) = load_identity(files, now)?;
        warnings.extend(warning);
        Ok::<_, TlsError>(identity)
    };
    let default = load(files)?;
    let sni = sni.iter().map(&mut load).collect::<Result<Vec<_>, _>>()?;
    Ok((default, sni, warnings))
}

/// How a TLS hop connects: the configuration (trust, versions) and the name verified
/// and sent as SNI.
#[derive(Debug)]
pub struct TlsHop {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
    /// Where the trust came from (`ca_file` or "the system store"), for `check`.
    pub trust: String,
}

impl TlsHop {
    /// The TLS handshake over `tcp`; a certificate that fails verification is an
    /// `InvalidData` error whose message names the reason (rustls's).
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.name.clone(), tcp)
            .await
    }

    /// The name a hop to `host` (a catalog URL's host, or a server's address) verifies.
    pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(ServerName::IpAddress(ip.into()));
        }
        ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::ServerName {
            host: host.to_owned(),
        })
    }
}

/// Everything TLS one routing table uses.
#[derive(Debug)]
pub struct TlsTable {
    settings: TlsSettings,
    served: Vec<Arc<Served>>,
    /// Client configurations by trust file (`None`: the system store).
    hops: Vec<(Option<PathBuf>, Arc<ClientConfig>, String)>,
    /// Key files others may read, found while loading (each once).
    warnings: Vec<KeyWarning>,
}

impl TlsTable {
    pub fn new(settings: &TlsSettings) -> TlsTable {
        TlsTable {
            settings: settings.clone(),
            served: Vec::new(),
            hops: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The profile every listener and hop uses.
    pub fn profile(&self) -> Profile {
        self.settings.profile
    }

    /// The server configuration of a listener serving `files` by default (and `[tls]
    /// sni` to clients asking for one of their names).
    pub fn server(&mut self, files: &CertificateFiles) -> Result<Arc<ServerConfig>, TlsError> {
        if let Some(s) = self.served.iter().find(|s| s.files == *files) {
            return Ok(s.config.clone());
        }
        let sni = self.settings.sni.clone();
        let stamps = Served::stamp_all(Served::paths(files, &sni));
        let (default, identities, warnings) = load_set(files, &sni, SystemTime::now())?;
        for w in warnings {
            if !self.warnings.iter().any(|k| k.path == w.path) {
                self.warnings.push(w);
            }
        }
        let store = CertStore::new(default, identities);
        let config = server_config(self.settings.profile, store.clone())?;
        self.served.push(Arc::new(Served {
            files: files.clone(),
            sni,
            store,
            config: config.clone(),
            stamps: Mutex::new(stamps),
        }));
        Ok(config)
    }

    /// How to reach `host` over TLS trusting `ca_file` (`[tls] ca_file` when `None`,
    /// else the system store).
    pub fn hop(&mut self, ca_file: Option<&Path>, host: &str) -> Result<Arc<TlsHop>, TlsError> {
        let ca_file = ca_file.or(self.settings.ca_file.as_deref());
        let name = TlsHop::server_name(host)?;
        let (config, trust) = match self.hops.iter().find(|(f, _, _)| f.as_deref() == ca_file) {
            Some((_, config, trust)) => (config.clone(), trust.clone()),
            None => {
                let trust = Trust::load(ca_file)?;
                let config = client_config(self.settings.profile, &trust)?;
                self.hops.push((
                    ca_file.map(Path::to_owned),
                    config.clone(),
                    trust.source.clone(),
                ));
                (config, trust.source)
            }
        };
        Ok(Arc::new(TlsHop {
            config,
            name,
            trust,
        }))
    }

    /// The certificate stores of the table's listeners.
    pub fn served(&self) -> &[Arc<Served>] {
        &self.served
    }

    /// Every certificate the table's listeners serve, each once (a `[tls] sni` one is in
    /// every store), for `status` and metrics.
    pub fn certificates(&self) -> Vec<Identity> {
        let mut out: Vec<Identity> = Vec::new();
        for identity in self.served.iter().flat_map(|s| s.store.identities()) {
            if !out.iter().any(|o| o.files == identity.files) {
                out.push(identity);
            }
        }
        out
    }

    /// Key files readable by other users, for a warning at start and reload.
    pub fn warnings(&self) -> &[KeyWarning] {
        &self.warnings
    }
}
