//! TLS on `https://` listeners with real clients (curl, Python `requests`): termination,
//! the profiles, trust, `X-Forwarded-Proto` (docs/ARCHITECTURE.md §3.11).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http_body_util::BodyExt;
use integration_tests::client::{Conn, Echo, empty, request};
use integration_tests::lab::{Lab, LabOptions};
use integration_tests::pattern;
use integration_tests::scrape::{sample, scrape};

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
    // The refused handshake is counted where operators look.
    let text = scrape(lab.one.handle.as_ref().unwrap());
    let failures = sample(&text, "scope_router_tls_handshake_failures_total", &[]);
    assert_eq!(failures, Some(1.0), "{text}");
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

/// The DER of the (first) certificate in a PEM file.
fn der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_on_disk_serves_new_connections_while_old_ones_finish() {
    let lab = tls_lab("").await;
    let vip = lab.one.addr(9292);
    let ca = lab.ca.as_ref().unwrap();
    let gate = lab.one.backends[&9292].gate.clone();
    let total = 3 * pattern::CHUNK as u64;
    let (mut old_conn, old_leaf) = Conn::open_tls(vip, &ca.cert_path).await.unwrap();
    let req = request("GET", vip, &format!("/__download_gated?bytes={total}"))
        .body(empty())
        .unwrap();
    let mut body = old_conn.send_head(req).await.unwrap().into_body();
    let mut len = 0u64;
    while len < pattern::CHUNK as u64 {
        let frame = body.frame().await.unwrap().unwrap();
        len += frame.data_ref().map_or(0, |d| d.len() as u64);
    }

    // Renewed: the same files, a new certificate (and key) for the same address.
    let renewed = ca.leaf("RegionOne", &["127.0.0.1"], 90);
    let new_leaf = der(&renewed.certificate);
    assert_ne!(new_leaf, old_leaf);
    // Picked up by polling, with no reload: bounded by ten watch intervals.
    let mut served = Vec::new();
    for _ in 0..100 {
        let (_, leaf) = Conn::open_tls(vip, &ca.cert_path).await.unwrap();
        served = leaf;
        if served == new_leaf {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        served == new_leaf,
        "new connections still get the old certificate"
    );

    // The download begun before the change completes on its connection.
    gate.release.notify_one();
    while let Some(frame) = body.frame().await {
        len += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(len, total);
}

/// Reloads RegionOne from its config file (certificates re-read with it).
fn reload_one(lab: &Lab) -> Result<scope_router::reload::Reloaded, String> {
    use scope_router::config::Config;
    use scope_router::reload;
    let state = reload::ConfigState::shared(std::time::SystemTime::now());
    let handle = lab.one.handle.as_ref().unwrap();
    let current = Config::load(&lab.one.config_path).unwrap();
    reload::reload(handle, &lab.one.config_path, &current, &state).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_the_certificates_again_and_refuses_an_expired_one() {
    let lab = tls_lab("").await;
    let vip = lab.one.addr(5000);
    let ca = lab.ca.as_ref().unwrap();
    let (_, before) = Conn::open_tls(vip, &ca.cert_path).await.unwrap();

    // Expired: the reload is refused, saying why, and the valid certificate stays.
    let expired = ca.leaf("RegionOne", &["127.0.0.1"], -1);
    let err = reload_one(&lab).unwrap_err();
    assert!(err.contains("expired"), "{err}");
    assert!(
        err.contains(&expired.certificate.display().to_string()),
        "{err}"
    );
    let (_, served) = Conn::open_tls(vip, &ca.cert_path).await.unwrap();
    assert_eq!(served, before, "the certificate in use must stay");

    // Renewed: served from the reload on.
    let renewed = ca.leaf("RegionOne", &["127.0.0.1"], 90);
    reload_one(&lab).unwrap();
    let (_, served) = Conn::open_tls(vip, &ca.cert_path).await.unwrap();
    assert_eq!(served, der(&renewed.certificate));
}

/// `GET url` with Python `requests` (the OpenStack CLI's HTTP library, Debian's
/// python3-requests) trusting `ca`: the status and body.
fn python_get(ca: &Path, url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    const SCRIPT: &str = "import json, sys, requests\n\
        r = requests.get(sys.argv[1], headers=json.loads(sys.argv[3]), verify=sys.argv[2], \
        timeout=10)\n\
        print(r.status_code)\n\
        print(r.text)\n";
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).into()))
        .collect();
    // Debian's interpreter, where `cargo xtask setup` installs python3-requests.
    let out = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT, url])
        .arg(ca)
        .arg(serde_json::Value::Object(headers).to_string())
        .output()
        .expect("run /usr/bin/python3 (cargo xtask setup installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (status, body) = stdout
        .split_once('\n')
        .unwrap_or_else(|| panic!("python3 requests failed: {stderr}"));
    (status.parse().unwrap(), body.trim_end().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_two_routers_over_tls_with_the_remote_hop_verified() {
    let lab = tls_lab("").await;
    let scope = r#"{"compute": "RegionTwo"}"#;
    let url = format!("https://{}/v2.1/servers", lab.one.addr(8774));
    // curl, as an operator would.
    let r = curl(ca(&lab), &url, &["-H", &format!("X-Scope: {scope}")]);
    assert_eq!((r.exit, r.status), (0, 200), "{}{}", r.body, r.stderr);
    let e = r.echo();
    assert_eq!(e.backend(), lab.two.backend_name(8774));
    // RegionOne's hop to RegionTwo was TLS too: RegionTwo set the header afresh.
    assert_eq!(e.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(
        e.header("via").as_deref(),
        Some(
            "1.1 scope-router-RegionOne (compute=RegionTwo from X-Scope), \
             1.1 scope-router-RegionTwo"
        )
    );
    // Python requests, as the OpenStack CLI would.
    let (status, body) = python_get(ca(&lab), &url, &[("X-Scope", scope)]);
    assert_eq!(status, 200, "{body}");
    let e = Echo(serde_json::from_str(&body).unwrap());
    assert_eq!(e.backend(), lab.two.backend_name(8774));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_follows_the_redirect_listener_to_the_https_listener() {
    let lab = Lab::start(LabOptions {
        tls: true,
        redirect: vec![String::new()],
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let https = lab.one.addr(5000);
    let url = format!("http://{}/v3/auth/tokens?nocatalog", lab.redirect[0]);
    // The redirect names https://127.0.0.1/… (443, left out); curl is pointed from there
    // to the lab's identity port, verifying the certificate for 127.0.0.1 as usual.
    let connect_to = format!("127.0.0.1:443:{}:{}", https.ip(), https.port());
    let r = curl(ca(&lab), &url, &["-L", "--connect-to", &connect_to]);
    assert_eq!((r.exit, r.status), (0, 200), "{}{}", r.body, r.stderr);
    let e = r.echo();
    assert_eq!(e.backend(), lab.one.backend_name(5000));
    assert_eq!(e.path(), "/v3/auth/tokens?nocatalog");
    assert_eq!(e.header("x-forwarded-proto").as_deref(), Some("https"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_and_metrics_show_each_certificate_and_its_expiry() {
    const TEST: &str = "status_page_and_metrics_show_each_certificate_and_its_expiry";
    let lab = tls_lab("").await;
    let admin = lab.one.start_admin().await.unwrap();
    let admin_addr = admin.local_addrs()[0];
    // The lab's RegionOne certificate: for 127.0.0.1, valid 30 days from now.
    let file = lab.dir.path().join("RegionOne.pem");
    let file_text = file.display().to_string();

    let s = integration_tests::client::get(admin_addr, "/status", &[])
        .await
        .unwrap()
        .json();
    let certs = s["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 1, "{s:#}");
    assert_eq!(certs[0]["certificate"], file_text, "{s:#}");
    assert_eq!(certs[0]["names"], serde_json::json!(["127.0.0.1"]), "{s:#}");
    let days = certs[0]["days_left"].as_i64().unwrap();
    assert!((29..=30).contains(&days), "{s:#}");

    let text = integration_tests::client::get(admin_addr, "/status?format=text", &[])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&text.body);
    let line = text
        .lines()
        .find(|l| l.ends_with(&file_text))
        .unwrap_or_else(|| panic!("no certificate line in:\n{text}"));
    assert!(
        line.starts_with(&days.to_string()) && line.contains("127.0.0.1"),
        "{line}"
    );

    let page = integration_tests::client::get(admin_addr, "/", &[])
        .await
        .unwrap();
    let page = String::from_utf8_lossy(&page.body);
    assert!(
        page.contains("<table id=\"certificates\">")
            && page.contains(&format!("<td class=\"n up\">{days}</td>")),
        "{page}"
    );

    let metrics = integration_tests::client::get(admin_addr, "/metrics", &[])
        .await
        .unwrap();
    let metrics = String::from_utf8(metrics.body.to_vec()).unwrap();
    let expiry = integration_tests::scrape::sample(
        &metrics,
        "scope_router_tls_certificate_expiry_timestamp_seconds",
        &[("certificate", &file_text), ("names", "127.0.0.1")],
    )
    .unwrap_or_else(|| panic!("no expiry sample in:\n{metrics}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let days_left = (expiry - now) / 86_400.0;
    assert!(
        (29.0..=30.0).contains(&days_left),
        "{days_left} days in:\n{metrics}"
    );

    if test_support::tool::installed(TEST, "promtool", "`cargo xtask setup` installs it") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.prom");
        std::fs::write(&path, &metrics).unwrap();
        let (ok, printed) = test_support::tool::run_printed(
            Command::new("sh")
                .arg("-c")
                .arg("promtool check metrics < \"$0\"")
                .arg(&path),
        );
        assert!(ok, "promtool check metrics failed:\n{printed}\n{metrics}");
    }
    admin.stop().await;
}
