//! `/metrics` after known traffic: requests by backend and status class, errors by kind,
//! scope sources, bytes, per-server requests and health, redispatches, retries and failovers
//! (docs/ARCHITECTURE.md §13).

use integration_tests::client::{body, get, raw, request, send};
use integration_tests::lab::{Lab, LabOptions};
use integration_tests::scrape::{sample, scrape};

fn counter(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    sample(text, name, labels).map_or(0, |v| v as u64)
}

#[tokio::test]
async fn scrape_counts_known_traffic_by_backend_status_source_and_server() {
    let mut lab = Lab::start(LabOptions::default()).await.unwrap();
    let compute = lab.one.addr(8774);
    let listener = compute.to_string();
    for _ in 0..5 {
        let r = get(compute, "/v2.1/servers", &[]).await.unwrap();
        assert_eq!(r.status, 200);
    }
    for _ in 0..3 {
        let r = get(
            compute,
            "/v2.1/flavors",
            &[("X-Scope", r#"{"compute": "RegionTwo"}"#)],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
    }
    let bad = get(compute, "/v2.1/servers", &[("X-Scope", "{")])
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    let upload = request("POST", compute, "/v2.1/servers")
        .body(body(vec![b'x'; 1000]))
        .unwrap();
    assert_eq!(send(compute, upload).await.unwrap().status, 200);
    // Every response body finished: the numbers are complete.
    let one = lab.one.handle.as_ref().unwrap();
    let text = scrape(one);

    let local = [
        ("listener", listener.as_str()),
        ("service_type", "compute"),
        ("region", "RegionOne"),
        ("backend", "RegionOne_compute_public"),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut l = local.to_vec();
        l.push(extra);
        l
    };
    assert_eq!(
        counter(
            &text,
            "scope_router_requests_total",
            &with(("status_class", "2xx"))
        ),
        6,
        "{text}"
    );
    let remote = [
        ("listener", listener.as_str()),
        ("region", "RegionTwo"),
        ("backend", "RegionTwo_compute_public"),
        ("status_class", "2xx"),
    ];
    assert_eq!(counter(&text, "scope_router_requests_total", &remote), 3);
    // The malformed scope never reached a backend: counted on the listener, as a 400.
    let refused = [
        ("listener", listener.as_str()),
        ("backend", "-"),
        ("status_class", "4xx"),
    ];
    assert_eq!(counter(&text, "scope_router_requests_total", &refused), 1);
    assert_eq!(
        counter(&text, "scope_router_errors_total", &[("kind", "400")]),
        1
    );
    assert_eq!(
        counter(&text, "scope_router_errors_total", &[("kind", "503")]),
        0
    );
    assert_eq!(
        counter(
            &text,
            "scope_router_scope_source_total",
            &[("source", "x-scope")]
        ),
        3
    );
    assert_eq!(
        counter(
            &text,
            "scope_router_scope_source_total",
            &[("source", "defaults")]
        ),
        6
    );
    assert_eq!(
        counter(&text, "scope_router_received_bytes_total", &local),
        1000
    );
    assert!(counter(&text, "scope_router_sent_bytes_total", &local) > 0);
    assert_eq!(
        counter(&text, "scope_router_request_duration_seconds_count", &local),
        6
    );
    // Keep-alive pooling reuses connections, but the first request had to open one.
    let connects = counter(
        &text,
        "scope_router_upstream_connect_duration_seconds_count",
        &local,
    );
    assert!((1..=6).contains(&connects), "{connects} connects: {text}");
    // One server behind the local compute backend, one frontend for RegionTwo's.
    let one_server = lab.one.backends[&8774].addr.to_string();
    let server = [("role", "local"), ("server", one_server.as_str())];
    assert_eq!(
        counter(&text, "scope_router_server_requests_total", &server),
        6
    );
    assert_eq!(sample(&text, "scope_router_server_up", &server), Some(1.0));
    // Every request has ended: the connections opened to that server wait in the pool.
    let pooled = counter(
        &text,
        "scope_router_upstream_pool_idle_connections",
        &[("server", one_server.as_str())],
    );
    assert!(
        (1..=connects).contains(&pooled),
        "{pooled} pooled of {connects} opened: {text}"
    );
    let frontend = lab.two.addr(8774).to_string();
    let far = [
        ("role", "remote"),
        ("listener", listener.as_str()),
        ("server", frontend.as_str()),
        ("backend", "RegionTwo_compute_public"),
    ];
    assert_eq!(
        counter(&text, "scope_router_server_requests_total", &far),
        3
    );
    assert!(
        sample(&text, "scope_router_build_info", &[]).is_some(),
        "{text}"
    );

    // RegionTwo saw the three forwarded requests, with the scope the first hop pinned.
    let two = scrape(lab.two.handle.as_ref().unwrap());
    let two_local = [
        ("region", "RegionTwo"),
        ("backend", "RegionTwo_compute_public"),
        ("status_class", "2xx"),
    ];
    assert_eq!(
        counter(&two, "scope_router_requests_total", &two_local),
        3,
        "{two}"
    );
    lab.one.stop().await;
    lab.two.stop().await;
}

#[tokio::test]
async fn heads_hyper_refuses_count_as_router_errors() {
    let mut lab = Lab::start(LabOptions::default()).await.unwrap();
    let compute = lab.one.addr(8774);
    let answer = raw(compute, b"GARBAGE\r\n\r\n").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // hyper closes the connection before the router's task sees the error: wait for the
    // count (bounded), it must come.
    let handle = lab.one.handle.as_ref().unwrap();
    let mut text = scrape(handle);
    for _ in 0..200 {
        if counter(&text, "scope_router_errors_total", &[("kind", "400")]) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        text = scrape(handle);
    }
    assert_eq!(
        counter(&text, "scope_router_errors_total", &[("kind", "400")]),
        1,
        "{text}"
    );
    assert_eq!(
        counter(&text, "scope_router_errors_total", &[("kind", "431")]),
        0
    );
    lab.one.stop().await;
    lab.two.stop().await;
}

#[tokio::test]
async fn failovers_and_down_backends_are_counted() {
    let mut lab = Lab::start(LabOptions::default()).await.unwrap();
    let compute = lab.one.addr(8774);
    let listener = compute.to_string();
    lab.two.stop().await;
    let r = get(
        compute,
        "/v2.1/flavors",
        &[("X-Scope", r#"{"compute": "RegionTwo|RegionOne"}"#)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let r = get(
        compute,
        "/v2.1/flavors",
        &[("X-Scope", r#"{"compute": "RegionTwo"}"#)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 503, "{:?}", r.body);
    let text = scrape(lab.one.handle.as_ref().unwrap());
    let two = [
        ("listener", listener.as_str()),
        ("backend", "RegionTwo_compute_public"),
    ];
    assert_eq!(
        counter(&text, "scope_router_failovers_total", &two),
        1,
        "{text}"
    );
    let mut failed = two.to_vec();
    failed.push(("status_class", "5xx"));
    assert_eq!(counter(&text, "scope_router_requests_total", &failed), 1);
    assert_eq!(
        counter(&text, "scope_router_errors_total", &[("kind", "503")]),
        1
    );
    lab.one.stop().await;
}

#[tokio::test]
async fn without_request_metrics_only_scrape_time_series_remain() {
    let opts = LabOptions {
        one_extra_toml: "[admin]\nmetrics = false\n".into(),
        ..LabOptions::default()
    };
    let mut lab = Lab::start(opts).await.unwrap();
    let compute = lab.one.addr(8774);
    assert_eq!(
        get(compute, "/v2.1/servers", &[]).await.unwrap().status,
        200
    );
    let text = scrape(lab.one.handle.as_ref().unwrap());
    assert!(
        !text.contains("scope_router_requests_total"),
        "no request series with metrics = false:\n{text}"
    );
    let one_server = lab.one.backends[&8774].addr.to_string();
    let server = [("role", "local"), ("server", one_server.as_str())];
    assert_eq!(sample(&text, "scope_router_server_up", &server), Some(1.0));
    // Per-server traffic is part of health state, counted either way.
    assert_eq!(
        sample(&text, "scope_router_server_requests_total", &server),
        Some(1.0)
    );
    lab.one.stop().await;
    lab.two.stop().await;
}

/// A backend that answers the first request of each connection and keeps it open, then
/// closes it, unanswered, when a second request arrives on it: what a backend whose
/// keep-alive timeout just expired does to a pooled connection.
async fn one_answer_per_connection() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if conn.write_all(answer).await.is_err() {
                    return;
                }
                // The next request: read, then close without a word.
                let _ = conn.read(&mut chunk).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_request_retried_on_a_fresh_connection_is_counted() {
    let backend = one_answer_per_connection().await;
    let lab = Lab::start(LabOptions {
        // No health checks during the test: only the two requests reach the backend.
        one_extra_toml: "[health]\ninter = \"1h\"\n".into(),
        one_port_toml: std::collections::BTreeMap::from([(
            9292,
            format!("backend = [\"{backend}\"]\n"),
        )]),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let image = lab.one.addr(9292);
    // The first request leaves its upstream connection in the pool; the second rides it,
    // finds it closed before any answer, and is sent again on a new one.
    for _ in 0..2 {
        let r = get(image, "/v2/images", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let text = scrape(lab.one.handle.as_ref().unwrap());
    let backend = [("backend", "RegionOne_image_public")];
    assert_eq!(
        counter(&text, "scope_router_retries_total", &backend),
        1,
        "{text}"
    );
    assert_eq!(
        counter(&text, "scope_router_redispatches_total", &backend),
        0,
        "a retry stays on its server"
    );
}
