//! TLS on `https://` listeners with real clients (curl, Python `requests`): termination,
//! the profiles, trust, `X-Forwarded-Proto` (docs/ARCHITECTURE.md §3.11).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

use integration_tests::client::Echo;
use integration_tests::lab::{Lab, LabOptions};

/// curl's answer: its exit code, the status and the body (empty when it failed).
struct Curl {
    exit: i32,
    status: u16,
    body: String,
    stderr: String,
}

impl Curl {
    fn echo(&self) -> Echo {
        Echo(serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!("not the echo's JSON ({e}): {:?} {}", self.body, self.stderr)
        }))
    }
}

/// `curl https://<addr><path>` trusting `ca`, with `args` before the URL.
fn curl(ca: &Path, url: &str, args: &[&str]) -> Curl {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl (cargo xtask setup installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    Curl {
        exit: out.status.code().unwrap_or(-1),
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn tls_lab(tls_toml: &str) -> Lab {
    Lab::start(LabOptions {
        tls: true,
        tls_toml: tls_toml.to_owned(),
        ..LabOptions::default()
    })
    .await
    .unwrap()
}

fn ca(lab: &Lab) -> &Path {
    &lab.ca.as_ref().unwrap().cert_path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_the_local_service_over_tls_and_the_backend_sees_https_once() {
    let lab = tls_lab("").await;
    let url = format!("https://{}/v3/auth/tokens", lab.one.addr(5000));
    // A client claiming another protocol does not get to choose what the backend sees.
    let r = curl(ca(&lab), &url, &["-H", "X-Forwarded-Proto: http"]);
    assert_eq!((r.exit, r.status), (0, 200), "{}{}", r.body, r.stderr);
    let e = r.echo();
    assert_eq!(e.backend(), lab.one.backend_name(5000));
    assert_eq!(e.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(e.path(), "/v3/auth/tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_ca_fails_the_handshake() {
    let lab = tls_lab("").await;
    let other = test_support::pki::Ca::new(lab.dir.path(), "other");
    let url = format!("https://{}/", lab.one.addr(5000));
    let r = curl(&other.cert_path, &url, &[]);
    // 60: "Peer certificate cannot be authenticated with known CA certificates".
    assert_eq!(r.exit, 60, "{}", r.stderr);
    // The lab's own CA is trusted: the control.
    assert_eq!(curl(ca(&lab), &url, &[]).exit, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_refuses_tls_1_2_and_intermediate_accepts_it() {
    for (profile, tls12_ok) in [("", false), ("profile = \"intermediate\"", true)] {
        let lab = tls_lab(profile).await;
        let url = format!("https://{}/", lab.one.addr(5000));
        let r = curl(ca(&lab), &url, &["--tls-max", "1.2"]);
        assert_eq!(r.exit == 0, tls12_ok, "{profile:?}: {}", r.stderr);
        if !tls12_ok {
            // 35: the handshake failed (protocol version).
            assert_eq!(r.exit, 35, "{}", r.stderr);
        }
        let r = curl(ca(&lab), &url, &["--tlsv1.3"]);
        assert_eq!(r.exit, 0, "{profile:?}: TLS 1.3 must work: {}", r.stderr);
    }
}
