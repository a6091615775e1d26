//! Why a hop's TLS handshake failed, in the words an operator acts on: which check the
//! server's certificate failed (name, issuer, dates) or which protocol mismatch ended
//! it, and what to change. rustls's own error stays in the chain, for the log.

use std::io;
use std::time::{Duration, SystemTime};

use rustls::pki_types::UnixTime;
use rustls::{AlertDescription, CertificateError};

use super::TlsHop;

/// A failed handshake with a TLS hop. Its message names no address (the client of a
/// 502 sees it); the log line carrying it names the server.
#[derive(Debug, thiserror::Error)]
#[error("{reason}; {advice}")]
pub struct HandshakeError {
    /// What failed, e.g. "its certificate is not valid for the name region2.example".
    pub reason: String,
    /// What to change.
    pub advice: String,
    #[source]
    source: io::Error,
}

impl HandshakeError {
    /// Explains `error`, the failure of a handshake `hop` made.
    pub fn new(hop: &TlsHop, error: io::Error) -> HandshakeError {
        let name = hop.name.to_str();
        let rustls = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        let not_tls = (
            "it does not speak TLS (its answer is not a TLS record)".to_owned(),
            "is it a cleartext server? check the scheme of the catalog URL (https://) or \
             `backend_tls`"
                .to_owned(),
        );
        let (reason, advice) = match rustls {
            Some(rustls::Error::InvalidCertificate(cert)) => certificate(cert, &name, hop),
            Some(rustls::Error::AlertReceived(
                AlertDescription::ProtocolVersion
                | AlertDescription::HandshakeFailure
                | AlertDescription::InsufficientSecurity,
            ))
            | Some(rustls::Error::PeerIncompatible(_)) => (
                format!(
                    "it accepts none of the TLS versions and ciphers offered (profile {})",
                    hop.profile.as_str()
                ),
                match hop.profile {
                    super::Profile::Modern => {
                        "if it only speaks TLS 1.2, set [tls] profile = \"intermediate\" \
                         (better: enable TLS 1.3 on it)"
                    }
                    super::Profile::Intermediate => {
                        "it needs a TLS version or cipher older than TLS 1.2; upgrade its \
                         TLS settings"
                    }
                }
                .to_owned(),
            ),
            Some(rustls::Error::AlertReceived(alert)) => (
                format!("it ended the handshake with the alert {alert:?}"),
                "check the server's TLS settings and log".to_owned(),
            ),
            Some(rustls::Error::InvalidMessage(_)) => not_tls,
            Some(other) => (
                format!("the TLS handshake failed: {other}"),
                "check the server's TLS settings".to_owned(),
            ),
            None if error.kind() == io::ErrorKind::UnexpectedEof => (
                "it closed the connection during the TLS handshake".to_owned(),
                "does it speak TLS on this port? check the scheme of the catalog URL \
                 (https://) or `backend_tls`"
                    .to_owned(),
            ),
            None => (
                format!("the TLS handshake failed: {error}"),
                "check that the server is reachable and speaks TLS".to_owned(),
            ),
        };
        HandshakeError {
            reason,
            advice,
            source: error,
        }
    }
}

