//! `[[redirect]]` listeners (docs/ARCHITECTURE.md §4): `301` to the `https://` URL, exempt
//! paths relayed to their backend, a `Host` that names no host refused; what `/status`
//! and `/metrics` show of them.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;

use integration_tests::client::{Conn, Reply, empty, raw, request};
use integration_tests::echo::EchoBackend;
use integration_tests::lab::{Lab, LabOptions};
use integration_tests::scrape::{sample, scrape};

/// `GET path` on `conn` with `Host: host`.
async fn get_as(conn: &mut Conn, addr: SocketAddr, host: &str, path: &str) -> Reply {
    let mut req = request("GET", addr, path).body(empty()).unwrap();
    req.headers_mut()
        .insert(http::header::HOST, host.parse().unwrap());
    conn.send(req).await.unwrap()
}

fn location(r: &Reply) -> &str {
    r.headers
        .get(http::header::LOCATION)
        .unwrap_or_else(|| panic!("no Location in {r:?}"))
        .to_str()
        .unwrap()
}

/// RegionOne with two redirect listeners: the default one (443, no exemption) and one to
/// 8443 whose ACME path goes to `acme`.
async fn lab(acme: &EchoBackend) -> Lab {
    Lab::start(LabOptions {
        redirect: vec![
            String::new(),
            format!(
                "https_port = 8443\nexempt = [\"/.well-known/acme-challenge/\"]\n\
                 exempt_backend = \"{}\"",
                acme.addr
            ),
        ],
        ..LabOptions::default()
    })
    .await
    .unwrap()
}

async fn acme() -> EchoBackend {
    EchoBackend::start("127.0.0.1:0".parse().unwrap(), "acme")
        .await
        .unwrap()
}

#[tokio::test]
async fn requests_get_301_to_the_https_url_on_a_kept_connection() {
    let acme = acme().await;
    let lab = lab(&acme).await;
    let (plain, to_8443) = (lab.redirect[0], lab.redirect[1]);

    let mut conn = Conn::open(plain).await.unwrap();
    let r = get_as(
        &mut conn,
        plain,
        "api.example.com:80",
        "/v3/auth/tokens?nocatalog=1&x=%20",
    )
    .await;
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(
        location(&r),
        "https://api.example.com/v3/auth/tokens?nocatalog=1&x=%20"
    );
    assert_eq!(r.headers.get("content-length").unwrap(), "0");
    assert!(r.body.is_empty());
    // Keep-alive: the next request goes on the same connection.
    let r = get_as(&mut conn, plain, "192.0.2.10", "/").await;
    assert_eq!(
        (r.status.as_u16(), location(&r)),
        (301, "https://192.0.2.10/")
    );
    assert!(!conn.is_closed());

    let mut conn = Conn::open(to_8443).await.unwrap();
    let r = get_as(
        &mut conn,
        to_8443,
        "api.example.com",
        "/v2.1/servers?limit=1",
    )
    .await;
    assert_eq!(
        location(&r),
        "https://api.example.com:8443/v2.1/servers?limit=1"
    );
    // Only the exempt prefix is relayed: the rest of /.well-known is redirected.
    let r = get_as(&mut conn, to_8443, "api.example.com", "/.well-known/openid").await;
    assert_eq!(
        location(&r),
        "https://api.example.com:8443/.well-known/openid"
    );
}

#[tokio::test]
async fn an_exempt_path_reaches_its_backend_with_forwarded_for() {
    let acme = acme().await;
    let lab = lab(&acme).await;
    let addr = lab.redirect[1];
    let mut conn = Conn::open(addr).await.unwrap();
    let path = "/.well-known/acme-challenge/Kx9-token";
    let r = get_as(&mut conn, addr, "api.example.com", path).await;
    assert_eq!(r.status, 200, "{r:?}");
    let e = r.echo();
    assert_eq!(e.backend(), "acme");
    assert_eq!(e.path(), path);
    assert_eq!(e.header("host").as_deref(), Some("api.example.com"));
    assert_eq!(e.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    // The listener without exemptions redirects the same path.
    let plain = lab.redirect[0];
    let mut conn = Conn::open(plain).await.unwrap();
    let r = get_as(&mut conn, plain, "api.example.com", path).await;
    assert_eq!(r.status, 301);
}

#[tokio::test]
async fn a_host_that_names_no_host_is_refused_saying_so() {
    let acme = acme().await;
    let lab = lab(&acme).await;
    let addr = lab.redirect[0];
    let mut conn = Conn::open(addr).await.unwrap();
    let message = get_as(&mut conn, addr, "user@api.example.com", "/")
        .await
        .problem(400);
    assert!(
        message.contains("Host") && message.contains("user@api.example.com"),
        "{message}"
    );
    // HTTP/1.0 without Host: the address dialled is no name to redirect to.
    let reply = raw(addr, b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    assert!(reply.starts_with("HTTP/1.0 400"), "{reply}");
    assert!(reply.contains("Host header is missing"), "{reply}");
}

#[tokio::test]
async fn status_and_metrics_count_redirects_per_listener() {
    let acme = acme().await;
    let lab = lab(&acme).await;
    let addr = lab.redirect[1];
    let mut conn = Conn::open(addr).await.unwrap();
    for _ in 0..3 {
        assert_eq!(get_as(&mut conn, addr, "a.example", "/").await.status, 301);
    }
    let r = get_as(
        &mut conn,
        addr,
        "a.example",
        "/.well-known/acme-challenge/t",
    )
    .await;
    assert_eq!(r.status, 200);
    let listener = addr.to_string();
    let text = scrape(lab.one.handle.as_ref().unwrap());
    assert_eq!(
        sample(
            &text,
            "scope_router_redirects_total",
            &[("listener", &listener)]
        ),
        Some(3.0),
        "{text}"
    );
    let relayed = [
        ("listener", listener.as_str()),
        ("backend", "exempt_backend"),
        ("status_class", "2xx"),
    ];
    assert_eq!(
        sample(&text, "scope_router_requests_total", &relayed),
        Some(1.0)
    );

    let admin = lab.one.start_admin().await.unwrap();
    let admin_addr = admin.local_addrs()[0];
    let mut conn = Conn::open(admin_addr).await.unwrap();
    let s = get_as(&mut conn, admin_addr, "localhost", "/status")
        .await
        .json();
    let view = s["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["address"] == listener)
        .unwrap_or_else(|| panic!("no redirect listener in {s:#}"));
    assert_eq!(view["kind"], "redirect", "{view:#}");
    assert_eq!(view["redirect"]["https_port"], 8443, "{view:#}");
    assert_eq!(view["redirect"]["redirects"], 3, "{view:#}");
    assert_eq!(
        view["redirect"]["exempt_backend"],
        acme.addr.to_string(),
        "{view:#}"
    );
    let text = get_as(&mut conn, admin_addr, "localhost", "/status?format=text").await;
    let text = String::from_utf8_lossy(&text.body);
    assert!(
        text.contains("redirect listeners:")
            && text.contains(&format!("{listener:<22} 301 to https://<host>:8443")),
        "{text}"
    );
    admin.stop().await;
}
