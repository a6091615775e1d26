//! Backend health (docs/ARCHITECTURE.md §3.8): active checks with rise/fall, several
//! servers per backend (round robin, source affinity, backups), the fast 503 when every
//! server is down, and redispatch when connecting fails.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use integration_tests::client::{get, raw};
use integration_tests::echo::EchoBackend;
use integration_tests::lab::{Lab, LabOptions};
use integration_tests::scrape::{sample, scrape};

/// Checks fast enough for a test: down after 2 failures, up after 2 successes.
const FAST_CHECKS: &str = "[health]\ninter = \"50ms\"\nrise = 2\nfall = 2\ntimeout = \"500ms\"\n";

/// Checks that never run during a test (redispatch must work without them).
const SLOW_CHECKS: &str = "[health]\ninter = \"1h\"\n";

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn echo(name: &str) -> EchoBackend {
    EchoBackend::start(SocketAddr::new(LOCALHOST, 0), name)
        .await
        .unwrap()
}

/// `backend = [...]` for a `[ports.N]` section, from TOML server entries.
fn backends(entries: &[String]) -> String {
    format!("backend = [{}]\n", entries.join(", "))
}

fn plain(b: &EchoBackend) -> String {
    format!("\"{}\"", b.addr)
}

fn lab_options(health: &str, image_port: String) -> LabOptions {
    LabOptions {
        one_extra_toml: health.to_owned(),
        one_port_toml: BTreeMap::from([(9292, image_port)]),
        ..LabOptions::default()
    }
}

