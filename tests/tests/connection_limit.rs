//! `[proxy] max_connections` (docs/ARCHITECTURE.md §4): at the limit, new connections
//! wait in the kernel's listen backlog until one closes, then are served; one warning
//! when the limit is reached and one line when the router is back under it, never a line
//! per connection; the count spans listeners, and a reload changes the limit.
//!
//! RegionTwo's router is stopped first in each test: its health checks of RegionOne's
//! listeners are client connections too, and would take places at random moments.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::client::{Conn, bounded, empty, get, request};
use integration_tests::lab::{Lab, LabOptions};
use integration_tests::scrape::{sample, scrape};
use scope_router::config::Config;
use scope_router::reload::{self, ConfigState};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Log lines containing `text`.
    fn count(&self, text: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(text))
            .count()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The router's log lines while the returned guard lives (the test runtime is
/// single-threaded, so every router task logs on this thread).
fn capture_logs() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("scope_router=info"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (capture, tracing::subscriber::set_default(subscriber))
}

const REACHED: &str = "client connection limit reached";
const BACK: &str = "client connections back under the limit";

/// Connections waiting in `listener`'s accept queue (the listen backlog), from
/// /proc/net/tcp: for a listening socket, `rx_queue` is that queue's length.
fn backlog(listener: SocketAddr) -> usize {
    let SocketAddr::V4(v4) = listener else {
        panic!("the lab listens on IPv4");
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // st 0A: LISTEN.
            (f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")).then(|| {
                let rx = f[4].split(':').nth(1).unwrap();
                usize::from_str_radix(rx, 16).unwrap()
            })
        })
        .sum()
}

/// RegionOne's router alone, with `extra` in its config.
async fn lab(extra: &str, passthrough: bool) -> Lab {
    let mut lab = Lab::start(LabOptions {
        one_extra_toml: extra.into(),
        passthrough,
        ..LabOptions::default()
    })
    .await
    .unwrap();
    lab.two.stop().await;
    lab
}

