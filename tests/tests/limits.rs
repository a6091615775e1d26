//! Per-server `maxconn` and the queue in front of full servers (docs/ARCHITECTURE.md
//! §3.10): a full server makes the next request wait until a slot frees, a wait longer
//! than `[timeouts] queue` is a JSON 503, round robin goes to a server with room, a slow
//! upload holds its slot to the end, reloads carry the slots, passthroughs are limited by
//! their own settings, and `/metrics` and `/status` show slots in use and queued requests.
//!
//! Each wait here is bounded (the client's `STALL`), and each queue timeout set far below
//! the 1 min default, so a test fails rather than passes slowly if a setting is ignored.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use integration_tests::capture::Capture;
use integration_tests::client::{ClientBody, Conn, STALL, bounded, get, request};
use integration_tests::echo::EchoBackend;
use integration_tests::lab::{Lab, LabOptions, Region};
use integration_tests::scrape::{sample, scrape};
use scope_router::config::Config;
use scope_router::reload::{self, ConfigState};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// RegionOne with `toml` in its `[ports.N]` section of `port`.
async fn lab_with(port: u16, toml: &str) -> Lab {
    Lab::start(LabOptions {
        one_port_toml: BTreeMap::from([(port, toml.to_owned())]),
        ..LabOptions::default()
    })
    .await
    .unwrap()
}

/// A `/metrics` sample of RegionOne for the server at `addr` (`None`: no such series).
fn server_metric(region: &Region, name: &str, addr: &str) -> Option<f64> {
    let text = scrape(region.handle.as_ref().unwrap());
    sample(&text, name, &[("server", addr)])
}

/// Polls `cond` every 5 ms until it holds; fails the test naming `what` after [`STALL`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let waited = bounded(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    waited.unwrap_or_else(|e| panic!("{e}"));
}

/// Until the server at `addr` of `region` has `n` requests waiting for a slot.
async fn until_queued(region: &Region, addr: &str, n: f64) {
    let what = format!("{n} request(s) queued for {addr}");
    wait_until(&what, || {
        server_metric(region, "scope_router_server_queued_requests", addr) == Some(n)
    })
    .await;
}

#[tokio::test]
async fn a_full_server_queues_the_next_request_until_the_first_ends() {
    let lab = lab_with(8774, "maxconn_per_server = 1\n").await;
    let vip = lab.one.addr(8774);
    let backend = &lab.one.backends[&8774];
    let server = backend.addr.to_string();

    let held = tokio::spawn(get(vip, "/__gate", &[]));
    backend.gate.wait_arrived().await;
    let queued = tokio::spawn(get(vip, "/v2.1/servers", &[]));
    until_queued(&lab.one, &server, 1.0).await;
    assert!(!queued.is_finished(), "the second request did not wait");
    assert_eq!(
        backend.gate.seen(),
        ["GET /__gate"],
        "a queued request reached the backend"
    );
    let metric = |name| server_metric(&lab.one, name, &server);
    assert_eq!(metric("scope_router_server_slots_in_use"), Some(1.0));
    assert_eq!(metric("scope_router_server_slots_limit"), Some(1.0));

    // `/status` (and so the status page and `scope-router status`) shows the same.
    let admin = lab.one.start_admin().await.unwrap();
    let status = get(admin.local_addrs()[0], "/status", &[])
        .await
        .unwrap()
        .json();
    let entry = status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["addr"] == server.as_str() && s["role"] == "local")
        .unwrap()
        .clone();
    assert_eq!(entry["maxconn"], 1, "{entry:#}");
    assert_eq!(
        entry["slots"],
        serde_json::json!({"maxconn": 1, "in_use": 1, "queued": 1, "queue_timeouts": 0}),
        "{entry:#}"
    );
    let text = get(admin.local_addrs()[0], "/status?format=text", &[])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&text.body);
    assert!(
        text.contains("    slots: 1 of 1 in use, 1 queued, 0 queue timeouts\n"),
        "{text}"
    );
    admin.stop().await;

    backend.gate.release.notify_one();
    let first = held.await.unwrap().unwrap();
    assert_eq!(first.status, 200);
    let second = queued.await.unwrap().unwrap();
    assert_eq!(second.status, 200, "{:?}", second.body);
    assert_eq!(second.echo().path(), "/v2.1/servers");
    // Both exchanges ended: their slots are back, nobody waits.
    wait_until("the slots given back", || {
        metric("scope_router_server_slots_in_use") == Some(0.0)
    })
    .await;
    assert_eq!(metric("scope_router_server_queued_requests"), Some(0.0));
}

