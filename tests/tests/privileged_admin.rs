//! Privileged admin suite (docs/ARCHITECTURE.md §13): `/healthz` of a router whose VIP is
//! managed on a veth `eth2` in its own network namespace answers 503 while the VIP is
//! gone and not yet put back, 200 again once the VIP manager re-added it, and 503 during
//! a graceful drain. Needs root; without it the test prints why it is skipped (a failure
//! under `CI=true`).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use scope_router::admin::{self, AdminSettings, AdminView};
use scope_router::config::Config;
use scope_router::proxy::{StartOptions, start};
use scope_router::vip::{self, VipSettings};
use test_support::netns::{self, Netns};

const VIP: Ipv4Addr = netns::Lab::VIP;
/// Bounds waits for what normally takes milliseconds; never asserts a speed.
const WAIT: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `GET path` on a fresh connection from inside `ns`: the status and the body.
fn get(ns: &Netns, addr: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_owned();
    ns.run(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {out:?}"));
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
        (status, body.unwrap_or_default())
    })
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "gave up after {WAIT:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A one-listener router config with the managed VIP on `eth2` (no eBPF).
fn write_config(dir: &Path) -> std::path::PathBuf {
    std::fs::write(
        dir.join("catalog.json"),
        format!(
            r#"[{{"Region": "RegionOne", "Service Type": "compute", "Interface": "public", "URL": "http://{VIP}:8774/v2.1"}}]"#
        ),
    )
    .unwrap();
    let path = dir.join("router.toml");
    std::fs::write(
        &path,
        format!(
            "region = \"RegionOne\"\ncatalog = [\"catalog.json\"]\nbackend = \"127.0.0.1\"\n\
             [vip]\naddress = \"{VIP}\"\ninterface = \"eth2\"\ngarp_count = 1\n\
             state_dir = \"{}\"\n[ebpf]\nmode = \"off\"\n",
            dir.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn healthz_is_503_while_the_vip_is_missing_and_while_draining() {
    const TEST: &str = "healthz_is_503_while_the_vip_is_missing_and_while_draining";
    if !netns::privileged(TEST) {
        return;
    }
    let lab = netns::Lab::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path());
    let settings: VipSettings = Config::load(&config_path).unwrap().vip.unwrap();

    // The VIP manager on a runtime of its own, as one thread: the test can hold that
    // thread still, which keeps a removed VIP away as long as the test looks (in the
    // real router the window is the few milliseconds before the watcher reacts).
    let (vip_tx, vip_rx) = mpsc::channel();
    let (stop_vip, vip_stopped) = tokio::sync::oneshot::channel::<()>();
    let vip_thread = lab.router.spawn(move || {
        let rt = runtime();
        let handle = rt.block_on(vip::start(settings)).unwrap();
        vip_tx.send(rt.handle().clone()).unwrap();
        rt.block_on(async move {
            let _ = vip_stopped.await;
            handle.shutdown().await.unwrap();
        });
    });
    let vip_runtime = vip_rx.recv().unwrap();

    // The router and its admin listener on another runtime in the same namespace.
    let (admin_tx, admin_rx) = mpsc::channel();
    let (drain, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let (drained_tx, drained) = mpsc::channel();
    let (stop_admin, stop_admin_rx) = tokio::sync::oneshot::channel::<()>();
    let router_thread = lab.router.spawn(move || {
        runtime().block_on(async move {
            let config = Config::load(&config_path).unwrap();
            let steered = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let handle = start(
                Config::load(&config_path).unwrap(),
                StartOptions {
                    handed_in: vec![steered],
                    bind_scoped: false,
                    bind_passthrough: false,
                    ..StartOptions::default()
                },
            )
            .await
            .unwrap();
            let settings = AdminSettings {
                bind: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
                ..AdminSettings::default()
            };
            let view = AdminView::new(&config, &handle, std::time::SystemTime::now());
            let admin = admin::start(&settings, view).await.unwrap();
            admin_tx.send(admin.local_addrs()[0]).unwrap();
            let _ = drain_rx.await;
            drained_tx.send(handle.shutdown().await).unwrap();
            let _ = stop_admin_rx.await;
            admin.stop().await;
        });
    });
    let addr = admin_rx.recv().unwrap();

    let (status, body) = get(&lab.router, addr, "/healthz");
    assert_eq!(status, 200, "{body}");

    // Hold the VIP manager's thread, then take the VIP away.
    let (paused_tx, paused) = mpsc::channel();
    let (resume, resume_rx) = mpsc::channel::<()>();
    vip_runtime.spawn(async move {
        paused_tx.send(()).unwrap();
        // Blocking on purpose: nothing else on this runtime may run until resumed.
        let _ = resume_rx.recv();
    });
    paused.recv().unwrap();
    lab.router
        .ip(&["addr", "del", &format!("{VIP}/32"), "dev", "eth2"])
        .unwrap();
    let (status, body) = get(&lab.router, addr, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("VIP missing") && body.contains("absent"),
        "{body}"
    );
    let (_, metrics) = get(&lab.router, addr, "/metrics");
    assert!(
        metrics.contains(&format!(
            "scope_router_vip_present{{vip=\"{VIP}\",interface=\"eth2\"}} 0"
        )),
        "{metrics}"
    );

    // Let the manager see the removal: it puts the VIP back, and /healthz follows.
    resume.send(()).unwrap();
    wait_until("/healthz is 200 again after the re-add", || {
        get(&lab.router, addr, "/healthz").0 == 200
    });
    // /healthz asks the kernel, which has the address back a moment before the
    // manager counts the re-add: wait for the count, then check it is exactly one.
    let status_json = || -> serde_json::Value {
        serde_json::from_str(&get(&lab.router, addr, "/status").1).unwrap()
    };
    wait_until("/status counts the re-add", || {
        status_json()["vip"]["readded"] != 0
    });
    let status_json = status_json();
    assert_eq!(status_json["vip"]["present"], true, "{status_json:#}");
    assert_eq!(status_json["vip"]["readded"], 1, "{status_json:#}");
    assert_eq!(
        status_json["vip"]["owner_pid"],
        std::process::id(),
        "{status_json:#}"
    );
    // The same in /metrics: present again, one re-add, and GARP bursts for the start
    // and for the re-add (each may be repeated `garp_repeat_delay` later: at least two).
    let labels = format!("{{vip=\"{VIP}\",interface=\"eth2\"}}");
    let value = |metrics: &str, name: &str| -> Option<u64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{labels} ")))
            .and_then(|v| v.trim().parse().ok())
    };
    wait_until("/metrics counts the re-add's GARP burst", || {
        value(
            &get(&lab.router, addr, "/metrics").1,
            "scope_router_vip_announcements_total",
        ) >= Some(2)
    });
    let (_, metrics) = get(&lab.router, addr, "/metrics");
    assert_eq!(
        value(&metrics, "scope_router_vip_present"),
        Some(1),
        "{metrics}"
    );
    assert_eq!(
        value(&metrics, "scope_router_vip_readds_total"),
        Some(1),
        "{metrics}"
    );
    assert_eq!(
        value(&metrics, "scope_router_vip_readds_total"),
        Some(1),
        "{metrics}"
    );
    assert_eq!(
        value(&metrics, "scope_router_vip_announcements_total"),
        Some(2),
        "{metrics}"
    );

    // A graceful drain: 503 from its first moment, while the admin listener stays up.
    drain.send(()).unwrap();
    let outcome = drained.recv().unwrap();
    assert_eq!(outcome, scope_router::shutdown::Drained::Clean);
    let (status, body) = get(&lab.router, addr, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");

    stop_admin.send(()).unwrap();
    router_thread.join().unwrap();
    stop_vip.send(()).unwrap();
    vip_thread.join().unwrap();
}
