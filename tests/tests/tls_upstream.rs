//! TLS toward another region (docs/ARCHITECTURE.md, upstream connections): a remote
//! target whose catalog URL is `https://` is reached over TLS, its certificate verified
//! for the URL's host against `[tls] ca_file`; a certificate for another name or from an
//! unknown CA gets a 502 naming the check that failed, and does not fail over.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::Path;

use integration_tests::client::get;
use integration_tests::echo::EchoBackend;
use integration_tests::scrape::{sample, scrape};
use scope_router::config::Config;
use scope_router::proxy::{RouterHandle, StartOptions, start};
use serde_json::json;
use test_support::pki::{Ca, Leaf};

/// RegionOne's router on 127.0.0.1, trusting `ca_file`; its compute is a cleartext echo,
/// RegionTwo's compute frontend `https://127.0.0.2:<port>/two/v2.1` a TLS echo presenting
/// `leaf`.
struct Setup {
    router: RouterHandle,
    vip: SocketAddr,
    _backends: [EchoBackend; 2],
}

async fn setup(dir: &Path, ca_file: &Path, leaf: &Leaf) -> Setup {
    let local = EchoBackend::start(SocketAddr::from(([127, 0, 0, 1], 0)), "RegionOne-compute")
        .await
        .unwrap();
    let remote = EchoBackend::start_tls(
        SocketAddr::from(([127, 0, 0, 2], 0)),
        "RegionTwo-compute",
        &leaf.certificate,
        &leaf.key,
    )
    .await
    .unwrap();
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let vip = socket.local_addr().unwrap();
    let catalog = json!([
        {"Region": "RegionOne", "Service Type": "compute", "Interface": "public",
         "URL": format!("http://{vip}/v2.1")},
        {"Region": "RegionTwo", "Service Type": "compute", "Interface": "public",
         "URL": format!("https://{}/two/v2.1", remote.addr)},
    ]);
    std::fs::write(dir.join("catalog.json"), catalog.to_string()).unwrap();
    // Checks every hour: the first one runs at once, and one failure (of a bad
    // certificate) is not enough to take the hop down, so requests reach it.
    let toml = format!(
        "region = \"RegionOne\"\ncatalog = [\"catalog.json\"]\nbackend = \"127.0.0.1\"\n\
         [tls]\nca_file = \"{}\"\n[health]\ninter = \"1h\"\n[ebpf]\nmode = \"off\"\n\
         [ports.{}]\nbackend = \"{}\"\n",
        ca_file.display(),
        vip.port(),
        local.addr
    );
    let path = dir.join("RegionOne.toml");
    std::fs::write(&path, toml).unwrap();
    let config = Config::load(&path).unwrap();
    let router = start(
        config,
        StartOptions {
            handed_in: vec![socket],
            bind_scoped: false,
            bind_passthrough: false,
            ..StartOptions::default()
        },
    )
    .await
    .unwrap();
    Setup {
        router,
        vip,
        _backends: [local, remote],
    }
}

const TO_TWO: (&str, &str) = ("X-Scope", r#"{"compute": "RegionTwo"}"#);

#[tokio::test]
async fn a_remote_https_region_is_served_over_verified_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "lab");
    let leaf = ca.leaf("two", &["127.0.0.2"], 30);
    let s = setup(dir.path(), &ca.cert_path, &leaf).await;
    for _ in 0..2 {
        let r = get(s.vip, "/v2.1/servers", &[TO_TWO]).await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let echo = r.echo();
        assert_eq!(echo.backend(), "RegionTwo-compute");
        assert_eq!(echo.path(), "/two/v2.1/servers");
    }
    let text = scrape(&s.router);
    let two = [("backend", "RegionTwo_compute_public")];
    assert_eq!(
        sample(
            &text,
            "scope_router_upstream_tls_handshake_failures_total",
            &two
        ),
        Some(0.0)
    );
    // Kept alive over TLS: one connection for both requests.
    assert_eq!(
        sample(
            &text,
            "scope_router_upstream_connect_duration_seconds_count",
            &two
        ),
        Some(1.0)
    );
    s.router.shutdown().await;
}

#[tokio::test]
async fn a_remote_certificate_that_does_not_verify_is_a_502_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "lab");
    let stranger = Ca::new(dir.path(), "stranger");
    let trust = ca.cert_path.display().to_string();
    let cases = [
        (
            "another name",
            ca.leaf("other", &["region2.example"], 30),
            vec![
                "its certificate is not valid for the name 127.0.0.2 (it is valid for \
                 region2.example)"
                    .to_owned(),
                "check the host of the catalog URL".to_owned(),
            ],
        ),
        (
            "unknown CA",
            stranger.leaf("two", &["127.0.0.2"], 30),
            vec![
                format!("its certificate is signed by a CA not in {trust}"),
                "`ca_file` in [tls]".to_owned(),
            ],
        ),
    ];
    for (case, leaf, needles) in cases {
        let s = setup(dir.path(), &ca.cert_path, &leaf).await;
        let r = get(s.vip, "/v2.1/servers", &[TO_TWO]).await.unwrap();
        let message = r.problem(502);
        for needle in &needles {
            assert!(
                message.contains(needle.as_str()),
                "{case}: {needle}: {message}"
            );
        }
        assert!(
            message.contains("RegionTwo_compute_public"),
            "{case}: {message}"
        );
        // A misconfiguration, not a dead region: an `A|B` scope does not hide it by
        // serving from B.
        let either = ("X-Scope", r#"{"compute": "RegionTwo|RegionOne"}"#);
        let r = get(s.vip, "/v2.1/servers", &[either]).await.unwrap();
        let message = r.problem(502);
        assert!(message.contains(needles[0].as_str()), "{case}: {message}");
        let text = scrape(&s.router);
        let two = [("backend", "RegionTwo_compute_public")];
        assert_eq!(
            sample(
                &text,
                "scope_router_upstream_tls_handshake_failures_total",
                &two
            ),
            Some(2.0),
            "{case}"
        );
        assert_eq!(
            sample(&text, "scope_router_failovers_total", &two),
            Some(0.0),
            "{case}"
        );
        assert_eq!(
            sample(&text, "scope_router_errors_total", &[("kind", "502")]),
            Some(2.0),
            "{case}"
        );
        s.router.shutdown().await;
    }
}