/// A verification failure of the server's certificate, for `hop` verifying `name`.
fn certificate(cert: &CertificateError, name: &str, hop: &TlsHop) -> (String, String) {
    let renew = "the server's certificate must be renewed".to_owned();
    let ca = format!(
        "trust the CA that signs it: `ca_file` in [tls] (or in [ports.N] for a backend_tls \
         server; now {})",
        hop.trust
    );
    match cert {
        CertificateError::NotValidForNameContext { presented, .. } => (
            format!(
                "its certificate is not valid for the name {name} (it is valid for {})",
                if presented.is_empty() {
                    "no name".to_owned()
                } else {
                    presented
                        .iter()
                        .map(|n| bare_name(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            name_advice(),
        ),
        CertificateError::NotValidForName => (
            format!("its certificate is not valid for the name {name}"),
            name_advice(),
        ),
        CertificateError::UnknownIssuer => (
            format!(
                "its certificate is signed by a CA not in {}, the trust of this hop",
                hop.trust
            ),
            ca,
        ),
        CertificateError::BadSignature => (
            format!(
                "its certificate's signature does not verify against {}",
                hop.trust
            ),
            ca,
        ),
        CertificateError::ExpiredContext { not_after, .. } => (
            format!("its certificate expired on {}", date(*not_after)),
            renew,
        ),
        CertificateError::Expired => ("its certificate has expired".to_owned(), renew),
        CertificateError::NotValidYetContext { not_before, .. } => (
            format!("its certificate is not valid before {}", date(*not_before)),
            "check the clocks of this host and of the server's CA".to_owned(),
        ),
        CertificateError::NotValidYet => (
            "its certificate is not valid yet".to_owned(),
            "check the clocks of this host and of the server's CA".to_owned(),
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => (
            format!("its certificate is not one for a TLS server ({cert})"),
            "give the server a certificate with the serverAuth extended key usage".to_owned(),
        ),
        CertificateError::Revoked => ("its certificate was revoked".to_owned(), renew),
        other => (
            format!("its certificate was refused: {other}"),
            "check the server's certificate".to_owned(),
        ),
    }
}

/// `other.example` of webpki's `DnsName("other.example")` (`10.0.0.2` of
/// `IpAddress(10.0.0.2)`); any other form as it is.
fn bare_name(presented: &str) -> &str {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|n| n.strip_suffix(')'))
        })
        .unwrap_or(presented)
}

fn name_advice() -> String {
    "check the host of the catalog URL (for backend_tls, the server's address), or the \
     names in the server's certificate"
        .to_owned()
}

/// A certificate date, as RFC 3339 (UTC).
fn date(at: UnixTime) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(at.as_secs());
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::ServerName;

    use super::*;
    use crate::tls::Profile;

    fn hop(profile: Profile) -> TlsHop {
        let roots = Arc::new(rustls::RootCertStore::empty());
        let trust = crate::tls::Trust {
            roots,
            source: "/etc/ca.pem".to_owned(),
        };
        TlsHop {
            config: crate::tls::client_config(profile, &trust).unwrap(),
            name: ServerName::try_from("region2.example").unwrap(),
            trust: trust.source,
            profile,
        }
    }

    fn explained(profile: Profile, error: rustls::Error) -> String {
        let io = io::Error::new(io::ErrorKind::InvalidData, error);
        HandshakeError::new(&hop(profile), io).to_string()
    }

    #[test]
    fn each_failure_says_what_failed_and_what_to_change() {
        let at = |secs| UnixTime::since_unix_epoch(Duration::from_secs(secs));
        let cert = rustls::Error::InvalidCertificate;
        let cases = [
            (
                cert(CertificateError::ExpiredContext {
                    time: at(1_800_000_000),
                    not_after: at(1_700_000_000),
                }),
                Profile::Modern,
                &[
                    "its certificate expired on 2023-11-14T22:13:20Z",
                    "must be renewed",
                ][..],
            ),
            (
                cert(CertificateError::NotValidForNameContext {
                    expected: ServerName::try_from("region2.example").unwrap(),
                    presented: vec!["DnsName(\"a.example\")".to_owned()],
                }),
                Profile::Modern,
                &["not valid for the name region2.example (it is valid for a.example)"],
            ),
            (
                cert(CertificateError::UnknownIssuer),
                Profile::Modern,
                &["signed by a CA not in /etc/ca.pem", "`ca_file` in [tls]"],
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::ProtocolVersion),
                Profile::Modern,
                &["none of the TLS versions", "profile = \"intermediate\""],
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::ProtocolVersion),
                Profile::Intermediate,
                &["older than TLS 1.2"],
            ),
            (
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                Profile::Modern,
                &["does not speak TLS", "scheme of the catalog URL"],
            ),
        ];
        for (error, profile, needles) in cases {
            let text = explained(profile, error);
            for needle in needles {
                assert!(text.contains(needle), "{needle}: {text}");
            }
        }
    }
}