#[tokio::test]
async fn a_streaming_response_holds_its_slot_until_its_body_ends() {
    let lab = lab_with(9292, "maxconn_per_server = 1\n").await;
    let vip = lab.one.addr(9292);
    let backend = &lab.one.backends[&9292];
    let server = backend.addr.to_string();
    let mut conn = Conn::open(vip).await.unwrap();
    // The first chunk (of three), then the rest once the gate opens: the head has been
    // relayed, the body has not.
    const SIZE: usize = 3 * integration_tests::pattern::CHUNK;
    let download = request("GET", vip, &format!("/__download_gated?bytes={SIZE}"))
        .body(integration_tests::client::empty())
        .unwrap();
    let resp = conn.send_head(download).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = bounded("the first chunk", body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));

    let next = tokio::spawn(get(vip, "/v2/images", &[]));
    until_queued(&lab.one, &server, 1.0).await;
    backend.gate.release.notify_one();
    let mut len = first.data_ref().map_or(0, |d| d.len());
    while let Some(frame) = bounded("the rest of the body", body.frame()).await.unwrap() {
        len += frame.unwrap().data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(len, SIZE);
    assert_eq!(next.await.unwrap().unwrap().status, 200);
}

#[tokio::test]
async fn a_request_waiting_longer_than_the_queue_timeout_gets_a_json_503() {
    // The only test of this suite that installs a subscriber (one per process): the other
    // tests' lines land here too, so this one looks for its own listener's.
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("access=info"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let lab = lab_with(8774, "maxconn_per_server = 1\nqueue = \"200ms\"\n").await;
    let vip = lab.one.addr(8774);
    let backend = &lab.one.backends[&8774];
    let server = backend.addr.to_string();
    let held = tokio::spawn(get(vip, "/__gate", &[]));
    backend.gate.wait_arrived().await;

    let refused = get(vip, "/v2.1/servers", &[]).await.unwrap();
    let message = refused.problem(503);
    let port = vip.port();
    for needle in [
        "RegionOne_compute_public",
        &format!("on port {port}"),
        "queue timeout",
        "200ms",
        "never sent",
        &format!("[ports.{port}]"),
        "maxconn",
    ] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from: {message}"
        );
    }
    assert!(
        !message.contains("127.0.0.1"),
        "addresses stay in the log: {message}"
    );
    assert_eq!(backend.gate.seen(), ["GET /__gate"], "the 503 was sent on");
    assert_eq!(
        server_metric(
            &lab.one,
            "scope_router_server_queue_timeouts_total",
            &server
        ),
        Some(1.0)
    );
    let mine =
        |l: &&str| l.contains("outcome=queue_timeout") && l.contains(&format!("listener={vip}"));
    wait_until("the queue timeout's access line", || {
        capture.text().lines().any(|l| mine(&l))
    })
    .await;
    // Counted with its access line, as the router's own 503.
    let errors = scrape(lab.one.handle.as_ref().unwrap());
    assert_eq!(
        sample(&errors, "scope_router_errors_total", &[("kind", "503")]),
        Some(1.0)
    );
    let text = capture.text();
    let line = text.lines().find(mine).unwrap();
    for needle in [
        "status=503",
        "path=/v2.1/servers",
        "backend=RegionOne_compute_public",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from: {line}");
    }
    assert!(
        !line.contains("queue_ms=0.000"),
        "the wait is logged: {line}"
    );

    backend.gate.release.notify_one();
    assert_eq!(held.await.unwrap().unwrap().status, 200);
    // The server is free again: the next request is served.
    assert_eq!(get(vip, "/v2.1/servers", &[]).await.unwrap().status, 200);
}

