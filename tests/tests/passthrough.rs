//! Passthrough listeners (docs/ARCHITECTURE.md §4): raw TCP splice and single-backend HTTP
//! with WebSocket-style upgrades.

use integration_tests::client::{body, get, request, send};
use integration_tests::lab::{Lab, LabOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn opts() -> LabOptions {
    LabOptions {
        passthrough: true,
        ..LabOptions::default()
    }
}

#[tokio::test]
async fn tcp_passthrough_copies_bytes_both_ways() {
    let lab = Lab::start(opts()).await.unwrap();
    let pt = lab.passthrough.as_ref().unwrap();
    let mut s = tokio::net::TcpStream::connect(pt.tcp_addr).await.unwrap();
    // Not HTTP at all (a MariaDB handshake would look like this to the router).
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut echoed = Vec::new();
    let read = r.read_to_end(&mut echoed);
    let (_, n) = tokio::join!(write, read);
    assert_eq!(n.unwrap(), payload.len());
    assert_eq!(echoed, payload);
}

#[tokio::test]
async fn http_passthrough_proxies_to_its_backend_without_scope_work() {
    let lab = Lab::start(opts()).await.unwrap();
    let pt = lab.passthrough.as_ref().unwrap();
    // A scope header is ignored here: there is exactly one backend.
    let r = get(
        pt.http_addr,
        "/dashboard/auth/login/?next=/",
        &[("X-Scope", r#"{"compute": "RegionTwo"}"#)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let e = r.echo();
    assert_eq!(e.backend(), "horizon");
    assert_eq!(e.path(), "/dashboard/auth/login/?next=/");
    assert_eq!(
        e.header("host").as_deref(),
        Some(pt.http_addr.to_string().as_str())
    );
    assert_eq!(e.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        e.header("via").as_deref(),
        Some("1.1 scope-router-RegionOne")
    );

    let post = request("POST", pt.http_addr, "/dashboard/x")
        .body(body("form=data"))
        .unwrap();
    let e = send(pt.http_addr, post).await.unwrap().echo();
    assert_eq!(e.body_len(), 9);
}

#[tokio::test]
async fn http_passthrough_folds_forwarded_for_and_via_like_scoped_requests() {
    let lab = Lab::start(opts()).await.unwrap();
    let pt = lab.passthrough.as_ref().unwrap();
    let chain = [
        ("X-Forwarded-For", "198.51.100.7"),
        ("X-Forwarded-For", "203.0.113.9, 192.0.2.1"),
        ("Via", "1.1 edge-a"),
        ("Via", "1.0 edge-b"),
    ];
    let passthrough = get(pt.http_addr, "/dashboard/", &chain)
        .await
        .unwrap()
        .echo();
    let scoped = get(lab.one.addr(8774), "/v2.1/servers", &chain)
        .await
        .unwrap()
        .echo();
    for e in [&passthrough, &scoped] {
        // One line each (backends may read only the first), every hop kept, ours last.
        assert_eq!(
            e.header_all("x-forwarded-for"),
            ["198.51.100.7, 203.0.113.9, 192.0.2.1, 127.0.0.1"],
            "{}",
            e.backend()
        );
        assert_eq!(
            e.header_all("via"),
            ["1.1 edge-a, 1.0 edge-b, 1.1 scope-router-RegionOne"],
            "{}",
            e.backend()
        );
    }
}

#[tokio::test]
async fn http_passthrough_splices_a_websocket_style_upgrade() {
    let lab = Lab::start(opts()).await.unwrap();
    let pt = lab.passthrough.as_ref().unwrap();
    let s = tokio::net::TcpStream::connect(pt.http_addr).await.unwrap();
    let mut s = BufReader::new(s);
    s.get_mut()
        .write_all(
            format!(
                "GET /websockify HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n",
                pt.http_addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    let mut greeting = String::new();
    s.read_line(&mut greeting).await.unwrap();
    assert_eq!(greeting, "hello from horizon\n");
    // Raw frames both ways over the upgraded connection.
    for msg in [&b"frame-1"[..], b"\x81\x05hello", &[0u8; 4096]] {
        s.get_mut().write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
}

/// Several servers behind a passthrough: a TCP connection goes to the first server that
/// accepts it (a dead one, which no check has noticed yet, is skipped), and an HTTP
/// passthrough whose every server is down answers 503 at once.
#[tokio::test]
async fn passthrough_backends_take_several_servers() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let live = integration_tests::echo::TcpEcho::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let lab = Lab::start(LabOptions {
        passthrough: true,
        passthrough_backends: Some([
            format!("[\"{dead}\", \"{}\"]", live.addr),
            format!("[\"{dead}\"]"),
        ]),
        one_extra_toml: "[health]\ninter = \"50ms\"\nrise = 1\nfall = 1\n[proxy]\nretries = 3\n"
            .into(),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let pt = lab.passthrough.as_ref().unwrap();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(pt.tcp_addr).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"ping", "every connection reaches the live server");
    }
    // The HTTP passthrough's only server is dead: once checked, a fast 503.
    let mut status = 0;
    for _ in 0..200 {
        status = get(pt.http_addr, "/", &[]).await.unwrap().status.as_u16();
        if status == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, 503);
    let r = get(pt.http_addr, "/", &[]).await.unwrap();
    let msg = r.problem(503);
    assert!(msg.contains("horizon"), "{msg}");
}
