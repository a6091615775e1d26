//! Reload (docs/ARCHITECTURE.md §14): a new configuration is served without a restart,
//! an invalid one changes nothing, servers keep their health and backends their counters,
//! listeners come and go.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::SystemTime;

use integration_tests::client::get;
use integration_tests::lab::{Lab, LabOptions};
use integration_tests::scrape::{sample, scrape};
use scope_router::config::Config;
use scope_router::reload::{self, ConfigState};

/// Reloads RegionOne from its (edited) config file.
fn reload_one(lab: &Lab, state: &reload::SharedConfigState) -> Result<reload::Reloaded, String> {
    let handle = lab.one.handle.as_ref().unwrap();
    let current = Config::load(&lab.one.config_path).unwrap();
    reload::reload(handle, &lab.one.config_path, &current, state).map_err(|e| e.to_string())
}

fn edit(lab: &Lab, f: impl FnOnce(String) -> String) -> String {
    let before = std::fs::read_to_string(&lab.one.config_path).unwrap();
    std::fs::write(&lab.one.config_path, f(before.clone())).unwrap();
    before
}

/// The two-region lab with routers that bind their listeners themselves (a reload binds
/// the ones it adds).
async fn direct_lab() -> Lab {
    Lab::start(LabOptions {
        bind_direct: true,
        ..LabOptions::default()
    })
    .await
    .unwrap()
}

/// Sets RegionOne's `[scope.defaults]` to `service = region` in its config file; returns
/// the file as it was.
fn set_default(lab: &Lab, service: &str, region: &str) -> String {
    edit(lab, |t| {
        t.replacen(
            "[ebpf]",
            &format!("[scope.defaults]\n{service} = \"{region}\"\n\n[ebpf]"),
            1,
        )
    })
}

fn backend(reply: &integration_tests::client::Reply) -> String {
    reply.echo().backend().to_owned()
}

#[tokio::test]
async fn a_reload_serves_the_new_defaults_and_keeps_counters() {
    let mut lab = direct_lab().await;
    let compute = lab.one.addr(8774);
    let state = ConfigState::shared(SystemTime::now());
    let r = get(compute, "/v2.1/servers", &[]).await.unwrap();
    assert_eq!(backend(&r), "RegionOne-8774");

    // Compute now defaults to RegionTwo.
    let original = set_default(&lab, "compute", "RegionTwo");
    let done = reload_one(&lab, &state).expect("valid config reloads");
    assert!(done.listeners.added.is_empty() && done.listeners.removed.is_empty());
    let r = get(compute, "/v2.1/servers", &[]).await.unwrap();
    assert_eq!(backend(&r), "RegionTwo-8774", "the new defaults decide");

    // Counters carried over: the request before the reload is still counted.
    let text = scrape(lab.one.handle.as_ref().unwrap());
    let local = [
        ("backend", "RegionOne_compute_public"),
        ("status_class", "2xx"),
    ];
    assert_eq!(
        sample(&text, "scope_router_requests_total", &local),
        Some(1.0),
        "{text}"
    );

    // Back to the original: served by RegionOne again.
    std::fs::write(&lab.one.config_path, original).unwrap();
    reload_one(&lab, &state).expect("reload back");
    let r = get(compute, "/v2.1/servers", &[]).await.unwrap();
    assert_eq!(backend(&r), "RegionOne-8774");
    let s = state.lock().unwrap().clone();
    assert_eq!((s.reloads_ok, s.reloads_failed), (2, 0));
    lab.one.stop().await;
    lab.two.stop().await;
}

#[tokio::test]
async fn an_invalid_config_changes_nothing_and_says_why() {
    let mut lab = direct_lab().await;
    let compute = lab.one.addr(8774);
    let state = ConfigState::shared(SystemTime::now());
    set_default(&lab, "compute", "RegionNine");
    let err = reload_one(&lab, &state).expect_err("unknown region refused");
    assert!(
        err.contains("RegionNine") && err.contains("known regions"),
        "{err}"
    );
    let r = get(compute, "/v2.1/servers", &[]).await.unwrap();
    assert_eq!(backend(&r), "RegionOne-8774", "still the old table");
    let s = state.lock().unwrap().clone();
    assert_eq!((s.reloads_ok, s.reloads_failed), (0, 1));
    let last = s.last_reload.unwrap();
    assert!(!last.ok && last.message.contains("RegionNine"), "{last:?}");

    // What the admin listener says about it.
    let handle = lab.one.handle.as_ref().unwrap();
    // The file parses (the unknown region is a catalog check): the view needs its paths.
    let config = Config::load(&lab.one.config_path).unwrap();
    let settings = scope_router::admin::AdminSettings {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        ..Default::default()
    };
    let admin = scope_router::admin::start(
        &settings,
        scope_router::admin::AdminView::with_state(&config, handle, state.clone()),
    )
    .await
    .unwrap();
    let addr = admin.local_addrs()[0];
    let metrics = get(addr, "/metrics", &[]).await.unwrap();
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert_eq!(
        sample(&text, "scope_router_config_last_reload_successful", &[]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "scope_router_config_reloads_total",
            &[("result", "failed")]
        ),
        Some(1.0)
    );
    let status = get(addr, "/status", &[]).await.unwrap().json();
    assert_eq!(status["last_reload"]["ok"], false, "{status:#}");
    admin.stop().await;
    lab.one.stop().await;
    lab.two.stop().await;
}

