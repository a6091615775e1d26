//! The admin listener (docs/ARCHITECTURE.md §13) of an in-process router: `/metrics` after
//! known traffic (and validated by `promtool check metrics`), `/status`, the status page
//! in headless Chromium, and `/healthz` during a drain. The routers run on loopback with
//! echo backends (`integration_tests::lab`); every admin listener binds port 0.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::process::Command;

use integration_tests::client::get;
use integration_tests::lab::{Lab, LabOptions};
use scope_router::admin::AdminHandle;

/// A `[vip]` the admin listener reports without managing it: `127.0.0.1` is on `lo`
/// already, and `manage = false` means nothing is added, announced or locked.
fn unmanaged_vip(state_dir: &std::path::Path) -> String {
    format!(
        "[vip]\naddress = \"127.0.0.1\"\ninterface = \"lo\"\nmanage = false\nstate_dir = \"{}\"\n",
        state_dir.display()
    )
}

async fn lab_with_admin(extra: String) -> (Lab, AdminHandle) {
    let lab = Lab::start(LabOptions {
        one_extra_toml: extra,
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let admin = lab.one.start_admin().await.unwrap();
    (lab, admin)
}

fn admin_addr(admin: &AdminHandle) -> SocketAddr {
    admin.local_addrs()[0]
}

async fn scrape(admin: &AdminHandle) -> String {
    let r = get(admin_addr(admin), "/metrics", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        scope_router::metrics::CONTENT_TYPE
    );
    String::from_utf8(r.body.to_vec()).unwrap()
}

/// The value of the sample `name{labels…}`; panics with the exposition when none matches.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    integration_tests::scrape::sample(text, name, labels)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{text}"))
}

/// Runs an external tool the suite needs; missing, it skips loudly (a failure under
/// `CI=true`, where `cargo xtask setup` must have installed it). `None` = skipped.
fn tool(test: &str, program: &str) -> Option<Command> {
    test_support::tool::installed(test, program, "`cargo xtask setup` installs it")
        .then(|| Command::new(program))
}

#[tokio::test]
async fn metrics_count_known_traffic_per_backend_and_server() {
    let (lab, admin) = lab_with_admin(String::new()).await;
    let compute = lab.one.addr(8774);
    for _ in 0..3 {
        let r = get(compute, "/v2.1/servers", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let r = get(
        compute,
        "/v2.1/flavors",
        &[("X-Scope", r#"{"compute": "RegionTwo"}"#)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);

    let text = scrape(&admin).await;
    let listener = compute.to_string();
    let requests = |region: &str, backend: &str| {
        sample(
            &text,
            "scope_router_requests_total",
            &[
                ("listener", &listener),
                ("service_type", "compute"),
                ("region", region),
                ("backend", backend),
                ("status_class", "2xx"),
            ],
        )
    };
    assert_eq!(requests("RegionOne", "RegionOne_compute_public"), 3.0);
    assert_eq!(requests("RegionTwo", "RegionTwo_compute_public"), 1.0);
    let local_server = lab.one.backends[&8774].addr.to_string();
    let server = [
        ("role", "local"),
        ("listener", listener.as_str()),
        ("server", local_server.as_str()),
    ];
    assert_eq!(sample(&text, "scope_router_server_up", &server), 1.0);
    assert_eq!(
        sample(&text, "scope_router_server_requests_total", &server),
        3.0
    );
    // Without eBPF nothing is attached, and the build is described.
    assert_eq!(
        sample(&text, "scope_router_ebpf_attached", &[("program", "xdp")]),
        0.0
    );
    assert_eq!(sample(&text, "scope_router_draining", &[]), 0.0);
    assert!(
        text.contains("scope_router_build_info{"),
        "no build info in:\n{text}"
    );
    admin.stop().await;
}

#[tokio::test]
async fn promtool_accepts_the_exposition() {
    const TEST: &str = "promtool_accepts_the_exposition";
    let state = tempfile::tempdir().unwrap();
    // Limited servers, so the slot families are there too.
    let (lab, admin) = lab_with_admin(format!(
        "[proxy]\nmaxconn_per_server = 100\n{}",
        unmanaged_vip(state.path())
    ))
    .await;
    // Traffic first, so every family has samples (histograms included).
    let r = get(lab.one.addr(9292), "/v2/images", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    let text = scrape(&admin).await;
    assert_eq!(
        sample(&text, "scope_router_vip_present", &[("vip", "127.0.0.1")]),
        1.0
    );
    let server = lab.one.backends[&9292].addr.to_string();
    assert_eq!(
        sample(
            &text,
            "scope_router_server_slots_limit",
            &[("server", &server)]
        ),
        100.0
    );
    test_support::tool::assert_promtool_accepts(TEST, &text);
    admin.stop().await;
}

#[tokio::test]
async fn status_json_shows_listeners_servers_traffic_and_the_vip() {
    let state = tempfile::tempdir().unwrap();
    let (lab, admin) = lab_with_admin(unmanaged_vip(state.path())).await;
    let identity = lab.one.addr(5000);
    let r = get(identity, "/v3", &[]).await.unwrap();
    assert_eq!(r.status, 200);

    let r = get(admin_addr(&admin), "/status", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get("x-scope-router-region").unwrap(), "RegionOne");
    assert_eq!(r.headers.get("x-scope-router-healthy").unwrap(), "true");
    let s = r.json();
    assert_eq!(s["region"], "RegionOne", "{s:#}");
    assert_eq!(s["health"]["source"], "live", "{s:#}");
    assert_eq!(s["pid"], std::process::id(), "{s:#}");
    assert_eq!(s["draining"], false, "{s:#}");
    assert_eq!(s["healthy"], true, "{s:#}");
    assert_eq!(
        s["config"],
        lab.one.config_path.display().to_string(),
        "{s:#}"
    );
    // Only netlink speaks here: no VIP manager ran in this process, so no state file.
    assert_eq!(s["vip"]["present"], true, "{s:#}");
    assert_eq!(s["vip"]["managed"], serde_json::Value::Null, "{s:#}");
    assert_eq!(s["regions"], serde_json::json!(["RegionOne", "RegionTwo"]));
    let listeners = s["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 6, "{s:#}");
    let identity_listener = listeners
        .iter()
        .find(|l| l["address"] == identity.to_string())
        .unwrap();
    let served: u64 = identity_listener["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["responses"]["2xx"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 1, "{identity_listener:#}");
    let local = lab.one.backends[&5000].addr.to_string();
    let server = s["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|srv| srv["addr"] == local && srv["role"] == "local")
        .unwrap();
    assert_eq!(server["up"], true, "{server:#}");
    assert_eq!(server["requests"], 1, "{server:#}");

    // The text form is what `scope-router status` prints.
    let r = get(admin_addr(&admin), "/status?format=text", &[])
        .await
        .unwrap();
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(
        text.contains("health as the running router") && text.contains(&local),
        "{text}"
    );
    admin.stop().await;
}

#[tokio::test]
async fn healthz_answers_503_while_the_router_drains() {
    let (mut lab, admin) = lab_with_admin(String::new()).await;
    let addr = admin_addr(&admin);
    let r = get(addr, "/healthz", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);

    // A request the backend holds keeps the drain going while /healthz is asked.
    let vip = lab.one.addr(8774);
    let gate = lab.one.backends[&8774].gate.clone();
    let held = tokio::spawn(async move { get(vip, "/__gate", &[]).await });
    gate.wait_arrived().await;

    let handle = lab.one.handle.take().unwrap();
    let signals = handle.signals();
    let drain = tokio::spawn(handle.shutdown());
    // The admin listener outlives the drain (main.rs stops it after); the drain flag is
    // raised first thing.
    let r = get(addr, "/healthz", &[]).await.unwrap();
    assert!(signals.is_draining());
    assert!(
        !drain.is_finished(),
        "the held request ended the drain early"
    );
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(
        String::from_utf8_lossy(&r.body).contains("draining"),
        "{:?}",
        r.body
    );
    gate.release.notify_one();
    let r = held.await.unwrap().unwrap();
    assert_eq!(r.status, 200, "the drain finishes the request in flight");
    assert_eq!(drain.await.unwrap(), scope_router::shutdown::Drained::Clean);
    let r = get(addr, "/healthz", &[]).await.unwrap();
    assert_eq!(r.status, 503, "still draining until the process exits");
    let metrics = scrape(&admin).await;
    assert_eq!(sample(&metrics, "scope_router_draining", &[]), 1.0);
    admin.stop().await;
}

#[tokio::test]
async fn healthz_answers_503_when_the_vip_is_missing() {
    let state = tempfile::tempdir().unwrap();
    // 127.0.0.2 is routed to lo but not an address of it (lo has 127.0.0.1/8 only).
    let extra = format!(
        "[vip]\naddress = \"127.0.0.2\"\ninterface = \"lo\"\nmanage = false\nstate_dir = \"{}\"\n",
        state.path().display()
    );
    let (_lab, admin) = lab_with_admin(extra).await;
    let r = get(admin_addr(&admin), "/healthz", &[]).await.unwrap();
    assert_eq!(r.status, 503, "{:?}", r.body);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        body.contains("VIP missing") && body.contains("127.0.0.2"),
        "{body}"
    );
    admin.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused_with_the_endpoint_list() {
    let (_lab, admin) = lab_with_admin(String::new()).await;
    let r = get(admin_addr(&admin), "/nope", &[]).await.unwrap();
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("/metrics"));
    admin.stop().await;
}

#[tokio::test]
async fn a_taken_admin_address_is_an_error_naming_it_and_the_fix() {
    let (lab, admin) = lab_with_admin(String::new()).await;
    let taken = admin_addr(&admin);
    let config = scope_router::config::Config::load(&lab.one.config_path).unwrap();
    let view = scope_router::admin::AdminView::new(
        &config,
        lab.one.handle.as_ref().unwrap(),
        std::time::SystemTime::now(),
    );
    let settings = scope_router::admin::AdminSettings {
        bind: vec![taken],
        ..Default::default()
    };
    let err = scope_router::admin::start(&settings, view)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&taken.to_string()) && err.contains("[admin] bind"),
        "{err}"
    );
    admin.stop().await;
}

/// Headless Chromium's DOM of `url` after load, and its log (stderr).
async fn dump_dom(url: &str) -> (String, String) {
    let url = url.to_owned();
    // Chromium blocks; run it off the runtime that serves the page.
    tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().unwrap();
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--dump-dom", &url])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "chromium failed on {url}:\n{log}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), log)
    })
    .await
    .unwrap()
}

/// Headless Chromium loads the page, prints the DOM it built and logs the console to
/// stderr; the page must show the router, its VIP, every listener with its servers and
/// their health, and the traffic counters, with no console message at all (the page
/// has no script, so any message is an error: a missing resource, a blocked load).
#[tokio::test]
async fn the_status_page_renders_in_headless_chromium_without_console_errors() {
    const TEST: &str = "the_status_page_renders_in_headless_chromium_without_console_errors";
    let state = tempfile::tempdir().unwrap();
    let (lab, admin) = lab_with_admin(format!(
        "[proxy]\nmaxconn_per_server = 100\n{}",
        unmanaged_vip(state.path())
    ))
    .await;
    for _ in 0..2 {
        let r = get(lab.one.addr(9292), "/v2/images", &[]).await.unwrap();
        assert_eq!(r.status, 200);
    }
    if tool(TEST, "chromium").is_none() {
        return;
    }
    // Chromium logs every console message as `INFO:CONSOLE(line)] "text", source: …`.
    fn console(log: &str) -> Vec<&str> {
        log.lines().filter(|l| l.contains(":CONSOLE")).collect()
    }
    // Control: a page that writes to the console shows up in that log, so an empty
    // log below means the status page wrote nothing.
    let (_, control) =
        dump_dom("data:text/html,<p>control</p><script>console.error('control-message')</script>")
            .await;
    assert!(
        console(&control)
            .iter()
            .any(|l| l.contains("control-message")),
        "the console capture saw nothing of the control page:\n{control}"
    );
    let (dom, log) = dump_dom(&format!("http://{}/", admin_addr(&admin))).await;
    let console = console(&log);
    assert!(console.is_empty(), "console messages: {console:#?}\n{dom}");
    // Failed loads do not reach that log, so the page must load nothing: no script, no
    // image or style sheet, no absolute link (the icon is an empty data: URL).
    for banned in ["<script", " src=", "href=\"http", "stylesheet"] {
        assert!(!dom.contains(banned), "the page loads {banned:?}:\n{dom}");
    }
    for want in [
        "<h1 id=\"region\">scope-router RegionOne",
        "<table id=\"vip\">",
        "<td class=\"up\">present</td>",
        &format!("data-address=\"{}\"", lab.one.addr(9292)),
        &format!("<td>{}</td>", lab.one.backends[&9292].addr),
        "<td class=\"up\">UP</td>",
        "<td>RegionOne_image_public</td>",
        "<th>slots (maxconn)</th>",
        "<td class=\"slots\">0 of 100 in use, 0 queued, 0 queue timeouts</td>",
        "<td class=\"slots\">no limit</td>",
    ] {
        assert!(dom.contains(want), "{want:?} missing from the page:\n{dom}");
    }
    // The image backend's row counts both requests.
    let row = dom
        .lines()
        .find(|l| l.contains("<td>RegionOne_image_public</td>"))
        .unwrap();
    assert!(
        row.contains("<td class=\"n\">2</td>"),
        "no count of 2 in {row}"
    );
    assert_eq!(
        dom.matches("class=\"listener\"").count(),
        6,
        "every listener is shown:\n{dom}"
    );
    admin.stop().await;
}