#[tokio::test]
async fn round_robin_sends_to_the_server_with_room() {
    let one = std::net::Ipv4Addr::LOCALHOST.into();
    let a = EchoBackend::start(SocketAddr::new(one, 0), "a")
        .await
        .unwrap();
    let b = EchoBackend::start(SocketAddr::new(one, 0), "b")
        .await
        .unwrap();
    let lab = lab_with(
        8774,
        &format!(
            "backend = [{{ address = \"{}\", maxconn = 1 }}, {{ address = \"{}\", maxconn = 1 }}]\n\
             queue = \"200ms\"\n",
            a.addr, b.addr
        ),
    )
    .await;
    let vip = lab.one.addr(8774);
    let held = tokio::spawn(get(vip, "/__gate", &[]));
    let (busy, free) = tokio::time::timeout(STALL, async {
        tokio::select! {
            () = a.gate.arrived.notified() => (&a, &b),
            () = b.gate.arrived.notified() => (&b, &a),
        }
    })
    .await
    .expect("the held request reached a server");
    // Without limits, round robin would send every other request to the busy server.
    for _ in 0..4 {
        let r = get(vip, "/v2.1/servers", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.echo().backend(), free.name);
    }
    assert_eq!(busy.gate.seen(), ["GET /__gate"]);
    busy.gate.release.notify_one();
    assert_eq!(held.await.unwrap().unwrap().status, 200);
}