#[tokio::test]
async fn a_removed_listener_refuses_new_connections_and_comes_back() {
    let mut lab = direct_lab().await;
    let image = lab.one.addr(9292);
    let state = ConfigState::shared(SystemTime::now());
    assert_eq!(get(image, "/v2/images", &[]).await.unwrap().status, 200);
    // RegionOne's catalog without its image endpoints.
    let catalog = lab.dir.path().join("endpoint-list-RegionOne.json");
    let full = std::fs::read_to_string(&catalog).unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_str(&full).unwrap();
    let without: Vec<_> = entries
        .into_iter()
        .filter(|e| e["Service Type"] != "image")
        .collect();
    std::fs::write(&catalog, serde_json::to_string(&without).unwrap()).unwrap();
    // Its `[ports.N]` section would now name a port no endpoint has: drop it too.
    let port = image.port();
    let original = edit(&lab, |t| {
        let section = format!("\n[ports.{port}]\n");
        let start = t.find(&section).unwrap();
        let end = t[start + 1..]
            .find("\n[")
            .map_or(t.len(), |i| start + 1 + i);
        format!("{}{}", &t[..start], &t[end..])
    });
    let done = reload_one(&lab, &state).expect("reload without image");
    assert_eq!(done.listeners.removed, vec![image]);
    // The accept loop stops on its own task: wait (bounded) until connecting fails.
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(image).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        refused,
        "{image} still accepts after its listener was removed"
    );
    // And back.
    std::fs::write(&catalog, full).unwrap();
    std::fs::write(&lab.one.config_path, original).unwrap();
    let done = reload_one(&lab, &state).expect("reload with image");
    assert_eq!(done.listeners.added, vec![image]);
    assert_eq!(get(image, "/v2/images", &[]).await.unwrap().status, 200);
    lab.one.stop().await;
    lab.two.stop().await;
}

#[tokio::test]
async fn a_down_server_stays_down_across_a_reload() {
    let opts = LabOptions {
        bind_direct: true,
        one_compute_down: true,
        one_extra_toml: "[health]\ninter = \"50ms\"\nfall = 1\nrise = 1000\n".into(),
        ..LabOptions::default()
    };
    let mut lab = Lab::start(opts).await.unwrap();
    let compute = lab.one.addr(8774);
    let state = ConfigState::shared(SystemTime::now());
    // Wait (bounded) for the checker to take the dead server down.
    let mut down = false;
    for _ in 0..200 {
        let r = get(compute, "/v2.1/servers", &[]).await.unwrap();
        if r.headers
            .get("x-scope-router-health")
            .and_then(|v| v.to_str().ok())
            == Some("down")
        {
            down = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(down, "the dead compute server never went down");
    // The same config again: a fresh table would start every server UP.
    reload_one(&lab, &state).expect("reload");
    let r = get(compute, "/v2.1/servers", &[]).await.unwrap();
    assert_eq!(
        r.headers
            .get("x-scope-router-health")
            .and_then(|v| v.to_str().ok()),
        Some("down"),
        "the server's DOWN state was lost in the reload: {:?}",
        r.body
    );
    lab.one.stop().await;
    lab.two.stop().await;
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_table_it_started_with() {
    let mut lab = direct_lab().await;
    let image = lab.one.addr(9292);
    let state = ConfigState::shared(SystemTime::now());
    let gate = lab.one.backends[&9292].gate.clone();
    let arrived = gate.arrived.notified();
    // Held by RegionOne's image backend until released.
    let held = tokio::spawn(async move { get(image, "/__gate", &[]).await });
    arrived.await;

    set_default(&lab, "image", "RegionTwo");
    reload_one(&lab, &state).expect("reload");
    let after = get(image, "/v2/images", &[]).await.unwrap();
    assert_eq!(
        backend(&after),
        "RegionTwo-9292",
        "new requests take the new table"
    );

    gate.release.notify_one();
    let held = held.await.unwrap().unwrap();
    assert_eq!(held.status, 200);
    assert_eq!(
        backend(&held),
        "RegionOne-9292",
        "the request in flight kept its table"
    );
    lab.one.stop().await;
    lab.two.stop().await;
}

#[tokio::test]
async fn a_reload_adds_and_removes_a_redirect_listener() {
    let mut lab = direct_lab().await;
    let state = ConfigState::shared(SystemTime::now());
    // A free port for the router to bind (released just before, as `bind_direct` does).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let original = edit(&lab, |t| format!("{t}\n[[redirect]]\nbind = \"{addr}\"\n"));
    let done = reload_one(&lab, &state).expect("reload with a redirect listener");
    assert_eq!(done.listeners.added, vec![addr]);
    let r = get(addr, "/v3?x=1", &[]).await.unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(r.headers["location"], "https://127.0.0.1/v3?x=1");

    std::fs::write(&lab.one.config_path, original).unwrap();
    let done = reload_one(&lab, &state).expect("reload without it");
    assert_eq!(done.listeners.removed, vec![addr]);
    lab.one.stop().await;
    lab.two.stop().await;
}
