//! TLS with rustls (the `ring` provider): the `[tls]` settings, the certificates they
//! load, and the server and client configurations built from them.
//!
//! The catalog decides where TLS is spoken (an `https://` listener URL terminates it, an
//! `https://` remote target is reached over it); this module only says with what.

mod client;
mod material;
mod server;
mod settings;
mod table;
mod watch;

use std::path::PathBuf;

pub use client::{Trust, client_config};
pub use material::{Identity, KeyWarning, load_identity};
pub use server::{CertStore, server_config};
pub use settings::{CertificateFiles, Profile, TlsSettings};
pub use table::{Refresh, Served, TlsHop, TlsTable};
pub use watch::{WATCH_INTERVAL, watch_certificates};

/// What went wrong loading TLS material; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "cannot read {what} {}: {source}; check the path (relative to the config file) and \
         that the router's user may read it",
        path.display()
    )]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`); give the certificate \
         chain, leaf first",
        path.display()
    )]
    NoCertificate { path: PathBuf },
    #[error("{} is not valid PEM: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error(
        "{} holds no private key (PKCS#8, PKCS#1 or SEC1 PEM); give the key of the \
         certificate",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("the key in {} cannot sign: {message}", path.display())]
    UnusableKey { path: PathBuf, message: String },
    #[error(
        "the key in {} does not match the certificate in {}: was one of them replaced without \
         the other?",
        key.display(),
        certificate.display()
    )]
    KeyMismatch { certificate: PathBuf, key: PathBuf },
    #[error("the certificate in {} cannot be parsed: {message}", path.display())]
    Certificate { path: PathBuf, message: String },
    #[error(
        "the certificate in {} expired on {not_after}; renew it (clients refuse it)",
        path.display()
    )]
    Expired { path: PathBuf, not_after: String },
    #[error(
        "the certificate in {} is not valid before {not_before}; check the clock, or wait",
        path.display()
    )]
    NotYetValid { path: PathBuf, not_before: String },
    #[error(
        "{} holds no CA certificate to trust; give PEM certificates, or leave `ca_file` out \
         to trust the system store",
        path.display()
    )]
    NoTrust { path: PathBuf },
    #[error("{} has a certificate rustls refuses as a trust anchor: {message}", path.display())]
    BadAnchor { path: PathBuf, message: String },
    #[error(
        "the system trust store has no usable certificate ({message}); install \
         ca-certificates or set `ca_file`"
    )]
    NoSystemTrust { message: String },
    #[error(
        "`{host}` cannot be checked against a certificate (neither a DNS name nor an IP \
         address); fix the host in the catalog URL"
    )]
    ServerName { host: String },
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider of every configuration: one choice, made here.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::testing::Pki;
    use super::*;

    /// A handshake over an in-memory pipe; the leaf the client got, or the client's error.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> Result<CertificateDer<'static>, String> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let serve = tokio::spawn(async move {
            if let Ok(mut tls) = acceptor.accept(b).await {
                let _ = tls.write_all(b"x").await;
                let _ = tls.shutdown().await;
            }
        });
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
        let result = async {
            let mut tls = connector
                .connect(name, a)
                .await
                .map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            leaf.cloned().ok_or_else(|| "no certificate".to_owned())
        }
        .await;
        drop(serve);
        result
    }

    fn identity(files: &CertificateFiles) -> Identity {
        load_identity(files, SystemTime::now()).unwrap().0
    }

    fn der(files: &CertificateFiles) -> CertificateDer<'static> {
        identity(files).key.cert[0].clone()
    }

    fn trusting(pki: &Pki, profile: Profile) -> Arc<rustls::ClientConfig> {
        let trust = Trust::load(Some(&pki.ca.cert_path)).unwrap();
        client_config(profile, &trust).unwrap()
    }

    use std::sync::Arc;

    #[tokio::test]
    async fn sni_picks_the_certificate_for_the_name_and_reload_swaps_it() {
        let pki = Pki::new("unit");
        let main = pki.leaf("main", &["api.example"], 30);
        let other = pki.leaf("other", &["image.example"], 30);
        let store = CertStore::new(identity(&main), vec![identity(&other)]);
        let server = server_config(Profile::Modern, store.clone()).unwrap();
        let client = trusting(&pki, Profile::Modern);
        let cases = [
            ("the default's name", "api.example", der(&main)),
            ("an SNI certificate's name", "image.example", der(&other)),
        ];
        for (case, name, wanted) in cases {
            let got = handshake(server.clone(), client.clone(), name).await;
            assert_eq!(got.as_ref(), Ok(&wanted), "{case}");
        }
        // A client asking for a name nothing serves gets the default, and refuses it.
        let err = handshake(server.clone(), client.clone(), "nobody.example")
            .await
            .unwrap_err();
        assert!(err.contains("not valid for name"), "{err}");

        let renewed = pki.leaf("renewed", &["api.example"], 90);
        store.replace(identity(&renewed), vec![]);
        // A new client: one that resumes its session keeps the certificate it saw.
        let got = handshake(server, trusting(&pki, Profile::Modern), "api.example").await;
        assert_eq!(
            got,
            Ok(der(&renewed)),
            "the next handshake sees the new one"
        );
    }

    #[tokio::test]
    async fn modern_refuses_tls12_and_intermediate_accepts_it() {
        let pki = Pki::new("unit");
        let leaf = pki.leaf("api", &["api.example"], 30);
        let tls12_only = {
            let trust = Trust::load(Some(&pki.ca.cert_path)).unwrap();
            let config = rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .with_root_certificates(trust.roots.clone())
                .with_no_client_auth();
            Arc::new(config)
        };
        let cases = [(Profile::Modern, false), (Profile::Intermediate, true)];
        for (profile, accepted) in cases {
            let store = CertStore::new(identity(&leaf), vec![]);
            let server = server_config(profile, store).unwrap();
            let got = handshake(server, tls12_only.clone(), "api.example").await;
            assert_eq!(got.is_ok(), accepted, "{profile:?}: {got:?}");
        }
    }

    #[tokio::test]
    async fn hops_verify_the_name_and_the_issuer() {
        let pki = Pki::new("unit");
        let stranger = Pki::new("stranger");
        let cases = [
            (
                "right name, known CA",
                pki.leaf("a", &["two.example"], 30),
                "two.example",
                None,
            ),
            (
                "another name",
                pki.leaf("b", &["one.example"], 30),
                "two.example",
                Some("not valid for name"),
            ),
            (
                "unknown CA",
                stranger.leaf("c", &["two.example"], 30),
                "two.example",
                Some("UnknownIssuer"),
            ),
            (
                "an IP address",
                pki.leaf("d", &["10.0.0.2"], 30),
                "10.0.0.2",
                None,
            ),
        ];
        for (case, leaf, name, error) in cases {
            let server =
                server_config(Profile::Modern, CertStore::new(identity(&leaf), vec![])).unwrap();
            let got = handshake(server, trusting(&pki, Profile::Modern), name).await;
            match error {
                None => assert!(got.is_ok(), "{case}: {got:?}"),
                Some(wanted) => {
                    let err = got.expect_err(case);
                    assert!(err.contains(wanted), "{case}: {err}");
                }
            }
        }
    }

    #[test]
    fn trust_files_without_certificates_are_refused() {
        let pki = Pki::new("unit");
        let empty = pki.write("empty.pem", "");
        let err = Trust::load(Some(&empty)).unwrap_err().to_string();
        assert!(err.contains("no CA certificate"), "{err}");
        let missing = pki.dir.path().join("missing.pem");
        let err = Trust::load(Some(&missing)).unwrap_err().to_string();
        assert!(err.contains("cannot read CA file"), "{err}");
    }
}