/// `A|B`: an alternative whose servers stayed full for its queue time did not serve and
/// sent nothing, here or at the next region's router, so the next alternative serves.
#[tokio::test]
async fn a_full_alternative_hands_the_request_to_the_next() {
    let limited = "maxconn_per_server = 1\nqueue = \"200ms\"\n";
    let lab = Lab::start(LabOptions {
        one_port_toml: BTreeMap::from([(8774, limited.to_owned())]),
        two_port_toml: BTreeMap::from([(8774, limited.to_owned())]),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let vip = lab.one.addr(8774);
    for (full, other, scope) in [
        (&lab.one, &lab.two, r#"{"compute": "RegionOne|RegionTwo"}"#),
        (&lab.two, &lab.one, r#"{"compute": "RegionTwo|RegionOne"}"#),
    ] {
        let backend = &full.backends[&8774];
        backend.gate.seen.lock().unwrap().clear();
        // Held on the full region's own listener: its one slot is taken.
        let held = tokio::spawn(get(full.addr(8774), "/__gate", &[]));
        backend.gate.wait_arrived().await;
        let r = get(vip, "/v2.1/servers", &[("X-Scope", scope)])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{scope}: {:?}", r.body);
        assert_eq!(r.echo().backend(), other.backend_name(8774), "{scope}");
        assert_eq!(backend.gate.seen(), ["GET /__gate"], "{scope}");
        backend.gate.release.notify_one();
        assert_eq!(held.await.unwrap().unwrap().status, 200);
    }
}

/// A body the test hands over chunk by chunk; it ends when the sender is dropped.
fn fed_body() -> (tokio::sync::mpsc::Sender<Bytes>, ClientBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    let body = StreamBody::new(frames)
        .map_err(|never| match never {})
        .boxed();
    (tx, body)
}

#[tokio::test]
async fn a_slow_upload_holds_its_slot_to_the_end_and_completes() {
    let lab = lab_with(9292, "maxconn_per_server = 1\nqueue = \"300ms\"\n").await;
    let vip = lab.one.addr(9292);
    let backend = &lab.one.backends[&9292];
    let (chunks, body) = fed_body();
    let mut conn = Conn::open(vip).await.unwrap();
    // `/__progress`: the echo backend says when the first body bytes arrive.
    let upload = request("PUT", vip, "/__progress")
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .unwrap();
    let upload = tokio::spawn(async move { conn.send(upload).await });
    let pieces: Vec<Bytes> = (0..4u8)
        .map(|i| Bytes::from(vec![b'a' + i; 64 * 1024]))
        .collect();
    chunks.send(pieces[0].clone()).await.unwrap();
    backend.gate.wait_arrived().await;

    // Mid-upload, between two chunks, the server's one slot is the upload's: another
    // request waits out the queue. The upload itself is not cut (no default ends it).
    let refused = get(vip, "/v2/images", &[]).await.unwrap();
    let message = refused.problem(503);
    assert!(message.contains("queue timeout"), "{message}");
    for piece in &pieces[1..] {
        chunks.send(piece.clone()).await.unwrap();
    }
    drop(chunks);
    let done = upload.await.unwrap().unwrap();
    assert_eq!(done.status, 200, "{:?}", done.body);
    let mut hasher = Sha256::new();
    for piece in &pieces {
        hasher.update(piece);
    }
    let echo = done.echo();
    assert_eq!(echo.body_len(), 4 * 64 * 1024);
    assert_eq!(
        echo.body_sha256(),
        integration_tests::echo::hex(&hasher.finalize())
    );
    // The upload's end gave the slot back.
    assert_eq!(get(vip, "/v2/images", &[]).await.unwrap().status, 200);
}

#[tokio::test]
async fn a_reload_keeps_the_slots_in_use_and_applies_the_new_limit() {
    let lab = lab_with(8774, "maxconn_per_server = 1\n").await;
    let vip = lab.one.addr(8774);
    let backend = &lab.one.backends[&8774];
    let server = backend.addr.to_string();
    let state = ConfigState::shared(SystemTime::now());
    let set_limit = |from: &str, to: &str| {
        let text = std::fs::read_to_string(&lab.one.config_path).unwrap();
        let edited = text.replacen(
            &format!("maxconn_per_server = {from}\n"),
            &format!("maxconn_per_server = {to}\n"),
            1,
        );
        assert_ne!(text, edited);
        std::fs::write(&lab.one.config_path, edited).unwrap();
        let handle = lab.one.handle.as_ref().unwrap();
        let current = Config::load(&lab.one.config_path).unwrap();
        reload::reload(handle, &lab.one.config_path, &current, &state).unwrap();
    };
    let metric = |name| server_metric(&lab.one, name, &server);

    let held = tokio::spawn(get(vip, "/__gate", &[]));
    backend.gate.wait_arrived().await;
    let waiting = tokio::spawn(get(vip, "/v2.1/servers", &[]));
    until_queued(&lab.one, &server, 1.0).await;

    // Raised: the waiting request goes at once, beside the held one, which the new table
    // still counts (the slots were carried, not started afresh).
    set_limit("1", "2");
    let r = bounded("the queued request after the raise", waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(metric("scope_router_server_slots_limit"), Some(2.0));
    wait_until("the held exchange alone in use", || {
        metric("scope_router_server_slots_in_use") == Some(1.0)
    })
    .await;

    // Lowered back while one exchange is in flight: the next request waits for it.
    set_limit("2", "1");
    let next = tokio::spawn(get(vip, "/v2.1/flavors", &[]));
    until_queued(&lab.one, &server, 1.0).await;
    assert_eq!(metric("scope_router_server_slots_in_use"), Some(1.0));
    backend.gate.release.notify_one();
    assert_eq!(held.await.unwrap().unwrap().status, 200);
    assert_eq!(next.await.unwrap().unwrap().status, 200);
    wait_until("every slot given back once", || {
        metric("scope_router_server_slots_in_use") == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn passthroughs_are_limited_by_their_own_maxconn() {
    let one = std::net::Ipv4Addr::LOCALHOST.into();
    let tcp = integration_tests::echo::TcpEcho::start(SocketAddr::new(one, 0))
        .await
        .unwrap();
    let http = EchoBackend::start(SocketAddr::new(one, 0), "horizon")
        .await
        .unwrap();
    let lab = Lab::start(LabOptions {
        passthrough: true,
        passthrough_backends: Some([
            format!("\"{}\"\nmaxconn_per_server = 1", tcp.addr),
            format!(
                "\"{}\"\nmaxconn_per_server = 1\nqueue = \"200ms\"",
                http.addr
            ),
        ]),
        // Scoped listeners' default: not for passthroughs.
        one_extra_toml: "[proxy]\nmaxconn_per_server = 50\n".to_owned(),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let pt = lab.passthrough.as_ref().unwrap();

    // HTTP: a held request fills horizon's server; the next one waits out its queue.
    let held = tokio::spawn(get(pt.http_addr, "/__gate", &[]));
    http.gate.wait_arrived().await;
    let refused = get(pt.http_addr, "/dashboard", &[]).await.unwrap();
    let message = refused.problem(503);
    for needle in [
        "horizon",
        "queue timeout",
        "[[passthrough]] named \"horizon\"",
    ] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from: {message}"
        );
    }
    http.gate.release.notify_one();
    assert_eq!(held.await.unwrap().unwrap().status, 200);
    // A response whose body is still streaming holds the slot too.
    let mut conn = Conn::open(pt.http_addr).await.unwrap();
    const SIZE: usize = 3 * integration_tests::pattern::CHUNK;
    let download = request(
        "GET",
        pt.http_addr,
        &format!("/__download_gated?bytes={SIZE}"),
    )
    .body(integration_tests::client::empty())
    .unwrap();
    let mut body = conn.send_head(download).await.unwrap().into_body();
    let mut len = 0;
    let first = bounded("the first chunk", body.frame()).await.unwrap();
    len += first.unwrap().unwrap().data_ref().map_or(0, |d| d.len());
    get(pt.http_addr, "/dashboard", &[])
        .await
        .unwrap()
        .problem(503);
    http.gate.release.notify_one();
    while let Some(frame) = bounded("the rest of the body", body.frame()).await.unwrap() {
        len += frame.unwrap().data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(len, SIZE);
    let after = get(pt.http_addr, "/dashboard", &[]).await.unwrap();
    assert_eq!(after.status, 200, "the slot was not given back");

    // TCP: a connection holds its slot for its whole life; the next one waits for it.
    let echo = |mut s: tokio::net::TcpStream, word: &'static [u8]| async move {
        s.write_all(word).await.unwrap();
        let mut back = vec![0; word.len()];
        bounded("the echo", s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, word);
        s
    };
    let first = echo(
        tokio::net::TcpStream::connect(pt.tcp_addr).await.unwrap(),
        b"one",
    )
    .await;
    let second = tokio::net::TcpStream::connect(pt.tcp_addr).await.unwrap();
    let server = tcp.addr.to_string();
    until_queued(&lab.one, &server, 1.0).await;
    drop(first);
    drop(echo(second, b"two").await);

    // `[proxy] maxconn_per_server` left the passthroughs alone: only theirs apply.
    let text = scrape(lab.one.handle.as_ref().unwrap());
    assert_eq!(
        sample(
            &text,
            "scope_router_server_slots_limit",
            &[("server", &server)]
        ),
        Some(1.0)
    );
    let local = lab.one.backends[&8774].addr.to_string();
    assert_eq!(
        sample(
            &text,
            "scope_router_server_slots_limit",
            &[("server", &local)]
        ),
        Some(50.0)
    );
}
