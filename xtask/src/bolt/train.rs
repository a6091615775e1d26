//! The workload the instrumented router runs before BOLT lays it out: what an OpenStack
//! edge serves, on loopback. Scoped GETs to the local region and through a remote
//! region's frontend, the scope piggybacked on the token, identity, requests without a
//! scope, a choice between regions, small POSTs and uploads streamed to the image
//! service, from a few keep-alive clients, against stub backends that answer `200`.
//! Only what runs here counts as hot: error paths stay cold, as they should. Needs no
//! tool and no root; bounded in time and in requests.
//!
//! The first half runs with request metrics on (the default), the second with them off
//! after a reload, so that both paths are laid out hot: trained on the first alone, a
//! router with `[admin] metrics = false` ran its cold branches, 0.2–0.5 % slower
//! (`docs/performance.md`, *Issue 11*). The access log is on throughout, as it runs by
//! default (`RUST_LOG=warn,access=info`: access lines and warnings, into `train.log`).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// RegionOne's VIP: the router under training.
const ROUTER: &str = "127.0.78.1";
/// RegionTwo's frontend, where remote scopes go (a stub).
const REMOTE: &str = "127.0.78.2";
/// RegionOne's backend (a stub).
const BACKEND: &str = "127.0.78.3";
const PORTS: [u16; 3] = [5000, 8774, 9292];
const CLIENTS: usize = 6;
const DURATION: Duration = Duration::from_secs(6);
const MAX_REQUESTS_PER_CLIENT: u64 = 500_000;
const UPLOAD_BYTES: usize = 1 << 20;
/// Longest the router may take to answer its first request, or to exit on SIGTERM.
const PATIENCE: Duration = Duration::from_secs(30);

