//! Error statuses and OpenStack JSON bodies (docs/ARCHITECTURE.md §3.6), and that a bad
//! request never disturbs other requests.

use integration_tests::client::{Conn, empty, get, request};
use integration_tests::lab::{Lab, LabOptions};
use integration_tests::scrape::{sample, scrape};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn assert_problem(r: &integration_tests::client::Reply, code: u16) -> String {
    r.problem(code)
}

/// `scope_router_errors_total{kind}` of RegionOne's router (0 when never counted).
fn errors_of_kind(lab: &Lab, kind: &str) -> f64 {
    let text = scrape(lab.one.handle.as_ref().expect("RegionOne is running"));
    sample(&text, "scope_router_errors_total", &[("kind", kind)]).unwrap_or(0.0)
}

#[tokio::test]
async fn malformed_scopes_are_400_naming_the_header() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(8774);
    for (header, value) in [
        ("X-Scope", "{not json"),
        ("X-Scope", r#"["RegionTwo"]"#),
        ("X-Scope", r#"{"compute": 2}"#),
        ("X-Auth-Token", "tok!SCOPE!{oops"),
    ] {
        let r = get(vip, "/v2.1/servers", &[(header, value)]).await.unwrap();
        let msg = assert_problem(&r, 400);
        assert!(msg.contains(header), "{header}: {value} → {msg}");
    }
}

#[tokio::test]
async fn unknown_region_is_400_listing_known_regions() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let r = get(
        lab.one.addr(9292),
        "/v2/images",
        &[("X-Scope", r#"{"image": "RegionX"}"#)],
    )
    .await
    .unwrap();
    let msg = assert_problem(&r, 400);
    assert!(
        msg.contains("RegionX") && msg.contains("RegionOne") && msg.contains("RegionTwo"),
        "{msg}"
    );
}

#[tokio::test]
async fn via_naming_this_router_is_a_508_loop() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let r = get(
        lab.one.addr(9696),
        "/v2.0/ports",
        &[("Via", "1.1 scope-router-RegionOne")],
    )
    .await
    .unwrap();
    assert_problem(&r, 508);
    assert_eq!(errors_of_kind(&lab, "508"), 1.0);
}

/// Defaults that send a service to each other no longer loop: the first router pins
/// its decision in X-Scope, so the second one agrees.
#[tokio::test]
async fn disagreeing_defaults_agree_with_the_first_router() {
    let lab = Lab::start(LabOptions {
        one_extra_toml: "[scope.defaults]\ncompute = \"RegionTwo\"\n".into(),
        two_extra_toml: "[scope.defaults]\ncompute = \"RegionOne\"\n".into(),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let r = get(lab.one.addr(8774), "/v2.1/servers", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.echo().backend(), lab.two.backend_name(8774));
}

/// A real loop (the request arrives with a Via chain naming this router) is a 508 whose
/// message shows every hop and what each read, not a guess at the cause.
#[tokio::test]
async fn loop_message_names_the_via_chain_and_each_hops_reading() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let r = get(
        lab.two.addr(8774),
        "/two/v2.1/servers",
        &[
            (
                "Via",
                "1.1 scope-router-RegionTwo (compute=RegionOne from X-Scope), \
                 1.1 scope-router-RegionOne (compute=RegionTwo from defaults)",
            ),
            ("X-Scope", r#"{"compute": "RegionOne"}"#),
        ],
    )
    .await
    .unwrap();
    let msg = assert_problem(&r, 508);
    for part in [
        "scope-router-RegionTwo (compute=RegionOne from X-Scope) -> \
         scope-router-RegionOne (compute=RegionTwo from defaults)",
        "Here scope-router-RegionTwo reads compute=RegionOne from X-Scope again",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
}

/// A backend that refuses the connection (before any check noticed it is down) is as
/// unavailable as one the checks marked down: 503, naming the backend, nothing sent.
#[tokio::test]
async fn backend_refusing_is_503() {
    let lab = Lab::start(LabOptions {
        one_compute_down: true,
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let r = get(lab.one.addr(8774), "/v2.1/servers", &[]).await.unwrap();
    let msg = assert_problem(&r, 503);
    assert!(msg.contains("RegionOne_compute_public"), "{msg}");
    assert_eq!(
        r.headers
            .get("x-scope-router-health")
            .and_then(|v| v.to_str().ok()),
        Some("down")
    );
    assert!(
        !msg.contains("127.0.0.1"),
        "addresses stay in the log: {msg}"
    );
    // Other services of the same router are unaffected.
    assert_eq!(
        get(lab.one.addr(9292), "/v2/images", &[])
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn remote_router_down_is_503_through_both_routers() {
    let mut lab = Lab::start(LabOptions::default()).await.unwrap();
    // Stop RegionTwo's router: RegionOne cannot reach RegionTwo's frontend.
    lab.two.stop().await;
    let r = get(
        lab.one.addr(8774),
        "/v2.1/servers",
        &[("X-Scope", r#"{"compute": "RegionTwo"}"#)],
    )
    .await
    .unwrap();
    let msg = assert_problem(&r, 503);
    assert!(msg.contains("RegionTwo_compute_public"), "{msg}");
}

/// The wait for a response head is `[timeouts] response_head`, not `idle` (a hung remote
/// router would otherwise cost a Glance client 6 h): a short one gives a JSON 504 naming it,
/// even under a long `idle`.
#[tokio::test]
async fn silent_backend_is_504_after_response_head_not_idle() {
    let lab = Lab::start(LabOptions {
        one_extra_toml: "[timeouts]\nresponse_head = \"300ms\"\nidle = \"1h\"\n".into(),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        get(lab.one.addr(8774), "/__hang", &[]),
    )
    .await
    .expect("response_head did not end the wait")
    .unwrap();
    let message = assert_problem(&r, 504);
    assert!(message.contains("[timeouts] response_head"), "{message}");
    assert_eq!(errors_of_kind(&lab, "504"), 1.0);
}

/// Negative control for the test above: with the default `response_head`, a backend that
/// takes well longer than 300 ms (held at the gate meanwhile) still answers.
#[tokio::test]
async fn a_slow_answer_within_the_default_response_head_is_served() {
    let lab = Lab::start(LabOptions {
        one_extra_toml: "[timeouts]\nidle = \"1h\"\n".into(),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let vip = lab.one.addr(8774);
    let gate = lab.one.backends[&8774].gate.clone();
    let slow = tokio::spawn(async move { get(vip, "/__gate", &[]).await });
    gate.wait_arrived().await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    gate.release.notify_one();
    let r = tokio::time::timeout(std::time::Duration::from_secs(20), slow)
        .await
        .expect("the released request did not finish")
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn a_bad_request_leaves_its_keep_alive_connection_usable() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(8774);
    let mut conn = Conn::open(vip).await.unwrap();
    let bad = request("GET", vip, "/v2.1/servers")
        .header("X-Scope", "nope")
        .body(empty())
        .unwrap();
    assert_problem(&conn.send(bad).await.unwrap(), 400);
    let good = request("GET", vip, "/v2.1/servers").body(empty()).unwrap();
    let r = conn.send(good).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.echo().backend(), lab.one.backend_name(8774));
    assert!(!conn.is_closed());
}

#[tokio::test]
async fn connection_to_an_address_no_listener_serves_is_closed() {
    let lab = Lab::start(LabOptions {
        stray_listener: true,
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let stray = lab.stray_addr.unwrap();
    let mut s = tokio::net::TcpStream::connect(stray).await.unwrap();
    // Writing may race with the close; the read is what must show it.
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = Vec::new();
    let n = s.read_to_end(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf));
}
