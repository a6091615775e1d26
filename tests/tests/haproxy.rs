//! `scope-router haproxy-config` output run by a real HAProxy on loopback: `haproxy -c`
//! accepts it, and scoped requests reach the backend scope-router would pick.
//!
//! Skipped (with a printed reason) when `haproxy` is not installed, except under
//! `CI=true` where a missing HAProxy is a failure.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use scope_router::config::Config;
use scope_router::decision::RequestHead;
use scope_router::haproxy::{HaproxyMode, HaproxyOptions, generate};
use scope_router::routing::Router;
use serde_json::Value;

/// Whether HAProxy can run here; prints why not.
fn haproxy_available() -> bool {
    let ok = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !test_support::ci::enabled(),
            "haproxy is not installed but CI=true: install the Debian `haproxy` and `lua-cjson` packages"
        );
        eprintln!(
            "SKIP haproxy suite: `haproxy` is not on PATH (apt-get install haproxy lua-cjson)"
        );
    }
    ok
}

/// An in-process backend answering every request with JSON naming itself and echoing
/// the request path and headers.
async fn echo_backend(name: &'static str) -> SocketAddr {
    echo_backend_checked(name, 200).await
}

/// [`echo_backend`] answering `GET /healthcheck` with `health` (200, or e.g. 503 for a
/// server its HTTP check must take down).
async fn echo_backend_checked(name: &'static str, health: u16) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
                    for (k, v) in req.headers() {
                        headers
                            .entry(k.as_str().to_owned())
                            .or_default()
                            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
                    }
                    let body = serde_json::json!({
                        "backend": name,
                        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                        "headers": headers,
                    });
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
                    if req.uri().path() == "/healthcheck" {
                        *resp.status_mut() = hyper::StatusCode::from_u16(health).unwrap();
                    }
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A port that was free a moment ago on `ip` (HAProxy binds it itself).
fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HAProxy in the foreground, killed when dropped.
struct Haproxy(Child);

impl Haproxy {
    fn start(cfg: &Path, wait_for: SocketAddr) -> Haproxy {
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut h = Haproxy(child);
        // Readiness, not timing: poll until the listener accepts or HAProxy exits.
        loop {
            if let Some(status) = h.0.try_wait().unwrap() {
                panic!("haproxy exited before listening: {status}");
            }
            if TcpStream::connect(wait_for).is_ok() {
                return h;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Reply {
    status: u16,
    body: Value,
}

impl Reply {
    fn backend(&self) -> &str {
        self.body["backend"].as_str().unwrap_or("")
    }
    fn path(&self) -> &str {
        self.body["path"].as_str().unwrap_or("")
    }
    fn header(&self, name: &str) -> Vec<String> {
        self.body["headers"][name]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), blocking.
fn send(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    // HAProxy may send its own replies chunked; the echo backend sends Content-Length.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Reply {
        status,
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// Two regions on loopback: RegionOne's VIP is a 127.x address served by HAProxy,
/// RegionTwo's "frontend" endpoints are echo backends directly.
struct Lab {
    _dir: tempfile::TempDir,
    router: Router,
    config: Config,
    dir: std::path::PathBuf,
    identity: SocketAddr,
    compute: SocketAddr,
    r2_compute: SocketAddr,
}

async fn lab() -> Lab {
    let r1_identity = echo_backend("r1-identity").await;
    let r1_compute = echo_backend("r1-compute").await;
    lab_with(
        &format!("backend = \"{r1_identity}\""),
        &format!("backend = \"{r1_compute}\""),
        "",
    )
    .await
}

/// The two-region lab with RegionOne's identity and compute ports configured by the
/// `[ports.N]` bodies `identity_port` and `compute_port`, and `extra` appended.
async fn lab_with(identity_port: &str, compute_port: &str, extra: &str) -> Lab {
    // A 127.x address per process keeps parallel runs of the suite apart.
    let vip = Ipv4Addr::new(127, 66, (std::process::id() % 250) as u8, 1);
    let identity = SocketAddr::from((vip, free_port(vip)));
    let compute = SocketAddr::from((vip, free_port(vip)));
    let r2_identity = echo_backend("r2-identity").await;
    let r2_compute = echo_backend("r2-compute").await;
    let dir = tempfile::tempdir().unwrap();
    let catalog = serde_json::json!([
        {"Region": "RegionOne", "Service Type": "identity", "Interface": "public", "URL": format!("http://{identity}")},
        {"Region": "RegionOne", "Service Type": "compute", "Interface": "public", "URL": format!("http://{compute}/v2.1/%(tenant_id)s")},
        {"Region": "RegionTwo", "Service Type": "identity", "Interface": "public", "URL": format!("http://{r2_identity}")},
        {"Region": "RegionTwo", "Service Type": "compute", "Interface": "public", "URL": format!("http://{r2_compute}/compute/v2.1/%(tenant_id)s")},
    ]);
    std::fs::write(dir.path().join("catalog.json"), catalog.to_string()).unwrap();
    let toml = format!(
        "region = \"RegionOne\"\ncatalog = [\"catalog.json\"]\nbackend = \"127.0.0.1\"\n\
         [ports.{}]\n{identity_port}\n[ports.{}]\n{compute_port}\n{extra}",
        identity.port(),
        compute.port()
    );
    let path = dir.path().join("router.toml");
    std::fs::write(&path, &toml).unwrap();
    let config = Config::load(&path).unwrap();
    let router = Router::from_config(&config).unwrap();
    Lab {
        dir: dir.path().to_owned(),
        _dir: dir,
        router,
        config,
        identity,
        compute,
        r2_compute,
    }
}

/// Writes the generated files and checks them with `haproxy -c`.
fn write_checked(lab: &Lab, mode: HaproxyMode) -> std::path::PathBuf {
    let mut opts = HaproxyOptions::new(mode);
    opts.lua_path = lab.dir.join("scope-router.lua").display().to_string();
    let out = generate(&lab.router, &lab.config, &opts);
    let cfg = lab.dir.join("haproxy.cfg");
    std::fs::write(&cfg, &out.cfg).unwrap();
    if let Some(lua) = &out.lua {
        std::fs::write(&opts.lua_path, lua).unwrap();
    }
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy -c rejected the {mode:?} config:\n{}\n{}",
        String::from_utf8_lossy(&check.stderr),
        out.cfg
    );
    cfg
}

/// scope-router's own decision for a request, as the echo backend that would answer
/// (`Ok`) or the error status (`Err`).
fn router_decision(
    router: &Router,
    local: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    compute: SocketAddr,
) -> Result<String, u16> {
    let mut req = http::Request::builder()
        .uri(path)
        .header("host", local.to_string());
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let (parts, ()) = req.body(()).unwrap().into_parts();
    let head = RequestHead {
        local,
        peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 40000)),
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
    };
    let plan = router.decide(&head).map_err(|p| p.status.as_u16())?;
    let name = &*plan.backend_name;
    let region = if name.starts_with("RegionTwo_") {
        "r2"
    } else {
        "r1"
    };
    let service =
        if name.contains("_compute_") || (name.contains("_transparent_") && local == compute) {
            "compute"
        } else {
            "identity"
        };
    Ok(format!("{region}-{service}"))
}

/// Requests both variants must route identically to scope-router.
async fn common_cases(lab: &Lab) {
    let (id, c) = (lab.identity, lab.compute);
    let req = lab.compute;
    let router = &lab.router;
    let send = move |addr: SocketAddr, path: &'static str, headers: Vec<(&'static str, String)>| {
        // What scope-router itself decides for the same request: HAProxy must agree.
        let decided = router_decision(router, addr, path, &headers, c);
        async move {
            let reply = tokio::task::spawn_blocking(move || {
                let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                send(addr, path, &h)
            })
            .await
            .unwrap();
            match &decided {
                Ok(echo) => assert_eq!(
                    (reply.status, reply.backend()),
                    (200, echo.as_str()),
                    "HAProxy and scope-router disagree on {path} {:?}",
                    reply.body
                ),
                Err(status) => assert_eq!(reply.status, *status, "{path}: {:?}", reply.body),
            }
            reply
        }
    };

    // No scope: the local backend, path and Host unchanged, identity headers of RegionOne.
    let r = send(c, "/v2.1/servers", vec![]).await;
    assert_eq!(
        (r.status, r.backend(), r.path()),
        (200, "r1-compute", "/v2.1/servers")
    );
    assert_eq!(r.header("host"), vec![req.to_string()]);
    assert_eq!(r.header("x-identity-region"), vec!["RegionOne"]);
    assert_eq!(r.header("x-identity-url"), vec![format!("http://{id}")]);
    assert_eq!(r.header("via"), vec!["1.1 scope-router-RegionOne"]);
    assert_eq!(r.header("x-forwarded-for"), vec!["127.0.0.1"]);

    // X-Scope to a remote region: prefix rewritten, query kept, Host replaced.
    let scope = r#"{"compute": "RegionTwo", "image": "RegionOne"}"#.to_owned();
    let r = send(c, "/v2.1/servers?all=1", vec![("X-Scope", scope)]).await;
    assert_eq!(
        (r.status, r.backend(), r.path()),
        (200, "r2-compute", "/compute/v2.1/servers?all=1")
    );
    assert_eq!(r.header("host"), vec![lab.r2_compute.to_string()]);

    // Scope piggybacked on X-Auth-Token: kept for a non-identity service.
    let token = r#"gAAAA!SCOPE!{"compute": "RegionTwo", "identity": "RegionTwo"}"#.to_owned();
    let r = send(c, "/v2.1/flavors", vec![("X-Auth-Token", token.clone())]).await;
    assert_eq!((r.status, r.backend()), (200, "r2-compute"));
    assert_eq!(r.header("x-auth-token"), vec![token]);
    assert_eq!(r.header("x-identity-region"), vec!["RegionTwo"]);

    // A remote identity hop keeps both tokens whole: the next router reads the scope too.
    let (adm, usr) = (
        r#"adm!SCOPE!{"identity": "RegionTwo"}"#,
        r#"usr!SCOPE!{"identity": "RegionOne"}"#,
    );
    let r = send(
        id,
        "/v3/auth/tokens",
        vec![
            ("X-Auth-Token", adm.to_owned()),
            ("X-Subject-Token", usr.to_owned()),
        ],
    )
    .await;
    assert_eq!(
        (r.status, r.backend(), r.path()),
        (200, "r2-identity", "/v3/auth/tokens")
    );
    assert_eq!(r.header("x-auth-token"), vec![adm]);
    assert_eq!(r.header("x-subject-token"), vec![usr]);

    // On the hop to the local backend the scope comes off: X-Auth-Token for identity,
    // X-Subject-Token always.
    let r = send(
        id,
        "/v3/auth/tokens",
        vec![
            (
                "X-Auth-Token",
                r#"adm!SCOPE!{"identity": "RegionOne"}"#.to_owned(),
            ),
            ("X-Subject-Token", usr.to_owned()),
        ],
    )
    .await;
    assert_eq!((r.status, r.backend()), (200, "r1-identity"));
    assert_eq!(r.header("x-auth-token"), vec!["adm"]);
    assert_eq!(r.header("x-subject-token"), vec!["usr"]);

    // X-Subject-Token alone carries the scope (token validation in the issuing region).
    let sub = r#"usr!SCOPE!{"identity": "RegionTwo"}"#;
    let r = send(
        id,
        "/v3/auth/tokens",
        vec![("X-Subject-Token", sub.to_owned())],
    )
    .await;
    assert_eq!((r.status, r.backend()), (200, "r2-identity"));
    assert_eq!(r.header("x-subject-token"), vec![sub]);

    // Unknown region: an OpenStack-shaped 400.
    let r = send(
        c,
        "/v2.1/servers",
        vec![("X-Scope", r#"{"compute": "RegionNine"}"#.into())],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], 400);

    // No catalog entry matches the path: transparent fallback to the local backend.
    let r = send(
        c,
        "/",
        vec![("X-Scope", r#"{"compute": "RegionTwo"}"#.into())],
    )
    .await;
    assert_eq!((r.status, r.backend(), r.path()), (200, "r1-compute", "/"));
    assert!(r.header("x-identity-region").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_config_routes_like_scope_router() {
    if !haproxy_available() {
        return;
    }
    let lab = lab().await;
    let cfg = write_checked(&lab, HaproxyMode::Lua);
    let _haproxy = Haproxy::start(&cfg, lab.compute);
    common_cases(&lab).await;

    let c = lab.compute;
    let lua_only = tokio::task::spawn_blocking(move || {
        // Malformed scope: 400 naming the header (json_query cannot tell).
        let bad = send(c, "/v2.1/servers", &[("X-Scope", "{compute: RegionTwo")]);
        // Percent-encoded scope inside a token is decoded once.
        let encoded = send(
            c,
            "/v2.1/servers",
            &[(
                "X-Auth-Token",
                "t!SCOPE!%7B%22compute%22%3A%22RegionTwo%22%7D",
            )],
        );
        // Our own Via name: a forwarding loop.
        let looped = send(c, "/v2.1/servers", &[("Via", "1.1 scope-router-RegionOne")]);
        (bad, encoded, looped)
    })
    .await
    .unwrap();
    let (bad, encoded, looped) = lua_only;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("X-Scope"),
        "{}",
        bad.body
    );
    assert_eq!((encoded.status, encoded.backend()), (200, "r2-compute"));
    assert_eq!(looped.status, 508);
    assert_eq!(looped.body["error"]["code"], 508);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_config_routes_like_scope_router() {
    if !haproxy_available() {
        return;
    }
    let lab = lab().await;
    let cfg = write_checked(&lab, HaproxyMode::Native);
    let _haproxy = Haproxy::start(&cfg, lab.compute);
    common_cases(&lab).await;
}

/// Several servers per backend, weights, a backup, `balance source`, an HTTP check and
/// `maxconn` limits with their queue timeouts: `haproxy -c` accepts both variants, and in
/// a running HAProxy the checks take the failing servers out as scope-router's would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_servers_checks_and_backups_run_in_haproxy() {
    if !haproxy_available() {
        return;
    }
    let healthy = echo_backend("r1-identity").await;
    let sick = echo_backend_checked("r1-identity-sick", 503).await;
    let spare = echo_backend("r1-compute-backup").await;
    // Nothing listens there: its TCP check fails.
    let dead = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST)));
    let lab = lab_with(
        &format!(
            "backend = [\"{sick}\", {{ address = \"{healthy}\", weight = 2, maxconn = 8 }}]\n\
             health_path = \"/healthcheck\""
        ),
        &format!(
            "backend = [\"{dead}\", {{ address = \"{spare}\", backup = true }}]\n\
             balance = \"source\"\nmaxconn_per_server = 4\nqueue = \"15s\""
        ),
        "[health]\ninter = \"100ms\"\nrise = 1\nfall = 1\ntimeout = \"500ms\"\n\
         [timeouts]\nqueue = \"20s\"\n",
    )
    .await;
    write_checked(&lab, HaproxyMode::Lua);
    let cfg = write_checked(&lab, HaproxyMode::Native);
    let text = std::fs::read_to_string(&cfg).unwrap();
    for line in [
        format!(
            "server RegionOne_compute_public_2 {spare} check inter 100ms rise 1 fall 1 backup maxconn 4"
        ),
        format!(
            "server RegionOne_identity_public_2 {healthy} check inter 100ms rise 1 fall 1 weight 2 maxconn 8"
        ),
        "option httpchk GET /healthcheck HTTP/1.1".to_owned(),
        "balance source".to_owned(),
        "    timeout queue 20000ms\n".to_owned(),
        "    timeout queue 15000ms\n".to_owned(),
    ] {
        assert!(text.contains(&line), "no `{line}` in\n{text}");
    }
    let _haproxy = Haproxy::start(&cfg, lab.compute);

    // Readiness by polling: the dead server's check fails within a few intervals.
    let (id, c) = (lab.identity, lab.compute);
    let settled = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Round robin with both identity servers up alternates them: six answers in a row
        // from the healthy one mean the HTTP check took the sick one out (and kept the
        // healthy one in).
        let mut healthy_in_a_row = 0;
        let mut backup_answered = false;
        while std::time::Instant::now() < deadline && !(backup_answered && healthy_in_a_row >= 6) {
            let r = send(c, "/v2.1/servers", &[]);
            backup_answered |= (r.status, r.backend()) == (200, "r1-compute-backup");
            let r = send(id, "/v3/auth/tokens", &[]);
            healthy_in_a_row = match (r.status, r.backend()) {
                (200, "r1-identity") => healthy_in_a_row + 1,
                _ => 0,
            };
            std::thread::sleep(Duration::from_millis(20));
        }
        (backup_answered, healthy_in_a_row)
    })
    .await
    .unwrap();
    assert_eq!(
        settled,
        (true, 6),
        "(backup answered, healthy identity answers in a row) within 10 s"
    );
}

/// What `scope-router haproxy-config --out DIR` writes (the same `emit`), with both kinds
/// of `[[passthrough]]` block, is accepted by `haproxy -c`, in both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_output_with_passthrough_blocks_passes_haproxy_check() {
    if !haproxy_available() {
        return;
    }
    let vip = Ipv4Addr::new(127, 66, (std::process::id() % 250) as u8, 1);
    let (tcp, http) = (free_port(vip), free_port(vip));
    let extra = format!(
        "[[passthrough]]\nname = \"mariadb\"\nbind = \"{vip}:{tcp}\"\nbackend = \"127.0.0.1:3306\"\n\
         mode = \"tcp\"\n[[passthrough]]\nname = \"horizon\"\nbind = \"{vip}:{http}\"\n\
         backend = \"127.0.0.1:8080\"\nmode = \"http\"\nmaxconn_per_server = 16\nqueue = \"5s\"\n"
    );
    let r1 = echo_backend("r1").await;
    let lab = lab_with(
        &format!("backend = \"{r1}\""),
        &format!("backend = \"{r1}\""),
        &extra,
    )
    .await;
    let check = |cfg: &Path, what: &str| {
        let out = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "haproxy -c rejected {what}:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(cfg).unwrap_or_default()
        );
    };
    // Lua mode, written to a directory as `--out` does.
    let out = lab.dir.join("out");
    scope_router::haproxy::emit(&lab.config, HaproxyMode::Lua, Some(&out)).unwrap();
    let cfg = out.join("haproxy.cfg");
    let text = std::fs::read_to_string(&cfg).unwrap();
    for name in ["mariadb", "horizon"] {
        assert!(text.contains(name), "no {name} block in:\n{text}");
    }
    for line in [
        "server horizon 127.0.0.1:8080 maxconn 16\n",
        "timeout queue 5000ms\n",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
    assert!(out.join("scope-router.lua").exists());
    check(&cfg, "the --out Lua config");
    // Native mode, printed as the CLI prints it.
    let native = scope_router::haproxy::emit(&lab.config, HaproxyMode::Native, None).unwrap();
    let cfg = lab.dir.join("native.cfg");
    std::fs::write(&cfg, &native).unwrap();
    check(&cfg, "the printed native config");
}

/// One HTTPS request with curl trusting `ca` (`None`: the system store), the client
/// sending `X-Forwarded-Proto: http`; curl's exit code and the reply.
fn curl_https(url: &str, ca: Option<&Path>, headers: &[&str]) -> (i32, Option<Reply>) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
    cmd.args(["-H", "X-Forwarded-Proto: http"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = out.status.code().unwrap_or(-1);
    let reply = text.rsplit_once('\n').map(|(body, status)| Reply {
        status: status.trim().parse().unwrap_or(0),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    });
    (code, reply)
}

/// A RegionOne with an `https://` identity listener (its certificate for the VIP's IP,
/// key apart, so `--out` bundles it) and RegionTwo's compute behind an `https://` URL
/// naming `localhost` (a TLS HAProxy frontend answering for it): the generated configs
/// pass `haproxy -c` in both modes, and the native one serves HTTPS to curl trusting the
/// lab CA, sets `X-Forwarded-Proto: https` once, and reaches RegionTwo over a verified hop;
/// its `[[redirect]]` frontend answers 301 to the `https://` URL (the cleartext port
/// dropped) and relays the ACME path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_configs_pass_haproxy_check_and_serve_https() {
    if !haproxy_available() {
        return;
    }
    let vip = Ipv4Addr::new(127, 67, (std::process::id() % 250) as u8, 1);
    let identity = SocketAddr::from((vip, free_port(vip)));
    let compute = SocketAddr::from((vip, free_port(vip)));
    let r2_port = free_port(Ipv4Addr::LOCALHOST);
    let redirect = SocketAddr::from((vip, free_port(vip)));
    let r1 = echo_backend("r1-identity").await;
    let r1_compute = echo_backend("r1-compute").await;
    let r2_identity = echo_backend("r2-identity").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = test_support::pki::Ca::new(d, "haproxy-suite");
    ca.leaf("vip", &[&vip.to_string()], 30);
    // RegionTwo's frontend: its key where HAProxy looks by itself (`<crt>.key`).
    let r2_leaf = ca.leaf("r2", &["localhost"], 30);
    std::fs::rename(&r2_leaf.key, d.join("r2.pem.key")).unwrap();
    let r2_cfg = d.join("r2.cfg");
    std::fs::write(
        &r2_cfg,
        format!(
            "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    \
             timeout server 10s\nlisten r2\n    bind 127.0.0.1:{r2_port} ssl crt {}\n    \
             http-request return status 200 content-type application/json lf-string \
             \"{{\\\"backend\\\":\\\"r2-compute-tls\\\",\\\"path\\\":\\\"%[path]\\\"}}\"\n",
            r2_leaf.certificate.display()
        ),
    )
    .unwrap();
    let catalog = serde_json::json!([
        {"Region": "RegionOne", "Service Type": "identity", "Interface": "public", "URL": format!("https://{identity}")},
        {"Region": "RegionOne", "Service Type": "compute", "Interface": "public", "URL": format!("http://{compute}/v2.1/%(tenant_id)s")},
        {"Region": "RegionTwo", "Service Type": "identity", "Interface": "public", "URL": format!("http://{r2_identity}")},
        {"Region": "RegionTwo", "Service Type": "compute", "Interface": "public", "URL": format!("https://localhost:{r2_port}/compute/v2.1/%(tenant_id)s")},
    ]);
    std::fs::write(d.join("catalog.json"), catalog.to_string()).unwrap();
    let toml = format!(
        "region = \"RegionOne\"\ncatalog = [\"catalog.json\"]\nbackend = \"127.0.0.1\"\n\
         [tls]\ncertificate = \"vip.pem\"\nkey = \"vip.key\"\nca_file = \"{}\"\n\
         [ports.{}]\nbackend = \"{r1}\"\n[ports.{}]\nbackend = \"{r1_compute}\"\n\
         [[redirect]]\nbind = \"{redirect}\"\nhttps_port = {}\n\
         exempt = [\"/.well-known/acme-challenge/\"]\nexempt_backend = \"{r1}\"\n",
        ca.cert_path.display(),
        identity.port(),
        compute.port(),
        identity.port()
    );
    let path = d.join("router.toml");
    std::fs::write(&path, &toml).unwrap();
    let config = Config::load(&path).unwrap();

    let check = |cfg: &Path| {
        let out = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(cfg)
            .output()
            .unwrap();
        let text = std::fs::read_to_string(cfg).unwrap();
        assert!(
            out.status.success(),
            "haproxy -c rejected {}:\n{}\n{text}",
            cfg.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let lua = d.join("lua");
    scope_router::haproxy::emit(&config, HaproxyMode::Lua, Some(&lua)).unwrap();
    check(&lua.join("haproxy.cfg"));
    let native = d.join("native");
    scope_router::haproxy::emit(&config, HaproxyMode::Native, Some(&native)).unwrap();
    let cfg = native.join("haproxy.cfg");
    let text = check(&cfg);
    let bundle = native.join("tls/1-vip.pem");
    for line in [
        format!(
            "    bind {identity} ssl crt {} alpn http/1.1\n",
            bundle.display()
        ),
        "    http-request set-header X-Forwarded-Proto https if { ssl_fc }\n".to_owned(),
        "    ssl-default-bind-options ssl-min-ver TLSv1.3\n".to_owned(),
        format!(
            " localhost:{r2_port} check inter 2000ms rise 2 fall 5 ssl verify required ca-file {} \
             alpn http/1.1 sni str(localhost) check-sni localhost verifyhost localhost check-ssl\n",
            ca.cert_path.display()
        ),
        format!("    bind {compute}\n"),
    ] {
        assert!(text.contains(&line), "no `{line}` in\n{text}");
    }

    let _r2 = Haproxy::start(&r2_cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, r2_port)));
    let _haproxy = Haproxy::start(&cfg, identity);
    let ca_path = ca.cert_path.clone();
    let (url_id, url_c) = (
        format!("https://{identity}/v3/auth/tokens"),
        format!("http://{compute}/v2.1/servers"),
    );
    let (redirected, exempt) = tokio::task::spawn_blocking(move || {
        let head = |path: &str| {
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-w"])
                .arg("%{http_code} %{redirect_url}")
                .args(["-H", &format!("Host: api.example:{}", redirect.port())])
                .arg(format!("http://{redirect}{path}"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        (
            head("/v3/auth/tokens?nocatalog"),
            send(redirect, "/.well-known/acme-challenge/tok", &[]),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        redirected,
        format!(
            "301 https://api.example:{}/v3/auth/tokens?nocatalog",
            identity.port()
        )
    );
    assert_eq!(
        (exempt.status, exempt.backend(), exempt.path()),
        (200, "r1-identity", "/.well-known/acme-challenge/tok")
    );
    let (local, untrusted, remote) = tokio::task::spawn_blocking(move || {
        let local = curl_https(&url_id, Some(&ca_path), &[]);
        // A client without the lab CA refuses the certificate (curl exit 60).
        let untrusted = curl_https(&url_id, None, &[]);
        // The remote hop: RegionTwo's frontend verified as `localhost`, the lab CA trusted.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let remote = loop {
            let r = curl_https(&url_c, None, &[r#"X-Scope: {"compute": "RegionTwo"}"#]);
            let done = r.1.as_ref().is_some_and(|r| r.status == 200);
            if done || std::time::Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        (local, untrusted, remote)
    })
    .await
    .unwrap();
    let (code, reply) = local;
    let reply = reply.unwrap();
    assert_eq!(
        (code, reply.status, reply.backend()),
        (0, 200, "r1-identity")
    );
    assert_eq!(reply.header("x-forwarded-proto"), ["https"]);
    assert_eq!(
        untrusted.0, 60,
        "curl without the CA must refuse the certificate"
    );
    let reply = remote.1.unwrap();
    assert_eq!(
        (reply.status, reply.backend(), reply.path()),
        (200, "r2-compute-tls", "/compute/v2.1/servers")
    );
}