/// Polls `what` (bounded in count and time) until it holds; panics naming `label`.
async fn eventually<F, Fut>(label: &str, mut what: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..1000 {
        if what().await {
            return;
        }
        assert!(Instant::now() < deadline, "never happened: {label}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {label}");
}

/// Which echo backend answered `n` image requests, counted by name.
async fn spread(lab: &Lab, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = get(lab.one.addr(9292), "/v2/images", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        *seen.entry(r.echo().backend().to_owned()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn a_dead_server_goes_down_after_fall_checks_gets_a_fast_503_and_comes_back() {
    let image = echo("image").await;
    let addr = image.addr;
    let lab = Lab::start(lab_options(FAST_CHECKS, backends(&[plain(&image)])))
        .await
        .unwrap();
    assert_eq!(
        get(lab.one.addr(9292), "/v2/images", &[])
            .await
            .unwrap()
            .status,
        200
    );

    drop(image);
    // Marked down by its checks: the router answers 503 itself, naming the backend and
    // the last check, without trying to connect.
    eventually("image marked down", || async {
        get(lab.one.addr(9292), "/v2/images", &[])
            .await
            .is_ok_and(|r| r.status == 503)
    })
    .await;
    let r = get(lab.one.addr(9292), "/v2/images", &[]).await.unwrap();
    let msg = r.problem(503);
    assert!(msg.contains("RegionOne_image_public"), "{msg}");
    assert!(msg.contains("last check"), "{msg}");
    // /metrics shows the server down and at least `fall` (2) failed checks.
    let text = scrape(lab.one.handle.as_ref().expect("RegionOne is running"));
    let server = addr.to_string();
    let of = |name: &str, extra: &[(&'static str, &'static str)]| {
        let mut labels = vec![("server", server.as_str())];
        labels.extend_from_slice(extra);
        sample(&text, name, &labels).unwrap_or_else(|| panic!("no {name}:\n{text}"))
    };
    assert_eq!(of("scope_router_server_up", &[]), 0.0);
    assert!(of("scope_router_server_checks_total", &[("result", "failed")]) >= 2.0);
    // Other services of the router are unaffected.
    assert_eq!(
        get(lab.one.addr(9696), "/v2.0/networks", &[])
            .await
            .unwrap()
            .status,
        200
    );

    // Back on the same address: up again after `rise` good checks.
    let _image = EchoBackend::start(addr, "image-again").await.unwrap();
    eventually("image marked up again", || async {
        get(lab.one.addr(9292), "/v2/images", &[])
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
}

#[tokio::test]
async fn an_http_check_with_a_failing_status_takes_the_server_down() {
    let image = echo("image").await;
    let port = format!(
        "{}health_path = \"/__status/500\"\n",
        backends(&[plain(&image)])
    );
    let lab = Lab::start(lab_options(FAST_CHECKS, port)).await.unwrap();
    eventually("image marked down by its HTTP check", || async {
        get(lab.one.addr(9292), "/v2/images", &[])
            .await
            .is_ok_and(|r| r.status == 503)
    })
    .await;
    let r = get(lab.one.addr(9292), "/v2/images", &[]).await.unwrap();
    let msg = r.problem(503);
    assert!(
        msg.contains("500"),
        "the check's status is the reason: {msg}"
    );
    // The check itself reached the backend as an HTTP GET of the path.
    assert!(
        image.gate.seen().iter().any(|s| s == "GET /__status/500"),
        "{:?}",
        image.gate.seen()
    );
}

#[tokio::test]
async fn round_robin_spreads_evenly_and_source_keeps_a_client_on_one_server() {
    let (a, b, c) = (echo("a").await, echo("b").await, echo("c").await);
    let three = backends(&[plain(&a), plain(&b), plain(&c)]);
    let lab = Lab::start(lab_options(SLOW_CHECKS, three.clone()))
        .await
        .unwrap();
    let seen = spread(&lab, 30).await;
    assert_eq!(
        seen,
        BTreeMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)])
    );

    let lab = Lab::start(lab_options(
        SLOW_CHECKS,
        format!("{three}balance = \"source\"\n"),
    ))
    .await
    .unwrap();
    let seen = spread(&lab, 12).await;
    assert_eq!(seen.len(), 1, "one client, one server: {seen:?}");
}

#[tokio::test]
async fn weights_share_traffic_in_proportion() {
    let (a, b) = (echo("a").await, echo("b").await);
    let port = backends(&[
        format!("{{ address = \"{}\", weight = 2 }}", a.addr),
        plain(&b),
    ]);
    let lab = Lab::start(lab_options(SLOW_CHECKS, port)).await.unwrap();
    let seen = spread(&lab, 30).await;
    assert_eq!(seen, BTreeMap::from([("a".into(), 20), ("b".into(), 10)]));
}

#[tokio::test]
async fn a_backup_serves_only_when_every_other_server_is_down() {
    let (main, backup) = (echo("main").await, echo("backup").await);
    let port = backends(&[
        plain(&main),
        format!("{{ address = \"{}\", backup = true }}", backup.addr),
    ]);
    let lab = Lab::start(lab_options(FAST_CHECKS, port)).await.unwrap();
    assert_eq!(spread(&lab, 6).await, BTreeMap::from([("main".into(), 6)]));
    drop(main);
    eventually("the backup takes over", || async {
        get(lab.one.addr(9292), "/v2/images", &[])
            .await
            .is_ok_and(|r| r.status == 200 && r.echo().backend() == "backup")
    })
    .await;
    assert!(backup.gate.seen().iter().all(|s| s == "GET /v2/images"));
}

#[tokio::test]
async fn a_refused_connection_is_redispatched_to_another_server() {
    // A dead server the checks have not noticed (they never run here): round robin
    // picks it for every other request, and each of those is redispatched.
    let dead = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let live = echo("live").await;
    let port = backends(&[format!("\"{dead}\""), plain(&live)]);
    let lab = Lab::start(lab_options(SLOW_CHECKS, port)).await.unwrap();
    assert_eq!(spread(&lab, 6).await, BTreeMap::from([("live".into(), 6)]));
    // At least every other request met the dead server first and was redispatched
    // (a redispatch moves round robin on too), and /metrics counts each one.
    let redispatched = || {
        let text = scrape(lab.one.handle.as_ref().expect("RegionOne is running"));
        sample(
            &text,
            "scope_router_redispatches_total",
            &[("backend", "RegionOne_image_public")],
        )
        .unwrap_or_else(|| panic!("no redispatch count:\n{text}"))
    };
    let n = redispatched();
    assert!((3.0..=6.0).contains(&n), "{n} redispatches for 6 requests");
    // A POST too: nothing was sent before the connection failed.
    let out = raw(
        lab.one.addr(9292),
        format!(
            "POST /v2/images HTTP/1.1\r\nHost: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
            lab.one.addr(9292)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test]
async fn another_router_asks_about_a_service_and_gets_our_health_state() {
    let image = echo("image").await;
    let lab = Lab::start(lab_options(FAST_CHECKS, backends(&[plain(&image)])))
        .await
        .unwrap();
    let ask = |service: &'static str| {
        let vip = lab.one.addr(9292);
        async move {
            raw(
                vip,
                format!(
                    "GET /.scope-router/health?service={service}&interface=public HTTP/1.1\r\n\
                     Host: {vip}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap()
        }
    };
    let up = ask("image").await;
    assert!(up.starts_with("HTTP/1.1 200"), "{up}");
    assert!(up.contains("x-scope-router-health: up"), "{up}");
    // Answered by the router itself: the backend never saw it.
    assert!(image.gate.seen().is_empty(), "{:?}", image.gate.seen());

    drop(image);
    eventually("health answer turns down", || async {
        ask("image").await.starts_with("HTTP/1.1 503")
    })
    .await;
    let down = ask("image").await;
    assert!(down.contains("x-scope-router-health: down"), "{down}");
    assert!(down.contains("RegionOne_image_public is down"), "{down}");
    let unknown = ask("dns").await;
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
}

/// RegionTwo's image service dies: RegionOne learns it from RegionTwo's router (its
/// check is answered from RegionTwo's own health state), serves `RegionTwo|RegionOne`
/// itself and answers a plain RegionTwo scope with the fast 503 naming the backend.
#[tokio::test]
async fn a_dead_remote_service_fails_over_to_the_next_region() {
    let two_image = echo("two-image").await;
    let lab = Lab::start(LabOptions {
        one_extra_toml: FAST_CHECKS.into(),
        two_extra_toml: FAST_CHECKS.into(),
        two_port_toml: BTreeMap::from([(9292, backends(&[plain(&two_image)]))]),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let either = [("X-Scope", r#"{"image": "RegionTwo|RegionOne"}"#)];
    let two_only = [("X-Scope", r#"{"image": "RegionTwo"}"#)];
    let r = get(lab.one.addr(9292), "/v2/images", &either)
        .await
        .unwrap();
    assert_eq!(
        r.echo().backend(),
        "two-image",
        "the first alternative serves"
    );

    drop(two_image);
    // RegionTwo marks its image down; RegionOne's check of RegionTwo's image, answered
    // by RegionTwo's router, follows: from then on RegionOne serves the alternative.
    eventually("RegionOne fails over to itself", || async {
        get(lab.one.addr(9292), "/v2/images", &either)
            .await
            .is_ok_and(|r| r.status == 200 && r.echo().backend() == lab.one.backend_name(9292))
    })
    .await;
    let r = get(lab.one.addr(9292), "/v2/images", &two_only)
        .await
        .unwrap();
    let msg = r.problem(503);
    assert!(msg.contains("RegionTwo_image_public"), "{msg}");
    let r = get(lab.one.addr(9292), "/v2/images", &either)
        .await
        .unwrap();
    // Served locally, the scope was cut off nothing else: the identity headers are ours.
    assert_eq!(
        r.echo().header("via").as_deref(),
        Some("1.1 scope-router-RegionOne")
    );
}

/// The first alternative refuses the connection (its router is gone, and no check has
/// noticed yet): nothing was sent, so the next alternative serves, even a POST.
#[tokio::test]
async fn a_refused_first_alternative_fails_over() {
    let mut lab = Lab::start(LabOptions {
        one_extra_toml: SLOW_CHECKS.into(),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    lab.two.stop().await;
    let vip = lab.one.addr(9292);
    let out = raw(
        vip,
        format!(
            "POST /v2/images HTTP/1.1\r\nHost: {vip}\r\nX-Scope: {{\"image\": \"RegionTwo|RegionOne\"}}\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(&lab.one.backend_name(9292)), "{out}");
}

#[tokio::test]
async fn malformed_alternatives_are_400_naming_what_to_fix() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    for (scope, needle) in [
        (r#"{"image": "RegionTwo|"}"#, "empty alternative"),
        (r#"{"image": "RegionTwo|RegionNine"}"#, "RegionNine"),
    ] {
        let r = get(lab.one.addr(9292), "/v2/images", &[("X-Scope", scope)])
            .await
            .unwrap();
        let msg = r.problem(400);
        assert!(msg.contains(needle), "{scope}: {msg}");
    }
}

/// RegionOne has not noticed (its checks never run here), but RegionTwo's router knows
/// its image service is down and says so with its fast 503: nothing reached a service,
/// so RegionOne serves the bodiless `RegionTwo|RegionOne` request itself at once.
#[tokio::test]
async fn a_remote_routers_fast_503_moves_a_bodiless_request_to_the_next_region() {
    let two_image = echo("two-image").await;
    let lab = Lab::start(LabOptions {
        one_extra_toml: SLOW_CHECKS.into(),
        two_extra_toml: FAST_CHECKS.into(),
        two_port_toml: BTreeMap::from([(9292, backends(&[plain(&two_image)]))]),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    drop(two_image);
    let two_only = [("X-Scope", r#"{"image": "RegionTwo"}"#)];
    eventually("RegionTwo answers its fast 503", || async {
        get(lab.one.addr(9292), "/v2/images", &two_only)
            .await
            .is_ok_and(|r| r.status == 503)
    })
    .await;
    let either = [("X-Scope", r#"{"image": "RegionTwo|RegionOne"}"#)];
    let r = get(lab.one.addr(9292), "/v2/images", &either)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.echo().backend(), lab.one.backend_name(9292));
}

/// Neither router's checks have noticed (they never run here) that RegionTwo's image
/// backend died: RegionTwo's router finds out by connecting, and, since nothing reached a
/// service, answers 503 marked `x-scope-router-health: down` like its fast one, so
/// RegionOne still serves the bodiless `RegionTwo|RegionOne` request itself (a 502 there
/// would reach the client although RegionOne could serve it).
#[tokio::test]
async fn a_remote_backend_refusing_before_any_check_noticed_moves_the_request_on() {
    let two_image = echo("two-image").await;
    let lab = Lab::start(LabOptions {
        one_extra_toml: SLOW_CHECKS.into(),
        two_extra_toml: SLOW_CHECKS.into(),
        two_port_toml: BTreeMap::from([(9292, backends(&[plain(&two_image)]))]),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    drop(two_image);
    let two_only = [("X-Scope", r#"{"image": "RegionTwo"}"#)];
    let r = get(lab.one.addr(9292), "/v2/images", &two_only)
        .await
        .unwrap();
    let msg = r.problem(503);
    assert!(
        msg.contains("RegionTwo_image_public refused the connection"),
        "{msg}"
    );
    assert_eq!(
        r.headers
            .get("x-scope-router-health")
            .and_then(|v| v.to_str().ok()),
        Some("down")
    );
    let either = [("X-Scope", r#"{"image": "RegionTwo|RegionOne"}"#)];
    let r = get(lab.one.addr(9292), "/v2/images", &either)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.echo().backend(), lab.one.backend_name(9292));
}
