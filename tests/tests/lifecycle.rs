//! Listener modes and graceful shutdown (docs/ARCHITECTURE.md §4, proxy.shutdown_grace).

use integration_tests::client::{Conn, empty, get, request};
use integration_tests::lab::{Lab, LabOptions};
use scope_router::shutdown::Drained;

/// Connects until the router has closed its listener. Ends as soon as the
/// listener is gone; the bound only turns a hang into a failure.
async fn wait_until_refused(addr: std::net::SocketAddr) {
    let wait = async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), wait)
        .await
        .expect("the listener never closed");
}

#[tokio::test]
async fn directly_bound_listeners_serve_both_regions() {
    let lab = Lab::start(LabOptions {
        bind_direct: true,
        passthrough: true,
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let handle = lab.one.handle.as_ref().unwrap();
    // Six scoped VIP:ports plus two passthrough binds.
    assert_eq!(handle.local_addrs().len(), 8, "{:?}", handle.local_addrs());
    let r = get(
        lab.one.addr(8774),
        "/v2.1/servers",
        &[("X-Scope", r#"{"compute": "RegionTwo"}"#)],
    )
    .await
    .unwrap();
    assert_eq!(r.echo().backend(), lab.two.backend_name(8774));
    let pt = lab.passthrough.as_ref().unwrap();
    assert_eq!(
        get(pt.http_addr, "/", &[]).await.unwrap().echo().backend(),
        "horizon"
    );
}

#[tokio::test]
async fn shutdown_finishes_the_in_flight_request_then_exits_clean() {
    let mut lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(8774);
    let gate = lab.one.backends[&8774].gate.clone();
    let mut conn = Conn::open(vip).await.unwrap();
    let in_flight = tokio::spawn(async move {
        let req = request("GET", vip, "/__gate").body(empty()).unwrap();
        let reply = conn.send(req).await;
        (reply, conn)
    });
    gate.wait_arrived().await;

    let handle = lab.one.handle.take().unwrap();
    let stopping = tokio::spawn(handle.shutdown());
    wait_until_refused(vip).await;
    // New connections are refused, yet the router waits for the request.
    assert!(!stopping.is_finished());

    gate.release.notify_one();
    let (reply, _conn) = in_flight.await.unwrap();
    let reply = reply.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echo().path(), "/__gate");
    assert_eq!(stopping.await.unwrap(), Drained::Clean);
}

#[tokio::test]
async fn shutdown_cuts_requests_that_outlive_the_grace_period() {
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
    // Bounded below the default grace (30 s): only the 200 ms setting ends it in time.
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        lab.one.handle.take().unwrap().shutdown(),
    )
    .await
    .expect("the configured grace ended the drain, not the default");
    assert_eq!(outcome, Drained::GraceExpired);
    // The cut request ends with a connection error, not a hang.
    assert!(stuck.await.unwrap().is_err());
}

#[tokio::test]
async fn idle_keep_alive_connections_close_on_shutdown() {
    let mut lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(9696);
    let mut conn = Conn::open(vip).await.unwrap();
    assert_eq!(
        conn.send(request("GET", vip, "/v2.0/networks").body(empty()).unwrap())
            .await
            .unwrap()
            .status,
        200
    );
    // An idle keep-alive connection must not hold the shutdown for the grace period.
    assert_eq!(lab.one.stop().await, Some(Drained::Clean));
    assert!(
        conn.send(request("GET", vip, "/v2.0/networks").body(empty()).unwrap())
            .await
            .is_err()
    );
}