/// One kind of request: port, method, path, header lines, body length.
type Kind = (u16, &'static str, &'static str, &'static str, usize);

/// The mix, in rotation (remote and local scoped GETs the most common).
const MIX: &[Kind] = &[
    (
        8774,
        "GET",
        "/v2.1/servers",
        "X-Scope: {\"compute\": \"RegionTwo\"}\r\n",
        0,
    ),
    (
        8774,
        "GET",
        "/v2.1/servers",
        "X-Scope: {\"compute\": \"RegionOne\"}\r\n",
        0,
    ),
    (
        8774,
        "GET",
        "/v2.1/servers/detail",
        "X-Auth-Token: gAAAAABtrain!SCOPE!{\"compute\": \"RegionTwo\"}\r\n",
        0,
    ),
    (
        8774,
        "GET",
        "/v2.1/servers",
        "X-Scope: {\"compute\": \"RegionTwo\"}\r\n",
        0,
    ),
    (
        8774,
        "GET",
        "/v2.1/flavors",
        "X-Auth-Token: gAAAAABtrain!SCOPE!{\"compute\": \"RegionOne\"}\r\n",
        0,
    ),
    (8774, "GET", "/v2.1/os-keypairs", "", 0),
    (
        5000,
        "GET",
        "/v3/auth/tokens",
        "X-Scope: {\"identity\": \"RegionOne\"}\r\nX-Subject-Token: gAAAAABsubject\r\n",
        0,
    ),
    (
        8774,
        "GET",
        "/v2.1/servers",
        "X-Scope: {\"compute\": \"RegionTwo|RegionOne\"}\r\n",
        0,
    ),
    (
        8774,
        "POST",
        "/v2.1/servers",
        "X-Scope: {\"compute\": \"RegionTwo\"}\r\nContent-Type: application/json\r\n",
        300,
    ),
    (
        9292,
        "GET",
        "/v2/images",
        "X-Scope: {\"image\": \"RegionTwo\", \"identity\": \"RegionOne\"}\r\n",
        0,
    ),
];

/// An upload every this many requests of a client.
const UPLOAD_EVERY: u64 = 40;
const UPLOAD: Kind = (
    9292,
    "PUT",
    "/v2/images/0c5cb3a8/file",
    "X-Scope: {\"image\": \"RegionOne\"}\r\nContent-Type: application/octet-stream\r\n",
    UPLOAD_BYTES,
);

/// Runs `router` (instrumented) under the mix, half of it with request metrics and half
/// without, then stops it with SIGTERM so it writes its profile. `plain` is the same
/// router uninstrumented, which sends the reload: an instrumented `scope-router reload`
/// would write its own counts to the profile file as it exits. Returns how many requests
/// were answered.
pub fn run(router: &Path, plain: &Path, dir: &Path) -> Result<u64> {
    let config = write_config(dir, true)?;
    let stubs = Stubs::start()?;
    let log = dir.join("train.log");
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = Command::new(router)
        .args(["run", "--workers", "1", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn,access=info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {}", router.display()))?;
    let mut router_proc = Running(Some(child));
    wait_ready()
        .with_context(|| format!("the router did not start; its log: {}", log.display()))?;
    let mut answered = drive(DURATION / 2)?;
    write_config(dir, false)?;
    // SIGHUP, then the outcome from the router's /status; fails if it refused the file.
    crate::exec::query(
        Command::new(plain)
            .arg("reload")
            .arg("--config")
            .arg(&config),
    )
    .with_context(|| {
        format!(
            "the router did not reload with request metrics off; its log: {}",
            log.display()
        )
    })?;
    answered += drive(DURATION / 2)?;
    router_proc.stop()?;
    drop(stubs);
    if answered == 0 {
        bail!(
            "no request was answered; the router's log: {}",
            log.display()
        );
    }
    Ok(answered)
}

/// The router's config file, with request metrics on or off.
fn write_config(dir: &Path, metrics: bool) -> Result<std::path::PathBuf> {
    let catalog =
        crate::bench::e2e::frontend_catalog(&[("RegionOne", ROUTER), ("RegionTwo", REMOTE)]);
    let catalog_file = dir.join("train-catalog.json");
    std::fs::write(&catalog_file, serde_json::to_string_pretty(&catalog)?)
        .with_context(|| format!("cannot write {}", catalog_file.display()))?;
    let config = dir.join("train.toml");
    std::fs::write(
        &config,
        format!(
            "# Written by cargo xtask for BOLT's training run (xtask/src/bolt/train.rs).\n\
             region = \"RegionOne\"\ncatalog = [\"train-catalog.json\"]\n\
             backend = \"{BACKEND}\"\n\n[ebpf]\nmode = \"off\"\n\n\
             [admin]\nbind = [\"{ROUTER}:9101\"]\nmetrics = {metrics}\n"
        ),
    )
    .with_context(|| format!("cannot write {}", config.display()))?;
    Ok(config)
}

/// The router process; killed if dropped before [`Running::stop`].
struct Running(Option<Child>);

impl Running {
    fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.0.take() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(child.id()).context("router pid out of range")?;
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("the instrumented router exited with {status} on SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the instrumented router did not exit within {PATIENCE:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_ready() -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut client = Client::default();
        match client.send(&MIX[1]) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("no answer on {ROUTER}:8774 within {PATIENCE:?}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The clients, each through its own keep-alive connections, for `duration`; the
/// requests answered.
fn drive(duration: Duration) -> Result<u64> {
    let answered = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + duration;
    let threads: Vec<JoinHandle<Result<()>>> = (0..CLIENTS)
        .map(|i| {
            let answered = Arc::clone(&answered);
            std::thread::spawn(move || {
                let mut client = Client::default();
                let mut n: u64 = 0;
                while n < MAX_REQUESTS_PER_CLIENT && Instant::now() < until {
                    let kind = if n % UPLOAD_EVERY == UPLOAD_EVERY - 1 {
                        &UPLOAD
                    } else {
                        &MIX[(i + n as usize) % MIX.len()]
                    };
                    client
                        .send(kind)
                        .with_context(|| format!("{} {} on port {}", kind.1, kind.2, kind.0))?;
                    answered.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a training client panicked"))??;
    }
    Ok(answered.load(Ordering::Relaxed))
}

/// One keep-alive connection per port.
#[derive(Default)]
struct Client {
    conns: [Option<TcpStream>; PORTS.len()],
    buf: Vec<u8>,
}

impl Client {
    /// Sends one request and reads its whole answer, which must be a 200.
    fn send(&mut self, &(port, method, path, headers, body): &Kind) -> Result<()> {
        let slot = PORTS
            .iter()
            .position(|p| *p == port)
            .context("unknown port")?;
        let conn = match &mut self.conns[slot] {
            Some(conn) => conn,
            empty => {
                let conn = TcpStream::connect((ROUTER, port))?;
                conn.set_read_timeout(Some(PATIENCE))?;
                // A head and its body are two writes: Nagle would hold the body for the
                // router's delayed ACK (40 ms) on every POST.
                conn.set_nodelay(true)?;
                empty.insert(conn)
            }
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {ROUTER}:{port}\r\nUser-Agent: scope-router-bolt-train\r\n\
             Accept: application/json\r\n{headers}Content-Length: {body}\r\n\r\n"
        );
        let result = exchange(conn, head.as_bytes(), body, &mut self.buf);
        if !matches!(result, Ok(true)) {
            self.conns[slot] = None;
        }
        result.map(|_| ())
    }
}

/// Writes a request and reads its response; `Ok(keep_alive)` on a 200.
fn exchange(conn: &mut TcpStream, head: &[u8], body: usize, buf: &mut Vec<u8>) -> Result<bool> {
    conn.write_all(head)?;
    let chunk = [b'x'; 16 * 1024];
    let mut left = body;
    while left > 0 {
        let n = left.min(chunk.len());
        conn.write_all(&chunk[..n])?;
        left -= n;
    }
    buf.clear();
    let (status, length, close, head_len) = loop {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut fields);
        if let httparse::Status::Complete(len) = response.parse(buf)? {
            let field = |name: &str| {
                response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let length = field("content-length")
                .and_then(|v| v.trim().parse::<usize>().ok())
                .context("the response has no Content-Length")?;
            let close = field("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
            break (response.code.unwrap_or(0), length, close, len);
        }
        read_more(conn, buf)?;
    };
    while buf.len() < head_len + length {
        read_more(conn, buf)?;
    }
    if status != 200 {
        bail!(
            "answered {status}: {}",
            String::from_utf8_lossy(&buf[head_len..head_len + length])
        );
    }
    Ok(!close)
}

fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = conn.read(&mut chunk)?;
    if n == 0 {
        bail!("the router closed the connection");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// The stub backends: every port of RegionOne's backend and RegionTwo's frontend
/// answers every request `200` with a small JSON body; stopped when dropped.
struct Stubs {
    stop: Arc<AtomicBool>,
    addrs: Vec<(&'static str, u16)>,
    threads: Vec<JoinHandle<()>>,
}

impl Stubs {
    fn start() -> Result<Stubs> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut stubs = Stubs {
            stop: Arc::clone(&stop),
            addrs: Vec::new(),
            threads: Vec::new(),
        };
        for addr in [BACKEND, REMOTE] {
            for port in PORTS {
                let listener = TcpListener::bind((addr, port)).with_context(|| {
                    format!("cannot listen on {addr}:{port} for the training backends (in use?)")
                })?;
                let stop = Arc::clone(&stop);
                stubs.addrs.push((addr, port));
                stubs
                    .threads
                    .push(std::thread::spawn(move || accept(&listener, &stop)));
            }
        }
        Ok(stubs)
    }
}

impl Drop for Stubs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes each accept loop so it sees the flag.
        for addr in &self.addrs {
            let _ = TcpStream::connect(addr);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn accept(listener: &TcpListener, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(conn) = conn {
            // Detached: each ends when the router closes its connection.
            std::thread::spawn(move || {
                let _ = serve(conn);
            });
        }
    }
}

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
    X-Openstack-Request-Id: req-5c1f0f6e-bolt-train\r\nContent-Length: 2\r\n\r\n{}";

/// Answers each request of one connection once its body has arrived.
fn serve(mut conn: TcpStream) -> Result<()> {
    conn.set_read_timeout(Some(PATIENCE))?;
    conn.set_nodelay(true)?;
    let mut buf = Vec::new();
    loop {
        let (head_len, body) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut fields);
            if let httparse::Status::Complete(len) = request.parse(&buf)? {
                let body = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .unwrap_or(0usize);
                if request
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
                {
                    // Not in the mix: answer and close rather than parse chunks.
                    conn.write_all(ANSWER)?;
                    conn.shutdown(Shutdown::Both)?;
                    return Ok(());
                }
                break (len, body);
            }
            if read_some(&mut conn, &mut buf)? == 0 {
                return Ok(());
            }
        };
        // The body is read and dropped as it comes: at most one read's worth is kept.
        let mut left = body;
        let buffered = (buf.len() - head_len).min(left);
        left -= buffered;
        buf.drain(..head_len + buffered);
        while left > 0 {
            buf.clear();
            let n = read_some(&mut conn, &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            let used = n.min(left);
            left -= used;
            buf.drain(..used);
        }
        conn.write_all(ANSWER)?;
    }
}

fn read_some(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize> {
    let mut chunk = [0u8; 64 * 1024];
    let n = conn.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_of_the_mix_goes_to_a_port_the_catalog_serves() {
        for kind in MIX.iter().chain([&UPLOAD]) {
            assert!(PORTS.contains(&kind.0), "{kind:?}");
            assert!(
                kind.3.is_empty() || kind.3.ends_with("\r\n"),
                "header lines must each end in CRLF: {kind:?}"
            );
        }
        // The remote hop, the token's scope and the upload are what the layout is for.
        assert!(MIX.iter().any(|k| k.3.contains("RegionTwo")));
        assert!(MIX.iter().any(|k| k.3.contains("!SCOPE!")));
        assert!(UPLOAD.4 > 0);
    }

    /// The stubs and the client against each other, with no router in between: a body
    /// sent in pieces is read whole before the answer, and the connection stays open.
    #[test]
    fn a_stub_answers_each_request_after_its_body() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopper = Arc::clone(&stop);
        let thread = std::thread::spawn(move || accept(&listener, &stopper));
        let mut conn = TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = Vec::new();
        for body in [0, 3, 200_000] {
            let head = format!("PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: {body}\r\n\r\n");
            let keep = exchange(&mut conn, head.as_bytes(), body, &mut buf).expect("exchange");
            assert!(keep, "the stub closed after a {body}-byte body");
        }
        stop.store(true, Ordering::Relaxed);
        drop(TcpStream::connect(addr));
        thread.join().expect("accept loop");
    }
}
