//! The `scope-router` binary: check/explain exit codes, `run` serving, ignoring SIGHUP,
//! then exiting 0 on SIGTERM, and `status`/`explain` reading the running router's health.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_scope-router");

fn repo_config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(name)
}

#[test]
fn check_prints_the_routing_table_and_succeeds() {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(repo_config("RegionOne.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("RegionTwo_compute_public"), "{text}");
}

#[test]
fn check_fails_on_an_unknown_key_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "region = \"RegionOne\"\ncatalog = [\"x.json\"]\nbackend = \"127.0.0.1\"\nbakend = 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bakend"), "{err}");
}

#[test]
fn explain_shows_the_chosen_backend() {
    let out = Command::new(BIN)
        .args(["explain", "--config"])
        .arg(repo_config("RegionOne.toml"))
        .args([
            "--header",
            r#"X-Scope: {"compute": "RegionTwo"}"#,
            "GET",
            "http://192.168.142.244:8774/v2.1/servers",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("RegionTwo_compute_public"));
}

#[test]
fn explain_rejects_a_header_without_colon() {
    let out = Command::new(BIN)
        .args(["explain", "--config"])
        .arg(repo_config("RegionOne.toml"))
        .args(["--header", "X-Scope", "GET", "http://192.168.142.244:8774/"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Name: value"));
}

/// A port free right now (the child binds it itself; the window is tiny).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[test]
fn run_serves_and_exits_zero_on_sigterm() {
    serves_and_exits_zero_on_sigterm("2");
}

/// One worker takes the single-threaded runtime: same behaviour.
#[test]
fn run_with_one_worker_serves_and_exits_zero_on_sigterm() {
    serves_and_exits_zero_on_sigterm("1");
}

// A test body shared by the two tests above; failing loudly is its job.
#[allow(clippy::unwrap_used)]
fn serves_and_exits_zero_on_sigterm(workers: &str) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let dead = free_port().unwrap();
    std::fs::write(
        dir.path().join("catalog.json"),
        format!(r#"[{{"Region": "RegionOne", "Service Type": "compute", "Interface": "public", "URL": "http://127.0.0.1:{port}/v2.1/%(tenant_id)s"}}]"#),
    )
    .unwrap();
    let config = dir.path().join("router.toml");
    std::fs::write(
        &config,
        format!(
            "region = \"RegionOne\"\ncatalog = [\"catalog.json\"]\nbackend = \"127.0.0.1\"\n\
             [ebpf]\nmode = \"off\"\n[admin]\nbind = []\n[ports.{port}]\nbackend = \"127.0.0.1:{dead}\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--workers", workers, "--config"])
        .arg(&config)
        // Without [vip] the health state would go to /run/scope-router.
        .arg("--health-state-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Wait for the listener; bounded so a crash fails instead of hanging.
    let mut stream = None;
    for _ in 0..500 {
        if let Ok(s) = TcpStream::connect(addr) {
            stream = Some(s);
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("router exited early: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut stream = stream.expect("router never listened");
    stream
        .write_all(b"GET /v2.1/servers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    // The backend is down: the router itself answers, in OpenStack JSON.
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains(r#""code":503"#), "{reply}");

    // SIGHUP reloads: the local backend moves to a live server, which answers 200 once
    // the reload is done.
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved = live.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in live.incoming().flatten() {
            let mut conn = conn;
            let mut head = [0u8; 4096];
            let _ = conn.read(&mut head);
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nmoved",
            );
        }
    });
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(&format!(":{dead}\""), &format!(":{moved}\"")),
    )
    .unwrap();
    let answer = |addr: SocketAddr| -> Option<String> {
        let mut s = TcpStream::connect(addr).ok()?;
        s.write_all(b"GET /v2.1/servers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        Some(reply)
    };
    let hup = |child: &std::process::Child| {
        let sent = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    hup(&child);
    let mut reloaded = false;
    for _ in 0..200 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("SIGHUP killed the router: {status}");
        }
        // Signal delivery is asynchronous: ask until the new backend shows (bounded).
        if answer(addr).is_some_and(|r| r.starts_with("HTTP/1.1 200") && r.ends_with("moved")) {
            reloaded = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(reloaded, "the reloaded backend never served");
    // An invalid config: nothing changes, the router keeps serving the last good one.
    std::fs::write(&config, "region = \"\"\n").unwrap();
    hup(&child);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let reply = answer(addr).expect("still serving after a failed reload");
    assert!(reply.ends_with("moved"), "{reply}");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {log}", out.status);
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(
        log.contains("reload failed, still serving the previous configuration")
            && log.contains("region"),
        "{log}"
    );
    // The access line for the request above.
    assert!(
        log.contains("status=503") && log.contains("backend=RegionOne_compute_public"),
        "{log}"
    );
}

/// Runs `scope-router ARGS --config CONFIG --health-state-dir STATE`; stdout and exit code.
#[allow(clippy::unwrap_used)]
fn cli(args: &[&str], config: &Path, state: &Path) -> (String, Option<i32>) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--health-state-dir")
        .arg(state)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code(),
    )
}

/// `status --json` as JSON, and its exit code.
#[allow(clippy::unwrap_used)]
fn status_json(config: &Path, state: &Path) -> (serde_json::Value, Option<i32>) {
    let (out, code) = cli(&["status", "--json"], config, state);
    (
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}")),
        code,
    )
}

/// The `servers` entry of `addr` in a status.
fn server<'a>(status: &'a serde_json::Value, addr: &str) -> &'a serde_json::Value {
    status["servers"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["addr"] == addr))
        .unwrap_or_else(|| panic!("no server {addr} in {status:#}"))
}

// Failing loudly is this test's job.
#[allow(clippy::unwrap_used)]
#[test]
fn status_and_explain_show_the_running_routers_health() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port().unwrap();
    let dead = format!("127.0.0.1:{}", free_port().unwrap());
    // The live server accepts and closes, for as many checks as come.
    let live_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let live = live_listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in live_listener.incoming() {
            drop(conn);
        }
    });
    std::fs::write(
        dir.path().join("catalog.json"),
        format!(r#"[{{"Region": "RegionOne", "Service Type": "compute", "Interface": "public", "URL": "http://127.0.0.1:{port}/v2.1"}}]"#),
    )
    .unwrap();
    let config = dir.path().join("router.toml");
    // The dead server first: the balance would pick it if the health were ignored.
    std::fs::write(
        &config,
        format!(
            "region = \"RegionOne\"\ncatalog = [\"catalog.json\"]\nbackend = \"127.0.0.1\"\n\
             [ebpf]\nmode = \"off\"\n[admin]\nbind = []\n[health]\ninter = \"100ms\"\nfall = 2\n\
             [ports.{port}]\nbackend = [\"{dead}\", \"{live}\"]\n"
        ),
    )
    .unwrap();

    // Before the router runs: no router, one-off probes, and the dead server fails them.
    let (before, code) = status_json(&config, &state);
    assert_eq!(before["health"]["source"], "probe", "{before:#}");
    assert_eq!(code, Some(1), "{before:#}");

    let mut child = Command::new(BIN)
        .args(["run", "--workers", "1", "--config"])
        .arg(&config)
        .arg("--health-state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();

    // Checks every 100 ms, fall 2, written within a second of the change.
    let mut seen = serde_json::Value::Null;
    let mut code = None;
    for _ in 0..100 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("router exited early: {status}");
        }
        (seen, code) = status_json(&config, &state);
        // Counters refresh with the 10 s heartbeat; a state or result change within 1 s.
        let checked = |addr: &str| server(&seen, addr)["checks"].as_u64().unwrap_or(0) >= 1;
        if seen["health"]["source"] == "router"
            && server(&seen, &dead)["up"] == false
            && checked(&live)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(seen["health"]["source"], "router", "{seen:#}");
    assert_eq!(seen["health"]["pid"], pid, "{seen:#}");
    let d = server(&seen, &dead);
    assert_eq!(d["up"], false, "{seen:#}");
    assert_eq!(d["role"], "local", "{seen:#}");
    assert_eq!(d["listener"], format!("127.0.0.1:{port}"), "{seen:#}");
    assert!(d["checks"].as_u64() >= Some(2), "{seen:#}");
    assert!(d["failures"].as_u64() >= Some(2), "{seen:#}");
    assert!(
        d["last_result"]
            .as_str()
            .is_some_and(|r| r.starts_with("connect:")),
        "the reason it is down: {seen:#}"
    );
    assert!(
        d["since"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{seen:#}"
    );
    let l = server(&seen, &live);
    assert_eq!(l["up"], true, "{seen:#}");
    assert_eq!(l["failures"], 0, "{seen:#}");
    assert!(
        l["last_result"]
            .as_str()
            .is_some_and(|r| r.starts_with("ok in")),
        "{seen:#}"
    );
    // A server the running router uses is down.
    assert_eq!(code, Some(1), "{seen:#}");

    let (text, _) = cli(&["status"], &config, &state);
    assert!(
        text.contains(&format!("health as the running router (pid {pid}) sees it")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(&dead) && l.contains("DOWN") && l.contains("connect:")),
        "{text}"
    );

    // explain: the live server would serve, although the balance lists the dead one first.
    let (text, code) = cli(
        &[
            "explain",
            "GET",
            &format!("http://127.0.0.1:{port}/v2.1/servers"),
        ],
        &config,
        &state,
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("health:    from the running router (pid {pid}, ")),
        "{text}"
    );
    assert!(
        text.contains(&format!("serves:    {live} (roundrobin")),
        "{text}"
    );

    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // Stopped: no router, said plainly, and the one-off probe again.
    let (after, code) = status_json(&config, &state);
    assert_eq!(after["health"]["source"], "probe", "{after:#}");
    assert!(
        after["health"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("no router is running")),
        "{after:#}"
    );
    assert_eq!(server(&after, &live)["up"], true, "{after:#}");
    assert_eq!(server(&after, &dead)["up"], false, "{after:#}");
    assert_eq!(code, Some(1), "{after:#}");
    let (text, _) = cli(&["status"], &config, &state);
    assert!(
        text.contains("health: no router is running")
            && text.contains("probed each local server once"),
        "{text}"
    );
    let (text, _) = cli(
        &[
            "explain",
            "GET",
            &format!("http://127.0.0.1:{port}/v2.1/servers"),
        ],
        &config,
        &state,
    );
    assert!(
        text.contains("health:    unknown: no router is running"),
        "{text}"
    );
}

// Failing loudly is this test's job.
#[allow(clippy::unwrap_used)]
#[test]
fn status_reads_the_running_routers_admin_status_and_says_which_source_it_used() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port().unwrap();
    let admin = format!("127.0.0.1:{}", free_port().unwrap());
    let dead = format!("127.0.0.1:{}", free_port().unwrap());
    std::fs::write(
        dir.path().join("catalog.json"),
        format!(r#"[{{"Region": "RegionOne", "Service Type": "compute", "Interface": "public", "URL": "http://127.0.0.1:{port}/v2.1"}}]"#),
    )
    .unwrap();
    let config = dir.path().join("router.toml");
    std::fs::write(
        &config,
        format!(
            "region = \"RegionOne\"\ncatalog = [\"catalog.json\"]\nbackend = \"127.0.0.1\"\n\
             [ebpf]\nmode = \"off\"\n[admin]\nbind = [\"{admin}\"]\n\
             [health]\ninter = \"100ms\"\nfall = 2\n[ports.{port}]\nbackend = \"{dead}\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--workers", "1", "--config"])
        .arg(&config)
        .arg("--health-state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();

    // Until the admin listener answers (bounded), then until the checks took the dead
    // server down.
    let mut seen = serde_json::Value::Null;
    let mut code = None;
    for _ in 0..100 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("router exited early: {status}");
        }
        (seen, code) = status_json(&config, &state);
        if seen["source"]["kind"] == "admin" && server(&seen, &dead)["up"] == false {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(seen["source"]["kind"], "admin", "{seen:#}");
    assert_eq!(
        seen["source"]["detail"],
        format!("running router's /status at http://{admin}/status"),
        "{seen:#}"
    );
    assert_eq!(seen["health"]["source"], "live", "{seen:#}");
    assert_eq!(seen["pid"], pid, "{seen:#}");
    assert_eq!(seen["healthy"], false, "{seen:#}");
    assert_eq!(server(&seen, &dead)["up"], false, "{seen:#}");
    assert_eq!(code, Some(1), "a down server is still exit 1: {seen:#}");

    // One request, answered 5xx (its only server is down): the listener's backend counts it.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /v2.1/servers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 5"), "{reply}");
    }
    let (seen, _) = status_json(&config, &state);
    let listener = seen["listeners"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|l| l["address"] == format!("127.0.0.1:{port}"))
        })
        .unwrap_or_else(|| panic!("no listener 127.0.0.1:{port}: {seen:#}"));
    assert_eq!(listener["kind"], "scoped", "{listener:#}");
    let backend = listener["backends"]
        .as_array()
        .and_then(|b| {
            b.iter()
                .find(|b| b["backend"] == "RegionOne_compute_public")
        })
        .unwrap_or_else(|| panic!("no RegionOne_compute_public backend: {listener:#}"));
    assert_eq!(backend["service_type"], "compute", "{backend:#}");
    assert_eq!(backend["region"], "RegionOne", "{backend:#}");
    assert_eq!(backend["requests"], 1, "{backend:#}");
    assert_eq!(backend["responses"]["5xx"], 1, "{backend:#}");
    let (text, code) = cli(&["status"], &config, &state);
    assert!(
        text.starts_with(&format!(
            "source: running router's /status at http://{admin}/status"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "health as the running router (pid {pid}) sees it now"
        )),
        "{text}"
    );
    assert_eq!(code, Some(1), "{text}");

    // `reload`: the router re-reads its config and says so through /status.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        good.replace("inter = \"100ms\"", "inter = \"200ms\""),
    )
    .unwrap();
    let (text, code) = cli(&["reload"], &config, &state);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&format!("pid {pid}: reloaded")), "{text}");
    let (seen, _) = status_json(&config, &state);
    assert_eq!(seen["last_reload"]["ok"], true, "{seen:#}");
    // An invalid config is refused before anything is sent; the router keeps serving.
    std::fs::write(
        &config,
        good.replace("region = \"RegionOne\"", "region = \"Nowhere\""),
    )
    .unwrap();
    let (text, code) = cli(&["reload"], &config, &state);
    assert_eq!(code, Some(1), "{text}");
    std::fs::write(&config, &good).unwrap();
    let (seen, _) = status_json(&config, &state);
    assert_eq!(seen["source"]["kind"], "admin", "{seen:#}");
    assert_eq!(seen["pid"], pid, "{seen:#}");

    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nobody answers now: the files and one-off probes, and why.
    let (after, _) = status_json(&config, &state);
    assert_eq!(after["source"]["kind"], "files", "{after:#}");
    assert!(
        after["source"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("nothing answered at http://{admin}/status"))),
        "{after:#}"
    );
    assert_eq!(after["health"]["source"], "probe", "{after:#}");
}
