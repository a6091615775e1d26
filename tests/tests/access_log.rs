//! One access line per request (target `access`) with the fields of docs/ARCHITECTURE.md §8.

use integration_tests::capture::Capture;
use integration_tests::client::{Conn, empty, get, request};
use integration_tests::lab::{Lab, LabOptions};
use scope_router::shutdown::Drained;

#[tokio::test]
async fn each_request_logs_one_line_with_route_fields() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        // Everything the router logs, not only access lines: no token may reach any of it.
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "access=info,scope_router=debug",
        ))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let mut lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(8774);
    let ok = get(
        vip,
        "/v2.1/servers?secret=1",
        &[("X-Scope", r#"{"compute": "RegionTwo"}"#)],
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200);
    // The scope piggybacked on the tokens, and a token in the query string.
    let tokened = get(
        vip,
        "/v2.1/os-keypairs?token=QUERYSECRET",
        &[
            (
                "X-Auth-Token",
                r#"AUTHSECRET!SCOPE!{"compute": "RegionTwo"}"#,
            ),
            ("X-Subject-Token", "SUBJECTSECRET"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(tokened.status, 200);
    let bad = get(vip, "/v2.1/servers", &[("X-Scope", "{")])
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    // RegionTwo gone: an `A|B` request fails over, and its line says what was skipped.
    lab.two.stop().await;
    let failed_over = get(
        vip,
        "/v2.1/flavors",
        &[("X-Scope", r#"{"compute": "RegionTwo|RegionOne"}"#)],
    )
    .await
    .unwrap();
    assert_eq!(failed_over.status, 200);
    // Draining the router guarantees every response body was finished and logged.
    lab.one.stop().await;

    let text = capture.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("listener={vip}")))
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    let routed = lines
        .iter()
        .find(|l| l.contains("status=200"))
        .expect("no 200 line");
    for field in [
        "method=GET",
        "path=/v2.1/servers ",
        "service_type=compute",
        "region=RegionTwo",
        "backend=RegionTwo_compute_public",
        "scope=X-Scope",
        "failover=-",
        "alternative=0",
        &format!("server={}", lab.two.addr(8774)),
        "redispatches=0",
        "retries=0",
        "request_id=req-RegionTwo-8774",
        "duration_ms=",
        "outcome=complete",
    ] {
        assert!(routed.contains(field), "missing {field}: {routed}");
    }
    let failover = lines
        .iter()
        .find(|l| l.contains("path=/v2.1/flavors"))
        .expect("no failover line");
    for field in [
        "region=RegionOne",
        "backend=RegionOne_compute_public",
        "failover=RegionTwo skipped: connect failed",
        "alternative=2",
        "request_id=req-RegionOne-8774",
    ] {
        assert!(failover.contains(field), "missing {field}: {failover}");
    }
    assert!(
        !routed.contains("secret"),
        "query strings are not logged: {routed}"
    );
    let tokened = lines
        .iter()
        .find(|l| l.contains("path=/v2.1/os-keypairs"))
        .expect("no line for the request with tokens");
    assert!(
        tokened.contains("scope=X-Auth-Token") && tokened.contains("region=RegionTwo"),
        "{tokened}"
    );
    for secret in ["AUTHSECRET", "SUBJECTSECRET", "QUERYSECRET"] {
        assert!(!text.contains(secret), "{secret} reached the log: {text}");
    }
    let rejected = lines
        .iter()
        .find(|l| l.contains("status=400"))
        .expect("no 400 line");
    assert!(rejected.contains("backend=-"), "{rejected}");
    // The second hop logged its own line, naming its local backend.
    let two = text
        .lines()
        .filter(|l| l.contains(&format!("listener={}", lab.two.addr(8774))))
        .count();
    assert_eq!(two, 2, "{text}");
}

#[tokio::test]
async fn a_request_cut_at_the_end_of_the_shutdown_grace_logs_its_line() {
    let capture = Capture::default();
    let writer = capture.clone();
    // This test's thread only (the runtime is single-threaded): the other test installs the
    // global subscriber.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("access=info"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // Not `SubscriberInitExt::set_default`: that also installs the `log` bridge globally,
    // which the other test's `init()` then cannot.
    let _default = tracing::subscriber::set_default(subscriber);

    let mut lab = Lab::start(LabOptions {
        one_extra_toml: "[proxy]\nshutdown_grace = \"200ms\"\n".into(),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let vip = lab.one.addr(8774);
    let gate = lab.one.backends[&8774].gate.clone();
    let stuck = tokio::spawn(async move {
        let mut conn = Conn::open(vip).await.unwrap();
        conn.send(request("GET", vip, "/__gate").body(empty()).unwrap())
            .await
    });
    gate.wait_arrived().await;
    let outcome = lab.one.handle.take().unwrap().shutdown().await;
    assert_eq!(outcome, Drained::GraceExpired);
    assert!(stuck.await.unwrap().is_err());

    let text = capture.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("listener={vip}")))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    for field in [
        "path=/__gate",
        "status=0",
        "outcome=cut_by_shutdown",
        "backend=RegionOne_transparent_",
    ] {
        assert!(lines[0].contains(field), "missing {field}: {}", lines[0]);
    }
}