/// Polls (bounded) until `logs` has `n` lines with `text`.
async fn until_logged(logs: &Capture, text: &str, n: usize) {
    for _ in 0..1000 {
        if logs.count(text) >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(logs.count(text), n, "{}", logs.text());
}

/// Polls (bounded) until `listener`'s backlog holds `n` connections.
async fn until_backlog(listener: SocketAddr, n: usize) {
    for _ in 0..1000 {
        if backlog(listener) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the listen backlog of {listener} never held {n} connections (it holds {})",
        backlog(listener)
    );
}

/// A keep-alive connection that got its answer.
async fn served(addr: SocketAddr) -> Conn {
    let mut conn = Conn::open(addr).await.unwrap();
    let r = conn
        .send(request("GET", addr, "/v2.1/servers").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    conn
}

/// A client that connects and sends its request (keep-alive: once served, it stays open
/// and counted): the kernel completes the handshake whatever the router does.
async fn asking(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /v2.1/flavors HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s
}

/// Reads (bounded) until `s`'s answer head has arrived; returns its status line.
async fn answer(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 512];
        let n = bounded("an answer", s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed unanswered: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Whether `s` got anything back within a moment (a wait only: a router that respects the
/// limit cannot answer, however slow the machine).
async fn answered_soon(s: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(300), s.peek(&mut byte))
        .await
        .is_ok()
}

#[tokio::test]
async fn a_connection_over_the_limit_waits_in_the_backlog_until_one_closes() {
    let (logs, _guard) = capture_logs();
    let lab = lab("[proxy]\nmax_connections = 2\n", false).await;
    let vip = lab.one.addr(8774);
    let first = served(vip).await;
    let second = served(vip).await;
    // The second filled the limit: the accept loop stopped there, and said so once.
    assert_eq!(logs.count(REACHED), 1, "{}", logs.text());
    let mut third = asking(vip).await;
    let mut fourth = asking(vip).await;
    until_backlog(vip, 2).await;
    assert!(!answered_soon(&mut third).await, "served over the limit");
    assert_eq!(logs.count(REACHED), 1, "a line per waiting connection");
    assert_eq!(logs.count(BACK), 0);
    let handle = lab.one.handle.as_ref().unwrap();
    let metrics = scrape(handle);
    assert_eq!(
        sample(
            &metrics,
            "scope_router_client_connections",
            &[("state", "open")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(&metrics, "scope_router_client_connections_max", &[]),
        Some(2.0)
    );
    // The admin listener is not counted: it is how the operator sees this.
    let admin = lab.one.start_admin().await.unwrap();
    let admin_addr = admin.local_addrs()[0];
    let status = get(admin_addr, "/status", &[]).await.unwrap().json();
    let c = &status["connections"];
    assert_eq!(
        (
            &c["open"],
            &c["max"],
            &c["max_from"],
            &c["at_limit"],
            &c["reached"]
        ),
        (
            &json!(2),
            &json!(2),
            &json!("config"),
            &json!(true),
            &json!(1)
        ),
        "{status}"
    );
    let text = get(admin_addr, "/status?format=text", &[]).await.unwrap();
    let text = String::from_utf8_lossy(&text.body);
    assert!(
        text.contains(
            "client connections: 2 open, limit 2 ([proxy] max_connections); reached 1 times, \
             AT THE LIMIT"
        ),
        "{text}"
    );

    // One closes: the first waiting client is served, which fills the limit again; the
    // count hovered at the limit, so nothing more is logged.
    drop(first);
    assert!(answer(&mut third).await.starts_with("HTTP/1.1 200"));
    drop(second);
    assert!(answer(&mut fourth).await.starts_with("HTTP/1.1 200"));
    assert_eq!(logs.count(REACHED), 1, "{}", logs.text());
    assert_eq!(logs.count(BACK), 0, "{}", logs.text());
    // All close: back under, said once.
    drop((third, fourth));
    until_logged(&logs, BACK, 1).await;
    let metrics = scrape(handle);
    assert_eq!(
        sample(
            &metrics,
            "scope_router_client_connection_limit_reached_total",
            &[]
        ),
        Some(1.0)
    );
    // Reached again: a second warning.
    let _again = (served(vip).await, served(vip).await);
    assert_eq!(logs.count(REACHED), 2, "{}", logs.text());
    let text = logs.text();
    let line = text.lines().find(|l| l.contains(REACHED)).unwrap();
    for what in [
        "WARN",
        "max_connections=2",
        "[proxy] max_connections",
        "LimitNOFILE",
    ] {
        assert!(line.contains(what), "{what} missing from: {line}");
    }
}

#[tokio::test]
async fn the_limit_spans_listeners_and_passthrough() {
    let (logs, _guard) = capture_logs();
    let lab = lab("[proxy]\nmax_connections = 2\n", true).await;
    let pt = lab.passthrough.as_ref().unwrap();
    // One scoped connection and one raw TCP passthrough connection fill the limit.
    let scoped = served(lab.one.addr(8774)).await;
    let mut tcp = TcpStream::connect(pt.tcp_addr).await.unwrap();
    tcp.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    bounded("the echo", tcp.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    // Another scoped port and the HTTP passthrough both wait.
    let identity = lab.one.addr(5000);
    let mut waiting = asking(identity).await;
    until_backlog(identity, 1).await;
    assert!(!answered_soon(&mut waiting).await, "served over the limit");
    assert_eq!(logs.count(REACHED), 1, "{}", logs.text());
    drop(tcp);
    assert!(answer(&mut waiting).await.starts_with("HTTP/1.1 200"));
    drop(scoped);
}

#[tokio::test]
async fn a_reload_raises_the_limit_and_the_waiting_connections_are_served() {
    let (logs, _guard) = capture_logs();
    // Idle keep-alive clients are closed after request_header: not within this test.
    let lab = lab(
        "[proxy]\nmax_connections = 1\n[timeouts]\nrequest_header = \"10m\"\n",
        false,
    )
    .await;
    let vip = lab.one.addr(8774);
    let first = served(vip).await;
    let mut second = asking(vip).await;
    until_backlog(vip, 1).await;
    let text = std::fs::read_to_string(&lab.one.config_path).unwrap();
    std::fs::write(
        &lab.one.config_path,
        text.replace("max_connections = 1", "max_connections = 3"),
    )
    .unwrap();
    let handle = lab.one.handle.as_ref().unwrap();
    let current = Config::load(&lab.one.config_path).unwrap();
    let state = ConfigState::shared(std::time::SystemTime::now());
    reload::reload(handle, &lab.one.config_path, &current, &state).unwrap();
    // Served without anything closing: the count carried over, the limit rose.
    assert!(answer(&mut second).await.starts_with("HTTP/1.1 200"));
    until_logged(&logs, BACK, 1).await;
    assert_eq!(logs.count(REACHED), 1);
    let metrics = scrape(handle);
    assert_eq!(
        sample(
            &metrics,
            "scope_router_client_connections",
            &[("state", "open")]
        ),
        Some(2.0),
        "the first connection is still counted"
    );
    drop(first);
}
